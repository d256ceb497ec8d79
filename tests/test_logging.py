"""Logging configured once from the command line (`transcode.logs`): levels,
JSON lines that parse, the options before and after the subcommand, and
the processes the command starts (ingest workers, the server) logging the
same way."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.misc import warn_and_log

from fixtures.generate import Spec, write
from transcode import logs
from transcode.archive import FolderArchive
from transcode.cli import EXIT_OK, build_parser, main
from transcode.pipeline import ingest, work

CT = get_testdata_file("CT_small.dcm")


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    """Each test configures logging afresh; nothing of it outlives the test."""
    monkeypatch.delenv(logs.ENVIRONMENT, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("argv", "level"), [
    ([], logging.WARNING),
    (["-v"], logging.INFO),
    (["-vv"], logging.DEBUG),
    (["-vvv"], logging.DEBUG),
    (["--log-level", "ERROR"], logging.ERROR),
    (["-v", "--log-level", "error"], logging.ERROR),  # a level by name wins over -v
])
def test_levels_from_the_options(argv: list[str], level: int, capsys) -> None:
    assert main([*argv, "info", CT]) == EXIT_OK
    assert logging.getLogger().level == level


def test_a_service_logs_from_info_by_default() -> None:
    args = build_parser().parse_args(["serve", "--archive", "a"])
    assert logs.level_from(args.verbose, args.log_level, args.log_default) == logging.INFO
    args = build_parser().parse_args(["-v", "serve", "--archive", "a"])
    assert logs.level_from(args.verbose, args.log_level, args.log_default) == logging.DEBUG


def test_options_before_or_after_the_subcommand() -> None:
    parse = build_parser().parse_args
    assert parse(["--log-level", "debug", "--log-json", "info", "f"]).log_level == "debug"
    after = parse(["serve", "--archive", "a", "--log-level", "warning", "--log-json"])  # as scripts call it
    assert (after.log_level, after.log_json, after.verbose) == ("warning", True, 0)
    # an option given only before the subcommand is not reset by the subcommand's parser
    before = parse(["-vv", "--log-json", "ingest", "x", "--archive", "a"])
    assert (before.verbose, before.log_json, before.log_level) == (2, True, None)
    with pytest.raises(SystemExit):
        parse(["--log-level", "chatty", "info", "f"])


def test_json_lines_parse_with_every_field_and_the_traceback(capsys) -> None:
    assert main(["--log-json", "--log-level", "info", "info", CT]) == EXIT_OK
    capsys.readouterr()
    log = logging.getLogger("transcode.some.module")
    log.info("plain %s", "message")
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("failed on %s", "file.dcm")
    log.debug("below the level")
    captured = capsys.readouterr()
    assert captured.out == ""  # standard output stays the user's
    records = _json_lines(captured.err)
    assert [r["message"] for r in records] == ["plain message", "failed on file.dcm"]
    assert all(set(r) == {"time", "level", "logger", "message", "exc"} for r in records)
    assert records[0]["level"] == "INFO" and records[0]["logger"] == "transcode.some.module"
    assert records[0]["exc"] is None
    assert "ValueError: bad value" in records[1]["exc"] and records[1]["level"] == "ERROR"
    assert records[0]["time"].endswith("+00:00")


def test_text_lines_name_level_and_logger(capsys) -> None:
    assert main(["info", CT]) == EXIT_OK
    capsys.readouterr()
    logging.getLogger("transcode.x").warning("something odd")
    logging.getLogger("transcode.x").info("not shown")
    assert capsys.readouterr().err.strip().endswith("WARNING transcode.x: something odd")


def test_configuring_again_replaces_only_its_own_handler(capsys) -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    logs.configure(logging.INFO)
    logs.configure(logging.INFO, json_lines=True)
    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, logs.JsonFormatter)]
    assert len(ours) == 1 and other in logging.getLogger().handlers
    logging.getLogger("transcode.y").info("once")
    assert len(capsys.readouterr().err.splitlines()) == 1


def logging_work(source: str, staging: str, *args: Any) -> dict[str, Any]:
    """An ingest worker that logs a warning in the worker process first."""
    logging.getLogger("transcode.pipeline").warning("worker looked at %s", Path(source).name)
    return work(source, staging, *args)


def test_a_warning_pydicom_logs_itself_is_written_once(capsys) -> None:
    """pydicom's `warn_and_log` logs a message and warns it; with warnings
    captured, each came out twice. Other warnings still come out."""
    logs.configure(logging.WARNING)
    warn_and_log("A value of 'None' for (0028,0008) 'Number of Frames' is invalid, assuming 1 frame")
    warnings.warn("a warning of another library", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("'Number of Frames' is invalid") == 1
    assert "WARNING pydicom: A value of 'None'" in err
    assert "UserWarning: a warning of another library" in err


def test_what_pydicom_says_of_a_file_names_the_file(tmp_path: Path, capfd) -> None:
    """pydicom's warnings do not say which file they are about: among a
    million files, "Invalid value for VR UI" alone sends nobody anywhere.
    Here through an ingest worker (another process), as a migration runs."""
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(write(Spec("CT", 16, 16), src / "odd uid.dcm"))
    ds.FrameOfReferenceUID = "not-a-uid"
    ds.save_as(src / "odd uid.dcm")
    logs.configure(logging.WARNING)
    capfd.readouterr()  # setting the value warned too, here, where a handler may be left from another test
    with FolderArchive(tmp_path / "archive") as archive:
        assert ingest([src], archive, workers=1).counts()["transcoded"] == 1
    lines = [line for line in capfd.readouterr().err.splitlines() if "not-a-uid" in line]
    assert lines and all(f"WARNING pydicom: {src / 'odd uid.dcm'}: Invalid value for VR UI" in line
                         for line in lines), lines


def test_ingest_workers_log_as_the_command_does(tmp_path: Path, capfd) -> None:
    logs.configure(logging.INFO, json_lines=True)
    with FolderArchive(tmp_path / "archive") as archive:
        report = ingest([CT], archive, workers=1, worker=logging_work)
    assert report.counts()["transcoded"] == 1
    records = _json_lines(capfd.readouterr().err)
    assert {"logger": "transcode.pipeline", "message": "worker looked at CT_small.dcm"}.items() <= records[-1].items()


def test_serve_logs_uvicorn_and_requests_as_json_lines(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "transcode.cli", "--log-json", "serve", "--archive",
                             str(tmp_path / "archive"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dicomweb/studies") as response:
                    assert json.loads(response.read()) == []
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    records = _json_lines(err)  # every line of standard error is one JSON object
    loggers = {r["logger"] for r in records}
    # uvicorn's access log (full URLs: patient data in queries) is replaced by route templates (issue 14)
    assert {"uvicorn.error", "transcode.access"} <= loggers and "uvicorn.access" not in loggers
    assert any("GET /dicomweb/studies 200" in r["message"] for r in records if r["logger"] == "transcode.access")
