//! From the changes a DBA asked for to an expand/contract plan: the script that opens the
//! window (run as a migration: its transactional part, the backfills in the worker, then the
//! publication of the new version's views), and the statements that contract or abort it.
//! Plain Rust over facts read from the catalogs, so that every plan is unit-tested.

use crate::errors::Problem;
use crate::pg::expand::Request;
use pgrx::PgSqlErrorCode;
use serde::{Deserialize, Serialize};

/// A column as the catalogs have it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Column {
    pub name: String,
    pub not_null: bool,
    /// Its default as `pg_get_expr` prints it.
    pub default_sql: Option<String>,
    /// Objects that depend on it (indexes, constraints, views, sequences), described.
    pub dependents: Vec<String>,
    /// An identity or generated column.
    pub identity_or_generated: bool,
    /// Its type as `format_type` prints it with only pg_catalog on the search path.
    pub type_sql: String,
    /// Plain btree indexes on it, which a copy rebuilds.
    pub indexes: Vec<Index>,
    /// Foreign keys from or to it, which a copy moves.
    pub foreign_keys: Vec<ForeignKey>,
    /// The sequence it owns (`serial`).
    pub sequence: Option<Sequence>,
}

/// A plain btree index: columns only, default operator classes, collations and order.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Index {
    pub name: String,
    pub unique: bool,
    /// The PRIMARY KEY or UNIQUE constraint it backs.
    pub constraint: Option<String>,
    pub primary: bool,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ForeignKey {
    pub name: String,
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
    /// MATCH, ON UPDATE, ON DELETE and DEFERRABLE clauses, each with a leading space.
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Sequence {
    /// Qualified and quoted.
    pub name: String,
    #[serde(rename = "type")]
    pub type_sql: String,
}

/// A table as the catalogs have it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Live columns in attnum order.
    pub columns: Vec<Column>,
    /// Plain (`r`); anything else is refused.
    pub plain: bool,
    /// Its row-level security policies apply to the role opening the window (not its owner
    /// unless forced, nor a role with BYPASSRLS).
    pub policies_apply: bool,
    /// Has inheritance children or partitions.
    pub has_children: bool,
    /// (grantee as SQL, privilege) of the table's grants the views carry over; `PUBLIC` as is.
    pub grants: Vec<(String, String)>,
    /// Row-level security is enabled on it (whoever it applies to).
    pub row_security: bool,
    /// Some column has privileges of its own (column-level GRANTs): its views check the
    /// table's privileges as their owner and carry them (`privileges.rs` reads them).
    pub column_grants: bool,
    /// The table's own row triggers that fire BEFORE an INSERT or UPDATE, by name.
    pub before_triggers: Vec<String>,
    /// Schemas that exist already, of those the window would create.
    pub existing_schemas: Vec<String>,
    /// It has a primary key.
    pub primary_key: bool,
    /// Its constraints that exist already, of the names the window would give.
    pub existing_constraints: Vec<String>,
    /// Relations of its schema that exist already, of the names the window would give (indexes,
    /// a renamed table).
    pub existing_relations: Vec<String>,
}

/// Quotes an identifier as needed: PostgreSQL's `quote_identifier` in the server (which
/// knows its keywords); the plan takes it as a parameter so that unit tests run without one.
pub type Quote = fn(&str) -> String;

fn qualified(q: Quote, schema: &str, name: &str) -> String {
    format!("{}.{}", q(schema), q(name))
}

impl Table {
    pub fn qualified(&self, q: Quote) -> String {
        qualified(q, &self.schema, &self.name)
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A statement to run when a window ends, run only if the column it needs still exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndStep {
    pub sql: String,
    /// (schema, table, column) that must exist for the statement to run.
    pub needs_column: Option<(String, String, String)>,
}

/// What kind of step of the expand script a statement belongs to, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Shadow columns, bridges, constraints NOT VALID: one short transaction.
    Expand,
    /// Filling the shadow columns in the worker, in batches.
    Backfill,
    /// Indexes built CONCURRENTLY, each outside a transaction, once the rows are filled.
    Build,
    /// Validation, the consistency check and the new version's views.
    Publish,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Expand => "expand",
            Stage::Backfill => "backfill",
            Stage::Build => "build",
            Stage::Publish => "publish",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub expand: Vec<(Stage, String)>,
    pub contract: Vec<EndStep>,
    pub abort: Vec<EndStep>,
    /// The schemas of views published, one per schema of a table changed.
    pub schemas: Vec<String>,
    /// Every table the window changes, qualified.
    pub tables: Vec<String>,
    /// Per bridged table, what contract checks before it swaps the columns.
    pub checks: Vec<Check>,
    /// The names of the window's own objects that DDL outside pg_migrate may not touch
    /// beside its tables: bridge functions (unqualified) and view schemas.
    pub objects: Vec<String>,
    /// (schema, table, column) of the columns contract or abort set aside, which the worker
    /// drops after `migrate.deprecated_retention`; a renamed table is listed under both names.
    pub deprecated: Vec<(String, String, String)>,
    /// What the window keeps in step with its tables' privileges while it is open.
    pub mirrors: Vec<Mirror>,
}

/// Privileges a window carries from one of its tables, again after every GRANT or REVOKE on
/// a table while the window is open, when it publishes and when it contracts: what was
/// granted or revoked on the table holds on the new version too.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Mirror {
    /// The table, qualified and quoted, as it was named when the window opened.
    pub table: String,
    /// The table's oid: what the privileges are read from and carried on.
    pub table_oid: u32,
    /// (copy, original): a copy has the column privileges of the column it replaces.
    pub copies: Vec<(String, String)>,
    /// The new version's view (qualified and quoted), when it checks the table's privileges
    /// as its owner (the table has column privileges): it then has the table's, column by
    /// column.
    pub view: Option<String>,
    /// The view's schema, unquoted: its grantees get USAGE on it.
    pub view_schema: String,
    /// (the view's column, the table's column whose privileges it has).
    pub columns: Vec<(String, String)>,
}

/// The statement that carries a window's privileges ([`Mirror`]).
pub fn mirror_statement(version: &str) -> String {
    format!(
        "SELECT migrate.mirror_window_privileges({})",
        literal(version)
    )
}

/// A bridged table's state that contract relies on: its bridge trigger, and no row whose
/// copy differs from what its original gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub table: String,
    pub trigger: String,
    /// Counts the rows out of step.
    pub out_of_step: String,
}

impl Plan {
    /// The expand statements as one script, in order.
    pub fn script(&self) -> String {
        let mut script = String::new();
        for (_, sql) in &self.expand {
            script.push_str(sql);
            script.push_str(";\n");
        }
        script
    }
}

/// A version as it appears in names: `43`, `1_2` for 1.2.
pub fn version_tag(version: &str) -> String {
    version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The schema a window publishes its views of tables in `schema` in.
pub fn view_schema(schema: &str, version: &str) -> String {
    format!("{schema}_v{}", version_tag(version))
}

pub fn shadow_column(version: &str, column: &str) -> String {
    format!("_migrate_{}_{column}", version_tag(version))
}

pub fn deprecated_column(version: &str, column: &str) -> String {
    format!("_deprecated_{}_{column}", version_tag(version))
}

/// The CHECK that proves a column NOT NULL until contract sets it.
pub fn not_null_check(version: &str, column: &str) -> String {
    format!("{}_not_null", shadow_column(version, column))
}

/// `$migrate$body$migrate$` with a tag the body does not contain.
fn dollar_quoted(body: &str) -> String {
    let mut tag = "$migrate$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$migrate{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// A string literal that reads the same whatever standard_conforming_strings says.
pub fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// A name the plan makes, refused rather than truncated by PostgreSQL past 63 bytes.
fn long_name_refused(name: String) -> Result<String, Problem> {
    if name.len() <= 63 {
        return Ok(name);
    }
    Err(Problem::new(
        PgSqlErrorCode::ERRCODE_NAME_TOO_LONG,
        format!("migrate.expand would need the name {name}, longer than 63 bytes"),
        "The names of a window's indexes and constraints are made of the version and the \
         names of those they copy.",
        "Use a shorter version, or rename the index or constraint first.",
    ))
}

fn refused(message: String, detail: String, hint: &str) -> Problem {
    Problem::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        message,
        detail,
        hint,
    )
}

/// A type change that copies: the shadow column and its up expression.
struct Copy<'a> {
    column: &'a Column,
    shadow: String,
    new_type: &'a str,
    up_plain: &'a str,
    check: Option<String>,
    /// The conversion functions the bridge calls (qualified), for a computed USING and for
    /// a conversion back the caller gave; else the bridge assigns (PostgreSQL's casts).
    up_fn: Option<Conversion<'a>>,
    down_fn: Option<Conversion<'a>>,
    /// Its default, of the new type, when the column has one.
    default: Option<String>,
}

/// A conversion the caller wrote, as the function the bridge calls: SQL over `$1`, run
/// with the rights of the role that opened the window.
struct Conversion<'a> {
    function: String,
    name: String,
    sql: &'a str,
}

impl Copy<'_> {
    /// The new value of `old` (an expression of the old type), as the bridge computes it.
    fn up(&self, old: &str) -> String {
        match &self.up_fn {
            Some(c) => format!("{}({old})", c.function),
            None => old.to_string(),
        }
    }

    /// The new value of the row's `column` (quoted), as the backfill and the checks compute
    /// it: through the conversion function when there is one (the bridge's own), else the
    /// analysed USING or cast.
    fn up_value(&self, column: &str) -> String {
        match &self.up_fn {
            Some(_) => self.up(column),
            None => format!("CAST(({}) AS {})", self.up_plain, self.new_type),
        }
    }

    /// The old value of `new` (an expression of the new type).
    fn down(&self, new: &str) -> String {
        match &self.down_fn {
            Some(c) => format!("{}({new})", c.function),
            None => new.to_string(),
        }
    }
}

/// The function the bridge calls for a conversion the caller wrote (`sql`, over `$1`).
fn conversion_of<'a>(
    version: &str,
    table: &Table,
    column: &str,
    way: &str,
    sql: Option<&'a str>,
    q: Quote,
) -> Result<Option<Conversion<'a>>, Problem> {
    sql.map(|sql| {
        let name = long_name_refused(conversion_name(version, &table.name, column, way))?;
        Ok(Conversion {
            function: qualified(q, &table.schema, &name),
            name,
            sql,
        })
    })
    .transpose()
}

/// The name of a window's conversion function of a column, `up` or `down`.
pub fn conversion_name(version: &str, table: &str, column: &str, way: &str) -> String {
    format!("_migrate_{}_{table}_{column}_{way}", version_tag(version))
}

/// The statements of `plan` that read a table's rows as the window's opener, to whom its
/// row-level security policies may apply: backfills and the counts of rows out of step.
fn rows_read(plan: &Plan) -> usize {
    plan.expand
        .iter()
        .filter(|(stage, _)| *stage == Stage::Backfill)
        .count()
        + plan.checks.len()
}

/// The plan of `version` for `tables`, each with the changes asked of it, in order.
pub fn plan<'p>(
    version: &str,
    tables: &'p [(Table, Vec<Request>)],
    q: Quote,
) -> Result<Plan, Problem> {
    let mut plan = Plan::default();
    let mut publish: Vec<String> = Vec::new();
    // Validations first in the publication: consecutive, in one transaction of their own.
    let mut validate: Vec<String> = Vec::new();
    // CHECKs on columns the backfill fills, added once it has: before, an UPDATE of a row not
    // yet filled would fail them.
    let mut after_backfill: Vec<String> = Vec::new();
    let mut constraint_names: Vec<&str> = Vec::new();
    // Foreign keys the script adds: (name, referenced (schema, table, columns)).
    #[allow(clippy::type_complexity)]
    let mut referencing: Vec<(&str, (&String, &String, &Vec<String>))> = Vec::new();
    // Every column the window copies, renames or hides: (schema, table, column).
    let mut reshaped_anywhere: Vec<(&str, &str, &str)> = Vec::new();
    // Every copied column of the plan, (schema, table, column) -> its copy, for the foreign
    // keys that move with them.
    let mut copied: Vec<((&str, &str, &str), String)> = Vec::new();
    let mut foreign_keys: Vec<&ForeignKey> = Vec::new();
    // Contract's steps after every table's columns are renamed: the old foreign keys
    // dropped, then the old keys and indexes, the old columns relaxed and the copies set NOT
    // NULL, the new keys and indexes attached, the new foreign keys renamed.
    let mut fk_drops: Vec<EndStep> = Vec::new();
    let mut old_dropped: Vec<EndStep> = Vec::new();
    let mut swaps: Vec<EndStep> = Vec::new();
    let mut fk_renames: Vec<EndStep> = Vec::new();
    let mut relaxed: Vec<EndStep> = Vec::new();
    let mut table_renames: Vec<EndStep> = Vec::new();
    let mut views: Vec<(String, String)> = Vec::new(); // (schema of the table, CREATE VIEW ...)
    let mut grants: Vec<String> = Vec::new();
    let mut usage: Vec<(String, String)> = Vec::new(); // (view schema, grantee)
    let mut drop_views: Vec<EndStep> = Vec::new();
    let mut contract: Vec<EndStep> = Vec::new();
    let mut abort: Vec<EndStep> = Vec::new();
    for (table, requests) in tables {
        let name = table.qualified(q);
        if !table.plain || table.has_children {
            return Err(refused(
                format!("migrate.expand cannot plan changes to {name}"),
                "Only plain tables without partitions or inheritance children are planned \
                 in this release."
                    .into(),
                "Change it with migrate.apply, following the guard's safe ways.",
            ));
        }
        plan.tables.push(name.clone());
        let schema = view_schema(&table.schema, version);
        // Rows the window reads as its opener (its backfill, its count of rows out of step),
        // before this table is planned.
        let reads_before = rows_read(&plan);
        if table.column_grants && table.row_security {
            return Err(refused(
                format!(
                    "migrate.expand cannot plan changes to {name}: it has both column privileges \
                     and row-level security"
                ),
                "A role with privileges on some columns reads the new version through a view \
                 that checks the table's privileges as the window's opener (a view checking \
                 them as its reader would need every column it shows), and the table's \
                 row-level security policies would then apply to the opener, not the reader."
                    .into(),
                "Grant on the whole table, or change it with migrate.apply.",
            ));
        }
        if table.existing_schemas.contains(&schema) && !plan.schemas.contains(&schema) {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_SCHEMA,
                format!("schema {schema} already exists"),
                format!(
                    "Window {version} publishes the new version of {name} in schema {schema}, \
                     which it creates itself."
                ),
                "Drop or rename that schema, or open the window under another version.",
            ));
        }
        let mut touched: Vec<&str> = Vec::new();
        let mut copies: Vec<Copy> = Vec::new();
        let mut renamed: Vec<(&str, &str)> = Vec::new();
        let mut dropped: Vec<&str> = Vec::new();
        let mut added: Vec<&str> = Vec::new();
        // Added NOT NULL with a default every row has at once.
        let mut added_not_null: Vec<&str> = Vec::new();
        let mut not_nulls: Vec<&str> = Vec::new();
        // Added columns whose existing rows the backfill fills.
        let mut filled: Vec<&str> = Vec::new();
        // (name, definition, columns)
        let mut constraints: Vec<(&str, &str, &[String])> = Vec::new();
        // (name, primary, columns)
        let mut keys: Vec<(&str, bool, &[String])> = Vec::new();
        let mut renamed_to: Option<&str> = None;
        for request in requests {
            match request {
                Request::AddConstraint {
                    name: constraint,
                    definition,
                    columns,
                    references,
                } => {
                    constraints.push((constraint, definition, columns));
                    if let Some((schema, table_name, keys)) = references {
                        referencing.push((constraint, (schema, table_name, keys)));
                    }
                    continue;
                }
                Request::AddKey {
                    name: key,
                    primary,
                    columns,
                } => {
                    keys.push((key, *primary, columns));
                    continue;
                }
                Request::RenameTable { new_name } => {
                    if renamed_to.is_some() {
                        return Err(refused(
                            format!("migrate.expand renames {name} twice"),
                            "A window makes one change per column, and renames a table once."
                                .into(),
                            "Rename it once.",
                        ));
                    }
                    if table.existing_relations.contains(new_name) {
                        return Err(Problem::new(
                            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                            format!(
                                "relation {new_name} already exists in schema {}",
                                table.schema
                            ),
                            format!("{name} cannot be renamed to it."),
                            "Choose another name.",
                        ));
                    }
                    renamed_to = Some(new_name.as_str());
                    continue;
                }
                _ => {}
            }
            let column_name = match request {
                Request::ChangeType { column, .. }
                | Request::Rename { column, .. }
                | Request::Drop { column, .. }
                | Request::SetNotNull { column }
                | Request::AddColumn { column, .. } => column.as_str(),
                Request::AddConstraint { .. }
                | Request::AddKey { .. }
                | Request::RenameTable { .. } => {
                    unreachable!("taken above")
                }
                Request::Other(what) => {
                    return Err(refused(
                        format!("migrate.expand cannot plan {what} on {name}"),
                        "The planner turns ALTER COLUMN ... TYPE, RENAME COLUMN, DROP COLUMN, \
                         ADD COLUMN, SET NOT NULL, ADD CONSTRAINT (CHECK, FOREIGN KEY, UNIQUE, \
                         PRIMARY KEY) into expand and contract steps; this subcommand is none \
                         of them."
                            .into(),
                        "Write it as an ALTER TABLE of its own: statements the planner has \
                         no steps for run as written (judged by the guard).",
                    ))
                }
            };
            if touched.contains(&column_name) {
                return Err(refused(
                    format!("migrate.expand changes column {column_name} of {name} twice"),
                    "A window makes one change per column.".into(),
                    "Change the column in two windows, one after the other.",
                ));
            }
            touched.push(column_name);
            let existing = table.column(column_name);
            if existing.is_none() && !matches!(request, Request::AddColumn { .. }) {
                return Err(Problem::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("column {column_name} of {name} does not exist"),
                    "The planner reads the table as the catalogs have it now.",
                    "Check the column's name.",
                ));
            }
            match request {
                Request::ChangeType {
                    column: _,
                    new_type,
                    up_plain,
                    rewrites,
                    down_assignable,
                    computed,
                    up_param,
                    up_default,
                    up_untrusted,
                    down_untrusted,
                    down_param,
                    mutable,
                    constrained_domain,
                } => {
                    let column = existing.expect("checked above");
                    if *constrained_domain && *rewrites {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot copy column {} of {name} to {new_type}: \
                                 a domain with constraints",
                                column.name
                            ),
                            "Adding a column of a constrained domain rewrites the table under \
                             ACCESS EXCLUSIVE, to check every row."
                                .into(),
                            "Copy to the domain's base type and add the check NOT VALID \
                             afterwards, or change the type with migrate.apply.",
                        ));
                    }
                    if *mutable {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot plan changing column {} of {name} to \
                                 {new_type}: the conversion depends on session settings",
                                column.name
                            ),
                            "It calls something that is not immutable (a timestamp with time \
                             zone conversion reads TimeZone, say): the worker's batches and \
                             each writer's session would convert the same value differently."
                                .into(),
                            "Change the type with migrate.apply, or through a type whose \
                             conversion is immutable.",
                        ));
                    }
                    if column.identity_or_generated {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot copy column {} of {name}: it is an \
                                 identity or generated column",
                                column.name
                            ),
                            "Its values come from PostgreSQL, which a copy column and a bridge \
                             cannot reproduce."
                                .into(),
                            "Change its type with migrate.apply.",
                        ));
                    }
                    if !rewrites {
                        // Binary-coercible: nothing to copy, a catalog change in place.
                        plan.expand.push((
                            Stage::Expand,
                            format!(
                                "ALTER TABLE {name} ALTER COLUMN {} TYPE {new_type}",
                                q(&column.name)
                            ),
                        ));
                        continue;
                    }
                    if !column.dependents.is_empty() {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot yet copy column {} of {name} to type \
                                 {new_type}",
                                column.name
                            ),
                            format!(
                                "Other objects depend on the column and would have to move \
                                 to the new one: {}.",
                                crate::guard::rule::listed(column.dependents.iter().cloned())
                            ),
                            "Change the type of a column that only plain indexes, PRIMARY KEY, \
                             UNIQUE and FOREIGN KEY constraints and its own sequence depend on; \
                             or move the others first.",
                        ));
                    }
                    let integer = ["smallint", "integer", "bigint"];
                    if column.sequence.is_some() && !integer.contains(&new_type.as_str()) {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot copy column {} of {name} to {new_type}: \
                                 it owns a sequence",
                                column.name
                            ),
                            "A sequence's values are smallint, integer or bigint.".into(),
                            "Change the type to one of those, or move the sequence first.",
                        ));
                    }
                    let down_hint = format!(
                        "Give the conversion back, an expression of the column's new value \
                         under its name: migrate.expand(..., options => '{{\"{}.{}\": \
                         {{\"down\": \"...\"}}}}'); or change the column with migrate.apply.",
                        table.name, column.name
                    );
                    if *computed && up_param.is_none() {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot bridge column {} of {name}: USING \
                                 {up_plain} reads other columns",
                                column.name
                            ),
                            "The bridge converts each value the old version writes on its \
                             own; a value computed from other columns would go stale when they \
                             change."
                                .into(),
                            "Compute the new value from the column alone, or add the new \
                             column (ADD COLUMN) and fill it with migrate.backfill yourself.",
                        ));
                    }
                    let untrusted = up_untrusted
                        .as_ref()
                        .or(down_untrusted.as_ref().filter(|_| down_param.is_none()));
                    if let Some(why) = untrusted {
                        return Err(crate::window::untrusted(
                            &format!("migrate.expand of {name}"),
                            &column.name,
                            why,
                        ));
                    }
                    if *computed && column.sequence.is_some() {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot compute column {} of {name}: it owns a \
                                 sequence",
                                column.name
                            ),
                            "Its values are drawn from the sequence; a USING that computes \
                             new ones from them would make the sequence's next values wrong."
                                .into(),
                            "Change the type with USING a plain cast.",
                        ));
                    }
                    if *computed && down_param.is_none() {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot bridge column {} of {name}: its new \
                                 value is computed by USING {up_plain}",
                                column.name
                            ),
                            "During the window, what the new version writes must be converted \
                             back for the old one; for a USING that is more than a cast, that \
                             is not a cast back, and pg_migrate cannot derive it."
                                .into(),
                            &down_hint,
                        ));
                    }
                    if !down_assignable && down_param.is_none() {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot bridge column {} of {name}: {new_type} \
                                 does not convert back to its old type",
                                column.name
                            ),
                            "During the window, what the new version writes is copied back \
                             to the old column by assignment, and there is no such cast."
                                .into(),
                            &down_hint,
                        ));
                    }
                    let convert = |way: &str, sql: Option<&'p str>| {
                        conversion_of(version, table, &column.name, way, sql, q)
                    };
                    let up_fn = if *computed {
                        convert("up", up_param.as_deref())?
                    } else {
                        None
                    };
                    let down_fn = convert("down", down_param.as_deref())?;
                    // The copy's default: the old one converted as the old version's
                    // values are.
                    let default = match (&up_fn, &column.default_sql) {
                        (_, None) => None,
                        (None, Some(old)) => Some(format!("CAST(({old}) AS {new_type})")),
                        (Some(_), Some(_)) => Some(up_default.clone().ok_or_else(|| {
                            refused(
                                format!(
                                    "migrate.expand cannot give the copy of column {} of {name} \
                                     a default",
                                    column.name
                                ),
                                "Its USING could not be applied to the column's default.".into(),
                                "Drop the column's default first, or change the type with \
                                 migrate.apply.",
                            )
                        })?),
                    };
                    let shadow = shadow_column(version, &column.name);
                    let check = column
                        .not_null
                        .then(|| not_null_check(version, &column.name));
                    copies.push(Copy {
                        column,
                        shadow,
                        new_type,
                        up_plain,
                        check,
                        up_fn,
                        down_fn,
                        default,
                    });
                }
                Request::Rename { column, new_name } => {
                    if table.column(new_name).is_some() {
                        return Err(Problem::new(
                            PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                            format!("column {new_name} of {name} already exists"),
                            format!("{column} cannot be renamed to it."),
                            "Choose another name.",
                        ));
                    }
                    renamed.push((column, new_name));
                }
                Request::Drop { column, cascade } => {
                    let existing = existing.expect("checked above");
                    if *cascade {
                        return Err(refused(
                            format!("migrate.expand cannot drop column {column} of {name} CASCADE"),
                            "A window hides the column from the new version and keeps it, \
                             renamed, after contract; nothing else is dropped."
                                .into(),
                            "Leave out CASCADE.",
                        ));
                    }
                    if existing.not_null && existing.default_sql.is_none() {
                        return Err(refused(
                            format!(
                                "migrate.expand cannot hide column {column} of {name}: it is \
                                 NOT NULL without a default"
                            ),
                            "The new version does not see the column, so its inserts would \
                             leave it NULL and fail."
                                .into(),
                            "Give the column a default first (ALTER TABLE ... ALTER COLUMN ... \
                             SET DEFAULT, with migrate.apply), then expand.",
                        ));
                    }
                    // What PostgreSQL would refuse to drop it for: a view, a policy, a
                    // function's body (indexes and constraints go with it). The window keeps
                    // the column, set aside, and they would go on using it.
                    let users: Vec<&String> = existing
                        .dependents
                        .iter()
                        .filter(|d| {
                            ["rule ", "policy ", "function ", "procedure "]
                                .iter()
                                .any(|kind| d.starts_with(kind))
                        })
                        .collect();
                    if !users.is_empty() {
                        return Err(Problem::new(
                            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                            format!(
                                "migrate.expand cannot hide column {column} of {name}: other \
                                 objects use it"
                            ),
                            format!(
                                "After contract the column is set aside, and they would go \
                                 on using it while no version writes it: {}.",
                                crate::guard::rule::listed(users.into_iter().cloned())
                            ),
                            "Change or drop them first (with migrate.apply), then expand.",
                        ));
                    }
                    dropped.push(column);
                }
                Request::AddColumn {
                    column,
                    type_sql,
                    default_sql,
                    volatile_default,
                    not_null,
                    other_constraints,
                } => {
                    if existing.is_some() {
                        return Err(Problem::new(
                            PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                            format!("column {column} of {name} already exists"),
                            "The planner reads the table as the catalogs have it now.",
                            "Choose another name.",
                        ));
                    }
                    if *other_constraints {
                        return Err(refused(
                            format!("migrate.expand cannot yet plan adding column {column} to {name} as written"),
                            "Planned are columns with or without a default, NULL or NOT NULL. \
                             Inline constraints, identity, generated columns and COLLATE are \
                             not."
                                .into(),
                            "Add the column plain in this window, and its constraints in a \
                             window after it (the planner reads the table as it is before the \
                             script runs).",
                        ));
                    }
                    let ident = q(column);
                    let mut sql = format!("ALTER TABLE {name} ADD COLUMN {ident} {type_sql}");
                    if let (Some(default), false) = (default_sql, volatile_default) {
                        sql.push_str(&format!(" DEFAULT {default}"));
                    }
                    // With a volatile default the rows are filled by the backfill: NOT NULL
                    // is then proven by a CHECK validated after it, and set at contract.
                    if *not_null && !*volatile_default {
                        sql.push_str(" NOT NULL");
                        added_not_null.push(column);
                    } else if *not_null {
                        not_nulls.push(column);
                    }
                    if *volatile_default {
                        filled.push(column);
                    }
                    plan.expand.push((Stage::Expand, sql));
                    if let (Some(default), true) = (default_sql, volatile_default) {
                        // Every row gets its own value: new rows by the default, existing
                        // ones by the backfill, never by a rewrite under ACCESS EXCLUSIVE.
                        // The backfill sets the column's DEFAULT, as stored (bound to its
                        // objects), not the printed text: its batches run under the opener's
                        // search path, not the plan's pinned one.
                        plan.expand.push((
                            Stage::Expand,
                            format!(
                                "ALTER TABLE {name} ALTER COLUMN {ident} SET DEFAULT {default}"
                            ),
                        ));
                        plan.expand.push((
                            Stage::Backfill,
                            format!(
                                "SELECT migrate.backfill({}, {}, {})",
                                literal(&name),
                                literal(&format!("{ident} = DEFAULT")),
                                literal(&format!("{ident} IS NULL"))
                            ),
                        ));
                    }
                    added.push(column);
                }
                Request::SetNotNull { column } => {
                    if !existing.expect("checked above").not_null {
                        not_nulls.push(column);
                    }
                }
                Request::Other(_)
                | Request::AddConstraint { .. }
                | Request::AddKey { .. }
                | Request::RenameTable { .. } => {
                    unreachable!("refused or taken above")
                }
            }
        }
        let reshaped = |c: &str| {
            copies.iter().any(|copy| copy.column.name == c)
                || renamed.iter().any(|(r, _)| *r == c)
                || dropped.contains(&c)
        };
        reshaped_anywhere.extend(
            copies
                .iter()
                .map(|c| c.column.name.as_str())
                .chain(renamed.iter().map(|(r, _)| *r))
                .chain(dropped.iter().copied())
                .map(|c| (table.schema.as_str(), table.name.as_str(), c)),
        );
        for (constraint, columns) in constraints
            .iter()
            .map(|(n, _, c)| (*n, *c))
            .chain(keys.iter().map(|(n, _, c)| (*n, *c)))
        {
            if let Some(column) = columns.iter().find(|c| reshaped(c)) {
                return Err(refused(
                    format!(
                        "migrate.expand cannot add {constraint} to {name}: the window also \
                         changes column {column}"
                    ),
                    "The constraint would be added to the column as it is now, and left on \
                     the old column when contract swaps or renames it."
                        .into(),
                    "Add the constraint in a window of its own, after this one is contracted.",
                ));
            }
            if table.existing_constraints.iter().any(|c| c == constraint) {
                return Err(Problem::new(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                    format!("constraint {constraint} for relation {name} already exists"),
                    "A window adds its constraints under their own names, and abort drops \
                     them by those names.",
                    "Name the constraint otherwise.",
                ));
            }
            if constraint_names.contains(&constraint) {
                return Err(Problem::new(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                    format!("migrate.expand would add two constraints named {constraint}"),
                    "Unnamed constraints get PostgreSQL's names (table, columns, kind), which \
                     two constraints on the same columns share.",
                    "Name them: ADD CONSTRAINT name ...",
                ));
            }
            constraint_names.push(constraint);
        }
        let primaries = keys.iter().filter(|(_, primary, _)| *primary).count();
        if primaries > 1 || (primaries == 1 && table.primary_key) {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                format!("multiple primary keys for table {name} are not allowed"),
                if table.primary_key {
                    "The table has a primary key already."
                } else {
                    "The script adds more than one."
                },
                "Add a UNIQUE constraint instead, or drop the primary key first.",
            ));
        }
        for (key, primary, columns) in &keys {
            if table.existing_relations.iter().any(|r| r == key) {
                return Err(Problem::new(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                    format!("relation {key} already exists in schema {}", table.schema),
                    format!("The index of constraint {key} would be built under that name."),
                    "Name the constraint otherwise.",
                ));
            }
            if *primary {
                // A primary key's columns must be NOT NULL: proven first, like SET NOT NULL.
                for column in columns.iter().map(String::as_str) {
                    let nullable = match table.column(column) {
                        Some(c) => !c.not_null,
                        None => !added_not_null.contains(&column),
                    };
                    if nullable && !not_nulls.contains(&column) {
                        long_name_refused(not_null_check(version, column))?;
                        not_nulls.push(column);
                    }
                }
            }
        }
        for column in &not_nulls {
            let check = q(&not_null_check(version, column));
            let add = format!(
                "ALTER TABLE {name} ADD CONSTRAINT {check} CHECK ({} IS NOT NULL) NOT VALID",
                q(column)
            );
            if filled.contains(column) {
                after_backfill.push(add);
            } else {
                plan.expand.push((Stage::Expand, add));
            }
            validate.push(format!("ALTER TABLE {name} VALIDATE CONSTRAINT {check}"));
        }
        for (constraint, definition, _) in &constraints {
            let add = format!(
                "ALTER TABLE {name} ADD CONSTRAINT {} {definition} NOT VALID",
                q(constraint)
            );
            // A foreign key once the window's unique indexes are built: it may reference one.
            if referencing.iter().any(|(c, _)| c == constraint) {
                after_backfill.push(add);
            } else {
                plan.expand.push((Stage::Expand, add));
            }
            validate.push(format!(
                "ALTER TABLE {name} VALIDATE CONSTRAINT {}",
                q(constraint)
            ));
        }
        for (key, _, columns) in &keys {
            let columns: Vec<String> = columns.iter().map(|c| q(c)).collect();
            plan.expand.push((
                Stage::Build,
                format!(
                    "CREATE UNIQUE INDEX CONCURRENTLY {} ON {name} ({})",
                    q(key),
                    columns.join(", ")
                ),
            ));
        }
        let is_new = format!(
            "migrate.writes_version({}, {})",
            literal(version),
            literal(&schema)
        );
        if !copies.is_empty() {
            let bridge_trigger = trigger_name(version);
            let after: Vec<&String> = table
                .before_triggers
                .iter()
                .filter(|t| t.as_bytes() > bridge_trigger.as_bytes())
                .collect();
            if !after.is_empty() {
                return Err(refused(
                    format!(
                        "migrate.expand cannot bridge {name}: trigger {} would fire after the \
                         bridge",
                        after[0]
                    ),
                    format!(
                        "PostgreSQL fires BEFORE triggers in name order; the bridge, \
                         {bridge_trigger}, must see what every other trigger set, or the copy \
                         misses their changes."
                    ),
                    "Rename the trigger to sort before zz_migrate_ (ALTER TRIGGER ... RENAME \
                     TO ...), then expand.",
                ));
            }
            bridge(version, table, &copies, &is_new, &mut plan.expand, q);
            plan.checks.push(Check {
                table: name.clone(),
                trigger: bridge_trigger,
                out_of_step: format!(
                    "SELECT count(*) FROM {name} WHERE {}",
                    out_of_step(&copies, q)
                ),
            });
            plan.objects.push(format!(
                "_migrate_{}_{}_bridge",
                version_tag(version),
                table.name
            ));
            plan.objects.extend(
                copies
                    .iter()
                    .flat_map(|c| [&c.up_fn, &c.down_fn])
                    .flatten()
                    .map(|c| c.name.clone()),
            );
            let up = |c: &Copy| match &c.up_fn {
                Some(_) => c.up(&q(&c.column.name)),
                None => c.up_plain.to_string(),
            };
            let sets: Vec<String> = copies
                .iter()
                .map(|c| format!("{} = {}", q(&c.shadow), up(c)))
                .collect();
            let pending: Vec<String> = copies
                .iter()
                .map(|c| format!("({} IS NULL AND ({}) IS NOT NULL)", q(&c.shadow), up(c)))
                .collect();
            plan.expand.push((
                Stage::Backfill,
                format!(
                    "SELECT migrate.backfill({}, {}, {})",
                    literal(&name),
                    literal(&sets.join(", ")),
                    literal(&pending.join(" OR "))
                ),
            ));
            for check in copies.iter().filter_map(|c| c.check.as_ref()) {
                validate.push(format!(
                    "ALTER TABLE {name} VALIDATE CONSTRAINT {}",
                    q(check)
                ));
            }
            publish.push(consistency_check(version, table, &copies, q));
        }
        // The new version's view: the table's columns in order, as the new version names and
        // types them.
        let mut select: Vec<String> = Vec::new();
        // (the table's column, what the view calls it)
        let mut shown: Vec<(&str, &str)> = Vec::new();
        for column in &table.columns {
            let ident = q(&column.name);
            // Columns an earlier window set aside are no version's.
            if dropped.contains(&column.name.as_str()) || column.name.starts_with("_deprecated_") {
                continue;
            }
            if let Some(copy) = copies.iter().find(|c| c.column.name == column.name) {
                select.push(format!("{} AS {ident}", q(&copy.shadow)));
                shown.push((&column.name, &column.name));
            } else if let Some((_, new_name)) = renamed.iter().find(|(c, _)| *c == column.name) {
                select.push(format!("{ident} AS {}", q(new_name)));
                shown.push((&column.name, new_name));
            } else {
                select.push(ident);
                shown.push((&column.name, &column.name));
            }
        }
        select.extend(added.iter().map(|c| q(c)));
        let view = qualified(q, &schema, renamed_to.unwrap_or(&table.name));
        if let Some(new_name) = renamed_to {
            // Last of all: every other step names the table as it is.
            table_renames.push(EndStep {
                sql: format!("ALTER TABLE {name} RENAME TO {}", q(new_name)),
                needs_column: None,
            });
        }
        views.push((
            schema.clone(),
            format!(
                "CREATE VIEW {view} WITH (security_invoker = {}) AS SELECT {} FROM {name}",
                !table.column_grants,
                select.join(", ")
            ),
        ));
        drop_views.push(EndStep {
            sql: format!("DROP VIEW IF EXISTS {view}"),
            needs_column: None,
        });
        // Each version's write statements counted, for migrate.windows and the expiry
        // policies: BEFORE ... FOR EACH STATEMENT (no after-trigger queue; a statement that fails
        // still counts as its version writing), ALWAYS (replica-role writers count too).
        let counter = q(&counter_name(version));
        plan.expand.push((
            Stage::Expand,
            format!(
                "CREATE TRIGGER {counter} BEFORE INSERT OR UPDATE OR DELETE ON {name} FOR EACH \
                 STATEMENT EXECUTE FUNCTION migrate.count_window_write({}, {})",
                literal(version),
                literal(&schema)
            ),
        ));
        plan.expand.push((
            Stage::Expand,
            format!("ALTER TABLE {name} ENABLE ALWAYS TRIGGER {counter}"),
        ));
        drop_views.push(EndStep {
            sql: format!("DROP TRIGGER IF EXISTS {counter} ON {name}"),
            needs_column: None,
        });
        // A view that checks privileges as its owner has the table's, column by column,
        // carried when it publishes and after every GRANT or REVOKE; one that checks them
        // as its reader needs the table's grants on itself only.
        let owner_checked = table.column_grants;
        if !owner_checked {
            for (grantee, privilege) in &table.grants {
                grants.push(format!("GRANT {privilege} ON {view} TO {grantee}"));
                if !usage.iter().any(|(s, g)| *s == schema && g == grantee) {
                    usage.push((schema.clone(), grantee.clone()));
                }
            }
        }
        if owner_checked || !copies.is_empty() {
            plan.mirrors.push(Mirror {
                table: name.clone(),
                table_oid: table.oid,
                copies: copies
                    .iter()
                    .map(|c| (c.shadow.clone(), c.column.name.clone()))
                    .collect(),
                view: owner_checked.then(|| view.clone()),
                view_schema: schema.clone(),
                columns: shown
                    .iter()
                    .map(|(column, as_shown)| (as_shown.to_string(), column.to_string()))
                    .chain(added.iter().map(|c| (c.to_string(), c.to_string())))
                    .collect(),
            });
        }
        for table_name in std::iter::once(table.name.as_str()).chain(renamed_to) {
            let set_aside = copies
                .iter()
                .flat_map(|c| {
                    [
                        deprecated_column(version, &c.column.name),
                        deprecated_column(version, &c.shadow),
                    ]
                })
                .chain(dropped.iter().map(|c| deprecated_column(version, c)));
            plan.deprecated
                .extend(set_aside.map(|c| (table.schema.clone(), table_name.to_string(), c)));
        }
        if !plan.schemas.contains(&schema) {
            plan.schemas.push(schema.clone());
            plan.objects.push(schema.clone());
        }
        end_steps(
            version,
            table,
            (&copies, &renamed, &dropped),
            (&mut contract, &mut abort, &mut relaxed),
            q,
        );
        let step = |sql: String| EndStep {
            sql,
            needs_column: None,
        };
        // The copies' indexes, built on the copies once they are filled; at contract each
        // takes the place (and the constraint) of the one it copies.
        let mut indexes: Vec<&Index> = Vec::new();
        for copy in &copies {
            for index in &copy.column.indexes {
                if !indexes.iter().any(|i| i.name == index.name) {
                    indexes.push(index);
                }
            }
            foreign_keys.extend(copy.column.foreign_keys.iter());
            copied.push((
                (&table.schema, &table.name, &copy.column.name),
                copy.shadow.clone(),
            ));
            if let Some(sequence) = &copy.column.sequence {
                swaps.push(step(format!(
                    "ALTER SEQUENCE {} OWNED BY {name}.{}",
                    sequence.name,
                    q(&copy.column.name)
                )));
                if sequence.type_sql != copy.new_type {
                    swaps.push(step(format!(
                        "ALTER SEQUENCE {} AS {}",
                        sequence.name, copy.new_type
                    )));
                }
            }
        }
        for index in indexes {
            let new =
                long_name_refused(format!("_migrate_{}_{}", version_tag(version), index.name))?;
            let columns: Vec<String> = index
                .columns
                .iter()
                .map(
                    |c| match copies.iter().find(|copy| copy.column.name == *c) {
                        Some(copy) => q(&copy.shadow),
                        None => q(c),
                    },
                )
                .collect();
            plan.expand.push((
                Stage::Build,
                format!(
                    "CREATE {}INDEX CONCURRENTLY {} ON {name} ({})",
                    if index.unique { "UNIQUE " } else { "" },
                    q(&new),
                    columns.join(", ")
                ),
            ));
            let (old_index, new_index) = (
                qualified(q, &table.schema, &index.name),
                qualified(q, &table.schema, &new),
            );
            match &index.constraint {
                Some(constraint) => {
                    old_dropped.push(step(format!(
                        "ALTER TABLE {name} DROP CONSTRAINT {}",
                        q(constraint)
                    )));
                    swaps.push(step(format!(
                        "ALTER TABLE {name} ADD CONSTRAINT {} {} USING INDEX {}",
                        q(constraint),
                        if index.primary {
                            "PRIMARY KEY"
                        } else {
                            "UNIQUE"
                        },
                        q(&new)
                    )));
                }
                None => {
                    old_dropped.push(step(format!("DROP INDEX {old_index}")));
                    swaps.push(step(format!(
                        "ALTER INDEX {new_index} RENAME TO {}",
                        q(&index.name)
                    )));
                }
            }
            abort.push(step(format!("DROP INDEX IF EXISTS {new_index}")));
        }
        for column in &not_nulls {
            // Proven by the validated CHECK: no scan.
            let check = q(&not_null_check(version, column));
            contract.push(step(format!(
                "ALTER TABLE {name} ALTER COLUMN {} SET NOT NULL",
                q(column)
            )));
            contract.push(step(format!("ALTER TABLE {name} DROP CONSTRAINT {check}")));
            abort.push(step(format!(
                "ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {check}"
            )));
        }
        for (constraint, _, _) in &constraints {
            abort.push(step(format!(
                "ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {}",
                q(constraint)
            )));
        }
        for (key, primary, _) in &keys {
            let key = q(key);
            contract.push(step(format!(
                "ALTER TABLE {name} ADD CONSTRAINT {key} {} USING INDEX {key}",
                if *primary { "PRIMARY KEY" } else { "UNIQUE" }
            )));
            abort.push(step(format!(
                "DROP INDEX IF EXISTS {}.{key}",
                q(&table.schema)
            )));
        }
        // Only those: a rename or a hidden column reads no row, and a VALIDATE or an index
        // build reads every row whatever the policies.
        if table.policies_apply && rows_read(&plan) > reads_before {
            return Err(Problem::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "migrate.expand cannot plan changes to {name}: its row-level security \
                     policies apply to you"
                ),
                "The backfill and the checks that the two versions' columns agree run as the \
                 role that opens the window, and must see every row: a policy that hid some \
                 would leave their copies empty, which contract would then keep.",
                "Open the window as the table's owner, without FORCE ROW LEVEL SECURITY on the \
                 table, or give the owner BYPASSRLS.",
            ));
        }
    }
    // A foreign key the script adds to a column the window reshapes would stay on the old
    // column at contract, and keep the old key from being dropped.
    for (constraint, (schema, table_name, keys)) in &referencing {
        if let Some(column) = keys.iter().find(|k| {
            reshaped_anywhere.contains(&(schema.as_str(), table_name.as_str(), k.as_str()))
        }) {
            return Err(refused(
                format!(
                    "migrate.expand cannot add {constraint}: it references column {column} of \
                     {}, which the window also changes",
                    qualified(q, schema, table_name)
                ),
                "The foreign key would be added to the column as it is now; contract could not \
                 replace that column's key while it depends on it."
                    .into(),
                "Add the foreign key in a window of its own, after this one is contracted.",
            ));
        }
    }
    // Foreign keys from or to copied columns: a new one between the columns as they will be
    // (added once the copies and their unique indexes are there, then validated); at
    // contract it takes the old one's place.
    let mut moved: Vec<(&str, &str, &str)> = Vec::new();
    for fk in foreign_keys {
        if moved.contains(&(&fk.schema, &fk.table, &fk.name)) {
            continue;
        }
        moved.push((&fk.schema, &fk.table, &fk.name));
        let side = |schema: &str, table: &str, columns: &[String]| -> Vec<String> {
            columns
                .iter()
                .map(|c| {
                    match copied
                        .iter()
                        .find(|((s, t, col), _)| *s == schema && *t == table && *col == c)
                    {
                        Some((_, shadow)) => q(shadow),
                        None => q(c),
                    }
                })
                .collect()
        };
        let table = qualified(q, &fk.schema, &fk.table);
        let new = q(&long_name_refused(format!(
            "_migrate_{}_{}",
            version_tag(version),
            fk.name
        ))?);
        after_backfill.push(format!(
            "ALTER TABLE {table} ADD CONSTRAINT {new} FOREIGN KEY ({}) REFERENCES {} ({}){} \
             NOT VALID",
            side(&fk.schema, &fk.table, &fk.columns).join(", "),
            qualified(q, &fk.ref_schema, &fk.ref_table),
            side(&fk.ref_schema, &fk.ref_table, &fk.ref_columns).join(", "),
            fk.options
        ));
        validate.push(format!("ALTER TABLE {table} VALIDATE CONSTRAINT {new}"));
        let step = |sql: String| EndStep {
            sql,
            needs_column: None,
        };
        fk_drops.push(step(format!(
            "ALTER TABLE {table} DROP CONSTRAINT {}",
            q(&fk.name)
        )));
        fk_renames.push(step(format!(
            "ALTER TABLE {table} RENAME CONSTRAINT {new} TO {}",
            q(&fk.name)
        )));
        abort.insert(
            0,
            step(format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {new}"
            )),
        );
        if !plan.tables.contains(&table) {
            plan.tables.push(table);
        }
    }
    contract.extend(fk_drops);
    contract.extend(old_dropped);
    contract.extend(relaxed);
    contract.extend(swaps);
    contract.extend(fk_renames);
    contract.extend(table_renames);
    // Published last: once the copies are filled, validated and found in step.
    publish.splice(0..0, after_backfill.into_iter().chain(validate));
    let mut created = Vec::new();
    for (schema, view) in views {
        if !created.contains(&schema) {
            publish.push(format!("CREATE SCHEMA {}", q(&schema)));
            created.push(schema);
        }
        publish.push(view);
    }
    publish.extend(grants);
    publish.extend(
        usage
            .into_iter()
            .map(|(s, g)| format!("GRANT USAGE ON SCHEMA {} TO {g}", q(&s))),
    );
    if !plan.mirrors.is_empty() {
        publish.push(mirror_statement(version));
    }
    plan.expand
        .extend(publish.into_iter().map(|sql| (Stage::Publish, sql)));
    // Every table's bridge before any backfill: one transaction, then the worker's batches.
    plan.expand.sort_by_key(|(stage, _)| *stage);
    let drop_schemas: Vec<EndStep> = plan
        .schemas
        .iter()
        .map(|s| EndStep {
            sql: format!("DROP SCHEMA IF EXISTS {}", q(s)),
            needs_column: None,
        })
        .collect();
    // The copies take the privileges their originals have now, before they are swapped.
    let mirrored: Vec<EndStep> = (!plan.mirrors.is_empty())
        .then(|| EndStep {
            sql: mirror_statement(version),
            needs_column: None,
        })
        .into_iter()
        .collect();
    plan.contract = [mirrored, drop_views.clone(), drop_schemas.clone(), contract].concat();
    plan.abort = [drop_views, drop_schemas, abort].concat();
    check_names(&plan, version, tables)?;
    Ok(plan)
}

/// The trigger that keeps each copied column and its original in step, both ways.
///
/// An UPDATE is bridged by what it changed, whoever wrote it: the original alone, and the
/// copy follows; the copy alone (to a value the original does not already give), and the
/// original follows; both, and they must agree, or the write fails (never silent drift); a
/// row not backfilled yet gets its copy. An INSERT sets both columns (one by its default),
/// so there the writer's version decides: the new version's (by `migrate.client_version`,
/// or the first schema of its search path) writes the original from the copy, anyone
/// else's the copy from the original.
///
/// Conversions are assignments, PostgreSQL's own casts (a computed USING is refused), so the
/// function runs as the writer, as the writer's own assignment would, and names nothing a
/// search path could resolve: comparisons are of `pg_catalog.text` forms with
/// `OPERATOR(pg_catalog.=)`, and `migrate.writes_version` is qualified. A `BEFORE` row
/// trigger named to fire after the table's own, `ENABLE ALWAYS` so that a replica-role
/// writer is bridged too.
fn bridge(
    version: &str,
    table: &Table,
    copies: &[Copy],
    is_new: &str,
    out: &mut Vec<(Stage, String)>,
    q: Quote,
) {
    let name = table.qualified(q);
    let function = bridge_function(version, table, q);
    // The planner refused new types with domain checks (adding such a column rewrites the
    // table under ACCESS EXCLUSIVE); their owner could have added one since.
    out.push((Stage::Expand, unconstrained_check(copies)));
    // Before the copies are added: the trial row is read under ACCESS SHARE, not under the
    // ACCESS EXCLUSIVE lock that adding a column takes for the rest of the transaction.
    // The conversions the caller wrote, as functions every writer's bridge calls with the
    // writer's rights, as PostgreSQL's own casts are: PostgreSQL's own code only (the planner
    // refuses anything else), in SQL-standard bodies, which PostgreSQL resolves to objects
    // once, as the function is created, and keeps them from being dropped; a name created
    // later, or a writer's search path, changes nothing.
    for copy in copies {
        let ways = [
            (&copy.up_fn, copy.column.type_sql.as_str(), copy.new_type),
            (&copy.down_fn, copy.new_type, copy.column.type_sql.as_str()),
        ];
        for (conversion, from, to) in ways {
            let Some(c) = conversion else { continue };
            out.push((
                Stage::Expand,
                format!(
                    "CREATE FUNCTION {}({from}) RETURNS {to} LANGUAGE sql IMMUTABLE RETURN {}",
                    c.function, c.sql
                ),
            ));
            out.push((
                Stage::Expand,
                format!("GRANT EXECUTE ON FUNCTION {}({from}) TO PUBLIC", c.function),
            ));
        }
    }
    // What the bodies were resolved to, checked as they are stored: PostgreSQL's own objects
    // (and the column's types) only, whatever the search path of the expand was.
    let functions: Vec<String> = copies
        .iter()
        .flat_map(|c| {
            [
                (&c.up_fn, c.column.type_sql.as_str()),
                (&c.down_fn, c.new_type),
            ]
        })
        .filter_map(|(c, from)| c.as_ref().map(|c| format!("{}({from})", c.function)))
        .collect();
    if !functions.is_empty() {
        out.push((Stage::Expand, resolved_check(&functions)));
    }
    // Tried on a row before any writer calls them: one that cannot run fails the expand, not
    // every write after it.
    for copy in copies
        .iter()
        .filter(|c| c.up_fn.is_some() || c.down_fn.is_some())
    {
        let column = q(&copy.column.name);
        out.push((
            Stage::Expand,
            format!(
                "SELECT {} FROM {name} LIMIT 1",
                copy.down(&copy.up_value(&column))
            ),
        ));
    }
    for copy in copies {
        let shadow = q(&copy.shadow);
        out.push((
            Stage::Expand,
            format!("ALTER TABLE {name} ADD COLUMN {shadow} {}", copy.new_type),
        ));
        if let Some(default) = &copy.default {
            // Apart from ADD COLUMN, which would give every existing row the default: an
            // insert of the new version that leaves the column out gets the old default.
            out.push((
                Stage::Expand,
                format!("ALTER TABLE {name} ALTER COLUMN {shadow} SET DEFAULT {default}"),
            ));
        }
        if let Some(check) = &copy.check {
            // NOT VALID: checked for rows written from now on (which the bridge fills), and
            // validated after the backfill without blocking writes.
            out.push((
                Stage::Expand,
                format!(
                    "ALTER TABLE {name} ADD CONSTRAINT {} CHECK ({shadow} IS NOT NULL) NOT VALID",
                    q(check)
                ),
            ));
        }
    }
    let mut declare = String::new();
    let mut insert_new = String::new();
    let mut insert_old = String::new();
    let mut update = String::new();
    for (i, copy) in copies.iter().enumerate() {
        let shadow = q(&copy.shadow);
        let column = q(&copy.column.name);
        declare.push_str(&format!("    converted_{i} {};\n", copy.new_type));
        let (up, down) = (
            copy.up(&format!("NEW.{column}")),
            copy.down(&format!("NEW.{shadow}")),
        );
        insert_new.push_str(&format!("            NEW.{column} := {down};\n"));
        insert_old.push_str(&format!("            NEW.{shadow} := {up};\n"));
        let column_changed = differs(&format!("NEW.{column}"), &format!("OLD.{column}"));
        let shadow_changed = differs(&format!("NEW.{shadow}"), &format!("OLD.{shadow}"));
        let disagree = differs(&format!("converted_{i}"), &format!("NEW.{shadow}"));
        update.push_str(&format!(
            "        converted_{i} := {up};\n        IF {column_changed} AND {shadow_changed} THEN\n            IF {disagree} THEN\n                RAISE EXCEPTION USING ERRCODE = '23000',\n                    MESSAGE = {},\n                    DETAIL = {},\n                    HINT = {};\n            END IF;\n        ELSIF {column_changed} THEN\n            NEW.{shadow} := converted_{i};\n        ELSIF {shadow_changed} THEN\n            IF {disagree} THEN\n                NEW.{column} := {down};\n            END IF;\n        ELSIF NEW.{shadow} IS NULL AND NEW.{column} IS NOT NULL THEN\n            NEW.{shadow} := converted_{i};\n        END IF;\n",
            literal(&format!(
                "pg_migrate: an UPDATE of {name} sets {} and {} to values that disagree",
                copy.column.name, copy.shadow
            )),
            literal(&format!(
                "During expand window {version}, {} is {} to the old version and {} to the \
                 new one; one write set both, differently.",
                copy.column.name, copy.column.name, copy.shadow
            )),
            literal("Write the column through one version only: the table, or the new version's view."),
        ));
    }
    let body = format!(
        "\nDECLARE\n{declare}BEGIN\n    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN\n        IF {is_new} THEN\n{insert_new}        ELSE\n{insert_old}        END IF;\n    ELSE\n{update}    END IF;\n    RETURN NEW;\nEND\n"
    );
    out.push((
        Stage::Expand,
        format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {}",
            dollar_quoted(&body)
        ),
    ));
    out.push((
        Stage::Expand,
        format!("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC"),
    ));
    let trigger = q(&trigger_name(version));
    out.push((
        Stage::Expand,
        format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {name} FOR EACH ROW \
             EXECUTE FUNCTION {function}()"
        ),
    ));
    out.push((
        Stage::Expand,
        format!("ALTER TABLE {name} ENABLE ALWAYS TRIGGER {trigger}"),
    ));
}

/// Fails the expand if a copy's type is now a domain with checks (at any depth).
fn unconstrained_check(copies: &[Copy]) -> String {
    let types = copies
        .iter()
        .map(|c| format!("{}::pg_catalog.regtype", literal(c.new_type)))
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        "
BEGIN
    IF EXISTS (WITH RECURSIVE d(t) AS (
                   SELECT pg_catalog.unnest(ARRAY[{types}])::pg_catalog.oid
                   UNION
                   SELECT y.typbasetype FROM pg_catalog.pg_type y, d
                    WHERE y.oid OPERATOR(pg_catalog.=) d.t AND y.typtype OPERATOR(pg_catalog.=) 'd')
               SELECT FROM pg_catalog.pg_constraint c, d
                WHERE c.contypid OPERATOR(pg_catalog.=) d.t) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = {},
            DETAIL = {},
            HINT = {};
    END IF;
END
",
        literal("pg_migrate: a window's new type has domain checks"),
        literal(
            "A check was added to the domain after the window was planned; adding a column of \
             it would rewrite the table under ACCESS EXCLUSIVE."
        ),
        literal("Abort the window, and copy to the domain's base type."),
    );
    format!("DO {}", dollar_quoted(&body))
}

/// Pins the search path of the transaction a planned statement runs in to `pg_catalog,
/// pg_temp`.
pub const PIN_PATH: &str =
    "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)";

/// The plan's statements hold expressions PostgreSQL printed with only pg_catalog on the
/// path: its own functions unqualified, everything else qualified. Parsed again under the
/// opener's path, an unqualified built-in could resolve to a better-matching function of a
/// schema on it (one taking `text, integer` where the built-in takes `VARIADIC "any"`). So
/// each transaction of the plan (the expand's, and each of the publication's that holds
/// more than a VALIDATE) first pins the path for itself; statements the caller wrote,
/// spliced in before, keep the caller's.
pub fn pin_printed(expand: &mut Vec<(Stage, String)>) {
    let mut pinned = Vec::with_capacity(expand.len() + 4);
    // Whether the statement before runs in a transaction already pinned.
    let mut in_pinned = false;
    for (stage, sql) in expand.drain(..) {
        // A VALIDATE runs in a transaction of its own; the statement after it starts another.
        let validate = sql.contains("VALIDATE CONSTRAINT");
        let transaction = matches!(stage, Stage::Expand | Stage::Publish) && !validate;
        if transaction && !in_pinned {
            pinned.push((stage, PIN_PATH.to_string()));
        }
        in_pinned = transaction;
        pinned.push((stage, sql));
    }
    *expand = pinned;
}

/// Fails the expand if a conversion function's body depends on anything initdb did not
/// make, but the types of its argument and result: the body was resolved under the expand's
/// search path, which the planner's check of the analysed expression does not see.
fn resolved_check(functions: &[String]) -> String {
    let list = functions
        .iter()
        .map(|f| format!("{}::pg_catalog.regprocedure", literal(f)))
        .collect::<Vec<_>>()
        .join(", ");
    let body = format!(
        "
DECLARE
    found text;
BEGIN
    SELECT pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
      INTO found
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.objid
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
       AND d.objid OPERATOR(pg_catalog.=) ANY (ARRAY[{list}]::pg_catalog.oid[])
       AND d.deptype OPERATOR(pg_catalog.=) 'n'
       AND d.refobjid OPERATOR(pg_catalog.>=) 16384
       AND d.refclassid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_namespace'::pg_catalog.regclass
       AND NOT (d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
                AND (d.refobjid OPERATOR(pg_catalog.=) p.prorettype
                     OR d.refobjid OPERATOR(pg_catalog.=) ANY (p.proargtypes::pg_catalog.oid[])))
     LIMIT 1;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = {},
            DETAIL = pg_catalog.format({}, found),
            HINT = {};
    END IF;
END
",
        literal(
            "pg_migrate: a conversion of the window resolved to an object that is not \
             PostgreSQL's own"
        ),
        literal("It uses %s, found under the search path of the expand."),
        literal(
            "Put pg_catalog first on the search path of the role that opens the window, or \
             qualify the names in the conversion."
        ),
    );
    format!("DO {}", dollar_quoted(&body))
}

/// Whether two values of one type differ, NULLs included, by their binary images
/// (`record_image_eq`, as `*=`): independent of session settings (a float's text depends on
/// extra_float_digits), and no operator is looked up by name.
fn differs(a: &str, b: &str) -> String {
    format!("NOT pg_catalog.record_image_eq(ROW({a}), ROW({b}))")
}

fn bridge_function(version: &str, table: &Table, q: Quote) -> String {
    qualified(
        q,
        &table.schema,
        &format!("_migrate_{}_{}_bridge", version_tag(version), table.name),
    )
}

/// The statement trigger that counts each version's writes.
pub fn counter_name(version: &str) -> String {
    format!("zz_migrate_{}_count", version_tag(version))
}

/// `zz_` so that they fire after the table's own BEFORE triggers (PostgreSQL fires them in
/// name order): what those set is what gets copied.
pub fn trigger_name(version: &str) -> String {
    format!("zz_migrate_{}_bridge", version_tag(version))
}

/// Fails the publication when any row's copy differs from what its original gives.
fn consistency_check(version: &str, table: &Table, copies: &[Copy], q: Quote) -> String {
    let name = table.qualified(q);
    let body = format!(
        "\nBEGIN\n    IF EXISTS (SELECT FROM {name} WHERE {}) THEN\n        RAISE EXCEPTION USING ERRCODE = '55000',\n            MESSAGE = {},\n            DETAIL = {},\n            HINT = {};\n    END IF;\nEND\n",
        out_of_step(copies, q),
        literal(&format!(
            "pg_migrate: version {version} is not published: rows of {name} differ between the \
             old and the new columns"
        )),
        literal(
            "After the backfill, every row's new column must equal what the old one gives; \
             some do not, so the views of the new version were not created."
        ),
        literal(&format!(
            "Find the rows, fix their cause, then SELECT migrate.retry('{version}'); or \
             SELECT migrate.abort('{version}')."
        )),
    );
    format!("DO {}", dollar_quoted(&body))
}

/// The rows where neither column is what the other gives, as a WHERE condition: the copy is
/// what the original converts to (written by the old version or the backfill), or the
/// original what the copy converts back to (written by the new version, which may hold
/// more than the old type does).
fn out_of_step(copies: &[Copy], q: Quote) -> String {
    copies
        .iter()
        .map(|c| {
            let (shadow, column) = (q(&c.shadow), q(&c.column.name));
            format!(
                "({} AND {})",
                differs(&shadow, &c.up_value(&column)),
                differs(
                    &column,
                    &match &c.down_fn {
                        Some(_) => c.down(&shadow),
                        None => format!("CAST({shadow} AS {})", c.column.type_sql),
                    }
                )
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// What contract and abort do to each table once the views are gone.
fn end_steps(
    version: &str,
    table: &Table,
    (copies, renamed, dropped): (&[Copy], &[(&str, &str)], &[&str]),
    (contract, abort, relaxed): (&mut Vec<EndStep>, &mut Vec<EndStep>, &mut Vec<EndStep>),
    q: Quote,
) {
    let name = table.qualified(q);
    let step = |sql: String| EndStep {
        sql,
        needs_column: None,
    };
    let needing = |column: &str, sql: String| EndStep {
        sql,
        needs_column: Some((table.schema.clone(), table.name.clone(), column.to_string())),
    };
    if !copies.is_empty() {
        let trigger = q(&trigger_name(version));
        let function = bridge_function(version, table, q);
        for out in [&mut *contract, &mut *abort] {
            out.push(step(format!("DROP TRIGGER IF EXISTS {trigger} ON {name}")));
            out.push(step(format!("DROP FUNCTION IF EXISTS {function}()")));
            for copy in copies {
                let ways = [
                    (&copy.up_fn, copy.column.type_sql.as_str()),
                    (&copy.down_fn, copy.new_type),
                ];
                for (conversion, from) in ways {
                    if let Some(c) = conversion {
                        out.push(step(format!(
                            "DROP FUNCTION IF EXISTS {}({from})",
                            c.function
                        )));
                    }
                }
            }
        }
    }
    for copy in copies {
        let column = q(&copy.column.name);
        let shadow = q(&copy.shadow);
        let deprecated = deprecated_column(version, &copy.column.name);
        let deprecated_ident = q(&deprecated);
        // Contract: the copy takes the name; the original stays, renamed, with its data, and
        // no longer demands a value (the new version never writes it).
        contract.push(step(format!(
            "ALTER TABLE {name} RENAME COLUMN {column} TO {deprecated_ident}"
        )));
        let mut relax = Vec::new();
        if copy.column.not_null {
            relax.push(format!("ALTER COLUMN {deprecated_ident} DROP NOT NULL"));
        }
        if copy.column.default_sql.is_some() {
            relax.push(format!("ALTER COLUMN {deprecated_ident} DROP DEFAULT"));
        }
        if !relax.is_empty() {
            // After the old keys are dropped (the column may be in a primary key until then),
            // and before the copy is set NOT NULL: on PostgreSQL 18 its NOT NULL constraint
            // then gets the name the old column's frees.
            relaxed.push(step(format!("ALTER TABLE {name} {}", relax.join(", "))));
        }
        contract.push(step(format!(
            "ALTER TABLE {name} RENAME COLUMN {shadow} TO {column}"
        )));
        if let Some(check) = &copy.check {
            // Proven by the validated CHECK: no scan.
            relaxed.push(step(format!(
                "ALTER TABLE {name} ALTER COLUMN {column} SET NOT NULL"
            )));
            relaxed.push(step(format!(
                "ALTER TABLE {name} DROP CONSTRAINT {}",
                q(check)
            )));
            abort.push(needing(
                &copy.shadow,
                format!("ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {}", q(check)),
            ));
        }
        if copy.column.default_sql.is_some() {
            // A serial's copy would otherwise keep drawing from its sequence.
            abort.push(needing(
                &copy.shadow,
                format!("ALTER TABLE {name} ALTER COLUMN {shadow} DROP DEFAULT"),
            ));
        }
        // Abort: the copy holds nothing the original lacks; it is set aside, not dropped.
        abort.push(needing(
            &copy.shadow,
            format!(
                "ALTER TABLE {name} RENAME COLUMN {shadow} TO {}",
                q(&deprecated_column(version, &copy.shadow))
            ),
        ));
    }
    for (column, new_name) in renamed {
        contract.push(step(format!(
            "ALTER TABLE {name} RENAME COLUMN {} TO {}",
            q(column),
            q(new_name)
        )));
    }
    for column in dropped {
        let deprecated = q(&deprecated_column(version, column));
        contract.push(step(format!(
            "ALTER TABLE {name} RENAME COLUMN {} TO {deprecated}",
            q(column)
        )));
        if table.column(column).is_some_and(|c| c.not_null) {
            contract.push(step(format!(
                "ALTER TABLE {name} ALTER COLUMN {deprecated} DROP NOT NULL"
            )));
        }
    }
}

/// PostgreSQL truncates names to 63 bytes, which could make two of a plan's names one.
fn check_names(
    plan: &Plan,
    version: &str,
    tables: &[(Table, Vec<Request>)],
) -> Result<(), Problem> {
    let mut names: Vec<String> = plan.schemas.clone();
    for (table, requests) in tables {
        names.push(format!(
            "_migrate_{}_{}_old",
            version_tag(version),
            table.name
        ));
        for request in requests {
            match request {
                Request::ChangeType { column, .. } | Request::Drop { column, .. } => {
                    names.push(deprecated_column(version, &shadow_column(version, column)));
                    names.push(not_null_check(version, column));
                }
                Request::SetNotNull { column } | Request::AddColumn { column, .. } => {
                    names.push(not_null_check(version, column));
                }
                _ => {}
            }
        }
    }
    match names.iter().find(|n| n.len() > 63) {
        Some(long) => Err(Problem::new(
            PgSqlErrorCode::ERRCODE_NAME_TOO_LONG,
            format!("migrate.expand would need the name {long}, longer than 63 bytes"),
            "The names of a window's columns, functions and schemas are made of the version \
             and the names of the objects changed.",
            "Use a shorter version or shorter names.",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn q(name: &str) -> String {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain {
            name.to_string()
        } else {
            format!("\"{}\"", name.replace('"', "\"\""))
        }
    }

    fn orders() -> Table {
        Table {
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    not_null: true,
                    dependents: vec!["index orders_pkey".into()],
                    ..Column::default()
                },
                Column {
                    name: "amount".into(),
                    type_sql: "integer".into(),
                    not_null: true,
                    default_sql: Some("0".into()),
                    ..Column::default()
                },
                Column {
                    name: "old_status".into(),
                    ..Column::default()
                },
                Column {
                    name: "legacy_note".into(),
                    ..Column::default()
                },
            ],
            plain: true,
            has_children: false,
            grants: vec![
                ("app".into(), "SELECT".into()),
                ("app".into(), "INSERT".into()),
            ],
            ..Table::default()
        }
    }

    fn to_bigint() -> Request {
        bigint("amount")
    }

    fn bigint(column: &str) -> Request {
        Request::ChangeType {
            column: column.into(),
            new_type: "bigint".into(),
            up_plain: column.into(),
            rewrites: true,
            down_assignable: true,
            computed: false,
            up_param: None,
            up_default: None,
            up_untrusted: None,
            down_untrusted: None,
            down_param: None,
            mutable: false,
            constrained_domain: false,
        }
    }

    /// amount to cents: computed by USING, with the conversion back given.
    fn to_cents(down: Option<&str>) -> Request {
        let mut r = to_bigint();
        if let Request::ChangeType {
            computed,
            up_plain,
            up_param,
            up_default,
            down_param,
            ..
        } = &mut r
        {
            *computed = true;
            *up_plain = "(amount * 100)".into();
            *up_param = Some("($1 * 100)::bigint".into());
            *up_default = Some("((0 * 100))::bigint".into());
            *down_param = down.map(str::to_string);
        }
        r
    }

    #[test]
    fn a_computed_change_calls_the_conversions_in_functions_of_trusted_code() {
        let planned = plan(
            "43",
            &[(orders(), vec![to_cents(Some("($1 / 100)::integer"))])],
            q,
        )
        .unwrap();
        let expand = sql(&planned, Stage::Expand);
        assert!(
            expand.contains(
                &"CREATE FUNCTION public._migrate_43_orders_amount_up(integer) RETURNS bigint \
              LANGUAGE sql IMMUTABLE RETURN ($1 * 100)::bigint"
            ),
            "{expand:#?}"
        );
        assert!(expand.contains(
            &"CREATE FUNCTION public._migrate_43_orders_amount_down(bigint) RETURNS integer \
              LANGUAGE sql IMMUTABLE RETURN ($1 / 100)::integer"
        ));
        assert!(expand.contains(
            &"GRANT EXECUTE ON FUNCTION public._migrate_43_orders_amount_down(bigint) TO PUBLIC"
        ));
        let bridge = expand
            .iter()
            .find(|s| s.contains("_bridge() RETURNS trigger"))
            .unwrap();
        assert!(bridge.contains(
            "NEW._migrate_43_amount := public._migrate_43_orders_amount_up(NEW.amount);"
        ));
        assert!(bridge.contains(
            "NEW.amount := public._migrate_43_orders_amount_down(NEW._migrate_43_amount);"
        ));
        assert!(bridge.contains("converted_0 := public._migrate_43_orders_amount_up(NEW.amount);"));
        // Everything runs as the writer, as PostgreSQL's own casts would.
        assert!(!expand.iter().any(|s| s.contains("SECURITY DEFINER")));
        // What the bodies resolved to is checked as stored, before the bridge exists.
        let resolved = expand
            .iter()
            .position(|s| s.starts_with("DO ") && s.contains("pg_depend"))
            .unwrap();
        assert!(expand[resolved].contains(
            "ARRAY['public._migrate_43_orders_amount_up(integer)'::pg_catalog.regprocedure, \
             'public._migrate_43_orders_amount_down(bigint)'::pg_catalog.regprocedure]"
        ));
        assert!(
            resolved
                < expand
                    .iter()
                    .position(|s| s.starts_with("CREATE TRIGGER"))
                    .unwrap()
        );
        // Tried on a row by the expand, before any writer calls them.
        assert!(expand.contains(
            &"SELECT public._migrate_43_orders_amount_down(public._migrate_43_orders_amount_up(amount)) \
              FROM public.orders LIMIT 1"
        ), "{expand:#?}");
        // The backfill computes with the bridge's function; the check accepts either side.
        let backfill = sql(&planned, Stage::Backfill);
        assert!(
            backfill[0]
                .contains("_migrate_43_amount = public._migrate_43_orders_amount_up(amount)"),
            "{backfill:?}"
        );
        assert!(
            planned.checks[0].out_of_step.contains(
                "ROW(amount), ROW(public._migrate_43_orders_amount_down(_migrate_43_amount))"
            ),
            "{}",
            planned.checks[0].out_of_step
        );
        for end in [&planned.contract, &planned.abort] {
            for f in ["up(integer)", "down(bigint)"] {
                let drop = format!("DROP FUNCTION IF EXISTS public._migrate_43_orders_amount_{f}");
                assert!(end.iter().any(|s| s.sql == drop), "{drop}");
            }
        }
        assert!(planned
            .objects
            .contains(&"_migrate_43_orders_amount_down".to_string()));
        // A plain cast needs no function: the bridge assigns.
        let plain = plan("43", &[(orders(), vec![to_bigint()])], q).unwrap();
        assert!(!sql(&plain, Stage::Expand)
            .iter()
            .any(|s| s.contains("CREATE FUNCTION public._migrate_43_orders_amount")));
        // Code a writer should not run for someone else is refused.
        let mut untrusted = to_cents(Some("($1 / 100)::integer"));
        if let Request::ChangeType { up_untrusted, .. } = &mut untrusted {
            *up_untrusted = Some("function public.f(integer), owned by alice".into());
        }
        let p = plan("43", &[(orders(), vec![untrusted])], q).unwrap_err();
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE);
        assert!(p
            .message
            .contains("calls function public.f(integer), owned by alice"));
    }

    /// The statements of one stage, but the write counters (asserted on their own).
    fn sql(plan: &Plan, stage: Stage) -> Vec<&str> {
        plan.expand
            .iter()
            .filter(|(s, q)| *s == stage && !q.contains("_count"))
            .map(|(_, q)| q.as_str())
            .collect()
    }

    /// Contract or abort steps, but the write counters' drops.
    fn steps(steps: &[EndStep]) -> Vec<&str> {
        steps
            .iter()
            .map(|s| s.sql.as_str())
            .filter(|s| !s.contains("_count"))
            .collect()
    }

    #[test]
    fn every_table_of_a_window_counts_its_writes_by_version_until_it_ends() {
        let plan = plan("43", &[(orders(), vec![to_bigint()])], q).unwrap();
        let counters: Vec<&str> = plan
            .expand
            .iter()
            .filter(|(s, q)| *s == Stage::Expand && q.contains("_count"))
            .map(|(_, q)| q.as_str())
            .collect();
        assert_eq!(
            counters,
            [
                "CREATE TRIGGER zz_migrate_43_count BEFORE INSERT OR UPDATE OR DELETE ON \
                 public.orders FOR EACH STATEMENT EXECUTE FUNCTION \
                 migrate.count_window_write('43', 'public_v43')",
                "ALTER TABLE public.orders ENABLE ALWAYS TRIGGER zz_migrate_43_count",
            ]
        );
        for end in [&plan.contract, &plan.abort] {
            assert!(end
                .iter()
                .any(|s| s.sql == "DROP TRIGGER IF EXISTS zz_migrate_43_count ON public.orders"));
        }
    }

    #[test]
    fn a_type_change_copies_bridges_backfills_validates_checks_and_publishes() {
        let plan = plan("43", &[(orders(), vec![to_bigint()])], q).unwrap();
        let expand = sql(&plan, Stage::Expand);
        // First, that the new type has gained no domain check since it was planned.
        assert!(expand[0].starts_with("DO ") && expand[0].contains("'bigint'::pg_catalog.regtype"));
        assert_eq!(
            expand[1],
            "ALTER TABLE public.orders ADD COLUMN _migrate_43_amount bigint"
        );
        // The old default, for new-version inserts that leave the column out; apart from
        // ADD COLUMN, so that existing rows are not given it.
        assert_eq!(
            expand[2],
            "ALTER TABLE public.orders ALTER COLUMN _migrate_43_amount SET DEFAULT CAST((0) AS \
             bigint)"
        );
        assert_eq!(
            expand[3],
            "ALTER TABLE public.orders ADD CONSTRAINT _migrate_43_amount_not_null \
             CHECK (_migrate_43_amount IS NOT NULL) NOT VALID"
        );
        assert!(expand.contains(
            &"CREATE TRIGGER zz_migrate_43_bridge BEFORE INSERT OR UPDATE ON public.orders FOR \
              EACH ROW EXECUTE FUNCTION public._migrate_43_orders_bridge()"
        ));
        let function = expand
            .iter()
            .find(|s| s.starts_with("CREATE FUNCTION public._migrate_43_orders_bridge()"))
            .unwrap();
        assert!(function.contains("IF migrate.writes_version('43', 'public_v43') THEN"));
        assert!(function.contains("NEW._migrate_43_amount := NEW.amount;"));
        assert!(function.contains("NEW.amount := NEW._migrate_43_amount;"));
        // An UPDATE is bridged by what it changed; two columns set apart fail.
        assert!(function.contains(
            "ELSIF NOT pg_catalog.record_image_eq(ROW(NEW.amount), ROW(OLD.amount)) THEN"
        ));
        assert!(function.contains("RAISE EXCEPTION USING ERRCODE = '23000'"));
        assert!(!function.contains("SECURITY DEFINER"));
        assert!(!function.contains(" IS DISTINCT FROM "), "{function}");
        assert_eq!(
            plan.checks,
            [Check {
                table: "public.orders".into(),
                trigger: "zz_migrate_43_bridge".into(),
                out_of_step: "SELECT count(*) FROM public.orders WHERE (NOT \
                              pg_catalog.record_image_eq(ROW(_migrate_43_amount), \
                              ROW(CAST((amount) AS bigint))) AND NOT \
                              pg_catalog.record_image_eq(ROW(amount), \
                              ROW(CAST(_migrate_43_amount AS integer))))"
                    .into(),
            }]
        );
        assert_eq!(plan.objects, ["_migrate_43_orders_bridge", "public_v43"]);
        assert!(expand
            .contains(&"ALTER TABLE public.orders ENABLE ALWAYS TRIGGER zz_migrate_43_bridge"));
        assert_eq!(
            sql(&plan, Stage::Backfill),
            [
                "SELECT migrate.backfill('public.orders', '_migrate_43_amount = amount', \
              '(_migrate_43_amount IS NULL AND (amount) IS NOT NULL)')"
            ]
        );
        let publish = sql(&plan, Stage::Publish);
        assert_eq!(
            publish[0],
            "ALTER TABLE public.orders VALIDATE CONSTRAINT _migrate_43_amount_not_null"
        );
        assert!(publish[1].starts_with("DO $migrate$"));
        assert_eq!(publish[2], "CREATE SCHEMA public_v43");
        assert_eq!(
            publish[3],
            "CREATE VIEW public_v43.orders WITH (security_invoker = true) AS SELECT id, \
             _migrate_43_amount AS amount, old_status, legacy_note FROM public.orders"
        );
        assert_eq!(publish[4], "GRANT SELECT ON public_v43.orders TO app");
        assert_eq!(publish[6], "GRANT USAGE ON SCHEMA public_v43 TO app");
        // The copy takes the column privileges of the column it replaces, when the window
        // publishes and again when it contracts.
        assert_eq!(
            publish.last().unwrap(),
            &"SELECT migrate.mirror_window_privileges('43')"
        );
        assert_eq!(
            plan.mirrors,
            [Mirror {
                table: "public.orders".into(),
                table_oid: 0,
                copies: vec![("_migrate_43_amount".into(), "amount".into())],
                view: None,
                view_schema: "public_v43".into(),
                columns: ["id", "amount", "old_status", "legacy_note"]
                    .iter()
                    .map(|c| (c.to_string(), c.to_string()))
                    .collect(),
            }]
        );
        let contract: Vec<&str> = steps(&plan.contract);
        assert_eq!(contract[0], "SELECT migrate.mirror_window_privileges('43')");
        assert_eq!(contract[1], "DROP VIEW IF EXISTS public_v43.orders");
        assert_eq!(contract[2], "DROP SCHEMA IF EXISTS public_v43");
        let tail = &contract[contract.len() - 5..];
        assert_eq!(
            tail,
            [
                "ALTER TABLE public.orders RENAME COLUMN amount TO _deprecated_43_amount",
                "ALTER TABLE public.orders RENAME COLUMN _migrate_43_amount TO amount",
                // After the old keys go (the old column may be in one), and before the copy is
                // set NOT NULL (PostgreSQL 18 names its constraint as the old one's).
                "ALTER TABLE public.orders ALTER COLUMN _deprecated_43_amount DROP NOT NULL, \
                 ALTER COLUMN _deprecated_43_amount DROP DEFAULT",
                "ALTER TABLE public.orders ALTER COLUMN amount SET NOT NULL",
                "ALTER TABLE public.orders DROP CONSTRAINT _migrate_43_amount_not_null",
            ]
        );
        let abort = plan.abort.last().unwrap();
        assert_eq!(
            abort.sql,
            "ALTER TABLE public.orders RENAME COLUMN _migrate_43_amount TO \
             _deprecated_43__migrate_43_amount"
        );
        assert_eq!(
            abort.needs_column,
            Some((
                "public".into(),
                "orders".into(),
                "_migrate_43_amount".into()
            ))
        );
    }

    #[test]
    fn policies_that_apply_to_the_opener_refuse_only_what_reads_rows() {
        let guarded = Table {
            policies_apply: true,
            ..orders()
        };
        let rename = Request::Rename {
            column: "old_status".into(),
            new_name: "status".into(),
        };
        let hide = Request::Drop {
            column: "legacy_note".into(),
            cascade: false,
        };
        assert!(plan("1", &[(guarded.clone(), vec![rename.clone(), hide])], q).is_ok());
        let refused = plan("1", &[(guarded, vec![rename, to_bigint()])], q).unwrap_err();
        assert_eq!(refused.code, PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE);
        assert!(refused.message.contains("policies apply to you"));
    }

    #[test]
    fn renames_and_drops_change_only_the_view_until_contract() {
        let plan = plan("1.2", &[(orders(), rename_status_drop_note())], q).unwrap();
        assert!(sql(&plan, Stage::Expand).is_empty());
        assert!(sql(&plan, Stage::Backfill).is_empty());
        assert_eq!(
            sql(&plan, Stage::Publish)[1],
            "CREATE VIEW public_v1_2.orders WITH (security_invoker = true) AS SELECT id, amount, \
             old_status AS status FROM public.orders"
        );
        let contract: Vec<&str> = steps(&plan.contract);
        assert_eq!(
            contract[2..],
            [
                "ALTER TABLE public.orders RENAME COLUMN old_status TO status",
                "ALTER TABLE public.orders RENAME COLUMN legacy_note TO _deprecated_1_2_legacy_note",
            ]
        );
        assert_eq!(
            steps(&plan.abort).len(),
            2,
            "only the views go: {:?}",
            plan.abort
        );
    }

    #[test]
    fn added_columns_with_a_volatile_default_are_filled_by_a_backfill() {
        let plan = plan(
            "7",
            &[(
                orders(),
                vec![Request::AddColumn {
                    column: "token".into(),
                    type_sql: "uuid".into(),
                    default_sql: Some("gen_random_uuid()".into()),
                    volatile_default: true,
                    not_null: false,
                    other_constraints: false,
                }],
            )],
            q,
        )
        .unwrap();
        assert_eq!(
            sql(&plan, Stage::Expand),
            [
                "ALTER TABLE public.orders ADD COLUMN token uuid",
                "ALTER TABLE public.orders ALTER COLUMN token SET DEFAULT gen_random_uuid()"
            ]
        );
        assert_eq!(
            sql(&plan, Stage::Backfill),
            ["SELECT migrate.backfill('public.orders', 'token = DEFAULT', 'token IS NULL')"]
        );
        assert!(sql(&plan, Stage::Publish)[1].ends_with("legacy_note, token FROM public.orders"));
    }

    #[test]
    fn a_not_null_column_with_a_volatile_default_is_proven_by_a_check_and_set_at_contract() {
        let plan = plan(
            "7",
            &[(
                orders(),
                vec![Request::AddColumn {
                    column: "token".into(),
                    type_sql: "uuid".into(),
                    default_sql: Some("gen_random_uuid()".into()),
                    volatile_default: true,
                    not_null: true,
                    other_constraints: false,
                }],
            )],
            q,
        )
        .unwrap();
        assert_eq!(
            sql(&plan, Stage::Expand),
            [
                "ALTER TABLE public.orders ADD COLUMN token uuid",
                "ALTER TABLE public.orders ALTER COLUMN token SET DEFAULT gen_random_uuid()",
            ]
        );
        assert_eq!(sql(&plan, Stage::Backfill).len(), 1);
        // Checked once the rows are filled: before, an UPDATE of a row not filled yet would
        // fail the CHECK.
        assert_eq!(
            sql(&plan, Stage::Publish)[..2],
            [
                "ALTER TABLE public.orders ADD CONSTRAINT _migrate_7_token_not_null CHECK (token IS NOT NULL) NOT VALID",
                "ALTER TABLE public.orders VALIDATE CONSTRAINT _migrate_7_token_not_null"
            ]
        );
        let contract: Vec<&str> = steps(&plan.contract);
        assert_eq!(
            &contract[contract.len() - 2..],
            [
                "ALTER TABLE public.orders ALTER COLUMN token SET NOT NULL",
                "ALTER TABLE public.orders DROP CONSTRAINT _migrate_7_token_not_null"
            ]
        );
        assert!(plan.abort.iter().any(|s| s.sql
            == "ALTER TABLE public.orders DROP CONSTRAINT IF EXISTS _migrate_7_token_not_null"));
    }

    fn check(name: &str, definition: &str, columns: &[&str]) -> Request {
        Request::AddConstraint {
            name: name.into(),
            definition: definition.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            references: None,
        }
    }

    fn key(name: &str, primary: bool, columns: &[&str]) -> Request {
        Request::AddKey {
            name: name.into(),
            primary,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn constraints_are_added_not_valid_and_validated_and_keys_built_concurrently() {
        let plan = plan(
            "44",
            &[(
                orders(),
                vec![
                    Request::SetNotNull {
                        column: "old_status".into(),
                    },
                    // Already NOT NULL: nothing to do.
                    Request::SetNotNull {
                        column: "amount".into(),
                    },
                    check("amount_positive", "CHECK ((amount > 0))", &["amount"]),
                    Request::AddConstraint {
                        name: "orders_customer_fkey".into(),
                        definition: "FOREIGN KEY (legacy_note) REFERENCES public.notes".into(),
                        columns: vec!["legacy_note".into()],
                        references: Some(("public".into(), "notes".into(), vec!["id".into()])),
                    },
                    key("orders_legacy_note_key", false, &["legacy_note"]),
                ],
            )],
            q,
        )
        .unwrap();
        assert_eq!(
            sql(&plan, Stage::Expand),
            [
                "ALTER TABLE public.orders ADD CONSTRAINT _migrate_44_old_status_not_null CHECK (old_status IS NOT NULL) NOT VALID",
                "ALTER TABLE public.orders ADD CONSTRAINT amount_positive CHECK ((amount > 0)) NOT VALID",
            ]
        );
        assert!(sql(&plan, Stage::Backfill).is_empty());
        assert_eq!(
            sql(&plan, Stage::Build),
            ["CREATE UNIQUE INDEX CONCURRENTLY orders_legacy_note_key ON public.orders (legacy_note)"]
        );
        // The foreign key after the builds (it may reference a key the window builds), then
        // the validations, together: one transaction of their own.
        assert_eq!(
            &sql(&plan, Stage::Publish)[..5],
            [
                "ALTER TABLE public.orders ADD CONSTRAINT orders_customer_fkey FOREIGN KEY (legacy_note) REFERENCES public.notes NOT VALID",
                "ALTER TABLE public.orders VALIDATE CONSTRAINT _migrate_44_old_status_not_null",
                "ALTER TABLE public.orders VALIDATE CONSTRAINT amount_positive",
                "ALTER TABLE public.orders VALIDATE CONSTRAINT orders_customer_fkey",
                "CREATE SCHEMA public_v44",
            ]
        );
        let contract: Vec<&str> = steps(&plan.contract);
        assert_eq!(
            &contract[2..],
            [
                "ALTER TABLE public.orders ALTER COLUMN old_status SET NOT NULL",
                "ALTER TABLE public.orders DROP CONSTRAINT _migrate_44_old_status_not_null",
                "ALTER TABLE public.orders ADD CONSTRAINT orders_legacy_note_key UNIQUE USING INDEX orders_legacy_note_key",
            ]
        );
        let abort: Vec<&str> = steps(&plan.abort);
        assert_eq!(
            &abort[2..],
            [
                "ALTER TABLE public.orders DROP CONSTRAINT IF EXISTS _migrate_44_old_status_not_null",
                "ALTER TABLE public.orders DROP CONSTRAINT IF EXISTS amount_positive",
                "ALTER TABLE public.orders DROP CONSTRAINT IF EXISTS orders_customer_fkey",
                "DROP INDEX IF EXISTS public.orders_legacy_note_key",
            ]
        );
    }

    #[test]
    fn a_primary_key_proves_its_columns_not_null_first_and_attaches_at_contract() {
        let mut table = orders();
        table.primary_key = false;
        let plan = plan(
            "45",
            &[(
                table,
                vec![
                    Request::AddColumn {
                        column: "code".into(),
                        type_sql: "text".into(),
                        default_sql: None,
                        volatile_default: false,
                        not_null: false,
                        other_constraints: false,
                    },
                    key("orders_pkey", true, &["old_status", "amount", "code"]),
                ],
            )],
            q,
        )
        .unwrap();
        let contract: Vec<&str> = steps(&plan.contract);
        assert_eq!(
            &contract[2..],
            [
                "ALTER TABLE public.orders ALTER COLUMN old_status SET NOT NULL",
                "ALTER TABLE public.orders DROP CONSTRAINT _migrate_45_old_status_not_null",
                "ALTER TABLE public.orders ALTER COLUMN code SET NOT NULL",
                "ALTER TABLE public.orders DROP CONSTRAINT _migrate_45_code_not_null",
                "ALTER TABLE public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY USING INDEX orders_pkey",
            ]
        );
        let mut with_key = orders();
        with_key.primary_key = true;
        let e = super::plan("45", &[(with_key, vec![key("k", true, &["amount"])])], q).unwrap_err();
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION);
        let mut taken = orders();
        taken.existing_relations = vec!["k".into()];
        let e = super::plan("45", &[(taken, vec![key("k", false, &["amount"])])], q).unwrap_err();
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE);
        let twice = vec![
            check("c", "CHECK (true)", &[]),
            key("c", false, &["amount"]),
        ];
        let e = super::plan("45", &[(orders(), twice)], q).unwrap_err();
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT);
        // A constraint on a column the window copies would stay on the old column.
        let e = super::plan(
            "45",
            &[(
                orders(),
                vec![to_bigint(), check("c", "CHECK (amount > 0)", &["amount"])],
            )],
            q,
        )
        .unwrap_err();
        assert!(
            e.message.contains("also changes column amount"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_referenced_key_moves_with_its_indexes_foreign_keys_and_sequence() {
        let fk = ForeignKey {
            name: "items_order_fkey".into(),
            schema: "public".into(),
            table: "items".into(),
            columns: vec!["order_id".into()],
            ref_schema: "public".into(),
            ref_table: "orders".into(),
            ref_columns: vec!["id".into()],
            options: " ON DELETE CASCADE".into(),
        };
        let mut orders = orders();
        orders.columns[0] = Column {
            name: "id".into(),
            type_sql: "integer".into(),
            not_null: true,
            default_sql: Some("nextval('orders_id_seq'::regclass)".into()),
            indexes: vec![Index {
                name: "orders_pkey".into(),
                unique: true,
                constraint: Some("orders_pkey".into()),
                primary: true,
                columns: vec!["id".into()],
            }],
            foreign_keys: vec![fk.clone()],
            sequence: Some(Sequence {
                name: "public.orders_id_seq".into(),
                type_sql: "integer".into(),
            }),
            ..Column::default()
        };
        // The referencing column stays integer: the new key references the copy.
        let plan = plan("50", &[(orders, vec![bigint("id")])], q).unwrap();
        assert_eq!(
            sql(&plan, Stage::Build),
            ["CREATE UNIQUE INDEX CONCURRENTLY _migrate_50_orders_pkey ON public.orders (_migrate_50_id)"]
        );
        let publish = sql(&plan, Stage::Publish);
        assert_eq!(
            publish[..2],
            [
                "ALTER TABLE public.items ADD CONSTRAINT _migrate_50_items_order_fkey FOREIGN KEY \
                 (order_id) REFERENCES public.orders (_migrate_50_id) ON DELETE CASCADE NOT VALID",
                "ALTER TABLE public.orders VALIDATE CONSTRAINT _migrate_50_id_not_null",
            ]
        );
        assert!(publish.contains(
            &"ALTER TABLE public.items VALIDATE CONSTRAINT _migrate_50_items_order_fkey"
        ));
        assert!(plan.tables.contains(&"public.items".to_string()));
        let contract: Vec<&str> = steps(&plan.contract);
        let swapped = contract
            .iter()
            .position(|s| *s == "ALTER TABLE public.orders RENAME COLUMN _migrate_50_id TO id")
            .unwrap();
        // The old key goes only once nothing references it; the old column is relaxed once
        // it is out of the primary key, and before the copy is set NOT NULL.
        assert_eq!(
            contract[swapped + 1..],
            [
                "ALTER TABLE public.items DROP CONSTRAINT items_order_fkey",
                "ALTER TABLE public.orders DROP CONSTRAINT orders_pkey",
                "ALTER TABLE public.orders ALTER COLUMN _deprecated_50_id DROP NOT NULL, ALTER \
                 COLUMN _deprecated_50_id DROP DEFAULT",
                "ALTER TABLE public.orders ALTER COLUMN id SET NOT NULL",
                "ALTER TABLE public.orders DROP CONSTRAINT _migrate_50_id_not_null",
                "ALTER SEQUENCE public.orders_id_seq OWNED BY public.orders.id",
                "ALTER SEQUENCE public.orders_id_seq AS bigint",
                "ALTER TABLE public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY USING INDEX \
                 _migrate_50_orders_pkey",
                "ALTER TABLE public.items RENAME CONSTRAINT _migrate_50_items_order_fkey TO \
                 items_order_fkey",
            ]
        );
        let abort: Vec<&str> = steps(&plan.abort);
        assert_eq!(
            abort[2],
            "ALTER TABLE public.items DROP CONSTRAINT IF EXISTS _migrate_50_items_order_fkey"
        );
        assert!(abort.contains(&"DROP INDEX IF EXISTS public._migrate_50_orders_pkey"));
        // A sequence's column moves only to an integer type.
        let mut to_numeric = bigint("id");
        if let Request::ChangeType { new_type, .. } = &mut to_numeric {
            *new_type = "numeric".into();
        }
        let e = super::plan("50", &[(orders_with_sequence(), vec![to_numeric])], q).unwrap_err();
        assert!(e.message.contains("owns a sequence"), "{}", e.message);
    }

    fn orders_with_sequence() -> Table {
        let mut t = orders();
        t.columns[0].dependents.clear();
        t.columns[0].sequence = Some(Sequence {
            name: "public.orders_id_seq".into(),
            type_sql: "integer".into(),
        });
        t
    }

    fn rename_status_drop_note() -> Vec<Request> {
        vec![
            Request::Rename {
                column: "old_status".into(),
                new_name: "status".into(),
            },
            Request::Drop {
                column: "legacy_note".into(),
                cascade: false,
            },
        ]
    }

    #[test]
    fn column_privileges_follow_each_column_to_its_view_name_and_its_copy() {
        let mut table = orders();
        table.column_grants = true;
        let requests = [vec![to_bigint()], rename_status_drop_note()].concat();
        let plan = plan("43", &[(table, requests)], q).unwrap();
        let publish = sql(&plan, Stage::Publish);
        // The reader has some columns only: the view checks the table's privileges as its
        // owner, and its own columns carry the reader's.
        assert!(publish.contains(
            &"CREATE VIEW public_v43.orders WITH (security_invoker = false) AS SELECT id, \
              _migrate_43_amount AS amount, old_status AS status FROM public.orders"
        ));
        // Its privileges are carried by a step (they may change before it publishes), with
        // the names the new version gives the columns.
        assert!(
            !publish.iter().any(|s| s.starts_with("GRANT")),
            "{publish:?}"
        );
        assert_eq!(
            publish.last().unwrap(),
            &"SELECT migrate.mirror_window_privileges('43')"
        );
        assert_eq!(plan.mirrors[0].view.as_deref(), Some("public_v43.orders"));
        assert_eq!(
            plan.mirrors[0].columns,
            [("id", "id"), ("amount", "amount"), ("status", "old_status")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // Without column privileges, the view checks its reader's.
        let plain = super::plan("43", &[(orders(), vec![to_bigint()])], q).unwrap();
        assert!(sql(&plain, Stage::Publish)
            .iter()
            .any(|s| s.contains("WITH (security_invoker = true)")));
    }

    #[test]
    fn a_renamed_table_is_the_new_versions_view_and_renamed_last_at_contract() {
        let rename = Request::RenameTable {
            new_name: "purchases".into(),
        };
        let plan = plan("51", &[(orders(), vec![rename.clone(), to_bigint()])], q).unwrap();
        assert!(sql(&plan, Stage::Publish)
            .iter()
            .any(|s| s.starts_with("CREATE VIEW public_v51.purchases ")));
        assert_eq!(
            plan.contract.last().unwrap().sql,
            "ALTER TABLE public.orders RENAME TO purchases"
        );
        assert!(plan.abort.iter().all(|s| !s.sql.contains("RENAME TO")));
        let mut taken = orders();
        taken.existing_relations = vec!["purchases".into()];
        let e = super::plan("51", &[(taken, vec![rename.clone()])], q).unwrap_err();
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE);
        let e = super::plan("51", &[(orders(), vec![rename.clone(), rename])], q).unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
    }

    #[test]
    fn what_cannot_be_planned_is_refused_with_the_reason() {
        let refuse = |requests: Vec<Request>| plan("43", &[(orders(), requests)], q).unwrap_err();
        let p = refuse(vec![bigint("id")]);
        let mut mutable = to_bigint();
        if let Request::ChangeType { mutable: m, .. } = &mut mutable {
            *m = true;
        }
        let p2 = refuse(vec![mutable]);
        assert!(
            p2.message.contains("depends on session settings"),
            "{}",
            p2.message
        );
        let mut late = orders();
        late.before_triggers = vec!["audit".into(), "zzz_bump".into()];
        let p2 = plan("43", &[(late, vec![to_bigint()])], q).unwrap_err();
        assert!(p2
            .message
            .contains("trigger zzz_bump would fire after the bridge"));
        let mut taken = orders();
        taken.existing_schemas = vec!["public_v43".into()];
        let p2 = plan("43", &[(taken, vec![to_bigint()])], q).unwrap_err();
        assert_eq!(p2.code, PgSqlErrorCode::ERRCODE_DUPLICATE_SCHEMA);
        let mut column_acl = orders();
        column_acl.column_grants = true;
        column_acl.row_security = true;
        let p2 = plan("43", &[(column_acl, vec![to_bigint()])], q).unwrap_err();
        assert!(p2
            .message
            .contains("column privileges and row-level security"));
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED);
        assert!(p.detail.contains("index orders_pkey"), "{}", p.detail);
        let p = refuse(vec![Request::Drop {
            column: "nope".into(),
            cascade: false,
        }]);
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN);
        let p = refuse(vec![to_cents(None)]);
        assert!(
            p.message.contains("computed by USING (amount * 100)"),
            "{}",
            p.message
        );
        assert!(
            p.hint
                .contains(r#"options => '{"orders.amount": {"down": "..."}}'"#),
            "{}",
            p.hint
        );
        let mut other_columns = to_cents(Some("$1"));
        if let Request::ChangeType { up_param, .. } = &mut other_columns {
            *up_param = None;
        }
        let p = refuse(vec![other_columns]);
        assert!(p.message.contains("reads other columns"), "{}", p.message);
        let p = refuse(vec![to_bigint(), to_bigint()]);
        assert!(p.message.contains("twice"), "{}", p.message);
        let p = refuse(vec![Request::Other("ADD CONSTRAINT".into())]);
        assert!(p
            .message
            .contains("cannot plan ADD CONSTRAINT on public.orders"));
        let mut no_default = orders();
        no_default.columns[1].default_sql = None;
        let p = plan(
            "43",
            &[(
                no_default,
                vec![Request::Drop {
                    column: "amount".into(),
                    cascade: false,
                }],
            )],
            q,
        )
        .unwrap_err();
        assert!(
            p.message.contains("NOT NULL without a default"),
            "{}",
            p.message
        );
        let p = plan(&"9".repeat(60), &[(orders(), vec![to_bigint()])], q).unwrap_err();
        assert_eq!(p.code, PgSqlErrorCode::ERRCODE_NAME_TOO_LONG);
    }

    #[test]
    fn literals_and_dollar_quotes_hold_any_text() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b"), r"E'a\\b'");
        assert_eq!(
            dollar_quoted("x $migrate$ y"),
            "$migrate1$x $migrate$ y$migrate1$"
        );
    }
}
