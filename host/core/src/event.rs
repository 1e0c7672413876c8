//! The host's view of one consumed event and the context that capabilities
//! attach to what a plugin does with it.

/// Kafka record headers in order; a `None` value is a null header.
pub type Headers = Vec<(String, Option<Vec<u8>>)>;

/// The first header called `name`, as UTF-8 text.
pub fn first_header<'h>(headers: &'h Headers, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The last header called `name`, as UTF-8 text: on a dead letter, the
/// host's own comes after any a producer set.
pub fn last_header<'h>(headers: &'h Headers, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

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
        first_header(&self.headers, name)
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
    /// The incoming W3C `traceparent`, when valid: published messages
    /// carry a child of it.
    pub traceparent: Option<TraceParent>,
    /// The incoming W3C `tracestate`, carried over as it is.
    pub tracestate: Option<String>,
    /// Stable identity of this invocation, e.g.
    /// `group/topic/partition/offset/plugin`: the `event-id` of the n-th
    /// message it publishes is a UUIDv5 of `origin/n`, so a re-run of the
    /// same event publishes the same ids and consumers can deduplicate.
    pub origin: String,
}

/// A W3C trace context `traceparent` (version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// Two hex digits.
    pub flags: String,
}

impl TraceParent {
    /// Parse `00-<trace-id>-<parent-id>-<flags>`; anything else is `None`
    /// (and is not propagated). A later version (`01`..`fe`) is read as the
    /// W3C spec asks: its first four fields, whatever follows them after a
    /// `-`; what is propagated is then written as version 00.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        let version_ok = match version {
            "00" => parts.next().is_none(),
            "ff" => false,
            v => hex(v, 2),
        };
        if !version_ok
            || !hex(trace, 32)
            || !hex(parent, 16)
            || !hex(flags, 2)
            || zero(trace)
            || zero(parent)
        {
            return None;
        }
        Some(Self {
            trace_id: trace.to_string(),
            parent_id: parent.to_string(),
            flags: flags.to_string(),
        })
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

/// Whether a W3C `tracestate` may be passed on: at most 512 characters of
/// printable ASCII, at most 32 `key=value` members. One that is not is
/// dropped rather than propagated.
pub fn valid_tracestate(text: &str) -> bool {
    text.len() <= 512
        && text.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && text.split(',').filter(|m| !m.trim().is_empty()).count() <= 32
        && text
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .all(|m| {
                m.split_once('=')
                    .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
            })
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
            traceparent: event.header_str("traceparent").and_then(TraceParent::parse),
            tracestate: event
                .header_str("tracestate")
                .filter(|t| valid_tracestate(t))
                .map(str::to_string),
            origin: format!(
                "{group}/{}/{}/{}/{plugin}",
                event.topic, event.partition, event.offset
            ),
        }
    }

    /// The `traceparent` of the `n`-th message this invocation publishes:
    /// the same trace, a span id of its own (derived from the message's
    /// event id, so a re-run publishes the same one).
    pub fn message_traceparent(&self, n: usize) -> Option<String> {
        let parent = self.traceparent.as_ref()?;
        let id = uuid::Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            format!("{}/{n}/span", self.origin).as_bytes(),
        );
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&id.as_bytes()[..8]);
        if bytes == [0; 8] {
            // An all-zero span id is invalid.
            bytes[7] = 1;
        }
        let span: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Some(
            TraceParent {
                parent_id: span,
                ..parent.clone()
            }
            .to_string(),
        )
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

    #[test]
    fn traceparent_is_parsed_strictly_and_propagated_as_a_child() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(tp);
        assert_eq!(
            parsed.as_ref().map(ToString::to_string).as_deref(),
            Some(tp)
        );
        // A later version: its first four fields, propagated as 00.
        for later in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next",
        ] {
            assert_eq!(
                TraceParent::parse(later).map(|t| t.to_string()).as_deref(),
                Some(tp),
                "{later}"
            );
        }
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let ev = Event {
            topic: "t".into(),
            headers: vec![("traceparent".into(), Some(tp.as_bytes().to_vec()))],
            ..Event::default()
        };
        let ctx = EventContext::new("g", "p", &ev);
        let child = ctx.message_traceparent(0).unwrap_or_default();
        let child = TraceParent::parse(&child).unwrap_or_else(|| panic!("{child}"));
        assert_eq!(child.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(child.parent_id, "00f067aa0ba902b7");
        assert_eq!(child.flags, "01");
        assert_eq!(
            ctx.message_traceparent(0),
            EventContext::new("g", "p", &ev).message_traceparent(0)
        );
        assert_ne!(ctx.message_traceparent(0), ctx.message_traceparent(1));
        let without = EventContext::new("g", "p", &Event::default());
        assert_eq!(without.message_traceparent(0), None);
    }

    #[test]
    fn tracestate_is_passed_on_only_when_well_formed() {
        assert!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(valid_tracestate(""));
        for bad in [
            "x".repeat(513),
            "a=1,b".to_string(),
            "a=\u{7f}".to_string(),
            "é=1".to_string(),
            (0..33)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        ] {
            assert!(!valid_tracestate(&bad), "{bad}");
        }
        let ev = Event {
            headers: vec![
                (
                    "traceparent".into(),
                    Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
                ),
                ("tracestate".into(), Some(b"a=1,b".to_vec())),
            ],
            ..Event::default()
        };
        assert_eq!(EventContext::new("g", "p", &ev).tracestate, None);
    }
}
