//! The SQL gate: what a plugin may send to `db`, and what its migrations
//! may contain.
//!
//! One statement per call, data manipulation only (`SELECT`, `INSERT`,
//! `UPDATE`, `DELETE`, `WITH`). Transaction control, `SET`/`RESET`, DDL,
//! `COPY`, `PRAGMA`, `ATTACH`, `SELECT ... INTO` and the rest are refused
//! before anything reaches the database.
//!
//! How it reads the SQL depends on the engine that will run it:
//!
//! - **PostgreSQL** ([`Backend::Postgres`]): the text is parsed with
//!   PostgreSQL's own grammar (libpg_query) and the whole parse tree is
//!   walked against allow-lists of node kinds, functions and types
//!   ([`allow_list`]). A text filter cannot see what the server sees
//!   (`set_config/**/(…)`, `U&"…"` names, functions that run SQL text);
//!   the server's parser can.
//! - **SQLite** ([`Backend::Sqlite`]): the text is lexed (comments, quoted
//!   strings and identifiers, dollar quotes) rather than matched as
//!   substrings; the enforcement that counts is SQLite's authorizer
//!   (`sqlite_sandbox`), which sees every table and function SQLite itself
//!   resolves and allows only [`allow_list::SQLITE_FUNCTIONS`].
//!
//! The gate is defence in depth, not the boundary: on PostgreSQL each
//! plugin's SQL runs as its own role with grants on its own tables only.

use crate::error::Backend;

pub mod allow_list;
mod postgres;

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Only whitespace and comments.
    #[error("empty statement")]
    Empty,
    /// Longer than the plugin's `max_sql_bytes`.
    #[error("SQL text is {len} bytes, over the limit of {max} bytes")]
    TooLong {
        /// Length of the text.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than one statement.
    #[error("several statements in one call: send one statement per db call")]
    MultipleStatements,
    /// The statement is not DML.
    #[error(
        "{0} statements are not allowed: plugins may run SELECT, INSERT, UPDATE, DELETE or WITH; the host owns transactions, settings and schema (ship tables as migrations)"
    )]
    NotDml(String),
    /// `SELECT ... INTO` creates a table.
    #[error("SELECT ... INTO creates a table and is not allowed: use INSERT INTO ... SELECT")]
    SelectInto,
    /// A function that is not on the allow-list ([`allow_list`]).
    #[error(
        "function {0} is not allowed in plugin SQL: plugins may call only ordinary, side-effect-free functions (switchyard's sql_gate allow-list); compute the value in the plugin instead"
    )]
    ForbiddenFunction(String),
    /// A quote or comment that never ends.
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    /// A block comment inside a block comment: PostgreSQL nests them and
    /// SQLite does not, so the statement's extent would be ambiguous.
    #[error("nested block comments are not allowed (databases disagree on where they end)")]
    NestedComment,
    /// A parameter that is not `$1`, `$2`, ...
    #[error("parameter {0} is not allowed: write parameters as $1, $2, ...")]
    BadParameter(String),
    /// `ROLLBACK` in any form (`INSERT OR ROLLBACK`, `ON CONFLICT ROLLBACK`)
    /// would end the host's transaction.
    #[error(
        "ROLLBACK is not allowed in plugin SQL: the host owns the transaction; return a retry or rejected outcome instead"
    )]
    Rollback,
    /// Switchyard's own tables are off limits.
    #[error(
        "{0} is one of switchyard's own tables (switchyard_*), which plugins cannot touch: use a name of your own"
    )]
    HostTable(String),
    /// PostgreSQL's parser does not accept the text.
    #[error("PostgreSQL cannot parse this statement: {0}")]
    Syntax(String),
    /// A construct outside the allow-list (XML functions, TABLESAMPLE, a
    /// temporary table, CASCADE …).
    #[error(
        "{0} is not allowed in plugin SQL: plugins read and write their own tables with ordinary expressions"
    )]
    Forbidden(String),
    /// A schema-qualified name.
    #[error(
        "{0}: schema-qualified names are not allowed; plugins use the unqualified names of their own tables and types"
    )]
    QualifiedName(String),
    /// A relation or object name in the system's namespace (`pg_*`).
    #[error(
        "{0} names a system catalog object (pg_*), which plugins cannot use: use your own tables"
    )]
    SystemRelation(String),
    /// A cast to (or a column of) a type that is not a plain value.
    #[error(
        "casts to {0} are not allowed (catalog types such as regclass look objects up by name): cast to an ordinary type such as text, uuid, jsonb, int or timestamptz"
    )]
    ForbiddenType(String),
    /// A statement a migration may not contain.
    #[error(
        "{0} is not allowed in a plugin migration: migrations may create, alter, drop and comment on their own tables, indexes, sequences and enum types, and seed rows with INSERT, UPDATE or DELETE"
    )]
    NotInMigration(String),
}

/// The kind of an accepted statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// `SELECT`.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `WITH` (a common table expression, possibly data-modifying).
    With,
}

/// The outcome of a migration script that passed the gate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSummary {
    /// The tables its `CREATE TABLE` statements create, as the engine
    /// names them: read from the parse tree on PostgreSQL (unquoted names
    /// folded to lowercase, quoted ones as written) and from the tokens on
    /// SQLite (lowercased: SQLite's names are case-insensitive), never
    /// from comments or string literals. The host grants the plugin these
    /// tables.
    pub tables_created: Vec<String>,
}

/// Functions the SQLite lexer refuses on sight, before SQLite's authorizer
/// (which allows only [`allow_list::SQLITE_FUNCTIONS`]) sees the statement:
/// an early, readable refusal for the obvious ones.
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "SET_CONFIG",
    "PG_READ_FILE",
    "PG_READ_BINARY_FILE",
    "PG_LS_DIR",
    "PG_STAT_FILE",
    "PG_RELOAD_CONF",
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_XACT_LOCK",
    "LO_IMPORT",
    "LO_EXPORT",
    "DBLINK",
    "DBLINK_EXEC",
    "LOAD_EXTENSION",
    "READFILE",
    "WRITEFILE",
    "EDIT",
    "FTS3_TOKENIZER",
];

/// A word outside strings and comments, uppercased, and whether a `(`
/// follows it (a function call) or a `.` (a qualifier).
#[derive(Debug)]
struct Word {
    text: String,
    call: bool,
    qualifier: bool,
}

/// Check one statement for `backend`; returns its kind or why it is
/// refused (the error names what was refused and says what to do).
///
/// ```
/// use switchyard_store::database::Backend;
/// use switchyard_store::sql_gate::{check, GateError, StatementKind};
/// assert_eq!(check("SELECT 1; -- done", 1024, Backend::Sqlite), Ok(StatementKind::Select));
/// assert_eq!(check("SELECT 1; DROP TABLE t", 1024, Backend::Sqlite), Err(GateError::MultipleStatements));
/// assert_eq!(
///     check("SELECT set_config/**/('role', 'none', true)", 1024, Backend::Postgres),
///     Err(GateError::ForbiddenFunction("set_config".into()))
/// );
/// ```
pub fn check(sql: &str, max_bytes: usize, backend: Backend) -> Result<StatementKind, GateError> {
    if sql.len() > max_bytes {
        return Err(GateError::TooLong {
            len: sql.len(),
            max: max_bytes,
        });
    }
    match backend {
        Backend::Postgres => {
            // Plugins send the same few statements again and again; the
            // verdict depends on the text alone, and parsing it with
            // PostgreSQL's parser costs far more than a lookup.
            if let Some(verdict) = VERDICTS.get(sql) {
                return verdict;
            }
            // Nested block comments are valid PostgreSQL, but SQLite ends
            // a comment at the first `*/`: plugin SQL is meant to run on
            // both, and a reader must see one statement either way.
            let verdict = if let Err(GateError::NestedComment) = lex(sql, false) {
                Err(GateError::NestedComment)
            } else {
                postgres::check(sql).map_err(|e| match (e, check_sqlite(sql)) {
                    // SQLite's `INSERT OR ROLLBACK` is not PostgreSQL: say
                    // why it is refused rather than only that it does not
                    // parse.
                    (GateError::Syntax(_), Err(GateError::Rollback)) => GateError::Rollback,
                    (e, _) => e,
                })
            };
            VERDICTS.put(sql, &verdict);
            verdict
        }
        Backend::Sqlite => check_sqlite(sql),
    }
}

/// The PostgreSQL gate's verdicts by statement text, shared by every
/// plugin (a verdict depends on the text only). Bounded: when full it
/// starts again empty, so SQL that never repeats (a hostile plugin's)
/// costs memory up to the bound and no more.
static VERDICTS: VerdictCache = VerdictCache::new();

/// Statements remembered at most.
const VERDICT_CAPACITY: usize = 4096;
/// Longest statement text remembered.
const VERDICT_MAX_TEXT: usize = 8 << 10;

/// See [`VERDICTS`].
struct VerdictCache(
    std::sync::Mutex<Option<std::collections::HashMap<String, Result<StatementKind, GateError>>>>,
);

impl VerdictCache {
    const fn new() -> Self {
        Self(std::sync::Mutex::new(None))
    }

    fn get(&self, sql: &str) -> Option<Result<StatementKind, GateError>> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.as_ref()?.get(sql).cloned()
    }

    fn put(&self, sql: &str, verdict: &Result<StatementKind, GateError>) {
        if sql.len() > VERDICT_MAX_TEXT {
            return;
        }
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = map.get_or_insert_with(std::collections::HashMap::new);
        if map.len() >= VERDICT_CAPACITY {
            map.clear();
        }
        map.insert(sql.to_string(), verdict.clone());
    }
}

/// Check a plugin's migration script for `backend` before the host runs
/// it; returns the tables it creates.
///
/// On PostgreSQL the whole script is parsed and only tables, indexes,
/// sequences and enum types of the plugin's own (create, alter, drop,
/// comment) and seed rows are allowed, with the same function and type
/// allow-lists as plugin statements. On SQLite the script is lexed to
/// refuse the obviously wrong (ATTACH, PRAGMA, triggers, views, transaction
/// control, `switchyard_*` names); the enforcement there is the migration
/// scope of SQLite's authorizer (`sqlite_sandbox::MigrationScope`).
///
/// ```
/// use switchyard_store::database::Backend;
/// use switchyard_store::sql_gate::check_migration;
/// let script = "-- CREATE TABLE not_this (x int)\nCREATE TABLE t (x int DEFAULT now())";
/// let summary = check_migration(script, Backend::Postgres).unwrap();
/// assert_eq!(summary.tables_created, ["t"]);
/// assert!(check_migration("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", Backend::Postgres).is_err());
/// ```
pub fn check_migration(script: &str, backend: Backend) -> Result<MigrationSummary, GateError> {
    match backend {
        Backend::Postgres => postgres::check_migration(script),
        Backend::Sqlite => check_sqlite_migration(script),
    }
}

/// The SQLite path of [`check`]: lex, then look at the words.
fn check_sqlite(sql: &str) -> Result<StatementKind, GateError> {
    let words = lex(sql, false)?.pop().unwrap_or_default();
    let first = words.first().ok_or(GateError::Empty)?;
    let kind = match first.text.as_str() {
        "SELECT" => StatementKind::Select,
        "INSERT" => StatementKind::Insert,
        "UPDATE" => StatementKind::Update,
        "DELETE" => StatementKind::Delete,
        "WITH" => StatementKind::With,
        other => return Err(GateError::NotDml(other.to_string())),
    };
    let mut seen_insert = false;
    for w in &words {
        if w.text.starts_with("SWITCHYARD_") {
            return Err(GateError::HostTable(w.text.to_ascii_lowercase()));
        }
        match w.text.as_str() {
            "ROLLBACK" => return Err(GateError::Rollback),
            "INSERT" => seen_insert = true,
            "INTO" if !seen_insert => return Err(GateError::SelectInto),
            name if w.call && FORBIDDEN_FUNCTIONS.contains(&name) => {
                return Err(GateError::ForbiddenFunction(name.to_ascii_lowercase()));
            }
            _ => {}
        }
    }
    Ok(kind)
}

/// The SQLite path of [`check_migration`]: statement by statement, from
/// tokens (so names in comments and strings do not count).
fn check_sqlite_migration(script: &str) -> Result<MigrationSummary, GateError> {
    let mut tables_created: Vec<String> = Vec::new();
    for words in lex(script, true)? {
        let Some(first) = words.first() else { continue };
        if let Some(w) = words.iter().find(|w| w.text.starts_with("SWITCHYARD_")) {
            return Err(GateError::HostTable(w.text.to_ascii_lowercase()));
        }
        if let Some(w) = words
            .iter()
            .find(|w| w.call && FORBIDDEN_FUNCTIONS.contains(&w.text.as_str()))
        {
            return Err(GateError::ForbiddenFunction(w.text.to_ascii_lowercase()));
        }
        match first.text.as_str() {
            "CREATE" => {
                let mut rest = words[1..].iter().map(|w| w.text.as_str());
                let mut what = rest.next().unwrap_or("");
                if what == "UNIQUE" {
                    what = rest.next().unwrap_or("");
                }
                match what {
                    "TABLE" => {
                        let mut at = 2;
                        if words.get(2).is_some_and(|w| w.text == "IF") {
                            at = 5; // IF NOT EXISTS
                        }
                        let name = words
                            .get(at)
                            .ok_or_else(|| GateError::NotInMigration("CREATE TABLE".into()))?;
                        if name.qualifier {
                            return Err(GateError::QualifiedName(name.text.to_ascii_lowercase()));
                        }
                        let name = name.text.to_ascii_lowercase();
                        if !tables_created.contains(&name) {
                            tables_created.push(name);
                        }
                    }
                    "INDEX" => {}
                    other => {
                        return Err(GateError::NotInMigration(format!("CREATE {other}")));
                    }
                }
            }
            "ALTER" | "DROP" | "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" => {}
            other => return Err(GateError::NotInMigration(other.to_string())),
        }
    }
    Ok(MigrationSummary { tables_created })
}

/// Split into words, statement by statement. A single statement
/// (`script` false) fails on anything but comments after its `;`; a
/// script yields one list per non-empty statement.
fn lex(sql: &str, script: bool) -> Result<Vec<Vec<Word>>, GateError> {
    let b = sql.as_bytes();
    let mut statements: Vec<Vec<Word>> = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut i = 0;
    let mut ended = false; // a `;` was seen
    // What follows a word: `(` makes it a call, `.` a qualifier.
    let next = |j: usize| {
        let mut j = j;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        b.get(j).copied()
    };
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // PostgreSQL nests block comments and SQLite does not:
                // refuse nesting so both read the same statement.
                i += 2;
                loop {
                    if i + 1 >= b.len() {
                        return Err(GateError::Unterminated("block comment"));
                    }
                    if b[i] == b'/' && b[i + 1] == b'*' {
                        return Err(GateError::NestedComment);
                    } else if b[i] == b'*' && b[i + 1] == b'/' {
                        i += 2;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            _ if ended && !script => return Err(GateError::MultipleStatements),
            b';' => {
                ended = true;
                if !words.is_empty() {
                    statements.push(std::mem::take(&mut words));
                }
                i += 1;
            }
            b'\'' => {
                // E'..' strings treat backslash as an escape.
                let escapes = i > 0
                    && (b[i - 1] == b'E' || b[i - 1] == b'e')
                    && (i < 2 || !is_ident(b[i - 2]));
                i = skip_quoted(b, i, b'\'', escapes, "string literal")?;
            }
            b'"' | b'`' => {
                let start = i + 1;
                i = skip_quoted(b, i, c, false, "quoted identifier")?;
                let ident = sql[start..i - 1].to_ascii_uppercase();
                let after = next(i);
                words.push(Word {
                    text: ident,
                    call: after == Some(b'('),
                    qualifier: after == Some(b'.'),
                });
            }
            b'[' => {
                // SQLite accepts [identifier].
                match b[i..].iter().position(|&x| x == b']') {
                    Some(p) => i += p + 1,
                    None => return Err(GateError::Unterminated("bracketed identifier")),
                }
            }
            b'$' => {
                if let Some(tag_len) = dollar_tag(&b[i..]) {
                    let tag = &b[i..i + tag_len];
                    let body = i + tag_len;
                    match find(&b[body..], tag) {
                        Some(p) => i = body + p + tag_len,
                        None => return Err(GateError::Unterminated("dollar-quoted string")),
                    }
                } else {
                    // A `$1` parameter: digits, not starting with 0.
                    let start = i;
                    i += 1;
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                    let digits = &sql[start + 1..i];
                    if digits.is_empty()
                        || digits.starts_with('0')
                        || !digits.bytes().all(|d| d.is_ascii_digit())
                    {
                        return Err(GateError::BadParameter(sql[start..i].to_string()));
                    }
                }
            }
            _ if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let text = sql[start..i].to_ascii_uppercase();
                let after = next(i);
                words.push(Word {
                    text,
                    call: after == Some(b'('),
                    qualifier: after == Some(b'.'),
                });
            }
            _ => i += 1,
        }
    }
    if !words.is_empty() {
        statements.push(words);
    }
    Ok(statements)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Skip a quoted run starting at `start` (the opening quote); a doubled
/// quote is an escaped quote. Returns the index after the closing quote.
fn skip_quoted(
    b: &[u8],
    start: usize,
    quote: u8,
    backslash: bool,
    what: &'static str,
) -> Result<usize, GateError> {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(GateError::Unterminated(what))
}

/// Length of a dollar-quote tag (`$$` or `$tag$`) at the start of `b`.
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let mut j = 1;
    if b.get(j).is_some_and(|&c| c.is_ascii_digit()) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {

    /// A remembered verdict is the verdict: the same refusal the second
    /// time, and the size cap still applies before any lookup.
    #[test]
    fn remembered_verdicts_are_the_same_and_the_cap_still_applies() {
        let bad = "SELECT set_config/**/('role', 'none', true) -- cached";
        let first = check(bad, 1 << 16, Backend::Postgres);
        assert!(
            matches!(first, Err(GateError::ForbiddenFunction(_))),
            "{first:?}"
        );
        assert_eq!(check(bad, 1 << 16, Backend::Postgres), first);
        let good = "SELECT 1 AS cached_one";
        assert_eq!(
            check(good, 1 << 16, Backend::Postgres),
            Ok(StatementKind::Select)
        );
        assert_eq!(
            check(good, 1 << 16, Backend::Postgres),
            Ok(StatementKind::Select)
        );
        assert!(matches!(
            check(good, 4, Backend::Postgres),
            Err(GateError::TooLong { .. })
        ));
    }
    use super::*;

    const MAX: usize = 64 * 1024;

    #[test]
    fn accepts_dml() {
        for (sql, kind) in [
            ("select 1", StatementKind::Select),
            ("INSERT INTO t (a) VALUES ($1)", StatementKind::Insert),
            ("update t set a = $1 where b = $2;", StatementKind::Update),
            ("  /* c */ DELETE FROM t -- trailing", StatementKind::Delete),
            (
                "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
                StatementKind::With,
            ),
            (
                "INSERT INTO t VALUES ('a;b'), ($$x;y$$), (E'it\\'s;'), (\"q;\")",
                StatementKind::Insert,
            ),
        ] {
            assert_eq!(check(sql, MAX, Backend::Sqlite), Ok(kind), "{sql}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("", GateError::Empty),
            ("-- only a comment", GateError::Empty),
            ("BEGIN", GateError::NotDml("BEGIN".into())),
            ("commit", GateError::NotDml("COMMIT".into())),
            ("SET statement_timeout = 0", GateError::NotDml("SET".into())),
            ("RESET ROLE", GateError::NotDml("RESET".into())),
            ("DROP TABLE t", GateError::NotDml("DROP".into())),
            ("CREATE TABLE t (a int)", GateError::NotDml("CREATE".into())),
            ("COPY t FROM PROGRAM 'id'", GateError::NotDml("COPY".into())),
            (
                "PRAGMA foreign_keys = OFF",
                GateError::NotDml("PRAGMA".into()),
            ),
            ("ATTACH 'x.db' AS x", GateError::NotDml("ATTACH".into())),
            ("SELECT 1; SELECT 2", GateError::MultipleStatements),
            ("SELECT 1;DROP TABLE t;", GateError::MultipleStatements),
            ("SELECT * INTO t2 FROM t", GateError::SelectInto),
            (
                "SELECT pg_read_file('/etc/passwd')",
                GateError::ForbiddenFunction("pg_read_file".into()),
            ),
            (
                "SELECT set_config('role', 'postgres', true)",
                GateError::ForbiddenFunction("set_config".into()),
            ),
            (
                "SELECT 'unterminated",
                GateError::Unterminated("string literal"),
            ),
            ("SELECT 1 /* open", GateError::Unterminated("block comment")),
            (
                "SELECT 1 /* /* */ ; DROP TABLE t; -- */",
                GateError::NestedComment,
            ),
            ("SELECT $0", GateError::BadParameter("$0".into())),
            (
                "SELECT \"pg_read_file\" ('/etc/passwd')",
                GateError::ForbiddenFunction("pg_read_file".into()),
            ),
            ("SELECT $01", GateError::BadParameter("$01".into())),
            ("SELECT $abc", GateError::BadParameter("$abc".into())),
            ("INSERT OR ROLLBACK INTO t VALUES (1)", GateError::Rollback),
            (
                "INSERT INTO t VALUES (1) ON CONFLICT ROLLBACK",
                GateError::Rollback,
            ),
            (
                "DELETE FROM switchyard_processed",
                GateError::HostTable("switchyard_processed".into()),
            ),
            (
                "INSERT INTO \"switchyard_outbox\" (topic) VALUES ($1)",
                GateError::HostTable("switchyard_outbox".into()),
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(check(sql, MAX, Backend::Sqlite), Err(want), "{sql}");
        }
    }

    #[test]
    fn semicolon_inside_quotes_is_not_a_second_statement() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            for sql in [
                "SELECT ';DROP TABLE t'",
                "SELECT $tag$ ; DROP $tag$",
                "SELECT \"a;b\" FROM t",
                "SELECT 1 /* ; DROP */",
                "SELECT 'switchyard_outbox', 'rollback'",
            ] {
                assert!(check(sql, MAX, backend).is_ok(), "{sql} on {backend:?}");
            }
        }
    }

    #[test]
    fn column_named_like_a_function_is_fine_without_a_call() {
        assert!(check("SELECT edit FROM docs", MAX, Backend::Sqlite).is_ok());
        assert_eq!(
            check("SELECT edit (x) FROM docs", MAX, Backend::Sqlite),
            Err(GateError::ForbiddenFunction("edit".into()))
        );
    }

    #[test]
    fn enforces_the_size_cap_before_lexing() {
        let sql = format!("SELECT '{}'", "x".repeat(100));
        assert_eq!(
            check(&sql, 50, Backend::Sqlite),
            Err(GateError::TooLong {
                len: sql.len(),
                max: 50
            })
        );
    }

    /// Statements a plugin must never get through on PostgreSQL: every
    /// spelling of issue 12 and more. Each must be refused, and the error
    /// must name what was refused (the second column).
    const HOSTILE: &[(&str, &str)] = &[
        ("SELECT set_config('role', 'none', true)", "set_config"),
        ("SELECT set_config/**/('role', 'none', true)", "set_config"),
        (
            "SELECT set_config -- c\n ('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT set_config/* /* nested */ */('role', 'none', true)",
            "nested block comments",
        ),
        (
            "SELECT U&\"set\\005fconfig\"('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT U&\"set!005fconfig\" UESCAPE '!'('role', 'none', true)",
            "set_config",
        ),
        ("SELECT \"set_config\"('role', 'none', true)", "set_config"),
        (
            "SELECT pg_catalog.set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT pg_catalog/**/./**/set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT \"pg_catalog\".\"set_config\"('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT public.set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT (SELECT set_config('role', 'none', true))",
            "set_config",
        ),
        (
            "SELECT x FROM t WHERE y = any(array(select set_config('role', 'none', true)))",
            "set_config",
        ),
        (
            "SELECT a[set_config('role', 'none', true)] FROM t",
            "set_config",
        ),
        (
            "SELECT (array[1])[1:set_config('role','none',true)::int]",
            "set_config",
        ),
        (
            "SELECT ARRAY[set_config('role', 'none', true)]",
            "set_config",
        ),
        (
            "INSERT INTO t (a) VALUES (1) RETURNING set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 1 WHERE set_config('role', 'none', true) = ''",
            "set_config",
        ),
        (
            "INSERT INTO t (a) SELECT set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "UPDATE t SET a = 1 FROM (SELECT set_config('role', 'none', true)) s",
            "set_config",
        ),
        (
            "DELETE FROM t USING t2 WHERE t2.a = set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "WITH c AS (SELECT set_config('role', 'none', true)) SELECT * FROM c",
            "set_config",
        ),
        (
            "SELECT * FROM t, LATERAL (SELECT set_config('role', 'none', true)) x",
            "set_config",
        ),
        (
            "SELECT * FROM set_config('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT * FROM ROWS FROM (set_config('role', 'none', true))",
            "set_config",
        ),
        ("VALUES (set_config('role', 'none', true))", "set_config"),
        (
            "SELECT CASE WHEN true THEN set_config('role', 'none', true) END",
            "set_config",
        ),
        (
            "SELECT coalesce(null, set_config('role', 'none', true))",
            "set_config",
        ),
        (
            "SELECT set_config('role', 'none', true)::text",
            "set_config",
        ),
        (
            "SELECT CAST(set_config('role', 'none', true) AS text)",
            "set_config",
        ),
        (
            "SELECT count(*) FILTER (WHERE set_config('role','none',true) = '') FROM t",
            "set_config",
        ),
        (
            "SELECT row_number() OVER (ORDER BY set_config('role','none',true)) FROM t",
            "set_config",
        ),
        (
            "SELECT 1 FROM t GROUP BY set_config('role','none',true)",
            "set_config",
        ),
        (
            "SELECT string_agg(a, ',' ORDER BY set_config('role','none',true)) FROM t",
            "set_config",
        ),
        (
            "SELECT 1 WHERE EXISTS (SELECT 1 WHERE set_config('role','none',true) = '')",
            "set_config",
        ),
        (
            "SELECT jsonb_build_object('a', set_config('role','none',true))",
            "set_config",
        ),
        (
            "SELECT JSON_OBJECT('a' VALUE set_config('role','none',true))",
            "set_config",
        ),
        (
            "SELECT * FROM query_to_xml('select 1', true, true, '')",
            "query_to_xml",
        ),
        (
            "SELECT query_to_xml_and_xmlschema('select 1', true, true, '')",
            "query_to_xml_and_xmlschema",
        ),
        (
            "SELECT cursor_to_xml('c', 1, true, true, '')",
            "cursor_to_xml",
        ),
        ("SELECT table_to_xml('t', true, true, '')", "table_to_xml"),
        ("SELECT database_to_xml(true, true, '')", "database_to_xml"),
        (
            "SELECT ts_stat('select set_config(''role'',''none'',true)::tsvector')",
            "ts_stat",
        ),
        ("SELECT ts_rewrite('a'::tsquery, 'select 1')", "ts_rewrite"),
        (
            "SELECT xpath('/', query_to_xml('select 1', true, true, ''))",
            "xpath",
        ),
        ("SELECT xmlelement(name a, 'x')", "XML"),
        ("SELECT XMLPARSE(DOCUMENT '<a/>')", "XML"),
        (
            "SELECT * FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x text)",
            "XMLTABLE",
        ),
        ("SELECT lo_import('/etc/passwd')", "lo_import"),
        ("SELECT lo_export(1, '/tmp/x')", "lo_export"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        ("SELECT pg_advisory_xact_lock(1)", "pg_advisory_xact_lock"),
        ("SELECT pg_sleep(90)", "pg_sleep"),
        ("SELECT pg_sleep_for('90 seconds')", "pg_sleep_for"),
        ("SELECT pg_notify('c', 'x')", "pg_notify"),
        ("SELECT current_setting('role')", "current_setting"),
        (
            "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
            "dblink",
        ),
        ("SELECT pg_terminate_backend(1)", "pg_terminate_backend"),
        ("SELECT setseed(0.5)", "setseed"),
        ("SELECT nextval('switchyard_seq')", "switchyard_seq"),
        ("SELECT nextval($1)", "nextval"),
        ("SELECT 'pg_catalog.pg_authid'::regclass", "regclass"),
        ("SELECT 'set_config'::regproc", "regproc"),
        (
            "SELECT 'set_config(text,text,boolean)'::regprocedure",
            "regprocedure",
        ),
        ("SELECT 'postgres'::regrole", "regrole"),
        ("SELECT 'public'::regnamespace", "regnamespace"),
        ("SELECT CAST('t' AS pg_catalog.regclass)", "regclass"),
        ("SELECT regclass 't'", "regclass"),
        ("SELECT regclass('t')", "regclass"),
        ("SELECT 1::oid", "oid"),
        ("SELECT '<a/>'::xml", "xml"),
        ("SELECT * FROM pg_catalog.pg_authid", "pg_catalog.pg_authid"),
        ("SELECT * FROM pg_authid", "pg_authid"),
        ("SELECT * FROM pg_stat_activity", "pg_stat_activity"),
        (
            "SELECT * FROM information_schema.tables",
            "information_schema.tables",
        ),
        ("SELECT * FROM public.t", "public.t"),
        ("SELECT * FROM otherdb.public.t", "otherdb.public.t"),
        ("SELECT * FROM switchyard_outbox", "switchyard_outbox"),
        ("SELECT * FROM \"switchyard_outbox\"", "switchyard_outbox"),
        (
            "SELECT * FROM U&\"switchyard\\005foutbox\"",
            "switchyard_outbox",
        ),
        (
            "WITH x AS (DELETE FROM switchyard_processed RETURNING 1) SELECT 1",
            "switchyard_processed",
        ),
        (
            "INSERT INTO switchyard_outbox (topic) VALUES ($1)",
            "switchyard_outbox",
        ),
        (
            "UPDATE switchyard_outbox SET topic = 'x'",
            "switchyard_outbox",
        ),
        (
            "SELECT * FROM t JOIN switchyard_processed p ON true",
            "switchyard_processed",
        ),
        (
            "SELECT * FROM t FOR UPDATE OF switchyard_outbox",
            "switchyard_outbox",
        ),
        ("SELECT * INTO TEMP t2 FROM t", "INTO"),
        ("SELECT * INTO t2 FROM t", "INTO"),
        ("CREATE TABLE t2 AS SELECT 1", "CREATE TABLE AS"),
        ("LOCK t", "LOCK"),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("EXECUTE p", "EXECUTE"),
        ("DECLARE c CURSOR FOR SELECT 1", "DECLARE CURSOR"),
        ("FETCH 1 FROM c", "FETCH"),
        ("LISTEN c", "LISTEN"),
        ("NOTIFY c, 'x'", "NOTIFY"),
        ("DISCARD ALL", "DISCARD"),
        ("SET role none", "SET statements are not allowed"),
        ("SET LOCAL ROLE postgres", "SET"),
        ("RESET ROLE", "RESET statements are not allowed"),
        ("SET SESSION AUTHORIZATION DEFAULT", "SET"),
        ("SHOW ALL", "SHOW"),
        ("BEGIN", "BEGIN statements are not allowed"),
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT s", "SAVEPOINT"),
        ("COPY t FROM PROGRAM 'id'", "COPY"),
        ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
        ("CALL p()", "CALL"),
        ("EXPLAIN ANALYZE SELECT 1", "EXPLAIN"),
        ("TRUNCATE t", "TRUNCATE"),
        (
            "MERGE INTO t USING t2 ON true WHEN MATCHED THEN DELETE",
            "MERGE",
        ),
        ("CREATE TABLE t (a int)", "CREATE TABLE"),
        ("DROP TABLE t", "DROP"),
        ("GRANT ALL ON t TO public", "GRANT"),
        ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", "TABLESAMPLE"),
        ("SELECT * FROM t TABLESAMPLE bernoulli (10)", "TABLESAMPLE"),
        ("SELECT current_user", "CURRENT_USER"),
        ("SELECT session_user", "SESSION_USER"),
        ("SELECT 1 OPERATOR(public.+) 1", "OPERATOR(public.+)"),
        ("SELECT $0", "$0"),
        ("SELECT $70000", "$70000"),
        (
            "SELECT 1; SELECT set_config('role', 'none', true)",
            "several statements",
        ),
        ("SELECT 1; -- x\n SELECT 2", "several statements"),
        ("SELECT set_config('role', 'none', true", "parse"),
        ("SELECT 'a\0b'", "parse"),
        ("-- only a comment", "empty"),
        // The spellings tests/runtime.rs sends on both engines.
        (
            "SELECT 1 /* /* */ ; DELETE FROM t; -- */",
            "nested block comments",
        ),
        (
            "INSERT OR ROLLBACK INTO t (id) VALUES ('r')",
            "ROLLBACK is not allowed",
        ),
        (
            "SET statement_timeout = 0",
            "SET statements are not allowed",
        ),
    ];

    #[test]
    fn postgres_refuses_the_hostile_table() {
        for (sql, named) in HOSTILE {
            match check(sql, MAX, Backend::Postgres) {
                Ok(kind) => panic!("accepted ({kind:?}): {sql}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.to_lowercase().contains(&named.to_lowercase()),
                        "{sql}: error {msg:?} does not name {named:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn postgres_errors_say_what_was_refused() {
        let e = check(
            "SELECT set_config/**/('role','none',true)",
            MAX,
            Backend::Postgres,
        );
        assert_eq!(e, Err(GateError::ForbiddenFunction("set_config".into())));
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("function set_config is not allowed in plugin SQL"));
        assert_eq!(
            check("SELECT 'x'::regclass", MAX, Backend::Postgres),
            Err(GateError::ForbiddenType("regclass".into()))
        );
        assert_eq!(
            check("SELECT * INTO TEMP t FROM x", MAX, Backend::Postgres),
            Err(GateError::SelectInto)
        );
        assert_eq!(
            check("LOCK t", MAX, Backend::Postgres),
            Err(GateError::NotDml("LOCK".into()))
        );
    }

    /// Deep nesting never crashes the gate: parentheses alone add no
    /// nodes; calls nested deeper than the parse tree's depth limit are
    /// refused; a forbidden call deep inside is found.
    #[test]
    fn postgres_survives_deep_nesting() {
        let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(
            check(&parens, MAX, Backend::Postgres),
            Ok(StatementKind::Select)
        );
        let calls = format!("SELECT {}1{}", "abs(".repeat(500), ")".repeat(500));
        assert!(matches!(
            check(&calls, MAX, Backend::Postgres),
            Err(GateError::Syntax(_))
        ));
        let shallow = format!("SELECT {}1{}", "abs(".repeat(20), ")".repeat(20));
        assert_eq!(
            check(&shallow, MAX, Backend::Postgres),
            Ok(StatementKind::Select)
        );
        let hidden = format!(
            "SELECT {}set_config('role', 'none', true){}",
            "abs(".repeat(20),
            ")".repeat(20)
        );
        assert_eq!(
            check(&hidden, MAX, Backend::Postgres),
            Err(GateError::ForbiddenFunction("set_config".into()))
        );
    }

    /// The statements the shipped plugins send (`plugins/*/src/lib.rs`),
    /// and other ordinary plugin SQL: all must pass on PostgreSQL.
    const ORDINARY: &[(&str, StatementKind)] = &[
        // role-mapping
        (
            "SELECT user_id FROM customer_users WHERE user_id = $1",
            StatementKind::Select,
        ),
        (
            "SELECT id FROM customers WHERE id = $1",
            StatementKind::Select,
        ),
        (
            "INSERT INTO customer_users (user_id, email, name, role, user_type, is_company_owner, \
          customer_account_id, status, created_at, updated_at) \
          VALUES ($1, $2, $3, $4, $5, $6, $7, 'ACTIVE', $8, $9) \
          ON CONFLICT (user_id) DO NOTHING",
            StatementKind::Insert,
        ),
        (
            "UPDATE customer_users SET status = $1, updated_at = $2 WHERE user_id = $3",
            StatementKind::Update,
        ),
        (
            "UPDATE customer_users SET role = $1, user_type = $2, is_company_owner = $3, \
          updated_at = $4 WHERE user_id = $5",
            StatementKind::Update,
        ),
        // profile-creation
        (
            "SELECT id, first_name, last_name, email, national_code, birth_date \
          FROM profiles WHERE request_id = $1",
            StatementKind::Select,
        ),
        (
            "SELECT email, national_code FROM profiles WHERE email = $1 OR national_code = $2",
            StatementKind::Select,
        ),
        (
            "INSERT INTO profiles (id, request_id, first_name, last_name, email, national_code, \
          birth_date, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            StatementKind::Insert,
        ),
        // stats-increment (both counters)
        (
            "UPDATE user_stats SET interviews_created = interviews_created + $1, updated_at = $2 \
          WHERE user_id = $3 RETURNING interviews_created, max_interviews",
            StatementKind::Update,
        ),
        (
            "UPDATE user_stats SET storage_used = storage_used + $1, updated_at = $2 \
          WHERE user_id = $3 RETURNING storage_used, max_storage",
            StatementKind::Update,
        ),
        (
            "INSERT INTO stats_processed_events (event_id, topic, processed_at) \
          VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
            StatementKind::Insert,
        ),
        (
            "INSERT INTO user_stats (user_id, updated_at) VALUES ($1, $2) \
          ON CONFLICT (user_id) DO NOTHING",
            StatementKind::Insert,
        ),
        // welcome-notification
        (
            "INSERT INTO welcome_notifications (user_id, email, sent_at, source_event_id) \
          VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING",
            StatementKind::Insert,
        ),
        // test plugins (chaos, marker, bench-sink)
        (
            "INSERT INTO chaos_effects (event_id) VALUES ($1)",
            StatementKind::Insert,
        ),
        (
            "INSERT INTO chaos_counter (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = chaos_counter.n + 1",
            StatementKind::Insert,
        ),
        (
            "INSERT INTO marker_events (topic, kafka_partition, kafka_offset, marker) VALUES ($1, $2, $3, $4)",
            StatementKind::Insert,
        ),
        (
            "INSERT INTO bench_counters (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1",
            StatementKind::Insert,
        ),
        // the SDK's example
        (
            "INSERT INTO hits (page, n) VALUES ($1, 1) ON CONFLICT (page) DO UPDATE SET n = hits.n + 1",
            StatementKind::Insert,
        ),
        // other ordinary SQL
        ("select 1", StatementKind::Select),
        ("SELECT 1; -- done", StatementKind::Select),
        (
            "SELECT now(), clock_timestamp(), gen_random_uuid(), current_timestamp, CURRENT_DATE, localtimestamp(3)",
            StatementKind::Select,
        ),
        (
            "SELECT coalesce(a, 0), nullif(b, ''), greatest(1, 2), least(1, 2) FROM t",
            StatementKind::Select,
        ),
        (
            "SELECT extract(epoch FROM now()), now() AT TIME ZONE 'UTC', date_trunc('day', now())",
            StatementKind::Select,
        ),
        (
            "SELECT substring('abc' FROM 2), trim(both ' ' FROM ' x '), position('b' IN 'abc'), 'a' SIMILAR TO 'b'",
            StatementKind::Select,
        ),
        (
            "SELECT $1::uuid, $2::jsonb, $3::int, $4::text, $5::timestamptz, $6::bigint[], CAST($7 AS numeric(10, 2))",
            StatementKind::Select,
        ),
        (
            "SELECT a->>'x', b #> '{a,b}', c @> '{\"a\":1}'::jsonb FROM t WHERE d ? 'k'",
            StatementKind::Select,
        ),
        (
            "SELECT k, count(*), sum(n), jsonb_agg(x ORDER BY y) FILTER (WHERE z) FROM t GROUP BY k HAVING count(*) > 1",
            StatementKind::Select,
        ),
        (
            "SELECT row_number() OVER w, lag(a) OVER (PARTITION BY b ORDER BY c) FROM t WINDOW w AS (ORDER BY a)",
            StatementKind::Select,
        ),
        (
            "SELECT * FROM t WHERE a = ANY($1) AND b IN (SELECT b FROM u) AND c BETWEEN 1 AND 2 AND d IS NOT NULL",
            StatementKind::Select,
        ),
        (
            "SELECT a[1], (b).f, t.xmin, t.ctid FROM t",
            StatementKind::Select,
        ),
        (
            "SELECT * FROM t CROSS JOIN LATERAL jsonb_array_elements(t.doc) AS e(v)",
            StatementKind::Select,
        ),
        (
            "SELECT * FROM generate_series(1, 3) g, unnest($1::text[]) WITH ORDINALITY AS u(x, n)",
            StatementKind::Select,
        ),
        (
            "SELECT * FROM jsonb_to_recordset($1) AS r(a int, b text)",
            StatementKind::Select,
        ),
        (
            "SELECT CASE WHEN a > 0 THEN 'p' ELSE 'n' END FROM t ORDER BY 1 LIMIT 10 OFFSET $1",
            StatementKind::Select,
        ),
        (
            "SELECT id FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            StatementKind::Select,
        ),
        ("SELECT * FROM t FOR SHARE", StatementKind::Select),
        (
            "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3",
            StatementKind::Select,
        ),
        ("VALUES (1, 'a'), (2, 'b')", StatementKind::Select),
        ("SELECT nextval('order_numbers')", StatementKind::Select),
        ("SELECT $1::mood, 'happy'::mood", StatementKind::Select),
        (
            "SELECT JSON_OBJECT('a' VALUE 1), JSON_ARRAY(1, 2), '{}' IS JSON",
            StatementKind::Select,
        ),
        (
            "SELECT pg_catalog.lower('A'), pg_catalog.now()",
            StatementKind::Select,
        ),
        (
            "INSERT INTO t (a, b) VALUES ($1, DEFAULT) RETURNING *",
            StatementKind::Insert,
        ),
        (
            "INSERT INTO t AS x (a) VALUES ($1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET a = EXCLUDED.a WHERE x.a <> EXCLUDED.a",
            StatementKind::Insert,
        ),
        (
            "UPDATE t SET (a, b) = (SELECT 1, 2) WHERE id = $1",
            StatementKind::Update,
        ),
        (
            "UPDATE t SET a = u.a FROM u WHERE t.id = u.id RETURNING t.*",
            StatementKind::Update,
        ),
        (
            "DELETE FROM t WHERE id = $1 RETURNING id",
            StatementKind::Delete,
        ),
        (
            "WITH moved AS (DELETE FROM queue WHERE id = $1 RETURNING *) INSERT INTO done SELECT * FROM moved",
            StatementKind::With,
        ),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
            StatementKind::With,
        ),
        (
            "SELECT 'set_config(''role'', ''none'', true)', 'switchyard_outbox'",
            StatementKind::Select,
        ),
        (
            "SELECT \"select\" FROM \"Mixed Case\" /* set_config('role','none',true) */",
            StatementKind::Select,
        ),
    ];

    #[test]
    fn postgres_accepts_ordinary_plugin_sql() {
        for (sql, kind) in ORDINARY {
            assert_eq!(check(sql, MAX, Backend::Postgres), Ok(*kind), "{sql}");
        }
    }

    #[test]
    fn postgres_migrations_allow_the_listed_ddl() {
        let script = r#"
-- CREATE TABLE in_a_comment (x int);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE SEQUENCE order_numbers START 1000 INCREMENT 1;
CREATE TABLE "Orders" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number bigint NOT NULL DEFAULT nextval('order_numbers'),
    feeling mood NOT NULL DEFAULT 'happy',
    doc jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(doc) = 'object'),
    total numeric(12, 2) CHECK (total >= 0),
    made_at timestamptz NOT NULL DEFAULT now(),
    ref uuid DEFAULT gen_random_uuid(),
    CONSTRAINT orders_number UNIQUE (number)
);
CREATE TABLE IF NOT EXISTS lines (id serial PRIMARY KEY, order_id bigint REFERENCES "Orders" (id) ON DELETE CASCADE, note text);
CREATE UNIQUE INDEX IF NOT EXISTS lines_note ON lines (lower(note)) WHERE note IS NOT NULL;
CREATE INDEX orders_doc ON "Orders" USING gin (doc);
ALTER TABLE lines ADD COLUMN qty integer NOT NULL DEFAULT 1;
ALTER TABLE lines ALTER COLUMN note SET DEFAULT 'none', ALTER COLUMN qty DROP NOT NULL;
ALTER TABLE lines ALTER COLUMN qty TYPE bigint USING qty::bigint;
ALTER TABLE lines ADD CONSTRAINT qty_positive CHECK (qty > 0);
ALTER TABLE lines DROP CONSTRAINT qty_positive;
ALTER TABLE lines RENAME COLUMN note TO remark;
ALTER TABLE lines DROP COLUMN IF EXISTS remark;
ALTER SEQUENCE order_numbers RESTART WITH 5000;
ALTER SEQUENCE order_numbers OWNED BY "Orders".number;
ALTER TYPE mood ADD VALUE 'calm';
COMMENT ON TABLE lines IS 'CREATE TABLE in_a_string (x int)';
COMMENT ON COLUMN lines.qty IS 'how many';
INSERT INTO lines (note) VALUES ('seed') ON CONFLICT DO NOTHING;
UPDATE lines SET qty = 2 WHERE note = 'seed';
DELETE FROM lines WHERE qty > 100;
DROP INDEX IF EXISTS lines_note;
CREATE TABLE scratch (x int);
ALTER TABLE scratch RENAME TO scratch_old;
DROP TABLE scratch_old;
DROP SEQUENCE IF EXISTS unused_seq;
"#;
        let summary = check_migration(script, Backend::Postgres).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.tables_created, ["Orders", "lines", "scratch"]);
    }

    #[test]
    fn postgres_migrations_refuse_the_rest() {
        let cases: &[(&str, &str)] = &[
            (
                "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
                "CREATE FUNCTION",
            ),
            (
                "CREATE PROCEDURE p() AS 'select 1' LANGUAGE sql",
                "CREATE PROCEDURE",
            ),
            (
                "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
                "CREATE TRIGGER",
            ),
            (
                "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
                "CREATE RULE",
            ),
            ("CREATE POLICY p ON t USING (true)", "CREATE POLICY"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE SCHEMA s", "CREATE SCHEMA"),
            ("CREATE EXTENSION dblink", "CREATE EXTENSION"),
            ("CREATE ROLE r", "CREATE ROLE"),
            ("GRANT SELECT ON t TO public", "GRANT"),
            ("REVOKE SELECT ON t FROM public", "REVOKE"),
            ("ALTER TABLE t OWNER TO postgres", "OWNER"),
            ("ALTER SEQUENCE s OWNER TO postgres", "ALTER"),
            ("ALTER TYPE mood OWNER TO postgres", "OWNER"),
            (
                "ALTER TABLE t ENABLE ROW LEVEL SECURITY",
                "EnableRowSecurity",
            ),
            ("ALTER TABLE t SET SCHEMA other", "SET SCHEMA"),
            ("SET role none", "SET"),
            ("RESET ALL", "RESET"),
            ("DO $$ BEGIN END $$", "DO"),
            ("COPY t FROM '/etc/passwd'", "COPY"),
            ("BEGIN", "BEGIN"),
            ("COMMIT", "COMMIT"),
            ("CALL p()", "CALL"),
            ("LOCK t", "LOCK"),
            ("SELECT 1", "SELECT"),
            ("CREATE TABLE s.t (a int)", "s.t"),
            ("CREATE TABLE public.t (a int)", "public.t"),
            ("CREATE TEMP TABLE t (a int)", "temporary"),
            (
                "CREATE TABLE switchyard_outbox (a int)",
                "switchyard_outbox",
            ),
            ("CREATE TABLE pg_x (a int)", "pg_x"),
            (
                "CREATE TABLE t (a int DEFAULT set_config('role', 'none', true))",
                "set_config",
            ),
            (
                "CREATE TABLE t (a text CHECK (a <> pg_sleep(1)::text))",
                "pg_sleep",
            ),
            ("CREATE TABLE t (a regclass)", "regclass"),
            ("CREATE TABLE t (a int) INHERITS (u)", "INHERITS"),
            ("CREATE TABLE t (LIKE switchyard_outbox)", "LIKE"),
            (
                "CREATE TABLE t (a int) WITH (autovacuum_enabled = false)",
                "autovacuum_enabled",
            ),
            ("CREATE TABLE t (a int) TABLESPACE pg_default", "TABLESPACE"),
            (
                "CREATE TABLE t (a int REFERENCES switchyard_processed (id))",
                "switchyard_processed",
            ),
            (
                "CREATE TABLE t (a int, EXCLUDE USING gist (a WITH =))",
                "EXCLUDE",
            ),
            (
                "CREATE INDEX i ON t ((set_config('role', 'none', true)))",
                "set_config",
            ),
            (
                "CREATE INDEX i ON switchyard_outbox (topic)",
                "switchyard_outbox",
            ),
            ("CREATE INDEX switchyard_i ON t (a)", "switchyard_i"),
            (
                "ALTER TABLE switchyard_outbox ADD COLUMN x int",
                "switchyard_outbox",
            ),
            (
                "ALTER TABLE t RENAME TO switchyard_outbox",
                "switchyard_outbox",
            ),
            (
                "ALTER TABLE t ADD COLUMN b int DEFAULT pg_advisory_lock(1)",
                "pg_advisory_lock",
            ),
            ("ALTER TABLE t DROP COLUMN a CASCADE", "CASCADE"),
            ("DROP TABLE t CASCADE", "CASCADE"),
            ("DROP TABLE switchyard_processed", "switchyard_processed"),
            ("DROP TABLE public.t", "public.t"),
            ("DROP SCHEMA public", "DROP SCHEMA"),
            ("DROP FUNCTION f()", "DROP FUNCTION"),
            (
                "COMMENT ON TABLE switchyard_outbox IS 'x'",
                "switchyard_outbox",
            ),
            ("COMMENT ON FUNCTION f() IS 'x'", "COMMENT ON"),
            (
                "INSERT INTO switchyard_outbox (topic) VALUES ('x')",
                "switchyard_outbox",
            ),
            (
                "INSERT INTO t SELECT set_config('role', 'none', true)",
                "set_config",
            ),
            (
                "CREATE TABLE ok (a int); CREATE TABLE switchyard_x (a int)",
                "switchyard_x",
            ),
            ("CREATE SEQUENCE s OWNED BY public.t.a", "public.t.a"),
            ("CREATE TYPE public.mood AS ENUM ('a')", "public.mood"),
            ("CREATE TYPE pair AS (a int, b int)", "CREATE TYPE"),
            ("CREATE TABLE t2 AS SELECT * FROM t", "CREATE TABLE AS"),
            ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER SYSTEM"),
        ];
        for (script, named) in cases {
            match check_migration(script, Backend::Postgres) {
                Ok(s) => panic!("accepted ({s:?}): {script}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.to_lowercase().contains(&named.to_lowercase()),
                        "{script}: error {msg:?} does not name {named:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn sqlite_migrations_read_tokens_not_text() {
        let script = "-- CREATE TABLE in_a_comment (x)\n\
            CREATE TABLE IF NOT EXISTS \"Ones\" (x TEXT DEFAULT 'CREATE TABLE in_a_string (y)');\n\
            CREATE UNIQUE INDEX ones_x ON ones (x);\n\
            INSERT INTO ones (x) VALUES ('seed');\n\
            ALTER TABLE ones ADD COLUMN y INTEGER;\n\
            CREATE TABLE twos (x INTEGER PRIMARY KEY AUTOINCREMENT)";
        let summary = check_migration(script, Backend::Sqlite).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.tables_created, ["ones", "twos"]);
        for (script, named) in [
            ("ATTACH 'x.db' AS x", "ATTACH"),
            ("PRAGMA writable_schema = 1", "PRAGMA"),
            ("BEGIN; CREATE TABLE t (x)", "BEGIN"),
            ("CREATE TABLE t (x); COMMIT", "COMMIT"),
            (
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
                "CREATE TRIGGER",
            ),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE TEMP TABLE t (x)", "CREATE TEMP"),
            ("CREATE VIRTUAL TABLE t USING fts5(x)", "CREATE VIRTUAL"),
            ("CREATE TABLE main.t (x)", "main"),
            ("CREATE TABLE switchyard_outbox (x)", "switchyard_outbox"),
            ("DROP TABLE switchyard_processed", "switchyard_processed"),
            ("SELECT load_extension('x')", "load_extension"),
        ] {
            match check_migration(script, Backend::Sqlite) {
                Ok(s) => panic!("accepted ({s:?}): {script}"),
                Err(e) => assert!(
                    e.to_string().to_lowercase().contains(&named.to_lowercase()),
                    "{script}: {e}"
                ),
            }
        }
    }
}

#[cfg(test)]
mod more_spellings {
    use super::*;

    /// Spellings tried on the finished gate by a hostile team, beyond the
    /// table above: each is refused.
    #[test]
    fn refused() {
        for sql in [
            r#"SELECT "pg_catalog"."set_config"('role', 'none', true)"#,
            "SELECT * FROM ROWS FROM (set_config('role', 'none', true))",
            "SELECT * FROM set_config('role', 'none', true)",
            "VALUES (set_config('role', 'none', true))",
            "SELECT 1 FROM (VALUES (1)) v(x) WHERE set_config('role', 'none', true) IS NOT NULL",
            "SELECT CAST('pg_authid' AS pg_catalog.regclass)",
            r#"SELECT 'pg_authid'::"regclass""#,
            "SELECT $1::regproc",
            "SELECT current_setting('is_superuser')",
            "SELECT pg_backend_pid()",
            "SELECT pg_terminate_backend(1)",
            "SELECT pg_cancel_backend(1)",
            "SELECT txid_current()",
            "SELECT dblink_exec('dbname=x', 'select 1')",
            "SELECT pg_catalog.pg_ls_dir('.')",
            "SELECT lo_from_bytea(0, '\\x00')",
            "SELECT pg_notify('c', 'x')",
            "SELECT xmlelement(name x)",
            "SELECT * FROM pg_stat_activity",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM public.switchyard_outbox",
            r#"SELECT * FROM "switchyard_outbox""#,
            r#"SELECT * FROM U&"switchyard\005Foutbox""#,
            "SELECT * FROM SWITCHYARD_PROCESSED",
            "TABLE switchyard_processed",
            "SELECT set_config(VARIADIC ARRAY['role', 'none', 'true'])",
            "SELECT 1; SELECT set_config('role', 'none', true)",
            "SELECT 1 /* ; */ ; SELECT 2",
            "CALL p()",
            "DO $$ BEGIN PERFORM set_config('role', 'none', true); END $$",
            "EXPLAIN ANALYZE SELECT set_config('role', 'none', true)",
            "COPY (SELECT 1) TO STDOUT",
            "SELECT * FROM unnest(ARRAY[1]) WITH ORDINALITY, LATERAL (SELECT set_config('role', 'none', true)) s",
        ] {
            assert!(
                check(sql, 1 << 16, Backend::Postgres).is_err(),
                "accepted: {sql}"
            );
        }
    }
}
