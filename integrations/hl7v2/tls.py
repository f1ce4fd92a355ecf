"""MLLP over TLS: SSL contexts from the environment (as the DICOM node's `integrations/dicom/tls.py`).

- `server_context()`: the listener's TLS port (`BTT_MLLP_TLS_PORT`), from `BTT_MLLP_TLS_CERT` and
  `BTT_MLLP_TLS_KEY` (PEM); None when unset. With `BTT_MLLP_TLS_CA`, clients must present a
  certificate that CA signed (mutual TLS).
- `client_context()`: the ORU sender connecting to a destination with "use TLS": verifies the
  destination against `BTT_MLLP_TLS_CA` (the system's CAs when unset), presents our certificate
  when one is configured; host names are not checked (destinations are often addressed by IP).

Both come from `btt_health/tls.py` (TLS 1.2 at least).
"""

from __future__ import annotations

import ssl

from django.conf import settings

from btt_health import tls


def tls_enabled() -> bool:
    """Whether a certificate and key are configured, so the TLS listener runs."""
    return bool(settings.BTT_MLLP_TLS_CERT and settings.BTT_MLLP_TLS_KEY)


def server_context() -> ssl.SSLContext | None:
    """The listener's SSL context, or None when TLS is not configured."""
    return tls.server_context(settings.BTT_MLLP_TLS_CERT, settings.BTT_MLLP_TLS_KEY, settings.BTT_MLLP_TLS_CA)


def client_context() -> ssl.SSLContext:
    """An SSL context for the ORU sender's TLS connections (see the module docstring)."""
    return tls.client_context(settings.BTT_MLLP_TLS_CERT, settings.BTT_MLLP_TLS_KEY, settings.BTT_MLLP_TLS_CA)
