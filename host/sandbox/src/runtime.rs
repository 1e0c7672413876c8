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

use crate::call::{arm_deadline, failure_of, new_store};
use crate::capabilities::{HostState, PluginEnv};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard_core::limits::EPOCH_TICK_MS;
use switchyard_core::partitions::Partitions;
use switchyard_store::database::MigrationSql;
use switchyard_wit::PluginPre;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use switchyard_core::identity::short_hash;
pub use switchyard_core::outcome::{Failure, MAX_REASON_BYTES, Outcome, OutcomeKind, cap_reason};
use switchyard_core::work::Versioned;
pub use switchyard_core::work::{CallOptions, Isolation};

/// Why a plugin that names a native handler cannot run in this build.
pub(crate) fn no_native_handlers(native: crate::native::Native) -> String {
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
    /// Keep compiled components in this directory, at most this many
    /// bytes ([`crate::compiled`]); `None` compiles every load.
    pub compile_cache: Option<(std::path::PathBuf, u64)>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 256 << 20,
            pooling: true,
            topics: None,
            compile_cache: None,
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
    /// Time spent compiling, or loading the compiled form from the cache.
    pub compile_time: Duration,
    /// Whether the compiled form came from the cache.
    pub compiled: crate::compiled::Source,
    /// Limits, grants and settings.
    pub env: Arc<PluginEnv>,
    pub(crate) pre: PluginPre<HostState>,
    pub(crate) engine: Engine,
    pub(crate) topics: Option<Arc<dyn Partitions>>,
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
            compiled: self.compiled,
            env: Arc::new(env),
            pre: self.pre.clone(),
            engine: self.engine.clone(),
            topics: self.topics.clone(),
        }))
    }
}

impl LoadedPlugin {
    /// The same version under the name its `describe` gives, when it was
    /// loaded under another (a file name, a port's directory name): with no
    /// routing config, a plugin's own name is its identity.
    pub fn under_described_name(
        self: &Arc<Self>,
        runtime: &Runtime,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        if *self.env.name == *self.info.name {
            return Ok(self.clone());
        }
        let mut env = (*self.env).clone();
        env.name = self.info.name.as_str().into();
        self.with_env(env, runtime)
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
    cache: Option<Arc<crate::compiled::CompiledCache>>,
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
            // Core instances per component instance: a Rust plugin has a
            // few, a TypeScript one (componentize-js) 4, a Python one
            // (componentize-py) 14. The pool holds the per-component
            // maximum for every component instance, so any mix of
            // languages fits `max_instances` (the slots are address space,
            // reserved, not memory in use).
            pool.total_component_instances(n)
                .total_core_instances(n.saturating_mul(16))
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
        let cache = options.compile_cache.as_ref().and_then(|(dir, max_bytes)| {
            match crate::compiled::CompiledCache::open(dir, &engine, *max_bytes) {
                Ok(cache) => Some(Arc::new(cache)),
                Err(e) => {
                    tracing::warn!("{e}; plugins are compiled at every load");
                    None
                }
            }
        });
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
            cache,
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

    /// The compiled-code cache, when it is on.
    pub fn compile_cache(&self) -> Option<&crate::compiled::CompiledCache> {
        self.cache.as_deref()
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
        let cache = self.cache.clone();
        let (component, compiled) = tokio::task::spawn_blocking(move || match cache {
            Some(cache) => cache.get_or_compile(&engine, &bytes),
            None => Component::new(&engine, &bytes)
                .map(|c| (c, crate::compiled::Source::CompiledNotCached)),
        })
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
            compiled,
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
