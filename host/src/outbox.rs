//! The outbox: messages a plugin published are written to
//! `switchyard_outbox` in the event's transaction, and a relay produces
//! them afterwards (idempotent producer, `acks=all`), deleting each row
//! only once its delivery is confirmed. A crash between commit and produce
//! loses nothing (the rows wait); a crash between produce and delete sends
//! a row twice, with the same `event-id` header for consumers to dedupe.
//!
//! Also here: the router's own tables (`switchyard_processed` markers and
//! the outbox), created at start.

use crate::bindings::switchyard::plugin::db::Value;
use crate::capabilities::publish::OutMessage;
use crate::database::{Backend, Database, Tx};
use crate::event::Headers;
use crate::kafka::{ProduceFailure, classify_produce_error, to_headers};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store_error::StoreError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::deadletter;
use tokio::sync::Notify;

const POSTGRES_TABLES: &str = "
CREATE TABLE IF NOT EXISTS switchyard_processed (
    consumer_group text NOT NULL,
    plugin text NOT NULL,
    dedupe_key text NOT NULL,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    outcome text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, plugin, dedupe_key)
);
CREATE TABLE IF NOT EXISTS switchyard_outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    msg_key bytea,
    payload bytea NOT NULL,
    headers text NOT NULL,
    msg_partition integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS switchyard_migrations (
    plugin TEXT NOT NULL,
    id TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (plugin, id)
);
-- Migrations applied before plugins had identities ran as the host:
-- false until their tables are handed over (Database::adopt_tables).
ALTER TABLE switchyard_migrations ADD COLUMN IF NOT EXISTS runs_as_plugin boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS switchyard_heartbeat (
    instance text PRIMARY KEY,
    beat_at text NOT NULL
);
ALTER TABLE switchyard_outbox ADD COLUMN IF NOT EXISTS plugin text NOT NULL DEFAULT '';
ALTER TABLE switchyard_outbox ADD COLUMN IF NOT EXISTS retry_at_ms bigint;
CREATE INDEX IF NOT EXISTS switchyard_outbox_plugin_id ON switchyard_outbox (plugin, id);";

const SQLITE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS switchyard_processed (
    consumer_group TEXT NOT NULL,
    plugin TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    processed_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (consumer_group, plugin, dedupe_key)
);
CREATE TABLE IF NOT EXISTS switchyard_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    msg_key BLOB,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    msg_partition INTEGER,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS switchyard_migrations (
    plugin TEXT NOT NULL,
    id TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (plugin, id)
);
CREATE TABLE IF NOT EXISTS switchyard_plugin_tables (
    plugin TEXT NOT NULL,
    table_name TEXT NOT NULL,
    PRIMARY KEY (table_name)
);
CREATE TABLE IF NOT EXISTS switchyard_heartbeat (
    instance TEXT PRIMARY KEY,
    beat_at TEXT NOT NULL
);";

/// Columns added to `switchyard_outbox` after its first release, with
/// their SQLite declarations (SQLite has no `ADD COLUMN IF NOT EXISTS`, so
/// each is added only where `pragma_table_info` lacks it; PostgreSQL's
/// script above does the same with `IF NOT EXISTS`):
/// - `plugin`: who published the row, for the relay's fair share and the
///   quarantine's headers and metrics; rows written before it belong to
///   `''`, one more share;
/// - `retry_at_ms`: a row the broker refused for good whose dead letter
///   could not be written either waits until then (Unix ms), so it does
///   not hold the rows behind it; `NULL` for every other row.
const SQLITE_ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    ("switchyard_outbox", "plugin", "TEXT NOT NULL DEFAULT ''"),
    ("switchyard_outbox", "retry_at_ms", "INTEGER"),
    // Migrations applied before plugins had identities ran as the host:
    // 0 until their tables are handed over (Database::adopt_tables).
    (
        "switchyard_migrations",
        "runs_as_plugin",
        "INTEGER NOT NULL DEFAULT 0",
    ),
];

const SQLITE_INDEXES: &str =
    "CREATE INDEX IF NOT EXISTS switchyard_outbox_plugin_id ON switchyard_outbox (plugin, id)";

/// Create the router's tables if they are missing, bring tables created
/// by an earlier version up to date (forward only: the added columns have
/// defaults), and on PostgreSQL set up the host schema and its guarded
/// functions (see [`crate::pg_identity`]).
pub async fn create_tables(db: &Database) -> Result<(), sqlx::Error> {
    match db.postgres() {
        Some(pg) => {
            db.run_script(POSTGRES_TABLES).await?;
            pg.setup().await
        }
        None => {
            db.run_script(SQLITE_TABLES).await?;
            for (table, column, declaration) in SQLITE_ADDED_COLUMNS {
                let have = db.column_names(table).await?;
                if !have.iter().any(|c| c == column) {
                    db.run_script(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                    ))
                    .await?;
                }
            }
            db.run_script(SQLITE_INDEXES).await
        }
    }
}

pub use switchyard_core::work::Marker;

/// Record that the plugin handled the event (`outcome`: `handled` or
/// `dead-lettered`). Returns `false` when the marker already existed: a
/// duplicate, to be skipped.
pub async fn mark_processed(tx: &mut Tx, m: Marker<'_>, outcome: &str) -> Result<bool, StoreError> {
    let written = mark_plugin(tx, m.plugin, std::slice::from_ref(&m), outcome).await?;
    Ok(written.contains(m.dedupe_key))
}

/// Write markers of one plugin with `outcome`; returns the dedupe keys
/// written (a key not returned had a marker already). On PostgreSQL one
/// guarded call in the plugin's session, whatever the count.
async fn mark_plugin(
    tx: &mut Tx,
    plugin: &str,
    markers: &[Marker<'_>],
    outcome: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut written = std::collections::HashSet::new();
    let now = chrono::Utc::now();
    if let Some(call) = tx.host_call(plugin).await? {
        let group = markers.first().map_or("", |m| m.group);
        let keys: Vec<&str> = markers.iter().map(|m| m.dedupe_key).collect();
        let topics: Vec<&str> = markers.iter().map(|m| m.topic).collect();
        let partitions: Vec<i32> = markers.iter().map(|m| m.partition).collect();
        let offsets: Vec<i64> = markers.iter().map(|m| m.offset).collect();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT switchyard_host.mark($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&*call.secret)
        .bind(call.xid)
        .bind(group)
        .bind(plugin)
        .bind(&keys)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .bind(outcome)
        .bind(now)
        .persistent(false)
        .fetch_all(&mut *call.conn)
        .await
        .map_err(crate::database::map_error)?;
        written.extend(rows);
        return Ok(written);
    }
    // Eight parameters a marker: 256 markers stay far below SQLite's
    // 32 766 parameters, whatever batch_size says.
    for chunk in markers.chunks(MARK_CHUNK) {
        let mut sql = multi_row_insert(
            "switchyard_processed (consumer_group, plugin, dedupe_key, topic, kafka_partition, kafka_offset, outcome, processed_at)",
            chunk.len(),
            8,
        );
        let mut params = Vec::with_capacity(chunk.len() * 8);
        for m in chunk {
            params.extend([
                Value::Text(m.group.to_string()),
                Value::Text(m.plugin.to_string()),
                Value::Text(m.dedupe_key.to_string()),
                Value::Text(m.topic.to_string()),
                Value::Int(i64::from(m.partition)),
                Value::Int(m.offset),
                Value::Text(outcome.to_string()),
                Value::Timestamp(now.timestamp_micros()),
            ]);
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING dedupe_key");
        let rows = tx.query_host(&sql, &params).await?;
        for row in rows.rows {
            match row.as_slice() {
                [Value::Text(key)] => {
                    written.insert(key.clone());
                }
                // Never read a marker as absent: that event would count
                // as a duplicate and be lost.
                other => {
                    return Err(StoreError::Invalid(format!(
                        "unexpected row from the marker insert: {other:?}"
                    )));
                }
            }
        }
    }
    Ok(written)
}

/// `INSERT INTO <table_columns> VALUES ($1, ...), ...` for `rows` rows of
/// `columns` parameters.
fn multi_row_insert(table_columns: &str, rows: usize, columns: usize) -> String {
    format!(
        "INSERT INTO {table_columns} VALUES {}",
        values_placeholders(rows, columns)
    )
}

/// `($1, $2), ($3, $4), ...`: `rows` tuples of `columns` numbered
/// placeholders, for a multi-row `VALUES`.
fn values_placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write the markers of a batch (`handled`): one statement per plugin.
/// Returns the (plugin, dedupe key) pairs written; a pair not returned
/// already had a marker: a duplicate. A pair twice in `markers` is
/// written once.
pub async fn mark_many(
    tx: &mut Tx,
    markers: &[Marker<'_>],
) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
    let mut plugins: Vec<&str> = markers.iter().map(|m| m.plugin).collect();
    plugins.sort_unstable();
    plugins.dedup();
    let mut written = std::collections::HashSet::new();
    for plugin in plugins {
        let mine: Vec<Marker<'_>> = markers
            .iter()
            .filter(|m| m.plugin == plugin)
            .copied()
            .collect();
        for key in mark_plugin(tx, plugin, &mine, "handled").await? {
            written.insert((plugin.to_string(), key));
        }
    }
    Ok(written)
}

/// Markers written by one statement.
const MARK_CHUNK: usize = 256;

/// Take the marker of a dead-lettered event for its replay: the marker
/// under (group, plugin, dedupe key) goes from `dead-lettered` to
/// `replayed`, in the replay's transaction. Returns `false` when there is
/// no such marker — the event was replayed already, or the replay headers
/// came from somewhere else than `switchyard dlq replay` — and the replay
/// must not run. If the transaction rolls back, the marker stays
/// `dead-lettered` and the dead letter can be replayed again.
pub async fn claim_replay(tx: &mut Tx, m: Marker<'_>) -> Result<bool, StoreError> {
    let now = chrono::Utc::now();
    if let Some(call) = tx.host_call(m.plugin).await? {
        return sqlx::query_scalar(
            "SELECT switchyard_host.claim_replay($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&*call.secret)
        .bind(call.xid)
        .bind(m.group)
        .bind(m.plugin)
        .bind(m.dedupe_key)
        .bind(m.topic)
        .bind(m.partition)
        .bind(now)
        .persistent(false)
        .fetch_one(&mut *call.conn)
        .await
        .map_err(crate::database::map_error);
    }
    let n = tx
        .execute_host(
            // Only a record on the dead letter's own topic and partition
            // (where `dlq replay` sends it) can take its marker.
            "UPDATE switchyard_processed SET outcome = 'replayed', processed_at = $4 WHERE consumer_group = $1 AND plugin = $2 AND dedupe_key = $3 AND outcome = 'dead-lettered' AND topic = $5 AND kafka_partition = $6",
            &[
                Value::Text(m.group.to_string()),
                Value::Text(m.plugin.to_string()),
                Value::Text(m.dedupe_key.to_string()),
                Value::Timestamp(now.timestamp_micros()),
                Value::Text(m.topic.to_string()),
                Value::Int(i64::from(m.partition)),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// The marker for `sel`: a new one, or for a replay the dead-lettered one
/// taken over (see [`claim_replay`]). `false`: skip the event for this
/// plugin.
pub async fn mark_or_claim(tx: &mut Tx, m: Marker<'_>, replay: bool) -> Result<bool, StoreError> {
    if replay {
        claim_replay(tx, m).await
    } else {
        mark_processed(tx, m, "handled").await
    }
}

/// Up to this many messages (six parameters each) go in one statement.
const ENQUEUE_CHUNK: usize = 100;

/// Write `plugin`'s messages into the outbox, in the event's (or the
/// batch's) transaction, in order (the relay sends them by id). On
/// PostgreSQL one guarded call in the plugin's session; on SQLite one
/// statement per hundred messages.
pub async fn enqueue(tx: &mut Tx, plugin: &str, messages: &[OutMessage]) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    if let Some(call) = tx.host_call(plugin).await? {
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        let keys: Vec<Option<&[u8]>> = messages.iter().map(|m| m.key.as_deref()).collect();
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
        let headers: Vec<String> = messages
            .iter()
            .map(|m| encode_headers(&m.headers))
            .collect();
        let partitions: Vec<Option<i32>> = messages.iter().map(|m| m.partition).collect();
        sqlx::query("SELECT switchyard_host.enqueue($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&*call.secret)
            .bind(call.xid)
            .bind(plugin)
            .bind(&topics)
            .bind(&keys)
            .bind(&payloads)
            .bind(&headers)
            .bind(&partitions)
            .persistent(false)
            .execute(&mut *call.conn)
            .await
            .map_err(crate::database::map_error)?;
        return Ok(());
    }
    for chunk in messages.chunks(ENQUEUE_CHUNK) {
        let sql = multi_row_insert(
            "switchyard_outbox (topic, msg_key, payload, headers, msg_partition, plugin)",
            chunk.len(),
            6,
        );
        let mut params = Vec::with_capacity(chunk.len() * 6);
        for m in chunk {
            params.extend([
                Value::Text(m.topic.clone()),
                m.key.clone().map_or(Value::Null, Value::Bytes),
                Value::Bytes(m.payload.clone()),
                Value::Text(encode_headers(&m.headers)),
                m.partition
                    .map_or(Value::Null, |p| Value::Int(i64::from(p))),
                Value::Text(m.plugin.clone()),
            ]);
        }
        tx.execute_host(&sql, &params).await?;
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Headers as JSON `[[name, hex value or null], ...]`: header values are
/// bytes, and this keeps them exact on both backends.
pub fn encode_headers(headers: &[(String, Option<Vec<u8>>)]) -> String {
    let list: Vec<(&str, Option<String>)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_deref().map(hex)))
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_string())
}

/// The inverse of [`encode_headers`].
pub fn decode_headers(text: &str) -> Result<Headers, String> {
    let list: Vec<(String, Option<String>)> = serde_json::from_str(text)
        .map_err(|e| format!("outbox headers are not valid JSON: {e}"))?;
    list.into_iter()
        .map(|(n, v)| match v {
            None => Ok((n, None)),
            Some(h) => unhex(&h)
                .map(|b| (n.clone(), Some(b)))
                .ok_or_else(|| format!("outbox header {n} is not hex")),
        })
        .collect()
}

/// One outbox row.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    message: OutMessage,
}

/// The columns the relay reads, in [`decode_row`]'s order.
const ROW_COLUMNS: &str = "id, plugin, topic, msg_key, payload, headers, msg_partition";

fn decode_row(cells: Vec<Value>) -> Result<Row, String> {
    let mut it = cells.into_iter();
    let mut next = || it.next().unwrap_or(Value::Null);
    let id = match next() {
        Value::Int(i) => i,
        other => return Err(format!("outbox id is {other:?}")),
    };
    let plugin = match next() {
        Value::Text(p) => p,
        _ => String::new(),
    };
    let topic = match next() {
        Value::Text(t) => t,
        other => return Err(format!("outbox row {id}: topic is {other:?}")),
    };
    let key = match next() {
        Value::Bytes(b) => Some(b),
        Value::Text(t) => Some(t.into_bytes()),
        _ => None,
    };
    let payload = match next() {
        Value::Bytes(b) => b,
        Value::Text(t) => t.into_bytes(),
        _ => Vec::new(),
    };
    let headers = match next() {
        Value::Text(t) => decode_headers(&t).map_err(|e| format!("outbox row {id}: {e}"))?,
        _ => Vec::new(),
    };
    let partition = match next() {
        Value::Int(p) => i32::try_from(p).ok(),
        _ => None,
    };
    Ok(Row {
        id,
        message: OutMessage {
            plugin,
            topic,
            key,
            payload,
            headers,
            partition,
        },
    })
}

/// How many rows of one plugin a relay pass takes when `plugins` plugins
/// have rows waiting: an equal share of the window (at least one), so one
/// plugin's backlog cannot fill the window while another's rows wait.
pub fn fair_share(batch: usize, plugins: usize) -> usize {
    batch.div_ceil(plugins.max(1)).max(1)
}

/// The pass's window from each plugin's rows (each in id order, at most
/// its fair share): all of them, sent in id order. Each plugin's own order
/// — and so its order per (topic, key) — is the order it committed in, as
/// when the window was the oldest rows of all; only which rows make the
/// window changed.
fn window(per_plugin: Vec<Vec<Row>>) -> Vec<Row> {
    let mut rows: Vec<Row> = per_plugin.into_iter().flatten().collect();
    rows.sort_by_key(|r| r.id);
    rows
}

/// How long a row whose dead letter could not be written waits before the
/// relay tries again; meanwhile the rows behind it flow.
pub const DEAD_LETTER_RETRY: Duration = Duration::from_secs(30);

/// Where messages the broker refuses for good go.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// The dead-letter topic (`[dead_letter] topic`).
    pub topic: String,
    /// The producer's `message.max.bytes`: a dead letter larger than this
    /// keeps only the start of its value (headers say how much there was).
    pub message_max_bytes: usize,
}

/// Produces outbox rows and deletes them once delivered; moves the rows
/// the broker refuses for good to the dead-letter topic.
pub struct Relay {
    db: Database,
    producer: FutureProducer,
    /// Wakes the relay right after a commit that enqueued messages.
    pub wake: Arc<Notify>,
    batch: i64,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Rows produced and deleted.
    pub delivered: usize,
    /// Rows whose delivery failed for a transient reason (kept for the
    /// next pass).
    pub failed: usize,
    /// Rows refused for good, written to the dead-letter topic and deleted.
    pub quarantined: usize,
    /// Rows refused for good whose dead letter failed too: kept, and left
    /// out of the window for [`DEAD_LETTER_RETRY`].
    pub parked: usize,
}

impl Pass {
    /// Whether the pass moved any row out of the outbox.
    pub fn progressed(&self) -> bool {
        self.delivered + self.quarantined > 0
    }
}

/// A row the broker refused for good, and why.
struct Refused {
    row: Row,
    reason: &'static str,
    error: String,
}

impl Relay {
    /// A relay over `db` producing with `producer`; refused rows go to
    /// `dead_letters`, counted in `metrics`.
    pub fn new(
        db: Database,
        producer: FutureProducer,
        wake: Arc<Notify>,
        dead_letters: DeadLetters,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            producer,
            wake,
            batch: 500,
            dead_letters,
            metrics,
        }
    }

    /// Read the pass's window: the plugins with rows waiting, then each
    /// plugin's oldest rows up to its fair share, leaving out rows waiting
    /// for a dead-letter retry. On PostgreSQL the rows are locked (`SKIP
    /// LOCKED`) so that several routers on one database never send the
    /// same row at once.
    async fn read_window(&self, tx: &mut Tx) -> Result<Vec<Vec<Value>>, StoreError> {
        let unlimited = Limits {
            max_rows: usize::MAX,
            max_result_bytes: usize::MAX,
            ..Limits::default()
        };
        // The distinct plugins by a walk up the (plugin, id) index, one
        // probe per plugin, instead of a scan of the whole backlog.
        let plugins = tx
            .query(
                "WITH RECURSIVE p(plugin) AS (SELECT min(plugin) FROM switchyard_outbox UNION ALL SELECT (SELECT min(o.plugin) FROM switchyard_outbox o WHERE o.plugin > p.plugin) FROM p WHERE p.plugin IS NOT NULL) SELECT plugin FROM p WHERE plugin IS NOT NULL",
                &[],
                &unlimited,
            )
            .await?;
        let plugins: Vec<String> = plugins
            .rows
            .into_iter()
            .filter_map(|r| match r.into_iter().next() {
                Some(Value::Text(p)) => Some(p),
                _ => None,
            })
            .collect();
        let batch = usize::try_from(self.batch).unwrap_or(500);
        let share = fair_share(batch, plugins.len());
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM switchyard_outbox WHERE plugin = $1 AND (retry_at_ms IS NULL OR retry_at_ms <= $2) ORDER BY id LIMIT $3{}",
            match self.db.backend() {
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                Backend::Sqlite => "",
            }
        );
        let now = chrono::Utc::now().timestamp_millis();
        let mut rows = Vec::new();
        for plugin in plugins {
            let got = tx
                .query(
                    &sql,
                    &[
                        Value::Text(plugin),
                        Value::Int(now),
                        Value::Int(i64::try_from(share).unwrap_or(i64::MAX)),
                    ],
                    &unlimited,
                )
                .await?;
            rows.push(got.rows);
        }
        Ok(rows.into_iter().flatten().collect())
    }

    /// Produce one window of rows, each plugin its fair share, oldest
    /// first; delete the delivered ones. A row the broker refuses for good
    /// (see [`classify_produce_error`]) goes to the dead-letter topic and
    /// is deleted, so it cannot hold the rows behind it; if its dead
    /// letter fails too, the row stays and waits [`DEAD_LETTER_RETRY`]
    /// outside the window. Rows that failed for a transient reason stay
    /// for the next pass.
    pub async fn pass(&self) -> anyhow::Result<Pass> {
        let mut tx = self.db.begin().await?;
        let cells = self
            .read_window(&mut tx)
            .await
            .map_err(|e| anyhow::anyhow!("reading the outbox: {}", e.to_string()))?;
        if cells.is_empty() {
            tx.rollback().await?;
            return Ok(Pass::default());
        }
        // SQLite has one connection, shared with every lane: do not hold it
        // while waiting for the broker. (Only this relay deletes rows, so
        // reading and deleting in two transactions is safe there.)
        let mut held = match self.db.backend() {
            Backend::Postgres => Some(tx),
            Backend::Sqlite => {
                tx.rollback().await?;
                None
            }
        };
        let mut rows = Vec::with_capacity(cells.len());
        let mut failed = 0;
        for c in cells {
            match decode_row(c) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    tracing::error!(error = %e, "undecodable outbox row left in place; fix or delete it by hand");
                    failed += 1;
                }
            }
        }
        let mut pending = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        for row in window(vec![rows]) {
            let m = &row.message;
            let mut record = FutureRecord::<[u8], [u8]>::to(&m.topic)
                .payload(&m.payload)
                .headers(to_headers(&m.headers));
            if let Some(k) = &m.key {
                record = record.key(k);
            }
            if let Some(p) = m.partition {
                record = record.partition(p);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((row, delivery)),
                Err((e, _)) => match classify_produce_error(&e) {
                    ProduceFailure::Permanent(reason) => refused.push(Refused {
                        row,
                        reason,
                        error: e.to_string(),
                    }),
                    ProduceFailure::Transient => {
                        tracing::warn!(error = %e, plugin = %m.plugin, topic = %m.topic, "cannot queue outbox message; will retry");
                        failed += 1;
                    }
                },
            }
        }
        let mut delivered = Vec::with_capacity(pending.len());
        for (row, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => delivered.push(row.id),
                Ok(Err((e, _))) => match classify_produce_error(&e) {
                    ProduceFailure::Permanent(reason) => refused.push(Refused {
                        row,
                        reason,
                        error: e.to_string(),
                    }),
                    ProduceFailure::Transient => {
                        tracing::warn!(error = %e, plugin = %row.message.plugin, topic = %row.message.topic, "outbox delivery failed; the row stays and is retried");
                        failed += 1;
                    }
                },
                Err(_) => failed += 1,
            }
        }
        let (moved, parked) = self.quarantine(refused).await;
        let mut tx = match held.take() {
            Some(tx) => tx,
            None => self.db.begin().await?,
        };
        let gone: Vec<i64> = delivered.iter().chain(&moved).copied().collect();
        for chunk in gone.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM switchyard_outbox WHERE id IN ({})",
                placeholders.join(", ")
            );
            let params: Vec<Value> = chunk.iter().map(|id| Value::Int(*id)).collect();
            tx.execute_host(&sql, &params).await.map_err(|e| {
                anyhow::anyhow!("deleting delivered outbox rows: {}", e.to_string())
            })?;
        }
        let retry_at = chrono::Utc::now().timestamp_millis()
            + i64::try_from(DEAD_LETTER_RETRY.as_millis()).unwrap_or(i64::MAX);
        for id in &parked {
            tx.execute_host(
                "UPDATE switchyard_outbox SET retry_at_ms = $1 WHERE id = $2",
                &[Value::Int(retry_at), Value::Int(*id)],
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "parking an outbox row whose dead letter failed: {}",
                    e.to_string()
                )
            })?;
        }
        tx.commit().await?;
        Ok(Pass {
            delivered: delivered.len(),
            failed,
            quarantined: moved.len(),
            parked: parked.len(),
        })
    }

    /// Write each refused row to the dead-letter topic, all at once.
    /// Returns the ids written (to delete) and those whose dead letter
    /// failed (to park).
    async fn quarantine(&self, refused: Vec<Refused>) -> (Vec<i64>, Vec<i64>) {
        let mut moved = Vec::new();
        let mut parked = Vec::new();
        let mut pending = Vec::with_capacity(refused.len());
        for r in &refused {
            let (payload, headers) = dead_letter_of(r, self.dead_letters.message_max_bytes);
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letters.topic)
                .payload(payload)
                .headers(to_headers(&headers));
            if let Some(k) = &r.row.message.key {
                record = record.key(k);
            }
            pending.push(self.producer.send_result(record).map_err(|(e, _)| e));
        }
        for (r, sent) in refused.iter().zip(pending) {
            let m = &r.row.message;
            let written = match sent {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match written {
                Ok(()) => {
                    self.metrics.outbox_quarantined(&m.plugin, r.reason);
                    tracing::error!(
                        plugin = %m.plugin,
                        topic = %m.topic,
                        partition = ?m.partition,
                        outbox_id = r.row.id,
                        event_id = m.header_str("event-id").unwrap_or(""),
                        reason = r.reason,
                        error = %r.error,
                        dead_letter_topic = %self.dead_letters.topic,
                        "the broker refused an outbox message for good; moved to the dead-letter topic (outcome `quarantined`)"
                    );
                    moved.push(r.row.id);
                }
                Err(e) => {
                    self.metrics.outbox_dead_letter_failed(&e);
                    tracing::error!(
                        plugin = %m.plugin,
                        topic = %m.topic,
                        outbox_id = r.row.id,
                        reason = r.reason,
                        error = %r.error,
                        dead_letter_error = %e,
                        "an outbox message the broker refused for good could not be dead-lettered either; the row stays and is tried again in {DEAD_LETTER_RETRY:?}, the rows behind it go on"
                    );
                    parked.push(r.row.id);
                }
            }
        }
        (moved, parked)
    }

    /// Rows waiting in the outbox.
    pub async fn backlog(&self) -> anyhow::Result<i64> {
        backlog(&self.db).await
    }

    /// Relay until `stop` resolves: a pass after every wake-up, and at
    /// least every 200 ms; backs off while passes make no progress (Kafka
    /// or the database down), but not while some rows fail and others
    /// flow: a failing row does not slow the rest.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.pass().await {
                Ok(p) if p.failed == 0 => {
                    backoff = Duration::from_millis(100);
                    if p.progressed() {
                        continue;
                    }
                }
                Ok(p) if p.progressed() => {
                    backoff = Duration::from_millis(100);
                    tracing::debug!(
                        delivered = p.delivered,
                        quarantined = p.quarantined,
                        failed = p.failed,
                        "outbox relay: some messages not delivered; the others went on"
                    );
                    continue;
                }
                Ok(p) => {
                    tracing::warn!(
                        failed = p.failed,
                        "outbox relay: no message delivered; retrying in {backoff:?}"
                    );
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "outbox relay paused; retrying in {backoff:?}");
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Deliver everything that is in the outbox now (shutdown), giving up
    /// after `timeout`. Returns the rows left.
    pub async fn drain(&self, timeout: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            match self.pass().await {
                Ok(p) if !p.progressed() && p.failed == 0 => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "outbox drain failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.backlog().await.unwrap_or(-1)
    }
}

/// The dead letter of a refused row: its value (only the start of it when
/// the whole would be over the producer's limit: the usual reason it was
/// refused) and its headers — the message's own, then the host's
/// `switchyard.*` saying which plugin, why, where it was going and which
/// row and event id it was.
fn dead_letter_of(r: &Refused, message_max_bytes: usize) -> (&[u8], Headers) {
    let m = &r.row.message;
    let mut headers = deadletter::quarantine_headers(
        &deadletter::Quarantine {
            headers: &m.headers,
            plugin: &m.plugin,
            topic: &m.topic,
            partition: m.partition,
            key: m.key.as_deref(),
            event_id: m.header_str("event-id"),
            outbox_id: r.row.id,
            reason: r.reason,
            error: &r.error,
        },
        chrono::Utc::now(),
    );
    let key = m.key.as_deref();
    let whole = crate::kafka::record_wire_size(key, &m.payload, &headers);
    if whole <= message_max_bytes {
        return (&m.payload, headers);
    }
    let note = m.payload.len().to_string().into_bytes();
    headers.push((deadletter::TRUNCATED_FROM.to_string(), Some(note)));
    let framing = crate::kafka::record_wire_size(key, &[], &headers);
    // The value's own length prefix may shrink; the bound stays safe.
    let keep = message_max_bytes
        .saturating_sub(framing)
        .min(m.payload.len());
    (&m.payload[..keep], headers)
}

/// The outbox as `/health` sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxState {
    /// Rows waiting.
    pub backlog: i64,
    /// Age of the oldest row waiting, in seconds (0 when none).
    pub oldest_age_s: i64,
    /// Rows the broker refused for good whose dead letter failed: waiting
    /// for a retry.
    pub parked: i64,
}

/// Backlog, oldest row's age and parked rows, in one short transaction.
pub async fn state(db: &Database) -> anyhow::Result<OutboxState> {
    let age_sql = match db.backend() {
        Backend::Postgres => {
            "SELECT CAST(EXTRACT(EPOCH FROM (now() - created_at)) AS bigint) FROM switchyard_outbox ORDER BY id LIMIT 1"
        }
        Backend::Sqlite => {
            "SELECT CAST(strftime('%s', 'now') AS INTEGER) - CAST(strftime('%s', created_at) AS INTEGER) FROM switchyard_outbox ORDER BY id LIMIT 1"
        }
    };
    let mut tx = db.begin().await?;
    let mut ints = Vec::new();
    for sql in [
        "SELECT count(*) FROM switchyard_outbox",
        age_sql,
        "SELECT count(*) FROM switchyard_outbox WHERE retry_at_ms IS NOT NULL",
    ] {
        let rows = tx
            .query(sql, &[], &Limits::default())
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.to_string()))?;
        ints.push(match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        });
    }
    tx.rollback().await?;
    Ok(OutboxState {
        backlog: ints[0],
        oldest_age_s: ints[1].max(0),
        parked: ints[2],
    })
}

async fn sleep_or_stop(
    d: Duration,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    tokio::select! {
        _ = stop.as_mut() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Rows waiting in the outbox: committed by plugins, not yet acknowledged
/// by the broker.
pub async fn backlog(db: &Database) -> anyhow::Result<i64> {
    let mut tx = db.begin().await?;

    let rows = tx
        .query(
            "SELECT count(*) FROM switchyard_outbox",
            &[],
            &Limits::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.to_string()))?;
    tx.rollback().await?;
    Ok(match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(values_placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(0, 3), "");
    }

    #[test]
    fn headers_round_trip_exactly() {
        let h = vec![
            ("event-id".to_string(), Some(b"abc".to_vec())),
            ("bin".to_string(), Some(vec![0, 255, 10])),
            ("null".to_string(), None),
        ];
        assert_eq!(decode_headers(&encode_headers(&h)), Ok(h));
        assert!(decode_headers("[[\"x\", \"zz\"]]").is_err());
    }

    fn row(id: i64, plugin: &str) -> Row {
        Row {
            id,
            message: OutMessage {
                plugin: plugin.to_string(),
                topic: "t".to_string(),
                key: Some(format!("k{}", id % 3).into_bytes()),
                payload: Vec::new(),
                headers: Vec::new(),
                partition: None,
            },
        }
    }

    #[test]
    fn each_plugin_gets_a_share_of_the_window() {
        assert_eq!(fair_share(500, 0), 500);
        assert_eq!(fair_share(500, 1), 500);
        assert_eq!(fair_share(500, 2), 250);
        assert_eq!(fair_share(500, 3), 167);
        assert_eq!(fair_share(500, 1000), 1, "every plugin gets at least one");
    }

    /// What a pass selects from an in-memory outbox, as `read_window`
    /// does in SQL: the plugins waiting, then each one's oldest rows up to
    /// its share.
    fn select(outbox: &[Row], batch: usize) -> Vec<Row> {
        let mut plugins: Vec<&str> = outbox.iter().map(|r| r.message.plugin.as_str()).collect();
        plugins.sort();
        plugins.dedup();
        let share = fair_share(batch, plugins.len());
        window(
            plugins
                .iter()
                .map(|p| {
                    outbox
                        .iter()
                        .filter(|r| r.message.plugin == *p)
                        .take(share)
                        .cloned()
                        .collect()
                })
                .collect(),
        )
    }

    #[test]
    fn a_backlog_does_not_starve_another_plugin() {
        // Plugin a committed 100 000 rows (some of them failing for ever
        // at the head), then b committed three.
        let mut outbox: Vec<Row> = (1..=100_000).map(|id| row(id, "a")).collect();
        outbox.extend((100_001..=100_003).map(|id| row(id, "b")));
        let first = select(&outbox, 500);
        let b: Vec<i64> = first
            .iter()
            .filter(|r| r.message.plugin == "b")
            .map(|r| r.id)
            .collect();
        assert_eq!(
            b,
            vec![100_001, 100_002, 100_003],
            "b's rows are in the first window"
        );
        assert_eq!(
            first.iter().filter(|r| r.message.plugin == "a").count(),
            250
        );
        // Sent in id order: each plugin's order (and so its order per
        // topic and key) is its commit order.
        assert!(first.windows(2).all(|w| w[0].id < w[1].id));
        // Alone, a plugin has the whole window.
        assert_eq!(select(&outbox[..100_000], 500).len(), 500);
    }

    #[test]
    fn a_refused_row_becomes_a_dead_letter_that_says_why() {
        let mut r = row(42, "a");
        r.message.topic = "orders".into();
        r.message.partition = Some(7);
        r.message.headers = vec![
            ("event-id".into(), Some(b"g:a:pos:x/0/1:0".to_vec())),
            ("switchyard.plugin".into(), Some(b"forged".to_vec())),
        ];
        r.message.payload = vec![b'v'; 5_000];
        let refused = Refused {
            row: r,
            reason: "unknown_partition",
            error: "Message production error: UnknownPartition".into(),
        };
        let header = |h: &Headers, n: &str| {
            h.iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| {
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
                })
                .collect::<Vec<_>>()
        };
        let (payload, h) = dead_letter_of(&refused, 1_000_000);
        assert_eq!(payload.len(), 5_000, "whole when it fits");
        assert_eq!(
            header(&h, "switchyard.plugin"),
            vec!["a"],
            "the host's only"
        );
        assert_eq!(header(&h, "switchyard.outcome"), vec!["quarantined"]);
        assert_eq!(header(&h, "switchyard.reason"), vec!["unknown_partition"]);
        assert_eq!(header(&h, "switchyard.original-topic"), vec!["orders"]);
        assert_eq!(header(&h, "switchyard.original-partition"), vec!["7"]);
        assert_eq!(header(&h, "switchyard.original-key"), vec!["k0"]);
        assert_eq!(header(&h, "switchyard.event-id"), vec!["g:a:pos:x/0/1:0"]);
        assert_eq!(header(&h, "event-id"), vec!["g:a:pos:x/0/1:0"]);
        assert_eq!(header(&h, "switchyard.outbox-id"), vec!["42"]);
        assert!(header(&h, "switchyard.error")[0].contains("UnknownPartition"));
        assert!(header(&h, "switchyard.truncated-from").is_empty());
        // Too large for the producer: the start of the value, and how much
        // there was.
        let (payload, h) = dead_letter_of(&refused, 2_000);
        assert_eq!(header(&h, "switchyard.truncated-from"), vec!["5000"]);
        assert!(!payload.is_empty());
        assert!(
            crate::kafka::record_wire_size(Some(b"k0"), payload, &h) <= 2_000,
            "the dead letter fits"
        );
    }
}
