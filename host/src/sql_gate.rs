//! The SQL gate: what a plugin may send to `db`.
//!
//! One statement per call, data manipulation only (`SELECT`, `INSERT`,
//! `UPDATE`, `DELETE`, `WITH`). Transaction control, `SET`/`RESET`, DDL,
//! `COPY`, `PRAGMA`, `ATTACH`, `SELECT ... INTO` and several statements
//! are refused before anything reaches the database. The gate lexes the
//! text (comments, quoted strings and identifiers, PostgreSQL dollar
//! quotes) rather than matching substrings, so a `;` or a keyword inside a
//! string literal is not mistaken for one outside it.
//!
//! This is the first line, not the last: on PostgreSQL the boundary that
//! counts is the database itself — each plugin's SQL runs as its own role
//! with grants on its own tables only (`Database::grant_plugin`); the
//! function deny-list here is defence in depth, not a complete list.

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
    /// A function on the deny list.
    #[error("function {0} is not allowed in plugin SQL")]
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
    #[error("{0} is one of switchyard's own tables, which plugins cannot touch")]
    HostTable(String),
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

/// Functions that reach outside the plugin's data: files, other sessions,
/// server settings. The database role should not allow them either; this
/// also covers SQLite, which has no roles.
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
/// follows it (a function call).
#[derive(Debug)]
struct Word {
    text: String,
    call: bool,
}

/// Check one statement; returns its kind or why it is refused.
///
/// ```
/// use switchyard::sql_gate::{check, GateError, StatementKind};
/// assert_eq!(check("SELECT 1; -- done", 1024), Ok(StatementKind::Select));
/// assert_eq!(check("SELECT 1; DROP TABLE t", 1024), Err(GateError::MultipleStatements));
/// ```
pub fn check(sql: &str, max_bytes: usize) -> Result<StatementKind, GateError> {
    if sql.len() > max_bytes {
        return Err(GateError::TooLong {
            len: sql.len(),
            max: max_bytes,
        });
    }
    let words = lex(sql)?;
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

/// Split into top-level words; fail on a second statement.
fn lex(sql: &str) -> Result<Vec<Word>, GateError> {
    let b = sql.as_bytes();
    let mut words: Vec<Word> = Vec::new();
    let mut i = 0;
    let mut ended = false; // a `;` was seen
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
            _ if ended => return Err(GateError::MultipleStatements),
            b';' => {
                ended = true;
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
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                words.push(Word {
                    text: ident,
                    call: b.get(j) == Some(&b'('),
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
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                words.push(Word {
                    text,
                    call: b.get(j) == Some(&b'('),
                });
            }
            _ => i += 1,
        }
    }
    Ok(words)
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
            assert_eq!(check(sql, MAX), Ok(kind), "{sql}");
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
            assert_eq!(check(sql, MAX), Err(want), "{sql}");
        }
    }

    #[test]
    fn semicolon_inside_quotes_is_not_a_second_statement() {
        assert!(check("SELECT ';DROP TABLE t'", MAX).is_ok());
        assert!(check("SELECT $tag$ ; DROP $tag$", MAX).is_ok());
        assert!(check("SELECT \"a;b\" FROM t", MAX).is_ok());
        assert!(check("SELECT 1 /* ; DROP */", MAX).is_ok());
        assert!(check("SELECT 'switchyard_outbox', 'rollback'", MAX).is_ok());
    }

    #[test]
    fn column_named_like_a_function_is_fine_without_a_call() {
        assert!(check("SELECT edit FROM docs", MAX).is_ok());
        assert_eq!(
            check("SELECT edit (x) FROM docs", MAX),
            Err(GateError::ForbiddenFunction("edit".into()))
        );
    }

    #[test]
    fn enforces_the_size_cap_before_lexing() {
        let sql = format!("SELECT '{}'", "x".repeat(100));
        assert_eq!(
            check(&sql, 50),
            Err(GateError::TooLong {
                len: sql.len(),
                max: 50
            })
        );
    }
}
