"""The audit trail written by a process of its own (`serve`'s workers).

A server worker is one Python process: whatever its audit writer thread
does (making each event, spelling the line, hashing the chain, the
patient-id look-ups) holds the interpreter lock that the event loop needs,
and a loaded server lost several per cent of its frames per second to it
(README, "Deployment and security", Cost). Here the writer thread only
pickles each batch of queued events (plain tuples: about half a
microsecond each) and sends it down a pipe; this child process makes the
lines and appends them to the chain, on another core.

The child ignores SIGINT and SIGTERM, which a terminal or a service
manager sends to the whole process group: it ends when the server closes
the pipe (or sends `None`), after writing everything it received, so
stopping the server, or killing it, loses no batch already sent. Should the
child die, the next batch starts a new one (logged): the chain reads its
tail back from the files, as after any restart.

    python -m transcode.security.audit_process

(stdin and stdout are the pipe to the server, which sends the settings
first: the trail's folder, the catalog, `max_bytes`, `fsync`; logs go to
stderr.)
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The message asking the child to answer once everything before it is written.
FLUSH = "flush"


class TrailProcess:
    """The server's end of the pipe to a child writing the trail in
    `folder` (see `audit.Chain` for the arguments)."""

    def __init__(self, folder: Path, catalog: str | None, max_bytes: int, fsync: bool) -> None:
        self._settings = pickle.dumps((str(folder), catalog, max_bytes, fsync))
        self._start()

    @property
    def pid(self) -> int:
        """The child's process id (the one now running)."""
        return self._child.pid

    def append(self, batch: list[Any]) -> None:
        """Send `batch` (`AuditEvent`s and pending events whose function and
        values pickle) to be written; a child that died is replaced once."""
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._to.send_bytes(data)
        except OSError:
            log.error("the audit trail's process ended (exit status %s); starting another", self._child.poll())
            self._stop()
            self._start()
            self._to.send_bytes(data)

    def wait(self, timeout: float) -> bool:
        """Whether everything sent so far was written within `timeout` seconds."""
        try:
            while self._from.poll(0):  # the answer to an earlier flush that timed out
                self._from.recv_bytes()
            self._to.send_bytes(pickle.dumps(FLUSH))
            if not self._from.poll(timeout):
                return False
            self._from.recv_bytes()
        except (OSError, EOFError):
            log.error("the audit trail's process ended (exit status %s) before a flush", self._child.poll())
            return False
        return True

    def close(self) -> None:
        """Have the child write what it holds and end (waits up to 60 s, then kills it)."""
        try:
            self._to.send_bytes(pickle.dumps(None))
        except OSError:
            pass
        self._stop()

    def _start(self) -> None:
        child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        self._to = Connection(os.dup(child.stdin.fileno()), readable=False)
        self._from = Connection(os.dup(child.stdout.fileno()), writable=False)
        child.stdin.close()
        child.stdout.close()
        self._child = child
        self._to.send_bytes(self._settings)  # on the pipe, not the command line: a catalog URL may hold a password

    def _stop(self) -> None:
        self._to.close()
        try:
            self._child.wait(60)
        except subprocess.TimeoutExpired:
            log.error("the audit trail's process did not end within 60 s; killed")
            self._child.kill()
            self._child.wait()
        self._from.close()


def main() -> int:
    """The child: take its settings, then write every batch received on stdin until the pipe closes."""
    from transcode.security.audit import Chain  # here: the server's side needs none of it

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s audit trail: %(message)s")
    inbox, outbox = Connection(0, writable=False), Connection(1, readable=False)
    sys.stdout = sys.stderr  # fd 1 carries the answers to flushes, nothing else
    folder, catalog, max_bytes, fsync = pickle.loads(inbox.recv_bytes())
    chain = Chain(Path(folder), catalog=catalog, max_bytes=max_bytes, fsync=fsync)
    try:
        while True:
            try:
                message = pickle.loads(inbox.recv_bytes())
            except EOFError:  # the server ended without closing: all it sent is written
                return 0
            if message is None:
                return 0
            if message == FLUSH:
                outbox.send_bytes(b"")
                continue
            try:
                chain.append(message)
            except Exception:  # a failed batch is logged loudly; the next may succeed (space freed)
                log.exception("%d audit events could not be written to %s", len(message), folder)
    finally:
        chain.close()


if __name__ == "__main__":
    sys.exit(main())
