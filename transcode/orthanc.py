"""The Orthanc hook: Orthanc stores each instance it receives as HTJ2K
Lossless RPCL (.202), proved bit-exact, or exactly as received.

Orthanc's Python plugin (`orthanc-python` 3.5 or later, on Orthanc 1.10 or
later) calls the received-instance callback with the bytes of every
instance, whatever door it came through (C-STORE, REST, WebDAV, a plugin),
before Orthanc writes it to its storage. The callback runs
`transcode_file` on them, the same transcoding, verification and default
cross-check as `transcode ingest`, and answers `MODIFY` with the .202
object when it is transcoded, `KEEP_AS_IS` otherwise. A readable instance
is never discarded: kept (lossy, float, no pixels ...) and failed instances
are stored as received and their reason is logged in Orthanc's log.

Enabled by a plugin script (its path in orthanc.json's "PythonScript"):

    import site
    site.addsitedir("/opt/transcode/lib/python3.11/site-packages")
    import transcode.orthanc
    transcode.orthanc.register()

`python -m transcode.orthanc` prints that script for the environment it
runs in. `site.addsitedir` (not `sys.path.insert`) because it reads the
`.pth` files an editable install (`pip install -e`) relies on. The plugin
embeds the system's libpython (3.11 on Debian 12): the environment must be
built for the same minor version, since it holds compiled wheels.

Threads: Orthanc may call the hook from several of its HTTP and DICOM
threads at once; the plugin takes only the GIL around the call, and the
codecs release it, so parallel calls share the cores. Each call encodes
on its own thread (`"Threads": 1`, the default), or on a process-wide pool
of `Threads` threads shared by every call, which bounds the codec work of
the whole process (see `transcode.runtime.frame_pool`). Per-call pools
would multiply threads by senders and oversubscribe the cores.

Memory: Orthanc holds the received instance in memory already; the hook
adds the output and the instance's frames in flight,
bounded by `EncodeSettings.max_frame_bytes` per frame (`"MaxFrameMB"`):
a larger frame is kept as received, decided from the header.
"""

from __future__ import annotations

import io
import json
import logging
import os
import site
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from transcode.codecs.htj2k import EncodeSettings
from transcode.policy import Outcome
from transcode.runtime import warm_up_codecs
from transcode.transcoder import TranscodeResult, transcode_file
from transcode.verify import CrossCheck

LOG = logging.getLogger(__name__)

#: The section of orthanc.json the hook reads its options from.
SECTION = "Transcode"


@dataclass(frozen=True, slots=True)
class HookOptions:
    """The hook's settings, from orthanc.json's "Transcode" section:
    `Threads` (codec threads per call, 1 = the calling thread), `CrossCheck`
    (as `transcode ingest --crosscheck`), `MaxFrameMB` (as `--max-frame-mb`),
    `TemporaryDirectory` (where the instance and its transcoded copy are
    staged; default: the system's temporary directory)."""

    threads: int = 1
    crosscheck: CrossCheck = CrossCheck.SAMPLE
    settings: EncodeSettings = field(default_factory=EncodeSettings)
    temporary_directory: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HookOptions:
        """Read the "Transcode" section of Orthanc's configuration (absent: defaults).
        Raises ValueError for a value the hook cannot use."""
        section = config.get(SECTION) or {}
        unknown = set(section) - {"Threads", "CrossCheck", "MaxFrameMB", "TemporaryDirectory"}
        if unknown:
            raise ValueError(f"unknown option(s) in orthanc.json's {SECTION!r} section: "
                             f"{', '.join(sorted(unknown))}")
        threads = int(section.get("Threads", 1))
        if threads < 1:
            raise ValueError(f"{SECTION}.Threads must be at least 1, not {threads}")
        settings = EncodeSettings()
        if "MaxFrameMB" in section:
            settings = EncodeSettings(max_frame_bytes=int(float(section["MaxFrameMB"]) * (1 << 20)))
        return cls(threads=threads, crosscheck=CrossCheck(section.get("CrossCheck", CrossCheck.SAMPLE)),
                   settings=settings, temporary_directory=section.get("TemporaryDirectory"))


def transcode_bytes(dicom: bytes, options: HookOptions) -> tuple[bytes | None, TranscodeResult]:
    """Transcode one received instance (a DICOM file's bytes). Returns the
    .202 object's bytes when it is transcoded (verified), else None, and the
    result with the outcome and reason. Never raises for bad input
    (`transcode_file`'s contract); the staged files are removed.

    The staged files are not fsynced: they are scratch, and Orthanc makes
    what it stores durable itself."""
    with tempfile.TemporaryDirectory(prefix="transcode-orthanc-", dir=options.temporary_directory) as folder:
        src, dst = Path(folder, "received.dcm"), Path(folder, "transcoded.dcm")
        src.write_bytes(dicom)
        result = transcode_file(src, dst, settings=options.settings, crosscheck=options.crosscheck,
                                workers=options.threads, copy_kept=False, durable=False)
        return (dst.read_bytes() if result.outcome is Outcome.TRANSCODED else None), result


class OrthancLogHandler(logging.Handler):
    """Sends the package's log records to Orthanc's log, at Orthanc's levels."""

    def __init__(self, orthanc: Any) -> None:
        super().__init__()
        self._orthanc = orthanc

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self._orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self._orthanc.LogWarning(message)
            else:
                self._orthanc.LogInfo(message)
        except Exception:  # noqa: BLE001 (logging must never break the callback)
            self.handleError(record)


def _identify(dicom: bytes) -> str:
    """The SOP Instance UID of a received instance, for the log ("?" if unreadable)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(dicom), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.get("SOPInstanceUID", "?"))
    except Exception:  # noqa: BLE001 (only for the log line of an instance already kept or failed)
        return "?"


def _describe(result: TranscodeResult, dicom: bytes, origin: str) -> str:
    reason = f" {result.reason.value}" if result.reason else ""
    detail = f": {result.detail}" if result.detail else ""
    return f"transcode: instance {_identify(dicom)} from {origin} {result.outcome.value}{reason}{detail}"


def register(options: HookOptions | None = None) -> HookOptions:
    """Register the hook with Orthanc's Python plugin (call it from the
    plugin script). Options default to orthanc.json's "Transcode" section.
    Returns the options in force. Only callable inside Orthanc."""
    import orthanc  # the plugin's own module: present only inside Orthanc

    if options is None:
        options = HookOptions.from_config(json.loads(orthanc.GetConfiguration()))
    package = logging.getLogger("transcode")
    if not any(isinstance(handler, OrthancLogHandler) for handler in package.handlers):
        package.addHandler(OrthancLogHandler(orthanc))
        package.setLevel(logging.INFO)
        package.propagate = False  # Orthanc's log is the one log; no stderr copy
    # First codec use on one thread, before Orthanc's threads call in at once
    # (see `runtime.warm_up_codecs`).
    warm_up_codecs()
    origins = {getattr(orthanc.InstanceOrigin, name): name for name in dir(orthanc.InstanceOrigin)
               if name.isupper()}

    def received(dicom: bytes, origin: Any) -> tuple[Any, bytes | None]:
        try:
            output, result = transcode_bytes(dicom, options)
        except Exception:  # e.g. the temporary directory is full: store it as received
            LOG.exception("transcode: the received instance could not be staged; stored as received")
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        if output is None:  # transcoded instances are not logged: one line per instance is too many
            LOG.warning("%s; stored as received", _describe(result, dicom, origins.get(origin, str(origin))))
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        return orthanc.ReceivedInstanceAction.MODIFY, output

    orthanc.RegisterReceivedInstanceCallback(received)
    LOG.info("transcode: Orthanc hook registered (%s threads per call, cross-check %s, max frame %d MB)",
             options.threads, options.crosscheck.value, options.settings.max_frame_bytes >> 20)
    return options


def plugin_script(site_packages: str | os.PathLike[str] | None = None) -> str:
    """The plugin script that enables the hook, for the environment at
    `site_packages` (default: the one this interpreter runs in)."""
    path = Path(site_packages) if site_packages else Path(site.getsitepackages()[0])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"# The transcode hook: a script for Orthanc's Python plugin (\"PythonScript\"), Python {version}\n"
        "import site\n\n"
        f"site.addsitedir({str(path)!r})  # reads the .pth files of the environment\n"
        "import transcode.orthanc  # noqa: E402\n\n"
        "transcode.orthanc.register()\n"
    )


if __name__ == "__main__":
    print(plugin_script(), end="")
