//! `switchyard run` and `switchyard check`: load the config and the
//! plugins, prepare the database, then consume until shut down.

use crate::breaker::Breakers;
use crate::consumer::{self, Lanes};
use crate::database::{Database, redact_url};
use crate::kafka;
use crate::outbox;
use crate::pipeline::{RouterState, Shared};
use crate::relay::{self, Relay};
use crate::routes::RouteTable;
use crate::runtime::{Runtime, RuntimeOptions};
use anyhow::Context as _;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub use crate::loading::{
    Ready, ReadyHook, RunOptions, check_identity, load_config, load_plugins, prepare_plugin,
    with_database_role,
};

/// `switchyard check`: the config parses and every plugin loads.
pub async fn check(options: &RunOptions) -> anyhow::Result<String> {
    let loaded = load_config(options)?;
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 16,
        compile_cache: crate::loading::compile_cache(&loaded),
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
        compile_cache: crate::loading::compile_cache(&loaded),
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
    let dead_letters = relay::DeadLetters {
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
        consumer::LaneSettings {
            buffer: config.runtime.lane_buffer,
            batch_size: config.runtime.batch_size,
            partition_concurrency: config.runtime.partition_concurrency,
            max_in_flight: config.runtime.max_in_flight,
        },
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
