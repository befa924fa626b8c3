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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Cluster, Stopwatch, holding_lock  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--migrations", type=int, default=500)
    p.add_argument("--hold", type=float, default=5.0, help="seconds the blocking transaction holds its lock")
    p.add_argument("--lock-timeout-ms", type=int, default=500)
    p.add_argument("--guard-groups", type=int, default=500, help="groups of 4 statements for the guard benchmark")
    p.add_argument("--only", choices=["apply-overhead", "lock-queue", "guard"])
    args = p.parse_args()
    cluster = Cluster("/tmp/pg_migrate_bench").start()
    try:
        settings = cluster.connect().execute(
            "SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings"
            " WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers')").fetchone()[0]
        print(f"cluster: PostgreSQL 15, pg_migrate preloaded (release build), {settings}")
        if args.only in (None, "apply-overhead"):
            apply_overhead(cluster, args.migrations)
        if args.only in (None, "lock-queue"):
            lock_queue(cluster, args.hold, args.lock_timeout_ms)
        if args.only in (None, "guard"):
            guard(cluster, args.guard_groups)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
