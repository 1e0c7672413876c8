//! The admin HTTP server: what runs and how it is doing, for operators and
//! for Prometheus.
//!
//! - `GET /health`: the database, Kafka, the outbox backlog, each
//!   plugin's state and any refused reload that still stands (an older
//!   build serving); 200 when all is well or `degraded`, 503 when down.
//! - `GET /metrics`: the Prometheus (OpenMetrics) exposition.
//! - `GET /plugins`: the versions in service, their hashes, limits, grants,
//!   circuit breaker and last error.
//! - `GET /routes`: the route table, by topic.
//!
//! It binds to `[admin] address` (or `--admin`); port 0 picks a free port,
//! which the log line `admin server listening` gives.

use crate::breaker::State as CircuitState;
use crate::consumer::RouterConsumer;
use crate::pipeline::Shared;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rdkafka::consumer::Consumer as _;
use serde_json::{Value as Json, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the handlers read.
pub struct AdminState {
    /// The router's shared state.
    pub shared: Arc<Shared>,
    /// The group consumer (for lag).
    pub consumer: Arc<RouterConsumer>,
    /// The brokers, as configured.
    pub brokers: String,
    /// One scrape at a time: a scrape clears and refills the gauges that
    /// describe state elsewhere, and a concurrent one must not encode
    /// them half-filled.
    pub scrape: tokio::sync::Mutex<()>,
}

impl AdminState {
    /// The state the handlers read.
    pub fn new(shared: Arc<Shared>, consumer: Arc<RouterConsumer>, brokers: String) -> Self {
        Self {
            shared,
            consumer,
            brokers,
            scrape: tokio::sync::Mutex::new(()),
        }
    }
}

/// How long `/health` and `/metrics` wait for the outbox backlog query.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(2);

/// The outbox's backlog, oldest row and parked rows, or why they are
/// unknown.
async fn backlog(s: &AdminState) -> Result<crate::outbox::OutboxState, String> {
    match tokio::time::timeout(BACKLOG_TIMEOUT, crate::outbox::state(&s.shared.db)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {BACKLOG_TIMEOUT:?}")),
    }
}

/// `/health` says `degraded` while the oldest outbox row is older than
/// this: messages are committed and not reaching Kafka.
pub const OUTBOX_AGE_DEGRADED: Duration = Duration::from_secs(30);

/// `/health` says `degraded` for this long after an outbox message was
/// quarantined (refused by the broker for good and dead-lettered), or its
/// dead letter failed.
pub const QUARANTINE_RECENT: Duration = Duration::from_secs(300);

/// Why the outbox makes the router `degraded`, if it does: a pure
/// function of what `/health` gathered.
pub fn outbox_degraded(
    state: &crate::outbox::OutboxState,
    quarantined_ago: Option<Duration>,
    dead_letter_failed_ago: Option<Duration>,
) -> Vec<String> {
    let mut why = Vec::new();
    if state.oldest_age_s > 0
        && Duration::from_secs(state.oldest_age_s.unsigned_abs()) > OUTBOX_AGE_DEGRADED
    {
        why.push(format!(
            "the oldest outbox message has waited {} s (over {} s): messages are not reaching Kafka",
            state.oldest_age_s,
            OUTBOX_AGE_DEGRADED.as_secs()
        ));
    }
    if state.parked > 0 {
        why.push(format!(
            "{} outbox message(s) refused by the broker for good could not be dead-lettered; retried every {} s",
            state.parked,
            crate::relay::DEAD_LETTER_RETRY.as_secs()
        ));
    }
    if quarantined_ago.is_some_and(|d| d < QUARANTINE_RECENT) {
        why.push(format!(
            "outbox messages are being quarantined (refused by the broker for good, moved to the dead-letter topic) in the last {} s",
            QUARANTINE_RECENT.as_secs()
        ));
    }
    if dead_letter_failed_ago.is_some_and(|d| d < QUARANTINE_RECENT) && state.parked == 0 {
        why.push(format!(
            "a quarantined outbox message's dead letter failed in the last {} s",
            QUARANTINE_RECENT.as_secs()
        ));
    }
    why
}

/// Bind the admin address; done before the plugins compile, so that an
/// address in use fails the start at once.
pub async fn bind(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on the admin address {address}: {e}; set another with [admin] address or --admin (port 0 picks a free one)"
        )
    })
}

/// Serve on `listener` until `shutdown`; returns the bound address and the
/// server's task.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route("/routes", get(routes))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    tracing::info!(address = %bound, "admin server listening: /health /metrics /plugins /routes");
    Ok((bound, task))
}

type AdminRef = State<Arc<AdminState>>;

async fn index() -> impl IntoResponse {
    "switchyard admin: /health /metrics /plugins /routes\n"
}

/// Whether the database answers, and how fast.
async fn database_health(s: &AdminState) -> Json {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(2), s.shared.db.ping()).await {
        Ok(Ok(())) => json!({"ok": true, "latency_ms": started.elapsed().as_millis() as u64}),
        Ok(Err(e)) => json!({"ok": false, "error": e.to_string()}),
        Err(_) => json!({"ok": false, "error": "no answer within 2 s"}),
    }
}

/// Whether the brokers answer a metadata request.
async fn kafka_health(s: &AdminState) -> Json {
    let producer = s.shared.dead_letters.producer().0.clone();
    let started = Instant::now();
    let fetched = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|m| m.brokers().len())
    })
    .await;
    match fetched {
        Ok(Ok(brokers)) => json!({"ok": true, "brokers": s.brokers, "brokers_up": brokers,
            "latency_ms": started.elapsed().as_millis() as u64}),
        Ok(Err(e)) => json!({"ok": false, "brokers": s.brokers, "error": e.to_string()}),
        Err(e) => json!({"ok": false, "brokers": s.brokers, "error": e.to_string()}),
    }
}

fn circuit_json(state: &CircuitState) -> (&'static str, Json) {
    match state {
        CircuitState::Closed { failures } => (
            "serving",
            json!({"state": "closed", "consecutive_failures": failures}),
        ),
        CircuitState::Open { remaining } => (
            "parking",
            json!({"state": "open", "cooldown_left_ms": remaining.as_millis() as u64}),
        ),
        CircuitState::HalfOpen => ("trial", json!({"state": "half-open"})),
    }
}

async fn health(State(s): AdminRef) -> Response {
    let (database, kafka, backlog) =
        tokio::join!(database_health(&s), kafka_health(&s), backlog(&s));
    let router = s.shared.state.load_full();
    let mut plugins = serde_json::Map::new();
    let mut all_serving = true;
    for (name, slot) in &router.plugins {
        let (circuit, _) = s.shared.breakers.state(name, &slot.plugin.hash);
        let (state, _) = circuit_json(&circuit);
        all_serving &= state == "serving";
        plugins.insert(
            name.clone(),
            json!({
                "state": state,
                "version": slot.plugin.info.version,
                "hash": slot.plugin.hash,
                "last_error": s.shared.metrics.last_error(name),
            }),
        );
    }
    let m = &s.shared.metrics;
    let last_quarantine = m.last_quarantine();
    let dead_letter_failure = m.last_dead_letter_failure();
    let mut reasons: Vec<String> = plugins
        .iter()
        .filter(|(_, p)| p["state"] != "serving")
        .map(|(name, p)| format!("plugin {name} is {}", p["state"].as_str().unwrap_or("?")))
        .collect();
    let outbox = match backlog {
        Ok(state) => {
            let degraded = outbox_degraded(
                &state,
                last_quarantine
                    .as_ref()
                    .and_then(|q| q.instant)
                    .map(|i| i.elapsed()),
                dead_letter_failure.as_ref().map(|(ago, _)| *ago),
            );
            reasons.extend(degraded.iter().cloned());
            json!({"ok": true, "backlog": state.backlog, "oldest_age_s": state.oldest_age_s,
                "parked": state.parked, "last_quarantine": last_quarantine,
                "last_dead_letter_error": dead_letter_failure.map(|(_, why)| why),
                "degraded": degraded})
        }
        Err(e) => json!({"ok": false, "error": e}),
    };
    // A refused reload leaves an older build (or config) serving than the
    // one on disk: degraded until a reload of it is applied.
    let refused_reloads = m.refused_reloads();
    reasons.extend(refused_reloads.iter().map(|r| {
        format!(
            "{} reload refused at {} ({}): still serving {}",
            r.what, r.at, r.reason, r.serving
        )
    }));
    let ok = database["ok"] == true && kafka["ok"] == true && outbox["ok"] == true;
    let body = json!({
        "status": if !ok { "down" } else if all_serving && reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "database": database,
        "kafka": kafka,
        "outbox": outbox,
        "plugins": plugins,
        "reloads_refused": refused_reloads,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Set the gauges that describe state elsewhere, then encode.
async fn metrics(State(s): AdminRef) -> Response {
    let m = &s.shared.metrics;
    let _one_at_a_time = s.scrape.lock().await;
    match backlog(&s).await {
        Ok(state) => {
            m.outbox_backlog.set(state.backlog);
            m.outbox_oldest_age_seconds.set(state.oldest_age_s);
        }
        Err(e) => {
            tracing::warn!(error = %e, "/metrics: the outbox backlog is unknown; the gauge keeps its last value")
        }
    }
    let router = s.shared.state.load_full();
    m.plugin_info.clear();
    m.circuit_open.clear();
    for (name, slot) in &router.plugins {
        m.plugin_info
            .get_or_create(&crate::metrics::VersionLabels {
                plugin: name.clone(),
                version: slot.plugin.info.version.clone(),
                hash: slot.plugin.hash.clone(),
            })
            .set(1);
        let (circuit, _) = s.shared.breakers.state(name, &slot.plugin.hash);
        let open = !matches!(circuit, CircuitState::Closed { .. });
        m.circuit_open
            .get_or_create(&crate::metrics::PluginLabel {
                plugin: name.clone(),
            })
            .set(i64::from(open));
    }
    m.consumer_lag.clear();
    for lag in s.consumer.context().lag() {
        m.consumer_lag
            .get_or_create(&crate::metrics::PartitionLabels {
                topic: lag.topic,
                partition: lag.partition,
            })
            .set(lag.records);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

async fn plugins(State(s): AdminRef) -> Response {
    let router = s.shared.state.load_full();
    let mut names: Vec<&String> = router.plugins.keys().collect();
    names.sort();
    let m = &s.shared.metrics;
    let list: Vec<Json> = names
        .into_iter()
        .map(|name| {
            let slot = &router.plugins[name];
            let p = &slot.plugin;
            let (circuit, opened) = s.shared.breakers.state(name, &p.hash);
            let (_, circuit) = circuit_json(&circuit);
            json!({
                "name": name,
                "plugin": p.info.name,
                "version": p.info.version,
                "hash": p.hash,
                "file": p.source,
                "bytes": p.size,
                "compile_ms": p.compile_time.as_millis() as u64,
                "compiled": p.compiled.as_str(),
                "isolation": format!("{:?}", slot.isolation).to_lowercase(),
                "limits": p.env.limits,
                "publish": p.env.grants.patterns(),
                "database": {"role": p.env.db_role, "tables": &*p.env.db_tables},
                "migrations": p.info.migrations.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                "breaker": {"failures": slot.breaker.failures, "cooldown_ms": slot.breaker.cooldown_ms,
                    "circuit": circuit, "opened_times": opened},
                "events": {"done": m.events(name, "done"), "skipped": m.events(name, "skipped"),
                    "duplicates": m.events(name, "duplicate"), "dead_letters": m.dead_letters(name)},
                "last_error": m.last_error(name),
            })
        })
        .collect();
    axum::Json(Json::Array(list)).into_response()
}

async fn routes(State(s): AdminRef) -> Response {
    axum::Json(s.shared.state.load_full().routes.describe()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxState;

    #[test]
    fn the_outbox_degrades_health_when_old_or_quarantining() {
        let fine = OutboxState {
            backlog: 3,
            oldest_age_s: 1,
            parked: 0,
        };
        assert!(outbox_degraded(&fine, None, None).is_empty());
        assert!(
            outbox_degraded(&fine, Some(QUARANTINE_RECENT * 2), None).is_empty(),
            "an old quarantine is history"
        );
        let quarantining = outbox_degraded(&fine, Some(Duration::from_secs(5)), None);
        assert_eq!(quarantining.len(), 1);
        assert!(quarantining[0].contains("quarantined"), "{quarantining:?}");
        let old = OutboxState {
            oldest_age_s: 31,
            ..fine.clone()
        };
        let why = outbox_degraded(&old, None, None);
        assert!(why[0].contains("waited 31 s"), "{why:?}");
        let parked = OutboxState { parked: 2, ..fine };
        let why = outbox_degraded(&parked, None, Some(Duration::from_secs(1)));
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("could not be dead-lettered"), "{why:?}");
    }
}
