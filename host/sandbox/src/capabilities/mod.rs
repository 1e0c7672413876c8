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

use std::sync::Arc;
use std::time::Instant;
use switchyard_core::event::EventContext;
use switchyard_core::partitions::Partitions;
use switchyard_wit::switchyard::plugin::types;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use switchyard_core::env::PluginEnv;

/// The data of one wasmtime `Store`: WASI, limits, and the capabilities'
/// state for the call in progress.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory cap, enforced by wasmtime through [`MemoryCap`].
    pub(crate) limits: MemoryCap,
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
    pub(crate) topics: Option<Arc<dyn Partitions>>,
}

impl HostState {
    /// Fresh state for a new store running `env`'s plugin; `topics`
    /// checks the partitions `publish` names (`None`: not checked).
    pub fn new(env: Arc<PluginEnv>, topics: Option<Arc<dyn Partitions>>) -> Self {
        let log = log::LogState::new(env.name.clone(), env.limits.max_log_lines);
        let wasi = WasiCtx::builder()
            .stdout(log.stream(log::Stream::Stdout))
            .stderr(log.stream(log::Stream::Stderr))
            .build();
        let limits = MemoryCap::new(env.limits.memory_bytes);
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
        self.limits.hit = false;
        self.db.begin(record, savepoints);
        self.publish.begin(event.clone());
        self.log.set_capture(record);
        self.log.begin(event);
    }
}

/// A store's memory cap. Growth past it (or past the memory's own
/// maximum) traps, and the store remembers it, so that the failure is named
/// from what happened rather than from wasmtime's error text. Tables grow
/// up to their maximum and trap past it.
#[derive(Debug)]
pub struct MemoryCap {
    limit: usize,
    /// Growth was refused during the current call.
    pub hit: bool,
}

/// The error a refused memory growth traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory growth to {desired} bytes refused: the cap is {limit} bytes")]
pub struct MemoryRefused {
    desired: usize,
    limit: usize,
}

/// The error a refused table growth traps with.
#[derive(Debug, thiserror::Error)]
#[error("table growth to {desired} elements refused: its maximum is {maximum}")]
pub struct TableRefused {
    desired: usize,
    maximum: usize,
}

impl MemoryCap {
    /// A cap of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit, hit: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = maximum.map_or(self.limit, |m| m.min(self.limit));
        if desired > limit {
            self.hit = true;
            return Err(MemoryRefused { desired, limit }.into());
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not allocate: a trap, not the plugin's cap.
        Err(error.context("the host could not allocate the plugin's memory"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match maximum {
            Some(maximum) if desired > maximum => Err(TableRefused { desired, maximum }.into()),
            _ => Ok(true),
        }
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("the host could not allocate the plugin's table"))
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
    switchyard_wit::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)?;
    Ok(())
}
