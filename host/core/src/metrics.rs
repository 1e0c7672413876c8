//! What the router counts and measures, exported at `/metrics` in the
//! Prometheus (OpenMetrics) text format by the admin server.
//!
//! Counters and histograms are updated on the event path; gauges that
//! describe state elsewhere (outbox backlog, consumer lag, circuits) are
//! set when `/metrics` is scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// `plugin`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// The plugin's name in the routing config.
    pub plugin: String,
}

/// `plugin`, `outcome`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The plugin's name.
    pub plugin: String,
    /// `done`, `skipped`, `duplicate`, `dead_lettered`, `parked`.
    pub outcome: String,
}

/// `kind`, `result`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `plugin` or `config`.
    pub kind: String,
    /// `applied` or `refused`.
    pub result: String,
}

/// `topic`, `partition`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// `plugin`, `reason`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    /// The plugin that published the message (`""` for outbox rows
    /// written before rows named their plugin).
    pub plugin: String,
    /// Why the broker refused it for good: `message_too_large`,
    /// `unknown_partition`, `unknown_topic`, `topic_authorization_failed`,
    /// `invalid_record`, ... (see `kafka::classify_produce_error`).
    pub reason: String,
}

/// The last outbox message moved to the dead-letter topic, for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineNote {
    /// Its plugin.
    pub plugin: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// When, for the age `/health` compares.
    #[serde(skip)]
    pub instant: Option<std::time::Instant>,
}

/// `plugin`, `version`, `hash`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The plugin's name.
    pub plugin: String,
    /// The version it reports.
    pub version: String,
    /// The first 12 hex digits of the file's SHA-256.
    pub hash: String,
}

/// The last failure of a plugin, for `/plugins` and `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastError {
    /// What happened.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A reload that was refused and not yet followed by one that took:
/// what is still serving is an older build than what is on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusedReload {
    /// `config`, or `plugin NAME`.
    pub what: String,
    /// The file that was refused.
    pub file: String,
    /// Why.
    pub reason: String,
    /// What is still serving instead (the plugin's version and hash, or
    /// "the previous config").
    pub serving: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Every metric of one router.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events: Family<OutcomeLabels, Counter>,
    call_seconds: Family<PluginLabel, Histogram>,
    latency_seconds: Family<PluginLabel, Histogram>,
    retries: Family<PluginLabel, Counter>,
    dead_letters: Family<OutcomeLabels, Counter>,
    outages: Counter,
    reloads: Family<ReloadLabels, Counter>,
    publishes_refused: Family<PluginLabel, Counter>,
    circuits_opened: Family<PluginLabel, Counter>,
    /// 1 while the plugin's circuit is open (set at scrape).
    pub circuit_open: Family<PluginLabel, Gauge>,
    /// Rows waiting in the outbox (set at scrape).
    pub outbox_backlog: Gauge,
    /// Messages behind the end of each assigned partition (set at scrape).
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// 1 for each plugin version in service (set at scrape).
    pub plugin_info: Family<VersionLabels, Gauge>,
    /// Age of the oldest outbox row, in seconds (set at scrape).
    pub outbox_oldest_age_seconds: Gauge,
    outbox_quarantined: Family<QuarantineLabels, Counter>,
    outbox_dead_letter_failures: Counter,
    last_errors: Mutex<HashMap<String, LastError>>,
    refused_reloads: Mutex<std::collections::BTreeMap<String, RefusedReload>>,
    last_quarantine: Mutex<Option<QuarantineNote>>,
    last_dead_letter_failure: Mutex<Option<(std::time::Instant, String)>>,
}

fn call_buckets() -> Histogram {
    // 50 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn latency_buckets() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// `metric`, registered under `name` with `help`.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let events = registered(
            &mut registry,
            "events",
            "Events handled, by plugin and outcome (done, skipped, duplicate, dead_lettered, parked)",
            Family::<OutcomeLabels, Counter>::default(),
        );
        let call_seconds = registered(
            &mut registry,
            "plugin_call_seconds",
            "Time of one call into a plugin, database work included",
            Family::<PluginLabel, Histogram>::new_with_constructor(call_buckets as fn() -> _),
        );
        let latency_seconds = registered(
            &mut registry,
            "event_latency_seconds",
            "From the record's timestamp to the commit of the plugin's effects",
            Family::<PluginLabel, Histogram>::new_with_constructor(latency_buckets as fn() -> _),
        );
        let retries = registered(
            &mut registry,
            "retries",
            "Attempts that will be retried (retry outcomes and failed calls)",
            Family::<PluginLabel, Counter>::default(),
        );
        let dead_letters = registered(
            &mut registry,
            "dead_letters",
            "Events written to the dead-letter topic, by plugin and the outcome that sent them",
            Family::<OutcomeLabels, Counter>::default(),
        );
        let outages = registered(
            &mut registry,
            "outages",
            "Pauses because the database or the broker was unavailable",
            Counter::default(),
        );
        let reloads = registered(
            &mut registry,
            "reloads",
            "Hot reloads of a plugin or the config, applied or refused",
            Family::<ReloadLabels, Counter>::default(),
        );
        let publishes_refused = registered(
            &mut registry,
            "publishes_refused",
            "Publishes refused to a plugin (topic not granted, size or count cap)",
            Family::<PluginLabel, Counter>::default(),
        );
        let circuits_opened = registered(
            &mut registry,
            "circuits_opened",
            "Times a plugin's circuit breaker opened",
            Family::<PluginLabel, Counter>::default(),
        );
        let circuit_open = registered(
            &mut registry,
            "circuit_open",
            "1 while the plugin's circuit is open or half-open",
            Family::<PluginLabel, Gauge>::default(),
        );
        let outbox_backlog = registered(
            &mut registry,
            "outbox_backlog",
            "Messages committed by plugins and not yet acknowledged by the broker",
            Gauge::default(),
        );
        let consumer_lag = registered(
            &mut registry,
            "consumer_lag",
            "Records between the router's position and the end of each assigned partition",
            Family::<PartitionLabels, Gauge>::default(),
        );
        let plugin_info = registered(
            &mut registry,
            "plugin_info",
            "The plugin versions in service (value 1)",
            Family::<VersionLabels, Gauge>::default(),
        );
        let outbox_oldest_age_seconds = registered(
            &mut registry,
            "outbox_oldest_age_seconds",
            "Age of the oldest message waiting in the outbox (0 when it is empty)",
            Gauge::default(),
        );
        let outbox_quarantined = registered(
            &mut registry,
            "outbox_quarantined",
            "Outbox messages the broker refused for good (too large, no such partition, ...), moved to the dead-letter topic so the messages behind them flow, by plugin and reason",
            Family::<QuarantineLabels, Counter>::default(),
        );
        let outbox_dead_letter_failures = registered(
            &mut registry,
            "outbox_dead_letter_failures",
            "Refused outbox messages whose dead letter could not be written: the row stays and is tried again later",
            Counter::default(),
        );
        Self {
            registry,
            events,
            call_seconds,
            latency_seconds,
            retries,
            dead_letters,
            outages,
            reloads,
            publishes_refused,
            circuits_opened,
            circuit_open,
            outbox_backlog,
            consumer_lag,
            plugin_info,
            outbox_oldest_age_seconds,
            outbox_quarantined,
            outbox_dead_letter_failures,
            last_errors: Mutex::new(HashMap::new()),
            refused_reloads: Mutex::new(std::collections::BTreeMap::new()),
            last_quarantine: Mutex::new(None),
            last_dead_letter_failure: Mutex::new(None),
        }
    }
}

fn plugin(name: &str) -> PluginLabel {
    PluginLabel {
        plugin: name.to_string(),
    }
}

fn outcome(name: &str, outcome: &str) -> OutcomeLabels {
    OutcomeLabels {
        plugin: name.to_string(),
        outcome: outcome.to_string(),
    }
}

impl Metrics {
    /// An event's plugin work ended with `outcome`; `timestamp_ms` is the
    /// record's, for the latency of committed work.
    pub fn event(&self, name: &str, what: &str, timestamp_ms: Option<i64>) {
        self.events.get_or_create(&outcome(name, what)).inc();
        if let Some(ts) = timestamp_ms {
            let now = chrono::Utc::now().timestamp_millis();
            let ms = now.saturating_sub(ts).max(0) as f64;
            self.latency_seconds
                .get_or_create(&plugin(name))
                .observe(ms / 1000.0);
        }
    }

    /// Events of `name` that ended with `what` (for logs and tests).
    pub fn events(&self, name: &str, what: &str) -> u64 {
        self.events.get(&outcome(name, what)).map_or(0, |c| c.get())
    }

    /// One call into a plugin took `elapsed`.
    pub fn call(&self, name: &str, elapsed: Duration) {
        self.call_seconds
            .get_or_create(&plugin(name))
            .observe(elapsed.as_secs_f64());
    }

    /// An attempt will be retried.
    pub fn retry(&self, name: &str) {
        self.retries.get_or_create(&plugin(name)).inc();
    }

    /// An event was dead-lettered after `what` (`failed`, `rejected`,
    /// `retry`, `parked`); remembered as the plugin's last error.
    pub fn dead_letter(&self, name: &str, what: &str, reason: &str) {
        self.dead_letters.get_or_create(&outcome(name, what)).inc();
        self.set_last_error(name, reason);
    }

    /// Dead letters of `name` (for logs and tests), every outcome.
    pub fn dead_letters(&self, name: &str) -> u64 {
        ["failed", "rejected", "retry", "parked"]
            .iter()
            .map(|w| {
                self.dead_letters
                    .get(&outcome(name, w))
                    .map_or(0, |c| c.get())
            })
            .sum()
    }

    /// The database or the broker was unavailable.
    pub fn outage(&self) {
        self.outages.inc();
    }

    /// A reload of `kind` (`plugin`, `config`) was applied or refused;
    /// returns how many of that result so far.
    pub fn reload(&self, kind: &str, applied: bool) -> u64 {
        let labels = ReloadLabels {
            kind: kind.to_string(),
            result: if applied { "applied" } else { "refused" }.to_string(),
        };
        self.reloads.get_or_create(&labels).inc() + 1
    }

    /// `n` publishes were refused to `name`.
    pub fn publishes_refused(&self, name: &str, n: u64) {
        self.publishes_refused
            .get_or_create(&plugin(name))
            .inc_by(n);
    }

    /// `name`'s circuit opened.
    pub fn circuit_opened(&self, name: &str, reason: &str) {
        self.circuits_opened.get_or_create(&plugin(name)).inc();
        self.set_last_error(name, reason);
    }

    /// Remember `reason` as `name`'s last error.
    pub fn set_last_error(&self, name: &str, reason: &str) {
        let mut errors = self
            .last_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        errors.insert(
            name.to_string(),
            LastError {
                reason: reason.to_string(),
                at: chrono::Utc::now().to_rfc3339(),
            },
        );
    }

    /// A reload of `refused.what` was refused; it stays listed (in
    /// `/health`) until a reload of the same thing is applied.
    pub fn reload_refused(&self, refused: RefusedReload) {
        self.refused_reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(refused.what.clone(), refused);
    }

    /// A reload of `what` (`config` or `plugin NAME`) was applied: an
    /// earlier refusal no longer stands. A config reload rereads every
    /// plugin file, so it clears the plugins' refusals too.
    pub fn reload_applied(&self, what: &str) {
        let mut refused = self
            .refused_reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if what == "config" {
            refused.clear();
        } else {
            refused.remove(what);
        }
    }

    /// The refusals that still stand, by what was refused.
    pub fn refused_reloads(&self) -> Vec<RefusedReload> {
        self.refused_reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// `name`'s last error, if any.
    pub fn last_error(&self, name: &str) -> Option<LastError> {
        self.last_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// An outbox message of `plugin` was refused for good (`reason`) and
    /// moved to the dead-letter topic; also the plugin's last error.
    pub fn outbox_quarantined(&self, plugin: &str, reason: &str) {
        self.outbox_quarantined
            .get_or_create(&QuarantineLabels {
                plugin: plugin.to_string(),
                reason: reason.to_string(),
            })
            .inc();
        let now = chrono::Utc::now().to_rfc3339();
        self.set_last_error(
            plugin,
            &format!("an outbox message was refused by the broker for good ({reason}) and moved to the dead-letter topic"),
        );
        *self
            .last_quarantine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(QuarantineNote {
            plugin: plugin.to_string(),
            reason: reason.to_string(),
            at: now,
            instant: Some(std::time::Instant::now()),
        });
    }

    /// Outbox messages of `plugin` quarantined for `reason` (for tests).
    pub fn outbox_quarantined_count(&self, plugin: &str, reason: &str) -> u64 {
        self.outbox_quarantined
            .get(&QuarantineLabels {
                plugin: plugin.to_string(),
                reason: reason.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// The last quarantined outbox message, if any.
    pub fn last_quarantine(&self) -> Option<QuarantineNote> {
        self.last_quarantine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A refused outbox message's dead letter failed (`why`).
    pub fn outbox_dead_letter_failed(&self, why: &str) {
        self.outbox_dead_letter_failures.inc();
        *self
            .last_dead_letter_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::Instant::now(), why.to_string()));
    }

    /// The last failed dead letter of a refused outbox message: how long
    /// ago, and why.
    pub fn last_dead_letter_failure(&self) -> Option<(Duration, String)> {
        self.last_dead_letter_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(at, why)| (at.elapsed(), why.clone()))
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; say so if it ever does.
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_exposition() {
        let m = Metrics::default();
        m.event("stats", "done", Some(chrono::Utc::now().timestamp_millis()));
        m.event("stats", "done", None);
        m.call("stats", Duration::from_micros(300));
        m.dead_letter("stats", "rejected", "bad event");
        assert_eq!(m.reload("plugin", true), 1);
        assert_eq!(m.reload("plugin", true), 2);
        let text = m.encode();
        assert!(
            text.contains(r#"switchyard_events_total{plugin="stats",outcome="done"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"switchyard_plugin_call_seconds_count{plugin="stats"} 1"#));
        assert!(text.contains(r#"switchyard_event_latency_seconds_count{plugin="stats"} 1"#));
        assert!(
            text.contains(r#"switchyard_dead_letters_total{plugin="stats",outcome="rejected"} 1"#)
        );
        assert!(text.contains(r#"switchyard_reloads_total{kind="plugin",result="applied"} 2"#));
        assert_eq!(m.events("stats", "done"), 2);
        assert_eq!(m.dead_letters("stats"), 1);
        assert_eq!(
            m.last_error("stats").map(|e| e.reason),
            Some("bad event".into())
        );
        m.outbox_quarantined("stats", "message_too_large");
        let text = m.encode();
        assert!(
            text.contains(r#"switchyard_outbox_quarantined_total{plugin="stats",reason="message_too_large"} 1"#),
            "{text}"
        );
        assert_eq!(m.outbox_quarantined_count("stats", "message_too_large"), 1);
        assert_eq!(
            m.last_quarantine().map(|q| q.reason),
            Some("message_too_large".into())
        );
    }

    #[test]
    fn a_refused_reload_stands_until_one_of_the_same_thing_is_applied() {
        let m = Metrics::default();
        let refused = |what: &str| RefusedReload {
            what: what.into(),
            file: "f.wasm".into(),
            reason: "migration 001 changed".into(),
            serving: "0.1.0 (sha256 ab12)".into(),
            at: "2026-11-30T00:00:00Z".into(),
        };
        m.reload_refused(refused("plugin a"));
        m.reload_refused(refused("plugin b"));
        m.reload_refused(refused("plugin a"));
        assert_eq!(m.refused_reloads().len(), 2);
        m.reload_applied("plugin a");
        let left: Vec<String> = m.refused_reloads().into_iter().map(|r| r.what).collect();
        assert_eq!(left, vec!["plugin b".to_string()]);
        m.reload_refused(refused("config"));
        m.reload_applied("config");
        assert!(m.refused_reloads().is_empty());
    }
}
