"""MLLP over TLS: SSL contexts from the environment (as the DICOM node's `integrations/dicom/tls.py`).

- `server_context()`: the listener's TLS port (`BTT_MLLP_TLS_PORT`), from `BTT_MLLP_TLS_CERT` and
  `BTT_MLLP_TLS_KEY` (PEM); None when unset. With `BTT_MLLP_TLS_CA`, clients must present a
  certificate that CA signed (mutual TLS).
- `client_context()`: the ORU sender connecting to a destination with "use TLS": verifies the
  destination against `BTT_MLLP_TLS_CA` (the system's CAs when unset), presents our certificate
  when one is configured; host names are not checked (destinations are often addressed by IP).

TLS 1.2 is the minimum.
"""

from __future__ import annotations

import ssl

from django.conf import settings


def tls_enabled() -> bool:
    """Whether a certificate and key are configured, so the TLS listener runs."""
    return bool(settings.BTT_MLLP_TLS_CERT and settings.BTT_MLLP_TLS_KEY)


def server_context() -> ssl.SSLContext | None:
    if not tls_enabled():
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.BTT_MLLP_TLS_CERT, settings.BTT_MLLP_TLS_KEY)
    if settings.BTT_MLLP_TLS_CA:
        context.load_verify_locations(cafile=settings.BTT_MLLP_TLS_CA)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.BTT_MLLP_TLS_CA)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if tls_enabled():
        context.load_cert_chain(settings.BTT_MLLP_TLS_CERT, settings.BTT_MLLP_TLS_KEY)
    return context
