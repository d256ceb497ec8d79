"""Frame serving on loopback, against a bare uvicorn endpoint in the same run
(and with authentication and the audit trail on against off: secured.py).

A CT series (single-frame 512x512 16-bit instances, generated and ingested)
is served by `transcode serve` in its own process. Concurrent clients
(threads with keep-alive connections, in this process) fetch every frame in
turn, for a fixed time per case:

- full frames as stored (HTJ2K, `transfer-syntax=*`, what OHIF asks for),
- level-2 prefixes (`?level=2`, a quarter-size preview),
- the bare endpoint: a minimal ASGI app under uvicorn, in its own process,
  answering every request with one frame's multipart body from memory.

Full frames and level-2 prefixes are also served by a second server over the
same archive with integrity checks turned off (`TRANSCODE_UNCHECKED_READS`),
alternating with the checked one in sixteenths of each case's time (checked,
unchecked, unchecked, checked, four times), so that both see the same machine;
for these the server process's CPU time per frame is reported too (from
/proc), which other load on the machine disturbs less than throughput.

Authentication and the audit trail cost a few per cent, less than this
machine's noise between two slices of the same work: their comparison
runs in `SECURED_ROUNDS` rounds, each beside the same comparison between
two identical open servers, and the report gives the median and range of
both (what a ratio between equals reads here).

Each server first answers every path once, unmeasured: a server measured
cold pays its look-ups inside the first comparison (the secured server,
used last, lost about 7% of its first ratio to that).

Reported: frames per second and p50/p99 latency per case and concurrency;
the ratio of full-frame serving to the bare endpoint and of checked to
unchecked serving, and the same in this process request by request
(`check_cost`); and the time to a 128-pixel thumbnail (the server's
/thumbnail path: level prefix read, checked and decoded, then resized)
against a full decode plus the same resize.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import uvicorn

from transcode.archive import FolderArchive
from transcode.bench import secured
from transcode.bench.dataset import write_instance
from transcode.phantom import phantom
from transcode.server import create_app, render
from transcode.server.frames import FrameReader
from transcode.server.integrity import UNCHECKED
from transcode.server.lookup import Lookup

ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
#: Rounds of the secured / open comparison, each beside the same between two identical open servers
SECURED_ROUNDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def load(port: int, paths: list[str], clients: int, seconds: float, accept: str = ACCEPT) -> dict[str, float]:
    """`clients` threads, each on one keep-alive connection, cycling through
    `paths` for `seconds` (asking for `accept`); frames per second and
    latency percentiles."""
    return summary(*timed_requests(port, paths, clients, seconds, accept))


def paired(servers: tuple[tuple[int, int], tuple[int, int]], paths: list[str], clients: int,
           seconds: float, headers: tuple[dict[str, str], dict[str, str]] = ({}, {})) -> tuple[dict[str, float], ...]:
    """`load` on two servers (port, process id), `seconds` each, in sixteen
    alternating slices (A B B A, four times); each also with the server
    process's CPU time per request, which other load on the machine disturbs
    less than throughput. `headers`: sent to each server besides Accept."""
    runs: list[list[tuple[list[float], float]]] = [[], []]
    cpu = [0.0, 0.0]
    for which in (0, 1, 1, 0) * 4:
        port, pid = servers[which]
        before = cpu_seconds(pid)
        runs[which].append(timed_requests(port, paths, clients, seconds / 16, headers=headers[which]))
        cpu[which] += cpu_seconds(pid) - before
    results = []
    for run, used in zip(runs, cpu, strict=True):
        result = summary([t for times, _ in run for t in times], sum(e for _, e in run))
        result["cpu_us"] = used / result["requests"] * 1e6
        results.append(result)
    return tuple(results)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    latencies = sorted(latencies)
    return {"fps": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1e3,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3, "requests": len(latencies)}


def timed_requests(port: int, paths: list[str], clients: int, seconds: float, accept: str = ACCEPT,
                   headers: dict[str, str] | None = None, at_least: int = 0) -> tuple[list[float], float]:
    """Each request's latency, and the seconds they took in all; each
    client goes on past `seconds` until it made `at_least` requests (one
    pass over `paths` warms a server's caches before it is measured)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine, n = [], offset
        while time.perf_counter() < stop or n - offset < at_least:
            began = time.perf_counter()
            conn.request("GET", paths[n % len(paths)], headers={"Accept": accept, **(headers or {})})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{paths[n % len(paths)]}: {response.status}")
            mine.append(time.perf_counter() - began)
            n += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i * len(paths) // clients,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - began


def bare_app(body: bytes, content_type: str):
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_bare(port: int, body_file: Path) -> None:
    content_type, body = json.loads(body_file.with_suffix(".json").read_text())["content_type"], body_file.read_bytes()
    uvicorn.run(bare_app(body, content_type), host="127.0.0.1", port=port, log_level="warning")


def thumbnail_times(archive: Path, repeats: int = 20) -> dict[str, float]:
    """Seconds per 128-px thumbnail of one CT frame: the server's path (level
    prefix read, checked and decoded) against a full decode and the same
    resize and encode."""
    with FolderArchive(archive) as store:
        catalog, reader = Lookup(store.index), FrameReader(store)
        row = next(store.index.instances())
        stored = catalog.instance(row.study_uid, row.series_uid, row.sop_uid)
        index = stored.index(1)
        size = render.fit(index.width, index.height, (128, 128))
        level = render.level_for(index, size)
        ds = pydicom.dcmread(store.root / row.path, stop_before_pixels=True)
        best = {}
        for name, chosen in (("thumbnail_s", level), ("full_decode_resize_s", None)):
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                pixels = render.to_rgb_or_grey(reader.pixels(stored, 1, chosen), ds, None)
                render.encode_image(pixels, size, "image/jpeg")
                times.append(time.perf_counter() - began)
            best[name] = min(times)
        best["thumbnail_bytes_read"] = index.level_end(level)
        best["frame_bytes"] = index.length
        return best


def check_cost(archive: Path, repeats: int = 10) -> dict[str, float]:
    """Microseconds per frame request through the whole application in this
    process (no sockets), integrity checks on and off, alternating request
    by request so that both see the same machine from moment to moment: the
    checks' cost where the load test's figures are too noisy to show it."""
    with FolderArchive(archive) as store:
        apps = []
        for unchecked in ("0", "1"):
            os.environ[UNCHECKED] = unchecked  # read when the application is made
            apps.append(create_app(store))
        del os.environ[UNCHECKED]
        return alternating(store, ((apps[0], {}), (apps[1], {})), ("", "-unchecked"), repeats)


def alternating(store: FolderArchive, apps: tuple[tuple[Any, dict[str, str]], tuple[Any, dict[str, str]]],
                names: tuple[str, str], repeats: int) -> dict[str, float]:
    """Median microseconds per frame request (full, and level 2) of each
    (application, extra headers), alternating request by request: keys
    `full{name}_us`, `level2{name}_us` for each of `names`."""
    paths = [f"/dicomweb/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}/frames/1"
             for r in store.index.instances()]
    headers = [[(b"host", b"bench"), (b"accept", ACCEPT.encode()),
                *((k.lower().encode(), v.encode()) for k, v in extra.items())] for _, extra in apps]

    async def request(which: int, path: str, query: bytes) -> None:
        status = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await apps[which][0]({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                              "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                              "query_string": query, "headers": headers[which], "client": ("127.0.0.1", 1),
                              "server": ("127.0.0.1", 80)}, receive, send)
        if status != [200]:
            raise RuntimeError(f"{path}?{query.decode()}: {status}")

    async def measure() -> dict[str, float]:
        results = {}
        for case, query in (("full", b""), ("level2", b"level=2")):
            times: tuple[list[float], list[float]] = ([], [])
            for repeat in range(repeats + 1):  # the first pass fills the caches, unmeasured
                for i, path in enumerate(paths):
                    for which in ((0, 1) if (i + repeat) % 2 else (1, 0)):
                        began = time.perf_counter()
                        await request(which, path, query)
                        if repeat:
                            times[which].append(time.perf_counter() - began)
            for name, t in zip(names, times, strict=True):
                results[f"{case}{name}_us"] = statistics.median(t) * 1e6
        return results

    return asyncio.run(measure())


def ct_sources(folder: Path, files: int) -> tuple[str, str]:
    """`files` CT instances (512x512, 12 bits signed, one series) written
    into the new folder `folder`; their study and series UIDs."""
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    folder.mkdir()
    for n in range(files):
        frame = phantom(512, 512, bits=12, signed=True, seed=n)
        write_instance(frame, 12, folder / f"{n:04d}.dcm", study=study, series=series, number=n + 1)
    return study, series


def ct_archive(root: Path, files: int) -> tuple[str, str]:
    """`ct_sources` under `root`/src, ingested by `transcode ingest` into
    `root`/archive; their study and series UIDs."""
    study, series = ct_sources(root / "src", files)
    subprocess.run([sys.executable, "-m", "transcode.cli", "ingest", str(root / "src"), "--archive",
                    str(root / "archive")], check=True, stdout=subprocess.DEVNULL)
    return study, series


def run(files: int, seconds: float, clients: list[int]) -> dict[str, Any]:
    """Generate and ingest `files` CT instances, then load the server and
    the bare endpoint side by side."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study, series = ct_archive(root, files)
        ours, unchecked, guarded, twin = free_port(), free_port(), free_port(), free_port()
        options, token = secured.identity(root / "security")

        def serve(port: int, env: dict[str, str] | None = None, extra: tuple[str, ...] = ("--no-audit",)
                  ) -> subprocess.Popen[bytes]:
            return start([sys.executable, "-m", "transcode.cli", "serve", "--archive", str(root / "archive"),
                          "--port", str(port), "--log-level", "warning", *extra], port, env)

        server, server_unchecked = serve(ours), serve(unchecked, {**os.environ, UNCHECKED: "1"})
        server_guarded = serve(guarded, extra=(*options, "--audit-dir", str(root / "audit")))
        server_twin = serve(twin)  # the open server again: what the comparison reads between equals
        try:
            conn = http.client.HTTPConnection("127.0.0.1", ours)
            conn.request("GET", f"/dicomweb/studies/{study}/series/{series}/instances")
            sops = [i["00080018"]["Value"][0] for i in json.loads(conn.getresponse().read())]
            base = f"/dicomweb/studies/{study}/series/{series}/instances"
            full = [f"{base}/{sop}/frames/1" for sop in sops]
            level2 = [f"{path}?level=2" for path in full]
            conn.request("GET", full[0], headers={"Accept": ACCEPT})
            response = conn.getresponse()
            (root / "body.bin").write_bytes(response.read())
            (root / "body.json").write_text(json.dumps({"content_type": response.getheader("content-type")}))
            bare = free_port()
            bare_server = start([sys.executable, "-m", "transcode.bench.server", str(bare), str(root / "body.bin")],
                                bare)
            try:
                secured_headers = {"Authorization": f"Bearer {token}"}
                for port, headers in ((ours, {}), (unchecked, {}), (guarded, secured_headers), (twin, {})):
                    timed_requests(port, full + level2, 1, 0.0, headers=headers, at_least=len(full + level2))
                for n in clients:
                    results[f"bare_{n}"] = load(bare, full, n, seconds)
                    pair = ((ours, server.pid), (unchecked, server_unchecked.pid))
                    results[f"full_{n}"], results[f"full-unchecked_{n}"] = paired(pair, full, n, seconds)
                    results[f"level2_{n}"], results[f"level2-unchecked_{n}"] = paired(pair, level2, n, seconds)
                    results[f"secured_{n}"] = rounds = {"secured": [], "twin": []}
                    for _ in range(SECURED_ROUNDS):  # authentication and audit on / off; the open server's twin / it
                        on, off = paired(((guarded, server_guarded.pid), (ours, server.pid)), full, n, seconds,
                                         (secured_headers, {}))
                        same, off_again = paired(((twin, server_twin.pid), (ours, server.pid)), full, n, seconds)
                        rounds["secured"].append((on["fps"] / off["fps"], off["cpu_us"] / on["cpu_us"]))
                        rounds["twin"].append((same["fps"] / off_again["fps"], off_again["cpu_us"] / same["cpu_us"]))
                    results[f"full-secured_{n}"], results[f"full-open_{n}"] = on, off  # the last round's
            finally:
                bare_server.terminate()
        finally:
            for process in (server, server_unchecked, server_guarded, server_twin):
                process.terminate()
            server_guarded.wait(30)  # its trail flushed
        results["audit_lines"] = secured.trail_lines(root / "audit")
        results["thumbnail"] = thumbnail_times(root / "archive")
        results["check_cost"] = check_cost(root / "archive")
        with FolderArchive(root / "archive") as store:
            results["security_cost"] = secured.security_cost(store, root / "security", token, alternating)
        results["audit_line"] = secured.audit_line_cost(root / "line-cost")
        results["guard_cost"] = secured.guard_cost(root / "security", token)
        results["frame_body_bytes"] = (root / "body.bin").stat().st_size
    return results


if __name__ == "__main__":  # the bare endpoint's process: PORT BODY_FILE
    serve_bare(int(sys.argv[1]), Path(sys.argv[2]))
