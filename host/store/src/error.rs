//! The store's errors: what a statement's failure means to the caller
//! (denied, invalid, a constraint, a limit, or the database unavailable —
//! an outage), classified from the driver's error and the database's own
//! codes. The `db` capability maps them to the WIT error the plugin sees;
//! the router reads an outage from them.

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

/// Which kind of constraint a statement violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// `UNIQUE` or `PRIMARY KEY`.
    Unique,
    /// `FOREIGN KEY`.
    ForeignKey,
    /// `NOT NULL`.
    NotNull,
    /// `CHECK`.
    Check,
}

impl ConstraintKind {
    /// As the WIT names it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintKind::Unique => "unique",
            ConstraintKind::ForeignKey => "foreign-key",
            ConstraintKind::NotNull => "not-null",
            ConstraintKind::Check => "check",
        }
    }
}

/// A violated constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which kind.
    pub kind: ConstraintKind,
    /// Its name, when the database reports it.
    pub name: Option<String>,
    /// The database's message.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} constraint {} violated: {}",
            self.kind.as_str(),
            self.name.as_deref().unwrap_or("(unnamed)"),
            self.message
        )
    }
}

/// Why a statement failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Not allowed here: a grant, the gate, the authorizer.
    #[error("denied: {0}")]
    Denied(String),
    /// Malformed, or a parameter does not fit.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A constraint was violated.
    #[error("{0}")]
    Constraint(Violation),
    /// A host limit: text size, rows, bytes, statement timeout.
    #[error("limit: {0}")]
    Limit(String),
    /// The database is unreachable or failed for a reason that may pass.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether this is an outage (the router waits it out).
    pub fn is_outage(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Map a driver error to the store's error.
pub fn map_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => {
            let message = db.message().to_string();
            let name = db.constraint().map(str::to_string);
            let constraint = |kind| {
                StoreError::Constraint(Violation {
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
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Invalid(other.to_string()),
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
fn classify_sqlite(code: &str, message: String) -> StoreError {
    let Ok(n) = code.parse::<u32>() else {
        return StoreError::Invalid(message);
    };
    match n & 0xff {
        // SQLITE_ERROR, SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_RANGE
        1 | 19 | 20 | 25 => StoreError::Invalid(message),
        // SQLITE_TOOBIG
        18 => StoreError::Limit(message),
        // SQLITE_AUTH: the authorizer refused
        23 => StoreError::Denied(message),
        _ => StoreError::Unavailable(format!("{message} (SQLite code {n})")),
    }
}

/// Classify a PostgreSQL SQLSTATE, with the same rule as
/// [`classify_sqlite`]: a read-only database after a failover, a
/// serialization failure or an admin shutdown is `unavailable`. SQLSTATEs
/// can be all digits (`42501`), so the backend, not the code's shape,
/// decides which table applies.
fn classify_sqlstate(code: &str, message: String) -> StoreError {
    match code {
        // insufficient_privilege: the database enforced a grant.
        "42501" => StoreError::Denied(message),
        // query_canceled: statement_timeout (or an administrator).
        "57014" => StoreError::Limit(format!("statement timeout or cancelled: {message}")),
        // program_limit_exceeded (a value or statement too large): the
        // statement's doing, e.g. repeat('x', 2000000000).
        c if c.starts_with("54") => StoreError::Limit(format!("{message} (SQLSTATE {code})")),
        c if ["42", "22", "23", "21", "0A", "44", "P0", "2B", "2F", "39"]
            .iter()
            .any(|class| c.starts_with(class)) =>
        {
            StoreError::Invalid(format!("{message} (SQLSTATE {code})"))
        }
        "" => StoreError::Invalid(message),
        _ => StoreError::Unavailable(format!("{message} (SQLSTATE {code})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_backend_with_its_own_table() {
        let kind = |e: StoreError| match e {
            StoreError::Denied(_) => "denied",
            StoreError::Invalid(_) => "invalid",
            StoreError::Limit(_) => "limit",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Constraint(_) => "constraint",
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
}
