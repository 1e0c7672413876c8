//! What happens to one event in one ordered lane (one partition): for each
//! plugin its routes select, one [`Work`] holding the processed-marker,
//! the plugin's SQL and its outbox rows; then what [`decide`] says —
//! commit, retry with backoff, dead-letter, or wait out an outage.
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
//! `switchyard.*` headers saying why ([`crate::deadletter`]); it is
//! acknowledged by the broker before the marker is written and the offset
//! moves.

mod batch;
pub mod partition;

use crate::breaker::{Admission, State as CircuitState, Transition};
use crate::deadletter::{self, Cause};
use crate::decision::{Attempt, Next, Tally, decide};
use crate::event::{Event, EventContext, TraceParent};
use crate::outcome::Outcome;
use crate::state::{PluginOf, PluginSlot, Ports, Shared};
use crate::work::{
    CallOptions, CommitError, DeadLetterSink, Ledger, Marker, Report, Runner, Versioned, Work,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument;

/// How an event's work in one plugin ended, as `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Committed, outcome `done`.
    Done,
    /// Committed, outcome `skipped`.
    Skipped,
    /// Its marker existed: handled before.
    Duplicate,
    /// Dead-lettered after its outcome.
    DeadLettered,
    /// Dead-lettered because the plugin's circuit was open.
    Parked,
}

impl End {
    /// The `outcome` label of `switchyard_events_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Done => "done",
            End::Skipped => "skipped",
            End::Duplicate => "duplicate",
            End::DeadLettered => "dead_lettered",
            End::Parked => "parked",
        }
    }

    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Skipped(_) => End::Skipped,
            _ => End::Done,
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PluginEnd {
    Finished,
    Abandoned,
}

/// One ordered lane: a worker per plugin, events one at a time.
pub struct Lane<P: Ports> {
    ctl: LaneCtl<P>,
    workers: HashMap<String, P::Runner>,
}

/// The part of a lane that is shared-borrowed across awaits (it must be
/// `Sync`; the workers, which own wasmtime stores, are not).
struct LaneCtl<P: Ports> {
    shared: Arc<Shared<P>>,
    cancel: Arc<AtomicBool>,
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
            .and_then(TraceParent::parse)
            .map(|t| t.trace_id)
            .unwrap_or_default(),
    )
}

/// The target of the one line logged per committed event (done or
/// skipped): `switchyard dev` shows it at INFO; `switchyard run` leaves it
/// off unless `SWITCHYARD_LOG` names it (`info,switchyard::handled=info`),
/// so that a busy router's log holds what needs a person.
pub const HANDLED_TARGET: &str = "switchyard::handled";

/// Log that an event committed with `outcome`, inside its span (which
/// names the plugin, topic, partition, offset and ids).
fn log_handled(
    outcome: &Outcome,
    elapsed: std::time::Duration,
    statements: usize,
    messages: usize,
) {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match outcome {
        Outcome::Skipped(reason) => tracing::info!(
            target: HANDLED_TARGET,
            outcome = "skipped",
            elapsed_ms = ms,
            %reason,
            "skipped in {ms:.1} ms: {reason}"
        ),
        other => tracing::info!(
            target: HANDLED_TARGET,
            outcome = %other.kind(),
            elapsed_ms = ms,
            "{} in {ms:.1} ms ({}, {})",
            other.kind(),
            plural(statements, "statement", "statements"),
            plural(messages, "message", "messages"),
        ),
    }
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
fn worker_for<'a, R: Runner<T>, T>(
    workers: &'a mut HashMap<String, R>,
    name: &str,
    slot: &PluginSlot<R::Plugin>,
) -> &'a mut R {
    let worker = workers
        .entry(name.to_string())
        .or_insert_with(|| R::start(slot.plugin.clone()));
    if !Arc::ptr_eq(worker.plugin(), &slot.plugin) {
        worker.swap(slot.plugin.clone());
    }
    worker
}

impl<P: Ports> Shared<P> {
    /// Account for a plugin call: count refused publishes, feed the
    /// result to the plugin's circuit breaker and say so when the circuit
    /// opens or closes.
    fn record_call(
        &self,
        name: &str,
        slot: &PluginSlot<PluginOf<P>>,
        report: &impl Report,
        first_attempt: bool,
    ) {
        let version = slot.plugin.hash();
        self.metrics.call(name, report.elapsed());
        if report.refused_publishes() > 0 {
            self.metrics
                .publishes_refused(name, report.refused_publishes() as u64);
        }
        let transition = if report.db_unavailable() {
            self.breakers.inconclusive(name, version);
            Transition::None
        } else if let Outcome::Failed(failure) = report.outcome() {
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
                    version = %slot.plugin.version(),
                    hash = %version,
                    last_failure = %failure,
                    cooldown_ms = slot.breaker.cooldown_ms,
                    dead_letter_topic = %self.dead_letters.topic(),
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

    /// Whether `plugin`'s circuit is closed, asked without admission
    /// (which would spend a half-open trial).
    fn circuit_closed(&self, plugin: &str, slot: &PluginSlot<PluginOf<P>>) -> bool {
        let (circuit, _) = self.breakers.state(plugin, slot.plugin.hash());
        matches!(circuit, CircuitState::Closed { .. })
    }

    /// Count a finished event.
    fn count(&self, plugin: &str, end: End, timestamp_ms: Option<i64>) {
        self.metrics.event(plugin, end.as_str(), timestamp_ms);
    }
}

impl<P: Ports> Lane<P> {
    /// A lane that stops between steps once `cancel` is set.
    pub fn new(shared: Arc<Shared<P>>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            ctl: LaneCtl { shared, cancel },
            workers: HashMap::new(),
        }
    }

    /// Run `event` through every plugin its routes select.
    pub async fn process(&mut self, event: &Event) -> EventEnd {
        let state = self.ctl.shared.state.load_full();
        let selected = state.routes.select(event);
        if selected.is_empty() {
            if let Some((plugin, key)) = crate::routes::replay_of(event) {
                let why = if crate::routes::is_dedupe_key(key) {
                    "no route of its topic reaches that plugin"
                } else {
                    "its switchyard.replay-key is not a dedupe key the router writes"
                };
                tracing::warn!(topic = %event.topic, partition = event.partition, offset = event.offset, %plugin, key, "replay skipped: {why}; replay the dead letter again with `switchyard dlq replay`");
                return EventEnd::Completed;
            }
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

    /// One event in one plugin, until it is committed, a duplicate, dead
    /// -lettered, or the lane is cancelled: one [`Lane::try_once`] after
    /// another, each followed by what [`decide`] says.
    async fn run_plugin(
        &mut self,
        event: &Event,
        name: &str,
        dedupe_key: &str,
        replay: bool,
        slot: &PluginSlot<PluginOf<P>>,
    ) -> PluginEnd {
        let shared = self.ctl.shared.clone();
        let mut call = Call {
            event,
            name,
            marker: Marker::of(&shared.group, name, dedupe_key, event),
            replay,
            ctx: Arc::new(EventContext::new(&shared.group, name, event)),
            // First without a savepoint per statement (one round trip per
            // statement instead of three); see `Try::WithSavepoints`.
            options: CallOptions {
                record: false,
                isolation: slot.isolation,
                batch: true,
            },
        };
        let mut tally = Tally::default();
        loop {
            if self.ctl.cancelled() {
                return PluginEnd::Abandoned;
            }
            let tried = self.try_once(&call, slot, tally.attempts == 0).await;
            let ctl = &self.ctl;
            let (attempt, outcome) = match &tried {
                Try::Finished => return PluginEnd::Finished,
                Try::Again => continue,
                Try::WithSavepoints => {
                    call.options.batch = false;
                    continue;
                }
                Try::Outage { what, why } => {
                    if ctl.outage(&mut tally, what, why).await {
                        return PluginEnd::Abandoned;
                    }
                    continue;
                }
                Try::Park(why) => {
                    let cause = call.cause(deadletter::PARKED, why, tally.attempts, &shared.group);
                    return ctl.dead_letter(event, &cause, call.marker).await;
                }
                Try::Outcome(outcome) => (Attempt::Outcome(outcome), Some(outcome)),
                Try::Unqueueable { messages, error } => (
                    Attempt::Unqueueable {
                        messages: *messages,
                        error,
                    },
                    None,
                ),
            };
            let (next, after) = decide(attempt, tally, &shared.retry);
            tally = after;
            if let Some(end) = ctl.follow(next, &call, outcome, tally).await {
                return end;
            }
        }
    }

    /// One try of an event in a plugin: begin, claim the marker, run the
    /// plugin (unless its circuit is open), and commit when its outcome
    /// says so.
    async fn try_once(
        &mut self,
        call: &Call<'_>,
        slot: &PluginSlot<PluginOf<P>>,
        first_attempt: bool,
    ) -> Try {
        let shared = self.ctl.shared.clone();
        let name = call.name;
        let mut work = match Work::begin(&shared.db).await {
            Ok(work) => work,
            Err(e) => return Try::outage("database unavailable", &e),
        };
        match work.claim_one(call.marker, call.replay).await {
            Ok(true) => {}
            Ok(false) => {
                work.discard().await;
                shared.count(name, End::Duplicate, None);
                tracing::info!(
                    dedupe_key = call.marker.dedupe_key,
                    "{}",
                    duplicate_line(call.replay)
                );
                return Try::Finished;
            }
            Err(e) => {
                work.discard().await;
                return Try::outage("cannot write the processed marker", &e);
            }
        }
        if let Admission::Park(why) = shared
            .breakers
            .admit(name, slot.plugin.hash(), slot.breaker)
        {
            work.discard().await;
            return Try::Park(why);
        }
        let worker = worker_for(&mut self.workers, name, slot);
        let report = match work
            .run(worker, call.ctx.clone(), call.event, call.options)
            .await
        {
            Ok(report) => report,
            Err(lost) => {
                tracing::error!("{lost}; retrying the event");
                return Try::Again;
            }
        };
        if call.options.batch && report.db_failed() && !report.db_unavailable() {
            // A statement failed with no savepoint to roll back to: the
            // transaction is aborted, and the plugin could not go on after
            // handling the error. Not an attempt: run the call again with
            // a savepoint per statement, as the one-event path promises.
            work.discard().await;
            tracing::debug!(
                "a statement failed in a call without savepoints; running it again with a savepoint per statement"
            );
            return Try::WithSavepoints;
        }
        shared.record_call(name, slot, &report, first_attempt);
        if work.is_lost() {
            tracing::error!("the host lost the event's transaction (a bug); retrying the event");
            return Try::Again;
        }
        let outcome = report.outcome();
        if !outcome.commits() {
            work.discard().await;
            if report.db_unavailable() {
                let why = outcome.reason().unwrap_or_default();
                return Try::Outage {
                    what: "the database was unavailable to the plugin",
                    why,
                };
            }
            return Try::Outcome(outcome.clone());
        }
        match work.commit(&[(name, report.messages())]).await {
            Ok(()) => {
                shared.committed(name, call.event, &report);
                Try::Finished
            }
            // Not an outage: the messages cannot be queued as they are.
            // Spend attempts, then dead-letter, rather than hold the
            // partition forever.
            Err(CommitError::Enqueue { error, .. }) if !error.is_outage() => Try::Unqueueable {
                messages: report.messages().len(),
                error: error.to_string(),
            },
            Err(e) => Try::outage("commit failed; the event runs again", e.ledger_error()),
        }
    }
}

/// One event in one plugin, as every try of it sees it.
struct Call<'a> {
    event: &'a Event,
    name: &'a str,
    marker: Marker<'a>,
    replay: bool,
    ctx: Arc<EventContext>,
    options: CallOptions,
}

impl<'a> Call<'a> {
    /// Why this event is dead-lettered.
    fn cause(&self, kind: &'a str, reason: &'a str, attempts: u32, group: &'a str) -> Cause<'a> {
        Cause {
            plugin: self.name,
            kind,
            reason,
            attempts,
            group,
            dedupe_key: self.marker.dedupe_key,
        }
    }
}

/// What one try came to.
enum Try {
    /// Committed, or a duplicate.
    Finished,
    /// Redo at once (the host lost the transaction).
    Again,
    /// Redo at once with a savepoint per statement: a statement failed in
    /// a call without them, which aborted the transaction.
    WithSavepoints,
    /// Something was unavailable: wait without spending an attempt.
    Outage {
        /// What failed.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The plugin's circuit is open.
    Park(String),
    /// The plugin's outcome (or failure) said not to commit.
    Outcome(Outcome),
    /// The plugin's messages could not be queued, and the database is up.
    Unqueueable {
        /// How many.
        messages: usize,
        /// Why.
        error: String,
    },
}

impl Try {
    fn outage(what: &'static str, why: &impl std::fmt::Display) -> Self {
        Try::Outage {
            what,
            why: why.to_string(),
        }
    }
}

impl<P: Ports> Shared<P> {
    /// Account for a committed event.
    fn committed(&self, name: &str, event: &Event, report: &impl Report) {
        if !report.messages().is_empty() {
            self.relay_wake.notify_one();
        }
        let outcome = report.outcome();
        self.count(name, End::of(outcome), event.timestamp_ms);
        log_handled(
            outcome,
            report.elapsed(),
            report.statement_count(),
            report.messages().len(),
        );
    }
}

impl<P: Ports> LaneCtl<P> {
    /// Do what [`decide`] said after a try that did not finish the event:
    /// back off, or dead-letter. `None`: try again.
    async fn follow(
        &self,
        next: Next,
        call: &Call<'_>,
        outcome: Option<&Outcome>,
        tally: Tally,
    ) -> Option<PluginEnd> {
        match next {
            Next::Done => Some(PluginEnd::Finished),
            Next::Pause { wait } => self.pause(wait).await.then_some(PluginEnd::Abandoned),
            Next::Retry { wait, reason } => {
                self.shared.metrics.retry(call.name);
                let kind = outcome.map_or(String::new(), |o| format!("{}; ", o.kind()));
                tracing::warn!(%reason, attempt = tally.attempts, "{kind}trying again in {wait:?}");
                self.pause(wait).await.then_some(PluginEnd::Abandoned)
            }
            Next::DeadLetter { kind, reason } => {
                let cause = call.cause(kind.as_str(), &reason, tally.attempts, &self.shared.group);
                Some(self.dead_letter(call.event, &cause, call.marker).await)
            }
        }
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

    /// One step of an outage: count it, say what failed and how long the
    /// lane waits, back off. Outages never spend an event's attempts.
    /// Returns `true` if the lane was cancelled meanwhile.
    async fn outage(&self, tally: &mut Tally, what: &str, error: &str) -> bool {
        let (wait, after) = crate::decision::outage(*tally, &self.shared.retry);
        *tally = after;
        self.shared.metrics.outage();
        tracing::warn!(%error, "{what}; retrying in {wait:?} without spending an attempt");
        self.pause(wait).await
    }

    /// Produce the dead letter, wait for the broker's acknowledgement,
    /// then write the marker so that a redelivery does not dead-letter it
    /// again.
    async fn dead_letter(&self, event: &Event, cause: &Cause<'_>, marker: Marker<'_>) -> PluginEnd {
        let shared = &self.shared;
        let headers = deadletter::event_letter_headers(event, cause, chrono::Utc::now());
        let mut tally = Tally::default();
        while let Err(e) = shared.dead_letters.send(event, &headers).await {
            let what = format!(
                "cannot write the dead letter to {}",
                shared.dead_letters.topic()
            );
            if self.outage(&mut tally, &what, &e).await {
                return PluginEnd::Abandoned;
            }
        }
        shared
            .metrics
            .dead_letter(cause.plugin, cause.kind, cause.reason);
        let end = if cause.kind == deadletter::PARKED {
            End::Parked
        } else {
            End::DeadLettered
        };
        shared.count(cause.plugin, end, None);
        tracing::error!(reason = %cause.reason, attempts = cause.attempts, dead_letter_topic = %shared.dead_letters.topic(), "event dead-lettered");
        let mut tally = Tally::default();
        loop {
            match shared.db.mark_dead_lettered(marker).await {
                Ok(()) => return PluginEnd::Finished,
                Err(e) => {
                    if self
                        .outage(&mut tally, "cannot record the dead letter", &e.to_string())
                        .await
                    {
                        // The dead letter is out; a redelivery may send it
                        // again.
                        return PluginEnd::Abandoned;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
