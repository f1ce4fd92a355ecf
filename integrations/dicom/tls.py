"""DICOM TLS (PS3.15 B.1, the BCP 195 profiles): SSL contexts from the environment.

- `server_context()`: for the SCP's TLS listener (`BTT_DICOM_TLS_PORT`). Needs
  `BTT_DICOM_TLS_CERT` and `BTT_DICOM_TLS_KEY` (PEM; the certificate file may hold the chain);
  None when they are unset. With `BTT_DICOM_TLS_CA` set, peers must present a client
  certificate that CA signed (mutual TLS); without it any client may connect over TLS.
- `client_context()`: for this node as an SCU connecting to a peer over TLS (RemoteAE.use_tls).
  Verifies the peer's certificate against `BTT_DICOM_TLS_CA` (or the system's CAs when unset),
  presents this node's certificate when one is configured, and checks the host name only when
  asked (peers are often addressed by IP and their certificates lack it). Use it with
  pynetdicom as `ae.associate(host, port, ae_title=..., tls_args=(client_context(), host))`.

Both come from `btt_health/tls.py` (TLS 1.2 at least).
"""

from __future__ import annotations

import ssl

from django.conf import settings

from btt_health import tls


def tls_enabled() -> bool:
    """Whether this node has a certificate and key, so the TLS listener runs."""
    return bool(settings.BTT_DICOM_TLS_CERT and settings.BTT_DICOM_TLS_KEY)


def server_context() -> ssl.SSLContext | None:
    """The SCP's SSL context, or None when TLS is not configured."""
    return tls.server_context(
        settings.BTT_DICOM_TLS_CERT, settings.BTT_DICOM_TLS_KEY, settings.BTT_DICOM_TLS_CA
    )


def client_context(*, check_hostname: bool = False) -> ssl.SSLContext:
    """An SSL context for connecting to a peer's TLS port (see the module docstring)."""
    return tls.client_context(
        settings.BTT_DICOM_TLS_CERT,
        settings.BTT_DICOM_TLS_KEY,
        settings.BTT_DICOM_TLS_CA,
        check_hostname=check_hostname,
    )
