//! Chaos: events with unique ids stream through two routers (the real
//! binary, Tansu over TCP, PostgreSQL) while faults hit them, then an
//! invariant checker compares what went in with what came out.
//!
//! The plugin (`test-chaos`) writes an effect row with no unique key,
//! increments one shared counter and publishes one message per event; one
//! event in 97 is poison and rejected.
//!
//! Faults, one after another at randomised moments while events flow:
//! `kill -9` of a router (restarted after its session expires); every
//! PostgreSQL backend of the database terminated, mid-transaction, three
//! times; the database refusing connections for a while; the broker
//! frozen (`SIGSTOP`); a third router joining, then leaving (`SIGTERM`).
//!
//! The events carry one of 24 keys. The test runs twice, one run after the
//! other: with the route in key order (the default: a partition runs
//! different keys side by side) and in partition order.
//!
//! Pass: no effect lost, none doubled, each key's effects committed in the
//! order its events were produced, the counter equals the good events,
//! the output ids equal the good input ids (a redelivered output repeats
//! its `event-id`, so consumers can drop it), the dead-letter topic holds
//! exactly the poison events, and the consumer lag returns to 0.
//!
//! Short mode (the default, in CI): 3 000 events, an 8 s outage, a 3 s
//! freeze. Long mode: `SWITCHYARD_CHAOS=long cargo test -p switchyard
//! --test chaos -- --nocapture`: 20 000 events, a 30 s outage, a 10 s
//! freeze, two kills. `SWITCHYARD_CHAOS_SEED=N` replays a run's timing.

mod common;

use common::{Broker, Router, TestDb, consume_until, eventually, http_get, scalar};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::database::{Backend, Database};

const DLQ: &str = "switchyard.dlq";
const PARTITIONS: i32 = 4;

struct Mode {
    name: &'static str,
    events: usize,
    /// Events per second produced.
    rate: u64,
    outage: Duration,
    freeze: Duration,
    kills: usize,
}

fn mode() -> Mode {
    if std::env::var("SWITCHYARD_CHAOS").as_deref() == Ok("long") {
        Mode {
            name: "long",
            events: 20_000,
            rate: 200,
            outage: Duration::from_secs(30),
            freeze: Duration::from_secs(10),
            kills: 2,
        }
    } else {
        Mode {
            name: "short",
            events: 3_000,
            rate: 100,
            outage: Duration::from_secs(8),
            freeze: Duration::from_secs(3),
            kills: 1,
        }
    }
}

/// A small deterministic generator for the faults' timing (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration between `lo` and `hi`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis().max(1) as u64;
        lo + Duration::from_millis(self.next() % span)
    }
}

fn is_poison(i: usize) -> bool {
    i % 97 == 13
}

fn event_id(i: usize) -> String {
    format!("chaos-{i:06}")
}

/// Keys the events are spread over: many per partition, each with many
/// events.
const KEYS: usize = 24;

fn key_of(i: usize) -> String {
    format!("chaos-key-{:02}", i % KEYS)
}

/// The two runs take turns: each is heavy on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn write_config(dir: &Path, broker: &str, db_url: &str, ordering: &str) -> std::path::PathBuf {
    let plugin_dir = common::plugin_dir_of("test-chaos");
    let text = format!(
        r#"
[kafka]
brokers = "{broker}"
group = "chaos-test"

[database]
url = "{db_url}"
max_connections = 4

[dead_letter]
topic = "{DLQ}"

[retry]
max_attempts = 3
initial_backoff_ms = 20
max_backoff_ms = 1000

[admin]
address = "127.0.0.1:0"

[plugins]
dir = "{plugin_dir}"

[plugins.test-chaos]
file = "test_chaos.wasm"
publish = ["chaos.out"]

[[routes]]
topics = ["chaos.in"]
plugins = ["test-chaos"]
dedupe = {{ field = "/id" }}
ordering = "{ordering}"
"#,
        plugin_dir = plugin_dir.display(),
        ordering = ordering,
    );
    common::write_config(dir, &text)
}

async fn wait_joined(router: &Router, joins: usize) {
    let joined = eventually(Duration::from_secs(90), || async {
        router.log_text().matches("partitions assigned").count() >= joins
    })
    .await;
    assert!(joined, "router did not join:\n{}", router.log_text());
}

/// An admin connection (to the `postgres` database, not the one under
/// test) for the database faults.
async fn pg_admin() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&common::pg_admin_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Terminate every backend connected to `db` but the caller's; returns
/// how many.
async fn terminate_backends(admin: &mut sqlx::PgConnection, db: &str) -> i64 {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .unwrap_or_else(|e| panic!("terminating backends: {e}"));
    n
}

async fn allow_connections(admin: &mut sqlx::PgConnection, db: &str, allow: bool) {
    sqlx::query(&format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {allow}"
    ))
    .execute(admin)
    .await
    .unwrap_or_else(|e| panic!("ALTER DATABASE: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_or_doubled_under_faults() {
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos("key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_or_doubled_under_faults_in_partition_order() {
    let _turn = ONE_AT_A_TIME.lock().await;
    chaos("partition").await;
}

/// One chaos run with the route's `ordering`.
async fn chaos(ordering: &str) {
    let mode = mode();
    let seed = std::env::var("SWITCHYARD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    eprintln!(
        "chaos ({} mode): {} events at {}/s, seed {seed} (SWITCHYARD_CHAOS_SEED={seed} replays the timing)",
        mode.name, mode.events, mode.rate
    );
    let mut rng = Rng(seed);

    let broker = Broker::start();
    broker
        .create_topics(&["chaos.in", "chaos.out", DLQ], PARTITIONS)
        .await;
    let testdb = TestDb::new(Backend::Postgres).await;
    let db_name = testdb
        .url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = write_config(dir.path(), &broker.addr, &testdb.url, ordering);
    let mut a = Router::start(&config, &dir.path().join("a.log"), &[]);
    let mut b = Router::start(&config, &dir.path().join("b.log"), &[]);
    wait_joined(&a, 1).await;
    wait_joined(&b, 1).await;

    // The events, paced, from a task of their own.
    let producer = broker.producer();
    let (events, rate) = (mode.events, mode.rate);
    let started = Instant::now();
    let production = tokio::spawn(async move {
        let tick = Duration::from_micros(1_000_000 / rate.max(1));
        let mut sends = Vec::with_capacity(events);
        for i in 0..events {
            tokio::time::sleep_until((started + tick * i as u32).into()).await;
            let producer = producer.clone();
            sends.push(tokio::spawn(async move {
                let value =
                    serde_json::json!({"id": event_id(i), "poison": is_poison(i)}).to_string();
                let key = key_of(i);
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to("chaos.in")
                            .key(&key)
                            .payload(&value),
                        Duration::from_secs(120),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| format!("{key}: {e}"))
            }));
        }
        for s in sends {
            s.await.map_err(|e| e.to_string())??;
        }
        Ok::<_, String>(())
    });
    let production_time = Duration::from_millis(mode.events as u64 * 1000 / mode.rate);
    let at = |fraction: f64| started + production_time.mul_f64(fraction);
    let mut log = Vec::new();
    let mut admin = pg_admin().await;

    // 1. kill -9, restarted once its session (6 s) has expired.
    for k in 0..mode.kills {
        let base = 0.08 + 0.45 * k as f64;
        tokio::time::sleep_until(
            (at(base) + rng.between(Duration::ZERO, production_time / 20)).into(),
        )
        .await;
        let joins = a.log_text().matches("partitions assigned").count();
        a.kill9();
        log.push(format!("{:?}: kill -9 router a", started.elapsed()));
        tokio::time::sleep(Duration::from_secs(8)).await;
        a.restart();
        // The log is appended to: wait for a line after the restart.
        wait_joined(&a, joins + 1).await;
        log.push(format!("{:?}: router a back", started.elapsed()));
    }

    // 2. Backends terminated, three times.
    for _ in 0..3 {
        tokio::time::sleep(rng.between(Duration::from_millis(300), Duration::from_millis(1500)))
            .await;
        let n = terminate_backends(&mut admin, &db_name).await;
        log.push(format!(
            "{:?}: {n} PostgreSQL backends terminated",
            started.elapsed()
        ));
    }

    // 3. The database unavailable.
    tokio::time::sleep_until(
        (at(0.30).max(Instant::now()) + rng.between(Duration::ZERO, Duration::from_secs(2))).into(),
    )
    .await;
    allow_connections(&mut admin, &db_name, false).await;
    let n = terminate_backends(&mut admin, &db_name).await;
    log.push(format!(
        "{:?}: database refuses connections ({n} backends terminated)",
        started.elapsed()
    ));
    tokio::time::sleep(mode.outage).await;
    allow_connections(&mut admin, &db_name, true).await;
    log.push(format!("{:?}: database back", started.elapsed()));

    // 4. The broker frozen.
    tokio::time::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(3))).await;
    broker.pause();
    log.push(format!("{:?}: broker frozen", started.elapsed()));
    tokio::time::sleep(mode.freeze).await;
    broker.resume();
    log.push(format!("{:?}: broker resumed", started.elapsed()));

    // 5. A third router joins, then leaves.
    tokio::time::sleep(rng.between(Duration::from_secs(2), Duration::from_secs(4))).await;
    let mut c = Router::start(&config, &dir.path().join("c.log"), &[]);
    wait_joined(&c, 1).await;
    log.push(format!("{:?}: router c joined", started.elapsed()));
    tokio::time::sleep(rng.between(Duration::from_secs(6), Duration::from_secs(9))).await;
    let status = c.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "router c did not stop cleanly on SIGTERM: {status:?}\n{}",
        c.log_text()
    );
    log.push(format!("{:?}: router c left (SIGTERM)", started.elapsed()));

    match production.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("producing: {e}"),
        Err(e) => panic!("producer task: {e}"),
    }
    log.push(format!(
        "{:?}: all {} events produced",
        started.elapsed(),
        mode.events
    ));
    for line in &log {
        eprintln!("chaos: {line}");
    }

    // Wait for every event to be handled or dead-lettered.
    let good: BTreeSet<String> = (0..mode.events)
        .filter(|i| !is_poison(*i))
        .map(event_id)
        .collect();
    let poison: BTreeSet<String> = (0..mode.events)
        .filter(|i| is_poison(*i))
        .map(event_id)
        .collect();
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let markers = "SELECT count(*) FROM switchyard_processed WHERE plugin = 'test-chaos' AND outcome IN ('handled', 'dead-lettered') AND topic = 'chaos.in'";
    let settled = eventually(Duration::from_secs(300), || async {
        scalar(&db, markers).await == mode.events as i64
    })
    .await;
    // The last lines of each router's log, for failure messages.
    let tail = |text: String| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let logs = || {
        format!(
            "router a, last lines:\n{}\nrouter b, last lines:\n{}",
            tail(a.log_text()),
            tail(b.log_text())
        )
    };
    assert!(
        settled,
        "{} of {} events marked after 300 s\n{}",
        scalar(&db, markers).await,
        mode.events,
        logs()
    );

    // Effects: each good event once, no poison one.
    let rows = common::rows_of(
        &db,
        "SELECT event_id, count(*) AS n FROM chaos_effects GROUP BY event_id",
    )
    .await;
    let effects: HashMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap_or_default().to_string(),
                r["n"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let lost: Vec<&String> = good
        .iter()
        .filter(|id| !effects.contains_key(*id))
        .collect();
    let doubled: Vec<(&String, &i64)> = effects.iter().filter(|(_, n)| **n != 1).collect();
    let stray: Vec<&String> = effects.keys().filter(|id| !good.contains(*id)).collect();
    let counter = scalar(&db, "SELECT n FROM chaos_counter WHERE id = 1").await;
    // Each key's effects in the order its events were produced (the
    // effect rows' commit-time clock; ties fall back to the id, which
    // cannot flag a reordering that did not happen).
    let in_commit_order = common::rows_of(
        &db,
        "SELECT event_id FROM chaos_effects ORDER BY created_at, event_id",
    )
    .await;
    let mut last_of_key: HashMap<String, usize> = HashMap::new();
    let mut reordered: Vec<String> = Vec::new();
    for r in &in_commit_order {
        let id = r["event_id"].as_str().unwrap_or_default();
        let Some(i) = id
            .strip_prefix("chaos-")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if let Some(prev) = last_of_key.insert(key_of(i), i)
            && prev > i
        {
            reordered.push(format!("{} ran after {}", event_id(i), event_id(prev)));
        }
    }

    // The outbox drains: every committed message reaches the broker.
    let drained = eventually(Duration::from_secs(180), || async {
        scalar(&db, "SELECT count(*) FROM switchyard_outbox").await == 0
    })
    .await;
    assert!(
        drained,
        "{} messages still in the outbox after 180 s\n{}",
        scalar(&db, "SELECT count(*) FROM switchyard_outbox").await,
        logs()
    );

    // Outputs: the good ids, each with one event-id however often sent.
    let outputs = consume_until(
        &broker.addr,
        &["chaos.out"],
        Duration::from_secs(120),
        // Cheap until there are enough messages: the distinct count parses
        // every value, and this runs after each one.
        |m| {
            m.len() >= good.len()
                && m.iter()
                    .filter_map(|r| r.json()["id"].as_str().map(str::to_string))
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= good.len()
        },
    )
    .await;
    let mut output_event_ids: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in &outputs {
        let id = r.json()["id"].as_str().unwrap_or_default().to_string();
        output_event_ids
            .entry(id)
            .or_default()
            .insert(r.header("event-id").unwrap_or_default().to_string());
    }
    let output_ids: BTreeSet<String> = output_event_ids.keys().cloned().collect();
    // Per partition: what the broker holds, and what was read.
    let holds = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        (0..PARTITIONS)
            .map(|p| {
                let (low, high) = c
                    .fetch_watermarks("chaos.out", p, Duration::from_secs(10))
                    .unwrap_or((-1, -1));
                let read = outputs.iter().filter(|r| r.partition == p).count();
                format!("chaos.out/{p}: offsets {low}..{high}, read {read}")
            })
            .collect::<Vec<_>>()
    };
    let ambiguous = output_event_ids.values().filter(|e| e.len() != 1).count();

    // Dead letters: exactly the poison events.
    let dead = consume_until(&broker.addr, &[DLQ], Duration::from_secs(60), |m| {
        m.len() >= poison.len()
            && m.iter()
                .filter_map(|r| r.json()["id"].as_str().map(str::to_string))
                .collect::<BTreeSet<_>>()
                .len()
                >= poison.len()
    })
    .await;
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(str::to_string))
        .collect();

    // Lag back to 0 on the routers still running.
    let mut lag_lines = Vec::new();
    for r in [&a, &b] {
        let address = common::admin_address(&r.log_text())
            .unwrap_or_else(|| panic!("no admin address:\n{}", r.log_text()));
        let zero = eventually(Duration::from_secs(60), || {
            let address = address.clone();
            async move {
                let (_, text) = http_get(&address, "/metrics").await;
                let lags: Vec<String> = text
                    .lines()
                    .filter(|l| l.starts_with("switchyard_consumer_lag{"))
                    .map(str::to_string)
                    .collect();
                !lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0"))
            }
        })
        .await;
        let (_, text) = http_get(&address, "/metrics").await;
        lag_lines.extend(
            text.lines()
                .filter(|l| l.starts_with("switchyard_consumer_lag{"))
                .map(str::to_string),
        );
        assert!(zero, "lag did not return to 0:\n{lag_lines:?}");
    }

    eprintln!(
        "chaos ({} order): {} events ({} poison): lost {}, doubled {}, stray {}, reordered {}, counter {}, outputs {} distinct of {} delivered ({} ids with more than one event-id; {holds:?}), dead letters {} distinct of {} delivered; lag {:?}",
        ordering,
        mode.events,
        poison.len(),
        lost.len(),
        doubled.len(),
        stray.len(),
        reordered.len(),
        counter,
        output_ids.len(),
        outputs.len(),
        ambiguous,
        dead_ids.len(),
        dead.len(),
        lag_lines
    );
    assert!(
        lost.is_empty(),
        "{} lost effects (first {:?})",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        doubled.is_empty(),
        "{} doubled effects (first {:?})",
        doubled.len(),
        &doubled[..doubled.len().min(10)]
    );
    assert!(
        stray.is_empty(),
        "{} effects of poison events (first {:?})",
        stray.len(),
        &stray[..stray.len().min(10)]
    );
    assert!(
        reordered.is_empty(),
        "{} events of a key committed after a later one of the same key (first {:?})",
        reordered.len(),
        &reordered[..reordered.len().min(10)]
    );
    assert_eq!(counter, good.len() as i64, "counter");
    let missing: Vec<&String> = good.difference(&output_ids).collect();
    let extra: Vec<&String> = output_ids.difference(&good).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "output ids: {} missing (first {:?}), {} unexpected (first {:?}); {holds:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
    assert_eq!(ambiguous, 0, "an output id published with two event-ids");
    let dead_missing: Vec<&String> = poison.difference(&dead_ids).collect();
    let dead_extra: Vec<&String> = dead_ids.difference(&poison).collect();
    assert!(
        dead_missing.is_empty() && dead_extra.is_empty(),
        "dead-lettered ids: {} poison events missing (first {:?}), {} good ones there (first {:?})",
        dead_missing.len(),
        &dead_missing[..dead_missing.len().min(10)],
        dead_extra.len(),
        &dead_extra[..dead_extra.len().min(10)]
    );
    assert!(
        dead.iter()
            .all(|r| r.header("switchyard.outcome") == Some("rejected")),
        "a dead letter other than a rejected poison event"
    );
    for r in [&mut a, &mut b] {
        let status = r.terminate(Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}
