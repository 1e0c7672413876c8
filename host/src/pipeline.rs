//! What happens to one event in one ordered lane (one partition): for each
//! plugin its routes select, one transaction holding the processed-marker,
//! the plugin's SQL and its outbox rows; retries with backoff; dead letters.
//!
//! The outcomes, and what the lane does with them:
//! - `done`, `skipped`: commit marker + SQL + outbox together (P1, P2);
//! - duplicate (the marker exists): nothing, the effects are already there;
//! - `retry`, a trap or a limit: roll back, back off exponentially, try
//!   again, up to `retry.max_attempts`, then dead-letter;
//! - `rejected`: roll back and dead-letter at once;
//! - the database or the broker unavailable: roll back, back off and try
//!   again without limit and without spending attempts — an outage pauses
//!   the lane, it never dead-letters a good event (P3).
//!
//! A dead letter carries the original key, value and headers plus
//! `switchyard.*` headers saying why; it is acknowledged by the broker
//! before the marker is written and the offset moves.

use crate::breaker::{Admission, BreakerConfig, Breakers, Transition};
use crate::config::RetryConfig;
use crate::database::Database;
use crate::event::{Event, EventContext};
use crate::kafka::to_headers;
use crate::outbox;
use crate::routes::RouteTable;
use crate::runtime::{CallOptions, Isolation, LoadedPlugin, Outcome, PluginWorker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument;

/// A loaded plugin and how its instances are shared.
#[derive(Debug, Clone)]
pub struct PluginSlot {
    /// The version in service.
    pub plugin: Arc<LoadedPlugin>,
    /// Instance sharing.
    pub isolation: Isolation,
    /// Its circuit breaker's settings.
    pub breaker: BreakerConfig,
}

/// Routes and plugins in service; swapped whole on reload.
#[derive(Debug, Default, Clone)]
pub struct RouterState {
    /// Topic → routes.
    pub routes: RouteTable,
    /// Plugin name → version in service.
    pub plugins: HashMap<String, PluginSlot>,
}

/// What every lane shares.
pub struct Shared {
    /// Routes and plugins in service.
    pub state: arc_swap::ArcSwap<RouterState>,
    /// The service database.
    pub db: Database,
    /// Producer for dead letters.
    pub producer: FutureProducer,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Consumer group (part of every dedupe key).
    pub group: String,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Wakes the outbox relay after a commit with messages.
    pub relay_wake: Arc<Notify>,
    /// Counts and timings, exported at `/metrics` (shared with the
    /// outbox relay).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Each plugin's circuit breaker.
    pub breakers: Breakers,
}

impl Shared {
    /// Account for a plugin call: count refused publishes, feed the
    /// result to the plugin's circuit breaker and say so when the circuit
    /// opens or closes.
    fn record_call(
        &self,
        name: &str,
        slot: &PluginSlot,
        inv: &crate::runtime::Invocation,
        first_attempt: bool,
    ) {
        let version = &slot.plugin.hash;
        self.metrics.call(name, inv.elapsed);
        if !inv.refused_publishes.is_empty() {
            self.metrics
                .publishes_refused(name, inv.refused_publishes.len() as u64);
        }
        let transition = if inv.db_unavailable {
            self.breakers.inconclusive(name, version);
            Transition::None
        } else if let Outcome::Failed(failure) = &inv.outcome {
            if !first_attempt {
                // The breaker counts events, not attempts.
                return;
            }
            let t = self
                .breakers
                .failure(name, version, slot.breaker, &failure.to_string());
            if t == Transition::Opened {
                self.metrics
                    .circuit_opened(name, &format!("circuit opened after: {failure}"));
                tracing::error!(
                    plugin = %name,
                    version = %slot.plugin.info.version,
                    hash = %version,
                    last_failure = %failure,
                    cooldown_ms = slot.breaker.cooldown_ms,
                    dead_letter_topic = %self.dead_letter_topic,
                    "circuit opened: {} events in a row failed in the plugin; its events are parked in the dead-letter topic (outcome `parked`) until a trial event succeeds; other plugins keep flowing",
                    slot.breaker.failures
                );
            }
            t
        } else {
            self.breakers.success(name, version)
        };
        if transition == Transition::Closed {
            tracing::info!(plugin = %name, "circuit closed: the trial event succeeded");
        }
    }
}

/// The span of one plugin's handling of one event: every log line in it
/// carries the plugin, where the event is, and its ids.
fn event_span(plugin: &str, event: &Event) -> tracing::Span {
    tracing::info_span!(
        "switchyard.event",
        plugin = %plugin,
        topic = %event.topic,
        partition = event.partition,
        offset = event.offset,
        event_id = event.header_str("event-id").unwrap_or(""),
        request_id = event.header_str("request-id").unwrap_or(""),
        trace_id = event
            .header_str("traceparent")
            .and_then(crate::event::TraceParent::parse)
            .map(|t| t.trace_id)
            .unwrap_or_default(),
    )
}

/// Whether `plugin`'s circuit is closed, asked without admission (which
/// would spend a half-open trial).
fn circuit_closed(shared: &Shared, plugin: &str, slot: &PluginSlot) -> bool {
    let (circuit, _) = shared.breakers.state(plugin, &slot.plugin.hash);
    matches!(circuit, crate::breaker::State::Closed { .. })
}

/// A batch that failed for a reason of its own (not a plugin's outcome,
/// which the one-event path reports): say why, since every batch of the
/// partition may hit it and fall back to one transaction per event.
fn batch_fallback(what: &str, error: &str) {
    tracing::warn!(%error, "{what}; handling the batch's events one by one");
}

/// The log line for an event skipped because its marker says so.
fn duplicate_line(replay: bool) -> &'static str {
    if replay {
        "replay skipped: no dead-letter marker under its dedupe key (replayed already, or replay headers not written by `switchyard dlq replay`)"
    } else {
        "duplicate: already handled, skipped"
    }
}

/// The lane's worker for plugin `name`, started on the version in service,
/// or switched to it if the lane's worker still runs an older one.
fn worker_for<'a>(
    workers: &'a mut HashMap<String, PluginWorker>,
    name: &str,
    slot: &PluginSlot,
) -> &'a mut PluginWorker {
    let worker = workers
        .entry(name.to_string())
        .or_insert_with(|| PluginWorker::new(slot.plugin.clone()));
    if !Arc::ptr_eq(worker.plugin(), &slot.plugin) {
        worker.swap(slot.plugin.clone());
    }
    worker
}

/// How an event ended in a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEnd {
    /// Every selected plugin committed, skipped, found a duplicate or
    /// dead-lettered it: the offset may be stored.
    Completed,
    /// The lane was cancelled (shutdown or partition revoked) before the
    /// event was finished: the offset must not move.
    Abandoned,
}

/// How one plugin's handling of an event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PluginEnd {
    Committed(&'static str),
    Duplicate,
    DeadLettered,
    Abandoned,
}

/// One ordered lane: a worker per plugin, events one at a time.
pub struct Lane {
    ctl: LaneCtl,
    workers: HashMap<String, PluginWorker>,
}

/// The part of a lane that is shared-borrowed across awaits (it must be
/// `Sync`; the workers, which own wasmtime stores, are not).
struct LaneCtl {
    shared: Arc<Shared>,
    cancel: Arc<AtomicBool>,
}

impl Lane {
    /// A lane that stops between steps once `cancel` is set.
    pub fn new(shared: Arc<Shared>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            ctl: LaneCtl { shared, cancel },
            workers: HashMap::new(),
        }
    }
}

impl LaneCtl {
    /// One step of an outage: count it, say what failed and how long the
    /// lane waits, back off. Outages never spend an event's attempts.
    /// Returns `true` if the lane was cancelled meanwhile.
    async fn outage_pause(&self, outage: &mut u32, what: &str, error: String) -> bool {
        *outage += 1;
        self.shared.metrics.outage();
        let wait = self.backoff(*outage);
        tracing::warn!(%error, "{what}; retrying in {wait:?} without spending an attempt");
        self.pause(wait).await
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Sleep `d`, waking early if the lane is cancelled; `true` if it was.
    async fn pause(&self, d: Duration) -> bool {
        let step = Duration::from_millis(50);
        let mut left = d;
        while !left.is_zero() {
            if self.cancelled() {
                return true;
            }
            let s = left.min(step);
            tokio::time::sleep(s).await;
            left -= s;
        }
        self.cancelled()
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let r = &self.shared.retry;
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            r.initial_backoff_ms
                .saturating_mul(factor)
                .min(r.max_backoff_ms),
        )
    }
}

impl Lane {
    /// Run `event` through every plugin its routes select.
    pub async fn process(&mut self, event: &Event) -> EventEnd {
        let state = self.ctl.shared.state.load_full();
        let selected = state.routes.select(event);
        if selected.is_empty() {
            tracing::debug!(topic = %event.topic, partition = event.partition, offset = event.offset, "no route matches; skipped");
        }
        for sel in selected {
            let Some(slot) = state.plugins.get(&sel.plugin) else {
                // The config check makes this unreachable; do not lose
                // the event over it.
                tracing::error!(plugin = %sel.plugin, "route to a plugin that is not loaded; event not handled, offset not stored");
                return EventEnd::Abandoned;
            };
            let span = event_span(&sel.plugin, event);
            let end = self
                .run_plugin(event, &sel.plugin, &sel.dedupe_key, sel.replay, slot)
                .instrument(span)
                .await;
            if end == PluginEnd::Abandoned {
                return EventEnd::Abandoned;
            }
        }
        EventEnd::Completed
    }

    /// Run a batch of consecutive events of this lane's partition in one
    /// transaction: every event's marker, SQL and outbox rows, for every
    /// plugin, then one commit — PostgreSQL's or SQLite's flush to disk —
    /// for the lot. Returns how many events, from the start, are finished
    /// (their offsets may be stored): all, or none when the lane was
    /// cancelled meanwhile.
    ///
    /// The round trips are the batch's, not each event's: the markers go
    /// in one statement first (a marker not written is a duplicate), a
    /// plugin's role is set when it changes (consecutive calls of one
    /// plugin keep it), and the messages go to the outbox in one statement
    /// at the end. A no-op plugin's batch costs about six round trips
    /// whatever its size.
    ///
    /// The batch is all or nothing. Anything but a plain success — a
    /// retry, a rejection, a trap, a statement that failed in the database,
    /// an outage, a failed commit — rolls the whole batch back and replays
    /// its events one by one on the one-event path, which owns savepoints,
    /// backoff, retry budgets and dead letters. No effect of the abandoned
    /// batch survives (P1 holds per event), and the plugins' statements in
    /// a batch need no savepoints of their own.
    pub async fn process_batch(&mut self, events: &[Event]) -> usize {
        if events.len() == 1 {
            return usize::from(self.process(&events[0]).await == EventEnd::Completed);
        }
        let state = self.ctl.shared.state.load_full();
        let shared = self.ctl.shared.clone();
        // What runs: each event's plugins, in order.
        let mut plan: Vec<(&Event, crate::routes::Selected, &PluginSlot)> = Vec::new();
        for event in events {
            for sel in state.routes.select(event) {
                let Some(slot) = state.plugins.get(&sel.plugin) else {
                    return self.process_each(events, 0).await;
                };
                // A circuit that is not closed parks or tries one event:
                // that is the one-event path's business, and asking the
                // breaker here would spend its trial.
                if !circuit_closed(&shared, &sel.plugin, slot) {
                    return self.process_each(events, 0).await;
                }
                plan.push((event, sel, slot));
            }
        }
        let mut tx = match shared.db.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                batch_fallback("cannot begin the batch's transaction", &e.to_string());
                return self.process_each(events, 0).await;
            }
        };
        // Every new marker in one statement (replays take theirs one by
        // one below). A marker not written is a duplicate.
        let markers: Vec<outbox::Marker<'_>> = plan
            .iter()
            .filter(|(_, sel, _)| !sel.replay)
            .map(|(event, sel, _)| {
                outbox::Marker::of(&shared.group, &sel.plugin, &sel.dedupe_key, event)
            })
            .collect();
        let mut written = match outbox::mark_many(&mut tx, &markers).await {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.rollback().await;
                batch_fallback(
                    "cannot write the batch's markers",
                    &crate::capabilities::db::describe_error(&e),
                );
                return self.process_each(events, 0).await;
            }
        };
        let mut messages: Vec<(String, Vec<crate::capabilities::publish::OutMessage>)> = Vec::new();
        // (plugin, outcome, record timestamp), counted once committed.
        let mut counts: Vec<(String, &'static str, Option<i64>)> = Vec::new();
        for (event, sel, slot) in &plan {
            if self.ctl.cancelled() {
                // Revoked or stopping: the markers of events not handled
                // yet are in this transaction, so none of it commits; the
                // partition's next owner handles the batch.
                let _ = tx.rollback().await;
                return 0;
            }
            let span = event_span(&sel.plugin, event);
            let fresh = if sel.replay {
                let marker = outbox::Marker::of(&shared.group, &sel.plugin, &sel.dedupe_key, event);
                match outbox::claim_replay(&mut tx, marker).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        let _ = tx.rollback().await;
                        batch_fallback(
                            "cannot claim a replay's marker",
                            &crate::capabilities::db::describe_error(&e),
                        );
                        return self.process_each(events, 0).await;
                    }
                }
            } else {
                // The first of the batch's events with this key runs.
                written.remove(&(sel.plugin.clone(), sel.dedupe_key.clone()))
            };
            if !fresh {
                counts.push((sel.plugin.clone(), "duplicate", None));
                tracing::info!(parent: &span, dedupe_key = %sel.dedupe_key, "{}", duplicate_line(sel.replay));
                continue;
            }
            // The circuit may have opened meanwhile (another lane): parking
            // and trials happen on the one-event path. Checked without
            // asking for admission, which would spend a half-open trial.
            if !circuit_closed(&shared, &sel.plugin, slot) {
                let _ = tx.rollback().await;
                return self.process_each(events, 0).await;
            }
            let ctx = Arc::new(EventContext::new(&shared.group, &sel.plugin, event));
            let options = CallOptions {
                record: false,
                isolation: slot.isolation,
                batch: true,
            };
            let worker = worker_for(&mut self.workers, &sel.plugin, slot);
            let (inv, back) = worker
                .handle(ctx, event, tx, options)
                .instrument(span.clone())
                .await;
            let success = inv.outcome.commits() && !inv.db_failed && !inv.db_unavailable;
            if success {
                // Anything else is replayed one by one, and counted
                // there.
                shared.record_call(&sel.plugin, slot, &inv, true);
            }
            let Some(back) = back else {
                tracing::error!(parent: &span, "the host lost the batch's transaction (a bug); handling its events one by one");
                return self.process_each(events, 0).await;
            };
            tx = back;
            if !success {
                tracing::debug!(parent: &span, outcome = inv.outcome.kind(), "batch rolled back; replaying its events one by one");
                let _ = tx.rollback().await;
                return self.process_each(events, 0).await;
            }
            match messages.iter_mut().find(|(p, _)| *p == sel.plugin) {
                Some((_, queued)) => queued.extend(inv.messages),
                None => messages.push((sel.plugin.clone(), inv.messages)),
            }
            match &inv.outcome {
                Outcome::Skipped(reason) => {
                    counts.push((sel.plugin.clone(), "skipped", event.timestamp_ms));
                    tracing::info!(parent: &span, %reason, "skipped");
                }
                _ => counts.push((sel.plugin.clone(), "done", event.timestamp_ms)),
            }
        }
        // The batch's messages, each plugin's in order, then the commit.
        let mut any_messages = false;
        for (plugin, queued) in &messages {
            any_messages |= !queued.is_empty();
            if let Err(e) = outbox::enqueue(&mut tx, plugin, queued).await {
                let _ = tx.rollback().await;
                batch_fallback(
                    "cannot queue the batch's messages",
                    &crate::capabilities::db::describe_error(&e),
                );
                return self.process_each(events, 0).await;
            }
        }
        match tx.commit().await {
            Ok(()) => {
                self.count_batch(&counts, any_messages);
                events.len()
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch commit failed; handling its events one by one");
                self.process_each(events, 0).await
            }
        }
    }

    /// Account for a committed batch.
    fn count_batch(&self, counts: &[(String, &'static str, Option<i64>)], wake_relay: bool) {
        for (plugin, outcome, ts) in counts {
            self.ctl.shared.metrics.event(plugin, outcome, *ts);
        }
        if wake_relay {
            self.ctl.shared.relay_wake.notify_one();
        }
    }

    /// The one-event path for `events[from..]`; events before `from` are
    /// already finished. Returns how many events from the start are
    /// finished.
    async fn process_each(&mut self, events: &[Event], from: usize) -> usize {
        for (i, event) in events.iter().enumerate().skip(from) {
            if self.process(event).await == EventEnd::Abandoned {
                return i;
            }
        }
        events.len()
    }

    async fn run_plugin(
        &mut self,
        event: &Event,
        name: &str,
        dedupe_key: &str,
        replay: bool,
        slot: &PluginSlot,
    ) -> PluginEnd {
        let ctl = &self.ctl;
        let shared = ctl.shared.clone();
        let ctx = Arc::new(EventContext::new(&shared.group, name, event));
        let options = CallOptions {
            record: false,
            isolation: slot.isolation,
            batch: false,
        };
        let mut attempts: u32 = 0;
        let mut outage: u32 = 0;
        loop {
            if ctl.cancelled() {
                return PluginEnd::Abandoned;
            }
            // 1. The transaction and the marker.
            let mut tx = match shared.db.begin().await {
                Ok(tx) => tx,
                Err(e) => {
                    let why = e.to_string();
                    if ctl
                        .outage_pause(&mut outage, "database unavailable", why)
                        .await
                    {
                        return PluginEnd::Abandoned;
                    }
                    continue;
                }
            };
            let marker = outbox::Marker::of(&shared.group, name, dedupe_key, event);
            match outbox::mark_or_claim(&mut tx, marker, replay).await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx.rollback().await;
                    shared.metrics.event(name, "duplicate", None);
                    tracing::info!(dedupe_key, "{}", duplicate_line(replay));
                    return PluginEnd::Duplicate;
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    let why = crate::capabilities::db::describe_error(&e);
                    if ctl
                        .outage_pause(&mut outage, "cannot write the processed marker", why)
                        .await
                    {
                        return PluginEnd::Abandoned;
                    }
                    continue;
                }
            }

            // 2. The plugin, inside the transaction, unless its circuit is
            // open.
            if let Admission::Park(why) =
                shared.breakers.admit(name, &slot.plugin.hash, slot.breaker)
            {
                let _ = tx.rollback().await;
                return ctl
                    .dead_letter(event, name, dedupe_key, &why, attempts, "parked")
                    .await;
            }
            let worker = worker_for(&mut self.workers, name, slot);
            let (inv, tx) = worker.handle(ctx.clone(), event, tx, options).await;
            shared.record_call(name, slot, &inv, attempts == 0);
            let Some(mut tx) = tx else {
                tracing::error!(
                    "the host lost the event's transaction (a bug); retrying the event"
                );
                continue;
            };

            // 3. Commit or decide.
            let kind = inv.outcome.kind();
            if inv.outcome.commits() {
                let enqueued = outbox::enqueue(&mut tx, name, &inv.messages).await;
                let committed = match enqueued {
                    Ok(()) => tx.commit().await.map_err(|e| e.to_string()),
                    Err(e @ crate::bindings::switchyard::plugin::db::Error::Unavailable(_)) => {
                        let _ = tx.rollback().await;
                        Err(crate::capabilities::db::describe_error(&e))
                    }
                    Err(e) => {
                        // Not an outage: the messages cannot be queued as
                        // they are. Spend attempts, then dead-letter, rather
                        // than hold the partition forever.
                        let _ = tx.rollback().await;
                        attempts += 1;
                        let reason = format!(
                            "the host could not queue the plugin's {} message(s): {}",
                            inv.messages.len(),
                            crate::capabilities::db::describe_error(&e)
                        );
                        if attempts >= shared.retry.max_attempts {
                            let why = format!("failed after {attempts} attempts: {reason}");
                            return ctl
                                .dead_letter(event, name, dedupe_key, &why, attempts, "failed")
                                .await;
                        }
                        shared.metrics.retry(name);
                        let wait = ctl.backoff(attempts);
                        tracing::warn!(%reason, attempt = attempts, "trying again in {wait:?}");
                        if ctl.pause(wait).await {
                            return PluginEnd::Abandoned;
                        }
                        continue;
                    }
                };
                match committed {
                    Ok(()) => {
                        if !inv.messages.is_empty() {
                            shared.relay_wake.notify_one();
                        }
                        match &inv.outcome {
                            Outcome::Skipped(reason) => {
                                shared.metrics.event(name, "skipped", event.timestamp_ms);
                                tracing::info!(%reason, "skipped");
                            }
                            _ => {
                                shared.metrics.event(name, "done", event.timestamp_ms);
                                tracing::debug!(
                                    messages = inv.messages.len(),
                                    statements = inv.statement_count,
                                    elapsed_us = inv.elapsed.as_micros() as u64,
                                    "done"
                                );
                            }
                        }
                        return PluginEnd::Committed(kind);
                    }
                    Err(e) => {
                        if ctl
                            .outage_pause(&mut outage, "commit failed; the event runs again", e)
                            .await
                        {
                            return PluginEnd::Abandoned;
                        }
                        continue;
                    }
                }
            }
            let _ = tx.rollback().await;
            let reason = inv.outcome.reason().unwrap_or_default();
            match &inv.outcome {
                _ if inv.db_unavailable => {
                    if ctl
                        .outage_pause(
                            &mut outage,
                            "the database was unavailable to the plugin",
                            reason,
                        )
                        .await
                    {
                        return PluginEnd::Abandoned;
                    }
                }
                Outcome::Retry(_) | Outcome::Failed(_) => {
                    attempts += 1;
                    if attempts >= shared.retry.max_attempts {
                        let why = format!("{kind} after {attempts} attempts: {reason}");
                        return ctl
                            .dead_letter(event, name, dedupe_key, &why, attempts, kind)
                            .await;
                    }
                    shared.metrics.retry(name);
                    let wait = ctl.backoff(attempts);
                    tracing::warn!(%reason, attempt = attempts, "{kind}; trying again in {wait:?}");
                    if ctl.pause(wait).await {
                        return PluginEnd::Abandoned;
                    }
                }
                Outcome::Rejected(_) => {
                    attempts += 1;
                    return ctl
                        .dead_letter(event, name, dedupe_key, &reason, attempts, kind)
                        .await;
                }
                Outcome::Done | Outcome::Skipped(_) => return PluginEnd::Committed(kind),
            }
        }
    }
}

impl LaneCtl {
    /// Produce the dead letter, wait for the broker's acknowledgement, then
    /// write the marker so that a redelivery does not dead-letter it again.
    async fn dead_letter(
        &self,
        event: &Event,
        plugin: &str,
        dedupe_key: &str,
        reason: &str,
        attempts: u32,
        kind: &str,
    ) -> PluginEnd {
        let shared = &self.shared;
        // Only the host writes `switchyard.*` headers on a dead letter: a
        // producer's own would be read as where it came from by
        // `switchyard dlq replay`.
        let mut headers: Vec<_> = event
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("switchyard."))
            .cloned()
            .collect();
        let now = chrono::Utc::now().to_rfc3339();
        for (name, value) in [
            ("switchyard.error", reason.to_string()),
            ("switchyard.outcome", kind.to_string()),
            ("switchyard.plugin", plugin.to_string()),
            ("switchyard.origin-topic", event.topic.clone()),
            ("switchyard.origin-partition", event.partition.to_string()),
            ("switchyard.origin-offset", event.offset.to_string()),
            ("switchyard.attempts", attempts.to_string()),
            ("switchyard.consumer-group", shared.group.clone()),
            ("switchyard.dedupe-key", dedupe_key.to_string()),
            ("switchyard.dead-lettered-at", now),
        ] {
            headers.push((name.to_string(), Some(value.into_bytes())));
        }
        let mut outage = 0;
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&shared.dead_letter_topic)
                .payload(&event.payload)
                .headers(to_headers(&headers));
            if let Some(k) = &event.key {
                record = record.key(k);
            }
            match shared.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((e, _)) => {
                    let what = format!(
                        "cannot write the dead letter to {}",
                        shared.dead_letter_topic
                    );
                    if self.outage_pause(&mut outage, &what, e.to_string()).await {
                        return PluginEnd::Abandoned;
                    }
                }
            }
        }
        shared.metrics.dead_letter(plugin, kind, reason);
        let what = if kind == "parked" {
            "parked"
        } else {
            "dead_lettered"
        };
        shared.metrics.event(plugin, what, None);
        tracing::error!(%reason, attempts, dead_letter_topic = %shared.dead_letter_topic, "event dead-lettered");
        let mut outage = 0;
        loop {
            let marked = async {
                let mut tx = shared.db.begin().await.map_err(|e| e.to_string())?;
                let marker = outbox::Marker::of(&shared.group, plugin, dedupe_key, event);
                outbox::mark_processed(&mut tx, marker, "dead-lettered")
                    .await
                    .map_err(|e| crate::capabilities::db::describe_error(&e))?;
                tx.commit().await.map_err(|e| e.to_string())
            }
            .await;
            match marked {
                Ok(()) => return PluginEnd::DeadLettered,
                Err(e) => {
                    if self
                        .outage_pause(&mut outage, "cannot record the dead letter", e)
                        .await
                    {
                        // The dead letter is out; a redelivery may send it again.
                        return PluginEnd::Abandoned;
                    }
                }
            }
        }
    }
}
