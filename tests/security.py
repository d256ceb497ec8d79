"""An identity provider for the tests: an RSA key pair made here, its JWKS
served over real HTTP on loopback, and tokens signed with PyJWT."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER, AUDIENCE = "https://idp.test/realms/pacs", "transcode"


class Issuer:
    """Signs tokens with its key; `jwks` is what its JWKS endpoint serves."""

    def __init__(self, kid: str = "test-key") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**public, "kid": kid, "use": "sig", "alg": "RS256"}]}

    def token(self, subject: str = "alice", scope: str = "read", *, issuer: str = ISSUER,
              audience: str = AUDIENCE, expires_in: float = 300, **claims: Any) -> str:
        now = time.time()
        payload = {"sub": subject, "iss": issuer, "aud": audience, "iat": int(now), "exp": int(now + expires_in),
                   "scope": scope, **claims}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


def other_key_token(subject: str = "mallory", scope: str = "read admin") -> str:
    """A well-formed token with the issuer's claims and kid, signed by another key."""
    intruder = ec.generate_private_key(ec.SECP256R1())
    now = time.time()
    return jwt.encode({"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "exp": int(now + 300), "scope": scope},
                      intruder, algorithm="ES256", headers={"kid": "test-key"})


@contextmanager
def jwks_server(issuer: Issuer) -> Iterator[tuple[str, list[str]]]:
    """(JWKS URL, the paths fetched so far) of a loopback HTTP server."""
    fetched: list[str] = []
    body = json.dumps(issuer.jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs", fetched
    finally:
        server.shutdown()
        server.server_close()


def auth_config(path: Path, keys: Path, *, jwks_url: str | None = None, key_file: Path | None = None) -> Path:
    """An --auth-config file for the test issuer."""
    where = f'jwks_url = "{jwks_url}"' if jwks_url else f'key_file = "{key_file}"'
    path.write_text(f'[oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n{where}\nleeway = 5\n'
                    f'[api_keys]\nfile = "{keys}"\n')
    return path
