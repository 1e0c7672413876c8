//! The routing config's semantic checks: each refusal points at the
//! offending value (file, line, column) and says what to do.

use super::{Config, ConfigError, NATIVE_ENV, RouteConfig, line_col};
use crate::grants::valid_topic_name;
use crate::limits::Limits;
use std::collections::BTreeMap;

/// The config file's name and text, to point into.
pub(super) struct Source<'a> {
    /// The file, as shown.
    pub file: &'a str,
    /// Its text.
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at byte `offset`.
    pub fn err(&self, offset: usize, message: String) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }

    /// Where `needle` first appears (the start when it does not).
    fn find(&self, needle: &str) -> usize {
        self.text.find(needle).unwrap_or(0)
    }
}

/// Every check, in order; the first refusal is returned.
pub(super) fn check(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    check_native(config, src)?;
    check_kafka(config, src)?;
    check_plugins(config, src)?;
    check_routes(config, src)
}

/// A native handler replaces the plugin's own work while its events are
/// marked handled: only the benchmark may ask for one.
fn check_native(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    if let Some((name, _)) = config
        .plugins
        .plugins
        .iter()
        .find(|(_, p)| p.native.is_some())
        && (!cfg!(feature = "bench-native") || std::env::var(NATIVE_ENV).as_deref() != Ok("1"))
    {
        return Err(src.err(
            src.find("native"),
            format!(
                "plugin {name}: `native` hands its events to a benchmark handler instead of the plugin (their effects would be lost); it is for scripts/bench only, which builds with the `bench-native` feature and sets {NATIVE_ENV}=1"
            ),
        ));
    }
    Ok(())
}

/// `[kafka]`, `[dead_letter]` and `[retry]`.
fn check_kafka(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    if config.kafka.brokers.trim().is_empty() {
        return Err(src.err(
            src.find("brokers"),
            "`kafka.brokers` is empty: give host:port of at least one broker".into(),
        ));
    }
    if !valid_topic_name(&config.dead_letter.topic) {
        return Err(src.err(
            src.find("[dead_letter]"),
            format!(
                "`dead_letter.topic` {:?} is not a valid Kafka topic name",
                config.dead_letter.topic
            ),
        ));
    }
    // Properties the guarantees rest on cannot be overridden.
    for (section, map, fixed) in [
        (
            "kafka.consumer",
            &config.kafka.consumer,
            &[
                "enable.auto.offset.store",
                "enable.auto.commit",
                "group.id",
                "bootstrap.servers",
            ][..],
        ),
        (
            "kafka.producer",
            &config.kafka.producer,
            &[
                "enable.idempotence",
                "acks",
                "request.required.acks",
                "bootstrap.servers",
            ][..],
        ),
    ] {
        if let Some(key) = map.keys().find(|k| fixed.contains(&k.as_str())) {
            return Err(src.err(
                src.find(key),
                format!(
                    "`{section}.{key}` cannot be set: switchyard fixes it to keep its delivery guarantees"
                ),
            ));
        }
    }
    // The publish cap may not exceed what the producer accepts: a
    // message between the two would be allowed to the plugin and then
    // refused by the producer in the outbox. The default cap is
    // lowered to the producer's limit (see `plugin_envs`); a cap set
    // above it is a mistake to point at.
    let producer_max = crate::limits::producer_message_max_bytes(&config.kafka.producer)
        .map_err(|why| src.err(src.find("message.max.bytes"), why))?;
    for (name, plugin) in &config.plugins.plugins {
        let cap = plugin.limits.max_publish_bytes;
        if cap != Limits::default().max_publish_bytes && cap > producer_max {
            let section = src.find(&format!("[plugins.{name}]"));
            let at = src.text[section..]
                .find("max_publish_bytes")
                .map_or(section, |i| section + i);
            return Err(src.err(
                at,
                format!(
                    "plugin {name}: `limits.max_publish_bytes` = {cap} is over the producer's `message.max.bytes` ({producer_max}), so messages in between would be accepted from the plugin and refused by Kafka; lower it, or raise `message.max.bytes` under [kafka.producer] (and the topics' max.message.bytes on the brokers)"
                ),
            ));
        }
    }
    if config.retry.max_attempts == 0 {
        return Err(src.err(
            src.find("max_attempts"),
            "`retry.max_attempts` must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Every `[plugins.*]`: identities, limits, grants.
fn check_plugins(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    // A plugin's identity (its database role) is its config key
    // folded to lowercase letters, digits and `_`: two keys that fold
    // alike would be one plugin to the database.
    let mut roles: BTreeMap<String, &str> = BTreeMap::new();
    for name in config.plugins.plugins.keys() {
        let role = crate::identity::plugin_role(name);
        if let Some(first) = roles.insert(role.clone(), name) {
            return Err(src.err(
                src.find(&format!("[plugins.{name}]")),
                format!(
                    "plugins {first} and {name} would share the database identity {role} (keys are folded to lowercase letters, digits and _): rename one of them"
                ),
            ));
        }
    }
    for (name, plugin) in &config.plugins.plugins {
        if plugin.limits.deadline_ms == 0 || plugin.limits.memory_bytes < (1 << 20) {
            return Err(src.err(
                src.find(&format!("[plugins.{name}]")),
                format!(
                    "plugin {name}: `limits.deadline_ms` must be > 0 and `limits.memory_bytes` at least 1048576"
                ),
            ));
        }
        for pattern in &plugin.publish {
            if pattern.is_empty() {
                return Err(src.err(
                    src.find(&format!("[plugins.{name}]")),
                    format!("plugin {name}: an empty `publish` pattern grants nothing: remove it"),
                ));
            }
        }
    }
    Ok(())
}

/// Every `[[routes]]`.
fn check_routes(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    if config.routes.is_empty() {
        return Err(src.err(
            src.text.len(),
            "no `[[routes]]`: add at least one route from topics to plugins".into(),
        ));
    }
    for route in &config.routes {
        check_route(config, route, src)?;
    }
    Ok(())
}

/// One route: topics, plugins, and its `match` and `dedupe` keys.
fn check_route(config: &Config, route: &RouteConfig, src: &Source<'_>) -> Result<(), ConfigError> {
    if route.topics.is_empty() || route.plugins.is_empty() {
        let at = route
            .topics
            .first()
            .or(route.plugins.first())
            .map_or(0, |s| s.span().start);
        return Err(src.err(at, "a route needs at least one topic and one plugin".into()));
    }
    for topic in &route.topics {
        if !valid_topic_name(topic.get_ref()) {
            return Err(src.err(
                topic.span().start,
                format!(
                    "{:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])",
                    topic.get_ref()
                ),
            ));
        }
    }
    for plugin in &route.plugins {
        if !config.plugins.plugins.contains_key(plugin.get_ref()) {
            let known: Vec<&str> = config.plugins.plugins.keys().map(String::as_str).collect();
            return Err(src.err(
                plugin.span().start,
                format!(
                    "route to unknown plugin {:?}: define [plugins.{}] or use one of: {}",
                    plugin.get_ref(),
                    plugin.get_ref(),
                    known.join(", ")
                ),
            ));
        }
    }
    for key in route
        .dedupe
        .iter()
        .map(|d| (d.header.as_ref(), d.field.as_ref(), "dedupe"))
        .chain(
            route
                .matches
                .iter()
                .map(|m| (m.header.as_ref(), m.field.as_ref(), "match")),
        )
    {
        match key {
            (Some(_), None, _) => {}
            (None, Some(f), what) if !f.starts_with('/') => {
                return Err(src.err(
                    src.find(f),
                    format!(
                        "`{what}.field` {f:?} must be a JSON pointer starting with '/', like \"/eventId\""
                    ),
                ));
            }
            (None, Some(_), _) => {}
            (_, _, what) => {
                let at = route.topics.first().map_or(0, |s| s.span().start);
                return Err(src.err(
                    at,
                    format!("`{what}` needs exactly one of `header` or `field`"),
                ));
            }
        }
    }
    Ok(())
}
