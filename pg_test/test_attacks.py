"""pg_migrate under attack: a member of migrate_admin who is not a superuser (the role a
deploy pipeline connects as) tries to get a superuser's rights, to run what was never judged,
or to read or stall what is not theirs.

The detector: `canary.fired`, a sequence only a superuser may advance. Mallory's functions try
to advance it (and to make mallory a superuser); `nextval` is not undone by a rollback, so a
call that ran with a superuser's rights leaves it advanced even inside a subtransaction that
was rolled back."""

import threading
import time

import psycopg
import pytest

from harness import failure, wait_until
from test_worker import status

MALLORY = "mallory"  # migrate_admin, not a superuser
EVE = "eve"  # migrate_admin too, but not a member of mallory
PLAIN = "plain"  # no pg_migrate rights at all

DETECTOR = """
CREATE FUNCTION m.detector(x anyelement) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM pg_catalog.nextval('canary.fired');
    EXCEPTION WHEN OTHERS THEN NULL;  -- no right, or a read-only transaction
    END;
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    EXCEPTION WHEN OTHERS THEN NULL;  -- no right, or a read-only transaction
    END;
    RETURN true;
END $$;
"""


@pytest.fixture
def roles(cluster, db, conn):
    conn.execute("CREATE ROLE mallory LOGIN IN ROLE migrate_admin")
    conn.execute("CREATE ROLE eve LOGIN IN ROLE migrate_admin")
    conn.execute("CREATE ROLE plain LOGIN")
    conn.execute("CREATE SCHEMA canary")
    conn.execute("CREATE SEQUENCE canary.fired")
    conn.execute("CREATE SCHEMA m AUTHORIZATION mallory")
    conn.execute("GRANT USAGE ON SCHEMA m TO plain")
    with cluster.connect(db, user=MALLORY) as mallory:
        mallory.execute(DETECTOR)
    yield
    conn.execute("SET migrate.guard = off")  # test cleanup, not a migration
    for role in (MALLORY, EVE, PLAIN):
        conn.execute(f"DROP OWNED BY {role} CASCADE")
        conn.execute(f"DROP ROLE {role}")


def assert_no_escalation(conn):
    fired = conn.execute("SELECT is_called FROM canary.fired").fetchone()[0]
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'").fetchone()[0]
    assert (fired, superuser) == (False, False), "mallory's code ran with a superuser's rights"


def as_mallory(cluster, db, **kw):
    return cluster.connect(db, user=MALLORY, **kw)


def checks(conn, version):
    return conn.execute("SELECT kind, ok, detail FROM migrate.verify(%s)", (version,)).fetchall()


def test_verify_counts_a_constraint_as_its_tables_owner(cluster, db, conn, roles):
    with as_mallory(cluster, db) as mallory:
        mallory.execute("""SELECT migrate.apply('1', $$
            CREATE TABLE m.t (id int);
            INSERT INTO m.t SELECT generate_series(1, 5);
            ALTER TABLE m.t ADD CONSTRAINT t_ok CHECK (m.detector(id)) NOT VALID;
        $$)""")
        # Mallory's own verify: the count runs as the table's owner, mallory, not as the
        # extension's owner.
        constraint = [c for c in checks(mallory, "1") if c[0] == "constraint"]
    assert constraint and constraint[0][1] and "every row satisfies it" in constraint[0][2], constraint
    assert_no_escalation(conn)
    # A superuser verifying lends nothing either.
    constraint = [c for c in checks(conn, "1") if c[0] == "constraint"]
    assert constraint and "every row satisfies it" in constraint[0][2], constraint
    assert_no_escalation(conn)


def test_verify_counts_a_backfills_where_clause_as_its_submitter(cluster, db, conn, roles):
    with as_mallory(cluster, db) as mallory:
        mallory.execute("""SELECT migrate.apply('1', $$
            CREATE TABLE m.b (id int PRIMARY KEY, v int);
            INSERT INTO m.b SELECT g FROM generate_series(1, 200) g;
        $$)""")
        mallory.execute("""SELECT migrate.apply('2', $$
            SELECT migrate.backfill('m.b', 'v = id', 'v IS NULL AND m.detector(id)')
        $$)""")
        mallory.execute("CALL migrate.wait('2', '60s')")
    assert conn.execute("SELECT count(*) FROM m.b WHERE v = id").fetchone()[0] == 200
    assert [c[1] for c in checks(conn, "2") if c[0] == "backfill"] == [True]
    assert_no_escalation(conn)
    # A row that matches again: verify's count now evaluates mallory's function (the
    # planner tests v IS NULL first, so only for rows with no v).
    conn.execute("INSERT INTO m.b VALUES (201, NULL)")
    backfill = [c for c in checks(conn, "2") if c[0] == "backfill"]
    assert backfill and not backfill[0][1] and "1 rows match" in backfill[0][2], backfill
    assert_no_escalation(conn)


def test_verify_queries_run_as_the_role_that_declared_them(cluster, db, conn, roles):
    with as_mallory(cluster, db) as mallory:
        mallory.execute("""SELECT migrate.apply('1', 'SELECT 1', verify => $$
            SELECT pg_catalog.pg_read_file('PG_VERSION') AS leak;
            SELECT 1 WHERE NOT m.detector(1);
        $$)""")
    # The superuser verifies; the first query fails for lack of mallory's rights.
    queries = [c for c in checks(conn, "1") if c[0] == "query"]
    assert len(queries) == 2
    assert not queries[0][1] and "permission denied for function pg_read_file" in queries[0][2], queries
    assert queries[1][1], queries
    report = conn.execute("SELECT verification_report::text FROM migrate.history WHERE version = '1'").fetchone()[0]
    version_file = conn.execute("SELECT pg_read_file('PG_VERSION')").fetchone()[0].strip()
    assert f'"leak": "{version_file}' not in report
    assert_no_escalation(conn)
    # Another admin's session is not mallory's to run code in (its temporary objects and
    # settings could steer mallory's queries): verify says whom to ask instead.
    with cluster.connect(db, user=EVE) as eve:
        queries = [c for c in checks(eve, "1") if c[0] == "query"]
    assert [q[1] for q in queries] == [False, False]
    assert all('not run: it is role "mallory"\'s expression' in q[2] for q in queries), queries
    assert_no_escalation(conn)


PLANT = """
CREATE FUNCTION m.plant(x int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        -- A domain named text in the worker session's pg_temp, checked by mallory's code.
        CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (m.detector(VALUE));
    EXCEPTION WHEN duplicate_object THEN NULL;
    END;
    RETURN x;
END $$;
"""


def test_the_worker_session_is_reset_between_submitters(cluster, db, conn, roles):
    with as_mallory(cluster, db) as mallory:
        mallory.execute(PLANT)
        mallory.execute("CREATE TABLE m.b (id int PRIMARY KEY, v int)")
        mallory.execute("INSERT INTO m.b SELECT g FROM generate_series(1, 3000) g")
        job = mallory.execute(
            "SELECT migrate.backfill('m.b', 'v = m.plant(id)', batch_size => 100, "
            "min_batch_size => 100, max_batch_size => 100, pause => '20ms')").fetchone()[0]
        wait_until(lambda: conn.execute(
            "SELECT rows_updated > 0 FROM migrate.backfills WHERE id = %s", (job,)).fetchone()[0], timeout=30)
    # The superuser's job runs in the same worker session, between mallory's batches.
    conn.execute("CREATE TABLE vt (id int PRIMARY KEY, note text)")
    conn.execute("INSERT INTO vt SELECT g FROM generate_series(1, 500) g")
    mine = conn.execute("SELECT migrate.backfill('vt', 'note = id::text')").fetchone()[0]
    for j in (job, mine):
        wait_until(lambda: conn.execute(
            "SELECT state FROM migrate.backfills WHERE id = %s", (j,)).fetchone()[0] in ("done", "failed"), timeout=60)
    assert conn.execute("SELECT state FROM migrate.backfills WHERE id = %s", (mine,)).fetchone()[0] == "done"
    assert conn.execute("SELECT count(*) FROM vt WHERE note = id::text").fetchone()[0] == 500
    assert_no_escalation(conn)


def test_the_worker_runs_exactly_the_statements_that_were_judged(cluster, db, conn, roles):
    with as_mallory(cluster, db) as mallory:
        mallory.execute("CREATE TABLE m.notes (n text)")
        mallory.execute("SET standard_conforming_strings = off")
        # With standard_conforming_strings off, \\' escapes the quote: the second statement
        # is one INSERT of a string. Split with it on, a CREATE TABLE would follow.
        script = (
            "CREATE INDEX CONCURRENTLY notes_n ON m.notes (n);\n"
            "INSERT INTO m.notes VALUES ('a\\'); CREATE TABLE m.smuggled (id int); --')"
        )
        assert mallory.execute("SELECT status, statements FROM migrate.apply('1', %s)",
                               (script,)).fetchone() == ("pending", 2)
        mallory.execute("CALL migrate.wait('1', '60s')")
    assert conn.execute("SELECT to_regclass('m.smuggled')").fetchone()[0] is None
    assert conn.execute("SELECT n FROM m.notes").fetchall() == [("a'); CREATE TABLE m.smuggled (id int); --",)]
    settings = conn.execute("SELECT settings ->> 'standard_conforming_strings' FROM migrate.history").fetchone()[0]
    assert settings == "off"


def test_a_script_cannot_change_how_its_own_statements_lex(cluster, db, conn, roles):
    # Judged with standard_conforming_strings on: a SET, then one SELECT of two strings. Run
    # after the SET, the SELECT would lex as two statements, the second a CREATE TABLE.
    script = "SET standard_conforming_strings = off;\nSELECT 'a\\', 'b; CREATE TABLE m.smuggled (id int); --';"
    with as_mallory(cluster, db) as mallory:
        f = failure(mallory, "SELECT migrate.apply('1', %s)", (script,))
    assert f.sqlstate == "22023" and "now reads as 2 statements" in f.message, f
    assert conn.execute("SELECT to_regclass('m.smuggled')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 0


DEFINER = """
CREATE TABLE m.big (id int, x int);
INSERT INTO m.big SELECT g, g FROM generate_series(1, 20000) g;
ANALYZE m.big;
CREATE FUNCTION m.index_big() RETURNS void LANGUAGE sql SECURITY DEFINER
    AS 'CREATE INDEX big_x ON m.big (x)';
"""


def test_an_override_belongs_to_the_role_that_set_it(cluster, db, conn, roles):
    with as_mallory(cluster, db) as mallory:
        mallory.execute(DEFINER)
    notices: list[str] = []
    with cluster.connect(db, user=PLAIN, autocommit=False) as plain:
        plain.add_notice_handler(lambda d: notices.append(d.message_primary))
        plain.execute("SET LOCAL migrate.allow = 'index-create-blocking'")
        f = failure(plain, "SELECT m.index_big()")
    assert f.sqlstate == "55000" and "index-create-blocking" in f.message, f
    assert any('set by role "plain" and is ignored for role "mallory"' in n for n in notices), notices
    assert conn.execute("SELECT to_regclass('m.big_x')").fetchone()[0] is None
    assert conn.execute("SELECT count(*) FROM migrate.ddl_log WHERE event = 'guard_override'").fetchone()[0] == 0
    # Mallory's own override, set by mallory, counts.
    with as_mallory(cluster, db, autocommit=False) as mallory:
        mallory.execute("SET LOCAL migrate.allow = 'index-create-blocking'")
        mallory.execute("SELECT m.index_big()")
        mallory.commit()
    assert conn.execute("SELECT current_user_name FROM migrate.ddl_log WHERE event = 'guard_override'").fetchall() == [("mallory",)]


def test_overrides_set_before_apply_are_recorded_with_the_migration(cluster, db, conn, roles):
    with as_mallory(cluster, db, autocommit=False) as mallory:
        mallory.execute(DEFINER)
        mallory.commit()
        mallory.execute("SET LOCAL migrate.allow = 'index-create-blocking'")
        mallory.execute("SELECT migrate.apply('1', 'CREATE INDEX big_x2 ON m.big (x)')")
        mallory.commit()
    assert conn.execute("SELECT allowed_rules FROM migrate.history WHERE version = '1'").fetchone()[0] == [
        "index-create-blocking"]


def test_a_dry_run_shows_only_what_its_own_statements_did(cluster, db, conn, roles):
    rows: list = []

    def dry_run():
        with cluster.connect(db, user=PLAIN) as plain:
            rows.extend(plain.execute(
                "SELECT statement, objects FROM migrate.dry_run('SELECT pg_sleep(1.5)')").fetchall())

    t = threading.Thread(target=dry_run)
    t.start()
    time.sleep(0.5)
    conn.execute("CREATE TABLE someone_elses_secret (id int)")
    t.join(timeout=30)
    assert rows and all("someone_elses_secret" not in " ".join(objects) for _, objects in rows), rows


def test_nobody_can_stall_appliers_by_holding_their_lock(cluster, db, conn, roles):
    conn.execute("SET statement_timeout = '60s'")  # a regression fails here instead of hanging
    with cluster.connect(db, user=PLAIN) as plain:
        # The advisory key of earlier releases is nobody's lock now.
        plain.execute("SELECT pg_advisory_lock(1835496052, 1)")
        assert failure(plain, "COMMENT ON EXTENSION pg_migrate IS 'mine'").sqlstate == "42501"
        assert conn.execute("SELECT status FROM migrate.apply('1', 'SELECT 1')").fetchone()[0] == "applied"
    # A real applier holding it: the wait is bounded and names the holder.
    with cluster.connect(db, autocommit=False) as holder:
        holder.execute("SELECT migrate.apply('2', 'SELECT 2')")
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SET migrate.lock_timeout = '100ms'")
        conn.execute("SET migrate.lock_retries = 1")
        conn.execute("SET migrate.lock_retry_delay = '10ms'")
        f = failure(conn, "SELECT migrate.apply('3', 'SELECT 3')")
        holder.rollback()
    assert (f.sqlstate, f.message) == ("55P03", "pg_migrate: another session holds the applier lock")
    assert f"pid {pid} (role postgres" in f.detail and "Waited 2 times for 100ms" in f.detail, f.detail
    assert "pg_cancel_backend" in f.hint
    assert conn.execute("SELECT array_agg(version) FROM migrate.history").fetchone()[0] == ["1"]


def many_statements(n: int) -> str:
    return "".join(f"ALTER TABLE t ADD COLUMN c{i} int; " for i in range(n))


def cancel_after(cluster, db, pid: int, delay: float) -> threading.Thread:
    def cancel():
        time.sleep(delay)
        with cluster.connect(db) as c:
            c.execute("SELECT pg_cancel_backend(%s)", (pid,))
    t = threading.Thread(target=cancel)
    t.start()
    return t


@pytest.mark.parametrize("call", ["SELECT count(*) FROM migrate.lint(%s)",
                                  "SELECT count(*) FROM migrate.dry_run(%s)"])
def test_lint_and_dry_run_of_a_huge_script_answer_timeouts_and_cancels(cluster, db, conn, roles, call):
    conn.execute("CREATE TABLE t (id int)")
    script = many_statements(150_000)  # 5.5 MB
    outcome: list = []

    def run(setup: str):
        with cluster.connect(db, user=PLAIN) as plain:
            plain.execute(setup)
            pid = plain.execute("SELECT pg_backend_pid()").fetchone()[0]
            canceller = cancel_after(cluster, db, pid, 0.3) if "cancel" in setup else None
            started = time.monotonic()
            try:
                plain.execute(call, (script,))
                outcome.append(("finished", time.monotonic() - started))
            except psycopg.Error as e:
                outcome.append((e.diag.sqlstate, time.monotonic() - started))
            if canceller:
                canceller.join()

    for setup in ("SET statement_timeout = '200ms'", "SELECT 'cancel'"):
        outcome.clear()
        t = threading.Thread(target=run, args=(setup,))
        t.start()
        t.join(timeout=60)  # a hang guard, not a timing: quadratic work ignoring interrupts took minutes
        assert not t.is_alive() and outcome and outcome[0][0] == "57014", outcome


def test_bad_input_at_the_edges(cluster, db, conn, roles):
    with cluster.connect(db, user=PLAIN) as plain:
        f = failure(plain, "SELECT * FROM migrate.lint(NULL)")
        assert (f.sqlstate, f.message) == ("22004", "pg_migrate: script must not be NULL"), f
        huge = "SELECT 1; --" + "x" * (9 * 1024 * 1024)  # 9 MB, over the 8 MB default
        for call in ("SELECT * FROM migrate.lint(%s)", "SELECT * FROM migrate.dry_run(%s)",
                     "SELECT migrate.validate('1', %s)"):
            f = failure(plain, call, (huge,))
            assert f.sqlstate == "54000" and "more than migrate.max_script_size (8192 kB)" in f.message, f
            assert f.detail and "ALTER ROLE" in f.hint
        assert failure(plain, "SET migrate.max_script_size = '1GB'").sqlstate == "42501"
    assert failure(conn, "SELECT migrate.apply('1', %s)", (huge,)).sqlstate == "54000"
    f = failure(conn, "SELECT migrate.apply('1', 'SELECT 1', rollback => %s)", (huge,))
    assert f.sqlstate == "54000" and f.message.startswith("pg_migrate: rollback is")
    f = failure(conn, "SELECT migrate.apply('1', 'SELECT 1', verify => %s)", (huge,))
    assert f.sqlstate == "54000" and f.message.startswith("pg_migrate: verify is")
    conn.execute("SET migrate.max_script_size = '16MB'")
    assert conn.execute("SELECT status FROM migrate.apply('1', %s)", (huge,)).fetchone()[0] == "applied"
    assert conn.execute("SELECT count(*) FROM migrate.history").fetchone()[0] == 1


def test_summing_millions_of_hashes_answers_a_cancel(cluster, db, conn, roles):
    """migrate.hash_sum is open to every role and spreads each hash over eight SHA-256s: it
    must stop when cancelled, not when done."""
    with cluster.connect(db, user=PLAIN) as plain:
        plain.execute("CREATE TEMP TABLE many AS SELECT array_agg(sha256(i::text::bytea)) AS a "
                      "FROM generate_series(1, 4000000) i")
        pid = plain.execute("SELECT pg_backend_pid()").fetchone()[0]
        outcome: list = []

        def run():
            try:
                plain.execute("SELECT migrate.hash_sum(a) FROM many")
                outcome.append("finished")
            except psycopg.Error as e:
                outcome.append(e.diag.sqlstate)

        t = threading.Thread(target=run)
        t.start()
        cancel_after(cluster, db, pid, 0.3).join()
        t.join(timeout=20)  # a hang guard, not a timing: the whole sum takes far longer
        assert not t.is_alive() and outcome == ["57014"], outcome


def test_error_texts_are_shown_only_to_roles_with_the_submitters_privileges(cluster, db, conn, roles):
    """A failed phase's or backfill's error may quote the row it failed on; eve, another
    admin who may not read mallory's table, sees that something failed and why (SQLSTATE),
    never the data."""
    secret = "123-45-6789"
    with as_mallory(cluster, db) as mallory:
        # The data is not in the script, which admins may read.
        mallory.execute("CREATE TABLE m.secrets (id int PRIMARY KEY, ssn text, n int)")
        mallory.execute("INSERT INTO m.secrets VALUES (1, %s), (2, %s)", (secret, secret))
        mallory.execute("SELECT migrate.apply('1', 'CREATE UNIQUE INDEX CONCURRENTLY secrets_ssn ON m.secrets (ssn)')")
        wait_until(lambda: status(conn, "1") == "failed", timeout=60)
        job = mallory.execute("SELECT migrate.backfill('m.secrets', 'n = ssn::int')").fetchone()[0]
        wait_until(lambda: conn.execute("SELECT state FROM migrate.backfills WHERE id = %s", (job,))
                   .fetchone()[0] == "failed", timeout=60)
        step_query = "SELECT error_sqlstate, error_message, error_detail FROM migrate.steps WHERE version = '1' AND state = 'failed'"
        job_query = "SELECT b.error_sqlstate, b.error_message, p.last_error FROM migrate.backfills b JOIN migrate.backfill_progress p ON p.job = b.id WHERE b.id = %s"
        # The submitter, and a superuser, read what PostgreSQL told the worker.
        for reader in (mallory, conn):
            step = reader.execute(step_query).fetchone()
            assert step[0] == "23505" and secret in step[2], step
            backfill = reader.execute(job_query, (job,)).fetchone()
            assert backfill[0] == "22P02" and secret in backfill[1] and backfill[2] == backfill[1], backfill
    with cluster.connect(db, user=EVE) as eve:
        assert conn.execute("SELECT has_table_privilege('eve', 'm.secrets', 'SELECT')").fetchone()[0] is False
        assert eve.execute(step_query).fetchone() == ("23505", "<insufficient privilege>", "<insufficient privilege>")
        assert eve.execute(job_query, (job,)).fetchone() == ("22P02",) + ("<insufficient privilege>",) * 2
        # The keys a job walked are rows' values too.
        keys = "SELECT upper_key, last_key FROM migrate.backfills WHERE id = %s"
        with as_mallory(cluster, db) as mallory:
            theirs = mallory.execute(keys, (job,)).fetchone()
        assert theirs[0] == ["2"], theirs
        assert eve.execute(keys, (job,)).fetchone() == (["<insufficient privilege>"], theirs[1] and ["<insufficient privilege>"])
        f = failure(eve, "CALL migrate.wait('1')")
        assert f.sqlstate == "55000" and "<insufficient privilege>" in f.detail and secret not in f.detail, f
        # Through no other column either.
        for table in ("migrate.steps", "migrate.backfills", "migrate.backfill_progress", "migrate.windows"):
            rows = eve.execute(f"SELECT t::text FROM {table} t").fetchall()
            assert not any(secret in r[0] for r in rows), table
        # Its base tables are the owner's alone.
        for table in ("migrate.step_records", "migrate.backfill_jobs"):
            assert failure(eve, f"SELECT error_message FROM {table}").sqlstate == "42501"
    # Given mallory's privileges, eve reads them.
    conn.execute("GRANT mallory TO eve")
    with cluster.connect(db, user=EVE) as eve:
        assert secret in eve.execute(step_query).fetchone()[2]
    conn.execute("REVOKE mallory FROM eve")


def test_a_verification_keeps_no_rows_and_only_its_authors_peers_record_it(cluster, db, conn, roles):
    """migrate.verify runs mallory's verify queries as mallory. What they returned or raised
    is shown to whoever runs it with her privileges; the history, which every admin reads,
    keeps only the verdict. Eve, who may not run them, cannot record a verdict either."""
    pan = "4111-1111-1111-1111"
    with as_mallory(cluster, db) as mallory:
        mallory.execute("CREATE TABLE m.cards (id int, pan text)")
        mallory.execute("INSERT INTO m.cards VALUES (1, %s)", (pan,))
        mallory.execute("SELECT migrate.apply('1', 'CREATE TABLE m.t1 (id int)', "
                        "verify => 'SELECT * FROM m.cards WHERE pan IS NOT NULL; SELECT pan::int FROM m.cards WHERE pan IS NOT NULL')")
        details = [d for _, ok, d in checks(mallory, "1") if not ok]
        assert len(details) == 2 and all(pan in d for d in details), details
        report = mallory.execute("SELECT verification, verification_report::text FROM migrate.history "
                                 "WHERE version = '1'").fetchone()
    assert report[0] == "failed" and pan not in report[1] and r'privileges of role \"mallory\"' in report[1], report
    conn.execute("UPDATE m.cards SET pan = NULL")
    with cluster.connect(db, user=EVE) as eve:
        assert pan not in eve.execute("SELECT verification_report::text FROM migrate.history").fetchone()[0]
        notices = []
        eve.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert [ok for _, ok, _ in checks(eve, "1") if not ok]  # not run, for her
        assert any("was not recorded" in n for n in notices), notices
        assert eve.execute("SELECT verification FROM migrate.history WHERE version = '1'").fetchone()[0] == "failed"
    with as_mallory(cluster, db) as mallory:
        assert all(ok for _, ok, _ in checks(mallory, "1"))
        assert mallory.execute("SELECT verification FROM migrate.history WHERE version = '1'").fetchone()[0] == "passed"
    # Once the role that applied it is gone, nobody can run its queries: the verdict recorded
    # stays, whoever verifies, a superuser included.
    conn.execute("CREATE ROLE gone LOGIN IN ROLE migrate_admin")
    conn.execute("GRANT USAGE, CREATE ON SCHEMA m TO gone")
    with cluster.connect(db, user="gone") as gone:
        gone.execute("SELECT migrate.apply('2', 'CREATE TABLE m.t2 (id int)', verify => 'SELECT id FROM m.t2')")
        assert all(ok for _, ok, _ in checks(gone, "2"))
    conn.execute("SET migrate.guard = off")  # test cleanup, not a migration
    conn.execute("DROP OWNED BY gone")
    conn.execute("DROP ROLE gone")
    conn.execute("RESET migrate.guard")
    with cluster.connect(db, user=EVE) as eve:
        for verifier in (conn, eve):
            assert [d for _, ok, d in checks(verifier, "2") if not ok and 'role "gone"' in d]
            assert conn.execute("SELECT verification FROM migrate.history WHERE version = '2'").fetchone()[0] == "passed"
