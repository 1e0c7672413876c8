//! The route table: which plugins an event goes to, and the key it is
//! deduplicated on.
//!
//! Built from the config once per (re)load and swapped whole, never
//! mutated in place.

use crate::config::{KeyConfig, MatchConfig, Ordering, RouteConfig};
use crate::event::Event;
use std::collections::HashMap;

/// Where a value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A header, as text.
    Header(String),
    /// A JSON pointer into the payload; strings as they are, other values
    /// as JSON text.
    Field(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Header(h) => write!(f, "header {h}"),
            KeySource::Field(p) => write!(f, "field {p}"),
        }
    }
}

impl KeySource {
    /// The source a `{ header = .. }` or `{ field = .. }` config names
    /// (the config check refuses both or neither).
    pub fn from_config(header: Option<&String>, field: Option<&String>) -> Option<Self> {
        match (header, field) {
            (Some(h), None) => Some(KeySource::Header(h.clone())),
            (None, Some(f)) => Some(KeySource::Field(f.clone())),
            _ => None,
        }
    }

    /// Read the value from `event` (`json` is the payload parsed once, if
    /// it is JSON).
    pub fn read(&self, event: &Event, json: Option<&serde_json::Value>) -> Option<String> {
        match self {
            KeySource::Header(name) => event.header_str(name).map(str::to_string),
            KeySource::Field(pointer) => match json?.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            },
        }
    }

    fn needs_json(&self) -> bool {
        matches!(self, KeySource::Field(_))
    }
}

/// One route, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its place among the config's `[[routes]]`, from 0.
    pub index: usize,
    /// Plugins, in order.
    pub plugins: Vec<String>,
    /// Condition: the source must equal the value.
    pub condition: Option<(KeySource, String)>,
    /// Event-id dedupe key.
    pub dedupe: Option<KeySource>,
    /// What it keeps in order.
    pub ordering: Ordering,
}

/// A plugin an event goes to, and its dedupe key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Plugin name.
    pub plugin: String,
    /// `id:<value>` when the route dedupes on an event id that the event
    /// has; otherwise `pos:<topic>/<partition>/<offset>`.
    pub dedupe_key: String,
    /// A replay from the dead-letter topic: the router runs it only if the
    /// plugin's marker under `dedupe_key` says `dead-lettered`, and turns
    /// that marker into `replayed` in the event's transaction.
    pub replay: bool,
}

/// The plugin and dedupe key a replay from the dead-letter topic is for:
/// both replay headers, or it is no replay.
pub fn replay_of(event: &Event) -> Option<(&str, &str)> {
    Some((
        event.header_str(crate::deadletter::REPLAY_PLUGIN)?,
        event.header_str(crate::deadletter::REPLAY_KEY)?,
    ))
}

/// Whether `key` has a form the router gives dedupe keys: `id:` and an id
/// (today non-empty and at most 200 bytes; earlier versions also wrote an
/// empty or a longer one, and their dead letters must stay replayable),
/// `idsha256:` and 64 hex digits, or `pos:<topic>/<partition>/<offset>`.
/// A replay under any other key can match no marker, so the router runs it
/// nowhere and says why.
pub fn is_dedupe_key(key: &str) -> bool {
    if key.starts_with("id:") {
        true
    } else if let Some(hex) = key.strip_prefix("idsha256:") {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    } else if let Some(position) = key.strip_prefix("pos:") {
        let mut parts = position.rsplitn(3, '/');
        let offset = parts.next().and_then(|o| o.parse::<i64>().ok());
        let partition = parts.next().and_then(|p| p.parse::<i32>().ok());
        let topic = parts.next().unwrap_or("");
        offset.is_some() && partition.is_some() && !topic.is_empty()
    } else {
        false
    }
}

/// The dedupe key of an event id: the id itself when short, else its
/// SHA-256 (an id of any length must fit the marker's primary key).
pub fn dedupe_key_of_id(id: &str) -> String {
    if id.len() <= 200 {
        format!("id:{id}")
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id.as_bytes());
        format!("idsha256:{}", crate::identity::hex(&digest))
    }
}

/// How one route treats an event (see [`RouteTable::trace`]).
#[derive(Debug, Clone)]
pub struct RouteStep<'r> {
    /// The route.
    pub route: &'r Route,
    /// The value its condition reads from the event, if it has one.
    pub actual: Option<String>,
    /// Whether the event takes the route.
    pub taken: bool,
    /// The event id its dedupe source reads, if it dedupes on one.
    pub event_id: Option<String>,
    /// The dedupe key it gives the event.
    pub dedupe_key: String,
    /// For each of the route's plugins: whether this route is the first
    /// to reach it (it then decides the plugin's dedupe key).
    pub first: Vec<bool>,
}

/// Topic → routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_topic: HashMap<String, Vec<Route>>,
}

impl RouteTable {
    /// Compile the config's routes.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut by_topic: HashMap<String, Vec<Route>> = HashMap::new();
        for (index, r) in routes.iter().enumerate() {
            let route = Route {
                index,
                plugins: r.plugins.iter().map(|p| p.get_ref().clone()).collect(),
                condition: r.matches.as_ref().and_then(|m: &MatchConfig| {
                    KeySource::from_config(m.header.as_ref(), m.field.as_ref())
                        .map(|s| (s, m.equals.clone()))
                }),
                dedupe: r.dedupe.as_ref().and_then(|d: &KeyConfig| {
                    KeySource::from_config(d.header.as_ref(), d.field.as_ref())
                }),
                ordering: r.ordering,
            };
            for topic in &r.topics {
                by_topic
                    .entry(topic.get_ref().clone())
                    .or_default()
                    .push(route.clone());
            }
        }
        Self { by_topic }
    }

    /// The table as JSON, by topic, for `/routes`.
    pub fn describe(&self) -> serde_json::Value {
        let mut topics: Vec<&String> = self.by_topic.keys().collect();
        topics.sort();
        let mut out = serde_json::Map::new();
        for topic in topics {
            let routes: Vec<serde_json::Value> = self.by_topic[topic]
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "plugins": r.plugins,
                        "match": r.condition.as_ref().map(|(s, v)| format!("{s} = {v:?}")),
                        "dedupe": r.dedupe.as_ref().map_or_else(
                            || "position (topic/partition/offset)".to_string(),
                            |d| format!("event id from {d}"),
                        ),
                        "ordering": r.ordering.as_str(),
                    })
                })
                .collect();
            out.insert(topic.clone(), serde_json::Value::Array(routes));
        }
        serde_json::Value::Object(out)
    }

    /// What `event` must keep order with: [`Ordering::Partition`] when a
    /// route it takes says so (it then runs after every earlier event of
    /// its partition and before every later one), else
    /// [`Ordering::Key`]. Events of a topic whose routes all keep order
    /// by key are answered without reading their payload.
    pub fn ordering(&self, event: &Event) -> Ordering {
        let Some(routes) = self.by_topic.get(&event.topic) else {
            return Ordering::Key;
        };
        if routes.iter().all(|r| r.ordering == Ordering::Key) {
            return Ordering::Key;
        }
        let mut json = None;
        let mut parsed = false;
        for route in routes.iter().filter(|r| r.ordering == Ordering::Partition) {
            let taken = match &route.condition {
                None => true,
                Some((source, equals)) => {
                    if source.needs_json() && !parsed {
                        json = serde_json::from_slice::<serde_json::Value>(&event.payload).ok();
                        parsed = true;
                    }
                    source.read(event, json.as_ref()).as_deref() == Some(equals.as_str())
                }
            };
            if taken {
                return Ordering::Partition;
            }
        }
        Ordering::Key
    }

    /// Topics with at least one route, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_topic.keys().cloned().collect();
        t.sort();
        t
    }

    /// How each route of `event`'s topic treats it, in route order: the
    /// one reading of the routes that [`RouteTable::select`] decides on
    /// and `switchyard explain` shows.
    pub fn trace(&self, event: &Event) -> Vec<RouteStep<'_>> {
        let mut steps = Vec::new();
        self.walk(event, true, |step| steps.push(step));
        steps
    }

    /// Visit each route of `event`'s topic in order. The dedupe key of a
    /// route the event does not take is read only when `untaken_keys`
    /// (`explain` shows it; the router never needs it, and reading it may
    /// parse the payload and hash a long id); otherwise it is left empty.
    fn walk<'r>(&'r self, event: &Event, untaken_keys: bool, mut visit: impl FnMut(RouteStep<'r>)) {
        let Some(routes) = self.by_topic.get(&event.topic) else {
            return;
        };
        let needs_json = routes.iter().any(|r| {
            r.dedupe.as_ref().is_some_and(KeySource::needs_json)
                || r.condition.as_ref().is_some_and(|(s, _)| s.needs_json())
        });
        let json = if needs_json {
            serde_json::from_slice::<serde_json::Value>(&event.payload).ok()
        } else {
            None
        };
        let position = format!("pos:{}/{}/{}", event.topic, event.partition, event.offset);
        let mut seen: Vec<&str> = Vec::new();
        for route in routes {
            let actual = route
                .condition
                .as_ref()
                .and_then(|(source, _)| source.read(event, json.as_ref()));
            let taken = match &route.condition {
                Some((_, equals)) => actual.as_deref() == Some(equals.as_str()),
                None => true,
            };
            let (event_id, dedupe_key) = if taken || untaken_keys {
                // An empty id is no id: under `id:` alone, every event
                // with an empty id would be a duplicate of the first.
                let event_id = route
                    .dedupe
                    .as_ref()
                    .and_then(|d| d.read(event, json.as_ref()))
                    .filter(|id| !id.is_empty());
                let key = event_id
                    .as_deref()
                    .map_or_else(|| position.clone(), dedupe_key_of_id);
                (event_id, key)
            } else {
                (None, String::new())
            };
            let first = route
                .plugins
                .iter()
                .map(|plugin| {
                    let new = taken && !seen.contains(&plugin.as_str());
                    if new {
                        seen.push(plugin);
                    }
                    new
                })
                .collect();
            visit(RouteStep {
                route,
                actual,
                taken,
                event_id,
                dedupe_key,
                first,
            });
        }
    }

    /// The plugins `event` goes to, in route order, each once (the first
    /// route that names a plugin decides its dedupe key).
    pub fn select(&self, event: &Event) -> Vec<Selected> {
        let mut out: Vec<Selected> = Vec::new();
        self.walk(event, false, |step| {
            for (plugin, first) in step.route.plugins.iter().zip(&step.first) {
                if *first {
                    out.push(Selected {
                        plugin: plugin.clone(),
                        dedupe_key: step.dedupe_key.clone(),
                        replay: false,
                    });
                }
            }
        });
        // A replay from the dead-letter topic (`switchyard dlq replay`) is
        // for one plugin, under the dedupe key it had the first time. The
        // headers alone prove nothing (any producer can write them): the
        // lane honours them only where that key's marker says
        // `dead-lettered`.
        // A key of a form the router never writes matches no marker: the
        // replay runs nowhere (and never as a fresh event).
        if let Some((only, key)) = replay_of(event) {
            out.retain(|s| s.plugin == only && is_dedupe_key(key));
            for s in &mut out {
                s.dedupe_key = key.to_string();
                s.replay = true;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;
    use std::path::Path;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            "[kafka]\nbrokers = \"b:9092\"\n[database]\nurl = \"sqlite::memory:\"\n[plugins.a]\nfile = \"a.wasm\"\n[plugins.b]\nfile = \"b.wasm\"\n{routes}"
        );
        match Loaded::from_str(Path::new("t.toml"), &text) {
            Ok(l) => RouteTable::new(&l.config.routes),
            Err(e) => panic!("{e}"),
        }
    }

    fn event(topic: &str, payload: &str, headers: &[(&str, &str)]) -> Event {
        Event {
            topic: topic.into(),
            partition: 2,
            offset: 7,
            payload: payload.as_bytes().to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
            ..Event::default()
        }
    }

    #[test]
    fn selects_by_topic_with_position_or_id_keys() {
        let t = table(
            "[[routes]]\ntopics = [\"x\"]\nplugins = [\"a\", \"b\"]\ndedupe = { field = \"/eventId\" }\n",
        );
        let s = t.select(&event("x", r#"{"eventId": "e-1"}"#, &[]));
        assert_eq!(
            s,
            vec![
                Selected {
                    plugin: "a".into(),
                    dedupe_key: "id:e-1".into(),
                    replay: false,
                },
                Selected {
                    plugin: "b".into(),
                    dedupe_key: "id:e-1".into(),
                    replay: false,
                },
            ]
        );
        let long = "x".repeat(5000);
        let s = t.select(&event("x", &format!(r#"{{"eventId": "{long}"}}"#), &[]));
        assert!(s[0].dedupe_key.starts_with("idsha256:") && s[0].dedupe_key.len() < 80);
        // No id in the event: the Kafka position is the key.
        let s = t.select(&event("x", r#"{}"#, &[]));
        assert_eq!(s[0].dedupe_key, "pos:x/2/7");
        assert!(t.select(&event("y", "{}", &[])).is_empty());
    }

    #[test]
    fn match_conditions_filter() {
        let t = table(
            "[[routes]]\ntopics = [\"x\"]\nplugins = [\"a\"]\nmatch = { header = \"event-type\", equals = \"user_registered\" }\n\n[[routes]]\ntopics = [\"x\"]\nplugins = [\"b\"]\nmatch = { field = \"/v\", equals = \"2\" }\n",
        );
        let names = |ev: &Event| {
            t.select(ev)
                .into_iter()
                .map(|s| s.plugin)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&event(
                "x",
                r#"{"v": 1}"#,
                &[("event-type", "user_registered")]
            )),
            vec!["a"]
        );
        assert_eq!(names(&event("x", r#"{"v": 2}"#, &[])), vec!["b"]);
        assert!(names(&event("x", "not json", &[])).is_empty());
    }

    #[test]
    fn an_event_keeps_partition_order_when_a_route_it_takes_asks() {
        let t = table(
            "[[routes]]\ntopics = [\"x\", \"y\"]\nplugins = [\"a\"]\n\n[[routes]]\ntopics = [\"x\"]\nplugins = [\"b\"]\nordering = \"partition\"\nmatch = { field = \"/v\", equals = \"2\" }\n",
        );
        assert_eq!(t.ordering(&event("y", "{}", &[])), Ordering::Key);
        assert_eq!(t.ordering(&event("x", r#"{"v": 1}"#, &[])), Ordering::Key);
        assert_eq!(
            t.ordering(&event("x", r#"{"v": 2}"#, &[])),
            Ordering::Partition
        );
        assert_eq!(t.ordering(&event("unrouted", "{}", &[])), Ordering::Key);
        let described = t.describe();
        assert_eq!(described["x"][0]["ordering"], "key");
        assert_eq!(described["x"][1]["ordering"], "partition");
    }

    #[test]
    fn a_replay_reaches_its_plugin_only_under_its_first_key() {
        let t = table("[[routes]]\ntopics = [\"t\"]\nplugins = [\"a\", \"b\"]\n");
        let replay = event(
            "t",
            "{}",
            &[
                (crate::deadletter::REPLAY_PLUGIN, "b"),
                (crate::deadletter::REPLAY_KEY, "pos:t/0/3"),
            ],
        );
        assert_eq!(
            t.select(&replay),
            vec![Selected {
                plugin: "b".into(),
                dedupe_key: "pos:t/0/3".into(),
                replay: true,
            }]
        );
        let gone = event(
            "t",
            "{}",
            &[
                (crate::deadletter::REPLAY_PLUGIN, "c"),
                (crate::deadletter::REPLAY_KEY, "pos:t/0/3"),
            ],
        );
        assert!(
            t.select(&gone).is_empty(),
            "a plugin no longer routed: nothing"
        );
        let half = event("t", "{}", &[(crate::deadletter::REPLAY_PLUGIN, "b")]);
        assert_eq!(
            t.select(&half).len(),
            2,
            "without its key it is no replay: routed as any event"
        );
        for bad in ["", "pos:", "pos:t/x/3", "pos:/0/3", "idsha256:abc", "key-1"] {
            let forged = event(
                "t",
                "{}",
                &[
                    (crate::deadletter::REPLAY_PLUGIN, "b"),
                    (crate::deadletter::REPLAY_KEY, bad),
                ],
            );
            assert!(
                t.select(&forged).is_empty(),
                "a replay under {bad:?} runs nowhere"
            );
        }
    }

    #[test]
    fn dedupe_keys_the_router_writes_have_its_form() {
        let t = table(
            "[[routes]]\ntopics = [\"a.b\"]\nplugins = [\"a\"]\ndedupe = { header = \"event-id\" }\n",
        );
        for id in ["e-1", "", &"x".repeat(200), &"y".repeat(201)] {
            let e = event("a.b", "{}", &[("event-id", id)]);
            let key = &t.select(&e)[0].dedupe_key;
            assert!(is_dedupe_key(key), "{key}");
            if id.is_empty() {
                assert!(key.starts_with("pos:a.b/"), "an empty id is no id: {key}");
            }
        }
        // Keys earlier versions wrote stay replayable.
        assert!(is_dedupe_key("id:"));
        assert!(is_dedupe_key(&format!("id:{}", "x".repeat(201))));
        assert!(!is_dedupe_key(&format!("idsha256:{}", "A".repeat(64))));
    }
}
