"""A real PostgreSQL server for the tests: `initdb` and `postgres` from PATH
or /usr/lib/postgresql/*/bin (Debian's `postgresql`, which `.ci/run`
installs), a temporary data folder, a unix socket in a temporary folder
and 127.0.0.1 on a free port, trust authentication (loopback only).
Started once per session; each test gets its own database (`database`),
so tests are isolated. Tests that need it skip where the binaries are
absent, or where this runs as root and there is no `postgres` user to run
the server as (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import free_port, stop

#: How long the server may take to accept connections on a loaded machine.
START_TIMEOUT = 60.0


class Unavailable(RuntimeError):
    """PostgreSQL is not installed or did not start; says why."""


@dataclass(frozen=True)
class Postgres:
    """A running server: its TCP port; `url(db)` for a database on it."""

    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database (from template0); its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)


def _binaries() -> Path | None:
    """The folder holding initdb and postgres."""
    found = shutil.which("initdb")
    candidates = ([Path(os.path.realpath(found)).parent] if found else []) + \
        [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()), None)


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None for this process's own; `postgres`
    when this runs as root (the commands then switch to it, as `runuser`
    would, through subprocess's `user`/`group`, so signals reach the server)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and there is no `postgres` user to run PostgreSQL as") from None


@contextmanager
def running(*, durable: bool = False) -> Iterator[Postgres]:
    """Run a server for the block. `durable=False` turns fsync off (tests);
    True keeps PostgreSQL's defaults (benchmarks). Unavailable where the
    binaries are absent or the server does not start in time."""
    binaries = _binaries()
    if binaries is None:
        raise Unavailable("PostgreSQL (initdb, postgres) is not installed")
    account = _server_user()
    run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    folder = Path(tempfile.mkdtemp(prefix="transcode-pg-"))
    try:
        sockets, log = folder / "sockets", folder / "server.log"
        sockets.mkdir()
        log.touch()
        if account is not None:
            for path in (folder, sockets, log):
                os.chown(path, account.pw_uid, account.pw_gid)
        user = (account or pwd.getpwuid(os.geteuid())).pw_name
        data = folder / "data"
        subprocess.run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "-E", "UTF8",
                        "--no-sync", "--no-instructions"], check=True, capture_output=True, cwd=folder, **run_as)
        port = free_port()
        settings = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"] if not durable \
            else []
        with open(log, "wb") as out:
            process = subprocess.Popen([str(binaries / "postgres"), "-D", str(data), "-k", str(sockets),
                                        "-h", "127.0.0.1", "-p", str(port), *settings],
                                       stdout=out, stderr=subprocess.STDOUT, cwd=folder, **run_as)
        try:
            server = Postgres(port, user)
            _wait(server, process, log)
            yield server
        finally:
            stop(process)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait(server: Postgres, process: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise Unavailable(f"PostgreSQL did not start ({process.returncode}): {tail}") from None
            time.sleep(0.2)


def start() -> Iterator[Postgres]:
    """For a session fixture: `running`, skipping where PostgreSQL (or psycopg) is unavailable."""
    pytest.importorskip("psycopg")
    with ExitStack() as stack:
        try:
            server = stack.enter_context(running())
        except (Unavailable, subprocess.CalledProcessError) as exc:
            pytest.skip(f"PostgreSQL unavailable: {exc}")
        yield server
