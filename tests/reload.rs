//! Hot reload end to end: the real binary, Tansu, PostgreSQL, and plugin
//! files and configs replaced on disk while events flow.

mod common;

use common::{
    Broker, Router, TestDb, consume_until, eventually, plugin_dir_of, plugin_path, produce,
    rows_of, scalar, value_after_reaching,
};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use switchyard::database::{Backend, Database};

/// Replace `path` the way tools do: write a temporary file, rename it over.
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{e}"));
}

async fn wait_for_log(router: &Router, needle: &str, count: usize, timeout: Duration) -> bool {
    eventually(timeout, || async {
        router.log_text().matches(needle).count() >= count
    })
    .await
}

/// Under a steady stream, the plugin file is replaced 20 times, alternating
/// two builds that write different markers, with bad files (truncated,
/// not a component, garbage) dropped in between. Every event is handled
/// exactly once by exactly one version, in order per partition; the bad
/// files never interrupt the flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_swapped_20_times_under_load_loses_and_doubles_nothing() {
    swapped_20_times_under_load(Order::Partition).await;
}

/// The same with the route in key order (the default): in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_swapped_20_times_in_key_order_keeps_each_key_in_order() {
    swapped_20_times_under_load(Order::Key).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Partition,
    Key,
}

async fn swapped_20_times_under_load(order: Order) {
    let broker = Broker::start();
    broker.create_topics(&["ticks", "switchyard.dlq"], 3).await;
    let testdb = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let build_a = std::fs::read(plugin_path("test-marker")).unwrap_or_default();
    let build_b = std::fs::read(plugin_path("test-marker-b")).unwrap_or_default();
    let live = dir.path().join("marker.wasm");
    std::fs::write(&live, &build_a).unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[database]\nurl = \"{}\"\n[plugins.test-marker]\nfile = \"marker.wasm\"\n[[routes]]\ntopics = [\"ticks\"]\nplugins = [\"test-marker\"]\n{}",
            broker.addr,
            testdb.url,
            if order == Order::Partition {
                "ordering = \"partition\"\n"
            } else {
                ""
            }
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let router = Router::start(&config, &dir.path().join("router.log"), &[]);
    assert!(
        wait_for_log(&router, "partitions assigned", 1, Duration::from_secs(60)).await,
        "{}",
        router.log_text()
    );

    // A steady stream: one event every 4 ms until told to stop.
    let produced = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer_task = {
        let (p, produced, stop) = (broker.producer(), produced.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                produce(
                    &p,
                    "ticks",
                    Some(&format!("k{}", i % 7)),
                    &[],
                    format!("{{\"n\": {i}}}").as_bytes(),
                )
                .await;
                produced.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };

    let bad_start = std::fs::read(plugin_path("test-bad-start")).unwrap_or_default();
    // A truncated build, a core module, garbage, a component of another
    // world, and a component whose start-up traps.
    let bad_files: [&[u8]; 5] = [
        &build_b[..build_b.len() / 2],
        b"\0asm\x01\0\0\0",
        b"not wasm at all",
        b"\0asm\x0d\0\x01\0",
        &bad_start,
    ];
    for swap in 0..20 {
        // A bad file first: it must be refused while the old version runs.
        replace_atomically(&live, bad_files[swap % bad_files.len()]);
        assert!(
            wait_for_log(&router, "reload refused", swap + 1, Duration::from_secs(20)).await,
            "bad file {swap} not refused:\n{}",
            router.log_text()
        );
        let next = if swap % 2 == 0 { &build_b } else { &build_a };
        replace_atomically(&live, next);
        assert!(
            wait_for_log(
                &router,
                "plugin reloaded",
                swap + 1,
                Duration::from_secs(20)
            )
            .await,
            "swap {swap} did not take:\n{}",
            router.log_text()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = producer_task.await;
    let total = produced.load(Ordering::Relaxed) as i64;

    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let handled = value_after_reaching(
        &db,
        "SELECT count(*) FROM marker_events",
        total,
        Duration::from_secs(60),
        Duration::from_secs(1),
        &router,
        "not every event was handled",
    )
    .await;
    assert_eq!(handled, total, "nothing handled twice");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM (SELECT DISTINCT kafka_partition, kafka_offset FROM marker_events) d").await,
        total,
        "every event handled by exactly one version"
    );
    // Order per partition (or per key): in commit order (id), offsets only
    // go up. An event starts after the one before it in order committed,
    // so its id is higher.
    let rows = rows_of(
        &db,
        "SELECT kafka_partition, kafka_offset, marker FROM marker_events ORDER BY id",
    )
    .await;
    let ticks = consume_until(&broker.addr, &["ticks"], Duration::from_secs(60), |m| {
        m.len() as i64 >= total
    })
    .await;
    let key_at: std::collections::HashMap<(i64, i64), String> = ticks
        .iter()
        .map(|m| {
            (
                (i64::from(m.partition), m.offset),
                m.key.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut last: std::collections::HashMap<(i64, String), i64> = std::collections::HashMap::new();
    let mut switches = 0;
    let mut prev_marker = String::new();
    for r in &rows {
        let (p, o) = (
            r["kafka_partition"].as_i64().unwrap_or(-1),
            r["kafka_offset"].as_i64().unwrap_or(-1),
        );
        let key = match order {
            Order::Partition => String::new(),
            Order::Key => key_at
                .get(&(p, o))
                .cloned()
                .unwrap_or_else(|| panic!("no tick read back at partition {p} offset {o}")),
        };
        if let Some(before) = last.insert((p, key.clone()), o) {
            assert!(o > before, "partition {p} {key}: offset {o} after {before}");
        }
        let m = r["marker"].as_str().unwrap_or_default().to_string();
        if m != prev_marker {
            switches += 1;
            prev_marker = m;
        }
    }
    assert!(
        switches >= 10,
        "the versions alternated in service ({switches} switches over {total} events)"
    );
    let dead = consume_until(
        &broker.addr,
        &["switchyard.dlq"],
        Duration::from_secs(5),
        |m| !m.is_empty(),
    )
    .await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    let log = router.log_text();
    assert!(
        log.contains("serving_after_ms="),
        "reloads report their time to serving"
    );
    assert!(log.contains("old_hash=") && log.contains("new_hash="));
    assert!(
        log.contains("this build cannot start"),
        "the trapping start-up is named:\n{log}"
    );
    assert!(log.contains("does not implement the switchyard:plugin/plugin world"));
    assert!(
        log.contains("wasm32-wasip2"),
        "the core module gets the build hint"
    );
}

/// A config reload adds a route for a new topic and changes a plugin
/// setting; both apply to the next event. A bad config is refused with
/// file, line and reason, and the last good one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_a_route_and_changes_a_setting() {
    let broker = Broker::start();
    broker
        .create_topics(
            &[
                "notification.send.welcome",
                "user.registered.v1",
                "notification.send.email",
                "switchyard.dlq",
            ],
            1,
        )
        .await;
    let testdb = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugin_dir = plugin_dir_of("welcome-notification");
    let config_text = |subject: &str, topics: &str, extra: &str| {
        format!(
            "[kafka]\nbrokers = \"{}\"\n[database]\nurl = \"{}\"\n[plugins]\ndir = \"{}\"\n[plugins.welcome-notification]\nfile = \"welcome_notification.wasm\"\npublish = [\"notification.send.email\"]\nsettings = {{ subject = \"{subject}\" }}\n[[routes]]\ntopics = [{topics}]\nplugins = [\"welcome-notification\"]\n{extra}",
            broker.addr,
            testdb.url,
            plugin_dir.display()
        )
    };
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        config_text("Hello {name}", "\"notification.send.welcome\"", ""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let router = Router::start(&config, &dir.path().join("router.log"), &[]);
    assert!(
        wait_for_log(&router, "partitions assigned", 1, Duration::from_secs(60)).await,
        "{}",
        router.log_text()
    );
    let p = broker.producer();
    let welcome = |user: &str| {
        json!({"userId": user, "email": format!("{user}@example.com"), "name": user}).to_string()
    };
    produce(
        &p,
        "notification.send.welcome",
        Some("u1"),
        &[],
        welcome("u1").as_bytes(),
    )
    .await;

    // New subject, and a route for user.registered.v1.
    replace_atomically(
        &config,
        config_text(
            "Hi {name}!",
            "\"notification.send.welcome\", \"user.registered.v1\"",
            "",
        )
        .as_bytes(),
    );
    assert!(
        wait_for_log(&router, "config reloaded", 1, Duration::from_secs(20)).await,
        "{}",
        router.log_text()
    );
    produce(
        &p,
        "notification.send.welcome",
        Some("u2"),
        &[],
        welcome("u2").as_bytes(),
    )
    .await;
    let registered = json!({"event": "user_registered", "id": "evt-3", "ts": 1, "v": 1,
        "payload": {"user_id": "u3", "email": "u3@example.com", "full_name": "U Three"}, "source": "auth-svc"});
    produce(
        &p,
        "user.registered.v1",
        Some("u3"),
        &[("event-id", "evt-3")],
        registered.to_string().as_bytes(),
    )
    .await;

    // A bad config: refused where it is wrong; the last good one serves.
    let bad = config_text(
        "Hi {name}!",
        "\"notification.send.welcome\", \"user.registered.v1\"",
        "[[routes]]\ntopics = [\"x\"]\nplugins = [\"nobody\"]\n",
    );
    replace_atomically(&config, bad.as_bytes());
    assert!(
        wait_for_log(&router, "config reload refused", 1, Duration::from_secs(20)).await,
        "{}",
        router.log_text()
    );
    let bad_line = bad
        .lines()
        .position(|l| l.contains("\"nobody\""))
        .map(|i| i + 1)
        .unwrap_or(0);
    let log = router.log_text();
    assert!(
        log.contains(&format!("switchyard.toml:{bad_line}:")),
        "file and line of the mistake:\n{log}"
    );
    assert!(log.contains("unknown plugin \"nobody\""), "{log}");
    produce(
        &p,
        "notification.send.welcome",
        Some("u4"),
        &[],
        welcome("u4").as_bytes(),
    )
    .await;

    let out = consume_until(
        &broker.addr,
        &["notification.send.email"],
        Duration::from_secs(40),
        |m| m.len() >= 4,
    )
    .await;
    let subjects: std::collections::BTreeMap<String, String> = out
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["userId"].as_str().unwrap_or_default().to_string(),
                v["subject"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: std::collections::BTreeMap<String, String> = [
        ("u1", "Hello u1"),
        ("u2", "Hi u2!"),
        ("u3", "Hi U Three!"),
        ("u4", "Hi u4!"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(subjects, expected, "{}", router.log_text());
}
