"""The background worker: phased migrations with CONCURRENTLY statements, run after commit,
in version order, surviving kills and restarts of the worker and of the whole server."""

import os
import signal
import threading
import time

import psycopg
import pytest

from harness import failure, wait_until

MIGRATION = """
CREATE TABLE marks (phase int);
INSERT INTO marks VALUES (1);
CREATE INDEX CONCURRENTLY items_v ON items (v);
INSERT INTO marks VALUES (3);
"""


def populate(conn, rows=50_000):
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v int, pad text)")
    conn.execute(f"INSERT INTO items SELECT g, g % 1000, md5(g::text) FROM generate_series(1, {rows}) g")
    conn.execute("RESET migrate.guard")


def status(conn, version):
    row = conn.execute("SELECT status FROM migrate.history WHERE version = %s", (version,)).fetchone()
    return row[0] if row else None


def wait_for(cluster, db, version, want=("applied",), timeout=60):
    """Polls (reconnecting through restarts) until the version reaches one of `want`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with cluster.connect(db) as c:
                last = status(c, version)
                if last in want:
                    return last
        except psycopg.OperationalError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"version {version} is {last}, not {want}, after {timeout}s")


def index_state(conn, name):
    return conn.execute(
        "SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)).fetchone()


def worker_pid(conn):
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_migrate worker' AND datname = current_database()"
    ).fetchone()
    return row[0] if row else None


def test_a_phased_migration_runs_after_commit(cluster, db, conn):
    populate(conn)
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    with cluster.connect(db, autocommit=False) as submitter:
        row = submitter.execute("SELECT status, statements FROM migrate.apply('1', %s)", (MIGRATION,)).fetchone()
        assert row == ("pending", 4)
        time.sleep(0.5)
        # Nothing runs before the commit: the worker cannot see the migration yet.
        assert conn.execute("SELECT to_regclass('marks') IS NULL").fetchone()[0]
        submitter.commit()
    conn.execute("CALL migrate.wait('1', '60s')")
    assert status(conn, "1") == "applied"
    steps = conn.execute("SELECT phase, kind, state, attempts, built_index FROM migrate.steps ORDER BY phase").fetchall()
    assert steps == [
        (1, "transaction", "done", 1, None),
        (2, "top-level", "done", 1, "public.items_v"),
        (3, "transaction", "done", 1, None),
    ]
    assert conn.execute("SELECT array_agg(phase ORDER BY phase) FROM marks").fetchone()[0] == [1, 3]
    assert index_state(conn, "items_v") == (True,)
    logged = conn.execute(
        "SELECT command_tag, object_identity FROM migrate.ddl_log WHERE migration_version = '1' ORDER BY id").fetchall()
    assert logged == [("CREATE TABLE", "public.marks"), ("CREATE INDEX", "public.items_v")]
    history = conn.execute("SELECT phases, finished_at IS NOT NULL, applied_by FROM migrate.history").fetchone()
    assert history == (3, True, "postgres")


def test_a_rolled_back_submission_leaves_nothing(cluster, db, conn):
    populate(conn)
    with cluster.connect(db, autocommit=False) as submitter:
        submitter.execute("SELECT migrate.apply('1', %s)", (MIGRATION,))
        submitter.rollback()
    time.sleep(1)
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM migrate.steps").fetchone()[0] == 0
    assert conn.execute("SELECT to_regclass('marks') IS NULL").fetchone()[0]


def test_back_to_back_migrations_run_in_version_order(cluster, db, conn):
    populate(conn)
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY one ON items (v); CREATE TABLE t1 (n int)')")
    conn.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY two ON items (id, v); CREATE TABLE t2 (n int)')")
    conn.execute("CALL migrate.wait('2', '60s')")
    assert status(conn, "1") == "applied"
    order = conn.execute(
        "SELECT version, phase FROM migrate.steps ORDER BY started_at").fetchall()
    assert order == [("1", 1), ("1", 2), ("2", 1), ("2", 2)]


def test_a_failed_phase_stops_the_migration_and_those_after_it_until_retried(cluster, db, conn):
    populate(conn)
    conn.execute("SELECT migrate.apply('1', 'CREATE UNIQUE INDEX CONCURRENTLY items_v ON items (v); CREATE TABLE after1 (n int)')")
    conn.execute("SELECT migrate.apply('2', 'CREATE TABLE t2 (n int); VACUUM items')")
    f = failure(conn, "CALL migrate.wait('1', '60s')")
    assert f.sqlstate == "55000" and f.message == "pg_migrate: migration 1 failed"
    assert "could not create unique index" in f.detail and "SQLSTATE 23505" in f.detail
    assert "migrate.retry('1')" in f.hint
    failed = conn.execute(
        "SELECT phase, state, error_sqlstate FROM migrate.steps WHERE version = '1' ORDER BY phase").fetchall()
    assert failed == [(1, "failed", "23505"), (2, "pending", None)]
    # The failed build's INVALID index does not stay behind.
    assert conn.execute("SELECT to_regclass('items_v') IS NULL").fetchone()[0]
    time.sleep(1)
    assert status(conn, "2") == "pending"  # waits for 1
    conn.execute("SET migrate.guard = off")
    conn.execute("UPDATE items SET v = id")
    assert conn.execute("SELECT migrate.retry('1')").fetchone()[0] == "pending"
    conn.execute("CALL migrate.wait('2', '60s')")
    assert status(conn, "1") == "applied"
    assert conn.execute(
        "SELECT phase, state, attempts FROM migrate.steps WHERE version = '1' ORDER BY phase").fetchall() == [
        (1, "done", 2), (2, "done", 1)]
    assert index_state(conn, "items_v") == (True,)


def test_cancel_stops_at_a_phase_boundary(cluster, db, conn):
    populate(conn)
    holder = cluster.connect(db, autocommit=False)
    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    holder.execute("SELECT count(*) FROM items")  # an old snapshot: the build waits for it
    try:
        conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY items_v ON items (v); CREATE TABLE never (n int)')")
        wait_until(lambda: conn.execute("SELECT state FROM migrate.steps WHERE phase = 1").fetchone()[0] == "running")
        f = failure(conn, "CALL migrate.wait('1', '0.3s')")
        assert f.sqlstate == "57014" and f.message == "pg_migrate: migration 1 is still running after 00:00:00.3"
        assert "CALL migrate.wait('1')" in f.hint
        assert conn.execute("SELECT migrate.cancel('1')").fetchone()[0] == "cancelling"
    finally:
        holder.rollback()
        holder.close()
    assert wait_for(cluster, db, "1", want=("cancelled",)) == "cancelled"
    # The running phase finished; the next one never ran.
    assert conn.execute("SELECT phase, state FROM migrate.steps ORDER BY phase").fetchall() == [
        (1, "done"), (2, "cancelled")]
    assert conn.execute("SELECT to_regclass('never') IS NULL").fetchone()[0]
    f = failure(conn, "CALL migrate.wait('1', '5s')")
    assert f.sqlstate == "57014" and "cancelled" in f.message
    # A waiting migration is cancelled at once.
    conn.execute("SELECT migrate.apply('2', 'CREATE TABLE t2 (n int); VACUUM items')")
    conn.execute("SELECT migrate.cancel('2')")  # may already be running its first phase
    assert wait_for(cluster, db, "2", want=("cancelled", "applied")) in ("cancelled", "applied")


def test_bad_control_calls(conn):
    assert failure(conn, "SELECT migrate.retry('9')").sqlstate == "42704"
    assert failure(conn, "SELECT migrate.cancel(NULL)").sqlstate == "22004"
    conn.execute("SELECT migrate.apply('1', 'SELECT 1')")
    f = failure(conn, "SELECT migrate.retry('1')")
    assert f.sqlstate == "55000" and "is applied and cannot be retried" in f.message
    f = failure(conn, "CALL migrate.wait('9')")
    assert f.sqlstate == "42704" and f.message == "pg_migrate: version 9 is not recorded"
    conn.execute("CREATE ROLE outsider")
    try:
        conn.execute("SET ROLE outsider")
        for call in ("SELECT migrate.retry('1')", "SELECT migrate.cancel('1')"):
            f = failure(conn, call)
            assert f.sqlstate == "42501" and 'role "outsider" may not' in f.message, call
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP ROLE outsider")


def test_resubmitting_a_submitted_version_reports_its_state(cluster, db, conn):
    populate(conn)
    conn.execute("SELECT migrate.apply('1', %s)", (MIGRATION,))
    again = conn.execute("SELECT status FROM migrate.apply('1', %s)", (MIGRATION,)).fetchone()[0]
    assert again in ("pending", "running", "applied", "already_applied")
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT status FROM migrate.apply('1', %s)", (MIGRATION,)).fetchone()[0] == "already_applied"
    assert conn.execute("SELECT count(*) FROM marks").fetchone()[0] == 2


def test_phases_run_as_the_submitter_with_their_search_path(cluster, db, conn):
    populate(conn)
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE ROLE deployer LOGIN IN ROLE migrate_admin")
    conn.execute("GRANT ALL ON SCHEMA app TO deployer")
    conn.execute("GRANT CREATE ON SCHEMA public TO deployer")  # an index lives in its table's schema
    conn.execute("ALTER TABLE items OWNER TO deployer")
    try:
        with cluster.connect(db, user="deployer") as d:
            d.execute("SET search_path = app, public")
            d.execute("SELECT migrate.apply('1', 'CREATE TABLE made (n int); CREATE INDEX CONCURRENTLY ON items (v)')")
        conn.execute("CALL migrate.wait('1', '60s')")
        owner, schema = conn.execute(
            "SELECT tableowner, schemaname FROM pg_tables WHERE tablename = 'made'").fetchone()
        assert (owner, schema) == ("deployer", "app")
    finally:
        conn.execute("SET migrate.guard = off")
        conn.execute("DROP OWNED BY deployer CASCADE")
        conn.execute("DROP ROLE deployer")


def test_the_worker_starts_within_a_second_of_commit_and_exits_when_idle(cluster, db, conn):
    populate(conn, rows=1000)
    time.sleep(3)  # whatever worker ran for this database has gone idle and left
    assert worker_pid(conn) is None
    committed = time.monotonic()
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY ON items (v)')")
    wait_until(lambda: conn.execute("SELECT state FROM migrate.steps").fetchone()[0] == "done", timeout=10)
    assert time.monotonic() - committed < 1.0
    # Idle, it leaves, so that DROP DATABASE is not held up.
    wait_until(lambda: worker_pid(conn) is None, timeout=10)


def test_workers_survive_reload_and_come_back_after_termination(cluster, db, conn):
    populate(conn, rows=1000)
    conn.execute("SELECT pg_reload_conf()")
    launcher = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_migrate launcher'").fetchone()[0]
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY ON items (v)')")
    conn.execute("CALL migrate.wait('1', '60s')")
    conn.execute("SELECT pg_terminate_backend(%s)", (launcher,))
    # The postmaster restarts the launcher (after 5 s), and it serves new work again.
    wait_until(lambda: conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_migrate launcher' AND pid <> %s",
        (launcher,)).fetchone()[0] == 1, timeout=20)
    conn.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY ON items (id, v)')")
    conn.execute("CALL migrate.wait('2', '60s')")


# --- crash safety, on a table of more than a million rows, with a writer running ---

BIG = 1_200_000
CRASH_MIGRATION = """
INSERT INTO marks VALUES (1);
CREATE INDEX CONCURRENTLY items_pad ON items (pad, v);
INSERT INTO marks VALUES (3);
"""


@pytest.fixture
def big_db(cluster, db, conn):
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v int, pad text)")
    conn.execute(f"INSERT INTO items SELECT g, g % 1000, md5(g::text) FROM generate_series(1, {BIG}) g")
    conn.execute("CREATE TABLE marks (phase int)")
    conn.execute("VACUUM ANALYZE items")
    return db


class Writer:
    """A pgbench-style writer: inserts and updates items continuously, timing each statement."""

    def __init__(self, cluster, db):
        self.cluster, self.db = cluster, db
        self.latencies, self.errors = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = BIG
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.cluster.connect(self.db)
                n += 1
                t = time.monotonic()
                conn.execute("INSERT INTO items VALUES (%s, %s, md5(%s::text))", (n, n % 1000, n))
                conn.execute("UPDATE items SET v = v + 1 WHERE id = %s", (n % BIG + 1,))
                self.latencies.append(time.monotonic() - t)
            except psycopg.OperationalError as e:  # the server restarting under us
                self.errors.append(e)
                conn = None
                time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def building(conn):
    return conn.execute(
        "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid) "
        "WHERE a.backend_type = 'pg_migrate worker' AND p.phase LIKE 'building%'").fetchone()[0] > 0


def assert_completed_once(cluster, db):
    with cluster.connect(db) as c:
        assert status(c, "1") == "applied"
        assert c.execute("SELECT array_agg(phase ORDER BY phase) FROM marks").fetchone()[0] == [1, 3]
        assert index_state(c, "items_pad") == (True,)
        assert c.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND NOT indisvalid").fetchone()[0] == 0
        steps = c.execute("SELECT phase, state, attempts FROM migrate.steps ORDER BY phase").fetchall()
        assert [s[:2] for s in steps] == [(1, "done"), (2, "done"), (3, "done")]
        assert steps[1][2] == 2, "the interrupted build ran a second time, and only then"
        return c.execute("SELECT count(*) FROM items WHERE id > %s", (BIG,)).fetchone()[0]


def test_killing_the_worker_mid_build_loses_nothing_and_runs_nothing_twice(cluster, big_db, conn):
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    with Writer(cluster, big_db) as writer:
        wait_until(lambda: building(conn), timeout=60, interval=0.01)
        pid = worker_pid(conn)
        os.kill(pid, signal.SIGKILL)  # the postmaster restarts every backend after this
        wait_for(cluster, big_db, "1", timeout=180)
        time.sleep(0.5)
    inserted = assert_completed_once(cluster, big_db)
    assert inserted > 0 and writer.latencies


def test_restarting_the_server_mid_build_loses_nothing_and_runs_nothing_twice(cluster, big_db, conn):
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    wait_until(lambda: building(conn), timeout=60, interval=0.01)
    conn.close()
    cluster.restart()
    wait_for(cluster, big_db, "1", timeout=180)
    assert_completed_once(cluster, big_db)


def test_writers_never_wait_on_a_concurrent_build(cluster, big_db, conn):
    lock_timeout = 2.0  # migrate.lock_timeout's default
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    with Writer(cluster, big_db) as writer:
        wait_until(lambda: building(conn), timeout=60, interval=0.01)
        conn.execute("CALL migrate.wait('1', '180s')")
    assert writer.errors == []
    assert len(writer.latencies) > 100
    worst = max(writer.latencies)
    print(f"writer: {len(writer.latencies)} insert+update pairs during the build, worst {worst * 1000:.0f} ms")
    assert worst < lock_timeout
