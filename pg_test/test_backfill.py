"""Backfills: migrate.backfill run by the background worker in batches, against a real server
with real concurrent writers, crashes, restarts and a streaming replica."""

import os
import random
import shutil
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from harness import PG_BIN, Cluster, failure, free_port, server_settings, wait_until, worker_pid

LOCK_TIMEOUT_S = 2.0  # migrate.lock_timeout's default


def make_table(conn, rows: int, name: str = "t") -> None:
    conn.execute(
        f"CREATE TABLE {name} (id bigint PRIMARY KEY, a int NOT NULL, b int, n int NOT NULL DEFAULT 0)"
    )
    conn.execute(f"INSERT INTO {name} (id, a) SELECT g, g %% 1000 FROM generate_series(1, %s) g", (rows,))
    conn.execute(f"ANALYZE {name}")


def job_row(conn, job: int) -> dict:
    cur = conn.execute("SELECT * FROM migrate.backfill_progress WHERE job = %s", (job,))
    names = [d.name for d in cur.description]
    return dict(zip(names, cur.fetchone()))


def wait_state(conn, job: int, *states: str, timeout: float = 120) -> dict:
    wait_until(lambda: job_row(conn, job)["state"] in states, timeout=timeout, interval=0.1)
    return job_row(conn, job)


def submit(conn, table, set_clause, where_clause=None, **options) -> int:
    named = "".join(f", {k} => %({k})s" for k in options)
    params = {"table": table, "set": set_clause, "where": where_clause, **options}
    return conn.execute(f"SELECT migrate.backfill(%(table)s, %(set)s, %(where)s{named})", params).fetchone()[0]


def test_a_million_rows_with_a_concurrent_writer(cluster, db, conn):
    make_table(conn, 1_000_000)
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[Exception] = []

    def writer():
        # The new application version: it writes b itself (dual-write), updating and inserting.
        next_id = 2_000_000
        with cluster.connect(db) as w:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if random.random() < 0.5:
                        w.execute(
                            "UPDATE t SET a = a + 1, b = (a + 1) * 2 WHERE id = %s",
                            (random.randint(1, 1_000_000),),
                        )
                    else:
                        next_id += 1
                        w.execute("INSERT INTO t (id, a, b) VALUES (%s, 7, 14)", (next_id,))
                except psycopg.Error as e:
                    errors.append(e)
                latencies.append(time.monotonic() - started)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        job = submit(conn, "t", "b = a * 2, n = n + 1", "b IS NULL")
        done = wait_state(conn, job, "done", "failed", timeout=300)
    finally:
        stop.set()
        thread.join()
    assert done["state"] == "done", done
    assert done["remaining"] == 0
    wrong = conn.execute("SELECT count(*) FROM t WHERE b IS DISTINCT FROM a * 2").fetchone()[0]
    assert wrong == 0
    assert conn.execute("SELECT max(n) FROM t").fetchone()[0] == 1  # never updated twice
    assert errors == []
    assert len(latencies) > 100
    assert max(latencies) < LOCK_TIMEOUT_S, f"a writer statement waited {max(latencies):.3f}s"
    # The batch size adapted away from its start.
    assert done["batch_size"] != 1000


def counter_job(cluster, db, conn, rows: int) -> int:
    make_table(conn, rows)
    # Small fixed batches with a pause: the job takes several seconds, so it is cut mid-way.
    return submit(
        conn, "t", "b = a * 2, n = n + 1", None,
        batch_size=2_000, min_batch_size=2_000, max_batch_size=2_000, pause="30 ms",
    )


def assert_exactly_once(conn, job: int, rows: int) -> None:
    done = wait_state(conn, job, "done", "failed", timeout=120)
    assert done["state"] == "done", done
    counts = conn.execute(
        "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n <> 1), "
        "count(*) FILTER (WHERE b IS DISTINCT FROM a * 2) FROM t"
    ).fetchone()
    assert counts == (rows, 0, 0)
    assert done["rows_done"] == rows  # progress committed with each batch, never counted twice


def test_sigkill_of_the_worker_resumes_after_the_last_batch(cluster, db, conn):
    rows = 200_000
    job = counter_job(cluster, db, conn, rows)
    wait_until(lambda: job_row(conn, job)["rows_done"] >= 20_000, timeout=60, interval=0.05)
    pid = worker_pid(conn)
    assert pid
    before = job_row(conn, job)["rows_done"]
    conn.close()
    os.kill(pid, signal.SIGKILL)  # the postmaster resets every backend and recovers
    time.sleep(1)

    def reconnect():
        try:
            return cluster.connect(db)
        except psycopg.OperationalError:
            return None

    wait_until(lambda: reconnect() is not None, timeout=60, interval=0.2)
    with cluster.connect(db) as c:
        assert 0 < before < rows
        assert_exactly_once(c, job, rows)


def test_a_server_restart_resumes_after_the_last_batch(cluster, db, conn):
    rows = 200_000
    job = counter_job(cluster, db, conn, rows)
    wait_until(lambda: job_row(conn, job)["rows_done"] >= 20_000, timeout=60, interval=0.05)
    conn.close()
    cluster.restart()
    with cluster.connect(db) as c:
        at_restart = job_row(c, job)["rows_done"]
        assert 0 < at_restart < rows
        assert_exactly_once(c, job, rows)


def test_rows_written_after_the_bound_get_another_pass(cluster, db, conn):
    make_table(conn, 50_000)
    job = submit(conn, "t", "b = a * 2", "b IS NULL", batch_size=1_000, max_batch_size=1_000, pause="50 ms")
    wait_until(lambda: job_row(conn, job)["rows_done"] > 0, timeout=30, interval=0.05)
    # The old application version still inserts rows without b, beyond the pass's bound.
    conn.execute("INSERT INTO t (id, a) SELECT g, 5 FROM generate_series(100001, 100500) g")
    done = wait_state(conn, job, "done", "failed")
    assert done["state"] == "done", done
    assert done["pass"] == 2
    assert conn.execute("SELECT count(*) FROM t WHERE b IS NULL").fetchone()[0] == 0


def test_a_pause_or_cancel_made_while_a_batch_runs_stands(cluster, db, conn):
    """Batches of 0.4 s: a pause or cancel nearly always commits while one runs. The batch
    finishes and counts; the job stays paused, or cancelled."""
    make_table(conn, 20_000)
    job = submit(conn, "t", "b = CASE WHEN pg_sleep(0.002)::text IS NULL THEN 0 ELSE a * 2 END", "b IS NULL",
                 batch_size=200, min_batch_size=200, max_batch_size=200)
    for action, state in (("pause", "paused"), ("cancel", "cancelled")):
        wait_until(lambda: job_row(conn, job)["state"] == "running" and job_row(conn, job)["rows_done"] > 0,
                   timeout=30, interval=0.05)
        assert conn.execute(f"SELECT migrate.{action}(%s)", (job,)).fetchone()[0] == state
        time.sleep(1.5)
        settled = job_row(conn, job)
        assert settled["state"] == state, (action, settled)
        time.sleep(1)
        assert job_row(conn, job)["rows_done"] == settled["rows_done"], action
        if action == "pause":
            assert conn.execute("SELECT migrate.resume(%s)", (job,)).fetchone()[0] == "running"
            wait_until(lambda: job_row(conn, job)["rows_done"] > settled["rows_done"], timeout=30, interval=0.05)


def test_a_cancel_made_during_the_final_check_stands(cluster, db, conn):
    """The final check counts what the where clause still matches, in a transaction of its
    own, here for 4 s; a cancel that commits meanwhile is not undone by the job's end."""
    conn.execute("CREATE TABLE slow_check (id int PRIMARY KEY, v int)")
    conn.execute("INSERT INTO slow_check VALUES (1, NULL), (2, NULL)")
    job = submit(conn, "slow_check", "v = id", "v IS NULL OR (pg_sleep(2) IS NOT NULL AND v < 0)")
    wait_until(lambda: job_row(conn, job)["rows_done"] == 2, timeout=30, interval=0.02)
    assert conn.execute("SELECT migrate.cancel(%s)", (job,)).fetchone()[0] == "cancelled"
    time.sleep(5)
    assert job_row(conn, job)["state"] == "cancelled"


def test_pause_resume_and_cancel_keep_progress(cluster, db, conn):
    make_table(conn, 100_000)
    job = submit(conn, "t", "b = a * 2, n = n + 1", "b IS NULL",
                 batch_size=1_000, max_batch_size=1_000, pause="50 ms")
    wait_until(lambda: job_row(conn, job)["rows_done"] > 0, timeout=30, interval=0.05)
    assert conn.execute("SELECT migrate.pause(%s)", (job,)).fetchone()[0] == "paused"
    paused = job_row(conn, job)
    assert paused["state"] == "paused" and paused["reason"].startswith("paused by")
    time.sleep(1)
    assert job_row(conn, job)["rows_done"] == paused["rows_done"]  # no batch ran meanwhile

    assert conn.execute("SELECT migrate.cancel(%s)", (job,)).fetchone()[0] == "cancelled"
    cancelled = job_row(conn, job)
    assert cancelled["rows_done"] == paused["rows_done"]
    f = failure(conn, "SELECT migrate.pause(%s)", (job,))
    assert f.sqlstate == "55000" and "cancelled" in f.message

    assert conn.execute("SELECT migrate.resume(%s)", (job,)).fetchone()[0] == "running"
    done = wait_state(conn, job, "done", "failed")
    assert done["state"] == "done"
    assert conn.execute("SELECT count(*) FILTER (WHERE n <> 1) FROM t").fetchone()[0] == 0


def test_lock_timeouts_retry_then_split_the_batch(cluster, db, conn):
    make_table(conn, 20_000)
    conn.execute("ALTER DATABASE {} SET migrate.lock_timeout = '100ms'".format(db))
    blocker = cluster.connect(db, autocommit=False)
    blocker.execute("SELECT * FROM t WHERE id = 10 FOR UPDATE")
    with cluster.connect(db) as c:
        job = submit(c, "t", "b = a * 2", "b IS NULL", batch_size=4_000, min_batch_size=500)
        wait_until(lambda: job_row(c, job)["lock_timeouts"] >= 3, timeout=60, interval=0.05)
        stuck = job_row(c, job)
        assert stuck["state"] == "running"
        assert stuck["batch_size"] < 4_000  # split after the first retry
        assert stuck["last_error_sqlstate"] == "55P03"
        assert stuck["rows_done"] == 0
        blocker.rollback()
        blocker.close()
        done = wait_state(c, job, "done", "failed")
        assert done["state"] == "done", done
        assert c.execute("SELECT count(*) FROM t WHERE b IS NULL").fetchone()[0] == 0


def test_a_table_without_a_key_is_walked_by_pages(cluster, db, conn):
    conn.execute("CREATE TABLE h (a int NOT NULL, b int)")
    conn.execute("INSERT INTO h SELECT g, NULL FROM generate_series(1, 30000) g")
    f = failure(conn, "SELECT migrate.backfill('h', 'b = a')")
    assert f.sqlstate == "22023" and "needs a where clause" in f.message
    job = submit(conn, "h", "b = a", "b IS NULL", batch_size=2_000)
    done = wait_state(conn, job, "done", "failed")
    assert done["state"] == "done", done
    assert conn.execute("SELECT count(*) FROM h WHERE b IS DISTINCT FROM a").fetchone()[0] == 0


def test_batches_run_with_migrate_backfill_flush_after_as_their_backend_flush_after(cluster, db, conn):
    """What a batch dirties is written out as it goes (a backfill rewrites the whole table, and
    left in the kernel's cache until a checkpoint's fsync it makes every committer wait); the
    setting is read before each batch, after a reload. This checks what the batches run with;
    the effect (none here, under fsync=off) is measured by `make bench`."""
    conn.execute("CREATE TABLE f (id int PRIMARY KEY, seen text)")
    conn.execute("INSERT INTO f SELECT g FROM generate_series(1, 3000) g")

    def flush_after_seen_by_batches() -> list[str]:
        conn.execute("UPDATE f SET seen = NULL")
        job = submit(conn, "f", "seen = current_setting('backend_flush_after')", "seen IS NULL", batch_size=500)
        assert wait_state(conn, job, "done", "failed")["state"] == "done"
        return conn.execute("SELECT array_agg(DISTINCT seen) FROM f").fetchone()[0]

    assert conn.execute("SHOW backend_flush_after").fetchone()[0] == "0"
    assert flush_after_seen_by_batches() == ["256kB"]
    with server_settings(cluster, {"migrate.backfill_flush_after": "0", "backend_flush_after": "64kB"}):
        # 0 keeps the server's.
        assert flush_after_seen_by_batches() == ["64kB"]
    assert flush_after_seen_by_batches() == ["256kB"]


def test_a_backfill_is_a_phase_of_a_migration(cluster, db, conn):
    make_table(conn, 30_000)
    conn.execute(
        "SELECT migrate.apply('1', $$"
        "ALTER TABLE t ADD COLUMN c bigint;\n"
        "SELECT migrate.backfill('t', 'c = a + 1', 'c IS NULL', batch_size => 2000);\n"
        "CREATE INDEX CONCURRENTLY t_c ON t (c);\n"
        "$$)"
    )
    conn.execute("CALL migrate.wait('1', '2 minutes')")
    steps = conn.execute(
        "SELECT phase, kind, state, backfill_id, finished_at FROM migrate.steps WHERE version = '1' ORDER BY phase"
    ).fetchall()
    assert [(p, k, s) for p, k, s, _, _ in steps] == [
        (1, "transaction", "done"), (2, "backfill", "done"), (3, "top-level", "done"),
    ]
    job = steps[1][3]
    filled = job_row(conn, job)
    assert filled["state"] == "done" and filled["version"] == "1" and filled["phase"] == 2
    assert filled["finished_at"] <= steps[2][4]  # the index was built after the backfill
    assert conn.execute("SELECT count(*) FROM t WHERE c IS DISTINCT FROM a + 1").fetchone()[0] == 0
    checks = conn.execute("SELECT kind, ok FROM migrate.verify('1') WHERE kind = 'backfill'").fetchall()
    assert checks == [("backfill", True)]
    # The same rows written NULL again: the backfill check now fails.
    conn.execute("UPDATE t SET c = NULL WHERE id <= 3")
    detail = conn.execute("SELECT ok, detail FROM migrate.verify('1') WHERE kind = 'backfill'").fetchone()
    assert detail[0] is False and "3 rows match" in detail[1]


def test_a_failed_backfill_phase_fails_its_migration_and_retry_resumes_it(cluster, db, conn):
    make_table(conn, 10_000)
    conn.execute(
        "SELECT migrate.apply('1', $$"
        "SELECT migrate.backfill('t', 'b = 1000 / (id - 5000)', 'b IS NULL', batch_size => 1000);\n"
        "ALTER TABLE t ADD COLUMN done boolean;\n"
        "$$)"
    )
    f = failure(conn, "CALL migrate.wait('1', '1 minute')")
    assert f.sqlstate == "55000" and "failed" in f.message
    assert "division by zero" in f.detail
    (job,) = conn.execute("SELECT backfill_id FROM migrate.steps WHERE version = '1' AND phase = 1").fetchone()
    failed = job_row(conn, job)
    assert failed["state"] == "failed" and failed["last_error_sqlstate"] == "22012"
    kept = failed["rows_done"]
    f = failure(conn, "SELECT migrate.resume(%s)", (job,))
    assert f.sqlstate == "55000" and "migrate.retry('1')" in f.hint
    conn.execute("UPDATE t SET b = 0 WHERE id = 5000")  # the cause, fixed
    conn.execute("SELECT migrate.retry('1')")
    conn.execute("CALL migrate.wait('1', '1 minute')")
    done = job_row(conn, job)
    assert done["state"] == "done" and done["rows_done"] == 9_999 and kept > 0  # row 5000 was fixed by hand
    assert conn.execute("SELECT count(*) FROM t WHERE b IS NULL").fetchone()[0] == 0


BAD_INPUT = [
    ("SELECT migrate.backfill(NULL, 'b = 1')", "22004", "table must not be NULL"),
    ("SELECT migrate.backfill('t', NULL)", "22004", "set_clause must not be NULL"),
    ("SELECT migrate.backfill('t', 'b = ')", "42601", "does not parse"),
    ("SELECT migrate.backfill('t', 'b = 1', 'b IS NULL)')", "42601", "does not parse"),
    ("SELECT migrate.backfill('t', 'b = 1', 'true) OR (true')", "42601", "does not parse"),
    ("SELECT migrate.backfill('t', 'b = 1; DROP TABLE t')", "42601", "not several statements"),
    ("SELECT migrate.backfill('t', 'b = 1 WHERE true')", "42601", "has a WHERE"),
    ("SELECT migrate.backfill('t', 'b = 1 RETURNING *')", "42601", "has a RETURNING"),
    ("SELECT migrate.backfill('t', 'b = 1', 'b IS NULL, true')", "42601", "one condition"),
    ("SELECT migrate.backfill('t', 'b = 1', 'true FROM pg_class')", "42601", "one condition"),
    ("SELECT migrate.backfill('t', 'missing = 1')", "42703", "does not exist"),
    ("SELECT migrate.backfill('t', 'b = 1', 'missing IS NULL')", "42703", "does not exist"),
    ("SELECT migrate.backfill('t', 'b = ''x''')", "22P02", "invalid input syntax"),
    ("SELECT migrate.backfill('t', 'b = 1', 'a')", "42804", "boolean"),
    ("SELECT migrate.backfill('t', 'id = id + 1')", "22023", "part of the key"),
    ("SELECT migrate.backfill('t', 'b = 1', batch_size => 0)", "22023", "batch_size must be positive"),
    ("SELECT migrate.backfill('t', 'b = 1', max_batch_size => -5)", "22023", "max_batch_size must be positive"),
    ("SELECT migrate.backfill('t', 'b = 1', batch_size => 10, max_batch_size => 5)", "22023", "batch sizes"),
    ("SELECT migrate.backfill('t', 'b = 1', batch_time => '0')", "22023", "batch_time"),
    ("SELECT migrate.backfill('t', 'b = 1', max_replication_lag => 'lots')", "22023", "not a size"),
    ("SELECT migrate.backfill('v', 'b = 1')", "42809", "is not a table"),
    ("SELECT migrate.backfill('missing_table', 'b = 1')", "42P01", "does not exist"),
    ("SELECT migrate.backfill(4294967000::oid::regclass, 'b = 1')", "42P01", "relation 4294967000 does not exist"),
    ("SELECT migrate.pause(NULL)", "22004", "job must not be NULL"),
    ("SELECT migrate.resume(424242)", "42704", "does not exist"),
]


@pytest.mark.parametrize("query,sqlstate,words", BAD_INPUT, ids=[b[2] for b in BAD_INPUT])
def test_bad_input_is_refused_at_submit_and_nothing_is_queued(conn, query, sqlstate, words):
    make_table(conn, 10)
    conn.execute("CREATE VIEW v AS SELECT * FROM t")
    f = failure(conn, query)
    assert f.sqlstate == sqlstate, f
    assert words in f.message, f
    if f.message.startswith("pg_migrate:"):
        assert f.detail and f.hint, f
    else:  # PostgreSQL's own, before pg_migrate runs: an unknown table name
        assert sqlstate == "42P01"
    assert conn.execute("SELECT count(*) FROM migrate.backfills").fetchone()[0] == 0


def test_a_clause_that_does_not_parse_fails_the_apply(conn):
    make_table(conn, 10)
    f = failure(conn, "SELECT migrate.apply('1', $$SELECT migrate.backfill('t', 'b = ', 'b IS NULL');$$)")
    assert f.sqlstate == "42601" and f.message.startswith("pg_migrate: migration 1: backfill at line 1")
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0


def test_inside_a_migration_only_a_statement_of_its_own_is_a_backfill(conn):
    make_table(conn, 10)
    f = failure(conn, "SELECT migrate.apply('1', $$DO 'BEGIN PERFORM migrate.backfill(''t'', ''b = 1''); END'$$)")
    assert f.sqlstate == "0A000" and "statement of its own" in f.message


def test_ordinary_roles_cannot_submit_or_steer(cluster, conn):
    make_table(conn, 10)
    job = submit(conn, "t", "b = 1", "b IS NULL")
    conn.execute("DROP ROLE IF EXISTS bf_app")
    conn.execute("CREATE ROLE bf_app LOGIN")
    conn.execute("GRANT SELECT, UPDATE ON t TO bf_app")
    with cluster.connect(conn.info.dbname, user="bf_app") as app:
        for query in ("SELECT migrate.backfill('t', 'b = 1')", f"SELECT migrate.cancel({job})"):
            f = failure(app, query)
            assert f.sqlstate == "42501" and "migrate_admin" in f.hint
        f = failure(app, "SELECT * FROM migrate.backfill_progress")
        assert f.sqlstate == "42501"
    conn.execute("DROP OWNED BY bf_app")
    conn.execute("DROP ROLE bf_app")


def test_admins_need_update_on_the_table(cluster, conn):
    make_table(conn, 10)
    conn.execute("DROP ROLE IF EXISTS bf_admin")
    conn.execute("CREATE ROLE bf_admin LOGIN IN ROLE migrate_admin")
    with cluster.connect(conn.info.dbname, user="bf_admin") as admin:
        f = failure(admin, "SELECT migrate.backfill('t', 'b = 1')")
        assert f.sqlstate == "42501" and "GRANT SELECT, UPDATE ON public.t" in f.hint
    conn.execute("DROP ROLE bf_admin")


@pytest.fixture
def primary_and_replica():
    primary = Cluster("/tmp/pg_migrate_e2e_primary").start("fsync=off")
    replica_dir = "/tmp/pg_migrate_e2e_replica"
    replica = Cluster(replica_dir, free_port())
    replica.stop()
    shutil.rmtree(replica_dir, ignore_errors=True)
    os.makedirs(f"{replica_dir}/sock")
    subprocess.run(["chown", "-R", "postgres:", replica_dir], check=True)
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_basebackup"), "-h", str(primary.sock),
         "-p", str(primary.port), "-U", "postgres", "-D", f"{replica_dir}/data", "-R", "-X", "stream",
         "-c", "fast", "--no-sync"],
        check=True,
    )
    replica.start(f"port={replica.port}", f"unix_socket_directories={replica.sock}",
                  "cluster_name=replica", "hot_standby=on", fresh=False)
    with primary.connect() as c:
        wait_until(lambda: c.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                   .fetchone()[0] == 1, timeout=30)
    yield primary, replica
    replica.stop()
    primary.stop()
    shutil.rmtree(replica_dir, ignore_errors=True)


def test_replication_lag_pauses_and_resumes_the_job(primary_and_replica):
    primary, replica = primary_and_replica
    db = primary.create_database("lag")
    with primary.connect(db) as conn, replica.connect() as standby:
        make_table(conn, 100_000)
        caught_up = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        wait_until(lambda: standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (caught_up,))
                   .fetchone()[0], timeout=30)
        standby.execute("SELECT pg_wal_replay_pause()")
        job = submit(conn, "t", "b = a * 2", "b IS NULL",
                     batch_size=1_000, max_batch_size=1_000, max_replication_lag="512kB")
        paused = wait_state(conn, job, "paused", "done", timeout=60)
        assert paused["state"] == "paused", paused
        assert paused["reason"].startswith("replication lag: replica is "), paused
        assert paused["reason"].endswith("behind (limit 512 kB)"), paused
        assert 0 < paused["rows_done"] < 100_000
        time.sleep(2)
        still = job_row(conn, job)
        assert still["state"] == "paused" and still["rows_done"] == paused["rows_done"]
        standby.execute("SELECT pg_wal_replay_resume()")
        done = wait_state(conn, job, "done", "failed", timeout=120)
        assert done["state"] == "done", done
        assert conn.execute("SELECT count(*) FROM t WHERE b IS NULL").fetchone()[0] == 0


def test_a_disconnected_standby_s_slot_pauses_the_job_until_it_is_dropped(cluster, db, conn):
    """A physical slot no standby uses keeps the WAL its standby has yet to receive: that
    standby is as far behind as the WAL kept, and the job waits for it as for a connected one."""
    make_table(conn, 20_000)
    slot = "bf_gone_standby"
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    try:
        job = submit(conn, "t", "b = a * 2", "b IS NULL",
                     batch_size=1_000, max_batch_size=1_000, max_replication_lag="64kB")
        paused = wait_state(conn, job, "paused", "done", timeout=60)
        assert paused["state"] == "paused", paused
        assert paused["reason"].startswith(f"replication lag: slot {slot} (disconnected) is "), paused
        assert paused["rows_done"] < 20_000
        time.sleep(1)
        assert job_row(conn, job)["rows_done"] == paused["rows_done"]
    finally:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    done = wait_state(conn, job, "done", "failed", timeout=120)
    assert done["state"] == "done", done
    assert conn.execute("SELECT count(*) FROM t WHERE b IS NULL").fetchone()[0] == 0
