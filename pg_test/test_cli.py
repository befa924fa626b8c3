"""pg-migrate, the command-line client (issue 17), against a real cluster: a folder of files
applied from scratch and again, its integrity file, changed and garbage files, lint findings
as annotations, phased migrations, errors with the extension's DETAIL and HINT, and two
applies at once."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import PG_BIN, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Run:
    def __init__(self, cli_bin: Path, cluster, db: str, folder: Path):
        self.bin, self.cluster, self.db, self.folder = cli_bin, cluster, db, folder

    def env(self, **extra) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
        return {**base, "PGHOST": str(self.cluster.sock), "PGPORT": str(self.cluster.port), "PGUSER": "postgres",
                "PGDATABASE": self.db, "NO_COLOR": "1", "GITHUB_WORKSPACE": str(self.folder.parent), **extra}

    def __call__(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin), "--dir", str(self.folder), *args], capture_output=True, text=True,
                              env=env or self.env(), timeout=120)


def write(folder: Path, name: str, text: str | bytes) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


@pytest.fixture
def run(cli_bin, cluster, db, tmp_path) -> Run:
    folder = tmp_path / "migrations"
    folder.mkdir()
    write(folder, "V1__create_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY, total int);\n")
    write(folder, "V1_1__add_note.sql", "-- migrate:allow rename-column\nALTER TABLE orders ADD COLUMN note text;\n")
    write(folder, "U1_1__add_note.sql", "ALTER TABLE orders DROP COLUMN note;\n")
    # A folder per version; CONCURRENTLY makes it a phase of the background worker.
    write(folder, "2__index_totals/up.sql", "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);\n")
    write(folder, "2__index_totals/verify.sql", "SELECT 1 WHERE false;\n")
    write(folder, "README.md", "notes beside the migrations are left alone\n")
    return Run(cli_bin, cluster, db, folder)


def status(run: Run) -> dict:
    r = run("--format", "json", "status")
    return {m["version"]: m["state"] for m in json.loads(r.stdout)["migrations"]}


def test_a_folder_is_applied_from_scratch_and_again_with_nothing_to_do(run, conn):
    # Without migrate.sum every verb refuses: the folder's integrity is not known.
    r = run("status")
    assert (r.returncode, "migrate.sum is missing" in r.stderr) == (4, True), r
    assert run("hash").returncode == 0
    r = run("--format", "json", "status", "--check")
    doc = json.loads(r.stdout)
    assert (r.returncode, doc["pg_migrate_cli"], doc["exit"]) == (5, 1, 5), r
    assert [(m["version"], m["state"], m["file"]) for m in doc["migrations"]] == [
        ("1", "pending", "V1__create_orders.sql"), ("1.1", "pending", "V1_1__add_note.sql"),
        ("2", "pending", "2__index_totals/up.sql")]
    r = run("apply")
    assert r.returncode == 0, r
    assert "phase 1 of 1 done" in r.stdout, r.stdout
    assert conn.execute("SELECT version, status, description, rollback_script IS NOT NULL, verify_script IS NOT NULL "
                        "FROM migrate.history ORDER BY version_key").fetchall() == [
        ("1", "applied", "create orders", False, False), ("1.1", "applied", "add note", True, False),
        ("2", "applied", "index totals", False, True)]
    assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_total_idx'::regclass"
                        ).fetchone() == (True,)
    # Recorded under the checksum the extension computes of the same text.
    assert conn.execute("SELECT migrate.validate('1', %s)", ((run.folder / "V1__create_orders.sql").read_text(),)
                        ).fetchone() == ("valid",)
    r = run("apply")
    assert (r.returncode, "nothing to apply" in r.stdout) == (0, True), r
    r = run("status", "--check")
    assert r.returncode == 0, r
    assert set(status(run).values()) == {"applied, unverified"}


def test_a_changed_or_unlisted_file_is_refused_with_its_name(run, conn):
    run("hash")
    assert run("apply").returncode == 0
    write(run.folder, "V1__create_orders.sql", "CREATE TABLE orders (id int PRIMARY KEY, total int);\n")
    r = run("apply")
    assert (r.returncode, "changed since: V1__create_orders.sql" in r.stderr) == (4, True), r
    # Even with migrate.sum written again, the history knows it ran as other text.
    run("hash")
    r = run("apply")
    assert r.returncode == 4 and "V1__create_orders.sql" in r.stderr and "new version" in r.stderr, r
    write(run.folder, "V1__create_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY, total int);\n")
    run("hash")
    write(run.folder, "V3__more.sql", "CREATE TABLE more (id int);\n")
    r = run("apply")
    assert (r.returncode, "not in it: V3__more.sql" in r.stderr) == (4, True), r
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'more'").fetchone() == (0,)
    # A version recorded that no file has is shown missing.
    conn.execute("SELECT migrate.apply('9', 'CREATE TABLE nine (id int)')")
    (run.folder / "V3__more.sql").unlink()
    run("hash")
    assert status(run)["9"] == "missing"


@pytest.mark.parametrize("name, content, words", [
    ("add_orders.sql", "SELECT 1;", "not a migration's name"),
    ("V1_x__bad.sql", "SELECT 1;", "not a migration's name"),
    ("V3__latin1.sql", "SELECT 'caf\xe9';".encode("latin-1"), "not UTF-8"),
    ("V3__empty.sql", "  \n", "empty"),
    ("V1_0__again.sql", "SELECT 1;", "version 1 again"),
    ("V3__directive.sql", "-- migrate:watchh 1 min\nSELECT 1;", "unknown directive"),
    ("V3__shout.SQL", "SELECT 1;", "ends in .sql, in lower case"),
    ("3__folder/donw.sql", "SELECT 1;", "not a script of a migration folder"),
])
def test_garbage_files_are_refused_with_a_clear_message(run, name, content, words):
    write(run.folder, name, content)
    r = run("hash")
    assert (r.returncode, words in r.stderr) == (1, True), r


def test_lint_findings_are_annotations_at_their_line(run, conn):
    run("hash")
    assert run("apply").returncode == 0
    write(run.folder, "V3__widen.sql", "-- a better name\nALTER TABLE orders RENAME COLUMN total TO amount;\n")
    run("hash")
    r = run("--format", "github", "lint")
    assert r.returncode == 3, r
    line = [l for l in r.stdout.splitlines() if l.startswith("::error")]
    # At its path in the repository (GITHUB_WORKSPACE), which is where GitHub shows it.
    assert line and line[0].startswith("::error file=migrations/V3__widen.sql,line=2,title="), r.stdout
    # Nothing ran.
    assert conn.execute("SELECT count(*) FROM migrate.history WHERE version = '3'").fetchone() == (0,)
    # Applying it is refused by the extension: its message, DETAIL and HINT, at the file.
    r = run("apply")
    assert r.returncode == 1 and "V3__widen.sql:2: error" in r.stderr, r
    assert "pg_migrate:" in r.stderr and "DETAIL:" in r.stderr and "HINT:" in r.stderr, r.stderr
    r = run("--format", "github", "apply")
    assert r.returncode == 1 and "::error file=migrations/V3__widen.sql,line=2,title=error::" in r.stdout, r


def test_github_shows_nine_findings_and_says_where_the_rest_are(run, tmp_path):
    run("hash")
    assert run("apply").returncode == 0
    for i in range(3, 15):
        write(run.folder, f"V{i}__rename.sql", "ALTER TABLE orders RENAME COLUMN total TO amount;\n")
    run("hash")
    summary = tmp_path / "summary.md"
    summary.write_text("")
    r = run("--format", "github", "lint", env=run.env(GITHUB_STEP_SUMMARY=str(summary)))
    assert r.returncode == 3, r
    # GitHub shows ten error annotations a step: nine findings, then where the rest are.
    shown = [l for l in r.stdout.splitlines() if l.startswith("::error")]
    assert len(shown) == 10 and all("title=rename-column::" in l for l in shown[:9]), r.stdout
    assert shown[9] == "::error title=more findings::3 more findings than GitHub shows; they are in the step summary"
    rest = summary.read_text().splitlines()
    assert len(rest) == 3 and all(l.startswith("- `migrations/V1") for l in rest), rest
    # Without a summary to take them, they are counted, never lost in silence.
    r = run("--format", "github", "lint")
    assert r.returncode == 3 and "::error title=more findings::3 more findings than GitHub shows; run " in r.stdout, r


def test_connection_by_url_and_two_applies_at_once(run, conn, cluster, db):
    for i in range(3, 8):
        write(run.folder, f"V{i}__t{i}.sql", f"CREATE TABLE t{i} (id int);\n")
    run("hash")
    env = run.env()
    for key in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        env.pop(key)
    env["DATABASE_URL"] = f"postgresql://postgres@/{db}?host={cluster.sock}&port={cluster.port}"
    results = []

    def one():
        results.append(run("apply", env=env))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], results
    # Each version once: the extension's applier lock orders them, the second finds them done.
    assert conn.execute("SELECT count(*), count(DISTINCT version) FROM migrate.history").fetchone() == (8, 8)
    wait_until(lambda: status(run)["2"] != "running", timeout=30)
    assert set(status(run).values()) == {"applied, unverified"}


def test_usage_errors_exit_2(run):
    r = run("frobnicate")
    assert r.returncode == 2, r
    r = run("apply", "--to")
    assert r.returncode == 2, r


@pytest.mark.parametrize("setup, words", [
    (lambda f: os.symlink("/etc/hostname", f / "V3__linked.sql"), "symbolic link"),
    (lambda f: (write(f, "U1_1__other.sql", "SELECT 1;"), write(f, "U1_1_0__again.sql", "SELECT 2;")),
     "two rollback scripts"),
])
def test_links_and_second_rollbacks_are_refused(run, setup, words):
    setup(run.folder)
    r = run("hash")
    assert (r.returncode, words in r.stderr) == (1, True), r


def test_a_failed_phase_stops_apply_and_fails_the_check(run, conn):
    write(run.folder, "V3__unique.sql", "CREATE UNIQUE INDEX CONCURRENTLY orders_total_key ON orders (total);\n")
    write(run.folder, "V4__after.sql", "CREATE TABLE after_unique (id int);\n")
    run("hash")
    # V1 creates orders; rows that break the unique index go in before V3 runs.
    assert run("apply", "--to", "2").returncode == 0
    conn.execute("INSERT INTO orders VALUES (1, 5), (2, 5)")
    r = run("apply")
    assert r.returncode == 1 and "version 3 is failed" in r.stderr and "V3__unique.sql" in r.stderr, r
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'after_unique'").fetchone() == (0,)
    r = run("status", "--check")
    assert (r.returncode, "version 3 is failed" in r.stderr, "pg-migrate retry 3" in r.stderr) == (1, True, True), r
    r = run("apply", "--to", "V3")
    assert r.returncode == 2 and "not a version" in r.stderr, r
    r = run("--format", "json", "apply", "--to", "V3")
    doc = json.loads(r.stdout)
    assert (r.returncode, doc["exit"], doc["pg_migrate_cli"], doc["notes"][0]["title"]) == (2, 2, 1, "usage"), r
    # The cause fixed, retry runs what is left and waits for it; apply then goes on.
    conn.execute("DELETE FROM orders WHERE id = 2")
    r = run("retry", "3")
    assert r.returncode == 0 and "3" in r.stdout, r
    assert status(run)["3"] in ("applied, unverified", "complete", "applied"), status(run)
    assert run("apply").returncode == 0
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'after_unique'").fetchone() == (1,)


def test_a_lock_not_granted_after_every_retry_exits_6(run, cluster, db, conn):
    run("hash")
    assert run("apply").returncode == 0
    write(run.folder, "V3__add.sql", "ALTER TABLE orders ADD COLUMN added int;\n")
    run("hash")
    quick = run.env(PGOPTIONS="-c migrate.lock_timeout=100ms -c migrate.lock_retries=1 "
                              "-c migrate.lock_retry_delay=10ms")
    with cluster.connect(db) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE orders IN ACCESS SHARE MODE")
        r = run("apply", env=quick)
        holder.execute("ROLLBACK")
    assert r.returncode == 6 and "V3__add.sql" in r.stderr and "lock" in r.stderr, r
    assert status(run)["3"] == "pending"
    assert run("apply", env=quick).returncode == 0
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                        "AND attname = 'added'").fetchone() == (1,)


def test_a_watched_file_is_waited_for_before_the_next(cli_bin, tmp_path):
    from harness import GATE_SETTINGS, Cluster
    gate = Cluster("/tmp/pg_migrate_e2e_cli_gate").start("fsync=off", "synchronous_commit=off", *GATE_SETTINGS)
    try:
        db = gate.create_database("cli_watch")
        folder = tmp_path / "watched"
        folder.mkdir()
        write(folder, "V1__base.sql", "CREATE TABLE base (id int);\n")
        write(folder, "V2__watched.sql", "-- migrate:watch 12 s\nCOMMENT ON TABLE base IS 'watched';\n")
        write(folder, "V3__next.sql", "CREATE TABLE next_one (id int);\n")
        run = Run(cli_bin, gate, db, folder)
        run("hash")
        with gate.connect(db) as c:
            wait_until(lambda: c.execute("SELECT count(*) FROM migrate.workload_samples()").fetchone()[0] >= 6,
                       timeout=60, interval=0.5)
            r = run("apply")
            assert r.returncode == 0, r
            assert "2 health gate: watching" in r.stdout and "2 health gate: complete" in r.stdout, r.stdout
            assert c.execute("SELECT version FROM migrate.history ORDER BY version_key").fetchall() == [
                ("1",), ("2",), ("3",)]
            assert status(run)["2"] == "complete"
    finally:
        gate.stop()


def test_plan_reports_each_statement_and_refuses_unsafe_ones_at_their_line(run, conn):
    assert run("hash").returncode == 0 and run("apply").returncode == 0
    conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
    write(run.folder, "V3__rename.sql", "-- a rename breaks running clients\n\nALTER TABLE orders RENAME COLUMN total TO amount;\n")
    write(run.folder, "V4__more.sql", "CREATE TABLE more_orders (id int);\nALTER TABLE orders ADD COLUMN flag boolean;\n")
    run("hash")
    # conn is connected: this is a database in use, and the plan's locks would queue it.
    r = run("plan")
    assert r.returncode == 2 and "other session(s) are connected" in r.stderr and "--scratch" in r.stderr, r
    # So for a role that may not see which kind of session conn is (no pg_read_all_stats).
    conn.execute("CREATE ROLE cli_plain LOGIN")
    try:
        r = run("plan", env=run.env(PGUSER="cli_plain"))
        assert r.returncode == 2 and "other session(s) are connected" in r.stderr, r
    finally:
        conn.execute("DROP ROLE cli_plain")
    r = run("--format", "github", "plan", "--scratch")
    assert r.returncode == 3, r
    # The refusal is annotated at the statement's line of the file that has it.
    assert "::error file=migrations/V3__rename.sql,line=3,title=plan::" in r.stdout and "rename-column" in r.stdout, r.stdout
    doc = json.loads(run("--format", "json", "plan", "--scratch").stdout)
    plan = [(p["file"], p["line"], p["command"], p["error"] is None) for p in doc["plan"]]
    assert plan == [("V3__rename.sql", 3, "ALTER TABLE", False), ("V4__more.sql", 1, "CREATE TABLE", True),
                    ("V4__more.sql", 2, "ALTER TABLE", True)], doc
    assert "orders: ACCESS EXCLUSIVE" in " ".join(doc["plan"][2]["locks"]), doc["plan"][2]
    # Nothing of it stayed: the dry run rolled back.
    assert conn.execute("SELECT to_regclass('more_orders')").fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass "
                        "AND attname = 'flag'").fetchone() == (0,)
    assert status(run)["3"] == "pending"
    r = run("plan", "--scratch")
    assert r.returncode == 3 and "V3__rename.sql:3: plan" in r.stderr and "1 statements refused" in r.stdout, r
    # Each file is planned against what the pending files before it make.
    (run.folder / "V3__rename.sql").unlink()
    write(run.folder, "V5__later.sql", "ALTER TABLE more_orders ADD COLUMN note text;\n")
    run("hash")
    r = run("--format", "json", "plan", "--scratch")
    assert r.returncode == 0 and [p["error"] for p in json.loads(r.stdout)["plan"]] == [None, None, None], r
    assert conn.execute("SELECT to_regclass('more_orders')").fetchone() == (None,)


def test_verify_drift_and_fingerprint_find_changes_made_outside_migrations(run, conn):
    assert run("hash").returncode == 0 and run("apply").returncode == 0
    r = run("--format", "json", "verify")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and {c["version"] for c in doc["checks"]} >= {"1", "2"}, r
    fp = run("fingerprint").stdout.strip()
    assert len(fp) >= 16 and run("fingerprint", "--expect", fp).returncode == 0
    assert run("drift").returncode == 0
    # By hand, outside migrations: a column added and the index of version 2 dropped.
    conn.execute("ALTER TABLE orders ADD COLUMN sneaky int")
    conn.execute("DROP INDEX CONCURRENTLY orders_total_idx")
    conn.execute("CREATE TABLE \"evil\x1b[31m\n::error::injected ##[add-mask]x\" (id int)")
    r = run("drift")
    assert r.returncode == 4 and "sneaky" in r.stderr and "orders_total_idx" in r.stderr, r
    # The database's text drives neither the terminal nor a CI runner.
    printed = r.stdout + r.stderr
    assert "\x1b" not in printed and "##[" not in printed, printed
    assert not any(line.lstrip().startswith("::") for line in printed.splitlines()), printed
    assert run("verify", "1_1").returncode == 0
    r = run("fingerprint", "--expect", fp)
    assert r.returncode == 4 and f"not {fp}" in r.stderr, r
    r = run("--format", "json", "verify", "2")
    doc = json.loads(r.stdout)
    assert r.returncode == 4 and not all(c["ok"] for c in doc["checks"]), r
    assert run("verify", "1").returncode == 0


def test_baseline_skips_the_files_the_database_already_has(cli_bin, cluster, tmp_path):
    db = cluster.create_database("cli_baseline")
    folder = tmp_path / "adopted"
    write(folder, "V1__one.sql", "CREATE TABLE one (id int);\n")
    write(folder, "V2__two.sql", "CREATE TABLE two (id int);\n")
    write(folder, "V3__three.sql", "CREATE TABLE three (id int);\n")
    run = Run(cli_bin, cluster, db, folder)
    run("hash")
    with cluster.connect(db) as c:
        # A database made before pg_migrate: it already has what versions 1 and 2 make.
        c.execute("CREATE TABLE one (id int); CREATE TABLE two (id int)")
        r = run("baseline", "2")
        assert r.returncode == 0 and "2 files up to it" in r.stdout, r
        assert status(run) == {"1": "baseline", "2": "baseline", "3": "pending"}
        assert run("apply").returncode == 0
        assert c.execute("SELECT version, status FROM migrate.history ORDER BY version_key").fetchall() == [
            ("2", "baseline"), ("3", "applied")]
        r = run("baseline", "3")
        assert r.returncode == 1 and "history is not empty" in r.stderr, r


def slow_backfill(run: Run, conn, rows: int = 4000) -> None:
    """Version 3 backfills `rows` rows in batches of 50 with a pause between them: it runs
    for seconds in the worker."""
    run("hash")
    assert run("apply").returncode == 0
    conn.execute(f"INSERT INTO orders SELECT g, g FROM generate_series(1, {rows}) g")
    write(run.folder, "V3__fill.sql",
          "SELECT migrate.backfill('orders', 'note = ''n'' || id', 'note IS NULL', "
          "batch_size => 50, min_batch_size => 50, max_batch_size => 50, pause => '100 ms');\n")
    run("hash")


def test_ctrl_c_rolls_a_running_apply_back_whole(run, conn):
    run("hash")
    assert run("apply", "--to", "1.1").returncode == 0
    write(run.folder, "V3__slow.sql", "CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n")
    run("hash")
    p = subprocess.Popen([str(run.bin), "--dir", str(run.folder), "apply"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=run.env())
    wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%migrate.apply%' "
                                    "AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()").fetchone()[0] == 1,
               timeout=30, interval=0.1)
    started = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    took = time.monotonic() - started
    assert p.returncode == 130 and "was not applied: its transaction was rolled back" in err, (out, err)
    assert took < 5, took
    # Version 2 (phased) was applied before; 3 left nothing behind.
    assert conn.execute("SELECT to_regclass('slow')").fetchone() == (None,)
    assert status(run)["3"] == "pending"
    assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
                        "AND state = 'active' AND pid <> pg_backend_pid()").fetchone() == (0,)


def test_ctrl_c_while_the_worker_runs_says_what_goes_on_then_cancel_and_retry(run, conn):
    slow_backfill(run, conn)
    p = subprocess.Popen([str(run.bin), "--dir", str(run.folder), "apply"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=run.env())
    wait_until(lambda: conn.execute("SELECT count(*) FROM migrate.backfill_progress WHERE version = '3' "
                                    "AND rows_done > 0").fetchone()[0] == 1, timeout=60, interval=0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, (out, err)
    assert "version 3 is running and goes on in the database's worker" in err, err
    assert "pg-migrate cancel 3" in err, err
    # It does go on; cancel stops it, and retry runs the rest.
    r = run("cancel", "3")
    assert r.returncode == 0, r
    wait_until(lambda: status(run)["3"] == "cancelled", timeout=30, interval=0.2)
    assert run("status", "--check").returncode == 1
    r = run("retry", "3")
    assert r.returncode == 0, r
    assert conn.execute("SELECT count(*) FROM orders WHERE note IS NULL").fetchone() == (0,)


def test_a_progress_bar_on_a_terminal_follows_the_backfill_to_its_end(run, conn):
    slow_backfill(run, conn, rows=2000)
    # Under a pseudo-terminal (script(1)), as a person at a terminal sees it.
    command = f"{run.bin} --dir {run.folder} apply"
    r = subprocess.run(["script", "-qfec", command, "/dev/null"], capture_output=True, text=True,
                       env=run.env(), timeout=120)
    assert r.returncode == 0, r
    frames = r.stdout
    assert "3 phase 1 of 1: backfill" in frames, frames[-2000:]
    # Percentages rose as the batches went (a bar that moved, not one drawn at the end); the
    # bar is then cleared and the verb's line says how it ended.
    shown = [int(m) for m in re.findall(r"\]\s+(\d+)%", frames)]
    assert len(set(shown)) >= 3 and shown == sorted(shown), shown
    assert re.search(r"applied\S* 3 fill: 1 statements", frames), frames[-500:]
    # Without a terminal: plain lines, no bar.
    write(run.folder, "V4__fill_again.sql",
          "SELECT migrate.backfill('orders', 'total = total', batch_size => 500, pause => '0');\n")
    run("hash")
    r = run("apply")
    assert r.returncode == 0 and "\r" not in r.stdout + r.stderr and "4 phase 1 of 1 done" in r.stdout, r


def test_an_expand_directive_opens_a_window_and_contract_closes_it(run, conn):
    run("hash")
    assert run("apply").returncode == 0
    write(run.folder, "V3__rename.sql", "-- migrate:expand 1 day\nALTER TABLE orders RENAME COLUMN note TO remark;\n")
    run("hash")
    # plan shows the window's steps, and records nothing.
    r = run("--format", "json", "plan", "--scratch")
    steps = [p for p in json.loads(r.stdout)["plan"] if p["file"] == "V3__rename.sql"]
    assert r.returncode == 0 and steps and all(p["command"].startswith("expand step") for p in steps), r
    assert conn.execute("SELECT count(*) FROM migrate.history WHERE version = '3'").fetchone() == (0,)
    # A rename is what a window is for: lint does not judge it as if it ran directly.
    r = run("lint")
    assert r.returncode == 0, r
    # plan opens the window for real in a rolled-back savepoint: the guard judges what the
    # window keeps as written (a DROP TABLE), as it will at deploy.
    conn.execute("CREATE TABLE drop_me (id int)")
    write(run.folder, "V4__and_drop.sql", "-- migrate:expand\nALTER TABLE orders RENAME COLUMN total TO amount;\n"
          "DROP TABLE drop_me;\n")
    run("hash")
    r = run("plan", "--scratch")
    assert r.returncode == 3 and "V4__and_drop.sql" in r.stderr and "drop-table" in r.stderr, r
    assert conn.execute("SELECT to_regclass('drop_me') IS NOT NULL, count(*) FROM migrate.windows").fetchone() == (
        True, 0)
    (run.folder / "V4__and_drop.sql").unlink()
    run("hash")
    r = run("apply")
    assert r.returncode == 0, r
    assert conn.execute("SELECT state FROM migrate.windows WHERE version = '3'").fetchone()[0] == "published"
    # The file is what the window was opened from (its recorded script is the plan it made),
    # and its state is the window's.
    assert status(run)["3"] == "published", status(run)
    r = run("apply")
    assert r.returncode == 0 and "nothing to apply" in r.stdout, r
    # Old clients still see note; contract renames it for good (3.0 is version 3).
    r = run("contract", "3.0")
    assert r.returncode == 0 and "RENAME" in r.stdout.upper(), r
    assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                        "AND column_name = 'remark'").fetchone() == (1,)
    assert status(run)["3"] == "contracted", status(run)
    # An aborted window is not what is in place: status says so, and verify leaves it out.
    write(run.folder, "V5__rename_back.sql", "-- migrate:expand\nALTER TABLE orders RENAME COLUMN remark TO note;\n")
    run("hash")
    assert run("apply").returncode == 0
    r = run("abort", "5")
    assert r.returncode == 0, r
    assert status(run)["5"] == "aborted", status(run)
    r = run("--format", "json", "verify")
    assert r.returncode == 0 and '"5"' not in r.stdout, r


def test_a_service_file_and_the_password_file_connect_as_libpq_would(run, cluster, db, tmp_path):
    """PGSERVICE's settings under flags, over PG* variables; the password from PGPASSFILE
    (a private file only), for a role that must give one over TCP."""
    run("hash")
    hba = cluster.dir / "data" / "pg_hba.conf"
    original = hba.read_text()
    with cluster.connect() as admin:
        admin.execute("CREATE ROLE cli_pass LOGIN PASSWORD 's3cret:x' IN ROLE migrate_admin")
        admin.execute(f"GRANT CREATE ON DATABASE {db} TO cli_pass")
        try:
            # Before every trust line: this role gives a password over TCP.
            hba.write_text("host all cli_pass 127.0.0.1/32 scram-sha-256\n" + original)
            admin.execute("SELECT pg_reload_conf()")
            services = tmp_path / "services.conf"
            services.write_text(f"[elsewhere]\nhost=/nowhere\n[deploy]\nhost=127.0.0.1\nport={cluster.port}\n"
                                f"dbname={db}\nuser=cli_pass\n")
            passwords = tmp_path / "pgpass"
            # An escaped star is a star, not a wildcard (libpq's rule).
            passwords.write_text(f"127.0.0.1:{cluster.port}:{db}:cli_other:wrong\n"
                                 f"127.0.0.1:{cluster.port}:\\*:cli_pass:not-this-one\n"
                                 f"127.0.0.1:{cluster.port}:*:cli_pass:s3cret\\:x\n")
            passwords.chmod(0o600)
            env = {k: v for k, v in run.env().items() if k not in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER")}
            env.update(PGSERVICE="deploy", PGSERVICEFILE=str(services), PGPASSFILE=str(passwords),
                       PGHOST="/also/nowhere")
            r = run("--format", "json", "status", env=env)
            assert r.returncode == 0, r
            assert json.loads(r.stdout)["migrations"][0]["state"] == "pending"
            # A password file others may read is ignored, as libpq ignores it.
            passwords.chmod(0o644)
            r = run("status", env=env)
            assert r.returncode == 1 and "has group or world access" in r.stderr, r
            assert "password" in r.stderr.lower(), r
            passwords.chmod(0o600)
            # Flags win over the service.
            r = run("--port", "1", "status", env=env)
            assert r.returncode == 1 and "127.0.0.1" in r.stderr, r
            # An unknown service is named.
            r = run("status", env={**env, "PGSERVICE": "nosuch"})
            assert r.returncode == 1 and 'service "nosuch" not found' in r.stderr, r
        finally:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"REVOKE CREATE ON DATABASE {db} FROM cli_pass")
            admin.execute("DROP ROLE cli_pass")


SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"


def snapshot(name: str, text: str, folder: Path) -> None:
    """Compares `text` with the stored snapshot `name`; PG_MIGRATE_SNAPSHOTS=update writes it.
    Timings and the run's own paths are the only parts made neutral."""
    text = text.replace(str(folder), "<dir>")
    text = re.sub(r"in \d+ ms", "in <n> ms", text)
    text = re.sub(r"\d\d:\d\d:\d\d ago", "hh:mm:ss ago", text)
    path = SNAPSHOTS / name
    if os.environ.get("PG_MIGRATE_SNAPSHOTS") == "update":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}: run with PG_MIGRATE_SNAPSHOTS=update and review it"
    assert text == path.read_text(), f"{name} differs from its snapshot:\n{text}"


def test_human_and_json_output_match_their_snapshots(run, conn):
    write(run.folder, "V3__rename.sql", "-- a rename, not allowed\nALTER TABLE orders RENAME COLUMN total TO amount;\n")
    run("hash")
    r = run("apply", "--to", "1.1")
    snapshot("apply.txt", f"exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}", run.folder)
    r = run("status", "--check")
    snapshot("status_check.txt", f"exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}", run.folder)
    r = run("--format", "json", "status")
    snapshot("status.json", json.dumps(json.loads(r.stdout), indent=2, sort_keys=True) + "\n", run.folder)
    r = run("lint")
    snapshot("lint.txt", f"exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}", run.folder)
    r = run("--format", "json", "lint")
    snapshot("lint.json", json.dumps(json.loads(r.stdout), indent=2, sort_keys=True) + "\n", run.folder)
    # (Its table for people has times that set the width of a column: JSON only.)
    r = run("--format", "json", "plan", "--scratch")
    doc = json.loads(r.stdout)
    for p in doc["plan"]:
        p["ms"] = "<n>" if p.get("ms") is not None else None
    snapshot("plan.json", json.dumps(doc, indent=2, sort_keys=True) + "\n", run.folder)
    # An error of the extension at its file and line, with its DETAIL and HINT.
    assert run("apply", "--to", "2").returncode == 0
    r = run("apply")
    snapshot("apply_refused.txt", f"exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}", run.folder)
    r = run("verify")
    snapshot("verify.txt", f"exit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}", run.folder)


def make_certificates(folder: Path) -> None:
    """A certificate authority, a server certificate for localhost signed by it, and another
    authority that signed nothing here."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    openssl("req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=pg-migrate test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=another CA",
            "-keyout", "other.key", "-out", "other.crt")
    openssl("req", "-new", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    # A client certificate for role cli_cert (the server's cert authentication).
    openssl("req", "-new", "-nodes", "-subj", "/CN=cli_cert", "-keyout", "client.key", "-out", "client.csr")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", "client.crt")
    subprocess.run(["chown", "-R", "postgres", str(folder)], check=True)
    (folder / "server.key").chmod(0o600)


def test_tls_modes_are_libpqs_with_certificates_checked_as_asked(cli_bin, tmp_path):
    from harness import Cluster
    certs = Path("/tmp/pg_migrate_e2e_cli_certs")
    shutil.rmtree(certs, ignore_errors=True)
    certs.mkdir()
    make_certificates(certs)
    server = Cluster("/tmp/pg_migrate_e2e_cli_tls").start(
        "ssl=on", f"ssl_cert_file={certs}/server.crt", f"ssl_key_file={certs}/server.key",
        f"ssl_ca_file={certs}/ca.crt")
    try:
        db = server.create_database("cli_tls")
        hba = server.dir / "data" / "pg_hba.conf"
        # This role may connect over TLS only.
        hba.write_text("hostnossl all cli_tls 127.0.0.1/32 reject\n"
                       "hostssl all cli_cert 127.0.0.1/32 cert\n" + hba.read_text())
        with server.connect() as admin:
            admin.execute("CREATE ROLE cli_tls LOGIN IN ROLE migrate_admin")
            admin.execute("CREATE ROLE cli_cert LOGIN IN ROLE migrate_admin")
            admin.execute("SELECT pg_reload_conf()")
        with server.connect(db) as owner:
            owner.execute("GRANT CREATE ON SCHEMA public TO cli_tls")
        folder = tmp_path / "tls"
        write(folder, "V1__one.sql", "CREATE TABLE one (id int);\n")
        run = Run(cli_bin, server, db, folder)
        run("hash")
        # No ~/.postgresql here: a verify mode needs sslrootcert.
        env = {k: v for k, v in run.env(HOME=str(tmp_path)).items() if not k.startswith("PG")}
        env["NO_COLOR"] = "1"

        def status(url_host: str, query: str, **extra) -> subprocess.CompletedProcess:
            url = f"postgresql://cli_tls@{url_host}:{server.port}/{db}?{query}"
            return run("--url", url, "status", env={**env, **extra})

        ca, other = certs / "ca.crt", certs / "other.crt"
        assert status("localhost", f"sslmode=verify-full&sslrootcert={ca}").returncode == 0
        assert status("127.0.0.1", f"sslmode=verify-ca&sslrootcert={ca}").returncode == 0
        assert status("127.0.0.1", "sslmode=require").returncode == 0
        assert status("127.0.0.1", "").returncode == 0  # prefer, libpq's default
        # The name connected to is not the certificate's.
        r = status("127.0.0.1", f"sslmode=verify-full&sslrootcert={ca}")
        assert r.returncode == 1 and "certificate verify failed" in r.stderr, r
        # Signed by an authority the client was not told to trust.
        r = status("localhost", f"sslmode=verify-full&sslrootcert={other}")
        assert r.returncode == 1 and "certificate verify failed" in r.stderr, r
        r = status("localhost", "sslmode=verify-full")
        assert r.returncode == 1 and "root certificate file" in r.stderr, r
        # In the clear, the server's rule refuses the role.
        r = status("127.0.0.1", "sslmode=disable")
        assert r.returncode == 1 and "no encryption" in r.stderr, r
        r = status("127.0.0.1", "sslmode=verify")
        assert r.returncode == 1 and "invalid sslmode" in r.stderr, r
        # The same from the environment, as libpq reads it.
        r = run("status", env={**env, "PGHOST": "localhost", "PGPORT": str(server.port), "PGUSER": "cli_tls",
                               "PGDATABASE": db, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca)})
        assert r.returncode == 0, r
        # Only the authorities asked for are trusted: a certificate the system's store would
        # accept (SSL_CERT_FILE stands in for a public authority) does not pass verify-ca
        # with another root file.
        r = status("127.0.0.1", f"sslmode=verify-ca&sslrootcert={other}", SSL_CERT_FILE=str(ca))
        assert r.returncode == 1 and "certificate verify failed" in r.stderr, r
        # The system's store needs the host name checked (libpq 16).
        r = status("localhost", "sslmode=require&sslrootcert=system")
        assert r.returncode == 1 and "weak sslmode" in r.stderr, r
        r = status("localhost", "sslrootcert=system", SSL_CERT_FILE=str(ca))
        assert r.returncode == 0, r
        # require checks the chain when ~/.postgresql/root.crt is there, as libpq does.
        (tmp_path / ".postgresql").mkdir()
        (tmp_path / ".postgresql" / "root.crt").write_bytes(other.read_bytes())
        r = status("localhost", "sslmode=require")
        assert r.returncode == 1 and "certificate verify failed" in r.stderr, r
        (tmp_path / ".postgresql" / "root.crt").unlink()
        # An encoded key is still the key; a '?' in a password is the password's.
        r = status("127.0.0.1", "%73slmode=disable")
        assert r.returncode == 1 and "no encryption" in r.stderr, r
        r = run("--url", f"postgresql://cli_tls:pa?ss@127.0.0.1:{server.port}/{db}?sslmode=disable", "status",
                env=env)
        assert r.returncode == 1 and "no encryption" in r.stderr, r
        # Ctrl-C over TLS cancels too: the cancel request goes the way the session went.
        write(folder, "V2__slow.sql", "CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n")
        run("hash")
        url = f"postgresql://cli_tls@localhost:{server.port}/{db}?sslmode=verify-full&sslrootcert={ca}"
        p = subprocess.Popen([str(run.bin), "--dir", str(folder), "--url", url, "apply"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        with server.connect(db) as c:
            wait_until(lambda: c.execute("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                                         "WHERE a.query LIKE '%migrate.apply%' AND a.wait_event = 'PgSleep' AND s.ssl "
                                         "AND a.pid <> pg_backend_pid()").fetchone()[0] == 1 or p.poll() is not None,
                       timeout=30)
            assert p.poll() is None, p.communicate()
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
            assert p.returncode == 130 and "was not applied" in err, (out, err)
            assert c.execute("SELECT to_regclass('slow')").fetchone() == (None,)
        # A client certificate: its key is judged by its owner, as libpq judges it.
        key = tmp_path / "client.key"
        key.write_bytes((certs / "client.key").read_bytes())
        cert_url = (f"postgresql://cli_cert@127.0.0.1:{server.port}/{db}?sslmode=require"
                    f"&sslcert={certs}/client.crt&sslkey={key}")
        key.chmod(0o600)
        r = run("--url", cert_url, "status", env=env)
        assert r.returncode == 0, r
        key.chmod(0o644)
        r = run("--url", cert_url, "status", env=env)
        assert r.returncode == 1 and "has group or world access" in r.stderr and "0640" in r.stderr, r
        key.chmod(0o640)  # root's key, shared with a group: allowed
        r = run("--url", cert_url, "status", env=env)
        assert r.returncode == 0, r
        subprocess.run(["chown", "postgres", str(key)], check=True)  # anyone else's: its owner's only
        r = run("--url", cert_url, "status", env=env)
        assert r.returncode == 1 and "has group or world access" in r.stderr, r
        key.chmod(0o600)
        r = run("--url", cert_url.replace(str(key), str(tmp_path / "no.key")), "status", env=env)
        assert r.returncode == 1 and "certificate present, but not private key file" in r.stderr, r
        # Without a certificate the server's rule refuses the role.
        r = run("--url", f"postgresql://cli_cert@127.0.0.1:{server.port}/{db}?sslmode=require", "status", env=env)
        assert r.returncode == 1 and "certificate" in r.stderr, r
        # And from a service: its first sslmode counts, as libpq reads it.
        (tmp_path / "services.conf").write_text(
            f"[tls]\nhost=localhost\nport={server.port}\nuser=cli_tls\ndbname={db}\nsslmode=verify-full\n"
            f"sslrootcert={other}\nsslmode=disable\n")
        r = run("status", env={**env, "PGSERVICE": "tls", "PGSERVICEFILE": str(tmp_path / "services.conf")})
        assert r.returncode == 1 and "certificate verify failed" in r.stderr, r
    finally:
        server.stop()
        shutil.rmtree(certs, ignore_errors=True)


def test_several_hosts_with_read_write_find_the_primary_past_a_standby(cli_bin, tmp_path):
    from harness import Cluster
    primary = Cluster("/tmp/pg_migrate_e2e_cli_primary").start()
    standby = Cluster("/tmp/pg_migrate_e2e_cli_standby")
    try:
        db = primary.create_database("cli_hosts")
        standby.start_standby_of(primary, "cluster_name=cli_standby")
        folder = tmp_path / "hosts"
        write(folder, "V1__one.sql", "CREATE TABLE one (id int);\n")
        write(folder, "V2__two.sql", "CREATE TABLE two (id int);\n")
        run = Run(cli_bin, primary, db, folder)
        run("hash")
        hosts = {"PGHOST": f"{standby.sock},{primary.sock}", "PGPORT": f"{standby.port},{primary.port}"}
        # The standby first: it answers, and cannot take the migration.
        r = run("apply", env=run.env(**hosts))
        assert r.returncode == 1 and "on a standby" in r.stderr, r
        # A connection string that names both hosts takes PGTARGETSESSIONATTRS, as libpq does.
        url = f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/{db}"
        r = run("apply", "--to", "1", env=run.env(DATABASE_URL=url, PGTARGETSESSIONATTRS="read-write"))
        assert r.returncode == 0 and "applied 1 one" in r.stdout, r
        r = run("apply", env=run.env(**hosts, PGTARGETSESSIONATTRS="read-write"))
        assert r.returncode == 0 and "applied 2 two" in r.stdout, r
        # --wait-replicas: with nothing to apply, waits for the version committed last.
        r = run("apply", "--wait-replicas=30")
        assert r.returncode == 0 and "replayed on cli_standby" in r.stdout, r
        with standby.connect(db) as s:
            assert s.execute("SELECT count(*) FROM migrate.history").fetchone() == (2,)
            assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            s.execute("SELECT pg_wal_replay_pause()")
            try:
                write(folder, "V3__three.sql", "CREATE TABLE three (id int);\n")
                run("hash")
                r = run("apply", "--wait-replicas", "1")
                assert r.returncode == 7 and "applied 3 three" in r.stdout, r
                assert "version 3 is not replayed after 00:00:01: cli_standby" in r.stderr, r
                r = run("apply", "--wait-replicas=1", "--replica", "cli_standby", "--format", "json")
                assert r.returncode == 7 and json.loads(r.stdout)["notes"][0]["sqlstate"] == "57014", r
            finally:
                s.execute("SELECT pg_wal_replay_resume()")
        r = run("apply", "--wait-replicas=30", "--replica", "cli_standby")
        assert r.returncode == 0 and "replayed on cli_standby" in r.stdout, r
        r = run("apply", "--replica", "cli_standby")
        assert r.returncode == 2 and "--wait-replicas" in r.stderr, r
        # On the standby, status says what it shows; fingerprint and verify say it too.
        on_standby = run.env(PGHOST=str(standby.sock), PGPORT=str(standby.port))
        r = run("status", env=on_standby)
        assert r.returncode == 0 and "this server is a standby: the history as replayed up to" in r.stdout, r
        r = run("verify", "1", env=on_standby)
        assert "notice: pg_migrate: the verification of version 1 was not recorded" in r.stderr, r
        assert "notice: pg_migrate: this server is a standby" in r.stderr, r
    finally:
        standby.stop()
        primary.stop()


def test_the_readme_pull_request_check_judges_new_files_against_production_s_schema(run, conn, cluster, db,
                                                                                    tmp_path):
    """cli/ci/check-pull-request.sh, which the README's CI recipe runs: production's schema and
    history dumped with pg_dump, restored into a scratch database, the new files judged there."""
    run("hash")
    assert run("apply", "--to", "1.1").returncode == 0
    dumps = tmp_path / "db"
    dumps.mkdir()
    dump = [str(PG_BIN / "pg_dump"), "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres", db]
    (dumps / "schema.sql").write_text(subprocess.run([*dump, "--schema-only"], check=True, capture_output=True,
                                                     text=True).stdout)
    (dumps / "history.sql").write_text(subprocess.run([*dump, "--data-only", "--table=migrate.history"],
                                                      check=True, capture_output=True, text=True).stdout)
    write(run.folder, "V3__rename.sql", "-- not allowed\nALTER TABLE orders RENAME COLUMN total TO amount;\n")
    run("hash")
    env = run.env(PATH=f"{run.bin.parent}:{PG_BIN}:{os.environ['PATH']}", PG_MIGRATE_DIR=str(run.folder),
                  SCHEMA_DIR=str(dumps), SCRATCH_DB="cli_scratch")
    script = ROOT / "cli/ci/check-pull-request.sh"
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=120)
    # Versions 1 and 1.1 are production's (from its history); 2 and 3 are judged; 3 is refused
    # by lint and by plan, each at its line.
    assert r.returncode == 3, r
    assert "::error file=migrations/V3__rename.sql,line=2,title=rename-column::" in r.stdout, r.stdout
    assert "::error file=migrations/V3__rename.sql,line=2,title=plan::" in r.stdout, r.stdout
    assert r.stdout.count("::error") == 2, r.stdout
    write(run.folder, "V3__rename.sql", "ALTER TABLE orders ADD COLUMN amount int;\n")
    run("hash")
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "::error" not in r.stdout, r
    # A file production ran, edited since: its annotation is seen, and the check fails.
    write(run.folder, "V1__create_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY, total bigint);\n")
    run("hash")
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 4 and "::error file=migrations/V1__create_orders.sql,title=checksum::" in r.stdout, r
    # Production was only read; the scratch database is gone.
    assert status(run)["3"] == "pending" and status(run)["2"] == "pending"
    assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'cli_scratch'").fetchone() == (0,)


def test_connection_settings_that_cannot_both_hold_are_refused(run, cluster, db):
    run("hash")
    url = f"postgresql://postgres@/{db}?host={cluster.sock}&port={cluster.port}"
    r = run("--url", url, "--port", "1", "status")
    assert r.returncode == 2 and "not both" in r.stderr, r
    r = run("--url", url, "status", env=run.env(PGSERVICE="anything"))
    assert r.returncode == 2 and "PGSERVICE=anything" in r.stderr, r
    r = run("--url", f"service=anything dbname={db}", "status")
    assert r.returncode == 2 and "set PGSERVICE" in r.stderr, r
    # PGHOSTADDR: an address without a host name, with a connection string or without.
    tcp = run.env(PGHOST="", PGHOSTADDR="127.0.0.1")
    assert run("status", env=tcp).returncode == 0
    r = run("--url", f"postgresql://postgres@/{db}?port={cluster.port}", "status", env=tcp)
    assert r.returncode == 0, r
    # Without it, the default socket folder, where this cluster is not.
    r = run("--url", f"postgresql://postgres@/{db}?port={cluster.port}", "status", env=run.env(PGHOST=""))
    assert r.returncode == 1 and "/var/run/postgresql" in r.stderr, r
    # Over a Unix socket sslmode does not apply, as with libpq.
    r = run("status", env=run.env(PGSSLMODE="require"))
    assert r.returncode == 0, r
    # What the URL leaves out comes from PG* variables.
    env = run.env()
    r = run("--url", f"postgresql:///{db}?host={cluster.sock}&port={cluster.port}", "status", env=env)
    assert r.returncode == 0, r


def test_every_verb_works_through_pgbouncer_in_transaction_mode(run, cluster, db, conn):
    """Unnamed statements only and no session state: behind a transaction-mode pooler each
    transaction may reach another server session, and DISCARD ALL after each one (as
    server_reset_query_always does here) leaves no prepared statement or setting behind."""
    from harness import free_port
    home = Path(f"/tmp/pg_migrate_e2e_bouncer_{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    port = free_port()
    (home / "pgbouncer.ini").write_text(f"""[databases]
{db} = host={cluster.sock} port={cluster.port} dbname={db} user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = 3
server_reset_query = DISCARD ALL
server_reset_query_always = 1
logfile = {home}/pgbouncer.log
pidfile = {home}/pgbouncer.pid
""")
    subprocess.run(["chown", "-R", "postgres", str(home)], check=True)
    bouncer = subprocess.Popen(["runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", str(home / "pgbouncer.ini")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                          capture_output=True).returncode == 0, timeout=20, interval=0.2)
        env = run.env(PGHOST="127.0.0.1", PGPORT=str(port))
        assert run("hash").returncode == 0
        r = run("apply", env=env)
        assert r.returncode == 0 and "applied 2" in r.stdout, r
        # The worker's CONCURRENTLY phase was waited for: the index is there and valid.
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_total_idx'::regclass"
                            ).fetchone() == (True,)
        write(run.folder, "V3__more.sql", "ALTER TABLE orders ADD COLUMN more int;\n")
        assert run("hash").returncode == 0
        assert run("lint", env=env).returncode == 0
        # The pooler's server sessions stay connected: plan is told this is a scratch database.
        r = run("--format", "json", "plan", "--scratch", env=env)
        assert r.returncode == 0 and [p["command"] for p in json.loads(r.stdout)["plan"]] == ["ALTER TABLE"], r
        r = run("apply", env=env)
        assert r.returncode == 0 and "applied 3" in r.stdout, r
        assert run("status", "--check", env=env).returncode == 0
        assert run("verify", env=env).returncode == 0
        assert run("drift", env=env).returncode == 0
        assert run("fingerprint", env=env).returncode == 0
        assert conn.execute("SELECT count(*) FROM migrate.history").fetchone() == (4,)
    finally:
        bouncer.terminate()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int((home / "pgbouncer.pid").read_text()), signal.SIGTERM)
        try:
            bouncer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bouncer.kill()
        shutil.rmtree(home, ignore_errors=True)
