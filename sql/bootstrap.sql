-- pg_migrate: objects that everything else needs.

-- Members of migrate_admin may apply and baseline migrations and read the DDL log.
-- Roles belong to the cluster, not to a database or an extension: the role is created by the
-- first database that installs pg_migrate and survives DROP EXTENSION.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'migrate_admin') THEN
        CREATE ROLE migrate_admin NOLOGIN;
    END IF;
END
$$;

-- pg_migrate writes its tables as their owner and trusts the schema they live in. A schema
-- "migrate" created beforehand by an ordinary role would let that role drop or replace them.
DO $$
DECLARE
    owner name;
BEGIN
    SELECT r.rolname INTO owner
    FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
    WHERE n.nspname = 'migrate' AND NOT r.rolsuper;
    IF owner IS NOT NULL THEN
        RAISE EXCEPTION 'pg_migrate: schema "migrate" is owned by role "%", which is not a superuser', owner
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pg_migrate keeps its history and DDL log in that schema; its owner could drop or replace them.',
                  HINT = 'Drop or rename that schema, or make a superuser its owner (ALTER SCHEMA migrate OWNER TO postgres), then install again.';
    END IF;
END
$$;
