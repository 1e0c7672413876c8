//! `switchyard run` and `switchyard check`: load the config and the
//! plugins, prepare the database, then consume until shut down.

use crate::breaker::Breakers;
use crate::config::Loaded;
use crate::consumer::{self, Lanes};
use crate::database::{Database, redact_url};
use crate::kafka;
use crate::outbox::{self, Relay};
use crate::pipeline::{PluginSlot, RouterState, Shared};
use crate::routes::RouteTable;
use crate::runtime::{Runtime, RuntimeOptions};
use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

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

/// `switchyard check`: the config parses and every plugin loads.
pub async fn check(options: &RunOptions) -> anyhow::Result<String> {
    let loaded = load_config(options)?;
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 16,
        ..RuntimeOptions::default()
    })?;
    let plugins = load_plugins(&runtime, &loaded, options.plugin_dir.as_deref()).await?;
    let mut out = format!("{}: OK\n", loaded.path.display());
    let mut names: Vec<_> = plugins.keys().collect();
    names.sort();
    for name in names {
        let p = &plugins[name].plugin;
        out.push_str(&format!(
            "  plugin {name}: {} {} ({}, sha256 {}), publishes to: {}\n",
            p.info.name,
            p.info.version,
            p.source,
            p.hash,
            p.env.grants.patterns().join(", ")
        ));
    }
    out.push_str(&format!("  topics: {}\n", loaded.topics().join(", ")));
    Ok(out)
}

/// Run the router until `shutdown` resolves: stop fetching, finish the
/// events in hand, flush the outbox, commit offsets.
pub async fn run(
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let loaded = load_config(&options)?;
    let config = loaded.config.clone();
    let catalog = Arc::new(
        crate::topics::TopicCatalog::new(&config.kafka.brokers)
            .context("creating the Kafka metadata client")?,
    );
    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        max_instances: config.runtime.max_instances,
        topics: Some(catalog),
        ..RuntimeOptions::default()
    })?);
    let admin_listener = match &config.admin.address {
        Some(address) => Some(crate::admin::bind(address).await?),
        None => None,
    };
    let db = Database::connect(&config.database.url, config.database.max_connections)
        .await
        .context("opening the database")?;
    outbox::create_tables(&db).await.with_context(|| {
        format!(
            "creating switchyard's tables in {}",
            redact_url(&config.database.url)
        )
    })?;
    let plugins = load_plugins(&runtime, &loaded, options.plugin_dir.as_deref()).await?;
    let mut plugins = plugins;
    for slot in plugins.values_mut() {
        slot.plugin = prepare_plugin(&db, &runtime, &slot.plugin).await?;
    }
    let routes = RouteTable::new(&config.routes);
    let topics = routes.topics();

    if config.kafka.create_topics_partitions > 0 {
        let mut wanted = topics.clone();
        wanted.push(config.dead_letter.topic.clone());
        for slot in plugins.values() {
            wanted.extend(
                slot.plugin
                    .env
                    .grants
                    .patterns()
                    .iter()
                    .filter(|p| !p.contains('*'))
                    .cloned(),
            );
        }
        wanted.sort();
        wanted.dedup();
        kafka::create_topics(
            &config.kafka.brokers,
            &wanted,
            config.kafka.create_topics_partitions,
        )
        .await
        .context("creating topics")?;
    }

    let producer: FutureProducer =
        kafka::producer_config(&config.kafka.brokers, &config.kafka.producer)
            .create()
            .context("creating the Kafka producer")?;
    let wake = Arc::new(Notify::new());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let dead_letters = outbox::DeadLetters {
        topic: config.dead_letter.topic.clone(),
        message_max_bytes: kafka::producer_message_max_bytes(&config.kafka.producer)
            .unwrap_or(kafka::DEFAULT_MESSAGE_MAX_BYTES),
    };
    let shared = Arc::new(Shared {
        state: arc_swap::ArcSwap::from_pointee(RouterState { routes, plugins }),
        db: db.clone(),
        dead_letters: switchyard_core::work::ProducerSink::new(
            crate::kafka::KafkaProducer(producer.clone()),
            config.dead_letter.topic.clone(),
        ),
        group: config.kafka.group.clone(),
        retry: config.retry.clone(),
        relay_wake: wake.clone(),
        metrics: metrics.clone(),
        breakers: Breakers::default(),
    });

    let (stop_relay_tx, stop_relay_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::new(
        db.clone(),
        producer.clone(),
        wake.clone(),
        dead_letters.clone(),
        metrics.clone(),
    );
    let relay_task = tokio::spawn(relay.run(async {
        let _ = stop_relay_rx.await;
    }));

    let lanes = Lanes::default();
    let consumer = Arc::new(consumer::create(
        &kafka::consumer_config(
            &config.kafka.brokers,
            &config.kafka.group,
            &config.kafka.consumer,
        ),
        lanes.clone(),
    )?);
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .with_context(|| format!("subscribing to {}", topics.join(", ")))?;
    tracing::info!(
        brokers = %config.kafka.brokers,
        group = %config.kafka.group,
        database = %redact_url(&config.database.url),
        topics = %topics.join(","),
        "switchyard running"
    );

    let (stop_admin_tx, stop_admin_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = match admin_listener {
        Some(listener) => {
            let state = Arc::new(crate::admin::AdminState::new(
                shared.clone(),
                consumer.clone(),
                config.kafka.brokers.clone(),
            ));
            let (bound, task) = crate::admin::serve(listener, state, async {
                let _ = stop_admin_rx.await;
            })
            .await?;
            Some((bound, task))
        }
        None => None,
    };
    if let Some(hook) = &options.ready {
        let mut plugins: Vec<String> = shared.state.load().plugins.keys().cloned().collect();
        plugins.sort();
        (hook.0)(&Ready {
            brokers: config.kafka.brokers.clone(),
            database: redact_url(&config.database.url),
            admin: admin_task.as_ref().map(|(a, _)| *a),
            plugins,
            topics: topics.clone(),
            config: options.config.clone(),
        });
    }

    let (stop_reload_tx, stop_reload_rx) = tokio::sync::oneshot::channel::<()>();
    let reload_task = if options.no_reload {
        None
    } else {
        let reloader = crate::reload::Reloader::new(
            shared.clone(),
            runtime.clone(),
            consumer.clone(),
            options.clone(),
            loaded.clone(),
        );
        Some(tokio::spawn(reloader.run(async {
            let _ = stop_reload_rx.await;
        })))
    };

    consumer::run(
        consumer.clone(),
        lanes,
        shared.clone(),
        config.runtime.lane_buffer,
        config.runtime.batch_size,
        shutdown,
    )
    .await;
    tracing::info!("stopping: in-flight events finished; flushing the outbox");
    let _ = stop_reload_tx.send(());
    if let Some(task) = reload_task {
        let _ = task.await;
    }
    let _ = stop_relay_tx.send(());
    let _ = relay_task.await;
    let left = Relay::new(db.clone(), producer, wake, dead_letters, metrics)
        .drain(Duration::from_secs(10))
        .await;
    if left != 0 {
        tracing::warn!(
            rows = left,
            "outbox not empty at shutdown; the rows are sent at the next start"
        );
    }
    let _ = stop_admin_tx.send(());
    if let Some((_, task)) = admin_task {
        let _ = task.await;
    }
    consumer::commit_stored(&consumer);
    consumer.unsubscribe();
    db.close().await;
    let state = shared.state.load_full();
    let mut names: Vec<&String> = state.plugins.keys().collect();
    names.sort();
    for name in names {
        let m = &shared.metrics;
        tracing::info!(
            plugin = %name,
            done = m.events(name, "done"),
            skipped = m.events(name, "skipped"),
            duplicates = m.events(name, "duplicate"),
            dead_letters = m.dead_letters(name),
            "totals"
        );
    }
    tracing::info!("switchyard stopped");
    Ok(())
}
