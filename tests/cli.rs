//! `switchyard plugin test` as its users run it: the binary, a release
//! plugin, a seed event file; the report shows outcome, SQL, rows changed
//! and messages, and the exit status says whether the events committed.

mod common;

use common::{plugin_path, root};
use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
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
