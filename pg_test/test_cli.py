"""pg-migrate, the command-line client (issue 17), against a real cluster: a folder of files
applied from scratch and again, its integrity file, changed and garbage files, lint findings
as annotations, phased migrations, errors with the extension's DETAIL and HINT, and two
applies at once."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(os.environ.get("PG_MIGRATE_CLI", ROOT / "cli/target/debug/pg-migrate"))


@pytest.fixture(scope="module")
def cli_bin() -> Path:
    if not CLI.exists():
        subprocess.run(["cargo", "build", "--manifest-path", str(ROOT / "cli/Cargo.toml")], check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(ROOT / "cli/target")})
    return CLI


class Run:
    def __init__(self, cli_bin: Path, cluster, db: str, folder: Path):
        self.bin, self.cluster, self.db, self.folder = cli_bin, cluster, db, folder

    def env(self, **extra) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
        return {**base, "PGHOST": str(self.cluster.sock), "PGPORT": str(self.cluster.port), "PGUSER": "postgres",
                "PGDATABASE": self.db, "NO_COLOR": "1", **extra}

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
    assert line and line[0].startswith("::error file=V3__widen.sql,line=2,title="), r.stdout
    # Nothing ran.
    assert conn.execute("SELECT count(*) FROM migrate.history WHERE version = '3'").fetchone() == (0,)
    # Applying it is refused by the extension: its message, DETAIL and HINT, at the file.
    r = run("apply")
    assert r.returncode == 1 and "V3__widen.sql" in r.stderr, r
    assert "pg_migrate:" in r.stderr and "DETAIL:" in r.stderr and "HINT:" in r.stderr, r.stderr


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
    assert (r.returncode, "version 3 is failed" in r.stderr, "migrate.retry('3')" in r.stderr) == (1, True, True), r
    r = run("apply", "--to", "V3")
    assert r.returncode == 2 and "not a version" in r.stderr, r


def test_a_remote_host_in_the_clear_is_refused(run):
    run("hash")
    r = run("--host", "db.example.invalid", "status")
    assert r.returncode == 1 and "does not speak TLS yet" in r.stderr, r
    r = run("status", "--url", "postgresql://postgres@db.example.invalid/x")
    assert r.returncode == 1 and "does not speak TLS yet" in r.stderr, r


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
