"""migrate.describe, fingerprint, diff and drift against real databases."""

import psycopg
import pytest
from psycopg.types.json import Jsonb

from harness import PG_MAJOR, failure

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


# Tables, indexes, constraints, views and sequences are described natively
# (src/schema/describe.rs); what follows pins what their descriptions say.
RICH = """
    CREATE ROLE golden_reader;
    CREATE TABLE g_parent (id bigint PRIMARY KEY, note text COLLATE "C" DEFAULT 'it''s',
        made timestamptz DEFAULT '2024-01-02 03:04:05+00', iv interval DEFAULT '1 day 2 hours',
        f float8 DEFAULT 0.1, g int GENERATED ALWAYS AS (id * 2) STORED,
        ida int GENERATED ALWAYS AS IDENTITY, "Mixed Case" varchar(20), dropme int)
        WITH (fillfactor = 80, autovacuum_enabled = off);
    ALTER TABLE g_parent DROP COLUMN dropme;
    ALTER TABLE g_parent ENABLE ROW LEVEL SECURITY;
    GRANT SELECT ON g_parent TO golden_reader;
    GRANT UPDATE (note) ON g_parent TO golden_reader;
    CREATE TABLE g_other (x int);
    CREATE TABLE g_child (y int NOT NULL) INHERITS (g_other, g_parent);
    CREATE UNLOGGED TABLE g_scratch (a int);
    CREATE TABLE g_meas (id int, at date NOT NULL) PARTITION BY RANGE (at);
    CREATE TABLE g_meas_2024 PARTITION OF g_meas FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    CREATE TABLE g_refs (id int, pid bigint, u text, w text);
    ALTER TABLE g_refs ADD CONSTRAINT g_fk FOREIGN KEY (pid) REFERENCES g_parent ON DELETE CASCADE NOT VALID;
    CREATE INDEX g_refs_idx ON g_refs (lower(u) DESC NULLS LAST, w COLLATE "C" text_pattern_ops)
        INCLUDE (id) WHERE id > 10;
    CREATE UNIQUE INDEX g_refs_nnd ON g_refs (u) NULLS NOT DISTINCT WITH (fillfactor = 70);
    CREATE VIEW g_view WITH (security_barrier) AS SELECT id FROM g_parent WHERE id > 5;
    CREATE SEQUENCE g_seq AS integer START 5 INCREMENT 3 MINVALUE 2 MAXVALUE 900 CACHE 4 CYCLE
        OWNED BY g_refs.id;
"""


@pytest.fixture
def rich(conn):
    conn.execute("DROP ROLE IF EXISTS golden_reader")
    conn.execute("BEGIN")
    conn.execute("SET LOCAL migrate.guard = off")
    # Constants print under describe's own settings, not the session's.
    conn.execute("SET LOCAL datestyle = 'SQL, DMY'")
    conn.execute("SET LOCAL intervalstyle = 'iso_8601'")
    conn.execute(RICH)
    conn.execute("COMMIT")
    yield conn
    conn.execute("DROP OWNED BY golden_reader")
    conn.execute("DROP ROLE golden_reader")


def test_a_description_says_exactly_what_the_catalogs_say(rich):
    conn = rich
    conn.execute("SET datestyle = 'SQL, DMY'; SET intervalstyle = 'iso_8601'; SET extra_float_digits = 3")
    d = conn.execute("SELECT migrate.describe()").fetchone()[0]
    column = lambda position, type_, not_null=False, **more: {"position": position, "type": type_, "not_null": not_null, **more}
    parent_columns = {
        "id": column(1, "bigint", True),
        "note": column(2, "text", default="'it''s'::text", collation='"C"', acl=["golden_reader=w/postgres"]),
        "made": column(3, "timestamp with time zone", default="'2024-01-02 03:04:05+00'::timestamp with time zone"),
        "iv": column(4, "interval", default="'1 day 02:00:00'::interval"),
        "f": column(5, "double precision", default="0.1"),
        "g": column(6, "integer", generated="(id * 2)"),
        "ida": column(7, "integer", True, identity="always"),
        '"Mixed Case"': column(8, "character varying(20)"),
    }
    assert d["tables"]["public.g_parent"] == {
        "kind": "table", "columns": parent_columns, "options": ["autovacuum_enabled=off", "fillfactor=80"],
        "row_security": "enabled",
        # PostgreSQL 17 added MAINTAIN (m).
        "acl": ["golden_reader=r/postgres", "postgres=arwdDxt%s/postgres" % ("m" if PG_MAJOR >= 17 else "")]}
    child = d["tables"]["public.g_child"]
    assert child["inherits"] == ["public.g_other", "public.g_parent"]
    assert [(k, v["position"]) for k, v in sorted(child["columns"].items(), key=lambda kv: kv[1]["position"])] == [
        ("x", 1), ("id", 2), ("note", 3), ("made", 4), ("iv", 5), ("f", 6), ("g", 7), ("ida", 8), ('"Mixed Case"', 9), ("y", 10)]
    assert "identity" not in child["columns"]["ida"] and "acl" not in child["columns"]["note"]
    assert d["tables"]["public.g_scratch"] == {"kind": "table", "unlogged": True, "columns": {"a": column(1, "integer")}}
    assert d["tables"]["public.g_meas"] == {
        "kind": "partitioned table", "partition_key": "RANGE (at)",
        "columns": {"id": column(1, "integer"), "at": column(2, "date", True)}}
    assert d["tables"]["public.g_meas_2024"] == {
        "kind": "table", "partition_of": "public.g_meas",
        "partition_bound": "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "columns": {"id": column(1, "integer"), "at": column(2, "date", True)}}
    assert d["indexes"]["public.g_refs_idx"] == {
        "table": "public.g_refs", "method": "btree", "unique": False, "valid": True, "ready": True,
        "keys": [{"key": "lower(u)", "opclass": "pg_catalog.text_ops USING btree", "collation": '"default"', "descending": True},
                 {"key": "w", "opclass": "pg_catalog.text_pattern_ops USING btree", "collation": '"C"'}],
        "include": ["id"], "predicate": "(id > 10)"}
    assert d["indexes"]["public.g_refs_nnd"] == {
        "table": "public.g_refs", "method": "btree", "unique": True, "nulls_not_distinct": True, "valid": True, "ready": True,
        "keys": [{"key": "u", "opclass": "pg_catalog.text_ops USING btree", "collation": '"default"'}],
        "options": ["fillfactor=70"]}
    assert d["constraints"]["g_fk on public.g_refs"] == {
        "table": "public.g_refs", "type": "foreign key", "validated": False,
        "definition": "FOREIGN KEY (pid) REFERENCES public.g_parent(id) ON DELETE CASCADE NOT VALID"}
    assert d["constraints"]["g_parent_pkey on public.g_parent"] == {
        "table": "public.g_parent", "type": "primary key", "validated": True, "definition": "PRIMARY KEY (id)"}
    assert d["sequences"]["public.g_seq"] == {
        "type": "integer", "start": 5, "increment": 3, "min": 2, "max": 900, "cache": 4, "cycle": True,
        "owned_by": "public.g_refs.id"}
    assert d["sequences"]["public.g_parent_ida_seq"]["owned_by"] == "public.g_parent.ida"
    conn.execute("SET search_path = pg_catalog")
    viewdef = conn.execute("SELECT pg_get_viewdef('public.g_view'::regclass)").fetchone()[0]
    assert d["views"]["public.g_view"] == {"options": ["security_barrier=true"], "definition": viewdef}
    # Hashed natively from jsonb's own text: the fingerprint of the description is the fingerprint.
    assert conn.execute("SELECT migrate.fingerprint() = migrate.fingerprint_of(migrate.describe())").fetchone()[0]
    assert conn.execute("""SELECT count(*) FROM migrate.all_objects() a
                           WHERE a.hash IS DISTINCT FROM migrate.object_hash(a.kind, a.identity, a.description)
                             AND a.hash IS NOT NULL""").fetchone()[0] == 0


def test_thousands_of_objects_describe_as_each_does_alone(rich):
    conn = rich
    # Past 1,000 objects, the catalogs around them are read whole rather than row by row.
    conn.execute("""DO $$ BEGIN FOR i IN 1..400 LOOP EXECUTE format(
        'CREATE TABLE g_many%s (id int PRIMARY KEY, v text DEFAULT ''x'') INHERITS (g_other)', i); END LOOP; END $$""")
    together = conn.execute("""
        SELECT kind, identity, description, hash FROM migrate.describe_table_objects(NULL, '{}',
            ARRAY(SELECT oid FROM pg_class WHERE relkind IN ('r', 'p', 'f', 'v', 'm', 'S')),
            ARRAY(SELECT indexrelid FROM pg_index), ARRAY(SELECT oid FROM pg_constraint WHERE conrelid <> 0))
        ORDER BY 1, 2""").fetchall()
    alone = conn.execute("""
        SELECT d.kind, d.identity, d.description, d.hash FROM pg_class c,
            migrate.describe_table_objects(NULL, '{}', ARRAY[c.oid], '{}', '{}') d
        WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
        UNION ALL
        SELECT d.kind, d.identity, d.description, d.hash FROM pg_index i,
            migrate.describe_table_objects(NULL, '{}', '{}', ARRAY[i.indexrelid], '{}') d
        UNION ALL
        SELECT d.kind, d.identity, d.description, d.hash FROM pg_constraint k,
            migrate.describe_table_objects(NULL, '{}', '{}', '{}', ARRAY[k.oid]) d
        WHERE k.conrelid <> 0
        ORDER BY 1, 2""").fetchall()
    assert len(together) > 1200
    assert together == alone
    assert {r[1] for r in together} >= {"public.g_many400", "g_many400_pkey on public.g_many400", "public.g_child"}


def test_options_sort_as_the_catalogs_do_and_grants_as_the_database_does(cluster, db):
    # Under an ICU collation "col1=" sorts before "col10" ('=' before digits); bytewise, after.
    # Options are sorted as the catalogs' own "C" collation sorts them, grants by the database's
    # collation, as aclitem::text is: as the SQL description of 0.1.0 did, so that an upgrade
    # finds its recorded schema unchanged.
    name = db[:50] + "_icu"
    with cluster.connect() as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        try:
            c.execute(f"""CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu
                          ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'""")
        except psycopg.errors.FeatureNotSupported:
            # pg_test/setup.sh builds 17 and 18 without ICU; Debian's 15 has it.
            pytest.skip("this server was built without ICU")
        c.execute("DROP ROLE IF EXISTS icu1, icu10")
        c.execute("CREATE ROLE icu1; CREATE ROLE icu10")
    try:
        with cluster.connect(name) as c:
            c.execute("CREATE EXTENSION pg_migrate; CREATE EXTENSION bloom")
            c.execute("""BEGIN; SET LOCAL migrate.guard = off;
                         CREATE TABLE t (a int, b int);
                         CREATE INDEX tb ON t USING bloom (a, b) WITH (col1 = 2, col10 = 3, length = 80);
                         GRANT SELECT ON t TO icu10, icu1; COMMIT""")
            assert c.execute("SELECT array_agg(x ORDER BY x) FROM unnest(ARRAY['col10=3', 'col1=2']) x").fetchone()[0] \
                == ["col1=2", "col10=3"], "the database sorts as bytes do: the test needs ICU"
            d = c.execute("SELECT migrate.describe()").fetchone()[0]
            assert d["indexes"]["public.tb"]["options"] == ["col10=3", "col1=2", "length=80"]
            assert [a.split("=")[0] for a in d["tables"]["public.t"]["acl"]] == ["icu1", "icu10", "postgres"]
            assert c.execute("SELECT migrate.fingerprint() = migrate.fingerprint_of(migrate.describe())").fetchone()[0]
    finally:
        cluster.drop_database(name)
        with cluster.connect() as c:
            c.execute("DROP ROLE IF EXISTS icu1, icu10")
