"""The health gate's signals against a real server: errors counted by kind, per database,
by the log hook (issue 16)."""

from harness import failure


def counts(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT signal, errors FROM migrate.error_counts").fetchall())


def test_errors_are_counted_by_kind_in_the_database_that_raised_them(cluster, db, conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
    conn.execute("INSERT INTO t VALUES (1, 1)")
    assert conn.execute("SELECT signal, sqlstates FROM migrate.error_counts").fetchall() == [
        ("undefined object", ["42703", "42P01", "42883", "42704"]), ("lock timeout", ["55P03"]),
        ("statement canceled", ["57014"]), ("deadlock", ["40P01"]), ("serialization failure", ["40001"]),
        ("any error", []),
    ]
    before = counts(conn)
    with cluster.connect(db) as c:
        assert failure(c, "SELECT missing FROM t").sqlstate == "42703"
        assert failure(c, "SELECT * FROM no_such_table").sqlstate == "42P01"
        assert failure(c, "SELECT 1/0").sqlstate == "22012"
        c.execute("SET statement_timeout = '50ms'")
        assert failure(c, "SELECT pg_sleep(2)").sqlstate == "57014"
        c.execute("RESET statement_timeout")
        # An error a PL/pgSQL block catches is never reported, and not counted.
        c.execute("DO $$ BEGIN PERFORM missing FROM t; EXCEPTION WHEN undefined_column THEN NULL; END $$")
    with cluster.connect(db) as holder, cluster.connect(db) as waiter:
        holder.execute("BEGIN")
        holder.execute("LOCK t IN ACCESS EXCLUSIVE MODE")
        waiter.execute("SET lock_timeout = '50ms'")
        assert failure(waiter, "SELECT * FROM t").sqlstate == "55P03"
        holder.execute("ROLLBACK")
        # Two writers of one row under REPEATABLE READ: the later one fails.
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT v FROM t WHERE id = 1")
        waiter.execute("UPDATE t SET v = 2 WHERE id = 1")
        assert failure(holder, "UPDATE t SET v = 3 WHERE id = 1").sqlstate == "40001"
        holder.execute("ROLLBACK")
    # Another database's errors are its own.
    other = cluster.create_database("watch_other")
    with cluster.connect(other) as o:
        assert failure(o, "SELECT missing FROM pg_class").sqlstate == "42703"
        other_counts = counts(o)
    other_oid = conn.execute("SELECT oid FROM pg_database WHERE datname = 'watch_other'").fetchone()[0]
    cluster.drop_database(other)
    # Its slot is freed as it is dropped: a later database of the same OID starts from zero,
    # and the slots (256) are not used up by databases long gone (this suite makes hundreds).
    assert conn.execute("SELECT count(*) FROM pg_database WHERE oid = %s", (other_oid,)).fetchone()[0] == 0
    after = counts(conn)
    assert {k: after[k] - before[k] for k in after} == {
        "undefined object": 2, "lock timeout": 1, "statement canceled": 1, "deadlock": 0,
        "serialization failure": 1, "any error": 6,
    }
    assert other_counts["undefined object"] == 1 and other_counts["any error"] == 1, other_counts


# --- The health gate: watched migrations under a real workload ----------------------------
#
# A cluster of its own, with pg_stat_statements preloaded and the gate's timings shortened
# (a sample a second, two seconds to settle, five samples a side), so that each watch ends
# within a minute or two. The workload is pgbench at a fixed rate (-R), or, where it must go
# on through errors (pgbench 15 stops a client at its first), client threads at a fixed rate.

import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402
from harness import GATE_SETTINGS, LOOKUP, PG_BIN, Cluster, lookup_orders, wait_until  # noqa: E402


def test_settings_under_which_no_baseline_suffices_refuse_a_watch(cluster, db, conn):
    # The default sampling: every 10 s over a 300 s baseline, 30 samples at most.
    conn.execute("ALTER SYSTEM SET migrate.watch_min_samples = 40")
    conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        f = failure(conn, "SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '10 min')")
        assert (f.sqlstate, "settings allow at most 30" in f.message, "migrate.watch_baseline" in f.hint) == (
            "55000", True, True), f
        assert conn.execute("SELECT count(*) FROM migrate.history").fetchone() == (0,)
    finally:
        conn.execute("ALTER SYSTEM RESET migrate.watch_min_samples")
        conn.execute("SELECT pg_reload_conf()")



@pytest.fixture(scope="module")
def gate():
    # Data checksums on (PostgreSQL 18's default), so that a checksum failure can be shown.
    c = Cluster("/tmp/pg_migrate_e2e_gate").start("fsync=off", "synchronous_commit=off", *GATE_SETTINGS,
                                                   initdb_args="--data-checksums")
    yield c
    c.stop()


class Pgbench:
    """pgbench running `script` at `rate` transactions per second until stopped."""

    def __init__(self, gate: Cluster, db: str, script: str, rate: int = 50):
        self.file = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
        self.file.write(script)
        self.file.close()
        self.args = [str(PG_BIN / "pgbench"), "-n", "-h", str(gate.sock), "-p", str(gate.port),
                     "-U", "postgres", "-c", "2", "-j", "2", "-R", str(rate), "-T", "900",
                     "-f", self.file.name, db]

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        # It ran to the end: a pgbench that died early would have left the test no workload.
        running = self.proc.poll() is None
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if exc[0] is None:
            assert running, f"pgbench exited early: {self.proc.stderr.read()}"


class Clients:
    """Client threads sending `query` at a fixed rate, going on through errors (counted)."""

    def __init__(self, gate: Cluster, db: str, query: str, rate: int = 50, threads: int = 2):
        self.gate, self.db, self.query, self.period = gate, db, query, threads / rate
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        with self.gate.connect(self.db) as c:
            next_at = time.monotonic()
            while not self._stop.is_set():
                try:
                    c.execute(self.query)
                except psycopg.Error as e:
                    self.errors[e.sqlstate] = self.errors.get(e.sqlstate, 0) + 1
                next_at += self.period
                time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def baseline_ready(gate: Cluster, db: str, samples: int = 8, statements: bool = True) -> None:
    """Waits until the worker has sampled the workload `samples` times."""
    with gate.connect(db) as c:
        query = ("SELECT count(*) FROM migrate.workload_samples()"
                 + (" WHERE statements > 0" if statements else ""))
        wait_until(lambda: c.execute(query).fetchone()[0] >= samples, timeout=60, interval=0.5)


def state(conn, version: str) -> str | None:
    row = conn.execute("SELECT state FROM migrate.watch_records WHERE version = %s", (version,)).fetchone()
    return row[0] if row else None


def settled(conn, version: str, timeout: float = 120) -> str:
    wait_until(lambda: state(conn, version) not in ("waiting", "watching", "rolling back", "recovering"),
               timeout=timeout, interval=0.5)
    return state(conn, version)


def looks(conn, version: str) -> list[tuple]:
    return conn.execute(
        "SELECT stage, look, verdict FROM migrate.watch_looks WHERE version = %s AND signal = 'look' "
        "ORDER BY looked_at", (version,)).fetchall()


def test_dropping_an_index_the_workload_needs_is_rolled_back_and_rebuilt(gate):
    db = lookup_orders(gate, "gate_drop_index")
    with Pgbench(gate, db, LOOKUP), gate.connect(db) as c:
        baseline_ready(gate, db)
        c.execute(
            "SELECT * FROM migrate.apply('100', 'DROP INDEX CONCURRENTLY orders_customer_idx', "
            "rollback => 'CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id)', "
            "watch => '60 s', on_regression => 'rollback')")
        started = time.monotonic()
        assert settled(c, "100") == "rolled back", c.execute(
            "SELECT * FROM migrate.watch_status").fetchall()
        took = time.monotonic() - started
        # The watch failed on latency (many times the baseline: every lookup scans the table),
        # the rollback ran as a recorded phase of the migration, and the recovery passed.
        stages = looks(c, "100")
        assert stages[0][0] == "watch" and stages[0][2] == "fail", stages
        assert stages[-1] == ("recovery", stages[-1][1], "pass"), stages
        shift, added_ms = c.execute(
            "SELECT max(shift), max(added_ms) FROM migrate.watch_looks WHERE version = '100' AND stage = 'watch' "
            "AND signal = 'latency'").fetchone()
        assert shift > 5, shift
        # And the statement that regressed took well over migrate.watch_latency_floor more a call.
        assert added_ms > 0.1, added_ms
        assert c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_customer_idx'::regclass"
                         ).fetchone() == (True,)
        assert c.execute("SELECT phase, state, rollback, sql FROM migrate.steps WHERE version = '100' "
                         "ORDER BY phase").fetchall() == [
            (1, "done", False, "DROP INDEX CONCURRENTLY orders_customer_idx"),
            (2, "done", True, "CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id)"),
        ]
        assert c.execute("SELECT status, state FROM migrate.status WHERE version = '100'").fetchone() == (
            "applied", "rolled back")
        # The version's commit position moved on to the rollback's commit: a standby waited for
        # at it has the index back, not merely the drop.
        drop_lsn, rebuild_xid, rebuild_lsn = c.execute(
            "SELECT min(commit_lsn) FILTER (WHERE phase = 1), max(commit_xid::text) FILTER (WHERE phase = 2), "
            "max(commit_lsn) FILTER (WHERE phase = 2) FROM migrate.step_records WHERE version = '100'").fetchone()
        assert drop_lsn is not None and rebuild_lsn is not None and drop_lsn < rebuild_lsn
        wait_until(lambda: c.execute("SELECT commit_lsn FROM migrate.history WHERE version = '100'"
                                     ).fetchone()[0] is not None, timeout=30)
        version_xid, version_lsn = c.execute(
            "SELECT commit_xid::text, commit_lsn FROM migrate.history WHERE version = '100'").fetchone()
        assert version_lsn >= rebuild_lsn and int(version_xid) >= int(rebuild_xid), (version_lsn, rebuild_lsn)
        assert c.execute("SELECT commit_lsn FROM migrate.commit_positions() WHERE version = '100'"
                         ).fetchone() == (version_lsn,)
        print(f"detected, rolled back and recovered in {took:.1f} s; looks {stages}; latency {shift:.0f}x")


def test_harmless_migrations_under_load_complete_without_a_false_alarm(gate):
    db = lookup_orders(gate, "gate_harmless")
    outcomes, evidence = {}, {}
    with Pgbench(gate, db, LOOKUP), gate.connect(db) as c:
        baseline_ready(gate, db)
        for i in range(10):
            version = str(200 + i)
            c.execute(
                "SELECT * FROM migrate.apply(%s, %s, rollback => %s, watch => '30 s', "
                "on_regression => 'rollback')",
                (version, f"COMMENT ON TABLE orders IS 'revision {i}'; CREATE TABLE side_{i} (id int)",
                 f"DROP TABLE side_{i}"))
            outcomes[version] = settled(c, version, timeout=90)
            if outcomes[version] != "complete":
                # The evidence, for the failure message; then settled by hand, so that the
                # other nine are still judged.
                evidence[version] = c.execute(
                    "SELECT look, signal, round(baseline::numeric, 3), round(now::numeric, 3), "
                    "round(shift::numeric, 3), round(upper::numeric, 3), p_value, round(added_ms::numeric, 3), verdict "
                    "FROM migrate.watch_looks WHERE version = %s AND verdict NOT IN ('pass', 'unavailable') "
                    "ORDER BY look, signal", (version,)).fetchall()
                if outcomes[version] == "held":
                    c.execute("SELECT migrate.accept(%s, 'the test goes on')", (version,))
        # Every one is complete, and none was rolled back. (30 s: about 28 one-second samples
        # by the last look; most pass at the third, 15 s in.)
        assert set(outcomes.values()) == {"complete"}, (outcomes, evidence)
        assert c.execute("SELECT count(*) FROM migrate.steps WHERE rollback").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM migrate.status WHERE completed_at IS NOT NULL "
                         "AND version::int BETWEEN 200 AND 209").fetchone()[0] == 10


def test_a_rename_that_breaks_clients_is_rolled_back_by_the_error_rule(gate):
    db = lookup_orders(gate, "gate_rename")
    with Clients(gate, db, "SELECT note FROM orders WHERE id = 42") as clients, gate.connect(db) as c:
        baseline_ready(gate, db)
        c.execute(
            "SELECT * FROM migrate.apply('300', 'ALTER TABLE orders RENAME COLUMN note TO remark', "
            "rollback => 'ALTER TABLE orders RENAME COLUMN remark TO note', "
            "allow => ARRAY['rename-column'], watch => '60 s', on_regression => 'rollback')")
        assert settled(c, "300") == "rolled back"
        failed = c.execute(
            "SELECT shift, verdict FROM migrate.watch_looks WHERE version = '300' AND stage = 'watch' "
            "AND signal = 'undefined object' AND verdict = 'fail'").fetchall()
        assert failed, c.execute("SELECT * FROM migrate.watch_looks WHERE version = '300'").fetchall()
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                         "AND column_name = 'note'").fetchone()[0] == 1
        # The rollback renamed the column back: the recovery compares with what it left, and
        # sees no drift.
        recovery_drift = c.execute("SELECT verdict FROM migrate.watch_looks WHERE version = '300' "
                                   "AND stage = 'recovery' AND signal = 'drift'").fetchall()
        assert recovery_drift and all(v == "pass" for (v,) in recovery_drift), recovery_drift
    assert clients.errors.get("42703", 0) > 10, clients.errors


def test_a_change_that_dropped_a_column_is_held_and_never_rolled_back(gate):
    """Its rollback could bring the column back but not its rows: the gate fails, and the
    migration is held for a person, by the keeper and by reject alike."""
    db = lookup_orders(gate, "gate_destroy")
    with Clients(gate, db, "SELECT note FROM orders WHERE id = 42") as clients, gate.connect(db) as c:
        baseline_ready(gate, db)
        c.execute(
            "SELECT * FROM migrate.apply('310', 'ALTER TABLE orders DROP COLUMN note', "
            "rollback => 'ALTER TABLE orders ADD COLUMN note text', "
            "allow => ARRAY['drop-column'], watch => '60 s', on_regression => 'rollback')")
        assert settled(c, "310") == "held"
        reason, phase = c.execute("SELECT reason, rollback_phase FROM migrate.watch_records "
                                  "WHERE version = '310'").fetchone()
        assert "not rolled back: it dropped a table, column or sequence" in reason and phase is None, reason
        assert ("watch", "fail") in {(s, v) for s, _, v in looks(c, "310")}, looks(c, "310")
        c.execute("SELECT migrate.reject('310', 'the clients still read note')")
        assert state(c, "310") == "rejected"
        assert c.execute("SELECT rollback_phase FROM migrate.watch_records WHERE version = '310'"
                         ).fetchone() == (None,)
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                         "AND column_name = 'note'").fetchone() == (0,)
    assert clients.errors.get("42703", 0) > 10, clients.errors
    # Its sampling worker would hold one of the workers' slots for the tests after it.
    gate.drop_database(db)


def test_without_pg_stat_statements_the_other_signals_decide(gate):
    db = lookup_orders(gate, "gate_no_statements", statements=False)
    with Pgbench(gate, db, "SELECT note FROM orders WHERE id = 7;\n"), gate.connect(db) as c:
        baseline_ready(gate, db, statements=False)
        c.execute("SELECT * FROM migrate.apply('400', 'CREATE TABLE t400 (id int)', watch => '12 s')")
        assert settled(c, "400", timeout=60) == "complete"
        assert c.execute("SELECT DISTINCT verdict FROM migrate.watch_looks WHERE version = '400' "
                         "AND signal = 'latency'").fetchall() == [("unavailable",)]


def test_a_watch_resumes_after_the_worker_is_killed_and_the_server_restarted(gate):
    db = lookup_orders(gate, "gate_restart")
    with gate.connect(db) as c, Pgbench(gate, db, "SELECT note FROM orders WHERE id = 9;\n"):
        baseline_ready(gate, db, statements=False)
        c.execute("SELECT * FROM migrate.apply('500', 'CREATE TABLE t500 (id int)', "
                  "rollback => 'DROP TABLE t500', watch => '30 s', on_regression => 'rollback')")
        wait_until(lambda: c.execute("SELECT count(*) FROM migrate.watch_samples WHERE version = '500'"
                                     ).fetchone()[0] >= 3, timeout=30, interval=0.3)
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE backend_type = 'pg_migrate worker' AND datname = current_database()")
    gate.restart()
    with gate.connect(db) as c, Pgbench(gate, db, "SELECT note FROM orders WHERE id = 9;\n"):
        assert settled(c, "500", timeout=90) == "complete", c.execute(
            "SELECT w.reason, l.look, l.signal, l.now, l.shift, l.p_value, l.verdict FROM migrate.watch_records w "
            "JOIN migrate.watch_looks l USING (version) WHERE version = '500' AND l.verdict <> 'pass' "
            "ORDER BY l.look").fetchall()
        # Its samples from before the restart were kept and judged with the later ones.
        assert c.execute("SELECT count(*) FROM migrate.watch_samples WHERE version = '500'").fetchone()[0] >= 8
        assert c.execute("SELECT count(*) FROM migrate.steps WHERE version = '500' AND rollback").fetchone()[0] == 0


def test_a_rollback_interrupted_by_a_restart_runs_once_to_its_end(gate):
    db = lookup_orders(gate, "gate_restart_rollback")
    query = "SELECT note FROM orders WHERE id = 9"
    with gate.connect(db) as c, Clients(gate, db, query):
        baseline_ready(gate, db, statements=False)
        c.execute("SELECT * FROM migrate.apply('510', 'ALTER TABLE orders RENAME COLUMN note TO remark', "
                  "rollback => 'SELECT pg_sleep(30); ALTER TABLE orders RENAME COLUMN remark TO note', "
                  "allow => ARRAY['rename-column'], watch => '60 s', on_regression => 'rollback')")
        # The clients' errors fail the watch; the rollback's phase is under way (asleep).
        wait_until(lambda: c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                     "'pg_migrate worker' AND wait_event = 'PgSleep'").fetchone()[0] == 1,
                   timeout=60, interval=0.2)
        assert state(c, "510") == "rolling back"
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE backend_type = 'pg_migrate worker' AND datname = current_database()")
    gate.restart()
    with gate.connect(db) as c, Clients(gate, db, query):
        assert settled(c, "510", timeout=150) == "rolled back", c.execute(
            "SELECT state, reason FROM migrate.watch_records WHERE version = '510'").fetchall()
        # One rollback phase (the rename itself ran in apply's transaction), done once: its
        # transaction was lost with the worker and run again whole.
        assert c.execute("SELECT phase, state, rollback FROM migrate.steps WHERE version = '510' "
                         "ORDER BY phase").fetchall() == [(1, "done", True)]
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                         "AND column_name IN ('note', 'remark')").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                         "AND column_name = 'note'").fetchone() == (1,)
    gate.drop_database(db)


def test_watch_arguments_are_checked_before_anything_is_recorded(gate):
    db = gate.create_database("gate_bad_input")
    with gate.connect(db) as c:
        # The worker of this new database has only just begun to sample: too thin a baseline
        # to judge by, refused (once there are enough, the same apply goes through below).
        f = failure(c, "SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '10 min')")
        assert (f.sqlstate, "sampled" in f.message, "Apply again in about" in f.hint) == ("55000", True, True), f
        cases = [
            ("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '10 min', on_regression => 'rollback')",
             "22023", "needs a rollback script"),
            ("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '-5 min')", "22023", "must be positive"),
            ("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '0')", "22023", "must be positive"),
            ("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '1 min', on_regression => 'revert')",
             "22023", "unknown on_regression"),
            ("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', on_regression => 'hold')", "22023",
             "on_regression needs watch"),
            ("SELECT migrate.accept('1', 'looks fine')", "42704", "is not watched"),
            ("SELECT migrate.reject('1')", "42704", "is not watched"),
        ]
        for query, sqlstate, words in cases:
            f = failure(c, query)
            assert (f.sqlstate, words in f.message, f.message.startswith("pg_migrate:")) == (sqlstate, True, True), (query, f)
            assert f.detail and f.hint, f
        assert c.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM migrate.watch_records").fetchone()[0] == 0
        # Non-admins may neither watch nor settle watches.
        c.execute("CREATE ROLE gate_outsider LOGIN")
        c.execute("GRANT CREATE ON SCHEMA public TO gate_outsider")
        with gate.connect(db, user="gate_outsider") as o:
            for query in ("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '1 min')",
                          "SELECT migrate.accept('1')", "SELECT migrate.reject('1')"):
                assert failure(o, query).sqlstate == "42501"
            assert failure(o, "SELECT * FROM migrate.watch_status").sqlstate == "42501"
        baseline_ready(gate, db, samples=5, statements=False)
        # A watched migration keeps others out until its gate settles; accept settles it.
        c.execute("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', watch => '10 min')")
        f = failure(c, "SELECT migrate.apply('2', 'CREATE TABLE b (id int)')")
        assert f.sqlstate == "55006" and "health gate is open" in f.message, f
        assert c.execute("SELECT migrate.accept('1', 'checked by hand')").fetchone() == ("complete",)
        assert c.execute("SELECT state, decided_by, reason FROM migrate.watch_records").fetchone() == (
            "complete", "postgres", "accepted by postgres: checked by hand")
        assert failure(c, "SELECT migrate.reject('1')").sqlstate == "55000"
        c.execute("SELECT migrate.apply('2', 'CREATE TABLE b (id int)')")
    gate.drop_database(db)
    with gate.connect() as c:
        c.execute("DROP ROLE gate_outsider")


def alone(gate: Cluster) -> None:
    """Drops the databases earlier tests left: each keeps a sampling worker, and with more
    of them than migrate.max_workers (4) they take turns, so a database's worker comes and
    goes."""
    with gate.connect() as admin:
        for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'gate%'").fetchall():
            gate.drop_database(name)


def worker_of(conn) -> int | None:
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_migrate worker' "
                       "AND datname = current_database()").fetchone()
    return row[0] if row else None


def test_a_sampling_worker_keeps_its_session_until_the_database_settings_change(gate):
    alone(gate)
    db = gate.create_database("gate_settings")
    with gate.connect(db) as c:
        wait_until(lambda: worker_of(c) is not None, timeout=30, interval=0.2)
        pid = worker_of(c)
        # Past its first look at the settings (it samples after it).
        wait_until(lambda: c.execute("SELECT count(*) FROM migrate.workload_samples()").fetchone()[0] >= 1,
                   timeout=30, interval=0.3)
        # Settings its session does not take: another database's, another role's.
        c.execute("CREATE ROLE gate_settings_other")
        c.execute("ALTER DATABASE postgres SET work_mem = '6MB'")
        c.execute("ALTER ROLE gate_settings_other SET work_mem = '6MB'")
        c.execute(f"ALTER ROLE gate_settings_other IN DATABASE {db} SET work_mem = '6MB'")
        # Idle past migrate.worker_idle_timeout (2 s), it stays to sample, comparing the
        # settings with those of its first look: the same, it stays.
        time.sleep(5)
        assert worker_of(c) == pid
        c.execute("DROP ROLE gate_settings_other")
        c.execute("ALTER DATABASE postgres RESET work_mem")
        c.execute(f"ALTER DATABASE {db} SET work_mem = '7MB'")
        # A session takes a database's settings when it starts: the worker leaves, and is
        # back at once with them.
        wait_until(lambda: worker_of(c) not in (None, pid), timeout=30, interval=0.2)
        again = worker_of(c)
        time.sleep(4)
        assert worker_of(c) == again
    gate.drop_database(db)


def test_the_sampling_worker_leaves_only_for_those_who_may_empty_its_database(gate):
    alone(gate)
    db = gate.create_database("gate_leave")
    with gate.connect(db) as c:
        # Installing pg_migrate started the worker, which stays to sample.
        wait_until(lambda: worker_of(c) is not None, timeout=30, interval=0.2)
        wait_until(lambda: c.execute("SELECT count(*) FROM migrate.workload_samples()").fetchone()[0] >= 2,
                   timeout=30, interval=0.3)
        c.execute("CREATE ROLE gate_stranger LOGIN CREATEDB")
        with gate.connect("postgres", user="gate_stranger") as s:
            # Refused by PostgreSQL after the hook ran: the worker and its samples stay.
            assert failure(s, f"DROP DATABASE {db}").sqlstate == "42501"
            assert failure(s, f"ALTER DATABASE {db} RENAME TO elsewhere").sqlstate == "42501"
            assert failure(s, f"CREATE DATABASE gate_copy TEMPLATE {db}").sqlstate == "42501"
        time.sleep(1.5)
        pid = worker_of(c)
        assert pid is not None
        samples = c.execute("SELECT count(*) FROM migrate.workload_samples()").fetchone()[0]
        assert samples >= 2
        # Its owner copies it: the worker leaves for the copy, and comes back.
    with gate.connect() as admin:
        admin.execute(f"CREATE DATABASE gate_copy TEMPLATE {db}")
        admin.execute("DROP DATABASE gate_copy")
    with gate.connect(db) as c:
        wait_until(lambda: worker_of(c) is not None, timeout=40, interval=0.5)
        assert c.execute("SELECT count(*) FROM migrate.workload_samples()").fetchone()[0] >= samples
    # And it leaves for a plain DROP DATABASE by its owner, which does not wait for it.
    with gate.connect() as admin:
        started = time.monotonic()
        admin.execute(f"DROP DATABASE {db}")
        assert time.monotonic() - started < 4.5
        admin.execute("DROP ROLE gate_stranger")


def test_decisions_stand_against_the_keeper_and_need_the_submitters_privileges(gate):
    db = lookup_orders(gate, "gate_decisions", statements=False)
    with gate.connect(db) as c:
        c.execute("CREATE ROLE gate_dep LOGIN IN ROLE migrate_admin")
        c.execute("CREATE ROLE gate_other LOGIN IN ROLE migrate_admin")
        c.execute("GRANT ALL ON SCHEMA public TO gate_dep")
        c.execute("ALTER TABLE orders OWNER TO gate_dep")
        listener = gate.connect(db)
        listener.execute("LISTEN migrate_watch")
        with gate.connect(db, user="gate_dep") as dep, Clients(gate, db, "SELECT 1 FROM orders WHERE id = 3"):
            baseline_ready(gate, db, statements=False)
            # A rollback that the guard would refuse is refused when the migration is applied,
            # not when the gate needs it.
            f = failure(dep, "SELECT migrate.apply('1', 'ALTER TABLE orders ADD COLUMN w int', "
                             "rollback => 'ALTER TABLE orders DROP COLUMN w', watch => '1 min', "
                             "on_regression => 'rollback')")
            assert f.sqlstate == "55000" and "rollback script" in f.message and "drop-column" in f.message, f
            assert c.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0
            # A decision taken in a transaction that is still open stands once it commits: the
            # keeper's looks wait for the applier lock and read the state again.
            dep.execute("SELECT migrate.apply('2', 'COMMENT ON TABLE orders IS ''two''', "
                        "rollback => 'COMMENT ON TABLE orders IS NULL', watch => '6 s', on_regression => 'rollback')")
            wait_until(lambda: state(c, "2") == "watching", timeout=20, interval=0.2)
            dep.execute("BEGIN")
            assert dep.execute("SELECT migrate.accept('2', 'ticket SEC-1: customer secret')").fetchone() == ("complete",)
            time.sleep(8)  # every look falls due meanwhile
            dep.execute("COMMIT")
            time.sleep(2.5)
            assert c.execute("SELECT state, decided_by FROM migrate.watch_records WHERE version = '2'"
                             ).fetchone() == ("complete", "gate_dep")
            # Notifications carry the version and state, not the reason.
            listener.execute("SELECT 1")
            payloads = [n.payload for n in listener.notifies(timeout=0.5, stop_after=10)]
            assert any('"version":"2"' in p and '"state":"complete"' in p for p in payloads), payloads
            assert not any("secret" in p for p in payloads), payloads
            # Rejecting a watch whose migration has not run yet would not stop it: refused.
            dep.execute("BEGIN")
            dep.execute("SELECT migrate.apply('3', 'CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note)', "
                        "watch => '1 min')")
            f = failure(dep, "SELECT migrate.reject('3')")
            assert f.sqlstate == "55000" and "cancel" in f.hint, f
            dep.execute("ROLLBACK")
            # An admin without the submitter's privileges can neither settle nor stop its rollback.
            dep.execute("SELECT migrate.apply('4', 'COMMENT ON TABLE orders IS ''four''', "
                        "rollback => 'SELECT pg_sleep(3); COMMENT ON TABLE orders IS NULL', watch => '1 min', "
                        "on_regression => 'rollback')")
            wait_until(lambda: state(c, "4") == "watching", timeout=20, interval=0.2)
            with gate.connect(db, user="gate_other") as other:
                assert failure(other, "SELECT migrate.accept('4')").sqlstate == "42501"
                assert dep.execute("SELECT migrate.reject('4', 'bad')").fetchone() == ("rolling back",)
                wait_until(lambda: c.execute("SELECT status FROM migrate.history WHERE version = '4'"
                                             ).fetchone()[0] in ("pending", "running"), timeout=20, interval=0.1)
                assert failure(other, "SELECT migrate.cancel('4')").sqlstate == "42501"
            assert settled(c, "4", timeout=90) in ("rolled back", "rollback failed")
            assert c.execute("SELECT obj_description('orders'::regclass)").fetchone() == (None,)
            # A failed rollback is the submitter's to retry or stop, not another admin's.
            dep.execute("SELECT migrate.apply('5', 'COMMENT ON TABLE orders IS ''five''', "
                        "rollback => 'SELECT 1/0', watch => '1 min', on_regression => 'rollback')")
            wait_until(lambda: state(c, "5") == "watching", timeout=20, interval=0.2)
            assert dep.execute("SELECT migrate.reject('5', 'bad')").fetchone() == ("rolling back",)
            assert settled(c, "5", timeout=60) == "rollback failed"
            with gate.connect(db, user="gate_other") as other:
                assert failure(other, "SELECT migrate.cancel('5')").sqlstate == "42501"
            dep.execute("SELECT migrate.cancel('5')")
            time.sleep(2.5)
            assert state(c, "5") == "rollback failed"
            assert failure(dep, "SELECT migrate.accept('5')").sqlstate == "55000"
        listener.close()
    gate.drop_database(db)
    with gate.connect() as admin:
        admin.execute("DROP ROLE gate_dep")
        admin.execute("DROP ROLE gate_other")


def finding(conn, version: str, signal: str) -> list[tuple]:
    return conn.execute(
        "SELECT stage, baseline, now, shift, verdict FROM migrate.watch_looks WHERE version = %s AND signal = %s "
        "ORDER BY looked_at, look", (version, signal)).fetchall()


def test_checksum_failures_and_unused_indexes_alert_without_deciding(gate):
    db = lookup_orders(gate, "gate_alerts", statements=False)
    with gate.connect(db) as c:
        # A small table whose one page is then damaged on disk, while the server keeps a good
        # copy in its buffers until it restarts.
        c.execute("CREATE TABLE fragile AS SELECT g AS id, repeat('x', 50) AS pad FROM generate_series(1, 20) g")
        c.execute("SELECT count(*) FROM fragile")  # hint bits set now, not after the damage
        c.execute("CHECKPOINT")
        path = Path(c.execute("SELECT current_setting('data_directory') || '/' || pg_relation_filepath('fragile')"
                              ).fetchone()[0])
        with open(path, "r+b") as f:
            f.seek(8100)
            f.write(b"\xde\xad\xbe\xef" * 4)
        baseline_ready(gate, db, statements=False)
        c.execute("SELECT * FROM migrate.apply('800', 'CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note)', "
                  "rollback => 'DROP INDEX CONCURRENTLY orders_note_idx', watch => '60 s', "
                  "on_regression => 'rollback')")
        wait_until(lambda: state(c, "800") == "watching", timeout=30, interval=0.2)
    gate.restart()
    with gate.connect(db) as c:
        f = failure(c, "SELECT count(*) FROM fragile")
        assert f.sqlstate == "XX001", f
        # Reported at every look since, and never a reason to roll back: the change completes.
        assert settled(c, "800", timeout=90) == "complete"
        checksums = finding(c, "800", "checksum failures")
        assert checksums[-1][2] >= 1 and checksums[-1][4] == "alert", checksums
        # Nothing looked orders up by note: the new index is unused, an alert too.
        use = finding(c, "800", "index use")
        assert use[-1][1:] == (1.0, 0.0, 1.0, "alert"), use
        assert c.execute("SELECT count(*) FROM migrate.steps WHERE version = '800' AND rollback").fetchone() == (0,)
        assert "data checksum failures" in gate.log.read_text(errors="replace")
        # migrate.verify warns of it, and passes.
        warnings = []
        c.add_notice_handler(lambda d: warnings.append((d.severity_nonlocalized, d.sqlstate, d.message_primary)))
        rows = c.execute("SELECT kind, object, ok, detail FROM migrate.verify('800')").fetchall()
        use_rows = [r for r in rows if r[0] == "index use"]
        assert [r[:3] for r in use_rows] == [("index use", "public.orders_note_idx", True)], rows
        assert use_rows[0][3].startswith("warning: not scanned since it was created"), use_rows
        assert all(r[2] for r in rows), rows
        assert any(severity == "WARNING" and sqlstate == "01000" and "orders_note_idx" in message
                   for severity, sqlstate, message in warnings), warnings
    # Once a query has used it, it is no longer reported.
    with gate.connect(db) as q:
        q.execute("SET enable_seqscan = off")
        q.execute("SELECT count(*) FROM orders WHERE note = 'n5'")
    with gate.connect(db) as c:
        wait_until(lambda: c.execute("SELECT idx_scan FROM pg_stat_user_indexes "
                                     "WHERE indexrelname = 'orders_note_idx'").fetchone()[0] > 0,
                   timeout=20, interval=0.3)
        detail = c.execute("SELECT detail FROM migrate.verify('800') WHERE kind = 'index use'").fetchone()[0]
        assert detail.startswith("scanned 1 time since"), detail
    gate.drop_database(db)


def watching_a_new_index(gate: Cluster, db: str, c, version: str) -> None:
    """Migration `version` creates orders_note_idx, watched for 60 s with its rollback; back
    once its watch has begun."""
    baseline_ready(gate, db, statements=False)
    c.execute(f"SELECT * FROM migrate.apply('{version}', 'CREATE INDEX CONCURRENTLY orders_note_idx ON orders "
              "(note)', rollback => 'DROP INDEX CONCURRENTLY orders_note_idx', watch => '60 s', "
              "on_regression => 'rollback')")
    wait_until(lambda: state(c, version) == "watching", timeout=30, interval=0.2)


def test_changes_outside_migrations_to_what_a_watch_changed_hold_it(gate):
    db = lookup_orders(gate, "gate_drift", statements=False)
    with gate.connect(db) as c:
        watching_a_new_index(gate, db, c, "900")
        # DDL on another table is none of the watch's business, nor an object of another kind
        # that bears the index's name, nor maintenance; a change of the new index is.
        c.execute("CREATE TABLE unrelated (id int)")
        c.execute("CREATE COLLATION public.orders_note_idx (locale = 'C')")
        c.execute("REINDEX INDEX CONCURRENTLY orders_note_idx")
        c.execute("COMMENT ON INDEX orders_note_idx IS 'notes'")
        c.execute("DROP INDEX CONCURRENTLY orders_note_idx")
        assert settled(c, "900", timeout=60) == "held"
        reason = c.execute("SELECT reason FROM migrate.watch_records WHERE version = '900'").fetchone()[0]
        assert "outside migrations (DROP INDEX public.orders_note_idx)" in reason, reason
        assert not any(word in reason for word in ("unrelated", "COLLATION", "REINDEX", "COMMENT")), reason
        assert finding(c, "900", "drift")[-1][2:] == (1.0, None, "alert")
        # Held, not rolled back over the change: the rollback was written for the schema the
        # migration left.
        assert c.execute("SELECT count(*) FROM migrate.steps WHERE version = '900' AND rollback").fetchone() == (0,)
        assert c.execute("SELECT migrate.accept('900', 'index dropped on purpose')").fetchone() == ("complete",)
    gate.drop_database(db)


def test_changes_no_event_trigger_saw_hold_a_watch_by_what_it_changed_as_it_began(gate):
    db = lookup_orders(gate, "gate_unlogged", statements=False)
    with gate.connect(db) as c:
        watching_a_new_index(gate, db, c, "910")
        # A new OID for the index and nothing else: the recorded schema still describes it.
        old_oid = c.execute("SELECT 'orders_note_idx'::regclass::oid").fetchone()[0]
        c.execute("REINDEX INDEX CONCURRENTLY orders_note_idx")
        assert c.execute("SELECT 'orders_note_idx'::regclass::oid").fetchone()[0] != old_oid
        # Privileges are not what the gate judges (deploy tools grant after a migration).
        c.execute("GRANT SELECT ON orders TO PUBLIC")
        c.execute("GRANT UPDATE (note) ON orders TO PUBLIC")
        assert c.execute("SELECT objects_at_start ? 'indexes public.orders_note_idx' AND "
                         "objects_at_start ? 'tables public.orders' "
                         "FROM migrate.watch_records WHERE version = '910'").fetchone() == (True,)
        reindexed = c.execute("SELECT clock_timestamp()").fetchone()[0]
        wait_until(lambda: c.execute("SELECT count(*) FROM migrate.watch_looks WHERE version = '910' "
                                     "AND signal = 'drift' AND looked_at > %s", (reindexed,)).fetchone()[0] > 0,
                   timeout=30, interval=0.3)
        assert finding(c, "910", "drift")[-1][2:] == (0.0, None, "pass")
        assert state(c, "910") == "watching"
        # Replica mode: pg_migrate's event triggers do not fire, the DDL log has nothing.
        c.execute("SET session_replication_role = replica")
        c.execute("ALTER INDEX orders_note_idx SET (fillfactor = 70)")
        c.execute("RESET session_replication_role")
        assert c.execute("SELECT count(*) FROM migrate.ddl_log WHERE command_tag = 'ALTER INDEX'").fetchone() == (0,)
        assert settled(c, "910", timeout=60) == "held"
        reason = c.execute("SELECT reason FROM migrate.watch_records WHERE version = '910'").fetchone()[0]
        assert "outside migrations (public.orders_note_idx (indexes) changed with no DDL logged)" in reason, reason
        assert finding(c, "910", "drift")[-1][2:] == (1.0, None, "alert")
        assert c.execute("SELECT count(*) FROM migrate.steps WHERE version = '910' AND rollback").fetchone() == (0,)
    gate.drop_database(db)


def test_a_failed_rollback_retried_is_watched_to_its_end(gate):
    db = lookup_orders(gate, "gate_retry")
    with Pgbench(gate, db, LOOKUP), gate.connect(db) as c:
        baseline_ready(gate, db)
        # The rollback names a column that is not there yet: it fails when it runs.
        c.execute(
            "SELECT * FROM migrate.apply('100', 'DROP INDEX CONCURRENTLY orders_customer_idx', "
            "rollback => 'CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id) INCLUDE (flag)', "
            "watch => '60 s', on_regression => 'rollback')")
        assert settled(c, "100") == "rollback failed"
        assert c.execute("SELECT status FROM migrate.history WHERE version = '100'").fetchone() == ("failed",)
        assert c.execute("SELECT phase, state, rollback FROM migrate.steps WHERE version = '100' ORDER BY phase"
                         ).fetchall() == [(1, "done", False), (2, "failed", True)]
        # A failed rollback closes the gate: another change may be applied, and its own gate
        # keeps the retry out until it settles.
        c.execute("SELECT * FROM migrate.apply('101', 'CREATE TABLE t101 (id int)', watch => '1 min')")
        f = failure(c, "SELECT migrate.retry('100')")
        assert (f.sqlstate, "migration 101" in f.message) == ("55006", True), f
        c.execute("SELECT migrate.accept('101', 'fine')")
        # The DBA mends what it needs and retries: the rollback runs, its recovery is watched.
        c.execute("ALTER TABLE orders ADD COLUMN flag int")
        c.execute("SELECT migrate.retry('100')")
        wait_until(lambda: state(c, "100") != "rollback failed", timeout=60, interval=0.3)
        assert settled(c, "100") == "rolled back", c.execute("SELECT * FROM migrate.watch_status").fetchall()
        assert c.execute("SELECT reason FROM migrate.watch_records WHERE version = '100'"
                         ).fetchone()[0].startswith("recovery look")
        stages = looks(c, "100")
        assert stages[-1] == ("recovery", stages[-1][1], "pass"), stages
        assert c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_customer_idx'::regclass"
                         ).fetchone() == (True,)
    gate.drop_database(db)


def test_an_expand_window_is_contracted_only_once_its_health_gate_has_passed(gate):
    db = lookup_orders(gate, "gate_window", statements=False)
    rename = "ALTER TABLE orders RENAME COLUMN note TO remark"
    with gate.connect(db) as c:
        with Clients(gate, db, "SELECT note FROM orders WHERE id = 5") as old_clients:
            baseline_ready(gate, db, statements=False)
            # A window is given up by abort, the DBA's decision, never by its gate.
            f = failure(c, "SELECT * FROM migrate.expand('43', %s, watch => '1 min', on_regression => 'rollback')",
                        (rename,))
            assert (f.sqlstate, "does not roll it back" in f.message, bool(f.detail and f.hint)) == (
                "22023", True, True), f
            assert c.execute("SELECT (SELECT count(*) FROM migrate.history) + "
                             "(SELECT count(*) FROM migrate.window_history)").fetchone() == (0,)
            c.execute("SELECT * FROM migrate.expand('43', %s, watch => '8 s')", (rename,))
            wait_until(lambda: state(c, "43") == "watching", timeout=60, interval=0.2)
            f = failure(c, "SELECT * FROM migrate.contract('43')")
            assert (f.sqlstate, "health gate of window 43 is open" in f.message) == ("55006", True), f
            assert "migrate.accept('43'" in f.hint and "migrate.abort('43')" in f.hint, f
            # Old clients still read note through the window: the gate passes.
            assert settled(c, "43", timeout=60) == "complete"
        assert old_clients.errors == {}, old_clients.errors
        c.execute("SELECT * FROM migrate.contract('43')")
        assert c.execute("SELECT ended FROM migrate.window_history WHERE version = '43'").fetchone() == ("contracted",)
        # A held or rejected gate refuses contract; abort ends the window and its gate.
        c.execute("SELECT * FROM migrate.expand('44', 'ALTER TABLE orders ADD COLUMN flag int', watch => '1 min')")
        wait_until(lambda: state(c, "44") == "watching", timeout=60, interval=0.2)
        assert c.execute("SELECT migrate.reject('44', 'not now')").fetchone() == ("rejected",)
        f = failure(c, "SELECT * FROM migrate.contract('44')")
        assert (f.sqlstate, "ended rejected" in f.message, "migrate.abort('44')" in f.hint) == ("55000", True, True), f
        c.execute("SELECT * FROM migrate.abort('44')")
        # Another window is not contracted while a gate is open: it would be judged as the
        # watched change. Aborting the watched window ends its gate.
        c.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        c.execute("SELECT * FROM migrate.expand('45', 'ALTER TABLE items RENAME COLUMN label TO title')")
        wait_until(lambda: c.execute("SELECT status FROM migrate.history WHERE version = '45'").fetchone() == (
            "applied",), timeout=60, interval=0.2)
        c.execute("SELECT * FROM migrate.expand('46', 'ALTER TABLE orders ADD COLUMN flag2 int', watch => '1 min')")
        wait_until(lambda: state(c, "46") == "watching", timeout=60, interval=0.2)
        f = failure(c, "SELECT * FROM migrate.contract('45')")
        assert (f.sqlstate, "migration 46 is watching" in f.message) == ("55006", True), f
        c.execute("SELECT * FROM migrate.abort('46')")
        assert c.execute("SELECT state, reason FROM migrate.watch_records WHERE version = '46'").fetchone() == (
            "rejected", "the window was aborted by postgres")
        c.execute("SELECT * FROM migrate.contract('45')")
    gate.drop_database(db)


def test_lock_waits_count_only_on_the_relations_the_migration_changed(gate):
    db = lookup_orders(gate, "gate_locks", statements=False)
    with gate.connect() as admin:
        admin.execute("ALTER SYSTEM SET migrate.watch_lock_wait = '300ms'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        with gate.connect(db) as c, gate.connect(db) as holder:
            c.execute("CREATE TABLE elsewhere (id int)")
            baseline_ready(gate, db, statements=False)
            c.execute("SELECT * FROM migrate.apply('950', 'ALTER TABLE orders ADD COLUMN lw int', watch => '30 s')")
            wait_until(lambda: state(c, "950") == "watching", timeout=30, interval=0.1)

            def wait_on(table: str, until: threading.Event):
                with gate.connect(db) as w:
                    w.execute("SET lock_timeout = '60s'")
                    w.execute(f"SELECT count(*) FROM {table}")
                until.set()

            # A session waits for a lock on another table: none of this watch's business.
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE elsewhere IN ACCESS EXCLUSIVE MODE")
            done = threading.Event()
            threading.Thread(target=wait_on, args=("elsewhere", done), daemon=True).start()
            time.sleep(7)
            holder.execute("COMMIT")
            assert done.wait(10)
            on_orders_from = c.execute("SELECT clock_timestamp()").fetchone()[0]
            # Then on the table the migration changed, until the watch ends.
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            done = threading.Event()
            threading.Thread(target=wait_on, args=("orders", done), daemon=True).start()
            try:
                assert settled(c, "950", timeout=60) == "held"
            finally:
                holder.execute("COMMIT")
            assert done.wait(10)
            before, during = c.execute(
                "SELECT max(lock_wait_ms) FILTER (WHERE taken_at < %s), max(lock_wait_ms) FILTER (WHERE taken_at > %s) "
                "FROM migrate.watch_samples WHERE version = '950'", (on_orders_from, on_orders_from)).fetchone()
            assert (before, during > 1000) == (0, True), (before, during)
            verdicts = [v for _, _, _, _, v in finding(c, "950", "lock wait")]
            assert verdicts[:2] == ["pass", "pass"] and "fail" in verdicts, verdicts
    finally:
        with gate.connect() as admin:
            admin.execute("ALTER SYSTEM RESET migrate.watch_lock_wait")
            admin.execute("SELECT pg_reload_conf()")
    gate.drop_database(db)


def test_the_looks_of_a_watch_are_a_setting_recorded_with_it(gate):
    db = lookup_orders(gate, "gate_looks", statements=False)
    with gate.connect() as admin:
        # Refused as PostgreSQL refuses a bad value of its own settings, saying why.
        for value, why in [("0.5, 0.2, 1", "The looks must rise: 0.2 comes after 0.5."),
                           ("0.1, 0.5", "The last look must be 1, the end of the watch."),
                           ("0.1, half, 1", '"half" is not a fraction of the watch above 0 and at most 1.')]:
            f = failure(admin, f"ALTER SYSTEM SET migrate.watch_looks = '{value}'")
            assert (f.sqlstate, f.detail) == ("22023", why), f
            assert f.message == f'pg_migrate: invalid value for parameter "migrate.watch_looks": "{value}"', f
            assert "'0.1, 0.2, 0.5, 1'" in f.hint, f
        f = failure(admin, "SET migrate.watch_looks = '1'")
        assert f.sqlstate == "55P02", f
        admin.execute("ALTER SYSTEM SET migrate.watch_looks = '0.5, 1'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        with gate.connect(db) as c:
            wait_until(lambda: c.execute("SHOW migrate.watch_looks").fetchone() == ("0.5, 1",), timeout=10)
            baseline_ready(gate, db, samples=6, statements=False)
            c.execute("SELECT * FROM migrate.apply('960', 'CREATE TABLE looked_at (id int)', watch => '8 s')")
            assert c.execute("SELECT look_at FROM migrate.watch_records WHERE version = '960'").fetchone() == (
                [0.5, 1.0],)
            # Its baseline was recorded before the DDL ran (before the migration took its
            # locks): the row's command id precedes those of the DDL log's rows.
            watch_cmin, ddl_cmin = c.execute(
                "SELECT (SELECT cmin::text::int FROM migrate.watch_records WHERE version = '960'), "
                "(SELECT min(cmin::text::int) FROM migrate.ddl_log WHERE migration_version = '960')").fetchone()
            assert ddl_cmin is not None and watch_cmin < ddl_cmin, (watch_cmin, ddl_cmin)
            # A reload during the watch does not change its looks.
            with gate.connect() as admin:
                admin.execute("ALTER SYSTEM SET migrate.watch_looks = '0.1, 0.2, 0.3, 0.4, 1'")
                admin.execute("SELECT pg_reload_conf()")
            assert settled(c, "960", timeout=60) == "complete", c.execute(
                "SELECT * FROM migrate.watch_looks WHERE version = '960'").fetchall()
            # Two looks, at half and at the end (the first of which may already pass).
            numbers = [look for _, look, _ in looks(c, "960")]
            assert numbers in ([1], [1, 2], [2]), numbers
            assert c.execute("SELECT max(looks) FROM migrate.watch_records WHERE version = '960'"
                             ).fetchone()[0] <= 2
            # A script that sets constraints immediate has its watch recorded after its DDL,
            # where the history row it references already is.
            c.execute("SELECT * FROM migrate.apply('961', 'SET CONSTRAINTS ALL IMMEDIATE; "
                      "CREATE TABLE looked_at_2 (id int)', watch => '8 s')")
            watch_cmin, ddl_cmin = c.execute(
                "SELECT (SELECT cmin::text::int FROM migrate.watch_records WHERE version = '961'), "
                "(SELECT min(cmin::text::int) FROM migrate.ddl_log WHERE migration_version = '961')").fetchone()
            assert watch_cmin > ddl_cmin, (watch_cmin, ddl_cmin)
            # (Five looks in 8 s, after the reload above: it may end without enough samples.)
            if settled(c, "961", timeout=60) == "held":
                c.execute("SELECT migrate.accept('961', 'too short to judge')")
            assert state(c, "961") == "complete"
    finally:
        with gate.connect() as admin:
            admin.execute("ALTER SYSTEM RESET migrate.watch_looks")
            admin.execute("SELECT pg_reload_conf()")
    gate.drop_database(db)


def test_a_cheap_statement_a_change_slows_is_seen_beside_forty_costlier_ones(gate):
    # Forty statements each cost more than the lookup by customer. The baseline's samples
    # keep the lookup all the same (a sample keeps its 48 costliest statements; it kept 32,
    # and then the lookup was new to the watch and the dropped index passed), so once the
    # dropped index makes it the costliest of all, the watch sees it.
    db = lookup_orders(gate, "gate_cheap")
    busy = 40
    with gate.connect(db) as c:
        c.execute(f"DO $$ BEGIN FOR i IN 0..{busy - 1} LOOP EXECUTE format("
                  "'CREATE TABLE busy_%s AS SELECT g AS v FROM generate_series(1, 3000) g', i); END LOOP; END $$")
        c.execute("VACUUM ANALYZE")
    script = ("\\set c random(1, 20000)\n"
              + "".join(f"SELECT count(*) FROM busy_{i} WHERE v = :c;\n" for i in range(busy))
              + "SELECT count(*) FROM orders WHERE customer_id = :c;\n")
    with Pgbench(gate, db, script, rate=20), gate.connect(db) as c:
        baseline_ready(gate, db)
        # This database's (pg_stat_statements shows every database's, and the other tests' run
        # the same text on tables of their own).
        lookup = c.execute("SELECT queryid FROM pg_stat_statements "
                           "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                           "AND query LIKE 'SELECT count(*) FROM orders WHERE customer_id%'").fetchone()[0]
        c.execute(
            "SELECT * FROM migrate.apply('970', 'DROP INDEX CONCURRENTLY orders_customer_idx', "
            "rollback => 'CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id)', "
            "watch => '30 s', on_regression => 'rollback')")
        # The baseline's samples kept the lookup, and forty statements that took more time
        # than it did in each sample (so it would not have been among 32).
        rank, kept = c.execute(
            "SELECT min(q.n), min(jsonb_array_length(s->'queries')) "
            "FROM migrate.watch_records w, jsonb_array_elements(w.baseline) s, "
            "     jsonb_array_elements(s->'queries') WITH ORDINALITY q(q, n) "
            "WHERE version = '970' AND (q.q->>'queryid')::int8 = %s", (lookup,)).fetchone()
        assert rank is not None and rank > 32 and kept > 32, (rank, kept)
        assert settled(c, "970") == "rolled back", c.execute(
            "SELECT * FROM migrate.watch_looks WHERE version = '970' ORDER BY looked_at").fetchall()
        shift, added_ms = c.execute(
            "SELECT max(shift), max(added_ms) FROM migrate.watch_looks WHERE version = '970' AND stage = 'watch' "
            "AND signal = 'latency'").fetchone()
        # The lookup went from well under a millisecond a call to a scan of 200,000 rows.
        assert shift > 1.5 and added_ms > 1, (shift, added_ms)
        assert c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_customer_idx'::regclass"
                         ).fetchone() == (True,)
    gate.drop_database(db)
