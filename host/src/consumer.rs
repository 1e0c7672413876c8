//! The consumer: one rdkafka consumer in the group, one set of lanes per
//! assigned partition ([`partition::run`]), bounded buffers, offsets
//! stored only once every event below them is durable.
//!
//! - **Order** is kept by key within a partition (or for the whole
//!   partition where a route asks for `ordering = "partition"`); different
//!   partitions run concurrently, and so do different keys of one
//!   partition, up to `partition_concurrency` transactions per partition
//!   and `max_in_flight` in the router.
//! - **Back-pressure**: each partition buffers `lane_buffer` events; when one is
//!   full its partition is paused (the consumer keeps polling, so it stays
//!   in the group) and resumed once the lane has room again.
//! - **Rebalances**: revoked partitions' lanes are cancelled; they finish
//!   or abandon the event in hand and never store another offset. Effects
//!   are keyed by the processed-marker, so the new owner redoing an event
//!   whose effects already committed finds a duplicate and skips it.

use crate::event::Event;
use crate::kafka::to_event;
use crate::pipeline::Shared;
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use switchyard_core::lane::partition::{self, PartitionLimits, Progress};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

type Tp = (String, i32);

/// A running lane as the consumer sees it.
struct LaneHandle {
    tx: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
    /// Offset of the last event the lane finished (-1: none yet).
    done: Arc<AtomicI64>,
    paused: Arc<AtomicBool>,
    overflow: VecDeque<Event>,
    join: JoinHandle<()>,
}

/// Lanes by partition, shared with the rebalance callback.
#[derive(Default, Clone)]
pub struct Lanes(Arc<Mutex<HashMap<Tp, LaneHandle>>>);

impl Lanes {
    fn lock(&self) -> MutexGuard<'_, HashMap<Tp, LaneHandle>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Rebalance callbacks, and the consumer lag from librdkafka's statistics.
pub struct RouterContext {
    lanes: Lanes,
    lag: Mutex<Vec<PartitionLag>>,
}

/// How far an assigned partition's processing is behind its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records after the last one this router finished (its stored
    /// offset); before it finishes one there, after the group's committed
    /// offset; with neither, the whole partition.
    pub records: i64,
}

impl RouterContext {
    /// The lag of each assigned partition as of the latest statistics
    /// (`statistics.interval.ms`, 1 s by default): no broker round trip.
    pub fn lag(&self) -> Vec<PartitionLag> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The lag of each assigned partition in a statistics report.
pub fn lag_of(stats: &rdkafka::Statistics) -> Vec<PartitionLag> {
    let mut out: Vec<PartitionLag> = stats
        .topics
        .iter()
        .flat_map(|(topic, t)| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
                .map(move |p| {
                    let from = [p.stored_offset, p.committed_offset]
                        .into_iter()
                        .find(|o| *o >= 0)
                        .unwrap_or(p.lo_offset.max(0));
                    PartitionLag {
                        topic: topic.clone(),
                        partition: p.partition,
                        records: (p.hi_offset - from).max(0),
                    }
                })
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    out
}

impl ClientContext for RouterContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = lag_of(&statistics);
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut lanes = self.lanes.lock();
                for e in tpl.elements() {
                    if let Some(lane) = lanes.remove(&(e.topic().to_string(), e.partition())) {
                        lane.cancel.store(true, Ordering::Relaxed);
                    }
                }
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked; their lanes stop"
                );
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // librdkafka keeps a partition's pause flag across revoke and
        // reassign; its old lane (which would resume it) is gone, so start
        // every assigned partition unpaused.
        if let Rebalance::Assign(tpl) = rebalance
            && let Err(e) = consumer.resume(tpl)
        {
            tracing::warn!(error = %e, "cannot resume newly assigned partitions");
        }
    }
}

/// The group consumer.
pub type RouterConsumer = StreamConsumer<RouterContext>;

/// Create the consumer with its rebalance context.
pub fn create(config: &rdkafka::ClientConfig, lanes: Lanes) -> anyhow::Result<RouterConsumer> {
    Ok(config.create_with_context(RouterContext {
        lanes,
        lag: Mutex::new(Vec::new()),
    })?)
}

fn tpl_of(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    tpl
}

/// What a partition's lanes report to the consumer: the offset to store,
/// and when a paused partition has room again.
struct ConsumerProgress {
    consumer: Arc<RouterConsumer>,
    tp: Tp,
    done: Arc<AtomicI64>,
    paused: Arc<AtomicBool>,
    room: mpsc::UnboundedSender<Tp>,
    buffer: usize,
}

impl Progress for ConsumerProgress {
    fn finished_below(&mut self, next: i64) {
        // Every event below `next` is done for good (even if the partition
        // was revoked meanwhile: storing the offset is correct, and
        // librdkafka refuses it for a partition no longer ours). The
        // offset store takes the offset of the last processed message and
        // commits the next one itself.
        let last = next - 1;
        self.done.store(last, Ordering::Relaxed);
        if let Err(e) = self.consumer.store_offset(&self.tp.0, self.tp.1, last) {
            tracing::debug!(error = %e, topic = %self.tp.0, partition = self.tp.1, "offset not stored (partition no longer assigned)");
        }
    }

    fn batch_done(&mut self, queued: usize) {
        // Ask for the partition to be resumed once there is room again
        // (checked after the work, so a drained lane never waits on a
        // paused partition).
        if self.paused.load(Ordering::Relaxed) && queued <= self.buffer / 2 {
            let _ = self.room.send(self.tp.clone());
        }
    }
}

/// How the consumer sizes each partition's lanes.
#[derive(Debug, Clone, Copy)]
pub struct LaneSettings {
    /// Events buffered per partition before it is paused.
    pub buffer: usize,
    /// Most events in one transaction.
    pub batch_size: usize,
    /// Most transactions of one partition at once.
    pub partition_concurrency: usize,
    /// Most transactions of the router at once.
    pub max_in_flight: usize,
}

fn spawn_lane(
    tp: &Tp,
    shared: &Arc<Shared>,
    consumer: &Arc<RouterConsumer>,
    room: &mpsc::UnboundedSender<Tp>,
    settings: LaneSettings,
    permits: &Arc<Semaphore>,
) -> LaneHandle {
    let buffer = settings.buffer.max(1);
    let (tx, rx) = mpsc::channel::<Event>(buffer);
    let cancel = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicI64::new(-1));
    let progress = ConsumerProgress {
        consumer: consumer.clone(),
        tp: tp.clone(),
        done: done.clone(),
        paused: paused.clone(),
        room: room.clone(),
        buffer,
    };
    let limits = PartitionLimits {
        buffer,
        batch_size: settings.batch_size,
        concurrency: settings.partition_concurrency,
    };
    let join = tokio::spawn(partition::run(
        shared.clone(),
        cancel.clone(),
        rx,
        limits,
        permits.clone(),
        progress,
    ));
    LaneHandle {
        tx,
        cancel,
        done,
        paused,
        overflow: VecDeque::new(),
        join,
    }
}

/// Consume until `shutdown` resolves, then stop the lanes: each finishes
/// (or abandons) the event in hand; buffered events are left for the next
/// owner of the partition, since their offsets were never stored.
pub async fn run(
    consumer: Arc<RouterConsumer>,
    lanes: Lanes,
    shared: Arc<Shared>,
    settings: LaneSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    let (room_tx, mut room_rx) = mpsc::unbounded_channel::<Tp>();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(tp) = room_rx.recv() => {
                let mut map = lanes.lock();
                if let Some(lane) = map.get_mut(&tp) {
                    while let Some(ev) = lane.overflow.pop_front() {
                        if let Err(mpsc::error::TrySendError::Full(ev)) = lane.tx.try_send(ev) {
                            lane.overflow.push_front(ev);
                            break;
                        }
                    }
                    if lane.overflow.is_empty()
                        && lane.paused.swap(false, Ordering::Relaxed)
                        && let Err(e) = consumer.resume(&tpl_of(&tp))
                    {
                        tracing::warn!(error = %e, topic = %tp.0, partition = tp.1, "cannot resume partition");
                    }
                }
            }
            msg = consumer.recv() => {
                let event = match msg {
                    Ok(m) => to_event(&m),
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error (librdkafka retries by itself)");
                        continue;
                    }
                };
                let tp = (event.topic.clone(), event.partition);
                let mut map = lanes.lock();
                let lane = map
                    .entry(tp.clone())
                    .or_insert_with(|| {
                        spawn_lane(&tp, &shared, &consumer, &room_tx, settings, &permits)
                    });
                if !lane.overflow.is_empty() {
                    lane.overflow.push_back(event);
                    continue;
                }
                match lane.tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        lane.overflow.push_back(event);
                        if !lane.paused.swap(true, Ordering::Relaxed) {
                            tracing::debug!(topic = %tp.0, partition = tp.1, "lane full; partition paused");
                            if let Err(e) = consumer.pause(&tpl_of(&tp)) {
                                tracing::warn!(error = %e, "cannot pause partition");
                            }
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(event)) => {
                        // The lane ended on its own (a bug, or a panic):
                        // what it had buffered was never handled. Rewind
                        // the partition to just after the last event it
                        // finished and start a new lane, so nothing is
                        // skipped.
                        let from = lane.done.load(Ordering::Relaxed) + 1;
                        let from = if from > 0 { from } else { event.offset };
                        tracing::error!(topic = %tp.0, partition = tp.1, from, "a lane stopped unexpectedly; rewinding the partition and starting a new one");
                        map.remove(&tp);
                        drop(map);
                        if let Err(e) = consumer.seek(&tp.0, tp.1, rdkafka::Offset::Offset(from), std::time::Duration::from_secs(10)) {
                            tracing::error!(error = %e, topic = %tp.0, partition = tp.1, "cannot rewind the partition; restart the router to resume it from its committed offset");
                        }
                    }
                }
            }
        }
    }
    let handles: Vec<LaneHandle> = lanes.lock().drain().map(|(_, h)| h).collect();
    for h in &handles {
        h.cancel.store(true, Ordering::Relaxed);
    }
    for h in handles {
        drop(h.tx);
        if let Err(e) = h.join.await {
            tracing::error!(error = %e, "a lane ended abnormally");
        }
    }
}

/// Commit the stored offsets now (at shutdown).
pub fn commit_stored(consumer: &RouterConsumer) {
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Ok(()) => tracing::info!("offsets committed"),
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final offset commit failed; the group resumes from the last committed offsets (effects are deduplicated)")
        }
    }
}
