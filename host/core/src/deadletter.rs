//! The dead-letter format, written and read here only: a dead letter is
//! the original record (key, value, headers) plus `switchyard.*` headers
//! saying which plugin, why, where it came from and under which dedupe
//! key. The router writes them for events ([`event_letter_headers`]), the
//! outbox relay for messages the broker refused for good
//! ([`quarantine_headers`]), `switchyard dlq` reads them ([`DeadLetter`])
//! and replays them ([`replay_event`]), and the route table honours a
//! replay's headers ([`REPLAY_PLUGIN`], [`REPLAY_KEY`]).

use crate::event::{Event, Headers};

/// Every header the host writes starts with this; a producer's own are
/// dropped from a dead letter, since `switchyard dlq replay` would read
/// them as where it came from.
pub const HOST_PREFIX: &str = "switchyard.";
/// Why: the outcome's reason, or the broker's error.
pub const ERROR: &str = "switchyard.error";
/// `retry`, `rejected`, `failed`, `parked` or `quarantined`.
pub const OUTCOME: &str = "switchyard.outcome";
/// The plugin whose event (or message) it was.
pub const PLUGIN: &str = "switchyard.plugin";
/// The event's topic.
pub const ORIGIN_TOPIC: &str = "switchyard.origin-topic";
/// The event's partition.
pub const ORIGIN_PARTITION: &str = "switchyard.origin-partition";
/// The event's offset.
pub const ORIGIN_OFFSET: &str = "switchyard.origin-offset";
/// Attempts spent on the event.
pub const ATTEMPTS: &str = "switchyard.attempts";
/// The router's consumer group (part of the marker's key).
pub const CONSUMER_GROUP: &str = "switchyard.consumer-group";
/// The event's dedupe key: where its marker is.
pub const DEDUPE_KEY: &str = "switchyard.dedupe-key";
/// When, RFC 3339.
pub const DEAD_LETTERED_AT: &str = "switchyard.dead-lettered-at";
/// A quarantined message: the broker's reason, as a short code.
pub const REASON: &str = "switchyard.reason";
/// A quarantined message: the topic it was published to.
pub const ORIGINAL_TOPIC: &str = "switchyard.original-topic";
/// A quarantined message: the partition it named.
pub const ORIGINAL_PARTITION: &str = "switchyard.original-partition";
/// A quarantined message: its key.
pub const ORIGINAL_KEY: &str = "switchyard.original-key";
/// A quarantined message: its `event-id`.
pub const EVENT_ID: &str = "switchyard.event-id";
/// A quarantined message: its row in the outbox.
pub const OUTBOX_ID: &str = "switchyard.outbox-id";
/// A quarantined message cut to fit: its value's length before.
pub const TRUNCATED_FROM: &str = "switchyard.truncated-from";
/// The outcome of a quarantined message.
pub const QUARANTINED: &str = "quarantined";
/// The outcome of an event parked by an open circuit.
pub const PARKED: &str = "parked";

pub use crate::event::last_header;

/// Whether `name` is one of the host's headers.
pub fn is_host_header(name: &str) -> bool {
    name.starts_with(HOST_PREFIX)
}

/// Why an event is dead-lettered, as its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause<'a> {
    /// The plugin.
    pub plugin: &'a str,
    /// `retry`, `rejected`, `failed` or `parked`.
    pub kind: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Attempts spent.
    pub attempts: u32,
    /// The router's consumer group.
    pub group: &'a str,
    /// The event's dedupe key.
    pub dedupe_key: &'a str,
}

/// The headers of an event's dead letter: the event's own, without any
/// `switchyard.*` a producer set, then the host's.
pub fn event_letter_headers(
    event: &Event,
    cause: &Cause<'_>,
    at: chrono::DateTime<chrono::Utc>,
) -> Headers {
    let mut headers: Headers = event
        .headers
        .iter()
        .filter(|(k, _)| !is_host_header(k))
        .cloned()
        .collect();
    for (name, value) in [
        (ERROR, cause.reason.to_string()),
        (OUTCOME, cause.kind.to_string()),
        (PLUGIN, cause.plugin.to_string()),
        (ORIGIN_TOPIC, event.topic.clone()),
        (ORIGIN_PARTITION, event.partition.to_string()),
        (ORIGIN_OFFSET, event.offset.to_string()),
        (ATTEMPTS, cause.attempts.to_string()),
        (CONSUMER_GROUP, cause.group.to_string()),
        (DEDUPE_KEY, cause.dedupe_key.to_string()),
        (DEAD_LETTERED_AT, at.to_rfc3339()),
    ] {
        headers.push((name.to_string(), Some(value.into_bytes())));
    }
    headers
}

/// A message the broker refused for good, as the outbox relay moves it
/// aside.
#[derive(Debug, Clone, Copy)]
pub struct Quarantine<'a> {
    /// The message's own headers.
    pub headers: &'a Headers,
    /// The plugin that published it.
    pub plugin: &'a str,
    /// Where it was published.
    pub topic: &'a str,
    /// The partition it named.
    pub partition: Option<i32>,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its `event-id`.
    pub event_id: Option<&'a str>,
    /// Its outbox row.
    pub outbox_id: i64,
    /// The broker's reason, a short code.
    pub reason: &'a str,
    /// The broker's error.
    pub error: &'a str,
}

/// The headers of a quarantined message's dead letter.
pub fn quarantine_headers(q: &Quarantine<'_>, at: chrono::DateTime<chrono::Utc>) -> Headers {
    let mut headers: Headers = q
        .headers
        .iter()
        .filter(|(k, _)| !is_host_header(k))
        .cloned()
        .collect();
    let mut add = |name: &str, value: Vec<u8>| headers.push((name.to_string(), Some(value)));
    add(
        ERROR,
        format!(
            "the broker refused the message for good ({}): {}",
            q.reason, q.error
        )
        .into_bytes(),
    );
    add(OUTCOME, QUARANTINED.as_bytes().to_vec());
    add(REASON, q.reason.as_bytes().to_vec());
    add(PLUGIN, q.plugin.as_bytes().to_vec());
    add(ORIGINAL_TOPIC, q.topic.as_bytes().to_vec());
    if let Some(p) = q.partition {
        add(ORIGINAL_PARTITION, p.to_string().into_bytes());
    }
    if let Some(k) = q.key {
        add(ORIGINAL_KEY, k.to_vec());
    }
    if let Some(id) = q.event_id {
        add(EVENT_ID, id.as_bytes().to_vec());
    }
    add(OUTBOX_ID, q.outbox_id.to_string().into_bytes());
    add(DEAD_LETTERED_AT, at.to_rfc3339().into_bytes());
    headers
}

/// Header naming the only plugin a replayed record is for.
pub const REPLAY_PLUGIN: &str = "switchyard.replay-plugin";
/// Header carrying the replayed record's original dedupe key.
pub const REPLAY_KEY: &str = "switchyard.replay-key";
/// Header saying which dead letter a replay came from.
pub const REPLAY_OF: &str = "switchyard.replay-of";

/// One record of the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset there.
    pub offset: i64,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value.
    pub value: Vec<u8>,
    /// Original headers and the `switchyard.*` ones.
    pub headers: Headers,
}

impl DeadLetter {
    /// A header as text: the last one of that name, which for
    /// `switchyard.*` is the host's.
    pub fn header(&self, name: &str) -> Option<&str> {
        last_header(&self.headers, name)
    }

    /// `partition:offset`, the id `show` and `replay --id` take.
    pub fn id(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    /// Where it came from: topic, partition, offset.
    pub fn origin(&self) -> Option<(String, i32, i64)> {
        Some((
            self.header(ORIGIN_TOPIC)?.to_string(),
            self.header(ORIGIN_PARTITION)?.parse().ok()?,
            self.header(ORIGIN_OFFSET)?.parse().ok()?,
        ))
    }

    /// When it was dead-lettered.
    pub fn at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.header(DEAD_LETTERED_AT)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The record as JSON, for `show` and `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let value = serde_json::from_slice::<serde_json::Value>(&self.value).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&self.value).into_owned())
        });
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref().map_or(serde_json::Value::Null, |v| {
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "id": self.id(),
            "plugin": self.header(PLUGIN),
            "outcome": self.header(OUTCOME),
            "error": self.header(ERROR),
            "attempts": self.header(ATTEMPTS),
            "dead_lettered_at": self.header(DEAD_LETTERED_AT),
            "origin": self.origin().map(|(t, p, o)| format!("{t}/{p}/{o}")),
            "key": self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "value": value,
            "headers": headers,
        })
    }
}

/// The record a replay produces: the original key, value and non-host
/// headers, plus the headers that tell the router it is a replay.
pub fn replay_event(d: &DeadLetter, plugin: &str, dedupe_key: &str) -> Option<Event> {
    let (topic, partition, _) = d.origin()?;
    let mut headers: Headers = d
        .headers
        .iter()
        .filter(|(k, _)| !is_host_header(k))
        .cloned()
        .collect();
    headers.push((REPLAY_PLUGIN.into(), Some(plugin.as_bytes().to_vec())));
    headers.push((REPLAY_KEY.into(), Some(dedupe_key.as_bytes().to_vec())));
    headers.push((REPLAY_OF.into(), Some(d.id().into_bytes())));
    Some(Event {
        topic,
        partition,
        key: d.key.clone(),
        payload: d.value.clone(),
        headers,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            topic: "user.registered".into(),
            partition: 2,
            offset: 41,
            key: Some(b"u-1".to_vec()),
            payload: b"{}".to_vec(),
            headers: vec![
                ("event-id".into(), Some(b"e-1".to_vec())),
                (PLUGIN.into(), Some(b"forged".to_vec())),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn an_event_letter_reads_back_and_replays_to_its_origin() {
        let cause = Cause {
            plugin: "stats",
            kind: "rejected",
            reason: "bad payload",
            attempts: 1,
            group: "switchyard",
            dedupe_key: "id:e-1",
        };
        let headers = event_letter_headers(&event(), &cause, chrono::Utc::now());
        assert_eq!(
            headers.iter().filter(|(k, _)| k == PLUGIN).count(),
            1,
            "a producer's switchyard.* header is dropped"
        );
        let d = DeadLetter {
            partition: 0,
            offset: 7,
            key: Some(b"u-1".to_vec()),
            value: b"{}".to_vec(),
            headers,
        };
        assert_eq!(d.header(PLUGIN), Some("stats"));
        assert_eq!(d.header(OUTCOME), Some("rejected"));
        assert_eq!(d.header(DEDUPE_KEY), Some("id:e-1"));
        assert_eq!(d.origin(), Some(("user.registered".to_string(), 2, 41)));
        assert!(d.at().is_some());
        let replay = replay_event(&d, "stats", "id:e-1").expect("a replay");
        assert_eq!(
            (replay.topic.as_str(), replay.partition),
            ("user.registered", 2)
        );
        assert_eq!(replay.header_str(REPLAY_PLUGIN), Some("stats"));
        assert_eq!(replay.header_str(REPLAY_KEY), Some("id:e-1"));
        assert_eq!(replay.header_str(REPLAY_OF), Some("0:7"));
        assert_eq!(replay.header_str("event-id"), Some("e-1"));
        assert!(
            replay
                .headers
                .iter()
                .all(|(k, _)| !k.starts_with(HOST_PREFIX) || k.starts_with("switchyard.replay-"))
        );
    }
}
