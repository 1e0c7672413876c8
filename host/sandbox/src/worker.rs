//! The workers that run events on one plugin version, one at a time,
//! keeping a live instance between events (or a fresh one per event), and
//! what each call produced.

use crate::call::{arm_deadline, failure_of, new_store};
use crate::capabilities::HostState;
use crate::capabilities::db::StatementRecord;
use crate::capabilities::log::LogLine;
use crate::capabilities::publish::OutMessage;
use crate::runtime::LoadedPlugin;
#[cfg(not(feature = "bench-native"))]
use crate::runtime::no_native_handlers;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::event::{Event, EventContext};
use switchyard_core::outcome::{Failure, Outcome, cap_reason};
use switchyard_core::work::{CallOptions, Isolation, Report, Runner};
use switchyard_store::database::Tx;
use switchyard_wit::{Plugin, switchyard::plugin::types};
use wasmtime::Store;

/// The plugin's own outcome, its reason capped (see [`cap_reason`]).
pub fn outcome_of(o: types::Outcome) -> Outcome {
    match o {
        types::Outcome::Done => Outcome::Done,
        types::Outcome::Skipped(r) => Outcome::Skipped(cap_reason(r)),
        types::Outcome::Retry(r) => Outcome::Retry(cap_reason(r)),
        types::Outcome::Rejected(r) => Outcome::Rejected(cap_reason(r)),
    }
}

/// Everything one call of `handle` produced.
#[derive(Debug)]
pub struct Invocation {
    /// The outcome.
    pub outcome: Outcome,
    /// Messages to produce if the transaction commits.
    pub messages: Vec<OutMessage>,
    /// Statements run (only when [`CallOptions::record`] is set).
    pub statements: Vec<StatementRecord>,
    /// Statements run (always counted).
    pub statement_count: usize,
    /// A statement found the database unavailable.
    pub db_unavailable: bool,
    /// A statement failed in the database.
    pub db_failed: bool,
    /// Log lines (only when [`CallOptions::record`] is set).
    pub logs: Vec<LogLine>,
    /// Log lines dropped over the cap.
    pub dropped_logs: usize,
    /// Publishes the host refused (the plugin got an error for each).
    pub refused_publishes: Vec<String>,
    /// Time inside the plugin, instantiation included.
    pub elapsed: Duration,
    /// Whether this call started a new instance.
    pub fresh_instance: bool,
}

impl Invocation {
    /// An invocation that ran no statement and published nothing.
    fn empty(outcome: Outcome, fresh_instance: bool, elapsed: Duration) -> Self {
        Self {
            outcome,
            messages: Vec::new(),
            statements: Vec::new(),
            statement_count: 0,
            db_unavailable: false,
            db_failed: false,
            logs: Vec::new(),
            dropped_logs: 0,
            refused_publishes: Vec::new(),
            elapsed,
            fresh_instance,
        }
    }
}

struct Live {
    store: Store<HostState>,
    plugin: Plugin,
    events: u64,
}

/// Runs events on one plugin version, one at a time, keeping a live
/// instance between events. One worker per plugin per ordered lane.
pub struct PluginWorker {
    plugin: Arc<LoadedPlugin>,
    live: Option<Live>,
    /// Instances started so far (for metrics and tests).
    pub instances_started: u64,
}

impl PluginWorker {
    /// A worker for `plugin`; the first event starts an instance.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            plugin,
            live: None,
            instances_started: 0,
        }
    }

    /// The version this worker runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Switch to another version; the next event starts a new instance.
    pub fn swap(&mut self, plugin: Arc<LoadedPlugin>) {
        self.plugin = plugin;
        self.live = None;
    }

    async fn instantiate(&mut self) -> Result<Live, Failure> {
        let mut store = new_store(
            &self.plugin.engine,
            self.plugin.env.clone(),
            self.plugin.topics.clone(),
        );
        store.data_mut().begin_call(None, false, true);
        arm_deadline(&mut store);
        self.instances_started += 1;
        match self.plugin.pre.instantiate_async(&mut store).await {
            Ok(plugin) => Ok(Live {
                store,
                plugin,
                events: 0,
            }),
            Err(e) => Err(failure_of(&store, &e)),
        }
    }

    /// Handle one event inside `tx`. The transaction comes back with the
    /// invocation; the caller commits it if [`Outcome::commits`] and rolls
    /// it back otherwise. It is always returned; the `Option` only guards
    /// against a host bug, and a missing transaction must be treated as
    /// rolled back (dropping a transaction rolls it back).
    pub async fn handle(
        &mut self,
        ctx: Arc<EventContext>,
        event: &Event,
        tx: Tx,
        options: CallOptions,
    ) -> (Invocation, Option<Tx>) {
        let started = Instant::now();
        let empty = |outcome: Outcome, fresh_instance: bool| {
            Invocation::empty(outcome, fresh_instance, started.elapsed())
        };
        let size = event.size();
        let max_event_bytes = self.plugin.env.limits.max_event_bytes;
        if size > max_event_bytes {
            let reason = format!(
                "event of {size} bytes is over plugin {}'s max_event_bytes of {max_event_bytes}; raise the plugin's limits.max_event_bytes if such events are legitimate",
                self.plugin.env.name
            );
            return (empty(Outcome::Rejected(reason), false), Some(tx));
        }
        if let Some(native) = self.plugin.env.native {
            #[cfg(feature = "bench-native")]
            return self
                .handle_native(native, event, tx, options, started)
                .await;
            // Refused at load (`check_env`); never dropped silently.
            #[cfg(not(feature = "bench-native"))]
            return (
                empty(Outcome::Rejected(no_native_handlers(native)), false),
                Some(tx),
            );
        }
        let fresh_instance = self.live.is_none() || options.isolation == Isolation::PerEvent;
        let mut live = match self.live.take() {
            Some(live) if options.isolation == Isolation::Reuse => live,
            _ => match self.instantiate().await {
                Ok(live) => live,
                Err(failure) => return (empty(Outcome::Failed(failure), true), Some(tx)),
            },
        };

        let mut tx = tx;
        let env = &self.plugin.env;
        let role = env.db_role.clone();
        let access = switchyard_store::database::PluginAccess {
            plugin: &env.name,
            role: role.as_deref(),
            tables: &env.db_tables,
            timeout_ms: env.limits.statement_timeout_ms,
        };
        if let Err(e) = tx.enter_plugin(&access).await {
            // The database is not answering: an outage, not the plugin's
            // failure; put the instance back and let the caller back off.
            self.live = Some(live);
            let mut inv = empty(
                Outcome::Retry(format!(
                    "cannot enter the plugin's database role and timeout: {}",
                    e
                )),
                fresh_instance,
            );
            inv.db_unavailable = true;
            inv.db_failed = true;
            return (inv, Some(tx));
        }
        let data = live.store.data_mut();
        data.begin_call(Some(ctx), options.record, !options.batch);
        data.db.tx = Some(tx);
        arm_deadline(&mut live.store);
        let deadline = Duration::from_millis(self.plugin.env.limits.deadline_ms);
        // Epochs only interrupt wasm code, and time in the database does
        // not count against the deadline; this outer timeout is the last
        // resort against a call stuck in the host, dropping the call.
        let outer = deadline * 2 + Duration::from_secs(60);
        let wit_event = event_to_wit(event);
        let result =
            tokio::time::timeout(outer, live.plugin.call_handle(&mut live.store, &wit_event)).await;

        let outcome = match result {
            Ok(Ok(outcome)) => outcome_of(outcome),
            Ok(Err(e)) => Outcome::Failed(match failure_of(&live.store, &e) {
                Failure::Trap(trap) => match live.store.data_mut().log.panic_message() {
                    Some(panic) => Failure::Trap(format!("{trap}; the plugin {panic}")),
                    None => Failure::Trap(trap),
                },
                other => other,
            }),
            Err(_elapsed) => Outcome::Failed(Failure::Deadline {
                deadline_ms: self.plugin.env.limits.deadline_ms,
            }),
        };
        let data = live.store.data_mut();
        let mut tx = data.db.tx.take();
        let mut role_left = true;
        if let Some(t) = tx.as_mut()
            && let Err(e) = t.leave_plugin(role.as_deref()).await
        {
            tracing::warn!(error = %e, "cannot reset the database role after the plugin call");
            role_left = false;
        }
        // SQLite rolls the whole transaction back when a write is
        // interrupted: the event's marker and earlier statements are gone,
        // so its work must not commit as if complete.
        let lost = tx.as_ref().is_some_and(Tx::lost);
        let outcome = if lost && outcome.commits() {
            Outcome::Retry(
                "the database rolled the event's transaction back (a write was stopped at the plugin's statement_timeout_ms); the event runs again"
                    .to_string(),
            )
        } else {
            outcome
        };
        let data = live.store.data_mut();
        let (logs, dropped_logs) = data.log.finish();
        let invocation = Invocation {
            messages: std::mem::take(&mut data.publish.messages),
            refused_publishes: std::mem::take(&mut data.publish.refused),
            statements: std::mem::take(&mut data.db.statements),
            statement_count: data.db.count,
            db_unavailable: data.db.unavailable || !role_left,
            db_failed: data.db.failed || !role_left || lost,
            logs,
            dropped_logs,
            elapsed: started.elapsed(),
            fresh_instance,
            outcome,
        };
        live.events += 1;
        let recycle_after = self.plugin.env.limits.recycle_after_events;
        let keep = !matches!(invocation.outcome, Outcome::Failed(_))
            && options.isolation == Isolation::Reuse
            && (recycle_after == 0 || live.events < recycle_after);
        if keep {
            self.live = Some(live);
        }
        (invocation, tx)
    }
}

#[cfg(feature = "bench-native")]
impl PluginWorker {
    /// [`PluginWorker::handle`] for a handler compiled into the host
    /// (`native` in the plugin's config; `scripts/bench` only): the same
    /// database role, statement timeout and transaction, no WebAssembly.
    async fn handle_native(
        &mut self,
        native: crate::native::Native,
        event: &Event,
        mut tx: Tx,
        options: CallOptions,
        started: Instant,
    ) -> (Invocation, Option<Tx>) {
        let env = self.plugin.env.clone();
        let mut inv = Invocation::empty(Outcome::Done, false, Duration::ZERO);
        let access = switchyard_store::database::PluginAccess {
            plugin: &env.name,
            role: env.db_role.as_deref(),
            tables: &env.db_tables,
            timeout_ms: env.limits.statement_timeout_ms,
        };
        let result = match tx.enter_plugin(&access).await {
            Ok(()) => {
                let r = crate::native::handle(native, event, &mut tx, !options.batch).await;
                inv.statement_count = usize::from(native == crate::native::Native::BenchUpsert);
                match tx.leave_plugin(env.db_role.as_deref()).await {
                    Ok(()) => r,
                    Err(e) => Err(e),
                }
            }
            Err(e) => {
                // As on the wasm path: not entering is an outage.
                inv.db_unavailable = true;
                Err(e)
            }
        };
        inv.outcome = match result {
            Ok(outcome) if tx.lost() && outcome.commits() => Outcome::Retry(
                "the database rolled the event's transaction back; the event runs again"
                    .to_string(),
            ),
            Ok(outcome) => outcome,
            Err(e) => {
                inv.db_failed = true;
                inv.db_unavailable |= e.is_outage();
                Outcome::Retry(e.to_string())
            }
        };
        inv.db_failed |= tx.lost();
        inv.elapsed = started.elapsed();
        (inv, Some(tx))
    }
}

/// The WIT record of `event`, passed to `handle`.
fn event_to_wit(event: &Event) -> types::Event {
    types::Event {
        topic: event.topic.clone(),
        partition: event.partition,
        offset: event.offset,
        timestamp_ms: event.timestamp_ms,
        key: event.key.clone(),
        payload: event.payload.clone(),
        headers: event
            .headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

impl Report for Invocation {
    fn outcome(&self) -> &Outcome {
        &self.outcome
    }
    fn messages(&self) -> &[OutMessage] {
        &self.messages
    }
    fn take_messages(&mut self) -> Vec<OutMessage> {
        std::mem::take(&mut self.messages)
    }
    fn db_unavailable(&self) -> bool {
        self.db_unavailable
    }
    fn db_failed(&self) -> bool {
        self.db_failed
    }
    fn refused_publishes(&self) -> usize {
        self.refused_publishes.len()
    }
    fn statement_count(&self) -> usize {
        self.statement_count
    }
    fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl Runner<Tx> for PluginWorker {
    type Plugin = LoadedPlugin;
    type Report = Invocation;

    fn start(plugin: Arc<LoadedPlugin>) -> Self {
        Self::new(plugin)
    }

    fn plugin(&self) -> &Arc<LoadedPlugin> {
        PluginWorker::plugin(self)
    }

    fn swap(&mut self, plugin: Arc<LoadedPlugin>) {
        PluginWorker::swap(self, plugin);
    }

    async fn run(
        &mut self,
        ctx: Arc<EventContext>,
        event: &Event,
        tx: Tx,
        options: CallOptions,
    ) -> (Invocation, Option<Tx>) {
        self.handle(ctx, event, tx, options).await
    }
}
