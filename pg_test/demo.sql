-- The pg_migrate demo, run by `make demo` with psql. Each step says what it shows.
\set ECHO none
\pset footer off
\echo '==> An existing shop database, built before pg_migrate arrived'
CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers, total numeric(10,2) NOT NULL);
INSERT INTO customers (email) SELECT 'customer' || g || '@example.com' FROM generate_series(1, 10000) g;
INSERT INTO orders (customer_id, total) SELECT 1 + g % 10000, (g % 500) + 0.99 FROM generate_series(1, 50000) g;
SELECT (SELECT count(*) FROM customers) AS customers, (SELECT count(*) FROM orders) AS orders;

\echo '==> Install pg_migrate and record that the database is already at version 1'
CREATE EXTENSION pg_migrate;
SELECT * FROM migrate.baseline('1', 'schema as it was before pg_migrate');

\echo '==> Apply version 2: three statements, one transaction, one history row.'
\echo '    The foreign key is added NOT VALID: no scan of customers under a lock.'
\echo '    SELECT * FROM migrate.apply(''2'', $$ ... $$, ''loyalty tiers'', rollback => $$ ... $$);'
SELECT * FROM migrate.apply('2', $$
    CREATE TABLE loyalty_tiers (name text PRIMARY KEY, min_orders int NOT NULL);
    ALTER TABLE customers ADD COLUMN tier text;
    ALTER TABLE customers ADD CONSTRAINT customers_tier_fk
        FOREIGN KEY (tier) REFERENCES loyalty_tiers NOT VALID;
$$, 'loyalty tiers', rollback => $$
    ALTER TABLE customers DROP COLUMN tier;
    DROP TABLE loyalty_tiers;
$$);

\echo '==> Re-applying the same version is a no-op (a deploy pipeline can replay every file)'
SELECT status, version FROM migrate.apply('2', $$
    CREATE TABLE loyalty_tiers (name text PRIMARY KEY, min_orders int NOT NULL);
    ALTER TABLE customers ADD COLUMN tier text;
    ALTER TABLE customers ADD CONSTRAINT customers_tier_fk
        FOREIGN KEY (tier) REFERENCES loyalty_tiers NOT VALID;
$$);

\echo '==> Changing a released migration is refused, with both checksums'
\set ON_ERROR_STOP off
SELECT * FROM migrate.apply('2', $$
    CREATE TABLE loyalty_tiers (name text PRIMARY KEY, min_orders int NOT NULL, discount int);
    ALTER TABLE customers ADD COLUMN tier text;
    ALTER TABLE customers ADD CONSTRAINT customers_tier_fk
        FOREIGN KEY (tier) REFERENCES loyalty_tiers NOT VALID;
$$);
\echo '==> A broken script is refused before anything runs, naming the statement and line'
SELECT * FROM migrate.apply('3', $$
    CREATE TABLE coupons (code text PRIMARY KEY);
    ALTER TABLE orders ADD COLUMN coupon text,
        ADD FOREIGN KEY (coupon) REFERENCES coupons ON DELETE SET NUL NOT VALID;
$$);
\set ON_ERROR_STOP on

\echo '==> Version 3 while a long transaction holds a lock on orders.'
\echo '    Each attempt waits at most migrate.lock_timeout, then rolls back so that the'
\echo '    application''s queries do not queue behind it, and retries after a backoff.'
\! psql -X -q -d demo -c "BEGIN; SELECT count(*) FROM orders; SELECT pg_sleep(2.5); COMMIT;" > /dev/null &
SELECT pg_sleep(0.3) \g /dev/null
SET migrate.lock_timeout = '500ms';
SET migrate.lock_retry_delay = '250ms';
SELECT * FROM migrate.apply('3', $$
    CREATE TABLE coupons (code text PRIMARY KEY);
    ALTER TABLE orders ADD COLUMN coupon text,
        ADD FOREIGN KEY (coupon) REFERENCES coupons ON DELETE SET NULL NOT VALID;
$$, 'coupons');
RESET migrate.lock_timeout;
RESET migrate.lock_retry_delay;

\echo '==> The guard: every session is judged, migrations or not. A hand-made index on orders'
\echo '    (50,000 rows) would block writes for its whole build, so it is refused:'
SET application_name = 'psql-hotfix';
\set ON_ERROR_STOP off
CREATE INDEX orders_total_idx ON orders (total);
\set ON_ERROR_STOP on
\echo '==> The same index built the safe way goes through (and is logged as drift):'
CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);
RESET application_name;

\echo '==> migrate.lint: a CI pipeline can judge a migration against this database without running it'
SELECT statement, line, rule_id, allowed FROM migrate.lint($$
    ALTER TABLE orders ADD COLUMN referral_code text UNIQUE;
    ALTER TABLE orders ALTER COLUMN total TYPE numeric(12,2);
    ALTER TABLE orders ALTER COLUMN total TYPE float8;
    ALTER TABLE orders ADD COLUMN uuid uuid DEFAULT gen_random_uuid();
$$);

\echo '==> Destructive changes need a declared way back: dropping a table only goes through'
\echo '    migrate.apply with a rollback script and an explicit override'
CREATE TABLE legacy_audit AS SELECT * FROM orders LIMIT 100;
SELECT status, version FROM migrate.apply('4', 'DROP TABLE legacy_audit', 'retire legacy_audit',
    rollback => 'CREATE TABLE legacy_audit AS SELECT * FROM orders LIMIT 100',
    allow => ARRAY['drop-table']);

\echo '==> Version 5 mixes ordinary DDL with CREATE INDEX CONCURRENTLY, which cannot run in a'
\echo '    transaction. migrate.apply checks it, records its phases as pending and returns; once'
\echo '    this commits, the background worker runs them in order, each as its own step.'
SELECT status, version FROM migrate.apply('5', $$
    ALTER TABLE orders ADD COLUMN shipped_at timestamptz;
    CREATE INDEX CONCURRENTLY orders_shipped_at ON orders (shipped_at);
    COMMENT ON INDEX orders_shipped_at IS 'for the shipping dashboard';
$$, 'shipping dates');
\echo '    CALL migrate.wait(''5'') waits for it without holding a snapshot the build would wait for:'
CALL migrate.wait('5', '1 minute');
SELECT phase, kind, state, attempts, duration, built_index FROM migrate.steps WHERE version = '5' ORDER BY phase;

\echo '==> The rules (SELECT * FROM migrate.rules for the reasons and safe alternatives)'
SELECT family, string_agg(id, ', ' ORDER BY id) AS rules FROM migrate.rules GROUP BY family ORDER BY family;

\echo '==> The history (migrate.status)'
SELECT * FROM migrate.status;

\echo '==> The DDL log: every DDL command from any session, with the migration it belonged to'
SELECT id, event, command_tag, object_identity, application_name, coalesce(migration_version, '(none)') AS migration,
       coalesce(guard_rule, '') AS guard_rule
FROM migrate.ddl_log ORDER BY logged_at, id;
