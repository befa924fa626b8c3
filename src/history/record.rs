//! The recorded schema (`sql/record.sql`), from the Rust side: brought up to date before a
//! migration runs, and with what it touched once it has run. Both are bookkeeping and run as
//! the extension's owner; neither describes more than the objects DDL touched, but for the
//! once-per-database recording of the whole schema, which happens before a migration takes
//! any lock of its own.

use crate::errors::{OrBookkeeping, OrRaise, Problem};
use crate::migration::limits::Limits;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

/// What a migration changed in the recorded schema, and the fingerprint after it.
pub struct Recorded {
    pub changes: Option<JsonB>,
    pub fingerprint: Option<String>,
}

/// Runs `f`, which describes objects, under the migration's limits (`migrate.lock_timeout`,
/// `migrate.statement_timeout`), as the migration's own statements run: printing a default or
/// a view's definition opens the tables it names, which another session may hold, and
/// waiting longer would hold the applier lock (and, after the migration's DDL, its locks) for
/// as long as that session pleases. `then` says what to do after a lock timeout.
fn bounded<T>(what: &str, then: &str, f: impl FnOnce() -> T) -> T {
    let limits = Limits::from_settings();
    let caught = match crate::pg::subxact::run(|| crate::migration::limits::with_limits(limits, f))
    {
        Ok(value) => return value,
        Err(caught) => caught,
    };
    if caught.code != PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
        caught.reraise();
    }
    Problem::new(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("could not {what}: an object it describes is locked by another session"),
        format!(
            "Describing an object can open the tables it names; one was locked for longer \
             than migrate.lock_timeout ({} ms): {}",
            limits.lock_timeout_ms, caught.message
        ),
        format!(
            "Find the session holding the lock (pg_locks, pg_stat_activity); {then} once it \
             has finished."
        ),
    )
    .raise()
}

const APPLY_AGAIN: &str = "nothing was applied: apply again";

/// Before a migration: DDL outside migrations since the last one is recorded first (or the
/// whole schema, where nothing of this database is recorded yet), so that the migration's
/// changes are its own.
pub fn drift() {
    bounded(
        "record the schema before the migration",
        APPLY_AGAIN,
        || {
            if !is_recorded() {
                whole_schema();
            // Most migrations follow no DDL from outside them: nothing to re-describe.
            } else if drift_queued() {
                record_queued(None);
            }
        },
    )
}

/// After a migration's DDL (in its last transaction): re-describes what it touched.
pub fn changes(version: &str, then: &str) -> Recorded {
    bounded("record what the migration changed", then, || {
        record_queued(Some(version))
    })
}

/// Where the recorded rows were recorded: `migrate.schema_state`'s server, database and
/// major version.
const RECORDED_WHERE: &str =
    "SELECT s.system_identifier, s.database_oid, s.server_major FROM migrate.schema_state s";

type RecordedWhere = (Option<i64>, Option<pg_sys::Oid>, Option<i32>);

fn recorded_where(row: pgrx::spi::SpiHeapTupleData) -> Result<RecordedWhere, pgrx::spi::Error> {
    Ok((row.get(1)?, row.get(2)?, row.get(3)?))
}

/// Whether rows recorded `there` belong to this database on this server: their OIDs are
/// this database's, not a restored dump's nor from before pg_upgrade; anywhere else the
/// next migration records the whole schema afresh.
fn recorded_here(there: Option<RecordedWhere>) -> bool {
    there
        == Some((
            Some(crate::pg::process::system_identifier()),
            Some(crate::pg::process::database()),
            Some(crate::pg::MAJOR as i32),
        ))
}

/// `migrate.schema_is_recorded()`: whether the recorded rows belong to this database on
/// this server (`recorded_here`).
#[pg_extern(stable)]
pub fn schema_is_recorded() -> bool {
    recorded_here(
        crate::pg::spi::kept_row(RECORDED_WHERE, &[], recorded_where)
            .or_bookkeeping("read migrate.schema_state"),
    )
}

/// `schema_is_recorded`, for the bookkeeping: as the tables' owner, after everything the
/// migration wrote (the whole schema, recorded a moment ago).
fn is_recorded() -> bool {
    recorded_here(
        crate::pg::spi::kept_as_owner(RECORDED_WHERE, &[], |row| {
            row.map(recorded_where).transpose()
        })
        .or_bookkeeping("read migrate.schema_state"),
    )
}

fn drift_queued() -> bool {
    crate::pg::spi::kept_value_as_owner::<bool>(
        "SELECT EXISTS (SELECT FROM migrate.schema_queue q WHERE q.migration_version IS NULL)",
        &[],
    )
    .or_bookkeeping("read migrate.schema_queue")
    .unwrap_or(false)
}

/// Records the whole schema afresh, and returns its fingerprint.
fn whole_schema() -> Option<String> {
    crate::pg::spi::kept_value_as_owner("SELECT migrate.record_whole_schema()", &[])
        .or_bookkeeping("record the schema")
}

/// A recorded row a migration replaced or removed.
struct OldRow {
    kind: String,
    identity: String,
    description: String,
    hash: Vec<u8>,
}

/// A description of an object as it is now.
struct NewRow {
    kind: String,
    identity: String,
    description: String,
    obj_class: pg_sys::Oid,
    obj_oid: pg_sys::Oid,
    rel_oid: Option<pg_sys::Oid>,
}

/// Deletes the rows of `migrate.schema_objects` (alias `o`) that `which` (a USING and WHERE
/// clause) picks, and returns them.
fn old_rows(which: &str, args: &[pgrx::datum::DatumWithOid]) -> Vec<OldRow> {
    let sql = format!(
        "DELETE FROM migrate.schema_objects o {which} \
         RETURNING o.kind, o.identity, o.description::text, o.hash"
    );
    crate::pg::spi::kept_rows_as_owner(&sql, args, |row| {
        Ok(OldRow {
            kind: row.get(1)?.unwrap_or_default(),
            identity: row.get(2)?.unwrap_or_default(),
            description: row.get(3)?.unwrap_or_default(),
            hash: row.get(4)?.unwrap_or_default(),
        })
    })
    .or_bookkeeping("write migrate.schema_objects")
}

/// The OIDs in order, None for none (as `array_agg` gives them).
fn oids(set: &std::collections::HashSet<pg_sys::Oid>) -> Option<Vec<pg_sys::Oid>> {
    let mut oids: Vec<pg_sys::Oid> = set.iter().copied().collect();
    oids.sort_by_key(|oid| oid.to_u32());
    (!oids.is_empty()).then_some(oids)
}

/// Re-describes what the queued DDL of `version` (None: DDL outside migrations) touched,
/// replacing their rows in `migrate.schema_objects`. Returns what changed (the differences
/// between those rows before and after) and the fingerprint after; where nothing of this
/// database was recorded, the whole schema is recorded and what changed is unknown.
fn record_queued(version: Option<&str>) -> Recorded {
    use crate::history::touched::{self, Queued};
    use crate::pg::touched::Object;
    use std::collections::HashMap;
    if !is_recorded() {
        return Recorded {
            changes: None,
            fingerprint: whole_schema(),
        };
    }
    const QUEUED: &str = "RETURNING q.classid, q.objid, q.renamed, q.recurses, \
                          q.object_type, q.object_identity";
    let take = |sql: &str, args: &[pgrx::datum::DatumWithOid]| {
        crate::pg::spi::kept_rows_as_owner(sql, args, |row| {
            Ok((
                (
                    row.get::<pg_sys::Oid>(1)?.unwrap_or_default(),
                    row.get::<pg_sys::Oid>(2)?.unwrap_or_default(),
                ),
                Queued {
                    renamed: row.get(3)?.unwrap_or_default(),
                    recurses: row.get(4)?.unwrap_or_default(),
                    object_type: row.get(5)?,
                    object_identity: row.get(6)?,
                },
            ))
        })
        .or_bookkeeping("write migrate.schema_queue")
    };
    let rows = match version {
        Some(v) => take(
            &format!("DELETE FROM migrate.schema_queue q WHERE q.migration_version = $1 {QUEUED}"),
            &[v.into()],
        ),
        None => take(
            &format!(
                "DELETE FROM migrate.schema_queue q WHERE q.migration_version IS NULL {QUEUED}"
            ),
            &[],
        ),
    };
    let mut queued: HashMap<Object, Queued> = HashMap::new();
    for (object, q) in rows {
        queued.entry(object).or_default().merge(q);
    }
    if queued.is_empty() {
        let fingerprint = crate::pg::spi::kept_value_as_owner(
            "SELECT s.fingerprint FROM migrate.schema_state s",
            &[],
        )
        .or_bookkeeping("read migrate.schema_state");
        return Recorded {
            changes: Some(JsonB(serde_json::json!([]))),
            fingerprint,
        };
    }

    let tables: Vec<pg_sys::Oid> = queued
        .keys()
        .filter(|(classid, _)| *classid == pg_sys::RelationRelationId)
        .map(|(_, oid)| *oid)
        .collect();
    // The partitions recorded under a touched table: DETACH PARTITION reports the parent
    // alone, and the catalogs no longer link the two.
    let detached = if tables.is_empty() {
        vec![]
    } else {
        crate::pg::spi::kept_rows_as_owner(
            "SELECT o.obj_oid FROM migrate.schema_objects p \
             JOIN migrate.schema_objects o ON o.description ->> 'partition_of' = p.identity \
                                          AND o.kind = 'tables' \
             WHERE p.obj_oid = ANY($1) AND p.obj_class = 'pg_class'::regclass \
               AND p.kind = 'tables'",
            &[tables.into()],
            |row| Ok(row.get::<pg_sys::Oid>(1)?.unwrap_or_default()),
        )
        .or_bookkeeping("read migrate.schema_objects")
    };
    let stale = touched::stale(&queued, &detached, &touched::Live);
    let wanted = touched::to_describe(&stale, &touched::Live);

    let sorted = |set: &std::collections::HashSet<pg_sys::Oid>| oids(set).unwrap_or_default();
    let mut described: Vec<NewRow> = crate::pg::identity::as_owner(|| {
        crate::pg::spi::with_current_snapshot(|| {
            crate::schema::describe::tables_as_described(
                sorted(&wanted.relations),
                sorted(&wanted.indexes),
                sorted(&wanted.constraints),
            )
        })
    })
    .into_iter()
    .map(|d| NewRow {
        kind: d.kind.to_string(),
        identity: d.identity,
        description: d.description,
        obj_class: d.obj_class,
        obj_oid: d.obj_oid,
        rel_oid: d.rel_oid,
    })
    .collect();
    let others = [
        &wanted.triggers,
        &wanted.policies,
        &wanted.types,
        &wanted.functions,
        &wanted.schemas,
        &wanted.extensions,
    ];
    if others.iter().any(|set| !set.is_empty()) {
        described.extend(
            crate::pg::spi::kept_rows_as_owner(
                "SELECT d.kind, d.identity, d.description::text, d.obj_class, d.obj_oid, \
                   d.rel_oid \
                 FROM migrate.describe_objects(NULL, NULL, NULL, NULL, \
                                               $1, $2, $3, $4, $5, $6) d",
                &others.map(|set| oids(set).into()),
                |row| {
                    Ok(NewRow {
                        kind: row.get(1)?.unwrap_or_default(),
                        identity: row.get(2)?.unwrap_or_default(),
                        description: row.get(3)?.unwrap_or_default(),
                        obj_class: row.get(4)?.unwrap_or_default(),
                        obj_oid: row.get(5)?.unwrap_or_default(),
                        rel_oid: row.get(6)?,
                    })
                },
            )
            .or_bookkeeping("describe the objects the migration touched"),
        );
    }

    // The rows they replace: of the objects touched (dropped ones included) and of those
    // re-described; of the tables re-described whole and of dropped tables (whatever went
    // with them); and rows found by what they are, not by OID: those of dropped objects (an
    // index REINDEX CONCURRENTLY rebuilt has an OID the recorded row does not know), and
    // any row under an identity a re-described object now has.
    // Each key once, joined (not `= ANY` of two arrays, which a btree before PostgreSQL 17
    // searches for every pair of their elements).
    let (classes, objects): (Vec<pg_sys::Oid>, Vec<pg_sys::Oid>) = stale
        .keys()
        .copied()
        .chain(described.iter().map(|n| (n.obj_class, n.obj_oid)))
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .unzip();
    let mut old = old_rows(
        "USING unnest($1::oid[], $2::oid[]) AS k(classid, objid) \
         WHERE o.obj_oid = k.objid AND o.obj_class = k.classid",
        &[classes.into(), objects.into()],
    );
    let owners: Vec<pg_sys::Oid> = stale
        .keys()
        .filter(|(classid, oid)| {
            *classid == pg_sys::RelationRelationId && crate::pg::touched::relation(*oid).is_none()
        })
        .map(|(_, oid)| *oid)
        .chain(wanted.whole.iter().copied())
        .collect();
    if !owners.is_empty() {
        old.extend(old_rows("WHERE o.rel_oid = ANY($1)", &[owners.into()]));
    }
    let (kinds, identities): (Vec<String>, Vec<String>) = queued
        .values()
        .filter_map(|q| {
            let kind = touched::recorded_kind(q.object_type.as_deref()?)?;
            Some((kind.to_string(), q.object_identity.clone()?))
        })
        .chain(
            described
                .iter()
                .map(|n| (n.kind.clone(), n.identity.clone())),
        )
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .unzip();
    if !kinds.is_empty() {
        old.extend(old_rows(
            "USING unnest($1::text[], $2::text[]) AS k(kind, identity) \
             WHERE o.kind = k.kind AND o.identity = k.identity",
            &[kinds.into(), identities.into()],
        ));
    }

    let new_hashes: Vec<Vec<u8>> = if described.is_empty() {
        vec![]
    } else {
        crate::pg::spi::kept_rows_as_owner(
            "INSERT INTO migrate.schema_objects \
               (kind, identity, description, obj_class, obj_oid, rel_oid) \
             SELECT x.kind, x.identity, x.description::jsonb, x.obj_class, x.obj_oid, x.rel_oid \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::oid[], $5::oid[], $6::oid[]) \
               AS x(kind, identity, description, obj_class, obj_oid, rel_oid) \
             RETURNING hash",
            &[
                each(&described, |n| n.kind.clone()).into(),
                each(&described, |n| n.identity.clone()).into(),
                each(&described, |n| n.description.clone()).into(),
                each(&described, |n| n.obj_class).into(),
                each(&described, |n| n.obj_oid).into(),
                each(&described, |n| n.rel_oid).into(),
            ],
            |row| Ok(row.get::<Vec<u8>>(1)?.unwrap_or_default()),
        )
        .or_bookkeeping("write migrate.schema_objects")
    };
    let fingerprint = crate::pg::spi::kept_value_as_owner(
        "UPDATE migrate.schema_state s \
         SET state = migrate.hash_state_adjust(s.state, $1, $2), recorded_at = clock_timestamp() \
         RETURNING s.fingerprint",
        &[
            old.iter()
                .map(|o| o.hash.clone())
                .collect::<Vec<_>>()
                .into(),
            new_hashes.into(),
        ],
    )
    .or_bookkeeping("write migrate.schema_state");
    // DDL outside migrations (version None) is recorded, not reported: drift() did that.
    let changes = version.map(|_| {
        let before = description_of(old.iter().map(|o| (&o.kind, &o.identity, &o.description)));
        let after = description_of(
            described
                .iter()
                .map(|n| (&n.kind, &n.identity, &n.description)),
        );
        JsonB(crate::schema::diff::as_changes(
            crate::schema::diff::bounded_differences(&before, &after),
        ))
    });
    Recorded {
        changes,
        fingerprint,
    }
}

/// One column of the rows, as an array parameter.
fn each<T>(rows: &[NewRow], column: impl Fn(&NewRow) -> T) -> Vec<T> {
    rows.iter().map(column).collect()
}

/// The rows as one description, as `migrate.description_of` makes it: by kind, then by
/// identity (the last row of an identity wins).
fn description_of<'a>(
    rows: impl Iterator<Item = (&'a String, &'a String, &'a String)>,
) -> serde_json::Value {
    let mut kinds = serde_json::Map::new();
    kinds.insert("format".into(), 2.into());
    for (i, (kind, identity, description)) in rows.enumerate() {
        if i % 1024 == 0 {
            pgrx::check_for_interrupts!();
        }
        let description = serde_json::from_str(description).unwrap_or_else(|e| {
            Problem::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("a recorded description of {identity} does not read as JSON: {e}"),
                "migrate.schema_objects holds jsonb, whose text is JSON.",
                "Report this as a pg_migrate bug.",
            )
            .raise()
        });
        kinds
            .entry(kind.clone())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()))
            .as_object_mut()
            .expect("a kind's objects")
            .insert(identity.clone(), description);
    }
    serde_json::Value::Object(kinds)
}

/// A migration applied in the caller's transaction: its changes, recorded there.
pub fn applied(version: &str) -> Recorded {
    changes(version, APPLY_AGAIN)
}

/// A baseline, or an admin's `migrate.record_schema()`: the whole schema, recorded afresh.
pub fn whole() -> Recorded {
    let fingerprint = bounded("record the schema", "run it again", whole_schema);
    Recorded {
        changes: None,
        fingerprint,
    }
}

/// A migration cancelled in the worker: what its finished phases changed is recorded by the
/// next migration, as DDL outside migrations is.
pub fn abandon(version: &str) {
    crate::pg::identity::as_owner(|| {
        Spi::run_with_args(
            "UPDATE migrate.schema_queue SET migration_version = NULL \
             WHERE migration_version = $1",
            &[version.into()],
        )
    })
    .or_bookkeeping("write migrate.schema_queue");
}

/// `migrate.record_schema()` (admins): records the whole schema afresh, as it is now, and
/// returns its fingerprint. For what no DDL event reports (a role renamed, DDL run with
/// `session_replication_role = replica` or with pg_migrate's event triggers disabled): what
/// `migrate.drift()` shows is then taken as the recorded schema. The history is unchanged.
#[pg_extern(volatile, parallel_unsafe)]
fn record_schema() -> String {
    crate::pg::identity::require_admin("record the schema").or_raise();
    crate::history::lock::refuse_unsafe_context().or_raise();
    crate::history::lock::lock_history();
    whole().fingerprint.unwrap_or_default()
}
