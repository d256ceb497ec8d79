"""Orthanc's ingest rate with the transcode hook, without it, and with
Orthanc's own ingest transcoding to JPEG 2000 lossless, in one run.

Each configuration gets a fresh Orthanc (Debian's `orthanc` 1.10 and
`orthanc-python`, on loopback, started as the tests start it): `plain`
stores the files as received; `hook` runs `transcode.orthanc` (defaults:
one codec thread per call, sampled cross-check), which stores them as
HTJ2K .202; `j2k` sets Orthanc's "IngestTranscoding" to
1.2.840.10008.1.2.4.90 (JPEG 2000 lossless) and loads the GDCM plugin
(Debian `orthanc-gdcm`) where it is installed: Debian's Orthanc cannot
encode JPEG 2000 without it and then stores the files as received (the
table says so: the stored syntax is read back from each configuration).
The files are CT slices with a clinical header (512x512, 12 bits in 16,
`fixtures.generate.write_ct_series`), POSTed to /instances by `clients`
threads, each over its own keep-alive connection, bodies read beforehand.
The configurations take turns within each round; the best round counts.
Reference: `transcode_file` alone on the same files in this process (one
thread, default cross-check), the work the hook adds per file.

    python benchmarks/orthanc_hook.py [--files 200] [--clients 1 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.generate import write_ct_series  # noqa: E402
from tests.peers import GDCM_PLUGIN, Orthanc, orthanc  # noqa: E402
from transcode.bench.measure import machine, save  # noqa: E402
from transcode.orthanc import plugin_script  # noqa: E402
from transcode.transcoder import transcode_file  # noqa: E402

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
CONFIGURATIONS = ("plain", "hook", "j2k")


def upload(peer: Orthanc, bodies: list[bytes], clients: int) -> float:
    """POST every body to /instances over `clients` connections; seconds taken."""
    address = urlsplit(peer.url)

    def send(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        try:
            for body in share:
                conn.request("POST", "/instances", body=body, headers={"Content-Type": "application/dicom"})
                response = conn.getresponse()
                answer = response.read()
                if response.status != 200 or json.loads(answer).get("Status") != "Success":
                    raise RuntimeError(f"Orthanc answered {response.status}: {answer[:300]!r}")
        finally:
            conn.close()

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(send, bodies[i::clients]) for i in range(clients)]:
            future.result()
    return time.perf_counter() - began


def stored_syntax(peer: Orthanc) -> str:
    """The transfer syntax of the first instance Orthanc stored (read from its file)."""
    instance = peer.get("/instances")[0]
    address = urlsplit(peer.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    conn.request("GET", f"/instances/{instance}/file")
    data = conn.getresponse().read()
    conn.close()
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def run(name: str, folder: Path, bodies: list[bytes], clients: int) -> tuple[float, str]:
    """Files per second into a fresh Orthanc in configuration `name`, and the syntax it stored."""
    script, config = None, {}
    folder.mkdir(parents=True)
    if name == "hook":
        script = folder / "transcode_hook.py"
        script.write_text(plugin_script())
    elif name == "j2k":
        config = {"IngestTranscoding": J2K_LOSSLESS}
        if GDCM_PLUGIN.exists():
            config["Plugins"] = [str(GDCM_PLUGIN)]
    with orthanc(folder / "orthanc", python_script=script, config=config) as peer:
        seconds = upload(peer, bodies, clients)
        syntax = stored_syntax(peer)
    return len(bodies) / seconds, syntax


def transcode_alone(paths: list[Path], folder: Path) -> float:
    """Files per second of `transcode_file` alone, one thread (the hook's default)."""
    folder.mkdir()
    began = time.perf_counter()
    for n, path in enumerate(paths):
        transcode_file(path, folder / f"{n}.dcm", workers=1)
    return len(paths) / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rates: dict[str, dict[int, list[float]]] = {n: {c: [] for c in args.clients} for n in CONFIGURATIONS}
    syntaxes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_ct_series(root / "ct", args.files)
        bodies = [path.read_bytes() for path in paths]
        alone = []
        for round_ in range(args.rounds):
            alone.append(transcode_alone(paths, root / f"alone-{round_}"))
            for clients in args.clients:
                order = CONFIGURATIONS if round_ % 2 == 0 else CONFIGURATIONS[::-1]
                for name in order:
                    folder = root / f"{name}-{clients}-{round_}"
                    rate, syntaxes[name] = run(name, folder, bodies, clients)
                    rates[name][clients].append(rate)
                    print(f"round {round_ + 1}, {clients} client(s), {name}: {rate:.1f} files/s "
                          f"({syntaxes[name]})", file=sys.stderr)
    best = {name: {c: max(values) for c, values in per.items()} for name, per in rates.items()}
    results = {"files": args.files, "rounds": args.rounds, "files_per_s": rates, "best_files_per_s": best,
               "transcode_alone_files_per_s": alone, "stored_transfer_syntax": syntaxes,
               "gdcm_plugin": GDCM_PLUGIN.exists(), "machine": machine()}
    lines = [
        (f"| Orthanc 1.10 REST ingest, {args.files} CT files 512x512 | clients "
         f"| files/s (best of {args.rounds}) | hook vs this |"),
        "|---|---|---|---|",
    ]
    labels = {"plain": "stored as received", "hook": "transcode hook: stored as .202, verified",
              "j2k": "Orthanc's IngestTranscoding to J2K lossless (.90)"}
    for clients in args.clients:
        for name in CONFIGURATIONS:
            ratio = best["hook"][clients] / best[name][clients]
            rate = best[name][clients]
            label = labels[name]
            if name == "j2k" and syntaxes[name] != J2K_LOSSLESS:
                label += f": NOT transcoded, stored as {syntaxes[name]} (no J2K encoder: orthanc-gdcm absent)"
            lines.append(f"| {label} | {clients} | {rate:.1f} | {ratio:.2f}x |")
    lines.append(f"| `transcode_file` alone in this process, 1 thread | - | {max(alone):.1f} | "
                 f"{best['hook'][args.clients[0]] / max(alone):.2f}x |")
    save(args.out, "orthanc_hook", results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
