//! One event's transaction, on either backend ([`super::pg_tx`],
//! [`super::sqlite_tx`]): the statements plugins and the host run in it,
//! entering and leaving a plugin's identity, commit and rollback.

use super::pg_tx::{finish_savepoint, pg_query, savepoint, under_deadline};
use super::sqlite_tx::sqlite_statement;
use super::values::bind_pg;
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
