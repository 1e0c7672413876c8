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
//! A [`MigrationScope`] does the same for a plugin's migration: DDL on its
//! own tables only (create, index, alter, drop), no triggers, views,
//! temporary objects, ATTACH, PRAGMA or transaction control, and it records
//! the tables the migration creates. In both scopes a function call is
//! allowed only if it is on [`crate::sql_gate::allow_list::SQLITE_FUNCTIONS`].
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
    /// In a migration scope, the tables its `CREATE TABLE` statements
    /// created so far (they count as the plugin's from then on); `None`
    /// for a plugin's call.
    migration: Option<Mutex<Vec<String>>>,
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
        // A migration has no statement timeout of its own.
        Some(scope) => scope.migration.is_some() || Instant::now() < scope.deadline(),
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
            migration: None,
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
    pub fn explain(&self, e: sqlx::Error) -> crate::error::StoreError {
        use crate::error::StoreError as DbError;
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
        crate::error::map_error(e)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.suspend();
    }
}

/// A plugin's migration on one connection; ends when dropped.
///
/// Under it the authorizer allows `CREATE TABLE` (of a name that is new or
/// already the plugin's), `CREATE INDEX`, `ALTER TABLE`, `DROP TABLE` and
/// `DROP INDEX` on the plugin's own tables and the ones the migration
/// creates, reads and writes of those tables (seed rows), and functions on
/// the allow-list; it refuses triggers, views, temporary objects, virtual
/// tables, ATTACH/DETACH, PRAGMA, transaction control and `switchyard_*`
/// names. Run the script with `sqlx::raw_sql` (or unprepared statements):
/// the authorizer runs when SQLite compiles a statement.
#[derive(Debug)]
pub struct MigrationScope {
    key: usize,
    state: Arc<ScopeState>,
}

impl MigrationScope {
    /// Restrict `conn` to `plugin`'s migration: `own_tables` are the
    /// tables it already owns, `all_tables` every table of the schema (a
    /// `CREATE TABLE` of one of those that is not the plugin's is refused).
    /// Names are compared without case.
    pub async fn enter(
        conn: &mut sqlx::SqliteConnection,
        plugin: Arc<str>,
        own_tables: Arc<[String]>,
        all_tables: Arc<[String]>,
    ) -> Result<Self, sqlx::Error> {
        let key = conn.lock_handle().await?.as_raw_handle().as_ptr() as usize;
        let state = Arc::new(ScopeState {
            plugin,
            tables: own_tables,
            schema_tables: all_tables,
            timeout_ms: 0,
            deadline: Mutex::new(Instant::now()),
            denial: Mutex::new(None),
            migration: Some(Mutex::new(Vec::new())),
        });
        lock(&SCOPES).insert(key, state.clone());
        Ok(Self { key, state })
    }

    /// The tables the migration's `CREATE TABLE` statements named, in
    /// order, lowercased (including a `CREATE TABLE IF NOT EXISTS` of a
    /// table the plugin already had; diff `sqlite_schema` for what
    /// actually appeared).
    pub fn created(&self) -> Vec<String> {
        self.state
            .migration
            .as_ref()
            .map(|m| lock(m).clone())
            .unwrap_or_default()
    }

    /// Why the authorizer refused a statement of the migration, if it did
    /// (the first refusal).
    pub fn denial(&self) -> Option<String> {
        lock(&self.state.denial).clone()
    }
}

impl Drop for MigrationScope {
    fn drop(&mut self) {
        let mut scopes = lock(&SCOPES);
        if scopes
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.state))
        {
            scopes.remove(&self.key);
        }
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
    /// A call of the function with this name: allowed only if it is on
    /// the allow-list.
    Function(&'a str),
    /// Always fine inside one DML statement: SELECT, recursive CTEs,
    /// reads of a CTE and of JSON table functions.
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
    column: Option<&'a str>,
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
        // For a function, SQLite passes its name as the second argument.
        s::SQLITE_FUNCTION => Action::Function(column.unwrap_or("")),
        s::SQLITE_SELECT | s::SQLITE_RECURSIVE => Action::Harmless,
        other => Action::Other(other),
    }
}

/// The policy, apart from the FFI: `Err` says why not.
fn decide(scope: &ScopeState, action: Action<'_>) -> Result<(), String> {
    decide_with(scope, &[], action)
}

/// A function call: allowed only if listed.
fn function_allowed(name: &str) -> Result<(), String> {
    if crate::sql_gate::allow_list::sqlite_function(name) {
        Ok(())
    } else {
        Err(format!(
            "function {name} is not allowed in plugin SQL: plugins may call only ordinary, side-effect-free functions (switchyard's sql_gate allow-list); compute the value in the plugin instead"
        ))
    }
}

/// [`decide`], with `extra` tables counted as the plugin's (the ones a
/// migration has created).
fn decide_with(scope: &ScopeState, extra: &[String], action: Action<'_>) -> Result<(), String> {
    match action {
        Action::Harmless => Ok(()),
        Action::Function(name) => function_allowed(name),
        Action::Bare(name)
            if !scope
                .schema_tables
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name)) =>
        {
            Ok(())
        }
        Action::Table(table) | Action::Bare(table) => {
            if scope
                .tables
                .iter()
                .chain(extra)
                .any(|t| t.eq_ignore_ascii_case(table))
            {
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

/// What an authorizer code is, for refusals.
fn action_name(code: c_int) -> String {
    use libsqlite3_sys as s;
    let name = match code {
        s::SQLITE_CREATE_TRIGGER | s::SQLITE_CREATE_TEMP_TRIGGER => "CREATE TRIGGER",
        s::SQLITE_CREATE_VIEW | s::SQLITE_CREATE_TEMP_VIEW => "CREATE VIEW",
        s::SQLITE_CREATE_TEMP_TABLE => "CREATE TEMP TABLE",
        s::SQLITE_CREATE_TEMP_INDEX => "CREATE TEMP INDEX",
        s::SQLITE_CREATE_VTABLE => "CREATE VIRTUAL TABLE",
        s::SQLITE_DROP_TRIGGER | s::SQLITE_DROP_TEMP_TRIGGER => "DROP TRIGGER",
        s::SQLITE_DROP_VIEW | s::SQLITE_DROP_TEMP_VIEW => "DROP VIEW",
        s::SQLITE_DROP_VTABLE => "DROP VIRTUAL TABLE",
        s::SQLITE_ATTACH => "ATTACH",
        s::SQLITE_DETACH => "DETACH",
        s::SQLITE_PRAGMA => "PRAGMA",
        s::SQLITE_TRANSACTION => "transaction control",
        s::SQLITE_SAVEPOINT => "SAVEPOINT",
        s::SQLITE_ANALYZE => "ANALYZE",
        _ => return format!("SQLite action {code}"),
    };
    name.to_string()
}

/// The migration policy: DDL on the plugin's own tables and those it
/// creates, DML on the same, allow-listed functions, nothing else.
fn decide_migration(
    scope: &ScopeState,
    created: &Mutex<Vec<String>>,
    code: c_int,
    arg1: Option<&str>,
    arg2: Option<&str>,
    database: Option<&str>,
) -> Result<(), String> {
    use libsqlite3_sys as s;
    let is = |list: &[String], name: &str| list.iter().any(|t| t.eq_ignore_ascii_case(name));
    let host_name = |name: &str| {
        if name.to_ascii_lowercase().starts_with("switchyard_") {
            Err(format!(
                "{name} is one of switchyard's own names (switchyard_*), which plugin migrations cannot use"
            ))
        } else {
            Ok(())
        }
    };
    let mine = |table: &str| {
        let made = lock(created).clone();
        if is(&scope.tables, table) || is(&made, table) {
            Ok(())
        } else {
            Err(format!(
                "table {table} is not one of plugin {}'s tables: a migration may change only the tables the plugin's migrations create",
                scope.plugin
            ))
        }
    };
    match code {
        s::SQLITE_CREATE_TABLE => {
            let name = arg1.unwrap_or("");
            host_name(name)?;
            if database != Some("main") {
                return Err(format!("CREATE TABLE {name} outside the main database"));
            }
            if is(&scope.schema_tables, name) && !is(&scope.tables, name) {
                return Err(format!(
                    "table {name} already exists and is not plugin {}'s: choose another name",
                    scope.plugin
                ));
            }
            // SQLite's own tables (sqlite_sequence, for AUTOINCREMENT):
            // SQL text cannot create sqlite_* names, only SQLite itself.
            if name.to_ascii_lowercase().starts_with("sqlite_") {
                return Ok(());
            }
            let mut made = lock(created);
            if !is(&made, name) {
                made.push(name.to_ascii_lowercase());
            }
            Ok(())
        }
        s::SQLITE_CREATE_INDEX | s::SQLITE_DROP_INDEX => {
            host_name(arg1.unwrap_or(""))?;
            mine(arg2.unwrap_or(""))
        }
        s::SQLITE_DROP_TABLE => mine(arg1.unwrap_or("")),
        // SQLite asks this of its own ALTER TABLE, which rebuilds the
        // table's indexes; rebuilding an index changes no data.
        s::SQLITE_REINDEX => Ok(()),
        s::SQLITE_FUNCTION
            if arg2.is_some_and(|f| {
                crate::sql_gate::allow_list::SQLITE_ALTER_TABLE_FUNCTIONS
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(f))
            }) =>
        {
            Ok(())
        }
        // arg1 is the database, arg2 the table.
        s::SQLITE_ALTER_TABLE => mine(arg2.unwrap_or("")),
        // SQLite's own bookkeeping of the DDL above, which reads and
        // writes its schema tables through the authorizer (ALTER TABLE
        // rewrites the temporary schema too). SQLite itself refuses direct
        // writes to them (no PRAGMA writable_schema here), creating
        // temporary objects is refused above, and a migration's rows go
        // nowhere a plugin can read them.
        s::SQLITE_READ | s::SQLITE_INSERT | s::SQLITE_UPDATE | s::SQLITE_DELETE
            if arg1.is_some_and(|t| {
                t.eq_ignore_ascii_case("sqlite_master")
                    || t.eq_ignore_ascii_case("sqlite_temp_master")
            }) =>
        {
            Ok(())
        }
        s::SQLITE_READ
        | s::SQLITE_INSERT
        | s::SQLITE_UPDATE
        | s::SQLITE_DELETE
        | s::SQLITE_FUNCTION
        | s::SQLITE_SELECT
        | s::SQLITE_RECURSIVE => {
            let made = lock(created).clone();
            decide_with(scope, &made, classify(code, arg1, arg2, database))
        }
        other => Err(format!(
            "{} is not allowed in a plugin migration: migrations may create, alter and drop their own tables and indexes and seed rows",
            action_name(other)
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
    let verdict = match &scope.migration {
        Some(created) => decide_migration(&scope, created, code, table, column, db),
        None => decide(&scope, classify(code, table, column, db)),
    };
    match verdict {
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
            migration: None,
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
        let function = |name| {
            decide(
                &s,
                classify(libsqlite3_sys::SQLITE_FUNCTION, None, Some(name), None),
            )
        };
        assert!(function("lower").is_ok());
        assert!(function("JSON_EXTRACT").is_ok());
        for refused in ["load_extension", "fts3_tokenizer", "sqlite_offset", "x"] {
            assert!(
                function(refused).is_err_and(|why| why.contains(refused)),
                "{refused}"
            );
        }
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

    /// A fresh in-memory connection with the hooks installed and tables
    /// the host (and another plugin) made outside any scope.
    async fn connection() -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        install(&mut conn).await.expect("install the authorizer");
        sqlx::raw_sql(
            "CREATE TABLE other (x TEXT); CREATE TABLE switchyard_outbox (topic TEXT); CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('A')",
        )
        .execute(&mut conn)
        .await
        .expect("host tables");
        conn
    }

    fn names(list: &[&str]) -> Arc<[String]> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn a_call_may_use_only_listed_functions() {
        let mut conn = connection().await;
        let scope = Scope::enter(
            &mut conn,
            Grant {
                plugin: "p".into(),
                tables: names(&["t"]),
                schema_tables: names(&["other", "switchyard_outbox", "t"]),
                timeout_ms: 5_000,
            },
        )
        .await
        .expect("scope");
        let ok = sqlx::raw_sql(
            "SELECT lower(x), upper('a'), json_extract('{\"a\":1}', '$.a'), '{\"a\":1}' ->> 'a', \
             datetime('now'), CURRENT_TIMESTAMP, coalesce(x, ''), count(*) OVER () FROM t WHERE x LIKE 'A%'",
        )
        .execute(&mut conn)
        .await;
        assert!(ok.is_ok(), "{ok:?} {:?}", scope.denial());
        for (sql, named) in [
            ("SELECT load_extension('x')", "load_extension"),
            ("SELECT sqlite_version()", "sqlite_version"),
            ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
        ] {
            let mut scope = scope_again(&scope);
            scope.start_statement();
            let r = sqlx::raw_sql(sql).execute(&mut conn).await;
            assert!(r.is_err(), "{sql} ran");
            assert!(
                scope.denial().is_some_and(|why| why.contains(named)),
                "{sql}: {:?}",
                scope.denial()
            );
            std::mem::forget(scope);
        }
        drop(scope);
    }

    /// The same scope, for `start_statement` (which needs `&mut`).
    fn scope_again(scope: &Scope) -> Scope {
        Scope {
            key: scope.key,
            state: scope.state.clone(),
        }
    }

    #[tokio::test]
    async fn a_migration_creates_and_changes_only_its_own_tables() {
        let mut conn = connection().await;
        let scope = MigrationScope::enter(
            &mut conn,
            "p".into(),
            names(&["t"]),
            names(&["other", "switchyard_outbox", "t"]),
        )
        .await
        .expect("scope");
        let script = "\
            CREATE TABLE IF NOT EXISTS mine (id INTEGER PRIMARY KEY AUTOINCREMENT, x TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);\n\
            CREATE UNIQUE INDEX mine_x ON mine (x);\n\
            INSERT INTO mine (x) VALUES (lower('SEED'));\n\
            ALTER TABLE mine ADD COLUMN y INTEGER;\n\
            ALTER TABLE mine RENAME COLUMN y TO z;\n\
            UPDATE mine SET z = 1;\n\
            CREATE TABLE scratch (a TEXT);\n\
            DROP TABLE scratch;\n\
            DROP INDEX mine_x;\n\
            ALTER TABLE t ADD COLUMN y TEXT;\n\
            INSERT INTO t (x) SELECT x FROM mine";
        let r = sqlx::raw_sql(script).execute(&mut conn).await;
        assert!(r.is_ok(), "{r:?}: {:?}", scope.denial());
        assert_eq!(scope.created(), ["mine", "scratch"]);
        drop(scope);

        for (sql, named) in [
            ("CREATE TABLE other (x TEXT)", "other"),
            ("CREATE TABLE IF NOT EXISTS other (x TEXT)", "other"),
            ("CREATE TABLE switchyard_x (x TEXT)", "switchyard_x"),
            ("INSERT INTO other VALUES ('x')", "other"),
            ("SELECT * FROM switchyard_outbox", "switchyard_outbox"),
            ("DROP TABLE other", "other"),
            ("ALTER TABLE other ADD COLUMN y TEXT", "other"),
            ("CREATE INDEX i ON other (x)", "other"),
            (
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM other; END",
                "CREATE TRIGGER",
            ),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("CREATE TEMP TABLE tt (x TEXT)", "TEMP"),
            ("ATTACH ':memory:' AS x", "ATTACH"),
            ("PRAGMA writable_schema = 1", "PRAGMA"),
            ("BEGIN", "transaction"),
            ("SAVEPOINT s", "SAVEPOINT"),
            (
                "INSERT INTO t (x) VALUES (sqlite_version())",
                "sqlite_version",
            ),
        ] {
            let scope = MigrationScope::enter(
                &mut conn,
                "p".into(),
                names(&["t", "mine"]),
                names(&["other", "switchyard_outbox", "t", "mine"]),
            )
            .await
            .expect("scope");
            let r = sqlx::raw_sql(sql).execute(&mut conn).await;
            assert!(r.is_err(), "{sql} ran");
            assert!(
                scope.denial().is_some_and(|why| why.contains(named)),
                "{sql}: {:?} / {r:?}",
                scope.denial()
            );
        }
        // Outside the scope the host is unrestricted again, and nothing
        // the refused statements tried is there.
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM sqlite_schema WHERE name IN ('switchyard_x', 'v', 'tr', 'f', 'i')",
        )
        .fetch_one(&mut conn)
        .await
        .expect("host query");
        assert_eq!(n, 0);
    }
}
