"""A primary and a real streaming standby (pg_basebackup -R over 127.0.0.1): where each
migration's commit ends in the WAL, which standbys have replayed it, waiting for them, and what
a standby shows and refuses."""

import os
import subprocess

import psycopg
import pytest

from harness import PG_MAJOR, Cluster, failure, wait_until


@pytest.fixture(scope="module")
def pair():
    primary = Cluster("/tmp/pg_migrate_e2e_rep_primary").start("wal_level=replica")
    standby = Cluster("/tmp/pg_migrate_e2e_rep_standby")
    try:
        standby.start_standby_of(primary, "cluster_name=standby_a")
        with primary.connect() as c:
            wait_until(lambda: c.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                       .fetchone()[0] == 1, timeout=30)
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


def replayed(primary, standby, db):
    """Waits until the standby has replayed everything the primary has written so far."""
    with primary.connect(db) as p, standby.connect() as s:
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        wait_until(lambda: s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0],
                   timeout=30)


def commit_record_end(conn, xid, start):
    """The end of transaction `xid`'s commit record, read from the WAL itself (pg_walinspect)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    rows = conn.execute(
        "SELECT end_lsn FROM pg_get_wal_records_info(%s::pg_lsn, pg_current_wal_flush_lsn()) "
        "WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%%' AND xid::text = %s",
        (start, str(int(xid) & 0xFFFFFFFF))).fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]


def replicas(conn):
    return {r[0]: r for r in conn.execute(
        "SELECT standby, state, replay_lsn, replayed_version, behind, slot_name FROM migrate.replicas()")}


def test_commit_positions_are_exact_and_standbys_are_waited_for(pair):
    primary, standby = pair
    db = primary.create_database("rep_wait")
    replayed(primary, standby, db)
    with primary.connect(db) as c, standby.connect(db) as s:
        start = c.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        c.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int PRIMARY KEY, v int)')")
        c.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY t_v ON t (v)')")
        c.execute("CALL migrate.wait('2')")
        # WAL written since: a position read now (the fallback for a commit not kept) would be
        # later than the commit record, and not pass for it.
        c.execute("SET migrate.guard = off")
        c.execute("CREATE TABLE filler AS SELECT g FROM generate_series(1, 5000) g")
        rows = replicas(c)
        assert list(rows) == ["standby_a"] and rows["standby_a"][1] == "streaming", rows
        # Each version's commit position is the end of its commit record, as the WAL has it:
        # the caller's transaction for 1, the worker's last phase for 2. Read at once (from
        # shared memory), and as the worker writes it down.
        positions = dict(c.execute("SELECT version, commit_lsn FROM migrate.commit_positions()").fetchall())
        for version in ("1", "2"):
            xid = c.execute("SELECT commit_xid FROM migrate.history WHERE version = %s", (version,)).fetchone()[0]
            assert xid is not None and positions[version] == commit_record_end(c, xid, start), version
            wait_until(lambda: c.execute("SELECT commit_lsn FROM migrate.history WHERE version = %s",
                                         (version,)).fetchone()[0] == positions[version], timeout=30)
        phase_xid, phase_lsn = c.execute(
            "SELECT commit_xid, commit_lsn FROM migrate.step_records WHERE version = '2'").fetchone()
        assert phase_lsn == commit_record_end(c, phase_xid, start)
        assert phase_lsn < positions["2"]
        c.execute("CALL migrate.wait_replicas('2', '30 s')")
        assert s.execute("SELECT status FROM migrate.history WHERE version = '2'").fetchone() == ("applied",)
        wait_until(lambda: replicas(c)["standby_a"][3:5] == ("2", []), timeout=30)

        # Replay paused: the standby is behind by exactly the new version, and waiting times out
        # naming it; once replay resumes, the wait returns and the standby has the table.
        s.execute("SELECT pg_wal_replay_pause()")
        try:
            c.execute("SELECT migrate.apply('3', 'CREATE TABLE u (id int)')")
            rows = replicas(c)
            assert rows["standby_a"][3:5] == ("2", ["3"]), rows
            f = failure(c, "CALL migrate.wait_replicas('3', '300 ms')")
            assert f.sqlstate == "57014" and "standby_a" in f.message and "version 3" in f.message, f
            assert "migrate.replicas()" in f.hint
            # By default, the migration committed last.
            f = failure(c, "CALL migrate.wait_replicas(timeout => '100 ms')")
            assert f.sqlstate == "57014" and "version 3" in f.message, f
            # A standby named that is not connected is waited for, and named.
            f = failure(c, "CALL migrate.wait_replicas('2', '200 ms', ARRAY['standby_a', 'elsewhere'])")
            assert f.sqlstate == "57014" and f.message.endswith(": elsewhere"), f
        finally:
            s.execute("SELECT pg_wal_replay_resume()")
        c.execute("CALL migrate.wait_replicas('3', '30 s', ARRAY['standby_a'])")
        assert s.execute("SELECT to_regclass('u') IS NOT NULL").fetchone() == (True,)
        assert replicas(c)["standby_a"][4] == []

        # Bad input.
        f = failure(c, "CALL migrate.wait_replicas('9')")
        assert f.sqlstate == "42704" and "not recorded" in f.message
        for timeout in ("NULL", "'infinity'::interval" if PG_MAJOR >= 17 else "NULL::interval"):
            f = failure(c, f"CALL migrate.wait_replicas('3', {timeout})")
            assert f.sqlstate == "22023" and "finite timeout" in f.message and "10 min" in f.hint, f
        # Phased and not yet applied: a writer's open transaction holds its build.
        with primary.connect(db, autocommit=False) as writer:
            writer.execute("INSERT INTO u VALUES (1)")
            c.execute("SELECT migrate.apply('4', 'CREATE INDEX CONCURRENTLY u_id ON u (id)')")
            f = failure(c, "CALL migrate.wait_replicas('4', '10 s')")
            assert f.sqlstate == "55000" and "not applied" in f.message and "migrate.wait('4')" in f.hint, f
        c.execute("CALL migrate.wait('4')")
        c.execute("CALL migrate.wait_replicas('4', '30 s')")
        # Reading the standbys in a transaction left open holds up nothing: the worker still
        # runs and finishes the next migration.
        with primary.connect(db, autocommit=False) as reader:
            reader.execute("SELECT * FROM migrate.replicas()").fetchall()
            reader.execute("SELECT * FROM migrate.commit_positions()").fetchall()
            c.execute("SELECT migrate.apply('5', 'CREATE INDEX CONCURRENTLY u_id2 ON u (id)')")
            c.execute("CALL migrate.wait('5', '30 s')")


def test_a_disconnected_slot_is_listed_and_warned_about(pair):
    primary, standby = pair
    db = primary.create_database("rep_slot")
    with primary.connect(db) as c:
        c.execute("SELECT pg_create_physical_replication_slot('gone_standby', true)")
        try:
            c.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int)')")
            rows = replicas(c)
            assert rows["gone_standby"][1] == "disconnected" and rows["gone_standby"][4] == ["1"], rows
            assert rows["standby_a"][1] == "streaming"
            notices = []
            c.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
            c.execute("CALL migrate.wait_replicas('1', '30 s')")
            assert any(sev == "WARNING" and "gone_standby" in m for sev, m in notices), notices
            f = failure(c, "CALL migrate.wait_replicas('1', '200 ms', ARRAY['gone_standby'])")
            assert f.sqlstate == "57014" and "gone_standby" in f.message
        finally:
            c.execute("SELECT pg_drop_replication_slot('gone_standby')")


def test_the_dry_run_flags_locks_standbys_replay(pair):
    primary, _ = pair
    db = primary.create_database("rep_dry")
    with primary.connect(db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        findings = [f for (fs,) in c.execute(
            "SELECT findings FROM migrate.dry_run('ALTER TABLE t ADD COLUMN z int; COMMENT ON TABLE t IS $$x$$')")
            for f in fs]
        standby_findings = [f for f in findings if f.startswith("hot standby:")]
        # The ALTER takes it; the COMMENT, a lighter one, adds none.
        assert len(standby_findings) == 1, findings
        assert "ACCESS EXCLUSIVE lock on public.t" in standby_findings[0]
        assert "max_standby_streaming_delay" in standby_findings[0]
        # A lighter lock is not written to the WAL.
        findings = [f for (fs,) in c.execute(
            "SELECT findings FROM migrate.dry_run('CREATE INDEX CONCURRENTLY t_z ON t (id)')") for f in fs]
        assert not [f for f in findings if f.startswith("hot standby:")], findings


def test_without_standbys_the_dry_run_says_nothing_of_them(cluster, conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    (findings,) = conn.execute("SELECT findings FROM migrate.dry_run('ALTER TABLE t ADD COLUMN z int')").fetchone()
    assert not [f for f in findings if f.startswith("hot standby:")], findings


def test_a_standby_shows_what_it_replayed_and_refuses_writes(pair):
    primary, standby = pair
    db = primary.create_database("rep_read")
    with primary.connect(db) as c:
        c.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int PRIMARY KEY, v int)', "
                  "verify => 'SELECT 1 FROM t WHERE v < 0')")
        c.execute("SELECT migrate.apply('2', 'CREATE INDEX CONCURRENTLY t_v ON t (v)')")
        c.execute("CALL migrate.wait('2')")
        c.execute("CALL migrate.wait_replicas('2', '30 s')")
        status = c.execute("SELECT version, status, state, checksum FROM migrate.status").fetchall()
        fingerprint = c.execute("SELECT migrate.fingerprint()").fetchone()[0]
        described = c.execute("SELECT migrate.describe()::text").fetchone()[0]
    replayed(primary, standby, db)
    with standby.connect(db) as s:
        notices = []
        s.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert s.execute("SELECT version, status, state, checksum FROM migrate.status").fetchall() == status
        assert s.execute("SELECT migrate.fingerprint()").fetchone()[0] == fingerprint
        assert any("this server is a standby" in n for n in notices), notices
        notices.clear()
        checks = s.execute("SELECT kind, ok FROM migrate.verify('1')").fetchall()
        assert checks and all(ok for _, ok in checks), checks
        assert any("was not recorded" in n for n in notices) and any("standby" in n for n in notices), notices
        assert s.execute("SELECT count(*) FROM migrate.drift()").fetchone() == (0,)
        assert s.execute("SELECT migrate.describe() = %s::jsonb", (described,)).fetchone() == (True,)
        for query, words in [
            ("SELECT migrate.apply('3', 'CREATE TABLE u ()')", "cannot change the migration history on a standby"),
            ("SELECT migrate.record_schema()", "on a standby"),
            ("SELECT migrate.retry('2')", "on a standby"),
            ("SELECT migrate.baseline('5')", "on a standby"),
            ("SELECT migrate.cancel('2')", "on a standby"),
            ("SELECT * FROM migrate.dry_run('CREATE TABLE u ()')", "cannot dry-run a script on a standby"),
        ]:
            f = failure(s, query)
            assert f.sqlstate == "25006" and words in f.message, (query, f)
            assert "primary" in f.hint, (query, f)
        f = failure(s, "SELECT * FROM migrate.replicas()")
        assert f.sqlstate == "55000" and "standby" in f.message and "pg_last_wal_replay_lsn" in f.hint
        f = failure(s, "CALL migrate.wait_replicas('2')")
        assert f.sqlstate == "55000"
        # lint only reads, and judges against the standby's catalogs.
        assert s.execute("SELECT rule_id FROM migrate.lint('ALTER TABLE t RENAME COLUMN v TO w')"
                         ).fetchall() == [("rename-column",)]
    with primary.connect(db) as c:
        assert c.execute("SELECT verification FROM migrate.history WHERE version = '1'").fetchone() == (None,)


def test_reading_positions_needs_pg_read_all_stats(pair):
    primary, _ = pair
    db = primary.create_database("rep_roles")
    with primary.connect(db) as c:
        c.execute("DROP ROLE IF EXISTS rep_plain")
        c.execute("CREATE ROLE rep_plain LOGIN")
        try:
            with primary.connect(db, user="rep_plain") as plain:
                f = failure(plain, "SELECT * FROM migrate.replicas()")
                assert f.sqlstate == "42501" and "GRANT pg_monitor TO rep_plain" in f.hint, f
            c.execute("GRANT pg_monitor TO rep_plain")
            with primary.connect(db, user="rep_plain") as plain:
                assert [r[0] for r in plain.execute("SELECT standby FROM migrate.replicas()")] == ["standby_a"]
        finally:
            c.execute("DROP ROLE rep_plain")


def test_a_hot_standby_conflict_is_counted_and_shown_on_the_standby(pair, cli_bin, tmp_path):
    """The ACCESS EXCLUSIVE lock of an ALTER TABLE, replayed on the standby, cancels a reader
    there once it has held up replay for max_standby_streaming_delay; pg-migrate status on the
    standby says so."""
    primary, standby = pair
    db = primary.create_database("rep_conflict")
    with primary.connect(db) as c:
        c.execute("CREATE TABLE t (id int)")
    replayed(primary, standby, db)
    with standby.connect() as s:
        s.execute("ALTER SYSTEM SET max_standby_streaming_delay = '100ms'")
        s.execute("SELECT pg_reload_conf()")
    try:
        reader = standby.connect(db, autocommit=False)
        reader.execute("SELECT count(*) FROM t").fetchone()  # ACCESS SHARE on t until it ends
        with primary.connect(db) as c:
            c.execute("SELECT migrate.apply('1', 'ALTER TABLE t ADD COLUMN v int')")
            c.execute("CALL migrate.wait_replicas('1', '30 s')")
        with pytest.raises(psycopg.Error, match="conflict with recovery"):
            reader.execute("SELECT 1")
        with standby.connect(db) as s:
            wait_until(lambda: s.execute("SELECT confl_lock FROM pg_stat_database_conflicts "
                                         "WHERE datname = current_database()").fetchone()[0] == 1, timeout=30)
        folder = tmp_path / "migrations"
        folder.mkdir()
        (folder / "V1__v.sql").write_text("ALTER TABLE t ADD COLUMN v int")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
        env.update(PGHOST=str(standby.sock), PGPORT=str(standby.port), PGUSER="postgres", PGDATABASE=db,
                   NO_COLOR="1")
        r = subprocess.run([str(cli_bin), "--dir", str(folder), "hash"], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r
        r = subprocess.run([str(cli_bin), "--dir", str(folder), "status"], capture_output=True, text=True,
                           env=env)
        assert r.returncode == 0, r
        assert ("queries here cancelled by replay (hot-standby conflicts) since the statistics were reset: "
                "1 (lock 1)") in r.stdout, r
    finally:
        with standby.connect() as s:
            s.execute("ALTER SYSTEM RESET max_standby_streaming_delay")
            s.execute("SELECT pg_reload_conf()")


def test_a_name_two_standbys_share_waits_for_both(pair):
    """Standbys keep the default application_name, or share one: a name counts once every
    standby of that name has replayed the migration."""
    primary, _ = pair
    twin = Cluster("/tmp/pg_migrate_e2e_rep_twin")
    try:
        twin.start_standby_of(primary, "cluster_name=standby_a")
        db = primary.create_database("rep_twins")
        with primary.connect() as p:
            wait_until(lambda: p.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                                         "'standby_a' AND replay_lsn IS NOT NULL").fetchone()[0] == 2, timeout=30)
        replayed(primary, twin, db)
        with primary.connect(db) as c, twin.connect(db) as t:
            t.execute("SELECT pg_wal_replay_pause()")
            try:
                c.execute("SELECT migrate.apply('1', 'CREATE TABLE t (id int)')")
                names = [r[0] for r in c.execute("SELECT standby FROM migrate.replicas()")]
                assert names == ["standby_a", "standby_a"], names
                f = failure(c, "CALL migrate.wait_replicas('1', '300 ms', ARRAY['standby_a'])")
                assert f.sqlstate == "57014" and f.message.endswith(": standby_a"), f
            finally:
                t.execute("SELECT pg_wal_replay_resume()")
            c.execute("CALL migrate.wait_replicas('1', '30 s', ARRAY['standby_a'])")
            assert t.execute("SELECT to_regclass('t') IS NOT NULL").fetchone() == (True,)
    finally:
        twin.stop()
