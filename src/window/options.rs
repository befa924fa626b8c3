//! `migrate.expand(..., options => ...)`: per column, what the planner cannot derive from
//! the DDL. Today that is the conversion back of a type change (`down`): an expression of
//! the column's new value, under the column's name, giving the old type's value, for a
//! USING that is more than a cast or a type with no assignment cast back.
//!
//! `{"orders.amount": {"down": "(amount / 100)::integer"}}`; a key is `table.column` or
//! `schema.table.column`, each part an identifier as SQL writes it (quoted if need be).

use crate::errors::Problem;
use pgrx::PgSqlErrorCode;
use serde::Deserialize;

/// What one column's options say.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnOptions {
    pub down: String,
}

/// One key of the options: its text, its parts, and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    pub key: String,
    pub name: Vec<String>,
    pub options: ColumnOptions,
}

impl Given {
    /// Whether the key names `column` of `schema`.`table`.
    pub fn names(&self, schema: &str, table: &str, column: &str) -> bool {
        self.name == [table, column] || self.name == [schema, table, column]
    }
}

fn bad(message: String, detail: String) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        detail,
        "Give options as {\"table.column\": {\"down\": \"<expression of the new value>\"}}.",
    )
}

/// The options as given; `split` reads a key into its identifiers (PostgreSQL's parse_ident).
pub fn parse(
    json: &serde_json::Value,
    split: impl Fn(&str) -> Result<Vec<String>, Problem>,
) -> Result<Vec<Given>, Problem> {
    let Some(object) = json.as_object() else {
        return Err(bad(
            "options must be a JSON object".into(),
            format!("It was {json}."),
        ));
    };
    object
        .iter()
        .map(|(key, value)| {
            let options = ColumnOptions::deserialize(value).map_err(|e| {
                bad(
                    format!("the options of {key} are not understood"),
                    e.to_string(),
                )
            })?;
            if options.down.trim().is_empty() {
                return Err(bad(
                    format!("the conversion back of {key} is empty"),
                    "down is an expression of the column's new value.".into(),
                ));
            }
            let name = split(key)?;
            if !(2..=3).contains(&name.len()) {
                return Err(bad(
                    format!("options key {key} does not name a column"),
                    "A key is table.column or schema.table.column.".into(),
                ));
            }
            Ok(Given {
                key: key.clone(),
                name,
                options,
            })
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn split(key: &str) -> Result<Vec<String>, Problem> {
        Ok(key.split('.').map(str::to_string).collect())
    }

    #[test]
    fn keys_name_columns_and_only_down_is_understood() {
        let given = parse(
            &serde_json::json!({"orders.amount": {"down": "amount / 100"}}),
            split,
        )
        .unwrap();
        assert_eq!(given[0].options.down, "amount / 100");
        assert!(given[0].names("public", "orders", "amount"));
        assert!(!given[0].names("public", "orders", "total"));
        let qualified = parse(
            &serde_json::json!({"app.orders.amount": {"down": "x"}}),
            split,
        )
        .unwrap();
        assert!(qualified[0].names("app", "orders", "amount"));
        assert!(!qualified[0].names("public", "orders", "amount"));
        for (bad, says) in [
            (serde_json::json!([1]), "must be a JSON object"),
            (
                serde_json::json!({"orders.amount": {"up": "x", "down": "y"}}),
                "not understood",
            ),
            (serde_json::json!({"orders.amount": {}}), "not understood"),
            (
                serde_json::json!({"orders.amount": {"down": 5}}),
                "not understood",
            ),
            (
                serde_json::json!({"orders.amount": {"down": " "}}),
                "is empty",
            ),
            (
                serde_json::json!({"amount": {"down": "x"}}),
                "does not name a column",
            ),
        ] {
            let p = parse(&bad, split).unwrap_err();
            assert!(p.message.contains(says), "{bad}: {}", p.message);
            assert_eq!(p.code, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE);
        }
    }
}
