//! # Switchyard plugin SDK
//!
//! Write a Switchyard plugin as one function from an event to an outcome.
//! The SDK generates the bindings of `wit/plugin.wit` once, and adds the
//! small helpers every plugin needs: typed JSON decoding of the event,
//! `db` calls with native Rust parameters and rows decoded into structs
//! ([`db::query_as`]), timestamps from RFC 3339 text or epoch values
//! ([`db::timestamp`], [`db::timestamp_millis`]), `publish::json`, the
//! plugin's settings read once per instance ([`config::Settings`]),
//! migrations ([`portable_migration`] when one text fits both backends),
//! and logging.
//!
//! ```no_run
//! use switchyard_plugin::{db, publish, Event, Flow, Outcome, PluginInfo};
//!
//! struct Counter;
//!
//! impl switchyard_plugin::Guest for Counter {
//!     fn describe() -> PluginInfo {
//!         switchyard_plugin::info("counter", env!("CARGO_PKG_VERSION"), vec![])
//!     }
//!     fn handle(ev: Event) -> Outcome {
//!         switchyard_plugin::run(|| {
//!             #[derive(serde::Deserialize)]
//!             struct Hit { page: String }
//!             let hit: Hit = ev.json()?;
//!             db::exec(
//!                 "INSERT INTO hits (page, n) VALUES ($1, 1)
//!                  ON CONFLICT (page) DO UPDATE SET n = hits.n + 1",
//!                 &[hit.page.as_str().into()],
//!             )?;
//!             publish::json("hits.counted", Some(&hit.page), &serde_json::json!({"page": hit.page}))?;
//!             Ok(Outcome::Done)
//!         })
//!     }
//! }
//!
//! switchyard_plugin::export_plugin!(Counter);
//! ```

/// The bindings of `wit/plugin.wit`, generated once for every plugin.
// The generated code is not ours to lint: wit-bindgen lowers one WIT
// function into many raw parameters.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "switchyard_plugin::bindings",
        generate_all,
    });
}

pub use bindings::switchyard::plugin::types::{Event, Header, Outcome};
pub use bindings::{Guest, Migration, PluginInfo, export_plugin};

use serde::de::DeserializeOwned;
use std::fmt::Display;

mod rows;
mod time;

pub use time::{
    MAX_TIMESTAMP_MICROS, MIN_TIMESTAMP_MICROS, now_micros, rfc3339_micros, rfc3339_text,
};

/// The result type of a plugin's body: `Err` carries an early outcome
/// (usually `rejected` or `retry`) so that `?` can end the handling.
pub type Flow<T> = Result<T, Outcome>;

/// Run a plugin body written with `?` and return its outcome.
///
/// Both `Ok` and `Err` carry an [`Outcome`]; `Err` is how `?` on a
/// [`DbError`], a [`PublishError`] or a decoding failure ends the event.
pub fn run(body: impl FnOnce() -> Flow<Outcome>) -> Outcome {
    match body() {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

/// `Outcome::Rejected` with a reason: the event is invalid and goes to the
/// dead-letter topic.
pub fn rejected(reason: impl Display) -> Outcome {
    Outcome::Rejected(reason.to_string())
}

/// `Outcome::Skipped` with a reason: nothing to do; commit and move on.
pub fn skipped(reason: impl Display) -> Outcome {
    Outcome::Skipped(reason.to_string())
}

/// `Outcome::Retry` with a reason: try the same event again later.
pub fn retry(reason: impl Display) -> Outcome {
    Outcome::Retry(reason.to_string())
}

/// Build the [`PluginInfo`] a plugin's `describe` returns.
pub fn info(name: &str, version: &str, migrations: Vec<Migration>) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        migrations,
    }
}

/// A schema migration with its PostgreSQL and SQLite variants.
pub fn migration(id: &str, postgres: &str, sqlite: &str) -> Migration {
    Migration {
        id: id.to_string(),
        postgres: postgres.to_string(),
        sqlite: sqlite.to_string(),
    }
}

/// A schema migration whose one text runs on both backends.
///
/// Most table definitions do: `TEXT`, `BIGINT`, `INTEGER`, `BOOLEAN`,
/// `DOUBLE PRECISION`, `TIMESTAMPTZ`, `DATE`, `PRIMARY KEY`, `NOT NULL`,
/// `DEFAULT`, `CHECK`, `REFERENCES` and `CREATE INDEX` mean the same on
/// both (SQLite takes any type name, and the host binds a `timestamp`
/// parameter as RFC 3339 text there). Write `id TEXT NOT NULL PRIMARY KEY`:
/// SQLite lets a non-integer primary key be NULL unless told. Use
/// [`migration`] when the backends need different text (`BYTEA` against
/// `BLOB`, `JSONB`, `uuid`, `bigserial`).
///
/// One exception today: on SQLite the host's migration sandbox refuses
/// `ALTER TABLE ... ADD COLUMN` with a `CHECK` (SQLite checks the rows
/// already there through `pragma_quick_check`, which the sandbox does not
/// let a migration read); put the `CHECK` in a `CREATE TABLE`.
///
/// ```
/// let m = switchyard_plugin::portable_migration(
///     "0001-create-notes",
///     "CREATE TABLE IF NOT EXISTS notes (id TEXT NOT NULL PRIMARY KEY, at TIMESTAMPTZ NOT NULL)",
/// );
/// assert_eq!(m.postgres, m.sqlite);
/// ```
pub fn portable_migration(id: &str, sql: &str) -> Migration {
    migration(id, sql, sql)
}

impl Event {
    /// Decode the payload as JSON into `T`.
    ///
    /// Fails with a `rejected` outcome whose reason names the topic and
    /// what was wrong (not UTF-8, not JSON, a missing field, a wrong type),
    /// so `let req: Request = ev.json()?;` is all a plugin needs.
    pub fn json<T: DeserializeOwned>(&self) -> Flow<T> {
        if self.payload.is_empty() {
            return Err(rejected(format!(
                "{}: empty payload, expected a JSON document",
                self.topic
            )));
        }
        let text = std::str::from_utf8(&self.payload).map_err(|e| {
            rejected(format!(
                "{}: payload is not UTF-8 ({e}), expected a JSON document",
                self.topic
            ))
        })?;
        serde_json::from_str(text)
            .map_err(|e| rejected(format!("{}: invalid payload: {e}", self.topic)))
    }

    /// The first header with this name (case-sensitive, as Kafka headers
    /// are), as text. `None` when absent, null or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.value.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The record key as text, when present and UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// Ergonomic `db` calls with native Rust parameters.
pub mod db {
    use crate::bindings::switchyard::plugin::db as raw;
    pub use crate::bindings::switchyard::plugin::db::{
        ConstraintKind, ConstraintViolation, Error, Rows, Value,
    };
    use crate::time::{EpochUnit, epoch_micros};
    use serde::de::DeserializeOwned;

    /// Run one statement that returns no rows; returns the rows changed.
    pub fn exec(sql: &str, params: &[Value]) -> Result<u64, Error> {
        raw::execute(sql, params)
    }

    /// Run one statement and return all its rows.
    pub fn query(sql: &str, params: &[Value]) -> Result<Rows, Error> {
        raw::query(sql, params)
    }

    /// Run one statement and return its first row, if any, as a [`Row`].
    pub fn query_opt(sql: &str, params: &[Value]) -> Result<Option<Row>, Error> {
        let rows = raw::query(sql, params)?;
        let columns = rows.columns;
        Ok(rows.rows.into_iter().next().map(|cells| Row {
            columns: columns.clone(),
            cells,
        }))
    }

    /// Run one statement and decode each row into `T` with serde: a struct
    /// whose fields are the columns (by name; unknown columns are
    /// ignored), a map, a tuple of the cells in order, or, for a
    /// one-column result, that column's type (`i64`, `Option<String>`).
    ///
    /// One `T` reads the same rows on PostgreSQL and SQLite: timestamps
    /// arrive as RFC 3339 text (`2026-11-30T09:30:00.500+00:00`, see
    /// [`crate::rfc3339_text`]), a `bool` field takes SQLite's 0 and 1, a
    /// struct, map or `Vec` field takes a `json` column (text on SQLite),
    /// an enum of unit variants takes text naming one, bytes go to
    /// `Vec<u8>`, NULL to `None`.
    ///
    /// A row that does not fit is [`Error::Invalid`] naming the row, the
    /// column and why (`row 1 does not decode into Note: column n:
    /// invalid type: NULL, expected i64`): unhandled, `?` rejects the
    /// event with that reason.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), switchyard_plugin::db::Error> {
    /// use switchyard_plugin::db;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Note { id: String, note: String, at: String }
    ///
    /// let notes: Vec<Note> = db::query_as(
    ///     "SELECT id, note, at FROM notes WHERE item = $1 ORDER BY at",
    ///     &["item-1".into()],
    /// )?;
    /// let count: Option<i64> = db::query_one_as("SELECT count(*) FROM notes", &[])?;
    /// # Ok(()) }
    /// ```
    pub fn query_as<T: DeserializeOwned>(sql: &str, params: &[Value]) -> Result<Vec<T>, Error> {
        let rows = raw::query(sql, params)?;
        rows.rows
            .iter()
            .enumerate()
            .map(|(i, cells)| decode_cells(&rows.columns, cells, Some(i + 1)))
            .collect()
    }

    /// Like [`query_as`], for the first row only: `None` when there is
    /// none.
    pub fn query_one_as<T: DeserializeOwned>(
        sql: &str,
        params: &[Value],
    ) -> Result<Option<T>, Error> {
        let rows = raw::query(sql, params)?;
        rows.rows
            .first()
            .map(|cells| decode_cells(&rows.columns, cells, Some(1)))
            .transpose()
    }

    /// Decode one row's cells; a failure is [`Error::Invalid`] naming the
    /// row (its number in the result, when it came from a query), the
    /// column and why.
    fn decode_cells<T: DeserializeOwned>(
        columns: &[String],
        cells: &[Value],
        row: Option<usize>,
    ) -> Result<T, Error> {
        crate::rows::decode(columns, cells).map_err(|e| {
            let which = row.map_or_else(|| "the row".to_string(), |n| format!("row {n}"));
            Error::Invalid(format!(
                "{which} does not decode into {}: {e}",
                crate::rows::short_type_name::<T>()
            ))
        })
    }

    /// One result row with access to cells by column name.
    #[derive(Debug, Clone)]
    pub struct Row {
        /// Column names.
        pub columns: Vec<String>,
        /// Cells, in the order of `columns`.
        pub cells: Vec<Value>,
    }

    impl Row {
        /// The row decoded into `T` with serde, as [`query_as`] decodes
        /// each row.
        pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
            decode_cells(&self.columns, &self.cells, None)
        }

        /// The cell of column `name`, if the row has that column.
        pub fn get(&self, name: &str) -> Option<&Value> {
            let i = self.columns.iter().position(|c| c == name)?;
            self.cells.get(i)
        }

        /// The cell as text (text, uuid, date and json cells); `None` for
        /// NULL, other types or an unknown column.
        pub fn text(&self, name: &str) -> Option<String> {
            match self.get(name)? {
                Value::Text(s) | Value::Uuid(s) | Value::Date(s) | Value::Json(s) => {
                    Some(s.clone())
                }
                _ => None,
            }
        }

        /// The cell as an integer; `None` for NULL or other types.
        pub fn int(&self, name: &str) -> Option<i64> {
            match self.get(name)? {
                Value::Int(i) => Some(*i),
                Value::Boolean(b) => Some(i64::from(*b)),
                _ => None,
            }
        }

        /// The cell as a boolean (SQLite stores booleans as 0/1).
        pub fn boolean(&self, name: &str) -> Option<bool> {
            match self.get(name)? {
                Value::Boolean(b) => Some(*b),
                Value::Int(i) => Some(*i != 0),
                _ => None,
            }
        }
    }

    impl From<&str> for Value {
        fn from(v: &str) -> Self {
            Value::Text(v.to_string())
        }
    }
    impl From<String> for Value {
        fn from(v: String) -> Self {
            Value::Text(v)
        }
    }
    impl From<&String> for Value {
        fn from(v: &String) -> Self {
            Value::Text(v.clone())
        }
    }
    impl From<i64> for Value {
        fn from(v: i64) -> Self {
            Value::Int(v)
        }
    }
    impl From<i32> for Value {
        fn from(v: i32) -> Self {
            Value::Int(i64::from(v))
        }
    }
    impl From<bool> for Value {
        fn from(v: bool) -> Self {
            Value::Boolean(v)
        }
    }
    impl From<f64> for Value {
        fn from(v: f64) -> Self {
            Value::Float(v)
        }
    }
    impl<T: Into<Value>> From<Option<T>> for Value {
        fn from(v: Option<T>) -> Self {
            v.map_or(Value::Null, Into::into)
        }
    }

    /// The current time as a `timestamp` value (from the WASI wall clock).
    pub fn now() -> Value {
        Value::Timestamp(crate::now_micros())
    }

    /// An RFC 3339 instant (`2026-11-30T09:30:00Z`,
    /// `2026-11-30T12:30:00.250+03:00`) as a `timestamp` value, for a
    /// `timestamptz` column on PostgreSQL (text is refused there); `None`
    /// when `s` is no such instant.
    pub fn timestamp(s: &str) -> Option<Value> {
        crate::rfc3339_micros(s).map(Value::Timestamp)
    }

    /// Seconds since the Unix epoch (a Unix time) as a `timestamp` value;
    /// `None` outside 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, the
    /// range [`timestamp`] reads (so milliseconds passed by mistake are
    /// refused rather than stored 57 000 years from now).
    ///
    /// ```
    /// use switchyard_plugin::db::{self, Value};
    /// // 2026-11-30T09:30:00Z
    /// assert!(matches!(db::timestamp_secs(1_796_031_000), Some(Value::Timestamp(1_796_031_000_000_000))));
    /// // Milliseconds where seconds belong: refused.
    /// assert!(db::timestamp_secs(1_796_031_000_000).is_none());
    /// ```
    pub fn timestamp_secs(secs: i64) -> Option<Value> {
        epoch_micros(secs, EpochUnit::Seconds).map(Value::Timestamp)
    }

    /// Milliseconds since the Unix epoch (JavaScript's `Date.now()`, a
    /// Kafka record's timestamp) as a `timestamp` value; `None` outside
    /// the range of [`timestamp_secs`].
    pub fn timestamp_millis(millis: i64) -> Option<Value> {
        epoch_micros(millis, EpochUnit::Millis).map(Value::Timestamp)
    }

    /// Microseconds since the Unix epoch as a `timestamp` value; `None`
    /// outside the range of [`timestamp_secs`].
    pub fn timestamp_micros(micros: i64) -> Option<Value> {
        epoch_micros(micros, EpochUnit::Micros).map(Value::Timestamp)
    }

    impl ConstraintKind {
        /// The kind as the WIT names it (`unique`, `foreign-key`,
        /// `not-null`, `check`).
        pub fn as_str(&self) -> &'static str {
            match self {
                ConstraintKind::Unique => "unique",
                ConstraintKind::ForeignKey => "foreign-key",
                ConstraintKind::NotNull => "not-null",
                ConstraintKind::Check => "check",
            }
        }
    }

    impl Error {
        /// A one-line description for logs and outcome reasons.
        pub fn reason(&self) -> String {
            match self {
                Error::Denied(m) => format!("statement denied: {m}"),
                Error::Invalid(m) => format!("invalid statement: {m}"),
                Error::Constraint(c) => format!(
                    "{} constraint {} violated: {}",
                    c.kind.as_str(),
                    c.name.as_deref().unwrap_or("(unnamed)"),
                    c.message
                ),
                Error::Limit(m) => format!("database limit: {m}"),
                Error::Unavailable(m) => format!("database unavailable: {m}"),
            }
        }

        /// True for a unique or primary-key violation.
        pub fn is_unique_violation(&self) -> bool {
            matches!(self, Error::Constraint(c) if c.kind == ConstraintKind::Unique)
        }

        /// Whether the same statement may succeed when the event comes
        /// again: the database was unavailable, or a UNIQUE or FOREIGN KEY
        /// violation that another event can change (a race on the same
        /// key, a parent row still on its way). A CHECK or NOT NULL
        /// violation fails the same way on every try, as do denied,
        /// invalid and over-limit statements.
        pub fn may_pass_on_retry(&self) -> bool {
            match self {
                Error::Unavailable(_) => true,
                Error::Constraint(c) => {
                    matches!(c.kind, ConstraintKind::Unique | ConstraintKind::ForeignKey)
                }
                Error::Denied(_) | Error::Invalid(_) | Error::Limit(_) => false,
            }
        }
    }
}

/// An unhandled database error ends the event with its reason: `retry`
/// when it may pass ([`db::Error::may_pass_on_retry`]: unavailable, a
/// UNIQUE or FOREIGN KEY violation), `rejected` when it cannot (a CHECK or
/// NOT NULL violation, a denied, invalid or over-limit statement, a row
/// that does not decode).
impl From<db::Error> for Outcome {
    fn from(e: db::Error) -> Self {
        if e.may_pass_on_retry() {
            retry(e.reason())
        } else {
            rejected(e.reason())
        }
    }
}

/// Producing messages (after the event's transaction commits).
pub mod publish {
    use crate::Header;
    use crate::bindings::switchyard::plugin::publish as raw;
    pub use crate::bindings::switchyard::plugin::publish::{Error, Message};
    use serde::Serialize;

    /// Queue a message whose value is `value` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(
        topic: &str,
        key: Option<&str>,
        value: &T,
    ) -> Result<(), Error> {
        json_with_headers(topic, key, value, Vec::new())
    }

    /// Like [`json`], with extra headers `(name, value)`.
    pub fn json_with_headers<T: Serialize + ?Sized>(
        topic: &str,
        key: Option<&str>,
        value: &T,
        headers: Vec<(String, String)>,
    ) -> Result<(), Error> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::Invalid(format!("value is not serialisable as JSON: {e}")))?;
        raw::send(&Message {
            topic: topic.to_string(),
            key: key.map(|k| k.as_bytes().to_vec()),
            payload,
            headers: headers
                .into_iter()
                .map(|(name, value)| Header {
                    name,
                    value: Some(value.into_bytes()),
                })
                .collect(),
            partition: None,
        })
    }

    /// Queue a message as given.
    pub fn send(message: &Message) -> Result<(), Error> {
        raw::send(message)
    }

    impl Error {
        /// A one-line description for logs and outcome reasons.
        pub fn reason(&self) -> String {
            match self {
                Error::Denied(m) => format!("publish denied: {m}"),
                Error::Limit(m) => format!("publish limit: {m}"),
                Error::Invalid(m) => format!("invalid message: {m}"),
            }
        }
    }
}

/// A refused publish is a plugin or configuration mistake: reject the event
/// with the reason so that it lands in the dead-letter topic, fixable.
impl From<publish::Error> for Outcome {
    fn from(e: publish::Error) -> Self {
        rejected(e.reason())
    }
}

/// The plugin's settings from the routing config.
pub mod config {
    use crate::bindings::switchyard::plugin::config as raw;
    use serde::de::DeserializeOwned;
    use std::sync::OnceLock;

    /// Decode all settings into `T` (use `#[serde(default)]` for optional
    /// ones), reading them from the host on every call; [`Settings`] reads
    /// them once per instance. A bad setting is an operator mistake: the
    /// error says which.
    pub fn settings<T: DeserializeOwned>() -> Result<T, String> {
        parse(&raw::settings()).map_err(|e| e.0)
    }

    /// One setting (strings as they are, other values as JSON text).
    pub fn get(key: &str) -> Option<String> {
        raw::get(key)
    }

    fn parse<T: DeserializeOwned>(json: &str) -> Result<T, SettingsError> {
        serde_json::from_str(json)
            .map_err(|e| SettingsError(format!("invalid plugin settings: {e}")))
    }

    /// The plugin's settings decoded into `T` once per instance, for a
    /// `static`:
    ///
    /// ```no_run
    /// use switchyard_plugin::{config::Settings, Flow, Outcome};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Conf {
    ///     #[serde(default = "default_limit")]
    ///     limit: i64,
    /// }
    /// fn default_limit() -> i64 { 10 }
    ///
    /// static SETTINGS: Settings<Conf> = Settings::new();
    ///
    /// fn handle() -> Flow<Outcome> {
    ///     let conf = SETTINGS.get()?; // bad settings → rejected, naming the setting
    ///     # let _ = conf.limit;
    ///     Ok(Outcome::Done)
    /// }
    /// ```
    ///
    /// The first [`get`](Settings::get) reads and decodes the settings;
    /// later ones return the same `&T`, or the same error if they did not
    /// decode. That is never stale: settings change only when the host
    /// reloads the routing config, and a reload that changes a plugin's
    /// settings gives it new instances, whose statics start empty. (This
    /// is the one thing worth keeping in memory across events: it is the
    /// same for every event an instance sees.)
    pub struct Settings<T> {
        parsed: OnceLock<Result<T, SettingsError>>,
    }

    impl<T> Settings<T> {
        /// Settings not read yet.
        pub const fn new() -> Self {
            Settings {
                parsed: OnceLock::new(),
            }
        }
    }

    impl<T> Default for Settings<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T: DeserializeOwned> Settings<T> {
        /// The settings, read and decoded on the first call.
        pub fn get(&self) -> Result<&T, SettingsError> {
            self.get_or_read(raw::settings)
        }

        fn get_or_read(&self, read: impl FnOnce() -> String) -> Result<&T, SettingsError> {
            self.parsed
                .get_or_init(|| parse(&read()))
                .as_ref()
                .map_err(Clone::clone)
        }
    }

    /// Settings that do not decode into their type: `invalid plugin
    /// settings: ...` with serde's reason (which setting, what was wrong).
    /// Unhandled, `?` rejects the event with it: the operator fixes the
    /// config, and the dead-lettered events can be replayed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SettingsError(pub String);

    impl std::fmt::Display for SettingsError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for SettingsError {}

    impl From<SettingsError> for crate::Outcome {
        fn from(e: SettingsError) -> Self {
            crate::rejected(e)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::cell::Cell;

        #[derive(Debug, serde::Deserialize, PartialEq)]
        struct Conf {
            #[serde(default)]
            limit: i64,
        }

        #[test]
        fn settings_are_read_once_and_kept() {
            let settings: Settings<Conf> = Settings::new();
            let reads = Cell::new(0);
            let read = |text: &'static str| {
                let reads = &reads;
                move || {
                    reads.set(reads.get() + 1);
                    text.to_string()
                }
            };
            assert_eq!(
                settings.get_or_read(read(r#"{"limit": 3}"#)),
                Ok(&Conf { limit: 3 })
            );
            // Later reads would see other text: the first decoding stays.
            assert_eq!(
                settings.get_or_read(read(r#"{"limit": 4}"#)),
                Ok(&Conf { limit: 3 })
            );
            assert_eq!(reads.get(), 1);
        }

        #[test]
        fn bad_settings_give_the_same_error_each_time() {
            let settings: Settings<Conf> = Settings::new();
            let first = settings.get_or_read(|| r#"{"limit": "ten"}"#.to_string());
            let again = settings.get_or_read(|| r#"{"limit": 10}"#.to_string());
            assert_eq!(first, again);
            let Err(e) = first else {
                panic!("decoded {first:?}")
            };
            assert!(
                e.0.starts_with(
                    "invalid plugin settings: invalid type: string \"ten\", expected i64"
                ),
                "{e}"
            );
            assert!(
                matches!(crate::Outcome::from(e.clone()), crate::Outcome::Rejected(r) if r == e.0)
            );
        }
    }
}

/// Logging into the host's log under the plugin's name.
pub mod log {
    use crate::bindings::switchyard::plugin::log as raw;
    pub use crate::bindings::switchyard::plugin::log::Level;

    /// Write a line at `level`.
    pub fn write(level: Level, message: &str) {
        raw::write(level, message)
    }
    /// Write a debug line.
    pub fn debug(message: &str) {
        raw::write(Level::Debug, message)
    }
    /// Write an info line.
    pub fn info(message: &str) {
        raw::write(Level::Info, message)
    }
    /// Write a warning.
    pub fn warn(message: &str) {
        raw::write(Level::Warn, message)
    }
    /// Write an error line.
    pub fn error(message: &str) {
        raw::write(Level::Error, message)
    }
}

/// Small input checks several plugins share.
pub mod validate {
    /// True when `s` has the shape of an e-mail address: `local@domain.tld`.
    ///
    /// This is a shape check, not RFC 5322: exactly one `@`; no whitespace
    /// or control characters; a local part of 1-64 characters that neither
    /// starts nor ends with `.` nor contains `..`; a domain of at least two
    /// dot-separated labels, each 1-63 letters, digits or `-` (Unicode
    /// letters allowed, for internationalised domains), not starting or
    /// ending with `-`, the last one (the TLD) at least two characters long
    /// and not all digits; 254 bytes at most in all.
    pub fn is_valid_email(s: &str) -> bool {
        if s.is_empty() || s.len() > 254 {
            return false;
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return false;
        }
        let Some((local, domain)) = s.split_once('@') else {
            return false;
        };
        if domain.contains('@') {
            return false;
        }
        let local_len = local.chars().count();
        if local_len == 0
            || local_len > 64
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return false;
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return false;
        }
        let label_ok = |l: &str| {
            let n = l.chars().count();
            (1..=63).contains(&n)
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c == '-' || c.is_alphanumeric())
        };
        if !labels.iter().all(|l| label_ok(l)) {
            return false;
        }
        let tld = labels.last().copied().unwrap_or_default();
        tld.chars().count() >= 2 && !tld.chars().all(|c| c.is_ascii_digit())
    }

    #[cfg(test)]
    mod tests {
        use super::is_valid_email;

        #[test]
        fn accepts_ordinary_addresses() {
            for ok in [
                "ahmad@example.com",
                "test@example.com",
                "first.last+tag@mail.example.co.uk",
                "usuario@example.com",
                "a@b.io",
                "user@xn--mgbh0fb.xn--kgbechtv",
                "کاربر@مثال.ایران",
            ] {
                assert!(is_valid_email(ok), "{ok} should be valid");
            }
        }

        #[test]
        fn rejects_malformed_addresses() {
            for bad in [
                "",
                "plainaddress",
                "@example.com",
                "user@",
                "user@example",
                "user@@example.com",
                "us er@example.com",
                "user@exa mple.com",
                "user@example.c",
                "user@example.123",
                ".user@example.com",
                "user.@example.com",
                "us..er@example.com",
                "user@-example.com",
                "user@example-.com",
                "user@example..com",
                "user@.example.com",
                "user@example.com.",
                "a@b@example.com",
                "user\n@example.com",
                "user@example.com\n",
            ] {
                assert!(!is_valid_email(bad), "{bad:?} should be invalid");
            }
            let long_local = format!("{}@example.com", "a".repeat(65));
            assert!(!is_valid_email(&long_local));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use db::{ConstraintKind, ConstraintViolation, Error};

    fn constraint(kind: ConstraintKind) -> Error {
        Error::Constraint(ConstraintViolation {
            kind,
            name: Some("notes_n_check".into()),
            message: "new row violates it".into(),
        })
    }

    /// The outcome's tag and reason.
    fn parts(o: Outcome) -> (&'static str, String) {
        match o {
            Outcome::Done => ("done", String::new()),
            Outcome::Skipped(r) => ("skipped", r),
            Outcome::Retry(r) => ("retry", r),
            Outcome::Rejected(r) => ("rejected", r),
        }
    }

    #[test]
    fn database_errors_end_the_event_by_whether_a_retry_can_pass() {
        let cases = [
            (
                Error::Unavailable("down".into()),
                "retry",
                "database unavailable: down",
            ),
            (
                constraint(ConstraintKind::Unique),
                "retry",
                "unique constraint notes_n_check violated: new row violates it",
            ),
            (
                constraint(ConstraintKind::ForeignKey),
                "retry",
                "foreign-key constraint notes_n_check violated: new row violates it",
            ),
            (
                constraint(ConstraintKind::Check),
                "rejected",
                "check constraint notes_n_check violated: new row violates it",
            ),
            (
                constraint(ConstraintKind::NotNull),
                "rejected",
                "not-null constraint notes_n_check violated: new row violates it",
            ),
            (
                Error::Denied("no".into()),
                "rejected",
                "statement denied: no",
            ),
            (
                Error::Invalid("bad".into()),
                "rejected",
                "invalid statement: bad",
            ),
            (
                Error::Limit("big".into()),
                "rejected",
                "database limit: big",
            ),
        ];
        for (error, tag, reason) in cases {
            assert_eq!(parts(error.into()), (tag, reason.to_string()));
        }
        let unnamed = Error::Constraint(ConstraintViolation {
            kind: ConstraintKind::NotNull,
            name: None,
            message: "m".into(),
        });
        assert_eq!(
            parts(unnamed.into()),
            (
                "rejected",
                "not-null constraint (unnamed) violated: m".to_string()
            )
        );
    }

    #[test]
    fn timestamps_from_epoch_values() {
        let at = db::timestamp("2026-11-30T09:30:00.250Z");
        assert!(matches!(
            at,
            Some(db::Value::Timestamp(1_796_031_000_250_000))
        ));
        assert!(matches!(
            db::timestamp_millis(1_796_031_000_250),
            Some(db::Value::Timestamp(1_796_031_000_250_000))
        ));
        assert!(matches!(
            db::timestamp_secs(1_796_031_000),
            Some(db::Value::Timestamp(1_796_031_000_000_000))
        ));
        assert!(matches!(
            db::timestamp_micros(-1),
            Some(db::Value::Timestamp(-1))
        ));
        assert!(db::timestamp_secs(253_402_300_800).is_none());
        assert!(db::timestamp_millis(i64::MAX).is_none());
        assert!(db::timestamp_micros(MIN_TIMESTAMP_MICROS - 1).is_none());
    }

    #[test]
    fn a_row_decodes_or_says_which_column_did_not_fit() {
        #[derive(Debug, serde::Deserialize)]
        struct Note {
            id: String,
            n: i64,
        }
        let row = db::Row {
            columns: vec!["id".into(), "n".into()],
            cells: vec![db::Value::Text("a".into()), db::Value::Int(2)],
        };
        let note: Note = row.decode().unwrap_or_else(|e| panic!("{}", e.reason()));
        assert_eq!((note.id.as_str(), note.n), ("a", 2));
        let bad = db::Row {
            cells: vec![db::Value::Text("a".into()), db::Value::Null],
            ..row
        };
        let e = bad.decode::<Note>().err().map(|e| parts(e.into()));
        assert_eq!(
            e,
            Some((
                "rejected",
                "invalid statement: the row does not decode into Note: column n: invalid type: NULL, expected i64"
                    .to_string()
            ))
        );
    }

    #[test]
    fn one_migration_text_for_both_backends() {
        let m = portable_migration("0001-t", "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY)");
        assert_eq!(
            (m.id.as_str(), m.postgres.as_str()),
            ("0001-t", m.sqlite.as_str())
        );
    }
}
