//! `migrate.ddl_log`: every DDL command in the database, from any session, recorded by a
//! `ddl_command_end` trigger (what was created or altered) and a `sql_drop` trigger (what was
//! dropped). `pg_event_trigger_ddl_commands()` does not report drops, so nothing is counted
//! twice; of the dropped objects only the ones the command named and those its CASCADE reached
//! are logged, not the row types, TOAST tables and indexes that go with a table, nor the
//! members of an extension. Temporary objects and the members of extensions being installed
//! are not schema drift and are skipped.

use crate::errors::OrBookkeeping;
use crate::pg::event_trigger;
use pgrx::prelude::*;

/// Columns every log row gets from the session; `$1` is the role, `$2` the migration.
const WHO: &str = "session_user, $1, current_setting('application_name'), inet_client_addr(), \
     pg_backend_pid(), pg_current_xact_id(), $2";

const COLUMNS: &str = "event, command_tag, object_type, schema_name, object_identity, \
     session_user_name, current_user_name, application_name, client_addr, backend_pid, xid, \
     migration_version";

#[pg_extern(sql = "
    CREATE FUNCTION migrate.log_ddl_command() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn log_ddl_command(fcinfo: pg_sys::FunctionCallInfo) {
    let event = event_trigger::event(fcinfo);
    if event.tag == "ALTER EXTENSION" {
        // An update of pg_migrate may end a worker's wait for it (stale objects): look again.
        crate::pg::shmem::wake_at_commit();
    }
    let collected = event_trigger::collected();
    queue(
        "SELECT c.classid, c.objid, NULL, NULL FROM pg_catalog.pg_event_trigger_ddl_commands() c \
         WHERE NOT c.in_extension AND c.schema_name IS DISTINCT FROM 'pg_temp' \
           AND c.classid IS NOT NULL",
        event.renames(),
        collected.recurses,
        collected.objects,
    );
    write(&format!(
        "INSERT INTO migrate.ddl_log ({COLUMNS}) SELECT 'ddl_command_end', c.command_tag, c.object_type, c.schema_name, \
           c.object_identity, {WHO} \
         FROM pg_catalog.pg_event_trigger_ddl_commands() c \
         WHERE NOT c.in_extension AND c.schema_name IS DISTINCT FROM 'pg_temp'"
    ), None);
}

#[pg_extern(sql = "
    CREATE FUNCTION migrate.log_sql_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
")]
fn log_sql_drop(fcinfo: pg_sys::FunctionCallInfo) {
    let event = event_trigger::event(fcinfo);
    // Everything an extension owns comes back flagged `normal`; the extension alone says it.
    let cascaded = if event.tag == "DROP EXTENSION" {
        "false"
    } else {
        // A view's "_RETURN" rule is the view itself, which is logged already.
        "d.normal AND NOT (d.object_type = 'rule' AND d.address_names[3] = '_RETURN')"
    };
    // Every object dropped, not only those logged: the recorded schema has rows for indexes
    // and constraints that went with a table.
    // A dropped column default or domain constraint was part of its table's or domain's
    // description: those are queued too, found by the names the drop reports.
    queue(
        "SELECT o.classid, o.objid, o.object_type, o.object_identity \
         FROM pg_catalog.pg_event_trigger_dropped_objects() d, LATERAL (VALUES \
           (d.classid, d.objid, d.object_type, d.object_identity), \
           ('pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, \
            CASE WHEN d.object_type = 'default value' THEN \
              pg_catalog.to_regclass(pg_catalog.quote_ident(d.address_names[1]) \
                OPERATOR(pg_catalog.||) '.' \
                OPERATOR(pg_catalog.||) pg_catalog.quote_ident(d.address_names[2]))::pg_catalog.oid END, \
            NULL, NULL), \
           ('pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid, \
            CASE WHEN d.object_type = 'domain constraint' THEN \
              pg_catalog.to_regtype(d.address_names[1])::pg_catalog.oid END, NULL, NULL)) \
           AS o(classid, objid, object_type, object_identity) \
         WHERE NOT d.is_temporary",
        false,
        true,
        Vec::new(),
    );
    write(&format!(
        "INSERT INTO migrate.ddl_log ({COLUMNS}) SELECT 'sql_drop', $3, d.object_type, d.schema_name, d.object_identity, {WHO} \
         FROM pg_catalog.pg_event_trigger_dropped_objects() d \
         WHERE (d.original OR {cascaded}) AND NOT d.is_temporary"
    ), Some(&event.tag));
}

/// Queues the objects `select` lists (classid, objid, and for a dropped object its type and
/// identity), and `more`, to be described again in the recorded schema
/// (`migrate.schema_queue`), by the migration that touched them or, for DDL outside
/// migrations, the next one.
fn queue(select: &str, renamed: bool, recurses: bool, more: Vec<(pg_sys::Oid, pg_sys::Oid)>) {
    let migration = crate::migration::running::running().map(|r| r.version);
    let (classes, oids): (Vec<pg_sys::Oid>, Vec<pg_sys::Oid>) = more.into_iter().unzip();
    let insert = format!(
        "INSERT INTO migrate.schema_queue (classid, objid, object_type, object_identity, \
           renamed, recurses, migration_version) \
         SELECT o.classid, o.objid, o.object_type, o.object_identity, $1, $2, $3 \
         FROM ({select} UNION ALL \
               SELECT c, o, NULL, NULL FROM ROWS FROM (pg_catalog.unnest($4::oid[]), \
                                                       pg_catalog.unnest($5::oid[])) AS x(c, o)) \
           AS o(classid, objid, object_type, object_identity) \
         WHERE o.objid IS NOT NULL"
    );
    crate::pg::spi::kept_as_owner(
        &insert,
        &[
            renamed.into(),
            recurses.into(),
            migration.into(),
            classes.into(),
            oids.into(),
        ],
        |_| Ok(()),
    )
    .or_bookkeeping("write migrate.schema_queue");
}

/// `tag`, the command's, is `$3` where `insert` needs it.
fn write(insert: &str, tag: Option<&str>) {
    let role = crate::pg::identity::current_user_name();
    let migration = crate::migration::running::running().map(|r| r.version);
    let mut args = vec![role.into(), migration.into()];
    args.extend(tag.map(Into::into));
    crate::pg::spi::kept_as_owner(insert, &args, |_| Ok(()))
        .or_bookkeeping("write migrate.ddl_log");
}

/// Records guard findings let through (by an override, or because the guard only warns) in
/// the DDL log, with who let them through: an override used is an audit event.
pub fn record_guard(event: &str, tag: &str, findings: &[(&str, Option<String>)]) {
    if findings.is_empty() {
        return;
    }
    let role = crate::pg::identity::current_user_name();
    let migration = crate::migration::running::running().map(|r| r.version);
    let rules: Vec<String> = findings.iter().map(|(rule, _)| rule.to_string()).collect();
    let subjects: Vec<Option<String>> = findings.iter().map(|(_, s)| s.clone()).collect();
    let insert = format!(
        "INSERT INTO migrate.ddl_log ({COLUMNS}, guard_rule) \
         SELECT $3, $4, 'table', NULL, s.subject, {WHO}, s.rule \
         FROM ROWS FROM (pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[])) \
           AS s(rule, subject)"
    );
    crate::pg::identity::as_owner(|| {
        Spi::run_with_args(
            &insert,
            &[
                role.into(),
                migration.into(),
                event.into(),
                tag.into(),
                rules.into(),
                subjects.into(),
            ],
        )
    })
    .or_bookkeeping("write migrate.ddl_log");
}
