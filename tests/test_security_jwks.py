"""The issuer's JWKS as keys rotate and the issuer goes down: a real loopback
HTTP server that counts every fetch, tokens signed with real keys, and the
Authenticator the server uses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.security import AUDIENCE, ISSUER, Issuer, JwksEndpoint, auth_config
from transcode.security.auth import AuthConfig, Authenticator, Denied, IssuerKeys, OidcConfig

REFETCH = 2.0  # seconds between fetches for an unknown key id (60 by default)


@pytest.fixture
def jwks() -> Iterator[JwksEndpoint]:
    with JwksEndpoint([]) as endpoint:
        yield endpoint


def authenticator(jwks: JwksEndpoint) -> Authenticator:
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
    assert len(jwks.fetched) == 1
    jwks.issuers = [first, rotated]  # the issuer rotates: the new key id is unknown here
    assert outcome(auth, rotated.token("b")) == 401  # fetched moments ago: not again
    assert len(jwks.fetched) == 1
    forged = [Issuer(f"forged-{n}").token() for n in range(16)]  # made now: making RSA keys takes a while
    time.sleep(REFETCH + 0.1)
    jwks.delay = 0.3  # long enough for every thread below to be waiting on the same fetch
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: outcome(auth, rotated.token(f"user-{n}")), range(16)))
    assert answers == [f"user-{n}" for n in range(16)]
    assert len(jwks.fetched) == 2
    with ThreadPoolExecutor(16) as pool:  # a flood of unknown key ids (forged tokens): no fetch within the interval
        answers = list(pool.map(lambda token: outcome(auth, token), forged))
    assert answers == [401] * 16 and len(jwks.fetched) == 2
    time.sleep(REFETCH + 0.1)
    assert outcome(auth, Issuer("forged-late").token()) == 401
    assert len(jwks.fetched) == 3  # after the interval, one more


def test_the_last_good_keys_serve_while_the_issuer_is_down(jwks, monkeypatch) -> None:
    monkeypatch.setattr(IssuerKeys, "LIFESPAN", REFETCH)  # the cached set expires within the test
    issuer = Issuer("k1")
    jwks.issuers = [issuer]
    auth = authenticator(jwks)
    assert outcome(auth, issuer.token("before")) == "before"
    jwks.down = True
    time.sleep(REFETCH + 0.1)  # the cached set has expired: the next token tries a fetch, which fails
    assert outcome(auth, issuer.token("during")) == "during"
    assert len(jwks.fetched) == 2
    assert outcome(auth, Issuer("unknown").token()) == 401  # unknown key id: refused, fetched too recently
    assert outcome(auth, issuer.token("still")) == "still"
    assert len(jwks.fetched) == 2
    jwks.down = False
    time.sleep(REFETCH + 0.1)
    rotated = Issuer("k2")
    jwks.issuers = [issuer, rotated]
    assert outcome(auth, rotated.token("after")) == "after"  # back up: the new key is fetched
    assert len(jwks.fetched) == 3


def test_an_issuer_never_reached_is_asked_at_most_once_per_interval(jwks) -> None:
    jwks.down = True
    issuer = Issuer("k1")
    jwks.issuers = [issuer]
    auth = authenticator(jwks)
    assert [outcome(auth, issuer.token(f"u{n}")) for n in range(5)] == [503] * 5
    assert len(jwks.fetched) == 1
    jwks.down = False
    time.sleep(REFETCH + 0.1)
    assert outcome(auth, issuer.token("later")) == "later"
    assert len(jwks.fetched) == 2
