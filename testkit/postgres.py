"""A throwaway PostgreSQL cluster for the tests: Debian's `initdb` and `pg_ctl`, run as the
unprivileged `postgres` user (PostgreSQL refuses to run as root, and CI runs the tests as root) in a
temporary directory it owns, listening on a free loopback port, removed afterwards.

`database()` is a fresh, empty database per test (`CREATE DATABASE ... TEMPLATE`, a file copy);
`migrated=True` copies a template the store's migrations were applied to once, which is faster
than migrating every test's database again.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.support import LOOPBACK, free_port

# The OS user the server runs as when the tests run as root (Debian's postgresql package creates
# it); otherwise the tests' own user runs it.
USER = "postgres" if os.geteuid() == 0 else None
ROLE = "softprobe"  # the database superuser initdb creates, trusted on loopback
_TEMPLATE = "softprobe_migrated"


class MissingPostgres(RuntimeError):
    """PostgreSQL is not installed here: the tests need it, they do not skip."""


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise MissingPostgres("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): run "
                              "`make system-deps`")
    if USER is not None:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            raise MissingPostgres(f"no {USER!r} user to run PostgreSQL as: run `make system-deps`") from None
    return Path(found[-1]).parent


class Cluster:
    """One PostgreSQL server for the test session; `url(name)` names one of its databases."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="softprobe-pg-"))
        self.port = free_port()
        self._names = itertools.count(1)
        self._template = False
        if USER is not None:
            user = pwd.getpwnam(USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        try:
            self._run("initdb", "-D", str(self.dir / "data"), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
            # fsync off: a test's database never outlives the test, and commits are what is measured
            # here, not the disk. The socket directory is ours, not /run/postgresql.
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-w", "-t", "60", "-l", str(self.dir / "log"),
                      "-o", f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.dir} -c fsync=off "
                            "-c max_connections=200", "start")
        except BaseException:
            self.stop()
            raise

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([str(self.bin / tool), *args], user=USER, cwd=self.dir, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-2000:] if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()} {log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{ROLE}@{LOOPBACK}:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        """One statement in autocommit (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as db:
            db.execute(statement)

    def database(self, *, migrated: bool = False) -> str:
        """The URL of a new database: empty, or with the store's schema already applied."""
        name = f"t{next(self._names)}"
        if migrated and not self._template:
            from softprobe_gateway.store import postgres_engine

            self.sql(f"CREATE DATABASE {_TEMPLATE} TEMPLATE template0")
            postgres_engine.migrate(self.url(_TEMPLATE))
            self._template = True
        self.sql(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE if migrated else 'template0'}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept) and remove its directory."""
        if (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w",
                            "stop"], user=USER, cwd=self.dir, capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The test session's PostgreSQL server, started on first use; fails (never skips) without one."""
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
