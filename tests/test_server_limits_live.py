"""Limits and timeouts against a live uvicorn on loopback, with bounded loops:
large or endless request heads answered 431, slow clients (partial heads,
unfinished uploads) dropped while others are served, and `transcode serve`
wiring it all (Host check, limits from options, the upload spool cleared)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.served import Served, serve_command
from tests.test_server_live import serve
from transcode.archive import FolderArchive
from transcode.limits import Limits
from transcode.server.protocol import bounded
from transcode.service import UPLOADS

LIMITS = Limits(head_timeout=1.0, body_idle_timeout=1.0, max_head_bytes=8192, max_headers=50, per_client=2)


@pytest.fixture(scope="module")
def address(served: Served) -> Iterator[tuple[str, int]]:
    with FolderArchive(served.root) as archive:  # writable: STOW-RS reads the body
        for url in serve(archive, LIMITS, http=bounded(LIMITS), timeout_keep_alive=LIMITS.keep_alive):
            parsed = urlsplit(url)
            yield parsed.hostname, parsed.port  # type: ignore[misc]


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (or 10 s pass)."""
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds` (whatever it sends first)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def test_large_header_is_431(address) -> None:
    sock = _connect(address)
    _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert _answer(sock).startswith(b"HTTP/1.1 431 ")


def test_many_headers_are_431(address) -> None:
    sock = _connect(address)
    lines = b"".join(b"X-%d: v\r\n" % n for n in range(LIMITS.max_headers + 1))
    _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n")
    assert _answer(sock).startswith(b"HTTP/1.1 431 ")


def test_endless_headers_are_cut_off_with_431(address) -> None:
    """40 connections each sending an unfinished 1 MB header (the issue's
    probe sent 16 MB): each is answered 431 and closed long before its end."""
    before = _rss()
    socks = [_connect(address) for _ in range(40)]
    for sock in socks:
        _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
    for sock in socks:
        for _ in range(16):  # 1 MB in 64 kB pieces, never finished
            _send_all(sock, b"a" * 65536)
    assert _rss() - before < 20 << 20  # the server (in this process) did not keep the 40 MB sent
    for sock in socks:
        assert _answer(sock).startswith(b"HTTP/1.1 431 ")


def test_slow_clients_are_dropped_and_others_served(address) -> None:
    """200 slowloris connections (the issue held 4000): each is closed once
    the head timeout passes, and a normal client is served meanwhile."""
    socks = [_connect(address) for _ in range(200)]
    for sock in socks:
        _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    r = requests.get(f"http://{address[0]}:{address[1]}/dicomweb/studies", timeout=10)
    assert r.status_code == 200 and len(r.json()) == 2
    assert time.monotonic() - started < LIMITS.head_timeout  # served while they hang
    assert all(_closed_within(sock, LIMITS.head_timeout + 3) for sock in socks)
    assert time.monotonic() - started < LIMITS.head_timeout + 5


def test_connections_from_one_address_are_bounded(served: Served) -> None:
    """A flood of connections from one address is capped at
    `connections_per_client`: one more is closed at once, another address
    is served, and a slot freed is taken again."""
    limits = dataclasses.replace(LIMITS, connections_per_client=4, head_timeout=10.0)  # only the cap closes in 2 s
    with FolderArchive(served.root) as archive:
        for url in serve(archive, limits, http=bounded(limits)):
            flood = functools.partial(socket.create_connection, ("127.0.0.1", urlsplit(url).port), timeout=10,
                                      source_address=("127.0.0.2", 0))

            held = [flood() for _ in range(limits.connections_per_client)]
            for sock in held:
                _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            time.sleep(0.2)  # the server has accepted them all
            assert _closed_within(flood(), 2)  # one more from the same address: closed at once
            assert requests.get(f"{url}/studies", timeout=10).status_code == 200  # another address is served
            held[0].close()
            time.sleep(0.2)
            again = flood()
            _send_all(again, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _answer(again).startswith(b"HTTP/1.1 200 ")
            for sock in held[1:]:
                sock.close()


def test_a_trusted_proxy_is_not_capped(served: Served) -> None:
    """Every client behind a proxy trusted with --forwarded-allow-ips has
    its address: its connections are not counted against the cap."""
    limits = dataclasses.replace(LIMITS, connections_per_client=2, head_timeout=10.0)
    with FolderArchive(served.root) as archive:
        for url in serve(archive, limits, http=bounded(limits), proxy_headers=True, forwarded_allow_ips="127.0.0.2"):
            proxy = functools.partial(socket.create_connection, ("127.0.0.1", urlsplit(url).port), timeout=10,
                                      source_address=("127.0.0.2", 0))
            held = [proxy() for _ in range(limits.connections_per_client + 3)]
            for n, sock in enumerate(held):  # each a client of its own behind the proxy (per_client is 2)
                _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                b"X-Forwarded-For: 10.1.2.%d\r\n\r\n" % n)
            assert all(_answer(sock).startswith(b"HTTP/1.1 200 ") for sock in held)


def test_unfinished_upload_is_dropped(address) -> None:
    sock = _connect(address)
    _send_all(sock, b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
                    b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n\r\n--b\r\n')
    started = time.monotonic()
    assert _closed_within(sock, LIMITS.body_idle_timeout + 3)
    assert time.monotonic() - started >= LIMITS.body_idle_timeout * 0.9


def test_kept_alive_connection_outlives_the_head_timeout(address) -> None:
    """The head timeout runs only while a head arrives: a client idle between
    requests on one connection (under the keep-alive time) is not cut off."""
    sock = _connect(address)
    for _ in range(2):
        _send_all(sock, b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ") and len(body) == length
        time.sleep(LIMITS.head_timeout * 1.5)
    sock.close()


def test_requests_in_flight_per_client_are_bounded(address) -> None:
    """Two uploads in flight (held by their unfinished bodies) are this
    client's allowance: a third request is 429 until they are dropped."""
    socks = [_connect(address) for _ in range(LIMITS.per_client)]
    for sock in socks:
        _send_all(sock, b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
                        b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n\r\n--b\r\n')
    time.sleep(0.3)  # both reach the app
    url = f"http://{address[0]}:{address[1]}/dicomweb/studies"
    r = requests.get(url, timeout=10)
    assert r.status_code == 429 and r.json()["error"] == "too_many_requests" and r.headers["Retry-After"]
    assert all(_closed_within(sock, LIMITS.body_idle_timeout + 3) for sock in socks)
    time.sleep(0.3)
    assert requests.get(url, timeout=10).status_code == 200


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_serve_applies_its_limit_options(tmp_path: Path) -> None:
    """`transcode serve` with limit options: the Host check (what it was
    bound to, and --allowed-host), a head limit answered 431, and the upload
    spool a killed server left cleared at start."""
    archive = tmp_path / "archive"
    FolderArchive(archive).close()
    leftover = archive / UPLOADS / "killed-upload"
    leftover.mkdir(parents=True)
    (leftover / "000000.dcm").write_bytes(b"never acknowledged")
    with serve_command(archive, "--max-head-bytes", "4096", "--allowed-host", "pacs.example:8080") as base:
        r = requests.get(f"{base}/studies", timeout=5)
        assert r.status_code == 200 and r.json() == []
        assert not leftover.exists()
        assert requests.get(f"{base}/studies", headers={"Host": "pacs.example:8080"}, timeout=5).status_code == 200
        refused = requests.get(f"{base}/studies", headers={"Host": "rebind.example"}, timeout=5)
        assert refused.status_code == 400 and refused.json()["error"] == "host_not_allowed"
        big = requests.get(f"{base}/studies", headers={"X-Big": "a" * 5000}, timeout=5)
        assert big.status_code == 431


def test_serve_refuses_a_limit_that_is_not_positive(tmp_path: Path, capsys) -> None:
    from transcode.cli import main

    assert main(["serve", "--archive", str(tmp_path / "new"), "--head-timeout", "0"]) == 2
    assert "--head-timeout must be positive" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # refused before anything is created
