"""The background worker: phased migrations with CONCURRENTLY statements, run after commit,
in version order, surviving kills and restarts of the worker and of the whole server."""

import os
import signal
import threading
import time

import psycopg
import pytest

from harness import failure, wait_until, worker_pid

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
        for call in ("SELECT migrate.retry('1')", "SELECT migrate.cancel('1')",
                     "SELECT error_message FROM migrate.steps", "SELECT error_detail FROM migrate.steps"):
            f = failure(conn, call)
            assert f.sqlstate == "42501", call
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP ROLE outsider")


def test_only_the_submitter_or_its_members_may_retry(cluster, db, conn):
    conn.execute("CREATE ROLE deployer_a IN ROLE migrate_admin")
    conn.execute("CREATE ROLE deployer_b IN ROLE migrate_admin")
    try:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("ALTER TABLE t OWNER TO deployer_a")
        conn.execute("SET ROLE deployer_a")
        conn.execute("SELECT migrate.apply('1', 'VACUUM t; SELECT 1 / 0')")
        conn.execute("RESET ROLE")
        assert failure(conn, "CALL migrate.wait('1', '60s')").sqlstate == "55000"
        conn.execute("SET ROLE deployer_b")
        f = failure(conn, "SELECT migrate.retry('1')")
        assert f.sqlstate == "42501" and 'submitted by role "deployer_a"' in f.detail, f.detail
        conn.execute("RESET ROLE")
        conn.execute("GRANT deployer_a TO deployer_b")
        conn.execute("SET ROLE deployer_b")
        assert conn.execute("SELECT migrate.retry('1')").fetchone()[0] == "pending"
    finally:
        conn.execute("RESET ROLE")
        conn.execute("SET migrate.guard = off")
        conn.execute("DROP OWNED BY deployer_a, deployer_b CASCADE")
        conn.execute("DROP ROLE deployer_b")
        conn.execute("DROP ROLE deployer_a")


def test_resubmitting_a_submitted_version_reports_its_state(cluster, db, conn):
    populate(conn)
    conn.execute("SELECT migrate.apply('1', %s)", (MIGRATION,))
    again = conn.execute("SELECT status FROM migrate.apply('1', %s)", (MIGRATION,)).fetchone()[0]
    assert again in ("pending", "running", "applied", "already_applied")
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT status FROM migrate.apply('1', %s)", (MIGRATION,)).fetchone()[0] == "already_applied"
    assert conn.execute("SELECT count(*) FROM marks").fetchone()[0] == 2


def test_top_level_statements_are_resolved_with_the_submitters_search_path(cluster, db, conn):
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.items (id int PRIMARY KEY, v int)")
    conn.execute("SET search_path = app")
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY IF NOT EXISTS items_v ON items (v)')")
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT target_table, built_index FROM migrate.steps").fetchone() == ("app.items", "app.items_v")


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


def test_phases_run_under_the_submitters_limits_and_count_their_retries(cluster, db, conn):
    populate(conn, rows=1000)
    script = "CREATE INDEX CONCURRENTLY ON items (v);\nALTER TABLE items ADD COLUMN c int;"
    holder = cluster.connect(db, autocommit=False)
    holder.execute("SELECT count(*) FROM items")  # ACCESS SHARE: the ALTER must wait for it
    try:
        for s in ("migrate.lock_timeout = '100ms'", "migrate.lock_retries = 3", "migrate.lock_retry_delay = '50ms'"):
            conn.execute(f"SET {s}")
        conn.execute("SELECT migrate.apply('1', %s)", (script,))
        f = failure(conn, "CALL migrate.wait('1', '30s')")
        assert f.sqlstate == "55000" and "Phase 2 (statements 2 to 2, from line 2) failed" in f.detail, f.detail
        assert "SQLSTATE 55P03" in f.detail
        assert conn.execute(
            "SELECT settings->>'migrate.lock_timeout', settings->>'migrate.lock_retries' FROM migrate.history"
        ).fetchone() == ("100ms", "3")
        # Retried, the worker waits under the same limits; the lock is freed during the third
        # attempt (each attempt gives up after 100 ms, the backoffs are 25-50 then 50-100 ms).
        conn.execute("RESET ALL")
        conn.execute("SELECT migrate.retry('1')")
        wait_until(lambda: conn.execute(
            "SELECT clock_timestamp() - s.started_at > '350ms' AND a.wait_event_type = 'Lock' "
            "FROM migrate.steps s JOIN pg_stat_activity a ON a.pid = s.worker_pid WHERE s.phase = 2 "
            "AND s.state = 'running'").fetchone() == (True,), timeout=10, interval=0.01)
    finally:
        holder.rollback()
        holder.close()
    conn.execute("CALL migrate.wait('1', '30s')")
    retries, waited = conn.execute(
        "SELECT retries, extract(epoch FROM lock_wait) FROM migrate.history").fetchone()
    assert retries >= 2 and float(waited) >= 0.2, (retries, waited)


def test_the_worker_waits_out_a_held_applier_lock_instead_of_leaving(cluster, db, conn):
    populate(conn, rows=1000)
    conn.execute("SELECT migrate.apply('1', 'SELECT pg_sleep(0.5); CREATE INDEX CONCURRENTLY items_v ON items (v)')")
    wait_until(lambda: conn.execute("SELECT state FROM migrate.steps WHERE phase = 1").fetchone()[0] == "running")
    # Another applier holds the lock across the phase boundary, for longer than the
    # worker's idle timeout, and its commit will not wake the worker.
    with cluster.connect(db, autocommit=False) as holder:
        holder.execute("COMMENT ON EXTENSION pg_migrate IS 'held'")  # conflicts with the applier lock
        time.sleep(3)
        assert worker_pid(conn) is not None
        holder.rollback()
    wait_for(cluster, db, "1", timeout=10)


def test_later_versions_wait_behind_an_unfinished_one_even_without_phases(cluster, db, conn):
    populate(conn, rows=1000)
    conn.execute("SET migrate.guard = off")
    conn.execute("INSERT INTO items VALUES (1001, 1)")  # v is not unique: the unique build fails
    conn.execute("RESET migrate.guard")
    conn.execute("SELECT migrate.apply('1', 'CREATE UNIQUE INDEX CONCURRENTLY items_v ON items (v)')")
    assert failure(conn, "CALL migrate.wait('1', '60s')").sqlstate == "55000"
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    row = conn.execute("SELECT status, statements FROM migrate.apply('2', 'ALTER TABLE items ADD COLUMN w int')").fetchone()
    assert row == ("pending", 1)
    assert any("waits for version 1 (failed)" in n and "migrate.retry('1')" in n for n in notices), notices
    time.sleep(0.5)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'w'").fetchone()[0] == 0
    conn.execute("SET migrate.guard = off")
    conn.execute("DELETE FROM items WHERE id > 1000")
    conn.execute("UPDATE items SET v = id")
    conn.execute("SELECT migrate.retry('1')")
    conn.execute("CALL migrate.wait('2', '60s')")
    assert conn.execute("SELECT version, status FROM migrate.history ORDER BY version_key").fetchall() == [
        ("1", "applied"), ("2", "applied")]


def test_session_state_carries_between_phases_but_not_between_migrations(cluster, db, conn):
    populate(conn, rows=1000)
    conn.execute("SELECT migrate.apply('1', 'CREATE TEMP TABLE scratch (n int); VACUUM items; "
                 "INSERT INTO scratch VALUES (1)')")
    conn.execute("CALL migrate.wait('1', '60s')")
    conn.execute("SELECT migrate.apply('2', 'VACUUM items; INSERT INTO scratch VALUES (2)')")
    f = failure(conn, "CALL migrate.wait('2', '60s')")
    assert 'relation "scratch" does not exist' in f.detail and "SQLSTATE 42P01" in f.detail


@pytest.mark.parametrize("worker", ["fresh", "after_a_migration"])
def test_a_migration_runs_with_the_database_settings_given_before_it(cluster, db, conn, worker):
    """A session takes its database's settings when it starts; the worker's session may be
    older than an ALTER DATABASE ... SET committed right before migrate.apply (the CI failure
    of the crash test: a worker installing pg_migrate had started ran the migration with the
    cluster's synchronous_commit). The next migration then runs in a new session."""
    populate(conn, rows=1000)
    conn.execute("CREATE TABLE seen (migration text, flag text)")
    if worker == "after_a_migration":
        conn.execute("SELECT migrate.apply('1', $$VACUUM items; "
                     "INSERT INTO seen SELECT '1', current_setting('pg_migrate_test.flag', true)$$)")
        conn.execute("CALL migrate.wait('1', '60s')")
    # The worker CREATE EXTENSION started, which stays to sample, or the one that ran '1'.
    wait_until(lambda: worker_pid(conn) is not None, timeout=30)
    before = worker_pid(conn)
    # Most likely past its first look at the settings; if not, that look starts it again, and
    # the migration must see the setting all the same.
    time.sleep(0.5)
    conn.execute(f"ALTER DATABASE \"{db}\" SET pg_migrate_test.flag = 'given'")
    conn.execute("SELECT migrate.apply('2', $$VACUUM items; "
                 "INSERT INTO seen SELECT '2', current_setting('pg_migrate_test.flag', true)$$)")
    conn.execute("CALL migrate.wait('2', '60s')")
    want = [("2", "given")] if worker == "fresh" else [("1", None), ("2", "given")]
    assert conn.execute("SELECT migration, flag FROM seen ORDER BY migration").fetchall() == want
    assert worker_pid(conn) not in (None, before)


def test_session_state_carries_between_phases_however_long_they_take(cluster, db, conn):
    """Between two phases of one migration the worker runs nothing else: not the windows'
    upkeep (every 5 s, in a session it resets) nor a new session for settings given to the
    database meanwhile. Those wait for the migration's end."""
    populate(conn, rows=1000)
    conn.execute("CREATE TABLE seen (flag text, work_mem text, n int)")
    conn.execute("SELECT migrate.apply('1', $$CREATE TEMP TABLE scratch (n int); SET work_mem = '7MB'; "
                 "VACUUM items; SELECT pg_sleep(6); VACUUM items; INSERT INTO scratch VALUES (1); "
                 "INSERT INTO seen SELECT current_setting('pg_migrate_test.flag', true), "
                 "current_setting('work_mem'), n FROM scratch$$)")
    wait_until(lambda: conn.execute("SELECT state FROM migrate.steps WHERE phase = 3").fetchone() == ("running",),
               timeout=30)
    conn.execute(f"ALTER DATABASE \"{db}\" SET pg_migrate_test.flag = 'given'")
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT flag, work_mem, n FROM seen").fetchall() == [(None, "7MB", 1)]
    # Then the worker takes the setting, in a new session.
    conn.execute("SELECT migrate.apply('2', $$VACUUM items; "
                 "INSERT INTO seen SELECT current_setting('pg_migrate_test.flag', true), current_setting('work_mem'), 2$$)")
    conn.execute("CALL migrate.wait('2', '60s')")
    assert conn.execute("SELECT flag, work_mem FROM seen WHERE n = 2").fetchall() == [("given", "4MB")]


def test_what_a_phase_sets_for_the_session_is_not_the_workers_own(cluster, db, conn):
    """A phase's SET carries to the migration's next phases, and no further: the worker's own
    transactions between them (reading the queue, recording the migration's end) run without
    it, and it is back for the next phase. A session left read-only by the last phase
    stopped the worker for its database; one left serializable, read-only and deferrable
    made the next reset of the session wait for every serializable writer."""
    populate(conn, rows=1000)
    with cluster.connect(db, autocommit=False) as writer:
        writer.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        writer.execute("INSERT INTO items VALUES (-1, 0, '')")
        conn.execute("SELECT migrate.apply('1', $$SET work_mem = '7MB'; SET pg_migrate_test.flag = 'phase 1'; "
                     "SET default_transaction_isolation = 'repeatable read'; VACUUM items; "
                     "CREATE TABLE seen_by_phase_3 AS SELECT current_setting('work_mem') AS work_mem, "
                     "current_setting('pg_migrate_test.flag') AS flag, "
                     "current_setting('transaction_isolation') AS iso; "
                     "VACUUM items; SET default_transaction_isolation = serializable; "
                     "SET default_transaction_deferrable = on; SET default_transaction_read_only = on$$)")
        conn.execute("CALL migrate.wait('1', '60s')")
        assert status(conn, "1") == "applied"
        assert conn.execute("SELECT phase, state FROM migrate.steps WHERE version = '1' ORDER BY phase"
                            ).fetchall() == [(1, "done"), (2, "done"), (3, "done"), (4, "done"), (5, "done")]
        assert conn.execute("SELECT * FROM seen_by_phase_3").fetchall() == [("7MB", "phase 1", "repeatable read")]
        # The next migration starts in a new session, read-write, of the same worker.
        conn.execute("SELECT migrate.apply('2', $$VACUUM items; CREATE TABLE after_it (setting text); "
                     "INSERT INTO after_it SELECT current_setting('default_transaction_read_only')$$)")
        conn.execute("CALL migrate.wait('2', '60s')")
        writer.rollback()
    assert conn.execute("SELECT setting FROM after_it").fetchall() == [("off",)]
    assert conn.execute(
        "SELECT array_agg(DISTINCT object_identity ORDER BY object_identity), count(DISTINCT backend_pid) "
        "FROM migrate.ddl_log WHERE object_identity IN ('public.seen_by_phase_3', 'public.after_it')"
    ).fetchone() == (["public.after_it", "public.seen_by_phase_3"], 1)


def test_a_built_index_renamed_by_a_later_phase_is_not_built_again(cluster, db, conn):
    populate(conn, rows=1000)
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY items_v_new ON items (v); "
                 "ALTER INDEX items_v_new RENAME TO items_v')")
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT phase, state, attempts FROM migrate.steps ORDER BY phase").fetchall() == [
        (1, "done", 1), (2, "done", 1)]
    assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass").fetchone()[0] == 2


def test_a_phased_submission_cannot_be_prepared(cluster, db, conn):
    populate(conn, rows=1000)
    with cluster.connect(db, autocommit=False) as c:
        c.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY ON items (v)')")
        f = failure(c, "PREPARE TRANSACTION 'deploy'")
    assert f.sqlstate == "0A000" and "cannot PREPARE a transaction that submitted work" in f.message
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0


def test_the_guard_judges_phased_migrations(cluster, db, conn):
    populate(conn)
    conn.execute("ANALYZE items")
    script = "CREATE INDEX CONCURRENTLY items_v ON items (v);\nCREATE INDEX items_id_v ON items (id, v);"
    f = failure(conn, "SELECT migrate.apply('1', %s)", (script,))
    assert f.message.startswith("pg_migrate: migration 1: statement 2 (line 2): index-create-blocking: "), f.message
    assert conn.execute(
        "SELECT (SELECT count(*) FROM migrate.history) + (SELECT count(*) FROM migrate.steps)").fetchone()[0] == 0
    # Allowed for this migration, the worker runs its phases under the same allowance, logged.
    conn.execute("SELECT migrate.apply('1', %s, allow => ARRAY['index-create-blocking'])", (script,))
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute(
        "SELECT migration_version, guard_rule, object_identity FROM migrate.ddl_log WHERE event = 'guard_override'"
    ).fetchall() == [("1", "index-create-blocking", "public.items")]


@pytest.fixture
def no_sampling(cluster):
    """The workload is not sampled: a worker with nothing to do leaves (one that samples
    stays, for the health gate's baselines; test_watch.py)."""
    with cluster.connect() as c:
        c.execute("ALTER SYSTEM SET migrate.watch_sample_interval = 0")
        c.execute("SELECT pg_reload_conf()")
    yield
    with cluster.connect() as c:
        c.execute("ALTER SYSTEM RESET migrate.watch_sample_interval")
        c.execute("SELECT pg_reload_conf()")


def test_the_worker_starts_within_a_second_of_commit_and_exits_when_idle(cluster, db, conn, no_sampling):
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


def test_an_interrupted_detach_is_finalized_not_run_again(cluster, db, conn):
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE events (at date NOT NULL, n int) PARTITION BY RANGE (at)")
    for year in (2025, 2026):
        conn.execute(f"CREATE TABLE events_{year} PARTITION OF events "
                     f"FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01')")
    conn.execute("INSERT INTO events SELECT date '2025-01-01' + g % 700, g FROM generate_series(1, 20000) g")
    conn.execute("RESET migrate.guard")
    holder = cluster.connect(db, autocommit=False)
    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    holder.execute("SELECT count(*) FROM events")  # the detach's second transaction waits for this snapshot
    try:
        conn.execute("SELECT migrate.apply('1', 'ALTER TABLE events DETACH PARTITION events_2025 CONCURRENTLY; "
                     "CREATE TABLE after_detach (n int)')")
        # The first half has committed (the partition is marked pending) and the worker waits.
        wait_until(lambda: conn.execute(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'events_2025'::regclass").fetchone() == (True,),
            timeout=10)
        pid = worker_pid(conn)
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: worker_pid(conn) != pid, timeout=10)
    finally:
        holder.rollback()
        holder.close()
    wait_for(cluster, db, "1", timeout=60)
    assert conn.execute("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'events_2025'::regclass").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM events_2025").fetchone()[0] > 0  # detached, not lost
    assert conn.execute("SELECT phase, state, attempts FROM migrate.steps ORDER BY phase").fetchall() == [
        (1, "done", 1), (2, "done", 1)]
    assert conn.execute("SELECT to_regclass('after_detach') IS NOT NULL").fetchone()[0]


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
    # Less than half-way through the table's scan: an interruption then surely cuts the
    # build short (caught any later, the build may finish before the signal arrives).
    return conn.execute(
        "SELECT count(*) FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid) "
        "WHERE a.backend_type = 'pg_migrate worker' AND a.datname = current_database() "
        "AND p.phase = 'building index: scanning table' "
        "AND p.blocks_done * 2 < p.blocks_total").fetchone()[0] > 0


def assert_completed_once(cluster, db, interrupted_build_recorded=True):
    with cluster.connect(db) as c:
        assert status(c, "1") == "applied"
        assert c.execute("SELECT array_agg(phase ORDER BY phase) FROM marks").fetchone()[0] == [1, 3]
        assert index_state(c, "items_pad") == (True,)
        assert c.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND NOT indisvalid").fetchone()[0] == 0
        steps = c.execute("SELECT phase, state, attempts FROM migrate.steps ORDER BY phase").fetchall()
        assert [s[:2] for s in steps] == [(1, "done"), (2, "done"), (3, "done")]
        if interrupted_build_recorded:
            assert steps[1][2] == 2, "the interrupted build ran a second time, and only then"
        else:  # the record of the first attempt may be lost with the crash, and its index too
            assert steps[1][2] in (1, 2)
        return c.execute("SELECT count(*) FROM items WHERE id > %s", (BIG,)).fetchone()[0]


@pytest.mark.parametrize("synchronous_commit", ["on", "off"])
def test_killing_the_worker_mid_build_loses_nothing_and_runs_nothing_twice(cluster, big_db, conn,
                                                                          synchronous_commit):
    """A crash keeps what was committed synchronously. What was committed asynchronously may
    be lost (seen here on 17 and 18: seconds of it, the migration and the tables created
    before it included), but only as a whole: recovery ends at a point in the WAL, so the
    migration is then gone with everything it did, or it completes, once."""
    conn.execute(f'ALTER DATABASE "{big_db}" SET synchronous_commit = {synchronous_commit}')
    conn.execute(f"SET synchronous_commit = {synchronous_commit}")
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    with Writer(cluster, big_db) as writer:
        wait_until(lambda: building(conn), timeout=60, interval=0.01)
        pid = worker_pid(conn)
        os.kill(pid, signal.SIGKILL)  # the postmaster restarts every backend after this
        if synchronous_commit == "off" and lost_in_crash(cluster, big_db, conn):
            return
        wait_for(cluster, big_db, "1", timeout=180)
        time.sleep(0.5)
    inserted = assert_completed_once(cluster, big_db, interrupted_build_recorded=synchronous_commit == "on")
    assert inserted > 0 and writer.latencies


def lost_in_crash(cluster, db, conn):
    """After a crash restart: whether migration 1 is gone, and then that nothing of it is left."""
    # The test's own session ends in the crash: what is read after that, recovery kept.
    wait_until(lambda: session_ended(conn), timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            with cluster.connect(db) as c:
                # Lost from a point in the WAL on: the migration with all its work (and maybe
                # the test's own tables, created just before it, too).
                if rows_in(c, "migrate.history", "version = '1'"):
                    return False
                assert rows_in(c, "migrate.steps") == 0
                assert rows_in(c, "marks") == 0
                assert c.execute("SELECT to_regclass('items_pad')").fetchone()[0] is None
                return True
        except psycopg.OperationalError:  # still recovering
            assert time.monotonic() < deadline, "the server did not come back after the crash"
            time.sleep(0.1)


def rows_in(c, table, where="true"):
    """Rows of `table` (0 if the table itself is gone)."""
    if c.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return 0
    return c.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def session_ended(conn):
    try:
        conn.execute("SELECT 1")
        return False
    except psycopg.OperationalError:
        return True


def test_terminating_the_worker_mid_build_is_a_clean_exit_and_the_build_resumes(cluster, big_db, conn):
    mark = cluster.log_mark()
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    wait_until(lambda: building(conn), timeout=60, interval=0.01)
    pid = worker_pid(conn)
    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(cluster, big_db, "1", timeout=180)
    assert_completed_once(cluster, big_db)
    log = cluster.log_since(mark)
    assert "terminating background worker \"pg_migrate worker\" due to administrator command" in log
    # An orderly exit: the postmaster did not have to reset the other backends.
    assert "terminating any other active server processes" not in log


def test_cancelling_an_interrupted_build_cleans_it_up_first(cluster, big_db, conn):
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    wait_until(lambda: building(conn), timeout=60, interval=0.01)
    conn.execute("SELECT pg_terminate_backend(%s)", (worker_pid(conn),))
    assert conn.execute("SELECT migrate.cancel('1')").fetchone()[0] == "cancelling"
    wait_for(cluster, big_db, "1", want=("cancelled",), timeout=60)
    # The interrupted build's INVALID index was dropped before the cancel took effect.
    assert conn.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND NOT indisvalid").fetchone()[0] == 0
    assert conn.execute("SELECT phase, state FROM migrate.steps ORDER BY phase").fetchall() == [
        (1, "done"), (2, "cancelled"), (3, "cancelled")]


def test_restarting_the_server_mid_build_loses_nothing_and_runs_nothing_twice(cluster, big_db, conn):
    conn.execute("SELECT migrate.apply('1', %s)", (CRASH_MIGRATION,))
    wait_until(lambda: building(conn), timeout=60, interval=0.01)
    conn.close()
    mark = cluster.log_mark()
    cluster.restart()  # a fast shutdown: SIGTERM to every backend, the worker and launcher too
    wait_for(cluster, big_db, "1", timeout=180)
    assert_completed_once(cluster, big_db)
    log = cluster.log_since(mark)
    assert "database system is shut down" in log
    assert "terminating any other active server processes" not in log


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


def test_cancelling_a_failed_migration_lets_the_next_one_run_without_another_wake_up(cluster, db, conn,
                                                                                    no_sampling):
    conn.execute("CREATE TABLE dup (id int)")
    conn.execute("INSERT INTO dup VALUES (1), (1)")
    conn.execute("SELECT migrate.apply('1', 'CREATE UNIQUE INDEX CONCURRENTLY dup_id ON dup (id)')")
    wait_for(cluster, db, "1", want=("failed",))
    conn.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY dup_plain ON dup (id)')")
    # The worker finds version 2 behind the failed 1, goes idle and exits.
    wait_until(lambda: worker_pid(conn) is None, timeout=30, interval=0.1)
    conn.execute("SELECT migrate.cancel('1')")
    wait_for(cluster, db, "2", timeout=15)


def test_validate_after_not_valid_runs_in_a_transaction_of_its_own(cluster, db, conn):
    """ADD CONSTRAINT ... NOT VALID then VALIDATE in one migration: the validating scan runs
    in a phase of its own, under SHARE UPDATE EXCLUSIVE only, so writers go on."""
    populate(conn)
    script = ("ALTER TABLE items ADD CONSTRAINT v_small CHECK (v < 1000) NOT VALID;\n"
              "ALTER TABLE items VALIDATE CONSTRAINT v_small;")
    assert conn.execute("SELECT status FROM migrate.apply('1', %s)", (script,)).fetchone() == ("pending",)
    conn.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT phase, kind, state FROM migrate.steps ORDER BY phase").fetchall() == [
        (1, "transaction", "done"), (2, "transaction", "done")]
    assert conn.execute(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'v_small'").fetchone() == (True,)
    # VALIDATE alone needs no phases: it runs in the caller's transaction, as before.
    conn.execute("ALTER TABLE items ADD CONSTRAINT v_big CHECK (v >= 0) NOT VALID")
    row = conn.execute(
        "SELECT status FROM migrate.apply('2', 'ALTER TABLE items VALIDATE CONSTRAINT v_big')").fetchone()
    assert row == ("applied",)
