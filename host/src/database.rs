//! The service database: PostgreSQL or SQLite, chosen by URL.
//!
//! Every event runs inside one [`Tx`]; the `db` capability executes the
//! plugin's statements on it and the caller commits or rolls back from the
//! outcome. Values cross the boundary as the WIT `value` variant and are
//! bound as native types, so `$1` can be a `uuid`, a `date` or a
//! `timestamptz` on PostgreSQL without casts in the plugin's SQL.

use crate::bindings::switchyard::plugin::db::{
    ConstraintKind, ConstraintViolation, Error as DbError, Rows, Value,
};
use crate::limits::Limits;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgTypeInfo};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Postgres, Row, Sqlite, TypeInfo, ValueRef};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Which database engine a URL points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// SQLite (`sqlite:` file path or `sqlite::memory:`).
    Sqlite,
}

impl Backend {
    /// The name used in logs and output.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Errors opening or preparing the database.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL is neither PostgreSQL nor SQLite.
    #[error(
        "unsupported database URL `{0}`: use postgres://user@host/db or sqlite:path/to/file.db (sqlite::memory: for a throwaway one)"
    )]
    UnsupportedUrl(String),
    /// Connecting failed.
    #[error("cannot connect to the {backend} database at {url}: {source}")]
    Connect {
        /// Backend name.
        backend: &'static str,
        /// The URL with any password removed.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A plugin migration failed.
    #[error("migration {id} of plugin {plugin} failed: {source}")]
    Migration {
        /// Plugin name.
        plugin: String,
        /// Migration id.
        id: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration that was applied before has different SQL now.
    #[error(
        "migration {id} of plugin {plugin} was applied before with different SQL (checksum {applied}, now {now}); shipped migrations must never change: add a new migration instead"
    )]
    MigrationChanged {
        /// Plugin name.
        plugin: String,
        /// Migration id.
        id: String,
        /// Checksum recorded when it was applied.
        applied: String,
        /// Checksum of the SQL now shipped.
        now: String,
    },
    /// Any other database failure during setup.
    #[error("database setup failed: {0}")]
    Other(#[from] sqlx::Error),
}

/// A connection pool on the service database.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL pool.
    Postgres(sqlx::PgPool),
    /// SQLite pool, and the names of the tables in its schema (which the
    /// plugin sandbox needs to tell a table from a common table
    /// expression).
    Sqlite(sqlx::SqlitePool, SchemaTables),
}

/// The lowercased names of a SQLite database's tables and views, as of
/// the last migration or host script.
pub type SchemaTables = Arc<std::sync::RwLock<Arc<[String]>>>;

/// Remove the password from a URL before it is printed.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Database {
    /// Open a pool for `url`; `max_connections` bounds PostgreSQL
    /// connections. SQLite files are created when missing and use WAL.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, SetupError> {
        let backend = backend_of(url)?;
        let connect_err = |source| SetupError::Connect {
            backend: backend.name(),
            url: redact_url(url),
            source,
        };
        match backend {
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(url).map_err(connect_err)?;
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(connect_err)?;
                Ok(Database::Postgres(pool))
            }
            Backend::Sqlite => {
                let memory = url.contains(":memory:") || url.contains("mode=memory");
                if !memory {
                    // `sqlite:dir/file.db`: create the directory too.
                    let path = url
                        .trim_start_matches("sqlite://")
                        .trim_start_matches("sqlite:");
                    let path = path.split('?').next().unwrap_or(path);
                    if let Some(dir) = std::path::Path::new(path)
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                    {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| connect_err(sqlx::Error::Io(e)))?;
                    }
                }
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(connect_err)?
                    // Rows the driver reads ahead of the host: each can be
                    // as large as SQLite's length limit (see
                    // sqlite_sandbox), so keep few.
                    .row_buffer_size(4)
                    .create_if_missing(true)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5));
                let options = if memory {
                    options
                } else {
                    options.journal_mode(SqliteJournalMode::Wal)
                };
                // SQLite has one writer: a single connection serialises
                // transactions instead of failing them with SQLITE_BUSY, and
                // an in-memory database only exists on its one connection.
                let pool = SqlitePoolOptions::new()
                    .after_connect(|conn, _| Box::pin(crate::sqlite_sandbox::install(conn)))
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options)
                    .await
                    .map_err(connect_err)?;
                let db = Database::Sqlite(pool, SchemaTables::default());
                db.refresh_schema().await.map_err(connect_err)?;
                Ok(db)
            }
        }
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match self {
            Database::Postgres(_) => Backend::Postgres,
            Database::Sqlite(..) => Backend::Sqlite,
        }
    }

    /// Start a transaction for one event.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Database::Postgres(pool) => Tx::Postgres(pool.begin().await?, PgState::default()),
            Database::Sqlite(pool, schema) => Tx::Sqlite(SqliteTx {
                scope: None,
                tx: pool.begin().await?,
                lost: false,
                schema_tables: schema
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            }),
        })
    }

    /// Run a script of several statements outside any plugin sandbox (host
    /// setup and migrations only).
    pub async fn run_script(&self, sql: &str) -> Result<(), sqlx::Error> {
        use sqlx::Executor;
        match self {
            Database::Postgres(pool) => {
                let mut tx = setup_tx(pool).await?;
                tx.execute(sql).await?;
                tx.commit().await
            }
            Database::Sqlite(pool, _) => {
                pool.execute(sql).await?;
                self.refresh_schema().await
            }
        }
    }

    /// The column names of `table` (a host table: the name is the
    /// host's, never a plugin's), for forward migrations of the router's
    /// own tables.
    pub async fn column_names(&self, table: &str) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                )
                .bind(table)
                .fetch_all(pool)
                .await
            }
            Database::Sqlite(pool, _) => {
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                    .bind(table)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Database::Sqlite(pool, _) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
    }

    /// Re-read the table names of a SQLite schema (after host scripts and
    /// migrations, the only ways tables appear: plugins cannot run DDL).
    async fn refresh_schema(&self) -> Result<(), sqlx::Error> {
        if let Database::Sqlite(pool, schema) = self {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT lower(name) FROM sqlite_schema WHERE type IN ('table', 'view')",
            )
            .fetch_all(pool)
            .await?;
            *schema
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = names.into();
        }
        Ok(())
    }

    /// Close the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Database::Postgres(pool) => pool.close().await,
            Database::Sqlite(pool, _) => pool.close().await,
        }
    }
}

/// A transaction holding switchyard's setup lock (PostgreSQL): several
/// routers starting together run their `CREATE TABLE IF NOT EXISTS`,
/// roles and grants one after the other, not into each other (PostgreSQL
/// can fail both with a unique violation on its catalogs).
async fn setup_tx(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    use sqlx::Executor;
    let mut tx = pool.begin().await?;
    // The key: the first eight bytes of "switchyard" as a number.
    tx.execute("SELECT pg_advisory_xact_lock(8319683387291953522)")
        .await?;
    Ok(tx)
}

/// Which backend a URL names.
pub fn backend_of(url: &str) -> Result<Backend, SetupError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(SetupError::UnsupportedUrl(redact_url(url)))
    }
}

/// One event's transaction.
#[derive(Debug)]
pub enum Tx {
    /// On PostgreSQL, with the role and `statement_timeout` set in it so
    /// far.
    Postgres(sqlx::Transaction<'static, Postgres>, PgState),
    /// On SQLite.
    Sqlite(SqliteTx),
}

/// What a PostgreSQL transaction has set so far: switching roles costs a
/// round trip, so it happens only when it changes. Leaving a plugin's call
/// marks the role and timeout for reset; the reset is sent before the next
/// statement outside a plugin's call, and before the commit. Between the
/// two no plugin code runs, and both are `LOCAL` to the transaction.
#[derive(Debug, Default)]
pub struct PgState {
    /// `statement_timeout` in effect.
    timeout_ms: Option<u64>,
    /// The plugin role in effect (`None`: the host's own).
    role: Option<String>,
    /// Inside a plugin's call.
    in_plugin: bool,
}

/// A SQLite transaction, with the plugin sandbox while one of its calls is
/// in progress.
#[derive(Debug)]
pub struct SqliteTx {
    // Declared before the transaction so that it drops first: a dropped
    // transaction queues its ROLLBACK, which the sandbox would refuse.
    scope: Option<crate::sqlite_sandbox::Scope>,
    tx: sqlx::Transaction<'static, Sqlite>,
    /// SQLite rolled the transaction back on its own (an interrupted or
    /// failed write does that); everything before it is gone.
    lost: bool,
    /// The schema's tables when the transaction began.
    schema_tables: Arc<[String]>,
}

impl SqliteTx {
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let q = sqlite_statement(sql, params, &mut self.scope)?;
        match q.execute(&mut *self.tx).await {
            Ok(r) => Ok(r.rows_affected()),
            Err(e) => Err(self.after_error(e).await),
        }
    }

    async fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        limits: &Limits,
    ) -> Result<Rows, DbError> {
        let q = sqlite_statement(sql, params, &mut self.scope)?;
        let mut collector = Collector::new(limits);
        let mut stream = q.fetch(&mut *self.tx);
        let outcome = loop {
            match stream.try_next().await {
                Ok(Some(row)) => {
                    if let Err(e) = collector.push_sqlite(&row) {
                        break Err(Ok(e));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Err(e)),
            }
        };
        drop(stream);
        match outcome {
            Ok(()) => Ok(collector.finish()),
            Err(Err(driver)) => Err(self.after_error(driver).await),
            Err(Ok(cap)) => {
                // The host stopped reading; the statement may still be
                // running in the driver's worker. Stop it now and wait,
                // so that it cannot outlive the plugin's call.
                if let Some(scope) = &self.scope {
                    scope.cancel();
                    if let Err(e) = self.tx.lock_handle().await {
                        tracing::warn!(error = %e, "cannot wait for an abandoned SQLite statement");
                    }
                }
                Err(cap)
            }
        }
    }

    /// The plugin's error for a failed statement; and if SQLite rolled the
    /// whole transaction back, start a new one (so that nothing the plugin
    /// does next commits on its own) and remember that the event's work is
    /// lost.
    async fn after_error(&mut self, e: sqlx::Error) -> DbError {
        let error = sqlite_error(&self.scope, e);
        if let Some(scope) = &self.scope {
            match crate::sqlite_sandbox::in_transaction(&mut self.tx).await {
                Ok(true) => {}
                Ok(false) => {
                    self.lost = true;
                    scope.suspend();
                    let begun = sqlx::query("BEGIN").execute(&mut *self.tx).await;
                    scope.resume();
                    if let Err(e) = begun {
                        tracing::error!(error = %e, "cannot restart the SQLite transaction");
                    }
                }
                Err(e) => {
                    self.lost = true;
                    tracing::warn!(error = %e, "cannot check the SQLite transaction");
                }
            }
        }
        error
    }
}

/// A `NULL` parameter whose type PostgreSQL infers from the statement (OID
/// 0, "unspecified"), so NULL fits any column.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn bind_pg<'q>(mut q: PgQuery<'q>, params: &[Value]) -> Result<PgQuery<'q>, DbError> {
    for (i, p) in params.iter().enumerate() {
        q = match p {
            Value::Null => q.bind(UntypedNull),
            Value::Boolean(b) => q.bind(*b),
            Value::Int(n) => q.bind(*n),
            Value::Float(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.clone()),
            Value::Bytes(b) => q.bind(b.clone()),
            Value::Json(s) => q.bind(parse_json(i, s)?),
            Value::Uuid(s) => q.bind(parse_uuid(i, s)?),
            Value::Timestamp(us) => q.bind(parse_timestamp(i, *us)?),
            Value::Date(s) => q.bind(parse_date(i, s)?),
        };
    }
    // A NULL leaves its parameter's type to PostgreSQL, which infers it
    // from the statement (an `integer` column: int4). sqlx would cache the
    // statement with that inferred type and later send an i64 into it as
    // int8 bytes ("incorrect binary data format"): a statement with a NULL
    // is prepared afresh instead of cached.
    if params.iter().any(|p| matches!(p, Value::Null)) {
        q = q.persistent(false);
    }
    Ok(q)
}

fn bind_sqlite<'q>(mut q: SqliteQuery<'q>, params: &[Value]) -> Result<SqliteQuery<'q>, DbError> {
    for (i, p) in params.iter().enumerate() {
        q = match p {
            Value::Null => q.bind(Option::<i64>::None),
            Value::Boolean(b) => q.bind(*b),
            Value::Int(n) => q.bind(*n),
            Value::Float(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.clone()),
            Value::Bytes(b) => q.bind(b.clone()),
            // Validated, then stored as text so that both backends read
            // back the same representation.
            Value::Json(s) => q.bind(parse_json(i, s)?.to_string()),
            Value::Uuid(s) => q.bind(parse_uuid(i, s)?.hyphenated().to_string()),
            Value::Timestamp(us) => q.bind(parse_timestamp(i, *us)?),
            Value::Date(s) => q.bind(parse_date(i, s)?.format("%Y-%m-%d").to_string()),
        };
    }
    Ok(q)
}

fn parse_json(i: usize, s: &str) -> Result<serde_json::Value, DbError> {
    serde_json::from_str(s)
        .map_err(|e| DbError::Invalid(format!("parameter ${} is not valid JSON: {e}", i + 1)))
}

fn parse_uuid(i: usize, s: &str) -> Result<uuid::Uuid, DbError> {
    uuid::Uuid::parse_str(s)
        .map_err(|e| DbError::Invalid(format!("parameter ${} is not a UUID: {e}", i + 1)))
}

fn parse_timestamp(i: usize, micros: i64) -> Result<chrono::DateTime<chrono::Utc>, DbError> {
    chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        DbError::Invalid(format!(
            "parameter ${} is out of the timestamp range: {micros} µs",
            i + 1
        ))
    })
}

fn parse_date(i: usize, s: &str) -> Result<chrono::NaiveDate, DbError> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| {
        DbError::Invalid(format!(
            "parameter ${} is not a date YYYY-MM-DD: {s:?} ({e})",
            i + 1
        ))
    })
}

impl Tx {
    /// Run one statement that returns no rows.
    ///
    /// On PostgreSQL the statement runs under a savepoint so that a failed
    /// statement leaves the transaction usable for the plugin's next one.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        self.execute_with(sql, params, true).await
    }

    /// Run one host statement (markers, outbox): no savepoint, since a
    /// failure there fails the whole event's transaction anyway. As the
    /// host's role: a plugin's role still in effect is reset first.
    pub async fn execute_host(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        self.as_host().await?;
        self.execute_with(sql, params, false).await
    }

    /// Run one host query, with no caps on its result (the host's own
    /// statements: markers); as [`Tx::execute_host`].
    pub async fn query_host(&mut self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        self.as_host().await?;
        let unlimited = Limits {
            max_rows: usize::MAX,
            max_result_bytes: usize::MAX,
            ..Limits::default()
        };
        self.query_with(sql, params, &unlimited, false).await
    }

    /// For the host's own statements: refuse inside a plugin's call (a
    /// bug; an outage-like error, so the event runs again rather than
    /// spending its attempts), then [`Tx::host_context`].
    async fn as_host(&mut self) -> Result<(), DbError> {
        if let Tx::Postgres(_, state) = self
            && state.in_plugin
        {
            return Err(DbError::Unavailable(
                "a host statement inside a plugin's call (a switchyard bug); the event runs again"
                    .to_string(),
            ));
        }
        self.host_context().await
    }

    /// Outside a plugin's call, drop what the last plugin set — its role
    /// and its `statement_timeout` — before any statement: whoever runs
    /// it (the router, `switchyard plugin test`) runs it as the host. One
    /// round trip, only after a plugin's call.
    async fn host_context(&mut self) -> Result<(), DbError> {
        use sqlx::Executor;
        if let Tx::Postgres(tx, state) = self
            && !state.in_plugin
            && (state.role.is_some() || state.timeout_ms.is_some())
        {
            (&mut **tx)
                .execute("RESET ROLE; SET LOCAL statement_timeout TO DEFAULT")
                .await
                .map_err(map_error)?;
            state.role = None;
            state.timeout_ms = None;
        }
        Ok(())
    }

    /// [`Tx::execute`], with the PostgreSQL savepoint optional: without
    /// it a failed statement aborts the whole transaction, which the caller
    /// must then roll back (the router's batches do, and replay).
    pub async fn execute_with(
        &mut self,
        sql: &str,
        params: &[Value],
        use_savepoint: bool,
    ) -> Result<u64, DbError> {
        self.host_context().await?;
        match self {
            Tx::Postgres(tx, _) if !use_savepoint => {
                let q = bind_pg(sqlx::query(sql), params)?;
                q.execute(&mut **tx)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(map_error)
            }
            Tx::Postgres(tx, _) => {
                savepoint(tx).await?;
                let q = bind_pg(sqlx::query(sql), params);
                let result = match q {
                    Ok(q) => q.execute(&mut **tx).await.map_err(map_error),
                    Err(e) => Err(e),
                };
                finish_savepoint(tx, result.is_ok()).await?;
                result.map(|r| r.rows_affected())
            }
            Tx::Sqlite(tx) => tx.execute(sql, params).await,
        }
    }

    /// Run one statement and collect at most `limits.max_rows` rows and
    /// `limits.max_result_bytes` bytes; more is an error, not a truncation.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        limits: &Limits,
    ) -> Result<Rows, DbError> {
        self.query_with(sql, params, limits, true).await
    }

    /// [`Tx::query`], with the PostgreSQL savepoint optional (see
    /// [`Tx::execute_with`]).
    pub async fn query_with(
        &mut self,
        sql: &str,
        params: &[Value],
        limits: &Limits,
        use_savepoint: bool,
    ) -> Result<Rows, DbError> {
        self.host_context().await?;
        match self {
            Tx::Postgres(tx, _) => {
                if use_savepoint {
                    savepoint(tx).await?;
                }
                let result = match bind_pg(sqlx::query(sql), params) {
                    Ok(q) => {
                        let mut stream = q.fetch(&mut **tx);
                        let mut collector = Collector::new(limits);
                        loop {
                            match stream.try_next().await {
                                Ok(Some(row)) => {
                                    if let Err(e) = collector.push_pg(&row) {
                                        break Err(e);
                                    }
                                }
                                Ok(None) => break Ok(collector.finish()),
                                Err(e) => break Err(map_error(e)),
                            }
                        }
                    }
                    Err(e) => Err(e),
                };
                if use_savepoint {
                    finish_savepoint(tx, result.is_ok()).await?;
                }
                result
            }
            Tx::Sqlite(tx) => tx.query(sql, params, limits).await,
        }
    }

    /// Enter a plugin's call.
    ///
    /// On PostgreSQL: switch to the plugin's own database role, if it has
    /// one, so that the database enforces its table grants, and set
    /// `statement_timeout` to `timeout_ms` so that the server cancels a
    /// statement that runs longer. Both are `LOCAL` to this transaction; a
    /// plugin cannot undo them (`SET`, `RESET` and `set_config` are refused
    /// by the SQL gate, and its role is not a member of the host's). One
    /// round trip, skipped when nothing changes.
    ///
    /// On SQLite, which has no roles: restrict the connection to `tables`
    /// and each statement to `timeout_ms` (see [`crate::sqlite_sandbox`]).
    pub async fn enter_plugin(&mut self, access: &PluginAccess<'_>) -> Result<(), DbError> {
        use sqlx::Executor;
        let (role, timeout_ms) = (access.role, access.timeout_ms);
        match self {
            Tx::Postgres(tx, state) => {
                let mut sql = String::new();
                if state.role.as_deref() != role {
                    match role {
                        Some(role) => {
                            sql.push_str(&format!("SET LOCAL ROLE \"{}\"; ", role.replace('"', "")))
                        }
                        None => sql.push_str("RESET ROLE; "),
                    }
                }
                if state.timeout_ms != Some(timeout_ms) {
                    sql.push_str(&format!("SET LOCAL statement_timeout = {timeout_ms};"));
                }
                if !sql.is_empty() {
                    // Several statements, no parameters: the simple query
                    // protocol, one round trip.
                    (&mut **tx).execute(sql.as_str()).await.map_err(map_error)?;
                    state.timeout_ms = Some(timeout_ms);
                    state.role = role.map(str::to_string);
                }
                state.in_plugin = true;
                Ok(())
            }
            Tx::Sqlite(SqliteTx {
                tx,
                scope,
                schema_tables,
                ..
            }) => {
                let entered = crate::sqlite_sandbox::Scope::enter(
                    tx,
                    crate::sqlite_sandbox::Grant {
                        plugin: access.plugin.clone(),
                        tables: access.tables.clone(),
                        schema_tables: schema_tables.clone(),
                        timeout_ms,
                    },
                )
                .await
                .map_err(map_error)?;
                *scope = Some(entered);
                Ok(())
            }
        }
    }

    /// Leave a plugin's call: back to the host's role and timeout
    /// (PostgreSQL: before the next statement or the commit, see
    /// [`PgState`]) or an unrestricted
    /// connection (SQLite) for the host's own statements (markers,
    /// outbox). The next call of the same plugin in this transaction keeps
    /// its role without a round trip.
    pub async fn leave_plugin(&mut self, _role: Option<&str>) -> Result<(), DbError> {
        match self {
            Tx::Postgres(_, state) => {
                state.in_plugin = false;
                Ok(())
            }
            Tx::Sqlite(tx) => {
                tx.scope = None;
                Ok(())
            }
        }
    }

    /// Whether the database rolled the transaction back on its own during
    /// a plugin's call (SQLite does when a write is interrupted at its
    /// statement timeout): the event's work so far is gone and the event
    /// must run again; committing would lose its marker.
    pub fn lost(&self) -> bool {
        matches!(self, Tx::Sqlite(t) if t.lost)
    }

    /// Commit the event's work, as the host (deferred triggers must not
    /// fire as the last plugin's role).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if let Err(e) = self.host_context().await {
            return Err(sqlx::Error::Protocol(format!(
                "cannot return to the host's role before commit: {}",
                crate::capabilities::db::describe_error(&e)
            )));
        }
        match self {
            Tx::Postgres(tx, _) => tx.commit().await,
            Tx::Sqlite(SqliteTx { scope, tx, .. }) => {
                drop(scope);
                tx.commit().await
            }
        }
    }

    /// Roll the event's work back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx, _) => tx.rollback().await,
            Tx::Sqlite(SqliteTx { scope, tx, .. }) => {
                drop(scope);
                tx.rollback().await
            }
        }
    }
}

/// A plugin's identity and grants, as [`Tx::enter_plugin`] applies them.
#[derive(Debug, Clone, Copy)]
pub struct PluginAccess<'a> {
    /// The plugin's name (for errors).
    pub plugin: &'a Arc<str>,
    /// Its PostgreSQL role, once granted.
    pub role: Option<&'a str>,
    /// The tables it may use (enforced by the host on SQLite).
    pub tables: &'a Arc<[String]>,
    /// Statement timeout in milliseconds.
    pub timeout_ms: u64,
}

/// A SQLite statement with its parameters; compiled afresh (not from the
/// statement cache) inside a plugin's scope, so that the authorizer sees
/// it, with the scope's statement timeout starting now.
fn sqlite_statement<'q>(
    sql: &'q str,
    params: &[Value],
    scope: &mut Option<crate::sqlite_sandbox::Scope>,
) -> Result<SqliteQuery<'q>, DbError> {
    let q = bind_sqlite(sqlx::query(sql), params)?;
    Ok(match scope {
        Some(scope) => {
            scope.start_statement();
            q.persistent(false)
        }
        None => q,
    })
}

fn sqlite_error(scope: &Option<crate::sqlite_sandbox::Scope>, e: sqlx::Error) -> DbError {
    match scope {
        Some(scope) => scope.explain(e),
        None => map_error(e),
    }
}

async fn savepoint(tx: &mut sqlx::Transaction<'static, Postgres>) -> Result<(), DbError> {
    sqlx::query("SAVEPOINT switchyard_stmt")
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(map_error)
}

async fn finish_savepoint(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    ok: bool,
) -> Result<(), DbError> {
    let sql = if ok {
        "RELEASE SAVEPOINT switchyard_stmt"
    } else {
        "ROLLBACK TO SAVEPOINT switchyard_stmt"
    };
    sqlx::query(sql)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(map_error)
}

/// Accumulates result rows under the host's caps.
struct Collector<'a> {
    limits: &'a Limits,
    columns: Option<Vec<String>>,
    rows: Vec<Vec<Value>>,
    bytes: usize,
}

impl<'a> Collector<'a> {
    fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            columns: None,
            rows: Vec::new(),
            bytes: 0,
        }
    }

    fn admit(&mut self, names: impl FnOnce() -> Vec<String>) -> Result<(), DbError> {
        if self.rows.len() >= self.limits.max_rows {
            return Err(DbError::Limit(format!(
                "the query returned more than {} rows; add a LIMIT or narrow the WHERE clause",
                self.limits.max_rows
            )));
        }
        if self.columns.is_none() {
            self.columns = Some(names());
        }
        Ok(())
    }

    /// Count `len` more bytes of result, before the host copies them.
    fn spend(&mut self, len: usize) -> Result<(), DbError> {
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > self.limits.max_result_bytes {
            return Err(DbError::Limit(format!(
                "the query returned more than {} bytes; select fewer columns or rows",
                self.limits.max_result_bytes
            )));
        }
        Ok(())
    }

    /// Decode a row cell by cell; each cell's size is charged against the
    /// byte cap from the driver's buffer, before the host copies it.
    fn push_row(
        &mut self,
        width: usize,
        mut cell: impl FnMut(usize, &mut Self) -> Result<Value, DbError>,
    ) -> Result<(), DbError> {
        let mut cells = Vec::with_capacity(width);
        for i in 0..width {
            let value = cell(i, self)?;
            cells.push(value);
        }
        self.rows.push(cells);
        Ok(())
    }

    fn push_pg(&mut self, row: &PgRow) -> Result<(), DbError> {
        self.admit(|| row.columns().iter().map(|c| c.name().to_string()).collect())?;
        self.push_row(row.len(), |i, c| {
            let raw = row.try_get_raw(i).map_err(|e| decode_err("?", e))?;
            let len = if raw.is_null() {
                1
            } else {
                raw.as_bytes().map_or(0, <[u8]>::len).max(1)
            };
            c.spend(len)?;
            pg_cell(row, i)
        })
    }

    fn push_sqlite(&mut self, row: &SqliteRow) -> Result<(), DbError> {
        self.admit(|| row.columns().iter().map(|c| c.name().to_string()).collect())?;
        self.push_row(row.len(), |i, c| {
            // Text and blobs are measured borrowed from the driver's
            // buffer, nothing copied yet; other storage classes are only
            // read for their class (reading an integer as bytes would
            // convert it in place).
            let raw = row.try_get_raw(i).map_err(|e| decode_err("?", e))?;
            let variable = !raw.is_null() && matches!(raw.type_info().name(), "TEXT" | "BLOB");
            let len = if variable {
                row.try_get_unchecked::<&[u8], _>(i).map_or(0, <[u8]>::len)
            } else {
                8
            };
            c.spend(len)?;
            sqlite_cell(row, i)
        })
    }

    fn finish(self) -> Rows {
        Rows {
            columns: self.columns.unwrap_or_default(),
            rows: self.rows,
        }
    }
}

/// Approximate bytes a value occupies, for the result-size cap.
pub fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Boolean(_) => 1,
        Value::Int(_) | Value::Float(_) | Value::Timestamp(_) => 8,
        Value::Text(s) | Value::Json(s) | Value::Uuid(s) | Value::Date(s) => s.len(),
        Value::Bytes(b) => b.len(),
    }
}

fn decode_err(column: &str, e: impl std::fmt::Display) -> DbError {
    DbError::Invalid(format!("cannot read column {column}: {e}"))
}

fn pg_cell(row: &PgRow, i: usize) -> Result<Value, DbError> {
    let column = &row.columns()[i];
    let name = column.name();
    let raw = row.try_get_raw(i).map_err(|e| decode_err(name, e))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = column.type_info().name().to_string();
    let err = |e| decode_err(name, e);
    Ok(match type_name.as_str() {
        "BOOL" => Value::Boolean(row.try_get(i).map_err(err)?),
        "INT2" => Value::Int(i64::from(row.try_get::<i16, _>(i).map_err(err)?)),
        "INT4" => Value::Int(i64::from(row.try_get::<i32, _>(i).map_err(err)?)),
        "INT8" => Value::Int(row.try_get(i).map_err(err)?),
        "FLOAT4" => Value::Float(f64::from(row.try_get::<f32, _>(i).map_err(err)?)),
        "FLOAT8" => Value::Float(row.try_get(i).map_err(err)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
            Value::Text(row.try_get(i).map_err(err)?)
        }
        "BYTEA" => Value::Bytes(row.try_get(i).map_err(err)?),
        "JSON" | "JSONB" => Value::Json(
            row.try_get::<serde_json::Value, _>(i)
                .map_err(err)?
                .to_string(),
        ),
        "UUID" => Value::Uuid(
            row.try_get::<uuid::Uuid, _>(i)
                .map_err(err)?
                .hyphenated()
                .to_string(),
        ),
        "TIMESTAMPTZ" => Value::Timestamp(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .map_err(err)?
                .timestamp_micros(),
        ),
        "TIMESTAMP" => Value::Timestamp(
            row.try_get::<chrono::NaiveDateTime, _>(i)
                .map_err(err)?
                .and_utc()
                .timestamp_micros(),
        ),
        "DATE" => Value::Date(
            row.try_get::<chrono::NaiveDate, _>(i)
                .map_err(err)?
                .format("%Y-%m-%d")
                .to_string(),
        ),
        "VOID" => Value::Null,
        other => {
            return Err(DbError::Invalid(format!(
                "column {name} has type {other}, which plugins cannot read yet: cast it in the query, e.g. {name}::text or {name}::float8"
            )));
        }
    })
}

fn sqlite_cell(row: &SqliteRow, i: usize) -> Result<Value, DbError> {
    let column = &row.columns()[i];
    let name = column.name();
    let raw = row.try_get_raw(i).map_err(|e| decode_err(name, e))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // The storage class of this value, not the column's declared type.
    let storage = raw.type_info().name().to_string();
    let declared = column.type_info().name().to_ascii_uppercase();
    let err = |e| decode_err(name, e);
    Ok(match storage.as_str() {
        "INTEGER" | "BOOLEAN" if declared == "BOOLEAN" => {
            Value::Boolean(row.try_get::<i64, _>(i).map_err(err)? != 0)
        }
        "INTEGER" | "BOOLEAN" => Value::Int(row.try_get(i).map_err(err)?),
        "REAL" => Value::Float(row.try_get(i).map_err(err)?),
        "BLOB" => Value::Bytes(row.try_get(i).map_err(err)?),
        _ => Value::Text(row.try_get(i).map_err(err)?),
    })
}

/// Map a driver error to the WIT error the plugin sees.
pub fn map_error(e: sqlx::Error) -> DbError {
    match e {
        sqlx::Error::Database(db) => {
            let message = db.message().to_string();
            let name = db.constraint().map(str::to_string);
            let constraint = |kind| {
                DbError::Constraint(ConstraintViolation {
                    kind,
                    name: name.clone(),
                    message: message.clone(),
                })
            };
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => constraint(ConstraintKind::Unique),
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    constraint(ConstraintKind::ForeignKey)
                }
                sqlx::error::ErrorKind::NotNullViolation => constraint(ConstraintKind::NotNull),
                sqlx::error::ErrorKind::CheckViolation => constraint(ConstraintKind::Check),
                _ => {
                    let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                        classify_sqlite(&code, message)
                    } else {
                        classify_sqlstate(&code, message)
                    }
                }
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => DbError::Unavailable(e.to_string()),
        other => DbError::Invalid(other.to_string()),
    }
}

/// Classify a SQLite result code (extended codes keep the primary code in
/// the low byte).
///
/// Only errors that say the statement itself is wrong are `invalid` (which
/// a plugin usually turns into a rejection and a dead letter); anything
/// else — a busy or locked database, a full disk, an I/O error — is
/// `unavailable`, so the router pauses and retries instead of
/// dead-lettering a good event.
fn classify_sqlite(code: &str, message: String) -> DbError {
    let Ok(n) = code.parse::<u32>() else {
        return DbError::Invalid(message);
    };
    match n & 0xff {
        // SQLITE_ERROR, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE
        1 | 19 | 20 | 25 => DbError::Invalid(message),
        // SQLITE_TOOBIG
        18 => DbError::Limit(message),
        // SQLITE_AUTH: the authorizer refused
        23 => DbError::Denied(message),
        _ => DbError::Unavailable(format!("{message} (SQLite code {n})")),
    }
}

/// Classify a PostgreSQL SQLSTATE, with the same rule as
/// [`classify_sqlite`]: a read-only database after a failover, a
/// serialization failure or an admin shutdown is `unavailable`. SQLSTATEs
/// can be all digits (`42501`), so the backend, not the code's shape,
/// decides which table applies.
fn classify_sqlstate(code: &str, message: String) -> DbError {
    match code {
        // insufficient_privilege: the database enforced a grant.
        "42501" => DbError::Denied(message),
        // query_canceled: statement_timeout (or an administrator).
        "57014" => DbError::Limit(format!("statement timeout or cancelled: {message}")),
        // program_limit_exceeded (a value or statement too large): the
        // statement's doing, e.g. repeat('x', 2000000000).
        c if c.starts_with("54") => DbError::Limit(format!("{message} (SQLSTATE {code})")),
        c if ["42", "22", "23", "21", "0A", "44", "P0", "2B", "2F", "39"]
            .iter()
            .any(|class| c.starts_with(class)) =>
        {
            DbError::Invalid(format!("{message} (SQLSTATE {code})"))
        }
        "" => DbError::Invalid(message),
        _ => DbError::Unavailable(format!("{message} (SQLSTATE {code})")),
    }
}

/// The PostgreSQL role a plugin's SQL runs as: `switchyard_plugin_<name>`.
pub fn plugin_role(plugin: &str) -> String {
    let name: String = plugin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut role = format!("switchyard_plugin_{name}");
    role.truncate(63);
    role
}

/// The tables a migration script creates (`CREATE TABLE [IF NOT EXISTS]
/// name`), lowercased, without schema.
pub fn tables_created(script: &str) -> Vec<String> {
    let upper = script.to_ascii_uppercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = upper[from..].find("CREATE TABLE") {
        let mut rest = script[from + at + "CREATE TABLE".len()..].trim_start();
        if rest.to_ascii_uppercase().starts_with("IF NOT EXISTS") {
            rest = rest["IF NOT EXISTS".len()..].trim_start();
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.' || *c == '"')
            .collect();
        let name = name
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .to_lowercase();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
        from += at + "CREATE TABLE".len();
    }
    out
}

/// A plugin migration as the host applies it.
#[derive(Debug, Clone)]
pub struct MigrationSql {
    /// Identifier, unique within the plugin.
    pub id: String,
    /// PostgreSQL script.
    pub postgres: String,
    /// SQLite script.
    pub sqlite: String,
}

impl Database {
    /// Apply the plugin's migrations that have not been applied yet, in
    /// order, each in its own transaction, and record them in
    /// `switchyard_migrations`. Returns the ids applied now.
    pub async fn migrate(
        &self,
        plugin: &str,
        migrations: &[MigrationSql],
    ) -> Result<Vec<String>, SetupError> {
        self.run_script(
            "CREATE TABLE IF NOT EXISTS switchyard_migrations (
                plugin TEXT NOT NULL,
                id TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at TEXT NOT NULL,
                PRIMARY KEY (plugin, id)
            )",
        )
        .await?;
        let mut applied_now = Vec::new();
        for m in migrations {
            let script = match self.backend() {
                Backend::Postgres => &m.postgres,
                Backend::Sqlite => &m.sqlite,
            };
            let checksum = crate::runtime::short_hash(script.as_bytes());
            let recorded = self.migration_checksum(plugin, &m.id).await?;
            match recorded {
                Some(applied) if applied == checksum => continue,
                Some(applied) => {
                    return Err(SetupError::MigrationChanged {
                        plugin: plugin.to_string(),
                        id: m.id.clone(),
                        applied,
                        now: checksum,
                    });
                }
                None => {}
            }
            let failed = |source| SetupError::Migration {
                plugin: plugin.to_string(),
                id: m.id.clone(),
                source,
            };
            let now = chrono::Utc::now().to_rfc3339();
            match self {
                Database::Postgres(pool) => {
                    use sqlx::Executor;
                    let mut tx = pool.begin().await.map_err(failed)?;
                    // Two routers starting together must not both migrate.
                    tx.execute("LOCK TABLE switchyard_migrations IN EXCLUSIVE MODE")
                        .await
                        .map_err(failed)?;
                    let again: Option<String> = sqlx::query_scalar(
                        "SELECT checksum FROM switchyard_migrations WHERE plugin = $1 AND id = $2",
                    )
                    .bind(plugin)
                    .bind(&m.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(failed)?;
                    if again.is_none() {
                        tx.execute(script.as_str()).await.map_err(failed)?;
                        sqlx::query("INSERT INTO switchyard_migrations (plugin, id, checksum, applied_at) VALUES ($1, $2, $3, $4)")
                            .bind(plugin).bind(&m.id).bind(&checksum).bind(&now)
                            .execute(&mut *tx).await.map_err(failed)?;
                        applied_now.push(m.id.clone());
                    }
                    tx.commit().await.map_err(failed)?;
                }
                Database::Sqlite(pool, _) => {
                    use sqlx::Executor;
                    let mut tx = pool.begin().await.map_err(failed)?;
                    tx.execute(script.as_str()).await.map_err(failed)?;
                    sqlx::query("INSERT INTO switchyard_migrations (plugin, id, checksum, applied_at) VALUES ($1, $2, $3, $4)")
                        .bind(plugin).bind(&m.id).bind(&checksum).bind(&now)
                        .execute(&mut *tx).await.map_err(failed)?;
                    tx.commit().await.map_err(failed)?;
                    applied_now.push(m.id.clone());
                }
            }
        }
        if !applied_now.is_empty() {
            self.refresh_schema().await?;
        }
        Ok(applied_now)
    }

    /// On PostgreSQL, make sure the plugin's role exists and holds
    /// `SELECT, INSERT, UPDATE, DELETE` on exactly the tables its
    /// migrations create (and their sequences), and nothing else; return
    /// the role. The host's user needs `CREATEROLE` (or to be a superuser)
    /// and becomes a member of the role so that it can `SET ROLE` to it.
    /// SQLite has no roles: `None`.
    pub async fn grant_plugin(
        &self,
        plugin: &str,
        migrations: &[MigrationSql],
    ) -> Result<Option<String>, SetupError> {
        let Database::Postgres(pool) = self else {
            return Ok(None);
        };
        let role = plugin_role(plugin);
        let failed = |source| SetupError::Migration {
            plugin: plugin.to_string(),
            id: format!("grants for role {role}"),
            source,
        };
        use sqlx::Executor;
        // One transaction under the setup lock: routers starting together
        // would otherwise race on the role and on concurrent GRANTs
        // ("tuple concurrently updated").
        let mut tx = setup_tx(pool).await.map_err(failed)?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(&role)
            .fetch_optional(&mut *tx)
            .await
            .map_err(failed)?;
        if exists.is_none() {
            tx.execute(format!("CREATE ROLE \"{role}\" NOLOGIN").as_str())
                .await
                .map_err(failed)?;
        }
        tx.execute(
            format!(
                "GRANT \"{role}\" TO CURRENT_USER; GRANT USAGE ON SCHEMA public TO \"{role}\";"
            )
            .as_str(),
        )
        .await
        .map_err(failed)?;
        let tables = self.plugin_tables(migrations);
        for t in &tables {
            tx.execute(
                format!("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE \"{t}\" TO \"{role}\"")
                    .as_str(),
            )
            .await
            .map_err(failed)?;
        }
        let sequences: Vec<String> = sqlx::query_scalar(
            "SELECT s.relname::text FROM pg_class s JOIN pg_depend d ON d.objid = s.oid \
             JOIN pg_class t ON d.refobjid = t.oid WHERE s.relkind = 'S' AND t.relname = ANY($1)",
        )
        .bind(&tables)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        for seq in sequences {
            tx.execute(format!("GRANT USAGE, SELECT ON SEQUENCE \"{seq}\" TO \"{role}\"").as_str())
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        Ok(Some(role))
    }

    /// The tables a plugin's migrations create on this backend: the only
    /// ones its statements may use.
    pub fn plugin_tables(&self, migrations: &[MigrationSql]) -> Vec<String> {
        let mut tables: Vec<String> = Vec::new();
        for m in migrations {
            let script = match self.backend() {
                Backend::Postgres => &m.postgres,
                Backend::Sqlite => &m.sqlite,
            };
            for t in tables_created(script) {
                if !tables.contains(&t) {
                    tables.push(t);
                }
            }
        }
        tables
    }

    async fn migration_checksum(
        &self,
        plugin: &str,
        id: &str,
    ) -> Result<Option<String>, SetupError> {
        let sql = "SELECT checksum FROM switchyard_migrations WHERE plugin = $1 AND id = $2";
        Ok(match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(plugin)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Sqlite(pool, _) => {
                sqlx::query_scalar(sql)
                    .bind(plugin)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite:data.db"), "sqlite:data.db");
    }

    #[test]
    fn finds_the_tables_a_migration_creates() {
        let sql = "CREATE TABLE IF NOT EXISTS customers (id text);\n create table customer_users (x int); CREATE TABLE \"Quoted\" (y int)";
        assert_eq!(
            tables_created(sql),
            vec!["customers", "customer_users", "quoted"]
        );
        assert_eq!(
            plugin_role("role-mapping"),
            "switchyard_plugin_role_mapping"
        );
    }

    /// SQLSTATEs that are all digits are not SQLite codes: a denied grant,
    /// a statement timeout and a syntax error on PostgreSQL are the
    /// statement's fault, never an outage that would stall the partition.
    #[test]
    fn classifies_each_backend_with_its_own_table() {
        let kind = |e: DbError| match e {
            DbError::Denied(_) => "denied",
            DbError::Invalid(_) => "invalid",
            DbError::Limit(_) => "limit",
            DbError::Unavailable(_) => "unavailable",
            DbError::Constraint(_) => "constraint",
        };
        let pg = |code: &str| kind(classify_sqlstate(code, "m".into()));
        assert_eq!(pg("42501"), "denied");
        assert_eq!(pg("57014"), "limit");
        assert_eq!(pg("54000"), "limit");
        assert_eq!(pg("42601"), "invalid");
        assert_eq!(pg("42P01"), "invalid");
        assert_eq!(pg("22003"), "invalid");
        assert_eq!(pg("25006"), "unavailable", "read-only transaction");
        assert_eq!(pg("40001"), "unavailable", "serialization failure");
        assert_eq!(pg("57P01"), "unavailable", "admin shutdown");
        let lite = |code: &str| kind(classify_sqlite(code, "m".into()));
        assert_eq!(lite("1"), "invalid");
        assert_eq!(lite("23"), "denied");
        assert_eq!(lite("18"), "limit");
        assert_eq!(lite("5"), "unavailable", "busy");
        assert_eq!(lite("261"), "unavailable", "SQLITE_BUSY_RECOVERY");
    }

    #[test]
    fn picks_backend_from_url() {
        assert_eq!(backend_of("postgresql://x/y").ok(), Some(Backend::Postgres));
        assert_eq!(backend_of("sqlite::memory:").ok(), Some(Backend::Sqlite));
        let err = backend_of("mysql://x").err().map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("use postgres://")));
    }

    #[tokio::test]
    async fn sqlite_round_trips_typed_values() -> anyhow::Result<()> {
        let db = Database::connect("sqlite::memory:", 1).await?;
        db.run_script(
            "CREATE TABLE t (b BOOLEAN, i INTEGER, f REAL, s TEXT, j TEXT, u TEXT, ts TEXT, d TEXT, x BLOB)",
        )
        .await?;
        let mut tx = db.begin().await?;
        let params = vec![
            Value::Boolean(true),
            Value::Int(-7),
            Value::Float(1.5),
            Value::Text("احمد".into()),
            Value::Json(r#"{"a":1}"#.into()),
            Value::Uuid("0b9e4a52-8f7e-4a8e-9d3c-2f1d2b7c9a10".into()),
            Value::Timestamp(1_700_000_000_123_456),
            Value::Date("1990-01-01".into()),
            Value::Bytes(vec![0, 1, 2]),
        ];
        let n = tx
            .execute(
                "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &params,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(n, 1);
        let rows = tx
            .query("SELECT b, i, f, s, x FROM t", &[], &Limits::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(rows.columns, vec!["b", "i", "f", "s", "x"]);
        assert!(matches!(rows.rows[0][0], Value::Boolean(true)));
        assert!(matches!(rows.rows[0][1], Value::Int(-7)));
        assert!(matches!(&rows.rows[0][3], Value::Text(s) if s == "احمد"));
        assert!(matches!(&rows.rows[0][4], Value::Bytes(b) if b == &vec![0, 1, 2]));
        tx.rollback().await?;
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_reports_unique_violation_and_row_cap() -> anyhow::Result<()> {
        let db = Database::connect("sqlite::memory:", 1).await?;
        db.run_script("CREATE TABLE u (k TEXT PRIMARY KEY)").await?;
        let mut tx = db.begin().await?;
        for k in ["a", "b", "c"] {
            tx.execute("INSERT INTO u VALUES ($1)", &[Value::Text(k.into())])
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        let dup = tx
            .execute("INSERT INTO u VALUES ($1)", &[Value::Text("a".into())])
            .await;
        assert!(matches!(
            dup,
            Err(DbError::Constraint(ConstraintViolation {
                kind: ConstraintKind::Unique,
                ..
            }))
        ));
        let limits = Limits {
            max_rows: 2,
            ..Limits::default()
        };
        let capped = tx.query("SELECT k FROM u", &[], &limits).await;
        assert!(matches!(capped, Err(DbError::Limit(m)) if m.contains("more than 2 rows")));
        Ok(())
    }
}
