//! How many partitions the topics plugins publish to have, so that a
//! `publish` naming a partition that does not exist is refused to the
//! plugin at once instead of waiting in the outbox for ever.
//!
//! The counts come from the brokers' metadata, fetched by a client of its
//! own (a metadata request from it never creates a topic:
//! `allow.auto.create.topics=false`), cached for [`TTL`] and fetched again
//! on a miss — a partition beyond the cached count, or a topic not found —
//! at most once per [`MISS_REFRESH`] per topic, so a plugin cannot turn
//! every publish into a metadata round trip.
//!
//! The check fails open: when the brokers do not answer in time the
//! message goes to the outbox, and the relay moves it aside if the broker
//! refuses it for good (see [`crate::outbox`]).

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a topic's partition count is trusted.
pub const TTL: Duration = Duration::from_secs(10);

/// The least time between two fetches for one topic on a miss.
pub const MISS_REFRESH: Duration = Duration::from_secs(1);

/// The longest a `publish` waits for metadata.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(250);

pub use switchyard_core::partitions::{PartitionCheck, Partitions};

/// One cached answer: the partition count (`None`: no such topic) and
/// when it was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    partitions: Option<i32>,
    fetched: Instant,
}

/// What to do with a lookup: answer from the cache, or fetch first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Answer(PartitionCheck),
    Fetch,
}

/// The answer `entry` gives for `partition` at `now`: fresh and positive
/// answers are trusted; a negative answer (partition beyond the count, or
/// no topic) is trusted only for [`MISS_REFRESH`], then fetched again, so
/// that partitions or a topic added meanwhile are seen.
fn step(entry: Option<Entry>, partition: i32, now: Instant) -> Step {
    let Some(e) = entry else {
        return Step::Fetch;
    };
    let age = now.saturating_duration_since(e.fetched);
    if age >= TTL {
        return Step::Fetch;
    }
    let answer = answer(e.partitions, partition);
    if answer != PartitionCheck::Exists && age >= MISS_REFRESH {
        return Step::Fetch;
    }
    Step::Answer(answer)
}

/// The verdict of a partition count (`None`: no such topic) on
/// `partition`.
fn answer(partitions: Option<i32>, partition: i32) -> PartitionCheck {
    match partitions {
        None => PartitionCheck::NoSuchTopic,
        Some(n) if (0..n).contains(&partition) => PartitionCheck::Exists,
        Some(n) => PartitionCheck::NoSuchPartition { partitions: n },
    }
}

/// Partition counts of topics, cached.
pub struct TopicCatalog {
    client: Arc<BaseConsumer>,
    cache: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for TopicCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicCatalog").finish_non_exhaustive()
    }
}

impl TopicCatalog {
    /// A catalog reading metadata from `brokers`. Nothing is fetched until
    /// the first lookup.
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("allow.auto.create.topics", "false")
            .set(
                "client.id",
                format!("switchyard-{}-metadata", std::process::id()),
            )
            .create()?;
        Ok(Self {
            client: Arc::new(client),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, topic: &str) -> Option<Entry> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .copied()
    }

    /// Whether `partition` of `topic` exists, waiting at most `budget`
    /// (capped at [`FETCH_TIMEOUT`]) for the brokers when the cache cannot
    /// answer.
    pub async fn check(&self, topic: &str, partition: i32, budget: Duration) -> PartitionCheck {
        let entry = self.cached(topic);
        match step(entry, partition, Instant::now()) {
            Step::Answer(a) => return a,
            Step::Fetch => {}
        }
        let timeout = budget.min(FETCH_TIMEOUT);
        if timeout < Duration::from_millis(10) {
            return PartitionCheck::Unknown(
                "no time left in the call to read the topic's metadata".into(),
            );
        }
        let client = self.client.clone();
        let name = topic.to_string();
        let fetched = tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| e.to_string())?;
            let Some(t) = metadata.topics().iter().find(|t| t.name() == name) else {
                return Ok(None);
            };
            match t.error().map(RDKafkaErrorCode::from) {
                None => Ok(Some(
                    i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                )),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
                Some(code) => Err(format!("metadata of {name}: {code}")),
            }
        })
        .await;
        let partitions = match fetched {
            Ok(Ok(p)) => p,
            Ok(Err(why)) => {
                // Keep what was cached: an old count beats none.
                return entry.map_or(PartitionCheck::Unknown(why), |e| {
                    answer(e.partitions, partition)
                });
            }
            Err(e) => return PartitionCheck::Unknown(e.to_string()),
        };
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                topic.to_string(),
                Entry {
                    partitions,
                    fetched: Instant::now(),
                },
            );
        answer(partitions, partition)
    }
}

impl Partitions for TopicCatalog {
    fn check<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        budget: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = PartitionCheck> + Send + 'a>> {
        Box::pin(TopicCatalog::check(self, topic, partition, budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_positive_answers_come_from_the_cache() {
        let now = Instant::now();
        let e = Entry {
            partitions: Some(3),
            fetched: now,
        };
        assert_eq!(step(Some(e), 2, now), Step::Answer(PartitionCheck::Exists));
        assert_eq!(
            step(Some(e), 2, now + TTL - Duration::from_millis(1)),
            Step::Answer(PartitionCheck::Exists)
        );
        assert_eq!(step(Some(e), 2, now + TTL), Step::Fetch, "stale");
        assert_eq!(step(None, 0, now), Step::Fetch, "never fetched");
    }

    #[test]
    fn a_miss_is_fetched_again_but_not_on_every_publish() {
        let now = Instant::now();
        let e = Entry {
            partitions: Some(3),
            fetched: now,
        };
        // Just fetched: the miss is trusted (a hostile plugin cannot make
        // every publish a round trip).
        assert_eq!(
            step(Some(e), 3, now + Duration::from_millis(10)),
            Step::Answer(PartitionCheck::NoSuchPartition { partitions: 3 })
        );
        // A little later, the topic may have grown: ask again.
        assert_eq!(step(Some(e), 3, now + MISS_REFRESH), Step::Fetch);
        let gone = Entry {
            partitions: None,
            fetched: now,
        };
        assert_eq!(
            step(Some(gone), 0, now),
            Step::Answer(PartitionCheck::NoSuchTopic)
        );
        assert_eq!(step(Some(gone), 0, now + MISS_REFRESH), Step::Fetch);
    }

    #[test]
    fn negative_partitions_never_exist() {
        assert_eq!(
            answer(Some(1), -1),
            PartitionCheck::NoSuchPartition { partitions: 1 }
        );
        assert_eq!(answer(Some(1), 0), PartitionCheck::Exists);
        assert_eq!(answer(None, 0), PartitionCheck::NoSuchTopic);
    }
}
