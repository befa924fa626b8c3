"""migrate.dry_run and migrate.assert_safe against a real server: what a dry run reports is
what a real run does, and it leaves nothing behind."""

import pytest

from harness import failure

SETUP = """
    CREATE TABLE big (id bigint PRIMARY KEY, total int, note text);
    INSERT INTO big SELECT g, g, 'n' FROM generate_series(1, 30000) g;
    CREATE TABLE small (id int PRIMARY KEY, ref bigint, price int);
    INSERT INTO small SELECT g, g, g FROM generate_series(1, 50) g;
    ANALYZE big; ANALYZE small;
"""

# One statement of each family, on tables the guard lets through (small ones, or with the
# rule overridden), so that the dry run executes them as a real run would.
FAMILIES = [
    ("add column", "ALTER TABLE big ADD COLUMN c int", None),
    ("add column, volatile default", "ALTER TABLE small ADD COLUMN r float8 DEFAULT random()", None),
    ("change type", "ALTER TABLE small ALTER COLUMN price TYPE bigint", None),
    ("binary-coercible type", "ALTER TABLE big ALTER COLUMN note TYPE varchar", None),
    ("create index", "CREATE INDEX small_price ON small (price)", None),
    ("foreign key not valid", "ALTER TABLE small ADD CONSTRAINT small_ref FOREIGN KEY (ref) REFERENCES big NOT VALID", None),
    ("check not valid", "ALTER TABLE big ADD CONSTRAINT big_total CHECK (total > 0) NOT VALID", None),
    ("set not null", "ALTER TABLE small ALTER COLUMN price SET NOT NULL", None),
    ("update", "UPDATE big SET note = 'm' WHERE id < 100", None),
    ("create table", "CREATE TABLE fresh (id int)", None),
    ("rewrite overridden", "ALTER TABLE big ALTER COLUMN total TYPE bigint", ["alter-column-type-rewrite"]),
    ("vacuum full small", "CLUSTER small USING small_pkey", None),
]


def real_run(conn, statement):
    """Runs one statement for real in a transaction that is rolled back; returns the strongest
    lock per public relation and the relations whose relfilenode changed."""
    files = "SELECT c.oid::regclass::text, c.relfilenode FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'm', 'i')"
    conn.execute("BEGIN")
    conn.execute("SET LOCAL migrate.guard = off")
    before = dict(conn.execute(files).fetchall())
    conn.execute(statement)
    locks = conn.execute("""
        SELECT l.relation::regclass::text, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
        WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND c.relnamespace = 'public'::regnamespace
          AND c.relkind <> 'S'""").fetchall()
    after = dict(conn.execute(files).fetchall())
    conn.execute("ROLLBACK")
    order = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
             "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]
    strongest = {}
    for rel, mode in locks:
        if rel not in strongest or order.index(mode) > order.index(strongest[rel]):
            strongest[rel] = mode
    rewrites = {r for r, f in after.items() if r in before and before[r] != f}
    return strongest, rewrites


NAMES = {"AccessShareLock": "ACCESS SHARE", "RowShareLock": "ROW SHARE", "RowExclusiveLock": "ROW EXCLUSIVE",
         "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE", "ShareLock": "SHARE",
         "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE", "ExclusiveLock": "EXCLUSIVE",
         "AccessExclusiveLock": "ACCESS EXCLUSIVE"}


@pytest.mark.parametrize("family,statement,allow", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_dry_run_reports_the_locks_and_rewrites_of_a_real_run(cluster, db, family, statement, allow):
    scratch = db[:50] + "_real"
    cluster.create_database(scratch)
    try:
        with cluster.connect(db) as conn, cluster.connect(scratch) as real:
            conn.execute(SETUP)
            real.execute(SETUP)
            strongest, rewrites = real_run(real, statement)
            row = conn.execute(
                "SELECT executed, locks, rewrites, error FROM migrate.dry_run(%s, %s)", (statement, allow)).fetchone()
            executed, locks, dry_rewrites, error = row
            assert executed and error is None, row
            expected = sorted(f"public.{r}: {NAMES[m]}" if "." not in r else f"{r}: {NAMES[m]}"
                              for r, m in strongest.items())
            assert sorted(locks) == expected
            assert {r.removeprefix("public.") for r in dry_rewrites} == rewrites
    finally:
        cluster.drop_database(scratch)


def test_rewrites_are_seen_and_a_catalog_only_change_is_not(conn):
    conn.execute(SETUP)
    rows = conn.execute("""SELECT statement, rewrites, blocks FROM migrate.dry_run($$
        ALTER TABLE small ALTER COLUMN price TYPE bigint;
        ALTER TABLE big ADD COLUMN c int DEFAULT 0;
    $$)""").fetchall()
    assert rows[0][1] == ["public.small", "public.small_pkey"]
    assert rows[1][1] == [] and rows[1][2] == "reads and writes on public.big"


def test_concurrently_and_refused_statements_are_analysed_not_run(conn):
    conn.execute(SETUP)
    rows = conn.execute("""SELECT statement, phase, executed, locks, rewrites, rows, findings, error
        FROM migrate.dry_run($$
        CREATE INDEX CONCURRENTLY big_total ON big (total);
        ALTER TABLE big ALTER COLUMN total TYPE bigint;
    $$)""").fetchall()
    cic, alter = rows
    assert (cic[1], alter[1]) == (1, 2) and not cic[2] and cic[3] == ["public.big: SHARE UPDATE EXCLUSIVE"] and cic[7] is None
    assert not alter[2] and alter[3] == ["public.big: ACCESS EXCLUSIVE"] and alter[4] == ["public.big"]
    assert alter[5] == 30000 and alter[6][0].startswith("alter-column-type-rewrite:")
    assert alter[7].startswith("not run: ")
    # Not run: the table keeps its type and has no new index.
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'total'").fetchone()[0] == "integer"
    assert conn.execute("SELECT to_regclass('big_total')").fetchone()[0] is None


def test_dry_run_leaves_no_trace(cluster, conn):
    conn.execute(SETUP)
    state = """SELECT (SELECT count(*) FROM migrate.history), (SELECT count(*) FROM migrate.ddl_log),
                      (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
                      (SELECT sum(total) FROM big), current_setting('work_mem')"""
    before = conn.execute(state).fetchone()
    rows = conn.execute("""SELECT executed FROM migrate.dry_run($$
        SET work_mem = '77MB';
        CREATE TABLE t (id int PRIMARY KEY);
        INSERT INTO t SELECT generate_series(1, 10);
        UPDATE big SET total = 0 WHERE id < 1000;
        ALTER TABLE big ADD COLUMN c int;
        CREATE INDEX ON small (price);
    $$)""").fetchall()
    assert all(r[0] for r in rows)
    assert conn.execute(state).fetchone() == before
    locks = conn.execute("""SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()
        AND (locktype = 'advisory' OR (locktype = 'relation' AND relation::regclass::text NOT LIKE 'pg_%'))""").fetchone()[0]
    assert locks == 0
    # Another session can take the strongest lock at once.
    with cluster.connect(conn.info.dbname) as other:
        with other.transaction():
            other.execute("SET LOCAL lock_timeout = '100ms'")
            other.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")


def test_a_failing_statement_is_reported_and_the_rest_still_run(conn):
    conn.execute(SETUP)
    rows = conn.execute("""SELECT statement, executed, error FROM migrate.dry_run($$
        ALTER TABLE nope ADD COLUMN c int;
        ALTER TABLE big ADD COLUMN c int;
    $$)""").fetchall()
    assert 'relation "nope" does not exist' in rows[0][2]
    assert rows[1][1] and rows[1][2] is None


def test_assert_safe_passes_a_safe_migration(conn):
    conn.execute(SETUP)
    verdict = conn.execute("""SELECT migrate.assert_safe($$
        ALTER TABLE big ADD COLUMN c int;
        ALTER TABLE big ADD CONSTRAINT big_total CHECK (total > 0) NOT VALID;
        CREATE INDEX CONCURRENTLY big_note ON big (note);
    $$)""").fetchone()[0]
    assert verdict == "safe: 3 statements, 2 run and rolled back, 1 analysed"


def test_assert_safe_raises_on_a_rule_a_measured_hazard_and_an_error(conn):
    conn.execute(SETUP)
    f = failure(conn, """SELECT migrate.assert_safe($$
        ALTER TABLE big ALTER COLUMN total TYPE bigint;
        ALTER TABLE big ADD COLUMN c int;
        UPDATE big SET c = 1;
        SELECT 1/0;
    $$)""")
    assert f.sqlstate == "55000"
    assert f.message == "pg_migrate: the migration is not safe to apply: 3 hazards"
    lines = f.detail.splitlines()
    assert lines[0].startswith("statement 1 (line 2): refused by the guard: ")
    assert lines[1].startswith("statement 3 (line 4): reads all of public.big (an estimated 30000 rows) while holding an ACCESS EXCLUSIVE lock")
    assert lines[2].startswith("statement 4 (line 5): fails: division by zero")
    assert "migrate.dry_run" in f.hint


def test_bad_input(conn):
    assert failure(conn, "SELECT * FROM migrate.dry_run(NULL)").sqlstate == "22004"
    f = failure(conn, "SELECT * FROM migrate.dry_run('ALTER TABLE')")
    assert f.sqlstate == "42601" and f.message.startswith("pg_migrate:")
    assert failure(conn, "SELECT * FROM migrate.dry_run('COMMIT')").sqlstate == "2D000"
    assert failure(conn, "SELECT * FROM migrate.dry_run('SELECT 1', ARRAY['no-such-rule'])").sqlstate == "22023"


def test_a_scan_the_session_made_before_is_not_taken_for_the_statements(conn):
    """Scan counts are not transactional: a scan rolled back with its savepoint (its lock
    gone) still counts. The dry run reads the count of what each statement names before it
    runs, never of the whole schema, and so does not blame the ADD COLUMN for it."""
    conn.execute(SETUP)
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT s")
    assert conn.execute("SELECT count(*) FROM big").fetchone()[0] == 30000
    conn.execute("ROLLBACK TO s")
    assert conn.execute("SELECT pg_stat_get_xact_numscans('big'::regclass)").fetchone()[0] >= 1
    verdict = conn.execute("SELECT migrate.assert_safe('ALTER TABLE big ADD COLUMN c int')").fetchone()[0]
    assert verdict.startswith("safe: 1 statement"), verdict
    # A scan the statements make is still theirs.
    f = failure(conn, "SELECT migrate.assert_safe('ALTER TABLE big ADD COLUMN c int; UPDATE big SET c = 1')")
    assert "statement 2 (line 1): reads all of public.big" in f.detail, f
    conn.execute("ROLLBACK")
