//! One partition's events, run side by side where their keys allow: the
//! events wait in a [`KeyOrder`], start in batches on a small pool of
//! [`Lane`]s (each batch one transaction, or one per event when it falls
//! back), and the offset the partition may commit is the
//! [`OffsetTracker`]'s: the lowest event not finished.
//!
//! - **Order**: events with the same key run in offset order, one batch at
//!   a time; an event without a key, or taken by a route with
//!   `ordering = "partition"`, runs alone after everything before it.
//!   With every route in partition order this is the one-lane-per-
//!   partition router of before: one batch at a time, in offset order.
//! - **Bounds**: at most `concurrency` batches of the partition at once,
//!   and one permit of the router-wide semaphore per running batch; at
//!   most `buffer` events held here, after which the channel fills and
//!   the consumer pauses the partition.
//! - **Crashes and rebalances**: an offset is reported only when every
//!   event below it has finished; the events redone after a crash or by
//!   the partition's next owner find their markers and are no-ops.
//! - **Stopping**: once cancelled (or when a batch gives up on an event),
//!   no batch starts; the running ones finish or abandon their events, and
//!   the function returns. A batch's events start on the plugin version in
//!   service when the batch starts and finish on it.

use super::Lane;
use crate::config::Ordering as RouteOrdering;
use crate::event::Event;
use crate::keys::{BatchId, KeyOrder};
use crate::offsets::OffsetTracker;
use crate::routes::RouteTable;
use crate::state::{Ports, Shared};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

/// How much of one partition runs and waits at once.
#[derive(Debug, Clone, Copy)]
pub struct PartitionLimits {
    /// Events held waiting or running (the channel in front holds as many
    /// again).
    pub buffer: usize,
    /// Most events in one batch.
    pub batch_size: usize,
    /// Most batches running at once.
    pub concurrency: usize,
}

/// What a partition tells its consumer.
pub trait Progress: Send + 'static {
    /// Every event below `next` has finished: `next` is where the
    /// partition resumes after a crash or a rebalance.
    fn finished_below(&mut self, next: i64);
    /// A batch finished; `queued` events wait in the channel (a paused
    /// partition may resume).
    fn batch_done(&mut self, queued: usize);
}

/// A finished batch: its lane back, which batch, its events, and how many
/// of them (from the start) finished — `None`: none, the batch gave them
/// back to run one by one.
type Finished<P> = (Lane<P>, BatchId, Vec<Event>, Option<usize>);

/// Run a partition's events from `rx` until the channel closes with
/// nothing left, or the partition stops (cancelled, or an event was
/// abandoned); see the module documentation.
pub async fn run<P: Ports>(
    shared: Arc<Shared<P>>,
    cancel: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Event>,
    limits: PartitionLimits,
    permits: Arc<Semaphore>,
    mut progress: impl Progress,
) {
    let concurrency = limits.concurrency.max(1);
    let buffer = limits.buffer.max(1);
    let batch_size = limits.batch_size.max(1);
    let mut order = KeyOrder::new(concurrency);
    let mut offsets = OffsetTracker::default();
    let mut waiting: HashMap<i64, Event> = HashMap::new();
    let mut idle: Vec<Lane<P>> = Vec::new();
    let mut tasks: JoinSet<Finished<P>> = JoinSet::new();
    // A batch taken off the order, waiting for a router-wide permit.
    let mut pending: Option<(BatchId, Vec<Event>)> = None;
    let mut reported: Option<i64> = None;
    let mut closed = false;
    let mut stopping = false;
    loop {
        // Take what already waits in the channel, up to the buffer.
        while !closed && !stopping && order.len() < buffer {
            match rx.try_recv() {
                Ok(event) => {
                    if !admit(&shared, &mut order, &mut offsets, &mut waiting, event) {
                        stopping = true;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        let stop = stopping || cancel.load(Ordering::Relaxed);
        if !stop {
            loop {
                if pending.is_none() {
                    let free = concurrency.saturating_sub(order.running()).max(1);
                    let size = order.waiting().div_ceil(free).clamp(1, batch_size);
                    let Some((id, batch)) = order.next_batch(size) else {
                        break;
                    };
                    let events = batch.iter().filter_map(|o| waiting.remove(o)).collect();
                    pending = Some((id, events));
                }
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        if let Some((id, events)) = pending.take() {
                            start(&shared, &cancel, &mut idle, &mut tasks, id, events, permit);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        if tasks.is_empty() && (stop || (closed && pending.is_none() && order.is_empty())) {
            break;
        }
        tokio::select! {
            event = rx.recv(), if !closed && !stop && order.len() < buffer => match event {
                Some(event) => {
                    if !admit(&shared, &mut order, &mut offsets, &mut waiting, event) {
                        stopping = true;
                    }
                }
                None => closed = true,
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Ok((lane, id, events, None)) => {
                        // Each event again, alone: one's retries then hold
                        // only its own key.
                        let state = shared.state.load();
                        for event in events {
                            order.retry_alone(event.offset, key_of(&state.routes, &event));
                            waiting.insert(event.offset, event);
                        }
                        order.finish(id);
                        idle.push(lane);
                    }
                    Ok((lane, id, events, Some(finished))) => {
                        order.finish(id);
                        for event in &events[..finished] {
                            if let Err(e) = offsets.finish(event.offset) {
                                tracing::error!(error = %e, "offset tracking (a bug); stopping the partition so that it resumes from its last finished offset");
                                stopping = true;
                            }
                        }
                        if finished < events.len() {
                            stopping = true;
                        }
                        idle.push(lane);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a batch's task ended abnormally; the partition stops and resumes from its last finished offset");
                        stopping = true;
                    }
                }
                if let Some(next) = offsets.committable()
                    && reported.is_none_or(|r| next > r)
                {
                    reported = Some(next);
                    progress.finished_below(next);
                }
                progress.batch_done(rx.len());
            },
            permit = permits.clone().acquire_owned(), if pending.is_some() && !stop => {
                match permit {
                    Ok(permit) => {
                        if let Some((id, events)) = pending.take() {
                            start(&shared, &cancel, &mut idle, &mut tasks, id, events, permit);
                        }
                    }
                    Err(_) => {
                        tracing::error!("the router's in-flight semaphore is closed (a bug); the partition stops");
                        stopping = true;
                    }
                }
            },
            else => break,
        }
    }
}

/// Put an arriving event in line: with its key when it may run by key,
/// without when it keeps partition order. `false` when the partition must
/// stop (an event out of offset order: a bug upstream).
fn admit<P: Ports>(
    shared: &Shared<P>,
    order: &mut KeyOrder,
    offsets: &mut OffsetTracker,
    waiting: &mut HashMap<i64, Event>,
    event: Event,
) -> bool {
    if let Err(e) = offsets.start(event.offset) {
        tracing::error!(error = %e, topic = %event.topic, partition = event.partition, "event out of order (a bug); stopping the partition so that it resumes from its last finished offset");
        return false;
    }
    order.push(event.offset, key_of(&shared.state.load().routes, &event));
    waiting.insert(event.offset, event);
    true
}

/// The key `event` keeps order by; `None`: it keeps partition order.
fn key_of<'e>(routes: &RouteTable, event: &'e Event) -> Option<&'e [u8]> {
    match routes.ordering(event) {
        RouteOrdering::Key => event.key.as_deref(),
        RouteOrdering::Partition => None,
    }
}

/// Start a batch on an idle lane (or a new one).
fn start<P: Ports>(
    shared: &Arc<Shared<P>>,
    cancel: &Arc<AtomicBool>,
    idle: &mut Vec<Lane<P>>,
    tasks: &mut JoinSet<Finished<P>>,
    id: BatchId,
    events: Vec<Event>,
    permit: OwnedSemaphorePermit,
) {
    let mut lane = idle
        .pop()
        .unwrap_or_else(|| Lane::new(shared.clone(), cancel.clone()));
    if events.len() > 1 {
        tracing::debug!(
            topic = %events[0].topic,
            partition = events[0].partition,
            events = events.len(),
            "handling a batch in one transaction"
        );
    }
    tasks.spawn(async move {
        let finished = lane.try_batch(&events).await;
        drop(permit);
        (lane, id, events, finished)
    });
}
