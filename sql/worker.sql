-- pg_migrate: waiting for the background worker.

-- CALL migrate.wait('42'): returns once version 42 is applied; raises if it failed or was
-- cancelled, or is still unfinished after `timeout`.
--
-- Why a procedure that commits between polls, and not a function that waits: the worker may
-- be building an index CONCURRENTLY, and such a build waits for every transaction holding a
-- snapshot older than its own to end. A waiter that kept one transaction open would wait for
-- the build while the build waited for it, and no deadlock detector would notice, as neither
-- waits for a lock the other holds. Each round here ends its transaction; the build waits at
-- most one short sleep for it. Call it outside an explicit transaction block.
-- (A procedure with a SET clause cannot COMMIT, so every name here is schema-qualified
-- instead of pinning search_path.)
CREATE PROCEDURE migrate.wait(version text, timeout interval DEFAULT '1 hour')
LANGUAGE plpgsql
AS $$
DECLARE
    deadline timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) timeout;
    state text;
    step record;
BEGIN
    LOOP
        SELECT h.status INTO state FROM migrate.history h WHERE h.version OPERATOR(pg_catalog.=) wait.version;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pg_migrate: version % is not recorded', wait.version
                USING ERRCODE = 'undefined_object',
                      DETAIL = 'No migration with that version was applied or submitted.',
                      HINT = 'SELECT * FROM migrate.status; lists the recorded versions.';
        END IF;
        IF state IN ('applied', 'baseline') THEN
            RETURN;
        END IF;
        IF state IN ('failed', 'cancelled') THEN
            -- Error texts may quote data, so only those who may read them see them here.
            IF pg_catalog.has_column_privilege('migrate.steps', 'error_message', 'SELECT') THEN
                SELECT s.phase, s.first_statement, s.last_statement, s.first_line,
                       s.error_sqlstate, s.error_message
                  INTO step
                  FROM migrate.steps s
                 WHERE s.version OPERATOR(pg_catalog.=) wait.version AND s.state IN ('failed', 'cancelled')
                 ORDER BY s.phase LIMIT 1;
            ELSE
                SELECT s.phase, s.first_statement, s.last_statement, s.first_line,
                       s.error_sqlstate, '(message visible to migrate_admin)' AS error_message
                  INTO step
                  FROM migrate.steps s
                 WHERE s.version OPERATOR(pg_catalog.=) wait.version AND s.state IN ('failed', 'cancelled')
                 ORDER BY s.phase LIMIT 1;
            END IF;
            RAISE EXCEPTION 'pg_migrate: migration % %', wait.version, state
                USING ERRCODE = CASE state WHEN 'failed' THEN 'object_not_in_prerequisite_state'
                                           ELSE 'query_canceled' END,
                      DETAIL = CASE WHEN step.phase IS NULL
                               THEN pg_catalog.format('Its phases are in migrate.steps (version %L).', wait.version)
                               ELSE pg_catalog.format('Phase %s (statements %s to %s, from line %s)%s.',
                                      step.phase, step.first_statement, step.last_statement,
                                      step.first_line,
                                      CASE state WHEN 'failed'
                                           THEN pg_catalog.format(' failed: %s (SQLSTATE %s)',
                                                    step.error_message, step.error_sqlstate)
                                           ELSE ' was cancelled' END)
                               END,
                      HINT = CASE state
                             WHEN 'failed' THEN pg_catalog.format(
                                 'Fix the cause, then SELECT migrate.retry(%L); or give it up with SELECT migrate.cancel(%L).',
                                 wait.version, wait.version)
                             ELSE pg_catalog.format(
                                 'Phases already done stay done; SELECT migrate.retry(%L) resumes it.',
                                 wait.version)
                             END;
        END IF;
        IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
            RAISE EXCEPTION 'pg_migrate: migration % is still % after %', wait.version, state, timeout
                USING ERRCODE = 'query_canceled',
                      DETAIL = 'The background worker has not finished it; it keeps going.',
                      HINT = pg_catalog.format('SELECT * FROM migrate.steps WHERE version = %L; shows where it is. CALL migrate.wait(%L) again to keep waiting.',
                                    wait.version, wait.version);
        END IF;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.1);
        COMMIT;
    END LOOP;
END
$$;
