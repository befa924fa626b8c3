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
