//! The service database: PostgreSQL or SQLite, chosen by URL.
//!
//! Every event runs inside one [`Tx`]; the `db` capability executes the
//! plugin's statements on it and the caller commits or rolls back from the
//! outcome. Values cross the boundary as the WIT `value` variant and are
//! bound as native types, so `$1` can be a `uuid`, a `date` or a
//! `timestamptz` on PostgreSQL without casts in the plugin's SQL.

pub use crate::error::{StoreError, map_error};
use crate::pg_identity::PgDb;
pub use crate::pg_identity::plugin_role;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgTypeInfo};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Postgres, Row, Sqlite, TypeInfo, ValueRef};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::limits::Limits;
use switchyard_wit::switchyard::plugin::db::{Rows, Value};

pub use crate::error::Backend;

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

mod migrations;
mod pg_tx;
mod sqlite_tx;
mod tx;
mod values;

pub use migrations::MigrationSql;
pub use pg_tx::{HostCall, PgTx};
pub use sqlite_tx::SqliteTx;
pub use tx::{PluginAccess, Tx};
pub use values::value_size;

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
            Err(StoreError::Constraint(crate::error::Violation {
                kind: crate::error::ConstraintKind::Unique,
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
