"""Failover, as an HA manager (Patroni, pg_auto_failover) does it underneath: the primary stops
at once (pg_ctl -m immediate), its streaming standby is promoted (pg_promote), and the new
primary takes up what the old one left: a CONCURRENTLY build cut short, a backfill under way,
migrations the standby never received."""

import json
import os
import subprocess

from harness import PG_BIN, Cluster, wait_until

CIC_MIGRATION = """
INSERT INTO marks VALUES (1);
CREATE INDEX CONCURRENTLY items_v ON items (v);
INSERT INTO marks VALUES (3);
"""
ROWS = 50_000


def crash(cluster: Cluster) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(cluster.dir / "data"),
                    "-m", "immediate", "-w", "stop"], check=True, capture_output=True)


def replayed_all(primary: Cluster, standby: Cluster) -> None:
    with primary.connect() as p, standby.connect() as s:
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        wait_until(lambda: s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0],
                   timeout=30)


def promote(standby: Cluster) -> None:
    with standby.connect() as s:
        assert s.execute("SELECT pg_promote(true, 60)").fetchone() == (True,)
        assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def pg_migrate_processes(cluster: Cluster) -> list[str]:
    with cluster.connect() as c:
        return [r[0] for r in c.execute(
            "SELECT backend_type FROM pg_stat_activity WHERE backend_type LIKE 'pg_migrate%' ORDER BY 1")]


def wait_applied(cluster: Cluster, db: str, version: str, timeout: float = 120) -> None:
    def applied():
        with cluster.connect(db) as c:
            return c.execute("SELECT status FROM migrate.history WHERE version = %s", (version,)).fetchone() == (
                "applied",)
    wait_until(applied, timeout=timeout, interval=0.1)


def test_a_promoted_standby_resumes_a_cut_build_and_a_backfill_exactly_once():
    primary = Cluster("/tmp/pg_migrate_e2e_fo_primary").start()
    standby = Cluster("/tmp/pg_migrate_e2e_fo_standby")
    try:
        standby.start_standby_of(primary)
        build_db = primary.create_database("fo_build")
        fill_db = primary.create_database("fo_fill")
        with primary.connect(build_db) as c:
            c.execute("SET migrate.guard = off")
            c.execute("CREATE TABLE items (id bigint PRIMARY KEY, v int)")
            c.execute(f"INSERT INTO items SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g")
            c.execute("CREATE TABLE marks (phase int)")
        with primary.connect(fill_db) as c:
            c.execute("CREATE TABLE t (id bigint PRIMARY KEY, a int NOT NULL, b int, n int NOT NULL DEFAULT 0)")
            c.execute(f"INSERT INTO t (id, a) SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g")
            c.execute("ANALYZE t")
        # A writer's open transaction holds the build in its first wait, its INVALID index made.
        holder = primary.connect(build_db, autocommit=False)
        holder.execute("UPDATE items SET v = v WHERE id = 1")
        with primary.connect(build_db) as c:
            c.execute("SELECT migrate.apply('1', %s)", (CIC_MIGRATION,))
            wait_until(lambda: c.execute(
                "SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND NOT indisvalid")
                .fetchone()[0] == 1, timeout=30)
        # A slow backfill, counting each row it writes: batches of 100, 20 ms apart.
        with primary.connect(fill_db) as c:
            job = c.execute("SELECT migrate.backfill('t', 'b = a * 2, n = n + 1', 'b IS NULL', batch_size => 100, "
                            "max_batch_size => 100, pause => '20 ms')").fetchone()[0]
            wait_until(lambda: c.execute("SELECT rows_done FROM migrate.backfill_progress WHERE job = %s", (job,))
                       .fetchone()[0] >= 1_000, timeout=60)
        replayed_all(primary, standby)
        # Nothing of pg_migrate runs on a standby; both databases' workers run on the primary.
        assert pg_migrate_processes(standby) == []
        assert pg_migrate_processes(primary).count("pg_migrate worker") == 2

        with standby.connect() as s:
            received = s.execute("SELECT pg_last_wal_replay_lsn()").fetchone()[0]
        crash(primary)
        holder.close()
        promote(standby)
        wait_until(lambda: "pg_migrate launcher" in pg_migrate_processes(standby), timeout=30)

        wait_applied(standby, build_db, "1")
        with standby.connect(build_db) as c:
            assert c.execute("SELECT array_agg(phase ORDER BY phase) FROM marks").fetchone()[0] == [1, 3]
            assert c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_v'::regclass").fetchone() == (
                True,)
            assert c.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass "
                             "AND NOT indisvalid").fetchone() == (0,)
            steps = c.execute("SELECT phase, state, attempts FROM migrate.steps ORDER BY phase").fetchall()
            # The cut build ran again on the new primary, and only it.
            assert steps == [(1, "done", 1), (2, "done", 2), (3, "done", 1)], steps
            # The phases that ran on the new primary committed there, in order, before the end.
            wait_until(lambda: c.execute("SELECT commit_lsn IS NOT NULL FROM migrate.history").fetchone()[0],
                       timeout=30)
            (done_at,) = c.execute("SELECT commit_lsn FROM migrate.history").fetchone()
            phases = [r[0] for r in c.execute("SELECT commit_lsn FROM migrate.step_records ORDER BY phase")]
            assert received < phases[1] < phases[2] < done_at, (received, phases, done_at)
        with standby.connect(fill_db) as c:
            wait_until(lambda: c.execute("SELECT state FROM migrate.backfill_progress WHERE job = %s", (job,))
                       .fetchone()[0] == "done", timeout=180, interval=0.2)
            # Every row written exactly once: batches the standby never received are simply not
            # there, and were written again with their progress.
            assert c.execute("SELECT min(n), max(n), count(*) FILTER (WHERE b IS NULL) FROM t").fetchone() == (1, 1, 0)
            assert c.execute("SELECT rows_done FROM migrate.backfill_progress WHERE job = %s", (job,)).fetchone() == (
                ROWS,)
    finally:
        standby.stop()
        primary.stop()


def cli(cli_bin, folder, db):
    """pg-migrate over `folder`, against a cluster given at each call."""
    def run(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
        env.update(PGHOST=str(cluster.sock), PGPORT=str(cluster.port), PGUSER="postgres", PGDATABASE=db,
                   NO_COLOR="1")
        return subprocess.run([str(cli_bin), "--dir", str(folder), *args], capture_output=True, text=True,
                              env=env, timeout=120)
    return run


def states(run, cluster) -> dict:
    r = run(cluster, "status", "--format", "json")
    assert r.returncode == 0, r
    return {m["version"]: m["state"] for m in json.loads(r.stdout)["migrations"]}


def test_a_migration_the_standby_never_received_is_pending_after_promotion_and_applied_once(cli_bin, tmp_path):
    primary = Cluster("/tmp/pg_migrate_e2e_fo2_primary").start()
    standby = Cluster("/tmp/pg_migrate_e2e_fo2_standby")
    try:
        standby.start_standby_of(primary)
        db = primary.create_database("fo_tail")
        folder = tmp_path / "migrations"
        folder.mkdir()
        (folder / "V1__one.sql").write_text("CREATE TABLE one (id int);\n")
        run = cli(cli_bin, folder, db)
        assert run(primary, "hash").returncode == 0
        r = run(primary, "apply", "--wait-replicas=30")
        assert r.returncode == 0, r
        # The standby stops receiving (its primary_conninfo now leads nowhere), as when the
        # network between them fails; the primary goes on alone, as asynchronous replication lets it.
        with standby.connect() as s:
            s.execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 connect_timeout=1'")
            s.execute("SELECT pg_reload_conf()")
        with primary.connect() as p:
            wait_until(lambda: p.execute("SELECT count(*) FROM pg_stat_replication").fetchone() == (0,), timeout=30)
        (folder / "V2__two.sql").write_text("CREATE TABLE two (id int);\n")
        assert run(primary, "hash").returncode == 0
        r = run(primary, "apply")
        assert r.returncode == 0 and "applied 2 two" in r.stdout, r
        # Reported committed, never replicated; then the primary is lost.
        crash(primary)
        promote(standby)
        assert states(run, standby) == {"1": "applied, unverified", "2": "pending"}
        r = run(standby, "apply")
        assert r.returncode == 0 and "applied 2 two" in r.stdout, r
        r = run(standby, "apply")
        assert r.returncode == 0 and "nothing to apply" in r.stdout, r
        with standby.connect(db) as c:
            assert c.execute("SELECT array_agg(version ORDER BY version) FROM migrate.history").fetchone() == (
                ["1", "2"],)
            assert c.execute("SELECT to_regclass('two') IS NOT NULL").fetchone() == (True,)
    finally:
        standby.stop()
        primary.stop()
