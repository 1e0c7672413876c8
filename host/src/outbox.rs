//! The outbox: messages a plugin published are written to
//! `switchyard_outbox` in the event's transaction, and a relay produces
//! them afterwards (idempotent producer, `acks=all`), deleting each row
//! only once its delivery is confirmed. A crash between commit and produce
//! loses nothing (the rows wait); a crash between produce and delete sends
//! a row twice, with the same `event-id` header for consumers to dedupe.
//!
//! Also here: the router's own tables (`switchyard_processed` markers and
//! the outbox), created at start.

use crate::bindings::switchyard::plugin::db::{Error as DbError, Value};
use crate::capabilities::publish::OutMessage;
use crate::database::{Backend, Database, Tx};
use crate::event::Headers;
use crate::kafka::to_headers;
use crate::limits::Limits;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
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
);";

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

/// Create the router's tables if they are missing, bring them up to
/// date, and on PostgreSQL set up the host schema and its guarded
/// functions (see [`crate::pg_identity`]).
pub async fn create_tables(db: &Database) -> Result<(), sqlx::Error> {
    db.run_script(match db.backend() {
        Backend::Postgres => POSTGRES_TABLES,
        Backend::Sqlite => SQLITE_TABLES,
    })
    .await?;
    match db.postgres() {
        Some(pg) => pg.setup().await,
        None => {
            // SQLite has no ADD COLUMN IF NOT EXISTS.
            let columns: Vec<String> = db
                .sqlite_strings("SELECT name FROM pragma_table_info('switchyard_migrations')")
                .await?;
            if !columns.iter().any(|c| c == "runs_as_plugin") {
                db.run_script("ALTER TABLE switchyard_migrations ADD COLUMN runs_as_plugin INTEGER NOT NULL DEFAULT 0")
                    .await?;
            }
            Ok(())
        }
    }
}

/// The processed-marker of one event in one plugin: its primary key is
/// (consumer group, plugin, dedupe key).
#[derive(Debug, Clone, Copy)]
pub struct Marker<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Plugin name.
    pub plugin: &'a str,
    /// `id:<event id>` or `pos:<topic>/<partition>/<offset>`.
    pub dedupe_key: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl<'a> Marker<'a> {
    /// The marker of `event` in `plugin`.
    pub fn of(
        group: &'a str,
        plugin: &'a str,
        dedupe_key: &'a str,
        event: &'a crate::event::Event,
    ) -> Self {
        Self {
            group,
            plugin,
            dedupe_key,
            topic: &event.topic,
            partition: event.partition,
            offset: event.offset,
        }
    }
}

/// Record that the plugin handled the event (`outcome`: `handled` or
/// `dead-lettered`). Returns `false` when the marker already existed: a
/// duplicate, to be skipped.
pub async fn mark_processed(tx: &mut Tx, m: Marker<'_>, outcome: &str) -> Result<bool, DbError> {
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
) -> Result<std::collections::HashSet<String>, DbError> {
    let mut written = std::collections::HashSet::new();
    let now = chrono::Utc::now();
    if let Some(call) = tx.host_call(plugin).await? {
        let group = markers.first().map_or("", |m| m.group);
        let keys: Vec<&str> = markers.iter().map(|m| m.dedupe_key).collect();
        let topics: Vec<&str> = markers.iter().map(|m| m.topic).collect();
        let partitions: Vec<i32> = markers.iter().map(|m| m.partition).collect();
        let offsets: Vec<i64> = markers.iter().map(|m| m.offset).collect();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT switchyard_host.mark($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(&*call.secret)
                .bind(group)
                .bind(plugin)
                .bind(&keys)
                .bind(&topics)
                .bind(&partitions)
                .bind(&offsets)
                .bind(outcome)
                .bind(now)
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
                    return Err(DbError::Invalid(format!(
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
) -> Result<std::collections::HashSet<(String, String)>, DbError> {
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
pub async fn claim_replay(tx: &mut Tx, m: Marker<'_>) -> Result<bool, DbError> {
    let now = chrono::Utc::now();
    if let Some(call) = tx.host_call(m.plugin).await? {
        return sqlx::query_scalar(
            "SELECT switchyard_host.claim_replay($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&*call.secret)
        .bind(m.group)
        .bind(m.plugin)
        .bind(m.dedupe_key)
        .bind(m.topic)
        .bind(m.partition)
        .bind(now)
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
pub async fn mark_or_claim(tx: &mut Tx, m: Marker<'_>, replay: bool) -> Result<bool, DbError> {
    if replay {
        claim_replay(tx, m).await
    } else {
        mark_processed(tx, m, "handled").await
    }
}

/// Up to this many messages (five parameters each) go in one statement.
const ENQUEUE_CHUNK: usize = 100;

/// Write `plugin`'s messages into the outbox, in the event's (or the
/// batch's) transaction, in order (the relay sends them by id). On
/// PostgreSQL one guarded call in the plugin's session; on SQLite one
/// statement per hundred messages.
pub async fn enqueue(tx: &mut Tx, plugin: &str, messages: &[OutMessage]) -> Result<(), DbError> {
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
        sqlx::query("SELECT switchyard_host.enqueue($1, $2, $3, $4, $5, $6, $7)")
            .bind(&*call.secret)
            .bind(plugin)
            .bind(&topics)
            .bind(&keys)
            .bind(&payloads)
            .bind(&headers)
            .bind(&partitions)
            .execute(&mut *call.conn)
            .await
            .map_err(crate::database::map_error)?;
        return Ok(());
    }
    for chunk in messages.chunks(ENQUEUE_CHUNK) {
        let sql = multi_row_insert(
            "switchyard_outbox (topic, msg_key, payload, headers, msg_partition)",
            chunk.len(),
            5,
        );
        let mut params = Vec::with_capacity(chunk.len() * 5);
        for m in chunk {
            params.extend([
                Value::Text(m.topic.clone()),
                m.key.clone().map_or(Value::Null, Value::Bytes),
                Value::Bytes(m.payload.clone()),
                Value::Text(encode_headers(&m.headers)),
                m.partition
                    .map_or(Value::Null, |p| Value::Int(i64::from(p))),
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

fn decode_row(cells: Vec<Value>) -> Result<Row, String> {
    let mut it = cells.into_iter();
    let mut next = || it.next().unwrap_or(Value::Null);
    let id = match next() {
        Value::Int(i) => i,
        other => return Err(format!("outbox id is {other:?}")),
    };
    let topic = match next() {
        Value::Text(t) => t,
        other => return Err(format!("outbox topic is {other:?}")),
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
        Value::Text(t) => decode_headers(&t)?,
        _ => Vec::new(),
    };
    let partition = match next() {
        Value::Int(p) => i32::try_from(p).ok(),
        _ => None,
    };
    Ok(Row {
        id,
        message: OutMessage {
            topic,
            key,
            payload,
            headers,
            partition,
        },
    })
}

/// Produces outbox rows and deletes them once delivered.
pub struct Relay {
    db: Database,
    producer: FutureProducer,
    /// Wakes the relay right after a commit that enqueued messages.
    pub wake: Arc<Notify>,
    batch: i64,
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Rows produced and deleted.
    pub delivered: usize,
    /// Rows whose delivery failed (kept for the next pass).
    pub failed: usize,
}

impl Relay {
    /// A relay over `db` producing with `producer`.
    pub fn new(db: Database, producer: FutureProducer, wake: Arc<Notify>) -> Self {
        Self {
            db,
            producer,
            wake,
            batch: 500,
        }
    }

    /// Produce up to one batch of rows, oldest first; delete the delivered
    /// ones. On PostgreSQL the rows are locked (`SKIP LOCKED`) so that
    /// several routers on one database never send the same row at once.
    pub async fn pass(&self) -> anyhow::Result<Pass> {
        let mut tx = self.db.begin().await?;
        let sql = match self.db.backend() {
            Backend::Postgres => {
                "SELECT id, topic, msg_key, payload, headers, msg_partition FROM switchyard_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => {
                "SELECT id, topic, msg_key, payload, headers, msg_partition FROM switchyard_outbox ORDER BY id LIMIT $1"
            }
        };
        let limits = Limits {
            max_rows: usize::try_from(self.batch).unwrap_or(500),
            max_result_bytes: usize::MAX,
            ..Limits::default()
        };
        let rows = tx
            .query(sql, &[Value::Int(self.batch)], &limits)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "reading the outbox: {}",
                    crate::capabilities::db::describe_error(&e)
                )
            })?;
        if rows.rows.is_empty() {
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
        let mut pending = Vec::with_capacity(rows.rows.len());
        let mut failed = 0;
        for cells in rows.rows {
            let row = match decode_row(cells) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable outbox row left in place; fix or delete it by hand");
                    failed += 1;
                    continue;
                }
            };
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
                Ok(delivery) => pending.push((row.id, m.topic.clone(), delivery)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, topic = %m.topic, "cannot queue outbox message; will retry");
                    failed += 1;
                }
            }
        }
        let mut delivered = Vec::with_capacity(pending.len());
        for (id, topic, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => delivered.push(id),
                Ok(Err((e, _))) => {
                    tracing::warn!(error = %e, %topic, "outbox delivery failed; the row stays and is retried");
                    failed += 1;
                }
                Err(_) => failed += 1,
            }
        }
        let mut tx = match held.take() {
            Some(tx) => tx,
            None => self.db.begin().await?,
        };
        for chunk in delivered.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM switchyard_outbox WHERE id IN ({})",
                placeholders.join(", ")
            );
            let params: Vec<Value> = chunk.iter().map(|id| Value::Int(*id)).collect();
            tx.execute_host(&sql, &params).await.map_err(|e| {
                anyhow::anyhow!(
                    "deleting delivered outbox rows: {}",
                    crate::capabilities::db::describe_error(&e)
                )
            })?;
        }
        tx.commit().await?;
        Ok(Pass {
            delivered: delivered.len(),
            failed,
        })
    }

    /// Rows waiting in the outbox.
    pub async fn backlog(&self) -> anyhow::Result<i64> {
        backlog(&self.db).await
    }

    /// Relay until `stop` resolves: a pass after every wake-up, and at
    /// least every 200 ms; backs off while Kafka or the database is down.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.pass().await {
                Ok(p) if p.failed == 0 => {
                    backoff = Duration::from_millis(100);
                    if p.delivered > 0 {
                        continue;
                    }
                }
                Ok(p) => {
                    tracing::warn!(
                        delivered = p.delivered,
                        failed = p.failed,
                        "outbox relay: some messages not delivered; retrying in {backoff:?}"
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
                Ok(p) if p.delivered == 0 && p.failed == 0 => break,
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
        .map_err(|e| anyhow::anyhow!("{}", crate::capabilities::db::describe_error(&e)))?;
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
}
