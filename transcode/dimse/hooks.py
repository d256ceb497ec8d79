"""Study complete: after `idle` seconds without a new instance of a study,
its hooks fire once with a summary of what was received.

A DICOM sender does not say when a study is complete, so quiet time is the
signal (what Orthanc calls a stable study). Hooks are a shell command (the
summary as JSON on its stdin), an HTTP POST of the same JSON, and Python
callables registered as entry points in group `transcode.hooks`. Each runs
bounded in time, one after the other, on the tracker's own thread: a hook
that fails or hangs is logged and given up, and never stops the receiver
nor delays an answer to a sender. Instances arriving after a study fired
start a new round, which fires again once quiet.

Studies still waiting survive a stop, a crash and kill -9: the tracker keeps
them in a small JSON file (`state`, in the receiver's spool), rewritten
atomically at most once a tick when something changed, and again on close.
A restarted receiver picks them up and fires each once it has been quiet
for `idle` seconds counted from the restart (the sender may still be
sending; firing at stop would call an unfinished study complete). The file
is not fsynced: a power cut may lose the last tick's changes, and the study
then fires without them or not at all, never twice.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The entry point group of Python hooks: each is called with the summary dict.
GROUP = "transcode.hooks"
#: How long a command or an HTTP POST may take (seconds).
HOOK_TIMEOUT = 30.0

Hook = Callable[[dict[str, Any]], None]


def command_hook(command: str, timeout: float = HOOK_TIMEOUT) -> Hook:
    """A hook that runs `command` through the shell with the summary as JSON
    on stdin (the operator's own command line; the summary is never part of
    it). A non-zero exit or a timeout raises."""

    def run(summary: dict[str, Any]) -> None:
        subprocess.run(command, shell=True, input=json.dumps(summary).encode(), timeout=timeout, check=True,
                       stdout=subprocess.DEVNULL)

    return run


def url_hook(url: str, timeout: float = HOOK_TIMEOUT) -> Hook:
    """A hook that POSTs the summary as JSON to `url`; an error status raises."""

    def post(summary: dict[str, Any]) -> None:
        request = urllib.request.Request(url, data=json.dumps(summary).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()

    return post


def entry_point_hooks() -> list[Hook]:
    """The callables registered in group `transcode.hooks` by installed packages."""
    hooks = []
    for point in entry_points(group=GROUP):
        try:
            hooks.append(point.load())
        except Exception:  # a broken plugin is reported, not fatal
            log.exception("cannot load study hook %s", point.value)
    return hooks


@dataclass
class _Study:
    first: str
    last: str
    quiet_since: float
    instances: int = 0
    series: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    callers: set[str] = field(default_factory=set)

    def saved(self) -> dict[str, Any]:
        """What the state file keeps (not `quiet_since`: a monotonic time means nothing after a restart)."""
        return {"first": self.first, "last": self.last, "instances": self.instances, "series": dict(self.series),
                "outcomes": dict(self.outcomes), "callers": sorted(self.callers)}

    @classmethod
    def restored(cls, saved: dict[str, Any], quiet_since: float) -> _Study:
        return cls(first=saved["first"], last=saved["last"], quiet_since=quiet_since, instances=saved["instances"],
                   series=Counter(saved["series"]), outcomes=Counter(saved["outcomes"]),
                   callers=set(saved["callers"]))


class StudyTracker:
    """Counts what each study received and fires `hooks` with its summary
    once it has been quiet for `idle` seconds. `state`: the file that keeps
    the studies still waiting across restarts (None: kept in memory only)."""

    def __init__(self, idle: float, hooks: list[Hook], *, archive: str, state: Path | None = None) -> None:
        self.idle = idle
        self.hooks = hooks
        self.archive = archive
        self.state = state
        self._studies: dict[str, _Study] = self._load() if hooks else {}
        self._changed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="study-hooks", daemon=True)
        if hooks:
            self._thread.start()

    def _load(self) -> dict[str, _Study]:
        """The studies a previous run left waiting, quiet from now on; none
        for a missing or unreadable file (logged: their hooks are lost, the
        instances are not)."""
        if self.state is None or not self.state.is_file():
            return {}
        try:
            saved = json.loads(self.state.read_text())
            now = time.monotonic()
            studies = {uid: _Study.restored(study, now) for uid, study in saved["studies"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: cannot read the studies waiting for their hooks (%s); they will not fire", self.state, exc)
            return {}
        if studies:
            log.info("%d studies from the previous run wait for their hooks", len(studies))
        return studies

    def _save(self) -> None:
        """Write the waiting studies to `state` atomically (a temporary file
        renamed over it), if anything changed since the last write."""
        with self._lock:
            if self.state is None or not self._changed:
                return
            text = json.dumps({"studies": {uid: s.saved() for uid, s in self._studies.items()}})
            self._changed = False
        self.state.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state.with_name(self.state.name + ".partial")
        partial.write_text(text)
        os.replace(partial, self.state)

    def seen(self, study: str | None, series: str | None, outcome: str, caller: str) -> None:
        """Count one settled instance of `study` (None: unreadable, not counted)."""
        if study is None or not self.hooks:
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            state = self._studies.setdefault(study, _Study(first=now, last=now, quiet_since=0.0))
            state.last, state.quiet_since = now, time.monotonic()
            state.instances += 1
            state.series[series or ""] += 1
            state.outcomes[outcome] += 1
            state.callers.add(caller)
            self._changed = True

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.idle / 4)):
            cutoff = time.monotonic() - self.idle
            with self._lock:
                quiet = [(uid, s) for uid, s in self._studies.items() if s.quiet_since <= cutoff]
                for uid, _ in quiet:
                    del self._studies[uid]
                self._changed |= bool(quiet)
            self._save()  # before firing: a crash while a hook runs must not fire it again
            for uid, state in quiet:
                self.fire(self.summary(uid, state))

    def summary(self, study: str, state: _Study) -> dict[str, Any]:
        return {
            "event": "study_complete", "study_uid": study, "instances": state.instances,
            "series": [{"series_uid": uid or None, "instances": n} for uid, n in sorted(state.series.items())],
            "outcomes": dict(sorted(state.outcomes.items())), "calling_ae_titles": sorted(state.callers),
            "first_received": state.first, "last_received": state.last, "idle_seconds": self.idle,
            "archive": self.archive,
        }

    def fire(self, summary: dict[str, Any]) -> None:
        """Run every hook with `summary`; failures are logged."""
        for hook in self.hooks:
            try:
                hook(summary)
            except Exception:  # any hook error: logged, the others still run
                log.exception("study hook %r failed for study %s", hook, summary["study_uid"])
        log.info("study %s complete: %d instances, hooks fired", summary["study_uid"], summary["instances"])

    def close(self) -> None:
        """Stop watching; the studies still waiting stay in `state` for the next run."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=HOOK_TIMEOUT)
        self._save()
