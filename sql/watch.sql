-- pg_migrate: the health gate's signals.

-- Errors reported in this database since the server started, by kind, as the log hook
-- counted them (src/pg/error_hook.rs): what a schema change that breaks its clients, or
-- holds its locks too long, makes them raise. Counts only grow; compare two readings.
CREATE VIEW migrate.error_counts AS
SELECT signal, sqlstates, errors FROM migrate.error_counters();

COMMENT ON VIEW migrate.error_counts IS
    'pg_migrate: errors reported in this database since the server started, by kind';

-- Watched migrations (apply(..., watch => ...)): the health gate after a change. The worker
-- samples the workload every migrate.watch_sample_interval; a watch judges the samples
-- since the change against those before it, at fixed looks, and ends complete, held, or
-- rolled back by the migration's own rollback script run forward (src/watch/).
CREATE TABLE migrate.watch_records (
    -- Checked at commit: migrate.apply records the watch (its baseline) before the
    -- migration takes its locks, and the history row after its DDL.
    version             text PRIMARY KEY REFERENCES migrate.history (version) ON DELETE CASCADE
                        DEFERRABLE INITIALLY DEFERRED,
    state               text NOT NULL DEFAULT 'waiting'
                        CHECK (state IN ('waiting', 'watching', 'complete', 'held', 'rolling back',
                                         'recovering', 'rolled back', 'rollback failed', 'rejected')),
    on_regression       text NOT NULL CHECK (on_regression IN ('hold', 'rollback')),
    watch               interval NOT NULL CHECK (watch > '0'),
    requested_at        timestamptz NOT NULL,
    -- When the migration took effect (its commit, or the worker's last phase): the looks
    -- count from here.
    started_at          timestamptz,
    -- When the rollback's last phase was done: the recovery watch's looks count from here.
    recovery_started_at timestamptz,
    -- The workload's samples before the change (the ring in shared memory when it was
    -- applied), which every look compares with.
    baseline            jsonb NOT NULL,
    looks               integer NOT NULL DEFAULT 0,
    -- Where its looks fall, as fractions of the watch (migrate.watch_looks when applied, whose
    -- default is the one): the false-alarm chance is spread over them.
    look_at             float8[] NOT NULL
                        CHECK (array_ndims(look_at) = 1 AND cardinality(look_at) BETWEEN 1 AND 20
                               AND array_position(look_at, NULL) IS NULL
                               AND look_at[cardinality(look_at)] = 1),
    failing_looks       integer NOT NULL DEFAULT 0,
    -- The last change of state, and for migrate.accept and migrate.reject, who and why.
    changed_at          timestamptz NOT NULL,
    decided_by          name,
    reason              text,
    -- The rollback's phases in migrate.steps start here.
    rollback_phase      integer,
    -- pg_stat_database.checksum_failures when the watch began (NULL: data checksums off).
    checksum_failures_at_start bigint,
    -- What the migration changed, and its tables, as the watch began: "kind identity" -> the
    -- MD5 of its description without privileges. A look that finds one otherwise sees drift
    -- no event trigger reported. NULL: not compared (more than 1,000 objects).
    objects_at_start    jsonb
);

CREATE TABLE migrate.watch_samples (
    version             text NOT NULL REFERENCES migrate.watch_records (version) ON DELETE CASCADE,
    stage               text NOT NULL CHECK (stage IN ('watch', 'recovery')),
    taken_at            timestamptz NOT NULL,
    seconds             float8 NOT NULL,
    -- The time statements took over what the same calls took in the baseline (1: no change);
    -- NULL without pg_stat_statements. coverage: the share of the calls it is measured on.
    latency             float8,
    coverage            float8,
    calls               float8,
    -- The most any one statement's time per call grew over its baseline mean (ms): what
    -- migrate.watch_latency_floor is held against.
    added_ms            float8,
    -- Errors by kind, in migrate.error_counts' order.
    errors              bigint[] NOT NULL,
    -- The longest current wait for a lock on a relation the migration changed, and the replay lag of
    -- the furthest streaming replica.
    lock_wait_ms        float8 NOT NULL,
    lag_bytes           float8 NOT NULL,
    PRIMARY KEY (version, stage, taken_at)
);

CREATE TABLE migrate.watch_looks (
    version             text NOT NULL REFERENCES migrate.watch_records (version) ON DELETE CASCADE,
    stage               text NOT NULL CHECK (stage IN ('watch', 'recovery')),
    look                integer NOT NULL,
    looked_at           timestamptz NOT NULL,
    -- One row per signal, and one ('look') with the look's verdict.
    signal              text NOT NULL,
    baseline            float8,
    now                 float8,
    shift               float8,
    upper               float8,
    p_value             float8,
    -- Latency: the most any one statement's time per call grew over its baseline (ms, the
    -- upper quartile over the samples since the change); at most migrate.watch_latency_floor, a
    -- ratio is the noise of tiny times and does not fail.
    added_ms            float8,
    verdict             text NOT NULL CHECK (verdict IN ('pass', 'fail', 'inconclusive', 'unavailable', 'alert')),
    PRIMARY KEY (version, stage, look, signal)
);

COMMENT ON TABLE migrate.watch_records IS 'pg_migrate: watched migrations and their health gates';
COMMENT ON TABLE migrate.watch_samples IS 'pg_migrate: the workload sampled since each watched change';
COMMENT ON TABLE migrate.watch_looks IS 'pg_migrate: the verdicts of each watch''s looks, by signal';

-- The latest look of each watch, signal by signal: baseline against now, the shift, its
-- upper bound and p-value, and the verdict.
CREATE VIEW migrate.watch_status AS
SELECT w.version, w.state, w.on_regression, w.started_at,
       w.started_at + w.watch AS ends_at, w.looks, l.stage, l.look, l.looked_at, l.signal,
       l.baseline, l.now, l.shift, l.upper, l.p_value, l.added_ms, l.verdict
FROM migrate.watch_records w
LEFT JOIN migrate.watch_looks l
       ON l.version OPERATOR(pg_catalog.=) w.version
      AND (l.stage, l.look) = (SELECT x.stage, x.look FROM migrate.watch_looks x
                                WHERE x.version OPERATOR(pg_catalog.=) w.version
                                ORDER BY x.looked_at DESC, x.look DESC LIMIT 1)
ORDER BY w.version, l.signal OPERATOR(pg_catalog.<>) 'look', l.signal;

COMMENT ON VIEW migrate.watch_status IS
    'pg_migrate: each watched migration''s latest look, signal by signal';

CREATE VIEW migrate.status AS
SELECT h.version,
       h.description,
       h.status,
       -- A migration is complete once migrate.verify has passed, or, when watched, once its
       -- health gate has.
       CASE WHEN w.state <> 'waiting' THEN w.state
            WHEN h.status <> 'applied' THEN h.status
            WHEN w.state IS NOT NULL THEN 'watching'
            WHEN h.verification = 'passed' THEN 'complete'
            WHEN h.verification = 'failed' THEN 'applied, verification failed'
            ELSE 'applied, unverified' END AS state,
       h.finished_at AS applied_at,
       h.applied_by,
       h.duration,
       h.statements,
       h.phases,
       h.retries,
       h.lock_wait,
       left(h.checksum, 12) AS checksum,
       left(h.fingerprint, 12) AS fingerprint,
       h.verified_at,
       CASE WHEN w.state = 'complete' THEN w.changed_at
            WHEN w.state IS NULL AND h.verification = 'passed' THEN h.verified_at END AS completed_at
FROM migrate.history h
LEFT JOIN migrate.watch_records w ON w.version OPERATOR(pg_catalog.=) h.version
ORDER BY h.version_key;

COMMENT ON VIEW migrate.status IS 'pg_migrate: the history in version order, for psql';

SELECT pg_catalog.pg_extension_config_dump('migrate.watch_records', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.watch_samples', '');
SELECT pg_catalog.pg_extension_config_dump('migrate.watch_looks', '');
