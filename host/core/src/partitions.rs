//! How many partitions a topic has, as the `publish` capability asks it:
//! a publish naming a partition that does not exist is refused to the
//! plugin at once. The router answers from the brokers' metadata
//! (`switchyard::topics`); the sandbox only sees this trait.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What the metadata says about a (topic, partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionCheck {
    /// The partition exists.
    Exists,
    /// The topic has `partitions` partitions, and this is not one of them.
    NoSuchPartition {
        /// The topic's partition count.
        partitions: i32,
    },
    /// The topic does not exist.
    NoSuchTopic,
    /// The metadata could not be read (why): the caller lets the message
    /// through.
    Unknown(String),
}

/// Answers whether a partition exists.
pub trait Partitions: Send + Sync + std::fmt::Debug {
    /// Whether `partition` of `topic` exists, waiting at most `budget`.
    fn check<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        budget: Duration,
    ) -> Pin<Box<dyn Future<Output = PartitionCheck> + Send + 'a>>;
}
