//! The router end to end, as its users run it: the `switchyard` binary, a
//! real Kafka-protocol broker (Tansu) over TCP, PostgreSQL, and a real
//! Kafka client producing the seeds' events in their own formats.

mod common;

use common::{
    Broker, Proxy, Router, TestDb, consume_until, eventually, produce, rows_of, scalar,
    value_after_reaching,
};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use switchyard::database::{Backend, Database};

const INPUT_TOPICS: [&str; 9] = [
    "USER_CREATED",
    "USER_STATUS_CHANGED",
    "USER_ROLE_CHANGED",
    "create-user",
    "user.created",
    "interview.created",
    "media.uploaded",
    "user.registered.v1",
    "notification.send.welcome",
];
const OUTPUT_TOPICS: [&str; 4] = [
    "create-user-response",
    "notification.send.email",
    "user.quota_exceeded",
    "switchyard.dlq",
];

/// The shipped config with this test's broker, database and plugin builds,
/// and a quick retry policy.
fn write_config(dir: &Path, broker: &str, db_url: &str) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(common::root().join("config/switchyard.toml"))
        .unwrap_or_else(|e| panic!("config/switchyard.toml: {e}"));
    let plugin_dir = common::plugin_dir_of("role-mapping");
    let text = shipped
        .replace(
            "brokers = \"127.0.0.1:9092\"",
            &format!("brokers = \"{broker}\""),
        )
        .replace(
            "url = \"sqlite:.switchyard/switchyard.db\"",
            &format!("url = \"{db_url}\""),
        )
        .replace(
            "dir = \"../target/wasm32-wasip2/plugin\"",
            &format!("dir = \"{}\"", plugin_dir.display()),
        )
        .replace("address = \"127.0.0.1:9180\"", "address = \"127.0.0.1:0\"")
        .replace("max_attempts = 5", "max_attempts = 3")
        .replace("initial_backoff_ms = 100", "initial_backoff_ms = 20")
        .replace("max_backoff_ms = 10000", "max_backoff_ms = 200");
    common::write_config(dir, &text)
}

async fn setup(partitions: i32) -> (Broker, TestDb, tempfile::TempDir, std::path::PathBuf) {
    setup_on(partitions, Backend::Postgres).await
}

/// A broker with the seeds' topics, a database, and the shipped config
/// pointed at both. On SQLite the database is a file in the temporary
/// directory, which the router, the test and the CLI all open.
async fn setup_on(
    partitions: i32,
    backend: Backend,
) -> (Broker, TestDb, tempfile::TempDir, std::path::PathBuf) {
    let broker = Broker::start();
    let mut topics: Vec<&str> = INPUT_TOPICS.to_vec();
    topics.extend(OUTPUT_TOPICS);
    broker.create_topics(&topics, partitions).await;
    let mut db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    if backend == Backend::Sqlite {
        db.url = format!("sqlite:{}", dir.path().join("switchyard.db").display());
    }
    let config = write_config(dir.path(), &broker.addr, &db.url);
    (broker, db, dir, config)
}

async fn wait_ready(router: &Router) {
    let ready = eventually(Duration::from_secs(60), || async {
        router.log_text().contains("partitions assigned")
    })
    .await;
    assert!(
        ready,
        "the router did not join the group:\n{}",
        router.log_text()
    );
}

/// Seed 001's `user.created` for `user`, produced and then awaited: the
/// stats row exists before the test sends the user's interviews (Kafka
/// orders events within a partition, not across topics).
async fn create_stats_user(
    p: &rdkafka::producer::FutureProducer,
    db: &Database,
    router: &Router,
    user: &str,
) {
    let ev = json!({"eventId": format!("ev-{user}"), "eventType": "user.created", "timestamp": "2024-03-01T12:00:00Z",
        "userId": user, "data": {"keycloakId": "kc", "email": "ivan@example.com", "fullName": "Иван Петров"}});
    produce(
        p,
        "user.created",
        Some(user),
        &[],
        ev.to_string().as_bytes(),
    )
    .await;
    let sql = format!("SELECT count(*) FROM user_stats WHERE user_id = '{user}'");
    let created = eventually(Duration::from_secs(60), || async {
        scalar(db, &sql).await == 1
    })
    .await;
    assert!(
        created,
        "user.created for {user} not handled:\n{}",
        router.log_text()
    );
}

/// Seed 001's `user.created` for `user-0` .. `user-{n-1}`, awaited: their
/// stats rows exist before the test sends their interviews.
async fn create_users(
    p: &rdkafka::producer::FutureProducer,
    db: &Database,
    n: usize,
    routers: &[&Router],
) {
    for u in 0..n {
        let user = format!("user-{u}");
        let ev = json!({"eventId": format!("created-{u}"), "eventType": "user.created",
            "timestamp": "2024-03-01T12:00:00Z", "userId": user, "data": {}});
        produce(
            p,
            "user.created",
            Some(&user),
            &[],
            ev.to_string().as_bytes(),
        )
        .await;
    }
    let created = eventually(Duration::from_secs(90), || async {
        scalar(db, "SELECT count(*) FROM user_stats").await == n as i64
    })
    .await;
    if !created {
        let logs: Vec<String> = routers.iter().map(|r| r.log_text()).collect();
        panic!("users not created:\n{}", logs.join("\n---\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_events_flow_end_to_end() {
    let (broker, testdb, dir, config) = setup(3).await;
    let mut router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    db.run_script("INSERT INTO customers (id, name) VALUES ('cust-1', 'Boulangerie Durand SARL')")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = broker.producer();

    // Seed 002: a NestJS emit (topic = pattern, value = JSON).
    let user_created = json!({"userId": "auth0|owner", "name": "Amélie Durand", "email": "amelie@boulangerie.fr",
        "role": "user", "userType": "SME_OWNER", "customerAccountId": "cust-1", "customerName": "Boulangerie Durand SARL",
        "timestamp": "2024-05-14T09:30:00.000Z"});
    produce(
        &p,
        "USER_CREATED",
        None,
        &[],
        user_created.to_string().as_bytes(),
    )
    .await;
    // Seed 000: the Persian create-user request.
    let create_user = json!({"requestId": "req-fa-1", "firstName": "احمد", "lastName": "محمدی", "email": "ahmad@example.com",
        "nationalCode": 1234567890, "birthDate": "1990-01-01"});
    produce(
        &p,
        "create-user",
        Some("req-fa-1"),
        &[],
        create_user.to_string().as_bytes(),
    )
    .await;
    // Seed 001: a user, an interview delivered twice (same eventId), a file.
    create_stats_user(&p, &db, &router, "u-ru").await;
    let interview = json!({"eventId": "ev-i1", "eventType": "interview.created", "userId": "u-ru", "data": {"interviewId": "iv-1"}});
    produce(
        &p,
        "interview.created",
        Some("u-ru"),
        &[],
        interview.to_string().as_bytes(),
    )
    .await;
    produce(
        &p,
        "interview.created",
        Some("u-ru"),
        &[],
        interview.to_string().as_bytes(),
    )
    .await;
    let media = json!({"eventId": "ev-m1", "eventType": "media.uploaded", "userId": "u-ru", "data": {"fileId": "f-1", "fileSize": 1048576}});
    produce(
        &p,
        "media.uploaded",
        Some("u-ru"),
        &[],
        media.to_string().as_bytes(),
    )
    .await;
    // Seed 004: the aiokafka envelope with its four headers, sent twice.
    let registered = json!({"event": "user_registered", "id": "evt-es-1", "ts": 1696599999999i64, "v": 1,
        "payload": {"user_id": "u-es", "email": "lucia@example.com", "full_name": "Lucía Fernández"}, "source": "auth-svc"});
    let headers = [
        ("event-type", "user_registered"),
        ("event-id", "evt-es-1"),
        ("content-type", "application/json"),
        ("request-id", "req-abc-123"),
    ];
    produce(
        &p,
        "user.registered.v1",
        Some("u-es"),
        &headers,
        registered.to_string().as_bytes(),
    )
    .await;
    produce(
        &p,
        "user.registered.v1",
        Some("u-es"),
        &headers,
        registered.to_string().as_bytes(),
    )
    .await;
    // Poison: not JSON, and an unknown EventUserType.
    produce(
        &p,
        "create-user",
        Some("poison-1"),
        &[("request-id", "bad-1")],
        b"{not json",
    )
    .await;
    let mut bad_type = user_created.clone();
    bad_type["userId"] = json!("auth0|bad");
    bad_type["userType"] = json!("EMPEROR");
    produce(
        &p,
        "USER_CREATED",
        None,
        &[],
        bad_type.to_string().as_bytes(),
    )
    .await;

    let settled = eventually(Duration::from_secs(60), || async {
        scalar(&db, "SELECT count(*) FROM customer_users").await == 1
            && scalar(&db, "SELECT count(*) FROM profiles").await == 1
            && scalar(&db, "SELECT count(*) FROM welcome_notifications").await == 1
            && scalar(
                &db,
                "SELECT coalesce(sum(storage_used), 0)::bigint FROM user_stats",
            )
            .await
                == 1048576
    })
    .await;
    assert!(settled, "effects did not appear:\n{}", router.log_text());
    let stats = rows_of(
        &db,
        "SELECT interviews_created, storage_used FROM user_stats WHERE user_id = 'u-ru'",
    )
    .await;
    assert_eq!(
        stats,
        vec![json!({"interviews_created": 1, "storage_used": 1048576})],
        "the duplicate eventId counted once"
    );
    let owner = rows_of(
        &db,
        "SELECT role, user_type, is_company_owner FROM customer_users",
    )
    .await;
    assert_eq!(
        owner,
        vec![json!({"role": "CUSTOMER_ADMIN", "user_type": "SME", "is_company_owner": true})]
    );
    let profile = rows_of(&db, "SELECT id::text AS id, first_name FROM profiles").await;
    assert_eq!(profile[0]["first_name"], json!("احمد"));

    let out = consume_until(&broker.addr, &OUTPUT_TOPICS, Duration::from_secs(30), |m| {
        m.iter().filter(|r| r.topic == "switchyard.dlq").count() >= 2
            && m.iter().any(|r| r.topic == "create-user-response")
            && m.iter().any(|r| r.topic == "notification.send.email")
    })
    .await;
    let responses: Vec<_> = out
        .iter()
        .filter(|r| r.topic == "create-user-response")
        .collect();
    assert_eq!(responses.len(), 1, "{out:?}");
    assert_eq!(responses[0].key.as_deref(), Some("req-fa-1"));
    assert_eq!(responses[0].json()["id"], profile[0]["id"]);
    assert_eq!(responses[0].json()["firstName"], json!("احمد"));
    assert!(responses[0].header("event-id").is_some());

    let emails: Vec<_> = out
        .iter()
        .filter(|r| r.topic == "notification.send.email")
        .collect();
    assert_eq!(emails.len(), 1, "exactly one welcome: {out:?}");
    assert_eq!(emails[0].header("request-id"), Some("req-abc-123"));
    assert_eq!(
        emails[0].json()["subject"],
        json!("Welcome, Lucía Fernández!")
    );

    let dead: Vec<_> = out.iter().filter(|r| r.topic == "switchyard.dlq").collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let poison = dead
        .iter()
        .find(|r| r.value == b"{not json")
        .unwrap_or_else(|| panic!("{dead:?}"));
    assert_eq!(poison.key.as_deref(), Some("poison-1"));
    assert_eq!(
        poison.header("request-id"),
        Some("bad-1"),
        "original headers kept"
    );
    assert_eq!(poison.header("switchyard.plugin"), Some("profile-creation"));
    assert_eq!(
        poison.header("switchyard.origin-topic"),
        Some("create-user")
    );
    assert_eq!(poison.header("switchyard.outcome"), Some("rejected"));
    assert_eq!(poison.header("switchyard.attempts"), Some("1"));
    assert!(poison.header("switchyard.origin-partition").is_some());
    assert!(
        poison
            .header("switchyard.origin-offset")
            .is_some_and(|o| o.parse::<i64>().is_ok())
    );
    assert!(
        poison
            .header("switchyard.error")
            .is_some_and(|e| e.contains("invalid payload"))
    );
    let emperor = dead
        .iter()
        .find(|r| r.header("switchyard.plugin") == Some("role-mapping"))
        .unwrap_or_else(|| panic!("{dead:?}"));
    assert!(
        emperor
            .header("switchyard.error")
            .is_some_and(|e| e.contains("EMPEROR"))
    );

    // The admin server counts what happened and shows what runs.
    let admin = common::admin_address(&router.log_text())
        .unwrap_or_else(|| panic!("no admin address in the log:\n{}", router.log_text()));
    // Whole lines, read until they settle: the relay may still be sending
    // and the lag comes from statistics refreshed every second.
    let wanted = [
        r#"switchyard_events_total{plugin="role-mapping",outcome="done"} 1"#,
        r#"switchyard_events_total{plugin="stats-increment",outcome="duplicate"} 1"#,
        r#"switchyard_dead_letters_total{plugin="profile-creation",outcome="rejected"} 1"#,
        "switchyard_outbox_backlog 0",
    ];
    let last = std::sync::Mutex::new(String::new());
    let settled = eventually(Duration::from_secs(30), || {
        let (admin, last) = (admin.clone(), &last);
        async move {
            let (code, text) = common::http_get(&admin, "/metrics").await;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = text.clone();
            let lines: Vec<&str> = text.lines().collect();
            let lags: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with("switchyard_consumer_lag{"))
                .collect();
            code == 200
                && wanted.iter().all(|w| lines.contains(w))
                && lags.iter().any(|l| {
                    l.starts_with(r#"switchyard_consumer_lag{topic="create-user",partition="#)
                })
                && lags.iter().all(|l| l.ends_with(" 0"))
        }
    })
    .await;
    let metrics = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(settled, "/metrics did not settle:\n{metrics}");
    for part in [
        r#"switchyard_plugin_call_seconds_count{plugin="welcome-notification"}"#,
        r#"switchyard_event_latency_seconds_bucket{le="#,
        r#"switchyard_plugin_info{plugin="stats-increment",version="#,
    ] {
        assert!(metrics.contains(part), "{part} not in /metrics:\n{metrics}");
    }
    let (code, health) = common::http_get(&admin, "/health").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["database"]["ok"], true);
    assert_eq!(health["kafka"]["ok"], true);
    assert_eq!(health["plugins"]["role-mapping"]["state"], "serving");
    assert!(
        health["plugins"]["profile-creation"]["last_error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("invalid payload")),
        "{health}"
    );
    let (_, plugins) = common::http_get(&admin, "/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap_or_default();
    let names: Vec<&str> = plugins
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        vec![
            "profile-creation",
            "role-mapping",
            "stats-increment",
            "welcome-notification"
        ]
    );
    assert_eq!(plugins[2]["hash"].as_str().map(str::len), Some(12));
    assert_eq!(
        plugins[2]["database"]["tables"],
        // What its role owns, read from the catalog (sorted).
        json!(["stats_processed_events", "user_stats"])
    );
    assert_eq!(
        plugins[0]["publish"],
        json!(["create-user-response", "*.reply"])
    );
    let (_, routes) = common::http_get(&admin, "/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap_or_default();
    assert_eq!(
        routes["user.created"][0]["plugins"],
        json!(["stats-increment"])
    );
    assert_eq!(
        routes["user.created"][0]["dedupe"],
        "event id from field /eventId"
    );
    assert_eq!(routes["user.created"][0]["ordering"], "key");

    let status = router.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful exit 0: {status:?}\n{}",
        router.log_text()
    );
    assert!(router.log_text().contains("switchyard stopped"));

    // A restart resumes right after the last handled event on every
    // partition: nothing skipped, nothing handled twice.
    for i in 0..6 {
        let ev = json!({"eventId": format!("ev-after-{i}"), "eventType": "interview.created", "userId": "u-ru", "data": {"interviewId": i}});
        produce(
            &p,
            "interview.created",
            Some(&format!("k{i}")),
            &[],
            ev.to_string().as_bytes(),
        )
        .await;
    }
    router.restart();
    let interviews = "SELECT interviews_created FROM user_stats WHERE user_id = 'u-ru'";
    let settled = value_after_reaching(
        &db,
        interviews,
        7,
        Duration::from_secs(60),
        Duration::from_secs(2),
        &router,
        "events produced while stopped were not all handled",
    )
    .await;
    assert_eq!(settled, 7);
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE dedupe_key LIKE 'id:ev-after-%'"
        )
        .await,
        6
    );
    let status = router.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
    let log = router.log_text();
    let second_run = log.rsplit("switchyard running").next().unwrap_or_default();
    assert!(
        !second_run.contains("duplicate: already handled"),
        "a restart after a graceful stop re-handles nothing:\n{second_run}"
    );
}

/// `kill -9` in the middle of a stream, then a restart: every effect is
/// counted exactly once, and each quota crossing is published once (by
/// event id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_counts_exactly_once() {
    const USERS: usize = 30;
    const PER_USER: usize = 100;
    let (broker, testdb, dir, config) = setup(3).await;
    let mut router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = broker.producer();
    create_users(&p, &db, USERS, &[&router]).await;
    // No eventId: these are deduplicated by their Kafka position only.
    let sends: Vec<_> = (0..USERS * PER_USER)
        .map(|i| {
            let user = format!("user-{}", i % USERS);
            let value = json!({"eventType": "interview.created", "userId": user, "data": {"interviewId": format!("iv-{i}")}}).to_string();
            (user, value)
        })
        .collect();
    // All at once, so that the router is still busy when it is killed.
    let deliveries = sends.iter().map(|(user, value)| {
        p.send(
            rdkafka::producer::FutureRecord::<str, str>::to("interview.created")
                .key(user)
                .payload(value),
            Duration::from_secs(30),
        )
    });
    for d in futures_util::future::join_all(deliveries).await {
        d.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    let total = "SELECT coalesce(sum(interviews_created), 0) FROM user_stats";
    assert!(
        eventually(Duration::from_secs(60), || async {
            scalar(&db, total).await >= 300
        })
        .await,
        "no progress:\n{}",
        router.log_text()
    );
    router.kill9();
    let at_kill = scalar(&db, total).await;
    assert!(
        at_kill < (USERS * PER_USER) as i64,
        "the kill came after the stream ended ({at_kill}): nothing was tested"
    );
    router.restart();
    let expected = (USERS * PER_USER) as i64;
    let settled = value_after_reaching(
        &db,
        total,
        expected,
        Duration::from_secs(120),
        Duration::from_secs(2),
        &router,
        &format!("stalled after the restart (killed at {at_kill})"),
    )
    .await;
    assert_eq!(settled, expected, "every interview counted exactly once");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE plugin = 'stats-increment'"
        )
        .await,
        expected + USERS as i64
    );

    // Each user crossed the interviews quota once (10 → 11): the outbox may
    // resend after the kill, with the same event-id, never lose one.
    let out = consume_until(
        &broker.addr,
        &["user.quota_exceeded"],
        Duration::from_secs(30),
        |m| {
            let mut ids: Vec<_> = m
                .iter()
                .filter_map(|r| r.header("event-id").map(str::to_string))
                .collect();
            ids.sort();
            ids.dedup();
            ids.len() >= USERS
        },
    )
    .await;
    let mut by_id = std::collections::HashMap::new();
    for r in &out {
        by_id.insert(
            r.header("event-id").unwrap_or_default().to_string(),
            r.json(),
        );
    }
    assert_eq!(by_id.len(), USERS, "one quota notice per user, by event id");
    let mut users: Vec<_> = by_id
        .values()
        .map(|v| v["userId"].as_str().unwrap_or_default().to_string())
        .collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), USERS);
    assert!(
        by_id
            .values()
            .all(|v| v["used"] == json!(11) && v["limit"] == json!(10))
    );
    eprintln!(
        "killed at {at_kill}/{expected}; {} quota messages for {} ids",
        out.len(),
        by_id.len()
    );
}

/// The database goes away for a while: the router pauses, retries without
/// spending any event's attempts, and resumes by itself; nothing is
/// dead-lettered and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_pauses_and_resumes_without_dead_letters() {
    let (broker, testdb, dir, _) = setup(3).await;
    let pg = testdb
        .url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let proxy = Proxy::start(&pg).await;
    let proxied_url = testdb.url.replace(&pg, &proxy.addr);
    let config = write_config(dir.path(), &broker.addr, &proxied_url);
    let mut router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = broker.producer();
    create_stats_user(&p, &db, &router, "u1").await;

    proxy.cut();
    for i in 0..50 {
        let ev = json!({"eventId": format!("ev-{i}"), "eventType": "interview.created", "userId": "u1", "data": {"interviewId": i}});
        produce(
            &p,
            "interview.created",
            Some(&format!("k{i}")),
            &[],
            ev.to_string().as_bytes(),
        )
        .await;
    }
    // Far longer than the whole retry budget (3 attempts, 200 ms cap).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        scalar(&db, "SELECT interviews_created FROM user_stats").await,
        0,
        "nothing can commit during the outage"
    );
    proxy.restore();

    let interviews = "SELECT interviews_created FROM user_stats WHERE user_id = 'u1'";
    let settled = value_after_reaching(
        &db,
        interviews,
        50,
        Duration::from_secs(90),
        Duration::from_secs(1),
        &router,
        "did not resume",
    )
    .await;
    assert_eq!(settled, 50);
    let dead = consume_until(
        &broker.addr,
        &["switchyard.dlq"],
        Duration::from_secs(8),
        |m| !m.is_empty(),
    )
    .await;
    assert!(
        dead.is_empty(),
        "an outage dead-lettered good events: {dead:?}"
    );
    assert!(
        router.log_text().contains("unavailable") || router.log_text().contains("retrying"),
        "the outage is visible in the log"
    );
    let status = router.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

/// A backlog handled in batches (several events per transaction, a
/// savepoint each) with poison events in the middle of batches: the good
/// events apply exactly once, exactly the poison ones are dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_with_poison_in_the_middle_apply_good_events_once() {
    let (broker, testdb, dir, config) = setup(3).await;
    let p = broker.producer();
    // The backlog is there before the router starts, so lanes find full
    // batches waiting.
    let mut router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    create_stats_user(&p, &db, &router, "u1").await;
    router.terminate(Duration::from_secs(30));

    let mut expected = 0i64;
    let mut poison = Vec::new();
    for i in 0..300i64 {
        let size = if i % 20 == 7 {
            poison.push(format!("ev-{i}"));
            -1
        } else {
            expected += i;
            i
        };
        let ev = json!({"eventId": format!("ev-{i}"), "eventType": "media.uploaded", "userId": "u1", "data": {"fileId": i, "fileSize": size}});
        produce(
            &p,
            "media.uploaded",
            Some(&format!("k{}", i % 5)),
            &[],
            ev.to_string().as_bytes(),
        )
        .await;
    }
    router.restart();
    let storage = "SELECT storage_used FROM user_stats WHERE user_id = 'u1'";
    let done = eventually(Duration::from_secs(60), || async {
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE topic = 'media.uploaded'",
        )
        .await
            == 300
    })
    .await;
    assert!(done, "backlog not handled:\n{}", router.log_text());
    assert_eq!(
        scalar(&db, storage).await,
        expected,
        "every good event counted once"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE outcome = 'dead-lettered'"
        )
        .await,
        poison.len() as i64
    );
    let dead = consume_until(
        &broker.addr,
        &["switchyard.dlq"],
        Duration::from_secs(30),
        |m| m.len() >= poison.len(),
    )
    .await;
    let mut dead_ids: Vec<String> = dead
        .iter()
        .map(|r| r.json()["eventId"].as_str().unwrap_or_default().to_string())
        .collect();
    dead_ids.sort();
    poison.sort();
    assert_eq!(dead_ids, poison);
    assert!(
        dead.iter()
            .all(|r| r.header("switchyard.outcome") == Some("rejected"))
    );
    assert!(
        router
            .log_text()
            .contains("handling a batch in one transaction"),
        "the backlog was batched"
    );
}

/// Run the `switchyard` CLI with `args` (a command other than `run`).
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_COMPILE_CACHE", common::compile_cache_dir())
        .args(args)
        .env_remove("SWITCHYARD_BROKERS")
        .env_remove("SWITCHYARD_DATABASE_URL")
        .env_remove("SWITCHYARD_PLUGIN_DIR")
        .output()
        .unwrap_or_else(|e| panic!("switchyard {args:?}: {e}"))
}

/// An operator's round trip: an event the mapping does not know is
/// dead-lettered; `dlq list` and `dlq show` find it by plugin and reason;
/// the mapping is fixed in the config (hot reload); `dlq replay` puts it
/// back for role-mapping alone, which now handles it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_after_a_fix() {
    dlq_round_trip(Backend::Postgres).await;
}

/// The same round trip with the router on SQLite (`switchyard dev`'s
/// database), which the CLI opens beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_round_trip_on_sqlite() {
    dlq_round_trip(Backend::Sqlite).await;
}

async fn dlq_round_trip(backend: Backend) {
    let (broker, testdb, dir, config) = setup_on(2, backend).await;
    let router = Router::start(
        &config,
        &dir.path().join("router.log"),
        &[("SWITCHYARD_LOG_FORMAT", "json")],
    );
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    db.run_script("INSERT INTO customers (id, name) VALUES ('cust-1', 'Boulangerie Durand SARL')")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = broker.producer();
    let emperor = json!({"userId": "auth0|emperor", "name": "Napoléon", "email": "n@example.fr",
        "role": "user", "userType": "EMPEROR", "customerAccountId": "cust-1", "customerName": "Boulangerie Durand SARL",
        "timestamp": "2024-05-14T09:30:00.000Z"});
    produce(
        &p,
        "USER_CREATED",
        Some("auth0|emperor"),
        &[("request-id", "r-emp")],
        emperor.to_string().as_bytes(),
    )
    .await;
    let bad_email = json!({"userId": "u-x", "email": "not-an-email"});
    produce(
        &p,
        "notification.send.welcome",
        Some("u-x"),
        &[],
        bad_email.to_string().as_bytes(),
    )
    .await;
    let dead = consume_until(
        &broker.addr,
        &["switchyard.dlq"],
        Duration::from_secs(60),
        |m| m.len() >= 2,
    )
    .await;
    assert_eq!(dead.len(), 2, "{}", router.log_text());

    // The log is JSON lines, and the dead letter's line carries the
    // event's fields, the seed's request-id among them.
    let lines: Vec<serde_json::Value> = router
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "event dead-lettered" && l["span"]["plugin"] == "role-mapping"
        })
        .unwrap_or_else(|| panic!("no dead-letter line:\n{}", router.log_text()));
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["span"]["topic"], "USER_CREATED");
    assert_eq!(line["span"]["request_id"], "r-emp");
    assert!(line["span"]["offset"].is_u64() || line["span"]["offset"].is_i64());
    assert!(
        line["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("EMPEROR"))
    );

    let config_arg = config.to_string_lossy().to_string();
    let out = cli(&["dlq", "list", "--config", &config_arg]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed.contains("2 dead letter(s)"), "{listed}");
    // Reaching the end of a partition is how reading stops, not an error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("PartitionEOF") && !stderr.contains("ERROR"),
        "{stderr}"
    );
    let out = cli(&[
        "dlq",
        "list",
        "--config",
        &config_arg,
        "--plugin",
        "role-mapping",
        "--reason",
        "emperor",
        "--since",
        "1h",
        "--json",
    ]);
    let only: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");
    let id = only[0]["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(only[0]["outcome"], "rejected");
    assert!(
        only[0]["origin"]
            .as_str()
            .is_some_and(|o| o.starts_with("USER_CREATED/"))
    );
    let out = cli(&[
        "dlq",
        "list",
        "--config",
        &config_arg,
        "--until",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 dead letter(s)"));

    let out = cli(&["dlq", "show", &id, "--config", &config_arg]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(shown["value"]["userType"], "EMPEROR");
    assert_eq!(shown["key"], "auth0|emperor");
    assert_eq!(shown["headers"]["request-id"], "r-emp");

    // Replay refuses to act on everything by accident.
    let out = cli(&["dlq", "replay", "--config", &config_arg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));

    // The fix: the mapping learns EMPEROR (hot reload of the config).
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    let fixed = text.replace(
        "[plugins.profile-creation]",
        "EMPEROR = { role = \"CUSTOMER_ADMIN\", userType = \"SME\", isCompanyOwner = true }\n\n[plugins.profile-creation]",
    );
    assert_ne!(fixed, text);
    std::fs::write(&config, fixed).unwrap_or_else(|e| panic!("{e}"));
    let reloaded = eventually(Duration::from_secs(30), || async {
        router.log_text().contains("config reloaded")
    })
    .await;
    assert!(reloaded, "{}", router.log_text());

    let out = cli(&[
        "dlq",
        "replay",
        "--config",
        &config_arg,
        "--id",
        &id,
        "--dry-run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("would replay 1 dead letter(s)"));
    let out = cli(&[
        "dlq",
        "replay",
        "--config",
        &config_arg,
        "--plugin",
        "role-mapping",
        "--reason",
        "EMPEROR",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let origin = only[0]["origin"].as_str().unwrap_or_default().to_string();
    let partition = origin.split('/').nth(1).unwrap_or("?");
    assert!(
        stderr.contains(&format!(
            "[1/1] replayed {id} -> USER_CREATED/{partition} for role-mapping"
        )),
        "{stderr}"
    );
    let handled = eventually(Duration::from_secs(60), || async {
        scalar(
            &db,
            "SELECT count(*) FROM customer_users WHERE user_id = 'auth0|emperor'",
        )
        .await
            == 1
    })
    .await;
    assert!(handled, "{}", router.log_text());
    let marker = format!(
        "SELECT count(*) FROM switchyard_processed WHERE plugin = 'role-mapping' AND outcome = 'replayed' AND dedupe_key = '{}'",
        shown["headers"]["switchyard.dedupe-key"]
            .as_str()
            .unwrap_or("?")
    );
    assert_eq!(scalar(&db, &marker).await, 1, "{shown}");
    // Once only: a second replay is skipped, and so is a record forging
    // the replay headers with that key (no dead-letter marker left).
    let out = cli(&["dlq", "replay", "--config", &config_arg, "--id", &id]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("already replayed"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("replayed 0 dead letter(s); 1 replayed already"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    produce(
        &p,
        "USER_CREATED",
        Some("auth0|emperor"),
        &[
            ("switchyard.replay-plugin", "role-mapping"),
            (
                "switchyard.replay-key",
                shown["headers"]["switchyard.dedupe-key"]
                    .as_str()
                    .unwrap_or("?"),
            ),
        ],
        emperor.to_string().as_bytes(),
    )
    .await;
    let skipped = eventually(Duration::from_secs(60), || async {
        router
            .log_text()
            .contains("replay skipped: no dead-letter marker")
    })
    .await;
    assert!(skipped, "{}", router.log_text());
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM customer_users WHERE user_id = 'auth0|emperor'"
        )
        .await,
        1
    );
}

/// Scale-out: routers in one consumer group share the partitions. One is
/// killed (-9) mid-stream and the other takes its partitions over; a third
/// joins; then the second leaves with SIGTERM. Every event is counted
/// exactly once across the hand-overs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_in_one_group_share_partitions_and_hand_them_over() {
    const USERS: usize = 24;
    const PER_USER: usize = 200;
    let (broker, testdb, dir, config) = setup(6).await;
    let mut a = Router::start(&config, &dir.path().join("a.log"), &[]);
    let mut b = Router::start(&config, &dir.path().join("b.log"), &[]);
    for r in [&a, &b] {
        wait_ready(r).await;
    }
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = broker.producer();
    create_users(&p, &db, USERS, &[&a, &b]).await;
    let deliveries = (0..USERS * PER_USER).map(|i| {
        let user = format!("user-{}", i % USERS);
        let value = json!({"eventType": "interview.created", "userId": user,
            "data": {"interviewId": format!("iv-{i}")}})
        .to_string();
        let p = p.clone();
        async move {
            p.send(
                rdkafka::producer::FutureRecord::<str, str>::to("interview.created")
                    .key(&user)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
        }
    });
    for d in futures_util::future::join_all(deliveries).await {
        d.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    let total = "SELECT coalesce(sum(interviews_created), 0) FROM user_stats";
    let expected = (USERS * PER_USER) as i64;
    assert!(
        eventually(Duration::from_secs(60), || async {
            scalar(&db, total).await >= expected / 10
        })
        .await,
        "no progress"
    );
    // Both instances held partitions before the kill.
    for (name, r) in [("a", &a), ("b", &b)] {
        assert!(
            r.log_text().contains("topic=interview.created"),
            "router {name} handled nothing:\n{}",
            r.log_text()
        );
    }
    let assignments = |r: &Router| r.log_text().matches("partitions assigned").count();
    let b_before = assignments(&b);
    a.kill9();
    let at_kill = scalar(&db, total).await;
    assert!(
        at_kill < expected,
        "the stream ended before the kill: nothing tested"
    );
    // The group notices the dead member after its session timeout and
    // gives its partitions to b. (Membership changes are made one at a
    // time: Tansu 0.6 can leave a group without an assignment when a
    // member's session expires in the middle of another rebalance.)
    assert!(
        eventually(Duration::from_secs(60), || async {
            assignments(&b) > b_before
        })
        .await,
        "b never took over a's partitions:\n{}",
        b.log_text()
    );
    let c = Router::start(&config, &dir.path().join("c.log"), &[]);
    wait_ready(&c).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            scalar(&db, total).await >= (at_kill + expected) / 2
        })
        .await,
        "no progress after the kill"
    );
    let status = b.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "b left gracefully: {status:?}"
    );
    let settled = value_after_reaching(
        &db,
        total,
        expected,
        Duration::from_secs(180),
        Duration::from_secs(2),
        &c,
        &format!(
            "stalled after the hand-overs (killed at {at_kill}); b's log:\n{}",
            b.log_text()
        ),
    )
    .await;
    assert_eq!(settled, expected, "every interview counted exactly once");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE plugin = 'stats-increment'"
        )
        .await,
        expected + USERS as i64,
        "one marker per event"
    );
}

/// Seed 004's own producer (aiokafka, asyncio) emits user_registered with
/// its four headers; an aiokafka consumer reads the welcome e-mail request,
/// which carries the request-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_from_aiokafka_gets_its_welcome() {
    let (broker, testdb, dir, config) = setup(2).await;
    let router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let python = common::client_python();
    let script = common::root().join("tests/clients/aiokafka_seed004.py");
    let addr = broker.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([addr.as_str(), "u-aio-1", "req-aio-1"])
            .output()
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| panic!("could not run the aiokafka client"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        router.log_text()
    );
    let email: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(email["headers"]["request-id"], "req-aio-1", "{email}");
    assert!(
        email["headers"]["event-id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
    assert_eq!(email["value"]["to"], "u-aio-1@example.com", "{email}");
    assert_eq!(email["value"]["subject"], "Welcome, Lucía Fernández!");
    let db = Database::connect(&testdb.url, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM welcome_notifications").await,
        1
    );
}

/// A NestJS app's ClientKafka (kafkajs), as seed 002's services use it:
/// `emit` USER_CREATED reaches role-mapping, and `send` create-user gets
/// its reply back through profile-creation (NestJS request-reply headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nestjs_client_kafka_emits_and_gets_its_reply() {
    let (broker, testdb, dir, config) = setup(2).await;
    // ClientKafka listens for replies on `<pattern>.reply`.
    broker.create_topics(&["create-user.reply"], 2).await;
    let router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    db.run_script("INSERT INTO customers (id, name) VALUES ('cust-1', 'Boulangerie Durand SARL')")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let script = common::root().join("tests/clients/nestjs/client.js");
    assert!(
        common::root()
            .join("tests/clients/nestjs/node_modules/@nestjs/microservices")
            .exists(),
        "the NestJS client is not installed: scripts/test runs npm ci in tests/clients/nestjs"
    );
    let addr = broker.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .args([addr.as_str(), "req-nest-1"])
            .output()
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| panic!("could not run node"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        router.log_text()
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(reply["requestId"], "req-nest-1", "{reply}");
    assert_eq!(reply["firstName"], "Amélie");
    let id = reply["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        rows_of(&db, "SELECT id::text AS id FROM profiles").await,
        vec![json!({"id": id})],
        "the reply names the stored profile"
    );
    let mapped = eventually(Duration::from_secs(30), || async {
        scalar(
            &db,
            "SELECT count(*) FROM customer_users WHERE user_id = 'auth0|req-nest-1' AND role = 'CUSTOMER_ADMIN'",
        )
        .await
            == 1
    })
    .await;
    assert!(
        mapped,
        "the emitted USER_CREATED was not mapped:\n{}",
        router.log_text()
    );
}

/// Ordering end to end, from a backlog (so partitions find many events
/// waiting): a route with `ordering = "partition"` commits every event of
/// its partition in offset order; a route in key order (the default)
/// commits each key's events in offset order while its keys run side by
/// side. Poison events on both make batches roll back and give their
/// events back to run alone; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_key_order_hold_end_to_end() {
    let broker = Broker::start();
    broker
        .create_topics(
            &[
                "order.partition",
                "order.key",
                "chaos.out",
                "switchyard.dlq",
            ],
            1,
        )
        .await;
    let testdb = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugin_dir = common::plugin_dir_of("test-chaos");
    let config = common::write_config(
        dir.path(),
        &format!(
            r#"
[kafka]
brokers = "{broker}"
group = "order-test"
[database]
url = "{db}"
[retry]
max_attempts = 2
initial_backoff_ms = 10
max_backoff_ms = 50
[admin]
address = "127.0.0.1:0"
[plugins]
dir = "{plugin_dir}"
[plugins.test-chaos]
file = "test_chaos.wasm"
publish = ["chaos.out"]
[[routes]]
topics = ["order.partition"]
plugins = ["test-chaos"]
ordering = "partition"
[[routes]]
topics = ["order.key"]
plugins = ["test-chaos"]
"#,
            broker = broker.addr,
            db = testdb.url,
            plugin_dir = plugin_dir.display()
        ),
    );
    let p = broker.producer();
    const N: usize = 400;
    let poison = |i: usize| i % 50 == 17;
    for (topic, prefix) in [("order.partition", "p"), ("order.key", "k")] {
        for i in 0..N {
            let value = json!({"id": format!("{prefix}-{i:04}"), "poison": poison(i)});
            produce(
                &p,
                topic,
                Some(&format!("key-{}", i % 8)),
                &[],
                value.to_string().as_bytes(),
            )
            .await;
        }
    }
    let mut router = Router::start(&config, &dir.path().join("router.log"), &[]);
    wait_ready(&router).await;
    let db = Database::connect(&testdb.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let done = eventually(Duration::from_secs(120), || async {
        scalar(&db, "SELECT count(*) FROM switchyard_processed").await == 2 * N as i64
    })
    .await;
    assert!(done, "backlog not handled:\n{}", router.log_text());
    let rows = rows_of(
        &db,
        "SELECT event_id FROM chaos_effects ORDER BY created_at, event_id",
    )
    .await;
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect();
    let good = (0..N).filter(|i| !poison(*i)).count();
    for prefix in ["p", "k"] {
        let seq: Vec<usize> = ids
            .iter()
            .filter_map(|id| id.strip_prefix(&format!("{prefix}-"))?.parse().ok())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            (seq.len(), sorted.len()),
            (good, good),
            "{prefix}: each good event's effect exactly once"
        );
        if prefix == "p" {
            assert_eq!(seq, sorted, "partition order: effects not in offset order");
        } else {
            for key in 0..8 {
                let of_key: Vec<usize> = seq.iter().copied().filter(|i| i % 8 == key).collect();
                assert!(
                    of_key.windows(2).all(|w| w[0] < w[1]),
                    "key-{key}: effects out of order: {of_key:?}"
                );
            }
        }
    }
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE outcome = 'dead-lettered'"
        )
        .await,
        2 * (N - good) as i64,
        "the poison events, and only they, dead-lettered"
    );
    db.close().await;
    let status = router.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
