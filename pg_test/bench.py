"""`make bench`: pg_migrate's costs and bounds, measured side by side in one run.

Every figure is printed with the baseline it is compared with, and as a ratio. Nothing here
asserts a timing; the tests assert correctness bounds, this measures.

  apply-overhead   N small migrations through migrate.apply vs the same SQL run directly,
                   alternating one by one in two identical databases.
  lock-queue       a session holds a conflicting lock; the longest wait seen by concurrent
                   readers while a migration waits and retries, vs migrate.lock_timeout, and vs
                   the same ALTER TABLE run plainly (no lock timeout).
  guard            the same 2,000 DDL statements on small existing tables with the guard
                   enforcing and with it off, alternating one by one; and migrate.lint's time
                   per statement over the same statements.
  worker-latency   from the commit of a phased migration (its commit timestamp) to the worker
                   starting its first phase (steps.started_at), median over N submissions:
                   with the database's worker still running, and with it gone (the launcher
                   starts one).
  writer-wait      pgbench writers insert and update a table of 1.2M rows while an index is
                   built on it: their longest transaction during CREATE INDEX CONCURRENTLY run
                   by the worker, vs during a plain CREATE INDEX of the same index.
  dry-run          a 20-statement migration on populated tables: migrate.dry_run vs the real
                   migrate.apply (in a transaction rolled back afterwards), alternating, in two
                   identical databases.
  schema-scale     on schemas of 0, 500, 2,000 and 10,000 tables (each with a key, a foreign
                   key, an index and a default): 20 small migrations through migrate.apply vs the
                   same SQL directly in a transaction; the worst wait of readers of a table
                   altered through migrate.apply vs directly; migrate.fingerprint() and
                   migrate.describe() on demand; migrate.dry_run and migrate.verify.
  backfill         fill a new column of a 1M- and a 5M-row table three ways, on three identical
                   tables: one UPDATE, a psycopg client loop (next 1,000 ids by keyset, update
                   them, commit), and migrate.backfill; each under a rate-limited pgbench
                   workload updating random rows of the same table, vs that workload with no
                   fill. Each phase starts from a checkpoint with the previous fill vacuumed;
                   the checkpoints begun during a phase (max_wal_size) are shown beside it.
  window           expand/contract: pgbench writes to a table with the bridge triggers of an open
                   window (by the old version, and by the new one through its view), and of a
                   computed change (USING amount * 100, with the conversion back given in
                   options), vs the same writes to a table without them of the same shape
                   and history (a bigint copy of amount filled by migrate.backfill, as a
                   window's copy is), and to the same table never backfilled; one pgbench
                   per case, all at once, unthrottled and at a fixed rate; then an int ->
                   bigint change of a 2M-row table under a rate-limited pgbench workload, by
                   migrate.expand (to published) + migrate.contract vs one ALTER TABLE ... TYPE
                   on an identical table, with the writers' p99 and worst wait in each; and
                   reads by key of a window's table (old and new version) vs of another table.
  window-scale     a window's life (expand, the worker's phases, contract, the drop of the
                   set-aside columns) on a 1M-row table in a database of 5,000 other tables vs
                   an empty one, with the worst wait of a reader of that table in each step.
  watch            the health gate, on a cluster of its own with pg_stat_statements preloaded and
                   short timings (a sample a second, 2 s to settle, 5 samples a side): the time
                   from a dropped index the workload needs to the failing look and to the end
                   of its rollback, under pgbench at a fixed rate; the outcomes of 20 harmless
                   watched migrations under the same load (false alarms); and the cost of
                   sampling: with the worker sampling every second and
                   every 10 s (the default) from the worker's own CPU time, and unthrottled
                   pgbench tps with sampling every 10 s vs off, alternating rounds.
  script-size      migrate.lint of 1,000, 10,000 and 50,000 statements (on one line and one per
                   line), and migrate.apply and migrate.dry_run of as many statements vs the same
                   script run directly: time per statement must not grow with the script beyond
                   what PostgreSQL's own run of it does. And the time from pg_cancel_backend to
                   the error during a lint of 150,000 statements.
"""

from __future__ import annotations

import argparse
import datetime
import os
import glob
import math
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (GATE_SETTINGS, LOOKUP, PG_BIN, Cluster, Stopwatch, holding_lock, server_settings,  # noqa: E402
                     lookup_orders, wait_until, worker_pid)


def small_migration(i: int) -> str:
    return f"CREATE TABLE bench_{i} (id bigint PRIMARY KEY, v text); CREATE INDEX ON bench_{i} (v);"


def apply_overhead(cluster: Cluster, n: int) -> None:
    a = cluster.create_database("bench_apply")
    b = cluster.create_database("bench_direct")
    through, direct = [], []
    with cluster.connect(a) as ca, cluster.connect(b) as cb:
        for i in range(1, n + 1):
            sql = small_migration(i)
            t = time.perf_counter()
            ca.execute("SELECT migrate.apply(%s, %s)", (str(i), sql))
            through.append(time.perf_counter() - t)
            t = time.perf_counter()
            cb.execute(sql)
            direct.append(time.perf_counter() - t)
        assert ca.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == n
    ratio = sum(through) / sum(direct)
    print(f"apply-overhead: {n} migrations (2 statements each, one transaction each)")
    print(f"  through migrate.apply: total {sum(through):.3f} s, median {statistics.median(through) * 1000:.2f} ms")
    print(f"  same SQL directly:     total {sum(direct):.3f} s, median {statistics.median(direct) * 1000:.2f} ms")
    print(f"  ratio apply/direct:    {ratio:.2f}x  (+{(statistics.median(through) - statistics.median(direct)) * 1000:.2f} ms per migration, median)")
    cluster.drop_database(a)
    cluster.drop_database(b)


def lock_queue(cluster: Cluster, hold: float, lock_timeout_ms: int) -> None:
    db = cluster.create_database("bench_locks")
    with cluster.connect(db) as c:
        c.execute("CREATE TABLE busy (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO busy SELECT g, 'x' FROM generate_series(1, 10000) g")

    def scenario(statement: str, settings: str) -> tuple[float, int, float]:
        with cluster.connect(db) as m:
            m.execute(settings)
            readers = [Stopwatch(cluster, db, "SELECT v FROM busy WHERE id = 42", pause=0.005) for _ in range(4)]
            for r in readers:
                r.__enter__()
            time.sleep(0.3)
            with holding_lock(cluster, db, "SELECT count(*) FROM busy"):
                worker = threading.Thread(target=lambda: m.execute(statement))
                worker.start()
                time.sleep(hold)
            worker.join(timeout=60)
            time.sleep(0.3)
            for r in readers:
                r.__exit__(None, None, None)
            worst = max(r.worst for r in readers)
            count = sum(len(r.latencies) for r in readers)
            p99 = statistics.quantiles([x for r in readers for x in r.latencies], n=100)[98]
            m.execute("SET migrate.guard = off")  # resetting the benchmark table, not a migration
            m.execute("ALTER TABLE busy DROP COLUMN IF EXISTS added")
            return worst, count, p99

    settings = (f"SET migrate.lock_timeout = '{lock_timeout_ms}ms'; SET migrate.lock_retries = 100;"
                "SET migrate.lock_retry_delay = '100ms'; SET migrate.lock_retry_max_delay = '500ms'")
    guarded = scenario("SELECT migrate.apply('1', 'ALTER TABLE busy ADD COLUMN added int')", settings)
    with cluster.connect(db) as c:
        retries = c.execute("SELECT retries FROM migrate.history WHERE version = '1'").fetchone()[0]
    # The control: what a plain ALTER TABLE does without pg_migrate (the guard would give it
    # a lock_timeout of its own).
    plain = scenario("ALTER TABLE busy ADD COLUMN added int", "SET migrate.guard = off; SET lock_timeout = 0")
    lt = lock_timeout_ms / 1000
    print(f"lock-queue: a transaction holds ACCESS SHARE on the table for {hold:.1f} s; 4 readers query it throughout")
    print(f"  via migrate.apply (lock_timeout {lock_timeout_ms} ms, {retries} retries): "
          f"worst reader wait {guarded[0] * 1000:.0f} ms, p99 {guarded[2] * 1000:.1f} ms over {guarded[1]} queries")
    print(f"  plain ALTER TABLE, guard off, no lock_timeout:   "
          f"worst reader wait {plain[0] * 1000:.0f} ms, p99 {plain[2] * 1000:.1f} ms over {plain[1]} queries")
    print(f"  ratio worst wait / migrate.lock_timeout: {guarded[0] / lt:.2f}  (plain ALTER: {plain[0] / lt:.2f})")
    cluster.drop_database(db)


def guard_statements(groups: int) -> list[str]:
    out = []
    for i in range(1, groups + 1):
        out += [
            f"CREATE TABLE g_{i} (id int PRIMARY KEY, v text)",
            f"ALTER TABLE g_{i} ADD COLUMN x int",
            f"CREATE INDEX g_{i}_x ON g_{i} (x)",
            f"DROP INDEX g_{i}_x",
        ]
    return out


def guard(cluster: Cluster, groups: int) -> None:
    dbs = {}
    for mode in ("enforce", "off"):
        db = cluster.create_database(f"bench_guard_{mode}")
        with cluster.connect(db) as c:
            c.execute(f"ALTER DATABASE {db} SET migrate.guard = {mode}")
        dbs[mode] = db
    statements = guard_statements(groups)
    timings = {"enforce": [], "off": []}
    conns = {mode: cluster.connect(db) for mode, db in dbs.items()}
    try:
        for c in conns.values():
            c.add_notice_handler(lambda d: None)
        for n, sql in enumerate(statements):
            # Alternate which database goes first, so neither always pays for the other's flush.
            for mode in ("enforce", "off") if n % 2 == 0 else ("off", "enforce"):
                t = time.perf_counter()
                conns[mode].execute(sql)
                timings[mode].append(time.perf_counter() - t)
        assert conns["enforce"].execute("SHOW migrate.guard").fetchone()[0] == "enforce"
        script = ";\n".join(statements) + ";"
        lint_runs = []
        for _ in range(3):
            t = time.perf_counter()
            conns["off"].execute("SELECT count(*) FROM migrate.lint(%s)", (script,))
            lint_runs.append(time.perf_counter() - t)
    finally:
        for c in conns.values():
            c.close()
    n = len(statements)
    on, off = sum(timings["enforce"]), sum(timings["off"])
    med_on, med_off = statistics.median(timings["enforce"]), statistics.median(timings["off"])
    print(f"guard: {n} DDL statements, one transaction each (CREATE TABLE, ALTER TABLE ADD COLUMN, "
          f"CREATE INDEX, DROP INDEX on {groups} small tables), alternating between two databases")
    print(f"  guard = enforce: total {on:.3f} s, median {med_on * 1e6:.0f} us per statement")
    print(f"  guard = off:     total {off:.3f} s, median {med_off * 1e6:.0f} us per statement")
    print(f"  ratio enforce/off: {on / off:.2f}x by total, {med_on / med_off:.2f}x by median "
          f"({(med_on - med_off) * 1e6:+.0f} us per statement)")
    best = min(lint_runs)
    print(f"  migrate.lint over the same {n} statements: {best * 1000:.0f} ms, "
          f"{best / n * 1e6:.0f} us per statement (best of 3)")
    for db in dbs.values():
        cluster.drop_database(db)


def worker_latency(cluster: Cluster, n: int) -> None:
    db = cluster.create_database("bench_worker")
    latencies: dict[str, list[float]] = {"running": [], "started": []}
    with cluster.connect(db) as c, cluster.connect(db, autocommit=False) as submitter:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        version = 0
        for _ in range(n):
            for mode in ("started", "running"):
                if mode == "started":  # wait for the worker to go idle and leave
                    wait_until(lambda: worker_pid(c) is None, timeout=30, interval=0.05)
                else:
                    assert worker_pid(c) is not None, "the previous submission's worker is still there"
                version += 1
                submitter.execute("SELECT migrate.apply(%s, %s)",
                                  (str(version), f"CREATE INDEX CONCURRENTLY t_{version} ON t (v)"))
                xid = submitter.execute("SELECT pg_current_xact_id()").fetchone()[0]
                submitter.commit()
                c.execute("CALL migrate.wait(%s, '60s')", (str(version),))
                latencies[mode].append(c.execute(
                    "SELECT extract(epoch FROM s.started_at - pg_xact_commit_timestamp(xid(%s::xid8))) "
                    "FROM migrate.steps s WHERE s.version = %s AND s.phase = 1", (str(xid), str(version))).fetchone()[0])
    running = [float(x) for x in latencies["running"]]
    started = [float(x) for x in latencies["started"]]
    print(f"worker-latency: commit of a phased migration -> its first phase starting, {n} submissions each")
    print(f"  database's worker running (woken by its latch): median {statistics.median(running) * 1000:.1f} ms, "
          f"max {max(running) * 1000:.1f} ms")
    print(f"  no worker (the launcher starts one):            median {statistics.median(started) * 1000:.1f} ms, "
          f"max {max(started) * 1000:.1f} ms")
    print(f"  ratio started/running: {statistics.median(started) / statistics.median(running):.1f}x by median")
    cluster.drop_database(db)


PGBENCH_WRITER = """\\set id random(1, {rows})
\\set v random(0, 999)
INSERT INTO items (v, pad) VALUES (:v, md5(:v::text));
UPDATE items SET v = v + 1 WHERE id = :id;
"""


def writer_wait(cluster: Cluster, rows: int, clients: int) -> None:
    db = cluster.create_database("bench_writer")
    with cluster.connect(db) as c:
        c.execute("SET migrate.guard = off")  # building the benchmark table, not a migration
        c.execute("CREATE TABLE items (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int, pad text)")
        c.execute(f"INSERT INTO items (v, pad) SELECT g % 1000, md5(g::text) FROM generate_series(1, {rows}) g")
        c.execute(f"SELECT setval(pg_get_serial_sequence('items', 'id'), {rows})")
        c.execute("VACUUM ANALYZE items")
        t = time.perf_counter()
        c.execute("CREATE INDEX estimate ON items (pad, v)")
        estimate = time.perf_counter() - t
        c.execute("DROP INDEX estimate")

    work = Path(tempfile.mkdtemp(prefix="pg_migrate_bench_"))
    script = work / "writer.sql"
    script.write_text(PGBENCH_WRITER.format(rows=rows))

    def under_load(name: str, build) -> tuple[list[float], float, int]:
        # A window long enough for the slower concurrent build (about 3x a plain one) to fall
        # inside it; only the transactions that overlap the build are counted.
        window = math.ceil(2 + 5 * estimate)
        prefix = work / name
        bench = subprocess.Popen(
            [str(PG_BIN / "pgbench"), "-n", "-c", str(clients), "-j", str(clients), "-T", str(window),
             "-f", str(script), "-l", "--log-prefix", str(prefix),
             "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres", db],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)
        began = time.time()
        with cluster.connect(db) as c:
            build(c)
            ended = time.time()
            count = c.execute("SELECT count(*) FROM items").fetchone()[0]
        out, _ = bench.communicate(timeout=window + 60)
        assert bench.returncode == 0, out
        assert ended < began + window - 1, f"the build outlasted the {window} s pgbench window"
        during = []
        for log in glob.glob(f"{prefix}.*"):
            for line in Path(log).read_text().splitlines():
                f = line.split()
                latency, finished = int(f[2]) / 1e6, int(f[4]) + int(f[5]) / 1e6
                if finished >= began and finished - latency <= ended:
                    during.append(latency)
        return during, ended - began, count

    def concurrently(c) -> None:
        c.execute("SELECT migrate.apply('1', 'CREATE INDEX CONCURRENTLY items_pad ON items (pad, v)')")
        c.execute("CALL migrate.wait('1', '1 hour')")

    def plainly(c) -> None:
        c.execute("SET migrate.guard = off")  # the guard would refuse exactly this
        c.execute("DROP INDEX items_pad")
        c.execute("CREATE INDEX items_pad ON items (pad, v)")

    results = {"concurrent": under_load("concurrent", concurrently), "plain": under_load("plain", plainly)}
    with cluster.connect(db) as c:
        lock_timeout = c.execute("SELECT setting::int / 1000.0 FROM pg_settings WHERE name = 'migrate.lock_timeout'").fetchone()[0]
    print(f"writer-wait: {clients} pgbench clients insert and update a {rows:,}-row table "
          f"(INSERT + UPDATE per transaction) while an index on (pad, v) is built")
    for name, label in (("concurrent", "CREATE INDEX CONCURRENTLY by the worker"), ("plain", "plain CREATE INDEX")):
        during, took, count = results[name]
        print(f"  {label:<40} build {took:6.2f} s on {count:,} rows: {len(during):6d} writer transactions, "
              f"worst {max(during) * 1000:7.1f} ms, p99 {statistics.quantiles(during, n=100)[98] * 1000:6.1f} ms")
    worst_cic, worst_plain = max(results["concurrent"][0]), max(results["plain"][0])
    print(f"  worst writer wait, plain/concurrent: {worst_plain / worst_cic:.0f}x; concurrent worst / "
          f"migrate.lock_timeout ({float(lock_timeout):g} s): {worst_cic / float(lock_timeout):.2f}")
    cluster.drop_database(db)


DRY_RUN_SETUP = """
    CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
    INSERT INTO customers SELECT g, 'c' || g, NULL FROM generate_series(1, 100000) g;
    CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers, total int);
    INSERT INTO orders SELECT g, g % 100000 + 1, g FROM generate_series(1, 200000) g;
    CREATE INDEX orders_customer ON orders (customer_id);
    ANALYZE;
"""

# Twenty statements of an expand step: catalog-only changes on the populated tables, new
# tables with their indexes and keys, a view, and a small data fix.
DRY_RUN_MIGRATION = """
    ALTER TABLE customers ADD COLUMN tier text;
    ALTER TABLE customers ADD COLUMN created_at timestamptz DEFAULT '2026-01-01';
    ALTER TABLE orders ADD COLUMN coupon text;
    ALTER TABLE orders ADD COLUMN shipped boolean DEFAULT false;
    CREATE TABLE coupons (code text PRIMARY KEY, percent int NOT NULL);
    ALTER TABLE coupons ADD CONSTRAINT percent_range CHECK (percent BETWEEN 1 AND 100);
    CREATE TABLE addresses (id bigint PRIMARY KEY, customer_id bigint NOT NULL, line text);
    CREATE INDEX addresses_customer ON addresses (customer_id);
    ALTER TABLE addresses ADD CONSTRAINT addresses_customer_fk FOREIGN KEY (customer_id) REFERENCES customers NOT VALID;
    ALTER TABLE orders ADD CONSTRAINT orders_coupon_fk FOREIGN KEY (coupon) REFERENCES coupons NOT VALID;
    ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0) NOT VALID;
    CREATE TABLE order_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint, kind text);
    CREATE INDEX order_events_order ON order_events (order_id);
    CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 1000;
    CREATE FUNCTION order_total(o orders) RETURNS int LANGUAGE sql STABLE AS 'SELECT o.total';
    COMMENT ON COLUMN customers.tier IS 'loyalty tier';
    INSERT INTO coupons VALUES ('WELCOME', 10), ('VIP', 25);
    UPDATE customers SET tier = 'gold' WHERE id <= 100;
    ALTER TABLE customers ALTER COLUMN tier SET DEFAULT 'basic';
    CREATE TYPE order_state AS ENUM ('new', 'paid', 'shipped');
"""


def dry_run(cluster: Cluster, runs: int) -> None:
    a = cluster.create_database("bench_dry")
    b = cluster.create_database("bench_real")
    dry, real = [], []
    with cluster.connect(a) as ca, cluster.connect(b, autocommit=False) as cb:
        ca.execute(DRY_RUN_SETUP)
        cb.execute(DRY_RUN_SETUP)
        cb.commit()
        for _ in range(runs):
            t = time.perf_counter()
            rows = ca.execute("SELECT executed FROM migrate.dry_run(%s)", (DRY_RUN_MIGRATION,)).fetchall()
            dry.append(time.perf_counter() - t)
            assert len(rows) == 20 and all(r[0] for r in rows)
            t = time.perf_counter()
            cb.execute("SELECT migrate.apply('1', %s)", (DRY_RUN_MIGRATION,))
            real.append(time.perf_counter() - t)
            cb.rollback()
        safe = ca.execute("SELECT migrate.assert_safe(%s)", (DRY_RUN_MIGRATION,)).fetchone()[0]
    print(f"dry-run: a 20-statement migration on 100k + 200k-row tables, median of {runs}")
    print(f"  migrate.dry_run:          median {statistics.median(dry) * 1000:.1f} ms (min {min(dry) * 1000:.1f})")
    print(f"  migrate.apply (real run): median {statistics.median(real) * 1000:.1f} ms (min {min(real) * 1000:.1f}),"
          " with its history row and schema fingerprint")
    print(f"  ratio dry/real:           {statistics.median(dry) / statistics.median(real):.2f}x;  assert_safe: {safe}")
    cluster.drop_database(a)
    cluster.drop_database(b)


def script_size(cluster: Cluster, sizes: list[int]) -> None:
    db = cluster.create_database("bench_script_size")
    print("script-size: time per statement by script size; pg_migrate's own work is linear when its")
    print("  ratio to the same statements run directly (one transaction, one simple query) stays flat")

    def timed(c, sql: str, *params) -> float:
        t = time.perf_counter()
        c.execute(sql, params or None)
        return time.perf_counter() - t

    def per(x: float, n: int) -> str:
        return f"{x / n * 1e6:8.1f} us"

    with cluster.connect(db, autocommit=False) as c:
        c.execute("CREATE TABLE t (id int)")
        c.commit()
        print("  statements   lint (ALTER, one line / per line)   apply vs direct (INSERT)         "
              "apply vs direct (COMMENT)        dry_run vs direct (COMMENT)")
        for n in sizes:
            alters = "".join(f"ALTER TABLE t ADD COLUMN c{i} int; " for i in range(n))
            inserts = "".join(f"INSERT INTO t VALUES ({i});\n" for i in range(n))
            comments = "".join(f"COMMENT ON TABLE t IS 'n{i}';\n" for i in range(n))
            lint_line = timed(c, "SELECT count(*) FROM migrate.lint(%s)", alters)
            lint_lines = timed(c, "SELECT count(*) FROM migrate.lint(%s)", alters.replace("; ", ";\n"))
            c.rollback()
            cells = []
            for script in (inserts, comments):
                direct = timed(c, script)
                c.rollback()
                applied = timed(c, "SELECT migrate.apply('1', %s)", script)
                c.rollback()
                cells.append(f"{per(applied, n)} / {per(direct, n)} = {applied / direct:5.2f}x")
            if n <= 10_000:
                direct = timed(c, comments)
                c.rollback()
                dry = timed(c, "SELECT count(*) FROM migrate.dry_run(%s)", comments)
                c.rollback()
                cells.append(f"{per(dry, n)} / {per(direct, n)} = {dry / direct:6.1f}x")
            else:
                cells.append("(not run)")
            print(f"  {n:>10,}   {per(lint_line, n)} / {per(lint_lines, n)}       {cells[0]}   {cells[1]}   {cells[2]}")
        script = "".join(f"ALTER TABLE t ADD COLUMN c{i} int; " for i in range(150_000))
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.commit()
        latencies: list[float | None] = []
        with cluster.connect(db) as other:
            for _ in range(5):
                def cancel() -> None:
                    time.sleep(0.1)
                    latencies.append(time.perf_counter())
                    other.execute("SELECT pg_cancel_backend(%s)", (pid,))
                t = threading.Thread(target=cancel)
                t.start()
                try:
                    c.execute("SELECT count(*) FROM migrate.lint(%s)", (script,))
                    t.join()
                    latencies[-1] = None
                except Exception:
                    t.join()
                    latencies[-1] = time.perf_counter() - latencies[-1]
                    c.rollback()
        measured = [x for x in latencies if x is not None]
        if measured:
            print(f"  pg_cancel_backend 100 ms into a 150,000-statement lint: the error after median "
                  f"{statistics.median(measured) * 1000:.1f} ms (max {max(measured) * 1000:.1f} ms, "
                  f"{len(measured)} of 5 cancelled)")
    cluster.drop_database(db)


def build_schema(c, tables: int) -> None:
    """`tables` tables as a real application has them: a primary key, a foreign key, an index
    and a default each, in 500-table transactions."""
    c.execute("SET migrate.guard = off")
    c.execute("CREATE TABLE parent (id bigint PRIMARY KEY)")
    for first in range(0, tables, 500):
        last = min(tables, first + 500) - 1
        c.execute(f"""DO $$ BEGIN FOR i IN {first}..{last} LOOP EXECUTE format(
            'CREATE TABLE t%s (id bigint PRIMARY KEY, p bigint REFERENCES parent, v text DEFAULT ''x'', n int);
             CREATE INDEX ON t%s (v)', i, i); END LOOP; END $$""")
    c.execute("RESET migrate.guard")


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def schema_scale(cluster: Cluster, sizes: list[int], migrations: int) -> None:
    """What pg_migrate's bookkeeping costs as the schema grows, measured side by side in one
    database per size: migrate.apply vs the same SQL run directly in a transaction; how long
    readers of an altered table wait, through migrate.apply and directly; a fingerprint and a
    description on demand; migrate.dry_run and migrate.verify of a one-table change."""
    print(f"schema-scale: {migrations} two-statement migrations (CREATE TABLE with a key, a foreign key and a")
    print("  default; COMMENT) through migrate.apply vs the same SQL directly in a transaction in a copy of")
    print("  the database, alternating;")
    print("  readers (SELECT count(*) every 2 ms) of a table altered through migrate.apply vs directly")
    header = ("  tables   first apply   apply median   direct median   ratio   added   reader worst: apply / direct"
              "   fingerprint   describe   dry_run   verify")
    print(header)
    ratios, added = {}, {}
    for n in sizes:
        db = cluster.create_database(f"bench_scale_{n}")
        with cluster.connect(db) as c:
            build_schema(c, n)
            c.execute("CREATE TABLE readme (id int PRIMARY KEY)")
            c.execute("INSERT INTO readme SELECT generate_series(1, 1000)")
            c.execute("VACUUM ANALYZE")
        # The direct runs go to a copy of the database: in the same one, each would be DDL
        # outside migrations, which the next migrate.apply records first (drift), charging
        # it twice the work.
        twin = f"{db}_direct"
        with cluster.connect() as c:
            c.execute(f"DROP DATABASE IF EXISTS {twin}")
            c.execute(f"CREATE DATABASE {twin} TEMPLATE {db}")
        with cluster.connect(db) as c, cluster.connect(twin, autocommit=False) as d:
            t = time.perf_counter()
            c.execute("SELECT migrate.apply('0', 'CREATE TABLE first_migration (id int)')")
            first = time.perf_counter() - t
            through, direct = [], []

            def by_apply(i: int, script: str) -> None:
                t = time.perf_counter()
                c.execute("SELECT migrate.apply(%s, %s)", (str(i), script))
                through.append(time.perf_counter() - t)

            def directly(i: int, script: str) -> None:
                t = time.perf_counter()
                d.execute(script.replace(f" a{i} ", f" b{i} ").replace(f"TABLE a{i} IS", f"TABLE b{i} IS"))
                d.commit()
                direct.append(time.perf_counter() - t)

            for i in range(1, migrations + 1):
                script = (f"CREATE TABLE a{i} (id bigint PRIMARY KEY, p bigint REFERENCES parent, v text DEFAULT 'x'); "
                          f"COMMENT ON TABLE a{i} IS 'through migrate.apply'")
                # Which of the two goes first alternates: neither gains from the other's
                # warming the caches both read.
                for run in ((by_apply, directly) if i % 2 else (directly, by_apply)):
                    run(i, script)
            worst = []
            for how in ("apply", "direct"):
                with Stopwatch(cluster, db if how == "apply" else twin, "SELECT count(*) FROM readme",
                               pause=0.002) as readers:
                    time.sleep(0.2)
                    if how == "apply":
                        c.execute("SELECT migrate.apply('1000', 'ALTER TABLE readme ADD COLUMN z int')")
                    else:
                        d.execute("ALTER TABLE readme ADD COLUMN z2 int")
                        d.commit()
                    time.sleep(0.2)
                assert not readers.errors, readers.errors
                worst.append(readers.worst)
            on_demand = {
                "fingerprint": "SELECT migrate.fingerprint()",
                "describe": "SELECT length(migrate.describe()::text)",
                "dry_run": "SELECT count(*) FROM migrate.dry_run('ALTER TABLE readme ADD COLUMN q int')",
                "verify": "SELECT migrate.verify('1000')",
            }
            times: dict[str, list[float]] = {name: [] for name in on_demand}
            for _ in range(3):
                for name, query in on_demand.items():
                    t = time.perf_counter()
                    c.execute(query).fetchone()
                    times[name].append(time.perf_counter() - t)
            fp, desc, dry, ver = (times[name] for name in on_demand)
            c.execute("SELECT migrate.apply('1001', 'CREATE TABLE last_one (id int)')")
            recorded = c.execute("SELECT fingerprint FROM migrate.history WHERE version = '1001'").fetchone()[0]
            assert recorded == c.execute("SELECT migrate.fingerprint()").fetchone()[0]
        # Medians, as issue 12 measured them: a migration that met a checkpoint or an
        # autovacuum on this shared machine would decide a ratio of sums.
        ratio = statistics.median(through) / statistics.median(direct)
        ratios[n] = ratio
        # What the bookkeeping adds, in time: the direct run itself grows with the schema (each
        # new foreign key adds triggers to the one referenced table), which lowers the ratio.
        added[n] = statistics.median(through) - statistics.median(direct)
        print(f"  {n:>6,}   {first * 1000:8.1f} ms   {median_ms(through):9.2f} ms   {median_ms(direct):10.2f} ms"
              f"   {ratio:5.2f}x   {added[n] * 1000:4.2f} ms"
              f"   {worst[0] * 1000:9.1f} ms / {worst[1] * 1000:6.1f} ms"
              f"   {median_ms(fp):8.1f} ms   {median_ms(desc):5.0f} ms   {median_ms(dry):5.1f} ms"
              f"   {median_ms(ver):4.1f} ms")
        cluster.drop_database(db)
        cluster.drop_database(twin)
    if len(ratios) > 1:
        smallest, largest = min(ratios), max(ratios)
        print(f"  apply/direct at {largest:,} tables vs at {smallest:,}: {ratios[largest] / ratios[smallest]:.2f}x;"
              f" time added by apply: {added[largest] * 1000:.2f} ms against {added[smallest] * 1000:.2f} ms")


PGBENCH_BACKFILL_WRITER = """
\\set id random(1, {rows})
UPDATE {table} SET hits = hits + 1 WHERE id = :id;
"""


def checkpoints_so_far(c) -> int:
    """Checkpoints begun since the statistics were reset, timed or requested (a fill that
    writes more WAL than max_wal_size requests one, and its writers wait for its I/O)."""
    view = ("pg_stat_checkpointer", "num_timed + num_requested") if c.execute(
        "SELECT to_regclass('pg_catalog.pg_stat_checkpointer')").fetchone()[0] else \
        ("pg_stat_bgwriter", "checkpoints_timed + checkpoints_req")
    return c.execute(f"SELECT {view[1]} FROM pg_catalog.{view[0]}").fetchone()[0]


CHECKPOINT_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC .*LOG:  checkpoint (starting|complete)")


def checkpoints_logged(log: str) -> dict[str, list[float]]:
    """When each checkpoint in this part of the server log (log_timezone UTC) began
    ("starting") and completed ("complete")."""
    times: dict[str, list[float]] = {"starting": [], "complete": []}
    for m in map(CHECKPOINT_LOGGED.match, log.splitlines()):
        if m:
            at = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
            times[m[2]].append(at.timestamp())
    return times


# After a checkpoint begins, the first change to each page writes the whole page to the WAL;
# its last part fsyncs the files written since it began.
AFTER_START, BEFORE_END = 1.0, 0.5


def stalls(transactions: list[tuple[float, float]], slow: float, checkpoints: dict[str, list[float]]) -> str:
    """How many transactions took over `slow`, and how many of those ended in the second
    after a checkpoint began or in the half second before one completed."""
    slow_ones = [end for end, latency in transactions if latency > slow]
    after_start = [e for e in slow_ones if any(b <= e <= b + AFTER_START for b in checkpoints["starting"])]
    before_end = [e for e in slow_ones if any(c - BEFORE_END <= e <= c + 0.05 for c in checkpoints["complete"])]
    return (f"{len(slow_ones)} over {slow * 1000:.1f} ms: {len(after_start)} in the {AFTER_START:g} s after a "
            f"checkpoint began, {len(before_end)} in the {BEFORE_END:g} s before one completed")


class WriterWaits:
    """What the pgbench writers are waiting on, sampled from pg_stat_activity every 10 ms while
    a phase runs: says whether their latency is the fill's row locks, the WAL flush, or I/O."""

    def __init__(self, cluster: Cluster, db: str):
        self.cluster, self.db = cluster, db
        self.counts: dict[str, int] = {}
        self.running = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with self.cluster.connect(self.db) as c:
            while self.running.is_set():
                for (event,) in c.execute(
                        "SELECT coalesce(wait_event_type || ':' || wait_event, 'running') FROM pg_stat_activity "
                        "WHERE application_name = 'pgbench' AND state = 'active'").fetchall():
                    self.counts[event] = self.counts.get(event, 0) + 1
                time.sleep(0.01)

    def __enter__(self) -> "WriterWaits":
        self.running.set()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running.clear()
        self.thread.join()

    def top(self, n: int = 3) -> str:
        total = sum(self.counts.values()) or 1
        return ", ".join(f"{e} {k * 100 / total:.0f}%" for e, k in
                         sorted(self.counts.items(), key=lambda i: -i[1])[:n])


class PgbenchChunks:
    """pgbench in back-to-back 5 s runs (logging each transaction) for as long as a fill runs:
    the fills take different times, and pgbench cannot be stopped early without losing its log."""

    def __init__(self, cluster: Cluster, db: str, table: str, rows: int, clients: int, rate: int, prefix: Path):
        self.cluster, self.db, self.clients, self.rate, self.prefix = cluster, db, clients, rate, prefix
        self.script = prefix.with_suffix(".sql")
        self.script.write_text(PGBENCH_BACKFILL_WRITER.format(rows=rows, table=table))
        self.running = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.chunk = 0

    def _run(self) -> None:
        while self.running.is_set():
            self.chunk += 1
            out = subprocess.run(
                [str(PG_BIN / "pgbench"), "-n", "-c", str(self.clients), "-j", str(self.clients), "-T", "5",
                 "-R", str(self.rate), "-f", str(self.script), "-l", "--log-prefix", f"{self.prefix}_{self.chunk}",
                 "-h", str(self.cluster.sock), "-p", str(self.cluster.port), "-U", "postgres", self.db],
                capture_output=True, text=True)
            assert out.returncode == 0, out.stdout + out.stderr

    def __enter__(self) -> "PgbenchChunks":
        self.running.set()
        self.thread.start()
        time.sleep(1)  # warm up
        return self

    def __exit__(self, *exc) -> None:
        self.running.clear()
        self.thread.join()

    def during(self, began: float, ended: float) -> list[float]:
        return [latency for _, latency in self.ended_during(began, ended)]

    def ended_during(self, began: float, ended: float) -> list[tuple[float, float]]:
        """(when it ended, its latency) of each transaction that overlapped began..ended."""
        transactions = []
        for log in glob.glob(f"{self.prefix}_*.*"):
            for line in Path(log).read_text().splitlines():
                f = line.split()
                latency, finished = int(f[2]) / 1e6, int(f[4]) + int(f[5]) / 1e6
                if began <= finished and finished - latency <= ended:
                    transactions.append((finished, latency))
        return transactions


def backfill_done(c, job: int) -> tuple[int, int]:
    """Waits for backfill `job` to end, which must be done; its batches and last batch size."""
    wait_until(lambda: c.execute("SELECT state FROM migrate.backfills WHERE id = %s", (job,)).fetchone()[0]
               in ("done", "failed"), timeout=3600, interval=0.05)
    state, batches, size = c.execute("SELECT state, batches, batch_size FROM migrate.backfills WHERE id = %s",
                                     (job,)).fetchone()
    assert state == "done", state
    return batches, size


def backfill(cluster: Cluster, rows: int, clients: int, rate: int, batch_time: str | None, pause: str | None,
             given: list[str]) -> None:
    """given ("name=value", e.g. max_wal_size=8GB) hold for the server during the section."""
    with server_settings(cluster, dict(s.split("=", 1) for s in given)):
        backfill_sizes(cluster, rows, clients, rate, batch_time, pause,
                       [s for s in given if not s.startswith("max_wal_size=")])


def backfill_sizes(cluster: Cluster, rows: int, clients: int, rate: int, batch_time: str | None,
                   pause: str | None, shown_settings: list[str]) -> None:
    db = cluster.create_database("bench_backfill")
    with cluster.connect(db) as c:
        for t in ("t_update", "t_loop", "t_backfill", "t_backfill_kernel"):
            c.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, v int NOT NULL, hits int NOT NULL DEFAULT 0)")
            c.execute(f"INSERT INTO {t} SELECT g, g % 1000 FROM generate_series(1, {rows}) g")
            c.execute(f"VACUUM ANALYZE {t}")
            c.execute(f"ALTER TABLE {t} ADD COLUMN filled int")  # the expand step
        lock_timeout = c.execute("SELECT setting::int / 1000.0 FROM pg_settings WHERE name = 'migrate.lock_timeout'").fetchone()[0]
    work = Path(tempfile.mkdtemp(prefix="pg_migrate_bench_backfill_"))

    def one_update(c, table: str) -> None:
        c.execute(f"UPDATE {table} SET filled = v * 2")

    def client_loop(c, table: str) -> None:
        with cluster.connect(db, autocommit=False) as loop:
            last = 0
            while True:
                ids = [r[0] for r in loop.execute(
                    f"SELECT id FROM {table} WHERE id > %s ORDER BY id LIMIT 1000", (last,)).fetchall()]
                if not ids:
                    loop.commit()
                    break
                loop.execute(f"UPDATE {table} SET filled = v * 2 WHERE id = ANY(%s)", (ids,))
                loop.commit()
                last = ids[-1]

    def migrate_backfill(c, table: str) -> None:
        if batch_time:
            c.execute("SELECT set_config('migrate.backfill_batch_time', %s, false)", (batch_time,))
        if pause:
            c.execute("SELECT set_config('migrate.backfill_pause', %s, false)", (pause,))
        job = c.execute(f"SELECT migrate.backfill('{table}', 'filled = v * 2', 'filled IS NULL')").fetchone()[0]
        batches, size = backfill_done(c, job)
        print(f"  (migrate.backfill on {table}: {batches} batches, last batch size {size:,})")

    results = {}
    # The baseline is measured before and after the fills and pooled: this disk's commit
    # latency drifts over minutes.
    for name, table, fill in (("none", "t_update", None), ("update", "t_update", one_update),
                              ("loop", "t_loop", client_loop), ("backfill", "t_backfill", migrate_backfill),
                              ("kernel", "t_backfill_kernel", migrate_backfill),
                              ("none_after", "t_update", None)):
        # (d): the batches leave what they dirty to the kernel, as before
        # migrate.backfill_flush_after (the server's backend_flush_after is 0); set and reset
        # outside its timing.
        with server_settings(cluster, {"migrate.backfill_flush_after": "0"} if name == "kernel" else {}):
            # Each phase starts from a checkpoint, so none pays for the previous one's dirty
            # pages and WAL (a checkpoint that fell in one phase only would decide its
            # percentiles).
            with cluster.connect(db) as c:
                c.execute("CHECKPOINT")
            mark = cluster.log_mark()
            with cluster.connect(db) as c, PgbenchChunks(cluster, db, table, rows, clients, rate, work / name) \
                    as load, WriterWaits(cluster, db) as waits:
                checkpoints_before = checkpoints_so_far(c)
                began = time.time()
                if fill is None:
                    time.sleep(10)
                else:
                    fill(c, table)
                ended = time.time()
                checkpoints = checkpoints_so_far(c) - checkpoints_before
            logged = checkpoints_logged(cluster.log_since(mark))
            if fill is not None:
                with cluster.connect(db) as c:
                    left = c.execute(f"SELECT count(*) FROM {table} WHERE filled IS DISTINCT FROM v * 2").fetchone()[0]
                    # Its dead rows are vacuumed now, not by an autovacuum that would run
                    # during the next phase and be counted against it.
                    c.execute(f"VACUUM {table}")
                assert left == 0, f"{name}: {left} rows not filled"
        transactions = load.ended_during(began, ended)
        results[name] = (ended - began, [latency for _, latency in transactions],
                         f"{waits.top()}; checkpoints begun: {checkpoints}", transactions, logged)

    with cluster.connect(db) as c:
        wal = c.execute("SELECT current_setting('max_wal_size')").fetchone()[0]
    print(f"backfill: fill a new column of {rows:,} rows while {clients} pgbench clients update random rows "
          f"of the same table at {rate} tps (rate-limited), side by side on identical tables; max_wal_size {wal}"
          + "".join(f", {s}" for s in shown_settings))
    base_took = results["none"][0] + results["none_after"][0]
    base = results["none"][1] + results["none_after"][1]
    base_p99 = statistics.quantiles(base, n=100)[98]
    before, after = (statistics.quantiles(results[n][1], n=100)[98] * 1000 for n in ("none", "none_after"))
    print(f"  {'no fill (baseline, before+after)':<34} {'':>9}  writer p99 {base_p99 * 1000:7.2f} ms, "
          f"{len(base) / base_took:6.0f} tps, worst {max(base) * 1000:7.1f} ms "
          f"(p99 before {before:.2f} ms, after {after:.2f} ms)")
    none = {k: results["none"][4][k] + results["none_after"][4][k] for k in ("starting", "complete")}
    print(f"  {'':<34} {'':>9}  writers' transactions "
          f"{stalls(results['none'][3] + results['none_after'][3], 2 * base_p99, none)}")
    for name, label in (("update", "(a) one UPDATE"), ("loop", "(b) client loop, 1,000-id batches"),
                        ("backfill", "(c) migrate.backfill"),
                        ("kernel", "(d) (c), backfill_flush_after 0")):
        took, during, waited, transactions, logged = results[name]
        p99 = statistics.quantiles(during, n=100)[98]
        print(f"  {label:<34} {took:7.2f} s  writer p99 {p99 * 1000:7.2f} ms ({p99 / base_p99:5.2f}x), "
              f"{len(during) / took:6.0f} tps ({len(during) / took / (len(base) / base_took):4.2f}x), "
              f"worst {max(during) * 1000:7.1f} ms")
        print(f"  {'':<34} {'':>9}  writers active: {waited}")
        print(f"  {'':<34} {'':>9}  writers' transactions {stalls(transactions, 2 * base_p99, logged)}")
    a, b, c_, d = (results[n][0] for n in ("update", "loop", "backfill", "kernel"))
    p99 = {n: statistics.quantiles(results[n][1], n=100)[98] for n in ("backfill", "kernel")}
    print(f"  wall time: (c)/(a) {c_ / a:.2f}x, (b)/(c) {b / c_:.2f}x, (d)/(c) {d / c_:.2f}x; writer p99 (d)/(c) "
          f"{p99['kernel'] / p99['backfill']:.2f}x; worst writer wait during (c) / "
          f"migrate.lock_timeout ({float(lock_timeout):g} s): {max(results['backfill'][1]) / float(lock_timeout):.2f}")
    cluster.drop_database(db)


WINDOW_WRITER = """
\\set id random(1, {rows})
\\set v random(1, 1000000)
UPDATE {table} SET amount = :v WHERE id = :id;
INSERT INTO {table} (amount) VALUES (:v);
"""


WINDOW_READER = """
\\set id random(1, {rows})
SELECT amount FROM {table} WHERE id = :id;
"""


def pgbench_start(cluster: Cluster, db: str, script: str, seconds: int, clients: int, prefix: Path,
                  options: str | None = None, rate: int | None = None,
                  protocol: str = "simple") -> subprocess.Popen:
    """Starts pgbench with `script`, logging each transaction under `prefix`."""
    path = prefix.with_suffix(".sql")
    path.write_text(script)
    env = None
    if options:
        import os
        env = {**os.environ, "PGOPTIONS": options}
    cmd = [str(PG_BIN / "pgbench"), "-n", "-M", protocol, "-c", str(clients), "-j", str(clients),
           "-T", str(seconds), "-f", str(path), "-l", "--log-prefix", str(prefix),
           "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres", db]
    if rate:
        cmd[1:1] = ["-R", str(rate)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def pgbench_latencies(run: subprocess.Popen, prefix: Path, rate: int | None) -> list[float]:
    """Waits for a pgbench started by pgbench_start; each transaction's latency (seconds)."""
    out, _ = run.communicate()
    assert run.returncode == 0, out
    latencies = []
    for log in glob.glob(f"{prefix}.*"):
        if log.endswith(".sql"):
            continue
        for line in Path(log).read_text().splitlines():
            fields = line.split()
            # With --rate, pgbench counts latency from the transaction's scheduled start; the
            # seventh field is how late it started. The time the server took is the rest.
            lag = int(fields[6]) if rate and len(fields) > 6 else 0
            latencies.append((int(fields[2]) - lag) / 1e6)
    return latencies


def pgbench_log(cluster: Cluster, db: str, script: str, seconds: int, clients: int, prefix: Path,
                options: str | None = None, rate: int | None = None, protocol: str = "simple") -> list[float]:
    """Runs pgbench with `script` and returns each transaction's latency (seconds)."""
    run = pgbench_start(cluster, db, script, seconds, clients, prefix, options, rate, protocol)
    return pgbench_latencies(run, prefix, rate)


def window_bench(cluster: Cluster, rows: int, change_rows: int, rounds: int, rate: int,
                 write_rate: int, seconds: int = 20) -> None:
    db = cluster.create_database("bench_window")
    work = Path(tempfile.mkdtemp(prefix="pg_migrate_bench_window_"))
    with cluster.connect(db) as c:
        for t in ("original", "plain", "bridged", "converted"):
            c.execute(f"CREATE TABLE {t} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                      f"amount int NOT NULL DEFAULT 0, note text DEFAULT 'x')")
            c.execute(f"INSERT INTO {t} (amount) SELECT g FROM generate_series(1, {rows}) g")
            c.execute(f"VACUUM ANALYZE {t}")
        c.execute("SELECT migrate.expand('1', 'ALTER TABLE bridged ALTER COLUMN amount TYPE bigint')")
        c.execute("CALL migrate.wait('1', '1 hour')")
        c.execute("VACUUM ANALYZE bridged")
        # Dollars to cents: the conversions the DBA wrote, called as their functions.
        c.execute("SELECT migrate.expand('2', 'ALTER TABLE converted ALTER COLUMN amount TYPE bigint "
                  "USING amount * 100', options => %s)",
                  ('{"converted.amount": {"down": "(amount / 100)::integer"}}',))
        c.execute("CALL migrate.wait('2', '1 hour')")
        c.execute("VACUUM ANALYZE converted")
        # Two tables without triggers. `plain` has the windows' tables' shape and history: a
        # bigint copy filled the way a window's is. A backfill rewrites every row once and
        # leaves the table about twice its pages, and random writes to more pages take more
        # full-page images after each checkpoint; against `plain` the ratio is the triggers'
        # alone. `original` was never backfilled: against it, the ratio is the window's whole
        # (triggers and the backfill's layout).
        c.execute("ALTER TABLE plain ADD COLUMN copy bigint")
        backfill_done(c, c.execute("SELECT migrate.backfill('plain', 'copy = amount', 'copy IS NULL')").fetchone()[0])
        c.execute("VACUUM ANALYZE plain")
        pages = c.execute("SELECT string_agg(format('%s %s', relname, relpages), ', ' ORDER BY relname) "
                          "FROM pg_class WHERE relname IN ('original', 'plain', 'bridged', 'converted') "
                          "AND relkind = 'r'").fetchone()[0]
    cases = {"original": ("original", None), "plain": ("plain", None), "old": ("bridged", None),
             "new": ("bridged", "-csearch_path=public_v1,public"),
             "conv_old": ("converted", None), "conv_new": ("converted", "-csearch_path=public_v2,public")}
    print(f"window: pgbench, an UPDATE of a random row's amount + an INSERT per transaction, on "
          f"{rows:,}-row tables, one pgbench per case (the old and the new version write the same "
          f"table), all six at once, {rounds} rounds of {seconds} s; "
          f"unthrottled (the server saturated: latency is mostly queueing for the 2 cores), then "
          f"at {write_rate} transactions per second each; pages after the backfills: {pages}")
    print("  ratios against the table of the same history without triggers (the bridge's cost), and p99 "
          "against the table never backfilled (the window's whole cost)")
    passes = [(p, None) for p in ("simple", "prepared")] + [(p, write_rate) for p in ("simple", "prepared")]
    for protocol, throttle in passes:
        latencies: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(rounds):
            # Every case at once, each its own pgbench: a stall of this shared machine (a
            # checkpoint's writes, another guest) lands on all of them, where run one after
            # another it decided the p99 of whichever case ran then (two tables without
            # triggers differed by up to 1.35x so).
            runs: dict[str, tuple[Path, subprocess.Popen]] = {}
            try:
                for name, (table, options) in cases.items():
                    prefix = work / f"{protocol}_{throttle}_{name}_{r}"
                    runs[name] = (prefix, pgbench_start(cluster, db, WINDOW_WRITER.format(rows=rows, table=table),
                                                        seconds, 1 if throttle is None else 2, prefix, options,
                                                        rate=throttle, protocol=protocol))
                for name, (prefix, run) in runs.items():
                    latencies[name] += pgbench_latencies(run, prefix, throttle)
            finally:
                # One that failed leaves no other writing into the next step.
                for _, run in runs.values():
                    if run.poll() is None:
                        run.kill()
                        run.wait()
        print(f"  pgbench -M {protocol}, all six at once, " +
              (f"{throttle} tps each:" if throttle else "unthrottled, one client each:"))
        base = latencies["plain"]
        base_p50, base_p99 = statistics.median(base), statistics.quantiles(base, n=100)[98]
        base_tps = len(base) / (seconds * rounds)
        original_p99 = statistics.quantiles(latencies["original"], n=100)[98]
        for name, label in (("original", "never backfilled, no bridge"), ("plain", "no bridge"),
                            ("old", "bridged, old version writes"),
                            ("new", "bridged, new version (its view)"),
                            ("conv_old", "USING + down, old version"),
                            ("conv_new", "USING + down, new version")):
            lat = latencies[name]
            p50, p99 = statistics.median(lat), statistics.quantiles(lat, n=100)[98]
            tps = len(lat) / (seconds * rounds)
            print(f"    {label:<32} {tps:7.0f} tps ({tps / base_tps:4.2f}x)  p50 {p50 * 1000:6.2f} ms "
                  f"({p50 / base_p50:4.2f}x)  p99 {p99 * 1000:6.2f} ms ({p99 / base_p99:4.2f}x; "
                  f"{p99 / original_p99:4.2f}x the never backfilled)")
    # Reads: every query's end is looked at for the tables of open windows (to know which
    # sessions still use each version); a read of the plain table pays the look, a read of a
    # window's table also notes the session's use (at most once a second).
    read_cases = {"plain": ("plain", None), "old": ("bridged", None),
                  "new": ("bridged", "-csearch_path=public_v1,public")}
    latencies = {k: [] for k in read_cases}
    for r in range(rounds):
        for name, (table, options) in read_cases.items():
            latencies[name] += pgbench_log(cluster, db, WINDOW_READER.format(rows=rows, table=table), 5, 2,
                                           work / f"read_{name}_{r}", options, protocol="prepared")
    print("  reads, pgbench -M prepared, SELECT of a random row by key:")
    base = latencies["plain"]
    base_p50, base_p99 = statistics.median(base), statistics.quantiles(base, n=100)[98]
    for name, label in (("plain", "table outside the window"), ("old", "window's table, old version"),
                        ("new", "window's table, new version")):
        lat = latencies[name]
        p50, p99 = statistics.median(lat), statistics.quantiles(lat, n=100)[98]
        tps = len(lat) / (5 * rounds)
        print(f"    {label:<32} {tps:7.0f} tps ({len(lat) / len(base):4.2f}x)  p50 {p50 * 1000:6.3f} ms "
              f"({p50 / base_p50:4.2f}x)  p99 {p99 * 1000:6.3f} ms ({p99 / base_p99:4.2f}x)")
    cluster.drop_database(db)
    if change_rows:
        type_change_under_load(cluster, change_rows, rate, work)


def window_scale(cluster: Cluster, sizes: list[int], rows: int) -> None:
    """A window's whole life on a large schema, side by side with an empty one: how long
    expand, the worker's phases, contract and the drop of the set-aside columns take, and the
    worst wait of a reader of the changed table during each (contract's swap and the drop
    take ACCESS EXCLUSIVE; their recording of the schema runs while they hold it)."""
    print(f"window-scale: int -> bigint + a rename on a {rows:,}-row table, in databases of n other tables "
          f"(a key, a foreign key, an index and a default each); a reader selects one row by key every 2 ms")
    print("  tables   expand (reader worst)   worker (reader worst)   contract (reader worst)   drop (reader worst)")
    for n in sizes:
        db = cluster.create_database(f"bench_window_scale_{n}")
        with cluster.connect(db) as c:
            build_schema(c, n)
            c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL DEFAULT 0, old_status text)")
            c.execute(f"INSERT INTO orders SELECT g, g % 100000, 'new' FROM generate_series(1, {rows}) g")
            c.execute("VACUUM ANALYZE")
            c.execute(f"ALTER DATABASE {db} SET migrate.deprecated_retention = '1s'")
            # The first migration of a database records its whole schema (schema-scale shows
            # that cost); the window is a later one.
            t = time.perf_counter()
            c.execute("SELECT migrate.apply('1', 'CREATE TABLE first_migration (id int)')")
            first = time.perf_counter() - t
        took, worst = [], []
        with cluster.connect(db) as c:
            # Names nothing the window renames or retypes: what it measures is the wait.
            reader = "SELECT count(*) FROM orders WHERE id = 4242"

            def phase(run) -> None:
                with Stopwatch(cluster, db, reader, pause=0.002) as readers:
                    time.sleep(0.1)
                    t = time.perf_counter()
                    run()
                    took.append(time.perf_counter() - t)
                    time.sleep(0.1)
                assert not readers.errors, readers.errors[:1]
                worst.append(readers.worst)

            phase(lambda: c.execute("SELECT migrate.expand('43', 'ALTER TABLE orders ALTER COLUMN amount TYPE bigint; "
                                    "ALTER TABLE orders RENAME COLUMN old_status TO old_status2')"))
            phase(lambda: c.execute("CALL migrate.wait('43', '1 hour')"))
            phase(lambda: c.execute("SELECT * FROM migrate.contract('43')"))
            phase(lambda: wait_for(lambda: c.execute(
                "SELECT deprecated_dropped_at IS NOT NULL FROM migrate.window_history WHERE version = '43'"
            ).fetchone()[0], 600))
        cells = [f"{t * 1000:9.1f} ms ({w * 1000:6.1f} ms)" for t, w in zip(took, worst)]
        print(f"  {n:>6,}   " + "   ".join(cells) + f"   (first migration: {first * 1000:.0f} ms)")
        cluster.drop_database(db)


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def type_change_under_load(cluster: Cluster, change_rows: int, rate: int, work: Path) -> None:
    db = cluster.create_database("bench_window_change")
    with cluster.connect(db) as c:
        for t in ("t_window", "t_alter"):
            c.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, amount int NOT NULL DEFAULT 0, "
                      f"hits int NOT NULL DEFAULT 0)")
            c.execute(f"INSERT INTO {t} SELECT g, g FROM generate_series(1, {change_rows}) g")
            c.execute(f"VACUUM ANALYZE {t}")
        # A key other rows reference: the primary key and the foreign key move with it.
        for t in ("k_window", "k_alter"):
            c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, hits int NOT NULL DEFAULT 0)")
            c.execute(f"INSERT INTO {t} SELECT g FROM generate_series(1, {change_rows}) g")
            c.execute(f"CREATE TABLE {t}_items (id bigint PRIMARY KEY, parent int NOT NULL "
                      f"REFERENCES {t}, qty int)")
            c.execute(f"INSERT INTO {t}_items SELECT g, g, 1 FROM generate_series(1, {change_rows}) g")
            c.execute(f"VACUUM ANALYZE {t}, {t}_items")

    def by_window(version: str, script: str):
        def change(c) -> None:
            c.execute("SELECT migrate.expand(%s, %s)", (version, script))
            c.execute("CALL migrate.wait(%s, '1 hour')", (version,))
            c.execute("SELECT migrate.contract(%s)", (version,))
        return change

    def by_alter(script: str):
        def change(c) -> None:
            c.execute("SET migrate.guard = off")  # the guard refuses exactly this
            with c.transaction():
                c.execute(script)
        return change

    compare_changes(cluster, db, change_rows, rate, work,
                    f"int -> bigint of a {change_rows:,}-row table",
                    [("window", "migrate.expand + contract", "t_window",
                      by_window("2", "ALTER TABLE t_window ALTER COLUMN amount TYPE bigint")),
                     ("alter", "ALTER TABLE ... TYPE bigint", "t_alter",
                      by_alter("ALTER TABLE t_alter ALTER COLUMN amount TYPE bigint"))])
    compare_changes(cluster, db, change_rows, rate, work,
                    f"int -> bigint of the primary key of a {change_rows:,}-row table that a "
                    f"{change_rows:,}-row table references (both columns)",
                    [("window", "migrate.expand + contract", "k_window",
                      by_window("3", "ALTER TABLE k_window ALTER COLUMN id TYPE bigint; "
                                     "ALTER TABLE k_window_items ALTER COLUMN parent TYPE bigint")),
                     ("alter", "ALTER TABLE ... TYPE bigint", "k_alter",
                      by_alter("ALTER TABLE k_alter ALTER COLUMN id TYPE bigint; "
                               "ALTER TABLE k_alter_items ALTER COLUMN parent TYPE bigint"))])
    cluster.drop_database(db)


def compare_changes(cluster: Cluster, db: str, rows: int, rate: int, work: Path, title: str, cases) -> None:
    """Each change while 2 pgbench clients update random rows of its table: its wall time and
    the writers' latencies meanwhile."""
    with cluster.connect(db) as c:
        lock_timeout = c.execute("SELECT setting::int / 1000.0 FROM pg_settings "
                                 "WHERE name = 'migrate.lock_timeout'").fetchone()[0]
    results = {}
    for name, _, table, change in cases:
        with cluster.connect(db) as c:
            c.execute("CHECKPOINT")
        with cluster.connect(db) as c, PgbenchChunks(cluster, db, table, rows, 2, rate,
                                                     work / f"{table}_{name}") as load:
            began = time.time()
            change(c)
            ended = time.time()
        results[name] = (ended - began, load.during(began, ended))
    print(f"  {title}, while 2 pgbench clients update random rows of it at {rate} tps:")
    for name, label, _, _ in cases:
        took, during = results[name]
        print(f"    {label:<28} {took:7.2f} s, {len(during):6d} writer transactions, "
              f"p99 {statistics.quantiles(during, n=100)[98] * 1000:7.2f} ms, worst {max(during) * 1000:8.1f} ms")
    w, a = results["window"], results["alter"]
    print(f"    wall time window/alter {w[0] / a[0]:.2f}x; worst writer wait alter/window "
          f"{max(a[1]) / max(w[1]):.1f}x; window's worst / migrate.lock_timeout ({float(lock_timeout):g} s): "
          f"{max(w[1]) / float(lock_timeout):.2f}")


def background_pgbench(cluster: Cluster, db: str, script: Path, rate: int) -> subprocess.Popen:
    return subprocess.Popen([str(PG_BIN / "pgbench"), "-n", "-c", "2", "-j", "2", "-R", str(rate), "-T", "3600",
                             "-f", str(script), "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres",
                             db], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def watch_state(c, version: str) -> str:
    return c.execute("SELECT state FROM migrate.watch_records WHERE version = %s", (version,)).fetchone()[0]


def settle(c, version: str, timeout: float) -> str:
    wait_until(lambda: watch_state(c, version) not in ("waiting", "watching", "rolling back", "recovering"),
               timeout=timeout, interval=0.2)
    return watch_state(c, version)


def watch_bench(harmless: int, rounds: int, rate: int, parts: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="pg_migrate_bench_watch_"))
    script = work / "lookup.sql"
    script.write_text(LOOKUP)
    print(f"watch: pgbench looking orders up by customer ({rate} tps, 2 clients) on 200,000 rows; "
          "samples every 1 s, 2 s to settle, 5 samples a side, latency tolerance 50%")
    if "drop" in parts or "harmless" in parts:
        cluster = Cluster("/tmp/pg_migrate_bench_gate").start(*GATE_SETTINGS)
        try:
            if "drop" in parts:
                watch_detection(cluster, script, rate)
            if "harmless" in parts:
                watch_false_alarms(cluster, script, rate, harmless)
        finally:
            cluster.stop()
    if "cost" in parts:
        # The interval is switched with ALTER SYSTEM, which a -c option on the command line
        # would override: a cluster of its own, with pg_stat_statements, default settings.
        cluster = Cluster("/tmp/pg_migrate_bench_gate_cost").start(
            "shared_preload_libraries=pg_stat_statements,pg_migrate")
        try:
            watch_cost(cluster, script, rate, rounds, work)
        finally:
            cluster.stop()


def watch_detection(cluster: Cluster, script: Path, rate: int) -> None:
    """A dropped index the workload needs: the failing look, the rollback, the recovery."""
    db = lookup_orders(cluster, "bench_gate_drop")
    load = background_pgbench(cluster, db, script, rate)
    try:
        with cluster.connect(db) as c:
            wait_until(lambda: c.execute("SELECT count(*) FROM migrate.workload_samples() WHERE statements > 0"
                                         ).fetchone()[0] >= 8, timeout=60, interval=0.5)
            c.execute("SELECT * FROM migrate.apply('1', 'DROP INDEX CONCURRENTLY orders_customer_idx', "
                      "rollback => 'CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id)', "
                      "watch => '60 s', on_regression => 'rollback')")
            end = settle(c, "1", 180)
            row = c.execute("""
                SELECT extract(epoch FROM (SELECT min(looked_at) FROM migrate.watch_looks
                                           WHERE version = '1' AND stage = 'watch' AND signal = 'look'
                                             AND verdict = 'fail') - w.started_at),
                       extract(epoch FROM (SELECT min(looked_at) FROM migrate.watch_looks
                                           WHERE version = '1' AND stage = 'recovery' AND signal = 'look')
                                          - w.started_at),
                       extract(epoch FROM w.changed_at - w.started_at),
                       (SELECT max(shift) FROM migrate.watch_looks WHERE version = '1' AND stage = 'watch'
                          AND signal = 'latency')
                FROM migrate.watch_records w WHERE version = '1'""").fetchone()
            print(f"  dropped index the workload needs: failing look {row[0]:.1f} s after the change "
                  f"(latency {row[3]:.0f}x the baseline), rollback done and first recovery look at "
                  f"{row[1]:.1f} s, {end} at {row[2]:.1f} s")
            print("    stage     look  at (s)  latency index: baseline median / now median  errors/min  verdict")
            for r in c.execute("""
                    SELECT l.stage, l.look,
                           extract(epoch FROM l.looked_at - w.started_at),
                           l.baseline, l.now,
                           (SELECT e.now FROM migrate.watch_looks e WHERE (e.version, e.stage, e.look)
                              = (l.version, l.stage, l.look) AND e.signal = 'any error'),
                           (SELECT v.verdict FROM migrate.watch_looks v WHERE (v.version, v.stage, v.look)
                              = (l.version, l.stage, l.look) AND v.signal = 'look')
                    FROM migrate.watch_looks l JOIN migrate.watch_records w USING (version)
                    WHERE l.version = '1' AND l.signal = 'latency' ORDER BY l.looked_at""").fetchall():
                now = "-" if r[4] is None else f"{r[4]:.2f}"
                errors = "-" if r[5] is None else f"{r[5]:.0f}"
                print(f"    {r[0]:<9} {r[1]:>4}  {r[2]:>6.1f}  {r[3]:>14.2f} / {now:<10}  {errors:>20}  {r[6]}")
    finally:
        load.terminate()
        load.wait()


def watch_false_alarms(cluster: Cluster, script: Path, rate: int, harmless: int) -> None:
    """Harmless watched migrations under the same load: how many end other than complete."""
    db = lookup_orders(cluster, "bench_gate_harmless")
    load = background_pgbench(cluster, db, script, rate)
    outcomes: dict[str, int] = {}
    try:
        with cluster.connect(db) as c:
            wait_until(lambda: c.execute("SELECT count(*) FROM migrate.workload_samples() WHERE statements > 0"
                                         ).fetchone()[0] >= 8, timeout=60, interval=0.5)
            for i in range(harmless):
                version = str(100 + i)
                c.execute("SELECT * FROM migrate.apply(%s, %s, rollback => %s, watch => '15 s', "
                          "on_regression => 'rollback')",
                          (version, f"COMMENT ON TABLE orders IS 'revision {i}'; CREATE TABLE side_{i} (id int)",
                           f"DROP TABLE side_{i}"))
                end = settle(c, version, 90)
                outcomes[end] = outcomes.get(end, 0) + 1
                if end == "held":
                    c.execute("SELECT migrate.accept(%s, 'bench')", (version,))
    finally:
        load.terminate()
        load.wait()
    print(f"  {harmless} harmless watched migrations (15 s each) under the same load: "
          + ", ".join(f"{n} {state}" for state, n in sorted(outcomes.items()))
          + f"; false alarms (rolled back): {outcomes.get('rolled back', 0) + outcomes.get('rollback failed', 0)}")


def watch_cost(cluster: Cluster, script: Path, rate: int, rounds: int, work: Path) -> None:
    """What sampling costs: the worker's CPU time, and unthrottled tps with it on and off."""
    db = lookup_orders(cluster, "bench_gate_cost")
    # What the worker's sampling costs, read from its own CPU time (/proc: user + system
    # ticks) under the lookup load at a fixed rate: a tps ratio on this shared machine
    # moves by 15% between identical rounds, far more than the cost.
    load = background_pgbench(cluster, db, script, rate)
    try:
        share = {}
        with cluster.connect(db) as c:
            for case, interval in (("1s", "1"), ("10s", "10")):
                c.execute(f"ALTER SYSTEM SET migrate.watch_sample_interval = {interval}")
                c.execute("SELECT pg_reload_conf()")
                time.sleep(3)
                pid = worker_pid(c)
                ticks = os.sysconf("SC_CLK_TCK")

                def cpu() -> float:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / ticks

                before, started = cpu(), time.monotonic()
                time.sleep(60)
                used = cpu() - before
                wall = time.monotonic() - started
                samples = wall / int(interval)
                print(f"  sampling every {case:>3}: the worker used {used * 1000:.0f} ms of CPU in {wall:.0f} s "
                      f"({samples:.0f} samples, {used * 1000 / samples:.1f} ms each): "
                      f"{used / wall * 100:.3f}% of one core")
                share[case] = used / wall
        # Sampling takes from the workload at most the CPU it uses itself: with every core
        # busy, tps falls by at most that share of the machine.
        cores = os.cpu_count() or 1
        print(f"  bound from it at the default 10 s, all {cores} cores busy: off/on tps <= "
              f"{1 / (1 - share['10s'] / cores):.4f}x (goal 1.02x)")
    finally:
        load.terminate()
        load.wait()
    tps: dict[str, list[float]] = {"off": [], "on": []}
    with cluster.connect() as admin:
        for r in range(rounds):
            # Alternating which goes first: the machine's own drift falls on both sides.
            for case in (("off", "on") if r % 2 == 0 else ("on", "off")):
                admin.execute("ALTER SYSTEM SET migrate.watch_sample_interval = "
                              + ("0" if case == "off" else "10"))
                admin.execute("SELECT pg_reload_conf()")
                time.sleep(1.5)
                latencies = pgbench_log(cluster, db, LOOKUP, 10, 2, work / f"cost_{case}_{r}")
                tps[case].append(len(latencies) / 10)
        admin.execute("ALTER SYSTEM RESET migrate.watch_sample_interval")
        admin.execute("SELECT pg_reload_conf()")
    off, on = statistics.median(tps["off"]), statistics.median(tps["on"])
    spread = (max(tps["off"]) - min(tps["off"])) / off
    print(f"  unthrottled pgbench, sampling every 10 s vs off: {on:,.0f} vs {off:,.0f} tps (median of {rounds} "
          f"rounds of 10 s each, alternating): off/on {off / on:.3f}x; rounds with sampling off alone "
          f"spread by {spread * 100:.0f}%")


def replicas_bench(cluster: Cluster, n: int) -> None:
    """Commit to replayed on a streaming standby: migrate.wait_replicas after each apply,
    beside a client that polls the standby itself (pg_last_wal_replay_lsn every 1 ms) after the
    same DDL run directly; and what pg-migrate apply --wait-replicas adds to a whole apply."""
    standby = Cluster("/tmp/pg_migrate_bench_standby")
    standby.start_standby_of(cluster, "cluster_name=bench_standby")
    a = cluster.create_database("bench_replicas")
    b = cluster.create_database("bench_replicas_direct")
    waited, polled, applied = [], [], []
    try:
        wait_for(lambda: standby.connect().execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (b,)).fetchone()[0] == 1, 30)
        with cluster.connect(a) as ca, cluster.connect(b) as cb, standby.connect(b) as sb:
            for i in range(1, n + 1):
                sql = small_migration(i)
                t = time.perf_counter()
                ca.execute("SELECT migrate.apply(%s, %s)", (str(i), sql))
                applied.append(time.perf_counter() - t)
                t = time.perf_counter()
                ca.execute("CALL migrate.wait_replicas(%s, '60 s')", (str(i),))
                waited.append(time.perf_counter() - t)
                cb.execute(sql)
                lsn = cb.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                t = time.perf_counter()
                while not sb.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                    time.sleep(0.001)
                polled.append(time.perf_counter() - t)
                time.sleep(0.05)
    finally:
        standby.stop()
        cluster.drop_database(a)
        cluster.drop_database(b)
    print(f"replicas: {n} migrations (2 statements each), one streaming standby on this machine")
    print(f"  migrate.apply:                         median {median_ms(applied):7.2f} ms")
    print(f"  then CALL migrate.wait_replicas:       median {median_ms(waited):7.2f} ms, max {max(waited) * 1000:.2f} ms")
    print(f"  direct DDL, then polling the standby:  median {median_ms(polled):7.2f} ms, max {max(polled) * 1000:.2f} ms")
    print(f"  wait_replicas / polling the standby:   {statistics.median(waited) / statistics.median(polled):.2f}x (medians)")


FLEET_FILES = {
    "V1__orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint, amount int);\n",
    "V2__status.sql": "ALTER TABLE orders ADD COLUMN status text;\n",
    "V3__index.sql": "CREATE INDEX CONCURRENTLY orders_customer ON orders (customer);\n",
    "V4__customers.sql": "CREATE TABLE customers (id bigint PRIMARY KEY, name text);\n",
    "V5__comment.sql": "COMMENT ON TABLE orders IS 'one row per order';\n",
}


def fleet_bench(cluster: Cluster, rounds: int) -> None:
    """pg-migrate apply --fleet of 5 versions to 4 clusters (a canary, then two waves; the
    fingerprints compared after each version), beside psql running the same files against each
    cluster in turn, as a deploy script without pg_migrate would."""
    cli = Path(os.environ.get("PG_MIGRATE_CLI", Path(__file__).resolve().parent.parent / "cli/target/debug/pg-migrate"))
    others = [Cluster(f"/tmp/pg_migrate_bench_fleet{i}").start() for i in range(3)]
    clusters = {"canary": cluster, "eu": others[0], "us": others[1], "apac": others[2]}
    work = Path(tempfile.mkdtemp(prefix="pg_migrate_fleet_"))
    folder = work / "migrations"
    folder.mkdir()
    for name, text in FLEET_FILES.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    subprocess.run([str(cli), "--dir", str(folder), "hash"], check=True, capture_output=True, env=env)
    fleet_times, psql_times = [], []
    try:
        for r in range(rounds):
            db = f"bench_fleet_{r}"
            for c in clusters.values():
                c.create_database(db)
                c.create_database(db + "_psql", extension=False)
            lines = ['canary = "canary"', 'waves = [["eu", "us"], ["apac"]]']
            for name, c in clusters.items():
                lines += [f"[targets.{name}]", f'url = "host={c.sock} port={c.port} user=postgres dbname={db}"']
            (work / "fleet.toml").write_text("\n".join(lines) + "\n")
            t = time.perf_counter()
            done = subprocess.run([str(cli), "--dir", str(folder), "apply", "--fleet", str(work / "fleet.toml")],
                                  capture_output=True, text=True, env=env)
            fleet_times.append(time.perf_counter() - t)
            assert done.returncode == 0, done
            t = time.perf_counter()
            for c in clusters.values():
                for name in sorted(FLEET_FILES, key=lambda f: int(f[1:].split("__")[0])):
                    subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(c.sock),
                                    "-p", str(c.port), "-U", "postgres", "-d", db + "_psql", "-f", str(folder / name)],
                                   check=True, capture_output=True)
            psql_times.append(time.perf_counter() - t)
            for c in clusters.values():
                c.drop_database(db)
                c.drop_database(db + "_psql")
    finally:
        for c in others:
            c.stop()
    print(f"fleet: 5 versions (one CREATE INDEX CONCURRENTLY) to 4 clusters on this machine, {rounds} rounds")
    print(f"  pg-migrate apply --fleet (canary, 2 waves, fingerprints after each version): "
          f"median {median_ms(fleet_times):7.0f} ms")
    print(f"  psql -f, file by file, cluster by cluster:                                    "
          f"median {median_ms(psql_times):7.0f} ms")
    print(f"  fleet / psql: {statistics.median(fleet_times) / statistics.median(psql_times):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--migrations", type=int, default=500)
    p.add_argument("--hold", type=float, default=5.0, help="seconds the blocking transaction holds its lock")
    p.add_argument("--lock-timeout-ms", type=int, default=500)
    p.add_argument("--guard-groups", type=int, default=500, help="groups of 4 statements for the guard benchmark")
    p.add_argument("--submissions", type=int, default=20, help="phased migrations per worker-latency case")
    p.add_argument("--rows", type=int, default=1_200_000, help="rows in the writer-wait table")
    p.add_argument("--writers", type=int, default=4, help="pgbench clients in writer-wait")
    p.add_argument("--dry-runs", type=int, default=10, help="repetitions in dry-run")
    p.add_argument("--sizes", default="0,500,2000,10000", help="schema sizes (tables) in schema-scale")
    p.add_argument("--scale-migrations", type=int, default=40, help="migrations per size in schema-scale")
    p.add_argument("--backfill-rows", default="1000000,5000000", help="rows in each backfill table, one run per size")
    p.add_argument("--backfill-pause", help="migrate.backfill_pause for (c), e.g. 20ms (default: the setting's)")
    p.add_argument("--backfill-max-wal-size", help="max_wal_size during backfill, e.g. 8GB (default: the server's)")
    p.add_argument("--backfill-server-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting for the backfill section (repeatable), e.g. wal_compression=lz4")
    p.add_argument("--backfill-rate", type=int, default=400, help="pgbench transactions per second in backfill")
    p.add_argument("--backfill-batch-time", help="migrate.backfill_batch_time for (c), e.g. 20ms (default: the setting's)")
    p.add_argument("--window-rows", type=int, default=200_000, help="rows in the bridge-overhead tables")
    p.add_argument("--window-change-rows", type=int, default=2_000_000, help="rows in the int -> bigint tables (0: skip)")
    p.add_argument("--window-rounds", type=int, default=3, help="20 s rounds of the bridge cases, all at once")
    p.add_argument("--window-write-rate", type=int, default=100,
                   help="pgbench transactions per second of each of the six cases in the throttled passes")
    p.add_argument("--window-scale-sizes", default="0,5000", help="schema sizes (tables) in window-scale")
    p.add_argument("--window-scale-rows", type=int, default=1_000_000, help="rows of the changed table in window-scale")
    p.add_argument("--watch-harmless", type=int, default=20, help="harmless watched migrations in watch")
    p.add_argument("--watch-parts", default="drop,harmless,cost", help="parts of watch to run")
    p.add_argument("--watch-rounds", type=int, default=6, help="alternating rounds per case of the sampling cost")
    p.add_argument("--only", choices=["apply-overhead", "lock-queue", "guard", "worker-latency", "writer-wait",
                                      "dry-run", "schema-scale", "backfill", "script-size", "window",
                                      "window-scale", "watch", "replicas", "fleet"])
    args = p.parse_args()
    if any(s.split("=", 1)[0] in ("migrate.backfill_flush_after", "backend_flush_after")
           for s in args.backfill_server_setting):
        p.error("backfill's (d) sets migrate.backfill_flush_after itself; (c) and (d) compare it")
    # Commit timestamps: the worker-latency figure starts at the submitting commit.
    cluster = Cluster("/tmp/pg_migrate_bench").start("track_commit_timestamp=on", "log_timezone=UTC")
    try:
        settings = cluster.connect().execute(
            "SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_wal_size')").fetchone()[0]
        print(f"cluster: PostgreSQL 15, pg_migrate preloaded (release build), {settings}")
        if args.only in (None, "apply-overhead"):
            apply_overhead(cluster, args.migrations)
        if args.only in (None, "lock-queue"):
            lock_queue(cluster, args.hold, args.lock_timeout_ms)
        if args.only in (None, "guard"):
            guard(cluster, args.guard_groups)
        if args.only in (None, "worker-latency"):
            worker_latency(cluster, args.submissions)
        if args.only in (None, "writer-wait"):
            writer_wait(cluster, args.rows, args.writers)
        if args.only in (None, "dry-run"):
            dry_run(cluster, args.dry_runs)
        if args.only in (None, "schema-scale"):
            schema_scale(cluster, [int(x) for x in args.sizes.split(",")], args.scale_migrations)
        if args.only in (None, "script-size"):
            script_size(cluster, [1_000, 10_000, 50_000])
        if args.only in (None, "window"):
            window_bench(cluster, args.window_rows, args.window_change_rows, args.window_rounds,
                         args.backfill_rate, args.window_write_rate)
        if args.only in (None, "window-scale"):
            window_scale(cluster, [int(x) for x in args.window_scale_sizes.split(",")], args.window_scale_rows)
        if args.only in (None, "watch"):
            watch_bench(args.watch_harmless, args.watch_rounds, 50, args.watch_parts.split(","))
        if args.only in (None, "replicas"):
            replicas_bench(cluster, 20)
        if args.only in (None, "fleet"):
            fleet_bench(cluster, 5)
        if args.only in (None, "backfill"):
            for rows in (int(x) for x in args.backfill_rows.split(",")):
                server = args.backfill_server_setting + (
                    [f"max_wal_size={args.backfill_max_wal_size}"] if args.backfill_max_wal_size else [])
                backfill(cluster, rows, 2, args.backfill_rate, args.backfill_batch_time, args.backfill_pause, server)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
