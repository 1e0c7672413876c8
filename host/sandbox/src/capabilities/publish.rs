//! The `publish` capability: messages are captured per event, checked
//! against the plugin's grants and caps, and stamped with the host's
//! headers (`event-id`, and `request-id` carried over from the incoming
//! event). The caller decides what happens to them after the outcome: the
//! router writes them to the outbox in the event's transaction;
//! `switchyard plugin test` prints them.

use super::HostState;
use std::sync::Arc;
use switchyard_core::event::EventContext;
use switchyard_core::partitions::{PartitionCheck, Partitions};
use switchyard_wit::switchyard::plugin::publish::{self, Error, Message};

pub use switchyard_core::grants::{Grants, valid_topic_name};
pub use switchyard_core::message::OutMessage;

/// Per-instance `publish` state.
#[derive(Debug, Default)]
pub struct PublishState {
    /// Messages captured during the current call.
    pub messages: Vec<OutMessage>,
    /// Sends refused during the current call (denied, over a cap, invalid).
    pub refused: Vec<String>,
    event: Option<Arc<EventContext>>,
}

impl PublishState {
    pub(crate) fn begin(&mut self, event: Option<Arc<EventContext>>) {
        self.messages.clear();
        self.refused.clear();
        self.event = event;
    }
}

/// Headers the host sets itself; a plugin's own values are replaced
/// (`traceparent` and `tracestate` only when the event carried them).
const HOST_HEADERS: [&str; 2] = ["event-id", "request-id"];

impl HostState {
    fn check_message(&self, m: &Message) -> Result<(), Error> {
        let limits = &self.env.limits;
        let Some(ctx) = self.publish.event.as_ref() else {
            return Err(Error::Invalid(
                "publish is only available while handling an event (not in describe)".to_string(),
            ));
        };
        if !valid_topic_name(&m.topic) {
            return Err(Error::Invalid(format!(
                "{:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])",
                m.topic
            )));
        }
        if !self.env.grants.allows(&m.topic) {
            return Err(Error::Denied(format!(
                "topic {} is not granted to plugin {} (granted: {}); add it to the plugin's `publish` list in the routing config",
                m.topic,
                ctx.plugin,
                self.env.grants.patterns().join(", ")
            )));
        }
        if self.publish.messages.len() >= limits.max_publishes {
            return Err(Error::Limit(format!(
                "more than {} messages for one event",
                limits.max_publishes
            )));
        }
        if m.partition.is_some_and(|p| p < 0) {
            return Err(Error::Invalid(format!(
                "partition {:?} is negative",
                m.partition
            )));
        }
        Ok(())
    }
}

/// Refuse a partition the topic does not have, so the message never waits
/// in the outbox for a partition that will not come. A topic that does not
/// exist cannot take an explicit partition either (the router creates only
/// the topics its config names, at start; a message without a partition
/// may still create one on a broker that auto-creates topics). When the
/// metadata cannot be read in time the message goes through: the outbox
/// relay moves it aside if the broker refuses it for good.
///
/// A free function over what it needs (the store data is not `Sync`, and
/// this future waits for the brokers).
async fn check_partition(
    topics: Option<Arc<dyn Partitions>>,
    deadline: std::time::Instant,
    plugin: &str,
    topic: &str,
    partition: Option<i32>,
) -> Result<(), Error> {
    let (Some(partition), Some(topics)) = (partition, topics) else {
        return Ok(());
    };
    // Leave the plugin half of what is left of its deadline.
    let budget = deadline.saturating_duration_since(std::time::Instant::now()) / 2;
    match topics.check(topic, partition, budget).await {
        PartitionCheck::Exists => Ok(()),
        PartitionCheck::NoSuchPartition { partitions } => Err(Error::Invalid(format!(
            "topic {topic} has no partition {partition} (it has {partitions}: 0..={}); publish without a partition to let the key choose, or pick an existing one",
            partitions - 1
        ))),
        PartitionCheck::NoSuchTopic => Err(Error::Invalid(format!(
            "topic {topic} does not exist, so it has no partition {partition}; create the topic, or publish without a partition"
        ))),
        PartitionCheck::Unknown(why) => {
            tracing::debug!(%plugin, %topic, partition, %why, "partition not checked: metadata unavailable; the outbox relay will judge it");
            Ok(())
        }
    }
}

impl publish::Host for HostState {
    async fn send(&mut self, message: Message) -> wasmtime::Result<Result<(), Error>> {
        let checked = match self.check_message(&message) {
            Ok(()) => {
                check_partition(
                    self.topics.clone(),
                    self.deadline,
                    &self.env.name,
                    &message.topic,
                    message.partition,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            let reason = match &e {
                Error::Denied(m) | Error::Limit(m) | Error::Invalid(m) => m.clone(),
            };
            tracing::warn!(plugin = %self.env.name, topic = %message.topic, %reason, "publish refused");
            self.publish.refused.push(reason);
            return Ok(Err(e));
        }
        let Some(ctx) = self.publish.event.clone() else {
            return Ok(Err(Error::Invalid("no event".to_string())));
        };
        let n = self.publish.messages.len();
        let traceparent = ctx.message_traceparent(n);
        let mut headers: Vec<(String, Option<Vec<u8>>)> = message
            .headers
            .into_iter()
            .filter(|h| {
                // `switchyard.*` headers (replay routing) are the host's.
                let host_sets = HOST_HEADERS.contains(&h.name.as_str())
                    || h.name.starts_with("switchyard.")
                    || (traceparent.is_some()
                        && matches!(h.name.as_str(), "traceparent" | "tracestate"));
                !host_sets
            })
            .map(|h| (h.name, h.value))
            .collect();
        headers.push((
            "event-id".to_string(),
            Some(ctx.message_event_id(n).into_bytes()),
        ));
        if let Some(request_id) = &ctx.request_id {
            headers.push((
                "request-id".to_string(),
                Some(request_id.clone().into_bytes()),
            ));
        }
        if let Some(tp) = traceparent {
            headers.push(("traceparent".to_string(), Some(tp.into_bytes())));
            if let Some(state) = &ctx.tracestate {
                headers.push(("tracestate".to_string(), Some(state.clone().into_bytes())));
            }
        }
        // The limit holds for the message as it leaves, with the host's
        // headers, counted as the producer counts it against its
        // `message.max.bytes` (which the limit never exceeds: see
        // `Limits::clamp_to_producer`).
        let size = switchyard_core::message::record_wire_size(
            message.key.as_deref(),
            &message.payload,
            &headers,
        );
        let max = self.env.limits.max_publish_bytes;
        if size > max {
            let reason = format!(
                "message of {size} bytes with the host's headers (event-id, request-id, trace context) and the record framing, over the limit of {max} bytes"
            );
            tracing::warn!(plugin = %self.env.name, topic = %message.topic, %reason, "publish refused");
            self.publish.refused.push(reason.clone());
            return Ok(Err(Error::Limit(reason)));
        }
        self.publish.messages.push(OutMessage {
            plugin: self.env.name.to_string(),
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            headers,
            partition: message.partition,
        });
        Ok(Ok(()))
    }
}
