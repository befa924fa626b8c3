//! The set and where clauses of a backfill, judged by PostgreSQL's own grammar before they go
//! anywhere near other SQL: a set clause must be exactly a SET list and a where clause
//! exactly one expression. Text that would close a parenthesis early, add a statement, a
//! FROM, a RETURNING or a second WHERE is refused here, so splicing a clause (on lines of its
//! own) into the batch statement cannot change what that statement is.
//!
//! Holds `unsafe`: it reads the parse tree of each clause it just parsed.

use crate::errors::Problem;
use crate::migration::parse as parser;
use crate::pg::nodes::text;
use pgrx::pg_sys::{self, NodeTag as T};
use pgrx::{is_a, PgList, PgSqlErrorCode};

/// Checks a set clause and returns the columns it assigns.
pub fn check_set(set_clause: &str) -> Result<Vec<String>, Problem> {
    let probe = format!("UPDATE pg_migrate_backfill SET\n{set_clause}\n");
    let node = single_statement("set clause", set_clause, &probe)?;
    // SAFETY: a raw parse tree just built from `probe`, read within this call.
    unsafe {
        if !is_a(node, T::T_UpdateStmt) {
            return Err(not_a(
                "set clause",
                set_clause,
                "a SET list such as: total = price * quantity",
            ));
        }
        let stmt = node.cast::<pg_sys::UpdateStmt>();
        for (present, part) in [
            (
                !(*stmt).whereClause.is_null(),
                "a WHERE (pass it as where_clause)",
            ),
            (!(*stmt).fromClause.is_null(), "a FROM"),
            (returning(stmt), "a RETURNING"),
            (!(*stmt).withClause.is_null(), "a WITH"),
        ] {
            if present {
                return Err(not_a(
                    "set clause",
                    set_clause,
                    &format!("only a SET list; this one has {part}"),
                ));
            }
        }
        Ok(PgList::<pg_sys::ResTarget>::from_pg((*stmt).targetList)
            .iter_ptr()
            .map(|target| text((*target).name))
            .collect())
    }
}

/// Checks a where clause: one boolean-looking expression, nothing more.
pub fn check_where(where_clause: &str) -> Result<(), Problem> {
    let probe = format!("SELECT\n{where_clause}\n");
    let node = single_statement("where clause", where_clause, &probe)?;
    // SAFETY: a raw parse tree just built from `probe`, read within this call.
    let single_expression = unsafe {
        is_a(node, T::T_SelectStmt) && {
            let s = node.cast::<pg_sys::SelectStmt>();
            let targets = PgList::<pg_sys::ResTarget>::from_pg((*s).targetList);
            targets.len() == 1
                && targets.get_ptr(0).is_some_and(|t| (*t).name.is_null())
                && (*s).fromClause.is_null()
                && (*s).whereClause.is_null()
                && (*s).groupClause.is_null()
                && (*s).havingClause.is_null()
                && (*s).windowClause.is_null()
                && (*s).sortClause.is_null()
                && (*s).limitCount.is_null()
                && (*s).limitOffset.is_null()
                && (*s).distinctClause.is_null()
                && (*s).lockingClause.is_null()
                && (*s).withClause.is_null()
                && (*s).intoClause.is_null()
                && (*s).valuesLists.is_null()
                && (*s).op == pg_sys::SetOperation::SETOP_NONE
        }
    };
    if single_expression {
        Ok(())
    } else {
        Err(not_a(
            "where clause",
            where_clause,
            "one condition such as: total IS NULL",
        ))
    }
}

/// Whether an UPDATE has a RETURNING list (a clause node of its own from PostgreSQL 18).
unsafe fn returning(stmt: *mut pg_sys::UpdateStmt) -> bool {
    #[cfg(not(feature = "pg18"))]
    {
        !(*stmt).returningList.is_null()
    }
    #[cfg(feature = "pg18")]
    {
        !(*stmt).returningClause.is_null()
    }
}

fn single_statement(what: &str, clause: &str, probe: &str) -> Result<*mut pg_sys::Node, Problem> {
    if clause.trim().is_empty() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("the {what} is empty"),
            "A backfill needs a set clause; an empty where clause would match nothing.",
            "Pass NULL as where_clause to update every row.",
        ));
    }
    match parser::parse(probe) {
        Ok(statements) if statements.len() == 1 => Ok(statements[0].1.node()),
        Ok(_) => Err(not_a(what, clause, "one clause, not several statements")),
        Err(e) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("the {what} does not parse: {}", e.message),
            format!("The {what} was: {clause}"),
            match what {
                "set clause" => "Write it as in UPDATE ... SET, without the SET: a = 1, b = c * 2",
                _ => "Write it as in UPDATE ... WHERE, without the WHERE: a IS NULL",
            },
        )),
    }
}

fn not_a(what: &str, clause: &str, wanted: &str) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        format!("the {what} must be {wanted}"),
        format!("The {what} was: {clause}"),
        "The backfill puts the clause into its own UPDATE statements; give just the clause.",
    )
}
