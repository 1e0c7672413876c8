//! `switchyard explain`: which routes and plugins an event would reach,
//! and why, without running anything; and what in the config looks wrong
//! (routes that overlap or can never take effect, plugins no route
//! reaches).

use crate::config::{Loaded, Ordering, line_col};
use crate::event::Event;
use crate::routes::RouteTable;
use serde_json::{Value as Json, json};

/// What `explain` found: a report for people and the same as JSON.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The plugins the event reaches, in order, with their dedupe keys.
    pub reached: Vec<(String, String)>,
    /// Warnings about the config.
    pub warnings: Vec<String>,
    /// Everything, as JSON (`--json`).
    pub json: Json,
    /// Everything, as text.
    pub text: String,
}

/// Explain `event` against the config `loaded`, whose file holds `text`
/// (for line numbers).
pub fn explain(loaded: &Loaded, text: &str, event: &Event) -> Explanation {
    let file = loaded.path.display().to_string();
    let routes = &loaded.config.routes;
    let line_of = |i: usize| -> usize {
        routes[i]
            .topics
            .first()
            .map_or(0, |t| line_col(text, t.span().start).0)
    };
    let json_value = serde_json::from_slice::<Json>(&event.payload).ok();
    let mut out = String::new();
    out.push_str(&format!(
        "event: topic {}, key {}, {} header(s), value {} bytes{}\n",
        event.topic,
        event
            .key
            .as_ref()
            .map_or("(none)".to_string(), |k| String::from_utf8_lossy(k)
                .into_owned()),
        event.headers.len(),
        event.payload.len(),
        if json_value.is_some() {
            " (JSON)"
        } else {
            " (not JSON)"
        }
    ));
    let mut reached: Vec<(String, String)> = Vec::new();
    let mut route_reports = Vec::new();
    // The router's own reading of the routes; this only renders it.
    let table = RouteTable::new(routes);
    for step in table.trace(event) {
        let i = step.route.index;
        let route = &routes[i];
        let n = i + 1;
        let plugins = &step.route.plugins;
        out.push_str(&format!(
            "\nroute #{n} ({file}:{}): {} -> {}\n",
            line_of(i),
            route
                .topics
                .iter()
                .map(|t| t.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(", "),
            plugins.join(", ")
        ));
        match &step.route.condition {
            None => out.push_str("  match: none, every event of these topics\n"),
            Some((source, equals)) => out.push_str(&format!(
                "  match: {source} = {equals:?}; the event has {} -> {}\n",
                step.actual
                    .as_ref()
                    .map_or("none".to_string(), |a| format!("{a:?}")),
                if step.taken { "taken" } else { "not taken" }
            )),
        }
        let how = match &step.route.dedupe {
            Some(source) => format!(
                "event id from {source}: {}",
                step.event_id
                    .as_ref()
                    .map_or("missing, so the position".to_string(), |v| format!("{v:?}"))
            ),
            None => "the Kafka position".to_string(),
        };
        let key = &step.dedupe_key;
        let mut plugin_reports = Vec::new();
        if step.taken {
            out.push_str(&format!("  dedupe: {how} -> key {key}\n"));
            out.push_str(&format!("  ordering: {}\n", step.route.ordering.as_str()));
            for (p, first) in plugins.iter().zip(&step.first) {
                if *first {
                    reached.push((p.clone(), key.clone()));
                    plugin_reports.push(json!({"plugin": p, "reached": true, "dedupe_key": key}));
                } else {
                    let earlier = reached
                        .iter()
                        .find(|(r, _)| r == p)
                        .map_or("?", |(_, k)| k.as_str());
                    out.push_str(&format!(
                        "  {p}: already reached by an earlier route (key {earlier}); not again\n"
                    ));
                    plugin_reports.push(json!({"plugin": p, "reached": false, "why": "already reached by an earlier route"}));
                }
            }
        }
        route_reports.push(json!({
            "route": n,
            "line": line_of(i),
            "plugins": plugins,
            "taken": step.taken,
            "dedupe": how,
            "dedupe_key": key,
            "ordering": step.route.ordering.as_str(),
            "reached": plugin_reports,
        }));
    }
    let replay = match crate::routes::replay_of(event) {
        Some((plugin, key)) if !crate::routes::is_dedupe_key(key) => {
            reached.clear();
            out.push_str(&format!(
                "\nreplay headers with a key the router never writes ({key:?}): it runs nowhere, not even as a fresh event; replay the dead letter again with `switchyard dlq replay`\n"
            ));
            json!({"plugin": plugin, "dedupe_key": key, "refused": "not a dedupe key the router writes"})
        }
        Some((plugin, key)) => {
            reached.retain(|(p, _)| p == plugin);
            for r in &mut reached {
                r.1 = key.to_string();
            }
            out.push_str(&format!(
                "\nreplay of a dead letter ({}): for {plugin} alone, under its first dedupe key {key}; the router runs it only if {plugin}'s marker under that key says dead-lettered (explain does not read the database)\n",
                event.header_str(crate::deadletter::REPLAY_OF).unwrap_or("?")
            ));
            json!({"plugin": plugin, "dedupe_key": key})
        }
        None => Json::Null,
    };
    out.push('\n');
    if reached.is_empty() && !replay.is_null() {
        out.push_str("reaches no plugin: the router logs the replay as skipped, commits its offset and moves on\n");
    } else if reached.is_empty() {
        out.push_str(&format!(
            "reaches no plugin: the router commits its offset and moves on (no route for topic {} takes it)\n",
            event.topic
        ));
    } else {
        out.push_str("reaches, in order:\n");
        for (p, key) in &reached {
            out.push_str(&format!("  {p}  (dedupe key {key})\n"));
        }
    }
    let ordering = table.ordering(event);
    if !reached.is_empty() {
        out.push_str(&match (ordering, event.key.is_some()) {
            (Ordering::Partition, _) => "runs in partition order: after every earlier event of its partition, before every later one (a route it takes says ordering = \"partition\")\n".to_string(),
            (Ordering::Key, false) => "runs in partition order: it has no key (ordering = \"key\" keeps keyed events in order by key)\n".to_string(),
            (Ordering::Key, true) => "runs in key order: after the earlier events of its partition with the same key; events with other keys run beside it\n".to_string(),
        });
    }
    let ordering = match (ordering, event.key.is_some()) {
        (Ordering::Key, true) => "key",
        _ => "partition",
    };
    let warnings = warnings(loaded, text);
    if !warnings.is_empty() {
        out.push_str("\nwarnings about the config:\n");
        for w in &warnings {
            out.push_str(&format!("  {w}\n"));
        }
    }
    let json = json!({
        "event": {"topic": event.topic, "headers": event.headers.len(), "bytes": event.payload.len(),
            "json": json_value.is_some()},
        "routes": route_reports,
        "replay": replay,
        "reaches": reached.iter().map(|(p, k)| json!({"plugin": p, "dedupe_key": k})).collect::<Vec<_>>(),
        "ordering": ordering,
        "warnings": warnings,
    });
    Explanation {
        reached,
        warnings,
        json,
        text: out,
    }
}

/// Static checks of the routes: overlaps, routes that can never take
/// effect for a plugin, plugins no route reaches.
pub fn warnings(loaded: &Loaded, text: &str) -> Vec<String> {
    let file = loaded.path.display().to_string();
    let routes = &loaded.config.routes;
    let at = |i: usize| {
        let line = routes[i]
            .topics
            .first()
            .map_or(0, |t| line_col(text, t.span().start).0);
        format!("route #{} ({file}:{line})", i + 1)
    };
    let mut out = Vec::new();
    for (j, later) in routes.iter().enumerate() {
        for (i, earlier) in routes.iter().enumerate().take(j) {
            for topic in later.topics.iter().map(|t| t.get_ref()) {
                if !earlier.topics.iter().any(|t| t.get_ref() == topic) {
                    continue;
                }
                for plugin in later.plugins.iter().map(|p| p.get_ref()) {
                    if !earlier.plugins.iter().any(|p| p.get_ref() == plugin) {
                        continue;
                    }
                    if earlier.matches.is_none() {
                        out.push(format!(
                            "{} never sends topic {topic} to plugin {plugin}: {} already sends every {topic} event to it (unreachable)",
                            at(j),
                            at(i)
                        ));
                    } else {
                        out.push(format!(
                            "{} and {} both send topic {topic} to plugin {plugin}: an event matching both reaches it once, with {}'s dedupe key (overlap)",
                            at(i),
                            at(j),
                            at(i)
                        ));
                    }
                }
            }
        }
    }
    let mut unused: Vec<&String> = loaded
        .config
        .plugins
        .plugins
        .keys()
        .filter(|name| {
            !routes
                .iter()
                .any(|r| r.plugins.iter().any(|p| p.get_ref() == *name))
        })
        .collect();
    unused.sort();
    for name in unused {
        out.push(format!(
            "plugin {name} is configured but no route reaches it"
        ));
    }
    out
}
