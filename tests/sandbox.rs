//! The sandbox in a live router: the `switchyard` binary, Tansu over TCP
//! and PostgreSQL, with a hostile plugin on one topic and the seed plugin
//! stats-increment on another. Every hostile event is stopped with a clear
//! reason and dead-lettered; the hostile plugin's good events and the other
//! plugin's events all take effect; a plugin that fails every call trips
//! its circuit breaker and its events are parked instead of holding the
//! partition.

mod common;

use common::{Broker, Router, TestDb, consume_until, eventually, produce, scalar};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::time::Duration;
use switchyard::database::Database;

const DLQ: &str = "switchyard.dlq";

fn write_config(dir: &Path, broker: &str, db_url: &str) -> std::path::PathBuf {
    let plugin_dir = common::plugin_dir_of("test-hostile");
    let text = format!(
        r#"
[kafka]
brokers = "{broker}"
group = "sandbox-test"
create_topics_partitions = 1

[database]
url = "{db_url}"

[dead_letter]
topic = "{DLQ}"

[retry]
max_attempts = 3
initial_backoff_ms = 10
max_backoff_ms = 50

[plugins]
dir = "{plugin_dir}"

# Breaker off: every hostile event must be judged on its own.
[plugins.test-hostile]
file = "test_hostile.wasm"
publish = ["hostile.out"]
limits = {{ deadline_ms = 300, memory_bytes = 16777216, statement_timeout_ms = 300, max_publish_bytes = 65536 }}
breaker = {{ failures = 0 }}

# The same build with a breaker that opens after two failed calls.
[plugins.test-fragile]
file = "test_fragile.wasm"
limits = {{ deadline_ms = 300 }}
breaker = {{ failures = 2, cooldown_ms = 600000 }}

[plugins.stats-increment]
file = "stats_increment.wasm"
publish = ["user.quota_exceeded"]

# The same attacks from plugins written in TypeScript and Python (their
# interpreters start with 9-13 MiB of memory, so a 64 MiB cap).
[plugins.test-hostile-ts]
file = "test_hostile_ts.wasm"
publish = ["hostile.out"]
limits = {{ deadline_ms = 1000, memory_bytes = 67108864, statement_timeout_ms = 300 }}
breaker = {{ failures = 0 }}

[plugins.test-hostile-py]
file = "test_hostile_py.wasm"
publish = ["hostile.out"]
limits = {{ deadline_ms = 1000, memory_bytes = 67108864, statement_timeout_ms = 300 }}
breaker = {{ failures = 0 }}

[[routes]]
topics = ["hostile-ts.cmds"]
plugins = ["test-hostile-ts"]

[[routes]]
topics = ["hostile-py.cmds"]
plugins = ["test-hostile-py"]

[[routes]]
topics = ["hostile.cmds"]
plugins = ["test-hostile"]

[[routes]]
topics = ["fragile.cmds"]
plugins = ["test-fragile"]

[[routes]]
topics = ["user.created"]
plugins = ["stats-increment"]
"#,
        plugin_dir = plugin_dir.display()
    );
    common::write_config(dir, &text)
}

fn sql(sql: &str) -> Json {
    json!({"do": "sql", "sql": sql})
}

fn mark(id: &str) -> Json {
    json!({"do": "sql", "sql": "INSERT INTO hostile_marks (id, note) VALUES ($1, 'good') RETURNING id", "params": [id]})
}

/// Each attack of issue 5's list, the outcome the dead letter must carry,
/// and words its reason must contain.
fn attacks() -> Vec<(&'static str, Json, &'static str, &'static str)> {
    vec![
        ("loop", json!({"do": "loop"}), "failed", "deadline exceeded"),
        (
            "memory-bomb",
            json!({"do": "oom"}),
            "failed",
            "memory limit exceeded",
        ),
        ("recursion", json!({"do": "recurse"}), "failed", "trap"),
        (
            "huge-publish",
            json!({"do": "publish", "topic": "hostile.out", "bytes": 1_000_000}),
            "rejected",
            "over the limit",
        ),
        (
            "forbidden-topic",
            json!({"do": "publish", "topic": "payments.commands", "bytes": 10}),
            "rejected",
            "not granted",
        ),
        (
            "other-plugins-table",
            sql("DELETE FROM user_stats"),
            "rejected",
            "statement denied: permission denied for table user_stats",
        ),
        (
            "reset-role",
            sql("RESET ROLE"),
            "rejected",
            "RESET statements are not allowed",
        ),
        (
            "set-timeout",
            sql("SET statement_timeout = 0"),
            "rejected",
            "SET statements are not allowed",
        ),
        // pg_sleep is not on the gate's allow-list; a long computation
        // made of allowed SQL is stopped by the statement timeout.
        (
            "pg-sleep",
            sql("SELECT pg_sleep(5)"),
            "rejected",
            "function pg_sleep is not allowed",
        ),
        (
            "slow-sql",
            sql(
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000) SELECT count(*) FROM r",
            ),
            "rejected",
            "statement timeout",
        ),
        (
            "huge-value",
            sql("SELECT repeat('x', 2000000000)"),
            "rejected",
            "database limit: requested length too large",
        ),
        (
            "several-statements",
            sql("SELECT 1; DELETE FROM hostile_marks"),
            "rejected",
            "several statements",
        ),
        (
            "ddl",
            sql("CREATE TABLE stolen (x int)"),
            "rejected",
            "CREATE TABLE statements are not allowed",
        ),
        (
            "copy-program",
            sql("COPY hostile_marks FROM PROGRAM 'id'"),
            "rejected",
            "COPY statements are not allowed",
        ),
        (
            "pg-read-file",
            sql("SELECT pg_read_file('/etc/passwd')"),
            "rejected",
            "pg_read_file is not allowed",
        ),
    ]
}

/// The attacks the TypeScript and Python hostile plugins make (the same
/// command format), by topic and plugin.
const POLYGLOT: [(&str, &str, &str); 2] = [
    ("hostile-ts.cmds", "test-hostile-ts", "ts"),
    ("hostile-py.cmds", "test-hostile-py", "py"),
];

fn polyglot_attacks() -> Vec<(&'static str, Json, &'static str, &'static str)> {
    attacks()
        .into_iter()
        .filter(|(case, ..)| {
            [
                "loop",
                "memory-bomb",
                "forbidden-topic",
                "other-plugins-table",
                "reset-role",
                "set-timeout",
                "several-statements",
                "ddl",
                "pg-read-file",
            ]
            .contains(case)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_in_a_live_router() {
    let broker = Broker::start();
    broker
        .create_topics(
            &[
                "hostile.cmds",
                "fragile.cmds",
                "hostile-ts.cmds",
                "hostile-py.cmds",
                "user.created",
                "hostile.out",
                "user.quota_exceeded",
                DLQ,
            ],
            1,
        )
        .await;
    // The host runs as a non-superuser, as production does.
    let testdb = TestDb::postgres_non_superuser().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = write_config(dir.path(), &broker.addr, &testdb.url);
    let router = Router::start(&config, &dir.path().join("router.log"), &[]);
    let ready = eventually(Duration::from_secs(60), || async {
        router.log_text().contains("partitions assigned")
    })
    .await;
    assert!(ready, "the router did not start:\n{}", router.log_text());
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = broker.producer();

    // The hostile topic: each attack between two good events.
    let attacks = attacks();
    for (i, (case, command, _, _)) in attacks.iter().enumerate() {
        let before = mark(&format!("good-{i}"));
        produce(
            &p,
            "hostile.cmds",
            None,
            &[("case", "good")],
            before.to_string().as_bytes(),
        )
        .await;
        produce(
            &p,
            "hostile.cmds",
            None,
            &[("case", case)],
            command.to_string().as_bytes(),
        )
        .await;
    }
    produce(
        &p,
        "hostile.cmds",
        None,
        &[("case", "good")],
        mark("good-last").to_string().as_bytes(),
    )
    .await;

    // The same attacks from TypeScript and Python, each case named
    // `<lang>:<case>`.
    let polyglot = polyglot_attacks();
    for (topic, _, lang) in POLYGLOT {
        for (case, command, _, _) in &polyglot {
            produce(
                &p,
                topic,
                None,
                &[("case", &format!("{lang}:{case}"))],
                command.to_string().as_bytes(),
            )
            .await;
        }
    }

    // The fragile plugin fails twice in a row: its circuit opens, and its
    // later events, good ones included, are parked rather than run.
    for command in [
        json!({"do": "loop"}),
        json!({"do": "loop"}),
        mark("fragile-1"),
    ] {
        produce(
            &p,
            "fragile.cmds",
            None,
            &[],
            command.to_string().as_bytes(),
        )
        .await;
    }

    // Meanwhile the seed plugin's traffic, from seed 001.
    let users = 200;
    for n in 0..users {
        let user = format!("u-{n}");
        let ev = json!({"eventId": format!("ev-{user}"), "eventType": "user.created", "timestamp": "2024-03-01T12:00:00Z",
            "userId": user, "data": {"keycloakId": "kc", "email": "ivan@example.com", "fullName": "Иван Петров"}});
        produce(
            &p,
            "user.created",
            Some(&user),
            &[],
            ev.to_string().as_bytes(),
        )
        .await;
    }

    // The other plugin's events all apply (on their own partition, while
    // the hostile one works through its attacks).
    let flowed = eventually(Duration::from_secs(60), || async {
        scalar(&db, "SELECT count(*) FROM user_stats").await == users
    })
    .await;
    assert!(flowed, "stats events stalled:\n{}", router.log_text());

    let expected_dead = attacks.len() + 3 + POLYGLOT.len() * polyglot.len();
    let dead = consume_until(&broker.addr, &[DLQ], Duration::from_secs(120), |m| {
        m.len() >= expected_dead
    })
    .await;
    assert_eq!(
        dead.len(),
        expected_dead,
        "dead letters: {:?}\n{}",
        dead.iter()
            .map(|d| d.header("switchyard.error"))
            .collect::<Vec<_>>(),
        router.log_text()
    );

    for (case, command, outcome, reason) in &attacks {
        let letter = dead
            .iter()
            .find(|d| d.header("case") == Some(case))
            .unwrap_or_else(|| panic!("no dead letter for {case}"));
        assert_eq!(
            letter.json(),
            *command,
            "{case}: the original value is kept"
        );
        assert_eq!(
            letter.header("switchyard.plugin"),
            Some("test-hostile"),
            "{case}"
        );
        assert_eq!(
            letter.header("switchyard.outcome"),
            Some(*outcome),
            "{case}"
        );
        let error = letter.header("switchyard.error").unwrap_or_default();
        assert!(error.contains(reason), "{case}: {error}");
    }
    for (_, plugin, lang) in POLYGLOT {
        for (case, command, outcome, reason) in &polyglot {
            let case = format!("{lang}:{case}");
            let letter = dead
                .iter()
                .find(|d| d.header("case") == Some(case.as_str()))
                .unwrap_or_else(|| panic!("no dead letter for {case}"));
            assert_eq!(
                letter.json(),
                *command,
                "{case}: the original value is kept"
            );
            assert_eq!(letter.header("switchyard.plugin"), Some(plugin), "{case}");
            assert_eq!(
                letter.header("switchyard.outcome"),
                Some(*outcome),
                "{case}"
            );
            let error = letter.header("switchyard.error").unwrap_or_default();
            assert!(error.contains(reason), "{case}: {error}");
        }
    }
    assert!(
        dead.iter().all(|d| d.header("case") != Some("good")),
        "no good event was dead-lettered"
    );
    let good_marks = scalar(
        &db,
        "SELECT count(*) FROM hostile_marks WHERE note = 'good'",
    )
    .await;
    assert_eq!(
        good_marks,
        attacks.len() as i64 + 1,
        "every good effect kept"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM hostile_marks WHERE note <> 'good'"
        )
        .await,
        0
    );

    let fragile: Vec<_> = dead
        .iter()
        .filter(|d| d.header("switchyard.plugin") == Some("test-fragile"))
        .collect();
    assert_eq!(fragile.len(), 3);
    // The breaker counts events, not attempts: the first loop fails all
    // its attempts and is dead-lettered with its own reason; the second
    // loop's first failure opens the circuit, so its next attempt and the
    // good event after it are parked.
    assert_eq!(fragile[0].header("switchyard.outcome"), Some("failed"));
    assert!(
        fragile[0]
            .header("switchyard.error")
            .is_some_and(|e| e.contains("deadline exceeded")),
        "{:?}",
        fragile[0].header("switchyard.error")
    );
    for letter in &fragile[1..] {
        assert_eq!(letter.header("switchyard.outcome"), Some("parked"));
        let error = letter.header("switchyard.error").unwrap_or_default();
        assert!(
            error
                .contains("circuit open for plugin test-fragile after 2 consecutive failed events")
                && error.contains("deadline exceeded"),
            "{error}"
        );
    }
    assert_eq!(
        fragile.last().map(|l| l.json()),
        Some(mark("fragile-1")),
        "parked in order, values kept for a replay"
    );
    let log = router.log_text();
    assert!(log.contains("circuit opened"), "{log}");
    // No table was created, and PostgreSQL's files were not read.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'stolen'"
        )
        .await,
        0
    );
}
