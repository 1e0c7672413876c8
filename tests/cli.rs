//! `switchyard plugin test` as its users run it: the binary, a release
//! plugin, a seed event file; the report shows outcome, SQL, rows changed
//! and messages, and the exit status says whether the events committed.
//! Also the other tools a person runs by hand: `check`, `explain`,
//! `plugin new`, and `consume` and `record` against a real broker.

mod common;

use common::{plugin_path, root};
use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_COMPILE_CACHE", common::compile_cache_dir())
        .args(args)
        .current_dir(root())
        .env_remove("SWITCHYARD_DATABASE_URL")
        // As scripts/test exports it: a plugin test without --config
        // must not care.
        .env(
            "SWITCHYARD_PLUGIN_DIR",
            plugin_path("role-mapping")
                .parent()
                .unwrap_or(std::path::Path::new(".")),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run switchyard: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn shows_sql_rows_and_messages_of_a_seed_event() {
    let wasm = plugin_path("profile-creation");
    let out = switchyard(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--event",
        "plugins/profile-creation/examples/create-user.json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("plugin   profile-creation"), "{stdout}");
    assert!(stdout.contains("migrations applied"), "{stdout}");
    assert!(stdout.contains("outcome  DONE"), "{stdout}");
    assert!(stdout.contains("INSERT INTO profiles"), "{stdout}");
    assert!(stdout.contains("rows changed"), "{stdout}");
    assert!(stdout.contains("+ {"), "{stdout}");
    assert!(stdout.contains("→ create-user-response"), "{stdout}");
    assert!(stdout.contains("event-id="), "{stdout}");
    assert!(
        stdout.contains("احمد"),
        "Persian names round-trip: {stdout}"
    );
}

/// The same on PostgreSQL, with a non-superuser host: the plugin runs as
/// its own role and the report still shows the rows it changed (read in
/// the plugin's session, tables found on its search path).
#[tokio::test]
async fn shows_rows_changed_on_postgres_as_a_non_superuser() {
    let db = common::TestDb::postgres_non_superuser().await;
    let wasm = plugin_path("role-mapping");
    let out = switchyard(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--database",
        &db.url,
        "--setup",
        "plugins/role-mapping/examples/customers.sql",
        "--event",
        "plugins/role-mapping/examples/user-created-sme-owner.json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("outcome  DONE"), "{stdout}");
    assert!(stdout.contains("rows changed"), "{stdout}");
    assert!(stdout.contains("customer_users"), "{stdout}");
    assert!(stdout.contains("François Lefèvre"), "{stdout}");
}

#[test]
fn json_report_and_exit_status_for_a_rejected_event() {
    let wasm = plugin_path("stats-increment");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let event = dir.path().join("bad.json");
    std::fs::write(
        &event,
        r#"{"topic": "media.uploaded", "key": null, "headers": {}, "value_raw": "{\"userId\": \"u1\", \"data\": "}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = switchyard(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--event",
        &event.to_string_lossy(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    let ev = &report["events"][0];
    assert_eq!(ev["outcome"]["kind"], "rejected");
    assert!(
        ev["outcome"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("media.uploaded"))
    );
    assert_eq!(ev["committed"], false);
    assert_eq!(report["plugin"]["name"], "stats-increment");
}

#[test]
fn chains_events_on_one_database() {
    let wasm = plugin_path("stats-increment");
    let out = switchyard(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--event",
        "plugins/stats-increment/examples/user-created.json",
        "--event",
        "plugins/stats-increment/examples/interview-created.json",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    let events = report["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["outcome"]["kind"], "done");
    let changed = &events[1]["changes"]["user_stats"];
    assert_eq!(changed["removed"][0]["interviews_created"], 0);
    assert_eq!(changed["added"][0]["interviews_created"], 1);
}

#[test]
fn bad_inputs_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let event = dir.path().join("typo.json");
    std::fs::write(&event, "{\n  \"topic\": \"x\",\n  \"valeu\": {}\n}")
        .unwrap_or_else(|e| panic!("{e}"));
    let wasm = plugin_path("stats-increment");
    let out = switchyard(&[
        "plugin",
        "test",
        &wasm.to_string_lossy(),
        "--event",
        &event.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("typo.json:3:"), "{stderr}");
    assert!(stderr.contains("valeu"), "{stderr}");

    let fake = dir.path().join("plugin.wasm");
    std::fs::write(&fake, b"\0asm\x01\0\0\0").unwrap_or_else(|e| panic!("{e}"));
    let out = switchyard(&[
        "plugin",
        "test",
        &fake.to_string_lossy(),
        "--event",
        "plugins/stats-increment/examples/user-created.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--target wasm32-wasip2"),
        "{}",
        text(&out.stderr)
    );
}

/// The shipped config routes to the TypeScript and Python builds by
/// pointing `file` at them, as its comment says.
#[test]
fn check_loads_the_typescript_and_python_builds_under_the_seed_names() {
    let plugin_dir = plugin_path("role-mapping-ts")
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shipped =
        std::fs::read_to_string(root().join("config/switchyard.toml")).unwrap_or_default();
    let ported = shipped
        .replace(
            "file = \"role_mapping.wasm\"",
            "file = \"role_mapping_ts.wasm\"",
        )
        .replace(
            "file = \"welcome_notification.wasm\"",
            "file = \"welcome_notification_py.wasm\"",
        );
    assert_ne!(shipped, ported);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("ported.toml");
    std::fs::write(&config, ported).unwrap_or_else(|e| panic!("{e}"));
    let out = switchyard(&[
        "check",
        "--config",
        &config.to_string_lossy(),
        "--plugin-dir",
        &plugin_dir,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for (plugin, file) in [
        ("role-mapping", "role_mapping_ts.wasm"),
        ("welcome-notification", "welcome_notification_py.wasm"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("plugin {plugin}:")))
            .unwrap_or_default();
        assert!(
            line.contains(&format!("{plugin} 0.1.0")) && line.contains(file),
            "{stdout}"
        );
    }
}

#[test]
fn check_validates_the_shipped_config_and_points_at_mistakes() {
    let plugin_dir = plugin_path("role-mapping")
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = switchyard(&[
        "check",
        "--config",
        "config/switchyard.toml",
        "--plugin-dir",
        &plugin_dir,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("config/switchyard.toml: OK"), "{stdout}");
    for plugin in [
        "role-mapping",
        "profile-creation",
        "stats-increment",
        "welcome-notification",
    ] {
        assert!(
            stdout.contains(&format!("plugin {plugin}: {plugin} 0.1.0")),
            "{stdout}"
        );
    }

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shipped =
        std::fs::read_to_string(root().join("config/switchyard.toml")).unwrap_or_default();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        shipped.replace(
            "plugins = [\"welcome-notification\"]",
            "plugins = [\"welcome\"]",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let line = shipped
        .lines()
        .position(|l| l.contains("plugins = [\"welcome-notification\"]"))
        .map(|i| i + 1)
        .unwrap_or(0);
    let out = switchyard(&["check", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("bad.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("unknown plugin \"welcome\""), "{stderr}");

    std::fs::write(&bad, shipped.replace("[dead_letter]", "[dead_letters]"))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = switchyard(&["check", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown field `dead_letters`"),
        "{}",
        text(&out.stderr)
    );

    // A benchmark's native handler in a real config: refused, since the
    // plugin's events would be marked handled without its effects.
    std::fs::write(
        &bad,
        shipped.replace(
            "file = \"role_mapping.wasm\"",
            "file = \"role_mapping.wasm\"\nnative = \"bench-noop\"",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = switchyard(&["check", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("plugin role-mapping: `native`") && stderr.contains("bad.toml:"),
        "{stderr}"
    );

    // The other plugins as built, stats-increment cut short (a build
    // still being written).
    for plugin in ["role-mapping", "profile-creation", "welcome-notification"] {
        let from = plugin_path(plugin);
        let to = dir.path().join(from.file_name().unwrap_or_default());
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{e}"));
    }
    let truncated = dir.path().join("stats_increment.wasm");
    let good = std::fs::read(plugin_path("stats-increment")).unwrap_or_default();
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap_or_else(|e| panic!("{e}"));
    let out = switchyard(&[
        "check",
        "--config",
        "config/switchyard.toml",
        "--plugin-dir",
        &dir.path().to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("plugin stats-increment"),
        "names the plugin: {stderr}"
    );
    assert!(
        stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );
}

/// `switchyard explain` says which routes and plugins an event reaches and
/// why, and warns about routes that overlap or never take effect.
#[test]
fn explain_shows_routes_matches_and_config_warnings() {
    let out = switchyard(&[
        "explain",
        "--event",
        "plugins/stats-increment/examples/user-created.json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("route #3 (config/switchyard.toml:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stats-increment  (dedupe key id:6a1f0c2e-8b3d-4f57-9e12-3c4d5e6f7a80)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("warnings"),
        "the shipped config is clean: {stdout}"
    );
    // The seeds' routes keep order by key, and the example has a key.
    assert!(stdout.contains("  ordering: key\n"), "{stdout}");
    assert!(
        stdout.contains(
            "runs in key order: after the earlier events of its partition with the same key"
        ),
        "{stdout}"
    );

    let out = switchyard(&["explain", "--topic", "no.such.topic"]);
    assert!(text(&out.stdout).contains("reaches no plugin"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("overlap.toml");
    std::fs::write(
        &config,
        r#"[kafka]
brokers = "127.0.0.1:9092"
[database]
url = "sqlite::memory:"
[plugins.welcome]
file = "welcome_notification.wasm"
[plugins.stats]
file = "stats_increment.wasm"
[plugins.spare]
file = "role_mapping.wasm"

[[routes]]
topics = ["user.registered.v1"]
plugins = ["welcome"]
match = { header = "event-type", equals = "user_registered" }
dedupe = { header = "event-id" }

[[routes]]
topics = ["user.registered.v1"]
plugins = ["welcome", "stats"]

[[routes]]
topics = ["user.registered.v1"]
plugins = ["stats"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = config.to_string_lossy().to_string();
    let out = switchyard(&[
        "explain",
        "--config",
        &config,
        "--topic",
        "user.registered.v1",
        "--header",
        "event-type=user_registered",
        "--header",
        "event-id=evt-9",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("match: header event-type = \"user_registered\"; the event has \"user_registered\" -> taken"), "{stdout}");
    assert!(
        stdout.contains("welcome: already reached by an earlier route (key id:evt-9)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  welcome  (dedupe key id:evt-9)\n  stats  (dedupe key pos:user.registered.v1/0/0)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("overlap.toml:13) and route #2"), "{stdout}");
    assert!(stdout.contains("(overlap)"), "{stdout}");
    assert!(
        stdout.contains("route #3 (")
            && stdout.contains("never sends topic user.registered.v1 to plugin stats")
            && stdout.contains("(unreachable)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plugin spare is configured but no route reaches it"),
        "{stdout}"
    );

    // Not taken: another event type goes only through route #2.
    let out = switchyard(&[
        "explain",
        "--config",
        &config,
        "--topic",
        "user.registered.v1",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(json["routes"][0]["taken"], false);
    assert_eq!(
        json["reaches"],
        serde_json::json!([
            {"plugin": "welcome", "dedupe_key": "pos:user.registered.v1/0/0"},
            {"plugin": "stats", "dedupe_key": "pos:user.registered.v1/0/0"}
        ])
    );
    assert_eq!(json["warnings"].as_array().map(Vec::len), Some(3));
}

/// Every command's `--help` carries an example.
#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        &["run"][..],
        &["check"],
        &["dev"],
        &["explain"],
        &["produce"],
        &["plugin", "test"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "replay"],
        &["consume"],
        &["record"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = switchyard(&args);
        let help = text(&out.stdout);
        assert!(out.status.success(), "{cmd:?}");
        assert!(help.contains("Example"), "{cmd:?} has no example:\n{help}");
        assert!(
            help.contains(&format!("switchyard {}", cmd.join(" "))),
            "{cmd:?}:\n{help}"
        );
    }
    let out = switchyard(&["run", "--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: text, json"));
}

/// `plugin new` makes a plugin in each language that builds with its own
/// toolchain, passes its unit test and handles its example event; a Rust
/// crate joins the workspace; bad names and taken directories are refused.
#[test]
fn plugin_new_makes_plugins_that_build_test_and_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fake = dir.path();
    // A checkout's shape: the WIT, the SDKs (linked), a workspace.
    std::fs::create_dir_all(fake.join("wit")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(fake.join("plugins")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(root().join("wit/plugin.wit"), fake.join("wit/plugin.wit"))
        .unwrap_or_else(|e| panic!("{e}"));
    #[cfg(unix)]
    std::os::unix::fs::symlink(root().join("plugins/sdk-ts"), fake.join("plugins/sdk-ts"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        fake.join("Cargo.toml"),
        "[workspace]\nmembers = [\n    \"host\",\n    \"plugins/sdk\",\n]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let new = |name: &str, lang: &str| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["plugin", "new", name, "--lang", lang])
            .current_dir(fake)
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    for (name, lang) in [
        ("notes-rs", "rust"),
        ("notes-ts", "ts"),
        ("notes-py", "python"),
    ] {
        let out = new(name, lang);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("switchyard plugin build plugins/{name}")),
            "{stdout}"
        );
        assert!(
            fake.join("plugins")
                .join(name)
                .join("examples/example.json")
                .is_file()
        );
    }
    let cargo = std::fs::read_to_string(fake.join("Cargo.toml")).unwrap_or_default();
    assert!(cargo.contains("    \"plugins/notes-rs\",\n"), "{cargo}");
    let lib = std::fs::read_to_string(fake.join("plugins/notes-rs/src/lib.rs")).unwrap_or_default();
    assert!(
        lib.contains("\"notes-rs\"") && lib.contains("notes_rs_notes"),
        "{lib}"
    );
    let again = new("notes-ts", "ts");
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let bad = new("Notes", "rust");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("not a plugin name"),
        "{}",
        text(&bad.stderr)
    );

    // The TypeScript and Python ones: unit test, build, example event.
    let unit = Command::new("node")
        .args(["plugins/sdk-ts/build.mjs", "--test"])
        .arg(fake.join("plugins/notes-ts"))
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("node: {e}"));
    assert!(
        unit.status.success(),
        "{}{}",
        text(&unit.stdout),
        text(&unit.stderr)
    );
    let unit = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s"])
        .arg(fake.join("plugins/notes-py"))
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(unit.status.success(), "{}", text(&unit.stderr));
    let python = root().join(".switchyard/venv-plugins/bin/python");
    for (name, builder, runner) in [
        (
            "notes-ts",
            "plugins/sdk-ts/build.mjs",
            std::path::PathBuf::from("node"),
        ),
        ("notes-py", "plugins/sdk-py/build.py", python),
    ] {
        let wasm = fake.join(format!("{}.wasm", name.replace('-', "_")));
        let built = Command::new(&runner)
            .arg(root().join(builder))
            .arg(fake.join("plugins").join(name))
            .arg(&wasm)
            .env(
                "SWITCHYARD_COMPONENTIZE_PY",
                root().join(".switchyard/venv-plugins/bin/componentize-py"),
            )
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", runner.display()));
        assert!(built.status.success(), "{name}: {}", text(&built.stderr));
        let example = fake
            .join("plugins")
            .join(name)
            .join("examples/example.json");
        let out = switchyard(&[
            "plugin",
            "test",
            &wasm.to_string_lossy(),
            "--event",
            &example.to_string_lossy(),
            "--event",
            &example.to_string_lossy(),
        ]);
        let report = text(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {report}{}",
            text(&out.stderr)
        );
        assert!(report.contains("outcome  DONE"), "{name}: {report}");
        assert!(
            report.contains("already recorded"),
            "{name}: the second is skipped: {report}"
        );
        assert!(
            report.contains(&format!("{}.recorded", name)),
            "{name}: {report}"
        );
    }
}

/// A `switchyard` command running in the background, its standard output
/// and error read line by line as they come, each line with its time.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(bool, String, std::time::Instant)>,
    stdout: Vec<(String, std::time::Instant)>,
    stderr: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .current_dir(root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run switchyard: {e}"));
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child
            .stdout
            .take()
            .map(|s| (true, Box::new(s) as Box<dyn std::io::Read + Send>));
        let err = child
            .stderr
            .take()
            .map(|s| (false, Box::new(s) as Box<dyn std::io::Read + Send>));
        for (is_stdout, stream) in [out, err].into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send((is_stdout, line, std::time::Instant::now()));
                }
            });
        }
        Self {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    /// Read lines until `done` says enough; false when `timeout` ran out
    /// or both streams closed first.
    fn read_until(&mut self, timeout: std::time::Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((true, line, at)) => self.stdout.push((line, at)),
                Ok((false, line, _)) => self.stderr.push(line),
                Err(_) => return false,
            }
        }
        true
    }

    fn wait_for_stderr(&mut self, needle: &str) {
        let found = self.read_until(std::time::Duration::from_secs(30), |r| {
            r.stderr.iter().any(|l| l.contains(needle))
        });
        assert!(
            found,
            "no {needle:?} on stderr:\n{}",
            self.stderr.join("\n")
        );
    }

    fn stdout_text(&self) -> String {
        self.stdout.iter().map(|(l, _)| format!("{l}\n")).collect()
    }

    /// Wait for the command to end; its exit status.
    fn finish(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // What is still in the pipes.
                self.read_until(std::time::Duration::from_secs(5), |_| false);
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "switchyard did not end within 60 s\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_text(),
                    self.stderr.join("\n")
                );
            }
            self.read_until(std::time::Duration::from_millis(100), |_| false);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `switchyard consume` shows records as they arrive — the first at once
/// (the issue saw a consumer wait 23 s on Tansu) — with partition, offset,
/// key, every header and the value: seed JSON pretty-printed, text as it
/// is, binary escaped; `--json` gives one object per line; and librdkafka's
/// end-of-partition reports stay off the terminal.
#[tokio::test]
async fn consume_shows_records_as_they_arrive() {
    let broker = common::Broker::start();
    let topic = "user.registered.v1";
    broker.create_topics(&[topic], 2).await;
    let mut consume =
        Running::start(&["consume", topic, "--brokers", &broker.addr, "--count", "3"]);
    consume.wait_for_stderr("from the end (new records only)");

    let seed = switchyard(&[
        "produce",
        "--brokers",
        &broker.addr,
        "--event",
        "plugins/welcome-notification/examples/user-registered.json",
    ]);
    let produced = std::time::Instant::now();
    assert!(seed.status.success(), "{}", text(&seed.stderr));
    let shown = consume.read_until(std::time::Duration::from_secs(30), |r| !r.stdout.is_empty());
    assert!(shown, "nothing shown:\n{}", consume.stderr.join("\n"));
    let delay = consume.stdout[0].1.saturating_duration_since(produced);
    assert!(
        delay < std::time::Duration::from_secs(3),
        "the first record took {delay:?} to show"
    );
    let producer = broker.producer();
    common::produce(
        &producer,
        topic,
        Some("k-text"),
        &[("request-id", "r-2")],
        b"first line\nsecond line",
    )
    .await;
    common::produce(&producer, topic, None, &[], b"\xff\x00bin").await;
    let status = consume.finish();
    let out = consume.stdout_text();
    let err = consume.stderr.join("\n");
    assert!(status.success(), "{out}\n{err}");
    for part in [
        "── user.registered.v1  partition ",
        "  offset 0  ",
        "key      \"8f14e45f-ceea-4e67-a1b2-9c3d4e5f6a7b\"\n",
        "headers  event-type=\"user_registered\"\n",
        "         event-id=\"2c5d8e1f-4a7b-4c9d-8e0f-1a2b3c4d5e6f\"\n",
        "         content-type=\"application/json\"\n",
        "         request-id=\"d41d8cd9-8f00-4b20-9e98-0ecf8427e1a5\"\n",
        "value    JSON, ",
        "  {\n    \"event\": \"user_registered\",\n",
        "    \"payload\": {\n      \"user_id\": \"8f14e45f-ceea-4e67-a1b2-9c3d4e5f6a7b\",\n",
        "      \"full_name\": \"Lucía Fernández\"\n",
        "key      \"k-text\"\nheaders  request-id=\"r-2\"\nvalue    text, 22 bytes\n  first line\n  second line\n",
        "key      (none)\nheaders  (none)\nvalue    binary (not UTF-8), 5 bytes, escaped:\n  \"\\xff\\u{0}bin\"\n",
    ] {
        assert!(out.contains(part), "no {part:?} in:\n{out}");
    }
    assert_eq!(out.matches("── user.registered.v1").count(), 3, "{out}");
    assert!(
        !err.contains("PartitionEOF") && !err.contains("ERROR"),
        "{err}"
    );

    // The same records again, from the beginning, for jq.
    let json = switchyard(&[
        "consume",
        topic,
        "--brokers",
        &broker.addr,
        "--from-beginning",
        "--count",
        "3",
        "--json",
    ]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let lines: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3);
    let by_key = |k: serde_json::Value| {
        lines
            .iter()
            .find(|l| l["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no record with key {k}: {lines:?}"))
    };
    let seed = by_key("8f14e45f-ceea-4e67-a1b2-9c3d4e5f6a7b".into());
    assert_eq!(seed["topic"], topic);
    assert_eq!(seed["offset"], 0);
    assert!(seed["partition"].is_i64() && seed["timestamp"].is_string());
    assert_eq!(seed["headers"]["event-type"], "user_registered");
    assert_eq!(seed["value"]["payload"]["full_name"], "Lucía Fernández");
    assert_eq!(
        by_key("k-text".into())["value_raw"],
        "first line\nsecond line"
    );
    assert_eq!(by_key(serde_json::Value::Null)["value_hex"], "ff0062696e");
}

/// A topic that does not exist yet is waited for, said once; the records
/// that make it appear are shown. `--no-wait` fails at once, naming the
/// topics there; Ctrl-C ends a follow with status 0.
#[tokio::test]
async fn consume_waits_for_a_topic_and_stops_on_ctrl_c() {
    let broker = common::Broker::start();
    broker.create_topics(&["already.there"], 1).await;
    let missing = switchyard(&["consume", "not.yet", "--brokers", &broker.addr, "--no-wait"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = text(&missing.stderr);
    assert!(
        err.contains("topic not.yet does not exist on") && err.contains("already.there"),
        "{err}"
    );

    let mut consume = Running::start(&[
        "consume",
        "late.topic",
        "--brokers",
        &broker.addr,
        "--count",
        "1",
    ]);
    consume.wait_for_stderr("waiting for it to appear");
    // Several looks at the metadata go by: the notice stays one line.
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    common::produce(
        &broker.producer(),
        "late.topic",
        Some("first"),
        &[],
        br#"{"n": 1}"#,
    )
    .await;
    let status = consume.finish();
    let err = consume.stderr.join("\n");
    assert!(status.success(), "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(
        err.contains("appeared: reading it from its beginning"),
        "{err}"
    );
    let out = consume.stdout_text();
    assert!(
        out.contains("key      \"first\"") && out.contains("    \"n\": 1\n"),
        "{out}"
    );

    let mut follow = Running::start(&["consume", "already.there", "--brokers", &broker.addr]);
    follow.wait_for_stderr("Ctrl-C to stop");
    let sent = Command::new("kill")
        .args(["-INT", &follow.child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()));
    let status = follow.finish();
    assert!(status.success(), "{}", follow.stderr.join("\n"));
    assert!(
        follow
            .stderr
            .iter()
            .any(|l| l == "stopped after 0 record(s)"),
        "{}",
        follow.stderr.join("\n")
    );
}

/// The seed examples, on one topic.
fn seed_events_on(topic: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for plugin in [
        "role-mapping",
        "profile-creation",
        "stats-increment",
        "welcome-notification",
    ] {
        let dir = root().join("plugins").join(plugin).join("examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{e}"));
            let mut ev: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            ev["topic"] = topic.into();
            events.push(ev);
        }
    }
    assert!(events.len() >= 10, "{events:?}");
    events
}

/// The parts of an event a recording must keep: topic, key, headers,
/// payload.
type Essence = (String, Option<Vec<u8>>, switchyard::event::Headers, Vec<u8>);

fn essence(events: &[switchyard::event::Event]) -> Vec<Essence> {
    events
        .iter()
        .map(|e| {
            (
                e.topic.clone(),
                e.key.clone(),
                e.headers.clone(),
                e.payload.clone(),
            )
        })
        .collect()
}

/// `switchyard record` saves real events as an event file that
/// `read_events` (so `plugin test` and `produce`) reads back into the
/// same events; producing the file reproduces them; a binary value is
/// skipped and said; `--timeout` saves what arrived and exits 1.
#[tokio::test]
async fn record_saves_events_that_read_back_the_same() {
    let broker = common::Broker::start();
    let topic = "recorded.events";
    broker.create_topics(&[topic], 1).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut events = seed_events_on(topic);
    events.push(serde_json::json!({
        "topic": topic, "key": "plain", "headers": {"trace": null, "request-id": "r-9"},
        "value_raw": "not JSON: just text"
    }));
    let input = dir.path().join("input.events.json");
    std::fs::write(
        &input,
        serde_json::to_string_pretty(&events).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let n = events.len();

    // A record the format cannot hold comes first: skipped, and said.
    common::produce(&broker.producer(), topic, Some("bin"), &[], b"\x00\xff\xfe").await;
    let produced = switchyard(&[
        "produce",
        "--brokers",
        &broker.addr,
        "--event",
        &input.to_string_lossy(),
    ]);
    assert!(produced.status.success(), "{}", text(&produced.stderr));

    let file = dir.path().join("recorded.events.json");
    let count = n.to_string();
    let record = |count: &str, file: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "record",
            "--topic",
            topic,
            "--brokers",
            &broker.addr,
            "--from-beginning",
            "--count",
            count,
            "--out",
        ];
        let file = file.to_string_lossy().into_owned();
        args.push(&file);
        args.extend_from_slice(extra);
        switchyard(&args)
    };
    let out = record(&count, &file, &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("skipped partition 0 offset 0: its value is binary (not UTF-8, 3 bytes"),
        "{err}"
    );
    assert!(err.contains(&format!("wrote {n} event(s) to")), "{err}");
    let saved = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        saved.starts_with("[\n  {\n    \"topic\": \"recorded.events\",\n    \"key\": "),
        "{saved}"
    );
    assert!(
        !saved.contains("\"partition\"") && !saved.contains("\"offset\""),
        "{saved}"
    );
    assert!(
        saved.contains("\"value_raw\": \"not JSON: just text\""),
        "{saved}"
    );
    let read = |p: &std::path::Path| {
        switchyard::plugin_test::read_events(p).unwrap_or_else(|e| panic!("{e}"))
    };
    let recorded = read(&file);
    assert_eq!(essence(&recorded), essence(&read(&input)), "{saved}");

    // Producing the recording puts the same events on the topic again.
    let again = switchyard(&[
        "produce",
        "--brokers",
        &broker.addr,
        "--event",
        &file.to_string_lossy(),
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let twice = dir.path().join("twice.events.json");
    let out = record(&(2 * n).to_string(), &twice, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let twice = read(&twice);
    assert_eq!(essence(&twice[n..]), essence(&recorded));

    // More than there is: the timeout saves what arrived, exit status 1.
    let short = dir.path().join("short.events.json");
    let out = record(&(2 * n + 1).to_string(), &short, &["--timeout", "3"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "ran out with {} of {} event(s): wrote those",
            2 * n,
            2 * n + 1
        )),
        "{err}"
    );
    assert_eq!(read(&short).len(), 2 * n);

    // To standard output.
    let out = record("1", std::path::Path::new("-"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = switchyard::plugin_test::parse_events("<stdout>", &text(&out.stdout))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(essence(&first), essence(&recorded[..1]));
}
