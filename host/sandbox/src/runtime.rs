//! The plugin runtime: one wasmtime [`Engine`], plugins compiled once and
//! cached pre-instantiated, and [`PluginWorker`]s that run events on them.
//!
//! Sandbox defaults (DESIGN.md): Cranelift, guard pages, the pooling
//! allocator, epoch interruption with a ticker every
//! [`EPOCH_TICK_MS`](switchyard_core::limits::EPOCH_TICK_MS) and a deadline per call,
//! a memory cap per plugin ([`crate::capabilities::MemoryCap`]), and a WASI
//! context that grants nothing.
//!
//! A worker keeps one live instance and reuses it across events (about 10x
//! cheaper than a fresh instance per event, see DESIGN.md); it recycles the
//! instance after a trap, a limit hit, `recycle_after_events` events or a
//! new plugin version, and never reuses a store after a trap.
//! [`Isolation::PerEvent`] gives every event a fresh instance instead.

use crate::capabilities::db::StatementRecord;
use crate::capabilities::log::LogLine;
use crate::capabilities::publish::OutMessage;
use crate::capabilities::{HostState, PluginEnv};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard_core::event::{Event, EventContext};
use switchyard_core::limits::EPOCH_TICK_MS;
use switchyard_core::partitions::Partitions;
use switchyard_store::database::{MigrationSql, Tx};
use switchyard_wit::{Plugin, PluginPre, switchyard::plugin::types};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

pub use switchyard_core::identity::short_hash;
pub use switchyard_core::outcome::{Failure, MAX_REASON_BYTES, Outcome, OutcomeKind, cap_reason};
pub use switchyard_core::work::{CallOptions, Isolation};
use switchyard_core::work::{Report, Runner, Versioned};

/// Why a plugin that names a native handler cannot run in this build.
fn no_native_handlers(native: crate::native::Native) -> String {
    format!(
        "`native = {native:?}` names a benchmark handler, and this build has none (scripts/bench builds with the `bench-native` feature)"
    )
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot create the WebAssembly engine: {reason}{hint}")]
    Engine {
        /// wasmtime's error.
        reason: String,
        /// What to change, when known.
        hint: &'static str,
    },
    /// The capabilities could not be linked (a host bug).
    #[error("cannot link the plugin capabilities: {0}")]
    Link(String),
    /// The epoch ticker thread could not start.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Component instances the pool holds at once (live instances across
    /// all workers, plus those being loaded).
    pub max_instances: u32,
    /// The largest `memory_bytes` any plugin may be given.
    pub max_memory_bytes: usize,
    /// Use the pooling allocator (fast instantiation); off falls back to
    /// on-demand allocation, for machines that refuse the address-space
    /// reservation.
    pub pooling: bool,
    /// Partition counts of the brokers' topics, for checking a `publish`
    /// that names its partition; `None` (no brokers: `check`, `plugin
    /// test`) skips that check.
    pub topics: Option<Arc<dyn Partitions>>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 256 << 20,
            pooling: true,
            topics: None,
        }
    }
}

/// Why a plugin file could not be loaded. The running version, if any,
/// stays in service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{source_name}: cannot read the plugin file: {error}")]
    Read {
        /// File name.
        source_name: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Not a component (a core module, a truncated file, not wasm at all).
    #[error("{source_name}: not a valid WebAssembly component: {reason}")]
    NotAComponent {
        /// File name.
        source_name: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A component, but not of the plugin world.
    #[error("{source_name}: does not implement the switchyard:plugin/plugin world: {reason}")]
    WrongWorld {
        /// File name.
        source_name: String,
        /// The mismatch.
        reason: String,
    },
    /// Instantiation (start functions) or `describe` failed.
    #[error("{source_name}: failed to start: {reason}")]
    Start {
        /// File name.
        source_name: String,
        /// The trap or error.
        reason: String,
    },
}

/// What a plugin version says about itself.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// Name reported by `describe`.
    pub name: String,
    /// Version reported by `describe`.
    pub version: String,
    /// Schema migrations, in order.
    pub migrations: Vec<MigrationSql>,
}

/// A compiled, pre-instantiated plugin version.
pub struct LoadedPlugin {
    /// What `describe` returned.
    pub info: PluginInfo,
    /// Content hash of the file (12 hex digits).
    pub hash: String,
    /// Where it was loaded from.
    pub source: String,
    /// Size of the file in bytes.
    pub size: usize,
    /// Time spent compiling.
    pub compile_time: Duration,
    /// Limits, grants and settings.
    pub env: Arc<PluginEnv>,
    pre: PluginPre<HostState>,
    engine: Engine,
    topics: Option<Arc<dyn Partitions>>,
}

impl LoadedPlugin {
    /// The same compiled version with other limits, grants or settings (a
    /// config reload that changed only those): no recompilation.
    pub fn with_env(
        &self,
        env: PluginEnv,
        runtime: &Runtime,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        runtime.check_env(&env, &self.source)?;
        Ok(Arc::new(LoadedPlugin {
            info: self.info.clone(),
            hash: self.hash.clone(),
            source: self.source.clone(),
            size: self.size,
            compile_time: self.compile_time,
            env: Arc::new(env),
            pre: self.pre.clone(),
            engine: self.engine.clone(),
            topics: self.topics.clone(),
        }))
    }
}

impl Versioned for LoadedPlugin {
    fn hash(&self) -> &str {
        &self.hash
    }

    fn version(&self) -> &str {
        &self.info.version
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.env.name)
            .field("version", &self.info.version)
            .field("hash", &self.hash)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Stops the epoch ticker thread when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The engine, the linker with every capability, and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    options: RuntimeOptions,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Build the engine and start the epoch ticker.
    pub fn new(options: RuntimeOptions) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if options.pooling {
            let n = options.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(n)
                .total_core_instances(n.saturating_mul(8))
                .total_memories(n.saturating_mul(2))
                .total_tables(n.saturating_mul(4))
                .total_stacks(n)
                .max_core_instances_per_component(16)
                .max_memories_per_component(4)
                .max_tables_per_component(8)
                .max_memory_size(options.max_memory_bytes);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| EngineError::Engine {
            reason: format!("{e:#}"),
            hint: if options.pooling {
                " (the pooling allocator reserves address space up front; lower `max_instances` or turn `pooling` off)"
            } else {
                ""
            },
        })?;
        let mut linker = Linker::new(&engine);
        crate::capabilities::add_to_linker(&mut linker)
            .map_err(|e| EngineError::Link(format!("{e:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(EngineError::Ticker)?;
        Ok(Self {
            engine,
            linker,
            options,
            _ticker: EpochTicker { stop },
        })
    }

    /// Refuse limits the engine cannot honour (a memory cap over the
    /// pool's slot size).
    fn check_env(&self, env: &PluginEnv, source_name: &str) -> Result<(), LoadError> {
        if let Some(native) = env.native
            && !cfg!(feature = "bench-native")
        {
            return Err(LoadError::Start {
                source_name: source_name.to_string(),
                reason: no_native_handlers(native),
            });
        }
        if env.limits.memory_bytes > self.options.max_memory_bytes {
            return Err(LoadError::Start {
                source_name: source_name.to_string(),
                reason: format!(
                    "memory_bytes {} is over the runtime's max_memory_bytes {}",
                    env.limits.memory_bytes, self.options.max_memory_bytes
                ),
            });
        }
        Ok(())
    }

    /// The options this runtime was built with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Load a plugin from a file.
    pub async fn load_file(
        &self,
        path: &Path,
        env: PluginEnv,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let source_name = path.display().to_string();
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|error| LoadError::Read {
                source_name: source_name.clone(),
                error,
            })?;
        self.load_bytes(bytes, source_name, env).await
    }

    /// Compile `bytes`, check the plugin world, start one instance and ask
    /// it to `describe` itself. Compilation runs on a blocking thread, off
    /// the event path.
    pub async fn load_bytes(
        &self,
        bytes: Vec<u8>,
        source_name: String,
        env: PluginEnv,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        check_component_header(&bytes).map_err(|reason| LoadError::NotAComponent {
            source_name: source_name.clone(),
            reason,
        })?;
        self.check_env(&env, &source_name)?;
        let hash = short_hash(&bytes);
        let size = bytes.len();
        let engine = self.engine.clone();
        let started = Instant::now();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| LoadError::NotAComponent {
                source_name: source_name.clone(),
                reason: format!("compiler task failed: {e}"),
            })?
            .map_err(|e| LoadError::NotAComponent {
                source_name: source_name.clone(),
                reason: format!("{e:#}"),
            })?;
        let compile_time = started.elapsed();
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            source_name: source_name.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = PluginPre::new(instance_pre).map_err(wrong_world)?;
        let env = Arc::new(env);

        // Instantiate once to run start functions and `describe`, under the
        // plugin's deadline and memory cap.
        let start_err = |reason: String| LoadError::Start {
            source_name: source_name.clone(),
            reason,
        };
        let mut store = new_store(&self.engine, env.clone(), self.options.topics.clone());
        store.data_mut().begin_call(None, false, true);
        arm_deadline(&mut store);
        let plugin = match pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(e) => return Err(start_err(failure_of(&store, &e).to_string())),
        };
        arm_deadline(&mut store);
        let described = match plugin.call_describe(&mut store).await {
            Ok(info) => info,
            Err(e) => return Err(start_err(format!("describe: {}", failure_of(&store, &e)))),
        };
        let info = PluginInfo {
            name: described.name,
            version: described.version,
            migrations: described
                .migrations
                .into_iter()
                .map(|m| MigrationSql {
                    id: m.id,
                    postgres: m.postgres,
                    sqlite: m.sqlite,
                })
                .collect(),
        };
        Ok(Arc::new(LoadedPlugin {
            info,
            hash,
            source: source_name,
            size,
            compile_time,
            env,
            pre,
            engine: self.engine.clone(),
            topics: self.options.topics.clone(),
        }))
    }
}

/// Reject what is obviously not a component before the compiler sees it,
/// with a message that says what to do.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8; 4] = b"\0asm";
    if bytes.len() < 8 {
        return Err(format!(
            "the file is {} bytes long: truncated or still being written",
            bytes.len()
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err("the file does not start with the WebAssembly magic bytes".to_string());
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(
            "this is a core WebAssembly module, not a component: build the plugin with `--target wasm32-wasip2`"
                .to_string(),
        );
    }
    Ok(())
}

fn new_store(
    engine: &Engine,
    env: Arc<PluginEnv>,
    topics: Option<Arc<dyn Partitions>>,
) -> Store<HostState> {
    let mut store = Store::new(engine, HostState::new(env, topics));
    store.limiter(|s| &mut s.limits);
    // Check the deadline at every tick and yield to the executor meanwhile,
    // so a busy plugin does not hold a runtime thread for its whole budget.
    store.epoch_deadline_callback(|mut ctx| {
        let data = ctx.data_mut();
        if Instant::now() >= data.deadline {
            data.deadline_hit = true;
            Ok(wasmtime::UpdateDeadline::Interrupt)
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Start the deadline of one call (instantiation, `describe` or `handle`).
fn arm_deadline(store: &mut Store<HostState>) {
    let budget = Duration::from_millis(store.data().env.limits.deadline_ms);
    let data = store.data_mut();
    data.deadline = Instant::now() + budget;
    data.deadline_hit = false;
    store.set_epoch_deadline(1);
}

fn failure_of(store: &Store<HostState>, e: &wasmtime::Error) -> Failure {
    let data = store.data();
    if data.deadline_hit || e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return Failure::Deadline {
            deadline_ms: data.env.limits.deadline_ms,
        };
    }
    if data.limits.hit
        || e.downcast_ref::<crate::capabilities::MemoryRefused>()
            .is_some()
    {
        return Failure::Memory {
            limit_bytes: data.env.limits.memory_bytes,
        };
    }
    // Name the trap itself (`unreachable`, stack overflow, ...) rather
    // than the generic "error while executing" context around it.
    let trap = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e
            .chain()
            .last()
            .map(|root| root.to_string())
            .unwrap_or_else(|| "unknown trap".to_string()),
    };
    Failure::Trap(trap)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_explains_core_modules_and_truncation() {
        let core = b"\0asm\x01\0\0\0rest";
        assert!(check_component_header(core).is_err_and(|m| m.contains("wasm32-wasip2")));
        assert!(check_component_header(b"\0as").is_err_and(|m| m.contains("truncated")));
        assert!(check_component_header(b"PK\x03\x04zzzz").is_err_and(|m| m.contains("magic")));
        assert!(check_component_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn hashes_are_short_and_stable() {
        assert_eq!(short_hash(b"abc"), "ba7816bf8f01");
    }
}
