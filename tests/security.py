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
from typing import Any, Self

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


class JwksEndpoint:
    """A JWKS endpoint on loopback serving the keys of `issuers` (change the
    list at will), answering 503 while `down`, after `delay` seconds;
    `fetched`: the paths requested so far. A context manager (serves inside)."""

    def __init__(self, issuers: list[Issuer]) -> None:
        self.issuers, self.down, self.delay = issuers, False, 0.0
        self.fetched: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.fetched.append(self.path)
                time.sleep(endpoint.delay)
                body = json.dumps({"keys": [key for issuer in endpoint.issuers for key in issuer.jwks["keys"]]})
                self.send_response(503 if endpoint.down else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"

    def __enter__(self) -> Self:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def jwks_server(issuer: Issuer) -> Iterator[tuple[str, list[str]]]:
    """(JWKS URL, the paths fetched so far) of a loopback HTTP server."""
    with JwksEndpoint([issuer]) as endpoint:
        yield endpoint.url, endpoint.fetched


def auth_config(path: Path, keys: Path, *, jwks_url: str | None = None, key_file: Path | None = None) -> Path:
    """An --auth-config file for the test issuer."""
    where = f'jwks_url = "{jwks_url}"' if jwks_url else f'key_file = "{key_file}"'
    path.write_text(f'[oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n{where}\nleeway = 5\n'
                    f'[api_keys]\nfile = "{keys}"\n')
    return path
