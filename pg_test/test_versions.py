"""What differs between PostgreSQL versions, on the version the suite runs against.

Each case says, per major version, what the guard decides: a rule that refuses, None where the
statement is allowed, or SYNTAX where that version has no such statement. The test then asks
PostgreSQL itself (with the guard off, at client_min_messages = debug1) whether the statement
scanned or rewrote the table, and requires the guard to refuse exactly those that did: a rule
is neither missing nor too strict on any version."""

import re
import psycopg
import pytest

from harness import PG_MAJOR, failure
from test_guard import rule_of, verdict

SYNTAX = "syntax"
ALL = (15, 16, 17, 18)


def on(*majors, outcome):
    return {m: outcome for m in majors}


SETUP = """
SET migrate.guard = off;
CREATE TABLE items (id bigint PRIMARY KEY, a int, note text, parent bigint,
                    checked int CONSTRAINT checked_present CHECK (checked IS NOT NULL),
                    s int GENERATED ALWAYS AS (a * 2) STORED);
INSERT INTO items (id, a, note, parent, checked)
SELECT g, g, 'n' || g, NULL, g FROM generate_series(1, 30000) g;
CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler;
CREATE TABLE parent (id bigint, c int, CONSTRAINT parent_c_present CHECK (c IS NOT NULL) NO INHERIT);
CREATE TABLE child () INHERITS (parent);
INSERT INTO child SELECT g, g FROM generate_series(1, 30000) g;
CREATE TABLE plain (id bigint, a int);
INSERT INTO plain SELECT g, g FROM generate_series(1, 30000) g;
"""

# PostgreSQL 18's own objects: virtual generated columns (PostgreSQL 18 refuses SET EXPRESSION
# on them in a table with CHECK constraints, hence a table of their own) and an unenforced key.
SETUP_18 = """
ALTER TABLE plain ADD COLUMN v int GENERATED ALWAYS AS (a * 3) VIRTUAL,
                  ADD COLUMN vn int GENERATED ALWAYS AS (a * 4) VIRTUAL NOT NULL;
ALTER TABLE items ADD CONSTRAINT items_parent_fk FOREIGN KEY (parent) REFERENCES items
    NOT ENFORCED;
ALTER TABLE items ADD COLUMN w int;
UPDATE items SET w = id;
ALTER TABLE items ADD CONSTRAINT items_w_pending NOT NULL w NOT VALID;
CREATE TABLE nn_parent (id bigint, c int CONSTRAINT nn_parent_c NOT NULL NO INHERIT);
CREATE TABLE nn_child () INHERITS (nn_parent);
INSERT INTO nn_child SELECT g, g FROM generate_series(1, 30000) g;
"""

CASES = [
    # Generated columns: PostgreSQL 18 adds VIRTUAL, and makes it the default.
    ("ALTER TABLE items ADD COLUMN g int GENERATED ALWAYS AS (a * 2)",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: None}),
    ("ALTER TABLE items ADD COLUMN g int GENERATED ALWAYS AS (a * 2) VIRTUAL",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: None}),
    ("ALTER TABLE items ADD COLUMN g int GENERATED ALWAYS AS (a * 2) STORED",
     on(*ALL, outcome="add-column-generated-stored")),
    ("ALTER TABLE items ADD COLUMN g int GENERATED ALWAYS AS (a * 2) VIRTUAL NOT NULL",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: "add-column-inline-constraint"}),
    # SET EXPRESSION (17): a stored column is rewritten; a virtual one only if NOT NULL.
    ("ALTER TABLE items ALTER COLUMN s SET EXPRESSION AS (a * 5)",
     {15: SYNTAX, 16: SYNTAX, 17: "alter-column-set-expression", 18: "alter-column-set-expression"}),
    ("ALTER TABLE plain ALTER COLUMN v SET EXPRESSION AS (a * 5)", {18: None}),
    ("ALTER TABLE plain ALTER COLUMN vn SET EXPRESSION AS (a * 5)", {18: "alter-column-set-expression"}),
    # NOT NULL: PostgreSQL 18 has NOT NULL constraints of its own, which may be NOT VALID.
    ("ALTER TABLE items ALTER COLUMN note SET NOT NULL", on(*ALL, outcome="set-not-null-scan")),
    ("ALTER TABLE items ALTER COLUMN checked SET NOT NULL", on(*ALL, outcome=None)),
    ("ALTER TABLE items ADD CONSTRAINT note_nn NOT NULL note",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: "set-not-null-scan"}),
    ("ALTER TABLE items ADD CONSTRAINT checked_nn NOT NULL checked",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: None}),
    ("ALTER TABLE items ADD CONSTRAINT note_nn NOT NULL note NOT VALID",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: None}),
    # SET NOT NULL validates a column's NOT VALID NOT NULL constraint (18): every row is checked.
    ("ALTER TABLE items ALTER COLUMN w SET NOT NULL", {18: "set-not-null-scan"}),
    # A column added by the same statement has no proof yet: every row is checked.
    ("ALTER TABLE items ADD COLUMN f int DEFAULT 0, ALTER COLUMN f SET NOT NULL",
     on(*ALL, outcome="set-not-null-scan")),
    ("ALTER TABLE items ADD COLUMN f int DEFAULT 0, ADD CONSTRAINT f_nn NOT NULL f",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: "set-not-null-scan"}),
    # An inheritance parent's own proof does not cover its children, which are checked.
    ("ALTER TABLE parent ALTER COLUMN c SET NOT NULL", on(*ALL, outcome="set-not-null-scan")),
    ("ALTER TABLE nn_parent ALTER CONSTRAINT nn_parent_c INHERIT", {18: "set-not-null-scan"}),
    # A virtual column's type changes without touching a row.
    ("ALTER TABLE plain ALTER COLUMN v TYPE bigint", {18: None}),
    # NOT ENFORCED constraints (18) are never checked; enforcing a key checks every row.
    ("ALTER TABLE items ADD CONSTRAINT a_positive CHECK (a > 0)",
     on(*ALL, outcome="add-constraint-validating")),
    ("ALTER TABLE items ADD CONSTRAINT a_positive CHECK (a > 0) NOT ENFORCED",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: None}),
    ("ALTER TABLE items ADD CONSTRAINT parent_fk FOREIGN KEY (parent) REFERENCES items NOT ENFORCED",
     {15: SYNTAX, 16: SYNTAX, 17: SYNTAX, 18: None}),
    ("ALTER TABLE items ALTER CONSTRAINT items_parent_fk ENFORCED", {18: "enforce-foreign-key"}),
    # SET ACCESS METHOD DEFAULT (17) rewrites when the default is another method.
    (["SET LOCAL default_table_access_method = heap2", "ALTER TABLE items SET ACCESS METHOD DEFAULT"],
     {15: SYNTAX, 16: SYNTAX, 17: "set-access-method", 18: "set-access-method"}),
    ("ALTER TABLE items SET ACCESS METHOD DEFAULT", {15: SYNTAX, 16: SYNTAX, 17: None, 18: None}),
]


@pytest.fixture(scope="module")
def items(cluster):
    name = "versions_items"
    cluster.create_database(name)
    with cluster.connect(name) as c:
        c.execute(SETUP)
        if PG_MAJOR >= 18:
            c.execute(SETUP_18)
        c.execute("ANALYZE")
    yield name
    cluster.drop_database(name)


def what_postgres_does(cluster, db, sql):
    """With the guard off: SYNTAX, or whether PostgreSQL scanned (or rewrote) the table."""
    notices = []
    with cluster.connect(db, autocommit=False) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("SET LOCAL migrate.guard = off")
        c.execute("SET LOCAL client_min_messages = debug1")
        try:
            for statement in sql if isinstance(sql, list) else [sql]:
                c.execute(statement)
        except psycopg.errors.SyntaxError:
            return SYNTAX
        except psycopg.Error as e:
            raise AssertionError(f"{sql}: {e.diag.sqlstate} {e.diag.message_primary}") from e
        finally:
            c.rollback()
    scans = [n for n in notices if n.startswith(("verifying table", "rewriting table",
                                                  "validating foreign key constraint"))]
    return scans or None


@pytest.mark.parametrize("sql,expected", CASES, ids=[(s if isinstance(s, str) else s[-1])[:70] for s, _ in CASES])
def test_the_guard_refuses_exactly_what_scans_on_this_version(cluster, items, sql, expected):
    if PG_MAJOR not in expected:
        pytest.skip(f"not a statement of PostgreSQL {PG_MAJOR}")
    want = expected[PG_MAJOR]
    did = what_postgres_does(cluster, items, sql)
    if want == SYNTAX:
        assert did == SYNTAX
        return
    assert did != SYNTAX, f"PostgreSQL {PG_MAJOR} did not parse it"
    try:
        got = verdict(cluster, items, sql)
    except psycopg.Error as e:  # a refusal must be the guard's, with its rule
        raise AssertionError(f"{sql}: {e.diag.sqlstate} {e.diag.message_primary}") from e
    assert got == want, f"{sql}: PostgreSQL {PG_MAJOR} {'scans: ' + str(did) if did else 'is instant'}"
    # Exact: refused if and only if PostgreSQL scans or rewrites the table.
    assert (got is not None) == (did is not None), f"{sql}: guard {got}, PostgreSQL {did}"


def test_the_not_null_hint_is_this_versions_safe_way(cluster, items):
    with cluster.connect(items) as c:
        try:
            c.execute("ALTER TABLE items ALTER COLUMN note SET NOT NULL")
            raise AssertionError("SET NOT NULL was allowed")
        except psycopg.Error as e:
            assert rule_of(e.diag.message_primary) == "set-not-null-scan"
            hint = e.diag.message_hint
    if PG_MAJOR >= 18:
        assert "ADD CONSTRAINT note_not_null NOT NULL note NOT VALID" in hint
        steps = ["ALTER TABLE items ADD CONSTRAINT note_not_null NOT NULL note NOT VALID",
                 "ALTER TABLE items VALIDATE CONSTRAINT note_not_null"]
    else:
        assert "CHECK (note IS NOT NULL) NOT VALID" in hint
        steps = ["ALTER TABLE items ADD CONSTRAINT note_not_null CHECK (note IS NOT NULL) NOT VALID",
                 "ALTER TABLE items VALIDATE CONSTRAINT note_not_null",
                 "ALTER TABLE items ALTER COLUMN note SET NOT NULL"]
    # The hint's way is allowed step by step (each its own transaction), and ends with the
    # column NOT NULL.
    with cluster.connect(items) as c:
        for step in steps:
            c.execute(step)
        assert failure(c, "INSERT INTO items (id, a, checked) VALUES (0, 0, 0)").sqlstate == "23502"
        c.execute("SET migrate.guard = off")
        c.execute("ALTER TABLE items DROP CONSTRAINT note_not_null")
        c.execute("ALTER TABLE items ALTER COLUMN note DROP NOT NULL")


def test_the_not_null_hint_quotes_a_column_that_needs_it(cluster, items):
    """ALTER COLUMN "Note Two" SET NOT NULL: the hint's statements name the column and its
    constraint quoted, and run as written."""
    with cluster.connect(items) as c:
        c.execute("SET migrate.guard = off")
        c.execute('ALTER TABLE items ADD COLUMN "Note Two" text DEFAULT \'x\'')
        c.execute("RESET migrate.guard")
        f = failure(c, 'ALTER TABLE items ALTER COLUMN "Note Two" SET NOT NULL')
        assert rule_of(f.message) == "set-not-null-scan" and '"Note Two"' in f.message, f.message
        steps = re.findall(r"ALTER TABLE [^;]*", f.hint)
        assert steps and all('"Note Two' in s for s in steps), f.hint
        for step in steps:
            c.execute(step)
        assert failure(c, 'INSERT INTO items (id, a, checked, note, "Note Two") VALUES (0, 0, 0, \'x\', NULL)').sqlstate == "23502"
        c.execute("SET migrate.guard = off")
        c.execute('ALTER TABLE items DROP COLUMN "Note Two"')


def test_reindex_is_logged_where_event_triggers_see_it_and_an_override_once(cluster, items):
    """PostgreSQL 17 fires event triggers for REINDEX: the DDL log records it there. The guard
    judges REINDEX in its ProcessUtility hook on every version, and in the ddl_command_start
    trigger too on 17 and later; an accepted override is still logged once."""
    with cluster.connect(items) as c:
        c.execute("REINDEX INDEX CONCURRENTLY items_pkey")
        logged = c.execute("SELECT count(*) FROM migrate.ddl_log WHERE event = 'ddl_command_end' "
                           "AND command_tag = 'REINDEX'").fetchone()[0]
        assert logged == (1 if PG_MAJOR >= 17 else 0)
        with c.transaction():
            c.execute("SET LOCAL migrate.allow = 'reindex-blocking'")
            c.execute("REINDEX TABLE items")
        overrides = c.execute("SELECT guard_rule, count(*) FROM migrate.ddl_log WHERE event = 'guard_override' "
                              "AND command_tag = 'REINDEX' GROUP BY 1").fetchall()
        assert overrides == [("reindex-blocking", 1)]


@pytest.mark.skipif(PG_MAJOR < 18, reason="NOT VALID NOT NULL constraints are PostgreSQL 18's")
def test_set_not_null_over_a_not_valid_constraint_is_told_to_validate_it(cluster, items):
    with cluster.connect(items) as c:
        f = failure(c, "ALTER TABLE items ALTER COLUMN w SET NOT NULL")
        assert rule_of(f.message) == "set-not-null-scan"
        assert "ALTER TABLE public.items VALIDATE CONSTRAINT items_w_pending;" in f.hint, f.hint
        c.execute("ALTER TABLE items VALIDATE CONSTRAINT items_w_pending")  # allowed: the safe way
        assert c.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'items_w_pending'").fetchone() == (True,)
        c.execute("SET migrate.guard = off")
        c.execute("ALTER TABLE items DROP CONSTRAINT items_w_pending")
        c.execute("ALTER TABLE items ADD CONSTRAINT items_w_pending NOT NULL w NOT VALID")
