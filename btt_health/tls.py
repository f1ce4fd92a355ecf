"""SSL contexts for the server's TLS listeners and clients (DICOM TLS, MLLP over TLS).

Each part keeps its own certificate settings and wraps these (`integrations/dicom/tls.py`,
`integrations/hl7v2/tls.py`). TLS 1.2 is the minimum, as BCP 195 (which DICOM's PS3.15 B.1 TLS
profiles follow) asks.
"""

from __future__ import annotations

import ssl


def server_context(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext | None:
    """A listener's context from a PEM certificate (chain) and key, None when either is unset.
    With `ca`, clients must present a certificate that CA signed (mutual TLS); without it any
    client may connect over TLS."""
    if not (cert and key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    cert: str | None, key: str | None, ca: str | None, *, check_hostname: bool = False
) -> ssl.SSLContext:
    """A client's context: verifies the peer against `ca` (the system's CAs when unset), presents
    our certificate when one is configured, and checks the host name only when asked (peers are
    often addressed by IP and their certificates lack it)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if cert and key:
        context.load_cert_chain(cert, key)
    return context
