//! `switchyard plugin test`: run one plugin on one or more events against
//! a database, and show everything it did — the outcome and its reason, the
//! SQL it ran, the rows it changed and every message it would publish.
//!
//! Events are JSON files:
//!
//! ```json
//! {"topic": "create-user", "key": "req-1", "headers": {"request-id": "r-1"},
//!  "value": {"requestId": "req-1", "firstName": "احمد"}}
//! ```
//!
//! or `"value_raw": "<text>"` instead of `value` for bytes that are not
//! JSON. A file may also hold an array of such events, run in order on
//! the same database (a `user.created` before its `interview.created`).

use crate::bindings::switchyard::plugin::db::Value;
use crate::capabilities::PluginEnv;
use crate::capabilities::db::StatementResult;
use crate::capabilities::log::{LogLine, Stream};
use crate::capabilities::publish::{Grants, OutMessage};
use crate::database::{Backend, Database, Tx, redact_url};
use crate::event::{Event, EventContext};
use crate::limits::Limits;
use crate::runtime::{CallOptions, Invocation, LoadedPlugin, PluginWorker, Runtime};
use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchyard_core::work::{Ledger, LedgerError, Marker, Work};

/// One event as written in an event file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    /// Topic the event comes from.
    pub topic: String,
    /// Record key, if any.
    #[serde(default)]
    pub key: Option<String>,
    /// Headers, name to text value.
    #[serde(default)]
    pub headers: Map<String, Json>,
    /// The value as JSON (serialised compactly as the payload).
    #[serde(default)]
    pub value: Option<Json>,
    /// The value as raw text, for payloads that are not JSON.
    #[serde(default)]
    pub value_raw: Option<String>,
    /// Partition (default 0).
    #[serde(default)]
    pub partition: Option<i32>,
    /// Offset (default: the event's position in the run).
    #[serde(default)]
    pub offset: Option<i64>,
}

/// Why an event file was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventFileError {
    /// Unreadable.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// File name.
        file: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Not JSON or not the expected shape.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// File name.
        file: String,
        /// Line, 1-based.
        line: usize,
        /// Column, 1-based.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The shape is right but the content is not.
    #[error("{file}: event {index}: {message}")]
    Invalid {
        /// File name.
        file: String,
        /// Position in the file, 1-based.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// Parse the text of an event file (one event or an array of events).
pub fn parse_events(file: &str, text: &str) -> Result<Vec<Event>, EventFileError> {
    // Decide by the first character rather than with an untagged enum, so
    // that serde's error keeps its line and column.
    let many = text.trim_start().starts_with('[');
    let parsed = if many {
        serde_json::from_str::<Vec<EventFile>>(text)
    } else {
        serde_json::from_str::<EventFile>(text).map(|e| vec![e])
    };
    let files = parsed.map_err(|e| {
        let hint = if e.is_data() {
            " (expected {\"topic\": \"...\", \"key\": \"...\" | null, \"headers\": {\"name\": \"value\"}, \"value\": <any JSON>} or \"value_raw\": \"<text>\" instead of value, or an array of those)"
        } else {
            ""
        };
        EventFileError::Parse {
            file: file.to_string(),
            line: e.line(),
            column: e.column(),
            message: format!("{e}{hint}"),
        }
    })?;
    files
        .into_iter()
        .enumerate()
        .map(|(i, f)| to_event(file, i, f))
        .collect()
}

fn to_event(file: &str, i: usize, f: EventFile) -> Result<Event, EventFileError> {
    let invalid = |message: String| EventFileError::Invalid {
        file: file.to_string(),
        index: i + 1,
        message,
    };
    let payload = match (f.value, f.value_raw) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give either `value` or `value_raw`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "missing `value` (any JSON) or `value_raw` (text); use \"value_raw\": \"\" for a tombstone"
                    .into(),
            ));
        }
        (Some(v), None) => {
            serde_json::to_vec(&v).map_err(|e| invalid(format!("cannot serialise `value`: {e}")))?
        }
        (None, Some(raw)) => raw.into_bytes(),
    };
    let mut headers = Vec::with_capacity(f.headers.len());
    for (name, value) in f.headers {
        let value = match value {
            Json::String(s) => Some(s.into_bytes()),
            Json::Null => None,
            other => Some(other.to_string().into_bytes()),
        };
        headers.push((name, value));
    }
    if f.topic.is_empty() {
        return Err(invalid("`topic` is empty".into()));
    }
    Ok(Event {
        topic: f.topic,
        partition: f.partition.unwrap_or(0),
        // Without an explicit offset, `run` numbers events in run order.
        offset: f.offset.unwrap_or(-1),
        timestamp_ms: Some(chrono::Utc::now().timestamp_millis()),
        key: f.key.map(String::into_bytes),
        payload,
        headers,
    })
}

/// Read and parse an event file, `-` for standard input.
pub fn read_events(path: &Path) -> Result<Vec<Event>, EventFileError> {
    let name = path.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|error| EventFileError::Read {
        file: if name == "-" {
            "<stdin>".into()
        } else {
            name.clone()
        },
        error,
    })?;
    parse_events(if name == "-" { "<stdin>" } else { &name }, &text)
}

/// Options of a `plugin test` run.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// The plugin's `.wasm`.
    pub plugin: PathBuf,
    /// Event files, run in order.
    pub events: Vec<PathBuf>,
    /// Database URL (`sqlite::memory:` for a throwaway one).
    pub database: String,
    /// The plugin's settings, a JSON object.
    pub settings: Map<String, Json>,
    /// Publish grants (patterns).
    pub grants: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// SQL scripts run before the events, after the plugin's migrations
    /// (fixtures such as the `customers` a role-mapping event refers to).
    pub setup: Vec<PathBuf>,
    /// The plugin as a routing config runs it (`--config --plugin`): its
    /// name, grants, settings and limits. `None`: the plugin's own name
    /// and the fields above.
    pub env: Option<PluginEnv>,
}

/// What a run found, ready to print.
#[derive(Debug)]
pub struct TestReport {
    /// The whole report as JSON (`--json`).
    pub json: Json,
    /// Whether every event's transaction committed.
    pub all_committed: bool,
    /// The events' keys, headers and payloads as text: what the plugin
    /// was given (an id found here is not the plugin's invention).
    pub inputs: Vec<String>,
}

/// Run the plugin on the events; errors are setup failures (plugin not
/// loadable, database unreachable, bad event file).
pub async fn run(options: &TestOptions) -> anyhow::Result<TestReport> {
    let mut events = Vec::new();
    for file in &options.events {
        events.extend(read_events(file)?);
    }
    for (i, event) in events.iter_mut().enumerate() {
        if event.offset < 0 {
            event.offset = i as i64;
        }
    }
    let runtime = Runtime::new(crate::runtime::RuntimeOptions {
        max_instances: 16,
        compile_cache: crate::loading::default_compile_cache_options(),
        ..Default::default()
    })?;
    let plugin = match &options.env {
        Some(env) => {
            // As the router loads it: under its config key, which must
            // be the name it gives itself.
            let plugin = runtime.load_file(&options.plugin, env.clone()).await?;
            crate::loading::check_identity(&plugin)?;
            plugin
        }
        None => {
            let name = options
                .plugin
                .file_stem()
                .map(|s| s.to_string_lossy().replace('_', "-"))
                .unwrap_or_else(|| "plugin".into());
            // As the router does with a config that leaves the producer's
            // `message.max.bytes` at its default: a message the test
            // accepts is one the producer accepts.
            let mut limits = options.limits.clone();
            limits.clamp_to_producer(crate::kafka::DEFAULT_MESSAGE_MAX_BYTES);
            let env = PluginEnv {
                name: name.as_str().into(),
                limits,
                grants: Grants::new(options.grants.clone()),
                settings: Arc::new(options.settings.clone()),
                db_role: None,
                db_tables: std::sync::Arc::from([]),
                native: None,
            };
            let plugin = runtime.load_file(&options.plugin, env).await?;
            // With no config, the plugin's own name is its identity.
            plugin.under_described_name(&runtime)?
        }
    };
    let inputs = events
        .iter()
        .map(|e| {
            let mut text = String::from_utf8_lossy(&e.payload).into_owned();
            if let Some(k) = &e.key {
                text.push(' ');
                text.push_str(&String::from_utf8_lossy(k));
            }
            for (_, v) in &e.headers {
                if let Some(v) = v {
                    text.push(' ');
                    text.push_str(&String::from_utf8_lossy(v));
                }
            }
            text
        })
        .collect();
    let db = Database::connect(&options.database, 2).await?;
    crate::outbox::create_tables(&db).await?;
    let applied = db
        .migrate(&plugin.info.name, &plugin.info.migrations)
        .await?;
    // Run as the plugin's own role (PostgreSQL), as the router does.
    let plugin = crate::loading::with_database_role(&db, &runtime, &plugin).await?;
    for script in &options.setup {
        let sql = std::fs::read_to_string(script)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", script.display()))?;
        db.run_script(&sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}: setup SQL failed: {e}", script.display()))?;
    }

    let mut worker = PluginWorker::new(plugin.clone());
    let mut reports = Vec::new();
    let mut all_committed = true;
    for event in &events {
        let report = run_one(&db, &mut worker, &plugin, event).await?;
        all_committed &= report["committed"].as_bool().unwrap_or(false);
        reports.push(report);
    }
    db.close().await;
    let json = json!({
        "plugin": {
            "name": plugin.info.name,
            "version": plugin.info.version,
            "file": plugin.source,
            "hash": plugin.hash,
            "size_bytes": plugin.size,
            "compile_ms": plugin.compile_time.as_secs_f64() * 1000.0,
            "compiled": plugin.compiled.as_str(),
            "grants": plugin.env.grants.patterns(),
            "settings": Json::Object((*plugin.env.settings).clone()),
        },
        "database": {
            "url": redact_url(&options.database),
            "backend": db.backend().name(),
            "migrations_applied": applied,
        },
        "events": reports,
    });
    Ok(TestReport {
        json,
        all_committed,
        inputs,
    })
}

/// Where `plugin test` runs, from `--database`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseChoice {
    /// A database URL (`sqlite::memory:` by default).
    Url(String),
    /// A throwaway PostgreSQL database, created and dropped.
    Postgres,
    /// A throwaway SQLite and a throwaway PostgreSQL database, one run
    /// each, compared.
    Both,
}

impl DatabaseChoice {
    /// `sqlite`, `postgres`, `both`, or a URL.
    pub fn parse(s: &str) -> Self {
        match s {
            "sqlite" => DatabaseChoice::Url("sqlite::memory:".into()),
            "postgres" | "postgresql" => DatabaseChoice::Postgres,
            "both" => DatabaseChoice::Both,
            url => DatabaseChoice::Url(url.to_string()),
        }
    }
}

/// The server `plugin test` makes its throwaway PostgreSQL databases on:
/// `SWITCHYARD_TEST_PG_URL`, else the local one as `postgres`.
pub fn postgres_admin_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A PostgreSQL database made for one run; [`Throwaway::drop_now`]
/// removes it.
#[derive(Debug)]
pub struct Throwaway {
    admin: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl Throwaway {
    /// Create one on the server of `admin` (a URL whose user may create
    /// databases).
    pub async fn create(admin: &str) -> anyhow::Result<Self> {
        use sqlx::Connection as _;
        let name = format!("switchyard_plugin_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin).await.with_context(|| {
            format!(
                "cannot reach PostgreSQL at {} for a throwaway database; start it, or set SWITCHYARD_TEST_PG_URL to a server where you may create databases",
                redact_url(admin)
            )
        })?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating the throwaway database {name}"))?;
        let _ = conn.close().await;
        Ok(Self {
            admin: admin.to_string(),
            url: with_database(admin, &name),
            name,
        })
    }

    /// Drop the database (its connections are closed by then).
    pub async fn drop_now(self) {
        use sqlx::Connection as _;
        let conn = sqlx::PgConnection::connect(&self.admin).await;
        if let Err(e) = &conn {
            eprintln!(
                "warning: could not reconnect to drop the throwaway database {}: {e}; drop it by hand",
                self.name
            );
        }
        if let Ok(mut conn) = conn {
            let dropped = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
            if let Err(e) = dropped {
                eprintln!(
                    "warning: could not drop the throwaway database {}: {e}",
                    self.name
                );
            }
            let _ = conn.close().await;
        }
    }
}

/// `url` with its database name replaced by `name` (or added), its
/// query (`?sslmode=...`, `?host=/socket`) kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Run on `choice`: one report per backend, labelled (`sqlite`,
/// `postgres`, or the URL's backend).
pub async fn run_on(
    options: &TestOptions,
    choice: &DatabaseChoice,
) -> anyhow::Result<Vec<(String, TestReport)>> {
    let mut runs = Vec::new();
    let sqlite = matches!(choice, DatabaseChoice::Both);
    let postgres = matches!(choice, DatabaseChoice::Both | DatabaseChoice::Postgres);
    if let DatabaseChoice::Url(url) = choice {
        let label = if url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        let options = TestOptions {
            database: url.clone(),
            ..options.clone()
        };
        runs.push((label.to_string(), run(&options).await?));
    }
    if sqlite {
        let options = TestOptions {
            database: "sqlite::memory:".into(),
            ..options.clone()
        };
        runs.push(("sqlite".to_string(), run(&options).await?));
    }
    if postgres {
        let db = Throwaway::create(&postgres_admin_url()).await?;
        let options = TestOptions {
            database: db.url.clone(),
            ..options.clone()
        };
        let result = run(&options).await;
        db.drop_now().await;
        runs.push(("postgres".to_string(), result?));
    }
    Ok(runs)
}

/// `plugin test`'s ledger: the database's transactions, without markers
/// or outbox rows. A test run must neither make the router skip the event
/// later nor leave messages for its relay to send; the report lists what
/// the plugin would publish.
struct TestLedger(Database);

impl Ledger for TestLedger {
    type Tx = Tx;

    async fn begin(&self) -> Result<Tx, LedgerError> {
        self.0
            .begin()
            .await
            .map_err(|e| LedgerError::Unavailable(e.to_string()))
    }

    async fn mark(
        &self,
        _tx: &mut Tx,
        markers: &[Marker<'_>],
    ) -> Result<HashSet<(String, String)>, LedgerError> {
        Ok(markers
            .iter()
            .map(|m| (m.plugin.to_string(), m.dedupe_key.to_string()))
            .collect())
    }

    async fn claim_replay(&self, _tx: &mut Tx, _marker: Marker<'_>) -> Result<bool, LedgerError> {
        Ok(true)
    }

    async fn enqueue(
        &self,
        _tx: &mut Tx,
        _plugin: &str,
        _messages: &[OutMessage],
    ) -> Result<(), LedgerError> {
        Ok(())
    }

    async fn commit(&self, tx: Tx) -> Result<(), LedgerError> {
        tx.commit()
            .await
            .map_err(|e| LedgerError::Unavailable(e.to_string()))
    }

    async fn rollback(&self, tx: Tx) -> Result<(), LedgerError> {
        tx.rollback()
            .await
            .map_err(|e| LedgerError::Unavailable(e.to_string()))
    }

    async fn mark_dead_lettered(&self, _marker: Marker<'_>) -> Result<(), LedgerError> {
        Ok(())
    }
}

async fn run_one(
    db: &Database,
    worker: &mut PluginWorker,
    plugin: &LoadedPlugin,
    event: &Event,
) -> anyhow::Result<Json> {
    let name = plugin.info.name.as_str();
    let ledger = TestLedger(db.clone());
    let lost = "the event's transaction was lost by the host (a bug): nothing committed";
    let mut work = Work::begin(&ledger).await?;
    let dedupe_key = format!("pos:{}/{}/{}", event.topic, event.partition, event.offset);
    work.claim_one(Marker::of("plugin-test", name, &dedupe_key, event), false)
        .await?;
    let before = snapshot(db.backend(), name, work.tx_mut().context(lost)?).await?;
    let ctx = Arc::new(EventContext::new("plugin-test", name, event));
    let options = CallOptions {
        record: true,
        ..CallOptions::default()
    };
    let invocation = work.run(worker, ctx, event, options).await?;
    let after = snapshot(db.backend(), name, work.tx_mut().context(lost)?).await?;
    let committed = invocation.outcome.commits();
    if committed {
        work.commit(&[(name, invocation.messages.as_slice())])
            .await?;
    } else {
        work.rollback().await?;
    }
    Ok(event_report(
        event,
        &invocation,
        diff(&before, &after),
        committed,
    ))
}

type Snapshot = BTreeMap<String, Result<Vec<Json>, String>>;

/// Every row of every user table the plugin can read, read inside the
/// event's transaction in the plugin's own session (switchyard's own
/// tables excluded). Tables over the row cap are named but not diffed.
async fn snapshot(backend: Backend, plugin: &str, tx: &mut Tx) -> anyhow::Result<Snapshot> {
    let list = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'switchyard_%' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema::text = ANY(current_schemas(false)::text[]) AND table_type = 'BASE TABLE' AND table_name NOT LIKE 'switchyard\\_%' AND has_table_privilege(format('%I.%I', table_schema, table_name), 'SELECT') ORDER BY 1"
        }
    };
    let limits = Limits::default();
    let tables = tx
        .query_as_plugin(plugin, list, &limits)
        .await
        .map_err(|e| anyhow::anyhow!("cannot list tables: {e:?}"))?;
    let mut out = Snapshot::new();
    for row in tables.rows {
        let Some(Value::Text(table)) = row.into_iter().next() else {
            continue;
        };
        let sql = format!("SELECT * FROM \"{}\"", table.replace('"', "\"\""));
        let rows = match tx.query_as_plugin(plugin, &sql, &limits).await {
            Ok(rows) => Ok(rows_json(&rows)),
            Err(e) => Err(e.to_string()),
        };
        out.insert(table, rows);
    }
    Ok(out)
}

/// Rows added and removed per table (an update is one of each).
fn diff(before: &Snapshot, after: &Snapshot) -> Json {
    let mut tables = Map::new();
    for (table, rows_after) in after {
        let rows_before = before.get(table);
        let entry = match (rows_before, rows_after) {
            (Some(Ok(b)), Ok(a)) => {
                let added: Vec<Json> = a.iter().filter(|r| !b.contains(r)).cloned().collect();
                let removed: Vec<Json> = b.iter().filter(|r| !a.contains(r)).cloned().collect();
                if added.is_empty() && removed.is_empty() {
                    continue;
                }
                json!({"added": added, "removed": removed})
            }
            (None, Ok(a)) if a.is_empty() => continue,
            (None, Ok(a)) => json!({"added": a, "removed": []}),
            (_, Err(e)) | (Some(Err(e)), _) => json!({"not_compared": e}),
        };
        tables.insert(table.clone(), entry);
    }
    Json::Object(tables)
}

/// Query rows as JSON objects, column name to value.
pub fn rows_json(rows: &crate::bindings::switchyard::plugin::db::Rows) -> Vec<Json> {
    rows.rows
        .iter()
        .map(|cells| {
            Json::Object(
                rows.columns
                    .iter()
                    .cloned()
                    .zip(cells.iter().map(value_json))
                    .collect(),
            )
        })
        .collect()
}

/// A SQL value as JSON for reports.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Text(s) | Value::Uuid(s) | Value::Date(s) => json!(s),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Value::Bytes(b) => json!(format!("\\x{}", hex(b))),
        Value::Timestamp(us) => match chrono::DateTime::from_timestamp_micros(*us) {
            Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            None => json!(us),
        },
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes as text when they are UTF-8, as `\x..` hex otherwise.
fn bytes_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!(format!("\\x{}", hex(b))),
    }
}

fn message_json(m: &OutMessage) -> Json {
    let value = match serde_json::from_slice::<Json>(&m.payload) {
        Ok(v) => json!({"value": v}),
        Err(_) => json!({"value_raw": bytes_json(&m.payload)}),
    };
    let mut obj = json!({
        "topic": m.topic,
        "key": m.key.as_deref().map(bytes_json),
        "partition": m.partition,
        "headers": m.headers.iter().map(|(n, v)| (n.clone(), v.as_deref().map_or(Json::Null, bytes_json))).collect::<Map<_, _>>(),
    });
    if let (Some(o), Json::Object(v)) = (obj.as_object_mut(), value) {
        o.extend(v);
    }
    obj
}

fn log_json(l: &LogLine) -> Json {
    let source = match l.stream {
        Stream::Log => "log",
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    json!({"level": l.level, "source": source, "message": l.message})
}

fn event_report(event: &Event, inv: &Invocation, changes: Json, committed: bool) -> Json {
    let statements: Vec<Json> = inv
        .statements
        .iter()
        .map(|s| {
            let (kind, detail) = match &s.result {
                StatementResult::Changed(n) => ("changed", json!(n)),
                StatementResult::Returned(n) => ("returned", json!(n)),
                StatementResult::Failed(e) => ("error", json!(e)),
            };
            json!({
                "sql": s.sql,
                "params": s.params.iter().map(value_json).collect::<Vec<_>>(),
                kind: detail,
            })
        })
        .collect();
    json!({
        "event": {
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "key": event.key.as_deref().map(bytes_json),
            "headers": event.headers.iter().map(|(n, v)| (n.clone(), v.as_deref().map_or(Json::Null, bytes_json))).collect::<Map<_, _>>(),
            "payload_bytes": event.payload.len(),
        },
        "outcome": {"kind": inv.outcome.kind(), "reason": inv.outcome.reason()},
        "committed": committed,
        "elapsed_ms": inv.elapsed.as_secs_f64() * 1000.0,
        "fresh_instance": inv.fresh_instance,
        "statements": statements,
        "changes": changes,
        "published": if committed { inv.messages.iter().map(message_json).collect::<Vec<_>>() } else { Vec::new() },
        "discarded_publishes": if committed { Vec::new() } else { inv.messages.iter().map(message_json).collect::<Vec<_>>() },
        "refused_publishes": inv.refused_publishes,
        "logs": inv.logs.iter().map(log_json).collect::<Vec<_>>(),
        "dropped_logs": inv.dropped_logs,
    })
}

/// Render the report for people.
pub fn render_text(report: &Json) -> String {
    let mut out = String::new();
    let p = &report["plugin"];
    let _ = writeln!(
        out,
        "plugin   {} {}  ({}, sha256 {}, {} KiB, compiled in {:.0} ms)",
        s(&p["name"]),
        s(&p["version"]),
        s(&p["file"]),
        s(&p["hash"]),
        p["size_bytes"].as_u64().unwrap_or(0) / 1024,
        p["compile_ms"].as_f64().unwrap_or(0.0),
    );
    let d = &report["database"];
    let applied: Vec<String> = d["migrations_applied"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "database {} ({}){}",
        s(&d["url"]),
        s(&d["backend"]),
        if applied.is_empty() {
            String::new()
        } else {
            format!(", migrations applied: {}", applied.join(", "))
        }
    );
    let events = report["events"].as_array().cloned().unwrap_or_default();
    for (i, e) in events.iter().enumerate() {
        let ev = &e["event"];
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "── event {} ── {} [partition {}, offset {}] key {}",
            i + 1,
            s(&ev["topic"]),
            ev["partition"],
            ev["offset"],
            ev["key"]
        );
        let o = &e["outcome"];
        let _ = writeln!(
            out,
            "outcome  {}{}   ({:.2} ms{}) → {}",
            s(&o["kind"]).to_uppercase(),
            o["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            e["elapsed_ms"].as_f64().unwrap_or(0.0),
            if e["fresh_instance"].as_bool() == Some(true) {
                ", new instance"
            } else {
                ""
            },
            if e["committed"].as_bool() == Some(true) {
                "committed"
            } else {
                "rolled back"
            }
        );
        let statements = e["statements"].as_array().cloned().unwrap_or_default();
        if !statements.is_empty() {
            let _ = writeln!(out, "sql");
            for (n, st) in statements.iter().enumerate() {
                let sql = s(&st["sql"]);
                let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                let _ = writeln!(out, "  {}. {}", n + 1, sql);
                if let Some(params) = st["params"].as_array().filter(|p| !p.is_empty()) {
                    let rendered: Vec<String> = params
                        .iter()
                        .enumerate()
                        .map(|(k, v)| format!("${}={}", k + 1, v))
                        .collect();
                    let _ = writeln!(out, "     {}", rendered.join("  "));
                }
                let result = if let Some(n) = st.get("changed") {
                    format!("{n} row(s) changed")
                } else if let Some(n) = st.get("returned") {
                    format!("{n} row(s) returned")
                } else {
                    format!("ERROR {}", s(&st["error"]))
                };
                let _ = writeln!(out, "     → {result}");
            }
        }
        if let Some(changes) = e["changes"].as_object().filter(|c| !c.is_empty()) {
            let label = if e["committed"].as_bool() == Some(true) {
                "rows changed"
            } else {
                "rows it would have changed (rolled back)"
            };
            let _ = writeln!(out, "{label}");
            for (table, c) in changes {
                let _ = writeln!(out, "  {table}");
                for r in c["removed"].as_array().into_iter().flatten() {
                    let _ = writeln!(out, "    - {r}");
                }
                for r in c["added"].as_array().into_iter().flatten() {
                    let _ = writeln!(out, "    + {r}");
                }
                if let Some(why) = c.get("not_compared") {
                    let _ = writeln!(out, "    (not compared: {})", s(why));
                }
            }
        }
        for (field, label) in [
            ("published", "published"),
            (
                "discarded_publishes",
                "would have published (discarded: rolled back)",
            ),
        ] {
            let msgs = e[field].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{label} ({})", msgs.len());
            for m in msgs {
                let partition = m["partition"]
                    .as_i64()
                    .map_or("by key".to_string(), |p| p.to_string());
                let _ = writeln!(
                    out,
                    "  → {}  key {}  partition {}",
                    s(&m["topic"]),
                    m["key"],
                    partition
                );
                if let Some(h) = m["headers"].as_object() {
                    let hs: Vec<String> = h.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let _ = writeln!(out, "    headers {}", hs.join("  "));
                }
                let value = m.get("value").or_else(|| m.get("value_raw"));
                if let Some(v) = value {
                    let _ = writeln!(out, "    {v}");
                }
            }
        }
        for r in e["refused_publishes"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "publish refused: {}", s(r));
        }
        let logs = e["logs"].as_array().cloned().unwrap_or_default();
        if !logs.is_empty() {
            let _ = writeln!(out, "log");
            for l in logs {
                let _ = writeln!(
                    out,
                    "  {:5} [{}] {}",
                    s(&l["level"]),
                    s(&l["source"]),
                    s(&l["message"])
                );
            }
        }
        if e["dropped_logs"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "  ({} log lines dropped over the cap)",
                e["dropped_logs"]
            );
        }
    }
    out
}

/// A JSON string without quotes, other values as JSON.
fn s(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_value_and_value_raw() -> anyhow::Result<()> {
        let events = parse_events(
            "t.json",
            r#"[{"topic": "a", "key": "k", "headers": {"request-id": "r1"}, "value": {"x": "احمد"}},
                {"topic": "b", "value_raw": "not json"}]"#,
        )?;
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].payload, r#"{"x":"احمد"}"#.as_bytes());
        assert_eq!(events[0].header_str("request-id"), Some("r1"));
        assert_eq!(events[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(events[1].payload, b"not json");
        assert_eq!(events[1].offset, -1, "numbered later, in run order");
        Ok(())
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse_events("bad.json", "{\n  \"topic\": \"a\",\n  \"vaule\": 1\n}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("bad.json:3:"), "{err}");
        assert!(err.contains("vaule"), "{err}");
        let err = parse_events("x.json", r#"{"topic": "a"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("missing `value`"), "{err}");
        let err = parse_events("x.json", r#"{"topic": "a", "value": 1, "value_raw": "1"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn a_throwaway_database_keeps_the_servers_url() {
        for (admin, want) in [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/t1",
            ),
            ("postgres://u:p@db:5432", "postgres://u:p@db:5432/t1"),
            (
                "postgres://u@db/x?sslmode=require",
                "postgres://u@db/t1?sslmode=require",
            ),
            (
                "postgresql:///postgres?host=/var/run/postgresql",
                "postgresql:///t1?host=/var/run/postgresql",
            ),
        ] {
            assert_eq!(with_database(admin, "t1"), want, "{admin}");
        }
    }

    #[test]
    fn diff_reports_updates_as_removed_and_added() {
        let mut before = Snapshot::new();
        let mut after = Snapshot::new();
        before.insert(
            "t".into(),
            Ok(vec![json!({"id": 1, "n": 1}), json!({"id": 2, "n": 5})]),
        );
        after.insert(
            "t".into(),
            Ok(vec![json!({"id": 1, "n": 2}), json!({"id": 2, "n": 5})]),
        );
        after.insert("empty".into(), Ok(vec![]));
        let d = diff(&before, &after);
        assert_eq!(d["t"]["removed"], json!([{"id": 1, "n": 1}]));
        assert_eq!(d["t"]["added"], json!([{"id": 1, "n": 2}]));
        assert!(d.get("empty").is_none());
    }
}
