//! A SQLite event transaction, under the plugin sandbox while one of a
//! plugin's calls is in progress.

use super::values::{Collector, SqliteQuery, bind_sqlite};
use super::*;

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
