//! The schema description of relations (tables, views, sequences), indexes and constraints:
//! the objects a schema has by the tens of thousands. `sql/inspect/describe.sql` describes every other kind
//! and says what a description is; these are described here, natively, because building each
//! one with `jsonb_build_object` in SQL cost about 60 µs a table, which made a fingerprint
//! of 10,000 tables take two seconds and a migration's bookkeeping milliseconds.
//!
//! The texts are printed by the server's own functions (`crate::pg::describe`), under the
//! settings `migrate.describe_objects` pins; this module decides only which keys a
//! description has, as `jsonb_strip_nulls` of the SQL description would leave them.

use crate::pg::describe as catalog;
use crate::schema::fingerprint::object_hash;
use pgrx::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Whether objects in schema `name` (`oid`) are described: with `schemas`, those named;
/// otherwise all but system schemas, pg_migrate's own and those extensions own.
pub fn schema_is_described(
    name: &str,
    oid: pg_sys::Oid,
    schemas: Option<&[String]>,
    extension_schemas: &[pg_sys::Oid],
) -> bool {
    match schemas {
        Some(named) => named.iter().any(|s| s == name),
        None => {
            !["pg_catalog", "information_schema", "migrate"].contains(&name)
                && !name.starts_with("pg_toast")
                && !name.starts_with("pg_temp_")
                && !extension_schemas.contains(&oid)
        }
    }
}

fn some_if(flag: bool) -> Option<bool> {
    flag.then_some(true)
}

fn non_empty<T>(values: Vec<T>) -> Option<Vec<T>> {
    (!values.is_empty()).then_some(values)
}

#[derive(Serialize)]
pub struct ColumnDescription {
    pub position: usize,
    #[serde(rename = "type")]
    pub type_text: String,
    pub not_null: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
}

#[derive(Serialize)]
pub struct TableDescription {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unlogged: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_bound: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inherits: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_security: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<BTreeMap<String, ColumnDescription>>,
}

pub fn table_kind(relkind: u8) -> Option<&'static str> {
    match relkind {
        b'r' => Some("table"),
        b'p' => Some("partitioned table"),
        b'f' => Some("foreign table"),
        _ => None,
    }
}

pub fn row_security(enabled: bool, forced: bool) -> Option<&'static str> {
    match (enabled, forced) {
        (false, _) => None,
        (true, true) => Some("forced"),
        (true, false) => Some("enabled"),
    }
}

pub fn identity_kind(attidentity: u8) -> Option<&'static str> {
    match attidentity {
        b'a' => Some("always"),
        b'd' => Some("by default"),
        _ => None,
    }
}

#[derive(Serialize)]
pub struct KeyDescription {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opclass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descending: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nulls_first: Option<bool>,
}

impl KeyDescription {
    /// A key column from its pg_index `indoption` bits: 1 descending, 2 nulls first.
    pub fn new(
        key: Option<String>,
        opclass: Option<String>,
        collation: Option<String>,
        option: i16,
    ) -> Self {
        KeyDescription {
            key,
            opclass,
            collation,
            descending: some_if(option & 1 == 1),
            nulls_first: some_if(option & 2 == 2),
        }
    }
}

#[derive(Serialize)]
pub struct IndexDescription {
    pub table: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub unique: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nulls_not_distinct: Option<bool>,
    pub keys: Vec<KeyDescription>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Option<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    pub valid: bool,
    pub ready: bool,
}

#[derive(Serialize)]
pub struct ViewDescription {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
}

#[derive(Serialize)]
pub struct SequenceDescription {
    #[serde(rename = "type")]
    pub type_text: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
}

/// Not stripped of nulls: the SQL description never stripped a constraint's.
#[derive(Serialize)]
pub struct ConstraintDescription {
    pub table: String,
    #[serde(rename = "type")]
    pub kind: Option<&'static str>,
    pub definition: Option<String>,
    pub validated: bool,
}

pub fn constraint_kind(contype: u8) -> Option<&'static str> {
    match contype {
        b'c' => Some("check"),
        b'f' => Some("foreign key"),
        b'p' => Some("primary key"),
        b'u' => Some("unique"),
        b'x' => Some("exclusion"),
        b't' => Some("trigger"),
        _ => None,
    }
}

/// One row of `migrate.describe_objects`.
pub struct Described {
    pub kind: &'static str,
    pub identity: String,
    /// JSON text.
    pub description: String,
    pub obj_class: pg_sys::Oid,
    pub obj_oid: pg_sys::Oid,
    pub rel_oid: Option<pg_sys::Oid>,
}

/// The relations that are described, by OID, with their identity; looked up once each.
struct Relations {
    schemas: Option<Vec<String>>,
    extension_schemas: Vec<pg_sys::Oid>,
    /// Only relations found described: an OID of nothing, passed by the million, takes no
    /// memory.
    known: HashMap<pg_sys::Oid, (catalog::Class, String)>,
    schema_names: HashMap<pg_sys::Oid, Option<String>>,
    around: catalog::Around,
}

impl Relations {
    fn get(&mut self, oid: pg_sys::Oid) -> Option<&(catalog::Class, String)> {
        if !self.known.contains_key(&oid) {
            let described = self.look_up(oid)?;
            self.known.insert(oid, described);
        }
        self.known.get(&oid)
    }

    fn look_up(&mut self, oid: pg_sys::Oid) -> Option<(catalog::Class, String)> {
        let class = catalog::class(oid)?;
        if !b"rpfvmS".contains(&class.kind) {
            return None;
        }
        let schema = self
            .schema_names
            .entry(class.namespace)
            .or_insert_with(|| catalog::namespace_name(class.namespace))
            .clone()?;
        if !schema_is_described(
            &schema,
            class.namespace,
            self.schemas.as_deref(),
            &self.extension_schemas,
        ) || self.around.extension_member(oid)
        {
            return None;
        }
        let identity = catalog::qualified(&schema, &class.name);
        Some((class, identity))
    }
}

/// Options (`reloptions`) in byte order, as the catalogs' "C" collation sorts them. ACLs, by
/// contrast, are sorted as `aclitem::text`, by the database's collation
/// (`catalog::sort_as_text`).
pub fn sorted_options(options: &[String]) -> Vec<String> {
    let mut options = options.to_vec();
    options.sort();
    options
}

/// A described relation's kind and description: a table, a view or a sequence.
fn relation(
    oid: pg_sys::Oid,
    class: &catalog::Class,
    around: &catalog::Around,
) -> Option<(&'static str, String)> {
    let sorted_acl = |values: &[String]| {
        let mut values = values.to_vec();
        catalog::sort_as_text(&mut values);
        non_empty(values)
    };
    match class.kind {
        b'v' | b'm' => Some((
            if class.kind == b'v' {
                "views"
            } else {
                "materialized_views"
            },
            json(&ViewDescription {
                definition: catalog::view_definition(oid),
                options: if class.kind == b'v' {
                    non_empty(sorted_options(&class.options))
                } else {
                    None
                },
                acl: sorted_acl(&class.acl),
            }),
        )),
        b'S' => {
            let s = catalog::sequence(oid)?;
            Some((
                "sequences",
                json(&SequenceDescription {
                    type_text: s.type_text,
                    start: s.start,
                    increment: s.increment,
                    min: s.min,
                    max: s.max,
                    cache: s.cache,
                    cycle: s.cycle,
                    owned_by: catalog::sequence_owner(oid),
                    acl: sorted_acl(&class.acl),
                }),
            ))
        }
        _ => Some(("tables", json(&table(oid, class, around)?))),
    }
}

fn table(
    oid: pg_sys::Oid,
    class: &catalog::Class,
    around: &catalog::Around,
) -> Option<TableDescription> {
    let kind = table_kind(class.kind)?;
    let parents: Vec<String> = around
        .parents(oid)
        .into_iter()
        .map(catalog::regclass_text)
        .collect();
    let options = sorted_options(&class.options);
    let mut acl = class.acl.clone();
    catalog::sort_as_text(&mut acl);
    let columns: BTreeMap<String, ColumnDescription> = catalog::columns(oid, around)
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            catalog::sort_as_text(&mut c.acl);
            // A default cannot refer to a column: printed without its relation, which
            // pg_get_expr would otherwise open.
            let (default, generated) = match (c.generated, c.default) {
                (0, d) => (
                    d.and_then(|d| catalog::expression(&d, pg_sys::Oid::INVALID)),
                    None,
                ),
                (_, d) => (None, d.and_then(|d| catalog::expression(&d, oid))),
            };
            let column = ColumnDescription {
                position: i + 1,
                type_text: c.type_text,
                not_null: c.not_null,
                default,
                generated,
                identity: identity_kind(c.identity),
                collation: c.collation,
                acl: non_empty(c.acl),
            };
            (catalog::quote_ident(&c.name), column)
        })
        .collect();
    Some(TableDescription {
        kind,
        unlogged: some_if(class.persistence == b'u'),
        partition_of: if class.is_partition {
            parents.first().cloned()
        } else {
            None
        },
        partition_bound: class.partition_bound.clone(),
        partition_key: if class.kind == b'p' {
            catalog::partition_key(oid)
        } else {
            None
        },
        inherits: if class.is_partition {
            None
        } else {
            non_empty(parents)
        },
        options: non_empty(options),
        row_security: row_security(class.row_security, class.force_row_security),
        acl: non_empty(acl),
        columns: (!columns.is_empty()).then_some(columns),
    })
}

fn index(
    oid: pg_sys::Oid,
    index: catalog::Index,
    table: String,
) -> Option<(String, IndexDescription)> {
    let class = catalog::class(oid)?;
    let schema = catalog::namespace_name(class.namespace)?;
    let identity = catalog::qualified(&schema, &class.name);
    let key = |n: usize| match index.columns[n] {
        0 => catalog::index_expression(oid, n as i32 + 1),
        attnum => catalog::column_name(index.table, attnum),
    };
    let keys = (0..index.key_count.min(index.columns.len()))
        .map(|n| {
            let collation = index
                .collations
                .get(n)
                .copied()
                .unwrap_or(pg_sys::Oid::INVALID);
            KeyDescription::new(
                key(n),
                index
                    .classes
                    .get(n)
                    .copied()
                    .and_then(catalog::opclass_identity),
                (collation != pg_sys::Oid::INVALID).then(|| catalog::collation_text(collation)),
                index.options.get(n).copied().unwrap_or(0),
            )
        })
        .collect();
    let include: Vec<Option<String>> = (index.key_count..index.columns.len()).map(key).collect();
    let options = sorted_options(&class.options);
    Some((
        identity,
        IndexDescription {
            table,
            method: catalog::access_method_name(class.access_method),
            unique: index.unique,
            nulls_not_distinct: some_if(index.nulls_not_distinct),
            keys,
            include: non_empty(include),
            predicate: index.predicate,
            options: non_empty(options),
            valid: index.valid,
            ready: index.ready && index.live,
        },
    ))
}

/// A description as jsonb prints it (`jsonb_out`): what `migrate.object_hash` hashes, so that
/// a fingerprint needs no jsonb, and what `jsonb_in` reads back unchanged.
fn json<T: Serialize>(value: &T) -> String {
    let mut out = String::new();
    jsonb_text(
        &serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
        &mut out,
    );
    out
}

/// jsonb's text form of a value: object keys shortest first, then bytewise (jsonb's own
/// order), ", " between elements, ": " after keys, strings escaped as `escape_json` does.
pub fn jsonb_text(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                jsonb_text(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| {
                a.len()
                    .cmp(&b.len())
                    .then_with(|| a.as_bytes().cmp(b.as_bytes()))
            });
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                json_string(key, out);
                out.push_str(": ");
                jsonb_text(item, out);
            }
            out.push('}');
        }
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// From how many objects a description reads pg_depend's extension members, pg_inherits and
/// pg_attrdef whole rather than row by row: 1,000 index probes cost about what reading those
/// catalogs costs in a large schema.
const READ_WHOLE_FROM: usize = 1000;

#[derive(Clone, Copy)]
enum Asked {
    Relation,
    Index,
    Constraint,
}

/// The described tables, views and sequences among the relations asked for, indexes among
/// the indexes and constraints among the constraints (each OID once), one at a time: a schema
/// of hundreds of thousands of objects goes to the caller's tuplestore (which spills to disk
/// past work_mem), not to memory first.
pub struct Describer {
    rels: Relations,
    asked: [(Asked, Vec<pg_sys::Oid>); 3],
    /// Which list, and how far into it.
    at: (usize, usize),
}

impl Describer {
    pub fn new(
        schemas: Option<Vec<String>>,
        extension_schemas: Vec<pg_sys::Oid>,
        relations: Vec<pg_sys::Oid>,
        indexes: Vec<pg_sys::Oid>,
        constraints: Vec<pg_sys::Oid>,
    ) -> Describer {
        let around = if relations.len() + indexes.len() + constraints.len() >= READ_WHOLE_FROM {
            catalog::Around::whole(&relations)
        } else {
            catalog::Around::by_index()
        };
        Describer {
            rels: Relations {
                schemas,
                extension_schemas,
                known: HashMap::new(),
                schema_names: HashMap::new(),
                around,
            },
            asked: [
                (Asked::Relation, relations),
                (Asked::Index, indexes),
                (Asked::Constraint, constraints),
            ],
            at: (0, 0),
        }
    }

    fn one(&mut self, asked: Asked, oid: pg_sys::Oid) -> Option<Described> {
        let rels = &mut self.rels;
        match asked {
            Asked::Relation => {
                rels.get(oid)?;
                let (class, identity) = rels.known.get(&oid)?;
                let (kind, description) = relation(oid, class, &rels.around)?;
                Some(Described {
                    kind,
                    identity: identity.clone(),
                    description,
                    obj_class: pg_sys::RelationRelationId,
                    obj_oid: oid,
                    rel_oid: None,
                })
            }
            Asked::Index => {
                let facts = catalog::index(oid)?;
                let table_oid = facts.table;
                let table = rels.get(table_oid)?.1.clone();
                let (identity, description) = index(oid, facts, table)?;
                Some(Described {
                    kind: "indexes",
                    identity,
                    description: json(&description),
                    obj_class: pg_sys::RelationRelationId,
                    obj_oid: oid,
                    rel_oid: Some(table_oid),
                })
            }
            Asked::Constraint => {
                let facts = catalog::constraint(oid)?;
                // NOT NULL: a column's not_null, whether or not the server keeps a
                // constraint for it (18 does).
                if facts.kind == b'n' {
                    return None;
                }
                let table = rels.get(facts.table)?.1.clone();
                Some(Described {
                    kind: "constraints",
                    identity: format!("{} on {}", catalog::quote_ident(&facts.name), table),
                    description: json(&ConstraintDescription {
                        table,
                        kind: constraint_kind(facts.kind),
                        definition: catalog::constraint_definition(oid),
                        validated: facts.validated,
                    }),
                    obj_class: catalog::CONSTRAINT,
                    obj_oid: oid,
                    rel_oid: Some(facts.table),
                })
            }
        }
    }
}

impl Iterator for Describer {
    type Item = Described;

    fn next(&mut self) -> Option<Described> {
        loop {
            let (list, i) = self.at;
            let (asked, oids) = self.asked.get(list)?;
            let Some(&oid) = oids.get(i) else {
                self.at = (list + 1, 0);
                continue;
            };
            let asked = *asked;
            self.at = (list, i + 1);
            pgrx::check_for_interrupts!();
            let row = catalog::in_scratch_memory(|| self.one(asked, oid));
            if row.is_some() {
                return row;
            }
        }
    }
}

/// The settings `migrate.describe_objects` describes under (its SET clauses, which a test
/// holds equal): constants in defaults and expressions print under them, so the same schema
/// describes alike whatever the caller's session set.
pub const SETTINGS: &[(&str, &str)] = &[
    ("search_path", "pg_catalog, pg_temp"),
    ("plan_cache_mode", "force_generic_plan"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("quote_all_identifiers", "off"),
    ("standard_conforming_strings", "on"),
];

/// What `migrate.describe_objects(NULL, relations, indexes, constraints)` gives, described
/// in this process under its settings: the bookkeeping of every migration describes what it
/// touched, and the round trip through PL/pgSQL and jsonb cost more than the description.
pub fn tables_as_described(
    relations: Vec<pg_sys::Oid>,
    indexes: Vec<pg_sys::Oid>,
    constraints: Vec<pg_sys::Oid>,
) -> Vec<Described> {
    let _settings = crate::pg::guc::SettingScope::set(SETTINGS);
    Describer::new(
        None,
        catalog::extension_schemas(),
        relations,
        indexes,
        constraints,
    )
    .collect()
}

/// `migrate.describe_table_objects(...)`: what `migrate.describe_objects` gives of
/// relations, indexes and constraints, which it calls under its pinned settings: each
/// description as jsonb's text (for it to cast), and its object hash. `hashes_only` leaves
/// the descriptions out, for a fingerprint. Called directly, it prints under the caller's
/// settings (search_path, DateStyle, ...): describe_objects is the interface.
fn too_many(count: usize) -> ! {
    crate::errors::Problem::new(
        pgrx::PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
        format!("too many objects to describe at once ({count})"),
        "Their OIDs could not be copied into memory.",
        "Describe fewer objects at a time, for instance schema by schema.",
    )
    .raise()
}

// pgrx reads the row's column names off the signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, parallel_safe)]
fn describe_table_objects(
    schemas: Option<Array<String>>,
    extension_schemas: Option<Array<pg_sys::Oid>>,
    relations: Option<Array<pg_sys::Oid>>,
    indexes: Option<Array<pg_sys::Oid>>,
    constraints: Option<Array<pg_sys::Oid>>,
    hashes_only: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(identity, String),
        name!(description, Option<String>),
        name!(obj_class, pg_sys::Oid),
        name!(obj_oid, pg_sys::Oid),
        name!(rel_oid, Option<pg_sys::Oid>),
        name!(hash, Vec<u8>),
    ),
> {
    // Open to every role, like the catalogs it reads: NULL arrays and elements are none, and
    // an array too big to copy is an error, not an allocation failure (which aborts).
    let oids = |a: Option<Array<pg_sys::Oid>>| -> Vec<pg_sys::Oid> {
        let Some(a) = a else { return vec![] };
        let mut out = Vec::new();
        if out.try_reserve_exact(a.len()).is_err() {
            too_many(a.len());
        }
        out.extend(a.iter().flatten());
        out
    };
    let rows = Describer::new(
        schemas.map(|a| a.iter().flatten().collect()),
        oids(extension_schemas),
        oids(relations),
        oids(indexes),
        oids(constraints),
    );
    TableIterator::new(rows.map(move |d| {
        let hash = object_hash(d.kind, &d.identity, &d.description).to_vec();
        (
            d.kind.to_string(),
            d.identity,
            (!hashes_only).then_some(d.description),
            d.obj_class,
            d.obj_oid,
            d.rel_oid,
            hash,
        )
    }))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn system_extension_and_named_schemas() {
        let ext = [pg_sys::Oid::from(5000)];
        let all =
            |name: &str, oid: u32| schema_is_described(name, pg_sys::Oid::from(oid), None, &ext);
        assert!(all("public", 2200));
        assert!(!all("pg_catalog", 11));
        assert!(!all("migrate", 3000));
        assert!(!all("pg_toast", 99));
        assert!(!all("pg_toast_temp_3", 99));
        assert!(!all("pg_temp_3", 99));
        assert!(all("pg_tempo", 99), "only pg_temp_ schemas are temporary");
        assert!(!all("ext_schema", 5000));
        let named = ["app".to_string()];
        assert!(schema_is_described(
            "app",
            pg_sys::Oid::from(1),
            Some(&named),
            &ext
        ));
        assert!(!schema_is_described(
            "public",
            pg_sys::Oid::from(2200),
            Some(&named),
            &ext
        ));
    }

    #[test]
    fn absent_keys_are_left_out_as_jsonb_strip_nulls_leaves_them() {
        let t = TableDescription {
            kind: "table",
            unlogged: some_if(false),
            partition_of: None,
            partition_bound: None,
            partition_key: None,
            inherits: non_empty(vec![]),
            options: None,
            row_security: row_security(false, true),
            acl: None,
            columns: None,
        };
        assert_eq!(json(&t), r#"{"kind": "table"}"#);
        let k = KeyDescription::new(Some("a".into()), None, None, 3);
        assert_eq!(
            json(&k),
            r#"{"key": "a", "descending": true, "nulls_first": true}"#
        );
        let c = ConstraintDescription {
            table: "t".into(),
            kind: constraint_kind(b'n'),
            definition: None,
            validated: true,
        };
        assert_eq!(
            json(&c),
            r#"{"type": null, "table": "t", "validated": true, "definition": null}"#
        );
    }

    #[test]
    fn text_is_jsonb_s_own() {
        // Keys shortest first, then bytewise; nested objects and arrays alike.
        let v = serde_json::json!({"bb": 1, "a": [true, null, {"zz": "x", "y": -2}], "ab": {}, "B": []});
        let mut out = String::new();
        jsonb_text(&v, &mut out);
        assert_eq!(
            out,
            r#"{"B": [], "a": [true, null, {"y": -2, "zz": "x"}], "ab": {}, "bb": 1}"#
        );
        // escape_json: the short escapes, other control characters as \u, the rest as is.
        let mut out = String::new();
        json_string("q\"b\\\u{8}\u{c}\n\r\t\u{1}\u{1f}/é\u{7f}", &mut out);
        assert_eq!(out, "\"q\\\"b\\\\\\b\\f\\n\\r\\t\\u0001\\u001f/é\u{7f}\"");
    }

    #[test]
    fn kinds_are_named_as_the_sql_description_names_them() {
        assert_eq!(table_kind(b'p'), Some("partitioned table"));
        assert_eq!(table_kind(b'v'), None);
        assert_eq!(row_security(true, false), Some("enabled"));
        assert_eq!(row_security(true, true), Some("forced"));
        assert_eq!(identity_kind(b'd'), Some("by default"));
        assert_eq!(identity_kind(0), None);
        assert_eq!(constraint_kind(b'x'), Some("exclusion"));
    }
}
