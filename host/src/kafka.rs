//! Kafka clients: the consumer's and producer's settings, topic creation,
//! and conversion between rdkafka messages and [`Event`]s.

use crate::event::Event;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use std::collections::BTreeMap;
use std::time::Duration;

/// Consumer settings: offsets are stored by hand only after an event's
/// work is durable (`enable.auto.offset.store=false`) and committed in the
/// background from what was stored.
pub fn consumer_config(
    brokers: &str,
    group: &str,
    extra: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // How long a fetch may wait for data: librdkafka's default. Kafka
        // answers a waiting fetch as soon as data arrives; Tansu 0.6 waits
        // the full time, which adds up to this much latency there (the
        // README has figures for 25 ms: lower latency, half the burst
        // throughput on Tansu). Tunable under [kafka.consumer].
        .set("fetch.wait.max.ms", "500")
        // Consumer lag for /metrics comes from librdkafka's statistics.
        .set("statistics.interval.ms", "1000")
        .set("client.id", format!("switchyard-{}", std::process::id()));
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent, every write acknowledged by all
/// in-sync replicas.
pub fn producer_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .set(
            "client.id",
            format!("switchyard-{}-producer", std::process::id()),
        );
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// Create the topics that do not exist yet with `partitions` partitions.
/// Topics that already exist are left alone.
pub async fn create_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) => {}
            Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(%topic, "topic exists");
            }
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// The host's copy of a consumed message.
pub fn to_event(m: &BorrowedMessage<'_>) -> Event {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|Header { key, value }| (key.to_string(), value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Event {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

/// Headers as rdkafka wants them.
pub fn to_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: v.as_deref(),
            })
        },
    )
}
