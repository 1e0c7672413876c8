//! The outbox: messages a plugin published are written to
//! `switchyard_outbox` in the event's transaction, and the relay
//! (`switchyard::relay`) produces them afterwards, deleting each row only
//! once its delivery is confirmed. A crash between commit and produce
//! loses nothing (the rows wait); a crash between produce and delete sends
//! a row twice, with the same `event-id` header for consumers to dedupe.
//!
//! Also here: the router's own tables (`switchyard_processed` markers and
//! the outbox), created at start.

use crate::database::{Backend, Database, Tx};
use crate::error::StoreError;
use switchyard_core::event::Headers;
use switchyard_core::message::OutMessage;
use switchyard_wit::switchyard::plugin::db::Value;

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
        // A row that does not read as a key is an error, never a marker
        // read as absent: that event would count as a duplicate and be
        // lost.
        let rows: Vec<(String,)> = tx.query_host_as(&sql, &params).await?;
        written.extend(rows.into_iter().map(|(key,)| key));
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
pub struct Row {
    /// The row's id: the order the relay sends in.
    pub id: i64,
    /// The message.
    pub message: OutMessage,
}

/// The columns the relay reads, as [`Record`] names them.
pub const ROW_COLUMNS: &str =
    "id, plugin, topic, msg_key, payload, headers, CAST(msg_partition AS bigint) AS msg_partition";

/// An outbox row as stored ([`ROW_COLUMNS`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Record {
    /// The row's id.
    pub id: i64,
    /// The plugin that published it (`''` for rows from before the column).
    pub plugin: String,
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub msg_key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Headers, as [`encode_headers`] wrote them.
    pub headers: String,
    /// Explicit partition (read wide: a value out of range reads as none,
    /// so one bad row cannot stop the window it is in).
    pub msg_partition: Option<i64>,
}

impl Record {
    /// The message the row holds; `Err` says why its headers do not read.
    pub fn decode(self) -> Result<Row, String> {
        let headers =
            decode_headers(&self.headers).map_err(|e| format!("outbox row {}: {e}", self.id))?;
        Ok(Row {
            id: self.id,
            message: OutMessage {
                plugin: self.plugin,
                topic: self.topic,
                key: self.msg_key,
                payload: self.payload,
                headers,
                partition: self.msg_partition.and_then(|p| i32::try_from(p).ok()),
            },
        })
    }
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
pub async fn state(db: &Database) -> Result<OutboxState, StoreError> {
    let age_sql = match db.backend() {
        Backend::Postgres => {
            "SELECT CAST(EXTRACT(EPOCH FROM (now() - created_at)) AS bigint) FROM switchyard_outbox ORDER BY id LIMIT 1"
        }
        Backend::Sqlite => {
            "SELECT CAST(strftime('%s', 'now') AS INTEGER) - CAST(strftime('%s', created_at) AS INTEGER) FROM switchyard_outbox ORDER BY id LIMIT 1"
        }
    };
    let mut tx = db.begin().await.map_err(crate::error::map_error)?;
    let mut ints = Vec::new();
    for sql in [
        "SELECT count(*) FROM switchyard_outbox",
        age_sql,
        "SELECT count(*) FROM switchyard_outbox WHERE retry_at_ms IS NOT NULL",
    ] {
        let rows: Vec<(i64,)> = tx.query_host_as(sql, &[]).await?;
        ints.push(rows.first().map_or(0, |(n,)| *n));
    }
    tx.rollback().await.map_err(crate::error::map_error)?;
    Ok(OutboxState {
        backlog: ints[0],
        oldest_age_s: ints[1].max(0),
        parked: ints[2],
    })
}

/// Rows waiting in the outbox: committed by plugins, not yet acknowledged
/// by the broker.
pub async fn backlog(db: &Database) -> Result<i64, StoreError> {
    let mut tx = db.begin().await.map_err(crate::error::map_error)?;

    let rows: Vec<(i64,)> = tx
        .query_host_as("SELECT count(*) FROM switchyard_outbox", &[])
        .await?;
    tx.rollback().await.map_err(crate::error::map_error)?;
    Ok(rows.first().map_or(0, |(n,)| *n))
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
}
