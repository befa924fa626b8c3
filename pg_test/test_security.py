"""Who may apply, who may read, and that nobody gains rights through pg_migrate."""

import psycopg
import pytest

from harness import failure


@pytest.fixture
def app_role(cluster, db, conn):
    conn.execute("CREATE ROLE app LOGIN")
    conn.execute("GRANT CREATE ON SCHEMA public TO app")
    yield "app"
    conn.execute("SET migrate.guard = off")  # test cleanup, not a migration
    conn.execute("DROP OWNED BY app CASCADE")
    conn.execute("DROP ROLE app")


def test_non_admin_cannot_apply_baseline_or_write_history(cluster, db, conn, app_role):
    with cluster.connect(db, user=app_role) as app:
        f = failure(app, "SELECT migrate.apply('1', 'CREATE TABLE t (id int)')")
        assert (f.sqlstate, f.message) == ("42501", 'pg_migrate: role "app" may not apply migrations')
        assert "migrate_admin" in f.detail and "GRANT migrate_admin TO" in f.hint
        assert failure(app, "SELECT migrate.baseline('1')").sqlstate == "42501"
        for write in [
            "INSERT INTO migrate.history (version, status, applied_by, applied_role, started_at, finished_at, extension_version)"
            " VALUES ('1', 'baseline', 'x', 'x', now(), now(), 'x')",
            "UPDATE migrate.history SET description = 'x'",
            "DELETE FROM migrate.ddl_log",
        ]:
            assert failure(app, write).sqlstate == "42501"
        # Reading the history is public; the DDL log is for admins.
        assert app.execute("SELECT count(*) FROM migrate.status").fetchone()[0] == 0
        assert failure(app, "SELECT * FROM migrate.ddl_log").sqlstate == "42501"
        # Its own DDL is still logged, under its name, by the owner-run trigger.
        app.execute("CREATE TABLE app_table (id int)")
    row = conn.execute("SELECT current_user_name FROM migrate.ddl_log WHERE object_identity = 'public.app_table'").fetchone()
    assert row == ("app",)
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0


def test_admin_scripts_run_with_the_admins_rights_not_the_owners(cluster, db, conn, app_role):
    conn.execute("GRANT migrate_admin TO app")
    conn.execute("CREATE SCHEMA locked")
    with cluster.connect(db, user=app_role) as app:
        f = failure(app, "SELECT migrate.apply('1', 'CREATE TABLE locked.t (id int)')")
        assert f.sqlstate == "42501" and "permission denied for schema locked" in f.message
        assert app.execute("SELECT status FROM migrate.apply('1', 'CREATE TABLE public.mine (id int)')").fetchone()[0] == "applied"
        assert app.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'mine'").fetchone()[0] == "app"
    assert conn.execute("SELECT applied_by, applied_role FROM migrate.history").fetchone() == ("app", "app")


EVIL = """
CREATE SCHEMA evil;
CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE app SUPERUSER';
    RETURN 'pwned';
END $$;
"""


def test_callers_search_path_cannot_hijack_the_owner_side_writes(cluster, db, conn, app_role):
    conn.execute("GRANT migrate_admin TO app")
    conn.execute("GRANT CREATE ON DATABASE " + db + " TO app")
    with cluster.connect(db, user=app_role) as app:
        app.execute(EVIL)
        app.execute("SET search_path = evil, pg_catalog, public")
        app.execute("SET application_name = 'honest'")
        app.execute("SELECT migrate.apply('1', 'CREATE TABLE public.t1 (id int)')")
        app.execute("CREATE TABLE public.t2 (id int)")
    assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'").fetchone()[0] is False
    assert conn.execute("SELECT application_name FROM migrate.history").fetchone()[0] == "honest"
    assert conn.execute(
        "SELECT DISTINCT application_name FROM migrate.ddl_log WHERE object_identity LIKE 'public.t%'").fetchall() == [("honest",)]
    conn.execute("REVOKE CREATE ON DATABASE " + db + " FROM app")


HOSTILE_OPERATOR = """
CREATE FUNCTION public.escalate(numeric[], numeric[]) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER ROLE app SUPERUSER';
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR public.= (LEFTARG = numeric[], RIGHTARG = numeric[], FUNCTION = public.escalate);
"""


def test_a_hostile_operator_on_the_callers_path_is_never_used(cluster, db, conn, app_role):
    # An exact-type operator in public would beat pg_catalog's polymorphic = for numeric[]
    # if pg_migrate's own queries resolved names through the caller's search_path.
    with cluster.connect(db, user=app_role) as app:
        app.execute(HOSTILE_OPERATOR)
    conn.execute("SELECT migrate.apply('1', 'SELECT 1')")
    conn.execute("SELECT migrate.apply('2', 'SELECT 2')")
    conn.execute("SELECT migrate.validate('2', 'SELECT 2')")
    conn.execute("SELECT migrate.apply('2', 'SELECT 2')")
    assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'").fetchone()[0] is False


def test_scripts_are_readable_by_admins_only(cluster, db, conn, app_role):
    conn.execute("SELECT migrate.apply('1', 'SELECT 1', rollback => 'SELECT 0')")
    with cluster.connect(db, user=app_role) as app:
        assert app.execute("SELECT version, checksum, applied_by FROM migrate.history").fetchone()[0] == "1"
        assert failure(app, "SELECT script FROM migrate.history").sqlstate == "42501"
        assert failure(app, "SELECT rollback_script FROM migrate.history").sqlstate == "42501"
    conn.execute("GRANT migrate_admin TO app")
    with cluster.connect(db, user=app_role) as app:
        assert app.execute("SELECT script FROM migrate.history").fetchone()[0] == "SELECT 1"
