//! The batch path: consecutive events of one partition in one [`Work`].

use super::{End, EventEnd, Lane, duplicate_line, event_span, worker_for};
use crate::event::{Event, EventContext};
use crate::message::OutMessage;
use crate::outcome::Outcome;
use crate::routes::Selected;
use crate::state::{PluginOf, PluginSlot, Ports, RouterState, Shared};
use crate::work::{CallOptions, Marker, Report, Work};
use std::collections::HashSet;
use std::sync::Arc;
use tracing::Instrument;

/// A batch that failed for a reason of its own (not a plugin's outcome,
/// which the one-event path reports): say why, since every batch of the
/// partition may hit it and fall back to one transaction per event.
fn batch_fallback(what: &str, error: &str) {
    tracing::warn!(%error, "{what}; handling the batch's events one by one");
}

/// One plugin's call in a batch: the event, its route and its plugin.
type Step<'e, V> = (&'e Event, Selected, &'e PluginSlot<V>);

impl<P: Ports> Lane<P> {
    /// Run a batch of consecutive events of this lane's partition in one
    /// transaction: every event's marker, SQL and outbox rows, for every
    /// plugin, then one commit — PostgreSQL's or SQLite's flush to disk —
    /// for the lot. Returns how many events, from the start, are finished
    /// (their offsets may be stored): all, or none when the lane was
    /// cancelled meanwhile.
    ///
    /// The round trips are the batch's, not each event's: the markers go
    /// in one statement first (a marker not written is a duplicate), and
    /// the messages go to the outbox in one statement per plugin at the
    /// end.
    ///
    /// The batch is all or nothing. Anything but a plain success — a
    /// retry, a rejection, a trap, a statement that failed in the
    /// database, an outage, a failed commit — rolls the whole batch back
    /// and replays its events one by one on the one-event path, which owns
    /// savepoints, backoff, retry budgets and dead letters. No effect of
    /// the abandoned batch survives (P1 holds per event), and the
    /// plugins' statements in a batch need no savepoints of their own.
    pub async fn process_batch(&mut self, events: &[Event]) -> usize {
        match self.try_batch(events).await {
            Some(finished) => finished,
            None => self.process_each(events, 0).await,
        }
    }

    /// [`Lane::process_batch`] without the fallback: `Some(finished)` as
    /// it returns, or `None` when the batch rolled back and its events
    /// must go one by one — which the caller does, here or on other lanes
    /// (a partition in key order runs them side by side, so one event's
    /// retries hold only its own key). One event is the one-event path.
    pub async fn try_batch(&mut self, events: &[Event]) -> Option<usize> {
        if events.len() == 1 {
            return Some(usize::from(
                self.process(&events[0]).await == EventEnd::Completed,
            ));
        }
        let state = self.ctl.shared.state.load_full();
        let shared = self.ctl.shared.clone();
        let plan = plan::<P>(&shared, &state, events)?;
        let mut work = match Work::begin(&shared.db).await {
            Ok(work) => work,
            Err(e) => {
                batch_fallback("cannot begin the batch's transaction", &e.to_string());
                return None;
            }
        };
        // Every new marker in one statement (replays take theirs one by
        // one as they come). A marker not written is a duplicate.
        let markers: Vec<Marker<'_>> = plan
            .iter()
            .filter(|(_, sel, _)| !sel.replay)
            .map(|(event, sel, _)| Marker::of(&shared.group, &sel.plugin, &sel.dedupe_key, event))
            .collect();
        let written = match work.claim(&markers).await {
            Ok(w) => w,
            Err(e) => {
                work.discard().await;
                batch_fallback("cannot write the batch's markers", &e.to_string());
                return None;
            }
        };
        match self.run_steps(&mut work, &plan, written).await {
            Ok(done) => self.commit_batch(work, events, done).await,
            Err(Fallback::Cancelled) => {
                // Revoked or stopping: the markers of events not handled
                // yet are in this transaction, so none of it commits; the
                // partition's next owner handles the batch.
                work.discard().await;
                Some(0)
            }
            Err(Fallback::OneByOne) => {
                work.discard().await;
                None
            }
        }
    }

    /// Every plugin call of the batch, in order, in `work`; what they
    /// published and how each ended, or why the batch falls back.
    async fn run_steps<'p>(
        &mut self,
        work: &mut Work<'_, P::Ledger>,
        plan: &'p [Step<'p, PluginOf<P>>],
        mut written: HashSet<(String, String)>,
    ) -> Result<Done<'p>, Fallback> {
        let shared = self.ctl.shared.clone();
        let mut done = Done::default();
        // The per-event line is off in `run`: then nothing is kept for it.
        let log_each = tracing::enabled!(target: super::HANDLED_TARGET, tracing::Level::INFO);
        for (event, sel, slot) in plan {
            if self.ctl.cancelled() {
                return Err(Fallback::Cancelled);
            }
            let span = event_span(&sel.plugin, event);
            let fresh = if sel.replay {
                let marker = Marker::of(&shared.group, &sel.plugin, &sel.dedupe_key, event);
                work.claim_replay(marker).await.map_err(|e| {
                    batch_fallback("cannot claim a replay's marker", &e.to_string());
                    Fallback::OneByOne
                })?
            } else {
                // The first of the batch's events with this key runs.
                written.remove(&(sel.plugin.clone(), sel.dedupe_key.clone()))
            };
            if !fresh {
                done.counts.push((&sel.plugin, End::Duplicate, None));
                tracing::info!(parent: &span, dedupe_key = %sel.dedupe_key, "{}", duplicate_line(sel.replay));
                continue;
            }
            // The circuit may have opened meanwhile (another lane): parking
            // and trials happen on the one-event path. Checked without
            // asking for admission, which would spend a half-open trial.
            if !shared.circuit_closed(&sel.plugin, slot) {
                return Err(Fallback::OneByOne);
            }
            let ctx = Arc::new(EventContext::new(&shared.group, &sel.plugin, event));
            let options = CallOptions {
                record: false,
                isolation: slot.isolation,
                batch: true,
            };
            let worker = worker_for(&mut self.workers, &sel.plugin, slot);
            let mut report = work
                .run(worker, ctx, event, options)
                .instrument(span.clone())
                .await
                .map_err(|lost| {
                    tracing::error!(parent: &span, "{lost}; handling the batch's events one by one");
                    Fallback::OneByOne
                })?;
            let outcome = report.outcome();
            let success = outcome.commits() && !report.db_failed() && !report.db_unavailable();
            if success {
                // Anything else is replayed one by one, and counted there.
                shared.record_call(&sel.plugin, slot, &report, true);
            }
            if work.is_lost() {
                tracing::error!(parent: &span, "the host lost the batch's transaction (a bug); handling its events one by one");
                return Err(Fallback::OneByOne);
            }
            if !success {
                tracing::debug!(parent: &span, outcome = %outcome.kind(), "batch rolled back; replaying its events one by one");
                return Err(Fallback::OneByOne);
            }
            done.counts
                .push((&sel.plugin, End::of(outcome), event.timestamp_ms));
            let outcome = log_each.then(|| outcome.clone());
            let produced = report.take_messages();
            if let Some(outcome) = outcome {
                done.handled.push(Handled {
                    span,
                    outcome,
                    elapsed: report.elapsed(),
                    statements: report.statement_count(),
                    messages: produced.len(),
                });
            }
            match done.messages.iter_mut().find(|(p, _)| *p == sel.plugin) {
                Some((_, queued)) => queued.extend(produced),
                None => done.messages.push((&sel.plugin, produced)),
            }
        }
        Ok(done)
    }

    /// The batch's messages, each plugin's in order, then the commit.
    async fn commit_batch(
        &mut self,
        work: Work<'_, P::Ledger>,
        events: &[Event],
        done: Done<'_>,
    ) -> Option<usize> {
        let shared = self.ctl.shared.clone();
        let outbox: Vec<(&str, &[OutMessage])> = done
            .messages
            .iter()
            .map(|(p, m)| (*p, m.as_slice()))
            .collect();
        match work.commit(&outbox).await {
            Ok(()) => {
                for (plugin, end, ts) in &done.counts {
                    shared.count(plugin, *end, *ts);
                }
                for h in &done.handled {
                    h.span.in_scope(|| {
                        super::log_handled(&h.outcome, h.elapsed, h.statements, h.messages)
                    });
                }
                if outbox.iter().any(|(_, m)| !m.is_empty()) {
                    shared.relay_wake.notify_one();
                }
                Some(events.len())
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch commit failed; handling its events one by one");
                None
            }
        }
    }
}

/// What runs: each event's plugins, in order; `None` when the batch must
/// go one by one (a plugin not loaded, a circuit not closed: parking and
/// trials are the one-event path's business, and asking the breaker here
/// would spend its trial).
fn plan<'e, P: Ports>(
    shared: &Shared<P>,
    state: &'e RouterState<PluginOf<P>>,
    events: &'e [Event],
) -> Option<Vec<Step<'e, PluginOf<P>>>> {
    let mut plan = Vec::new();
    for event in events {
        for sel in state.routes.select(event) {
            let slot = state.plugins.get(&sel.plugin)?;
            if !shared.circuit_closed(&sel.plugin, slot) {
                return None;
            }
            plan.push((event, sel, slot));
        }
    }
    Some(plan)
}

/// Why a batch stops.
enum Fallback {
    /// The lane was cancelled: nothing commits, nothing is finished.
    Cancelled,
    /// Roll back and handle the events one by one.
    OneByOne,
}

/// What a batch's calls produced.
#[derive(Default)]
struct Done<'p> {
    /// Each plugin's messages, in order.
    messages: Vec<(&'p str, Vec<OutMessage>)>,
    /// (plugin, how it ended, record timestamp), counted once committed.
    counts: Vec<(&'p str, End, Option<i64>)>,
    /// The events that ran, logged once committed.
    handled: Vec<Handled>,
}

/// One event's call in a batch, for its log line.
struct Handled {
    span: tracing::Span,
    outcome: Outcome,
    elapsed: std::time::Duration,
    statements: usize,
    messages: usize,
}
