"""Installing, preloading, dumping and removing the extension."""

import subprocess

from harness import PG_BIN, failure


def test_library_is_preloaded_and_settings_exist_without_the_extension(cluster):
    with cluster.connect("postgres") as c:
        assert c.execute("SHOW shared_preload_libraries").fetchone()[0] == "pg_migrate"
        # The settings come from _PG_init at preload, in a database without the extension.
        assert c.execute("SHOW migrate.lock_timeout").fetchone()[0] == "2s"
        assert c.execute("SHOW migrate.statement_timeout").fetchone()[0] == "10min"
        # The prefix is reserved: a misspelt setting is an error, not a silent placeholder.
        f = failure(c, "SET migrate.lock_timout = '1s'")
        assert f.sqlstate == "42602" and "reserved prefix" in f.detail


def test_event_triggers_are_enabled_and_survive_drop_and_recreate(cluster, conn):
    enabled = "SELECT string_agg(evtname || ':' || evtenabled::text, ' ' ORDER BY evtname) FROM pg_event_trigger"
    triggers = (
        "migrate_ddl_log:O migrate_ddl_log_drop:O migrate_guard:O migrate_guard_drop:O migrate_guard_rewrite:O "
        "migrate_window_privileges:O"
    )
    assert conn.execute(enabled).fetchone()[0] == triggers
    conn.execute("SELECT migrate.apply('1', 'CREATE TABLE kept (id int)')")
    conn.execute("DROP EXTENSION pg_migrate")
    assert conn.execute("SELECT count(*) FROM pg_event_trigger").fetchone()[0] == 0
    # The schema is not an extension member and stays; the role is cluster-wide and stays.
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'migrate'").fetchone()[0] == 1
    conn.execute("CREATE EXTENSION pg_migrate")
    assert conn.execute(enabled).fetchone()[0] == triggers
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0


def test_pg_dump_keeps_history_and_ddl_log(cluster, db, conn):
    conn.execute("SELECT migrate.apply('1', 'CREATE TABLE a (id int)', 'one')")
    conn.execute("SELECT migrate.apply('2', 'ALTER TABLE a ADD COLUMN b text', 'two')")
    dump = subprocess.run(
        [str(PG_BIN / "pg_dump"), "-h", str(cluster.sock), "-p", str(cluster.port), "-U", "postgres", db],
        check=True, capture_output=True, text=True,
    ).stdout
    restored = cluster.create_database(db + "_restored", extension=False)
    try:
        cluster.psql(restored, "-v", "ON_ERROR_STOP=1", "-q", input=dump)
        with cluster.connect(restored) as c:
            rows = c.execute("SELECT version, description, status FROM migrate.status").fetchall()
            assert rows == [("1", "one", "applied"), ("2", "two", "applied")]
            # The dumped log is back, beside what the restore itself logged.
            assert c.execute("SELECT count(*) FROM migrate.ddl_log WHERE migration_version IS NOT NULL").fetchone()[0] == 2
            # The restored database keeps working: a new version continues the history.
            assert c.execute("SELECT status FROM migrate.apply('3', 'SELECT 1')").fetchone()[0] == "applied"
            assert c.execute("SELECT migrate.current_version()").fetchone()[0] == "3"
    finally:
        cluster.drop_database(restored)


def test_a_schema_squatted_by_an_ordinary_role_is_refused(cluster, db, conn):
    conn.execute("DROP EXTENSION pg_migrate")
    conn.execute("DROP SCHEMA migrate")
    conn.execute("CREATE ROLE squatter LOGIN")
    conn.execute(f'GRANT CREATE ON DATABASE "{db}" TO squatter')
    try:
        with cluster.connect(db, user="squatter") as c:
            c.execute("CREATE SCHEMA migrate")
        f = failure(conn, "CREATE EXTENSION pg_migrate")
        assert f.sqlstate == "42501"
        assert f.message == 'pg_migrate: schema "migrate" is owned by role "squatter", which is not a superuser'
        assert f.detail and f.hint
        conn.execute("ALTER SCHEMA migrate OWNER TO postgres")
        conn.execute("CREATE EXTENSION pg_migrate")
        assert conn.execute("SELECT status FROM migrate.apply('1', 'SELECT 1')").fetchone()[0] == "applied"
    finally:
        conn.execute(f'REVOKE ALL ON DATABASE "{db}" FROM squatter')
        conn.execute("DROP ROLE squatter")
