//! A PostgreSQL event transaction: one transaction per plugin session it
//! touches, opened clean and under the plugin's statement timeout, plus
//! the host's own; the guarded host calls; the deadline a migration or a
//! statement runs under.

use super::values::{Collector, bind_pg};
use super::*;

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
    pub(crate) db: Arc<PgDb>,
    pub(crate) host: Option<sqlx::Transaction<'static, Postgres>>,
    pub(crate) sessions: Vec<PgSession>,
    /// The session of the plugin whose call is in progress, or was last.
    pub(crate) current: Option<usize>,
    pub(crate) in_plugin: bool,
    /// A statement outlived the host's deadline and was cancelled: the
    /// session's state is unknown, its work must not commit.
    pub(crate) lost: bool,
}

/// One plugin's transaction in a [`PgTx`].
#[derive(Debug)]
pub(crate) struct PgSession {
    pub(crate) plugin: Arc<str>,
    pub(crate) role: Arc<str>,
    pub(crate) tx: sqlx::Transaction<'static, Postgres>,
    pub(crate) timeout_ms: u64,
    /// The transaction's id, for the guarded host calls.
    pub(crate) xid: String,
}

impl PgTx {
    pub(crate) fn new(db: Arc<PgDb>) -> Self {
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
    pub(crate) async fn session(
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
    pub(crate) async fn host(
        &mut self,
    ) -> Result<&mut sqlx::Transaction<'static, Postgres>, StoreError> {
        if self.host.is_none() {
            self.host = Some(self.db.host.begin().await.map_err(map_error)?);
        }
        self.host
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the host's transaction is gone".to_string()))
    }

    /// Where a statement of the plugin API goes: the current plugin
    /// session, or the host's transaction outside any plugin.
    pub(crate) async fn target(
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
pub(crate) const MIGRATION_TIMEOUT_MS: u64 = 300_000;

/// How long past a statement's `statement_timeout` the host waits before
/// it cancels the statement itself, and then how long for the cancel.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(2);
pub(crate) const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Run a plugin's statement under the host's deadline: past its
/// `statement_timeout` plus a grace, the host cancels it on the server
/// (`pg_cancel_backend`) and waits a little for the session to answer; a
/// session that still does not is given up (the event's work is lost and
/// runs again).
pub(crate) async fn under_deadline<T>(
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

/// A PostgreSQL query on `tx`, rows collected under `limits`.
pub(crate) async fn pg_query(
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
pub(crate) async fn savepoint(
    tx: &mut sqlx::Transaction<'static, Postgres>,
) -> Result<(), StoreError> {
    sqlx::query("SAVEPOINT switchyard_stmt")
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(map_error)
}

pub(crate) async fn finish_savepoint(
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
