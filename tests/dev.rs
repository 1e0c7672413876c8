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
        .args(["dev", "--no-watch", "--config"])
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
    // One line per handled event, with its plugin, outcome and time.
    assert!(
        log()
            .lines()
            .any(|l| l.contains("plugin=welcome-notification")
                && l.contains("switchyard::handled: done in ")
                && l.contains(" ms (1 statement, 1 message)")),
        "{}",
        log()
    );

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

/// A checkout of its own for `dev --watch` to watch: the repository's
/// `wit/`, `scripts/` and Python SDK (and its installed toolchain) linked
/// in, and a plugin made by `switchyard plugin new`, so that the test
/// edits files that belong to nobody else.
fn watched_checkout(dir: &Path) {
    let repo = root();
    std::fs::create_dir_all(dir.join("plugins")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.join(".switchyard")).unwrap_or_else(|e| panic!("{e}"));
    for (link, target) in [
        ("wit", repo.join("wit")),
        ("scripts", repo.join("scripts")),
        ("plugins/sdk-py", repo.join("plugins/sdk-py")),
        (
            ".switchyard/venv-plugins",
            repo.join(".switchyard/venv-plugins"),
        ),
    ] {
        std::os::unix::fs::symlink(&target, dir.join(link))
            .unwrap_or_else(|e| panic!("{link} -> {}: {e}", target.display()));
    }
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(dir)
        .args(["plugin", "new", "audit-py", "--lang", "python"])
        .output()
        .unwrap_or_else(|e| panic!("plugin new: {e}"));
    assert!(
        made.status.success(),
        "plugin new: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// `switchyard dev` in `checkout`, watching it, with a config that runs
/// `plugin` (its component in `checkout/out`); its output in `stdout.txt`
/// and `log.txt` there. Returns once it is up.
async fn dev_watching(checkout: &Path, plugin: &str, env: &[(&str, &Path)]) -> Child {
    let config = checkout.join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"unused:9092\"\ngroup = \"watch\"\ncreate_topics_partitions = 1\n\
             [database]\nurl = \"sqlite:{db}\"\n\
             [plugins]\ndir = \"{out}\"\n\
             [plugins.{plugin}]\nfile = \"{file}.wasm\"\npublish = [\"{plugin}.recorded\"]\n\
             [[routes]]\ntopics = [\"{plugin}.in\"]\nplugins = [\"{plugin}\"]\n",
            db = checkout.join("dev.db").display(),
            out = checkout.join("out").display(),
            file = plugin.replace('-', "_"),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let log_path = checkout.join("log.txt");
    let out_path = checkout.join("stdout.txt");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command
        .env("SWITCHYARD_COMPILE_CACHE", common::compile_cache_dir())
        .current_dir(checkout)
        .args([
            "dev",
            "--broker-port",
            "0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--tansu")
        .arg(common::tansu_path())
        .env_remove("SWITCHYARD_BROKERS")
        .env_remove("SWITCHYARD_DATABASE_URL")
        .env_remove("SWITCHYARD_PLUGIN_DIR")
        .env_remove("SWITCHYARD_LOG")
        .stdout(std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{e}")))
        .stderr(std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{e}")))
        .spawn()
        .unwrap_or_else(|e| panic!("switchyard dev: {e}"));
    let child = Child(Some(child));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let stdout = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let up = eventually(Duration::from_secs(120), || async {
        stdout().contains("switchyard dev is up") && log().contains("partitions assigned")
    })
    .await;
    assert!(up, "dev did not come up:\n{}\n{}", stdout(), log());
    child
}

/// Replace `from` with `to` in a file, which must hold `from`.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains(from), "{} holds no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rebuilds_a_plugin_when_its_source_is_saved() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let checkout = dir.path();
    watched_checkout(checkout);
    let out = checkout.join("out");
    // The first build, as `switchyard plugin build` makes it.
    let built = std::process::Command::new(checkout.join("scripts/build-plugins"))
        .arg("plugins/audit-py")
        .current_dir(checkout)
        .env("SWITCHYARD_PLUGIN_DIR", &out)
        .output()
        .unwrap_or_else(|e| panic!("build-plugins: {e}"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let _child = dev_watching(checkout, "audit-py", &[]).await;
    let (log_path, out_path) = (checkout.join("log.txt"), checkout.join("stdout.txt"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let stdout = || std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        stdout().contains(
            "save a plugin's source to rebuild and reload it: audit-py (plugins/audit-py)"
        ),
        "the banner names what is watched: {}",
        stdout()
    );
    let admin = admin_address(&log()).unwrap_or_default();
    let app = checkout.join("plugins/audit-py/app.py");
    // Lines of the watcher so far, to wait for the next.
    let watch_lines = || -> Vec<String> {
        log()
            .lines()
            .filter(|l| l.starts_with("[watch]"))
            .map(str::to_string)
            .collect()
    };
    // Wait until the watcher's lines since `seen` hold `text`.
    let wait_for = |seen: usize, text: &'static str| {
        let log = &log;
        async move {
            let ok = eventually(Duration::from_secs(180), || async {
                log()
                    .lines()
                    .filter(|l| l.starts_with("[watch]"))
                    .skip(seen)
                    .any(|l| l.contains(text))
            })
            .await;
            assert!(ok, "no [watch] line with {text:?}:\n{}", log());
        }
    };

    // 1. A save rebuilds and reloads it: one line with the times.
    let seen = watch_lines().len();
    edit(&app, "version = \"0.1.0\"", "version = \"0.2.0\"");
    wait_for(seen, "audit-py: rebuilt in").await;
    let line = watch_lines()[seen].clone();
    assert!(
        line.starts_with("[watch] audit-py: rebuilt in ")
            && line.contains(" after the write")
            && line.contains("version 0.2.0")
            && line.contains("save → serving "),
        "{line}\n{}",
        log()
    );
    let (_, plugins) = http_get(&admin, "/plugins").await;
    assert!(plugins.contains("\"0.2.0\""), "{plugins}");

    // 2. A build error: said with the error, the last build still serves.
    let seen = watch_lines().len();
    edit(&app, "def handle(self", "def handle(self,,");
    wait_for(seen, "still failing: audit-py (build error").await;
    let text = log();
    let failed = &text[text
        .find("[watch] audit-py: build FAILED")
        .unwrap_or_else(|| panic!("no failure line: {text}"))..];
    assert!(
        failed.contains("the previous build still serves") && failed.contains("  | "),
        "the build's own error is shown: {failed}"
    );
    assert!(
        failed.contains("SyntaxError") || failed.contains("invalid syntax"),
        "{failed}"
    );

    // 3. Fixed, but with an edited migration: the reload is refused,
    // loudly, and /health says an older build serves.
    let seen = watch_lines().len();
    // One write: the syntax fixed and the migration edited.
    let text = std::fs::read_to_string(&app).unwrap_or_default();
    assert!(text.contains("    at "), "{text}");
    let text = text
        .replace("def handle(self,,", "def handle(self")
        .replace("    at ", "    extra TEXT,\n    at ");
    std::fs::write(&app, text).unwrap_or_else(|e| panic!("{e}"));
    wait_for(seen, "still failing: audit-py (reload refused").await;
    let lines = watch_lines();
    let refused = lines[seen..].join("\n");
    assert!(
        refused.contains("audit-py: built in") && refused.contains("REFUSED"),
        "{refused}\n{}",
        log()
    );
    assert!(
        refused.contains("still failing: audit-py (reload refused"),
        "kept on screen until fixed: {refused}"
    );
    assert!(
        log().contains("plugin audit-py reload refused") && log().contains("STILL SERVING"),
        "{}",
        log()
    );
    let (code, health) = http_get(&admin, "/health").await;
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value =
        serde_json::from_str(&health).unwrap_or_else(|e| panic!("{e}: {health}"));
    assert_eq!(health["status"], "degraded", "{health}");
    let refusal = &health["reloads_refused"][0];
    assert_eq!(refusal["what"], "plugin audit-py", "{health}");
    assert!(
        refusal["serving"]
            .as_str()
            .is_some_and(|s| s.contains("0.2.0")),
        "{health}"
    );

    // 4. The migration put back: fixed, and /health is clear again.
    let seen = watch_lines().len();
    let text = std::fs::read_to_string(&app)
        .unwrap_or_default()
        .replace("    extra TEXT,\n    at ", "    at ")
        .replace("version = \"0.2.0\"", "version = \"0.3.0\"");
    std::fs::write(&app, text).unwrap_or_else(|e| panic!("{e}"));
    wait_for(seen, "version 0.3.0").await;
    let lines = watch_lines()[seen..].join("\n");
    assert!(lines.contains("audit-py: fixed"), "{lines}");
    assert!(lines.contains("version 0.3.0"), "{lines}");
    let (_, health) = http_get(&admin, "/health").await;
    assert!(health.contains("\"reloads_refused\":[]"), "{health}");
}

/// The same loop for a Rust plugin: a checkout whose workspace holds the
/// SDK and a crate made by `plugin new`, built into the tests' cargo
/// target directory (the registry crates are built there already). A
/// save rebuilds it with the `plugin-dev` profile and reloads it; a
/// compile error shows rustc's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rebuilds_a_rust_plugin_when_its_source_is_saved() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let checkout = dir.path();
    let repo = root();
    std::fs::create_dir_all(checkout.join("plugins")).unwrap_or_else(|e| panic!("{e}"));
    for (link, target) in [
        ("wit", repo.join("wit")),
        ("scripts", repo.join("scripts")),
        ("plugins/sdk", repo.join("plugins/sdk")),
    ] {
        std::os::unix::fs::symlink(&target, checkout.join(link))
            .unwrap_or_else(|e| panic!("{link}: {e}"));
    }
    std::fs::copy(repo.join("Cargo.lock"), checkout.join("Cargo.lock"))
        .unwrap_or_else(|e| panic!("Cargo.lock: {e}"));
    // The repository's workspace settings and profiles, with the SDK as
    // its one member; `plugin new` adds the plugin.
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap_or_default();
    let start = manifest
        .find("members = [")
        .unwrap_or_else(|| panic!("{manifest}"));
    let end = start + manifest[start..].find(']').unwrap_or(0) + 1;
    let manifest = format!(
        "{}members = [\n    \"plugins/sdk\",\n]{}",
        &manifest[..start],
        &manifest[end..]
    )
    .replace("default-members = [\"host\"]", "");
    std::fs::write(checkout.join("Cargo.toml"), manifest).unwrap_or_else(|e| panic!("{e}"));
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(checkout)
        .args(["plugin", "new", "audit-rs", "--lang", "rust"])
        .output()
        .unwrap_or_else(|e| panic!("plugin new: {e}"));
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // cargo's target directory of these tests: .../wasm32-wasip2/plugin/x.wasm.
    let target_dir = common::plugin_path("role-mapping")
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("no target directory"));
    let out = checkout.join("out");
    let built = std::process::Command::new(checkout.join("scripts/build-plugins"))
        .arg("plugins/audit-rs")
        .current_dir(checkout)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("SWITCHYARD_PLUGIN_DIR", &out)
        .output()
        .unwrap_or_else(|e| panic!("build-plugins: {e}"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        out.join("audit_rs.wasm").is_file(),
        "build-plugins copies a Rust component into SWITCHYARD_PLUGIN_DIR"
    );
    let _child = dev_watching(checkout, "audit-rs", &[("CARGO_TARGET_DIR", &target_dir)]).await;
    let log_path = checkout.join("log.txt");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let admin = admin_address(&log()).unwrap_or_default();
    let (_, before) = http_get(&admin, "/plugins").await;
    let lib = checkout.join("plugins/audit-rs/src/lib.rs");

    // A save: rebuilt, reloaded, a new hash serving.
    edit(&lib, "recorded for {}", "recorded (edited) for {}");
    let rebuilt = eventually(Duration::from_secs(180), || async {
        log().contains("[watch] audit-rs: rebuilt in ")
    })
    .await;
    assert!(rebuilt, "{}", log());
    let line = log()
        .lines()
        .find(|l| l.starts_with("[watch] audit-rs: rebuilt in "))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.contains(" after the write") && line.contains("save → serving "),
        "{line}"
    );
    let (_, after) = http_get(&admin, "/plugins").await;
    let hash = |plugins: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(plugins).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "audit-rs")
            .and_then(|p| p["hash"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert_ne!(hash(&before), hash(&after), "{before}\n{after}");
    assert!(!hash(&after).is_empty(), "{after}");

    // A compile error: rustc's message, the last build still serving.
    edit(
        &lib,
        "recorded (edited) for {}",
        "recorded for {}\" undefined_name",
    );
    let failed = eventually(Duration::from_secs(180), || async {
        log().contains("still failing: audit-rs (build error")
    })
    .await;
    assert!(failed, "{}", log());
    let text = log();
    let failure = &text[text.find("[watch] audit-rs: build FAILED").unwrap_or(0)..];
    assert!(
        failure.contains("  | error"),
        "rustc's own error: {failure}"
    );
    let (_, still) = http_get(&admin, "/plugins").await;
    assert_eq!(hash(&still), hash(&after), "the last good build serves");
}
