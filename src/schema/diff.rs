//! `migrate.diff(a, b)`: the differences between two schema descriptions
//! (`migrate.describe()`), one row per object added or removed and per attribute changed.

use crate::errors::Problem;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// One row of `migrate.diff`, and one element of `migrate.history.changes` (absent fields
/// are NULL there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// The kind of object: `tables`, `indexes`, `constraints`, ... (a key of the description).
    pub kind: String,
    /// Its identity, as `pg_identify_object` and the DDL log spell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub change: Change,
    /// Where in the object, e.g. `columns.total.type`; none for a whole object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
    /// The table the object belongs to (the object itself for a table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// What computing differences may spend: output bytes, and a hook called for every object
/// and attribute compared (the SQL function checks for cancellation there).
pub struct Budget<'f> {
    bytes_left: usize,
    tick: &'f mut dyn FnMut(),
}

impl<'f> Budget<'f> {
    pub fn new(bytes: usize, tick: &'f mut dyn FnMut()) -> Budget<'f> {
        Budget {
            bytes_left: bytes,
            tick,
        }
    }

    /// Charges a row: the names each row repeats (object, attribute path, relation) are
    /// what can make the output far larger than the input.
    fn charge(&mut self, d: &Difference) -> Result<(), Exceeded> {
        let bytes = d.kind.len()
            + d.object.as_ref().map_or(0, String::len)
            + d.attribute.as_ref().map_or(0, String::len)
            + d.relation.as_ref().map_or(0, String::len)
            + 64;
        self.bytes_left = self.bytes_left.checked_sub(bytes).ok_or(Exceeded)?;
        Ok(())
    }
}

/// The differences would take more than the budget.
#[derive(Debug, PartialEq, Eq)]
pub struct Exceeded;

/// Roughly how many bytes a jsonb value takes as text: what a budget is measured against.
pub fn size(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| k.len() + 4 + size(v)).sum::<usize>() + 2,
        Value::Array(a) => a.iter().map(|v| size(v) + 1).sum::<usize>() + 2,
        Value::String(s) => s.len() + 2,
        _ => 8,
    }
}

/// Every difference from `a` to `b`, ordered by kind, object and attribute.
pub fn differences(a: &Value, b: &Value, budget: &mut Budget) -> Result<Vec<Difference>, Exceeded> {
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut out = Vec::new();
    for kind in keys(a, b) {
        let (va, vb) = (a.get(kind), b.get(kind));
        match (va.and_then(Value::as_object), vb.and_then(Value::as_object)) {
            (None, None) if va != vb => {
                let d = Difference {
                    kind: kind.clone(),
                    object: None,
                    change: Change::of(va, vb),
                    attribute: None,
                    old: va.cloned(),
                    new: vb.cloned(),
                    relation: None,
                };
                budget.charge(&d)?;
                out.push(d);
            }
            (None, None) => {}
            // A kind only one side has: each of its objects was added or removed.
            (oa, ob) => objects(
                kind,
                oa.unwrap_or(&empty),
                ob.unwrap_or(&empty),
                &mut out,
                budget,
            )?,
        }
    }
    Ok(out)
}

fn objects(
    kind: &str,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    out: &mut Vec<Difference>,
    budget: &mut Budget,
) -> Result<(), Exceeded> {
    for name in keys(a, b) {
        (budget.tick)();
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
                attributes(String::new(), Some(x), Some(y), &mut leaves, budget)?;
                for (p, o, n) in leaves {
                    let d = row(Some(p), o, n);
                    budget.charge(&d)?;
                    out.push(d);
                }
            }
            _ => {
                let d = row(None, oa, ob);
                budget.charge(&d)?;
                out.push(d);
            }
        }
    }
    Ok(())
}

type Leaf<'v> = (String, Option<&'v Value>, Option<&'v Value>);

/// The attributes that differ, by dotted path; nested objects (a table's columns) are
/// compared key by key, so a changed column type is one row, not the whole table.
fn attributes<'v>(
    path: String,
    x: Option<&'v Value>,
    y: Option<&'v Value>,
    out: &mut Vec<Leaf<'v>>,
    budget: &mut Budget,
) -> Result<(), Exceeded> {
    if x == y {
        return Ok(());
    }
    if let (Some(Value::Object(a)), Some(Value::Object(b))) = (x, y) {
        for key in keys(a, b) {
            (budget.tick)();
            let sub = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            // The paths alone can outgrow the input (a long key repeated under every leaf).
            budget.bytes_left = budget.bytes_left.checked_sub(sub.len()).ok_or(Exceeded)?;
            attributes(sub, a.get(key), b.get(key), out, budget)?;
        }
        return Ok(());
    }
    out.push((path, x, y));
    Ok(())
}

fn keys<'m>(a: &'m Map<String, Value>, b: &'m Map<String, Value>) -> BTreeSet<&'m String> {
    a.keys().chain(b.keys()).collect()
}

/// Every difference from `a` to `b`, checking for cancellation throughout. `migrate.diff`
/// is open to every role: the output may not outgrow the input by more than a fixed factor
/// (names repeat in every row).
pub fn bounded_differences(a: &Value, b: &Value) -> Vec<Difference> {
    let limit = 16 * (size(a) + size(b)) + (1 << 20);
    let mut tick = || {
        pgrx::check_for_interrupts!();
    };
    differences(a, b, &mut Budget::new(limit, &mut tick)).unwrap_or_else(|_| {
        Problem::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("migrate.diff: the differences would take more than {limit} bytes"),
            "The differences of two descriptions repeat object names and paths in every row; \
             these two would produce far more than their own size.",
            "Pass descriptions migrate.describe() made; compare fewer schemas at once \
             (migrate.describe(ARRAY['schema'])).",
        )
        .raise()
    })
}

/// The differences as `migrate.history.changes` holds them, and `migrate.changes` returns
/// them: `jsonb_agg(jsonb_strip_nulls(to_jsonb(d)))` of `migrate.diff`'s rows.
pub fn as_changes(found: Vec<Difference>) -> Value {
    Value::Array(
        found
            .into_iter()
            .map(|d| strip_nulls(serde_json::to_value(d).expect("a difference serialises")))
            .collect(),
    )
}

/// `jsonb_strip_nulls`: object fields whose value is null, at every depth, are left out.
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
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
    let rows: Vec<_> = bounded_differences(&a.0, &b.0)
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

    fn unlimited() -> Budget<'static> {
        Budget::new(usize::MAX, Box::leak(Box::new(|| {})))
    }

    #[test]
    fn output_beyond_the_budget_is_refused_and_every_comparison_ticks() {
        let many = |v: i32| {
            let columns: serde_json::Map<String, Value> =
                (0..1000).map(|i| (i.to_string(), json!(v))).collect();
            json!({"format": 1, "tables": {"x".repeat(10_000): columns}})
        };
        let (a, b) = (many(1), many(2));
        let mut ticks = 0;
        let mut tick = || ticks += 1;
        let limit = 16 * (size(&a) + size(&b)) + (1 << 20);
        assert_eq!(
            differences(&a, &b, &mut Budget::new(limit, &mut tick)).unwrap_err(),
            Exceeded
        );
        assert!(ticks > 1, "{ticks}");
        assert_eq!(differences(&a, &b, &mut unlimited()).unwrap().len(), 1000);
    }

    #[test]
    fn changes_leave_out_absent_fields_and_null_members_as_jsonb_strip_nulls_does() {
        let a = json!({"format": 2, "tables": {"public.t": {"x": 1, "n": {"y": null}}}});
        let b = json!({"format": 2, "tables": {"public.t": {"x": 2, "n": {"y": null}}},
                       "indexes": {"public.i": {"table": "public.t", "z": [null, {"w": null}]}}});
        let found = differences(&a, &b, &mut unlimited()).unwrap();
        assert_eq!(
            as_changes(found),
            json!([
                {"kind": "indexes", "object": "public.i", "change": "added",
                 "new": {"table": "public.t", "z": [null, {}]}, "relation": "public.t"},
                {"kind": "tables", "object": "public.t", "change": "changed", "attribute": "x",
                 "old": 1, "new": 2, "relation": "public.t"},
            ])
        );
        assert_eq!(as_changes(vec![]), json!([]));
    }

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
        assert!(differences(&base(), &base(), &mut unlimited())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_changed_column_type_is_one_row_on_its_table() {
        let mut b = base();
        b["tables"]["public.t"]["columns"]["total"]["type"] = json!("bigint");
        let d = differences(&base(), &b, &mut unlimited()).unwrap();
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
        let d = differences(&base(), &b, &mut unlimited()).unwrap();
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
    fn a_difference_reads_back_as_migrate_changes_stores_it() {
        // migrate.changes stores rows of migrate.diff with NULLs stripped.
        let stored = json!({"kind": "constraints", "object": "c on public.t", "change": "changed",
                            "attribute": "validated", "old": false, "new": true,
                            "relation": "public.t"});
        let d: Difference = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(d.change, Change::Changed);
        assert_eq!(serde_json::to_value(&d).unwrap(), stored);
        let removed = json!({"kind": "indexes", "object": "public.i", "change": "removed"});
        let d: Difference = serde_json::from_value(removed.clone()).unwrap();
        assert_eq!((&d.attribute, &d.old, &d.relation), (&None, &None, &None));
        assert_eq!(serde_json::to_value(&d).unwrap(), removed);
    }

    #[test]
    fn a_new_column_and_a_new_kind_are_additions() {
        let mut b = base();
        b["tables"]["public.t"]["columns"]["note"] = json!({"type": "text", "position": 3});
        b["views"] = json!({"public.v": {"definition": "SELECT 1"}});
        let d = differences(&base(), &b, &mut unlimited()).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].attribute.as_deref(), Some("columns.note"));
        assert_eq!(d[0].change, Change::Added);
        assert_eq!(d[1].kind, "views");
        assert_eq!(d[1].change, Change::Added);
        assert_eq!(d[1].object.as_deref(), Some("public.v"));
    }
}
