//! Issue 12: one plugin's messages that can never be produced must not
//! hold the outbox for everyone else. The real binary, Tansu and
//! PostgreSQL; two plugins from the hostile test build, `a` and `b`, both
//! granted `shared.out` (two partitions); the producer's
//! `message.max.bytes` lowered to 100 000 so that "too large" is quick to
//! make.
//!
//! - `a` publishes to partition 5 of `shared.out` and a message over the
//!   producer's limit: both are refused to the plugin at once (its events
//!   are dead-lettered as `rejected` with the reason), nothing reaches the
//!   outbox.
//! - Rows an earlier router left in the outbox — 520 of `a`'s to a
//!   partition that does not exist and one over the producer's limit,
//!   ahead of `b`'s — are moved to the dead-letter topic (`quarantined`,
//!   with the reason, plugin, original topic/partition/key and event id)
//!   and counted, while `b`'s messages, old and new, arrive within
//!   seconds. Nothing else is lost or sent twice, and `/health` says
//!   `degraded` with the reason.

mod common;

use common::{
    Broker, Router, TestDb, admin_address, consume_until, eventually, http_get, produce, scalar,
};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::bindings::switchyard::plugin::db::Value;
use switchyard::database::{Backend, Database};

const DLQ: &str = "outbox.dlq";
const OUT: &str = "shared.out";
const STUCK: usize = 520;

fn write_config(dir: &Path, broker: &str, db_url: &str) -> std::path::PathBuf {
    let plugin_dir = common::plugin_dir_of("test-hostile");
    let text = format!(
        r#"
[kafka]
brokers = "{broker}"
group = "outbox-test"
producer = {{ "message.max.bytes" = "100000" }}

[database]
url = "{db_url}"

[dead_letter]
topic = "{DLQ}"

[admin]
address = "127.0.0.1:0"

[plugins]
dir = "{plugin_dir}"

[plugins.test-hostile]
file = "test_hostile.wasm"
publish = ["{OUT}"]
breaker = {{ failures = 0 }}

[plugins.test-fragile]
file = "test_fragile.wasm"
publish = ["{OUT}"]

[[routes]]
topics = ["a.cmds"]
plugins = ["test-hostile"]

[[routes]]
topics = ["b.cmds"]
plugins = ["test-fragile"]
"#,
        plugin_dir = plugin_dir.display()
    );
    common::write_config(dir, &text)
}

/// Write outbox rows as an earlier router would have: `plugin`, an
/// explicit partition or none, a key, `bytes` of value, an event id.
async fn legacy_rows(db: &Database, rows: &[(&str, Option<i64>, String, usize, String)]) {
    let mut tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    for (plugin, partition, key, bytes, event_id) in rows {
        let headers = switchyard::outbox::encode_headers(&[(
            "event-id".to_string(),
            Some(event_id.clone().into_bytes()),
        )]);
        tx.execute_host(
            "INSERT INTO switchyard_outbox (topic, msg_key, payload, headers, msg_partition, plugin) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                Value::Text(OUT.into()),
                Value::Bytes(key.clone().into_bytes()),
                Value::Bytes(vec![b'o'; *bytes]),
                Value::Text(headers),
                partition.map_or(Value::Null, Value::Int),
                Value::Text((*plugin).into()),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
}

/// The value of one sample of `/metrics`, 0 when absent.
fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_moved_aside_and_other_plugins_flow() {
    let broker = Broker::start();
    broker.create_topics(&["a.cmds", "b.cmds", DLQ], 1).await;
    broker.create_topics(&[OUT], 2).await;
    // The host runs as a non-superuser, as production does.
    let testdb = TestDb::postgres_non_superuser().await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // What an earlier router left: a's rows that can never be produced
    // (more than a whole relay window of them), then b's.
    switchyard::outbox::create_tables(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rows: Vec<_> = (0..STUCK)
        .map(|i| {
            (
                "test-hostile",
                Some(9),
                format!("a-stuck-{i}"),
                10,
                format!("legacy-a-{i}"),
            )
        })
        .collect();
    rows.push((
        "test-hostile",
        None,
        "a-huge".into(),
        150_000,
        "legacy-a-huge".into(),
    ));
    rows.extend((0..5).map(|i| {
        (
            "test-fragile",
            None,
            format!("b-old-{i}"),
            10,
            format!("legacy-b-{i}"),
        )
    }));
    legacy_rows(&db, &rows).await;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = write_config(dir.path(), &broker.addr, &testdb.url);
    let router = Router::start(&config, &dir.path().join("router.log"), &[]);
    let ready = eventually(Duration::from_secs(60), || async {
        router.log_text().contains("partitions assigned")
    })
    .await;
    assert!(ready, "the router did not start:\n{}", router.log_text());
    let admin = admin_address(&router.log_text())
        .unwrap_or_else(|| panic!("no admin address:\n{}", router.log_text()));

    // Live: a's two bad publishes and one good one, then b's.
    let p = broker.producer();
    for (case, command) in [
        (
            "no-such-partition",
            json!({"do": "publish", "topic": OUT, "bytes": 10, "partition": 5}),
        ),
        (
            "too-large",
            json!({"do": "publish", "topic": OUT, "bytes": 150_000}),
        ),
        (
            "good",
            json!({"do": "publish", "topic": OUT, "bytes": 10, "partition": 1, "key": "a-good"}),
        ),
    ] {
        produce(
            &p,
            "a.cmds",
            None,
            &[("case", case)],
            command.to_string().as_bytes(),
        )
        .await;
    }
    let sent = Instant::now();
    let live_b = 20;
    for i in 0..live_b {
        let command =
            json!({"do": "publish", "topic": OUT, "bytes": 10, "key": format!("b-new-{i}")});
        produce(&p, "b.cmds", None, &[], command.to_string().as_bytes()).await;
    }

    // b's messages, old and new, and a's good one, arrive within seconds.
    let expected_out = 5 + live_b + 1;
    let out = consume_until(&broker.addr, &[OUT], Duration::from_secs(30), |m| {
        m.len() >= expected_out
    })
    .await;
    let took = sent.elapsed();
    let keys: Vec<&str> = out.iter().filter_map(|m| m.key.as_deref()).collect();
    assert_eq!(
        out.len(),
        expected_out,
        "output keys {keys:?}\n{}",
        router.log_text()
    );
    assert!(took < Duration::from_secs(20), "b waited {took:?}");
    for i in 0..5 {
        assert!(keys.contains(&format!("b-old-{i}").as_str()), "{keys:?}");
    }
    for i in 0..live_b {
        assert!(keys.contains(&format!("b-new-{i}").as_str()), "{keys:?}");
    }
    let good = out.iter().find(|m| m.key.as_deref() == Some("a-good"));
    assert_eq!(
        good.map(|m| m.partition),
        Some(1),
        "a's good message, where it asked"
    );
    assert!(
        out.iter().all(|m| m
            .key
            .as_deref()
            .is_some_and(|k| !k.starts_with("a-stuck") && k != "a-huge")),
        "no refused message on the output topic"
    );

    // The dead-letter topic: a's two live refusals (rejected at publish)
    // and every stuck row (quarantined by the relay).
    let expected_dead = STUCK + 1 + 2;
    let dead = consume_until(&broker.addr, &[DLQ], Duration::from_secs(60), |m| {
        m.len() >= expected_dead
    })
    .await;
    assert_eq!(dead.len(), expected_dead, "{}", router.log_text());
    let rejected: Vec<_> = dead
        .iter()
        .filter(|d| d.header("switchyard.outcome") == Some("rejected"))
        .collect();
    assert_eq!(rejected.len(), 2);
    for (case, words) in [
        (
            "no-such-partition",
            "topic shared.out has no partition 5 (it has 2",
        ),
        ("too-large", "over the limit of 100000 bytes"),
    ] {
        let letter = rejected
            .iter()
            .find(|d| d.header("case") == Some(case))
            .unwrap_or_else(|| panic!("no dead letter for {case}"));
        assert_eq!(letter.header("switchyard.plugin"), Some("test-hostile"));
        let error = letter.header("switchyard.error").unwrap_or_default();
        assert!(error.contains(words), "{case}: {error}");
    }
    let quarantined: Vec<_> = dead
        .iter()
        .filter(|d| d.header("switchyard.outcome") == Some("quarantined"))
        .collect();
    assert_eq!(quarantined.len(), STUCK + 1);
    for letter in &quarantined {
        assert_eq!(letter.header("switchyard.plugin"), Some("test-hostile"));
        assert_eq!(letter.header("switchyard.original-topic"), Some(OUT));
    }
    let stuck: Vec<_> = quarantined
        .iter()
        .filter(|d| d.header("switchyard.reason") == Some("unknown_partition"))
        .collect();
    assert_eq!(stuck.len(), STUCK);
    let first = stuck
        .iter()
        .find(|d| d.key.as_deref() == Some("a-stuck-0"))
        .unwrap_or_else(|| panic!("no dead letter for a-stuck-0"));
    assert_eq!(first.header("switchyard.original-partition"), Some("9"));
    assert_eq!(first.header("switchyard.original-key"), Some("a-stuck-0"));
    assert_eq!(first.header("switchyard.event-id"), Some("legacy-a-0"));
    assert_eq!(first.header("event-id"), Some("legacy-a-0"));
    assert!(first.header("switchyard.outbox-id").is_some());
    assert_eq!(first.value, b"oooooooooo");
    let huge = quarantined
        .iter()
        .find(|d| d.key.as_deref() == Some("a-huge"))
        .unwrap_or_else(|| panic!("no dead letter for a-huge"));
    assert_eq!(huge.header("switchyard.reason"), Some("message_too_large"));
    assert_eq!(huge.header("switchyard.truncated-from"), Some("150000"));
    assert!(!huge.value.is_empty() && huge.value.len() < 100_000);

    // The outbox is empty; the counters moved; /health says why.
    let drained = eventually(Duration::from_secs(10), || async {
        scalar(&db, "SELECT count(*) FROM switchyard_outbox").await == 0
    })
    .await;
    assert!(drained, "outbox not empty:\n{}", router.log_text());
    let (_, metrics) = http_get(&admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            r#"switchyard_outbox_quarantined_total{plugin="test-hostile",reason="unknown_partition"}"#
        ),
        STUCK as u64,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"switchyard_outbox_quarantined_total{plugin="test-hostile",reason="message_too_large"}"#
        ),
        1
    );
    assert_eq!(sample(&metrics, "switchyard_outbox_backlog"), 0);
    let (status, health) = http_get(&admin, "/health").await;
    assert_eq!(status, 200, "{health}");
    let health: serde_json::Value =
        serde_json::from_str(&health).unwrap_or_else(|e| panic!("{e}: {health}"));
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("quarantined")))),
        "{health}"
    );
    assert_eq!(
        health["outbox"]["last_quarantine"]["plugin"], "test-hostile",
        "{health}"
    );
}

/// The outbox as the first release created it, with one row in it.
const OLD_OUTBOX: [(Backend, &str); 2] = [
    (
        Backend::Postgres,
        "CREATE TABLE switchyard_outbox (id bigserial PRIMARY KEY, topic text NOT NULL, msg_key bytea, payload bytea NOT NULL, headers text NOT NULL, msg_partition integer, created_at timestamptz NOT NULL DEFAULT now()); INSERT INTO switchyard_outbox (topic, payload, headers) VALUES ('shared.out', 'old', '[]')",
    ),
    (
        Backend::Sqlite,
        "CREATE TABLE switchyard_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, msg_key BLOB, payload BLOB NOT NULL, headers TEXT NOT NULL, msg_partition INTEGER, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP); INSERT INTO switchyard_outbox (topic, payload, headers) VALUES ('shared.out', 'old', '[]')",
    ),
];

/// An outbox created by an earlier version gains its new columns (its
/// rows belong to plugin `''`), twice without harm; then one relay pass
/// on it, on each backend, sends the good rows and quarantines the bad
/// one, so the relay's SQL runs on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_outbox_is_migrated_forward_and_relayed_on_both_backends() {
    let broker = Broker::start();
    broker.create_topics(&[DLQ], 1).await;
    broker.create_topics(&[OUT], 2).await;
    for (backend, old) in OLD_OUTBOX {
        let testdb = TestDb::new(backend).await;
        let db = Database::connect(&testdb.url, 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        db.run_script(old).await.unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..2 {
            switchyard::outbox::create_tables(&db)
                .await
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        }
        let columns = db
            .column_names("switchyard_outbox")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for c in ["plugin", "retry_at_ms"] {
            assert!(
                columns.iter().any(|have| have == c),
                "{backend:?}: {columns:?}"
            );
        }
        assert_eq!(
            scalar(
                &db,
                "SELECT count(*) FROM switchyard_outbox WHERE plugin = ''"
            )
            .await,
            1,
            "{backend:?}: the old row is the unnamed plugin's"
        );
        legacy_rows(
            &db,
            &[
                ("a", Some(9), "a-stuck".into(), 10, "e-a".into()),
                ("b", None, "b-1".into(), 10, "e-b".into()),
            ],
        )
        .await;
        let state = switchyard::outbox::state(&db)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        assert_eq!(state.backlog, 3, "{backend:?}");
        assert!(state.oldest_age_s >= 0, "{backend:?}");

        let metrics = std::sync::Arc::new(switchyard::metrics::Metrics::default());
        let relay = switchyard::relay::Relay::new(
            db.clone(),
            broker.producer(),
            std::sync::Arc::new(tokio::sync::Notify::new()),
            switchyard::relay::DeadLetters {
                topic: DLQ.into(),
                message_max_bytes: 1_000_000,
            },
            metrics.clone(),
        );
        let pass = relay
            .pass()
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e:#}"));
        assert_eq!(
            (pass.delivered, pass.quarantined, pass.failed, pass.parked),
            (2, 1, 0, 0),
            "{backend:?}"
        );
        assert_eq!(
            metrics.outbox_quarantined_count("a", "unknown_partition"),
            1
        );
        assert_eq!(relay.backlog().await.unwrap_or(-1), 0, "{backend:?}");
    }
}

/// A refused row whose dead letter fails too stays in the outbox (nothing
/// lost), waits outside the window, and does not hold the row behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_dead_letter_fails_is_kept_and_parked() {
    let broker = Broker::start();
    broker.create_topics(&[OUT], 2).await;
    let testdb = TestDb::new(Backend::Sqlite).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    switchyard::outbox::create_tables(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    legacy_rows(
        &db,
        &[
            ("a", None, "a-huge".into(), 5_000, "e-a".into()),
            ("a", None, "a-fine".into(), 10, "e-a2".into()),
        ],
    )
    .await;
    let metrics = std::sync::Arc::new(switchyard::metrics::Metrics::default());
    // A producer that refuses the large row, and a dead-letter limit
    // smaller than the dead letter's own headers: the dead letter cannot
    // be written either.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.max.bytes", "1000")
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let relay = switchyard::relay::Relay::new(
        db.clone(),
        producer,
        std::sync::Arc::new(tokio::sync::Notify::new()),
        switchyard::relay::DeadLetters {
            topic: DLQ.into(),
            message_max_bytes: 1_000_000,
        },
        metrics.clone(),
    );
    let pass = relay.pass().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        (pass.delivered, pass.quarantined, pass.parked),
        (1, 0, 1),
        "the fine row went, the huge one is parked"
    );
    let state = switchyard::outbox::state(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((state.backlog, state.parked), (1, 1));
    // Parked: the next pass leaves it alone.
    let again = relay.pass().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(again, switchyard::relay::Pass::default());
    assert!(metrics.last_dead_letter_failure().is_some());
    assert_eq!(
        metrics.outbox_quarantined_count("a", "message_too_large"),
        0
    );
}
