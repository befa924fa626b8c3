//! `migrate.diff(a, b)`: the differences between two schema descriptions
//! (`migrate.describe()`), one row per object added or removed and per attribute changed.

use crate::errors::Problem;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The kind of object: `tables`, `indexes`, `constraints`, ... (a key of the description).
    pub kind: String,
    /// Its identity, as `pg_identify_object` and the DDL log spell it.
    pub object: Option<String>,
    pub change: Change,
    /// Where in the object, e.g. `columns.total.type`; none for a whole object.
    pub attribute: Option<String>,
    pub old: Option<Value>,
    pub new: Option<Value>,
    /// The table the object belongs to (the object itself for a table).
    pub relation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Changed,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }

    fn of(old: Option<&Value>, new: Option<&Value>) -> Change {
        match (old, new) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Changed,
        }
    }
}

/// Every difference from `a` to `b`, ordered by kind, object and attribute.
pub fn differences(a: &Value, b: &Value) -> Vec<Difference> {
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    for kind in keys(a, b) {
        let (va, vb) = (a.get(kind), b.get(kind));
        match (va.and_then(Value::as_object), vb.and_then(Value::as_object)) {
            (None, None) if va != vb => out.push(Difference {
                kind: kind.clone(),
                object: None,
                change: Change::of(va, vb),
                attribute: None,
                old: va.cloned(),
                new: vb.cloned(),
                relation: None,
            }),
            (None, None) => {}
            // A kind only one side has: each of its objects was added or removed.
            (oa, ob) => objects(kind, oa.unwrap_or(&empty), ob.unwrap_or(&empty), &mut out),
        }
    }
    out
}

fn objects(kind: &str, a: &Map<String, Value>, b: &Map<String, Value>, out: &mut Vec<Difference>) {
    for name in keys(a, b) {
        let (oa, ob) = (a.get(name), b.get(name));
        if oa == ob {
            continue;
        }
        let relation = if kind == "tables" {
            Some(name.clone())
        } else {
            ob.or(oa)
                .and_then(|o| o.get("table"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let row =
            |attribute: Option<String>, old: Option<&Value>, new: Option<&Value>| Difference {
                kind: kind.to_string(),
                object: Some(name.clone()),
                change: Change::of(old, new),
                attribute,
                old: old.cloned(),
                new: new.cloned(),
                relation: relation.clone(),
            };
        match (oa, ob) {
            (Some(x), Some(y)) => {
                let mut leaves = Vec::new();
                attributes(String::new(), Some(x), Some(y), &mut leaves);
                out.extend(leaves.into_iter().map(|(p, o, n)| row(Some(p), o, n)));
            }
            _ => out.push(row(None, oa, ob)),
        }
    }
}

type Leaf<'v> = (String, Option<&'v Value>, Option<&'v Value>);

/// The attributes that differ, by dotted path; nested objects (a table's columns) are
/// compared key by key, so a changed column type is one row, not the whole table.
fn attributes<'v>(
    path: String,
    x: Option<&'v Value>,
    y: Option<&'v Value>,
    out: &mut Vec<Leaf<'v>>,
) {
    if x == y {
        return;
    }
    if let (Some(Value::Object(a)), Some(Value::Object(b))) = (x, y) {
        for key in keys(a, b) {
            let sub = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            attributes(sub, a.get(key), b.get(key), out);
        }
        return;
    }
    out.push((path, x, y));
}

fn keys<'m>(a: &'m Map<String, Value>, b: &'m Map<String, Value>) -> BTreeSet<&'m String> {
    a.keys().chain(b.keys()).collect()
}

#[allow(clippy::type_complexity)]
#[pg_extern(immutable, parallel_safe)]
fn diff(
    a: Option<JsonB>,
    b: Option<JsonB>,
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(object, Option<String>),
        name!(change, String),
        name!(attribute, Option<String>),
        name!(old, Option<JsonB>),
        name!(new, Option<JsonB>),
        name!(relation, Option<String>),
    ),
> {
    let (Some(a), Some(b)) = (a, b) else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "migrate.diff needs two descriptions, not NULL",
            "A description is the jsonb migrate.describe() returns.",
            "Pass migrate.describe() from each side, e.g. the recorded \
             (SELECT schema FROM migrate.history WHERE version = '42') and migrate.describe().",
        )
        .raise();
    };
    for (side, value) in [("a", &a.0), ("b", &b.0)] {
        if value.get("format").is_none() {
            Problem::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("migrate.diff: {side} is not a schema description"),
                "A description is the jsonb object migrate.describe() returns, with a \
                 \"format\" key; any other jsonb would compare as an empty schema.",
                "Pass the output of migrate.describe(), or a schema recorded in \
                 migrate.history.",
            )
            .raise();
        }
    }
    let rows: Vec<_> = differences(&a.0, &b.0)
        .into_iter()
        .map(|d| {
            (
                d.kind,
                d.object,
                d.change.name().to_string(),
                d.attribute,
                d.old.map(JsonB),
                d.new.map(JsonB),
                d.relation,
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "format": 1,
            "tables": {"public.t": {"kind": "table", "columns": {
                "id": {"type": "integer", "position": 1},
                "total": {"type": "integer", "position": 2}}}},
            "indexes": {"public.t_pkey": {"table": "public.t", "valid": true}},
        })
    }

    #[test]
    fn equal_descriptions_have_no_differences() {
        assert!(differences(&base(), &base()).is_empty());
    }

    #[test]
    fn a_changed_column_type_is_one_row_on_its_table() {
        let mut b = base();
        b["tables"]["public.t"]["columns"]["total"]["type"] = json!("bigint");
        let d = differences(&base(), &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, "tables");
        assert_eq!(d[0].object.as_deref(), Some("public.t"));
        assert_eq!(d[0].attribute.as_deref(), Some("columns.total.type"));
        assert_eq!(d[0].change, Change::Changed);
        assert_eq!(d[0].old, Some(json!("integer")));
        assert_eq!(d[0].new, Some(json!("bigint")));
        assert_eq!(d[0].relation.as_deref(), Some("public.t"));
    }

    #[test]
    fn objects_added_and_removed_carry_their_table() {
        let mut b = base();
        b["indexes"]
            .as_object_mut()
            .unwrap()
            .remove("public.t_pkey");
        b["indexes"]["public.t_total"] = json!({"table": "public.t", "valid": false});
        let d = differences(&base(), &b);
        let summary: Vec<_> = d
            .iter()
            .map(|d| {
                (
                    d.object.clone().unwrap(),
                    d.change,
                    d.relation.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("public.t_pkey".into(), Change::Removed, "public.t".into()),
                ("public.t_total".into(), Change::Added, "public.t".into()),
            ]
        );
    }

    #[test]
    fn a_new_column_and_a_new_kind_are_additions() {
        let mut b = base();
        b["tables"]["public.t"]["columns"]["note"] = json!({"type": "text", "position": 3});
        b["views"] = json!({"public.v": {"definition": "SELECT 1"}});
        let d = differences(&base(), &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].attribute.as_deref(), Some("columns.note"));
        assert_eq!(d[0].change, Change::Added);
        assert_eq!(d[1].kind, "views");
        assert_eq!(d[1].change, Change::Added);
        assert_eq!(d[1].object.as_deref(), Some("public.v"));
    }
}
