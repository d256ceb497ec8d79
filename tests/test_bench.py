"""`transcode bench --quick`: the files it promises, with sane figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PYDICOM_FILES
from transcode.bench import samples
from transcode.bench.codecs import BASELINE, CODECS
from transcode.cli import EXIT_OK, EXIT_USAGE, main


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--out", str(out)]) == EXIT_OK
    return out, json.loads((out / "results.json").read_text())


def test_files_are_written(quick) -> None:
    out, results = quick
    for chart in results["charts"]:
        data = (out / chart).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert len(results["charts"]) == 4
    md = (out / "results.md").read_text()
    for section in ("## Speed", "## Size", "## Progressive", "## Scaling", "## Server"):
        assert section in md
    assert results["machine"]["cores"] >= 1 and results["machine"]["libraries"]["openjph"]


def test_speed_figures_follow_from_the_timings(quick) -> None:
    _, results = quick
    speed = results["speed"]
    codecs = {r["codec"] for r in speed["rows"]}
    assert {c.name for c in CODECS} <= codecs and any(c.startswith("pipeline") for c in codecs)
    baseline = next(r for r in speed["rows"] if r["codec"] == BASELINE and r["operation"] == "encode"
                    and r["cores"] == 1)
    for r in speed["rows"]:
        mb, seconds = r["mb_per_s"], r["seconds"]
        assert 0 < mb["min"] <= mb["median"] <= mb["max"]
        # throughput is the pass's megabytes (once per core) over its seconds; odd repeat counts
        # make the median throughput the one of the median time
        assert r["frames"] == speed["frames"] == len(samples.GENERATED)  # every codec took every frame
        assert mb["median"] == pytest.approx(r["cores"] * speed["megabytes_per_pass"] / seconds["median"], rel=1e-9)
        assert r["vs_baseline"] == pytest.approx(mb["median"] / baseline["mb_per_s"]["median"])


def test_size_ratios_and_penalties_follow_from_the_sizes(quick) -> None:
    _, results = quick
    generated = results["size"]["generated"]
    frames = generated["frames"]
    assert len(frames) == len(samples.GENERATED)
    for codec in CODECS:
        ratio = sum(f["raw"] for f in frames) / sum(f[codec.name] for f in frames)
        assert generated["all"]["all"]["ratio"][codec.name] == pytest.approx(ratio)
        assert ratio > 0.5
    htj2k = sum(f[BASELINE] for f in frames)
    j2k = sum(f["J2K lossless (OpenJPEG)"] for f in frames)
    penalty = generated["all"]["all"]["htj2k_penalty_percent"]["J2K lossless (OpenJPEG)"]
    assert penalty == pytest.approx(100 * (htj2k / j2k - 1))
    assert set(generated["by_modality"]) == {m for m, *_ in samples.GENERATED}


def test_progressive_levels_grow_to_the_whole_codestream(quick) -> None:
    _, results = quick
    for p in results["progressive"]:
        sizes = [lv["bytes"] for lv in p["levels"]]
        assert sizes == sorted(sizes) and p["levels"][-1]["share"] == 1.0
        assert p["levels"][-1]["width"] == p["side"]
        assert all(lv["decode_s"] > 0 for lv in p["levels"])
        assert p["thumbnail"]["bytes"] < p["codestream_bytes"]


def test_scaling_and_server_figures_are_positive(quick) -> None:
    _, results = quick
    scaling = results["scaling"]
    assert [r["threads"] for r in scaling["threads"]] == list(range(1, len(scaling["threads"]) + 1))
    assert all(r["pipeline_mp_per_s"] > 0 and r["bare_encode_mp_per_s"] > 0 for r in scaling["threads"])
    assert all(r["peak_rss_mb"] > 10 for r in scaling["memory"])
    assert [r["workers"] for r in scaling["ingest_workers"]] == [r["threads"] for r in scaling["threads"]]
    assert all(r["files_per_s"] > 0 and r["peak_rss_mb"] > 10 for r in scaling["ingest_workers"])
    server = results["server"]
    for key, r in server.items():
        if key[:4] in ("bare", "full", "leve"):
            assert r["fps"] > 0 and r["p50_ms"] <= r["p99_ms"] and r["requests"] > 0


def test_samples_from_files_take_what_the_pipeline_would(tmp_path) -> None:
    found = list(samples.from_files([PYDICOM_FILES / "CT_small.dcm", PYDICOM_FILES / "MR_small.dcm",
                                     PYDICOM_FILES / "rtdose.dcm"]))  # 32-bit dose: left out
    assert sorted(s.modality for s in found) == ["CT", "MR"]
    assert all(s.frame.ndim == 2 and 8 <= s.bits <= 16 for s in found)
    assert main(["bench", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == EXIT_USAGE
