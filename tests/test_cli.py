"""The `transcode` command line: convert and info, outputs and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import JPEGBaseline8Bit

from fixtures.generate import Spec, write
from tests.helpers import sha256
from transcode.cli import EXIT_FAILED, EXIT_KEPT, EXIT_OK, EXIT_USAGE, main


def test_convert_one_file_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(Spec("CT", 64, 64, 2), tmp_path / "ct.dcm")
    assert main(["convert", str(src), str(tmp_path / "out.dcm")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "transcoded" in out and "1 instances: 1 transcoded, 0 kept, 0 failed." in out
    assert (tmp_path / "out.dcm").exists()


def test_convert_folder_mirrors_it_and_exit_code_tells_the_worst_outcome(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    write(Spec("CT", 32, 32), src / "a" / "1.dcm")
    write(Spec("US", 32, 32, 1, 8, 8, samples=3, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit),
          src / "a" / "2.dcm")
    assert main(["convert", str(src), str(tmp_path / "out"), "--json"]) == EXIT_KEPT
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["outcome"], r["reason"]) for r in lines] == [("transcoded", None), ("kept", "lossy_source")]
    assert sha256(tmp_path / "out" / "a" / "2.dcm") == sha256(src / "a" / "2.dcm")

    (src / "notes.txt").write_text("not an image")
    assert main(["convert", str(src), str(tmp_path / "out2")]) == EXIT_FAILED
    assert "not_dicom" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["convert"], ["convert", "/does/not/exist", "/tmp/x"], ["frobnicate"]],
    ids=["missing-args", "missing-source", "unknown-command"],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(argv) == EXIT_USAGE


def test_output_folder_inside_the_source_is_refused(tmp_path: Path) -> None:
    write(Spec(), tmp_path / "1.dcm")
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == EXIT_USAGE


def test_info_prints_the_resolution_map(tmp_path: Path, capsys) -> None:
    src = write(Spec("CT", 300, 200), tmp_path / "ct.dcm")
    main(["convert", str(src), str(tmp_path / "out.dcm")])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out.dcm")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "1.2.840.10008.1.2.4.202" in out and "RPCL" in out and "TLM yes" in out
    assert "    0       25 x 38" in out and "100.0%" in out  # 200 x 300 after 3 decompositions


def test_module_entry_point_prints_help() -> None:
    done = subprocess.run([sys.executable, "-m", "transcode.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "convert" in done.stdout
