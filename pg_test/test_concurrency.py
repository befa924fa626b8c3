"""Several appliers at once: serialised, each version exactly once, no stale lock."""

import threading

import psycopg

from harness import APPLIER_LOCK, failure, wait_until

VERSIONS = 15
SESSIONS = 8


def script(v: int) -> str:
    # Applying a version twice would fail on CREATE TABLE and double the marker row.
    return f"CREATE TABLE m_{v} (id int); INSERT INTO applied_marks VALUES ({v});"


def test_n_sessions_apply_the_same_versions_exactly_once(cluster, db, conn):
    conn.execute("CREATE TABLE applied_marks (v int)")
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(SESSIONS)
    lock = threading.Lock()

    def deployer():
        try:
            with cluster.connect(db) as c:
                start.wait()
                for v in range(1, VERSIONS + 1):
                    status = c.execute("SELECT status FROM migrate.apply(%s, %s)", (str(v), script(v))).fetchone()[0]
                    with lock:
                        results.append((v, status))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=deployer) for _ in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    for v in range(1, VERSIONS + 1):
        statuses = sorted(s for (version, s) in results if version == v)
        assert statuses == ["already_applied"] * (SESSIONS - 1) + ["applied"], v
    assert conn.execute("SELECT count(*), count(DISTINCT v) FROM applied_marks").fetchone() == (VERSIONS, VERSIONS)
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == VERSIONS


def test_the_applier_lock_ends_with_the_transaction(cluster, db, conn):
    mine = APPLIER_LOCK + " AND pid = pg_backend_pid()"
    with cluster.connect(db, autocommit=False) as c:
        c.execute("SELECT migrate.apply('1', 'SELECT 1')")
        assert c.execute(mine).fetchone()[0] == 1
        c.commit()
        # Still connected, the session holds nothing: the lock was transaction-scoped.
        assert c.execute(mine).fetchone()[0] == 0
        c.rollback()


def test_snapshot_isolated_callers_are_refused(cluster, db):
    with cluster.connect(db, autocommit=False) as c:
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        f = failure(c, "SELECT migrate.apply('1', 'CREATE TABLE t (id int)')")
        assert f.sqlstate == "25000" and "REPEATABLE READ or SERIALIZABLE" in f.message
        assert "READ COMMITTED" in f.hint
        c.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        assert failure(c, "SELECT migrate.baseline('1')").sqlstate == "25000"
        assert c.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0


def test_a_killed_applier_leaves_no_lock_behind(cluster, db, conn):
    victim = cluster.connect(db)
    pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
    outcome: list[BaseException] = []

    def stuck_apply():
        try:
            victim.execute("SELECT migrate.apply('1', 'SELECT pg_sleep(60)')")
        except psycopg.Error as e:
            outcome.append(e)

    t = threading.Thread(target=stuck_apply)
    t.start()
    held = APPLIER_LOCK + " AND pid = %s"
    wait_until(lambda: conn.execute(held, (pid,)).fetchone()[0] == 1)
    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t.join(timeout=10)
    assert outcome and isinstance(outcome[0], psycopg.OperationalError)
    conn.execute("SET lock_timeout = '2s'")  # a stale lock would make this fail instead of hang
    assert conn.execute("SELECT status FROM migrate.apply('1', 'CREATE TABLE after_kill (id int)')").fetchone()[0] == "applied"
    assert conn.execute(APPLIER_LOCK).fetchone()[0] == 0
