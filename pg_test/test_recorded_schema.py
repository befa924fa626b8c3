"""The recorded schema stays exact while each migration re-describes only what it touched.

After every migration, the schema pg_migrate recorded (migrate.recorded_schema(), and the
fingerprint in migrate.history) must equal a fresh description of the live database; renames
and moves reach every object that prints the renamed name, drops reach every row that went
with them, GRANTs reach the objects they name, and DDL outside migrations is recorded before
the next migration (and not counted as its change)."""

import json
import subprocess

import pytest

from harness import PG_BIN, wait_until

BASE = """
    CREATE EXTENSION citext;
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE DOMAIN posint AS int CHECK (VALUE > 0);
    CREATE TYPE pair AS (a int, b int);
    CREATE SEQUENCE counter;
    CREATE FUNCTION double(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
    CREATE TABLE orders (id bigint PRIMARY KEY, total int CHECK (double(total) < 1000000),
                         m mood DEFAULT 'calm' CHECK (m <> 'busy'), note text, qty posint,
                         n bigint DEFAULT nextval('counter'), p pair, email citext);
    CREATE TABLE items (id int PRIMARY KEY, order_id bigint REFERENCES orders, price int);
    CREATE INDEX items_order ON items (order_id);
    CREATE INDEX orders_expr ON orders (lower(note) text_pattern_ops DESC NULLS LAST) INCLUDE (total)
        WHERE total > 0;
    CREATE VIEW big_orders AS SELECT id, m FROM orders WHERE total > 100;
    CREATE VIEW bigger AS SELECT id FROM big_orders;
    CREATE MATERIALIZED VIEW order_totals AS SELECT sum(total) AS s FROM orders;
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
    CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
    ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
    CREATE POLICY mine ON orders USING (total > 0 AND EXISTS (SELECT FROM items WHERE items.order_id = orders.id));
    CREATE TABLE events (at date NOT NULL, v int) PARTITION BY RANGE (at);
    CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    CREATE TABLE events_2026 (at date NOT NULL, v int);
    CREATE SCHEMA other;
    CREATE TABLE other.uses (id int PRIMARY KEY, m mood, q posint, o bigint REFERENCES orders);
    CREATE ROLE recorded_schema_reader;
"""

# Applied in order, each as one migration; after each the record must equal the live schema.
STEPS = [
    "ALTER TABLE items ALTER COLUMN price TYPE bigint",
    "ALTER TABLE items ADD COLUMN extra int DEFAULT 0, ADD CONSTRAINT price_pos CHECK (price > 0) NOT VALID",
    "ALTER TABLE orders ALTER COLUMN note TYPE varchar(200)",  # rebuilds orders_expr under a new OID
    "CREATE INDEX items_price ON items (price)",
    "COMMENT ON TABLE orders IS 'not described'",
    "ALTER TABLE orders RENAME TO orders2",  # FK, views, policy, trigger, the other schema's FK
    "ALTER TABLE items RENAME COLUMN order_id TO order_ref",  # index, FK, policy
    "ALTER INDEX items_price RENAME TO items_by_price",
    "ALTER TABLE items RENAME CONSTRAINT price_pos TO price_positive",
    "ALTER TRIGGER orders_touch ON orders2 RENAME TO orders_touched",
    "ALTER POLICY mine ON orders2 RENAME TO ours",
    "ALTER TYPE mood RENAME TO feeling",  # columns here and in the other schema, a default, a view
    "ALTER TYPE feeling RENAME VALUE 'calm' TO 'quiet'",  # the default and the check print it
    "ALTER TYPE feeling ADD VALUE 'angry'",
    "ALTER DOMAIN posint RENAME TO positive",
    "ALTER TYPE pair RENAME TO couple",
    "ALTER TYPE couple ADD ATTRIBUTE c int",
    "ALTER FUNCTION double(int) RENAME TO twice",  # a check constraint calls it
    "ALTER SEQUENCE counter RENAME TO ticket",  # a default calls nextval on it
    "CREATE SCHEMA app",
    "ALTER TABLE items SET SCHEMA app",  # its index, constraints, and the policy's subquery
    "ALTER SCHEMA app RENAME TO shop",
    "ALTER SCHEMA other RENAME TO elsewhere",
    "ALTER EXTENSION citext SET SCHEMA shop",  # the type of orders2.email moves
    "GRANT SELECT ON ALL TABLES IN SCHEMA shop TO recorded_schema_reader",
    "GRANT SELECT (note), UPDATE (note) ON orders2 TO recorded_schema_reader",
    "GRANT USAGE ON SCHEMA elsewhere TO recorded_schema_reader",
    "GRANT EXECUTE ON FUNCTION twice(int) TO recorded_schema_reader",
    "GRANT USAGE ON TYPE feeling TO recorded_schema_reader",
    "REVOKE SELECT ON ALL TABLES IN SCHEMA shop FROM recorded_schema_reader",
    "ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    "CREATE INDEX events_v ON events (v)",  # and one on each partition, unreported
    "ALTER TABLE events ADD COLUMN w int, ADD CONSTRAINT w_pos CHECK (w > 0)",  # and on each partition
    "ALTER TABLE events RENAME TO happenings",
    "ALTER TABLE happenings DETACH PARTITION events_2025",
    "ALTER VIEW big_orders RENAME COLUMN m TO mood",
    "CREATE OR REPLACE VIEW bigger AS SELECT id, id + 1 AS next FROM big_orders",
    "ALTER TABLE orders2 DROP COLUMN p",
    "DROP VIEW big_orders CASCADE",  # bigger goes with it
    "ALTER MATERIALIZED VIEW order_totals RENAME TO totals",
    "ALTER TABLE orders2 DISABLE ROW LEVEL SECURITY",
    "DROP TABLE shop.items CASCADE",  # its indexes and constraints, and the policy on orders2
    "DROP SCHEMA elsewhere CASCADE",
    "DROP TYPE couple",
    "CREATE TABLE again (id int PRIMARY KEY); DROP TABLE again; CREATE TABLE again (id bigint PRIMARY KEY)",
    "DROP EXTENSION citext CASCADE",  # drops orders2.email
]


def assert_recorded_is_live(conn, version: str, step: str) -> None:
    recorded, live = conn.execute("SELECT migrate.recorded_schema(), migrate.describe()").fetchone()
    if recorded != live:
        rows = conn.execute(
            "SELECT kind, object, change, attribute, old, new FROM migrate.diff(%s::jsonb, %s::jsonb)",
            (json.dumps(recorded), json.dumps(live)),
        ).fetchall()
        pytest.fail(f"after {step!r} the recorded schema differs from the live one: {rows}")
    fingerprints = conn.execute(
        "SELECT (SELECT fingerprint FROM migrate.history WHERE version = %s), "
        "(SELECT fingerprint FROM migrate.schema_state), migrate.fingerprint(), "
        "migrate.fingerprint_of(migrate.describe())",
        (version,),
    ).fetchone()
    assert len(set(fingerprints)) == 1, (step, fingerprints)
    assert conn.execute("SELECT count(*) FROM migrate.schema_queue").fetchone()[0] == 0, step


@pytest.fixture
def base(conn):
    conn.execute("DROP ROLE IF EXISTS recorded_schema_reader")
    conn.execute("SET migrate.guard = off")
    conn.execute("BEGIN")
    conn.execute(BASE)
    conn.execute("COMMIT")
    yield conn
    conn.execute("DROP OWNED BY recorded_schema_reader")
    conn.execute("DROP ROLE recorded_schema_reader")


def test_every_migration_leaves_the_record_equal_to_the_live_schema(base):
    conn = base
    conn.execute("SELECT migrate.apply('0', 'CREATE TABLE first (id int)')")
    assert_recorded_is_live(conn, "0", "the first migration")
    for i, step in enumerate(STEPS, start=1):
        conn.execute("SELECT migrate.apply(%s, %s)", (str(i), step))
        assert_recorded_is_live(conn, str(i), step)


def test_changes_name_what_the_migration_did_and_not_the_drift_before_it(base):
    conn = base
    conn.execute("SELECT migrate.apply('1', 'CREATE INDEX items_price ON items (price)')")
    changes = conn.execute("SELECT changes FROM migrate.history WHERE version = '1'").fetchone()[0]
    assert [(c["kind"], c["object"], c["change"]) for c in changes] == [("indexes", "public.items_price", "added")]
    # A rename: the old identity goes, the new one comes, and the objects printing it change.
    conn.execute("SELECT migrate.apply('2', 'ALTER TABLE orders RENAME TO orders2')")
    changes = conn.execute("SELECT changes FROM migrate.history WHERE version = '2'").fetchone()[0]
    touched = {(c["kind"], c["object"], c["change"]) for c in changes}
    assert ("tables", "public.orders", "removed") in touched
    assert ("tables", "public.orders2", "added") in touched
    assert ("views", "public.big_orders", "changed") in touched
    assert ("constraints", "items_order_id_fkey on public.items", "changed") in touched
    assert ("constraints", "uses_o_fkey on other.uses", "changed") in touched
    # DDL outside migrations shows as drift until the next migration records it first.
    conn.execute("ALTER TABLE items ADD COLUMN hotfix int")
    drift = conn.execute("SELECT kind, object, attribute, command_tag FROM migrate.drift()").fetchall()
    assert drift == [("tables", "public.items", "columns.hotfix", "ALTER TABLE")]
    conn.execute("SELECT migrate.apply('3', 'ALTER TABLE items ADD COLUMN planned int')")
    changes = conn.execute("SELECT changes FROM migrate.history WHERE version = '3'").fetchone()[0]
    assert [(c["object"], c["attribute"]) for c in changes] == [("public.items", "columns.planned")]
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0
    assert_recorded_is_live(conn, "3", "after drift")


def test_a_phased_migration_records_what_its_phases_did(cluster, base):
    conn = base
    conn.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int, v int)')")
    conn.execute(
        "SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY t_v ON t (v); ALTER TABLE t ADD COLUMN w int')"
    )
    wait_until(lambda: conn.execute("SELECT status FROM migrate.history WHERE version = '2'").fetchone()[0] == "applied")
    changes = conn.execute("SELECT changes FROM migrate.history WHERE version = '2'").fetchone()[0]
    assert sorted((c["kind"], c["object"]) for c in changes) == [("indexes", "public.t_v"), ("tables", "public.t")]
    assert_recorded_is_live(conn, "2", "a phased migration")


def test_a_restored_record_compares_but_is_recorded_afresh(cluster, base, tmp_path):
    """Dumped with the history, the record compares with the restored database (drift), but
    its OIDs are the old database's: the next migration records the whole schema first."""
    conn = base
    conn.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int)')")
    db = conn.info.dbname
    copy = db[:50] + "_copy"
    dump = tmp_path / "dump"
    subprocess.run([str(PG_BIN / "pg_dump"), "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres",
                    "-Fc", "-f", str(dump), db], check=True)
    cluster.create_database(copy, extension=False)
    subprocess.run([str(PG_BIN / "pg_restore"), "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres",
                    "-d", copy, str(dump)], check=True)
    try:
        with cluster.connect(copy) as c:
            assert not c.execute("SELECT migrate.schema_is_recorded()").fetchone()[0]
            assert c.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0
            c.execute("SELECT migrate.apply('2', 'ALTER TABLE t ADD COLUMN v int')")
            assert c.execute("SELECT migrate.schema_is_recorded()").fetchone()[0]
            assert_recorded_is_live(c, "2", "a migration after a restore")
    finally:
        cluster.drop_database(copy)


CLONES = """
    CREATE TABLE regions (id int PRIMARY KEY, name text) PARTITION BY RANGE (id);
    CREATE TABLE regions_1 PARTITION OF regions FOR VALUES FROM (0) TO (100);
    CREATE TABLE shops (id int PRIMARY KEY, region int REFERENCES regions);
    CREATE TABLE sales (id int, at date NOT NULL) PARTITION BY RANGE (at);
    CREATE TABLE sales_2025 PARTITION OF sales FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
    CREATE FUNCTION is_even(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 % 2 = 0';
    CREATE DOMAIN even AS int CHECK (is_even(VALUE));
    CREATE TABLE uses_even (id int, e even);
    CREATE SEQUENCE numbers;
    CREATE TABLE numbered (id int DEFAULT nextval('numbers'), v int);
    CREATE FUNCTION spare() RETURNS int LANGUAGE sql AS 'SELECT 1';
    CREATE TABLE small (id int PRIMARY KEY, v int);
    CREATE INDEX small_v ON small (v);
"""

# What PostgreSQL does to objects other than those the command names: clones onto partitions,
# cascaded drops of defaults and domain constraints, extension membership, swapped OIDs.
CLONE_STEPS = [
    "CREATE TABLE regions_2 PARTITION OF regions FOR VALUES FROM (100) TO (200)",  # an FK clone on shops
    "CREATE TRIGGER sales_touch BEFORE UPDATE ON sales FOR EACH ROW EXECUTE FUNCTION touch()",  # on sales_2025 too
    "ALTER TRIGGER sales_touch ON sales RENAME TO sales_touched",
    "CREATE TABLE sales_2026 PARTITION OF sales FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    "DROP SEQUENCE numbers CASCADE",  # numbered.id loses its default
    "DROP FUNCTION is_even(int) CASCADE",  # even loses its check
    "CREATE EXTENSION citext",
    "ALTER EXTENSION citext DROP FUNCTION citext(character)",  # now a user function
    "ALTER EXTENSION citext ADD FUNCTION spare()",  # now the extension's
    "ALTER TABLE sales DETACH PARTITION sales_2025",
]


def test_what_postgresql_does_unasked_is_recorded_too(cluster, conn):
    conn.execute("SET migrate.guard = off")
    conn.execute(CLONES)
    conn.execute("SELECT migrate.apply('0', 'CREATE TABLE first (id int)')")
    assert_recorded_is_live(conn, "0", "the first migration")
    for i, step in enumerate(CLONE_STEPS, start=1):
        conn.execute("SELECT migrate.apply(%s, %s)", (str(i), step))
        assert_recorded_is_live(conn, str(i), step)
    # REINDEX CONCURRENTLY swaps the index's OID and reports nothing; a later drop of it
    # must still remove its row.
    conn.execute("SELECT migrate.apply('20', 'REINDEX INDEX CONCURRENTLY small_v')")
    wait_until(lambda: conn.execute("SELECT status FROM migrate.history WHERE version = '20'").fetchone()[0] == "applied")
    conn.execute("SELECT migrate.apply('21', 'DROP INDEX small_v')")
    assert_recorded_is_live(conn, "21", "DROP INDEX after REINDEX CONCURRENTLY")


def test_what_no_event_reports_is_drift_until_recorded_afresh(cluster, conn, db):
    conn.execute("DROP ROLE IF EXISTS recorded_reader_old")
    conn.execute("DROP ROLE IF EXISTS recorded_reader_new")
    conn.execute("CREATE ROLE recorded_reader_old")
    try:
        conn.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int); GRANT SELECT ON t TO recorded_reader_old')")
        conn.execute("ALTER ROLE recorded_reader_old RENAME TO recorded_reader_new")  # no event trigger fires
        drift = conn.execute("SELECT kind, object, attribute FROM migrate.drift()").fetchall()
        assert drift == [("tables", "public.t", "acl")]
        fp = conn.execute("SELECT migrate.record_schema()").fetchone()[0]
        assert fp == conn.execute("SELECT migrate.fingerprint()").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0
        # Admins only.
        conn.execute("DROP ROLE IF EXISTS recorded_nobody")
        conn.execute("CREATE ROLE recorded_nobody LOGIN")
        with cluster.connect(db, user="recorded_nobody") as nobody:
            try:
                nobody.execute("SELECT migrate.record_schema()")
                raise AssertionError("a non-admin recorded the schema")
            except Exception as e:  # psycopg.Error
                assert getattr(e, "sqlstate", None) == "42501", e
                assert str(e).startswith("pg_migrate: "), e
    finally:
        conn.execute("SET migrate.guard = off")
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("DROP OWNED BY recorded_reader_new")
        conn.execute("DROP ROLE IF EXISTS recorded_reader_new")
        conn.execute("DROP ROLE IF EXISTS recorded_nobody")
