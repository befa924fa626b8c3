-- pg_migrate: which standbys have replayed which migrations.
--
-- A standby has replayed a migration once its replay position (pg_stat_replication.replay_lsn)
-- has reached the end of the migration's commit record (migrate.history.commit_lsn). Physical
-- replication slots whose standby is not connected are listed too: the WAL they keep is what
-- that standby still has to receive.

-- Where each finished migration's commit ends in the WAL: the position written down, else
-- the one kept in shared memory since the commit (the worker writes it down at its next
-- turn), else, for a committed transaction, the WAL insert position now (later than its
-- commit, never earlier). Versions applied before pg_migrate recorded positions have none.
-- Read-only: who reads it cannot hold up the worker.
CREATE FUNCTION migrate.commit_positions()
RETURNS TABLE (version text, commit_lsn pg_lsn)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT h.version,
           coalesce(h.commit_lsn, k.lsn::pg_lsn,
                    CASE WHEN h.commit_xid IS DISTINCT FROM pg_current_xact_id_if_assigned()
                         THEN pg_current_wal_insert_lsn() END)
    FROM migrate.history h
    LEFT JOIN migrate.kept_commits() k ON k.xid::xid8 = h.commit_xid
    WHERE h.commit_xid IS NOT NULL AND h.status IN ('applied', 'baseline')
$$;

-- One row per standby streaming from this server (physical replication's walsenders, not base
-- backups), and per physical slot no standby uses now ('disconnected': its position is what
-- that standby had received and flushed when it left, restart_lsn; it may have replayed
-- less): how far it has replayed, how far behind it is, the last migration it has replayed
-- and those it has not, in commit order. A walsender that reports no replay position
-- (pg_receivewal, or a standby's first moments) is behind every migration.
CREATE FUNCTION migrate.replicas()
RETURNS TABLE (standby text, slot_name name, client_addr inet, state text, sync_state text,
               replay_lsn pg_lsn, replay_lag_bytes numeric, replay_lag interval,
               replayed_version text, behind text[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'pg_migrate: migrate.replicas() reads the primary''s standbys, and this server is a standby'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Standbys are listed by the server they stream from.',
                  HINT = 'Run it on the primary. Here, pg_last_wal_replay_lsn() says how far this standby has replayed, and SELECT * FROM migrate.status; what it shows.';
    END IF;
    -- Without it, pg_stat_replication shows no positions, and every standby would look behind.
    IF NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
        RAISE EXCEPTION 'pg_migrate: reading the standbys'' replay positions needs the privileges of pg_read_all_stats'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Role %I cannot read the positions in pg_stat_replication.', current_user),
                  HINT = format('GRANT pg_monitor TO %I; (or pg_read_all_stats).', current_user);
    END IF;
    RETURN QUERY
    WITH positions AS MATERIALIZED (
        SELECT p.version, p.commit_lsn FROM migrate.commit_positions() p WHERE p.commit_lsn IS NOT NULL
    ), standbys AS (
        SELECT r.application_name::text AS standby, sl.slot_name, r.client_addr, r.state::text AS state,
               r.sync_state::text AS sync_state, r.replay_lsn, r.replay_lag
          FROM pg_stat_replication r
          JOIN pg_stat_activity a ON a.pid = r.pid AND a.datid IS NULL
          LEFT JOIN pg_replication_slots sl ON sl.active_pid = r.pid
         WHERE r.state <> 'backup'
        UNION ALL
        SELECT sl.slot_name::text, sl.slot_name, NULL, 'disconnected', NULL, sl.restart_lsn, NULL
          FROM pg_replication_slots sl
         WHERE sl.slot_type = 'physical' AND NOT sl.active
    )
    SELECT s.standby, s.slot_name, s.client_addr, s.state, s.sync_state, s.replay_lsn,
           pg_wal_lsn_diff(pg_current_wal_lsn(), s.replay_lsn),
           s.replay_lag,
           (SELECT p.version FROM positions p
             WHERE p.commit_lsn <= s.replay_lsn
             ORDER BY p.commit_lsn DESC LIMIT 1),
           ARRAY(SELECT p.version FROM positions p
                  WHERE p.commit_lsn > s.replay_lsn OR s.replay_lsn IS NULL
                  ORDER BY p.commit_lsn)
      FROM standbys s
     ORDER BY s.state = 'disconnected', s.standby;
END
$$;

COMMENT ON FUNCTION migrate.replicas() IS
    'pg_migrate: per standby of this primary, how far it has replayed and which migrations it has not';

-- CALL migrate.wait_replicas('42', '1 min'): returns once every standby streaming from this
-- server (or each one named, by application_name or slot) has replayed version 42 (by
-- default the migration committed last); raises when one has not after `timeout`.
-- A procedure that commits between polls, like migrate.wait: a waiter holding one snapshot
-- would hold up the worker's CONCURRENTLY builds. (A procedure with a SET clause cannot
-- COMMIT, so every name here is schema-qualified instead of pinning search_path.)
CREATE PROCEDURE migrate.wait_replicas(version text DEFAULT NULL, timeout interval DEFAULT '1 min',
                                       standbys text[] DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    deadline pg_catalog.timestamptz;
    target pg_catalog.pg_lsn;
    wanted pg_catalog.text := wait_replicas.version;
    state pg_catalog.text;
    missing pg_catalog.text[];
    idle pg_catalog.text[];
    streaming pg_catalog.int8;
    pause pg_catalog.float8 := 0.001;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'pg_migrate: this server is a standby'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Standbys are waited for on the server they stream from.',
                  HINT = 'Run CALL migrate.wait_replicas(...) on the primary.';
    END IF;
    IF timeout IS NULL OR NOT pg_catalog.isfinite(timeout) THEN
        RAISE EXCEPTION 'pg_migrate: wait_replicas needs a finite timeout, not %', coalesce(timeout::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A wait that cannot end holds its session for ever.',
                  HINT = 'Give timeout => ''10 min'' (or any finite interval); call it again to keep waiting.';
    END IF;
    deadline := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) timeout;
    IF wanted IS NULL THEN
        SELECT p.version INTO wanted FROM migrate.commit_positions() p
         WHERE p.commit_lsn IS NOT NULL ORDER BY p.commit_lsn DESC LIMIT 1;
        IF wanted IS NULL THEN
            RAISE NOTICE 'pg_migrate: no migration has committed here yet: nothing to wait for';
            RETURN;
        END IF;
    END IF;
    SELECT h.status INTO state
      FROM migrate.history h WHERE h.version OPERATOR(pg_catalog.=) wanted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_migrate: version % is not recorded', wanted
            USING ERRCODE = 'undefined_object',
                  DETAIL = 'No migration with that version was applied or submitted.',
                  HINT = 'SELECT * FROM migrate.status; lists the recorded versions.';
    END IF;
    IF NOT state OPERATOR(pg_catalog.=) ANY (ARRAY['applied', 'baseline']::pg_catalog.text[]) THEN
        RAISE EXCEPTION 'pg_migrate: version % is %, not applied', wanted, state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Standbys replay a migration once it has committed on the primary.',
                  HINT = pg_catalog.format('CALL migrate.wait(%L); waits for it to be applied.', wanted);
    END IF;
    SELECT p.commit_lsn INTO target FROM migrate.commit_positions() p
     WHERE p.version OPERATOR(pg_catalog.=) wanted;
    IF target IS NULL THEN
        -- Applied before pg_migrate recorded commit positions: it committed before now.
        RAISE NOTICE 'pg_migrate: version % has no recorded commit position; waiting for the current one', wanted;
        target := pg_catalog.pg_current_wal_lsn();
    END IF;
    COMMIT;
    LOOP
        IF standbys IS NULL THEN
            -- Every walsender that reports a replay position; disconnected slots are named.
            SELECT pg_catalog.array_agg(r.standby ORDER BY r.standby) FILTER (
                       WHERE r.state OPERATOR(pg_catalog.<>) 'disconnected' AND r.replay_lsn IS NOT NULL
                         AND r.replay_lsn OPERATOR(pg_catalog.<) target),
                   pg_catalog.array_agg(r.standby ORDER BY r.standby) FILTER (
                       WHERE r.state OPERATOR(pg_catalog.=) 'disconnected'
                         AND r.replay_lsn OPERATOR(pg_catalog.<) target),
                   pg_catalog.count(*) FILTER (WHERE r.state OPERATOR(pg_catalog.<>) 'disconnected'
                                                 AND r.replay_lsn IS NOT NULL)
              INTO missing, idle, streaming
              FROM migrate.replicas() r;
            IF streaming OPERATOR(pg_catalog.=) 0 THEN
                RAISE NOTICE 'pg_migrate: no standby is streaming from this server';
            END IF;
        ELSE
            -- A name counts once a standby of that name (or slot) is connected and every one
            -- of that name has replayed it: the default name, walreceiver, may be many.
            WITH r AS MATERIALIZED (
                SELECT x.standby, x.slot_name::pg_catalog.text AS slot, x.replay_lsn
                  FROM migrate.replicas() x WHERE x.state OPERATOR(pg_catalog.<>) 'disconnected'
            )
            SELECT pg_catalog.array_agg(n.name ORDER BY n.name) INTO missing
              FROM pg_catalog.unnest(standbys) n(name)
             WHERE NOT EXISTS (SELECT FROM r WHERE n.name OPERATOR(pg_catalog.=) ANY (ARRAY[r.standby, r.slot]))
                OR EXISTS (SELECT FROM r WHERE n.name OPERATOR(pg_catalog.=) ANY (ARRAY[r.standby, r.slot])
                                         AND (r.replay_lsn IS NULL OR r.replay_lsn OPERATOR(pg_catalog.<) target));
        END IF;
        IF missing IS NULL THEN
            IF idle IS NOT NULL THEN
                RAISE WARNING 'pg_migrate: the standbys of slots % are disconnected and have not replayed version %',
                        pg_catalog.array_to_string(idle, ', '), wanted
                    USING DETAIL = 'Only the standbys streaming now were waited for.',
                          HINT = 'Name them in standbys => ARRAY[...] to wait for them too.';
            END IF;
            RETURN;
        END IF;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
            RAISE EXCEPTION 'pg_migrate: version % is not replayed after %: %', wanted, timeout,
                    pg_catalog.array_to_string(missing, ', ')
                USING ERRCODE = 'query_canceled',
                      DETAIL = pg_catalog.format('Its commit ends at WAL position %s; those standbys have not replayed that far, or are not connected.', target),
                      HINT = 'SELECT * FROM migrate.replicas(); shows how far each standby is. CALL migrate.wait_replicas again to keep waiting.';
        END IF;
        COMMIT;
        -- 1 ms, doubling up to 100 ms: a standby on the same network replays in milliseconds,
        -- and a long wait polls ten times a second.
        PERFORM pg_catalog.pg_sleep(pause);
        pause := LEAST(pause OPERATOR(pg_catalog.*) 2, 0.1);
    END LOOP;
END
$$;
