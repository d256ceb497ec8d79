"""Who is calling, and what they may do: OIDC bearer tokens and API keys.

Tokens are JWTs checked with PyJWT (MIT; `cryptography` for RSA/EC):
signature against the issuer's JWKS (fetched by `PyJWKClient` and cached:
`IssuerKeys`) or a local key file (PEM public key or JWKS JSON), then `iss`, `aud`, `exp`
(required) and `nbf`, with `leeway` seconds of clock skew. Scopes come from
a claim (`scope`, space separated, or a list such as Azure AD's `scp` or
`roles`), mapped to ours by name: read (search, retrieve, render), write
(STOW-RS), admin (everything). A token verified once is kept (by its text,
up to its expiry) so that a viewer's hundreds of frame requests are one
signature check.

API keys (keys.py) are sent as `Authorization: Bearer tck_...` or
`X-API-Key: tck_...`. Refusals are data (`Denied`): 401 with RFC 6750's
`invalid_token`/`invalid_request` for no or a bad credential, 403 with
`insufficient_scope` for a missing scope, 403 for a revoked key, and 503
when the issuer's JWKS cannot be fetched (its fault, not the token's).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from transcode.security.keys import PREFIX, KeyFile, UnknownKey

log = logging.getLogger(__name__)

READ, WRITE, ADMIN = "read", "write", "admin"
_CACHED_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: `who` as the audit trail writes it, and its scopes."""

    who: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN in self.scopes


ANONYMOUS = Principal("anonymous", frozenset({ADMIN}))


class Denied(Exception):
    """A refused request: `status` 401, 403 (or 503), the RFC 6750 `error` code
    (None: no credential was sent), our `reason` code and a sentence."""

    def __init__(self, status: int, error: str | None, reason: str, detail: str, *,
                 who: str = "anonymous", scope: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.reason, self.detail = status, error, reason, detail
        self.who, self.scope = who, scope

    def challenge(self, realm: str) -> str:
        """The `WWW-Authenticate` header (RFC 6750 section 3)."""
        parts = [f'realm="{realm}"']
        if self.error:
            parts += [f'error="{self.error}"', f'error_description="{self.detail}"']
        if self.scope:
            parts.append(f'scope="{self.scope}"')
        return "Bearer " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """The identity provider: who issues tokens, for which audience, where
    its keys are (`jwks_url`, or `key_file`: PEM or JWKS JSON)."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    key_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0
    scope_claim: str = "scope"
    jwks_refetch: float = 60.0
    scope_names: dict[str, str] = field(default_factory=lambda: {READ: READ, WRITE: WRITE, ADMIN: ADMIN})


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Authentication as configured: tokens (`oidc`, optional) and the API key file."""

    api_keys: Path
    oidc: OidcConfig | None = None
    realm: str = "transcode"

    @classmethod
    def load(cls, path: Path, default_keys: Path) -> AuthConfig:
        """From a TOML file (`[oidc]`, `[oidc.scopes]`, `[api_keys] file`);
        ValueError for a file that does not say what is needed."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        oidc = None
        if (section := data.get("oidc")) is not None:
            missing = [k for k in ("issuer", "audience") if not section.get(k)]
            if missing or not (section.get("jwks_url") or section.get("key_file")):
                raise ValueError(f"{path}: [oidc] needs issuer, audience and jwks_url or key_file")
            given = {k: section[k] for k in ("jwks_url", "scope_claim") if k in section}
            if "key_file" in section:
                given["key_file"] = Path(section["key_file"])
            if "algorithms" in section:
                given["algorithms"] = tuple(section["algorithms"])
            for number in ("leeway", "jwks_refetch"):
                if number in section:
                    given[number] = float(section[number])
            oidc = OidcConfig(section["issuer"], section["audience"],
                              scope_names={READ: READ, WRITE: WRITE, ADMIN: ADMIN, **section.get("scopes", {})},
                              **given)
        keys = Path(data.get("api_keys", {}).get("file", default_keys))
        return cls(keys, oidc, data.get("realm", "transcode"))


class Authenticator:
    """Checks a request's credential against `config`."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.keys = KeyFile(config.api_keys)
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._jwks = self._local_keys = None
        if (oidc := config.oidc) is not None:
            if oidc.jwks_url:
                self._jwks = IssuerKeys(oidc.jwks_url, oidc.jwks_refetch)
            else:
                self._local_keys = _read_keys(oidc.key_file)

    @staticmethod
    def credential(headers: list[tuple[bytes, bytes]]) -> str:
        """The credential of a request (raw ASGI headers); Denied when none or malformed."""
        header = None
        for name, value in headers:
            if name == b"x-api-key":
                return value.decode("latin-1").strip()
            if name == b"authorization":
                header = value
        if header is None:
            raise Denied(401, None, "no_credentials", "this server needs a bearer token or an API key")
        scheme, _, value = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Denied(401, "invalid_request", "bad_credentials", "use the Bearer scheme")
        return value.strip()

    def cached(self, credential: str) -> Principal | None:
        """A principal for a token verified before and not expired, or an
        API key (a hash and a dictionary look-up); None: call `authenticate`."""
        if credential.startswith(PREFIX):
            return self._key(credential)
        hit = self._verified.get(credential)  # one dict look-up: atomic, no lock needed to read
        if hit is not None and hit[1] + (self.config.oidc.leeway if self.config.oidc else 0) > time.time():
            return hit[0]
        return None

    def authenticate(self, credential: str) -> Principal:
        """The principal `credential` stands for; Denied otherwise. May
        fetch the issuer's JWKS: call it off the event loop."""
        if (principal := self.cached(credential)) is not None:
            return principal
        oidc = self.config.oidc
        if oidc is None:
            raise Denied(401, "invalid_token", "bad_credentials", "not a valid API key (no token issuer is set up)")
        try:
            key = self._jwks.get_signing_key_from_jwt(credential) if self._jwks else self._local(credential)
            claims = jwt.decode(credential, key, algorithms=list(oidc.algorithms), audience=oidc.audience,
                                issuer=oidc.issuer, leeway=oidc.leeway, options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWKClientConnectionError:  # the issuer, not the token: say so, and let the client retry
            raise Denied(503, None, "issuer_unreachable", "the token issuer's keys cannot be fetched now") from None
        except jwt.ExpiredSignatureError:
            raise Denied(401, "invalid_token", "token_expired", "the token has expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:  # TypeError: a key of another type than the alg
            raise Denied(401, "invalid_token", "bad_token", f"the token is not valid: {_sentence(exc)}") from None
        granted = _scopes(claims.get(oidc.scope_claim))
        principal = Principal(str(claims.get("sub", "unknown")),
                              frozenset(ours for ours, theirs in oidc.scope_names.items() if theirs in granted))
        with self._lock:
            self._verified[credential] = (principal, float(claims["exp"]))
            while len(self._verified) > _CACHED_TOKENS:
                self._verified.popitem(last=False)
        return principal

    def _key(self, credential: str) -> Principal:
        try:
            key = self.keys.find(credential)
        except UnknownKey:
            raise Denied(401, "invalid_token", "bad_credentials", "not a valid API key") from None
        who = f"key:{key.id}"
        if key.revoked:
            raise Denied(403, "invalid_token", "key_revoked", "this API key has been revoked", who=who)
        return Principal(who, frozenset(key.scopes))

    def _local(self, token: str) -> Any:
        keys = self._local_keys
        if isinstance(keys, jwt.PyJWKSet):
            kid = jwt.get_unverified_header(token).get("kid")
            found = [k for k in keys.keys if kid is None or k.key_id == kid]
            if not found:
                raise ValueError(f"no key {kid!r} in the key file")
            return found[0]
        return keys


class IssuerKeys(jwt.PyJWKClient):
    """The issuer's JWKS: PyJWT's client (the key set cached for `LIFESPAN`
    seconds; a token naming a key id not in it refetches the set, at most
    once per `refetch` seconds, under one lock, so that concurrent requests
    share one fetch), plus what it lacks: when a fetch fails, the last key
    set fetched keeps serving until a fetch succeeds, and a failed fetch is
    not retried within `refetch` seconds (with no key set yet, each caller
    gets `PyJWKClientConnectionError` at once rather than waiting on a dead
    issuer in turn). No per-key cache (`cache_keys`): it never expires, so a
    key the issuer withdrew would stay trusted."""

    LIFESPAN = 600.0
    TIMEOUT = 10.0

    def __init__(self, url: str, refetch: float) -> None:
        super().__init__(url, cache_jwk_set=True, lifespan=self.LIFESPAN, timeout=self.TIMEOUT,
                         cooldown_duration=refetch)
        self._last_good: jwt.PyJWKSet | None = None
        self._failed_at: float | None = None

    def fetch_data(self) -> Any:
        """The key set from the issuer, or the last one fetched if the issuer cannot be reached now."""
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.cooldown_duration:
            if self._last_good is None:
                raise jwt.PyJWKClientConnectionError("the issuer's keys could not be fetched moments ago")
            return self._last_good
        try:
            data = super().fetch_data()
        except jwt.PyJWKClientConnectionError as exc:
            self._failed_at = time.monotonic()
            if self._last_good is None:
                raise
            log.warning("the token issuer's keys cannot be fetched (%s): using those fetched before", exc)
            return self._last_good
        self._last_good, self._failed_at = jwt.PyJWKSet.from_dict(data), None
        return self._last_good


def require(principal: Principal, method: str) -> None:
    """Denied (403) unless `principal` may do `method`: reads need read, anything else write."""
    needed = READ if method in ("GET", "HEAD") else WRITE
    if not principal.may(needed):
        raise Denied(403, "insufficient_scope", "insufficient_scope", f"this request needs the {needed} scope",
                     who=principal.who, scope=needed)


def _read_keys(path: Path | None) -> Any:
    """A PEM public key (text, as PyJWT takes it) or a JWKS (`PyJWKSet`)."""
    text = Path(path).read_text() if path else ""
    if text.lstrip().startswith("{"):
        return jwt.PyJWKSet.from_dict(json.loads(text))
    return text


def _scopes(claim: object) -> set[str]:
    if isinstance(claim, str):
        return set(claim.split())
    if isinstance(claim, list):
        return {str(item) for item in claim}
    return set()


def _sentence(exc: Exception) -> str:
    """PyJWT's message, without quotes that would break the WWW-Authenticate header."""
    return str(exc).replace('"', "'")[:200]
