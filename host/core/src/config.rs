//! The routing config: brokers, database, plugins and routes, in TOML.
//!
//! ```toml
//! [kafka]
//! brokers = "127.0.0.1:9092"
//! group = "switchyard"
//!
//! [database]
//! url = "sqlite:switchyard.db"
//!
//! [plugins]
//! dir = "../target/wasm32-wasip2/plugin"
//!
//! [plugins.profile-creation]
//! file = "profile_creation.wasm"
//! publish = ["create-user-response", "*.reply"]
//!
//! [[routes]]
//! topics = ["create-user"]
//! plugins = ["profile-creation"]
//! ```
//!
//! Unknown keys and bad values are refused with the file, line and column
//! and what to change. Paths are relative to the config file.

use crate::breaker::BreakerConfig;
use crate::env::PluginEnv;
use crate::grants::Grants;
use crate::limits::Limits;
use crate::work::Isolation;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

mod check;

/// The whole routing config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and consumer group.
    pub kafka: KafkaConfig,
    /// The service database.
    pub database: DatabaseConfig,
    /// Where dead letters go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Retry policy for `retry` outcomes and plugin failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Engine-wide settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Plugins by name.
    pub plugins: PluginsConfig,
    /// Routes: which topics go to which plugins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The admin HTTP server.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin HTTP server (`/health`, `/metrics`, `/plugins`,
    /// `/routes`) listens; unset, there is none. Port 0 picks a free port.
    /// Overridden by `--admin`. Example: `address = "127.0.0.1:9180"`.
    pub address: Option<String>,
}

/// `[kafka]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Example: `brokers =
    /// "127.0.0.1:9092"`. Overridden by `--brokers` or
    /// `SWITCHYARD_BROKERS`.
    pub brokers: String,
    /// Consumer group. Example: `group = "switchyard"`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Create missing topics (consumed, dead-letter and exactly-named
    /// publish grants) at start, with this many partitions; 0 disables.
    /// Example: `create_topics_partitions = 3`.
    #[serde(default)]
    pub create_topics_partitions: i32,
    /// Extra librdkafka consumer properties. Example:
    /// `consumer = { "session.timeout.ms" = "6000" }`.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

fn default_group() -> String {
    "switchyard".to_string()
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite:path`. Overridden by `--database` or
    /// `SWITCHYARD_DATABASE_URL`. Example: `url = "sqlite:switchyard.db"`.
    pub url: String,
    /// Pool size (PostgreSQL). Example: `max_connections = 16`.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    16
}

/// `[dead_letter]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Dead-letter topic. Example: `topic = "switchyard.dlq"`.
    #[serde(default = "default_dlq")]
    pub topic: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            topic: default_dlq(),
        }
    }
}

fn default_dlq() -> String {
    "switchyard.dlq".to_string()
}

/// `[retry]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts of one event in one plugin before it is dead-lettered,
    /// for `retry` outcomes and failures (traps, limits). `rejected` is
    /// dead-lettered at once. Example: `max_attempts = 5`.
    pub max_attempts: u32,
    /// First backoff, doubled at each attempt. Example:
    /// `initial_backoff_ms = 100`.
    pub initial_backoff_ms: u64,
    /// Backoff cap, also for infrastructure outages (database or broker
    /// down), which are retried without limit. Example:
    /// `max_backoff_ms = 10000`.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Live plugin instances the engine's pool holds (partitions × plugins
    /// need one each). Example: `max_instances = 1000`.
    pub max_instances: u32,
    /// Events buffered per partition before the partition is paused.
    /// A pause is not free: on resume the consumer fetches that partition
    /// again, which costs a round trip on Kafka and a whole
    /// `fetch.wait.max.ms` on Tansu 0.6 (at 512 that capped a burst at
    /// about 4 000 events/s on four partitions; 8192, the default, at
    /// about 30 000). Memory: up to this many events per assigned
    /// partition. Example: `lane_buffer = 2048`.
    pub lane_buffer: usize,
    /// Most events of one partition handled in one database transaction;
    /// the batch is all or nothing, and anything but a plain success
    /// replays its events one by one, each all-or-nothing with its marker
    /// and outbox rows. Batches form only from events already waiting: a
    /// quiet partition is never delayed. 1 disables.
    /// Example: `batch_size = 64`.
    pub batch_size: usize,
    /// Most transactions of one partition running at once, when its
    /// routes keep order by key (`ordering = "key"`): each runs a batch of
    /// events whose keys no other running transaction has. 1 runs the
    /// partition one transaction at a time. Example:
    /// `partition_concurrency = 4`.
    pub partition_concurrency: usize,
    /// Most transactions running at once in the whole router, over all
    /// partitions: keep it below `[database] max_connections`, which the
    /// outbox relay and the admin endpoints share. Example:
    /// `max_in_flight = 12`.
    pub max_in_flight: usize,
    /// Where compiled plugins are kept, so that a restart, or a reload of a
    /// file that did not change, does not compile it again (relative to the
    /// config file); `"off"` compiles at every load. Default:
    /// `$XDG_CACHE_HOME/switchyard/compiled`, else
    /// `~/.cache/switchyard/compiled`. The directory must be the host
    /// user's own and closed to others (entries are machine code). Example:
    /// `compile_cache = "/var/cache/switchyard"`.
    pub compile_cache: Option<String>,
    /// Most megabytes the compiled-code cache keeps; the least recently
    /// used entries go first. Example: `compile_cache_mb = 2048`.
    pub compile_cache_mb: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            lane_buffer: 8192,
            batch_size: 64,
            partition_concurrency: 4,
            max_in_flight: 12,
            compile_cache: None,
            compile_cache_mb: 1024,
        }
    }
}

/// `[plugins]`: a directory and one table per plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginsConfig {
    /// Directory that plugin `file`s are relative to (itself relative to
    /// the config file). Overridden by `--plugin-dir` or
    /// `SWITCHYARD_PLUGIN_DIR`. Example: `dir = "plugins"`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The plugins, by the name routes use.
    #[serde(flatten)]
    pub plugins: BTreeMap<String, PluginConfig>,
}

/// `[plugins.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file. Example: `file = "role_mapping.wasm"`.
    pub file: PathBuf,
    /// Topics (patterns with `*`) the plugin may publish to. Example:
    /// `publish = ["notification.*"]`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// The plugin's own settings, handed to it as JSON. Example:
    /// `settings = { subject = "Welcome, {name}!" }`.
    #[serde(default)]
    pub settings: toml::Table,
    /// Resource limits; unset ones keep their defaults. Example:
    /// `limits = { deadline_ms = 500 }`.
    #[serde(default)]
    pub limits: Limits,
    /// `reuse` (default) or `per-event`.
    #[serde(default)]
    pub isolation: Isolation,
    /// The circuit breaker. Example: `breaker = { failures = 5,
    /// cooldown_ms = 30000 }`; `failures = 0` turns it off.
    #[serde(default)]
    pub breaker: crate::breaker::BreakerConfig,
    /// For `scripts/bench` only: a handler compiled into the host
    /// (`bench-noop`, `bench-upsert`) takes this plugin's events, to
    /// measure the sandbox's cost. The component still loads.
    #[serde(default)]
    pub native: Option<crate::native::Native>,
}

/// The environment variable that allows `native` in a config
/// (`scripts/bench` sets it for the routers it starts).
pub const NATIVE_ENV: &str = "SWITCHYARD_BENCH_NATIVE";

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Topics this route consumes. Example: `topics = ["create-user"]`.
    pub topics: Vec<Spanned<String>>,
    /// Plugins that handle each matching event, in order. Example:
    /// `plugins = ["profile-creation"]`.
    pub plugins: Vec<Spanned<String>>,
    /// Only events that match this condition take the route.
    #[serde(default, rename = "match")]
    pub matches: Option<MatchConfig>,
    /// Deduplicate on an event id as well as on the Kafka position, so
    /// upstream duplicates apply once. Example: `dedupe = { field =
    /// "/eventId" }` or `dedupe = { header = "event-id" }`.
    #[serde(default)]
    pub dedupe: Option<KeyConfig>,
    /// Which events of a partition must run one after another:
    /// `"key"` (the default) keeps the order of the events with the same
    /// Kafka key and runs different keys of one partition side by side;
    /// `"partition"` keeps the order of every event of the partition.
    /// Events without a key run in partition order either way. Example:
    /// `ordering = "partition"`.
    #[serde(default)]
    pub ordering: Ordering,
}

/// What a route keeps in order (see [`RouteConfig::ordering`]).
///
/// `key` is the default because the seeds' events are keyed by the user or
/// the request they are about (user ids on `USER_CREATED`, `user.created`,
/// `interview.created`, `user.registered.v1`; request ids on
/// `create-user`): what must not be reordered is one user's or one
/// request's events, never two users' against each other, and running
/// different users side by side is what lets one partition use more than
/// one database connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Events with the same key in order; different keys side by side.
    #[default]
    Key,
    /// Every event of the partition in order.
    Partition,
}

impl Ordering {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::Key => "key",
            Ordering::Partition => "partition",
        }
    }
}

/// Where a value comes from: a header or a JSON pointer into the payload.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Header name. Example: `header = "event-id"`.
    #[serde(default)]
    pub header: Option<String>,
    /// JSON pointer. Example: `field = "/eventId"`.
    #[serde(default)]
    pub field: Option<String>,
}

/// `match = { header = "event-type", equals = "user_registered" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Header to compare.
    #[serde(default)]
    pub header: Option<String>,
    /// JSON pointer into the payload to compare.
    #[serde(default)]
    pub field: Option<String>,
    /// The value it must equal (JSON strings compare as text, other JSON
    /// values by their JSON text).
    pub equals: String,
}

/// A config that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// A loaded, checked config and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed config.
    pub config: Config,
    /// The file.
    pub path: PathBuf,
}

impl Loaded {
    /// Read and check a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::from_str(path, &text)
    }

    /// Parse and check config text that claims to come from `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let err_at = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError {
                file: file.clone(),
                line,
                column,
                message,
            }
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            err_at(offset, e.message().trim().to_string())
        })?;
        // Semantic checks, pointing at the offending value.
        check::check(&config, &check::Source { file: &file, text })?;
        Ok(Self {
            config,
            path: path.to_path_buf(),
        })
    }

    /// The directory plugin files are relative to: `--plugin-dir` (given as
    /// `dir_override`), else `plugins.dir` relative to the config file.
    pub fn plugin_dir(&self, dir_override: Option<&Path>) -> PathBuf {
        if let Some(dir) = dir_override {
            return dir.to_path_buf();
        }
        let base = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match &self.config.plugins.dir {
            Some(dir) => base.join(dir),
            None => base,
        }
    }

    /// Every plugin's file path and its environment (limits, grants,
    /// settings as JSON).
    pub fn plugin_envs(
        &self,
        dir_override: Option<&Path>,
    ) -> Vec<(String, PathBuf, PluginEnv, Isolation, BreakerConfig)> {
        let dir = self.plugin_dir(dir_override);
        // Checked when the config was loaded; the default stands in for a
        // value that no longer parses.
        let producer_max = crate::limits::producer_message_max_bytes(&self.config.kafka.producer)
            .unwrap_or(crate::limits::DEFAULT_MESSAGE_MAX_BYTES);
        self.config
            .plugins
            .plugins
            .iter()
            .map(|(name, p)| {
                let settings = match serde_json::to_value(&p.settings) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                let mut limits = p.limits.clone();
                limits.clamp_to_producer(producer_max);
                let env = PluginEnv {
                    name: name.as_str().into(),
                    limits,
                    grants: Grants::new(p.publish.clone()),
                    settings: Arc::new(settings),
                    db_role: None,
                    db_tables: std::sync::Arc::from([]),
                    native: p.native,
                };
                (name.clone(), dir.join(&p.file), env, p.isolation, p.breaker)
            })
            .collect()
    }

    /// Every topic some route consumes, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .config
            .routes
            .iter()
            .flat_map(|r| r.topics.iter().map(|t| t.get_ref().clone()))
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[database]
url = "sqlite::memory:"

[plugins.welcome]
file = "welcome_notification.wasm"
publish = ["notification.send.email"]
settings = { subject = "Hi {name}" }
limits = { deadline_ms = 250 }

[[routes]]
topics = ["user.registered.v1", "notification.send.welcome"]
plugins = ["welcome"]
dedupe = { header = "event-id" }
"#;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::from_str(Path::new("config/test.toml"), text)
    }

    #[test]
    fn parses_a_good_config_with_defaults() -> Result<(), ConfigError> {
        let loaded = load(GOOD)?;
        let c = &loaded.config;
        assert_eq!(c.kafka.group, "switchyard");
        assert_eq!(c.dead_letter.topic, "switchyard.dlq");
        assert_eq!(c.retry, RetryConfig::default());
        let welcome = &c.plugins.plugins["welcome"];
        assert_eq!(welcome.limits.deadline_ms, 250);
        assert_eq!(welcome.limits.memory_bytes, Limits::default().memory_bytes);
        assert_eq!(
            loaded.topics(),
            vec!["notification.send.welcome", "user.registered.v1"]
        );
        let envs = loaded.plugin_envs(None);
        assert_eq!(envs[0].1, Path::new("config/welcome_notification.wasm"));
        assert_eq!(envs[0].2.settings["subject"], "Hi {name}");
        assert!(envs[0].2.grants.allows("notification.send.email"));
        Ok(())
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_column() {
        let text = GOOD.replace("dedupe = {", "dedup = {");
        let err = load(&text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("config/test.toml:17:1:"), "{err}");
        assert!(err.contains("unknown field `dedup`"), "{err}");
    }

    #[test]
    fn routes_to_unknown_plugins_are_refused_where_they_are() {
        let text = GOOD.replace("plugins = [\"welcome\"]", "plugins = [\"welcom\"]");
        let err = load(&text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("config/test.toml:16:12:"), "{err}");
        assert!(err.contains("unknown plugin \"welcom\""), "{err}");
        assert!(err.contains("welcome"), "lists the known plugins: {err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (from, to, expect) in [
            (
                "deadline_ms = 250",
                "deadline_ms = \"fast\"",
                "invalid type",
            ),
            ("deadline_ms = 250", "deadline_ms = 0", "deadline_ms"),
            (
                "\"user.registered.v1\"",
                "\"user registered\"",
                "not a valid Kafka topic name",
            ),
            (
                "header = \"event-id\"",
                "field = \"eventId\"",
                "JSON pointer",
            ),
            (
                "brokers = \"127.0.0.1:9092\"",
                "brokers = \"\"",
                "kafka.brokers",
            ),
        ] {
            let text = GOOD.replace(from, to);
            let err = load(&text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expect), "{to}: {err}");
            assert!(err.starts_with("config/test.toml:"), "{err}");
        }
    }

    #[test]
    fn keys_that_fold_to_one_identity_are_refused() {
        let text = r#"
[kafka]
brokers = "127.0.0.1:9092"
[database]
url = "sqlite::memory:"
[plugins.role-mapping]
file = "a.wasm"
[plugins.role_mapping]
file = "b.wasm"
[[routes]]
topics = ["t"]
plugins = ["role-mapping", "role_mapping"]
"#;
        let err = load(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("would share the database identity switchyard_plugin_role_mapping")
                && err.contains(":8:"),
            "{err}"
        );
    }

    #[test]
    fn the_publish_cap_follows_the_producers_limit() -> Result<(), ConfigError> {
        // The default cap (1 MiB) is lowered to librdkafka's default.
        let envs = load(GOOD)?.plugin_envs(None);
        assert_eq!(envs[0].2.limits.max_publish_bytes, 1_000_000);
        // A smaller producer limit lowers it further.
        let small = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\nproducer = { \"message.max.bytes\" = \"200000\" }",
        );
        let envs = load(&small)?.plugin_envs(None);
        assert_eq!(envs[0].2.limits.max_publish_bytes, 200_000);
        // A cap set above the producer's limit is refused where it is.
        let over = small.replace(
            "limits = { deadline_ms = 250 }",
            "limits = { deadline_ms = 250, max_publish_bytes = 500000 }",
        );
        let err = load(&over).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("config/test.toml:13:"), "{err}");
        assert!(
            err.contains(
                "max_publish_bytes` = 500000 is over the producer's `message.max.bytes` (200000)"
            ),
            "{err}"
        );
        // A producer limit librdkafka would refuse is refused here.
        let bad = small.replace("\"200000\"", "\"lots\"");
        let err = load(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("message.max.bytes"), "{err}");
        assert!(err.starts_with("config/test.toml:4:"), "{err}");
        Ok(())
    }
}
