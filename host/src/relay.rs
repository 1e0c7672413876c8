//! The outbox relay: produces the rows of `switchyard_outbox` in order
//! (idempotent producer, `acks=all`), deleting each row only once its
//! delivery is confirmed, each plugin with a fair share of every pass; a
//! row the broker refuses for good is moved to the dead-letter topic
//! (`quarantined`), so one plugin's bad message cannot hold the others.

use crate::bindings::switchyard::plugin::db::Value;
use crate::database::{Backend, Database, Tx};
use crate::event::Headers;
use crate::kafka::{ProduceFailure, classify_produce_error, to_headers};
use crate::metrics::Metrics;
use crate::outbox::{ROW_COLUMNS, Record, Row};
use crate::store_error::StoreError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::deadletter;
use tokio::sync::Notify;

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

/// Why a relay pass stopped; its rows stay in the outbox for the next.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Beginning, committing or rolling back failed.
    #[error("the outbox's transaction: {0}")]
    Session(StoreError),
    /// The window could not be read.
    #[error("reading the outbox: {0}")]
    Read(StoreError),
    /// Delivered rows could not be deleted (they are sent again later,
    /// with the same `event-id`).
    #[error("deleting delivered outbox rows: {0}")]
    Delete(StoreError),
    /// A refused row whose dead letter failed could not be set aside.
    #[error("parking an outbox row whose dead letter failed: {0}")]
    Park(StoreError),
}

impl RelayError {
    fn session(e: sqlx::Error) -> Self {
        RelayError::Session(crate::store_error::map_error(e))
    }
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
    async fn read_window(&self, tx: &mut Tx) -> Result<Vec<Record>, StoreError> {
        // The distinct plugins by a walk up the (plugin, id) index, one
        // probe per plugin, instead of a scan of the whole backlog.
        let plugins: Vec<(String,)> = tx
            .query_host_as(
                "WITH RECURSIVE p(plugin) AS (SELECT min(plugin) FROM switchyard_outbox UNION ALL SELECT (SELECT min(o.plugin) FROM switchyard_outbox o WHERE o.plugin > p.plugin) FROM p WHERE p.plugin IS NOT NULL) SELECT plugin FROM p WHERE plugin IS NOT NULL",
                &[],
            )
            .await?;
        let plugins: Vec<String> = plugins.into_iter().map(|(p,)| p).collect();
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
            let got: Vec<Record> = tx
                .query_host_as(
                    &sql,
                    &[
                        Value::Text(plugin),
                        Value::Int(now),
                        Value::Int(i64::try_from(share).unwrap_or(i64::MAX)),
                    ],
                )
                .await?;
            rows.extend(got);
        }
        Ok(rows)
    }

    /// Produce one window of rows, each plugin its fair share, oldest
    /// first; delete the delivered ones. A row the broker refuses for good
    /// (see [`classify_produce_error`]) goes to the dead-letter topic and
    /// is deleted, so it cannot hold the rows behind it; if its dead
    /// letter fails too, the row stays and waits [`DEAD_LETTER_RETRY`]
    /// outside the window. Rows that failed for a transient reason stay
    /// for the next pass.
    pub async fn pass(&self) -> Result<Pass, RelayError> {
        let mut tx = self.db.begin().await.map_err(RelayError::session)?;
        let cells = self.read_window(&mut tx).await.map_err(RelayError::Read)?;
        if cells.is_empty() {
            tx.rollback().await.map_err(RelayError::session)?;
            return Ok(Pass::default());
        }
        // SQLite has one connection, shared with every lane: do not hold it
        // while waiting for the broker. (Only this relay deletes rows, so
        // reading and deleting in two transactions is safe there.)
        let mut held = match self.db.backend() {
            Backend::Postgres => Some(tx),
            Backend::Sqlite => {
                tx.rollback().await.map_err(RelayError::session)?;
                None
            }
        };
        let mut rows = Vec::with_capacity(cells.len());
        let mut failed = 0;
        for c in cells {
            match c.decode() {
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
            None => self.db.begin().await.map_err(RelayError::session)?,
        };
        let gone: Vec<i64> = delivered.iter().chain(&moved).copied().collect();
        for chunk in gone.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM switchyard_outbox WHERE id IN ({})",
                placeholders.join(", ")
            );
            let params: Vec<Value> = chunk.iter().map(|id| Value::Int(*id)).collect();
            tx.execute_host(&sql, &params)
                .await
                .map_err(RelayError::Delete)?;
        }
        let retry_at = chrono::Utc::now().timestamp_millis()
            + i64::try_from(DEAD_LETTER_RETRY.as_millis()).unwrap_or(i64::MAX);
        for id in &parked {
            tx.execute_host(
                "UPDATE switchyard_outbox SET retry_at_ms = $1 WHERE id = $2",
                &[Value::Int(retry_at), Value::Int(*id)],
            )
            .await
            .map_err(RelayError::Park)?;
        }
        tx.commit().await.map_err(RelayError::session)?;
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
    pub async fn backlog(&self) -> Result<i64, StoreError> {
        crate::outbox::backlog(&self.db).await
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
    let whole = switchyard_core::message::record_wire_size(key, &m.payload, &headers);
    if whole <= message_max_bytes {
        return (&m.payload, headers);
    }
    let note = m.payload.len().to_string().into_bytes();
    headers.push((deadletter::TRUNCATED_FROM.to_string(), Some(note)));
    let framing = switchyard_core::message::record_wire_size(key, &[], &headers);
    // The value's own length prefix may shrink; the bound stays safe.
    let keep = message_max_bytes
        .saturating_sub(framing)
        .min(m.payload.len());
    (&m.payload[..keep], headers)
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::message::OutMessage;

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
            switchyard_core::message::record_wire_size(Some(b"k0"), payload, &h) <= 2_000,
            "the dead letter fits"
        );
    }
}
