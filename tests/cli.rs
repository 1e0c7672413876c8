//! `switchyard plugin test` as its users run it: the binary, a release
//! plugin, a seed event file; the report shows outcome, SQL, rows changed
//! and messages, and the exit status says whether the events committed.

mod common;

use common::{plugin_path, root};
use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_COMPILE_CACHE", common::compile_cache_dir())
        .args(args)
        .current_dir(root())
        .env_remove("SWITCHYARD_DATABASE_URL")
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
