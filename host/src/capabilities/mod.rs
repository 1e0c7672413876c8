//! The capabilities a plugin imports, one module each: `db`, `publish`,
//! `config` and `log`. Each module holds its per-instance state and
//! implements the generated `Host` trait on [`HostState`], the store data.
//!
//! WASI is linked too because Rust's standard library on `wasm32-wasip2`
//! imports it, but the context grants nothing: no preopened directories,
//! no environment, no arguments, no network, empty stdin. Stdout and
//! stderr are captured and written to the log under the plugin's name.

pub mod config;
pub mod db;
pub mod log;
pub mod publish;

use crate::bindings::switchyard::plugin::types;
use crate::event::EventContext;
use crate::limits::Limits;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// What the host knows about a plugin that its capabilities consult:
/// name, limits, grants and settings. Shared by every instance of one
/// loaded version; a config reload makes a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEnv {
    /// The plugin's name in the routing config.
    pub name: Arc<str>,
    /// Resource limits.
    pub limits: Limits,
    /// Topics the plugin may publish to.
    pub grants: publish::Grants,
    /// The plugin's settings, a JSON object.
    pub settings: Arc<serde_json::Map<String, serde_json::Value>>,
    /// The database role its SQL runs as (PostgreSQL), once granted.
    pub db_role: Option<String>,
    /// The tables its SQL may use: those its migrations create. The
    /// role's grants enforce them on PostgreSQL, the host on SQLite. Empty
    /// until the router has prepared the plugin.
    pub db_tables: Arc<[String]>,
    /// A handler compiled into the host that takes the component's events
    /// (`scripts/bench` only: it measures the sandbox's cost).
    pub native: Option<crate::native::Native>,
}

impl PluginEnv {
    /// An environment with default limits, every topic granted and no
    /// settings; what `switchyard plugin test` uses without a config.
    pub fn permissive(name: &str) -> Self {
        Self {
            name: name.into(),
            limits: Limits::default(),
            grants: publish::Grants::all(),
            settings: Arc::new(serde_json::Map::new()),
            db_role: None,
            db_tables: Arc::from([]),
            native: None,
        }
    }
}

/// The data of one wasmtime `Store`: WASI, limits, and the capabilities'
/// state for the call in progress.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and instance caps enforced by wasmtime.
    pub(crate) limits: StoreLimits,
    /// The plugin this store runs.
    pub(crate) env: Arc<PluginEnv>,
    /// When the current call must end; checked at every epoch tick.
    pub(crate) deadline: Instant,
    /// Set when the epoch callback interrupted the call.
    pub(crate) deadline_hit: bool,
    /// `db` state.
    pub(crate) db: db::DbState,
    /// `publish` state.
    pub(crate) publish: publish::PublishState,
    /// `log` state (also receives the guest's stdout and stderr).
    pub(crate) log: log::LogState,
    /// Partition counts, for `publish` with an explicit partition.
    pub(crate) topics: Option<Arc<crate::topics::TopicCatalog>>,
}

impl HostState {
    /// Fresh state for a new store running `env`'s plugin; `topics`
    /// checks the partitions `publish` names (`None`: not checked).
    pub fn new(env: Arc<PluginEnv>, topics: Option<Arc<crate::topics::TopicCatalog>>) -> Self {
        let log = log::LogState::new(env.name.clone(), env.limits.max_log_lines);
        let wasi = WasiCtx::builder()
            .stdout(log.stream(log::Stream::Stdout))
            .stderr(log.stream(log::Stream::Stderr))
            .build();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(env.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            deadline: Instant::now(),
            deadline_hit: false,
            db: db::DbState::default(),
            publish: publish::PublishState::default(),
            log,
            env,
            topics,
        }
    }

    /// Prepare the capabilities for a call on `event` (`None` for
    /// `describe`).
    pub(crate) fn begin_call(
        &mut self,
        event: Option<Arc<EventContext>>,
        record: bool,
        savepoints: bool,
    ) {
        self.deadline_hit = false;
        self.db.begin(record, savepoints);
        self.publish.begin(event.clone());
        self.log.set_capture(record);
        self.log.begin(event);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

/// Add WASI and the four capabilities to `linker`.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    crate::bindings::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)?;
    Ok(())
}
