//! Splitting scripts with PostgreSQL's own parser.
//!
//! `raw_parser` gives each statement's byte range, so dollar quotes, nested comments and
//! `BEGIN ATOMIC` bodies are right by construction. This module is the only place that walks
//! raw parse trees for `apply`; it hands back plain [`Statement`]s.
//!
//! Holds `unsafe`: it walks the raw parse trees the grammar returns to split and classify
//! statements; what it hands out is a `pg::nodes::StmtTree`.

use crate::errors::Problem;
use crate::migration::script::{Kind, Statement, SyntaxError};
use crate::pg::nodes::{str_val, text, StmtTree};
use crate::pg::subxact;
use pgrx::pg_sys;
use pgrx::pg_sys::NodeTag as T;
use pgrx::PgSqlErrorCode;
use pgrx::{is_a, PgList};
use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr, CString};

/// Splits `script` into statements, each with its raw parse tree, or says where it fails to
/// parse. The trees live in the current memory context: use them before the calling function
/// returns.
pub fn parse(script: &str) -> Result<Vec<(Statement, StmtTree<'_>)>, SyntaxError> {
    PIECE_START.set(0);
    STATEMENTS_BEFORE.set(0);
    let parsed = subxact::run(|| {
        let tokens = with_error_position(|| token_offsets(script));
        let mut raw = Vec::new();
        for (start, end) in pieces(&tokens, script.len()) {
            pgrx::check_for_interrupts!();
            PIECE_START.set(start);
            STATEMENTS_BEFORE.set(raw.len());
            let (statements, to_the_end) = parse_piece(script, start, end);
            raw.extend(statements);
            if to_the_end {
                break;
            }
        }
        // SAFETY: raw statements of this script, parsed just now.
        unsafe { describe(script, &tokens, &raw) }
    });
    match parsed {
        Ok(statements) => Ok(statements),
        Err(caught) => Err(locate_error(script, caught)),
    }
}

/// The grammar never checks for cancellation, so a script is parsed in pieces of about this
/// many bytes, cut after a `;`, and cancellation is answered between them.
const PIECE: usize = 32 * 1024;

/// Byte ranges of the pieces: each ends right after a `;` token once it is PIECE long; the
/// last runs to the end.
fn pieces(tokens: &[Token], len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for t in tokens.iter().filter(|t| t.kind == c_int::from(b';')) {
        if t.offset + 1 - start >= PIECE {
            out.push((start, t.offset + 1));
            start = t.offset + 1;
        }
    }
    out.push((start, len));
    out
}

/// The statements of `script[start..end]` as (absolute start, absolute end, tree), and
/// whether they run to the end of the script. A piece that does not parse on its own was cut
/// inside a `BEGIN ATOMIC` body (whose `;` do not end the statement) or holds a syntax error:
/// the rest of the script is then parsed whole, which either succeeds or raises the error
/// where it really is.
type Piece = (Vec<(usize, usize, *mut pg_sys::Node)>, bool);

fn parse_piece(script: &str, start: usize, mut end: usize) -> Piece {
    let text =
        |end: usize| CString::new(&script[start..end]).expect("text values never contain NUL");
    // The rest of the script, parsed whole: statements, or the error with its position.
    let rest = || with_error_position(|| raw_parse(&text(script.len())));
    let list = if end == script.len() {
        rest()
    } else {
        match subxact::run(|| raw_parse(&text(end))) {
            Ok(list) => list,
            Err(_) => {
                end = script.len();
                rest()
            }
        }
    };
    // SAFETY: raw_parser returns a List of StmtTree.
    let raw = unsafe { PgList::<pg_sys::RawStmt>::from_pg(list) };
    let statements = raw
        .iter_ptr()
        .map(|stmt| {
            // SAFETY: a StmtTree of that list.
            let (location, len, node) =
                unsafe { ((*stmt).stmt_location, (*stmt).stmt_len, (*stmt).stmt) };
            let from = start + location.max(0) as usize;
            let to = match len {
                0 => end,
                len => from + len as usize,
            };
            (from, to, node)
        })
        .collect();
    (statements, end == script.len())
}

/// `CREATE [UNIQUE] INDEX ...` as `CREATE [UNIQUE] INDEX CONCURRENTLY ...`: the keyword put
/// right after the scanner's INDEX token, the rest as written. None unless the result parses
/// as one index build that is concurrent.
pub fn build_concurrently(statement: &str) -> Option<String> {
    let tokens = subxact::run(|| token_offsets(statement)).ok()?;
    // The grammar allows only UNIQUE between CREATE and INDEX.
    let index = tokens.get(1..3)?.iter().find(|t| {
        let word = statement[t.offset..].get(..5).unwrap_or("");
        let after = statement[t.offset + word.len()..].chars().next();
        word.eq_ignore_ascii_case("index")
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
    })?;
    let at = index.offset + 5;
    let rewritten = format!("{} CONCURRENTLY{}", &statement[..at], &statement[at..]);
    let parsed = parse(&rewritten).ok()?;
    let [(_, tree)] = parsed.as_slice() else {
        return None;
    };
    // SAFETY: a raw statement tree of this parse.
    let concurrent = unsafe {
        is_a(tree.node(), T::T_IndexStmt) && (*tree.node().cast::<pg_sys::IndexStmt>()).concurrent
    };
    concurrent.then_some(rewritten)
}

/// How many statements `text` holds as the grammar reads it now (under the session's
/// standard_conforming_strings); None when it does not parse.
pub fn count(text: &str) -> Option<usize> {
    let c_text = CString::new(text).ok()?;
    // SAFETY: raw_parser returns a List of StmtTree.
    subxact::run(|| unsafe { PgList::<pg_sys::RawStmt>::from_pg(raw_parse(&c_text)).len() }).ok()
}

/// PostgreSQL's grammar over `text`: a List of StmtTree, or an ERROR.
fn raw_parse(text: &CStr) -> *mut pg_sys::List {
    // SAFETY: raw_parser only reads the string and allocates in the current memory context.
    #[cfg(not(feature = "pg13"))]
    unsafe {
        pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT)
    }
    #[cfg(feature = "pg13")]
    unsafe {
        pg_sys::raw_parser(text.as_ptr())
    }
}

/// Describes each statement of a successful parse.
///
/// # Safety
/// `raw` must hold the raw statements of `script`, `tokens` its tokens.
unsafe fn describe<'a>(
    script: &'a str,
    tokens: &[Token],
    raw: &[(usize, usize, *mut pg_sys::Node)],
) -> Vec<(Statement, StmtTree<'a>)> {
    let lines = crate::migration::script::Lines::of(script);
    let mut statements = Vec::with_capacity(raw.len());
    for (i, &(location, end, node)) in raw.iter().enumerate() {
        pgrx::check_for_interrupts!();
        // The statement's location is right after the previous ';': skip the whitespace and
        // comments.
        let first = tokens.partition_point(|t| t.offset < location);
        let start = tokens.get(first).map_or(location, |t| t.offset).min(end);
        let (tag, form, kind) = classify(node);
        statements.push((
            Statement {
                number: i + 1,
                start,
                end,
                line: lines.line_at(start),
                tag,
                form,
                kind,
            },
            StmtTree::new(node),
        ));
    }
    statements
}

/// Command tag, the form that matters and its execution kind.
///
/// # Safety
/// `node` must be a raw (unanalysed) statement parse tree.
unsafe fn classify(node: *mut pg_sys::Node) -> (String, String, Kind) {
    let tag = command_tag(node);
    let non_transactional = |form: &str| (tag.clone(), form.to_string(), Kind::NonTransactional);

    if is_a(node, pg_sys::NodeTag::T_TransactionStmt) {
        return (tag.clone(), tag, Kind::TransactionControl);
    }
    if backfill_call_node(node).is_some() {
        return (tag, "SELECT migrate.backfill".into(), Kind::Backfill);
    }
    if is_a(node, pg_sys::NodeTag::T_IndexStmt) && (*node.cast::<pg_sys::IndexStmt>()).concurrent {
        return non_transactional("CREATE INDEX CONCURRENTLY");
    }
    if is_a(node, pg_sys::NodeTag::T_DropStmt) && (*node.cast::<pg_sys::DropStmt>()).concurrent {
        return non_transactional("DROP INDEX CONCURRENTLY");
    }
    if is_a(node, pg_sys::NodeTag::T_ReindexStmt) {
        let stmt = node.cast::<pg_sys::ReindexStmt>();
        if reindex_is_concurrent(stmt) {
            return non_transactional("REINDEX CONCURRENTLY");
        }
        if matches!(
            (*stmt).kind,
            pg_sys::ReindexObjectType::REINDEX_OBJECT_SYSTEM
                | pg_sys::ReindexObjectType::REINDEX_OBJECT_DATABASE
        ) {
            return non_transactional("REINDEX SYSTEM/DATABASE");
        }
    }
    if is_a(node, pg_sys::NodeTag::T_VacuumStmt)
        && (*node.cast::<pg_sys::VacuumStmt>()).is_vacuumcmd
    {
        return non_transactional("VACUUM");
    }
    if is_a(node, pg_sys::NodeTag::T_ClusterStmt)
        && (*node.cast::<pg_sys::ClusterStmt>()).relation.is_null()
    {
        return non_transactional("CLUSTER without a table");
    }
    if is_a(node, pg_sys::NodeTag::T_AlterTableStmt) && only_validates(node.cast()) {
        return (tag, "VALIDATE CONSTRAINT".into(), Kind::Validate);
    }
    if is_a(node, pg_sys::NodeTag::T_AlterTableStmt) && detaches_concurrently(node.cast()) {
        return non_transactional("ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY");
    }
    for (node_tag, form) in [
        (pg_sys::NodeTag::T_CreatedbStmt, "CREATE DATABASE"),
        (pg_sys::NodeTag::T_DropdbStmt, "DROP DATABASE"),
        (pg_sys::NodeTag::T_CreateTableSpaceStmt, "CREATE TABLESPACE"),
        (pg_sys::NodeTag::T_DropTableSpaceStmt, "DROP TABLESPACE"),
        (pg_sys::NodeTag::T_AlterSystemStmt, "ALTER SYSTEM"),
        (
            pg_sys::NodeTag::T_CreateSubscriptionStmt,
            "CREATE SUBSCRIPTION",
        ),
        (pg_sys::NodeTag::T_DropSubscriptionStmt, "DROP SUBSCRIPTION"),
    ] {
        if is_a(node, node_tag) {
            return non_transactional(form);
        }
    }
    (tag.clone(), tag, Kind::Transactional)
}

/// Whether every subcommand of an ALTER TABLE is VALIDATE CONSTRAINT.
///
/// # Safety
/// `stmt` must be a raw AlterTableStmt.
unsafe fn only_validates(stmt: *mut pg_sys::AlterTableStmt) -> bool {
    let cmds = PgList::<pg_sys::AlterTableCmd>::from_pg((*stmt).cmds);
    !cmds.is_empty()
        && cmds
            .iter_ptr()
            .all(|c| (*c).subtype == pg_sys::AlterTableType::AT_ValidateConstraint)
}

/// The command tag of a raw statement ("CREATE INDEX").
///
/// # Safety
/// `node` must be a raw statement parse tree.
unsafe fn command_tag(node: *mut pg_sys::Node) -> String {
    CStr::from_ptr(pg_sys::GetCommandTagName(pg_sys::CreateCommandTag(node)))
        .to_string_lossy()
        .into_owned()
}

/// Whether a statement's option list (VACUUM (FULL), REINDEX (CONCURRENTLY)) sets `name`.
///
/// # Safety
/// `options` must be a List of DefElem, or NIL.
pub(crate) unsafe fn option_set(options: *mut pg_sys::List, name: &[u8]) -> bool {
    PgList::<pg_sys::DefElem>::from_pg(options)
        .iter_ptr()
        .any(|opt| CStr::from_ptr((*opt).defname).to_bytes() == name && pg_sys::defGetBoolean(opt))
}

/// # Safety
/// `stmt` must be a raw REINDEX statement.
#[cfg(not(feature = "pg13"))]
pub(crate) unsafe fn reindex_is_concurrent(stmt: *mut pg_sys::ReindexStmt) -> bool {
    option_set((*stmt).params, b"concurrently")
}

/// # Safety
/// `stmt` must be a raw REINDEX statement.
#[cfg(feature = "pg13")]
pub(crate) unsafe fn reindex_is_concurrent(stmt: *mut pg_sys::ReindexStmt) -> bool {
    (*stmt).concurrent
}

/// Whether an ATTACH/DETACH PARTITION is CONCURRENTLY (PostgreSQL 14 and later).
///
/// # Safety
/// `cmd` must be the PartitionCmd of an ALTER TABLE command.
#[cfg(not(feature = "pg13"))]
pub(crate) unsafe fn partition_cmd_concurrent(cmd: *mut pg_sys::PartitionCmd) -> bool {
    (*cmd).concurrent
}

/// # Safety
/// As above.
#[cfg(feature = "pg13")]
pub(crate) unsafe fn partition_cmd_concurrent(_cmd: *mut pg_sys::PartitionCmd) -> bool {
    false
}

unsafe fn detaches_concurrently(stmt: *mut pg_sys::AlterTableStmt) -> bool {
    PgList::<pg_sys::AlterTableCmd>::from_pg((*stmt).cmds)
        .iter_ptr()
        .any(|cmd| {
            (*cmd).subtype == pg_sys::AlterTableType::AT_DetachPartition
                && !(*cmd).def.is_null()
                && partition_cmd_concurrent((*cmd).def.cast())
        })
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: c_int,
    offset: usize,
}

/// Every token of `text` with its byte offset, from PostgreSQL's own scanner. Raises an ERROR
/// where the scanner does (an unterminated quote), so call it inside a subtransaction unless
/// the text is known to parse.
fn token_offsets(text: &str) -> Vec<Token> {
    let c_text = CString::new(text).expect("text values never contain NUL");
    let mut tokens = Vec::new();
    // SAFETY: the scanner state lives on this stack frame and is finished before returning;
    // the keyword tables are the parser's own.
    unsafe {
        let mut extra: pg_sys::core_yy_extra_type = std::mem::zeroed();
        let scanner = pg_sys::scanner_init(
            c_text.as_ptr(),
            &mut extra,
            &raw const pg_sys::ScanKeywords,
            (&raw const pg_sys::ScanKeywordTokens).cast(),
        );
        loop {
            if tokens.len() % 4096 == 0 {
                pgrx::check_for_interrupts!();
            }
            let mut value: pg_sys::core_YYSTYPE = std::mem::zeroed();
            let mut location: c_int = 0;
            let kind = pg_sys::core_yylex(&mut value, &mut location, scanner);
            if kind == 0 {
                break;
            }
            tokens.push(Token {
                kind,
                offset: location.max(0) as usize,
            });
        }
        pg_sys::scanner_finish(scanner);
    }
    tokens
}

/// Turns a caught parser error into a located [`SyntaxError`]. The statement it is in is the
/// one after the longest prefix, cut at a `;` token, that parses on its own; a `;` inside a
/// `BEGIN ATOMIC` body does not end a statement, and such a prefix simply fails to parse.
fn locate_error(script: &str, caught: subxact::Caught) -> SyntaxError {
    // The position is counted from the start of the piece that was being parsed.
    let piece_start = PIECE_START.get().min(script.len());
    let piece_chars = script[..piece_start].chars().count();
    let offset = LAST_ERROR_POSITION
        .take()
        .and_then(|chars| char_to_byte(script, chars + piece_chars));
    let upto = offset.unwrap_or(script.len());
    let tokens = subxact::run(|| token_offsets(&script[..upto])).unwrap_or_default();

    let before = STATEMENTS_BEFORE.get();
    let mut statement = before + 1;
    let mut statement_start = tokens
        .iter()
        .find(|t| t.offset >= piece_start)
        .map_or(upto, |t| t.offset);
    // Each try parses the text from the failing piece's start to a `;`: a bounded number of
    // them (a BEGIN ATOMIC body can hold thousands of `;` that end no statement), each
    // answering cancellation.
    let semicolons = tokens
        .iter()
        .enumerate()
        .rev()
        .take_while(|(_, t)| t.offset >= piece_start)
        .filter(|(_, t)| t.kind == c_int::from(b';'));
    for (i, token) in semicolons.take(64) {
        pgrx::check_for_interrupts!();
        let prefix = CString::new(&script[piece_start..=token.offset]).expect("no NUL");
        // SAFETY: raw_parse returns a List of StmtTree.
        let count = subxact::run(|| unsafe {
            PgList::<pg_sys::RawStmt>::from_pg(raw_parse(&prefix)).len()
        });
        if let Ok(count) = count {
            statement = before + count + 1;
            statement_start = tokens.get(i + 1).map_or(upto, |t| t.offset);
            break;
        }
    }
    SyntaxError {
        code: caught.code,
        message: caught.message,
        offset,
        statement,
        statement_line: crate::migration::script::line_at(script, statement_start),
    }
}

/// PostgreSQL reports error positions as 1-based character counts.
fn char_to_byte(script: &str, position: usize) -> Option<usize> {
    if position == 0 {
        return None;
    }
    Some(
        script
            .char_indices()
            .nth(position - 1)
            .map_or(script.len(), |(byte, _)| byte),
    )
}

thread_local! {
    /// Where the piece being parsed starts, in bytes: error positions count from there.
    static PIECE_START: Cell<usize> = const { Cell::new(0) };
    /// How many statements the pieces before it held.
    static STATEMENTS_BEFORE: Cell<usize> = const { Cell::new(0) };
    /// The cursor position of the last error raised inside [`with_error_position`].
    static LAST_ERROR_POSITION: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` with an error context callback that records the error's cursor position. pgrx
/// copies only message, detail and hint out of an error, so the position has to be read while
/// the error is being raised, the way PostgreSQL's own SQL-function validator does.
fn with_error_position<T>(f: impl FnOnce() -> T) -> T {
    struct Pop(*mut pg_sys::ErrorContextCallback);
    impl Drop for Pop {
        fn drop(&mut self) {
            // SAFETY: restores the stack to what it was before the push below.
            unsafe { pg_sys::error_context_stack = self.0 };
        }
    }
    LAST_ERROR_POSITION.set(None);
    // SAFETY: the callback record outlives its presence on the stack, which `Pop` ends.
    unsafe {
        let mut callback = pg_sys::ErrorContextCallback {
            previous: pg_sys::error_context_stack,
            callback: Some(record_error_position),
            arg: std::ptr::null_mut(),
        };
        let _pop = Pop(callback.previous);
        pg_sys::error_context_stack = &mut callback;
        f()
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn record_error_position(_arg: *mut c_void) {
    let position = pg_sys::geterrposition();
    if position > 0 {
        LAST_ERROR_POSITION.set(Some(position as usize));
    }
}

/// The verify queries of a migration: each must be a query (SELECT, VALUES, TABLE, WITH ...
/// SELECT), since verification reads and never writes.
pub fn parse_queries(what: &str, sql: &str) -> Result<Vec<Statement>, Problem> {
    let trees = parse(sql).map_err(|e| e.problem(what, sql))?;
    let statements: Vec<Statement> = trees.into_iter().map(|(s, _)| s).collect();
    if statements.is_empty() {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} contain no statements"),
            "verify => takes queries that must return no rows for the migration to count as \
             complete.",
            "Pass at least one query, e.g. SELECT id FROM orders WHERE total IS NULL; or leave \
             verify out.",
        ));
    }
    if let Some(st) = statements.iter().find(|s| s.tag != "SELECT") {
        return Err(Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what}: {} is {}, not a query", st.locator(), st.tag),
            "Verification only reads: each verify statement is a query that passes when it \
             returns no rows.",
            "Write the check as a query that returns the offending rows, e.g. \
             SELECT id FROM orders WHERE total IS NULL, or a count that must match: \
             SELECT count(*) FROM orders HAVING count(*) <> 1000.",
        ));
    }
    Ok(statements)
}

/// A statement of a migration that is a call `SELECT migrate.backfill(...)`: the set and
/// where clauses it passes as literals, when it does.
#[derive(Debug, Default)]
pub struct Call {
    pub set_clause: Option<String>,
    pub where_clause: Option<String>,
}

/// Whether the statement is `SELECT migrate.backfill(...)` and nothing else.
pub fn backfill_call(stmt: StmtTree) -> Option<Call> {
    // SAFETY: a StmtTree is a valid raw statement tree.
    unsafe { backfill_call_node(stmt.node()) }
}

/// # Safety
/// `node` must be a raw parse tree.
unsafe fn backfill_call_node(node: *mut pg_sys::Node) -> Option<Call> {
    if !is_a(node, T::T_SelectStmt) {
        return None;
    }
    let s = node.cast::<pg_sys::SelectStmt>();
    let targets = PgList::<pg_sys::ResTarget>::from_pg((*s).targetList);
    if targets.len() != 1 || !(*s).fromClause.is_null() || !(*s).whereClause.is_null() {
        return None;
    }
    let value = (*targets.get_ptr(0)?).val;
    if !is_a(value, T::T_FuncCall) {
        return None;
    }
    let call = value.cast::<pg_sys::FuncCall>();
    let name: Vec<String> = PgList::<pg_sys::Node>::from_pg((*call).funcname)
        .iter_ptr()
        .map(|n| str_val(n))
        .collect();
    if name != ["migrate", "backfill"] {
        return None;
    }
    let mut found = Call::default();
    for (position, arg) in PgList::<pg_sys::Node>::from_pg((*call).args)
        .iter_ptr()
        .enumerate()
    {
        let (slot, value) = if is_a(arg, T::T_NamedArgExpr) {
            let named = arg.cast::<pg_sys::NamedArgExpr>();
            (text((*named).name), (*named).arg.cast::<pg_sys::Node>())
        } else {
            (String::new(), arg)
        };
        let literal = string_constant(value);
        match (position, slot.as_str()) {
            (1, "") | (_, "set_clause") => found.set_clause = literal,
            (2, "") | (_, "where_clause") => found.where_clause = literal,
            _ => {}
        }
    }
    Some(found)
}

/// The value of a string literal ('...' or $$...$$), if `node` is one.
unsafe fn string_constant(node: *mut pg_sys::Node) -> Option<String> {
    if !is_a(node, T::T_A_Const) {
        return None;
    }
    let c = node.cast::<pg_sys::A_Const>();
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    {
        let value = std::ptr::addr_of_mut!((*c).val).cast::<pg_sys::Node>();
        (!(*c).isnull && is_a(value, T::T_String)).then(|| str_val(value))
    }
    #[cfg(any(feature = "pg13", feature = "pg14"))]
    {
        let value = std::ptr::addr_of_mut!((*c).val).cast::<pg_sys::Node>();
        is_a(value, T::T_String).then(|| str_val(value))
    }
}
