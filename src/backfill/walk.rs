//! How a backfill walks its table, as SQL: keyset pagination over a unique NOT NULL key, or
//! ranges of pages (ctid) for a table without one. Pure text building, so that the shapes of
//! the statements are unit-tested without a server.
//!
//! Every piece of caller input reaching this SQL is either a catalog name quoted with
//! `quote_ident`, a type name from `format_type`, or a set or where clause that
//! `clauses::check` proved to be exactly one SET list or one expression. The clauses are put
//! on lines of their own, so that a trailing `--` comment in one cannot swallow what follows.
//! Key values travel as parameters (text arrays), never as literals.

/// A pass's position and bound, as text values of the key (or one page number).
pub type Key = Vec<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// Quoted column names and their types (`format_type`), in index order.
    Keyset {
        columns: Vec<String>,
        types: Vec<String>,
        /// The schema (quoted) of the `>` and `<=` of every key column's default btree
        /// operator class, when they all live in one: pg_catalog for PostgreSQL's own types,
        /// an extension's schema for its types (citext). They are then named
        /// `OPERATOR(schema.>)`, so that no operator of a schema on the submitter's path (one
        /// taking `varchar`, where pg_catalog's take `text`) is called instead. Keys whose
        /// operators live in several schemas are compared by the path.
        operators: Option<String>,
    },
    /// Page ranges: the key is one page number.
    Pages,
}

impl Walk {
    /// `SELECT`s the pass's upper bound: the highest key now (NULL row for an empty table),
    /// or the number of pages now (`$1`: the table's oid). Rows inserted later lie beyond it; the final check finds
    /// those the where clause still matches.
    pub fn upper_sql(&self, table: &str) -> String {
        match self {
            Walk::Keyset { columns, .. } => format!(
                "SELECT ARRAY[{}] FROM {table} ORDER BY {} LIMIT 1",
                as_text(columns),
                columns
                    .iter()
                    .map(|c| format!("{c} DESC"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            // $1: the table's oid.
            Walk::Pages => "SELECT ARRAY[(pg_catalog.pg_relation_size($1::pg_catalog.regclass) \
                 / pg_catalog.current_setting('block_size')::bigint)::text]"
                .to_string(),
        }
    }

    /// For keyset walks: `SELECT`s the key `$3` rows past `$1` (NULL: the start) within
    /// `$2`, the end of the next batch. `filter`: only rows it matches count (passes after
    /// the first, where few rows are left to find).
    pub fn batch_end_sql(&self, table: &str, from_start: bool, filter: Option<&str>) -> String {
        let Walk::Keyset { columns, .. } = self else {
            unreachable!("page walks compute their batch end")
        };
        let mut conditions = Vec::new();
        if !from_start {
            conditions.push(compare(self, columns, ">", 1));
        }
        conditions.push(compare(self, columns, "<=", 2));
        if let Some(filter) = filter {
            conditions.push(format!("(\n{filter}\n)"));
        }
        format!(
            "SELECT ARRAY[{}] FROM {table} WHERE {} ORDER BY {} LIMIT 1 OFFSET $3",
            as_text(columns),
            conditions.join(" AND "),
            columns.join(", ")
        )
    }

    /// The batch itself: the set clause on the rows after `$1` (NULL: the start) up to and
    /// including `$2` that the where clause matches.
    pub fn update_sql(
        &self,
        table: &str,
        set_clause: &str,
        where_clause: Option<&str>,
        from_start: bool,
    ) -> String {
        let mut conditions = Vec::new();
        match self {
            Walk::Keyset { columns, .. } => {
                if !from_start {
                    conditions.push(compare(self, columns, ">", 1));
                }
                conditions.push(compare(self, columns, "<=", 2));
            }
            // Pages [$1, $2): a TID range scan reads just those pages.
            Walk::Pages => conditions.push(
                "ctid >= pg_catalog.format('(%s,0)', $1[1])::pg_catalog.tid \
                 AND ctid < pg_catalog.format('(%s,0)', $2[1])::pg_catalog.tid"
                    .to_string(),
            ),
        }
        if let Some(filter) = where_clause {
            conditions.push(format!("(\n{filter}\n)"));
        }
        format!(
            "UPDATE {table} SET\n{set_clause}\nWHERE {}",
            conditions.join(" AND ")
        )
    }

    /// The final check: how many rows the where clause still matches.
    pub fn remaining_sql(table: &str, where_clause: &str) -> String {
        format!("SELECT pg_catalog.count(*) FROM {table} WHERE (\n{where_clause}\n)")
    }
}

/// Page walks: the batch of `rows` rows from page `from`, as a page range capped at `upper`,
/// given the rows a page holds.
pub fn page_batch_end(from: u64, rows: u64, rows_per_page: f64, upper: u64) -> u64 {
    let pages = (rows as f64 / rows_per_page.max(1.0)).ceil().max(1.0) as u64;
    from.saturating_add(pages).min(upper)
}

/// The key compared with `op` to the key in parameter `$n`.
fn compare(walk: &Walk, columns: &[String], op: &str, n: usize) -> String {
    let op = match walk {
        Walk::Keyset {
            operators: Some(schema),
            ..
        } => format!("OPERATOR({schema}.{op})"),
        _ => op.to_string(),
    };
    format!("{} {op} {}", row(columns), param_row(n, walk))
}

fn row(columns: &[String]) -> String {
    match columns {
        [one] => one.clone(),
        many => format!("({})", many.join(", ")),
    }
}

/// The key in text array parameter `$n`, cast back to the key's types.
fn param_row(n: usize, walk: &Walk) -> String {
    let Walk::Keyset { types, .. } = walk else {
        unreachable!()
    };
    let values: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${n}[{}]::{t}", i + 1))
        .collect();
    match values.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join(", ")),
    }
}

fn as_text(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{c}::text"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod unit {
    use super::*;

    fn composite() -> Walk {
        Walk::Keyset {
            columns: vec!["tenant".into(), "\"Id\"".into()],
            types: vec!["integer".into(), "bigint".into()],
            operators: None,
        }
    }

    #[test]
    fn keyset_batches_compare_whole_rows_in_index_order() {
        let w = composite();
        assert_eq!(
            w.batch_end_sql("public.t", false, None),
            "SELECT ARRAY[tenant::text, \"Id\"::text] FROM public.t WHERE (tenant, \"Id\") > \
             ($1[1]::integer, $1[2]::bigint) AND (tenant, \"Id\") <= ($2[1]::integer, \
             $2[2]::bigint) ORDER BY tenant, \"Id\" LIMIT 1 OFFSET $3"
        );
        assert_eq!(
            w.update_sql("public.t", "x = 1", Some("x IS NULL"), true),
            "UPDATE public.t SET\nx = 1\nWHERE (tenant, \"Id\") <= ($2[1]::integer, \
             $2[2]::bigint) AND (\nx IS NULL\n)"
        );
        assert_eq!(
            w.upper_sql("public.t"),
            "SELECT ARRAY[tenant::text, \"Id\"::text] FROM public.t ORDER BY tenant DESC, \
             \"Id\" DESC LIMIT 1"
        );
    }

    #[test]
    fn a_single_column_key_is_compared_as_a_scalar() {
        let mut w = Walk::Keyset {
            columns: vec!["id".into()],
            types: vec!["bigint".into()],
            operators: None,
        };
        assert_eq!(
            w.update_sql("s.t", "a = b", None, false),
            "UPDATE s.t SET\na = b\nWHERE id > $1[1]::bigint AND id <= $2[1]::bigint"
        );
        // PostgreSQL's own key types: pg_catalog's operators, whatever the submitter's path.
        if let Walk::Keyset { operators, .. } = &mut w {
            *operators = Some("pg_catalog".into());
        }
        assert_eq!(
            w.update_sql("s.t", "a = b", None, false),
            "UPDATE s.t SET\na = b\nWHERE id OPERATOR(pg_catalog.>) $1[1]::bigint AND id \
             OPERATOR(pg_catalog.<=) $2[1]::bigint"
        );
        assert!(w.batch_end_sql("s.t", true, Some("a IS NULL")).contains(
            "WHERE id OPERATOR(pg_catalog.<=) $2[1]::bigint AND (\na IS NULL\n) ORDER BY id"
        ));
        // An extension's type: its schema's, as quoted.
        if let Walk::Keyset { operators, .. } = &mut w {
            *operators = Some("\"Ext\"".into());
        }
        assert!(w
            .update_sql("s.t", "a = b", None, false)
            .contains("WHERE id OPERATOR(\"Ext\".>) $1[1]::bigint"));
    }

    #[test]
    fn clauses_sit_on_lines_of_their_own() {
        let sql = Walk::Pages.update_sql("t", "a = 1 -- note", Some("a IS NULL -- note"), false);
        assert!(sql.contains("SET\na = 1 -- note\nWHERE"));
        assert!(sql.ends_with("(\na IS NULL -- note\n)"));
        assert_eq!(
            Walk::remaining_sql("t", "b -- x"),
            "SELECT pg_catalog.count(*) FROM t WHERE (\nb -- x\n)"
        );
    }

    #[test]
    fn page_batches_cover_whole_pages_up_to_the_bound() {
        assert_eq!(page_batch_end(0, 1000, 100.0, 50), 10);
        assert_eq!(page_batch_end(45, 1000, 100.0, 50), 50);
        assert_eq!(page_batch_end(3, 1, 100.0, 50), 4);
        assert_eq!(page_batch_end(0, 10, 0.0, 50), 10);
    }
}
