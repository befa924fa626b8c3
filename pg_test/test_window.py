"""Expand/contract windows: migrate.expand, the worker's backfill and publication, two
application versions writing at once, migrate.contract and migrate.abort, against a real
server with real concurrent sessions and a killed worker."""

import json
import os
import random
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from harness import PG_BIN, failure, wait_until, worker_evidence, worker_pid

LOCK_TIMEOUT_S = 2.0  # migrate.lock_timeout's default
# A new-version pod: its connections put the published schema first.
NEW_PATH = "-csearch_path=public_v43,public"

DDL = """
    ALTER TABLE orders ALTER COLUMN amount TYPE bigint,
                       DROP COLUMN legacy_note,
                       ADD COLUMN fulfillment_status varchar(50) NOT NULL DEFAULT 'pending';
    ALTER TABLE orders RENAME COLUMN old_status TO status;
"""


def make_orders(conn, rows: int) -> None:
    conn.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL DEFAULT 0, "
        "old_status text, legacy_note text DEFAULT 'n')"
    )
    conn.execute(
        "INSERT INTO orders SELECT g, g %% 100000, 'new', 'n' FROM generate_series(1, %s) g", (rows,)
    )
    conn.execute("ANALYZE orders")


def window(conn, version: str) -> dict:
    cur = conn.execute("SELECT * FROM migrate.windows WHERE version = %s", (version,))
    row = cur.fetchone()
    return dict(zip([d.name for d in cur.description], row)) if row else {}


def out_of_step(conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM orders WHERE _migrate_43_amount IS DISTINCT FROM amount"
    ).fetchone()[0]


def leftovers(conn) -> list:
    """Whatever a refused expand could have left: window rows, history rows, columns,
    triggers, functions, schemas."""
    return conn.execute(
        """SELECT 'window ' || version FROM migrate.window_history
           UNION ALL SELECT 'history ' || version FROM migrate.history
           UNION ALL SELECT 'column ' || attname FROM pg_attribute
                     WHERE attrelid = 'orders'::regclass AND attname LIKE '\\_migrate\\_%'
           UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'zz\\_migrate%'
           UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE '\\_migrate\\_%'
           UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname LIKE '%\\_v43'"""
    ).fetchall()


class Client:
    """One application instance writing in a loop: inserts, updates, upserts, deletes, all
    with RETURNING, and COPY for the old version. It records the amount each key it owns
    should have, and every error."""

    def __init__(self, cluster, db, side: str, first_key: int, version: str = "43",
                 new_status: str = "status", new_table: str = "orders"):
        self.cluster, self.db, self.side = cluster, db, side
        # The window's version, and what the new version calls the old status column and
        # the table.
        self.version, self.new_status, self.new_table = version, new_status, new_table
        self.next_key = first_key
        self.expected: dict[int, int] = {}
        self.errors: list[tuple[float, str, str]] = []
        self.worst = 0.0
        self.writes = 0
        self.in_flight = 0
        # When each key's last write returned: after contract, an old client's write to a
        # name that is still there (amount) lands in the new column only, as it should.
        self.written_at: dict[int, float] = {}
        self.stop = threading.Event()
        # Held for each write: the test takes it to read a quiet state.
        self.writing = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def table(self) -> str:
        if self.side == "pooled":
            return f"public_v{self.version}.{self.new_table}"
        return "orders" if self.side == "old" else self.new_table

    def columns(self) -> tuple[str, str]:
        # The old version names the status column old_status; the new one, status.
        return ("amount", "old_status") if self.side == "old" else ("amount", self.new_status)

    def amount(self) -> int:
        # Within integer: during the window the old column takes back what the new one gets.
        return random.randint(1, 2_000_000_000)

    def one(self, c) -> None:
        amount_col, status_col = self.columns()
        table = self.table()
        op = random.random()
        key = self.next_key
        self.in_flight = key
        if self.side == "pooled":
            c.execute("BEGIN")
            c.execute(f"SET LOCAL migrate.client_version = '{self.version}'")
        if op < 0.35 or not self.expected:
            self.next_key += 1
            amount = self.amount()
            row = c.execute(
                f"INSERT INTO {table} (id, {amount_col}, {status_col}) VALUES (%s, %s, %s) "
                f"RETURNING id, {amount_col}",
                (key, amount, self.side),
            ).fetchone()
            assert row == (key, amount), row
            self.expected[key] = amount
        elif op < 0.6:
            key = self.in_flight = random.choice(list(self.expected))
            amount = self.amount()
            row = c.execute(
                f"UPDATE {table} SET {amount_col} = %s WHERE id = %s RETURNING {amount_col}",
                (amount, key),
            ).fetchone()
            assert row == (amount,), row
            self.expected[key] = amount
        elif op < 0.8:
            key = self.in_flight = random.choice(list(self.expected))
            amount = self.amount()
            row = c.execute(
                f"INSERT INTO {table} AS o (id, {amount_col}) VALUES (%s, %s) "
                f"ON CONFLICT (id) DO UPDATE SET {amount_col} = EXCLUDED.{amount_col} "
                f"RETURNING o.{amount_col}",
                (key, amount),
            ).fetchone()
            assert row == (amount,), row
            self.expected[key] = amount
        elif op < 0.9:
            key = self.in_flight = random.choice(list(self.expected))
            row = c.execute(f"DELETE FROM {table} WHERE id = %s RETURNING id", (key,)).fetchone()
            assert row == (key,), row
            del self.expected[key]
        elif self.side == "old":
            self.next_key += 1
            amount = self.amount()
            with c.cursor().copy("COPY orders (id, amount, old_status) FROM STDIN") as copy:
                copy.write_row((key, amount, "copied"))
            self.expected[key] = amount
        if self.side == "pooled":
            c.execute("COMMIT")

    def run(self) -> None:
        extra = {"options": f"-csearch_path=public_v{self.version},public"} if self.side == "new" else {}
        while not self.stop.is_set():
            try:
                with self.cluster.connect(self.db, **extra) as c:
                    # The test cluster commits asynchronously; what this client was told is
                    # committed must survive the crash of a killed worker.
                    c.execute("SET synchronous_commit = on")
                    self.loop(c)
            except psycopg.OperationalError:
                # The server restarted under it (a crashed worker takes every backend with
                # it): the write in flight may or may not have committed.
                self.expected.pop(self.in_flight, None)
                time.sleep(0.2)

    def loop(self, c) -> None:
        while not self.stop.is_set():
            with self.writing:
                started = time.monotonic()
                try:
                    self.one(c)
                    self.writes += 1
                    self.written_at[self.in_flight] = time.monotonic()
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as e:
                    if self.side == "pooled":
                        c.execute("ROLLBACK")
                    self.errors.append((time.monotonic(), e.diag.sqlstate or "", str(e)))
                    time.sleep(0.05)
                self.worst = max(self.worst, time.monotonic() - started)
            time.sleep(0.002)

    def start(self) -> "Client":
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def assert_each_write_seen_by_both(conn, clients, up=lambda a: a, down=lambda a: a) -> None:
    """What each client wrote (keys from 1,000,000 on, a million per client), read through
    the table and through the new version's view: every row there, with its amount as each
    version has it (`up` converts what the old version wrote, `down` what the new one did)."""
    view = f"public_v{clients[0].version}.{clients[0].new_table}"
    seen_old = dict(conn.execute("SELECT id, amount FROM orders WHERE id >= 1000000").fetchall())
    seen_new = dict(conn.execute(f"SELECT id, amount FROM {view} WHERE id >= 1000000").fetchall())
    for client in clients:
        assert len([k for k in seen_old if k // 1_000_000 == client.next_key // 1_000_000]) == len(
            client.expected
        ), client.side
        for key, amount in client.expected.items():
            old, new = (amount, up(amount)) if client.side == "old" else (down(amount), amount)
            assert (seen_old.get(key), seen_new.get(key)) == (old, new), (client.side, key, amount)


def rows_out_of_step(conn, version: str) -> int:
    """What contract counts before it swaps: rows whose columns do not convert to each other."""
    total = 0
    for (query,) in conn.execute(
            "SELECT c->>'out_of_step' FROM migrate.window_history, jsonb_array_elements(checks) c "
            "WHERE version = %s", (version,)).fetchall():
        total += conn.execute(query).fetchone()[0]
    return total


def test_three_clients_write_dollars_and_cents_through_a_computed_change(cluster, db, conn):
    """USING amount * 100 with the conversion back given: old pods write dollars, new pods and
    pooled connections cents, all at once, through expand, backfill, publish and contract."""
    make_orders(conn, 200_000)
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 2000")
    old = Client(cluster, db, "old", 1_000_000, new_status="old_status").start()
    time.sleep(0.3)
    conn.execute("SELECT * FROM migrate.expand('43', %s, options => %s)", (CENTS, CENTS_BACK))
    wait_until(lambda: window(conn, "43").get("state") == "published", timeout=180, interval=0.2)
    new = Client(cluster, db, "new", 2_000_000, new_status="old_status").start()
    pooled = Client(cluster, db, "pooled", 3_000_000, new_status="old_status").start()
    time.sleep(3)
    with old.writing, new.writing, pooled.writing:
        assert rows_out_of_step(conn, "43") == 0
        assert_each_write_seen_by_both(conn, (old, new, pooled), up=lambda a: a * 100, down=lambda c: c // 100)
    for client in (new, pooled):
        client.finish()
    contract_started = time.monotonic()
    conn.execute("SELECT * FROM migrate.contract('43')")
    old.finish()
    for client in (old, new, pooled):
        early = [e for e in client.errors if e[0] < contract_started]
        assert client.writes > 20 and early == [], (client.side, client.writes, early[:3])
        assert client.worst < LOCK_TIMEOUT_S + 1, (client.side, client.worst)
    # Every row in cents now; what the old version wrote before contract, converted.
    assert conn.execute("SELECT amount FROM orders WHERE id = 12345").fetchone() == (1234500,)
    assert conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'orders'::regclass AND attname = 'amount'").fetchone() == ("bigint",)
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0


def test_three_client_versions_keep_working_from_expand_to_contract(cluster, db, conn):
    make_orders(conn, 200_000)
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 2000")
    old = Client(cluster, db, "old", 1_000_000).start()
    time.sleep(0.3)
    rows = conn.execute("SELECT * FROM migrate.expand('43', %s, ttl => '1 day')", (DDL,)).fetchall()
    assert [r[1] for r in rows].count("backfill") == 1
    wait_until(lambda: window(conn, "43").get("state") == "published", timeout=180, interval=0.2)
    assert out_of_step(conn) == 0
    # New pods roll out once the new version is published.
    new = Client(cluster, db, "new", 2_000_000).start()
    pooled = Client(cluster, db, "pooled", 3_000_000).start()
    time.sleep(3)
    for client in (old, new, pooled):
        assert client.writes > 20, (client.side, client.writes)
        assert client.errors == [], (client.side, client.errors[:3])
    # Every write is visible, translated, on the other side, and the two columns agree.
    with old.writing, new.writing, pooled.writing:
        assert out_of_step(conn) == 0
        assert_each_write_seen_by_both(conn, (old, new, pooled))
    # A write by the new version to the value only its type holds is refused, not lost.
    with cluster.connect(db, options=NEW_PATH) as n:
        f = failure(n, "INSERT INTO orders (id, amount) VALUES (9999999, 5000000000)")
        assert f.sqlstate == "22003"
    new.finish()
    pooled.finish()
    contract_started = time.monotonic()
    conn.execute("SELECT * FROM migrate.contract('43')")
    after_contract = time.monotonic()
    time.sleep(0.5)
    old.finish()
    # The old version's errors come only after contract: the names it used are gone, and a
    # statement it prepared returns another type now.
    early = [e for e in old.errors if e[0] < contract_started]
    assert early == [], early[:3]
    assert {e[1] for e in old.errors} <= {"42703", "0A000"}, old.errors[:3]
    for client in (old, new, pooled):
        assert client.worst < LOCK_TIMEOUT_S + 1, (client.side, client.worst)
    assert after_contract - contract_started < LOCK_TIMEOUT_S
    # The new shape is the table's; the old columns stay, renamed, with their data.
    cols = dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped"
        ).fetchall()
    )
    assert cols["amount"] == "bigint" and cols["status"] == "text"
    assert cols["_deprecated_43_amount"] == "integer" and "_deprecated_43_legacy_note" in cols
    # Every row agrees but those the old client wrote through `amount` once contract had
    # begun: no trigger joins the columns any more, so only the (now bigint) amount moved.
    apart = dict(
        conn.execute(
            "SELECT id, amount FROM orders WHERE amount IS DISTINCT FROM _deprecated_43_amount"
        ).fetchall()
    )
    late = {k for k, t in old.written_at.items() if t >= contract_started}
    assert set(apart) <= late, sorted(set(apart) - late)[:5]
    assert {k: old.expected.get(k) for k in apart} == apart
    assert conn.execute(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'amount'"
    ).fetchone()[0]
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'public_v43'").fetchone()[0] == 0
    assert window(conn, "43")["state"] == "contracted"
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0


def test_a_worker_killed_mid_backfill_resumes_and_publishes_every_row_in_step(cluster, db, conn):
    make_orders(conn, 300_000)
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 500")
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_batch_time = '10ms'")
    old = Client(cluster, db, "old", 1_000_000).start()
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    wait_until(lambda: (window(conn, "43").get("backfill_rows_done") or 0) > 5000, timeout=120)
    pid = worker_pid(conn)
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    wait_until(lambda: _alive(cluster, db), timeout=60, interval=0.5)
    with cluster.connect(db) as c:
        wait_until(lambda: window(c, "43").get("state") == "published", timeout=240, interval=0.5)
        old.finish()
        assert out_of_step(c) == 0
        assert c.execute("SELECT count(*) FROM orders WHERE _migrate_43_amount IS NULL").fetchone()[0] == 0
        for key, amount in old.expected.items():
            assert c.execute("SELECT amount FROM public_v43.orders WHERE id = %s", (key,)).fetchone() == (amount,)


def _alive(cluster, db) -> bool:
    try:
        with cluster.connect(db) as c:
            c.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def test_abort_ends_on_the_old_shape_and_keeps_what_the_new_version_wrote(cluster, db, conn):
    make_orders(conn, 1000)
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    conn.execute("CALL migrate.wait('43')")
    with cluster.connect(db, options=NEW_PATH) as n:
        n.execute("INSERT INTO orders (id, amount, status) VALUES (5000, 77, 'from new')")
        n.execute("UPDATE orders SET amount = 78 WHERE id = 1")
    f = failure(conn, "SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN old_status')")
    assert f.sqlstate == "42710" and "already has an expand window" in f.message
    rows = conn.execute("SELECT statement FROM migrate.abort('43')").fetchall()
    assert any("RENAME COLUMN _migrate_43_amount TO _deprecated_43__migrate_43_amount" in r[0] for r in rows)
    assert conn.execute("SELECT amount, old_status FROM orders WHERE id = 5000").fetchone() == (77, "from new")
    assert conn.execute("SELECT amount FROM orders WHERE id = 1").fetchone() == (78,)
    assert conn.execute("SELECT legacy_note FROM orders WHERE id = 5000").fetchone() == ("n",)
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'zz_migrate%'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'public_v43'").fetchone()[0] == 0
    assert window(conn, "43")["state"] == "aborted"
    # Old clients write as before; the set-aside copy no longer demands anything.
    conn.execute("INSERT INTO orders (id, amount) VALUES (5001, 1)")
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "55000" and "already been aborted" in f.message


def test_a_running_window_is_cancelled_before_it_is_aborted(cluster, db, conn):
    make_orders(conn, 200_000)
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 200")
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_pause = '20ms'")
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    wait_until(lambda: window(conn, "43").get("state") == "expanding" and
               (window(conn, "43").get("backfill_rows_done") or 0) > 0, timeout=60)
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "55000" and "migrate.wait('43')" in f.hint
    f = failure(conn, "SELECT migrate.abort('43')")
    assert f.sqlstate == "55000" and "migrate.cancel('43')" in f.hint
    conn.execute("SELECT migrate.cancel('43')")
    wait_until(lambda: window(conn, "43").get("state") == "cancelled", timeout=30)
    conn.execute("SELECT migrate.abort('43')")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'zz_migrate%'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE '\\_migrate%'").fetchone()[0] == 0
    conn.execute("UPDATE orders SET amount = 1 WHERE id = 1")


def test_bad_input_is_refused_and_leaves_nothing(cluster, db, conn):
    make_orders(conn, 100)
    conn.execute("CREATE ROLE window_nobody LOGIN")
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, v int)")
    conn.execute("CREATE TABLE viewed (id int PRIMARY KEY, v int)")
    conn.execute("CREATE VIEW viewed_v AS SELECT v FROM viewed")
    conn.execute("CREATE TABLE ri (id int NOT NULL, v int)")
    conn.execute("CREATE UNIQUE INDEX ri_id ON ri (id)")
    conn.execute("ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_id")
    cases = [
        ("ALTER TABLE nope ADD COLUMN x int", "42P01", "table nope does not exist"),
        ("ALTER TABLE orders DROP COLUMN nope", "42703", "column nope of public.orders does not exist"),
        ("ALTER TABLE orders ALTER COLUMN nope TYPE bigint", "42703", 'column "nope" does not exist'),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING nope + 1", "42703", "nope"),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE point", "42804", "cannot be cast automatically"),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING amount * 100", "0A000", "computed"),
        ("CREATE INDEX ON orders (amount)", "22023", "nothing in the script needs an expand window"),
        ("ALTER TABLE orders DROP COLUMN legacy_note, ALTER COLUMN amount SET STATISTICS 100", "0A000", "cannot plan"),
        ("ALTER TABLE orders ALTER COLUMN nope SET NOT NULL", "42703", "column nope of public.orders does not exist"),
        ("ALTER TABLE orders ADD CONSTRAINT c CHECK (nope > 0)", "42703", "nope"),
        ("ALTER TABLE orders ADD CONSTRAINT c CHECK (amount)", "42804", "boolean"),
        ("ALTER TABLE orders ADD FOREIGN KEY (amount) REFERENCES nope", "42P01", "nope"),
        ("ALTER TABLE orders ADD FOREIGN KEY (nope) REFERENCES other", "42703", "nope"),
        ("ALTER TABLE orders ADD UNIQUE (nope)", "42703", "nope"),
        ("ALTER TABLE orders ADD PRIMARY KEY (amount)", "42P16", "multiple primary keys"),
        ("ALTER TABLE orders DROP COLUMN legacy_note, ADD UNIQUE (amount) INCLUDE (id)", "0A000", "INCLUDE"),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint, ADD CONSTRAINT c CHECK (amount > 0)", "0A000",
         "also changes column amount"),
        # abort would drop the table's own constraint of that name
        ("ALTER TABLE orders DROP COLUMN legacy_note, ADD CONSTRAINT orders_pkey CHECK (amount > 0)", "42710",
         "already exists"),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint; "
         "ALTER TABLE other ADD FOREIGN KEY (v) REFERENCES orders (amount)", "0A000", "also changes"),
        # a replica identity's index is not rebuilt on a copy
        ("ALTER TABLE ri ALTER COLUMN id TYPE bigint", "0A000", "ri_id"),
        ("ALTER TABLE viewed ALTER COLUMN v TYPE bigint", "0A000", "view public.viewed_v"),
        ("ALTER TABLE orders DROP COLUMN amount, ALTER COLUMN amount TYPE bigint", "0A000", "twice"),
        ("ALTER TABLE orders ADD COLUMN old_status int", "42701", "already exists"),
        ("ALTER TABLE orders DROP COLUMN legacy_note CASCADE", "0A000", "CASCADE"),
        ("BEGIN; ALTER TABLE orders DROP COLUMN legacy_note; COMMIT", "2D000", None),
    ]
    for ddl, sqlstate, text in cases:
        f = failure(conn, "SELECT migrate.expand('43', %s)", (ddl,))
        assert f.sqlstate == sqlstate, (ddl, f)
        assert f.message.startswith("pg_migrate:"), (ddl, f.message)
        assert f.detail and f.hint, (ddl, f)
        if text:
            assert text in f.message + f.detail, (ddl, f.message, f.detail)
        assert leftovers(conn) == [], ddl
    # A statement kept as written is judged by the guard like any migration's.
    conn.execute("SET migrate.small_table_threshold = 0")
    f = failure(conn, "SELECT migrate.expand('43', 'CLUSTER orders USING orders_pkey; "
                      "ALTER TABLE orders DROP COLUMN legacy_note')")
    assert "cluster" in f.message, f
    conn.execute("RESET migrate.small_table_threshold")
    assert leftovers(conn) == []
    f = failure(conn, "SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note', ttl => '90 days')")
    assert f.sqlstate == "22023" and "max_window_ttl" in f.message
    with cluster.connect(db, user="window_nobody") as nobody:
        f = failure(nobody, "SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note')")
        assert f.sqlstate == "42501"
        f = failure(nobody, "SELECT migrate.contract('43')")
        assert f.sqlstate == "42501"
        # A dry run is open to everyone, and records nothing.
        plan = nobody.execute(
            "SELECT stage, statement, lock FROM migrate.expand('43', %s, dry_run => true)", (DDL,)
        ).fetchall()
        assert ("publish", "CREATE SCHEMA public_v43", None) in plan
        locks = {(stage, statement.split(" ")[0] + " " + statement.split(" ")[1]): lock
                 for stage, statement, lock in plan}
        assert locks[("expand", "CREATE TRIGGER")] == "SHARE ROW EXCLUSIVE"
        assert locks[("backfill", "SELECT migrate.backfill('public.orders',")] == "row locks, batch by batch"
        assert locks[("publish", "ALTER TABLE")] == "SHARE UPDATE EXCLUSIVE"  # VALIDATE
        assert locks[("contract", "ALTER TABLE")] == "ACCESS EXCLUSIVE"
    assert leftovers(conn) == []
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "42704"
    conn.execute("SELECT migrate.apply('44', 'CREATE TABLE t44 (id int)')")
    f = failure(conn, "SELECT migrate.expand('44', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    assert f.sqlstate == "42710" and "already recorded" in f.message
    f = failure(conn, "SELECT migrate.expand('40', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    assert "lower than the highest applied version" in f.message


CENTS = "ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING amount::bigint * 100"
CENTS_BACK = '{"orders.amount": {"down": "(amount / 100)::integer"}}'


def test_a_computed_change_converts_both_ways_with_the_openers_conversions(cluster, db, conn):
    """Dollars to cents: USING gives the new value, options the conversion back (lossy). Both
    run as the role that opened the window, whoever writes."""
    make_orders(conn, 20_000)
    conn.execute("ALTER TABLE orders ALTER COLUMN amount SET DEFAULT 5")
    conn.execute("SELECT * FROM migrate.expand('43', %s, options => %s)", (CENTS, CENTS_BACK))
    conn.execute("CALL migrate.wait('43')")
    assert window(conn, "43")["state"] == "published"
    assert conn.execute("SELECT amount, _migrate_43_amount FROM orders WHERE id = 7").fetchone() == (7, 700)
    with cluster.connect(db, options=NEW_PATH) as new:
        new.execute("INSERT INTO orders (id, amount) VALUES (100001, 12345)")
        new.execute("UPDATE orders SET amount = 999 WHERE id = 8")
    conn.execute("INSERT INTO orders (id, amount) VALUES (100002, 5)")
    conn.execute("UPDATE orders SET amount = 6 WHERE id = 9")
    # Leaving the column out, each version gets the default in its unit.
    conn.execute("INSERT INTO orders (id) VALUES (100003)")
    with cluster.connect(db, options=NEW_PATH) as new:
        new.execute("INSERT INTO orders (id) VALUES (100004)")
    got = {i: (a, c) for i, a, c in conn.execute(
        "SELECT id, amount, _migrate_43_amount FROM orders WHERE id IN (8, 9, 100001, 100002, 100003, 100004)"
    ).fetchall()}
    assert got == {8: (9, 999), 9: (6, 600), 100001: (123, 12345), 100002: (5, 500), 100003: (5, 500),
                   100004: (5, 500)}, got
    # The new version reads and writes cents, through its view.
    with cluster.connect(db, options=NEW_PATH) as new:
        assert new.execute("SELECT amount FROM orders WHERE id = 100001").fetchone() == (12345,)
    # A writer with no rights but on the table: the conversions are PostgreSQL's own code,
    # bound to it when the window opened.
    conn.execute("CREATE ROLE window_conv_writer LOGIN")
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, amount int)")
    conn.execute("INSERT INTO other SELECT g, g FROM generate_series(1, 100) g")
    conn.execute("GRANT SELECT, INSERT, UPDATE ON other TO window_conv_writer")
    conn.execute("SELECT * FROM migrate.expand('44', 'ALTER TABLE other ALTER COLUMN amount TYPE numeric(12,2) "
                 "USING amount / 100.0', options => %s)", ('{"other.amount": {"down": "round(amount * 100)"}}',))
    conn.execute("CALL migrate.wait('44')")
    helper = conn.execute("SELECT pg_get_functiondef('public._migrate_44_other_amount_down(numeric)'"
                          "::regprocedure)").fetchone()[0]
    assert "SECURITY DEFINER" not in helper and "BEGIN ATOMIC" not in helper and "RETURN" in helper, helper
    # Bound when created: a function of the same name made later is never called instead.
    conn.execute("CREATE FUNCTION public.round(numeric) RETURNS numeric IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT 0::numeric $$")
    with cluster.connect(db, user="window_conv_writer", options="-csearch_path=public,public_v44") as w:
        w.execute("SET search_path = public_v44, public")
        w.execute("INSERT INTO other (id, amount) VALUES (1000, 42.42)")
    assert conn.execute("SELECT amount, _migrate_44_amount FROM other WHERE id = 1000").fetchone() == (
        4242, __import__("decimal").Decimal("42.42"))
    # Contract: the copies hold cents; the conversion functions are gone with the bridge.
    conn.execute("SELECT * FROM migrate.contract('43')")
    assert conn.execute("SELECT amount FROM orders WHERE id IN (8, 100001) ORDER BY id").fetchall() == [
        (999,), (12345,)]
    conn.execute("SELECT * FROM migrate.abort('44')")
    assert conn.execute(
        "SELECT proname FROM pg_proc WHERE proname ~ '^_migrate_4[34]_'").fetchall() == []
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0


def test_conversions_back_that_cannot_be_trusted_are_refused_and_leave_nothing(cluster, db, conn):
    make_orders(conn, 100)
    # Code its owner could change at any time, which every writer's session would run.
    conn.execute("CREATE ROLE window_conv_owner")
    conn.execute("GRANT CREATE ON SCHEMA public TO window_conv_owner")
    conn.execute("SET ROLE window_conv_owner")
    conn.execute("CREATE FUNCTION public.not_mine(bigint) RETURNS integer IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT ($1 / 100)::integer $$")
    conn.execute("CREATE FUNCTION public.not_mine_up(integer) RETURNS bigint IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT $1 * 100::bigint $$")
    conn.execute("CREATE DOMAIN public.posint AS integer CHECK (VALUE > 0)")
    conn.execute("RESET ROLE")
    conn.execute("CREATE FUNCTION pg_temp.back(bigint) RETURNS integer IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT ($1 / 100)::integer $$")
    conn.execute("CREATE FUNCTION public.helper100(integer) RETURNS bigint IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT $1 * 100::bigint $$")
    conn.execute("CREATE FUNCTION public.sp_cents(integer) RETURNS bigint IMMUTABLE LANGUAGE plpgsql "
                 "AS $$ BEGIN RETURN helper100($1); END $$")
    cases = [
        (CENTS, '{"orders.amount": {"down": "(amount + id)::integer"}}', "42703", 'column "id" does not exist'),
        (CENTS, '{"orders.amount": {"down": "1 FROM pg_class"}}', "42601", "not one expression"),
        (CENTS, '{"orders.amount": {"down": "1; DROP TABLE orders"}}', "42601", "not one expression"),
        (CENTS, '{"orders.amount": {"down": "1$migrate$; DROP TABLE orders; --"}}', "42601", ""),
        (CENTS, '{"orders.amount": {"down": "(SELECT 1)"}}', "0A000", "subquery"),
        (CENTS, '{"orders.amount": {"down": "(random() * amount)::integer"}}', "0A000", "not immutable"),
        (CENTS, '{"orders.amount": {"down": "amount::point"}}', "42846", "point"),
        (CENTS, '{"orders.legacy_note": {"down": "1"}}', "22023", "does not change with a copy"),
        (CENTS, '{"orders.amount": {"down": "1"}, "public.orders.amount": {"down": "2"}}', "22023",
         "same column"),
        (CENTS, '{"orders.amount": {"up": "1"}}', "22023", "not understood"),
        (CENTS, '{"orders.amount": {"down": "not_mine(amount)"}}', "42501",
         "function public.not_mine(bigint), which is not one of PostgreSQL's own"),
        (CENTS, '{"orders.amount": {"down": "((amount / 100)::posint)::integer"}}', "42501",
         "domain public.posint, whose checks are not PostgreSQL's own"),
        (CENTS, '{"orders.amount": {"down": "pg_temp.back(amount)"}}', "42501", "pg_temp"),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING not_mine_up(amount)",
         CENTS_BACK, "42501", "function public.not_mine_up(integer)"),
        # A superuser's function too: its body or its default arguments may call code another
        # role can change.
        (CENTS, '{"orders.amount": {"down": "helper100(amount::integer)::integer"}}', "42501",
         "function public.helper100(integer)"),
        (CENTS, '["orders.amount"]', "22023", "JSON object"),
        (CENTS, None, "0A000", "computed by USING"),
        ("ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING amount * id",
         '{"orders.amount": {"down": "amount::integer"}}', "0A000", "reads other columns"),
    ]
    for ddl, options, sqlstate, text in cases:
        f = failure(conn, "SELECT migrate.expand('43', %s, options => %s)", (ddl, options))
        assert f.sqlstate == sqlstate, (options, f)
        assert f.message.startswith("pg_migrate:") and f.hint, (options, f)
        assert text in f.message + (f.detail or "") + f.hint, (options, f)
        assert leftovers(conn) == [], options
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (100,)
    # A plain type change runs the type's casts in every writer's session too: a cast its
    # owner wrote is refused the same way.
    conn.execute("CREATE TABLE pts (id int PRIMARY KEY, pos integer)")
    conn.execute("INSERT INTO pts VALUES (1, 1)")
    conn.execute("SET ROLE window_conv_owner")
    conn.execute("CREATE TYPE public.pt AS (x integer)")
    conn.execute("CREATE FUNCTION public.pt_of(integer) RETURNS public.pt IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT ROW($1)::public.pt $$")
    conn.execute("CREATE FUNCTION public.int_of(public.pt) RETURNS integer IMMUTABLE LANGUAGE sql "
                 "AS $$ SELECT ($1).x $$")
    conn.execute("CREATE CAST (integer AS public.pt) WITH FUNCTION public.pt_of(integer) AS ASSIGNMENT")
    conn.execute("CREATE CAST (public.pt AS integer) WITH FUNCTION public.int_of(public.pt) AS ASSIGNMENT")
    conn.execute("RESET ROLE")
    f = failure(conn, "SELECT migrate.expand('43', 'ALTER TABLE pts ALTER COLUMN pos TYPE public.pt')")
    assert f.sqlstate == "42501" and "function public.pt_of(integer)" in f.message, f
    assert leftovers(conn) == []
    # A function already named as one of the window's (an overload planted to make the
    # bridge's calls ambiguous) stops the expand, not every write after it.
    conn.execute("SET ROLE window_conv_owner")
    conn.execute("CREATE FUNCTION public._migrate_43_orders_amount_up(integer, integer DEFAULT 0) "
                 "RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$")
    conn.execute("RESET ROLE")
    f = failure(conn, "SELECT migrate.expand('43', %s, options => %s)", (CENTS, CENTS_BACK))
    assert f.sqlstate == "42723" and "_migrate_43_orders_amount_up(integer,integer)" in f.message, f
    conn.execute("DROP FUNCTION public._migrate_43_orders_amount_up(integer, integer)")
    assert leftovers(conn) == []
    # A function made after the analysis, before the worker creates the window's functions
    # under the opener's search path (which puts public first), changes nothing: the
    # window's statements run with only pg_catalog on the path.
    with conn.transaction():
        conn.execute("SET LOCAL search_path = public, pg_catalog")
        conn.execute("SELECT migrate.expand('42', %s, options => %s)",
                     (CENTS, '{"orders.amount": {"down": "(abs(amount) / 100)::integer"}}'))
        conn.execute("CREATE FUNCTION public.abs(bigint) RETURNS bigint IMMUTABLE LANGUAGE sql "
                     "AS $$ SELECT 0::bigint $$")
    conn.execute("CALL migrate.wait('42')")
    assert conn.execute(
        "SELECT count(*) FROM pg_depend WHERE objid = 'public._migrate_42_orders_amount_down(bigint)'"
        "::regprocedure AND refobjid = 'public.abs(bigint)'::regprocedure").fetchone() == (0,)
    conn.execute("SELECT migrate.abort('42')")
    conn.execute("DROP FUNCTION public.abs(bigint)")
    # The hint of a computed change says how to give the conversion back.
    f = failure(conn, "SELECT migrate.expand('43', %s)", (CENTS,))
    assert """options => '{"orders.amount": {"down": "..."}}'""" in f.hint, f.hint
    # Options are part of what the window is: the same script with other options is another.
    conn.execute("SELECT migrate.expand('43', %s, options => %s)", (CENTS, CENTS_BACK))
    conn.execute("CALL migrate.wait('43')")
    f = failure(conn, "SELECT migrate.expand('43', %s, options => %s)",
                (CENTS, '{"orders.amount": {"down": "(amount / 10)::integer"}}'))
    assert f.sqlstate == "42710", f
    conn.execute("SELECT migrate.expand('43', %s, options => %s)", (CENTS, CENTS_BACK))


def test_windows_on_other_tables_open_together_and_one_on_the_same_table_waits(cluster, db, conn):
    make_orders(conn, 100)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, v int)")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
    conn.execute("SELECT migrate.expand('44', 'ALTER TABLE other RENAME COLUMN v TO value')")
    assert [window(conn, v)["state"] for v in ("43", "44")] == ["published", "published"]
    f = failure(conn, "SELECT migrate.expand('45', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    assert f.sqlstate == "55006" and "window of version 43" in f.message
    # DDL from outside pg_migrate on a bridged table is refused, from any session; a
    # migration may still change it.
    for ddl in ("ALTER TABLE orders DISABLE TRIGGER ALL", "ALTER TABLE orders ADD COLUMN x int",
                "ALTER TABLE other ADD COLUMN z int"):
        f = failure(conn, ddl)
        assert "inside the open expand window of version" in f.message, (ddl, f)
        assert "migrate.contract(" in f.hint
    conn.execute("SELECT migrate.apply('44.1', 'ALTER TABLE orders ADD COLUMN x int')")
    assert conn.execute("SELECT value FROM public_v44.other").fetchall() == []
    conn.execute("SELECT migrate.contract('43')")
    conn.execute("ALTER TABLE orders ADD COLUMN y int")
    conn.execute("SELECT migrate.expand('45', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    assert conn.execute("SELECT status FROM public_v45.orders LIMIT 1").fetchone() == ("new",)


def test_an_expired_window_stops_new_windows_until_it_ends(cluster, db, conn):
    make_orders(conn, 10)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, v int)")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note', ttl => '1 second')")
    time.sleep(1.2)
    assert window(conn, "43")["expired"] is True
    f = failure(conn, "SELECT migrate.expand('44', 'ALTER TABLE other RENAME COLUMN v TO value')")
    assert f.sqlstate == "55000" and "expired" in f.message and "migrate.contract('43')" in f.hint
    conn.execute("SELECT migrate.contract('43')")
    conn.execute("SELECT migrate.expand('44', 'ALTER TABLE other RENAME COLUMN v TO value')")


def test_an_expired_window_is_extended_only_with_a_reason_and_new_windows_open_again(cluster, db, conn):
    make_orders(conn, 10)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, v int)")
    conn.execute("CREATE ROLE window_no_extend LOGIN")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note', ttl => '1 second')")
    time.sleep(1.2)
    f = failure(conn, "SELECT migrate.expand('44', 'ALTER TABLE other RENAME COLUMN v TO value')")
    assert f.sqlstate == "55000" and "migrate.extend('43', '1 day', 'the reason')" in f.hint, f
    before = conn.execute("SELECT ttl, expires_at, alerts_sent, extensions FROM migrate.window_history").fetchall()
    for call, sqlstate, message in [
        ("SELECT migrate.extend('43', '1 hour', '  ')", "22023", "only with a reason"),
        ("SELECT migrate.extend('43', '1 hour', NULL)", "22023", "only with a reason"),
        ("SELECT migrate.extend('43', NULL, 'drain')", "22023", "positive interval"),
        ("SELECT migrate.extend('43', '-1 hour', 'drain')", "22023", "positive interval"),
        ("SELECT migrate.extend('43', '40 days', 'drain')", "22023", "over migrate.max_window_ttl"),
        ("SELECT migrate.extend('99', '1 hour', 'drain')", "42704", "version 99 has no expand window"),
        ("SELECT migrate.extend('4 3', '1 hour', 'drain')", "22023", "version"),
    ]:
        f = failure(conn, call)
        assert f.sqlstate == sqlstate and message in f.message and f.hint, (call, f)
    with cluster.connect(db, user="window_no_extend") as nobody:
        f = failure(nobody, "SELECT migrate.extend('43', '1 hour', 'drain')")
        assert f.sqlstate == "42501" and "migrate_admin" in f.hint, f
    assert conn.execute("SELECT ttl, expires_at, alerts_sent, extensions FROM migrate.window_history").fetchall() == before
    conn.execute("LISTEN migrate_window")
    mark = cluster.log_mark()
    until = conn.execute("SELECT migrate.extend('43', '1 hour', 'billing pods drain slowly')").fetchone()[0]
    w = window(conn, "43")
    assert w["expired"] is False and w["expires_at"] == until and w["alerts_sent"] == 0, w
    assert conn.execute("SELECT ttl FROM migrate.window_history").fetchone()[0].total_seconds() == 3601
    [ext] = w["extensions"]
    assert (ext["by"], ext["reason"], ext["extra"]) == ("postgres", "billing pods drain slowly", "01:00:00"), ext
    payloads = [json.loads(n.payload) for n in conn.notifies(timeout=1, stop_after=1)]
    assert payloads[0]["version"] == "43" and payloads[0]["reason"] == "billing pods drain slowly", payloads
    assert "pg_migrate: the expand window of version 43 was extended to" in cluster.log_since(mark)
    # No longer expired: another window opens; a second extension is recorded after the first.
    conn.execute("SELECT migrate.expand('44', 'ALTER TABLE other RENAME COLUMN v TO value')")
    conn.execute("SELECT migrate.extend('43', '1 day', 'holiday freeze')")
    assert [e["reason"] for e in window(conn, "43")["extensions"]] == ["billing pods drain slowly", "holiday freeze"]
    conn.execute("SELECT migrate.contract('43')")
    f = failure(conn, "SELECT migrate.extend('43', '1 hour', 'drain')")
    assert f.sqlstate == "55000" and "already been contracted" in f.message, f


def test_windows_show_the_sessions_still_connected_by_the_version_they_used(cluster, db, conn):
    """Writers and readers alike: a client of the old version that only reads breaks at
    contract as surely as one that writes."""
    make_orders(conn, 1000)
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    conn.execute("CALL migrate.wait('43')")
    assert (window(conn, "43")["old_sessions"], window(conn, "43")["new_sessions"]) == (0, 0)
    old = cluster.connect(db)
    gone = cluster.connect(db)
    new = cluster.connect(db, options=NEW_PATH)
    pooled = cluster.connect(db)
    reader = cluster.connect(db)
    new_reader = cluster.connect(db, options=NEW_PATH)
    bystander = cluster.connect(db)
    copier = cluster.connect(db)
    pid = lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0]
    old.execute("UPDATE orders SET amount = 5 WHERE id = 1")
    old.execute("UPDATE orders SET amount = 6 WHERE id = 1")
    gone.execute("INSERT INTO orders (id, amount) VALUES (100001, 1)")
    new.execute("UPDATE orders SET status = 'x' WHERE id = 2")
    with pooled.transaction():
        pooled.execute("SET LOCAL migrate.client_version = '43'")
        pooled.execute("INSERT INTO public_v43.orders (id, amount) VALUES (100002, 1)")
    pooled.execute("UPDATE orders SET amount = 7 WHERE id = 3")
    reader.execute("SELECT count(*) FROM orders WHERE old_status IS NOT NULL")
    new_reader.execute("SELECT count(*) FROM orders WHERE status IS NOT NULL")
    # What a query uses decides, not what its session declares: the old names read with the
    # new version's path first are the old version's, the view read without it the new one's.
    reader.execute("SELECT count(status) FROM public_v43.orders")
    new_reader.execute("SELECT count(old_status) FROM public.orders")
    # A session that uses no table of the window is no version's client.
    bystander.execute("SELECT count(*) FROM pg_class")
    # COPY of the table by its old name reads it without running a query.
    with copier.cursor().copy("COPY orders TO STDOUT") as copy:
        assert sum(1 for _ in copy.rows()) == 1002
    gone_pid = pid(gone)
    gone.close()
    wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                    (gone_pid,)).fetchone() == (0,), timeout=10)
    rows = conn.execute("SELECT pid, side, writes FROM migrate.window_sessions('43') ORDER BY side, pid").fetchall()
    assert sorted(rows) == sorted([(pid(old), "old", 2), (pid(pooled), "old", 1), (pid(reader), "old", 0),
                                   (pid(reader), "new", 0), (pid(new), "new", 1), (pid(pooled), "new", 1),
                                   (pid(new_reader), "new", 0), (pid(new_reader), "old", 0),
                                   (pid(copier), "old", 0)]), rows
    assert conn.execute("SELECT count(*) FILTER (WHERE last_seen IS NULL), "
                        "count(*) FILTER (WHERE last_write IS NULL), "
                        "count(*) FILTER (WHERE last_seen < last_write) "
                        "FROM migrate.window_sessions('43')").fetchone() == (0, 5, 0)
    w = window(conn, "43")
    assert (w["old_sessions"], w["new_sessions"]) == (5, 4), w
    # Others see the sessions they could follow in pg_stat_activity: their own roles', or all
    # with pg_read_all_stats.
    conn.execute("CREATE ROLE window_no_sessions LOGIN")
    with cluster.connect(db, user="window_no_sessions") as nobody:
        assert nobody.execute("SELECT old_sessions FROM migrate.windows").fetchone() == (0,)
        assert nobody.execute("SELECT count(*) FROM migrate.window_sessions('43')").fetchone() == (0,)
    conn.execute("GRANT pg_read_all_stats TO window_no_sessions")
    with cluster.connect(db, user="window_no_sessions") as stats_reader:
        assert stats_reader.execute("SELECT old_sessions FROM migrate.windows").fetchone() == (5,)
    # Contract goes on, saying who still used the old version; its own reads of the table
    # make the caller no client of it.
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary, d.message_detail or "")))
    pooled.close()
    # The caller's own reads do not make it a client it is warned about.
    conn.execute("SELECT count(*) FROM orders")
    wait_until(lambda: len(conn.execute("SELECT 1 FROM migrate.window_sessions('43') WHERE side = 'old'")
                            .fetchall()) == 5, timeout=10)
    conn.execute("SELECT * FROM migrate.contract('43')")
    warned = [n for n in notices if n[0] == "WARNING" and "used the old version" in n[1]]
    assert warned and warned[0][1].startswith("pg_migrate: 4 sessions still connected") \
        and all(str(pid(c)) in warned[0][2] for c in (old, reader, new_reader, copier)) \
        and str(pid(conn)) not in warned[0][2], notices
    w = window(conn, "43")
    assert (w["state"], w["old_sessions"], w["new_sessions"]) == ("contracted", 0, 0), w
    for c in (old, new, reader, new_reader, bystander, copier):
        c.close()


def test_sessions_that_declare_a_version_are_known_before_they_use_the_tables(cluster, db, conn):
    """An idle pooled connection of the old release that set migrate.client_version is a
    client of the old version before it touches the tables: the bridge would take its writes
    for the old version's, and contract warns about it. What a session did goes before what
    it declares; a SET LOCAL that ended, or a RESET, declares nothing."""
    make_orders(conn, 100)
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    conn.execute("CALL migrate.wait('43')")
    new_at_connect = cluster.connect(db, options="-cmigrate.client_version=43")
    new_by_set = cluster.connect(db)
    new_by_set.execute("SET migrate.client_version = '43'")
    old = cluster.connect(db)
    old.execute("SET migrate.client_version = '42'")
    undeclared = cluster.connect(db)
    pooled = cluster.connect(db)
    with pooled.transaction():
        pooled.execute("SET LOCAL migrate.client_version = '42'")
    reset = cluster.connect(db)
    reset.execute("SET migrate.client_version = '42'")
    reset.execute("RESET migrate.client_version")
    conn.execute("CREATE ROLE window_declaring LOGIN")
    conn.execute("ALTER ROLE window_declaring SET migrate.client_version = '42'")
    by_role = cluster.connect(db, user="window_declaring")
    elsewhere = cluster.connect("postgres")
    elsewhere.execute("SET migrate.client_version = '42'")
    pid = lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0]
    rows = conn.execute("SELECT pid, side, writes, last_write, last_seen, known_by "
                        "FROM migrate.window_sessions('43')").fetchall()
    assert sorted(rows) == sorted([(pid(new_at_connect), "new", 0, None, None, "declaration"),
                                   (pid(new_by_set), "new", 0, None, None, "declaration"),
                                   (pid(old), "old", 0, None, None, "declaration"),
                                   (pid(by_role), "old", 0, None, None, "declaration")]), rows
    w = window(conn, "43")
    assert (w["old_sessions"], w["new_sessions"]) == (2, 2), w
    # Declaring the new version but reading the old names: an old client, by what it did.
    new_by_set.execute("SELECT count(old_status) FROM public.orders")
    wait_until(lambda: conn.execute("SELECT side, known_by FROM migrate.window_sessions('43') WHERE pid = %s",
                                    (pid(new_by_set),)).fetchall() == [("old", "use")], timeout=10)
    # Declarations change as sessions change them, and leave with their sessions.
    old.execute("SET migrate.client_version = '43'")
    by_role_pid = pid(by_role)
    by_role.close()
    wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                    (by_role_pid,)).fetchone() == (0,), timeout=10)
    rows = conn.execute("SELECT pid, side, known_by FROM migrate.window_sessions('43')").fetchall()
    assert sorted(rows) == sorted([(pid(new_at_connect), "new", "declaration"), (pid(new_by_set), "old", "use"),
                                   (pid(old), "new", "declaration")]), rows
    old.execute("SET migrate.client_version = '41'")
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary, d.message_detail or "")))
    conn.execute("SELECT * FROM migrate.contract('43')")
    warned = [n for n in notices if n[0] == "WARNING" and "used the old version" in n[1]]
    assert warned and warned[0][1].startswith("pg_migrate: 2 sessions still connected"), notices
    assert all(str(pid(c)) in warned[0][2] for c in (old, new_by_set)), warned
    assert str(pid(new_at_connect)) not in warned[0][2], warned
    for c in (new_at_connect, new_by_set, old, undeclared, pooled, reset, elsewhere):
        c.close()
    conn.execute("DROP ROLE window_declaring")


def test_a_write_through_the_new_versions_view_is_the_new_versions_whatever_the_session_declares(cluster, db, conn):
    """An INSERT through public_v43 from a session that declared nothing (its path starts with
    public) sets the new column: the bridge goes by what the statement uses, so the value is
    converted back, not overwritten from the old column's default. And the other way round."""
    make_orders(conn, 10)
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("INSERT INTO public_v43.orders (id, amount) VALUES (101, 7)")
    with cluster.connect(db, options=NEW_PATH) as n:
        # Old names, by a session whose path puts the new version first.
        n.execute("INSERT INTO public.orders (id, amount) VALUES (102, 9)")
        with n.transaction():
            n.execute("SET LOCAL migrate.client_version = '43'")
            n.execute("INSERT INTO public.orders (id, amount) VALUES (103, 11)")
    # COPY is no query: the session's declaration decides, as before.
    with conn.cursor().copy("COPY orders (id, amount) FROM STDIN") as copy:
        copy.write_row((104, 13))
    assert conn.execute("SELECT id, amount, _migrate_43_amount FROM orders WHERE id > 100 ORDER BY id").fetchall() == [
        (101, 7, 7), (102, 9, 9), (103, 11, 11), (104, 13, 13)]
    assert rows_out_of_step(conn, "43") == 0
    conn.execute("SELECT migrate.contract('43')")
    assert conn.execute("SELECT amount FROM orders WHERE id = 101").fetchone() == (7,)


def test_a_window_whose_expand_rolled_back_has_no_tables_looked_for(cluster, db, conn):
    """A window's tables are looked for in queries once its expand commits, not before, and
    never after a rollback."""
    make_orders(conn, 10)
    with cluster.connect(db, autocommit=False) as c:
        c.execute("SELECT migrate.expand('52', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
        c.rollback()
    with cluster.connect(db) as reader:
        reader_pid = reader.execute("SELECT pg_backend_pid()").fetchone()[0]
        reader.execute("SELECT old_status FROM orders WHERE id = 1")
        assert conn.execute("SELECT count(*) FROM migrate.window_sessions('52')").fetchone() == (0,)
        conn.execute("SELECT migrate.expand('53', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
        reader.execute("SELECT old_status FROM orders WHERE id = 1")
        assert conn.execute("SELECT pid, side FROM migrate.window_sessions('53')").fetchall() == [
            (reader_pid, "old")]
        conn.execute("CALL migrate.wait('53')")
        conn.execute("SELECT migrate.abort('53')")


def test_a_session_is_known_by_its_reads_once_the_worker_registers_the_window_again(cluster, db, conn):
    """The tables of open windows live in shared memory; a restart empties it, and the
    worker registers them again as it looks at the windows."""
    make_orders(conn, 100)
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
    conn.execute("CALL migrate.wait('43')")
    cluster.restart()
    with cluster.connect(db) as admin, cluster.connect(db) as reader:
        reader_pid = reader.execute("SELECT pg_backend_pid()").fetchone()[0]

        def known():
            reader.execute("SELECT old_status FROM orders WHERE id = 1")
            return admin.execute("SELECT side FROM migrate.window_sessions('43') WHERE pid = %s",
                                 (reader_pid,)).fetchall() == [("old",)]
        wait_until(known, timeout=30)
        admin.execute("SELECT migrate.abort('43')")


def test_printed_expressions_mean_the_same_whatever_the_openers_search_path(cluster, db, conn):
    """A default printed as json_build_object('v'::text, 1) and parsed again under a path
    with a schema anyone may create in would call a better-matching function there (one
    taking text, integer, where the built-in takes VARIADIC "any"): the window's statements
    run with only pg_catalog on the path."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, meta json NOT NULL DEFAULT json_build_object('v', 1))")
    conn.execute("INSERT INTO docs SELECT g, json_build_object('v', g) FROM generate_series(1, 100) g")
    conn.execute("CREATE TABLE spied (who text)")
    conn.execute("CREATE ROLE window_hijacker")
    conn.execute("GRANT CREATE ON SCHEMA public TO window_hijacker")
    conn.execute("GRANT INSERT ON spied TO window_hijacker")
    conn.execute("SET ROLE window_hijacker")
    conn.execute("CREATE FUNCTION public.json_build_object(text, integer) RETURNS json LANGUAGE plpgsql AS "
                 "$$ BEGIN INSERT INTO public.spied VALUES (current_user); "
                 "RETURN pg_catalog.json_build_object($1, $2); END $$")
    conn.execute("RESET ROLE")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE docs ALTER COLUMN meta TYPE jsonb')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("INSERT INTO docs (id) VALUES (1000)")
    with cluster.connect(db, options=NEW_PATH) as new:
        new.execute("INSERT INTO docs (id) VALUES (1001)")
    assert conn.execute("SELECT count(*) FROM spied").fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM pg_depend d JOIN pg_attrdef a ON a.oid = d.objid "
        "WHERE d.refobjid = 'public.json_build_object(text, integer)'::regprocedure").fetchone() == (0,)
    conn.execute("SELECT migrate.contract('43')")


def test_no_operator_of_a_schema_on_the_path_runs_in_the_backfill(cluster, db, conn):
    """The backfill compares its varchar key with pg_catalog's operators by name: an exact
    varchar operator someone put in public would otherwise be called, as the opener."""
    conn.execute("CREATE TABLE tags (id varchar PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO tags SELECT 'k' || g, g FROM generate_series(1, 2000) g")
    conn.execute("CREATE TABLE spied (who text)")
    conn.execute("CREATE ROLE window_operator_planter")
    conn.execute("GRANT CREATE ON SCHEMA public TO window_operator_planter")
    conn.execute("GRANT INSERT ON spied TO window_operator_planter")
    conn.execute("SET ROLE window_operator_planter")
    for op, fn in (("<=", "le"), (">", "gt")):
        conn.execute(f"CREATE FUNCTION public.v{fn}(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS "
                     f"$$ BEGIN INSERT INTO public.spied VALUES (current_user); "
                     f"RETURN $1::text {op} $2::text; END $$")
        conn.execute(f"CREATE OPERATOR public.{op} (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.v{fn})")
    conn.execute("RESET ROLE")
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 500")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE tags ALTER COLUMN n TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    assert conn.execute("SELECT count(*) FROM tags WHERE _migrate_43_n IS DISTINCT FROM n").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM spied").fetchone() == (0,)
    conn.execute("SELECT migrate.abort('43')")


def test_an_extension_types_key_is_compared_with_its_own_schemas_operators(cluster, db, conn):
    """A citext key: the backfill names the operators of citext's own schema, so one planted
    in a schema earlier on the opener's path is never called, as the opener."""
    conn.execute("CREATE SCHEMA ext")
    conn.execute("CREATE EXTENSION citext SCHEMA ext")
    conn.execute("CREATE SCHEMA planted")
    conn.execute("CREATE TABLE codes (code ext.citext PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO codes SELECT 'k' || g, g FROM generate_series(1, 2000) g")
    conn.execute("CREATE TABLE spied (who text)")
    conn.execute("CREATE ROLE window_citext_planter")
    conn.execute("GRANT CREATE, USAGE ON SCHEMA planted TO window_citext_planter")
    conn.execute("GRANT USAGE ON SCHEMA ext TO window_citext_planter")
    conn.execute("GRANT INSERT ON spied TO window_citext_planter")
    conn.execute("SET ROLE window_citext_planter")
    for op, fn in (("<=", "le"), (">", "gt")):
        conn.execute(f"CREATE FUNCTION planted.c{fn}(ext.citext, ext.citext) RETURNS boolean LANGUAGE plpgsql "
                     f"AS $$ BEGIN INSERT INTO public.spied VALUES (current_user); "
                     f"RETURN $1::text {op} $2::text; END $$")
        conn.execute(f"CREATE OPERATOR planted.{op} (LEFTARG = ext.citext, RIGHTARG = ext.citext, "
                     f"FUNCTION = planted.c{fn})")
    conn.execute("RESET ROLE")
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 500")
    conn.execute("SET search_path = planted, ext, public")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE codes ALTER COLUMN n TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("RESET search_path")
    assert conn.execute("SELECT count(*) FROM codes WHERE _migrate_43_n IS DISTINCT FROM n").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM spied").fetchone() == (0,)
    conn.execute("SELECT migrate.abort('43')")


def test_the_path_a_window_pins_is_the_callers_again_after_expand(cluster, db, conn):
    make_orders(conn, 10)
    with conn.transaction():
        conn.execute("SET LOCAL search_path = public")
        conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
        assert conn.execute("SHOW search_path").fetchone() == ("public",)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (10,)


def test_a_domain_check_added_after_planning_fails_the_expand_not_the_writers(cluster, db, conn):
    make_orders(conn, 1000)
    conn.execute("CREATE ROLE window_domain_owner")
    conn.execute("GRANT CREATE ON SCHEMA public TO window_domain_owner")
    conn.execute("SET ROLE window_domain_owner")
    conn.execute("CREATE DOMAIN public.dbig AS bigint")
    conn.execute("RESET ROLE")
    with conn.transaction():
        conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE public.dbig')")
        conn.execute("SET LOCAL ROLE window_domain_owner")
        conn.execute("ALTER DOMAIN public.dbig ADD CONSTRAINT positive CHECK (VALUE > 0) NOT VALID")
    wait_until(lambda: window(conn, "43").get("state") in ("failed", "published"), timeout=30)
    error = conn.execute("SELECT error_sqlstate, error_message FROM migrate.steps "
                         "WHERE version = '43' AND state = 'failed'").fetchone()
    assert error and error[0] == "55000" and "domain checks" in error[1], error
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                        "AND attname LIKE '\\_migrate%'").fetchone() == (0,)
    conn.execute("INSERT INTO orders (id, amount) VALUES (5000, 1)")
    conn.execute("SELECT migrate.cancel('43')")
    wait_until(lambda: window(conn, "43").get("state") == "cancelled", timeout=30)
    conn.execute("SELECT migrate.abort('43')")


def test_a_flood_of_short_sessions_hides_no_session_still_connected(cluster, db, conn):
    """Sessions free their places in shared memory as they exit: thousands of short ones (more
    than there are places) do not push out one that is still connected."""
    make_orders(conn, 100)
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    conn.execute("CALL migrate.wait('43')")
    with cluster.connect(db) as old:
        old.execute("UPDATE orders SET amount = 1 WHERE id = 1")
        old_pid = old.execute("SELECT pg_backend_pid()").fetchone()[0]
        script = cluster.dir / "flood.sql"
        script.write_text("UPDATE orders SET amount = amount WHERE id = 2;\n")
        subprocess.run([str(PG_BIN / "pgbench"), "-n", "-C", "-c", "4", "-j", "4", "-t", "1100",
                        "-f", str(script), "-h", str(cluster.sock), "-p", str(cluster.port),
                        "-U", "postgres", db], check=True, capture_output=True)
        assert window(conn, "43")["old_writes"] >= 4401
        rows = conn.execute("SELECT pid FROM migrate.window_sessions('43') WHERE side = 'old'").fetchall()
        assert (old_pid,) in rows, rows
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("SELECT * FROM migrate.contract('43')")
        assert not [n for n in notices if "may not all be known" in n], notices
        assert [n for n in notices if "1 sessions still connected" in n], notices


def test_a_writer_cannot_make_the_bridge_run_its_code(cluster, db, conn):
    """The bridge runs as the writer, as the writer's own assignment would, and names nothing
    a search path resolves: an operator a writer planted ahead of pg_catalog is never
    called, and the function cannot be called directly."""
    make_orders(conn, 100)
    conn.execute("CREATE ROLE window_writer LOGIN")
    conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO window_writer")
    conn.execute("CREATE SCHEMA evil AUTHORIZATION window_writer")
    conn.execute("CREATE TABLE public.called (who text)")
    conn.execute("GRANT INSERT ON public.called TO PUBLIC")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("GRANT USAGE ON SCHEMA public_v43 TO window_writer")
    with cluster.connect(db, user="window_writer") as w:
        for args in ("text, text", "name, text", "text, unknown"):
            left, right = (a.strip() for a in args.split(","))
            if right == "unknown":
                continue
            w.execute(
                f"CREATE FUNCTION evil.eq_{left}_{right}({left}, {right}) RETURNS boolean LANGUAGE sql AS "
                "$$ INSERT INTO public.called VALUES (current_user) RETURNING true $$"
            )
            w.execute(f"CREATE OPERATOR evil.= (LEFTARG = {left}, RIGHTARG = {right}, "
                      f"FUNCTION = evil.eq_{left}_{right})")
        w.execute(
            "CREATE FUNCTION evil.writes_version(text, text) RETURNS boolean LANGUAGE sql AS "
            "$$ INSERT INTO public.called VALUES ('writes_version') RETURNING true $$"
        )
        w.execute("SET search_path = evil, public_v43, public, pg_catalog")
        w.execute("SET migrate.client_version = '43'")
        w.execute("INSERT INTO public_v43.orders (id, amount) VALUES (500, 5)")
        w.execute("UPDATE public_v43.orders SET amount = 6 WHERE id = 500")
        w.execute("RESET migrate.client_version")
        w.execute("INSERT INTO public.orders (id, amount) VALUES (501, 7)")
        f = failure(w, "SELECT public._migrate_43_orders_bridge()")
        assert f.sqlstate == "42501"
    assert conn.execute("SELECT count(*) FROM public.called").fetchone()[0] == 0
    assert conn.execute(
        "SELECT id, amount, _migrate_43_amount FROM orders WHERE id >= 500 ORDER BY id"
    ).fetchall() == [(500, 6, 6), (501, 7, 7)]
    # Not SECURITY DEFINER: nothing runs with the rights of the role that opened the window.
    assert conn.execute(
        "SELECT prosecdef FROM pg_proc WHERE proname = '_migrate_43_orders_bridge'"
    ).fetchone() == (False,)


def test_the_callers_names_are_resolved_when_the_window_opens_and_kept_qualified(cluster, db, conn):
    """A type and a cast from a schema only the opener's search path has: printed qualified
    into the plan, so the bridge (whose search path holds only pg_catalog) and the worker
    find them."""
    make_orders(conn, 1000)
    conn.execute("CREATE SCHEMA money")
    conn.execute("CREATE DOMAIN money.cents AS bigint")
    conn.execute("SET search_path = money, public")
    rows = conn.execute(
        "SELECT statement FROM migrate.expand('43', "
        "'ALTER TABLE orders ALTER COLUMN amount TYPE cents USING amount::cents')"
    ).fetchall()
    assert any(r[0] == "ALTER TABLE public.orders ADD COLUMN _migrate_43_amount money.cents" for r in rows), rows
    conn.execute("RESET search_path")
    conn.execute("CALL migrate.wait('43')")
    assert window(conn, "43")["state"] == "published"
    conn.execute("INSERT INTO orders (id, amount) VALUES (5000, 12)")
    assert conn.execute("SELECT _migrate_43_amount FROM orders WHERE id = 5000").fetchone() == (12,)
    with cluster.connect(db, options=NEW_PATH) as n:
        n.execute("UPDATE orders SET amount = 13 WHERE id = 5000")
    assert conn.execute("SELECT amount FROM orders WHERE id = 5000").fetchone() == (13,)


def test_statements_without_steps_run_as_written_in_the_window(cluster, db, conn):
    make_orders(conn, 1000)
    script = """
        CREATE INDEX CONCURRENTLY orders_status ON orders (old_status); -- for the new reads
        ALTER TABLE orders RENAME COLUMN old_status TO status;
    """
    plan = conn.execute("SELECT stage, statement FROM migrate.expand('43', %s)", (script,)).fetchall()
    assert plan[0] == ("expand", "CREATE INDEX CONCURRENTLY orders_status ON orders (old_status)")
    conn.execute("CALL migrate.wait('43')")
    assert window(conn, "43")["state"] == "published"
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_status'::regclass").fetchone() == (True,)
    assert conn.execute("SELECT count(*) FROM public_v43.orders WHERE status = 'new'").fetchone() == (1000,)
    assert conn.execute("SELECT count(*) FROM migrate.steps WHERE version = '43'").fetchone()[0] == 2


def test_a_window_alerts_at_half_nine_tenths_and_the_end_of_its_time(cluster, db, conn):
    make_orders(conn, 10)
    conn.execute("LISTEN migrate_window")
    mark = cluster.log_mark()
    opened = time.monotonic()
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note', ttl => '15 seconds')")
    got = []
    for n in conn.notifies(timeout=40, stop_after=3):
        got.append((round(time.monotonic() - opened, 1), n.payload))
    assert [json.loads(p) for _, p in got] == [{"version": "43", "alert": 50}, {"version": "43", "alert": 90},
                                               {"version": "43", "alert": 100}], got
    # On time, give or take the launcher's second and a worker's start.
    assert 7.5 <= got[0][0] <= 10 and 13.5 <= got[1][0] < 15 <= got[2][0] <= 17.5, got
    assert window(conn, "43")["alerts_sent"] == 100
    log = cluster.log_since(mark)
    assert "pg_migrate: the expand window of version 43 has used 50% of its time-to-live" in log
    assert "WARNING:  pg_migrate: the expand window of version 43 expired at" in log
    # Once ended, a window alerts no more.
    conn.execute("SELECT migrate.contract('43')")


def test_each_update_is_bridged_by_what_it_changed_whoever_wrote_it(cluster, db, conn):
    """A session on the wrong side (no declared version writing through the view, a declared
    new version writing the table) still gets its write bridged; a write setting both columns
    apart fails; an explicit NULL from the new version stays NULL."""
    conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount int DEFAULT 0, note text)")
    conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("UPDATE public_v43.orders SET amount = 666 WHERE id = 2")  # no version declared
    with cluster.connect(db) as c:
        c.execute("SET migrate.client_version = '43'")
        c.execute("UPDATE public.orders SET amount = 555 WHERE id = 1")  # declared, base table
        c.execute("INSERT INTO public_v43.orders (id, amount) VALUES (1000, NULL)")
        c.execute("INSERT INTO public_v43.orders (id) VALUES (1001)")
    f = failure(conn, "UPDATE orders SET amount = 7, _migrate_43_amount = 8 WHERE id = 3")
    assert f.sqlstate == "23000" and f.message.startswith("pg_migrate:") and f.detail and f.hint
    conn.execute("UPDATE orders SET amount = 9, _migrate_43_amount = 9 WHERE id = 3")
    conn.execute("UPDATE orders SET note = 'x' WHERE id = 4")
    rows = conn.execute(
        "SELECT id, amount, _migrate_43_amount FROM orders WHERE id IN (1, 2, 3, 4, 1000, 1001) ORDER BY id"
    ).fetchall()
    assert rows == [(1, 555, 555), (2, 666, 666), (3, 9, 9), (4, 4, 4), (1000, None, None), (1001, 0, 0)], rows


def test_contract_refuses_a_missing_bridge_and_rows_out_of_step(cluster, db, conn):
    make_orders(conn, 100)
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    # A superuser with the guard off can still get around the bridge; contract notices.
    conn.execute("SET migrate.guard = off")
    conn.execute("ALTER TABLE orders DISABLE TRIGGER zz_migrate_43_bridge")
    conn.execute("UPDATE orders SET amount = 999 WHERE id = 1")
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "55000" and "not enabled ALWAYS" in f.message, f
    conn.execute("ALTER TABLE orders ENABLE ALWAYS TRIGGER zz_migrate_43_bridge")
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "55000" and "1 rows of public.orders differ" in f.message, f
    assert "SELECT count(*) FROM public.orders WHERE" in f.hint
    conn.execute("UPDATE orders SET amount = amount WHERE id = 1")  # the bridge copies it again
    conn.execute("DROP TRIGGER zz_migrate_43_bridge ON orders")
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "55000" and "is gone" in f.message, f
    conn.execute("RESET migrate.guard")
    conn.execute("SELECT migrate.abort('43')")


def test_ddl_around_the_bridge_is_refused_from_outside_pg_migrate(cluster, db, conn):
    make_orders(conn, 100)
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    for ddl in (
        "DROP TRIGGER zz_migrate_43_bridge ON orders",
        "ALTER TRIGGER zz_migrate_43_bridge ON orders RENAME TO other",
        "CREATE TRIGGER zzz_late BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "DROP FUNCTION _migrate_43_orders_bridge() CASCADE",
        "CREATE OR REPLACE FUNCTION public._migrate_43_orders_bridge() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
        "ALTER FUNCTION _migrate_43_orders_bridge() SECURITY DEFINER",
        "DROP VIEW public_v43.orders",
        "CREATE OR REPLACE VIEW public_v43.orders WITH (security_invoker = false) AS SELECT * FROM public.orders",
        "ALTER FUNCTION _migrate_43_orders_bridge() OWNER TO CURRENT_USER",
        "ALTER FUNCTION _migrate_43_orders_bridge() SET SCHEMA public_v43",
        "DROP SCHEMA public_v43 CASCADE",
    ):
        f = failure(conn, ddl)
        assert "inside the open expand window of version 43" in f.message, (ddl, f)
    # The guard reads a DROP TRIGGER without changing it: triggers elsewhere drop as asked.
    conn.execute("CREATE SCHEMA s")
    conn.execute("CREATE TABLE s.t (id int)")
    conn.execute("CREATE TABLE public.s (id int)")
    for table, trigger in (("s.t", "trg"), ("public.s", "t")):
        conn.execute(f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} FOR EACH ROW "
                     "EXECUTE FUNCTION suppress_redundant_updates_trigger()")
    conn.execute("DROP TRIGGER trg ON s.t")
    assert conn.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
                        "WHERE tgname IN ('trg', 't')").fetchall() == [("s", "t")]
    conn.execute("DROP TRIGGER t ON s")


def test_what_cannot_be_bridged_faithfully_is_refused(cluster, db, conn):
    conn.execute(
        "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int, "
        "g int GENERATED ALWAYS AS (n * 2) STORED, at timestamptz, k int, v int)"
    )
    conn.execute("CREATE TABLE u (id int PRIMARY KEY, n int, at timestamptz)")
    conn.execute("CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN NEW.n := NEW.n + 1; RETURN NEW; END'")
    conn.execute("CREATE TRIGGER zzz_bump BEFORE INSERT ON u FOR EACH ROW EXECUTE FUNCTION bump()")
    conn.execute("CREATE SCHEMA public_v44")
    conn.execute("CREATE DOMAIN positive AS bigint CHECK (VALUE > 0)")
    conn.execute("CREATE TABLE w (id int PRIMARY KEY, n int)")
    cases = [
        ("43", "ALTER TABLE u ALTER COLUMN at TYPE timestamp", "depends on session settings"),
        ("43", "ALTER TABLE u ALTER COLUMN n TYPE bigint", "zzz_bump would fire after the bridge"),
        ("44", "ALTER TABLE u RENAME COLUMN n TO m", "schema public_v44 already exists"),
        ("43", "ALTER TABLE w ALTER COLUMN n TYPE positive", "a domain with constraints"),
        ("43", "CREATE INDEX ON w (n); ALTER TABLE w ALTER COLUMN n TYPE bigint", "whose columns the window copies"),
    ]
    for version, ddl, text in cases:
        f = failure(conn, "SELECT migrate.expand(%s, %s)", (version, ddl))
        assert text in f.message, (ddl, f)
        assert f.detail and f.hint, (ddl, f)
    for ddl in ("ALTER TABLE t ALTER COLUMN id TYPE numeric", "ALTER TABLE t ALTER COLUMN g TYPE bigint"):
        f = failure(conn, "SELECT migrate.expand('43', %s)", (ddl,))
        assert f.sqlstate == "0A000", (ddl, f)
    assert conn.execute("SELECT count(*) FROM migrate.window_history").fetchone()[0] == 0


def test_a_plain_admin_opens_and_ends_windows_and_an_aborted_one_stays_ended(cluster, db, conn):
    """migrate_admin members who are not superusers: their own tables, their own windows."""
    conn.execute("CREATE ROLE window_admin LOGIN IN ROLE migrate_admin")
    conn.execute("GRANT CREATE ON DATABASE " + db + " TO window_admin")
    conn.execute("GRANT CREATE ON SCHEMA public TO window_admin")
    with cluster.connect(db, user="window_admin") as a:
        a.execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL DEFAULT 0, old_status text)")
        a.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
        a.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
        a.execute("CALL migrate.wait('43')")
        # Contract counts the rows as the opener, in the caller's session: another admin
        # without the opener's privileges may not.
        conn.execute("CREATE ROLE window_admin2 LOGIN IN ROLE migrate_admin")
        with cluster.connect(db, user="window_admin2") as other:
            f = failure(other, "SELECT migrate.contract('43')")
            assert f.sqlstate == "42501" and 'role "window_admin"' in f.detail, f
        a.execute("SELECT migrate.contract('43')")
        a.execute("SELECT migrate.expand('44', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
        a.execute("SELECT migrate.abort('44')")
        assert [window(a, v)["state"] for v in ("43", "44")] == ["contracted", "aborted"]
        a.execute("SELECT migrate.expand('45', 'ALTER TABLE orders ALTER COLUMN amount TYPE numeric')")
        a.execute("SELECT migrate.cancel('45')")
        wait_until(lambda: window(a, "45")["state"] == "cancelled", timeout=30)
        a.execute("SELECT migrate.abort('45')")
        f = failure(a, "SELECT migrate.retry('45')")
        assert f.sqlstate == "55000" and "aborted" in f.message, f


def test_row_level_security_carries_over_and_the_window_sees_every_row(cluster, db, conn):
    """A multi-tenant table: each tenant sees its rows through either version, the window's
    backfill and checks see all of them, and a window its policies would apply to is
    refused."""
    conn.execute("CREATE ROLE rls_owner LOGIN IN ROLE migrate_admin")
    conn.execute("CREATE ROLE rls_tenant LOGIN")
    conn.execute(f"GRANT CREATE ON DATABASE {db} TO rls_owner")
    conn.execute("GRANT CREATE ON SCHEMA public TO rls_owner")
    with cluster.connect(db, user="rls_owner") as owner:
        owner.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, tenant text NOT NULL, "
                      "amount int NOT NULL DEFAULT 0, note text)")
        owner.execute("INSERT INTO accounts SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, "
                      "g, 'n' || g FROM generate_series(1, 2000) g")
        owner.execute("ALTER TABLE accounts ENABLE ROW LEVEL SECURITY")
        owner.execute("CREATE POLICY tenant ON accounts USING (tenant = current_setting('app.tenant', true))")
        owner.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO rls_tenant")
        owner.execute("SELECT migrate.expand('43', 'ALTER TABLE accounts ALTER COLUMN amount TYPE bigint; "
                      "ALTER TABLE accounts RENAME COLUMN note TO memo')")
        # The caller's own setting is back; the worker's steps and the backfill carry 'off'.
        assert owner.execute("SHOW row_security").fetchone()[0] == "on"
        owner.execute("CALL migrate.wait('43')")
        assert window(owner, "43")["state"] == "published"
    assert conn.execute("SELECT settings ->> 'row_security' FROM migrate.history WHERE version = '43'"
                        ).fetchone()[0] == "off"
    assert conn.execute("SELECT array_agg(DISTINCT settings ->> 'row_security') FROM migrate.backfills"
                        ).fetchone()[0] == ["off"]
    # Every tenant's rows were copied, not only those a policy would show.
    assert conn.execute("SELECT count(*) FILTER (WHERE _migrate_43_amount = amount), count(*) "
                        "FROM accounts").fetchone() == (2000, 2000)
    with cluster.connect(db, user="rls_tenant", options="'-capp.tenant=a -csearch_path=public_v43,public'") as new, \
            cluster.connect(db, user="rls_tenant", options="-capp.tenant=b") as old:
        assert new.execute("SELECT count(*), min(memo) IS NOT NULL FROM accounts").fetchone() == (1000, True)
        assert new.execute("SELECT count(*) FROM accounts WHERE tenant = 'b'").fetchone()[0] == 0
        new.execute("INSERT INTO accounts (id, tenant, amount, memo) VALUES (3001, 'a', 7, 'x')")
        f = failure(new, "INSERT INTO accounts (id, tenant, amount) VALUES (3002, 'b', 7)")
        assert f.sqlstate == "42501" and "row-level security" in f.message, f
        assert old.execute("UPDATE accounts SET amount = amount + 1 RETURNING id").rowcount == 1000
        assert old.execute("SELECT count(*) FROM accounts WHERE id = 3001").fetchone()[0] == 0
    with cluster.connect(db, user="rls_owner") as owner:
        owner.execute("SELECT migrate.contract('43')")
        # Policies that apply to the opener refuse the window, and leave nothing.
        owner.execute("CREATE TABLE forced (id int PRIMARY KEY, tenant text, n int)")
        owner.execute("ALTER TABLE forced ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        owner.execute("CREATE POLICY mine ON forced USING (tenant = current_user)")
        f = failure(owner, "SELECT migrate.expand('44', 'ALTER TABLE forced ALTER COLUMN n TYPE bigint')")
        assert f.sqlstate == "42501" and "policies apply to you" in f.message, f
        assert "BYPASSRLS" in f.hint, f
        # A plain backfill there would fill only what the policies show its submitter.
        notices = []
        owner.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        owner.execute("SELECT migrate.backfill('forced', 'n = 1', 'n IS NULL')")
        assert [m for sev, m in notices if sev == "WARNING" and "fills only the rows" in m], notices
        # A window that reads no row as its opener (a rename) is planned whatever the
        # policies: every version's reads and writes still go through them.
        owner.execute("CREATE TABLE renamed (id int PRIMARY KEY, tenant text, n int)")
        owner.execute("INSERT INTO renamed VALUES (1, 'rls_owner', 1), (2, 'rls_tenant', 2)")
        owner.execute("ALTER TABLE renamed ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        owner.execute("CREATE POLICY mine ON renamed USING (tenant = current_user)")
        owner.execute("SELECT migrate.expand('44.5', 'ALTER TABLE renamed RENAME COLUMN n TO amount')")
        wait_until(lambda: window(owner, "44.5").get("state") == "published", timeout=60)
        assert owner.execute("SELECT id, amount FROM public_v44_5.renamed").fetchall() == [(1, 1)]
        owner.execute("SELECT migrate.contract('44.5')")
        assert owner.execute("SELECT id, amount FROM renamed").fetchall() == [(1, 1)]
    assert conn.execute("SELECT id, amount FROM renamed ORDER BY id").fetchall() == [(1, 1), (2, 2)]
    assert conn.execute("SELECT count(*) FROM migrate.window_history WHERE version = '44'").fetchone()[0] == 0
    # An opener that could see every row when the window opened, and no longer can: contract
    # says so, and swaps nothing.
    conn.execute("CREATE ROLE rls_bypasser LOGIN BYPASSRLS IN ROLE migrate_admin")
    conn.execute(f"GRANT CREATE ON DATABASE {db} TO rls_bypasser")
    conn.execute("GRANT CREATE ON SCHEMA public TO rls_bypasser")
    conn.execute("CREATE TABLE shared (id int PRIMARY KEY, tenant text, n int)")
    conn.execute("INSERT INTO shared SELECT g, 't' || g % 3, g FROM generate_series(1, 300) g")
    conn.execute("ALTER TABLE shared OWNER TO rls_bypasser")
    conn.execute("ALTER TABLE shared ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY mine ON shared USING (tenant = current_user)")
    with cluster.connect(db, user="rls_bypasser") as bypasser:
        bypasser.execute("SELECT migrate.expand('45', 'ALTER TABLE shared ALTER COLUMN n TYPE bigint')")
        bypasser.execute("CALL migrate.wait('45')")
        conn.execute("ALTER ROLE rls_bypasser NOBYPASSRLS")
        f = failure(bypasser, "SELECT migrate.contract('45')")
        assert f.sqlstate == "42501" and "now apply to role rls_bypasser" in f.message, f
        assert window(bypasser, "45")["state"] == "published"
        conn.execute("ALTER ROLE rls_bypasser BYPASSRLS")
        bypasser.execute("SELECT migrate.contract('45')")
    assert conn.execute("SELECT pg_typeof(amount)::text, count(*), count(*) FILTER (WHERE amount = id + "
                        "(id % 2)) FROM accounts GROUP BY 1").fetchall() == [("bigint", 2001, 2000)]
    assert conn.execute("SELECT count(*) FROM accounts WHERE memo IS NULL").fetchone()[0] == 0


def test_what_others_built_on_the_new_versions_views_is_named_before_contract_or_abort(cluster, db, conn):
    make_orders(conn, 100)
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders RENAME COLUMN old_status TO status')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("CREATE VIEW report AS SELECT id, status FROM public_v43.orders")
    conn.execute("CREATE FUNCTION open_orders() RETURNS bigint LANGUAGE sql "
                 "RETURN (SELECT count(*) FROM public_v43.orders WHERE status = 'new')")
    for verb in ("contract", "abort"):
        f = failure(conn, f"SELECT migrate.{verb}('43')")
        assert f.sqlstate == "2BP01" and "other objects depend on its new version's views" in f.message, f
        assert "view public.report depends on view public_v43.orders" in f.detail, f
        assert "function public.open_orders() depends on view public_v43.orders" in f.detail, f
        assert "CASCADE" not in (f.hint or ""), f
    assert window(conn, "43")["state"] == "published"
    conn.execute("DROP VIEW report")
    conn.execute("DROP FUNCTION open_orders()")
    conn.execute("SELECT migrate.contract('43')")
    assert conn.execute("SELECT count(*) FROM orders WHERE status = 'new'").fetchone()[0] == 100


def test_nothing_written_during_a_window_is_left_on_the_columns_it_sets_aside(cluster, db, conn):
    """Policies on a window's table are refused while it is open; a view written on a column
    the window sets aside makes contract roll back and name it; and a column something uses
    is not hidden in the first place."""
    make_orders(conn, 100)
    conn.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY everyone ON orders USING (true)")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint')")
    conn.execute("CALL migrate.wait('43')")
    for ddl in ("CREATE POLICY positive ON orders AS RESTRICTIVE USING (amount >= 0)",
                "ALTER POLICY everyone ON orders USING (amount >= 0)",
                "DROP POLICY everyone ON orders"):
        f = failure(conn, ddl)
        assert f.sqlstate == "55000" and "window" in f.message, (ddl, f)
    conn.execute("CREATE VIEW amounts AS SELECT id, amount FROM orders")
    f = failure(conn, "SELECT migrate.contract('43')")
    assert f.sqlstate == "2BP01" and "depend on the columns it sets aside" in f.message, f
    assert "view public.amounts depends on column _deprecated_43_amount of table public.orders" in f.detail, f
    assert window(conn, "43")["state"] == "published"
    assert conn.execute("SELECT format_type(atttypid, NULL) FROM pg_attribute "
                        "WHERE attrelid = 'orders'::regclass AND attname = 'amount'").fetchone() == ("integer",)
    conn.execute("DROP VIEW amounts")
    conn.execute("SELECT migrate.contract('43')")
    conn.execute("CREATE VIEW notes AS SELECT id, legacy_note FROM orders")
    f = failure(conn, "SELECT migrate.expand('44', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    assert f.sqlstate == "2BP01" and "rule _RETURN on view public.notes" in f.detail, f
    assert conn.execute("SELECT count(*) FROM migrate.window_history WHERE version = '44'").fetchone()[0] == 0


def test_a_type_owners_code_runs_as_the_writer_never_as_the_window_opener(cluster, db, conn):
    """A domain owned by a plain role, changed after the window opened: its check runs when
    a row is bridged, with the rights of the role writing the row."""
    conn.execute("CREATE ROLE window_typeowner LOGIN")
    conn.execute("CREATE ROLE window_writer2 LOGIN")
    conn.execute("CREATE SCHEMA typ AUTHORIZATION window_typeowner")
    conn.execute("CREATE TABLE public.seen (who text, admin boolean)")
    conn.execute("GRANT INSERT ON public.seen TO PUBLIC")
    with cluster.connect(db, user="window_typeowner") as o:
        o.execute("CREATE DOMAIN typ.cents AS bigint")
        o.execute("GRANT USAGE ON SCHEMA typ TO PUBLIC")
        o.execute("GRANT USAGE ON TYPE typ.cents TO PUBLIC")
    make_orders(conn, 100)
    conn.execute("GRANT SELECT, INSERT, UPDATE ON orders TO window_writer2")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE typ.cents')")
    conn.execute("CALL migrate.wait('43')")
    with cluster.connect(db, user="window_typeowner") as o:
        o.execute(
            "CREATE FUNCTION typ.spy(bigint) RETURNS boolean LANGUAGE sql AS $$ "
            "INSERT INTO public.seen SELECT current_user, pg_has_role(current_user, 'migrate_admin', 'member') "
            "RETURNING true $$"
        )
        o.execute("ALTER DOMAIN typ.cents ADD CONSTRAINT spy CHECK (typ.spy(VALUE)) NOT VALID")
    with cluster.connect(db, user="window_writer2") as w:
        w.execute("INSERT INTO orders (id, amount) VALUES (500, 5)")
        w.execute("UPDATE orders SET amount = 6 WHERE id = 500")
    assert set(conn.execute("SELECT who, admin FROM public.seen").fetchall()) == {("window_writer2", False)}


def test_values_only_the_new_type_holds_and_changes_text_cannot_show_are_bridged(cluster, db, conn):
    """A widening change: what the new version writes is more precise than the old column
    holds, and contract still sees every row in step. A change of a float that its text
    (extra_float_digits = 0) does not show is bridged all the same."""
    conn.execute("CREATE TABLE m (id int PRIMARY KEY, r real, n numeric(10,2))")
    conn.execute("INSERT INTO m SELECT g, g / 3.0, g / 3.0 FROM generate_series(1, 100) g")
    conn.execute("SELECT migrate.expand('43', 'ALTER TABLE m ALTER COLUMN r TYPE double precision, "
                 "ALTER COLUMN n TYPE numeric(12,4)')")
    conn.execute("CALL migrate.wait('43')")
    with cluster.connect(db, options=NEW_PATH) as n:
        n.execute("INSERT INTO m VALUES (1000, 0.1, 1.2345)")
        n.execute("UPDATE m SET n = 2.3456 WHERE id = 1")
    conn.execute("SET extra_float_digits = 0")
    conn.execute("UPDATE m SET r = 1.0000001 WHERE id = 2")
    conn.execute("RESET extra_float_digits")
    assert conn.execute("SELECT _migrate_43_r = r::double precision FROM m WHERE id = 2").fetchone() == (True,)
    assert conn.execute("SELECT n, _migrate_43_n FROM m WHERE id = 1000").fetchone() == (
        __import__("decimal").Decimal("1.23"), __import__("decimal").Decimal("1.2345"))
    conn.execute("SELECT migrate.contract('43')")
    assert conn.execute("SELECT r, n FROM m WHERE id = 1000").fetchone() == (0.1, __import__("decimal").Decimal("1.2345"))


CONSTRAINTS = """
    ALTER TABLE orders ALTER COLUMN legacy_note SET NOT NULL;
    ALTER TABLE orders ADD CONSTRAINT amount_not_negative CHECK (amount >= 0),
                       ADD FOREIGN KEY (customer_id) REFERENCES customers;
    ALTER TABLE orders ADD CONSTRAINT orders_ref_key UNIQUE (ref);
    ALTER TABLE orders ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid();
    CREATE INDEX orders_amount ON orders (amount);
"""


def constraints_of(conn) -> dict:
    return {name: (kind, valid) for name, kind, valid in conn.execute(
        "SELECT conname, contype, convalidated FROM pg_constraint WHERE conrelid = 'orders'::regclass"
    ).fetchall()}


def test_constraints_are_validated_and_keys_built_apart_while_clients_write(cluster, db, conn):
    """SET NOT NULL, CHECK, FOREIGN KEY, UNIQUE, ADD COLUMN NOT NULL with a volatile default and
    CREATE INDEX, written plainly: added NOT VALID, filled, validated and built CONCURRENTLY by
    the worker while an old-version client writes, enforced on new rows from the start, and
    set or attached at contract without a scan."""
    make_orders(conn, 200_000)
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE customers (id int PRIMARY KEY)")
    conn.execute("INSERT INTO customers SELECT generate_series(1, 100)")
    conn.execute("ALTER TABLE orders ADD COLUMN customer_id int, ADD COLUMN ref bigint")
    conn.execute("UPDATE orders SET customer_id = id % 100 + 1, ref = id")
    conn.execute("RESET migrate.guard")
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 5000")
    old = Client(cluster, db, "old", 1_000_000, version="44").start()
    time.sleep(0.3)
    plan = conn.execute("SELECT stage, statement FROM migrate.expand('44', %s)", (CONSTRAINTS,)).fetchall()
    stages = [s for s, _ in plan]
    assert stages == sorted(stages, key=["expand", "backfill", "build", "publish", "contract"].index), plan
    # The index as written, built CONCURRENTLY where it was written; the key's after the
    # backfill.
    assert plan[0][1] == "CREATE INDEX CONCURRENTLY orders_amount ON orders (amount)", plan[0]
    built = [q for s, q in plan if s == "build"]
    assert built == ["CREATE UNIQUE INDEX CONCURRENTLY orders_ref_key ON public.orders (ref)"], built
    wait_until(lambda: window(conn, "44").get("state") in ("published", "failed"), timeout=180, interval=0.2)
    assert window(conn, "44")["state"] == "published", conn.execute(
        "SELECT phase, state, error FROM migrate.steps WHERE version = '44'").fetchall()
    # Validated by the worker in a transaction of their own, after the expand's.
    got = constraints_of(conn)
    assert got["amount_not_negative"] == ("c", True)
    assert got["orders_customer_id_fkey"] == ("f", True)
    assert got["_migrate_44_legacy_note_not_null"] == ("c", True)
    assert got["_migrate_44_token_not_null"] == ("c", True)
    assert "orders_ref_key" not in got  # attached at contract
    assert conn.execute("SELECT count(*) FROM orders WHERE token IS NULL").fetchone()[0] == 0
    for index in ("orders_amount", "orders_ref_key"):
        assert conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", (index,)).fetchone() == (True,)
    # Enforced on new rows from the start of the window.
    for sql, state in [
        ("INSERT INTO orders (id, amount) VALUES (9000001, -1)", "23514"),
        ("INSERT INTO orders (id, customer_id) VALUES (9000002, 1000)", "23503"),
        ("INSERT INTO orders (id, legacy_note) VALUES (9000003, NULL)", "23514"),
        ("INSERT INTO orders (id, ref) VALUES (9000004, 1)", "23505"),
    ]:
        assert failure(conn, sql).sqlstate == state, sql
    # New pods, and pooled connections that declare the version per transaction, write
    # beside the old ones under the new constraints; nothing is renamed, so each keeps
    # working through contract.
    new = Client(cluster, db, "new", 2_000_000, version="44", new_status="old_status").start()
    pooled = Client(cluster, db, "pooled", 3_000_000, version="44", new_status="old_status").start()
    time.sleep(2)
    with old.writing, new.writing, pooled.writing:
        assert_each_write_seen_by_both(conn, (old, new, pooled))
    contract_started = time.monotonic()
    conn.execute("SELECT * FROM migrate.contract('44')")
    time.sleep(1)
    for client in (old, new, pooled):
        client.finish()
        # Only what names the dropped view schema fails, after contract: a new pod's
        # search path falls through to the table.
        early = [e for e in client.errors if e[0] < contract_started or e[1] != "42P01"]
        assert client.writes > 20 and early == [], (client.side, client.writes, early[:3])
        assert client.side == "pooled" or client.errors == [], (client.side, client.errors[:3])
        assert client.worst < LOCK_TIMEOUT_S + 1, (client.side, client.worst)
    assert conn.execute("SELECT count(*) FROM orders WHERE id >= 1000000").fetchone()[0] == sum(
        len(c.expected) for c in (old, new, pooled))
    got = constraints_of(conn)
    assert got["orders_ref_key"] == ("u", True)
    assert not [c for c in got if c.startswith("_migrate")], got
    not_null = dict(conn.execute(
        "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass "
        "AND attname IN ('legacy_note', 'token')").fetchall())
    assert not_null == {"legacy_note": True, "token": True}
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0
    # The worker ran the index as written, the expand, the backfill, the key's build, the
    # CHECK on the filled column and the foreign key, then each of the four validations in a
    # transaction of its own (no other lock held), the last with the views.
    kinds = [k for (k,) in conn.execute(
        "SELECT kind FROM migrate.steps WHERE version = '44' ORDER BY phase").fetchall()]
    assert kinds == ["top-level", "transaction", "backfill", "top-level"] + ["transaction"] * 5, kinds


def test_a_primary_key_is_proven_not_null_built_and_attached_and_abort_takes_it_back(cluster, db, conn):
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE events (id bigint, v int)")
    conn.execute("INSERT INTO events SELECT g, g FROM generate_series(1, 20000) g")
    conn.execute("RESET migrate.guard")
    conn.execute("SELECT * FROM migrate.expand('45', 'ALTER TABLE events ADD PRIMARY KEY (id)')")
    conn.execute("CALL migrate.wait('45')")
    assert conn.execute(
        "SELECT indisunique, indisvalid FROM pg_index WHERE indexrelid = 'events_pkey'::regclass"
    ).fetchone() == (True, True)
    assert failure(conn, "INSERT INTO events VALUES (NULL, 1)").sqlstate == "23514"
    assert failure(conn, "INSERT INTO events VALUES (1, 1)").sqlstate == "23505"
    conn.execute("SELECT * FROM migrate.contract('45')")
    assert conn.execute(
        "SELECT contype FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype <> 'n'").fetchall() == [("p",)]
    assert conn.execute(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'id'"
    ).fetchone() == (True,)
    # A second primary key, and a name taken, are refused before anything runs.
    f = failure(conn, "SELECT migrate.expand('46', 'ALTER TABLE events ADD PRIMARY KEY (v)')")
    assert f.sqlstate == "42P16", f.message
    f = failure(conn, "SELECT migrate.expand('46', 'ALTER TABLE events ADD CONSTRAINT events_pkey UNIQUE (v)')")
    assert f.sqlstate == "42710", f.message
    f = failure(conn, "SELECT migrate.expand('46', 'ALTER TABLE events ADD CONSTRAINT events UNIQUE (v)')")
    assert f.sqlstate == "42P07", f.message
    # Abort: the index built and the constraints added NOT VALID are dropped; nothing stays.
    conn.execute("""SELECT migrate.expand('47', $$
        ALTER TABLE events ADD CONSTRAINT v_key UNIQUE (v), ADD CONSTRAINT v_positive CHECK (v > 0);
        ALTER TABLE events ALTER COLUMN v SET NOT NULL$$)""")
    conn.execute("CALL migrate.wait('47')")
    conn.execute("SELECT * FROM migrate.abort('47')")
    assert conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype <> 'n'").fetchall() == [("events_pkey",)]
    assert conn.execute("SELECT to_regclass('v_key')").fetchone() == (None,)
    conn.execute("INSERT INTO events VALUES (0, NULL)")


def test_three_clients_write_while_a_primary_key_is_proven_built_and_attached(cluster, db, conn):
    """ADD PRIMARY KEY on a nullable column: NOT NULL proven by a CHECK added NOT VALID and
    validated, the unique index built CONCURRENTLY, both attached at contract without a scan,
    while old, new and pooled clients insert, update, upsert, delete and copy."""
    make_orders(conn, 200_000)
    conn.execute("SET migrate.guard = off")
    conn.execute("ALTER TABLE orders DROP CONSTRAINT orders_pkey, ALTER COLUMN id DROP NOT NULL")
    conn.execute("CREATE UNIQUE INDEX orders_id_unique ON orders (id)")
    conn.execute("RESET migrate.guard")
    conn.execute(f"ALTER DATABASE {db} SET migrate.backfill_max_batch_size = 5000")
    old = Client(cluster, db, "old", 1_000_000, version="45").start()
    time.sleep(0.3)
    conn.execute("SELECT * FROM migrate.expand('45', 'ALTER TABLE orders ADD PRIMARY KEY (id)')")
    wait_until(lambda: window(conn, "45").get("state") in ("published", "failed"), timeout=180, interval=0.2)
    assert window(conn, "45")["state"] == "published", conn.execute(
        "SELECT phase, state, error FROM migrate.steps WHERE version = '45'").fetchall()
    assert conn.execute("SELECT indisunique, indisvalid, indisprimary FROM pg_index "
                        "WHERE indexrelid = 'orders_pkey'::regclass").fetchone() == (True, True, False)
    assert failure(conn, "INSERT INTO orders (id, amount) VALUES (NULL, 1)").sqlstate == "23514"
    new = Client(cluster, db, "new", 2_000_000, version="45", new_status="old_status").start()
    pooled = Client(cluster, db, "pooled", 3_000_000, version="45", new_status="old_status").start()
    time.sleep(2)
    with old.writing, new.writing, pooled.writing:
        assert_each_write_seen_by_both(conn, (old, new, pooled))
    contract_started = time.monotonic()
    conn.execute("SELECT * FROM migrate.contract('45')")
    after_contract = time.monotonic()
    time.sleep(1)
    for client in (old, new, pooled):
        client.finish()
        # Only what names the dropped view schema fails, after contract.
        early = [e for e in client.errors if e[0] < contract_started or e[1] != "42P01"]
        assert client.writes > 20 and early == [], (client.side, client.writes, early[:3])
        assert client.side == "pooled" or client.errors == [], (client.side, client.errors[:3])
        assert client.worst < LOCK_TIMEOUT_S + 1, (client.side, client.worst)
    assert after_contract - contract_started < LOCK_TIMEOUT_S
    assert conn.execute("SELECT count(*) FROM orders WHERE id >= 1000000").fetchone()[0] == sum(
        len(c.expected) for c in (old, new, pooled))
    got = constraints_of(conn)
    assert got["orders_pkey"] == ("p", True) and not [c for c in got if c.startswith("_migrate")], got
    assert conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                        "AND attname = 'id'").fetchone() == (True,)
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0


KEY_SCHEMA = """
    CREATE TABLE orders (id serial PRIMARY KEY, amount int NOT NULL DEFAULT 0, customer int);
    CREATE INDEX orders_customer_id ON orders (customer, id);
    CREATE TABLE order_items (id serial PRIMARY KEY,
                              order_id int NOT NULL REFERENCES orders ON DELETE CASCADE, qty int);
    CREATE INDEX order_items_order_id ON order_items (order_id);
    INSERT INTO orders (amount, customer) SELECT g, g % 10 FROM generate_series(1, 50000) g;
    INSERT INTO order_items (order_id, qty) SELECT g, 1 FROM generate_series(1, 50000) g;
"""


def test_a_referenced_serial_key_moves_to_bigint_with_its_indexes_keys_and_sequence(cluster, db, conn):
    """int -> bigint on a serial primary key that another table references: the copies get
    their indexes built CONCURRENTLY, a new foreign key between the copies is validated before
    publication, and contract swaps the key, the indexes, the foreign key and the sequence,
    while old-version, new-version and pooled clients keep inserting orders and items (keys
    from the one sequence) and deleting orders (their items cascade)."""
    conn.execute("SET migrate.guard = off")
    conn.execute(KEY_SCHEMA)
    conn.execute("RESET migrate.guard")
    conn.execute("ANALYZE")
    errors = {"old": [], "new": [], "pooled": []}
    inserted = {"old": 0, "new": 0, "pooled": 0}
    stop = threading.Event()
    worst = [0.0]

    def writer(side):
        options = {"options": "-csearch_path=public_v50,public"} if side == "new" else {}
        prefix = "public_v50." if side == "pooled" else ""
        with cluster.connect(db, **options) as c:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    with c.transaction():
                        if side == "pooled":
                            c.execute("SET LOCAL migrate.client_version = '50'")
                        (order,) = c.execute(f"INSERT INTO {prefix}orders (amount, customer) VALUES (1, 1) "
                                             "RETURNING id").fetchone()
                        c.execute(f"INSERT INTO {prefix}order_items (order_id, qty) VALUES (%s, 2)", (order,))
                        c.execute(f"DELETE FROM {prefix}orders WHERE id = %s", (random.randint(1, 50000),))
                    inserted[side] += 1
                except psycopg.Error as e:
                    errors[side].append((started, e.diag.sqlstate, str(e)))
                worst[0] = max(worst[0], time.monotonic() - started)
                time.sleep(0.005)

    def start(side):
        thread = threading.Thread(target=writer, args=(side,), daemon=True)
        thread.start()
        return thread

    writers = [start("old")]
    ddl = ("ALTER TABLE orders ALTER COLUMN id TYPE bigint; "
           "ALTER TABLE order_items ALTER COLUMN order_id TYPE bigint")
    conn.execute("SELECT * FROM migrate.expand('50', %s)", (ddl,))
    wait_until(lambda: window(conn, "50").get("state") in ("published", "failed"), timeout=240, interval=0.2)
    assert window(conn, "50")["state"] == "published", conn.execute(
        "SELECT phase, state, error_message FROM migrate.steps WHERE version = '50'").fetchall()
    # New pods and pooled connections roll out: their keys come from the same sequence, and
    # the copies' foreign key holds for them.
    writers += [start("new"), start("pooled")]
    with cluster.connect(db, options="-csearch_path=public_v50,public") as n:
        assert failure(n, "INSERT INTO order_items (order_id, qty) VALUES (-5, 3)").sqlstate == "23503"
    time.sleep(2)
    assert all(inserted[side] > 20 for side in inserted), inserted
    assert {side: e[:3] for side, e in errors.items() if e} == {}
    # Every item refers to its order on both sides, and the copies agree with the originals.
    assert conn.execute("SELECT count(*) FROM order_items i LEFT JOIN orders o ON o.id = i.order_id "
                        "WHERE o.id IS NULL").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM public_v50.order_items i LEFT JOIN public_v50.orders o "
                        "ON o.id = i.order_id WHERE o.id IS NULL").fetchone()[0] == 0
    assert rows_out_of_step(conn, "50") == 0
    started = time.monotonic()
    conn.execute("SELECT * FROM migrate.contract('50')")
    took = time.monotonic() - started
    time.sleep(0.5)
    stop.set()
    for thread in writers:
        thread.join(timeout=30)
    # After contract, only the old writer's prepared RETURNING id, now a bigint, and the
    # pooled one's names of the dropped view schema; a new pod's path falls through.
    assert [e for e in errors["old"] if e[0] < started or e[1] != "0A000"] == [], errors["old"][:3]
    assert [e for e in errors["pooled"] if e[0] < started or e[1] != "42P01"] == [], errors["pooled"][:3]
    assert errors["new"] == [], errors["new"][:3]
    assert worst[0] < LOCK_TIMEOUT_S + 1 and took < LOCK_TIMEOUT_S + 1, (worst, took)
    assert conn.execute("SELECT count(*) FROM order_items i LEFT JOIN orders o ON o.id = i.order_id "
                        "WHERE o.id IS NULL").fetchone()[0] == 0
    types = dict(conn.execute(
        "SELECT attrelid::regclass::text || '.' || attname, format_type(atttypid, atttypmod) "
        "FROM pg_attribute WHERE attname IN ('id', 'order_id') AND attrelid IN "
        "('orders'::regclass, 'order_items'::regclass)").fetchall())
    assert types == {"orders.id": "bigint", "order_items.id": "integer", "order_items.order_id": "bigint"}
    definitions = dict(conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) || ' ' || convalidated FROM pg_constraint "
        "WHERE conrelid IN ('orders'::regclass, 'order_items'::regclass) AND contype <> 'n'").fetchall())
    # PostgreSQL 18 records NOT NULL as constraints: the copies' get the names the old
    # columns' had, as a fresh schema would name them.
    assert conn.execute(
        "SELECT array_agg(c.conname::text ORDER BY c.conname) FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "WHERE c.contype = 'n' AND a.attname IN ('id', 'order_id') "
        "AND c.conrelid IN ('orders'::regclass, 'order_items'::regclass)"
    ).fetchone()[0] in (None, ["order_items_id_not_null", "order_items_order_id_not_null", "orders_id_not_null"])
    assert definitions == {
        "orders_pkey": "PRIMARY KEY (id) true",
        "order_items_pkey": "PRIMARY KEY (id) true",
        "order_items_order_id_fkey": "FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE true",
    }, definitions
    indexes = dict(conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid IN ('orders'::regclass, 'order_items'::regclass)").fetchall())
    assert indexes["orders_customer_id"].endswith("(customer, id)"), indexes
    assert indexes["order_items_order_id"].endswith("(order_id)"), indexes
    assert len(indexes) == 4, indexes
    assert conn.execute(
        "SELECT format_type(seqtypid, NULL), seqmax FROM pg_sequence WHERE seqrelid = 'orders_id_seq'::regclass"
    ).fetchone() == ("bigint", 9223372036854775807)
    assert conn.execute("SELECT pg_get_serial_sequence('orders', 'id')").fetchone() == ("public.orders_id_seq",)
    # Values only the new type holds now go in, and the old writer's code still works.
    conn.execute("INSERT INTO orders (id, amount) VALUES (5000000000, 1)")
    conn.execute("INSERT INTO order_items (order_id, qty) VALUES (5000000000, 1)")
    conn.execute("DELETE FROM orders WHERE id = 5000000000")
    assert conn.execute("SELECT count(*) FROM order_items WHERE order_id = 5000000000").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0


def test_a_table_renamed_in_a_window_has_both_names_until_contract(cluster, db, conn):
    make_orders(conn, 1000)
    old = Client(cluster, db, "old", 1_000_000, version="51", new_table="purchases").start()
    conn.execute("SELECT * FROM migrate.expand('51', $$ALTER TABLE orders RENAME TO purchases;"
                 " ALTER TABLE orders RENAME COLUMN old_status TO status$$)")
    conn.execute("CALL migrate.wait('51')")
    # The three kinds of client at once: the old name, the new one by search path, and the
    # new one by name in a pooled connection.
    new = Client(cluster, db, "new", 2_000_000, version="51", new_table="purchases").start()
    pooled = Client(cluster, db, "pooled", 3_000_000, version="51", new_table="purchases").start()
    time.sleep(2)
    with old.writing, new.writing, pooled.writing:
        assert_each_write_seen_by_both(conn, (old, new, pooled))
    for client in (old, new, pooled):
        client.finish()
        assert client.writes > 20 and client.errors == [], (client.side, client.writes, client.errors[:3])
        assert client.worst < LOCK_TIMEOUT_S + 1, (client.side, client.worst)
    with cluster.connect(db, options="-csearch_path=public_v51,public") as n:
        n.execute("INSERT INTO purchases (id, amount, status) VALUES (5000, 5, 'from new')")
        assert n.execute("SELECT count(*) FROM purchases WHERE id < 1000000").fetchone() == (1001,)
    conn.execute("INSERT INTO orders (id, amount, old_status) VALUES (5001, 6, 'from old')")
    f = failure(conn, "ALTER TABLE orders ADD COLUMN z int")
    assert "window-open" in f.message, f.message
    conn.execute("SELECT * FROM migrate.contract('51')")
    assert conn.execute("SELECT to_regclass('orders'), to_regclass('purchases')::text").fetchone() == (
        None, "purchases")
    assert conn.execute(
        "SELECT status FROM purchases WHERE id IN (5000, 5001) ORDER BY id").fetchall() == [
        ("from new",), ("from old",)]
    assert conn.execute("SELECT count(*) FROM purchases WHERE id >= 1000000").fetchone()[0] == sum(
        len(c.expected) for c in (old, new, pooled))
    f = failure(conn, "SELECT migrate.expand('52', 'ALTER TABLE purchases RENAME TO orders_pkey')")
    assert f.sqlstate == "42P07", f.message


def test_each_versions_writes_are_counted_and_pg_migrates_own_are_not(cluster, db, conn):
    make_orders(conn, 20_000)
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    conn.execute("CALL migrate.wait('43')")
    # The backfill and the publication were pg_migrate's writes: neither version's.
    assert (window(conn, "43")["old_writes"], window(conn, "43")["new_writes"]) == (0, 0)
    with cluster.connect(db) as old:
        old.execute("INSERT INTO orders (id, amount) VALUES (100001, 1)")
        old.execute("INSERT INTO orders (id, amount) VALUES (100002, 1)")
        old.execute("UPDATE orders SET amount = 2 WHERE id = 100001")
        old.execute("DELETE FROM orders WHERE id = 100002")
    with cluster.connect(db, options=NEW_PATH) as new:
        new.execute("INSERT INTO orders (id, amount) VALUES (100003, 1)")
        new.execute("UPDATE orders SET status = 'x' WHERE id = 100003")
    with cluster.connect(db) as pooled:
        with pooled.transaction():
            pooled.execute("SET LOCAL migrate.client_version = '43'")
            pooled.execute("INSERT INTO public_v43.orders (id, amount) VALUES (100004, 1)")
    w = window(conn, "43")
    assert (w["old_writes"], w["new_writes"]) == (4, 3), w
    assert (w["old_writes_last_minute"], w["new_writes_last_minute"]) == (4, 3), w
    assert w["old_last_write"] is not None and w["new_last_write"] >= w["old_last_write"], w
    conn.execute("SELECT * FROM migrate.contract('43')")
    w = window(conn, "43")
    assert (w["state"], w["old_writes"], w["new_writes"]) == ("contracted", 4, 3), w


def test_an_expired_window_is_contracted_once_the_old_version_stops_writing(cluster, db, conn):
    mark = cluster.log_mark()
    conn.execute(f"ALTER DATABASE {db} SET migrate.window_quiet_time = 2")
    make_orders(conn, 1000)
    conn.execute("LISTEN migrate_window")
    old = Client(cluster, db, "old", 1_000_000).start()
    conn.execute("SELECT * FROM migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note', "
                 "ttl => '2 s', on_expiry => 'contract')")
    conn.execute("CALL migrate.wait('43')")
    time.sleep(6)
    # Expired, but the old version still writes: the window stays.
    w = window(conn, "43")
    assert w["expired"] and w["state"] == "published" and w["old_writes_last_minute"] > 0, w
    old.finish()
    assert old.errors == [], old.errors[:3]
    wait_until(lambda: window(conn, "43")["state"] == "contracted", timeout=60, interval=0.5,
               evidence=lambda: f"window: {window(conn, '43')}\n{worker_evidence(cluster, conn, mark)}")
    assert window(conn, "43")["ended_by"] == "postgres"
    assert conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass "
        "AND attname = '_deprecated_43_legacy_note'").fetchone() == (1,)
    payloads = [n.payload for n in conn.notifies(timeout=1, stop_after=10)]
    assert {"version": "43", "on_expiry": "contract"} in [json.loads(p) for p in payloads], payloads


def test_an_expired_window_is_aborted_only_if_the_new_version_never_wrote(cluster, db, conn):
    conn.execute(f"ALTER DATABASE {db} SET migrate.window_quiet_time = 2")
    make_orders(conn, 1000)
    conn.execute("CREATE TABLE other (id int PRIMARY KEY, note text)")
    conn.execute("SELECT * FROM migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note', "
                 "ttl => '2 s', on_expiry => 'abort')")
    conn.execute("CALL migrate.wait('43')")
    wait_until(lambda: window(conn, "43")["state"] == "aborted", timeout=60, interval=0.5)
    conn.execute("SELECT * FROM migrate.expand('44', 'ALTER TABLE other DROP COLUMN note', "
                 "ttl => '2 s', on_expiry => 'abort')")
    conn.execute("CALL migrate.wait('44')")
    with cluster.connect(db, options="-csearch_path=public_v44,public") as new:
        new.execute("INSERT INTO other (id) VALUES (1)")
    time.sleep(8)
    w = window(conn, "44")
    assert (w["state"], w["expired"], w["new_writes"]) == ("published", True, 1), w
    f = failure(conn, "SELECT migrate.expand('45', 'ALTER TABLE orders ADD COLUMN z int', on_expiry => 'drop')")
    assert f.sqlstate == "22023" and "on_expiry" in f.message, f.message


def test_constants_are_planned_as_iso_whatever_the_callers_datestyle(cluster, db, conn):
    conn.execute("CREATE TABLE events (id int PRIMARY KEY, d date, span interval)")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET IntervalStyle = 'sql_standard'")
    plan = [q for (q,) in conn.execute(
        "SELECT statement FROM migrate.expand('46', $$ALTER TABLE events ADD CONSTRAINT d_after "
        "CHECK (d > '01/02/2020'::date AND span < '1 day 2 hours'::interval)$$, dry_run => true)")]
    added = [q for q in plan if "ADD CONSTRAINT d_after" in q]
    assert added and "'2020-02-01'::date" in added[0] and "'1 day 02:00:00'::interval" in added[0], added


def test_an_aborted_serial_key_copy_stops_drawing_from_the_sequence(cluster, db, conn):
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE TABLE o (id serial PRIMARY KEY, v int)")
    conn.execute("INSERT INTO o (v) SELECT g FROM generate_series(1, 1000) g")
    conn.execute("RESET migrate.guard")
    conn.execute("SELECT * FROM migrate.expand('47', 'ALTER TABLE o ALTER COLUMN id TYPE bigint')")
    conn.execute("CALL migrate.wait('47')")
    conn.execute("SELECT * FROM migrate.abort('47')")
    before = conn.execute("SELECT last_value FROM o_id_seq").fetchone()[0]
    conn.execute("INSERT INTO o (v) VALUES (1)")
    assert conn.execute("SELECT last_value FROM o_id_seq").fetchone()[0] == before + 1


def test_set_aside_columns_are_dropped_after_the_retention(cluster, db, conn):
    mark = cluster.log_mark()
    conn.execute(f"ALTER DATABASE {db} SET migrate.deprecated_retention = 2")
    make_orders(conn, 1000)
    conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
    conn.execute("CALL migrate.wait('43')")
    conn.execute("SELECT * FROM migrate.contract('43')")
    set_aside = ("SELECT array_agg(attname::text ORDER BY attname) FROM pg_attribute "
                 "WHERE attrelid = 'orders'::regclass AND attname LIKE '\\_deprecated%' AND NOT attisdropped")
    assert conn.execute(set_aside).fetchone()[0] == ["_deprecated_43_amount", "_deprecated_43_legacy_note"]
    wait_until(lambda: window(conn, "43")["deprecated_dropped_at"] is not None, timeout=30, interval=0.5,
               evidence=lambda: f"window: {window(conn, '43')}\n{worker_evidence(cluster, conn, mark)}")
    assert conn.execute(set_aside).fetchone()[0] is None
    assert conn.execute(
        "SELECT count(*) FROM migrate.ddl_log WHERE migration_version = '43' AND command_tag = 'ALTER TABLE' "
        "AND guard_rule = 'drop-column'").fetchone()[0] >= 1
    assert conn.execute("SELECT count(*) FROM migrate.drift()").fetchone()[0] == 0


def test_a_set_aside_column_that_cannot_be_dropped_is_retried_later_not_in_a_loop(cluster, db, conn):
    conn.execute(f"ALTER DATABASE {db} SET migrate.deprecated_retention = 1")
    make_orders(conn, 100)
    conn.execute("SELECT * FROM migrate.expand('43', 'ALTER TABLE orders DROP COLUMN legacy_note')")
    conn.execute("CALL migrate.wait('43')")
    conn.execute("SELECT * FROM migrate.contract('43')")
    conn.execute("SET migrate.guard = off")
    conn.execute("CREATE VIEW notes AS SELECT id, _deprecated_43_legacy_note FROM orders")
    wait_until(lambda: conn.execute(
        "SELECT deprecated_attempts FROM migrate.window_history WHERE version = '43'").fetchone()[0] >= 1,
        timeout=30, interval=0.5)
    time.sleep(6)
    attempts, waits = conn.execute(
        "SELECT deprecated_attempts, deprecated_retry_at > now() FROM migrate.window_history "
        "WHERE version = '43'").fetchone()
    assert attempts == 1 and waits, attempts
    assert window(conn, "43")["deprecated_dropped_at"] is None


def test_column_privileges_hold_on_the_new_version_and_follow_grants_and_revokes(cluster, db, conn):
    """A table with column privileges: the new version's view checks the table's privileges as
    its owner and has the table's own, column by column under the new names, kept in step
    with every GRANT and REVOKE; at contract the copy has what its original had."""
    make_orders(conn, 200)
    roles = ("window_col_reader", "window_col_other", "window_col_bob", "window_col_carol", "window_col_idle")
    for role in roles:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        conn.execute("GRANT SELECT (id, amount, old_status), UPDATE (amount) ON orders TO window_col_reader")
        conn.execute("GRANT SELECT (id, amount) ON orders TO window_col_bob WITH GRANT OPTION")
        conn.execute("SELECT * FROM migrate.expand('43', %s)", (DDL,))
        conn.execute("CALL migrate.wait('43')")
        assert window(conn, "43")["state"] == "published"
        assert conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'public_v43.orders'::regclass"
                            ).fetchone()[0] == ["security_invoker=false"]

        def session(role: str, new: bool = True):
            extra = {"options": NEW_PATH} if new else {}
            return cluster.connect(db, user=role, **extra)

        with session("window_col_reader") as r:
            assert r.execute("SELECT id, amount, pg_typeof(amount)::text, status FROM orders WHERE id = 1"
                             ).fetchone() == (1, 1, "bigint", "new")
            r.execute("UPDATE orders SET amount = 5 WHERE id = 1")
            # What the table does not grant it, the view does not either.
            assert failure(r, "UPDATE orders SET status = 'x' WHERE id = 1").sqlstate == "42501"
            assert failure(r, "SELECT fulfillment_status FROM orders").sqlstate == "42501"
            assert failure(r, "SELECT legacy_note FROM orders").sqlstate == "42703"
        assert conn.execute("SELECT amount FROM public.orders WHERE id = 1").fetchone() == (5,)
        with session("window_col_reader", new=False) as r:
            assert r.execute("SELECT amount, old_status FROM orders WHERE id = 2").fetchone() == (2, "new")
        with session("window_col_other") as o:
            assert failure(o, "SELECT id FROM orders").sqlstate == "42501"
        # A holder of a grant option grants on: the new version's view has the privilege; the
        # copy has the owner's grants only (a grant is its grantor's, and cannot be made again
        # as him). carol has amount from the owner too.
        conn.execute("GRANT SELECT (amount) ON orders TO window_col_carol")
        with session("window_col_bob", new=False) as b:
            b.execute("GRANT SELECT (amount) ON orders TO window_col_carol WITH GRANT OPTION")
        copy_acl = ("SELECT attacl::text[] FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                    "AND attname = '_migrate_43_amount'")
        acl = conn.execute(copy_acl).fetchone()[0]
        assert "window_col_carol=r/postgres" in acl and "window_col_carol=r*/window_col_bob" not in acl, acl
        # A change to bob's own privileges reaches the copy.
        conn.execute("GRANT REFERENCES (amount) ON orders TO window_col_bob")
        assert "window_col_bob=r*x/postgres" in conn.execute(copy_acl).fetchone()[0]
        # An open transaction that set off the privileges' upkeep without changing any holds
        # nobody up: they were in step, so it wrote nothing.
        with session("window_col_idle", new=False) as idle:
            idle.execute("BEGIN")
            idle.execute("ALTER TABLE IF EXISTS no_such_table ADD COLUMN y int")
            conn.execute("SET statement_timeout = '10s'")
            # A REVOKE on the table holds on the new version at once; so does a GRANT.
            conn.execute("REVOKE SELECT (old_status) ON orders FROM window_col_reader")
            conn.execute("RESET statement_timeout")
            idle.execute("ROLLBACK")
        conn.execute("GRANT SELECT (fulfillment_status) ON orders TO window_col_reader")
        conn.execute("GRANT SELECT ON orders TO window_col_other")
        with session("window_col_reader") as r:
            assert failure(r, "SELECT status FROM orders").sqlstate == "42501"
            assert r.execute("SELECT fulfillment_status FROM orders WHERE id = 1").fetchone() == ("pending",)
        with session("window_col_other") as o:
            assert o.execute("SELECT count(*) FROM orders").fetchone() == (200,)
        conn.execute("REVOKE SELECT ON orders FROM window_col_other")
        with session("window_col_other") as o:
            assert failure(o, "SELECT id FROM orders").sqlstate == "42501"
        # bob's grant option taken away: what he granted goes, on the new version too.
        conn.execute("REVOKE SELECT (amount) ON orders FROM window_col_carol")
        with session("window_col_carol") as c:  # amount only: no id to filter by
            assert c.execute("SELECT max(amount) FROM orders").fetchone() == (200,)
        conn.execute("REVOKE SELECT (id, amount) ON orders FROM window_col_bob CASCADE")
        assert "window_col_carol" not in str(conn.execute(copy_acl).fetchone()[0])
        with session("window_col_carol") as c:
            assert failure(c, "SELECT amount FROM orders").sqlstate == "42501"
        # The table is known by its schema's name until the window ends.
        f = failure(conn, "ALTER SCHEMA public RENAME TO public_old")
        assert "window-open: schema public is inside the open expand window of version 43" in f.message, f
        # Row-level security turned on by someone who turned the guard off: the view, which
        # checks as its owner, grants nothing until it is off again.
        conn.execute("SET migrate.guard = off")
        conn.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
        with session("window_col_reader") as r:
            assert failure(r, "SELECT amount FROM orders").sqlstate == "42501"
        conn.execute("ALTER TABLE orders DISABLE ROW LEVEL SECURITY")
        conn.execute("RESET migrate.guard")
        with session("window_col_reader") as r:
            assert r.execute("SELECT amount FROM orders WHERE id = 1").fetchone() == (5,)
        conn.execute("SELECT * FROM migrate.contract('43')")
        # The copy that became amount has amount's privileges; status has what old_status had.
        with session("window_col_reader", new=False) as r:
            assert r.execute("SELECT amount, pg_typeof(amount)::text FROM orders WHERE id = 1").fetchone() == (
                5, "bigint")
            r.execute("UPDATE orders SET amount = 6 WHERE id = 1")
            assert failure(r, "SELECT status FROM orders").sqlstate == "42501"
            assert failure(r, "UPDATE orders SET id = 7 WHERE id = 1").sqlstate == "42501"
        with session("window_col_carol", new=False) as c:
            assert failure(c, "SELECT amount FROM orders").sqlstate == "42501"
        # A window with nothing for the worker publishes in expand's own call, privileges
        # included.
        conn.execute("CREATE TABLE plain (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO plain VALUES (1, 2)")
        conn.execute("GRANT SELECT (id, v) ON plain TO window_col_reader")
        conn.execute("SELECT * FROM migrate.expand('45', 'ALTER TABLE plain RENAME COLUMN v TO w')")
        with cluster.connect(db, user="window_col_reader", options="-csearch_path=public_v45,public") as r:
            assert r.execute("SELECT id, w FROM plain").fetchall() == [(1, 2)]
        conn.execute("SELECT * FROM migrate.abort('45')")
        # Row-level security beside column privileges: a view checking as its owner would
        # apply the policies to the owner, so the window is refused.
        conn.execute("SET migrate.guard = off")
        conn.execute("CREATE TABLE guarded (id int PRIMARY KEY, v int)")
        conn.execute("ALTER TABLE guarded ENABLE ROW LEVEL SECURITY")
        conn.execute("GRANT SELECT (id) ON guarded TO window_col_reader")
        conn.execute("RESET migrate.guard")
        f = failure(conn, "SELECT migrate.expand('44', 'ALTER TABLE guarded RENAME COLUMN v TO w')")
        assert f.sqlstate == "0A000" and "column privileges and row-level security" in f.message, f
        assert f.detail and f.hint
    finally:
        for role in roles:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_role_that_leaves_the_group_that_let_it_use_the_schema_loses_the_new_version(cluster, db, conn):
    """A table with column privileges in a schema its reader may use only through a group: the
    new version's view (which checks as its owner) grants the reader what the table does.
    `REVOKE group FROM reader` sets off no event trigger (roles are the cluster's); the
    worker carries the privileges again within its round, so the view does not outlast the
    schema's."""
    roles = ("window_member", "window_schema_users")
    for role in roles:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        conn.execute("CREATE SCHEMA ledger")
        conn.execute("CREATE TABLE ledger.accounts (id int PRIMARY KEY, balance int, note text)")
        conn.execute("INSERT INTO ledger.accounts SELECT g, g * 10, 'n' FROM generate_series(1, 5) g")
        conn.execute("GRANT SELECT (id, balance) ON ledger.accounts TO window_member")
        conn.execute("GRANT USAGE ON SCHEMA ledger TO window_schema_users")
        conn.execute("GRANT window_schema_users TO window_member")
        conn.execute("SELECT * FROM migrate.expand('47', 'ALTER TABLE ledger.accounts RENAME COLUMN note TO memo')")
        assert window(conn, "47")["state"] == "published"

        def reads_new_version() -> bool:
            with cluster.connect(db, user="window_member", options="-csearch_path=ledger_v47,ledger") as m:
                try:
                    m.execute("SELECT id, balance FROM accounts WHERE id = 1").fetchone()
                    return True
                except psycopg.errors.InsufficientPrivilege:
                    return False

        assert reads_new_version()
        ddl_logged = conn.execute("SELECT count(*) FROM migrate.ddl_log").fetchone()[0]
        conn.execute("REVOKE window_schema_users FROM window_member")
        with cluster.connect(db, user="window_member") as m:
            assert failure(m, "SELECT id FROM ledger.accounts").sqlstate == "42501"
        # Nothing but the worker's round: no GRANT anywhere sets the upkeep off.
        wait_until(lambda: not reads_new_version(), timeout=45, interval=1)
        revoked = conn.execute(
            "SELECT command_tag, object_identity FROM migrate.ddl_log ORDER BY logged_at OFFSET %s",
            (ddl_logged,)).fetchall()
        assert revoked and all(tag == "REVOKE" for tag, _ in revoked), revoked
        # And back with the membership, again by the worker alone.
        conn.execute("GRANT window_schema_users TO window_member")
        wait_until(reads_new_version, timeout=45, interval=1)
        # In step, a round writes nothing.
        logged = conn.execute("SELECT count(*) FROM migrate.ddl_log").fetchone()[0]
        time.sleep(12)
        assert conn.execute("SELECT count(*) FROM migrate.ddl_log").fetchone()[0] == logged
        conn.execute("SELECT * FROM migrate.abort('47')")
    finally:
        for role in roles:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
