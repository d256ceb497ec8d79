"""The hostile probes of issue 14, at their full size, against a live
`transcode serve` with its default limits.

The tests run the same probes smaller (tests/test_server_limits_live.py,
tests/test_server_hostile.py) to stay fast; this script replays them as
they were first measured, on loopback, each bounded in count and time, and
reports the server's resident memory (its whole process tree, sampled every
20 ms) before, at the peak and after each probe:

1. 40 connections each sending an unfinished 16 MB header (was: 113 -> 721 MB);
2. 60 distinct 4 MB Accept headers on a frame URL (was: 365 MB never released);
3. a 16 kB URL listing frame 1 8000 times (was: a 4.2 GB response), and the
   same list cut to fit the URL limit;
4. 4000 slowloris connections (a partial head, a byte every 2 s) from
   127.0.0.2 while one well-behaved client on 127.0.0.1 asks for the study
   list every 0.25 s (was: all 4000 held for 90 s and more).

    python benchmarks/hostile_probes.py [--slowloris 4000] [--out results/]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from fixtures.generate import demo_study
from transcode.bench.measure import save, tree_rss
from transcode.bench.server import free_port, start

MB = 1 << 20


class Sampler:
    """The peak resident memory of a process tree, sampled every 20 ms while active."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self.peak, self._stop = tree_rss(self.pid), threading.Event()
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, tree_rss(self.pid))


def status_of(sock: socket.socket, seconds: float = 10.0) -> tuple[str, int]:
    """The status line the server sent (or how the connection ended) and the bytes received."""
    sock.settimeout(seconds)
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < 64 * MB and (chunk := sock.recv(1 << 16)):
            data += chunk
    return (data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed, no answer"), len(data)


def unfinished_headers(port: int, connections: int = 40, size: int = 16 * MB) -> dict[str, Any]:
    """`connections` sockets each pushing one header of `size` bytes that never ends."""
    socks, sent = [], []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(5)
        socks.append(sock)
        pushed = 0
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            chunk = b"a" * MB
            while pushed < size:
                sock.sendall(chunk)
                pushed += len(chunk)
        sent.append(pushed)
    answers = [status_of(sock, 2)[0] for sock in socks]
    for sock in socks:
        sock.close()
    return {"accepted_bytes_max": max(sent), "answers": sorted(set(answers))}


def accept_headers(port: int, url: str, count: int = 60, size: int = 4 * MB) -> dict[str, Any]:
    """`count` requests for a frame, each with its own `size`-byte Accept header."""
    answers = []
    for n in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: multipart/related; type=\"application/"
                    f"octet-stream\"; x={n}; y=").encode() + b"b" * size + b"\r\n\r\n"
            with contextlib.suppress(OSError):
                sock.sendall(head)
            answers.append(status_of(sock, 5)[0])
    return {"answers": sorted(set(answers))}


def frame_lists(port: int, frame_url: str) -> dict[str, Any]:
    """A URL of 8000 x frame 1 (16 kB), and one cut to fit the default 8 kB URL limit."""
    out = {}
    fits = (8 * 1024 - len(frame_url) - 16) // 2
    for name, repeat in (("16 kB URL, 8000 x frame 1", 8000), (f"8 kB URL, {fits} x frame 1", fits)):
        url = frame_url.replace("/frames/1", "/frames/" + ",".join(["1"] * repeat))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            out[name] = status_of(sock, 30)
    return out


def slowloris(port: int, connections: int, seconds: float = 25.0) -> dict[str, Any]:
    """`connections` partial heads from 127.0.0.2, a byte every 2 s, for
    `seconds`, while a well-behaved client asks for the study list every 0.25 s."""
    socks: list[socket.socket] = []
    for _ in range(connections):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
            sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.setblocking(False)
            socks.append(sock)
        except OSError:
            break
    good: list[tuple[int, float]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.wait(0.25):
            began = time.perf_counter()
            try:
                code = requests.get(f"http://127.0.0.1:{port}/dicomweb/studies", timeout=10).status_code
            except requests.RequestException:
                code = 0
            good.append((code, time.perf_counter() - began))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    began, open_at = time.monotonic(), {}
    held = list(socks)
    while (elapsed := time.monotonic() - began) < seconds:
        still = []
        for sock in held:
            try:
                sock.send(b"X")
                if sock.recv(1 << 16) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                still.append(sock)  # sent, nothing to read: still held
            except OSError:
                sock.close()
        held = still
        open_at[round(elapsed)] = len(held)
        time.sleep(2)
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    served = [seconds for code, seconds in good if code == 200]
    return {"opened": len(socks), "held_by_second": open_at, "held_at_end": len(held),
            "client_answers": dict(Counter(code for code, _ in good)),
            "client_worst_s": max(served, default=float("nan"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slowloris", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo_study(root / "demo")
        subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "demo"), "--archive",
                        str(root / "archive")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = free_port()
        server = start([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(root / "archive"), "--port",
                        str(port), "--log-level", "error"], port)
        try:
            base = f"http://127.0.0.1:{port}/dicomweb"
            study = requests.get(f"{base}/studies", timeout=10).json()[0]["0020000D"]["Value"][0]
            instance = requests.get(f"{base}/studies/{study}/instances", timeout=10).json()[0]
            series, sop = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]
            frame_url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
            sampler = Sampler(server.pid)
            probes: list[tuple[str, Callable[[], Any]]] = [
                ("40 unfinished 16 MB headers", lambda: unfinished_headers(port)),
                ("60 distinct 4 MB Accept headers", lambda: accept_headers(port, frame_url)),
                ("repeated frame lists", lambda: frame_lists(port, frame_url)),
                (f"{args.slowloris} slowloris connections", lambda: slowloris(port, args.slowloris)),
            ]
            for name, probe in probes:
                before = tree_rss(server.pid)
                with sampler.watching():
                    outcome = probe()
                time.sleep(1)
                results[name] = {"rss_before_mb": before / MB, "rss_peak_mb": sampler.peak / MB,
                                 "rss_after_mb": tree_rss(server.pid) / MB, "outcome": outcome}
        finally:
            server.terminate()
            server.wait(30)
    rows = ["| probe | RSS before / peak / after | what happened |", "|---|---|---|"]
    rows += [f"| {name} | {r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f} MB | "
             f"{r['outcome']} |" for name, r in results.items()]
    save(args.out, "hostile_probes", results, "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
