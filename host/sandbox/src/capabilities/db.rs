//! The `db` capability: one DML statement per call, on the event's
//! transaction, with typed parameters and rows.
//!
//! Guest mistakes (a denied statement, bad SQL, a constraint, a cap) come
//! back as the WIT `error` and never trap. Calling `db` outside an event
//! (from `describe`) is an `unavailable` error.

use super::HostState;
use switchyard_store::database::{Backend, Tx, value_size};
use switchyard_store::error::{ConstraintKind, StoreError};
use switchyard_store::sql_gate;
use switchyard_wit::switchyard::plugin::db::{self, Error, Rows, Value};

/// Per-instance `db` state.
#[derive(Debug, Default)]
pub struct DbState {
    /// The event's transaction, present only during `handle`.
    pub tx: Option<Tx>,
    /// Statements run during the current call (recorded only when asked).
    pub statements: Vec<StatementRecord>,
    /// Statements run during the current call (always counted).
    pub count: usize,
    /// Whether a statement of the current call found the database
    /// unavailable: the router then treats a `retry` or a failure as an
    /// outage (pause and retry) rather than spend the event's attempts.
    pub unavailable: bool,
    /// Whether a statement of the current call failed in the database.
    pub failed: bool,
    /// Run each statement under a savepoint (PostgreSQL), so that a failed
    /// one leaves the transaction usable. Off inside the router's batches,
    /// which roll back and replay event by event when a statement fails.
    pub savepoints: bool,
    record: bool,
}

impl DbState {
    pub(crate) fn begin(&mut self, record: bool, savepoints: bool) {
        self.statements.clear();
        self.count = 0;
        self.unavailable = false;
        self.failed = false;
        self.savepoints = savepoints;
        self.record = record;
    }
}

/// One statement a plugin ran, for `switchyard plugin test` and debugging.
#[derive(Debug, Clone)]
pub struct StatementRecord {
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<Value>,
    /// What happened.
    pub result: StatementResult,
}

/// The result of one recorded statement.
#[derive(Debug, Clone)]
pub enum StatementResult {
    /// `execute`: rows changed.
    Changed(u64),
    /// `query`: rows returned (DML with `RETURNING` also changed them).
    Returned(usize),
    /// The error the plugin received.
    Failed(String),
}

impl HostState {
    /// Gate, cap and count a statement; `Err` is what the plugin receives.
    fn admit(&mut self, sql: &str, params: &[Value]) -> Result<(), Error> {
        let limits = &self.env.limits;
        if self.db.count >= limits.max_statements {
            return Err(Error::Limit(format!(
                "more than {} statements in one event",
                limits.max_statements
            )));
        }
        // The gate reads the SQL as the engine that will run it will.
        let backend = match &self.db.tx {
            Some(Tx::Postgres(..)) => Backend::Postgres,
            Some(Tx::Sqlite(_)) => Backend::Sqlite,
            None => return Err(no_transaction()),
        };
        sql_gate::check(sql, limits.max_sql_bytes, backend).map_err(|e| match e {
            sql_gate::GateError::TooLong { .. } => Error::Limit(e.to_string()),
            _ => Error::Denied(e.to_string()),
        })?;
        if params.len() > limits.max_params {
            return Err(Error::Limit(format!(
                "{} parameters, over the limit of {}",
                params.len(),
                limits.max_params
            )));
        }
        let bytes: usize = params.iter().map(value_size).sum();
        if bytes > limits.max_param_bytes {
            return Err(Error::Limit(format!(
                "parameters total {bytes} bytes, over the limit of {}",
                limits.max_param_bytes
            )));
        }
        self.db.count += 1;
        Ok(())
    }

    /// Account for a statement's result: note an unavailable database,
    /// and record it when the caller asked (the summary is built only
    /// then).
    fn finish<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        result: Result<T, Error>,
        summarize: impl FnOnce(&T) -> StatementResult,
    ) -> Result<T, Error> {
        self.db.unavailable |= matches!(result, Err(Error::Unavailable(_)));
        if self.db.record {
            let summary = match &result {
                Ok(v) => summarize(v),
                Err(e) => StatementResult::Failed(describe_error(e)),
            };
            self.db.statements.push(StatementRecord {
                sql: sql.to_string(),
                params: params.to_vec(),
                result: summary,
            });
        }
        result
    }

    /// After a statement that reached the database: its time there is not
    /// the plugin's (a slow database must not trap a plugin on its
    /// deadline), and a failure there matters to the router's batches.
    fn after_database<T>(&mut self, started: std::time::Instant, result: &Result<T, Error>) {
        self.deadline += started.elapsed();
        self.db.failed |= result.is_err();
    }
}

fn no_transaction() -> Error {
    Error::Unavailable(
        "no database transaction: db is only available while handling an event (not in describe)"
            .to_string(),
    )
}

impl db::Host for HostState {
    async fn execute(
        &mut self,
        sql: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let result = match self.admit(&sql, &params) {
            Err(e) => Err(e),
            Ok(()) => match self.db.tx.as_mut() {
                None => Err(no_transaction()),
                Some(tx) => {
                    let started = std::time::Instant::now();
                    let r = tx
                        .execute_with(&sql, &params, self.db.savepoints)
                        .await
                        .map_err(to_wit);
                    self.after_database(started, &r);
                    r
                }
            },
        };
        Ok(self.finish(&sql, &params, result, |n| StatementResult::Changed(*n)))
    }

    async fn query(
        &mut self,
        sql: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let result = match self.admit(&sql, &params) {
            Err(e) => Err(e),
            Ok(()) => {
                let env = self.env.clone();
                match self.db.tx.as_mut() {
                    None => Err(no_transaction()),
                    Some(tx) => {
                        let started = std::time::Instant::now();
                        let r = tx
                            .query_with(&sql, &params, &env.limits, self.db.savepoints)
                            .await
                            .map_err(to_wit);
                        self.after_database(started, &r);
                        r
                    }
                }
            }
        };
        Ok(self.finish(&sql, &params, result, |rows| {
            StatementResult::Returned(rows.rows.len())
        }))
    }
}

/// The WIT error the plugin receives for a store error.
pub fn to_wit(e: StoreError) -> Error {
    match e {
        StoreError::Denied(m) => Error::Denied(m),
        StoreError::Invalid(m) => Error::Invalid(m),
        StoreError::Constraint(v) => Error::Constraint(db::ConstraintViolation {
            kind: match v.kind {
                ConstraintKind::Unique => db::ConstraintKind::Unique,
                ConstraintKind::ForeignKey => db::ConstraintKind::ForeignKey,
                ConstraintKind::NotNull => db::ConstraintKind::NotNull,
                ConstraintKind::Check => db::ConstraintKind::Check,
            },
            name: v.name,
            message: v.message,
        }),
        StoreError::Limit(m) => Error::Limit(m),
        StoreError::Unavailable(m) => Error::Unavailable(m),
    }
}

/// One line describing a `db` error, for logs and reports.
pub fn describe_error(e: &Error) -> String {
    match e {
        Error::Denied(m) => format!("denied: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Constraint(c) => format!(
            "{:?} constraint {} violated: {}",
            c.kind,
            c.name.as_deref().unwrap_or("(unnamed)"),
            c.message
        ),
        Error::Limit(m) => format!("limit: {m}"),
        Error::Unavailable(m) => format!("unavailable: {m}"),
    }
}
