//! The plugin sandbox on SQLite, which has no roles: the host enforces each
//! plugin's table list with SQLite's authorizer and its statement timeout
//! with the progress handler.
//!
//! Both hooks are installed once per connection, when the pool opens it
//! ([`install`]). They consult the connection's current [`Scope`]: while a
//! plugin's call is in progress the scope names its tables and deadline;
//! otherwise there is none and the host's own statements (markers, outbox,
//! migrations) run unrestricted. The authorizer runs when SQLite compiles
//! a statement, so the host compiles every plugin statement afresh
//! (`persistent(false)`) instead of reusing one compiled outside the scope.
//!
//! This is the only module with `unsafe`: sqlx offers no authorizer, so it
//! is registered through `libsqlite3-sys`, the same build of SQLite that
//! sqlx links.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The longest string, blob or row SQLite will make on a switchyard
/// connection (`SQLITE_LIMIT_LENGTH`; SQLite's own default is 1 GB): a
/// plugin cannot have it build a gigabyte value in the host's memory
/// before the result caps see it. Larger values fail with a `limit` error.
pub const MAX_VALUE_BYTES: i32 = 16 << 20;

/// SQLite runs the progress handler every this many virtual-machine
/// instructions: often enough to stop a runaway statement within a
/// millisecond or so, rare enough to cost nothing measurable.
const PROGRESS_OPS: i32 = 1000;

/// What a plugin may use, as [`Scope::enter`] applies it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The plugin's name (for errors).
    pub plugin: Arc<str>,
    /// Its tables, lowercased.
    pub tables: Arc<[String]>,
    /// Every table and view of the schema, lowercased: a name SQLite
    /// reports without a database is a table if it is here, else a common
    /// table expression.
    pub schema_tables: Arc<[String]>,
    /// Statement timeout in milliseconds.
    pub timeout_ms: u64,
}

/// What a plugin's statements may do on one connection, for one call.
#[derive(Debug)]
struct ScopeState {
    plugin: Arc<str>,
    tables: Arc<[String]>,
    schema_tables: Arc<[String]>,
    timeout_ms: u64,
    /// When the statement in progress must stop.
    deadline: Mutex<Instant>,
    /// Why the authorizer refused the last statement, for the error the
    /// plugin receives (SQLite itself only says "not authorized").
    denial: Mutex<Option<String>>,
}

/// Current scopes by connection (the address of its `sqlite3` handle,
/// used as a key only: never dereferenced here).
static SCOPES: LazyLock<Mutex<HashMap<usize, Arc<ScopeState>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl ScopeState {
    fn deadline(&self) -> Instant {
        *lock(&self.deadline)
    }
}

/// Lock, ignoring poisoning: the data are plain values, valid whatever a
/// panicking holder was doing.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn scope_of(key: usize) -> Option<Arc<ScopeState>> {
    lock(&SCOPES).get(&key).cloned()
}

/// Install the authorizer and the progress handler on a new connection.
pub async fn install(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle();
    let key = raw.as_ptr() as usize;
    // SAFETY: `raw` is the live connection handle, locked for us by
    // `lock_handle`. `authorize` is a plain function that neither touches
    // the connection nor unwinds, and its user-data pointer is the key
    // itself, which it never dereferences, so nothing can dangle.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_set_authorizer(raw.as_ptr(), Some(authorize), key as *mut c_void)
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!(
            "cannot install the SQLite authorizer (code {rc})"
        )));
    }
    // SAFETY: as above, the live and locked handle; sqlite3_limit only
    // sets a number on the connection.
    unsafe {
        libsqlite3_sys::sqlite3_limit(
            raw.as_ptr(),
            libsqlite3_sys::SQLITE_LIMIT_LENGTH,
            MAX_VALUE_BYTES,
        );
    }
    handle.set_progress_handler(PROGRESS_OPS, move || match scope_of(key) {
        Some(scope) => Instant::now() < scope.deadline(),
        None => true,
    });
    Ok(())
}

/// Whether the connection is inside a transaction (SQLite leaves one on
/// its own when an interrupted write rolls it back).
pub async fn in_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the live handle, locked for us; sqlite3_get_autocommit only
    // reads a flag.
    let autocommit =
        unsafe { libsqlite3_sys::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) };
    Ok(autocommit == 0)
}

/// A plugin's call on one connection; ends when dropped.
#[derive(Debug)]
pub struct Scope {
    key: usize,
    state: Arc<ScopeState>,
}

impl Scope {
    /// Restrict `conn` to `tables` and a deadline of `timeout_ms` per
    /// statement for `plugin`'s call.
    pub async fn enter(
        conn: &mut sqlx::SqliteConnection,
        grant: Grant,
    ) -> Result<Self, sqlx::Error> {
        let key = conn.lock_handle().await?.as_raw_handle().as_ptr() as usize;
        let Grant {
            plugin,
            tables,
            schema_tables,
            timeout_ms,
        } = grant;
        let state = Arc::new(ScopeState {
            plugin,
            tables,
            schema_tables,
            timeout_ms,
            deadline: Mutex::new(Instant::now() + Duration::from_millis(timeout_ms)),
            denial: Mutex::new(None),
        });
        lock(&SCOPES).insert(key, state.clone());
        Ok(Self { key, state })
    }

    /// Start one statement: its timeout counts from now.
    pub fn start_statement(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.state.timeout_ms);
        *lock(&self.state.deadline) = deadline;
        *lock(&self.state.denial) = None;
    }

    /// Stop the statement in progress at the next progress callback.
    pub fn cancel(&self) {
        *lock(&self.state.deadline) = Instant::now();
    }

    /// Lift the restrictions for a host statement in the middle of the
    /// call; [`Scope::resume`] puts them back.
    pub fn suspend(&self) {
        let mut scopes = lock(&SCOPES);
        if scopes
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.state))
        {
            scopes.remove(&self.key);
        }
    }

    /// Restrict the connection again after [`Scope::suspend`].
    pub fn resume(&self) {
        lock(&SCOPES).insert(self.key, self.state.clone());
    }

    /// Why the authorizer refused the statement, if it did.
    pub fn denial(&self) -> Option<String> {
        lock(&self.state.denial).clone()
    }

    /// The error for a plugin statement that failed with `e`: the
    /// authorizer's reason for a refusal, the timeout for an interruption.
    pub fn explain(&self, e: sqlx::Error) -> crate::bindings::switchyard::plugin::db::Error {
        use crate::bindings::switchyard::plugin::db::Error as DbError;
        if let Some(why) = self.denial() {
            return DbError::Denied(why);
        }
        let interrupted =
            matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("9"));
        if interrupted && Instant::now() >= self.state.deadline() {
            return DbError::Limit(format!(
                "statement timeout: the statement ran longer than plugin {}'s statement_timeout_ms of {}",
                self.state.plugin, self.state.timeout_ms
            ));
        }
        crate::database::map_error(e)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.suspend();
    }
}

/// What SQLite asks the authorizer about, reduced to what the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action<'a> {
    /// Reading a column, or writing rows, of `table`.
    Table(&'a str),
    /// Naming `table` without reading a column of it (`count(*)`): a
    /// table or a common table expression, SQLite does not say which.
    Bare(&'a str),
    /// Always fine inside one DML statement: SELECT, functions (the SQL
    /// gate deny-lists the dangerous ones), recursive CTEs, reads of a
    /// CTE and of JSON table functions.
    Harmless,
    /// Anything else (DDL, PRAGMA, ATTACH, transactions, savepoints).
    Other(c_int),
}

/// Table-valued functions that only read their arguments.
const PURE_TABLE_FUNCTIONS: [&str; 2] = ["json_each", "json_tree"];

/// `arg1` is the table for reads and writes. A table named without any of
/// its columns read (`SELECT count(*) FROM t`) is reported with an empty
/// column and no database, whether `t` is a table or a common table
/// expression.
fn classify<'a>(
    code: c_int,
    arg1: Option<&'a str>,
    column: Option<&str>,
    database: Option<&str>,
) -> Action<'a> {
    use libsqlite3_sys as s;
    match code {
        s::SQLITE_READ if database.is_none() && column == Some("") => {
            Action::Bare(arg1.unwrap_or(""))
        }
        s::SQLITE_READ
            if arg1.is_some_and(|t| {
                PURE_TABLE_FUNCTIONS
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(t))
            }) =>
        {
            Action::Harmless
        }
        s::SQLITE_READ | s::SQLITE_INSERT | s::SQLITE_UPDATE | s::SQLITE_DELETE => {
            Action::Table(arg1.unwrap_or(""))
        }
        s::SQLITE_SELECT | s::SQLITE_FUNCTION | s::SQLITE_RECURSIVE => Action::Harmless,
        other => Action::Other(other),
    }
}

/// The policy, apart from the FFI: `Err` says why not.
fn decide(scope: &ScopeState, action: Action<'_>) -> Result<(), String> {
    match action {
        Action::Harmless => Ok(()),
        Action::Bare(name)
            if !scope
                .schema_tables
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name)) =>
        {
            Ok(())
        }
        Action::Table(table) | Action::Bare(table) => {
            if scope.tables.iter().any(|t| t.eq_ignore_ascii_case(table)) {
                Ok(())
            } else {
                Err(format!(
                    "table {table} is not one of plugin {}'s tables ({}); a plugin may use only the tables its own migrations create",
                    scope.plugin,
                    if scope.tables.is_empty() {
                        "it has none".to_string()
                    } else {
                        scope.tables.join(", ")
                    }
                ))
            }
        }
        Action::Other(code) => Err(format!(
            "SQLite action {code} (schema change, PRAGMA, ATTACH or transaction control) is not allowed in a plugin statement"
        )),
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string that outlives `'a` (SQLite's
/// arguments to the authorizer live for the callback).
unsafe fn text<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller's contract. A name that is not UTF-8 becomes
        // `?`, which matches no granted table (refused, not allowed).
        Some(unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("?"))
    }
}

unsafe extern "C" fn authorize(
    user: *mut c_void,
    code: c_int,
    arg1: *const c_char,
    arg2: *const c_char,
    database: *const c_char,
    _trigger: *const c_char,
) -> c_int {
    let Some(scope) = scope_of(user as usize) else {
        return libsqlite3_sys::SQLITE_OK;
    };
    // SAFETY: SQLite's callback arguments, valid during the callback.
    let (table, column, db) = unsafe { (text(arg1), text(arg2), text(database)) };
    match decide(&scope, classify(code, table, column, db)) {
        Ok(()) => libsqlite3_sys::SQLITE_OK,
        Err(why) => {
            lock(&scope.denial).get_or_insert(why);
            libsqlite3_sys::SQLITE_DENY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: Option<&str> = Some("main");

    fn scope(tables: &[&str]) -> ScopeState {
        ScopeState {
            plugin: "p".into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            schema_tables: ["t", "user_stats", "profiles", "other"]
                .iter()
                .map(|t| t.to_string())
                .collect(),
            timeout_ms: 1,
            deadline: Mutex::new(Instant::now()),
            denial: Mutex::new(None),
        }
    }

    #[test]
    fn tables_are_matched_without_case() {
        let s = scope(&["user_stats"]);
        assert!(
            decide(
                &s,
                classify(
                    libsqlite3_sys::SQLITE_READ,
                    Some("USER_STATS"),
                    Some("x"),
                    MAIN
                )
            )
            .is_ok()
        );
        let refused = decide(
            &s,
            classify(
                libsqlite3_sys::SQLITE_DELETE,
                Some("profiles"),
                Some("x"),
                MAIN,
            ),
        );
        assert!(refused.is_err_and(|why| why.contains("profiles") && why.contains("user_stats")));
    }

    #[test]
    fn schema_changes_and_pragmas_are_refused() {
        let s = scope(&["t"]);
        for code in [
            libsqlite3_sys::SQLITE_CREATE_TABLE,
            libsqlite3_sys::SQLITE_PRAGMA,
            libsqlite3_sys::SQLITE_ATTACH,
            libsqlite3_sys::SQLITE_TRANSACTION,
            libsqlite3_sys::SQLITE_SAVEPOINT,
            libsqlite3_sys::SQLITE_DROP_TABLE,
        ] {
            assert!(
                decide(&s, classify(code, Some("t"), Some("x"), MAIN)).is_err(),
                "{code}"
            );
        }
        assert!(
            decide(
                &s,
                classify(libsqlite3_sys::SQLITE_FUNCTION, None, Some("x"), MAIN)
            )
            .is_ok()
        );
    }

    #[test]
    fn json_functions_are_readable_and_bare_tables_are_checked() {
        let s = scope(&["t"]);
        let read = libsqlite3_sys::SQLITE_READ;
        assert!(
            decide(&s, classify(read, Some("other"), Some(""), None)).is_err(),
            "count(*) FROM other: no column read, still refused"
        );
        assert!(
            decide(&s, classify(read, Some("c"), Some(""), None)).is_ok(),
            "count(*) FROM c, a common table expression"
        );
        assert!(decide(&s, classify(read, Some("json_each"), Some("x"), MAIN)).is_ok());
        assert!(
            decide(
                &s,
                classify(read, Some("pragma_table_info"), Some("x"), MAIN)
            )
            .is_err()
        );
        assert!(decide(&s, classify(read, Some("sqlite_master"), Some("x"), MAIN)).is_err());
    }
}
