//! Per-plugin resource limits and their defaults.
//!
//! The defaults follow DESIGN.md's sandbox section: a deadline per call
//! enforced by epoch interruption, 64 MiB of linear memory, and caps on
//! everything the host allocates on the guest's behalf (SQL text, result
//! rows and bytes, publish size and count). Every cap is checked before the
//! host allocates or does the work.

use serde::{Deserialize, Serialize};

/// How often the engine's epoch advances. Deadlines are counted in these
/// ticks, so a call overruns its deadline by at most one tick.
pub const EPOCH_TICK_MS: u64 = 10;

/// Resource limits for one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock budget of one call into the plugin (`handle`, or
    /// `describe` and the component's start), in milliseconds. Example:
    /// `deadline_ms = 500`.
    pub deadline_ms: u64,
    /// Linear memory cap per instance, in bytes. Example:
    /// `memory_bytes = 67108864`.
    pub memory_bytes: usize,
    /// Largest event (key + value + headers) handed to the plugin, in
    /// bytes; a larger one is rejected by the host before the plugin runs,
    /// so an oversized record cannot exhaust the plugin's memory. Kafka's
    /// own default record limit is about 1 MB.
    pub max_event_bytes: usize,
    /// Longest a single SQL statement may run on PostgreSQL before the
    /// server cancels it (the plugin then gets a `limit` error), in
    /// milliseconds. Example: `statement_timeout_ms = 2000`.
    pub statement_timeout_ms: u64,
    /// Longest SQL text accepted by `db`, in bytes.
    pub max_sql_bytes: usize,
    /// Most parameters accepted per statement.
    pub max_params: usize,
    /// Most bytes of parameter values per statement.
    pub max_param_bytes: usize,
    /// Most rows a query may return.
    pub max_rows: usize,
    /// Most bytes a query may return.
    pub max_result_bytes: usize,
    /// Most statements per event.
    pub max_statements: usize,
    /// Largest message `publish` accepts, in bytes, counted as the Kafka
    /// producer counts it against its `message.max.bytes`: key + value +
    /// headers (with the host's `event-id`, `request-id` and trace
    /// context) + their length prefixes + 36 bytes of record framing. It
    /// never exceeds the producer's `message.max.bytes` (default
    /// 1000000): the default (1 MiB) is lowered to it, and a config that
    /// sets a larger value is refused. Example: `max_publish_bytes =
    /// 65536`.
    pub max_publish_bytes: usize,
    /// Most messages one event may publish.
    pub max_publishes: usize,
    /// Most log lines one event may write; further lines are dropped and
    /// counted.
    pub max_log_lines: usize,
    /// Recycle a reused instance after this many events (0: never), to
    /// bound whatever state a plugin accumulates by mistake.
    pub recycle_after_events: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline_ms: 1_000,
            memory_bytes: 64 << 20,
            max_event_bytes: 4 << 20,
            statement_timeout_ms: 5_000,
            max_sql_bytes: 64 << 10,
            max_params: 1_000,
            max_param_bytes: 4 << 20,
            max_rows: 10_000,
            max_result_bytes: 8 << 20,
            max_statements: 1_000,
            max_publish_bytes: 1 << 20,
            max_publishes: 100,
            max_log_lines: 100,
            recycle_after_events: 100_000,
        }
    }
}

impl Limits {
    /// Lower the publish cap to what the producer accepts
    /// (`message.max.bytes`), so that no message a plugin was allowed to
    /// publish can be refused by the producer for its size and wait in
    /// the outbox.
    pub fn clamp_to_producer(&mut self, message_max_bytes: usize) {
        self.max_publish_bytes = self.max_publish_bytes.min(message_max_bytes);
    }

    /// The deadline in epoch ticks (rounded up, at least one).
    pub fn deadline_ticks(&self) -> u64 {
        self.deadline_ms.div_ceil(EPOCH_TICK_MS).max(1)
    }
}

/// librdkafka's default `message.max.bytes`: the largest record the
/// producer accepts unless `[kafka.producer]` says otherwise.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The producer's `message.max.bytes` from `[kafka.producer]`, or
/// librdkafka's default. `Err` says why a configured value is unusable
/// (librdkafka accepts 1000 ..= 1000000000).
pub fn producer_message_max_bytes(
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<usize, String> {
    match extra.get("message.max.bytes") {
        None => Ok(DEFAULT_MESSAGE_MAX_BYTES),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1_000..=1_000_000_000).contains(&n) => Ok(n),
            _ => Err(format!(
                "`kafka.producer.\"message.max.bytes\"` = {text:?} must be a whole number of bytes from 1000 to 1000000000"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_cap_never_exceeds_the_producers_limit() {
        let mut l = Limits::default();
        assert_eq!(l.max_publish_bytes, 1 << 20);
        l.clamp_to_producer(DEFAULT_MESSAGE_MAX_BYTES);
        assert_eq!(l.max_publish_bytes, 1_000_000);
        let mut small = Limits {
            max_publish_bytes: 65_536,
            ..Limits::default()
        };
        small.clamp_to_producer(1_000_000);
        assert_eq!(small.max_publish_bytes, 65_536, "a lower cap stays");
    }
}
