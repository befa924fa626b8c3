"""Real PostgreSQL clusters for end-to-end tests and benchmarks.

A Cluster is started by cluster.sh (as the postgres user, with pg_migrate preloaded) in its own
directory under /tmp, on a free port, listening on its socket and 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
CLUSTER_SH = HERE / "cluster.sh"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
# The major version of the server the tests run against (pg_config --version: "PostgreSQL 18.6",
# or "PostgreSQL 19beta1").
PG_MAJOR = int(re.match(r"PostgreSQL (\d+)", subprocess.run(
    [str(PG_BIN / "pg_config"), "--version"], check=True, capture_output=True, text=True).stdout).group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# PG_MIGRATE_E2E_DIRS=/tmp/other_ moves every test cluster from /tmp/pg_migrate_* there, so
# that a second run (another checkout, another version) does not stop this one's clusters.
DIRS = os.environ.get("PG_MIGRATE_E2E_DIRS", "")


class Cluster:
    def __init__(self, directory: str | Path, port: int | None = None):
        directory = str(directory)
        if DIRS and directory.startswith("/tmp/pg_migrate_"):
            directory = DIRS + directory[len("/tmp/pg_migrate_"):]
        self.dir = Path(directory)
        self.port = port or free_port()
        self.sock = self.dir / "sock"

    def start(self, *settings: str, fresh: bool = True, initdb_args: str = "") -> "Cluster":
        if fresh:
            self.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
        args = [str(CLUSTER_SH), "start", str(self.dir), str(self.port)]
        for s in settings:
            args += ["-c", s]
        subprocess.run(args, check=True, env={**os.environ, "INITDB_ARGS": initdb_args})
        return self

    def stop(self) -> None:
        if self.dir.exists():
            subprocess.run([str(CLUSTER_SH), "stop", str(self.dir)], check=False)

    def restart(self) -> None:
        subprocess.run([str(CLUSTER_SH), "restart", str(self.dir)], check=True)

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    def log_mark(self) -> int:
        """Where the server log ends now; pass it to log_since."""
        return self.log.stat().st_size

    def log_since(self, mark: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def conninfo(self, dbname: str = "postgres", user: str = "postgres", tcp: bool = False, **extra) -> str:
        host = "127.0.0.1" if tcp else str(self.sock)
        parts = {"host": host, "port": self.port, "dbname": dbname, "user": user, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, dbname: str = "postgres", autocommit: bool = True, **kw) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname, **kw), autocommit=autocommit)

    def psql(self, dbname: str, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / "psql"), "-X", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-d", dbname, *args]
        return subprocess.run(cmd, input=input, text=True, capture_output=True, check=check)

    def create_database(self, name: str, extension: bool = True) -> str:
        with self.connect() as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if extension:
            with self.connect(name) as c:
                c.execute("CREATE EXTENSION pg_migrate")
        return name

    def start_standby_of(self, primary: "Cluster", *settings: str) -> "Cluster":
        """This cluster, started afresh as a streaming standby of `primary` (pg_basebackup -R,
        over 127.0.0.1), as an HA manager builds one."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        subprocess.run(["chown", "postgres", str(self.dir)], check=True)
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1",
                        "-p", str(primary.port), "-U", "postgres", "-D", str(self.dir / "data"), "-R",
                        "-X", "stream", "-c", "fast"], check=True, capture_output=True)
        return self.start(f"port={self.port}", f"unix_socket_directories={self.sock}", *settings, fresh=False)

    def drop_database(self, name: str) -> None:
        with self.connect() as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class Failure:
    sqlstate: str
    message: str
    detail: str | None
    hint: str | None


def failure(conn: psycopg.Connection, query: str, params=None) -> Failure:
    """Runs a statement that must fail and returns what PostgreSQL reported."""
    try:
        conn.execute(query, params)
    except psycopg.Error as e:
        d = e.diag
        if not conn.autocommit:
            conn.rollback()
        return Failure(d.sqlstate, d.message_primary, d.message_detail, d.message_hint)
    raise AssertionError(f"expected an error from: {query}")


class Stopwatch:
    """Runs a query repeatedly in its own session and records each latency (seconds)."""

    def __init__(self, cluster: Cluster, dbname: str, query: str, pause: float = 0.01):
        self.cluster, self.dbname, self.query, self.pause = cluster, dbname, query, pause
        self.latencies: list[float] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.cluster.connect(self.dbname) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    c.execute(self.query)
                except psycopg.Error as e:  # recorded, the test decides
                    self.errors.append(e)
                self.latencies.append(time.monotonic() - started)
                time.sleep(self.pause)

    def __enter__(self) -> "Stopwatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


@contextlib.contextmanager
def holding_lock(cluster: Cluster, dbname: str, statement: str):
    """Keeps a transaction open after `statement` (e.g. a SELECT that takes ACCESS SHARE)."""
    conn = cluster.connect(dbname, autocommit=False)
    try:
        conn.execute(statement)
        yield conn
    finally:
        conn.rollback()
        conn.close()


@contextlib.contextmanager
def server_settings(cluster: Cluster, settings: dict[str, str]):
    """The server runs with `settings` (ALTER SYSTEM, reloaded) inside the block, and without
    them after it. Each change is waited for until a new session has it: the postmaster
    reads the file after pg_reload_conf() returns, and signals its children (the worker
    included) before it forks a new one. No settings: nothing is changed or reloaded."""
    names = list(settings)
    if not names:
        yield
        return

    def from_auto_conf() -> int:
        with cluster.connect() as c:
            return c.execute("SELECT count(*) FROM pg_settings WHERE name = ANY(%s) "
                             "AND sourcefile LIKE '%%postgresql.auto.conf'", (names,)).fetchone()[0]

    def alter(changes: list[sql.Composable], expected: int) -> None:
        with cluster.connect() as c:
            for change in changes:
                c.execute(change)
            c.execute("SELECT pg_reload_conf()")
        wait_until(lambda: from_auto_conf() == expected)

    try:
        alter([sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
               for name, value in settings.items()], len(names))
        yield
    finally:
        alter([sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)) for name in names], 0)


# Locks on the pg_migrate extension object: the applier lock (see migrate.apply's Concurrency).
APPLIER_LOCK = """SELECT count(*) FROM pg_locks WHERE locktype = 'object'
    AND classid = 'pg_extension'::regclass
    AND objid = (SELECT oid FROM pg_extension WHERE extname = 'pg_migrate')"""


def worker_pid(conn: psycopg.Connection) -> int | None:
    """The pid of the pg_migrate worker serving the connection's database, if one runs."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_migrate worker' AND datname = current_database()"
    ).fetchone()
    return row[0] if row else None


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, evidence=None) -> None:
    """Waits for predicate; on timeout, evidence() (if given) is what the failure shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s" + (f"\n{evidence()}" if evidence else ""))


def worker_evidence(cluster, conn, mark: int) -> str:
    """What a test waiting on the worker shows when it waited in vain: the database's sessions,
    the locks not granted, and the server log since mark."""
    sessions = conn.execute(
        "SELECT pid, backend_type, state, wait_event_type, wait_event, left(query, 120) "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    waiting = conn.execute(
        "SELECT pid, locktype, relation::regclass::text, mode FROM pg_locks WHERE NOT granted").fetchall()
    return f"sessions: {sessions}\nlocks waited for: {waiting}\nserver log:\n{cluster.log_since(mark)[-6000:]}"


# The health gate's clusters (test_watch.py, bench.py --only watch): pg_stat_statements
# preloaded, a sample a second, two seconds to settle, five samples a side. One-second
# samples of a light workload on a shared 2-core machine drift by 10-20% between minutes:
# the latency tolerance is 50%, the regressions measured hundreds of times the baseline.
GATE_SETTINGS = (
    "shared_preload_libraries=pg_stat_statements,pg_migrate",
    "migrate.watch_sample_interval=1", "migrate.watch_settle=2", "migrate.watch_min_samples=5",
    "migrate.watch_baseline=60", "migrate.watch_latency_tolerance=0.5",
)
# pgbench: look an order up by customer (an index scan while orders_customer_idx exists).
LOOKUP = "\\set c random(1, 20000)\nSELECT count(*) FROM orders WHERE customer_id = :c;\n"


def lookup_orders(cluster: Cluster, name: str, statements: bool = True) -> str:
    """A database with 200,000 orders indexed by customer, and pg_stat_statements."""
    cluster.create_database(name)
    with cluster.connect(name) as c:
        if statements:
            c.execute("CREATE EXTENSION pg_stat_statements")
        c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, note text)")
        c.execute("CREATE INDEX orders_customer_idx ON orders (customer_id)")
        c.execute("INSERT INTO orders SELECT g, g % 20000, 'n' || g FROM generate_series(1, 200000) g")
        c.execute("VACUUM ANALYZE orders")
    return name
