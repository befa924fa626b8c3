"""The guard against a real, populated schema: every rule blocks what it must and lets its safe
neighbours through. Each case runs in a transaction that is rolled back, so the shop stays as
built; statements that cannot run in a transaction get a shop of their own."""

import re
import threading
import time

import psycopg
import pytest

from harness import failure, holding_lock

SHOP = """
SET migrate.guard = off;
CREATE DOMAIN positive_int AS int CHECK (VALUE > 0);
CREATE DOMAIN plain_int AS int;
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE FUNCTION volatile_seed() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 42';
CREATE FUNCTION immutable_seed() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 42';

CREATE TABLE customers (id bigint PRIMARY KEY, email text);
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 20000) g;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, qty int, total numeric(10,2),
                     code varchar(20), note text, checked int, placed timestamp, m mood);
INSERT INTO orders SELECT g, 1 + g % 20000, g % 7, g % 500, 'c' || g, NULL, g, now(), 'ok'
FROM generate_series(1, 30000) g;
CREATE INDEX orders_total_idx ON orders (total);
ALTER TABLE orders ADD CONSTRAINT checked_not_null CHECK (checked IS NOT NULL);
ALTER TABLE orders ADD CONSTRAINT qty_not_negative CHECK (qty >= 0) NOT VALID;

CREATE TABLE labels (id bigint, name text, tag varchar(20), kind varchar(20), sku varchar(20));
-- Wide rows: never analysed, the planner's estimate (by the declared widths) must still be
-- above the small-table limit.
INSERT INTO labels SELECT g, 'n' || g, 't' || g, 'k' || g % 9, 's' || g FROM generate_series(1, 60000) g;
CREATE INDEX labels_name ON labels (name);
CREATE INDEX labels_name_c ON labels (name COLLATE "C");
CREATE INDEX labels_tag_lower ON labels (lower(tag));
CREATE INDEX labels_kind_partial ON labels (id) WHERE kind <> 'k0';
CREATE INDEX labels_sku ON labels (sku);
ALTER TABLE labels ADD COLUMN code varchar(20), ADD COLUMN draft varchar(20);
ALTER TABLE labels ADD CONSTRAINT code_set CHECK (length(code) > 0 OR code IS NULL);
ALTER TABLE labels ADD CONSTRAINT draft_set CHECK (length(draft) > 0) NOT VALID;
ALTER TABLE labels ADD COLUMN tags text[];
CREATE INDEX labels_tags ON labels USING gin (tags);
CREATE DOMAIN short_text AS text;
ALTER TABLE labels ADD COLUMN label short_text;
ALTER DOMAIN short_text ADD CONSTRAINT short_text_short CHECK (length(VALUE) < 100) NOT VALID;

CREATE TABLE tiny (id int PRIMARY KEY, v text);
INSERT INTO tiny VALUES (1, 'a'), (2, 'b');

CREATE TABLE events (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, DATE '2025-01-01' + (g % 700) FROM generate_series(1, 30000) g;
-- What only a partition has: an expression index, a CHECK.
CREATE TABLE readings (id bigint, at date NOT NULL, note text) PARTITION BY RANGE (at);
CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO readings SELECT g, DATE '2025-01-01' + (g % 700), 'n' FROM generate_series(1, 30000) g;
CREATE INDEX readings_2025_id_text ON readings_2025 ((id::text));
ALTER TABLE readings_2026 ADD CONSTRAINT note_set CHECK (note <> '');
CREATE TABLE events_2027_checked (id bigint, at date NOT NULL,
    CONSTRAINT in_2027 CHECK (at >= '2027-01-01' AND at < '2028-01-01'));
INSERT INTO events_2027_checked SELECT g, DATE '2027-01-01' + (g % 365) FROM generate_series(1, 20000) g;
CREATE TABLE events_2027_unchecked (id bigint, at date NOT NULL);
INSERT INTO events_2027_unchecked SELECT * FROM events_2027_checked;

CREATE TABLE logs (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE logs_default PARTITION OF logs DEFAULT;
INSERT INTO logs SELECT g, DATE '2020-01-01' + (g % 1000) FROM generate_series(1, 30000) g;
CREATE TABLE logs_2030 (id bigint, at date NOT NULL,
    CONSTRAINT in_2030 CHECK (at >= '2030-01-01' AND at < '2031-01-01'));

CREATE TABLE metrics (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE metrics_default PARTITION OF metrics DEFAULT;
INSERT INTO metrics SELECT g, DATE '2020-01-01' + (g % 1000) FROM generate_series(1, 30000) g;
ALTER TABLE metrics_default ADD CONSTRAINT before_2030 CHECK (at < '2030-01-01');

CREATE MATERIALIZED VIEW order_totals AS SELECT id, customer_id FROM orders;
CREATE UNIQUE INDEX order_totals_id ON order_totals (id);
CREATE SCHEMA archive;
CREATE TABLE archive.old (id int);
CREATE SCHEMA empty_schema;

CREATE TABLE legacy (id bigint, v int);
CREATE TABLE legacy_child () INHERITS (legacy);
INSERT INTO legacy_child SELECT g, g FROM generate_series(1, 30000) g;

CREATE INDEX tiny_v ON tiny (v);
ALTER TABLE events_2025 ADD CONSTRAINT id_present CHECK (id IS NOT NULL);
ALTER TABLE events_2026 ADD CONSTRAINT id_present CHECK (id IS NOT NULL);
CREATE TABLE scores (id bigint, s positive_int, p plain_int);
INSERT INTO scores SELECT g, 1 + g % 100, g FROM generate_series(1, 30000) g;
CREATE TABLE nokey (id bigint, v text);
INSERT INTO nokey SELECT g, 'v' FROM generate_series(1, 30000) g;
CREATE UNIQUE INDEX nokey_id ON nokey (id);
CREATE TABLE nokey_nn (id bigint NOT NULL, v text);
INSERT INTO nokey_nn SELECT g, 'v' FROM generate_series(1, 30000) g;
CREATE UNIQUE INDEX nokey_nn_id ON nokey_nn (id);
CREATE ROLE owner_{db};
CREATE TABLE owned (id int);
INSERT INTO owned VALUES (1);
ALTER TABLE owned OWNER TO owner_{db};
CREATE EXTENSION postgres_fdw;
CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw;
CREATE FOREIGN TABLE remote (a int, b int) SERVER elsewhere;
ANALYZE;
RESET migrate.guard;
"""


def build_tablespace(cluster, name):
    """A second tablespace (its own directory, owned by postgres) for SET TABLESPACE cases."""
    import os
    import shutil

    path = cluster.dir / f"ts_{name}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    shutil.chown(path, "postgres", "postgres")
    os.chmod(path, 0o700)
    with cluster.connect(name) as c:
        c.execute(f"CREATE TABLESPACE fast_{name} LOCATION '{path}'")


def build_shop(cluster, name):
    cluster.create_database(name)
    with cluster.connect(name) as c:
        c.execute(f"DROP ROLE IF EXISTS owner_{name}")
        c.execute(SHOP.replace("{db}", name))
    build_tablespace(cluster, name)
    return name


def drop_shop(cluster, name):
    with cluster.connect(name) as c:
        c.execute("SET migrate.guard = off")
        c.execute(f"DROP OWNED BY owner_{name}")
    cluster.drop_database(name)
    with cluster.connect() as c:
        c.execute(f"DROP TABLESPACE IF EXISTS fast_{name}")
        c.execute(f"DROP ROLE IF EXISTS owner_{name}")


@pytest.fixture(scope="module")
def shop(cluster):
    name = build_shop(cluster, "guard_shop")
    yield name
    drop_shop(cluster, name)


@pytest.fixture(scope="module")
def unanalysed_shop(cluster):
    """The same shop as if never vacuumed nor analysed (reltuples = -1, relpages = 0, what
    a table loaded since its last ANALYZE shows), and kept so: the guard must measure every
    relation it judges, never take missing statistics for an empty table."""
    name = build_shop(cluster, "guard_shop_unanalysed")
    with cluster.connect(name) as c:
        c.execute("""DO $$ DECLARE r regclass; BEGIN
            FOR r IN SELECT c.oid FROM pg_class c
                     WHERE c.relnamespace IN ('public'::regnamespace, 'archive'::regnamespace)
                       AND c.relkind IN ('r', 'm') LOOP
                EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off)', r);
            END LOOP; END $$""")
        c.execute("""UPDATE pg_class SET reltuples = -1, relpages = 0, relallvisible = 0
                     WHERE relnamespace IN ('public'::regnamespace, 'archive'::regnamespace)
                       AND relkind IN ('r', 'm', 'p', 'i')""")
        assert c.execute("SELECT reltuples FROM pg_class WHERE oid = 'orders'::regclass").fetchone()[0] == -1
    yield name
    drop_shop(cluster, name)


def in_shop(sql, name):
    """A case written for guard_shop, for the shop called `name`."""
    if isinstance(sql, list):
        return [in_shop(s, name) for s in sql]
    return sql.replace("guard_shop", name)


@pytest.fixture
def own_shop(cluster, request):
    name = build_shop(cluster, "shop_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40])
    yield name
    drop_shop(cluster, name)


def rule_of(message: str) -> str | None:
    m = re.match(r"pg_migrate: (?:migration \S+: statement \d+ \(line \d+\): )?([a-z-]+): ", message)
    return m.group(1) if m else None


def verdict(cluster, db, statements, settings=()):
    """Runs statements in one transaction, rolled back; returns the rule that refused one."""
    with cluster.connect(db, autocommit=False) as c:
        try:
            for s in settings:
                c.execute(s)
            for s in statements if isinstance(statements, list) else [statements]:
                c.execute(s)
            return None
        except psycopg.Error as e:
            if e.diag.sqlstate == "55000" and rule_of(e.diag.message_primary or ""):
                assert e.diag.message_detail and e.diag.message_hint
                return rule_of(e.diag.message_primary)
            raise
        finally:
            c.rollback()


BLOCKED = [
    ("CREATE INDEX ON orders (qty)", "index-create-blocking"),
    ("CREATE UNIQUE INDEX ON orders (code)", "index-create-blocking"),
    ("DROP INDEX orders_total_idx", "index-drop-blocking"),
    ("REINDEX TABLE orders", "reindex-blocking"),
    ("REINDEX INDEX orders_total_idx", "reindex-blocking"),
    ("ALTER TABLE orders ADD COLUMN r float8 DEFAULT random()", "add-column-volatile-default"),
    ("ALTER TABLE orders ADD COLUMN at timestamptz DEFAULT clock_timestamp()", "add-column-volatile-default"),
    ("ALTER TABLE orders ADD COLUMN u uuid DEFAULT gen_random_uuid()", "add-column-volatile-default"),
    ("ALTER TABLE orders ADD COLUMN s int DEFAULT volatile_seed()", "add-column-volatile-default"),
    ("ALTER TABLE orders ADD COLUMN n bigserial", "add-column-serial"),
    ("ALTER TABLE orders ADD COLUMN i bigint GENERATED ALWAYS AS IDENTITY", "add-column-identity"),
    ("ALTER TABLE orders ADD COLUMN g numeric GENERATED ALWAYS AS (total * 2) STORED", "add-column-generated-stored"),
    ("ALTER TABLE orders ADD COLUMN p positive_int", "add-column-constrained-domain"),
    ("ALTER TABLE orders ALTER COLUMN qty TYPE bigint", "alter-column-type-rewrite"),
    ("ALTER TABLE orders ALTER COLUMN code TYPE varchar(10)", "alter-column-type-rewrite"),
    ("ALTER TABLE orders ALTER COLUMN total TYPE numeric(10,3)", "alter-column-type-rewrite"),
    ("ALTER TABLE orders ALTER COLUMN qty TYPE text USING qty::text", "alter-column-type-rewrite"),
    ("ALTER TABLE orders SET UNLOGGED", "set-logged-unlogged"),
    ("REFRESH MATERIALIZED VIEW order_totals", "refresh-matview-blocking"),
    ("CLUSTER orders USING orders_pkey", "cluster"),
    ("ALTER TABLE orders ALTER COLUMN note SET NOT NULL", "set-not-null-scan"),
    ("ALTER TABLE orders ADD CONSTRAINT qty_small CHECK (qty < 100)", "add-constraint-validating"),
    ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers", "add-constraint-validating"),
    # One statement holds its strongest subcommand's lock while VALIDATE scans the table.
    ("ALTER TABLE orders ADD CONSTRAINT qty_small CHECK (qty < 100) NOT VALID, VALIDATE CONSTRAINT qty_small",
     "validate-in-locking-transaction"),
    ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers NOT VALID, "
     "VALIDATE CONSTRAINT fk", "validate-in-locking-transaction"),
    ("ALTER TABLE orders ADD COLUMN c5 text, VALIDATE CONSTRAINT qty_not_negative", "validate-in-locking-transaction"),
    # The rows are kept, but an index on the column is built again under the lock.
    ('ALTER TABLE labels ALTER COLUMN name TYPE text COLLATE "C"', "alter-column-type-index-rebuild"),
    ("ALTER TABLE labels ALTER COLUMN tag TYPE varchar(40)", "alter-column-type-index-rebuild"),
    ("ALTER TABLE labels ALTER COLUMN kind TYPE text", "alter-column-type-index-rebuild"),
    # GIN's array_ops stores the element type: built again on any change of the column.
    ("ALTER TABLE labels ALTER COLUMN tags TYPE text[]", "alter-column-type-index-rebuild"),
    # What a partition has on the column is redone too.
    ("ALTER TABLE readings ALTER COLUMN id TYPE bigint", "alter-column-type-index-rebuild"),
    ("ALTER TABLE readings ALTER COLUMN note TYPE text", "alter-column-type-check-scan"),
    # The rows are kept, but a validated CHECK on the column is checked again on every row.
    ("ALTER TABLE labels ALTER COLUMN code TYPE varchar(40)", "alter-column-type-check-scan"),
    ("ALTER TABLE orders ADD COLUMN c2 text UNIQUE", "add-column-inline-constraint"),
    ("ALTER TABLE orders ADD COLUMN c3 bigint REFERENCES customers", "add-column-inline-constraint"),
    ("ALTER TABLE orders ADD COLUMN c4 int CHECK (c4 > 0)", "add-column-inline-constraint"),
    ("ALTER TABLE orders ADD CONSTRAINT code_unique UNIQUE (code)", "add-unique-without-index"),
    ("ALTER TABLE customers DROP CONSTRAINT customers_pkey, ADD PRIMARY KEY (id)", "add-unique-without-index"),
    ("ALTER TABLE events ATTACH PARTITION events_2027_unchecked FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')", "attach-partition-scan"),
    ("ALTER TABLE logs ATTACH PARTITION logs_2030 FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')", "attach-partition-scan"),
    ("CREATE TABLE logs_2031 PARTITION OF logs FOR VALUES FROM ('2031-01-01') TO ('2032-01-01')",
     "create-partition-default-scan"),
    ("DROP TABLE tiny", "drop-table"),
    ("DROP TABLE orders CASCADE", "drop-table"),
    ("ALTER TABLE tiny DROP COLUMN v", "drop-column"),
    ("DROP SCHEMA archive CASCADE", "drop-schema"),
    ("TRUNCATE tiny", "truncate"),
    ("ALTER TABLE orders RENAME COLUMN note TO remark", "rename-column"),
    ("ALTER TABLE tiny RENAME TO small", "rename-table"),
    ("ALTER TABLE tiny SET SCHEMA archive", "set-schema"),
    ("CREATE INDEX ON events (at)", "index-partitioned-parent"),
    ("ALTER TABLE events DETACH PARTITION events_2025", "detach-partition-blocking"),
    ("DO $$ BEGIN EXECUTE 'CREATE INDEX ON orders (qty)'; END $$", "index-create-blocking"),
    ("DO $$ BEGIN EXECUTE 'TRUNCATE tiny'; END $$", "truncate"),
    # An inheritance parent counts its children's rows.
    ("ALTER TABLE legacy ALTER COLUMN v TYPE bigint", "alter-column-type-rewrite"),
    ("ALTER TABLE legacy ALTER COLUMN v SET NOT NULL", "set-not-null-scan"),
    ("ALTER TABLE legacy ADD CONSTRAINT v_positive CHECK (v > 0)", "add-constraint-validating"),
    # A partitioned table needs the proof on every partition; logs has none.
    ("ALTER TABLE logs ALTER COLUMN id SET NOT NULL", "set-not-null-scan"),
    ("ALTER TABLE orders SET TABLESPACE fast_guard_shop", "set-tablespace"),
    ("ALTER INDEX orders_total_idx SET TABLESPACE fast_guard_shop", "set-tablespace"),
    ("ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE fast_guard_shop", "set-tablespace"),
    # Every index of a multi-index DROP is judged, not only the first.
    ("DROP INDEX tiny_v, orders_total_idx", "index-drop-blocking"),
    # ALTER INDEX accepts a table name, and renames the table.
    ("ALTER INDEX tiny RENAME TO small", "rename-table"),
    # Making a unique index the primary key marks its nullable columns NOT NULL: a scan.
    ("ALTER TABLE nokey ADD PRIMARY KEY USING INDEX nokey_id", "set-not-null-scan"),
    ("REINDEX DATABASE guard_shop", "reindex-blocking"),
    ("REINDEX SYSTEM guard_shop", "reindex-blocking"),
    ("ALTER DOMAIN positive_int ADD CONSTRAINT below_million CHECK (VALUE < 1000000)", "add-constraint-validating"),
    ("ALTER DOMAIN plain_int SET NOT NULL", "set-not-null-scan"),
    # Validating a domain's constraint holds SHARE on every table using it (writes wait).
    ("ALTER DOMAIN short_text VALIDATE CONSTRAINT short_text_short", "domain-validate-blocking"),
    # Data loss reached through dependencies, caught by the sql_drop backstop (or, for
    # TRUNCATE, by following foreign keys): the statement names only a new table.
    (["CREATE TABLE fresh (id int PRIMARY KEY)",
      "ALTER TABLE tiny ADD CONSTRAINT tiny_fresh FOREIGN KEY (id) REFERENCES fresh NOT VALID",
      "TRUNCATE fresh CASCADE"], "truncate"),
    (["CREATE TABLE fresh (id int, v text)", "ALTER TABLE tiny INHERIT fresh", "DROP TABLE fresh CASCADE"], "drop-table"),
    ("DROP OWNED BY owner_guard_shop", "drop-table"),
    ("DROP DOMAIN positive_int CASCADE", "drop-column"),
    ("DROP TYPE mood CASCADE", "drop-column"),
]


@pytest.mark.parametrize("sql,rule", BLOCKED, ids=[r + ":" + (s if isinstance(s, str) else s[-1])[:40] for s, r in BLOCKED])
def test_each_rule_blocks(cluster, shop, sql, rule):
    assert verdict(cluster, shop, sql) == rule


@pytest.mark.parametrize("sql,rule", BLOCKED, ids=[r + ":" + (s if isinstance(s, str) else s[-1])[:40] for s, r in BLOCKED])
def test_each_rule_blocks_on_tables_never_analysed(cluster, unanalysed_shop, sql, rule):
    assert verdict(cluster, unanalysed_shop, in_shop(sql, unanalysed_shop)) == rule


def test_type_change_to_timestamptz_depends_on_the_session_timezone(cluster, shop):
    change = "ALTER TABLE orders ALTER COLUMN placed TYPE timestamptz"
    assert verdict(cluster, shop, change, ["SET TimeZone = 'America/New_York'"]) == "alter-column-type-rewrite"
    assert verdict(cluster, shop, change, ["SET TimeZone = 'UTC'"]) is None


def test_a_type_change_names_the_indexes_it_rebuilds_and_keeps_the_others(cluster, shop):
    with cluster.connect(shop, autocommit=False) as c:
        with pytest.raises(psycopg.Error) as refused:
            c.execute('ALTER TABLE labels ALTER COLUMN name TYPE text COLLATE "C"')
        c.rollback()
    message = refused.value.diag.message_primary
    # labels_name_c has its collation written out, and "C" it stays.
    assert "public.labels_name" in message and "labels_name_c" not in message, message
    # Once it is accepted, the kept index is the same relation, the rebuilt one a new file.
    with cluster.connect(shop, autocommit=False) as c:
        files = "SELECT relname, relfilenode FROM pg_class WHERE relname IN ('labels_name', 'labels_name_c')"
        before = dict(c.execute(files).fetchall())
        c.execute("SET LOCAL migrate.allow = 'alter-column-type-index-rebuild'")
        c.execute('ALTER TABLE labels ALTER COLUMN name TYPE text COLLATE "C"')
        after = dict(c.execute(files).fetchall())
        c.rollback()
    assert after["labels_name_c"] == before["labels_name_c"]
    assert after["labels_name"] != before["labels_name"]


def test_a_partition_of_a_table_that_is_not_partitioned_gets_postgresqls_own_error(cluster, shop):
    with cluster.connect(shop) as c:
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
    # The guard once read the partition key of whatever the statement named: a NULL pointer.
    for parent in ("tiny", "order_totals"):
        with pytest.raises(psycopg.Error) as refused:
            verdict(cluster, shop, f"CREATE TABLE p_of_{parent} PARTITION OF {parent} FOR VALUES IN (1)")
        assert not refused.value.diag.message_primary.startswith("pg_migrate"), refused.value
    with cluster.connect(shop) as c:
        assert c.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started


def test_the_guard_evaluates_a_partition_bound_without_keeping_what_it_did(cluster, shop):
    # Transforming a bound evaluates it: the caller's function must act once, as PostgreSQL
    # calls it, not once more for the guard.
    with cluster.connect(shop, autocommit=False) as c:
        c.execute("CREATE TABLE bound_calls (n int)")
        c.execute("CREATE FUNCTION bound_at(d date) RETURNS date LANGUAGE plpgsql VOLATILE AS "
                  "$$BEGIN INSERT INTO bound_calls VALUES (1); RETURN d; END$$")
        c.execute("CREATE TABLE metrics_2040 PARTITION OF metrics "
                  "FOR VALUES FROM (bound_at('2040-01-01')) TO ('2041-01-01')")
        c.execute("CREATE TABLE metrics_2041 (id bigint, at date NOT NULL, "
                  "CONSTRAINT in_2041 CHECK (at >= '2041-01-01' AND at < '2042-01-01'))")
        c.execute("ALTER TABLE metrics ATTACH PARTITION metrics_2041 "
                  "FOR VALUES FROM (bound_at('2041-01-01')) TO ('2042-01-01')")
        calls = c.execute("SELECT count(*) FROM bound_calls").fetchone()[0]
        c.rollback()
    assert calls == 2  # one CREATE, one ATTACH


def test_validate_is_refused_while_this_transaction_holds_the_lock(cluster, shop):
    add = "ALTER TABLE orders ADD CONSTRAINT qty_small CHECK (qty < 100) NOT VALID"
    validate = "ALTER TABLE orders VALIDATE CONSTRAINT qty_small"
    assert verdict(cluster, shop, [add, validate]) == "validate-in-locking-transaction"
    # In a transaction of its own (qty_not_negative was added NOT VALID and committed): fine.
    assert verdict(cluster, shop, "ALTER TABLE orders VALIDATE CONSTRAINT qty_not_negative") is None


ALLOWED = [
    "ALTER TABLE orders ADD COLUMN nullable_col text",
    "ALTER TABLE orders ADD COLUMN zero int DEFAULT 0",
    "ALTER TABLE orders ADD COLUMN zero_nn int NOT NULL DEFAULT 0",
    "ALTER TABLE orders ADD COLUMN stamped timestamptz DEFAULT now()",
    "ALTER TABLE orders ADD COLUMN seeded int DEFAULT immutable_seed()",
    "ALTER TABLE orders ADD COLUMN plain plain_int",
    "ALTER TABLE orders ADD CONSTRAINT qty_small CHECK (qty < 100) NOT VALID",
    "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers NOT VALID",
    "ALTER TABLE orders ALTER COLUMN checked SET NOT NULL",
    "ALTER TABLE orders ALTER COLUMN qty SET DEFAULT 1",
    "ALTER TABLE orders ALTER COLUMN qty DROP DEFAULT",
    "ALTER TABLE orders ALTER COLUMN code TYPE varchar(40)",
    "ALTER TABLE orders ALTER COLUMN code TYPE text",
    # A plain index on the column is kept: its class and collation come out the same.
    "ALTER TABLE labels ALTER COLUMN sku TYPE varchar(40)",
    "ALTER TABLE labels ALTER COLUMN sku TYPE text",
    "ALTER TABLE labels ALTER COLUMN name TYPE text",
    # A NOT VALID check is added back NOT VALID: nothing is read.
    "ALTER TABLE labels ALTER COLUMN draft TYPE varchar(40)",
    # No default partition to scan; a default one whose CHECK excludes the new bound.
    "CREATE TABLE events_2028 PARTITION OF events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')",
    "CREATE TABLE metrics_2030 PARTITION OF metrics FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')",
    # It exists: nothing is created, nothing scanned.
    "CREATE TABLE IF NOT EXISTS logs_default PARTITION OF logs FOR VALUES FROM ('2031-01-01') TO ('2032-01-01')",
    "ALTER TABLE orders ALTER COLUMN total TYPE numeric(12,2)",
    "ALTER TABLE orders ALTER COLUMN qty TYPE int USING qty",
    "ALTER TABLE orders ALTER COLUMN qty SET STATISTICS 500",
    "ALTER TABLE orders SET (fillfactor = 90)",
    # SHARE UPDATE EXCLUSIVE, as VALIDATE's own: writes go on during the scan.
    "ALTER TABLE orders SET (fillfactor = 90), VALIDATE CONSTRAINT qty_not_negative",
    "ALTER TABLE orders SET TABLESPACE pg_default",
    "ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE pg_default",
    "ALTER TABLE orders SET ACCESS METHOD heap",
    "ALTER TYPE mood ADD VALUE 'happy'",
    # The guard analyses a copy of the statement: named arguments survive it.
    "ALTER TABLE orders ADD COLUMN ttl interval DEFAULT make_interval(days => 30)",
    "ALTER TABLE tiny ALTER COLUMN v TYPE text USING v || extract(day FROM make_interval(days => 1))",
    # IF [NOT] EXISTS forms that do nothing.
    "ALTER TABLE orders DROP COLUMN IF EXISTS no_such_column",
    "ALTER TABLE orders ADD COLUMN IF NOT EXISTS qty bigserial",
    "CREATE INDEX IF NOT EXISTS orders_total_idx ON orders (qty)",
    # A foreign table's columns hold no data here.
    "ALTER FOREIGN TABLE remote DROP COLUMN b",
    # Every partition of events has a validated CHECK (id IS NOT NULL).
    "ALTER TABLE events ALTER COLUMN id SET NOT NULL",
    "ALTER TABLE nokey_nn ADD PRIMARY KEY USING INDEX nokey_nn_id",
    "ALTER DOMAIN positive_int ADD CONSTRAINT below_million CHECK (VALUE < 1000000) NOT VALID",
    "ALTER INDEX tiny_v RENAME TO tiny_v_idx",
    "COMMENT ON TABLE orders IS 'orders'",
    "GRANT SELECT ON orders TO PUBLIC",
    "CREATE TABLE fresh (id int)",
    "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE TRIGGER t BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY order_totals",
    "CREATE INDEX events_at ON ONLY events (at)",
    "ALTER TABLE events ATTACH PARTITION events_2027_checked FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
    "ALTER TABLE orders RENAME COLUMN note TO _deprecated_note",
    "ALTER TABLE tiny RENAME TO _deprecated_tiny",
    "DROP SCHEMA empty_schema CASCADE",
    "DROP VIEW IF EXISTS no_such_view",
    "ANALYZE orders",
    # Small tables: lock and scan hazards do not matter.
    "CREATE INDEX ON tiny (v)",
    "ALTER TABLE tiny ADD COLUMN r float8 DEFAULT random()",
    "ALTER TABLE tiny ALTER COLUMN id TYPE bigint",
    "ALTER TABLE tiny ALTER COLUMN v SET NOT NULL",
    "ALTER TABLE tiny ADD CONSTRAINT v_unique UNIQUE (v)",
    "CLUSTER tiny USING tiny_pkey",
    # Anything on a table created in the same transaction.
    ["CREATE TABLE scratch (id int, v text)",
     "INSERT INTO scratch SELECT g, 'x' FROM generate_series(1, 50000) g",
     "ANALYZE scratch",
     "CREATE INDEX ON scratch (v)",
     "ALTER TABLE scratch ADD COLUMN r float8 DEFAULT random()",
     "ALTER TABLE scratch ALTER COLUMN id TYPE bigint",
     "ALTER TABLE scratch RENAME COLUMN v TO w",
     "TRUNCATE scratch",
     "DROP TABLE scratch"],
]


@pytest.mark.parametrize("sql", ALLOWED, ids=[(s if isinstance(s, str) else s[0])[:50] for s in ALLOWED])
def test_safe_neighbours_are_allowed(cluster, shop, sql):
    assert verdict(cluster, shop, sql) is None


@pytest.mark.parametrize("sql", ALLOWED, ids=[(s if isinstance(s, str) else s[0])[:50] for s in ALLOWED])
def test_safe_neighbours_are_allowed_on_tables_never_analysed(cluster, unanalysed_shop, sql):
    assert verdict(cluster, unanalysed_shop, in_shop(sql, unanalysed_shop)) is None


def test_concurrent_forms_run_outside_a_transaction(cluster, own_shop):
    with cluster.connect(own_shop) as c:
        c.execute("CREATE INDEX CONCURRENTLY orders_qty ON orders (qty)")
        c.execute("DROP INDEX CONCURRENTLY orders_qty")
        c.execute("REINDEX INDEX CONCURRENTLY orders_total_idx")
        c.execute("ALTER TABLE events DETACH PARTITION events_2025 CONCURRENTLY")
        c.execute("CREATE UNIQUE INDEX CONCURRENTLY orders_code ON orders (code)")
        c.execute("ALTER TABLE orders ADD CONSTRAINT orders_code_unique UNIQUE USING INDEX orders_code")
        c.execute("VACUUM orders")
        c.execute("VACUUM FULL tiny")
        f = failure(c, "VACUUM FULL orders")
        assert rule_of(f.message) == "vacuum-full"
        assert failure(c, "VACUUM FULL").message.startswith("pg_migrate: vacuum-full: VACUUM FULL rewrites every table")
        c.execute("CLUSTER")  # nothing is clustered, so it does nothing
        # A temporary table is nobody else's business, whatever its size and age.
        c.execute("CREATE TEMP TABLE scratch AS SELECT g AS id FROM generate_series(1, 30000) g")
        c.execute("ANALYZE scratch")
        c.execute("CREATE INDEX ON scratch (id)")
        c.execute("ALTER TABLE scratch ADD COLUMN n bigserial")
        c.execute("TRUNCATE scratch")
        c.execute("DROP TABLE scratch")


def test_refusal_names_rule_lock_rows_and_safe_sql(cluster, shop):
    with cluster.connect(shop) as c:
        f = failure(c, "CREATE INDEX orders_qty ON orders (qty)")
    assert f.sqlstate == "55000"
    assert f.message == "pg_migrate: index-create-blocking: CREATE INDEX on public.orders blocks writes while it builds"
    assert "SHARE lock" in f.detail and "an estimated 30,000 rows" in f.detail
    assert "CREATE INDEX CONCURRENTLY orders_qty ON public.orders (qty);" in f.hint


def test_an_error_in_the_command_keeps_its_position(cluster, shop):
    with cluster.connect(shop) as c:
        with pytest.raises(psycopg.errors.UndefinedObject) as e:
            c.execute("CREATE TABLE t (x no_such_type)")
    assert e.value.diag.statement_position == "19"
    assert "pg_migrate" not in str(e.value)


def test_warn_and_off_modes_and_who_may_set_them(cluster, shop):
    with cluster.connect(shop, autocommit=False) as c:
        warnings = []
        c.add_notice_handler(lambda d: warnings.append((d.severity_nonlocalized, d.message_primary)))
        c.execute("SET LOCAL migrate.guard = warn")
        c.execute("CREATE INDEX orders_qty ON orders (qty)")
        assert ("WARNING", "pg_migrate: index-create-blocking: CREATE INDEX on public.orders blocks writes while it builds") in warnings
        logged = c.execute(
            "SELECT command_tag, object_identity, current_user_name FROM migrate.ddl_log "
            "WHERE event = 'guard_warning' AND guard_rule = 'index-create-blocking'").fetchall()
        assert logged == [("CREATE INDEX", "public.orders", "postgres")]
        c.execute("SET LOCAL migrate.guard = off")
        c.execute("DROP TABLE tiny")
        c.rollback()
    with cluster.connect(shop) as c:
        c.execute("CREATE ROLE dev LOGIN")
        try:
            with cluster.connect(shop, user="dev") as d:
                for value in ("off", "warn"):
                    assert failure(d, f"SET migrate.guard = {value}").sqlstate == "42501"
                assert failure(d, "SET migrate.small_table_threshold = 1000000000").sqlstate == "42501"
        finally:
            c.execute("DROP ROLE dev")


@pytest.fixture
def admin_role(cluster, shop):
    with cluster.connect(shop) as c:
        c.execute("CREATE ROLE deployer LOGIN IN ROLE migrate_admin")
        c.execute("CREATE ROLE intruder LOGIN")
        c.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO deployer, intruder")
        c.execute("GRANT CREATE ON SCHEMA public TO deployer, intruder")
        c.execute("ALTER TABLE orders OWNER TO deployer")
    yield "deployer"
    with cluster.connect(shop) as c:
        c.execute("ALTER TABLE orders OWNER TO postgres")
        c.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM deployer, intruder")
        c.execute("REVOKE CREATE ON SCHEMA public FROM deployer, intruder")
        c.execute("DROP OWNED BY deployer, intruder")
        c.execute("DROP ROLE deployer")
        c.execute("DROP ROLE intruder")


def test_admins_override_one_rule_for_one_transaction_and_it_is_logged(cluster, shop, admin_role):
    with cluster.connect(shop, user="deployer", autocommit=False) as c:
        c.execute("SET LOCAL migrate.allow = 'index-create-blocking'")
        c.execute("CREATE INDEX orders_qty ON orders (qty)")
        row = c.execute(
            "SELECT event, guard_rule, object_identity, current_user_name FROM migrate.ddl_log "
            "WHERE event = 'guard_override'").fetchone()
        assert row == ("guard_override", "index-create-blocking", "public.orders", "deployer")
        # One rule only: another one is still refused.
        f = failure(c, "ALTER TABLE orders ALTER COLUMN qty TYPE bigint")
        assert rule_of(f.message) == "alter-column-type-rewrite"
    with cluster.connect(shop, user="deployer") as c:
        # A session-wide SET does not carry over into later transactions.
        warnings = []
        c.add_notice_handler(lambda d: warnings.append(d.message_primary))
        c.execute("SET migrate.allow = 'index-create-blocking'")
        f = failure(c, "CREATE INDEX orders_qty ON orders (qty)")
        assert rule_of(f.message) == "index-create-blocking"
        assert any("set in an earlier transaction and is ignored" in w for w in warnings)


def test_an_override_set_in_an_earlier_transaction_of_the_same_message_is_stale(cluster, shop, admin_role):
    # Every transaction of one query message starts at the same timestamp: only the
    # transaction's own (local) id tells them apart.
    out = cluster.psql(
        shop, "-U", "deployer", "-v", "ON_ERROR_STOP=1", "-c",
        "SET migrate.allow = 'index-create-blocking'; COMMIT; BEGIN; "
        "CREATE INDEX orders_qty ON orders (qty); COMMIT;",
        check=False)
    assert out.returncode != 0
    assert "index-create-blocking" in out.stderr, out.stderr
    assert "set in an earlier transaction and is ignored" in out.stderr, out.stderr
    with cluster.connect(shop) as c:
        assert c.execute("SELECT to_regclass('orders_qty')").fetchone()[0] is None


def test_non_admins_can_neither_override_nor_bypass(cluster, shop, admin_role):
    with cluster.connect(shop, user="intruder", autocommit=False) as c:
        c.execute("SET LOCAL migrate.allow = 'index-create-blocking'")
        f = failure(c, "CREATE INDEX orders_qty ON orders (qty)")
        assert f.sqlstate == "42501"
        assert 'role "intruder" may not override the guard' in f.message
        assert "GRANT migrate_admin" in f.hint


def test_data_loss_overrides_need_apply_with_a_rollback_script(cluster, shop):
    with cluster.connect(shop, autocommit=False) as c:
        c.execute("SET LOCAL migrate.allow = 'drop-table'")
        f = failure(c, "DROP TABLE tiny")
        assert "can be overridden only inside migrate.apply" in f.message
    with cluster.connect(shop, autocommit=False) as c:
        f = failure(c, "SELECT migrate.apply('1', 'DROP TABLE tiny', allow => ARRAY['drop-table'])")
        assert "can be overridden only inside migrate.apply" in f.message
    with cluster.connect(shop, autocommit=False) as c:
        row = c.execute(
            "SELECT status FROM migrate.apply('1', 'DROP TABLE tiny', "
            "rollback => 'CREATE TABLE tiny (id int PRIMARY KEY, v text)', allow => ARRAY['drop-table'])").fetchone()
        assert row == ("applied",)
        assert c.execute("SELECT allowed_rules FROM migrate.history WHERE version = '1'").fetchone()[0] == ["drop-table"]
        assert c.execute(
            "SELECT migration_version, guard_rule FROM migrate.ddl_log WHERE event = 'guard_override'").fetchone() == ("1", "drop-table")
        c.rollback()


def test_apply_refuses_before_running_anything(cluster, shop):
    with cluster.connect(shop) as c:
        script = "CREATE TABLE made_first (id int);\nALTER TABLE tiny ADD COLUMN x int;\nCREATE INDEX ON orders (qty);"
        f = failure(c, "SELECT migrate.apply('7', %s)", (script,))
        assert f.message.startswith("pg_migrate: migration 7: statement 3 (line 3): index-create-blocking: ")
        assert c.execute("SELECT to_regclass('made_first') IS NULL").fetchone()[0]
        # Allowed for this migration, it runs.
        row = c.execute("SELECT status FROM migrate.apply('7', %s, allow => ARRAY['index-create-blocking'])", (script,)).fetchone()
        assert row == ("applied",)
        assert failure(c, "SELECT migrate.apply('8', 'SELECT 1', allow => ARRAY['no-such-rule'])").sqlstate == "22023"


def test_lint_reports_without_running(cluster, shop):
    script = """CREATE TABLE brand_new (id int);
CREATE INDEX ON brand_new (id);
CREATE INDEX ON orders (qty);
ALTER TABLE orders
    ADD COLUMN r float8 DEFAULT random();
DROP TABLE tiny;
"""
    with cluster.connect(shop) as c:
        rows = c.execute("SELECT statement, line, rule_id, allowed FROM migrate.lint(%s, ARRAY['drop-table'])", (script,)).fetchall()
        assert rows == [
            (3, 3, "index-create-blocking", False),
            (4, 4, "add-column-volatile-default", False),
            (5, 6, "drop-table", True),
        ]
        full = c.execute("SELECT message, hint FROM migrate.lint('CREATE INDEX ON orders (qty)')").fetchone()
        assert full[0].startswith("pg_migrate: index-create-blocking: ")
        assert "CONCURRENTLY" in full[1]
        assert c.execute("SELECT to_regclass('brand_new') IS NULL").fetchone()[0]
        assert c.execute("SELECT count(*) FROM migrate.lint('SELECT 1')").fetchone()[0] == 0
        assert failure(c, "SELECT * FROM migrate.lint('CREATE INDEX ON')").sqlstate == "42601"


def test_rules_view_lists_every_rule(cluster, shop):
    with cluster.connect(shop) as c:
        rows = c.execute("SELECT id, family, catches, why, safe_alternative FROM migrate.rules").fetchall()
    ids = {r[0] for r in rows}
    assert {rule for _, rule in BLOCKED} <= ids
    assert {"vacuum-full", "validate-in-locking-transaction", "lock-timeout"} <= ids
    assert all(all(r) for r in rows)


def test_a_plain_alter_behind_a_long_transaction_fails_after_lock_timeout(cluster, shop):
    with cluster.connect(shop) as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("SET migrate.lock_timeout = '500ms'")
        assert c.execute("SHOW lock_timeout").fetchone()[0] == "0"
        with holding_lock(cluster, shop, "SELECT count(*) FROM orders"):
            started = time.monotonic()
            f = failure(c, "ALTER TABLE orders ADD COLUMN harmless int")
            waited = time.monotonic() - started
        assert f.sqlstate == "55P03"
        assert any("lock_timeout set to 500ms" in n and "ACCESS EXCLUSIVE" in n for n in notices)
        # Without the guard it would have waited for the 10 s transaction; with it, ~0.5 s.
        assert waited < 3, waited
        # The setting was for that transaction only.
        assert c.execute("SHOW lock_timeout").fetchone()[0] == "0"


def test_readers_are_not_stalled_by_a_plain_alter_behind_a_long_transaction(cluster, own_shop):
    from harness import Stopwatch

    with cluster.connect(own_shop) as c:
        c.execute("SET migrate.lock_timeout = '300ms'")
        with Stopwatch(cluster, own_shop, "SELECT count(*) FROM tiny") as readers:
            with holding_lock(cluster, own_shop, "SELECT count(*) FROM tiny"):
                alter = threading.Thread(target=lambda: failure(c, "ALTER TABLE tiny ADD COLUMN x int"))
                alter.start()
                time.sleep(2)
            alter.join()
        assert readers.worst < 1.0, readers.worst


def test_a_rewrite_the_rules_could_not_judge_is_stopped_by_the_backstop(cluster, shop):
    # While another session holds ACCESS EXCLUSIVE, the guard cannot read the table's
    # relcache to analyse the USING expression, so no rule fires; once the lock is free the
    # rewrite starts, and the table_rewrite trigger stops it.
    holder = cluster.connect(shop, autocommit=False)
    holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        with cluster.connect(shop) as c:
            c.execute("SET migrate.lock_timeout = '10s'")
            f = failure(c, "ALTER TABLE orders ALTER COLUMN qty TYPE bigint USING qty::bigint")
        assert rule_of(f.message) == "table-rewrite", f.message
        assert "column type change" in f.message
    finally:
        release.join()  # a connection is not shared between threads at once
        holder.close()


def test_an_explicit_statement_timeout_of_zero_is_kept(cluster, shop):
    with cluster.connect(shop, autocommit=False) as c:
        c.add_notice_handler(lambda d: None)
        c.execute("ALTER TABLE tiny ADD COLUMN z1 int")
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "10min"
        c.rollback()
        c.execute("SET statement_timeout = 0")
        c.execute("ALTER TABLE tiny ADD COLUMN z2 int")
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "0"
        assert c.execute("SHOW lock_timeout").fetchone()[0] == "2s"
        c.rollback()


def test_creating_a_partition_gets_a_lock_timeout(cluster, shop):
    with cluster.connect(shop, autocommit=False) as c:
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("CREATE TABLE events_2030 PARTITION OF events FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')")
        assert any("needs an ACCESS EXCLUSIVE lock: lock_timeout set to 2s" in n for n in notices), notices
        c.rollback()


def test_refusals_in_a_superuser_restore_say_how_to_restore(cluster, shop):
    with cluster.connect(shop) as c:
        c.execute("SET check_function_bodies = off")
        f = failure(c, "CREATE INDEX ON orders (qty)")
    assert "Restoring a dump? Run the restore with PGOPTIONS='-c migrate.guard=off'." in f.hint


def test_non_superusers_cannot_switch_off_the_guards_timeout(cluster, shop):
    with cluster.connect(shop) as c:
        c.execute("CREATE ROLE dev2 LOGIN")
        try:
            with cluster.connect(shop, user="dev2") as d:
                assert failure(d, "SET migrate.lock_timeout = 0").sqlstate == "42501"
                assert failure(d, "SET migrate.statement_timeout = 0").sqlstate == "42501"
        finally:
            c.execute("DROP ROLE dev2")


def test_a_never_analysed_table_locked_by_another_session_is_not_taken_for_empty(cluster, db, conn):
    # 100k rows, never vacuumed nor analysed: reltuples = -1, relpages = 0.
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE unseen (id int) WITH (autovacuum_enabled = off)")
    conn.execute("INSERT INTO unseen SELECT generate_series(1, 100000)")
    conn.execute("RESET migrate.guard")
    assert conn.execute("SELECT reltuples, relpages FROM pg_class WHERE relname = 'unseen'").fetchone() == (-1, 0)
    # Another session holds ACCESS EXCLUSIVE: the guard cannot open the table to measure it.
    with holding_lock(cluster, db, "LOCK TABLE unseen IN ACCESS EXCLUSIVE MODE"):
        f = failure(conn, "CREATE INDEX ON unseen (id)")
    assert f.sqlstate == "55000" and rule_of(f.message) == "index-create-blocking", f
    assert "size unknown: never analysed, and locked by another session" in f.detail, f.detail
    # Measured once it can be opened: 100k rows are not small either way.
    f = failure(conn, "CREATE INDEX ON unseen (id)")
    assert rule_of(f.message) == "index-create-blocking" and "an estimated" in f.detail, f.detail
