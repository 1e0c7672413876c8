//! The service database: PostgreSQL or SQLite, chosen by URL.
//!
//! Every event runs inside one [`Tx`]; the `db` capability executes the
//! plugin's statements on it and the caller commits or rolls back from the
//! outcome. Values cross the boundary as the WIT `value` variant and are
//! bound as native types, so `$1` can be a `uuid`, a `date` or a
//! `timestamptz` on PostgreSQL without casts in the plugin's SQL.

use crate::bindings::switchyard::plugin::db::{Rows, Value};
use crate::limits::Limits;
use crate::pg_identity::PgDb;
pub use crate::pg_identity::plugin_role;
pub use crate::store_error::{StoreError, map_error};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgTypeInfo};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Postgres, Row, Sqlite, TypeInfo, ValueRef};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::store_error::Backend;

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
    /// A migration the host refuses to run.
    #[error("migration {id} of plugin {plugin} is refused: {reason}")]
    Refused {
        /// Plugin name.
        plugin: String,
        /// Migration id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The plugin's database identity could not be set up.
    #[error(transparent)]
    Identity(#[from] crate::pg_identity::ProvisionError),
    /// Any other database failure during setup.
    #[error("database setup failed: {0}")]
    Other(#[from] sqlx::Error),
}

/// A connection pool on the service database.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL: the host's pool, and each plugin's identity and pool
    /// (see [`crate::pg_identity`]).
    Postgres(Arc<PgDb>),
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
                // The host's own statements (setup, relay, dead letters,
                // markers outside a plugin's session) wait at most this
                // long for a lock, then fail with a message instead of
                // hanging behind a session that holds it.
                let host_options = options.clone().options([(
                    "lock_timeout",
                    crate::pg_identity::SETUP_LOCK_TIMEOUT_MS.to_string(),
                )]);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(host_options)
                    .await
                    .map_err(connect_err)?;
                Ok(Database::Postgres(Arc::new(PgDb::new(
                    pool,
                    options,
                    max_connections,
                ))))
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
            Database::Postgres(pg) => Tx::Postgres(PgTx::new(pg.clone())),
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
            Database::Postgres(pg) => {
                let mut tx = pg.setup_tx().await?;
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
            Database::Postgres(pg) => {
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                )
                .bind(table)
                .fetch_all(&pg.host)
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

    /// Whether the database takes a write: `/health` asks this, so a
    /// database that answers reads but refuses writes (read-only after a
    /// failover, a full disk) is not reported healthy. One upsert of this
    /// process's heartbeat row in `switchyard_heartbeat`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO switchyard_heartbeat (instance, beat_at) VALUES ($1, $2) \
                   ON CONFLICT (instance) DO UPDATE SET beat_at = excluded.beat_at";
        let instance = instance_id();
        let now = chrono::Utc::now().to_rfc3339();
        match self {
            // The host's sessions carry a `lock_timeout` (see `connect`).
            Database::Postgres(pg) => sqlx::query(sql)
                .bind(instance)
                .bind(now)
                .execute(&pg.host)
                .await
                .map(|_| ()),
            Database::Sqlite(pool, _) => sqlx::query(sql)
                .bind(instance)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ()),
        }
    }

    /// The PostgreSQL side (host pool, plugin identities), if that is the
    /// backend.
    pub fn postgres(&self) -> Option<&Arc<PgDb>> {
        match self {
            Database::Postgres(pg) => Some(pg),
            Database::Sqlite(..) => None,
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
            Database::Postgres(pg) => pg.close().await,
            Database::Sqlite(pool, _) => pool.close().await,
        }
    }
}

/// This process's name in `switchyard_heartbeat`: host name and pid.
fn instance_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".to_string());
        format!("{host}:{}", std::process::id())
    })
    .clone()
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
    /// On PostgreSQL: one transaction per plugin session it touched, and
    /// the host's own (see [`PgTx`]).
    Postgres(PgTx),
    /// On SQLite.
    Sqlite(SqliteTx),
}

/// The statement that opens a plugin session's transaction. In the same
/// round trip, right after the `BEGIN` (which comes first so that a
/// session default such as `default_transaction_read_only` cannot decide
/// the transaction's mode), whatever an earlier event could have left on
/// the pooled session is dropped — settings, advisory locks, cursors,
/// `LISTEN`s, temporary tables — so no connection serves an event dirty,
/// whatever got past the SQL gate.
pub(crate) const PLUGIN_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; RESET ALL; SELECT pg_catalog.pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; DISCARD TEMP";

/// Open a transaction on a plugin's session ([`PLUGIN_BEGIN`]) with
/// `timeout_ms` as its `statement_timeout`, and read its transaction id,
/// which every guarded host call passes back: a call made after the
/// plugin ended the transaction itself is refused. Two round trips. The
/// host's statements in a plugin's session are never cached as prepared
/// statements (`persistent(false)`), so SQL of the plugin's cannot put
/// its own statement in their place.
///
/// The second round trip also looks for what [`PLUGIN_BEGIN`] cannot
/// reset: prepared statements that are not the driver's (deallocated
/// here, before the plugin runs) and settings stored on the plugin's
/// role itself (`ALTER ROLE ... SET`; reported, for the host to reset).
pub(crate) async fn open_plugin_tx(
    pool: &sqlx::PgPool,
    timeout_ms: u64,
) -> Result<PluginTxOpened, sqlx::Error> {
    use sqlx::Executor;
    let mut tx = pool.begin_with(PLUGIN_BEGIN).await?;
    let (_, xid, leftovers, role_settings): (String, String, Vec<String>, bool) = sqlx::query_as(
        "SELECT pg_catalog.set_config('statement_timeout', $1, true), \
                pg_catalog.pg_current_xact_id()::text, \
                ARRAY(SELECT name::text FROM pg_catalog.pg_prepared_statements \
                       WHERE name::text NOT LIKE 'sqlx\\_s\\_%'), \
                EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting \
                         WHERE setrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user))",
    )
    .bind(timeout_ms.to_string())
    .persistent(false)
    .fetch_one(&mut *tx)
    .await?;
    for name in &leftovers {
        tracing::warn!(statement = %name, "a prepared statement a plugin left on its session; deallocated");
        tx.execute(format!("DEALLOCATE {}", crate::pg_identity::quote_ident(name)).as_str())
            .await?;
    }
    Ok(PluginTxOpened {
        tx,
        xid,
        role_settings,
    })
}

/// A plugin transaction as [`open_plugin_tx`] opened it.
pub(crate) struct PluginTxOpened {
    /// The transaction.
    pub tx: sqlx::Transaction<'static, Postgres>,
    /// Its id, for the guarded host calls.
    pub xid: String,
    /// The plugin's role has settings of its own, which the host resets.
    pub role_settings: bool,
}

/// An event's work on PostgreSQL.
///
/// Each plugin's statements run in a session logged in as the plugin's
/// own role ([`crate::pg_identity`]), so the transaction is one per
/// plugin: the plugin's SQL, its processed-markers and its outbox rows
/// (written through the guarded host functions, in the plugin's session)
/// commit together, which is P1. A batch that reaches several plugins
/// holds one such transaction per plugin; they commit one after the
/// other, and if one fails the markers of those committed make their
/// events duplicates on the retry. Statements of the host that concern no
/// plugin run in the host's own transaction.
#[derive(Debug)]
pub struct PgTx {
    db: Arc<PgDb>,
    host: Option<sqlx::Transaction<'static, Postgres>>,
    sessions: Vec<PgSession>,
    /// The session of the plugin whose call is in progress, or was last.
    current: Option<usize>,
    in_plugin: bool,
    /// A statement outlived the host's deadline and was cancelled: the
    /// session's state is unknown, its work must not commit.
    lost: bool,
}

/// One plugin's transaction in a [`PgTx`].
#[derive(Debug)]
struct PgSession {
    plugin: Arc<str>,
    role: Arc<str>,
    tx: sqlx::Transaction<'static, Postgres>,
    timeout_ms: u64,
    /// The transaction's id, for the guarded host calls.
    xid: String,
}

impl PgTx {
    fn new(db: Arc<PgDb>) -> Self {
        Self {
            db,
            host: None,
            sessions: Vec::new(),
            current: None,
            in_plugin: false,
            lost: false,
        }
    }

    /// The index of `plugin`'s session, begun now if needed with
    /// `timeout_ms` (default: the plugin's in service) as its
    /// `statement_timeout`.
    async fn session(
        &mut self,
        plugin: &str,
        timeout_ms: Option<u64>,
    ) -> Result<usize, StoreError> {
        if let Some(i) = self.sessions.iter().position(|s| &*s.plugin == plugin) {
            return Ok(i);
        }
        let Some(identity) = self.db.plugin(plugin) else {
            return Err(StoreError::Unavailable(format!(
                "plugin {plugin} has no database identity yet (its role is set up when it is loaded); the event runs again"
            )));
        };
        let timeout_ms = timeout_ms.unwrap_or_else(|| {
            identity
                .statement_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        let PluginTxOpened {
            tx,
            xid,
            role_settings,
        } = match open_plugin_tx(&identity.pool, timeout_ms).await {
            Ok(opened) => opened,
            Err(e) => {
                // The role's password is not the one the host keeps (a
                // plugin changed it past the gate, or an operator did):
                // set it back, and the event runs again.
                if let sqlx::Error::Database(db) = &e
                    && db.code().as_deref() == Some("28P01")
                {
                    let db = self.db.clone();
                    let plugin = identity.plugin.clone();
                    tokio::spawn(async move {
                        tracing::warn!(%plugin, "the plugin's role refused its password; setting it back");
                        if let Err(e) = db.reset_password(&plugin).await {
                            tracing::warn!(%plugin, error = %e, "cannot set the plugin role's password back");
                        }
                    });
                }
                return Err(map_error(e));
            }
        };
        if role_settings {
            // Settings on the role would reach every new session of the
            // plugin: take them back (the startup options and the host's
            // `SET LOCAL`s already win over the ones that matter).
            let db = self.db.clone();
            let role = identity.role.clone();
            tokio::spawn(async move {
                tracing::warn!(%role, "the plugin's role has settings of its own (ALTER ROLE ... SET); resetting them");
                if let Err(e) = db.reset_role_settings(&role).await {
                    tracing::warn!(%role, error = %e, "cannot reset the plugin role's settings");
                }
            });
        }
        self.sessions.push(PgSession {
            plugin: identity.plugin.clone(),
            role: identity.role.as_str().into(),
            tx,
            timeout_ms,
            xid,
        });
        Ok(self.sessions.len() - 1)
    }

    /// The host's own transaction, begun now if needed.
    async fn host(&mut self) -> Result<&mut sqlx::Transaction<'static, Postgres>, StoreError> {
        if self.host.is_none() {
            self.host = Some(self.db.host.begin().await.map_err(map_error)?);
        }
        self.host
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the host's transaction is gone".to_string()))
    }

    /// Where a statement of the plugin API goes: the current plugin
    /// session, or the host's transaction outside any plugin.
    async fn target(
        &mut self,
    ) -> Result<
        (
            &mut sqlx::Transaction<'static, Postgres>,
            Option<(Arc<str>, u64)>,
        ),
        StoreError,
    > {
        match self.current {
            Some(i) if self.in_plugin => {
                let s = &mut self.sessions[i];
                Ok((&mut s.tx, Some((s.role.clone(), s.timeout_ms))))
            }
            Some(i) => Ok((&mut self.sessions[i].tx, None)),
            None => Ok((self.host().await?, None)),
        }
    }
}

/// A guarded host call's connection: the plugin's session and the secret
/// the `switchyard_host` functions require as their first argument.
pub struct HostCall<'a> {
    /// The plugin's session, inside the event's transaction.
    pub conn: &'a mut sqlx::PgConnection,
    /// The host's secret (bind it; never format it into SQL).
    pub secret: Arc<str>,
    /// The plugin transaction's id (bind it after the secret).
    pub xid: &'a str,
}

/// `statement_timeout` of a plugin's migration.
const MIGRATION_TIMEOUT_MS: u64 = 300_000;

/// How long past a statement's `statement_timeout` the host waits before
/// it cancels the statement itself, and then how long for the cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Run a plugin's statement under the host's deadline: past its
/// `statement_timeout` plus a grace, the host cancels it on the server
/// (`pg_cancel_backend`) and waits a little for the session to answer; a
/// session that still does not is given up (the event's work is lost and
/// runs again).
async fn under_deadline<T>(
    db: &PgDb,
    deadline: Option<(Arc<str>, u64)>,
    lost: &mut bool,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let Some((role, timeout_ms)) = deadline else {
        return fut.await;
    };
    tokio::pin!(fut);
    let limit = Duration::from_millis(timeout_ms) + CANCEL_GRACE;
    if let Ok(result) = tokio::time::timeout(limit, &mut fut).await {
        return result;
    }
    match db.cancel_overdue(&role, timeout_ms).await {
        Ok(n) => {
            tracing::warn!(%role, cancelled = n, timeout_ms, "a plugin statement outlived its statement_timeout; cancelled it on the server")
        }
        Err(e) => tracing::warn!(%role, error = %e, "cannot cancel an overdue plugin statement"),
    }
    match tokio::time::timeout(CANCEL_WAIT, &mut fut).await {
        Ok(Err(StoreError::Limit(m))) => Err(StoreError::Limit(m)),
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            *lost = true;
            Err(StoreError::Limit(format!(
                "statement stopped at the host's deadline ({timeout_ms} ms statement_timeout_ms)"
            )))
        }
    }
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
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
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
    ) -> Result<Rows, StoreError> {
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
    async fn after_error(&mut self, e: sqlx::Error) -> StoreError {
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

fn bind_pg<'q>(mut q: PgQuery<'q>, params: &[Value]) -> Result<PgQuery<'q>, StoreError> {
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

fn bind_sqlite<'q>(
    mut q: SqliteQuery<'q>,
    params: &[Value],
) -> Result<SqliteQuery<'q>, StoreError> {
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

fn parse_json(i: usize, s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Invalid(format!("parameter ${} is not valid JSON: {e}", i + 1)))
}

fn parse_uuid(i: usize, s: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(s)
        .map_err(|e| StoreError::Invalid(format!("parameter ${} is not a UUID: {e}", i + 1)))
}

fn parse_timestamp(i: usize, micros: i64) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        StoreError::Invalid(format!(
            "parameter ${} is out of the timestamp range: {micros} µs",
            i + 1
        ))
    })
}

fn parse_date(i: usize, s: &str) -> Result<chrono::NaiveDate, StoreError> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| {
        StoreError::Invalid(format!(
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
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.execute_with(sql, params, true).await
    }

    /// Run one statement of the host's own, outside any plugin session
    /// (PostgreSQL: the host's transaction; SQLite: outside the sandbox).
    pub async fn execute_host(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.as_host()?;
        match self {
            Tx::Postgres(t) => {
                let tx = t.host().await?;
                let q = bind_pg(sqlx::query(sql), params)?;
                q.execute(&mut **tx)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(map_error)
            }
            Tx::Sqlite(tx) => tx.execute(sql, params).await,
        }
    }

    /// Run one host query, with no caps on its result; as
    /// [`Tx::execute_host`].
    pub async fn query_host(&mut self, sql: &str, params: &[Value]) -> Result<Rows, StoreError> {
        self.as_host()?;
        let unlimited = Limits {
            max_rows: usize::MAX,
            max_result_bytes: usize::MAX,
            ..Limits::default()
        };
        match self {
            Tx::Postgres(t) => {
                let tx = t.host().await?;
                pg_query(tx, sql, params, &unlimited, false).await
            }
            Tx::Sqlite(tx) => tx.query(sql, params, &unlimited).await,
        }
    }

    /// The connection and secret for a guarded host call on behalf of
    /// `plugin` (markers, outbox rows): the plugin's session in this
    /// transaction, begun now if needed. `None` on SQLite, where the host
    /// writes its tables directly ([`Tx::execute_host`]).
    pub async fn host_call(&mut self, plugin: &str) -> Result<Option<HostCall<'_>>, StoreError> {
        self.as_host()?;
        let Tx::Postgres(t) = self else {
            return Ok(None);
        };
        let Some(secret) = t.db.secret() else {
            return Err(StoreError::Unavailable(
                "switchyard's host functions are not set up (a switchyard bug); the event runs again"
                    .to_string(),
            ));
        };
        let i = t.session(plugin, None).await?;
        let s = &mut t.sessions[i];
        Ok(Some(HostCall {
            conn: &mut s.tx,
            secret,
            xid: &s.xid,
        }))
    }

    /// Refuse a host statement inside a plugin's call (a bug; an
    /// outage-like error, so the event runs again rather than spending
    /// its attempts).
    fn as_host(&self) -> Result<(), StoreError> {
        if let Tx::Postgres(t) = self
            && t.in_plugin
        {
            return Err(StoreError::Unavailable(
                "a host statement inside a plugin's call (a switchyard bug); the event runs again"
                    .to_string(),
            ));
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
    ) -> Result<u64, StoreError> {
        match self {
            Tx::Postgres(t) => {
                let db = t.db.clone();
                let mut lost = t.lost;
                let (tx, deadline) = t.target().await?;
                let work = async {
                    if use_savepoint {
                        savepoint(tx).await?;
                    }
                    let result = match bind_pg(sqlx::query(sql), params) {
                        Ok(q) => q.execute(&mut **tx).await.map_err(map_error),
                        Err(e) => Err(e),
                    };
                    if use_savepoint {
                        finish_savepoint(tx, result.is_ok()).await?;
                    }
                    result.map(|r| r.rows_affected())
                };
                let result = under_deadline(&db, deadline, &mut lost, work).await;
                t.lost = lost;
                result
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
    ) -> Result<Rows, StoreError> {
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
    ) -> Result<Rows, StoreError> {
        match self {
            Tx::Postgres(t) => {
                let db = t.db.clone();
                let mut lost = t.lost;
                let (tx, deadline) = t.target().await?;
                let work = pg_query(tx, sql, params, limits, use_savepoint);
                let result = under_deadline(&db, deadline, &mut lost, work).await;
                t.lost = lost;
                result
            }
            Tx::Sqlite(tx) => tx.query(sql, params, limits).await,
        }
    }

    /// Run `sql` in `plugin`'s own session of this transaction (opened now
    /// if needed), outside its call: what the plugin itself would see,
    /// including its uncommitted work (`switchyard plugin test`'s
    /// snapshots). On SQLite, the one connection.
    pub async fn query_as_plugin(
        &mut self,
        plugin: &str,
        sql: &str,
        limits: &Limits,
    ) -> Result<Rows, StoreError> {
        match self {
            Tx::Postgres(t) => {
                let i = t.session(plugin, None).await?;
                pg_query(&mut t.sessions[i].tx, sql, &[], limits, true).await
            }
            Tx::Sqlite(tx) => tx.query(sql, &[], limits).await,
        }
    }

    /// Enter a plugin's call.
    ///
    /// On PostgreSQL: its statements go to its own session (logged in as
    /// its role), begun with `timeout_ms` as `statement_timeout`, which the
    /// plugin cannot change (the SQL gate refuses `SET` and `set_config`,
    /// and the host cancels a statement that outlives it anyway).
    ///
    /// On SQLite, which has no roles: restrict the connection to `tables`
    /// and each statement to `timeout_ms` (see [`crate::sqlite_sandbox`]).
    pub async fn enter_plugin(&mut self, access: &PluginAccess<'_>) -> Result<(), StoreError> {
        let timeout_ms = access.timeout_ms;
        match self {
            Tx::Postgres(t) => {
                let i = t.session(access.plugin, Some(timeout_ms)).await?;
                let s = &mut t.sessions[i];
                if s.timeout_ms != timeout_ms {
                    sqlx::query("SELECT pg_catalog.set_config('statement_timeout', $1, true)")
                        .bind(timeout_ms.to_string())
                        .persistent(false)
                        .execute(&mut *s.tx)
                        .await
                        .map_err(map_error)?;
                    s.timeout_ms = timeout_ms;
                }
                t.current = Some(i);
                t.in_plugin = true;
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

    /// Leave a plugin's call: the host's statements that follow (markers,
    /// outbox) go through guarded calls (PostgreSQL) or run outside the
    /// sandbox (SQLite).
    pub async fn leave_plugin(&mut self, _role: Option<&str>) -> Result<(), StoreError> {
        match self {
            Tx::Postgres(t) => {
                t.in_plugin = false;
                Ok(())
            }
            Tx::Sqlite(tx) => {
                tx.scope = None;
                Ok(())
            }
        }
    }

    /// Whether the event's work so far is gone and must not commit: SQLite
    /// rolled the transaction back on its own (a write interrupted at its
    /// statement timeout), or a PostgreSQL statement had to be cancelled
    /// at the host's deadline.
    pub fn lost(&self) -> bool {
        match self {
            Tx::Sqlite(t) => t.lost,
            Tx::Postgres(t) => t.lost,
        }
    }

    /// Commit the event's work: every plugin session's transaction, then
    /// the host's.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(t) => {
                if t.lost {
                    return Err(sqlx::Error::Protocol(
                        "a statement was cancelled at the host's deadline; the event's work is not committed"
                            .to_string(),
                    ));
                }
                for s in t.sessions {
                    s.tx.commit().await?;
                }
                if let Some(host) = t.host {
                    host.commit().await?;
                }
                Ok(())
            }
            Tx::Sqlite(SqliteTx { scope, tx, .. }) => {
                drop(scope);
                tx.commit().await
            }
        }
    }

    /// Roll the event's work back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(t) => {
                let mut first = Ok(());
                for s in t.sessions {
                    let r = s.tx.rollback().await;
                    if first.is_ok() {
                        first = r;
                    }
                }
                if let Some(host) = t.host {
                    let r = host.rollback().await;
                    if first.is_ok() {
                        first = r;
                    }
                }
                first
            }
            Tx::Sqlite(SqliteTx { scope, tx, .. }) => {
                drop(scope);
                tx.rollback().await
            }
        }
    }
}

/// A PostgreSQL query on `tx`, rows collected under `limits`.
async fn pg_query(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    sql: &str,
    params: &[Value],
    limits: &Limits,
    use_savepoint: bool,
) -> Result<Rows, StoreError> {
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
) -> Result<SqliteQuery<'q>, StoreError> {
    let q = bind_sqlite(sqlx::query(sql), params)?;
    Ok(match scope {
        Some(scope) => {
            scope.start_statement();
            q.persistent(false)
        }
        None => q,
    })
}

fn sqlite_error(scope: &Option<crate::sqlite_sandbox::Scope>, e: sqlx::Error) -> StoreError {
    match scope {
        Some(scope) => scope.explain(e),
        None => map_error(e),
    }
}

async fn savepoint(tx: &mut sqlx::Transaction<'static, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SAVEPOINT switchyard_stmt")
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(map_error)
}

async fn finish_savepoint(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    ok: bool,
) -> Result<(), StoreError> {
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

    fn admit(&mut self, names: impl FnOnce() -> Vec<String>) -> Result<(), StoreError> {
        if self.rows.len() >= self.limits.max_rows {
            return Err(StoreError::Limit(format!(
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
    fn spend(&mut self, len: usize) -> Result<(), StoreError> {
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > self.limits.max_result_bytes {
            return Err(StoreError::Limit(format!(
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
        mut cell: impl FnMut(usize, &mut Self) -> Result<Value, StoreError>,
    ) -> Result<(), StoreError> {
        let mut cells = Vec::with_capacity(width);
        for i in 0..width {
            let value = cell(i, self)?;
            cells.push(value);
        }
        self.rows.push(cells);
        Ok(())
    }

    fn push_pg(&mut self, row: &PgRow) -> Result<(), StoreError> {
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

    fn push_sqlite(&mut self, row: &SqliteRow) -> Result<(), StoreError> {
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

fn decode_err(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("cannot read column {column}: {e}"))
}

fn pg_cell(row: &PgRow, i: usize) -> Result<Value, StoreError> {
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
            return Err(StoreError::Invalid(format!(
                "column {name} has type {other}, which plugins cannot read yet: cast it in the query, e.g. {name}::text or {name}::float8"
            )));
        }
    })
}

fn sqlite_cell(row: &SqliteRow, i: usize) -> Result<Value, StoreError> {
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
    ///
    /// On PostgreSQL each migration runs in a session logged in as the
    /// plugin's own role (which is set up first), so what it creates is
    /// the plugin's, and it can do nothing the plugin could not; the record
    /// commits in the same transaction through a guarded host function.
    /// On SQLite the tables a migration created are read from the schema
    /// before and after it and recorded as the plugin's.
    pub async fn migrate(
        &self,
        plugin: &str,
        migrations: &[MigrationSql],
    ) -> Result<Vec<String>, SetupError> {
        let mut applied_now = Vec::new();
        // Tables of the earlier layout become the plugin's first: its new
        // migrations may change them. On PostgreSQL also before the role
        // is provisioned, which takes back the grants of the earlier
        // layout that the upgrade reads as evidence.
        self.adopt_tables(plugin, migrations).await?;
        if let Database::Postgres(pg) = self {
            let identity = pg.provision(plugin).await.map_err(SetupError::Identity)?;
            for m in migrations {
                let checksum = switchyard_core::identity::short_hash(m.postgres.as_bytes());
                if self.already_applied(plugin, m, &checksum).await? {
                    continue;
                }
                refuse_migration(plugin, m, &m.postgres, Backend::Postgres)?;
                if self.migrate_as_plugin(pg, &identity, m, &checksum).await? {
                    applied_now.push(m.id.clone());
                }
            }
            return Ok(applied_now);
        }
        let Database::Sqlite(pool, _) = self else {
            return Ok(applied_now);
        };
        for m in migrations {
            let checksum = switchyard_core::identity::short_hash(m.sqlite.as_bytes());
            if self.already_applied(plugin, m, &checksum).await? {
                continue;
            }
            refuse_migration(plugin, m, &m.sqlite, Backend::Sqlite)?;
            let failed = |source| SetupError::Migration {
                plugin: plugin.to_string(),
                id: m.id.clone(),
                source,
            };
            let mut tx = pool.begin().await.map_err(failed)?;
            let before = sqlite_tables(&mut tx).await.map_err(failed)?;
            let own: Vec<String> = sqlx::query_scalar(
                "SELECT lower(table_name) FROM switchyard_plugin_tables WHERE plugin = $1",
            )
            .bind(plugin)
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
            // The migration runs under the authorizer's migration scope:
            // it may create and change its own tables only (SQLite's
            // stand-in for running as the plugin's role).
            let scope = crate::sqlite_sandbox::MigrationScope::enter(
                &mut tx,
                plugin.into(),
                own.into(),
                before.clone().into(),
            )
            .await
            .map_err(failed)?;
            // A `&str` runs unprepared and uncached: every statement is
            // compiled now, under the scope's authorizer.
            let ran = {
                use sqlx::Executor;
                tx.execute(m.sqlite.as_str()).await
            };
            let denial = scope.denial();
            drop(scope);
            if let Err(e) = ran {
                return Err(match denial {
                    Some(reason) => SetupError::Refused {
                        plugin: plugin.to_string(),
                        id: m.id.clone(),
                        reason,
                    },
                    None => failed(e),
                });
            }
            let after = sqlite_tables(&mut tx).await.map_err(failed)?;
            for table in after.iter().filter(|t| !before.contains(t)) {
                if table.starts_with("switchyard_") {
                    return Err(SetupError::Refused {
                        plugin: plugin.to_string(),
                        id: m.id.clone(),
                        reason: format!("it creates {table}: switchyard_* names are the host's"),
                    });
                }
                sqlx::query(
                    "INSERT INTO switchyard_plugin_tables (plugin, table_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(plugin)
                .bind(table)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            }
            sqlx::query("INSERT INTO switchyard_migrations (plugin, id, checksum, applied_at, runs_as_plugin) VALUES ($1, $2, $3, $4, 1)")
                .bind(plugin).bind(&m.id).bind(&checksum).bind(chrono::Utc::now().to_rfc3339())
                .execute(&mut *tx).await.map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            applied_now.push(m.id.clone());
        }
        if !applied_now.is_empty() {
            self.refresh_schema().await?;
        }
        Ok(applied_now)
    }

    /// Whether `m` is applied already with this checksum; an error if it
    /// was applied with another.
    async fn already_applied(
        &self,
        plugin: &str,
        m: &MigrationSql,
        checksum: &str,
    ) -> Result<bool, SetupError> {
        match self.migration_checksum(plugin, &m.id).await? {
            Some(applied) if applied == checksum => Ok(true),
            Some(applied) => Err(SetupError::MigrationChanged {
                plugin: plugin.to_string(),
                id: m.id.clone(),
                applied,
                now: checksum.to_string(),
            }),
            None => Ok(false),
        }
    }

    /// One PostgreSQL migration in the plugin's own session. The plugin's
    /// role may create objects in the service schema only while its
    /// migration runs. Returns `false` if another router applied it
    /// meanwhile.
    async fn migrate_as_plugin(
        &self,
        pg: &PgDb,
        identity: &crate::pg_identity::PluginDb,
        m: &MigrationSql,
        checksum: &str,
    ) -> Result<bool, SetupError> {
        use sqlx::Executor;
        let failed = |source| SetupError::Migration {
            plugin: identity.plugin.to_string(),
            id: m.id.clone(),
            source,
        };
        let secret = pg.secret().ok_or_else(|| {
            failed(sqlx::Error::Protocol(
                "switchyard's host functions are not set up".to_string(),
            ))
        })?;
        // The plugin creates in its own schema only (the first of its
        // search_path); migration_done refuses anything but tables and
        // their kin and moves the tables to the service schema.
        let PluginTxOpened { mut tx, xid, .. } =
            open_plugin_tx(&identity.pool, MIGRATION_TIMEOUT_MS)
                .await
                .map_err(failed)?;
        let recorded: Option<String> = sqlx::query_scalar(&format!(
            "SELECT {}.migration_begin($1, $2, $3, $4)",
            crate::pg_identity::HOST_SCHEMA
        ))
        .bind(&*secret)
        .bind(&xid)
        .bind(&*identity.plugin)
        .bind(&m.id)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        if recorded.is_some() {
            tx.rollback().await.map_err(failed)?;
            return Ok(false);
        }
        // The script is several statements: the simple protocol, under a
        // deadline of the host's (a statement_timeout the script lifted
        // does not keep start-up or a reload waiting).
        let mut lost = false;
        let ran = under_deadline(
            pg,
            Some((identity.role.as_str().into(), MIGRATION_TIMEOUT_MS)),
            &mut lost,
            async { tx.execute(m.postgres.as_str()).await.map_err(map_error) },
        )
        .await;
        if let Err(e) = ran {
            let _ = tx.rollback().await;
            return Err(SetupError::Refused {
                plugin: identity.plugin.to_string(),
                id: m.id.clone(),
                reason: e.to_string(),
            });
        }
        sqlx::query(&format!(
            "SELECT {}.migration_done($1, $2, $3, $4, $5)",
            crate::pg_identity::HOST_SCHEMA
        ))
        .bind(&*secret)
        .bind(&xid)
        .bind(&*identity.plugin)
        .bind(&m.id)
        .bind(checksum)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }

    /// The plugin's database identity once its migrations are applied:
    /// its role (PostgreSQL) and the tables it may use, read from the
    /// catalog — what its role owns (PostgreSQL), what its migrations
    /// created (SQLite; tables of an earlier layout were handed over by
    /// [`Database::migrate`]). On PostgreSQL its transactions will open
    /// with `statement_timeout_ms`.
    pub async fn plugin_identity(
        &self,
        plugin: &str,
        statement_timeout_ms: u64,
    ) -> Result<(Option<String>, Arc<[String]>), SetupError> {
        match self {
            Database::Postgres(pg) => {
                let identity = pg.provision(plugin).await.map_err(SetupError::Identity)?;
                pg.set_statement_timeout(plugin, statement_timeout_ms);
                let tables = pg.owned_tables(&identity.role).await?;
                Ok((Some(identity.role), tables.into()))
            }
            Database::Sqlite(pool, _) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT lower(table_name) FROM switchyard_plugin_tables WHERE plugin = $1 ORDER BY 1",
                )
                .bind(plugin)
                .fetch_all(pool)
                .await?;
                Ok((None, tables.into()))
            }
        }
    }

    /// Upgrade from the layout before plugin identities, where the host
    /// ran migrations and kept their tables: for the plugin's migrations
    /// recorded then (`runs_as_plugin` false), the tables their
    /// `CREATE TABLE` statements name become the plugin's — on PostgreSQL
    /// by ownership, only tables the host's user still owns; on SQLite in
    /// `switchyard_plugin_tables`, only tables no plugin has — and the
    /// migrations are marked done. This is the one place a migration's
    /// text decides anything, and only for migrations applied before the
    /// upgrade: a new plugin's migration cannot claim a table this way.
    async fn adopt_tables(
        &self,
        plugin: &str,
        migrations: &[MigrationSql],
    ) -> Result<(), SetupError> {
        let old: Vec<String> =
            match self {
                Database::Postgres(pg) => sqlx::query_scalar(
                    "SELECT id FROM switchyard_migrations WHERE plugin = $1 AND NOT runs_as_plugin",
                )
                .bind(plugin)
                .fetch_all(&pg.host)
                .await?,
                Database::Sqlite(pool, _) => sqlx::query_scalar(
                    "SELECT id FROM switchyard_migrations WHERE plugin = $1 AND NOT runs_as_plugin",
                )
                .bind(plugin)
                .fetch_all(pool)
                .await?,
            };
        if old.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = Vec::new();
        for m in migrations.iter().filter(|m| old.contains(&m.id)) {
            let script = match self.backend() {
                Backend::Postgres => &m.postgres,
                Backend::Sqlite => &m.sqlite,
            };
            // The engine's own parser reads the text (PostgreSQL), or the
            // lexer (SQLite): names in comments and strings do not count.
            let created = crate::sql_gate::check_migration(script, self.backend())
                .map(|summary| summary.tables_created)
                .unwrap_or_default();
            for t in created {
                let t = t.to_lowercase();
                if !t.starts_with("switchyard_") && !names.contains(&t) {
                    names.push(t);
                }
            }
        }
        match self {
            Database::Postgres(pg) => {
                use sqlx::Executor;
                let role_name = plugin_role(plugin);
                let mut tx = pg.setup_tx().await?;
                // Evidence from the catalog as well as the text: the table
                // is the host's, the plugin's role of then was granted it,
                // and no other plugin role was (a table granted to two is
                // left to the operator).
                let mine: Vec<String> = sqlx::query_scalar(
                    "SELECT pg_catalog.format('%I.%I'::text, n.nspname::text, c.relname::text) FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p') AND n.nspname = $1::text
                        AND pg_catalog.lower(c.relname::text) = ANY($2::text[])
                        AND c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
                        AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a
                                     WHERE a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $3::text))
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a
                                          JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                                         WHERE r.rolname LIKE 'switchyard\\_plugin\\_%' AND r.rolname <> $3::text)",
                )
                .bind(pg.app_schema())
                .bind(&names)
                .bind(&role_name)
                .fetch_all(&mut *tx)
                .await?;
                // A new owner needs CREATE on the schema; granted and
                // taken back inside this transaction, so no session of
                // the plugin ever holds it.
                let role = crate::pg_identity::quote_ident(&role_name);
                let schema = crate::pg_identity::quote_ident(&pg.app_schema());
                if !mine.is_empty() {
                    tx.execute(format!("GRANT CREATE ON SCHEMA {schema} TO {role}").as_str())
                        .await?;
                    for table in &mine {
                        tx.execute(format!("ALTER TABLE {table} OWNER TO {role}").as_str())
                            .await?;
                    }
                    tx.execute(format!("REVOKE CREATE ON SCHEMA {schema} FROM {role}").as_str())
                        .await?;
                }
                sqlx::query("UPDATE switchyard_migrations SET runs_as_plugin = true WHERE plugin = $1 AND id = ANY($2)")
                    .bind(plugin)
                    .bind(&old)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                if mine.len() < names.len() {
                    tracing::warn!(plugin, role = %role_name, adopted = ?mine, named = ?names, "upgrade: some tables its earlier migrations created were not handed over (not the host's, not granted to it, or granted to another plugin too); give them to the plugin with ALTER TABLE ... OWNER TO {role_name} if they are its own");
                } else if !mine.is_empty() {
                    tracing::info!(plugin, role = %role_name, tables = ?mine, "tables of the earlier layout handed over to the plugin's role");
                }
            }
            Database::Sqlite(pool, _) => {
                let mut tx = pool.begin().await?;
                let existing = sqlite_tables(&mut tx).await?;
                for t in names.iter().filter(|t| existing.contains(t)) {
                    sqlx::query(
                        "INSERT INTO switchyard_plugin_tables (plugin, table_name) SELECT $1, $2 \
                         WHERE NOT EXISTS (SELECT 1 FROM switchyard_plugin_tables WHERE lower(table_name) = $2)",
                    )
                    .bind(plugin)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                }
                for id in &old {
                    sqlx::query("UPDATE switchyard_migrations SET runs_as_plugin = 1 WHERE plugin = $1 AND id = $2")
                        .bind(plugin)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn migration_checksum(
        &self,
        plugin: &str,
        id: &str,
    ) -> Result<Option<String>, SetupError> {
        let sql = "SELECT checksum FROM switchyard_migrations WHERE plugin = $1 AND id = $2";
        Ok(match self {
            Database::Postgres(pg) => {
                sqlx::query_scalar(sql)
                    .bind(plugin)
                    .bind(id)
                    .fetch_optional(&pg.host)
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

/// Refuse a migration the gate does not allow (PostgreSQL: anything but the
/// plugin's own tables, indexes, sequences and enum types and seed rows),
/// naming the construct.
fn refuse_migration(
    plugin: &str,
    m: &MigrationSql,
    script: &str,
    backend: Backend,
) -> Result<(), SetupError> {
    crate::sql_gate::check_migration(script, backend)
        .map(|_| ())
        .map_err(|e| SetupError::Refused {
            plugin: plugin.to_string(),
            id: m.id.clone(),
            reason: e.to_string(),
        })
}

/// The lowercased names of a SQLite schema's tables and views.
async fn sqlite_tables(conn: &mut sqlx::SqliteConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT lower(name) FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(conn)
    .await
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
        let created = crate::sql_gate::check_migration(sql, Backend::Sqlite)
            .map(|m| m.tables_created)
            .unwrap_or_default();
        assert_eq!(created, vec!["customers", "customer_users", "quoted"]);
        assert_eq!(
            plugin_role("role-mapping"),
            "switchyard_plugin_role_mapping"
        );
    }

    /// SQLSTATEs that are all digits are not SQLite codes: a denied grant,
    /// a statement timeout and a syntax error on PostgreSQL are the
    /// statement's fault, never an outage that would stall the partition.
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
            Err(StoreError::Constraint(crate::store_error::Violation {
                kind: crate::store_error::ConstraintKind::Unique,
                ..
            }))
        ));
        let limits = Limits {
            max_rows: 2,
            ..Limits::default()
        };
        let capped = tx.query("SELECT k FROM u", &[], &limits).await;
        assert!(matches!(capped, Err(StoreError::Limit(m)) if m.contains("more than 2 rows")));
        Ok(())
    }
}
