"""A throwaway PostgreSQL cluster for the tests, a fresh database per test, and PgBouncer in
front of the cluster.

The cluster lives in a temporary directory, listens only on a Unix socket there, runs with
fsync off, and is stopped and deleted at the end of the session. initdb and pg_ctl refuse to
run as root, and CI runs as root: they then run as the `postgres` user, in a directory it owns.
SQLMON_TEST_PG_URL (a server someone else runs, as pytest-postgresql's `postgresql_noproc`
attaches to one) skips all that; each test still gets its own database there. PgBouncer, the
same way, runs from a temporary directory, on a Unix socket only, as `postgres` under root.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa

PORT = 5432  # only names the socket file: the socket directory is the cluster's own
BOUNCER_PORT = 6432  # the same, for PgBouncer's socket
TEMPLATE = "sqlmon_template"  # migrated once; each test's database is a copy of it


def server_bin() -> str | None:
    """The newest PostgreSQL server's bin directory (Debian keeps them off PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return os.path.dirname(found[-1]) if found else None


@dataclass
class Server:
    """Where to reach a running server, as libpq keywords."""

    host: str  # a socket directory, or a host name
    port: int
    user: str

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{dbname}?host={self.host}&port={self.port}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname, autocommit=True
        )


def _as_postgres(argv: list[str]) -> list[str]:
    # The server refuses root; a developer's own account runs it as it is.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def cluster(
    *, fsync: bool = False, parent: str | None = None, settings: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start a private cluster (in a new directory under `parent`); stop and delete it on the
    way out. Without fsync unless asked: the tests need no durability, the benchmark does.
    `settings` (name: value) are passed to the server over its defaults here."""
    bindir = server_bin()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server in /usr/lib/postgresql (apt-get install postgresql)"
        )
    top = tempfile.mkdtemp(prefix="sqlmon-pg-", dir=parent)
    data, sock = os.path.join(top, "data"), os.path.join(top, "sock")
    os.mkdir(sock)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (top, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    log = os.path.join(top, "server.log")
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_postgres(
            [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "-N"]
        ),
        **run,
    )
    server_settings = {
        "max_connections": "200",
        "shared_buffers": "32MB",
        "track_commit_timestamp": "off",
        **(settings or {}),
    }
    options = f"{'' if fsync else '-F '}-k {sock} -p {PORT} -c listen_addresses='' " + " ".join(
        f"-c {name}={value}" for name, value in server_settings.items()
    )
    subprocess.run(
        _as_postgres(
            [f"{bindir}/pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", log, "-o", options]
        ),
        **run,
    )
    try:
        yield Server(sock, PORT, "postgres")
    finally:
        subprocess.run(
            _as_postgres([f"{bindir}/pg_ctl", "stop", "-D", data, "-m", "immediate", "-w"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(top, ignore_errors=True)


def bouncer_bin() -> str | None:
    """PgBouncer's binary (Debian puts it in /usr/sbin, which may be off PATH)."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found if os.access(found, os.X_OK) else None


@contextmanager
def bouncer(server: Server, *, mode: str = "transaction", pool_size: int = 8) -> Iterator[Server]:
    """Start PgBouncer in `mode` in front of `server`, with at most `pool_size` server
    connections per database; stop it and delete its directory on the way out. Every database
    of the server is reachable through it, as the server's user (auth_type any)."""
    binary = bouncer_bin()
    if binary is None:
        raise RuntimeError("no pgbouncer (apt-get install pgbouncer)")
    top = tempfile.mkdtemp(prefix="sqlmon-pgbouncer-")
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(top, pw.pw_uid, pw.pw_gid)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    major_minor = tuple(int(n) for n in re.findall(r"\d+", version.stdout)[:2])
    # From 1.21 PgBouncer can track prepared statements in transaction mode (and newer
    # releases do by default): off here, so that the tests meet the pooler that cannot.
    tracked = "max_prepared_statements = 0\n" if major_minor >= (1, 21) else ""
    ini = os.path.join(top, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(
            "[databases]\n"
            f"* = host={server.host} port={server.port} user={server.user}\n"
            "[pgbouncer]\n"
            "listen_addr =\n"
            f"listen_port = {BOUNCER_PORT}\n"
            f"unix_socket_dir = {top}\n"
            "auth_type = any\n"
            f"pool_mode = {mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n" + tracked
        )
    # PgBouncer refuses to run as root; -u makes it switch to postgres. It logs to stderr.
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    log = os.path.join(top, "pgbouncer.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, *user, ini], stdout=out, stderr=out)
    try:
        through = Server(top, BOUNCER_PORT, server.user)
        deadline = time.monotonic() + 30
        while True:
            try:
                through.connect().close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log) as f:
                        raise RuntimeError(f"pgbouncer did not start: {f.read()}") from None
                time.sleep(0.02)
        yield through
    finally:
        proc.terminate()  # SIGTERM: PgBouncer closes every connection and exits at once
        proc.wait(30)
        shutil.rmtree(top, ignore_errors=True)


def attached(url: str) -> Server:
    """A server someone else runs, from a libpq-style SQLAlchemy URL."""
    u = sa.make_url(url)
    host = u.query.get("host") or u.host or "localhost"
    return Server(str(host), int(u.query.get("port") or u.port or PORT), u.username or "postgres")


class Databases:
    """Fresh databases on one server: empty ones, or copies of a migrated template."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._n = itertools.count()
        self._template_ready = False
        self._prefix = f"sqlmon_t{os.getpid()}_"

    def create(self, *, initialised: bool) -> str:
        name = f"{self._prefix}{next(self._n)}"
        with self.server.connect() as conn:
            if initialised:
                self._ensure_template(conn)
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def _ensure_template(self, conn: psycopg.Connection) -> None:
        if self._template_ready:
            return
        from sqlmon import init_db

        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
        init_db(self.server.url(TEMPLATE))  # disposes its engine: nobody stays connected
        self._template_ready = True

    def drop(self, name: str) -> None:
        # FORCE: a test that failed half-way may leave a process connected.
        with self.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
