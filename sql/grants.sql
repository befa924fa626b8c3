-- pg_migrate: privileges, once every object exists.

-- Tables: read by everyone (history) or by admins (DDL log); written only by their owner,
-- which pg_migrate's functions switch to for the write.
REVOKE ALL ON ALL TABLES IN SCHEMA migrate FROM PUBLIC;
GRANT USAGE ON SCHEMA migrate TO PUBLIC;
-- Scripts may carry secrets (a CREATE ROLE ... PASSWORD, a user mapping): everyone reads the
-- history except the script columns, which only admins read.
GRANT SELECT (version, version_key, description, status, checksum, checksum_raw,
              checksum_algorithm, rollback_checksum, statements, applied_by, applied_role,
              application_name, client_addr, xid, started_at, finished_at, duration, lock_wait,
              retries, extension_version, allowed_rules, phases, settings,
              cancel_requested, fingerprint, changes, verification,
              verified_at, commit_xid, commit_lsn)
    ON migrate.history TO PUBLIC;
GRANT SELECT ON migrate.history TO migrate_admin;
-- So may error texts, and the report of migrate.verify (a failing query's first row).
-- Error texts too may quote data (a duplicate key's value): admins only, and among them only
-- those with the privileges of the role the work ran as (migrate.quoted_data).
GRANT SELECT (version, phase, kind, first_statement, last_statement, first_line, state,
              attempts, started_at, finished_at, duration, worker_pid, target_table,
              indexes_before, built_index, error_sqlstate, commit_lsn)
    ON migrate.steps TO PUBLIC;
GRANT SELECT ON migrate.steps TO migrate_admin;
GRANT SELECT ON migrate.status, migrate.rules TO PUBLIC;
-- The recorded schema is what migrate.describe() shows anyone of the live one.
GRANT SELECT ON migrate.schema_objects, migrate.schema_state TO PUBLIC;
GRANT SELECT ON migrate.ddl_log TO migrate_admin;
-- Backfill jobs quote their clauses and errors (which may quote data): admins only.
GRANT SELECT ON migrate.backfills, migrate.backfill_progress TO migrate_admin;
-- A window's source DDL and end statements: admins; its state: everyone, as migrate.status.
GRANT SELECT ON migrate.window_history TO migrate_admin;
GRANT SELECT ON migrate.windows TO PUBLIC;
-- Counts of errors by kind, as pg_stat_database's are everyone's.
GRANT SELECT ON migrate.error_counts TO PUBLIC;
-- Watches: latencies and counts, no rows; admins, who decide on them.
GRANT SELECT ON migrate.watch_records, migrate.watch_samples, migrate.watch_looks,
                migrate.watch_status TO migrate_admin;

-- Functions: nothing is executable by PUBLIC unless listed here.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA migrate FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    migrate.version_key(text),
    migrate.current_version(),
    migrate.validate(text, text),
    migrate.rule_catalog(),
    migrate.lint(text, text[]),
    migrate.describe(text[]),
    migrate.fingerprint(text[]),
    migrate.fingerprint_of(jsonb),
    migrate.recorded_schema(),
    -- What those four are made of.
    migrate.describe_objects(text[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], oid[], boolean),
    migrate.all_objects(text[], boolean),
    migrate.object_hash(text, text, jsonb),
    migrate.description_of(text[], text[], jsonb[]),
    migrate.hash_sum(bytea[]),
    migrate.describe_table_objects(text[], oid[], oid[], oid[], oid[], boolean),
    migrate.schema_is_described(pg_catalog.pg_namespace, text[], oid[]),
    migrate.described_relations(oid[], text[], oid[]),
    migrate.diff(jsonb, jsonb),
    migrate.changes(jsonb, jsonb),
    migrate.dry_run(text, text[], text),
    migrate.assert_safe(text, text[], text),
    -- Behind migrate.error_counts.
    migrate.error_counters(),
    -- Behind migrate.steps and migrate.backfills.
    migrate.may_read_as(name),
    migrate.note_if_standby(),
    migrate.quoted_data(text, name),
    migrate.quoted_data(text[], name)
TO PUBLIC;
-- Drift reads the DDL log, which only admins read.
GRANT EXECUTE ON FUNCTION migrate.drift() TO migrate_admin;
-- Builds the text migrate.verify runs as a constraint's table owner.
GRANT EXECUTE ON FUNCTION migrate.constraint_violations_query(oid) TO migrate_admin;
GRANT EXECUTE ON PROCEDURE migrate.wait(text, interval) TO PUBLIC;
-- Standbys' replay of migrations: positions need pg_read_all_stats, which replicas() checks.
-- Commit positions are history's, which everyone reads.
GRANT EXECUTE ON FUNCTION migrate.replicas(), migrate.commit_positions(), migrate.kept_commits()
TO PUBLIC;
GRANT EXECUTE ON PROCEDURE migrate.wait_replicas(text, interval, text[]) TO PUBLIC;
-- apply and baseline are callable by everyone on purpose: they refuse non-members of
-- migrate_admin themselves, with an error that says how to get the right, where PostgreSQL's
-- own "permission denied" would not.
GRANT EXECUTE ON FUNCTION
    migrate.apply(text, text, text, text, text[], text, interval, text),
    migrate.verify(text),
    migrate.baseline(text, text),
    migrate.record_schema(),
    migrate.retry(text),
    migrate.cancel(text),
    migrate.accept(text, text),
    migrate.reject(text, text),
    migrate.backfill(regclass, text, text, integer, integer, integer, interval, interval, text),
    migrate.pause(bigint),
    migrate.resume(bigint),
    migrate.cancel(bigint),
    migrate.expand(text, text, interval, text, boolean, text, jsonb, interval, text),
    migrate.contract(text),
    migrate.abort(text),
    -- Evaluated in the WHEN clause of every bridged write, whoever the writer.
    migrate.writes_version(text, text),
    migrate.extend(text, interval, text),
    -- Behind migrate.windows.
    migrate.window_writes(text),
    migrate.window_sessions(text)
TO PUBLIC;
-- Windows count their writes with it; creating the trigger needs EXECUTE.
GRANT EXECUTE ON FUNCTION migrate.count_window_write() TO migrate_admin;
-- A step of publish and contract, run as the window's opener.
GRANT EXECUTE ON FUNCTION migrate.mirror_window_privileges(text) TO migrate_admin;
-- The workload's recent samples: latencies and counts; admins, as the watches.
GRANT EXECUTE ON FUNCTION migrate.workload_samples() TO migrate_admin;
