"""migrate.verify and apply(..., verify => ...): a migration is complete only once verified."""

from harness import failure, wait_until


def state(conn, version):
    return conn.execute("SELECT state FROM migrate.status WHERE version = %s", (version,)).fetchone()[0]


def failed(conn, version):
    return [(c, o, d) for c, o, ok, d in conn.execute("SELECT * FROM migrate.verify(%s)", (version,)).fetchall() if not ok]


def test_a_migration_is_unverified_until_verify_passes(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, total int)")
    conn.execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g")
    conn.execute("""SELECT migrate.apply('1', $$ALTER TABLE t ADD COLUMN doubled int; CREATE INDEX t_total ON t (total)$$,
                    verify => $$SELECT id FROM t WHERE doubled IS DISTINCT FROM total * 2;
                               SELECT count(*) FROM t HAVING count(*) <> 100$$)""")
    assert state(conn, "1") == "applied, unverified"
    problems = failed(conn, "1")
    assert len(problems) == 1 and problems[0][0] == "query" and problems[0][1] == "statement 1 (line 1)"
    assert problems[0][2].startswith('returned rows, the first: {"id": 1}')
    assert state(conn, "1") == "applied, verification failed"
    conn.execute("UPDATE t SET doubled = total * 2")
    assert failed(conn, "1") == []
    assert state(conn, "1") == "complete"
    report = conn.execute("SELECT verification_report FROM migrate.history WHERE version = '1'").fetchone()[0]
    assert {r["check"] for r in report} == {"status", "index", "index use", "query"}


def test_verify_fails_on_an_invalid_index(conn):
    conn.execute("CREATE TABLE t (id int)")
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX t_id ON t (id)')")
    assert failed(conn, "1") == []
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 't_id'::regclass")
    problems = failed(conn, "1")
    assert problems[0][:2] == ("index", "public.t_id") and problems[0][2].startswith("INVALID")


def test_verify_fails_on_a_constraint_left_unvalidated(conn):
    conn.execute("CREATE TABLE t (id int, total int)")
    conn.execute("INSERT INTO t VALUES (1, -5)")
    conn.execute("""SELECT migrate.apply('1', $$ALTER TABLE t ADD CONSTRAINT by_design CHECK (total > 0) NOT VALID;
                                             ALTER TABLE t ADD CONSTRAINT checked CHECK (id > 0)$$)""")
    rows = {o: (ok, d) for c, o, ok, d in conn.execute("SELECT * FROM migrate.verify('1')").fetchall() if c == "constraint"}
    assert rows["by_design on public.t"] == (True, "NOT VALID by design; 1 rows do not satisfy it yet, so VALIDATE CONSTRAINT would fail until they are fixed")
    assert rows["checked on public.t"] == (True, "validated")
    conn.execute("BEGIN; SET LOCAL migrate.guard = off; ALTER TABLE t DROP CONSTRAINT checked, ADD CONSTRAINT checked CHECK (id > 0) NOT VALID; COMMIT")
    problems = failed(conn, "1")
    assert problems == [("constraint", "checked on public.t", problems[0][2])] and problems[0][2].startswith("NOT VALID, but the migration left it validated")


def test_verify_checks_that_foreign_keys_hold(conn):
    conn.execute("CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (id int, p_id int)")
    conn.execute("SELECT migrate.apply('1', 'ALTER TABLE c ADD CONSTRAINT c_p FOREIGN KEY (p_id) REFERENCES p')")
    assert failed(conn, "1") == []
    # Rows written with the FK's triggers not firing.
    conn.execute("BEGIN; SET LOCAL session_replication_role = replica; INSERT INTO c VALUES (1, 42), (2, NULL); COMMIT")
    problems = failed(conn, "1")
    assert problems[0][:2] == ("constraint", "c_p on public.c") and problems[0][2].startswith("validated, but 1 rows violate it")


def test_verify_fails_while_phases_are_unfinished(cluster, conn, db):
    conn.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (1)")
    conn.execute("SELECT migrate.apply('1', 'CREATE UNIQUE INDEX CONCURRENTLY t_id ON t (id)')")
    wait_until(lambda: conn.execute("SELECT status FROM migrate.history").fetchone()[0] == "failed", timeout=20)
    problems = failed(conn, "1")
    assert problems[0][0] == "status" and "failed" in problems[0][2]
    assert state(conn, "1") == "failed"
    conn.execute("SELECT migrate.cancel('1')")


def test_verify_of_a_phased_migration_checks_the_index_the_worker_built(conn):
    conn.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY t_id ON t (id)')")
    conn.execute("CALL migrate.wait('1', '30s')")
    rows = conn.execute("SELECT kind, object, ok FROM migrate.verify('1')").fetchall()
    assert ("index", "public.t_id", True) in rows and all(r[2] for r in rows)
    fp = conn.execute("SELECT fingerprint FROM migrate.history WHERE version = '1'").fetchone()[0]
    assert fp == conn.execute("SELECT migrate.fingerprint()").fetchone()[0]
    assert state(conn, "1") == "complete"


def test_an_index_dropped_by_a_later_migration_passes(conn):
    conn.execute("CREATE TABLE t (id int)")
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX t_id ON t (id)')")
    conn.execute("SELECT migrate.apply('2', 'DROP INDEX t_id')")
    rows = conn.execute("SELECT kind, object, ok, detail FROM migrate.verify('1') WHERE kind = 'index'").fetchall()
    assert rows == [("index", "public.t_id", True, "removed since by version 2")]


def test_bad_input_leaves_nothing(cluster, conn, db):
    f = failure(conn, "SELECT migrate.apply('1', 'CREATE TABLE t (id int)', verify => 'DELETE FROM t')")
    assert f.sqlstate == "22023" and "is DELETE, not a query" in f.message
    f = failure(conn, "SELECT migrate.apply('1', 'CREATE TABLE t (id int)', verify => 'SELECT FROM')")
    assert f.sqlstate == "42601"
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0
    assert conn.execute("SELECT to_regclass('t')").fetchone()[0] is None
    assert failure(conn, "SELECT * FROM migrate.verify('9')").sqlstate == "42704"
    assert failure(conn, "SELECT * FROM migrate.verify(NULL)").sqlstate == "22004"
    conn.execute("SELECT migrate.baseline('0')")
    assert failure(conn, "SELECT * FROM migrate.verify('0')").sqlstate == "55000"
    conn.execute("DROP ROLE IF EXISTS nobody_verify")
    conn.execute("CREATE ROLE nobody_verify LOGIN")
    try:
        with cluster.connect(db, user="nobody_verify") as nobody:
            assert failure(nobody, "SELECT * FROM migrate.verify('0')").sqlstate == "42501"
    finally:
        conn.execute("DROP ROLE nobody_verify")


def test_verify_queries_cannot_write(conn):
    conn.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    conn.execute("""SELECT migrate.apply('1', 'CREATE TABLE u (id int)',
                    verify => $$WITH gone AS (DELETE FROM t RETURNING id) SELECT id FROM gone$$)""")
    problems = failed(conn, "1")
    assert problems[0][0] == "query" and problems[0][2].startswith("failed: ")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
