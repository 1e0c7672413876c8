//! Property tests (proptest: the machine has no fuzzing setup that CI
//! could run in minutes) for the two parsers a hostile party controls:
//!
//! - event decoding: arbitrary keys, payloads and headers, and mutations
//!   of the seeds' own payloads, through the route table and each of the
//!   four plugins. No input may crash a plugin (a trap); a bad event is
//!   rejected or skipped with a reason.
//! - the SQL gate: it never panics, and whatever it accepts runs as one
//!   statement. The oracle is SQLite's own tokenizer: each case hides a
//!   second statement (`INSERT INTO canary ...`) behind quoting and
//!   comment constructs; if the gate accepts the text, executing it on
//!   SQLite must not have run the canary insert.
//!
//! `PROPTEST_CASES` raises the number of cases (the default keeps CI
//! quick); failures are shrunk and printed with the input.

mod common;

use common::Harness;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value as Json, json};
use std::cell::RefCell;
use switchyard::database::{Backend, Database};
use switchyard::event::Event;
use switchyard::runtime::Outcome;
use switchyard::sql_gate;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio: {e}"))
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        ".{0,40}".prop_map(Json::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map("[a-zA-Z_]{1,12}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// The seeds' payloads, as the contract tests send them.
fn seed_payloads() -> Vec<Json> {
    vec![
        json!({"userId": "auth0|owner", "name": "Amélie Durand", "email": "amelie@boulangerie.fr",
            "role": "user", "userType": "SME_OWNER", "customerAccountId": "cust-1",
            "customerName": "Boulangerie Durand SARL", "timestamp": "2024-05-14T09:30:00.000Z"}),
        json!({"requestId": "req-fa-1", "firstName": "احمد", "lastName": "محمدی",
            "email": "ahmad@example.com", "nationalCode": 1234567890, "birthDate": "1990-01-01"}),
        json!({"eventId": "ev-i1", "eventType": "interview.created", "userId": "u-ru",
            "data": {"interviewId": "iv-1"}}),
        json!({"eventId": "ev-m1", "eventType": "media.uploaded", "userId": "u-ru",
            "data": {"fileId": "f-1", "fileSize": 1048576}}),
        json!({"event": "user_registered", "id": "evt-es-1", "ts": 1696599999999i64, "v": 1,
            "payload": {"user_id": "u-es", "email": "lucia@example.com", "full_name": "Lucía Fernández"},
            "source": "auth-svc"}),
    ]
}

/// A seed payload with one field replaced by an arbitrary value or removed.
fn mutated_seed() -> impl Strategy<Value = Json> {
    let seeds = seed_payloads();
    (
        0..seeds.len(),
        any::<prop::sample::Index>(),
        any_json(),
        any::<bool>(),
    )
        .prop_map(move |(i, field, value, remove)| {
            let mut seed = seeds[i].clone();
            if let Some(obj) = seed.as_object_mut() {
                let keys: Vec<String> = obj.keys().cloned().collect();
                let key = field.get(&keys).clone();
                if remove {
                    obj.remove(&key);
                } else {
                    obj.insert(key, value);
                }
            }
            seed
        })
}

fn any_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any_json().prop_map(|j| j.to_string().into_bytes()),
        mutated_seed().prop_map(|j| j.to_string().into_bytes()),
        mutated_seed().prop_map(|j| {
            // Truncated JSON, possibly inside a UTF-8 sequence.
            let text = j.to_string().into_bytes();
            text[..text.len() / 2].to_vec()
        }),
    ]
}

fn any_headers() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
    let name = prop_oneof![
        Just("event-id".to_string()),
        Just("request-id".to_string()),
        Just("event-type".to_string()),
        Just("content-type".to_string()),
        Just("kafka_correlationId".to_string()),
        Just("kafka_replyTopic".to_string()),
        Just("kafka_replyPartition".to_string()),
        Just("switchyard.replay-plugin".to_string()),
        Just("switchyard.replay-key".to_string()),
        ".{0,20}",
    ];
    let value = prop::option::of(prop_oneof![
        Just(b"user_registered".to_vec()),
        Just(b"a".to_vec()),
        Just(b"c".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
        ".{0,40}".prop_map(String::into_bytes),
    ]);
    prop::collection::vec((name, value), 0..6)
}

fn any_event(topics: &'static [&'static str]) -> impl Strategy<Value = Event> {
    (
        prop::sample::select(topics),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..32)),
        any_payload(),
        any_headers(),
        0i64..1_000_000,
    )
        .prop_map(|(topic, key, payload, headers, offset)| Event {
            topic: topic.to_string(),
            partition: 0,
            offset,
            timestamp_ms: Some(1_700_000_000_000),
            key,
            payload,
            headers,
        })
}

/// No event, however malformed, makes one of the four plugins trap.
#[test]
fn malformed_events_never_crash_a_plugin() {
    let rt = runtime();
    let plugins: [(&str, &'static [&'static str]); 4] = [
        (
            "role-mapping",
            &["USER_CREATED", "USER_STATUS_CHANGED", "USER_ROLE_CHANGED"],
        ),
        ("profile-creation", &["create-user"]),
        (
            "stats-increment",
            &["user.created", "interview.created", "media.uploaded"],
        ),
        (
            "welcome-notification",
            &["user.registered.v1", "notification.send.welcome"],
        ),
    ];
    for (plugin, topics) in plugins {
        let harness = RefCell::new(rt.block_on(Harness::new(plugin, Backend::Sqlite)));
        let mut runner = TestRunner::new(Config {
            cases: cases(64),
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&any_event(topics), |event| {
            let inv = rt.block_on(harness.borrow_mut().send_event(&event));
            match &inv.outcome {
                Outcome::Failed(f) => Err(TestCaseError::fail(format!(
                    "{plugin} trapped on {event:?}: {f}"
                ))),
                Outcome::Rejected(r) | Outcome::Skipped(r) | Outcome::Retry(r)
                    if r.trim().is_empty() =>
                {
                    Err(TestCaseError::fail(format!(
                        "{plugin} gave no reason for {:?} on {event:?}",
                        inv.outcome
                    )))
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = result {
            panic!("{plugin}: {e}");
        }
    }
}

/// The route table decodes any payload for dedupe keys without panicking,
/// the same event always gets the same key, and `explain` agrees with it.
#[test]
fn route_selection_is_total_and_deterministic() {
    let text = r#"
[kafka]
brokers = "127.0.0.1:9"
[database]
url = "sqlite::memory:"
[plugins.a]
file = "a.wasm"
[plugins.b]
file = "b.wasm"
[plugins.c]
file = "c.wasm"
[[routes]]
topics = ["t"]
plugins = ["c", "a"]
match = { header = "event-type", equals = "user_registered" }
dedupe = { header = "request-id" }
[[routes]]
topics = ["t"]
plugins = ["a"]
dedupe = { field = "/eventId" }
[[routes]]
topics = ["t"]
plugins = ["b"]
dedupe = { header = "event-id" }
"#;
    let loaded = switchyard::config::Loaded::from_str("fuzz.toml".as_ref(), text)
        .unwrap_or_else(|e| panic!("{e}"));
    let table = switchyard::routes::RouteTable::new(&loaded.config.routes);
    let mut runner = TestRunner::new(Config {
        cases: cases(512),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&any_event(&["t"]), |event| {
        let first = table.select(&event);
        let again = table.select(&event);
        let replay = ["switchyard.replay-plugin", "switchyard.replay-key"]
            .iter()
            .all(|h| event.header_str(h).is_some());
        if replay {
            prop_assert!(first.len() <= 1 && first.iter().all(|s| s.replay));
        } else {
            prop_assert!(first.len() == 2 || first.len() == 3);
        }
        prop_assert_eq!(
            first.iter().map(|s| &s.dedupe_key).collect::<Vec<_>>(),
            again.iter().map(|s| &s.dedupe_key).collect::<Vec<_>>()
        );
        for s in &first {
            prop_assert!(!s.dedupe_key.is_empty());
        }
        // `switchyard explain` tells the same story as the router.
        let explained = switchyard::explain::explain(&loaded, text, &event).reached;
        let selected: Vec<(String, String)> = first
            .iter()
            .map(|s| (s.plugin.clone(), s.dedupe_key.clone()))
            .collect();
        prop_assert_eq!(explained, selected);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The gate never panics, on any text.
#[test]
fn the_gate_is_total() {
    let mut runner = TestRunner::new(Config {
        cases: cases(2048),
        failure_persistence: None,
        ..Config::default()
    });
    let text = prop_oneof![".{0,200}", sql_ish()];
    let result = runner.run(&text, |sql| {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let _ = sql_gate::check(&sql, 64 << 10, backend);
            let _ = sql_gate::check_migration(&sql, backend);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Pieces of SQL that start or end quotes and comments in one dialect or
/// another, and statement separators.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(";".to_string()),
        Just("'".to_string()),
        Just("''".to_string()),
        Just("\"".to_string()),
        Just("`".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("--".to_string()),
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just("$$".to_string()),
        Just("$tag$".to_string()),
        Just("E'".to_string()),
        Just("\\'".to_string()),
        Just("\\".to_string()),
        Just("#".to_string()),
        Just("x'".to_string()),
        Just(" ".to_string()),
        Just("1".to_string()),
        Just("a".to_string()),
        Just("$1".to_string()),
        Just("?".to_string()),
        Just(":x".to_string()),
    ]
}

fn sql_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..24).prop_map(|v| v.concat())
}

/// `SELECT <noise> ; INSERT INTO canary ... <noise>`: if the gate accepts
/// it, it must be because the canary is inside a literal or a comment,
/// and SQLite must agree.
fn smuggling_attempt() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "SELECT 1 ",
            "SELECT ",
            "UPDATE t SET x = ",
            "DELETE FROM t WHERE x = ",
            "INSERT INTO t (x) VALUES (",
            "WITH c AS (SELECT 1) SELECT ",
        ]),
        sql_ish(),
        sql_ish(),
    )
        .prop_map(|(head, before, after)| {
            format!("{head}{before}; INSERT INTO canary VALUES (1); {after}")
        })
}

#[test]
fn what_the_gate_accepts_is_one_statement_on_sqlite() {
    let rt = runtime();
    let db = rt
        .block_on(Database::connect("sqlite::memory:", 1))
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(db.run_script(
        "CREATE TABLE t (x TEXT); CREATE TABLE canary (x INTEGER); INSERT INTO t VALUES ('1')",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut runner = TestRunner::new(Config {
        cases: cases(4096),
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    let ran = std::cell::Cell::new(0u32);
    let result = runner.run(&smuggling_attempt(), |sql| {
        if sql_gate::check(&sql, 64 << 10, Backend::Sqlite).is_err() {
            return Ok(());
        }
        accepted.set(accepted.get() + 1);
        let canaries = rt.block_on(async {
            let mut tx = db.begin().await.map_err(|e| e.to_string())?;
            // Errors are fine (SQLite may reject the text); a canary row
            // is not.
            if tx.execute(&sql, &[]).await.is_ok() {
                ran.set(ran.get() + 1);
            }
            let rows = tx
                .query(
                    "SELECT count(*) AS n FROM canary",
                    &[],
                    &switchyard::limits::Limits::default(),
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
            tx.rollback().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(match rows.rows.first().and_then(|r| r.first()) {
                Some(switchyard::bindings::switchyard::plugin::db::Value::Int(n)) => *n,
                other => return Err(format!("count(*) gave {other:?}")),
            })
        });
        let canaries = canaries.map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            canaries,
            0,
            "the gate accepted {:?} as one statement, but SQLite ran the canary",
            sql
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "the gate accepted {} smuggling attempts, SQLite ran {} of them, never the canary",
        accepted.get(),
        ran.get()
    );
    assert!(
        ran.get() > 0,
        "no accepted case ran: the property was never exercised"
    );
}
