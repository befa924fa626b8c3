//! `#[pg_test]`s: behaviour inside one transaction of a real server, rolled back afterwards.
//! What needs commits, several sessions or a restart is in `pg_test/` (end-to-end).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).expect(sql)
    }

    fn count(sql: &str) -> i64 {
        one::<i64>(sql).unwrap_or(0)
    }

    /// Runs `sql` in a subtransaction and returns the SQLSTATE and message it failed with.
    fn failure(sql: &str) -> (String, String) {
        let quoted = pgrx::spi::quote_literal(sql);
        Spi::run(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS caught (state text, message text);
             TRUNCATE caught;
             DO $try$ BEGIN EXECUTE {quoted};
             EXCEPTION WHEN OTHERS THEN
                 INSERT INTO caught SELECT sqlstate, sqlerrm;
             END $try$;"
        ))
        .unwrap();
        let state = one::<String>("SELECT state FROM caught").expect("the statement failed");
        let message = one::<String>("SELECT message FROM caught").unwrap();
        (state, message)
    }

    #[pg_test]
    fn object_hash_hashes_what_its_sql_definition_hashed() {
        assert_eq!(
            one::<bool>(
                "SELECT bool_and(migrate.object_hash(k, i, d) = sha256(convert_to(
                            k || E'\\n' || i || E'\\n' || d::text, 'UTF8')))
                 FROM (VALUES ('tables', 'public.t', '{\"b\": 1, \"aa\": [1.50, null]}'::jsonb),
                              ('types', 'public.\"Größe\"', '{\"x\": \"tab\\tquote\\\"\"}'),
                              ('', '', '{}')) v(k, i, d)"
            ),
            Some(true)
        );
        assert_eq!(
            one::<bool>("SELECT migrate.object_hash(NULL, 'x', '{}') IS NULL"),
            Some(true)
        );
        // Not only because it is declared STRICT.
        Spi::run("ALTER FUNCTION migrate.object_hash(text, text, jsonb) CALLED ON NULL INPUT")
            .unwrap();
        assert_eq!(
            one::<bool>("SELECT migrate.object_hash('x', 'y', NULL) IS NULL"),
            Some(true)
        );
    }

    #[pg_test]
    fn the_bookkeeping_describes_under_the_settings_describe_objects_pins() {
        let pinned: Vec<String> = crate::schema::describe::SETTINGS
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let declared = Spi::get_one::<Vec<String>>(
            "SELECT proconfig FROM pg_proc \
             WHERE oid = 'migrate.describe_objects(text[], oid[], oid[], oid[], oid[], oid[], \
                                                   oid[], oid[], oid[], oid[], boolean)'::regprocedure",
        )
        .unwrap();
        assert_eq!(declared, Some(pinned));
    }

    #[pg_test]
    fn apply_records_the_version_with_its_checksums_and_who_applied_it() {
        let row = Spi::get_two::<String, i32>(
            "SELECT status, statements FROM migrate.apply('1', $$
                CREATE TABLE t1 (id int);
                CREATE INDEX ON t1 (id);$$, 'first')",
        )
        .unwrap();
        assert_eq!(row, (Some("applied".into()), Some(2)));
        assert_eq!(
            one::<bool>(
                "SELECT description = 'first' AND status = 'applied' AND statements = 2
                    AND checksum ~ '^[0-9a-f]{64}$' AND checksum_raw ~ '^[0-9a-f]{64}$'
                    AND checksum_algorithm = 1 AND applied_by = session_user
                    AND applied_role = current_user AND xid = pg_current_xact_id()
                    AND finished_at >= started_at AND retries = 0
                    AND extension_version = (SELECT extversion FROM pg_extension
                                             WHERE extname = 'pg_migrate')
                 FROM migrate.history WHERE version = '1'"
            ),
            Some(true)
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 't1'"),
            1
        );
    }

    #[pg_test]
    fn reapplying_the_same_script_is_a_no_op() {
        Spi::run("SELECT migrate.apply('1', 'CREATE TABLE t1 (id int);')").unwrap();
        let status = one::<String>(
            "SELECT status FROM migrate.apply('1', E'CREATE TABLE t1 (id int);  \\r\\n\\r\\n')",
        );
        assert_eq!(status.as_deref(), Some("already_applied"));
        assert_eq!(count("SELECT count(*) FROM migrate.history"), 1);
    }

    #[pg_test(error = "pg_migrate: version 1 was already applied with a different checksum")]
    fn a_changed_script_under_an_applied_version_is_refused() {
        Spi::run("SELECT migrate.apply('1', 'CREATE TABLE t1 (id int);')").unwrap();
        Spi::run("SELECT migrate.apply('1', 'CREATE TABLE t1 (id bigint);')").unwrap();
    }

    #[pg_test]
    fn versions_sort_naturally_in_status() {
        Spi::run("SET LOCAL migrate.out_of_order = on").unwrap();
        for v in ["10", "2", "1.10", "1.2", "1"] {
            Spi::run(&format!("SELECT migrate.apply('{v}', 'SELECT 1')")).unwrap();
        }
        assert_eq!(
            one::<String>("SELECT string_agg(version, ' ') FROM migrate.status").as_deref(),
            Some("1 1.2 1.10 2 10")
        );
        assert_eq!(
            one::<String>("SELECT migrate.current_version()").as_deref(),
            Some("10")
        );
    }

    #[pg_test]
    fn out_of_order_versions_are_refused_unless_allowed() {
        Spi::run("SELECT migrate.apply('5', 'SELECT 1')").unwrap();
        let (state, message) = failure("SELECT migrate.apply('4', 'SELECT 1')");
        assert_eq!(state, "55000");
        assert!(message.contains("version 4 is lower than the highest applied version 5"));
        Spi::run("SET LOCAL migrate.out_of_order = on").unwrap();
        assert_eq!(
            one::<String>("SELECT status FROM migrate.apply('4', 'SELECT 1')").as_deref(),
            Some("applied")
        );
    }

    #[pg_test]
    fn a_failing_statement_leaves_nothing_behind() {
        let (state, message) = failure(
            "SELECT migrate.apply('1', $$CREATE TABLE kept (id int);\nCREATE TABLE kept (id int);$$)",
        );
        assert_eq!(state, "42P07");
        assert!(
            message.starts_with("pg_migrate: migration 1: statement 2 (line 2): relation"),
            "{message}"
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'kept'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM migrate.history"), 0);
        assert_eq!(count("SELECT count(*) FROM migrate.ddl_log"), 0);
    }

    #[pg_test]
    fn syntax_errors_name_the_statement_and_line() {
        let (state, message) = failure(
            "SELECT migrate.apply('1', $$CREATE TABLE a (id int);
CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT x; SELECT x + 1; END;
CREATE TABLE b (
  id int,
  x intt,,
);$$)",
        );
        assert_eq!(state, "42601");
        assert_eq!(
            message,
            "pg_migrate: migration 1: statement 3 (line 5): syntax error at or near \",\""
        );
    }

    #[pg_test]
    fn scripts_may_not_control_transactions() {
        for (sql, needle) in [
            (
                "SELECT 1; COMMIT;",
                "statement 2 (line 1) is transaction control (COMMIT)",
            ),
            ("SAVEPOINT a;", "transaction control (SAVEPOINT)"),
            (
                "CREATE INDEX CONCURRENTLY ON pg_class (relname);\nROLLBACK;",
                "statement 2 (line 2) is transaction control (ROLLBACK)",
            ),
        ] {
            let (got, message) = failure(&format!(
                "SELECT migrate.apply('1', {})",
                pgrx::spi::quote_literal(sql)
            ));
            assert_eq!(got, "2D000", "{sql}");
            assert!(message.contains(needle), "{sql}: {message}");
        }
        assert_eq!(count("SELECT count(*) FROM migrate.history"), 0);
    }

    #[pg_test]
    fn statements_that_cannot_run_in_a_transaction_are_submitted_as_phases() {
        let status = Spi::get_one::<String>(
            "SELECT status FROM migrate.apply('1', \
             'CREATE TABLE c (id int); CREATE INDEX CONCURRENTLY ON c (id); VACUUM c; \
              INSERT INTO c VALUES (1)')",
        );
        assert_eq!(status, Ok(Some("pending".into())));
        // Nothing has run: the worker starts only after this transaction commits.
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'c'"),
            0
        );
        let kinds = Spi::get_one::<String>(
            "SELECT string_agg(phase || ':' || kind || ':' || state, ' ' ORDER BY phase) \
             FROM migrate.steps WHERE version = '1'",
        );
        assert_eq!(
            kinds,
            Ok(Some(
                "1:transaction:pending 2:top-level:pending 3:top-level:pending \
                 4:transaction:pending"
                    .into()
            ))
        );
    }

    #[pg_test]
    fn bad_arguments_are_refused_before_anything_runs() {
        for (sql, state) in [
            ("SELECT migrate.apply(NULL, 'SELECT 1')", "22004"),
            ("SELECT migrate.apply('', 'SELECT 1')", "22023"),
            ("SELECT migrate.apply('1.x', 'SELECT 1')", "22023"),
            ("SELECT migrate.apply('1', NULL)", "22004"),
            ("SELECT migrate.apply('1', '-- only a comment')", "22023"),
            (
                "SELECT migrate.apply('1', 'SELECT 1', rollback => 'DROP TABL x')",
                "42601",
            ),
        ] {
            assert_eq!(failure(sql).0, state, "{sql}");
        }
        assert_eq!(count("SELECT count(*) FROM migrate.history"), 0);
    }

    #[pg_test]
    fn one_and_one_point_zero_are_one_version() {
        Spi::run("SELECT migrate.apply('1', 'SELECT 1')").unwrap();
        let (state, message) = failure("SELECT migrate.apply('1.0', 'SELECT 1')");
        assert_eq!(state, "55000");
        assert!(message.contains("1.0 is the same version as the recorded 1"));
    }

    #[pg_test]
    fn baseline_covers_lower_versions() {
        Spi::run("SELECT migrate.baseline('5', 'adopted')").unwrap();
        assert_eq!(
            one::<String>("SELECT status FROM migrate.apply('3', 'CREATE TABLE never (id int)')")
                .as_deref(),
            Some("below_baseline")
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'never'"),
            0
        );
        assert_eq!(
            one::<String>("SELECT status FROM migrate.apply('6', 'SELECT 1')").as_deref(),
            Some("applied")
        );
        let (state, _) = failure("SELECT migrate.baseline('7')");
        assert_eq!(state, "55000");
    }

    #[pg_test]
    fn validate_reports_valid_pending_baseline_and_refuses_drift() {
        Spi::run("SELECT migrate.apply('2', 'CREATE TABLE v (id int);')").unwrap();
        assert_eq!(
            one::<String>("SELECT migrate.validate('2', E'\\uFEFFCREATE TABLE v (id int);\\n')")
                .as_deref(),
            Some("valid")
        );
        assert_eq!(
            one::<String>("SELECT migrate.validate('3', 'x')").as_deref(),
            Some("pending")
        );
        let (state, message) =
            failure("SELECT migrate.validate('2', 'CREATE TABLE v (id bigint);')");
        assert_eq!(state, "55000");
        assert!(message.contains("different checksum"));
    }

    #[pg_test]
    fn the_ddl_log_records_creates_and_drops_once_with_the_migration() {
        Spi::run("SELECT migrate.apply('1', 'CREATE TABLE logged (id int, gone int)')").unwrap();
        Spi::run("ALTER TABLE logged DROP COLUMN gone").unwrap();
        Spi::run("DROP TABLE logged").unwrap();
        Spi::run("CREATE TEMP TABLE not_logged (id int)").unwrap();
        assert_eq!(
            one::<String>(
                "SELECT string_agg(concat_ws(' ', event, command_tag, object_identity,
                                             coalesce(migration_version, '-')), ', ' ORDER BY id)
                 FROM migrate.ddl_log"
            )
            .as_deref(),
            Some(
                "ddl_command_end CREATE TABLE public.logged 1, \
                 sql_drop ALTER TABLE public.logged.gone -, \
                 ddl_command_end ALTER TABLE public.logged -, \
                 sql_drop DROP TABLE public.logged -"
            )
        );
    }

    #[pg_test]
    fn non_admins_may_not_apply_or_baseline() {
        Spi::run("CREATE ROLE pgm_test_app").unwrap();
        Spi::run("SET LOCAL ROLE pgm_test_app").unwrap();
        for sql in [
            "SELECT migrate.apply('1', 'SELECT 1')",
            "SELECT migrate.baseline('1')",
        ] {
            let (state, message) = failure(sql);
            assert_eq!(state, "42501", "{sql}");
            assert!(
                message.contains("role \"pgm_test_app\" may not"),
                "{message}"
            );
        }
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count("SELECT count(*) FROM migrate.history"), 0);
    }

    #[pg_test]
    fn only_the_intended_functions_are_executable_by_public() {
        assert_eq!(
            one::<String>(
                "SELECT string_agg(p.proname, ' ' ORDER BY p.proname) FROM pg_proc p
                 WHERE p.pronamespace = 'migrate'::regnamespace
                   AND has_function_privilege('public', p.oid, 'EXECUTE')"
            )
            .as_deref(),
            // apply, baseline, cancel, retry, verify and the backfill functions check
            // migrate_admin membership themselves, so that a non-member gets an error that
            // says what to do; dry_run and assert_safe run the script with the caller's own
            // rights. cancel is there twice: a migration's, a backfill's. expand, contract
            // and abort check membership too (a dry run of expand is everyone's);
            // writes_version is evaluated by every bridged write, whoever the writer;
            // may_read_as and quoted_data (twice: a text, keys) by the views that withhold
            // what quotes rows; error_counters by migrate.error_counts. accept and reject
            // check membership and the submitter's privileges themselves. replicas checks
            // pg_read_all_stats; wait_replicas reads through it; commit_positions and
            // kept_commits read history's positions, which everyone reads; note_if_standby
            // only says where it runs.
            Some(
                "abort accept all_objects apply assert_safe backfill baseline cancel cancel changes \
                 commit_positions contract current_version describe describe_objects \
                 describe_table_objects described_relations description_of diff dry_run \
                 error_counters expand extend fingerprint fingerprint_of hash_sum kept_commits lint \
                 may_read_as note_if_standby object_hash pause quoted_data quoted_data \
                 record_schema recorded_schema reject replicas resume retry rule_catalog schema_is_described \
                 validate verify \
                 version_key wait wait_replicas window_sessions window_writes writes_version"
            )
        );
        assert_eq!(
            one::<bool>(
                "SELECT has_column_privilege('public', 'migrate.history', 'checksum', 'SELECT')
                    AND NOT has_column_privilege('public', 'migrate.history', 'script', 'SELECT')
                    AND has_table_privilege('public', 'migrate.status', 'SELECT')
                    AND NOT has_table_privilege('public', 'migrate.history', 'INSERT,UPDATE,DELETE,TRUNCATE')
                    AND NOT has_table_privilege('public', 'migrate.ddl_log', 'SELECT,INSERT,UPDATE,DELETE')
                    AND has_table_privilege('public', 'migrate.schema_objects', 'SELECT')
                    AND NOT has_table_privilege('public', 'migrate.schema_objects', 'INSERT,UPDATE,DELETE,TRUNCATE')
                    AND NOT has_table_privilege('public', 'migrate.schema_state', 'INSERT,UPDATE,DELETE,TRUNCATE')
                    AND NOT has_table_privilege('public', 'migrate.schema_queue', 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE')
                    AND has_table_privilege('migrate_admin', 'migrate.ddl_log', 'SELECT')
                    AND has_column_privilege('public', 'migrate.history', 'fingerprint', 'SELECT')
                    AND NOT has_column_privilege('public', 'migrate.history', 'verification_report', 'SELECT')
                    AND NOT has_column_privilege('public', 'migrate.history', 'verify_script', 'SELECT')
                    AND NOT has_function_privilege('public', 'migrate.drift()', 'EXECUTE')
                    AND has_function_privilege('migrate_admin', 'migrate.drift()', 'EXECUTE')
                    AND NOT has_function_privilege('public', 'migrate.constraint_violations_query(oid)', 'EXECUTE')
                    AND NOT has_table_privilege('migrate_admin', 'migrate.history', 'INSERT')
                    AND NOT has_table_privilege('public', 'migrate.backfills', 'SELECT')
                    AND NOT has_table_privilege('public', 'migrate.backfill_progress', 'SELECT')
                    AND has_table_privilege('migrate_admin', 'migrate.backfill_progress', 'SELECT')
                    AND NOT has_table_privilege('migrate_admin', 'migrate.backfills', 'UPDATE')"
            ),
            Some(true)
        );
    }

    #[pg_test]
    fn the_event_triggers_are_installed_and_enabled() {
        assert_eq!(
            one::<String>(
                "SELECT string_agg(evtname || ':' || evtenabled::text, ' ' ORDER BY evtname)
                 FROM pg_event_trigger"
            )
            .as_deref(),
            Some(
                "migrate_ddl_log:O migrate_ddl_log_drop:O migrate_guard:O migrate_guard_drop:O \
                 migrate_guard_rewrite:O migrate_window_privileges:O"
            )
        );
    }

    #[pg_test]
    fn backfill_clauses_are_judged_by_the_grammar() {
        use crate::backfill::clauses::{check_set, check_where};
        assert_eq!(
            check_set("a = 1, \"B c\" = d * 2, (e, f) = (1, 2) -- note").unwrap(),
            ["a", "B c", "e", "f"]
        );
        for bad in [
            "a = ",
            "a = 1 WHERE true",
            "a = 1 FROM t",
            "a = 1 RETURNING *",
            "a = 1; b",
        ] {
            assert_eq!(
                check_set(bad).unwrap_err().code,
                pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                "{bad}"
            );
        }
        assert!(check_where("a IS NULL AND (b > 1 OR c) -- why").is_ok());
        for bad in [
            "true) OR (true",
            "a, b",
            "a AS x",
            "a FROM t",
            "a ORDER BY 1",
            "/* a",
            "a; b",
            "",
        ] {
            assert!(check_where(bad).is_err(), "{bad}");
        }
    }

    #[pg_test]
    fn only_a_plain_call_is_a_backfill_phase() {
        use crate::migration::script::Kind;
        let kinds = |sql: &str| -> Vec<Kind> {
            crate::migration::parse::parse(sql)
                .unwrap()
                .into_iter()
                .map(|(s, _)| s.kind)
                .collect()
        };
        assert_eq!(
            kinds("SELECT migrate.backfill('t', 'a = 1'); SELECT backfill('t', 'a = 1'); \
                   SELECT 1, migrate.backfill('t', 'a = 1'); SELECT migrate.backfill('t', 'a = 1') FROM x"),
            [Kind::Backfill, Kind::Transactional, Kind::Transactional, Kind::Transactional]
        );
    }

    /// A script far longer than one parsing piece: the statements, their places and lines
    /// are those of one whole parse, also with a BEGIN ATOMIC body across a piece boundary
    /// and a syntax error many pieces in.
    #[pg_test]
    fn long_scripts_parse_in_pieces_as_one_whole() {
        let mut script = String::new();
        for i in 0..3000 {
            script.push_str(&format!("CREATE TABLE t{i} (id int);\n"));
        }
        // Its body's semicolons fall on both sides of a piece boundary.
        script.push_str("CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC\n");
        for _ in 0..2000 {
            script.push_str("SELECT x;\n");
        }
        script.push_str("END;\nCREATE TABLE last (id int)");
        let whole = crate::migration::parse::parse(&script).unwrap();
        assert_eq!(whole.len(), 3002);
        let (st, _) = &whole[3000];
        assert_eq!(
            (st.number, st.line, st.tag.as_str()),
            (3001, 3001, "CREATE FUNCTION")
        );
        assert!(st.text(&script).ends_with("SELECT x;\nEND"));
        let (st, _) = &whole[3001];
        assert_eq!(
            (st.line, st.text(&script)),
            (5003, "CREATE TABLE last (id int)")
        );

        let broken = script.replace(
            "CREATE TABLE t2500 (id int)",
            "CREATE TABLE t2500 (id intt,,)",
        );
        let error = crate::migration::parse::parse(&broken).unwrap_err();
        assert_eq!((error.statement, error.statement_line), (2501, 2501));
        assert_eq!(
            crate::migration::script::line_at(&broken, error.offset.unwrap()),
            2501,
            "{error:?}"
        );
        assert!(
            broken[error.offset.unwrap()..].starts_with(",)"),
            "{error:?}"
        );
    }

    // The parse-tree translation (guard::parsetree over pg::catalog): what the rules are given
    // for a statement, from its real parse tree and the live catalogs.

    use crate::guard::command::{Action, Command, ConstraintKind, LockMode, RelKind};

    fn command(sql: &str) -> Command {
        let trees = crate::migration::parse::parse(sql).expect(sql);
        assert_eq!(trees.len(), 1, "{sql}");
        crate::guard::parsetree::command(trees[0].1)
    }

    fn lock(sql: &str) -> Option<LockMode> {
        let trees = crate::migration::parse::parse(sql).expect(sql);
        crate::guard::parsetree::lock_needed(trees[0].1)
    }

    fn shop() {
        Spi::run(
            "CREATE TABLE orders (id bigint PRIMARY KEY, total int, note text);
             INSERT INTO orders SELECT g, g, 'x' FROM generate_series(1, 5000) g;
             ANALYZE orders;
             CREATE TABLE lines (id bigint, order_id bigint);",
        )
        .unwrap();
    }

    #[pg_test]
    fn create_index_names_its_table_with_size_and_columns() {
        shop();
        let Command::CreateIndex {
            table,
            concurrent,
            columns,
            unique,
            only,
            ..
        } = command("CREATE UNIQUE INDEX CONCURRENTLY ON orders (total, note)")
        else {
            panic!("not a CreateIndex");
        };
        assert_eq!(table.name, "public.orders");
        assert_eq!(table.kind, RelKind::Table);
        assert!(table.new, "created in this transaction");
        assert!(table.size_known);
        assert!((table.rows - 5000.0).abs() < 1.0, "{}", table.rows);
        assert!(concurrent && unique && !only);
        assert_eq!(columns.as_deref(), Some("(total, note)"));
        assert_eq!(
            lock("CREATE INDEX CONCURRENTLY ON orders (total)"),
            Some(LockMode::ShareUpdateExclusive)
        );
        assert_eq!(
            lock("CREATE INDEX ON orders (total)"),
            Some(LockMode::Share)
        );
    }

    // A table created in the test's own transaction is new, and the rules judge nothing of
    // it: these read pg_migrate's own tables, created (and committed) before the test ran.
    // The statements are only read, never run.

    #[pg_test]
    fn alter_table_actions_carry_what_the_catalogs_prove() {
        let Command::AlterTable { table, actions } = command(
            "ALTER TABLE migrate.history \
               ADD COLUMN at timestamptz DEFAULT clock_timestamp(), \
               ADD COLUMN n int DEFAULT 0, \
               ALTER COLUMN retries TYPE bigint, \
               ALTER COLUMN statements SET NOT NULL, \
               ALTER COLUMN description SET NOT NULL, \
               ADD CONSTRAINT fk FOREIGN KEY (version) REFERENCES migrate.step_records (version) NOT VALID",
        ) else {
            panic!("not an AlterTable");
        };
        assert_eq!(table.name, "migrate.history");
        assert!(!table.new);
        assert_eq!(actions.len(), 6, "{actions:?}");
        let Action::AddColumn(volatile) = &actions[0] else {
            panic!("{:?}", actions[0])
        };
        assert_eq!(
            (volatile.name.as_str(), volatile.volatile_default),
            ("at", Some(true))
        );
        let Action::AddColumn(constant) = &actions[1] else {
            panic!("{:?}", actions[1])
        };
        assert_eq!(constant.volatile_default, Some(false));
        assert!(
            matches!(&actions[2], Action::AlterType { column, rewrites: Some(true), .. } if column == "retries"),
            "{:?}",
            actions[2]
        );
        // statements is NOT NULL already; description is not, and nothing proves it.
        assert!(
            matches!(&actions[3], Action::SetNotNull { column, proven: true, .. } if column == "statements"),
            "{:?}",
            actions[3]
        );
        assert!(
            matches!(&actions[4], Action::SetNotNull { column, proven: false, .. } if column == "description"),
            "{:?}",
            actions[4]
        );
        let Action::AddConstraint {
            kind,
            not_valid,
            references,
            ..
        } = &actions[5]
        else {
            panic!("{:?}", actions[5])
        };
        assert_eq!(*kind, ConstraintKind::ForeignKey);
        assert!(*not_valid);
        assert_eq!(
            references.as_ref().map(|r| r.name.as_str()),
            Some("migrate.step_records")
        );
        assert_eq!(
            lock("ALTER TABLE migrate.history ADD COLUMN x int"),
            Some(LockMode::AccessExclusive)
        );
    }

    #[pg_test]
    fn a_type_change_that_keeps_the_bytes_does_not_rewrite() {
        let Command::AlterTable { actions, .. } =
            command("ALTER TABLE migrate.history ALTER COLUMN checksum TYPE varchar")
        else {
            panic!("not an AlterTable");
        };
        assert!(
            matches!(
                &actions[0],
                Action::AlterType {
                    rewrites: Some(false),
                    ..
                }
            ),
            "{actions:?}"
        );
        // Created in this transaction: nothing to judge, whatever the change.
        Spi::run("CREATE TABLE t (v varchar(10))").unwrap();
        let Command::AlterTable { actions, .. } = command("ALTER TABLE t ALTER COLUMN v TYPE int")
        else {
            panic!("not an AlterTable");
        };
        assert!(matches!(&actions[0], Action::Other), "{actions:?}");
    }

    #[pg_test]
    fn drops_truncates_and_renames_resolve_their_relations() {
        shop();
        let Command::DropTable { tables } = command("DROP TABLE orders, lines") else {
            panic!("not a DropTable");
        };
        let names: Vec<_> = tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["public.orders", "public.lines"]);
        let Command::Truncate { tables, cascade } = command("TRUNCATE orders CASCADE") else {
            panic!("not a Truncate");
        };
        assert!(cascade);
        assert_eq!(tables[0].name, "public.orders");
        let Command::RenameColumn {
            rel,
            column,
            new_name,
        } = command("ALTER TABLE orders RENAME COLUMN note TO remark")
        else {
            panic!("not a RenameColumn");
        };
        assert_eq!(
            (rel.name.as_str(), column.as_str(), new_name.as_str()),
            ("public.orders", "note", "remark")
        );
        assert!(
            matches!(command("VACUUM FULL orders"), Command::VacuumFull { tables } if tables.len() == 1)
        );
        assert!(matches!(
            command("DROP INDEX CONCURRENTLY orders_pkey"),
            Command::DropIndex { concurrent: true, indexes } if indexes[0].1.name == "public.orders"
        ));
    }

    #[pg_test]
    fn statements_no_rule_concerns_are_other_and_unknown_names_resolve_to_nothing() {
        assert_eq!(command("SELECT 1"), Command::Other);
        assert_eq!(command("CREATE TABLE fresh (id int)"), Command::Other);
        // A table that does not exist: no facts, and the command is still read.
        let Command::DropTable { tables } = command("DROP TABLE IF EXISTS nowhere") else {
            panic!("not a DropTable");
        };
        assert!(tables.is_empty(), "{tables:?}");
    }

    #[pg_test]
    fn worker_settings_are_the_databases_every_roles_and_the_bootstrap_superusers() {
        use crate::pg::nodes::{worker_settings_given, SettingsFor};
        Spi::run("CREATE ROLE settings_other").unwrap();
        let here =
            one::<pg_sys::Oid>("SELECT oid FROM pg_database WHERE datname = current_database()")
                .unwrap();
        let bootstrap =
            one::<String>("SELECT quote_ident(rolname) FROM pg_roles WHERE oid = 10").unwrap();
        let given = |sql: &str| {
            let parsed = crate::migration::parse::parse(sql).expect(sql);
            worker_settings_given(parsed[0].1)
        };
        let this = Some(SettingsFor::Database(here));
        let every = Some(SettingsFor::EveryDatabase);
        let db = one::<String>("SELECT quote_ident(current_database())").unwrap();
        for (sql, expected) in [
            (format!("ALTER DATABASE {db} SET work_mem = '1MB'"), this),
            (format!("ALTER DATABASE {db} RESET ALL"), this),
            (
                "ALTER DATABASE no_such_database SET work_mem = '1MB'".into(),
                None,
            ),
            ("ALTER ROLE ALL SET work_mem = '1MB'".into(), every),
            (
                format!("ALTER ROLE ALL IN DATABASE {db} SET work_mem = '1MB'"),
                this,
            ),
            (
                format!("ALTER ROLE {bootstrap} SET work_mem = '1MB'"),
                every,
            ),
            (format!("ALTER USER {bootstrap} RESET ALL"), every),
            (
                "ALTER ROLE settings_other SET work_mem = '1MB'".into(),
                None,
            ),
            (
                format!("ALTER ROLE settings_other IN DATABASE {db} RESET work_mem"),
                None,
            ),
            (format!("ALTER DATABASE {db} RENAME TO elsewhere"), None),
        ] {
            assert_eq!(given(&sql), expected, "{sql}");
        }
        // The role this test runs as, named as CURRENT_USER: the workers' only when it is the
        // bootstrap superuser.
        let current_is_bootstrap =
            one::<bool>("SELECT current_user::regrole = 10::regrole").unwrap();
        assert_eq!(
            given("ALTER ROLE CURRENT_USER SET work_mem = '1MB'"),
            if current_is_bootstrap { every } else { None }
        );
    }
}
