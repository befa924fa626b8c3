"""migrate.describe, fingerprint, diff and drift against real databases."""

import pytest
from psycopg.types.json import Jsonb

from harness import failure

BASE = """
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE DOMAIN posint AS int CHECK (VALUE > 0);
    CREATE SEQUENCE counter;
    CREATE TABLE orders (id bigint PRIMARY KEY, total int, m mood, note text, qty posint);
    CREATE TABLE items (id int PRIMARY KEY, order_id bigint REFERENCES orders, price int);
    CREATE INDEX items_order ON items (order_id);
    CREATE VIEW big_orders AS SELECT id FROM orders WHERE total > 100;
    CREATE MATERIALIZED VIEW order_totals AS SELECT sum(total) AS s FROM orders;
    CREATE FUNCTION double(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
    CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
    ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
    CREATE POLICY mine ON orders USING (total > 0);
    CREATE ROLE reader_schema_test;
    GRANT SELECT ON orders TO reader_schema_test;
"""

# Each changes one object of one kind; the fingerprint must change and diff must say where.
CHANGES = [
    ("column type", "ALTER TABLE items ALTER COLUMN price TYPE bigint", "tables", "public.items", "columns.price.type"),
    ("nullability", "ALTER TABLE items ALTER COLUMN price SET NOT NULL", "tables", "public.items", "columns.price.not_null"),
    ("default", "ALTER TABLE items ALTER COLUMN price SET DEFAULT 0", "tables", "public.items", "columns.price.default"),
    ("collation", 'ALTER TABLE orders ALTER COLUMN note TYPE text COLLATE "C"', "tables", "public.orders", "columns.note.collation"),
    ("new column", "ALTER TABLE items ADD COLUMN extra int", "tables", "public.items", "columns.extra"),
    ("constraint", "ALTER TABLE items ADD CONSTRAINT price_pos CHECK (price > 0) NOT VALID", "constraints", "price_pos on public.items", None),
    ("index", "CREATE INDEX items_price ON items (price)", "indexes", "public.items_price", None),
    ("view", "CREATE OR REPLACE VIEW big_orders AS SELECT id FROM orders WHERE total > 200", "views", "public.big_orders", "definition"),
    ("materialized view", "DROP MATERIALIZED VIEW order_totals", "materialized_views", "public.order_totals", None),
    ("sequence", "ALTER SEQUENCE counter INCREMENT BY 5", "sequences", "public.counter", "increment"),
    ("enum label", "ALTER TYPE mood ADD VALUE 'angry'", "types", "public.mood", "labels"),
    ("domain constraint", "ALTER DOMAIN posint ADD CONSTRAINT small CHECK (VALUE < 1000)", "types", "public.posint", "constraints.small"),
    ("function body", "CREATE OR REPLACE FUNCTION double(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x + x'", "functions", "public.double(integer)", "definition_sha256"),
    ("trigger", "ALTER TABLE orders DISABLE TRIGGER orders_touch", "triggers", "orders_touch on public.orders", "enabled"),
    ("policy", "ALTER POLICY mine ON orders USING (total > 1)", "policies", "mine on public.orders", "using"),
    ("grant", "GRANT INSERT ON orders TO reader_schema_test", "tables", "public.orders", "acl"),
    ("row security", "ALTER TABLE orders FORCE ROW LEVEL SECURITY", "tables", "public.orders", "row_security"),
]


@pytest.fixture
def base(cluster, conn):
    conn.execute("DROP ROLE IF EXISTS reader_schema_test")
    conn.execute("BEGIN")
    conn.execute("SET LOCAL migrate.guard = off")
    conn.execute(BASE)
    conn.execute("COMMIT")
    yield conn
    conn.execute("DROP OWNED BY reader_schema_test")
    conn.execute("DROP ROLE reader_schema_test")


def test_same_migrations_in_another_order_give_the_same_fingerprint(cluster, db):
    other = db[:50] + "_b"
    cluster.create_database(other)
    try:
        with cluster.connect(db) as a, cluster.connect(other) as b:
            a.execute("SELECT migrate.apply('1', $$CREATE TABLE x (id int PRIMARY KEY, gone int, v text); CREATE TABLE y (id int); CREATE INDEX y_id ON y (id)$$)")
            a.execute("SELECT migrate.apply('2', $$ALTER TABLE x DROP COLUMN gone$$, rollback => 'ALTER TABLE x ADD COLUMN gone int', allow => ARRAY['drop-column'])")
            # Independent objects in the other order, and no dropped column ever.
            b.execute("SELECT migrate.apply('1', $$CREATE TABLE y (id int); CREATE INDEX y_id ON y (id); CREATE TABLE x (id int PRIMARY KEY, v text)$$)")
            fa, fb = (c.execute("SELECT migrate.fingerprint()").fetchone()[0] for c in (a, b))
            assert fa == fb and len(fa) == 64
            recorded = a.execute("SELECT fingerprint FROM migrate.history WHERE version = '2'").fetchone()[0]
            assert recorded == fa
            assert a.execute("SELECT count(*) FROM migrate.diff(%s, %s)", (
                Jsonb(a.execute("SELECT migrate.describe()").fetchone()[0]),
                Jsonb(b.execute("SELECT migrate.describe()").fetchone()[0]))).fetchone()[0] == 0
    finally:
        cluster.drop_database(other)


@pytest.mark.parametrize("name,statement,kind,obj,attribute", CHANGES, ids=[c[0] for c in CHANGES])
def test_any_single_change_changes_the_fingerprint_and_diff_names_it(base, name, statement, kind, obj, attribute):
    conn = base
    before_desc = conn.execute("SELECT migrate.describe()").fetchone()[0]
    before = conn.execute("SELECT migrate.fingerprint()").fetchone()[0]
    conn.execute("BEGIN")
    conn.execute("SET LOCAL migrate.guard = off")
    conn.execute(statement)
    conn.execute("COMMIT")
    assert conn.execute("SELECT migrate.fingerprint()").fetchone()[0] != before
    rows = conn.execute("SELECT kind, object, attribute FROM migrate.diff(%s, migrate.describe())", (Jsonb(before_desc),)).fetchall()
    assert (kind, obj, attribute) in rows, rows


def test_validating_a_constraint_is_a_difference(base):
    conn = base
    conn.execute("ALTER TABLE items ADD CONSTRAINT p CHECK (price > 0) NOT VALID")
    before = conn.execute("SELECT migrate.describe()").fetchone()[0]
    conn.execute("ALTER TABLE items VALIDATE CONSTRAINT p")
    rows = conn.execute("SELECT kind, object, change, attribute, old, new FROM migrate.diff(%s, migrate.describe())", (Jsonb(before),)).fetchall()
    assert ("constraints", "p on public.items", "changed", "validated", False, True) in rows


def test_describe_is_filtered_by_schema_and_leaves_out_extensions(conn):
    conn.execute("CREATE SCHEMA app; CREATE TABLE app.t (id int); CREATE TABLE public.u (id int)")
    conn.execute("CREATE EXTENSION citext")
    d = conn.execute("SELECT migrate.describe(ARRAY['app'])").fetchone()[0]
    assert list(d["tables"]) == ["app.t"]
    full = conn.execute("SELECT migrate.describe()").fetchone()[0]
    assert set(full["tables"]) == {"app.t", "public.u"}
    assert "migrate" not in full["schemas"] and not any(k.startswith("migrate.") for k in full["functions"])
    # Extensions by their version, their objects not one by one; pg_migrate not at all (its
    # own release is not the schema's, and upgrading it is no drift).
    assert full["extensions"] == {"citext": {"schema": "public", "version": full["extensions"]["citext"]["version"]}}
    assert not any("citext" in k for k in full["functions"])


def test_drift_lists_an_ad_hoc_change_with_its_author(cluster, conn, db):
    conn.execute("DROP ROLE IF EXISTS alice_drift")
    conn.execute("CREATE ROLE alice_drift LOGIN")
    conn.execute("GRANT CREATE ON SCHEMA public TO alice_drift")
    conn.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO alice_drift')")
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0
    try:
        with cluster.connect(db, user="alice_drift", application_name="hotfix-console") as alice:
            alice.execute("ALTER TABLE t ADD COLUMN hotfix text")
            alice.execute("CREATE INDEX t_hotfix ON t (hotfix)")
        rows = conn.execute("""SELECT kind, object, change, attribute, changed_by, application_name, command_tag, since_version
                               FROM migrate.drift() ORDER BY kind, object""").fetchall()
        assert rows == [
            ("indexes", "public.t_hotfix", "added", None, "alice_drift", "hotfix-console", "CREATE INDEX", "1"),
            ("tables", "public.t", "added", "columns.hotfix", "alice_drift", "hotfix-console", "ALTER TABLE", "1"),
        ]
        # The next migration starts from the live schema, so the hotfix is not counted as its change.
        conn.execute("SELECT migrate.apply('2', 'CREATE TABLE u (id int)')")
        changes = conn.execute("SELECT changes FROM migrate.history WHERE version = '2'").fetchone()[0]
        assert [c["object"] for c in changes] == ["public.u"]
        assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0
    finally:
        conn.execute("BEGIN; SET LOCAL migrate.guard = off; DROP TABLE IF EXISTS t, u; COMMIT")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM alice_drift")
        conn.execute("DROP ROLE alice_drift")


def test_drift_needs_a_recorded_schema_and_an_admin(cluster, conn, db):
    f = failure(conn, "SELECT * FROM migrate.drift()")
    assert f.sqlstate == "55000" and f.message == "pg_migrate: no recorded schema to compare with"
    assert f.detail and f.hint
    conn.execute("SELECT migrate.baseline('1')")
    assert conn.execute("SELECT fingerprint = migrate.fingerprint() FROM migrate.history").fetchone()[0]
    conn.execute("DROP ROLE IF EXISTS nobody_drift")
    conn.execute("CREATE ROLE nobody_drift LOGIN")
    try:
        with cluster.connect(db, user="nobody_drift") as nobody:
            assert failure(nobody, "SELECT * FROM migrate.drift()").sqlstate == "42501"
            # describe and fingerprint are for everyone: the catalogs are readable anyway.
            assert len(nobody.execute("SELECT migrate.fingerprint()").fetchone()[0]) == 64
    finally:
        conn.execute("DROP ROLE nobody_drift")


def test_diff_refuses_null(conn):
    f = failure(conn, "SELECT * FROM migrate.diff(NULL, migrate.describe())")
    assert f.sqlstate == "22004" and f.message.startswith("pg_migrate:")
    f = failure(conn, "SELECT * FROM migrate.diff('{}', migrate.describe())")
    assert f.sqlstate == "22023" and f.message == "pg_migrate: migrate.diff: a is not a schema description"
    assert f.detail and f.hint
