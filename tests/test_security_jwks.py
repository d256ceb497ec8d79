"""The issuer's JWKS as keys rotate and the issuer goes down: a real loopback
HTTP server that counts every fetch, tokens signed with real keys, and the
Authenticator the server uses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.security import AUDIENCE, ISSUER, Issuer, auth_config
from transcode.security.auth import AuthConfig, Authenticator, Denied, IssuerKeys, OidcConfig

REFETCH = 2.0  # seconds between fetches for an unknown key id (60 by default)


class Jwks:
    """A JWKS endpoint serving `issuers`' keys (changed at will), answering
    503 while `down`, after `delay` seconds; `fetches` counts requests."""

    def __init__(self) -> None:
        self.issuers: list[Issuer] = []
        self.down = False
        self.delay = 0.0
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                time.sleep(owner.delay)
                body = json.dumps({"keys": [key for issuer in owner.issuers for key in issuer.jwks["keys"]]}).encode()
                self.send_response(503 if owner.down else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    endpoint = Jwks()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()


def authenticator(jwks: Jwks) -> Authenticator:
    return Authenticator(AuthConfig(Path("/nonexistent/keys.json"),
                                    OidcConfig(ISSUER, AUDIENCE, jwks_url=jwks.url, jwks_refetch=REFETCH)))


def outcome(auth: Authenticator, token: str) -> int | str:
    """The subject `token` authenticates as, or the status it is refused with."""
    try:
        return auth.authenticate(token).who
    except Denied as exc:
        return exc.status


def test_jwks_refetch_is_an_option_of_the_auth_config(tmp_path) -> None:
    path = auth_config(tmp_path / "auth.toml", tmp_path / "keys.json", jwks_url="http://127.0.0.1:9/certs")
    path.write_text(path.read_text().replace("leeway = 5", "leeway = 5\njwks_refetch = 15"))
    assert AuthConfig.load(path, tmp_path / "keys.json").oidc.jwks_refetch == 15.0
    assert OidcConfig(ISSUER, AUDIENCE).jwks_refetch == 60.0


def test_a_new_key_id_refetches_at_most_once_per_interval_and_concurrent_requests_share_the_fetch(jwks) -> None:
    first, rotated = Issuer("k1"), Issuer("k2")
    jwks.issuers = [first]
    auth = authenticator(jwks)
    assert outcome(auth, first.token("a")) == "a"
    assert jwks.fetches == 1
    jwks.issuers = [first, rotated]  # the issuer rotates: the new key id is unknown here
    assert outcome(auth, rotated.token("b")) == 401  # fetched moments ago: not again
    assert jwks.fetches == 1
    forged = [Issuer(f"forged-{n}").token() for n in range(16)]  # made now: making RSA keys takes a while
    time.sleep(REFETCH + 0.1)
    jwks.delay = 0.3  # long enough for every thread below to be waiting on the same fetch
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: outcome(auth, rotated.token(f"user-{n}")), range(16)))
    assert answers == [f"user-{n}" for n in range(16)]
    assert jwks.fetches == 2
    with ThreadPoolExecutor(16) as pool:  # a flood of unknown key ids (forged tokens): no fetch within the interval
        answers = list(pool.map(lambda token: outcome(auth, token), forged))
    assert answers == [401] * 16 and jwks.fetches == 2
    time.sleep(REFETCH + 0.1)
    assert outcome(auth, Issuer("forged-late").token()) == 401
    assert jwks.fetches == 3  # after the interval, one more


def test_the_last_good_keys_serve_while_the_issuer_is_down(jwks, monkeypatch) -> None:
    monkeypatch.setattr(IssuerKeys, "LIFESPAN", REFETCH)  # the cached set expires within the test
    issuer = Issuer("k1")
    jwks.issuers = [issuer]
    auth = authenticator(jwks)
    assert outcome(auth, issuer.token("before")) == "before"
    jwks.down = True
    time.sleep(REFETCH + 0.1)  # the cached set has expired: the next token tries a fetch, which fails
    assert outcome(auth, issuer.token("during")) == "during"
    assert jwks.fetches == 2
    assert outcome(auth, Issuer("unknown").token()) == 401  # unknown key id: refused, fetched too recently
    assert outcome(auth, issuer.token("still")) == "still"
    assert jwks.fetches == 2
    jwks.down = False
    time.sleep(REFETCH + 0.1)
    rotated = Issuer("k2")
    jwks.issuers = [issuer, rotated]
    assert outcome(auth, rotated.token("after")) == "after"  # back up: the new key is fetched
    assert jwks.fetches == 3


def test_an_issuer_never_reached_is_asked_at_most_once_per_interval(jwks) -> None:
    jwks.down = True
    issuer = Issuer("k1")
    jwks.issuers = [issuer]
    auth = authenticator(jwks)
    assert [outcome(auth, issuer.token(f"u{n}")) for n in range(5)] == [503] * 5
    assert jwks.fetches == 1
    jwks.down = False
    time.sleep(REFETCH + 0.1)
    assert outcome(auth, issuer.token("later")) == "later"
    assert jwks.fetches == 2
