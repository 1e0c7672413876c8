//! The unit of work, and the small traits it runs on.
//!
//! One rule holds every event's effects together (P1): the plugin's
//! processed-marker, its SQL and its outbox rows commit in one
//! transaction, and the offset moves only after. [`Work`] is that
//! transaction, in one place for every caller — the router's one-event
//! and batch paths, `switchyard plugin test` and the test harness:
//!
//! 1. [`Work::begin`] opens it on a [`Ledger`];
//! 2. [`Work::claim`] / [`Work::claim_replay`] write the markers (a marker
//!    that exists already is a duplicate, skipped);
//! 3. [`Work::run`] hands the event to a plugin through a [`Runner`],
//!    inside the transaction;
//! 4. [`Work::commit`] queues the plugins' messages in the outbox and
//!    commits, or [`Work::rollback`] drops it all.
//!
//! What happens after an attempt (commit, retry, dead-letter, pause) is
//! [`crate::decision::decide`]'s; the lane ([`crate::lane`]) does it.
//!
//! The traits are what the core needs of the outside: a [`Ledger`]
//! (markers, outbox rows and transactions: the store), a [`Runner`] (a
//! plugin: the sandbox), a [`Producer`] (Kafka) and a [`DeadLetterSink`].
//! [`crate::memory`] has in-memory versions, for testing the core without
//! a broker or a database.

use crate::event::{Event, EventContext, Headers};
use crate::message::OutMessage;
use crate::outcome::Outcome;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How instances are shared between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// One live instance reused across events (recycled after a trap, a
    /// limit hit, a reload or `recycle_after_events`).
    #[default]
    Reuse,
    /// A fresh instance for every event.
    PerEvent,
}

/// Options of one call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Record statements and log lines in the call's report.
    pub record: bool,
    /// Instance sharing.
    pub isolation: Isolation,
    /// The call is part of a batch transaction: statements run without
    /// their own savepoints, and any statement failure must make the caller
    /// roll the batch back and replay its events one by one
    /// ([`Report::db_failed`]).
    pub batch: bool,
}

/// The processed-marker of one event in one plugin: its primary key is
/// (consumer group, plugin, dedupe key).
#[derive(Debug, Clone, Copy)]
pub struct Marker<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Plugin name.
    pub plugin: &'a str,
    /// `id:<event id>` or `pos:<topic>/<partition>/<offset>`.
    pub dedupe_key: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl<'a> Marker<'a> {
    /// The marker of `event` in `plugin`.
    pub fn of(group: &'a str, plugin: &'a str, dedupe_key: &'a str, event: &'a Event) -> Self {
        Self {
            group,
            plugin,
            dedupe_key,
            topic: &event.topic,
            partition: event.partition,
            offset: event.offset,
        }
    }
}

/// Why the ledger could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The database could not be reached, or lost the transaction: an
    /// outage, waited out without spending attempts.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused what was asked (a value too large, a
    /// constraint): retrying the same will not help for ever.
    #[error("{0}")]
    Refused(String),
}

impl LedgerError {
    /// Whether this is an outage.
    pub fn is_outage(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_))
    }
}

/// Transactions, markers and outbox rows: what the unit of work needs of
/// the store.
pub trait Ledger: Send + Sync + 'static {
    /// One transaction; dropping it rolls it back.
    type Tx: Send + 'static;

    /// Open a transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, LedgerError>> + Send;

    /// Write new markers (`handled`). Returns the (plugin, dedupe key)
    /// pairs written; a pair not returned had a marker already: a
    /// duplicate. A pair twice in `markers` is written once.
    fn mark(
        &self,
        tx: &mut Self::Tx,
        markers: &[Marker<'_>],
    ) -> impl Future<Output = Result<HashSet<(String, String)>, LedgerError>> + Send;

    /// Take a dead-lettered marker for its replay (`dead-lettered` →
    /// `replayed`); `false` when there is none to take.
    fn claim_replay(
        &self,
        tx: &mut Self::Tx,
        marker: Marker<'_>,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Queue `plugin`'s messages in the outbox, in order.
    fn enqueue(
        &self,
        tx: &mut Self::Tx,
        plugin: &str,
        messages: &[OutMessage],
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Commit.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Roll back.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Record, in a transaction of its own, that the event was
    /// dead-lettered, so that a redelivery does not dead-letter it again.
    fn mark_dead_lettered(
        &self,
        marker: Marker<'_>,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;
}

/// Which version of a plugin runs: what the circuit breaker and the logs
/// need to know of it.
pub trait Versioned: Send + Sync + 'static {
    /// The version's content hash.
    fn hash(&self) -> &str;
    /// The version the plugin says it is.
    fn version(&self) -> &str;
}

/// What one call into a plugin produced, as the unit of work reads it.
pub trait Report: Send {
    /// The outcome (or the call's failure).
    fn outcome(&self) -> &Outcome;
    /// Messages to queue if the transaction commits.
    fn messages(&self) -> &[OutMessage];
    /// The messages, taken out of the report.
    fn take_messages(&mut self) -> Vec<OutMessage>;
    /// A statement found the database unavailable.
    fn db_unavailable(&self) -> bool;
    /// A statement failed in the database.
    fn db_failed(&self) -> bool;
    /// Publishes the host refused.
    fn refused_publishes(&self) -> usize;
    /// Statements run.
    fn statement_count(&self) -> usize;
    /// Time inside the plugin.
    fn elapsed(&self) -> Duration;
}

/// Runs events on one version of one plugin, one at a time, inside the
/// transactions it is given: the sandbox's worker.
pub trait Runner<Tx>: Send + 'static {
    /// A loaded version.
    type Plugin: Versioned;
    /// What a call produced.
    type Report: Report;

    /// A runner for `plugin`.
    fn start(plugin: Arc<Self::Plugin>) -> Self;

    /// The version it runs.
    fn plugin(&self) -> &Arc<Self::Plugin>;

    /// Switch to another version.
    fn swap(&mut self, plugin: Arc<Self::Plugin>);

    /// Handle `event` inside `tx`. The transaction comes back with the
    /// report; `None` only on a host bug, and is treated as rolled back.
    fn run(
        &mut self,
        ctx: Arc<EventContext>,
        event: &Event,
        tx: Tx,
        options: CallOptions,
    ) -> impl Future<Output = (Self::Report, Option<Tx>)> + Send;
}

/// A record to produce.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub payload: &'a [u8],
    /// Headers.
    pub headers: &'a Headers,
}

/// Produces records and waits for the broker's acknowledgement.
pub trait Producer: Send + Sync + 'static {
    /// Produce `record`; `Err` says why the broker did not take it.
    fn send(&self, record: Record<'_>) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where the lane's dead letters go.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// The topic, for logs.
    fn topic(&self) -> &str;

    /// Produce a dead letter: `event`'s key and value with `headers`; `Ok`
    /// once the broker has it.
    fn send(
        &self,
        event: &Event,
        headers: &Headers,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Dead letters produced to one topic by a [`Producer`].
#[derive(Debug)]
pub struct ProducerSink<P> {
    producer: P,
    topic: String,
}

impl<P: Producer> ProducerSink<P> {
    /// Dead letters to `topic`.
    pub fn new(producer: P, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// The producer.
    pub fn producer(&self) -> &P {
        &self.producer
    }
}

impl<P: Producer> DeadLetterSink for ProducerSink<P> {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn send(&self, event: &Event, headers: &Headers) -> Result<(), String> {
        self.producer
            .send(Record {
                topic: &self.topic,
                key: event.key.as_deref(),
                payload: &event.payload,
                headers,
            })
            .await
    }
}

/// The host lost the transaction during a plugin call (a bug): treat it
/// as rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host lost the transaction during the plugin call (a bug); nothing of it committed")]
pub struct LostTransaction;

/// Why [`Work::commit`] did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// A plugin's messages could not be queued; the transaction was
    /// rolled back.
    #[error("cannot queue {plugin}'s {messages} message(s): {error}")]
    Enqueue {
        /// The plugin.
        plugin: String,
        /// How many messages.
        messages: usize,
        /// Why.
        error: LedgerError,
    },
    /// The commit itself failed.
    #[error("commit failed: {0}")]
    Commit(LedgerError),
}

impl CommitError {
    /// The ledger's error.
    pub fn ledger_error(&self) -> &LedgerError {
        match self {
            CommitError::Enqueue { error, .. } | CommitError::Commit(error) => error,
        }
    }
}

/// One transaction of work: begin → claim markers → run plugins → queue
/// outbox → commit. See the module's documentation.
pub struct Work<'l, L: Ledger> {
    ledger: &'l L,
    tx: Option<L::Tx>,
}

impl<'l, L: Ledger> Work<'l, L> {
    /// Open the transaction.
    pub async fn begin(ledger: &'l L) -> Result<Self, LedgerError> {
        let tx = ledger.begin().await?;
        Ok(Self {
            ledger,
            tx: Some(tx),
        })
    }

    fn tx(&mut self) -> Result<&mut L::Tx, LedgerError> {
        self.tx
            .as_mut()
            .ok_or_else(|| LedgerError::Unavailable(LostTransaction.to_string()))
    }

    /// Write new markers; returns the (plugin, dedupe key) pairs written
    /// (see [`Ledger::mark`]).
    pub async fn claim(
        &mut self,
        markers: &[Marker<'_>],
    ) -> Result<HashSet<(String, String)>, LedgerError> {
        let ledger = self.ledger;
        ledger.mark(self.tx()?, markers).await
    }

    /// Write one new marker, or for a replay take the dead-lettered one;
    /// `false`: the event is a duplicate for this plugin.
    pub async fn claim_one(
        &mut self,
        marker: Marker<'_>,
        replay: bool,
    ) -> Result<bool, LedgerError> {
        if replay {
            return self.claim_replay(marker).await;
        }
        let written = self.claim(std::slice::from_ref(&marker)).await?;
        Ok(!written.is_empty())
    }

    /// Take a dead-lettered marker for its replay (see
    /// [`Ledger::claim_replay`]).
    pub async fn claim_replay(&mut self, marker: Marker<'_>) -> Result<bool, LedgerError> {
        let ledger = self.ledger;
        ledger.claim_replay(self.tx()?, marker).await
    }

    /// Run `event` through `runner` inside the transaction. `Err` only
    /// when the transaction was lost before (nothing ran); a loss during
    /// the call shows in [`Work::is_lost`] afterwards.
    pub async fn run<R: Runner<L::Tx>>(
        &mut self,
        runner: &mut R,
        ctx: Arc<EventContext>,
        event: &Event,
        options: CallOptions,
    ) -> Result<R::Report, LostTransaction> {
        let tx = self.tx.take().ok_or(LostTransaction)?;
        let (report, back) = runner.run(ctx, event, tx, options).await;
        self.tx = back;
        Ok(report)
    }

    /// The transaction itself, to read inside it (`plugin test` reads the
    /// plugin's tables before and after the call); `None` once lost.
    pub fn tx_mut(&mut self) -> Option<&mut L::Tx> {
        self.tx.as_mut()
    }

    /// Whether the host lost the transaction (a bug): nothing of it can
    /// commit, and the work is redone.
    pub fn is_lost(&self) -> bool {
        self.tx.is_none()
    }

    /// Queue each plugin's messages in the outbox, in order, and commit.
    /// On an error nothing is committed.
    pub async fn commit(mut self, outbox: &[(&str, &[OutMessage])]) -> Result<(), CommitError> {
        let ledger = self.ledger;
        let Some(mut tx) = self.tx.take() else {
            return Err(CommitError::Commit(LedgerError::Unavailable(
                LostTransaction.to_string(),
            )));
        };
        for (plugin, messages) in outbox {
            if messages.is_empty() {
                continue;
            }
            if let Err(error) = ledger.enqueue(&mut tx, plugin, messages).await {
                roll_back(ledger, tx).await;
                return Err(CommitError::Enqueue {
                    plugin: plugin.to_string(),
                    messages: messages.len(),
                    error,
                });
            }
        }
        ledger.commit(tx).await.map_err(CommitError::Commit)
    }

    /// Drop everything done in the transaction.
    /// A failed rollback leaves nothing committed either (the database
    /// drops the transaction with its session): the lane only logs it
    /// ([`Work::discard`]); `plugin test` reports it.
    pub async fn rollback(mut self) -> Result<(), LedgerError> {
        match self.tx.take() {
            Some(tx) => self.ledger.rollback(tx).await,
            None => Ok(()),
        }
    }

    /// Roll back, logging a failure at debug level (see
    /// [`Work::rollback`]).
    pub async fn discard(mut self) {
        if let Some(tx) = self.tx.take() {
            roll_back(self.ledger, tx).await;
        }
    }
}

/// Roll `tx` back. A rollback that fails leaves nothing committed (the
/// database drops the transaction with its session), so its error is only
/// worth a line at debug level.
async fn roll_back<L: Ledger>(ledger: &L, tx: L::Tx) {
    if let Err(e) = ledger.rollback(tx).await {
        tracing::debug!(error = %e, "rollback failed; the transaction ends with its session");
    }
}
