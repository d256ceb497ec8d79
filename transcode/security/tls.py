"""The client certificate of a mutual-TLS connection, as the ASGI TLS extension.

uvicorn checks the certificate at the handshake (`ssl_cert_reqs`,
`ssl_ca_certs`: a client without one signed by `serve --tls-client-ca` never
gets a request in) but does not pass it to the application. The server's
protocol (`server/protocol.py`) calls `tls_extension` once per connection
and puts the result in each request's `scope["extensions"]["tls"]`, as the
ASGI TLS extension specifies (`client_cert_name`: the subject, RFC 4514),
so that the guard can name the caller in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from cryptography import x509

log = logging.getLogger(__name__)


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI `tls` extension of a connection: None for plain HTTP; the
    client certificate's subject and PEM, or None for both where the client
    sent none (TLS without `--tls-client-ca`)."""
    tls = transport.get_extra_info("ssl_object")
    if tls is None:
        return None
    der = tls.getpeercert(binary_form=True)
    name = chain = None
    if der:
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:  # the handshake accepted it, so this is unexpected: no name rather than no request
            log.warning("a client certificate's subject cannot be read")
        chain = [ssl.DER_cert_to_PEM_cert(der)]
    return {"server_cert": None, "client_cert_chain": chain or [], "client_cert_name": name,
            "client_cert_error": None, "tls_version": None, "cipher_suite": None}


def client_certificate(scope: dict[str, Any]) -> str | None:
    """The subject of the request's client certificate (RFC 4514), or None."""
    return ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_name")
