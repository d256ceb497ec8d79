"""The server's limits on every size and time a client controls, with their
defaults and `transcode serve` options.

Kept apart from the server package so that the command line builds its
parser without importing the server. Enforced by `server.admission` (what a
whole request head may say) and `server.protocol` (what must hold before a
head is whole: its size, and how long a client may take).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Every limit, with its default (`transcode serve` options set them).

    `max_head_bytes`: request line and header lines together (431 beyond);
    `max_headers`: header lines (431); `max_url_bytes`: the request target
    (414); `max_query_keys`: query parameters (400); `max_frames`: frames
    in one request, each once (400); `max_upload_bytes` and `max_upload_parts`:
    a STOW-RS body and its instances (413); `per_client`: requests in flight
    from one address (429); `connections_per_client`: connections open from
    one address (beyond, a new one is closed at once: a slowloris flood from
    one address cannot fill `max_connections`); `max_connections`:
    connections and requests at once in a server process (503 beyond); `head_timeout`: seconds for a
    whole request head; `body_idle_timeout`: seconds without a byte while an
    upload is read; `keep_alive`: seconds an idle connection is kept.
    `allowed_hosts`: the `Host` values accepted (any when empty)."""

    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    max_query_keys: int = 100
    max_frames: int = 4096
    max_upload_bytes: int = 4 << 30
    max_upload_parts: int = 10000
    per_client: int = 32
    connections_per_client: int = 256
    max_connections: int = 1000
    head_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    keep_alive: float = 5.0
    allowed_hosts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The limits as JSON-ready values (they cross into worker processes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Limits:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "allowed_hosts" in values:
            values["allowed_hosts"] = tuple(values["allowed_hosts"])
        return cls(**values)


#: `transcode serve` options: (field, option, help); each default is the field's.
OPTIONS = (
    ("max_head_bytes", "--max-head-bytes", "request line and headers together; 431 beyond"),
    ("max_headers", "--max-headers", "header lines per request; 431 beyond"),
    ("max_url_bytes", "--max-url-bytes", "request target (path and query); 414 beyond"),
    ("max_query_keys", "--max-query-keys", "query parameters per request; 400 beyond"),
    ("max_frames", "--max-frames", "frames per frames request, each named once; 400 beyond"),
    ("max_upload_bytes", "--max-upload-bytes", "STOW-RS body; 413 beyond"),
    ("max_upload_parts", "--max-upload-parts", "instances per STOW-RS request; 413 beyond"),
    ("per_client", "--per-client", "requests in flight per client address; 429 beyond"),
    ("connections_per_client", "--connections-per-client",
     "connections open from one client address; a new one beyond is closed at once"),
    ("max_connections", "--max-connections", "connections and requests at once per server process; 503 beyond"),
    ("head_timeout", "--head-timeout", "seconds for a whole request head, else the connection is closed"),
    ("body_idle_timeout", "--body-idle-timeout", "seconds without a byte of a request body, else closed"),
    ("keep_alive", "--keep-alive", "seconds an idle connection is kept open"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The limit options of `transcode serve`, and `--allowed-host`."""
    group = parser.add_argument_group("limits (see README, Deployment and security)")
    defaults = Limits()
    for name, option, text in OPTIONS:
        default = getattr(defaults, name)
        group.add_argument(option, dest=f"limit_{name}", type=type(default), default=default, metavar="N",
                           help=f"{text} (default: %(default)s)")
    group.add_argument("--allowed-host", action="append", default=[], metavar="HOST[:PORT]",
                       help="answer requests with this Host header too (repeatable; default: the address bound and "
                            "localhost, 127.0.0.1, [::1], with the port)")


def from_arguments(args: argparse.Namespace) -> Limits:
    """The limits `add_arguments`' options give, the allowed hosts included."""
    values = {name: getattr(args, f"limit_{name}") for name, _, _ in OPTIONS}
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return Limits(**values, allowed_hosts=allowed_hosts(args.host, args.port, args.allowed_host))


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The `Host` values a server bound to `host`:`port` answers by default:
    that address and the loopback names, with and without the port (a
    browser leaves out port 80), plus `extra` as given."""
    bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
    names = {bound, "localhost", "127.0.0.1", "[::1]"}
    if host in ("0.0.0.0", "::"):  # every interface: its addresses are unknown here, so the names given count
        names -= {bound}
    return tuple(sorted({f"{name}:{port}" for name in names} | names | {host.lower() for host in extra}))
