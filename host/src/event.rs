//! The host's view of one consumed event and the context that capabilities
//! attach to what a plugin does with it.

use crate::bindings::switchyard::plugin::types;

/// Kafka record headers in order; a `None` value is a null header.
pub type Headers = Vec<(String, Option<Vec<u8>>)>;

/// One Kafka record as the host hands it to plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; empty for a tombstone.
    pub payload: Vec<u8>,
    /// Record headers in order; a `None` value is a null header.
    pub headers: Headers,
}

impl Event {
    /// The first header called `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Bytes of key, value and headers.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }

    /// The WIT record passed to `handle`.
    pub fn to_wit(&self) -> types::Event {
        types::Event {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| types::Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

/// Where an invocation comes from: used for log fields, for the
/// `event-id` of published messages and for carrying `request-id` over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// Plugin handling the event.
    pub plugin: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The incoming `request-id` header, carried to every published
    /// message and into logs.
    pub request_id: Option<String>,
    /// The incoming `event-id` header, for logs.
    pub event_id: Option<String>,
    /// Stable identity of this invocation, e.g.
    /// `group/topic/partition/offset/plugin`: the `event-id` of the n-th
    /// message it publishes is a UUIDv5 of `origin/n`, so a re-run of the
    /// same event publishes the same ids and consumers can deduplicate.
    pub origin: String,
}

/// Namespace for the UUIDv5 `event-id`s of published messages.
const EVENT_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5d1c_7a2e_6b0f_4c39_9e8a_1f2b_3c4d_5e6f);

impl EventContext {
    /// Context for `event` handled by `plugin` in consumer group `group`.
    pub fn new(group: &str, plugin: &str, event: &Event) -> Self {
        Self {
            plugin: plugin.to_string(),
            topic: event.topic.clone(),
            partition: event.partition,
            offset: event.offset,
            request_id: event.header_str("request-id").map(str::to_string),
            event_id: event.header_str("event-id").map(str::to_string),
            origin: format!(
                "{group}/{}/{}/{}/{plugin}",
                event.topic, event.partition, event.offset
            ),
        }
    }

    /// The `event-id` of the `n`-th message this invocation publishes.
    pub fn message_event_id(&self, n: usize) -> String {
        uuid::Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            format!("{}/{n}", self.origin).as_bytes(),
        )
        .hyphenated()
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let ev = Event {
            topic: "create-user".into(),
            partition: 2,
            offset: 41,
            headers: vec![("request-id".into(), Some(b"r-1".to_vec()))],
            ..Event::default()
        };
        let a = EventContext::new("g", "profile-creation", &ev);
        let b = EventContext::new("g", "profile-creation", &ev);
        assert_eq!(a.message_event_id(0), b.message_event_id(0));
        assert_ne!(a.message_event_id(0), a.message_event_id(1));
        assert_eq!(a.request_id.as_deref(), Some("r-1"));
        let other = EventContext::new("g", "stats-increment", &ev);
        assert_ne!(a.message_event_id(0), other.message_event_id(0));
    }
}
