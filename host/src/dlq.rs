//! `switchyard dlq list | show | replay`: inspect the dead-letter topic and
//! put events back after a fix.
//!
//! A dead letter is the original record (key, value, headers) plus the
//! `switchyard.*` headers saying which plugin, why, where it came from and
//! under which dedupe key. A replay produces the original record to its
//! origin topic and partition, for that one plugin only
//! (`switchyard.replay-plugin`), under its original dedupe key
//! (`switchyard.replay-key`). The router honours those headers only where
//! the plugin's marker under that key says `dead-lettered`, and turns it
//! into `replayed` in the replay's own transaction: the plugin handles it
//! once, and the other plugins routed from that topic do not see it again.

use crate::bindings::switchyard::plugin::db::Value;
use crate::database::Database;
use crate::kafka::ReaderContext;
use anyhow::Context as _;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::{Duration, Instant};

use switchyard_core::deadletter as h;
pub use switchyard_core::deadletter::{
    DeadLetter, REPLAY_KEY, REPLAY_OF, REPLAY_PLUGIN, replay_event,
};

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this plugin's.
    pub plugin: Option<String>,
    /// Only those whose error contains this (case-insensitive).
    pub reason: Option<String>,
    /// Only this outcome (`failed`, `rejected`, `retry`, `parked`, or
    /// `quarantined`: an outbox message the broker refused for good).
    pub outcome: Option<String>,
    /// Only those dead-lettered at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only those dead-lettered before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only these ids (`partition:offset`); empty means all.
    pub ids: Vec<String>,
}

impl Filter {
    /// Whether `d` passes.
    pub fn accepts(&self, d: &DeadLetter) -> bool {
        let lower = |s: &str| s.to_lowercase();
        self.plugin
            .as_ref()
            .is_none_or(|p| d.header(h::PLUGIN) == Some(p.as_str()))
            && self
                .outcome
                .as_ref()
                .is_none_or(|o| d.header(h::OUTCOME) == Some(o.as_str()))
            && self.reason.as_ref().is_none_or(|r| {
                d.header(h::ERROR)
                    .is_some_and(|e| lower(e).contains(&lower(r)))
            })
            && self.since.is_none_or(|t| d.at().is_some_and(|at| at >= t))
            && self.until.is_none_or(|t| d.at().is_some_and(|at| at < t))
            && (self.ids.is_empty() || self.ids.contains(&d.id()))
    }
}

/// A time filter: RFC 3339 (`2026-11-22T10:00:00Z`) or an age (`90s`,
/// `30m`, `2h`, `7d`) before now.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let bad = || {
        format!(
            "{text:?} is neither a time like 2026-11-22T10:00:00Z nor an age like 30m, 2h or 7d"
        )
    };
    let split = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    let age = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(format!("{text:?}: the age's unit must be s, m, h or d")),
    };
    age.and_then(|a| chrono::Utc::now().checked_sub_signed(a))
        .ok_or_else(|| format!("{text:?}: too far back"))
}

/// Read the whole dead-letter topic, up to its end when the call starts.
/// `None` when the topic does not exist (nothing was ever dead-lettered
/// there). Blocking: call it from a blocking thread.
pub fn read_all(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<DeadLetter>>> {
    // The reader is told the end of each partition: reading stops there,
    // even when the last offsets hold no record (transaction markers,
    // compaction).
    let consumer: BaseConsumer<ReaderContext> = crate::kafka::reader_config(brokers, "dlq-reader")
        .create_with_context(ReaderContext)
        .context("creating the dead-letter reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic} from {brokers}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    let mut unfinished = std::collections::HashSet::new();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .with_context(|| format!("reading the end of {topic} partition {p}"))?;
        if high > low {
            unfinished.insert(*p);
            assignment.add_partition_offset(topic, *p, rdkafka::Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if unfinished.is_empty() {
        return Ok(Some(out));
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    while !unfinished.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} took longer than {timeout:?}; {} partition(s) unfinished",
            unfinished.len()
        );
        let m = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                unfinished.remove(&p);
                continue;
            }
            Some(m) => m.context("reading a dead letter")?,
        };
        let event = crate::kafka::to_event(&m);
        out.push(DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            key: event.key,
            value: event.payload,
            headers: event.headers,
        });
    }
    out.sort_by_key(|d| (d.at(), d.partition, d.offset));
    Ok(Some(out))
}

/// A header row, then one line per dead letter with its whole error (on
/// one line), then the count.
pub fn render_list(letters: &[&DeadLetter]) -> String {
    let row = |id: &str, at: &str, plugin: &str, outcome: &str, origin: &str, error: &str| {
        format!("{id:<8} {at:<26} {plugin:<22} {outcome:<9} {origin:<32} {error}\n")
    };
    let mut out = String::new();
    if !letters.is_empty() {
        out.push_str(&row(
            "ID",
            "DEAD-LETTERED AT",
            "PLUGIN",
            "OUTCOME",
            "ORIGIN (topic/partition/offset)",
            "ERROR",
        ));
    }
    for d in letters {
        let error = d
            .header(h::ERROR)
            .unwrap_or("")
            .split(['\n', '\r'])
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        out.push_str(&row(
            &d.id(),
            d.header(h::DEAD_LETTERED_AT).unwrap_or("?"),
            d.header(h::PLUGIN).unwrap_or("?"),
            d.header(h::OUTCOME).unwrap_or("?"),
            &d.origin()
                .map_or("?".to_string(), |(t, p, o)| format!("{t}/{p}/{o}")),
            &error,
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", letters.len()));
    out
}

/// What a replay did with one dead letter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    /// The dead letter's id.
    pub id: String,
    /// Plugin it was (or would have been) replayed for.
    pub plugin: String,
    /// Topic it went back to.
    pub topic: String,
    /// Partition it went back to: the one it came from.
    pub partition: i32,
    /// The dedupe key it keeps.
    pub dedupe_key: String,
    /// Why it was not replayed; `None` when it was.
    pub skipped: Option<Skip>,
}

/// Why a dead letter was not replayed.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "kebab-case")]
pub enum Skip {
    /// Its marker says it was replayed already: nothing to do.
    AlreadyReplayed(String),
    /// It cannot be replayed as things are; the reason says what to fix.
    Refused(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::AlreadyReplayed(r) | Skip::Refused(r) => f.write_str(r),
        }
    }
}

/// Where the dead letter's marker is and what it says: its dedupe key
/// (from the letter's `switchyard.dedupe-key` header, or for letters
/// written before that header existed, looked up by origin) and outcome.
async fn marker_of(
    db: &Database,
    group: &str,
    plugin: &str,
    d: &DeadLetter,
) -> anyhow::Result<Option<(String, String)>> {
    let (topic, partition, offset) = d
        .origin()
        .context("the dead letter has no origin headers")?;
    let (sql, params) = match d.header(h::DEDUPE_KEY) {
        Some(key) => (
            "SELECT dedupe_key, outcome FROM switchyard_processed WHERE consumer_group = $1 AND plugin = $2 AND dedupe_key = $3",
            vec![
                Value::Text(group.to_string()),
                Value::Text(plugin.to_string()),
                Value::Text(key.to_string()),
            ],
        ),
        None => (
            "SELECT dedupe_key, outcome FROM switchyard_processed WHERE consumer_group = $1 AND plugin = $2 AND topic = $3 AND kafka_partition = $4 AND kafka_offset = $5",
            vec![
                Value::Text(group.to_string()),
                Value::Text(plugin.to_string()),
                Value::Text(topic),
                Value::Int(i64::from(partition)),
                Value::Int(offset),
            ],
        ),
    };
    let mut tx = db.begin().await?;
    let rows: Result<Vec<(String, String)>, _> = tx.query_host_as(sql, &params).await;
    if let Err(e) = tx.rollback().await {
        tracing::debug!(error = %e, "rollback of a read-only lookup failed; its session ends with it");
    }
    Ok(rows?.into_iter().next())
}

/// Decide whether `d` can be replayed: its plugin, its consumer group, its
/// marker, and whether the routes in force still send it to that plugin.
async fn check(
    db: &Database,
    routes: &crate::routes::RouteTable,
    group: &str,
    d: &DeadLetter,
) -> anyhow::Result<(Replayed, Option<crate::event::Event>)> {
    let id = d.id();
    let plugin = d.header(h::PLUGIN).unwrap_or("?").to_string();
    let (topic, partition, offset) = d.origin().unwrap_or_default();
    let mut entry = Replayed {
        id: id.clone(),
        plugin: plugin.clone(),
        topic: topic.clone(),
        partition,
        dedupe_key: d.header(h::DEDUPE_KEY).unwrap_or("").to_string(),
        skipped: None,
    };
    let refuse = |mut e: Replayed, why: String| {
        e.skipped = Some(Skip::Refused(why));
        e
    };
    if d.header(h::OUTCOME) == Some("quarantined") {
        let why = format!(
            "a message plugin {plugin} published that the broker refused for good ({}), not a consumed event: there is no event to replay; fix the cause and produce it to {} by hand if it is still wanted",
            d.header(h::REASON).unwrap_or("?"),
            d.header(h::ORIGINAL_TOPIC).unwrap_or("its topic")
        );
        return Ok((refuse(entry, why), None));
    }
    if plugin == "?" || d.origin().is_none() {
        let why = "it lacks the switchyard.plugin or switchyard.origin-* headers: not written by switchyard".to_string();
        return Ok((refuse(entry, why), None));
    }
    if let Some(theirs) = d.header(h::CONSUMER_GROUP)
        && theirs != group
    {
        let why = format!(
            "dead-lettered by consumer group {theirs}, and this config's group is {group}: replay it with that router's --config"
        );
        return Ok((refuse(entry, why), None));
    }
    let Some((key, outcome)) = marker_of(db, group, &plugin, d).await? else {
        let why = format!(
            "no marker for {plugin} at {topic}/{partition}/{offset} in this database for group {group}: is --config (or --database) the router's?"
        );
        return Ok((refuse(entry, why), None));
    };
    entry.dedupe_key = key.clone();
    if outcome != "dead-lettered" {
        let why = format!("already replayed (its marker says `{outcome}`)");
        entry.skipped = Some(Skip::AlreadyReplayed(why));
        return Ok((entry, None));
    }
    let event = replay_event(d, &plugin, &key).context("the dead letter has no origin headers")?;
    if !routes.select(&event).iter().any(|s| s.plugin == plugin) {
        let why = format!(
            "the routes in the config no longer send it to {plugin} (no route from {topic} reaches {plugin}, or its match does not match): fix the routes, then replay again; the dead letter and its marker stay"
        );
        return Ok((refuse(entry, why), None));
    }
    Ok((entry, Some(event)))
}

/// Put `letters` back on their origin topic and partition, each for its
/// plugin only. The tool changes nothing in the database: the router,
/// seeing the replay, turns the plugin's `dead-lettered` marker into
/// `replayed` in the transaction that handles it, so a replay runs once
/// however often it is produced, and a replay that fails again leaves the
/// marker as it was. Letters that cannot be replayed are skipped with the
/// reason; a failure to produce stops the run (what was replayed stays
/// replayed: run the same command again).
pub async fn replay(
    db: &Database,
    producer: &rdkafka::producer::FutureProducer,
    group: &str,
    routes: &crate::routes::RouteTable,
    letters: &[&DeadLetter],
    dry_run: bool,
    mut progress: impl FnMut(usize, &Replayed),
) -> anyhow::Result<Vec<Replayed>> {
    let mut done = Vec::new();
    for (i, d) in letters.iter().enumerate() {
        let (entry, event) = check(db, routes, group, d).await?;
        if let (Some(event), false) = (&event, dry_run) {
            let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&event.topic)
                .partition(event.partition)
                .payload(&event.payload)
                .headers(crate::kafka::to_headers(&event.headers));
            if let Some(k) = &event.key {
                record = record.key(k);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| {
                    anyhow::anyhow!(
                        "producing dead letter {} back to {}/{}: {e}; {} replayed before it (run the same command again: those are skipped)",
                        entry.id,
                        event.topic,
                        event.partition,
                        done.iter().filter(|r: &&Replayed| r.skipped.is_none()).count()
                    )
                })?;
        }
        progress(i + 1, &entry);
        done.push(entry);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_times_parse_without_panicking() {
        assert!(parse_time("2026-11-22T10:00:00Z").is_ok());
        assert!(parse_time("30m").is_ok_and(|t| t < chrono::Utc::now()));
        for bad in ["5分", "-3h", "99999999999999999d", "", "h", "3w"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_list_has_a_header_row_and_whole_errors() {
        let error = format!("{}\nsecond line", "x".repeat(300));
        let d = DeadLetter {
            partition: 0,
            offset: 4,
            key: None,
            value: Vec::new(),
            headers: vec![
                (
                    "switchyard.plugin".into(),
                    Some(b"stats-increment".to_vec()),
                ),
                ("switchyard.outcome".into(), Some(b"rejected".to_vec())),
                ("switchyard.error".into(), Some(error.into_bytes())),
            ],
        };
        let listed = render_list(&[&d]);
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.len(), 3, "{listed}");
        assert!(
            lines[0].starts_with("ID ") && lines[0].ends_with("ERROR"),
            "{listed}"
        );
        assert!(lines[1].starts_with("0:4 "), "{listed}");
        assert!(
            lines[1].contains(&format!("{} | second line", "x".repeat(300))),
            "the whole error, on one line: {listed}"
        );
        assert_eq!(lines[2], "1 dead letter(s)");
        assert_eq!(
            render_list(&[]),
            "0 dead letter(s)\n",
            "no header over nothing"
        );
    }

    #[test]
    fn the_hosts_header_wins_over_a_producers() {
        let d = DeadLetter {
            partition: 0,
            offset: 1,
            key: None,
            value: Vec::new(),
            headers: vec![
                ("switchyard.plugin".into(), Some(b"forged".to_vec())),
                ("switchyard.plugin".into(), Some(b"real".to_vec())),
            ],
        };
        assert_eq!(d.header("switchyard.plugin"), Some("real"));
    }
}
