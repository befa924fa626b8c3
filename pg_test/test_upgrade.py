"""Upgrading an installed pg_migrate the way a DBA does: the previous release's library and
objects, filled with history by that library (applied, phased, failed and backfill rows); then
the package upgrade (the new library, a restart); then ALTER EXTENSION pg_migrate UPDATE.

The previous release is built once by pg_test/previous_release.sh into ~/.pgrx. The test swaps the
system's pg_migrate.so for it by rename (running servers keep the library they mapped), and
puts the current one back whatever happens."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import PG_BIN, PG_MAJOR, Cluster, failure
from test_worker import status, wait_for

HERE = Path(__file__).resolve().parent
OLD_VERSION = "0.1.0"
NEW_VERSION = re.search(r'^version = "([^"]+)"', (HERE.parent / "Cargo.toml").read_text(), re.M).group(1)
OLD_PACKAGE = Path.home() / ".pgrx" / f"pg_migrate-{OLD_VERSION}" / "pg15"


def pg_config(flag: str) -> Path:
    return Path(subprocess.run([str(PG_BIN / "pg_config"), flag], check=True, capture_output=True,
                               text=True).stdout.strip())


# The previous release supported PostgreSQL 15 only (it does not compile against 18): there is
# no installation of it to upgrade on another version.
pytestmark = pytest.mark.skipif(PG_MAJOR != 15, reason=f"pg_migrate {OLD_VERSION} ran on PostgreSQL 15 only")


@pytest.fixture
def package_upgrade():
    """Installs the previous release's library and install script; yields the upgrade: the
    current library back in place (the caller restarts the server)."""
    lib = pg_config("--pkglibdir") / "pg_migrate.so"
    ext = pg_config("--sharedir") / "extension"
    old_lib = OLD_PACKAGE / lib.relative_to("/")
    old_script = OLD_PACKAGE / ext.relative_to("/") / f"pg_migrate--{OLD_VERSION}.sql"
    assert old_lib.exists() and old_script.exists(), "pg_test/previous_release.sh builds the previous release"
    current = lib.with_name("pg_migrate.so.current")
    if current.exists():
        # A run killed half-way left the previous release in place: the saved one is current.
        os.replace(current, lib)
    shutil.copy2(lib, current)
    assert current.read_bytes() != old_lib.read_bytes(), "the installed library is the previous release"

    def put(library: Path) -> None:
        swap = lib.with_name("pg_migrate.so.swap")
        shutil.copy2(library, swap)
        os.replace(swap, lib)

    shutil.copy2(old_script, ext / old_script.name)
    put(old_lib)
    try:
        yield lambda: put(current)
    finally:
        put(current)
        current.unlink()
        (ext / old_script.name).unlink()


# Every object of the extension, by name, with what defines it: functions (whole definition
# and privileges), relations (kind, view definition, privileges), columns (type, nullability,
# default, privileges), indexes, constraints, triggers, event triggers, comments, the initial
# privileges pg_dump compares grants with (pg_init_privs), and which tables pg_dump keeps. Columns are compared by name: an upgrade appends them.
OBJECTS = """
SELECT 'function', p.oid::regprocedure::text,
       pg_get_functiondef(p.oid) || coalesce(array_to_string(p.proacl, ','), '') || ' ' || p.proowner::regrole::text
FROM pg_proc p WHERE p.pronamespace = 'migrate'::regnamespace
UNION ALL
SELECT 'relation ' || c.relkind::text, c.oid::regclass::text,
       coalesce(pg_get_viewdef(c.oid), '') || coalesce(array_to_string(c.relacl, ','), '') || ' '
       || c.relowner::regrole::text || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
FROM pg_class c WHERE c.relnamespace = 'migrate'::regnamespace AND c.relkind <> 'i'
UNION ALL
SELECT 'column', a.attrelid::regclass::text || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text || ' ' || a.attgenerated::text || ' '
       || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || coalesce(array_to_string(a.attacl, ','), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = 'migrate'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'migrate'::regnamespace
UNION ALL
SELECT 'constraint', co.conname || ' on ' || co.conrelid::regclass::text, pg_get_constraintdef(co.oid)
FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid WHERE c.relnamespace = 'migrate'::regnamespace
UNION ALL
SELECT 'trigger', t.tgname || ' on ' || t.tgrelid::regclass::text, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'migrate'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'event trigger', e.evtname, e.evtevent || ' ' || e.evtfoid::regproc::text || ' ' || e.evtenabled::text
FROM pg_event_trigger e
UNION ALL
SELECT 'comment', d.classoid::regclass::text || ' ' || d.objoid || ' ' || d.objsubid, d.description
FROM pg_description d JOIN pg_depend x ON x.classid = d.classoid AND x.objid = d.objoid
WHERE x.refclassid = 'pg_extension'::regclass AND x.deptype = 'e'
  AND x.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_migrate')
UNION ALL
SELECT 'initial privileges', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
       array_to_string(ip.initprivs, ',') || ' ' || ip.privtype::text
FROM pg_init_privs ip JOIN pg_depend x ON x.classid = ip.classoid AND x.objid = ip.objoid
WHERE x.objsubid = 0 AND x.refclassid = 'pg_extension'::regclass AND x.deptype = 'e'
  AND x.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_migrate')
UNION ALL
SELECT 'dumped', c.relname, coalesce(x.cond, '')
FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(rel, cond)
JOIN pg_class c ON c.oid = x.rel WHERE e.extname = 'pg_migrate'
ORDER BY 1, 2
"""


@pytest.fixture
def cluster():
    c = Cluster("/tmp/pg_migrate_upgrade").start("fsync=off", "synchronous_commit=off")
    yield c
    c.stop()


def old_installation(cluster, name):
    """A database with the previous release installed (its library must be the loaded one)."""
    db = cluster.create_database(name, extension=False)
    with cluster.connect(db) as c:
        c.execute(f"CREATE EXTENSION pg_migrate VERSION '{OLD_VERSION}'")
    return db


def objects(cluster, db):
    with cluster.connect(db) as c:
        rows = c.execute(OBJECTS).fetchall()
    # A comment's object id differs between databases; its object's name is in the others.
    return sorted((k, re.sub(r" \d+ ", " ", i) if k == "comment" else i, d) for k, i, d in rows)


def test_an_upgraded_installation_keeps_its_history_and_matches_a_fresh_one(package_upgrade, cluster):
    db = old_installation(cluster, "upgraded")
    with cluster.connect(db) as c:
        # Applied in the caller's transaction, with verify queries.
        c.execute("SELECT migrate.apply('1', 'CREATE TABLE orders (id bigint PRIMARY KEY, total int)', "
                  "verify => 'SELECT id FROM orders WHERE total IS NULL')")
        c.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
        # Phased: an index built by the worker.
        c.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY orders_total ON orders (total)')")
        wait_for(cluster, db, "2")
        # A backfill.
        c.execute("SELECT migrate.apply('3', $$ALTER TABLE orders ADD COLUMN doubled int;\n"
                  "SELECT migrate.backfill('orders', 'doubled = total * 2')$$)")
        wait_for(cluster, db, "3")
        # A failure: the index expression divides by zero on one row.
        c.execute("SELECT migrate.apply('4', "
                  "'CREATE INDEX CONCURRENTLY orders_ratio ON orders ((1000 / (total - 500)))')")
        wait_for(cluster, db, "4", want=("failed",))
        # A grant of the DBA's own on tables that become views of the same name.
        c.execute("DROP ROLE IF EXISTS intern")
        c.execute("DROP ROLE IF EXISTS monitor")
        c.execute("CREATE ROLE monitor")
        c.execute("CREATE ROLE intern")
        # One passed on, too: revoking monitor's needs CASCADE.
        c.execute("GRANT SELECT ON migrate.steps TO monitor WITH GRANT OPTION")
        c.execute("SET ROLE monitor")
        c.execute("GRANT SELECT ON migrate.steps TO intern")
        c.execute("RESET ROLE")
        c.execute("GRANT SELECT (id, error_message) ON migrate.backfills TO monitor")
        old_log = c.execute("SELECT count(*) FROM migrate.ddl_log").fetchone()[0]
        old_fingerprint = c.execute("SELECT fingerprint FROM migrate.history WHERE version = '3'").fetchone()[0]
    assert old_log > 0

    # The package upgrade: the new library, loaded at the restart.
    package_upgrade()
    cluster.restart()
    with cluster.connect(db) as c:
        f = failure(c, "SELECT migrate.apply('5', 'CREATE TABLE t5 (id int)')")
        assert f.sqlstate == "55000", f
        assert f"library is version {NEW_VERSION}" in f.message
        assert f"objects of version {OLD_VERSION}" in f.message
        assert f.hint == "Run ALTER EXTENSION pg_migrate UPDATE; in this database (as a superuser)."
        # The guard still guards meanwhile.
        f = failure(c, "DROP TABLE orders")
        assert "drop-table" in f.message

        notices = []
        c.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_hint)))
        c.execute("ALTER EXTENSION pg_migrate UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_migrate'").fetchone()[0] \
            == NEW_VERSION
        # The grants are revoked, and said, with how to give them back on the views.
        assert sorted(notices) == [
            ("pg_migrate: the privileges of role intern on migrate.steps were revoked",
             "GRANT SELECT ON migrate.steps TO intern; gives it back, error texts shown as their "
             "submitter's privileges allow."),
            ("pg_migrate: the privileges of role monitor on migrate.backfills were revoked",
             "GRANT SELECT ON migrate.backfills TO monitor; gives it back, error texts shown as their "
             "submitter's privileges allow."),
            ("pg_migrate: the privileges of role monitor on migrate.steps were revoked",
             "GRANT SELECT ON migrate.steps TO monitor; gives it back, error texts shown as their "
             "submitter's privileges allow."),
        ], notices
        assert c.execute(
            "SELECT count(*) FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid, "
            "LATERAL (SELECT (aclexplode(c.relacl)).grantee UNION ALL SELECT (aclexplode(a.attacl)).grantee) g "
            "WHERE c.relnamespace = 'migrate'::regnamespace AND g.grantee IN ('monitor'::regrole, 'intern'::regrole)"
        ).fetchone()[0] == 0
        # The update is no drift: pg_migrate does not describe itself.
        assert c.execute("SELECT kind, object, change FROM migrate.drift()").fetchall() == []
        # Every row is still there.
        assert dict(c.execute("SELECT version, status FROM migrate.history").fetchall()) == {
            "1": "applied", "2": "applied", "3": "applied", "4": "failed"}
        assert c.execute("SELECT state FROM migrate.backfills").fetchall() == [("done",)]
        assert c.execute("SELECT count(*) FROM migrate.ddl_log").fetchone()[0] >= old_log
        assert c.execute("SELECT count(*) FROM migrate.steps WHERE version = '4' AND state = 'failed'") \
            .fetchone()[0] == 1
        # And usable: an old migration verifies, the failed one retries once its cause is
        # gone, and new ones apply, recorded against the recorded schema of before.
        checks = c.execute("SELECT kind, ok FROM migrate.verify('1')").fetchall()
        assert checks and all(ok for _, ok in checks), checks
        c.execute("DELETE FROM orders WHERE total = 500")
        c.execute("SELECT migrate.retry('4')")
        wait_for(cluster, db, "4")
        c.execute("SELECT migrate.apply('5', 'CREATE TABLE t5 (id int)')")
        assert status(c, "5") == "applied"
        assert c.execute("SELECT changes FROM migrate.history WHERE version = '5'").fetchone()[0] == [
            {"kind": "tables", "object": "public.t5", "change": "added", "relation": "public.t5",
             "new": c.execute("SELECT description FROM migrate.schema_objects "
                              "WHERE identity = 'public.t5'").fetchone()[0]}]
        assert c.execute("SELECT migrate.fingerprint()").fetchone()[0] == \
            c.execute("SELECT fingerprint FROM migrate.history WHERE version = '5'").fetchone()[0]
        assert old_fingerprint is not None

    fresh = cluster.create_database("fresh")
    upgraded, installed = objects(cluster, db), objects(cluster, fresh)
    assert upgraded == installed, (
        [o for o in upgraded if o not in installed], [o for o in installed if o not in upgraded])


def test_the_worker_waits_for_the_update_and_then_runs_what_was_submitted(package_upgrade, cluster):
    db = old_installation(cluster, "stale")
    with cluster.connect(db) as c:
        c.execute("SELECT migrate.apply('1', 'CREATE TABLE orders (id bigint PRIMARY KEY, total int)')")
        # Submitted while no worker may run: it waits, pending, through the upgrade.
        c.execute("ALTER SYSTEM SET migrate.max_workers = 0")
        c.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        c.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY orders_total ON orders (total)')")
        assert status(c, "2") == "pending"
        c.execute("ALTER SYSTEM RESET migrate.max_workers")
    package_upgrade()
    mark = cluster.log_mark()
    cluster.restart()
    time.sleep(8)
    with cluster.connect(db) as c:
        assert status(c, "2") == "pending"
        # Since the server came back: said once, and no crash, no exit: the worker waits.
        log = cluster.log_since(mark).split("database system is ready to accept connections")[-1]
        assert log.count("waiting for ALTER EXTENSION pg_migrate UPDATE") == 1, log
        assert "terminated by signal" not in log and "exited with exit code" not in log, log
        c.execute("ALTER EXTENSION pg_migrate UPDATE")
    wait_for(cluster, db, "2", timeout=30)
