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
