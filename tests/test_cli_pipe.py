"""Output piped into a reader that stops early (`| head`) ends quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixtures.generate import Spec, write
from transcode.cli import EXIT_BROKEN_PIPE, main


def test_info_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    src = write(Spec("MR", 16, 16, 400, 16, 12), tmp_path / "mr.dcm")
    assert main(["convert", str(src), str(tmp_path / "out.dcm")]) == 0
    # 400 frames' maps: more output than a pipe holds (64 KiB), so writes fail once head has gone.
    done = subprocess.run(f"{sys.executable} -m transcode.cli info {tmp_path / 'out.dcm'} --frames 400 | head -1; "
                          "echo exit=${PIPESTATUS[0]} >&2",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.startswith("File:") and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert f"exit={EXIT_BROKEN_PIPE}" in done.stderr  # what a shell shows for cat killed by SIGPIPE
