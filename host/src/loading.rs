//! What a routing config loads, shared by `switchyard run`, hot reload and
//! `plugin test`: the config file with the command line's overrides, and
//! its plugins, each loaded, checked against its key and prepared for the
//! database (migrations, identity).

use crate::config::Loaded;
use crate::database::Database;
use crate::pipeline::PluginSlot;
use crate::runtime::Runtime;
use anyhow::Context as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where the config is and what the command line overrides.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The routing config file.
    pub config: PathBuf,
    /// `--brokers` / `SWITCHYARD_BROKERS`.
    pub brokers: Option<String>,
    /// `--database` / `SWITCHYARD_DATABASE_URL`.
    pub database: Option<String>,
    /// `--plugin-dir` / `SWITCHYARD_PLUGIN_DIR`.
    pub plugin_dir: Option<PathBuf>,
    /// `--no-reload`: do not watch the plugin files and the config.
    pub no_reload: bool,
    /// `--admin`: the admin server's address, overriding `[admin]`.
    pub admin: Option<String>,
    /// Called once the router is up (`switchyard dev` prints its banner).
    pub ready: Option<ReadyHook>,
    /// Consumer settings for keys `[kafka.consumer]` does not set
    /// (`switchyard dev` on its own Tansu: a short fetch wait).
    pub consumer_defaults: Vec<(String, String)>,
    /// Where the reloader reports what became of each reload (`dev`'s
    /// source watcher listens).
    pub reload_reports: Option<tokio::sync::broadcast::Sender<crate::reload::ReloadReport>>,
}

/// What is running, once the router is up.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The database URL, password redacted.
    pub database: String,
    /// Where the admin server listens, if it does.
    pub admin: Option<std::net::SocketAddr>,
    /// Plugin names, sorted.
    pub plugins: Vec<String>,
    /// Topics consumed, sorted.
    pub topics: Vec<String>,
    /// The config file.
    pub config: std::path::PathBuf,
}

/// A callback for [`Ready`].
#[derive(Clone)]
pub struct ReadyHook(pub Arc<dyn Fn(&Ready) + Send + Sync>);

impl std::fmt::Debug for ReadyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyHook")
    }
}

/// Read the config and apply the overrides.
pub fn load_config(options: &RunOptions) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::from_file(&options.config)?;
    if let Some(b) = &options.brokers {
        loaded.config.kafka.brokers = b.clone();
    }
    if let Some(d) = &options.database {
        loaded.config.database.url = d.clone();
    }
    if let Some(a) = &options.admin {
        loaded.config.admin.address = Some(a.clone());
    }
    for (key, value) in &options.consumer_defaults {
        loaded
            .config
            .kafka
            .consumer
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
    Ok(loaded)
}

/// Where compiled plugins are kept when the config does not say:
/// `SWITCHYARD_COMPILE_CACHE` (`off` for none), else
/// `$XDG_CACHE_HOME/switchyard/compiled`, else
/// `~/.cache/switchyard/compiled`; `None` when no home is known.
pub fn default_compile_cache() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty("SWITCHYARD_COMPILE_CACHE") {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    let base = nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("switchyard").join("compiled"))
}

/// The compiled-code cache of a config (`[runtime] compile_cache`,
/// relative to the config file) and its size cap; `None` when off.
pub fn compile_cache(loaded: &Loaded) -> Option<(PathBuf, u64)> {
    let runtime = &loaded.config.runtime;
    let dir = match runtime.compile_cache.as_deref() {
        Some("off") => None,
        Some(dir) => Some(
            loaded
                .path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(dir),
        ),
        None => default_compile_cache(),
    }?;
    Some((dir, runtime.compile_cache_mb.saturating_mul(1 << 20)))
}

/// The cache of `plugin test`, `check` and the tests: the default one, at
/// the default size.
pub fn default_compile_cache_options() -> Option<(PathBuf, u64)> {
    default_compile_cache().map(|dir| (dir, 1024 << 20))
}

/// Compile every plugin of the config. Fails on the first that cannot be
/// loaded, naming it.
pub async fn load_plugins(
    runtime: &Runtime,
    loaded: &Loaded,
    plugin_dir: Option<&std::path::Path>,
) -> anyhow::Result<HashMap<String, PluginSlot>> {
    let mut plugins = HashMap::new();
    let envs = loaded.plugin_envs(plugin_dir);
    let total = envs.len();
    for (i, (name, path, env, isolation, breaker)) in envs.into_iter().enumerate() {
        tracing::info!(plugin = %name, file = %path.display(), "compiling plugin {}/{total}", i + 1);
        let started = Instant::now();
        let plugin = runtime
            .load_file(&path, env)
            .await
            .with_context(|| format!("plugin {name} (in {})", loaded.path.display()))?;
        check_identity(&plugin)
            .with_context(|| format!("plugin {name} (in {})", loaded.path.display()))?;
        tracing::info!(
            plugin = %name,
            version = %plugin.info.version,
            hash = %plugin.hash,
            file = %path.display(),
            compile_ms = plugin.compile_time.as_millis() as u64,
            compiled = plugin.compiled.as_str(),
            load_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        plugins.insert(
            name,
            PluginSlot {
                plugin,
                isolation,
                breaker,
            },
        );
    }
    Ok(plugins)
}

/// Make the database ready for a loaded plugin version: apply its new
/// migrations (as the plugin's own role on PostgreSQL) and return the
/// version with its database identity set, ready to serve.
///
/// The identity is the operator's config key (`env.name`), never the
/// name the plugin gives itself in `describe()`; a plugin that says it is
/// someone else is refused (see [`check_identity`]).
pub async fn prepare_plugin(
    db: &Database,
    runtime: &Runtime,
    plugin: &Arc<crate::runtime::LoadedPlugin>,
) -> anyhow::Result<Arc<crate::runtime::LoadedPlugin>> {
    check_identity(plugin)?;
    let name = &plugin.env.name;
    let applied = db.migrate(name, &plugin.info.migrations).await?;
    if !applied.is_empty() {
        tracing::info!(plugin = %name, migrations = ?applied, "migrations applied");
    }
    with_database_role(db, runtime, plugin).await
}

/// Refuse a plugin whose `describe()` names another plugin than the
/// config key it is loaded under: identities (database role, tables,
/// markers) follow the config key, and a plugin must not be able to
/// claim another's by saying so.
pub fn check_identity(plugin: &crate::runtime::LoadedPlugin) -> anyhow::Result<()> {
    let configured = &*plugin.env.name;
    let described = plugin.info.name.as_str();
    if configured != described {
        anyhow::bail!(
            "{} says it is plugin `{described}` (its describe()), but the config loads it as [plugins.{configured}]: a plugin runs under the identity of its config key, so they must match — rename the config key to [plugins.{described}] or point it at the right file",
            plugin.source
        );
    }
    Ok(())
}

/// The plugin's database role and tables, read from the catalog, and the
/// version with them set; for a plugin whose migrations are applied.
pub async fn with_database_role(
    db: &Database,
    runtime: &Runtime,
    plugin: &Arc<crate::runtime::LoadedPlugin>,
) -> anyhow::Result<Arc<crate::runtime::LoadedPlugin>> {
    let (role, tables) = db
        .plugin_identity(&plugin.env.name, plugin.env.limits.statement_timeout_ms)
        .await?;
    if role == plugin.env.db_role && tables == plugin.env.db_tables {
        return Ok(plugin.clone());
    }
    let mut env = (*plugin.env).clone();
    env.db_role = role;
    env.db_tables = tables;
    Ok(plugin.with_env(env, runtime)?)
}
