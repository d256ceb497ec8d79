"""results.md: the benchmark's figures as Markdown tables."""

from __future__ import annotations

import statistics
from typing import Any

from transcode.bench.codecs import CODECS
from transcode.bench.size import J2K, JLS


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def speed_table(speed: dict[str, Any]) -> str:
    rows = []
    for r in speed["rows"]:
        mb, mp = r["mb_per_s"], r["mp_per_s"]
        rows.append([r["codec"], r["operation"], str(r["cores"]), str(r["frames"]),
                     f"{mb['min']:.1f} / {mb['median']:.1f} / {mb['max']:.1f}", f"{mp['median']:.1f}",
                     f"{r['vs_baseline']:.2f}x"])
    table = _table(["codec", "operation", "cores", "frames", "MB/s min / median / max", "MP/s (median)",
                    "vs OpenJPH encode, 1 core"], rows)
    note = f"\n{speed['frames']} frames, {speed['megabytes_per_pass']:.1f} MB of raw pixels per pass."
    if speed["excluded"]:
        note += f" Left out where a codec cannot take them ({len(speed['excluded'])}): " + "; ".join(
            f"{e['sample']} ({e['codec']}: {e['error'][:80]})" for e in speed["excluded"][:10])
    return table + note + "\n"


def size_tables(size: dict[str, Any]) -> str:
    out = []
    names = [c.name for c in CODECS]
    for set_name, result in size.items():
        for grouping in ("all", "by_modality", "by_bits"):
            rows = []
            for group, g in result[grouping].items():
                ratios = [f"{g['ratio'][n]:.2f}" if n in g["ratio"] else "-" for n in names]
                penalty = [f"{g['htj2k_penalty_percent'][other]:+.1f}%" if other in g["htj2k_penalty_percent"] else "-"
                           for other in (J2K, JLS)]
                rows.append([group, str(g["frames"]), *ratios, *penalty])
            label = {"all": "all frames", "by_modality": "modality", "by_bits": "bits stored"}[grouping]
            out.append(f"**{set_name}, by {label}** (compression ratio; HTJ2K size against J2K and JPEG-LS)\n\n"
                       + _table([label, "frames", *names, "HTJ2K vs J2K", "HTJ2K vs JPEG-LS"], rows))
    return "\n".join(out)


def progressive_tables(progressive: list[dict[str, Any]]) -> str:
    rows, thumbs = [], []
    for p in progressive:
        for lv in p["levels"]:
            rows.append([f"{p['side']}²", str(lv["level"]), lv["scale"], f"{lv['width']}x{lv['height']}",
                         str(lv["bytes"]), f"{lv['share']:.1%}", f"{lv['decode_s'] * 1e3:.2f}"])
        t = p["thumbnail"]
        thumbs.append([f"{p['side']}²", str(t["level"]), str(t["bytes"]), f"{t['bytes'] / p['codestream_bytes']:.1%}",
                       f"{t['seconds'] * 1e3:.2f}", f"{t['full_decode_seconds'] * 1e3:.2f}"])
    return (_table(["frame (12-bit)", "level", "scale", "size", "bytes (prefix)", "share", "decode ms"], rows) + "\n"
            + _table(["frame", "thumbnail level", "bytes", "share", "128-px thumbnail ms",
                      "full decode + resize ms"], thumbs))


def scaling_tables(scaling: dict[str, Any]) -> str:
    threads = _table(["threads", "pipeline MP/s", "bare encode MP/s"],
                     [[str(r["threads"]), f"{r['pipeline_mp_per_s']:.1f}", f"{r['bare_encode_mp_per_s']:.1f}"]
                      for r in scaling["threads"]])
    workers = _table(["ingest workers", "files/s (steady state)", "command s", "peak RSS MB"],
                     [[str(r["workers"]), f"{r['files_per_s']:.0f}", f"{r['command_seconds']:.2f}",
                       f"{r['peak_rss_mb']:.0f}"] for r in scaling["ingest_workers"]])
    sizes = _table(["frame", "encode MP/s", "decode MP/s", "pipeline MP/s"],
                   [[f"{r['side']}²", f"{r['encode_mp_per_s']:.1f}", f"{r['decode_mp_per_s']:.1f}",
                     f"{r['pipeline_mp_per_s']:.1f}"] for r in scaling["frame_sizes"]])
    memory = _table(["frames", "instance MB", "peak RSS MB", "seconds"],
                    [[str(r["frames"]), f"{r['instance_mb']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.2f}"]
                     for r in scaling["memory"]])
    return f"{threads}\n{workers}\n{sizes}\n{memory}"


def _rounds(ratios: list[list[float]]) -> str:
    """Median (range) of each round's frames/s and CPU ratios."""
    return " / ".join(f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})" for r in zip(*ratios, strict=True))


def server_table(server: dict[str, Any]) -> str:
    clients = sorted({int(k.split("_")[1]) for k in server if k.startswith("bare_")})
    rows = []
    for n in clients:
        bare = server[f"bare_{n}"]["fps"]
        for case in ("bare", "full", "full-unchecked", "level2", "level2-unchecked"):
            r = server[f"{case}_{n}"]
            off = server.get(f"{case}-unchecked_{n}")  # integrity checks on, against off in the same run
            rows.append([case, str(n), f"{r['fps']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                         f"{r['fps'] / bare:.2f}x", f"{r['cpu_us']:.0f}" if "cpu_us" in r else "",
                         f"{r['fps'] / off['fps']:.2f}x / {off['cpu_us'] / r['cpu_us']:.2f}x" if off else ""])
        if f"full-secured_{n}" in server:  # authentication and audit on, against both off, in the same run
            on, off, rounds = server[f"full-secured_{n}"], server[f"full-open_{n}"], server[f"secured_{n}"]
            rows += [[case, str(n), f"{r['fps']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{r['fps'] / bare:.2f}x", f"{r['cpu_us']:.0f}", text]
                     for case, r, text in (("full-secured", on, f"secured vs open: {_rounds(rounds['secured'])}"),
                                           ("full-open", off, f"open vs its twin: {_rounds(rounds['twin'])}"))]
    t = server["thumbnail"]
    columns = ["case", "clients", "frames/s", "p50 ms", "p99 ms", "vs bare", "server CPU µs/frame",
               "checked vs unchecked, secured vs open (frames/s / CPU)"]
    c = server["check_cost"]
    cost = [[case, f"{c[f'{case}_us']:.0f}", f"{c[f'{case}-unchecked_us']:.0f}",
             f"{c[f'{case}-unchecked_us'] / c[f'{case}_us']:.2f}x"] for case in ("full", "level2")]
    if (sc := server.get("security_cost")) is not None:
        cost += [[f"{case}, authentication + audit on / off", f"{sc[f'{case}-secured_us']:.0f}",
                  f"{sc[f'{case}-open_us']:.0f}", f"{sc[f'{case}-open_us'] / sc[f'{case}-secured_us']:.2f}x"]
                 for case in ("full", "level2")]
    audit = ""
    if (line := server.get("audit_line")) is not None:
        audit = _table(["one audit line (made in the trail's process)", "µs", "bytes"],
                       [["a line per batch (flushed per request)", f"{line['batch1_us']:.1f}", f"{line['line_bytes']:.0f}"],
                        ["64 lines per batch", f"{line['batch64_us']:.1f}", ""]]) + "\n"
    if (guard := server.get("guard_cost")) is not None:
        audit += _table(["security middleware, trivial endpoint", "µs added per request"],
                        [[part, f"{guard[f'{key}_us']:.1f}"] for part, key in (
                            ("the guard alone", "guard"), ("+ a cached token check", "auth"),
                            ("+ the audit trail (queued, pickled, sent)", "audit"), ("both", "both"))]) + "\n"
    return (_table(columns, rows) + "\n"
            + _table(["in process, request by request", "µs on (checked / secured)", "µs off",
                      "frames/s on vs off"], cost) + "\n" + audit
            + _table(["128-px thumbnail of a 512x512 CT frame", "ms", "bytes read"],
                     [["from the level prefix (server path)", f"{t['thumbnail_s'] * 1e3:.2f}",
                       str(t["thumbnail_bytes_read"])],
                      ["full decode + resize", f"{t['full_decode_resize_s'] * 1e3:.2f}", str(t["frame_bytes"])]]))


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [(f"# transcode bench\n\n{m['cpu']}, {m['cores']} cores, Python {m['python']}; "
              f"{'quick' if results['quick'] else 'full'} run. Absolute figures depend on the machine; "
              "the ratios are what carries over.\n"),
             "## Speed\n", speed_table(results["speed"]),
             "## Size\n", size_tables(results["size"]),
             "## Progressive\n", progressive_tables(results["progressive"]),
             "## Scaling\n", scaling_tables(results["scaling"])]
    if results.get("server"):
        parts += ["## Server\n", server_table(results["server"])]
    return "\n".join(parts)
