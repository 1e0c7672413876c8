//! # Switchyard plugin SDK
//!
//! Write a Switchyard plugin as one function from an event to an outcome.
//! The SDK generates the bindings of `wit/plugin.wit` once, and adds the
//! small helpers every plugin needs: typed JSON decoding of the event,
//! `db` calls with native Rust parameters, `publish::json`, the plugin's
//! settings, and logging.
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

    /// One result row with access to cells by column name.
    #[derive(Debug, Clone)]
    pub struct Row {
        /// Column names.
        pub columns: Vec<String>,
        /// Cells, in the order of `columns`.
        pub cells: Vec<Value>,
    }

    impl Row {
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

    impl Error {
        /// A one-line description for logs and outcome reasons.
        pub fn reason(&self) -> String {
            match self {
                Error::Denied(m) => format!("statement denied: {m}"),
                Error::Invalid(m) => format!("invalid statement: {m}"),
                Error::Constraint(c) => format!(
                    "{:?} constraint {} violated: {}",
                    c.kind,
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
    }
}

/// An unhandled database error ends the event: `unavailable` and
/// constraint races are retried, plugin mistakes (denied, invalid, limit)
/// are rejected with the database's reason.
impl From<db::Error> for Outcome {
    fn from(e: db::Error) -> Self {
        match &e {
            db::Error::Unavailable(_) | db::Error::Constraint(_) => retry(e.reason()),
            db::Error::Denied(_) | db::Error::Invalid(_) | db::Error::Limit(_) => {
                rejected(e.reason())
            }
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

    /// Decode all settings into `T` (use `#[serde(default)]` for optional
    /// ones). A bad setting is an operator mistake: the error says which.
    pub fn settings<T: DeserializeOwned>() -> Result<T, String> {
        serde_json::from_str(&raw::settings()).map_err(|e| format!("invalid plugin settings: {e}"))
    }

    /// One setting (strings as they are, other values as JSON text).
    pub fn get(key: &str) -> Option<String> {
        raw::get(key)
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

/// An RFC 3339 instant as microseconds since the Unix epoch: a date, `T`
/// (or `t` or a space), a time with optional fraction, and `Z` or an
/// offset `±HH:MM`.
pub fn rfc3339_micros(s: &str) -> Option<i64> {
    let two = |t: &str| -> Option<i64> {
        (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = (s.get(..10)?, s.get(10..)?);
    let sep = rest.chars().next()?;
    if !matches!(sep, 'T' | 't' | ' ') {
        return None;
    }
    let rest = &rest[1..];
    let year = date.get(..4)?;
    if !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (
        year.parse::<i64>().ok()?,
        two(date.get(5..7)?)?,
        two(date.get(8..10)?)?,
    );
    if date.as_bytes()[4] != b'-' || date.as_bytes()[7] != b'-' {
        return None;
    }
    let (hh, mm, ss) = (
        two(rest.get(..2)?)?,
        two(rest.get(3..5)?)?,
        two(rest.get(6..8)?)?,
    );
    if rest.as_bytes()[2] != b':' || rest.as_bytes()[5] != b':' {
        return None;
    }
    let mut tail = &rest[8..];
    let mut micros = 0i64;
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &frac[..digits.min(6)];
        micros = kept.parse::<i64>().ok()? * 10i64.pow(6 - kept.len() as u32);
        tail = &frac[digits..];
    }
    let offset_s = match tail {
        "Z" | "z" => 0,
        _ => {
            let sign = match tail.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if tail.len() != 6 || tail.as_bytes()[3] != b':' {
                return None;
            }
            let (oh, om) = (two(&tail[1..3])?, two(&tail[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since the epoch of a civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + hh * 3_600 + mm * 60 + ss - offset_s) * 1_000_000 + micros)
}

#[cfg(test)]
mod time_tests {
    use super::rfc3339_micros;

    #[test]
    fn reads_rfc3339_instants_in_utc() {
        assert_eq!(rfc3339_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_micros("2026-11-30T09:30:00.5Z"),
            Some(1_796_031_000_500_000)
        );
        assert_eq!(
            rfc3339_micros("2026-11-30T14:00:00+03:00"),
            Some(1_796_036_400_000_000)
        );
        assert_eq!(
            rfc3339_micros("2024-02-29T00:00:00.123456789-00:30"),
            Some(1_709_166_600_123_456)
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-30",
            "2026-11-30T09:30:00",
            "2026-02-30T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T09:30:00.Z",
            "2026-11-30T09:30:00+3:00",
            "2026-11-30T09:30:00+99:99",
            "+999-11-30T09:30:00Z",
        ] {
            assert_eq!(rfc3339_micros(bad), None, "{bad}");
        }
    }
}

/// Microseconds since the Unix epoch, from the WASI wall clock.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
