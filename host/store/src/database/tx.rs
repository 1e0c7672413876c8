//! One event's transaction: on PostgreSQL one transaction per plugin
//! session it touches plus the host's own, on SQLite one transaction under
//! the plugin sandbox; the statements plugins and the host run in it.

use super::values::{SqliteQuery, bind_pg, bind_sqlite, decode_err, pg_cell, sqlite_cell};
use super::*;

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

/// A SQLite transaction, with the plugin sandbox while one of its calls is
/// in progress.
#[derive(Debug)]
pub struct SqliteTx {
    // Declared before the transaction so that it drops first: a dropped
    // transaction queues its ROLLBACK, which the sandbox would refuse.
    pub(crate) scope: Option<crate::sqlite_sandbox::Scope>,
    pub(crate) tx: sqlx::Transaction<'static, Sqlite>,
    /// SQLite rolled the transaction back on its own (an interrupted or
    /// failed write does that); everything before it is gone.
    pub(crate) lost: bool,
    /// The schema's tables when the transaction began.
    pub(crate) schema_tables: Arc<[String]>,
}

impl SqliteTx {
    pub(crate) async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let q = sqlite_statement(sql, params, &mut self.scope)?;
        match q.execute(&mut *self.tx).await {
            Ok(r) => Ok(r.rows_affected()),
            Err(e) => Err(self.after_error(e).await),
        }
    }

    pub(crate) async fn query(
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
    pub(crate) async fn after_error(&mut self, e: sqlx::Error) -> StoreError {
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

    /// Run one query of the host's own tables, its rows read as `T` (a
    /// tuple or a `sqlx::FromRow` struct): typed, and with no plugin caps
    /// on its result; as [`Tx::execute_host`].
    pub async fn query_host_as<T>(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<T>, StoreError>
    where
        T: Send + Unpin + for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow>,
    {
        self.as_host()?;
        let rows = match self {
            Tx::Postgres(t) => {
                let tx = t.host().await?;
                let q = bind_pg(sqlx::query(sql), params)?;
                let rows = q.fetch_all(&mut **tx).await.map_err(map_error)?;
                rows.iter().map(T::from_row).collect::<Result<Vec<T>, _>>()
            }
            Tx::Sqlite(tx) => {
                let q = sqlite_statement(sql, params, &mut tx.scope)?;
                let rows = match q.fetch_all(&mut *tx.tx).await {
                    Ok(rows) => rows,
                    Err(e) => return Err(tx.after_error(e).await),
                };
                rows.iter().map(T::from_row).collect::<Result<Vec<T>, _>>()
            }
        };
        rows.map_err(|e| StoreError::Invalid(format!("a row of the host's own tables: {e}")))
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
    pub(crate) fn as_host(&self) -> Result<(), StoreError> {
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
pub(crate) fn sqlite_statement<'q>(
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

pub(crate) fn sqlite_error(
    scope: &Option<crate::sqlite_sandbox::Scope>,
    e: sqlx::Error,
) -> StoreError {
    match scope {
        Some(scope) => scope.explain(e),
        None => map_error(e),
    }
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

/// Accumulates result rows under the host's caps.
pub(crate) struct Collector<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) rows: Vec<Vec<Value>>,
    pub(crate) bytes: usize,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            columns: None,
            rows: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn admit(&mut self, names: impl FnOnce() -> Vec<String>) -> Result<(), StoreError> {
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
    pub(crate) fn spend(&mut self, len: usize) -> Result<(), StoreError> {
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
    pub(crate) fn push_row(
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

    pub(crate) fn push_pg(&mut self, row: &PgRow) -> Result<(), StoreError> {
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

    pub(crate) fn push_sqlite(&mut self, row: &SqliteRow) -> Result<(), StoreError> {
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

    pub(crate) fn finish(self) -> Rows {
        Rows {
            columns: self.columns.unwrap_or_default(),
            rows: self.rows,
        }
    }
}
