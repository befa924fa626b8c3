"""migrate.apply against a real server: commits, rollbacks, bad input, the DDL log."""

import time

import pytest

from harness import failure


def relations(conn) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchall()}


def counts(conn) -> tuple[int, int]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM migrate.history), (SELECT count(*) FROM migrate.ddl_log)").fetchone()


def test_applied_migration_is_visible_to_other_sessions_after_commit(cluster, db):
    with cluster.connect(db, autocommit=False) as a, cluster.connect(db) as b:
        row = a.execute("SELECT * FROM migrate.apply('1', 'CREATE TABLE t (id int)', 'first')").fetchone()
        assert row[0] == "applied" and row[1] == "1" and row[3] == 1
        assert b.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0
        a.commit()
        assert b.execute("SELECT version, description FROM migrate.status").fetchall() == [("1", "first")]
        assert b.execute("SELECT to_regclass('t') IS NOT NULL").fetchone()[0]


def test_caller_rollback_undoes_migration_and_history_together(cluster, db):
    with cluster.connect(db, autocommit=False) as a:
        a.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int)')")
        a.execute("SELECT migrate.apply('2', 'CREATE TABLE u (id int)')")
        a.rollback()
        assert counts(a) == (0, 0)
        assert relations(a) == set()


BAD_CALLS = [
    ("null version", "SELECT migrate.apply(NULL, 'CREATE TABLE x (id int)')", "22004"),
    ("empty version", "SELECT migrate.apply('', 'CREATE TABLE x (id int)')", "22023"),
    ("malformed version", "SELECT migrate.apply('V1__init', 'CREATE TABLE x (id int)')", "22023"),
    ("null script", "SELECT migrate.apply('1', NULL)", "22004"),
    ("empty script", "SELECT migrate.apply('1', '')", "22023"),
    ("comment-only script", "SELECT migrate.apply('1', '/* nothing */ -- here')", "22023"),
    ("syntax error", "SELECT migrate.apply('1', E'CREATE TABLE x (id int);\\nCREATE TABLE y (id intt,);')", "42601"),
    ("transaction control", "SELECT migrate.apply('1', 'CREATE TABLE x (id int); COMMIT; CREATE TABLE y (id int);')", "2D000"),
    ("transaction control beside a phase", "SELECT migrate.apply('1', 'CREATE TABLE x (id int); CREATE INDEX CONCURRENTLY ON x (id); COMMIT;')", "2D000"),
    ("failing statement", "SELECT migrate.apply('1', 'CREATE TABLE x (id int); INSERT INTO x VALUES (''nope'');')", "22P02"),
    ("broken rollback", "SELECT migrate.apply('1', 'CREATE TABLE x (id int)', rollback => 'DROP TABLE x; ROLLBACK;')", "2D000"),
]


@pytest.mark.parametrize("case,query,sqlstate", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_refused_with_context_and_leaves_no_trace(conn, case, query, sqlstate):
    f = failure(conn, query)
    assert f.sqlstate == sqlstate
    assert f.message.startswith("pg_migrate: ")
    assert f.detail, "every refusal says why"
    assert f.hint, "every refusal says what to do"
    assert counts(conn) == (0, 0)
    assert relations(conn) == set()


def test_bad_versions_after_history_exists(conn):
    conn.execute("SELECT migrate.apply('10', 'CREATE TABLE ten (id int)')")
    before = counts(conn)
    changed = failure(conn, "SELECT migrate.apply('10', 'CREATE TABLE ten (id bigint)')")
    assert changed.sqlstate == "55000"
    assert "different checksum" in changed.message
    recorded = conn.execute("SELECT checksum, finished_at::text FROM migrate.history").fetchone()
    assert recorded[0] in changed.detail and recorded[1] in changed.detail
    older = failure(conn, "SELECT migrate.apply('9', 'CREATE TABLE nine (id int)')")
    assert older.sqlstate == "55000" and "lower than the highest applied version 10" in older.message
    assert counts(conn) == before
    assert relations(conn) == {"ten"}


def test_already_applied_returns_the_recorded_outcome_with_a_notice(conn):
    first = conn.execute("SELECT * FROM migrate.apply('1', 'CREATE TABLE t (id int)')").fetchone()
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    again = conn.execute("SELECT * FROM migrate.apply('1', E'CREATE TABLE t (id int)\\r\\n')").fetchone()
    assert again[0] == "already_applied"
    assert again[1:] == first[1:]
    assert any("version 1 is already applied" in n for n in notices)


def test_statement_timeout_applies_to_each_statement(conn):
    conn.execute("SET migrate.statement_timeout = '300ms'")
    f = failure(conn, "SELECT migrate.apply('1', 'CREATE TABLE t (id int); SELECT pg_sleep(5);')")
    assert f.sqlstate == "57014"
    assert "statement 2 (line 1) ran longer than migrate.statement_timeout (300ms)" in f.message
    assert counts(conn) == (0, 0)
    # Our timer is disarmed after apply: the rest of the same statement runs unlimited.
    conn.execute("SELECT migrate.apply('2', 'SELECT 1'), pg_sleep(0.6)")
    assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_the_callers_own_statement_deadline_survives_apply(conn):
    conn.execute("SET statement_timeout = '1s'")
    conn.execute("SET migrate.statement_timeout = '5s'")
    started = time.monotonic()
    f = failure(conn, "SELECT migrate.apply('1', 'SELECT 1'), pg_sleep(3)")
    elapsed = time.monotonic() - started
    assert f.sqlstate == "57014" and f.message == "canceling statement due to statement timeout"
    # Cancelled by the caller's 1 s deadline, not after pg_sleep's 3 s nor our 5 s.
    assert elapsed < 2.5


def test_ddl_log_records_any_session_with_its_identity(cluster, db):
    with cluster.connect(db, tcp=True, application_name="orm-deploy") as c:
        c.execute("SET migrate.guard = off")  # the guard would refuse the DROP TABLE below
        c.execute("CREATE TABLE from_orm (id int)")
        c.execute("SELECT migrate.apply('1', 'ALTER TABLE from_orm ADD COLUMN x int')")
        c.execute("DROP TABLE from_orm")
        rows = c.execute(
            "SELECT event, command_tag, object_identity, session_user_name, current_user_name,"
            "       application_name, host(client_addr), migration_version, backend_pid = pg_backend_pid()"
            "  FROM migrate.ddl_log ORDER BY id").fetchall()
    assert rows == [
        ("ddl_command_end", "CREATE TABLE", "public.from_orm", "postgres", "postgres", "orm-deploy", "127.0.0.1", None, True),
        ("ddl_command_end", "ALTER TABLE", "public.from_orm", "postgres", "postgres", "orm-deploy", "127.0.0.1", "1", True),
        ("sql_drop", "DROP TABLE", "public.from_orm", "postgres", "postgres", "orm-deploy", "127.0.0.1", None, True),
    ]


def test_ddl_log_cascade_and_extension_drops_are_logged_once(conn):
    conn.execute("SET migrate.guard = off")  # the guard would refuse the DROP TABLE below
    conn.execute("CREATE TABLE base (id int PRIMARY KEY)")
    conn.execute("CREATE VIEW base_v AS SELECT * FROM base")
    conn.execute("DROP TABLE base CASCADE")
    conn.execute("CREATE EXTENSION pg_trgm")
    conn.execute("DROP EXTENSION pg_trgm")
    rows = conn.execute(
        "SELECT command_tag, object_type, object_identity FROM migrate.ddl_log WHERE event = 'sql_drop' ORDER BY id"
    ).fetchall()
    assert rows == [
        ("DROP TABLE", "table", "public.base"),
        ("DROP TABLE", "view", "public.base_v"),
        ("DROP EXTENSION", "extension", "pg_trgm"),
    ]
