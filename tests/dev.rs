//! `switchyard dev` as a developer uses it: one command, no services. It
//! starts its own broker and prints where it is; a real Kafka client sends
//! seed 004's event and reads the welcome e-mail request; `/metrics` counts
//! it; confluent-kafka for Python gets a create-user reply; a plugin file replaced on disk serves the next event; Ctrl-C (here
//! SIGTERM) stops the router and the broker.

mod common;

use common::{admin_address, consume_until, eventually, http_get, produce, root};
use std::path::Path;
use std::time::Duration;
use switchyard::database::Database;

/// Read a banner line `  <label>  <value> ...` from `dev`'s output.
fn banner_value(out: &str, label: &str) -> Option<String> {
    out.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(label))
        .and_then(|l| l[label.len()..].split_whitespace().next())
        .map(str::to_string)
}

/// The `dev` process, killed if the test ends early (a failed assertion
/// must not leave a router and its broker running).
struct Child(Option<std::process::Child>);

impl Drop for Child {
    fn drop(&mut self) {
        let Some(mut c) = self.0.take() else {
            return;
        };
        // SIGTERM first, so that `dev` stops its broker; SIGKILL only if
        // it does not exit within 15 s.
        let _ = std::process::Command::new("kill")
            .arg(c.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn copy_plugins(to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for name in [
        "role-mapping",
        "profile-creation",
        "stats-increment",
        "welcome-notification",
    ] {
        let from = common::plugin_path(name);
        let file = from.file_name().unwrap_or_default();
        std::fs::copy(&from, to.join(file)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_a_kafka_client_reloads_and_counts() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let plugins = dir.path().join("plugins");
    copy_plugins(&plugins);
    let db_url = format!("sqlite:{}", dir.path().join("dev.db").display());
    let out_path = dir.path().join("stdout.txt");
    let log_path = dir.path().join("log.txt");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_COMPILE_CACHE", common::compile_cache_dir())
        .current_dir(dir.path())
        .args(["dev", "--config"])
        .arg(root().join("config/switchyard.toml"))
        .args([
            "--broker-port",
            "0",
            "--admin",
            "127.0.0.1:0",
            "--database",
            &db_url,
        ])
        .arg("--plugin-dir")
        .arg(&plugins)
        .arg("--tansu")
        .arg(common::tansu_path())
        .env_remove("SWITCHYARD_BROKERS")
        .env_remove("SWITCHYARD_DATABASE_URL")
        .env_remove("SWITCHYARD_PLUGIN_DIR")
        .env("NO_COLOR", "1")
        .env("SWITCHYARD_LOG", "info,switchyard=debug")
        .stdout(std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{e}")))
        .stderr(std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{e}")))
        .spawn()
        .unwrap_or_else(|e| panic!("switchyard dev: {e}"));
    let mut child = Child(Some(child));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let out = || std::fs::read_to_string(&out_path).unwrap_or_default();

    let up = eventually(Duration::from_secs(90), || async {
        out().contains("switchyard dev is up") && log().contains("partitions assigned")
    })
    .await;
    assert!(up, "dev did not come up:\n{}\n{}", out(), log());
    let text = out();
    let broker = banner_value(&text, "broker").unwrap_or_default();
    assert!(broker.starts_with("127.0.0.1:"), "{text}");
    let admin = banner_value(&text, "admin")
        .and_then(|a| a.strip_prefix("http://").map(str::to_string))
        .unwrap_or_default();
    assert_eq!(Some(admin.clone()), admin_address(&log()));
    assert!(
        text.contains(&format!("switchyard produce --brokers {broker} --event")),
        "a copy-paste example: {text}"
    );

    // A Kafka client (librdkafka, through rdkafka) sends seed 004's event
    // with its headers, and reads the e-mail request.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let seed = serde_json::json!({"event": "user_registered", "id": "evt-dev-1", "ts": 1696599999999i64, "v": 1,
        "payload": {"user_id": "u-dev", "email": "lucia@example.com", "full_name": "Lucía Fernández"},
        "source": "auth-svc"});
    let headers = [
        ("event-type", "user_registered"),
        ("event-id", "evt-dev-1"),
        ("content-type", "application/json"),
        ("request-id", "req-dev-1"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    produce(
        &producer,
        "user.registered.v1",
        Some("u-dev"),
        &headers,
        seed.to_string().as_bytes(),
    )
    .await;
    let emails = consume_until(
        &broker,
        &["notification.send.email"],
        Duration::from_secs(60),
        |m| !m.is_empty(),
    )
    .await;
    assert_eq!(emails.len(), 1, "{}", log());
    assert_eq!(emails[0].header("request-id"), Some("req-dev-1"));
    let trace = emails[0].header("traceparent").unwrap_or_default();
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && trace.ends_with("-01"),
        "the same trace, a span of its own: {trace}"
    );
    assert!(!trace.contains("00f067aa0ba902b7"));
    assert!(
        log().contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "the trace id is in the logs"
    );
    assert_eq!(emails[0].json()["to"], "lucia@example.com");

    let counted = eventually(Duration::from_secs(10), || async {
        http_get(&admin, "/metrics")
            .await
            .1
            .contains(r#"switchyard_events_total{plugin="welcome-notification",outcome="done"} 1"#)
    })
    .await;
    assert!(counted, "{}", http_get(&admin, "/metrics").await.1);

    // And a client written by others: confluent-kafka for Python sends
    // seed 000's create-user request and gets profile-creation's reply.
    let python = common::client_python();
    let script = root().join("tests/clients/confluent_roundtrip.py");
    let broker_for_py = broker.clone();
    let reply = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([broker_for_py.as_str(), "req-py-1"])
            .output()
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| panic!("could not run the Python client"));
    assert!(
        reply.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&reply.stderr),
        log()
    );
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap_or_default();
    assert_eq!(reply["firstName"], "احمد", "{reply}");
    assert!(
        reply["id"].as_str().is_some_and(|id| id.len() == 36),
        "{reply}"
    );

    // Hot reload of a plugin that says it is someone else: the marker
    // test plugin over the welcome plugin's file is refused (identities
    // follow the config key), and the welcome plugin keeps serving.
    // Accepted reloads are covered by tests/reload.rs.
    let target = plugins.join("welcome_notification.wasm");
    let staged = plugins.join("staged.tmp");
    std::fs::copy(common::plugin_path("test-marker"), &staged).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&staged, &target).unwrap_or_else(|e| panic!("{e}"));
    let refused = eventually(Duration::from_secs(30), || async {
        log().contains("says it is plugin `test-marker`")
    })
    .await;
    assert!(refused, "{}", log());
    let second = serde_json::json!({"event": "user_registered", "id": "evt-dev-2", "ts": 1696599999999i64, "v": 1,
        "payload": {"user_id": "u-dev2", "email": "x@example.com", "full_name": "X"}, "source": "auth-svc"});
    produce(
        &producer,
        "user.registered.v1",
        Some("u-dev2"),
        &[("event-id", "evt-dev-2")],
        second.to_string().as_bytes(),
    )
    .await;
    let db = Database::connect(&db_url, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let served = eventually(Duration::from_secs(30), || async {
        common::scalar(
            &db,
            "SELECT count(*) FROM welcome_notifications WHERE user_id = 'u-dev2'",
        )
        .await
            == 1
    })
    .await;
    assert!(
        served,
        "the running welcome plugin did not handle the next event:\n{}",
        log()
    );
    db.close().await;

    // SIGTERM: the router stops gracefully, then the broker.
    let mut running = child
        .0
        .take()
        .unwrap_or_else(|| panic!("dev is not running"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || running.wait())
        .await
        .ok()
        .and_then(Result::ok);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", log());
    let gone = eventually(Duration::from_secs(10), || async {
        std::net::TcpStream::connect(&broker).is_err()
    })
    .await;
    assert!(gone, "the broker still listens on {broker}");
    // Written to a file, the log has no terminal colour codes.
    assert!(
        !log().contains('\u{1b}'),
        "colour codes in a log file:\n{}",
        log()
    );
}
