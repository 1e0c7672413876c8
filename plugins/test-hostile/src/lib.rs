//! A plugin that misbehaves on request, for the runtime and sandbox tests.
//!
//! The event's JSON payload says what to do: `{"do": "<action>", ...}`.
//! - `ok`: return done;
//! - `count`: log how many events this instance has handled (shows
//!   instance reuse vs per-event isolation);
//! - `panic`, `loop`, `oom`, `recurse`: trap, spin forever, grow memory
//!   without bound, overflow the stack;
//! - `sql` with `"sql"` and optional `"params"` (strings): run it and return
//!   done, or rejected with the database error;
//! - `sqls` with `"sqls"` (statements without parameters): run each, log
//!   and ignore errors, and return done (a plugin that carries on after a
//!   failed statement);
//! - `publish` with `"topic"`, `"bytes"` and `"count"`, and optionally
//!   `"partition"` and `"key"`: publish that many messages of that size
//!   (to that partition, with that key); rejected with the first refusal;
//! - `print`: write to stdout and stderr;
//! - `retry`, `reject`, `skip`: return that outcome;
//! - `violate` with `"id"` and `"constraint"` (`check`, `not-null` or
//!   `unique`): insert a row into `hostile_checks` that breaks that
//!   constraint and leave the error to the SDK's default mapping (`?`);
//! - `decode` with `"id"`, optional `"n"` and `"at"` (RFC 3339) or
//!   `"at_ms"` (epoch milliseconds): insert a row into `hostile_checks`,
//!   read it back with `db::query_one_as` into a struct whose `n` is not
//!   optional, and log it as JSON (`decoded {...}`); a NULL `n` is left to
//!   `?`;
//! - `settings`: log the `greeting` setting, read once per instance
//!   (`greeting ...`); settings that do not decode are left to `?`.

use std::sync::atomic::{AtomicU64, Ordering};
use switchyard_plugin::{Event, Flow, Outcome, PluginInfo, db, publish, rejected};

static HANDLED: AtomicU64 = AtomicU64::new(0);

struct Hostile;

/// The plugin's table: `hostile_marks`, or `fragile_marks` when built as
/// `test-fragile`.
fn marks_table() -> &'static str {
    if env!("CARGO_PKG_NAME") == "test-fragile" {
        "fragile_marks"
    } else {
        "hostile_marks"
    }
}

/// The plugin's first migration, on both backends, for its table
/// (`hostile_marks`, or `fragile_marks` when built as `test-fragile`: each
/// plugin owns the tables it creates, so two plugins cannot share one).
fn marks_migration() -> String {
    let table = marks_table();
    format!(
        "/* CREATE TABLE switchyard_outbox (x int) */ CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, note TEXT NOT NULL DEFAULT 'CREATE TABLE switchyard_processed (x int)')"
    )
}

/// The plugin's second table, for `violate` and `decode`: `hostile_checks`,
/// or `fragile_checks` when built as `test-fragile`.
fn checks_table() -> &'static str {
    if env!("CARGO_PKG_NAME") == "test-fragile" {
        "fragile_checks"
    } else {
        "hostile_checks"
    }
}

/// The third migration, one text for both backends: a table with a CHECK,
/// a NOT NULL and a timestamp column. (A new table rather than columns
/// added to the first: SQLite checks a new CHECK or NOT NULL column
/// against the rows already there with `pragma_quick_check`, which the
/// migration sandbox refuses.)
fn checks_migration() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
             id   TEXT NOT NULL PRIMARY KEY,
             note TEXT NOT NULL,
             n    INTEGER CHECK (n >= 0),
             at   TIMESTAMPTZ
         )",
        checks_table()
    )
}

#[derive(serde::Deserialize)]
struct Command {
    #[serde(rename = "do")]
    action: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    constraint: String,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    at_ms: Option<i64>,
    #[serde(default)]
    sql: String,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    sqls: Vec<String>,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    bytes: usize,
    #[serde(default = "one")]
    count: usize,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    key: Option<String>,
}

fn one() -> usize {
    1
}

/// The plugin's settings.
#[derive(serde::Deserialize)]
struct Conf {
    #[serde(default)]
    greeting: String,
}

static SETTINGS: switchyard_plugin::config::Settings<Conf> =
    switchyard_plugin::config::Settings::new();

/// A mark as `decode` reads it back: `n` must not be NULL.
#[derive(serde::Deserialize, serde::Serialize)]
struct Mark {
    id: String,
    note: String,
    n: i64,
    at: Option<String>,
}

/// `violate`: break a constraint and let `?` decide the outcome.
fn violate(cmd: &Command) -> Flow<Outcome> {
    let table = checks_table();
    let id = cmd.id.as_str();
    match cmd.constraint.as_str() {
        "check" => db::exec(
            &format!("INSERT INTO {table} (id, note, n) VALUES ($1, 'v', -1)"),
            &[id.into()],
        )?,
        "not-null" => db::exec(
            &format!("INSERT INTO {table} (id, note) VALUES ($1, NULL)"),
            &[id.into()],
        )?,
        "unique" => {
            let insert = format!("INSERT INTO {table} (id, note) VALUES ($1, 'v')");
            db::exec(&insert, &[id.into()])?;
            db::exec(&insert, &[id.into()])?
        }
        other => return Ok(rejected(format!("unknown constraint {other}"))),
    };
    Ok(Outcome::Done)
}

/// `decode`: write a mark, read it back into [`Mark`], log it.
fn decode(cmd: &Command) -> Flow<Outcome> {
    let table = checks_table();
    let at = match (&cmd.at, cmd.at_ms) {
        (Some(text), _) => db::timestamp(text)
            .ok_or_else(|| rejected(format!("at {text:?} is not an RFC 3339 instant")))?,
        (None, Some(ms)) => db::timestamp_millis(ms)
            .ok_or_else(|| rejected(format!("at_ms {ms} is out of range")))?,
        (None, None) => db::Value::Null,
    };
    db::exec(
        &format!("INSERT INTO {table} (id, note, n, at) VALUES ($1, 'd', $2, $3)"),
        &[cmd.id.as_str().into(), cmd.n.into(), at],
    )?;
    let mark: Option<Mark> = db::query_one_as(
        &format!("SELECT id, note, n, at FROM {table} WHERE id = $1"),
        &[cmd.id.as_str().into()],
    )?;
    let text = serde_json::to_string(&mark).unwrap_or_default();
    switchyard_plugin::log::info(&format!("decoded {text}"));
    Ok(Outcome::Done)
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    recurse(depth + 1).wrapping_add(std::hint::black_box(frame)[0])
}

impl switchyard_plugin::Guest for Hostile {
    fn describe() -> PluginInfo {
        // The package's name: this source is also built as `test-fragile`
        // (a second plugin with its own identity). The migration names the
        // host's tables in a comment and a string, which must not make
        // them the plugin's.
        let migration = marks_migration();
        // A later migration that changes a table the first one created
        // (on PostgreSQL it runs with the table in the plugin's own
        // schema, the only place its role may create an index).
        let index = format!(
            "CREATE INDEX IF NOT EXISTS {table}_note ON {table} (note)",
            table = marks_table()
        );
        switchyard_plugin::info(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            vec![
                switchyard_plugin::migration("0001-create-hostile-marks", &migration, &migration),
                switchyard_plugin::migration("0002-index-hostile-marks", &index, &index),
                switchyard_plugin::portable_migration(
                    "0003-create-hostile-checks",
                    &checks_migration(),
                ),
            ],
        )
    }

    fn handle(ev: Event) -> Outcome {
        let n = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
        switchyard_plugin::run(|| {
            let cmd: Command = ev.json()?;
            match cmd.action.as_str() {
                "ok" => Ok(Outcome::Done),
                "count" => {
                    switchyard_plugin::log::info(&format!("handled {n}"));
                    Ok(Outcome::Done)
                }
                "panic" => panic!("asked to panic"),
                "loop" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "oom" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "recurse" => {
                    std::hint::black_box(recurse(0));
                    Ok(Outcome::Done)
                }
                "sql" => {
                    let params: Vec<db::Value> =
                        cmd.params.iter().map(|p| p.as_str().into()).collect();
                    match db::query(&cmd.sql, &params) {
                        Ok(rows) => {
                            switchyard_plugin::log::info(&format!("{} rows", rows.rows.len()));
                            Ok(Outcome::Done)
                        }
                        Err(e) => Ok(switchyard_plugin::rejected(e.reason())),
                    }
                }
                "sqls" => {
                    for sql in &cmd.sqls {
                        if let Err(e) = db::exec(sql, &[]) {
                            switchyard_plugin::log::warn(&format!("ignored: {}", e.reason()));
                        }
                    }
                    Ok(Outcome::Done)
                }
                "publish" => {
                    let body = "x".repeat(cmd.bytes);
                    for _ in 0..cmd.count {
                        let sent = match (cmd.partition, &cmd.key) {
                            (None, None) => publish::json(&cmd.topic, None, &body),
                            (partition, key) => publish::send(&publish::Message {
                                topic: cmd.topic.clone(),
                                key: key.as_ref().map(|k| k.as_bytes().to_vec()),
                                payload: serde_json::to_vec(&body).unwrap_or_default(),
                                headers: Vec::new(),
                                partition,
                            }),
                        };
                        if let Err(e) = sent {
                            return Ok(switchyard_plugin::rejected(e.reason()));
                        }
                    }
                    Ok(Outcome::Done)
                }
                "print" => {
                    println!("to stdout");
                    eprintln!("to stderr");
                    Ok(Outcome::Done)
                }
                "retry" => Ok(switchyard_plugin::retry("asked to retry")),
                "reject" => Ok(switchyard_plugin::rejected("asked to reject")),
                "skip" => Ok(switchyard_plugin::skipped("asked to skip")),
                "violate" => violate(&cmd),
                "decode" => decode(&cmd),
                "settings" => {
                    let conf = SETTINGS.get()?;
                    switchyard_plugin::log::info(&format!("greeting {}", conf.greeting));
                    Ok(Outcome::Done)
                }
                other => Ok(switchyard_plugin::rejected(format!(
                    "unknown action {other}"
                ))),
            }
        })
    }
}

switchyard_plugin::export_plugin!(Hostile);
