//! Kafka clients: the consumer's and producer's settings, topic creation,
//! and conversion between rdkafka messages and [`Event`]s.

use crate::event::Event;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use switchyard_core::work::{Producer, Record};

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

/// Settings of a reader that assigns itself every partition of a topic
/// instead of joining a consumer group (`dlq`, `consume`, `record`): it
/// never subscribes and never commits, so no group ever sees it; the
/// group id is one of its own only because librdkafka's `assign` wants
/// one. The end of each partition is reported (how `dlq` knows it read
/// everything, and `consume` that it caught up); topics are never created
/// by reading them; and a fetch waits at most 25 ms, because Tansu 0.6
/// answers a fetch only when that wait runs out, even with data waiting
/// (librdkafka's 500 ms would hold each record back that long).
pub fn reader_config(brokers: &str, purpose: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("switchyard-{purpose}-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "25")
        .set(
            "client.id",
            format!("switchyard-{purpose}-{}", std::process::id()),
        );
    c
}

/// The client context of the readers of [`reader_config`]: the end of a
/// partition, which those readers ask to be told about, is no error to
/// log; every other client error is logged.
pub struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

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

pub use switchyard_core::limits::{DEFAULT_MESSAGE_MAX_BYTES, producer_message_max_bytes};

pub use switchyard_core::message::{RECORD_OVERHEAD_BYTES, record_wire_size};

/// The router's producer, as the core's [`Producer`]: a produce waits up
/// to 30 s in librdkafka's queue, then for the broker's acknowledgement.
#[derive(Clone)]
pub struct KafkaProducer(pub rdkafka::producer::FutureProducer);

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaProducer")
    }
}

impl Producer for KafkaProducer {
    async fn send(&self, r: Record<'_>) -> Result<(), String> {
        let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(r.topic)
            .payload(r.payload)
            .headers(to_headers(r.headers));
        if let Some(k) = r.key {
            record = record.key(k);
        }
        self.0
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }
}

/// What a failed produce means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceFailure {
    /// The broker, the network or the producer is having trouble: the same
    /// record succeeds later. Keep it and try again.
    Transient,
    /// The record itself can never be written as it is (too large, a
    /// partition or topic that does not exist, not authorised, invalid):
    /// retrying it only blocks what comes after. The label names the
    /// reason in metrics and dead-letter headers.
    Permanent(&'static str),
}

/// Classify a produce error, from `send_result` or from the delivery
/// report. Only errors that are the record's own fault are permanent;
/// everything else — outages, timeouts, leader elections, too few
/// replicas, and failures of the producer or the cluster as a whole
/// (cluster authorisation, a fatal idempotence error) that no single
/// record causes — is transient, so a good record is never moved aside
/// because of the infrastructure. Unknown codes are transient too: the
/// row waits, nothing is lost, and `/health` shows the outbox ageing.
pub fn classify_produce_error(e: &KafkaError) -> ProduceFailure {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageProduction(code) => *code,
        _ => return ProduceFailure::Transient,
    };
    ProduceFailure::Permanent(match code {
        // Over message.max.bytes (producer) or the topic's
        // max.message.bytes (broker).
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            "message_too_large"
        }
        // librdkafka knows the topic's partitions and this one is not
        // among them.
        C::UnknownPartition => "unknown_partition",
        // librdkafka gave up waiting for the topic to appear
        // (topic.metadata.propagation.max.ms). The broker's own
        // UnknownTopicOrPartition is transient: it is what a broker says
        // while a topic is being created or a leader moves.
        C::UnknownTopic => "unknown_topic",
        C::InvalidTopic => "invalid_topic",
        C::TopicAuthorizationFailed => "topic_authorization_failed",
        C::InvalidRecord | C::InvalidMessage | C::BadMessage | C::InvalidArgument => {
            "invalid_record"
        }
        C::InvalidTimestamp => "invalid_timestamp",
        C::UnsupportedForMessageFormat => "unsupported_for_message_format",
        C::PolicyViolation => "policy_violation",
        _ => return ProduceFailure::Transient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    #[test]
    fn produce_errors_are_classified() {
        use ProduceFailure::{Permanent, Transient};
        let p = |c| KafkaError::MessageProduction(c);
        let table = [
            // The record's own fault: retrying cannot help.
            (p(C::MessageSizeTooLarge), Permanent("message_too_large")),
            (p(C::MessageBatchTooLarge), Permanent("message_too_large")),
            (p(C::InvalidMessageSize), Permanent("message_too_large")),
            (p(C::UnknownPartition), Permanent("unknown_partition")),
            (p(C::UnknownTopic), Permanent("unknown_topic")),
            (p(C::InvalidTopic), Permanent("invalid_topic")),
            (
                p(C::TopicAuthorizationFailed),
                Permanent("topic_authorization_failed"),
            ),
            (p(C::InvalidRecord), Permanent("invalid_record")),
            (p(C::InvalidMessage), Permanent("invalid_record")),
            (p(C::InvalidTimestamp), Permanent("invalid_timestamp")),
            (
                p(C::UnsupportedForMessageFormat),
                Permanent("unsupported_for_message_format"),
            ),
            (p(C::PolicyViolation), Permanent("policy_violation")),
            // The infrastructure's: the same record succeeds later.
            (p(C::MessageTimedOut), Transient),
            (p(C::BrokerTransportFailure), Transient),
            (p(C::AllBrokersDown), Transient),
            (p(C::RequestTimedOut), Transient),
            (p(C::NotEnoughReplicas), Transient),
            (p(C::NotEnoughReplicasAfterAppend), Transient),
            (p(C::LeaderNotAvailable), Transient),
            (p(C::NotLeaderForPartition), Transient),
            (p(C::UnknownTopicOrPartition), Transient),
            (p(C::QueueFull), Transient),
            (p(C::KafkaStorageError), Transient),
            (p(C::NetworkException), Transient),
            // Not one record's fault: the producer or the cluster.
            (p(C::ClusterAuthorizationFailed), Transient),
            (p(C::Fatal), Transient),
            (p(C::OutOfOrderSequenceNumber), Transient),
            (KafkaError::Canceled, Transient),
            (KafkaError::Global(C::MessageSizeTooLarge), Transient),
        ];
        for (error, expected) in table {
            assert_eq!(classify_produce_error(&error), expected, "{error}");
        }
    }
    use RDKafkaErrorCode as C;

    /// The host's count is librdkafka's: at the producer's limit a record
    /// is accepted, one byte over it is refused (checked by librdkafka
    /// itself, before any broker is involved).
    #[test]
    fn record_size_is_counted_as_the_producer_counts_it() {
        let max = 2_000;
        let producer: FutureProducer = match ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.max.bytes", max.to_string())
            .set("message.timeout.ms", "1000")
            .create()
        {
            Ok(p) => p,
            Err(e) => panic!("cannot create a producer: {e}"),
        };
        let headers = vec![
            ("event-id".to_string(), Some(b"abc:0".to_vec())),
            ("h".repeat(70), Some(vec![7; 200])),
            ("null".to_string(), None),
        ];
        let key = b"key-1".to_vec();
        let framing = record_wire_size(Some(&key), &[], &headers);
        for (len, accepted) in [(max - framing, true), (max - framing + 1, false)] {
            let value = vec![b'x'; len];
            assert_eq!(
                record_wire_size(Some(&key), &value, &headers),
                len + framing
            );
            let record = FutureRecord::to("t")
                .key(&key[..])
                .payload(&value[..])
                .headers(to_headers(&headers));
            match producer.send_result(record) {
                Ok(_) => assert!(accepted, "{len} bytes of value were accepted"),
                Err((e, _)) => {
                    assert!(!accepted, "{len} bytes refused: {e}");
                    assert_eq!(
                        classify_produce_error(&e),
                        ProduceFailure::Permanent("message_too_large")
                    );
                }
            }
        }
    }

    #[test]
    fn the_producer_limit_comes_from_the_config() {
        let mut extra = BTreeMap::new();
        assert_eq!(producer_message_max_bytes(&extra), Ok(1_000_000));
        extra.insert("message.max.bytes".to_string(), "200000".to_string());
        assert_eq!(producer_message_max_bytes(&extra), Ok(200_000));
        extra.insert("message.max.bytes".to_string(), "12".to_string());
        assert!(producer_message_max_bytes(&extra).is_err());
    }
}
