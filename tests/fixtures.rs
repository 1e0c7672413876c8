//! Golden fixtures: each seed plugin (and any plugin with a `fixtures/`
//! folder, named as in the config) ships event files
//! (`plugins/<plugin>/fixtures/<case>.events.json`, with an optional
//! `<case>.setup.sql`) and what the plugin does with them
//! (`<case>.expect.json`: outcomes, rows changed, messages published).
//! Here every case runs through `switchyard plugin test --config
//! config/switchyard.toml --plugin <plugin> --database both --expect ...`,
//! as an author would run it, and must match on SQLite and PostgreSQL.
//! Also: a changed behaviour fails with a readable diff and `--update`
//! rewrites the expectation; `--config` gives the test the config's
//! grants and settings; `--database both` shows where backends differ.

mod common;

use common::{plugin_path, root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SEEDS: [&str; 4] = [
    "role-mapping",
    "profile-creation",
    "stats-increment",
    "welcome-notification",
];

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("SWITCHYARD_COMPILE_CACHE", common::compile_cache_dir())
        .args(args)
        .current_dir(root())
        .env_remove("SWITCHYARD_DATABASE_URL")
        .env_remove("SWITCHYARD_PLUGIN_DIR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run switchyard: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where the tests' plugin builds are (CI keeps them outside the clone).
fn plugin_dir() -> String {
    plugin_path("role-mapping")
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

/// The cases of a plugin: (events, setup if any, expectation).
fn cases(plugin: &str) -> Vec<(PathBuf, Option<PathBuf>, PathBuf)> {
    let dir = root().join("plugins").join(plugin).join("fixtures");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".events.json")?
                .to_string();
            let setup = dir.join(format!("{name}.setup.sql"));
            Some((
                p.clone(),
                setup.exists().then_some(setup),
                dir.join(format!("{name}.expect.json")),
            ))
        })
        .collect();
    found.sort();
    found
}

fn test_args<'a>(
    plugin: &'a str,
    events: &'a str,
    setup: Option<&'a str>,
    expect: &'a str,
    dir: &'a str,
) -> Vec<&'a str> {
    let mut args = vec![
        "plugin",
        "test",
        "--config",
        "config/switchyard.toml",
        "--plugin",
        plugin,
        "--plugin-dir",
        dir,
        "--event",
        events,
        "--database",
        "both",
        "--expect",
        expect,
    ];
    if let Some(s) = setup {
        args.extend(["--setup", s]);
    }
    args
}

/// Every plugin directory with a `fixtures/` folder: the seeds, and any
/// plugin an author keeps fixtures for (named as in the config).
fn plugins_with_fixtures() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root().join("plugins"))
        .unwrap_or_else(|e| panic!("plugins/: {e}"))
        .filter_map(Result::ok)
        .filter(|e| e.path().join("fixtures").is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    found.sort();
    for seed in SEEDS {
        assert!(
            found.iter().any(|p| p == seed),
            "plugins/{seed}/fixtures is missing: the seed plugins ship their fixtures"
        );
    }
    found
}

#[test]
fn every_plugins_fixtures_match_on_sqlite_and_postgres() {
    let dir = plugin_dir();
    let mut failures = Vec::new();
    for plugin in plugins_with_fixtures() {
        let plugin = plugin.as_str();
        let cases = cases(plugin);
        assert!(
            !cases.is_empty(),
            "plugins/{plugin}/fixtures holds no <case>.events.json"
        );
        for (events, setup, expect) in cases {
            assert!(
                expect.exists(),
                "{} has no expectation: write it with `switchyard plugin test ... --expect {} --update`",
                events.display(),
                expect.display()
            );
            let events = events.display().to_string();
            let setup = setup.map(|s| s.display().to_string());
            let expect = expect.display().to_string();
            let out = switchyard(&test_args(plugin, &events, setup.as_deref(), &expect, &dir));
            let stdout = text(&out.stdout);
            let agree = stdout.contains("SQLite and PostgreSQL agree");
            let matched = stdout.matches(": matches (").count() == 2;
            if !(out.status.success() && agree && matched) {
                failures.push(format!(
                    "{events}: exit {:?}\n{stdout}\n{}",
                    out.status.code(),
                    text(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_changed_behaviour_shows_a_diff_and_update_rewrites_the_expectation() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (events, _, stored) = cases("stats-increment")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no stats-increment fixture"));
    let original = std::fs::read_to_string(&stored).unwrap_or_else(|e| panic!("{e}"));
    // What the plugin did, told differently: the 11th interview did not
    // cross the quota.
    let mut doctored: serde_json::Value =
        serde_json::from_str(&original).unwrap_or_else(|e| panic!("{e}"));
    let crossing = doctored["events"]
        .as_array_mut()
        .and_then(|events| {
            events
                .iter_mut()
                .find(|e| e["published"].as_array().is_some_and(|p| !p.is_empty()))
        })
        .unwrap_or_else(|| panic!("the fixture publishes a quota message: {original}"));
    crossing["published"] = serde_json::json!([]);
    let file = tmp.path().join("quota.expect.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&doctored).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = plugin_dir();
    let events = events.display().to_string();
    let file_s = file.display().to_string();
    let mut args = test_args("stats-increment", &events, None, &file_s, &dir);
    args[11] = "sqlite";
    let out = switchyard(&args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("DIFFERS on sqlite"), "{stdout}");
    assert!(
        stdout.contains("+          \"topic\": \"user.quota_exceeded\""),
        "{stdout}"
    );
    assert!(stdout.contains("--update"), "{stdout}");

    args.push("--update");
    let out = switchyard(&args);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let rewritten = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(rewritten, original, "--update writes what the run did");
    args.pop();
    let out = switchyard(&args);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn the_config_gives_the_test_its_grants_and_settings() {
    let dir = plugin_dir();
    let event = "plugins/welcome-notification/examples/user-registered.json";
    // The shipped config's settings: its subject.
    let out = switchyard(&[
        "plugin",
        "test",
        "--config",
        "config/switchyard.toml",
        "--plugin",
        "welcome-notification",
        "--plugin-dir",
        &dir,
        "--event",
        event,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("Welcome, Lucía Fernández!"), "{stdout}");

    // The same plugin under a config of our own, with one change each.
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shipped =
        std::fs::read_to_string(root().join("config/switchyard.toml")).unwrap_or_default();
    let changed = |from: &str, to: &str| {
        let text = shipped.replace(from, to);
        assert_ne!(text, shipped, "the shipped config holds {from:?}");
        text
    };
    let under = |config_text: &str| {
        let config = common::write_config(tmp.path(), config_text);
        let config = config.display().to_string();
        let out = switchyard(&[
            "plugin",
            "test",
            "--config",
            &config,
            "--plugin",
            "welcome-notification",
            "--plugin-dir",
            &dir,
            "--event",
            event,
        ]);
        (out.status.code(), text(&out.stdout))
    };

    // Its settings: the subject.
    let (code, stdout) = under(&changed(
        "settings = { subject = \"Welcome, {name}!\" }",
        "settings = { subject = \"¡Hola, {name}!\" }",
    ));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("¡Hola, Lucía Fernández!"),
        "the config's settings: {stdout}"
    );

    // Its limits: the plugin's one message is over a cap of none.
    let (code, stdout) = under(&changed(
        "[plugins.welcome-notification]\n",
        "[plugins.welcome-notification]\nlimits = { max_publishes = 0 }\n",
    ));
    assert_eq!(code, Some(1), "the config's limits: {stdout}");
    assert!(stdout.contains("publish refused"), "{stdout}");

    // Its grants: a topic it does not grant is refused in the test as it
    // would be in `dev`.
    let (code, stdout) = under(&changed(
        "publish = [\"notification.send.email\"]",
        "publish = [\"notification.send.sms\"]",
    ));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("publish refused"), "{stdout}");
    assert!(stdout.contains("notification.send.email"), "{stdout}");

    // A name the config does not have: the names it has.
    let out = switchyard(&[
        "plugin",
        "test",
        "--config",
        "config/switchyard.toml",
        "--plugin",
        "welcome",
        "--event",
        event,
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("has no plugin \"welcome\"") && stderr.contains("welcome-notification"),
        "{stderr}"
    );
}

#[test]
fn both_backends_show_where_they_differ() {
    // SQLite adds a number and a word (the word counts as 0); PostgreSQL
    // refuses the word as an integer.
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let events = tmp.path().join("events.json");
    std::fs::write(
        &events,
        serde_json::json!([{
            "topic": "t",
            "value": {"do": "sql", "sql": "SELECT 1 + 'x' AS n"}
        }])
        .to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let wasm = plugin_path("test-hostile").display().to_string();
    let events_s = events.display().to_string();
    let out = switchyard(&[
        "plugin",
        "test",
        &wasm,
        "--event",
        &events_s,
        "--database",
        "both",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("═══ on sqlite ═══"), "{stdout}");
    assert!(stdout.contains("═══ on postgres ═══"), "{stdout}");
    assert!(
        stdout.contains("SQLite and PostgreSQL DIFFER (- sqlite, + postgres)"),
        "{stdout}"
    );
    let diff = &stdout[stdout.find("DIFFER").unwrap_or(0)..];
    assert!(diff.contains("-        \"kind\": \"done\""), "{diff}");
    assert!(diff.contains("+        \"kind\": \"rejected\""), "{diff}");
}

/// The expectation files are what `--update` writes: pretty JSON with a
/// final newline (so that a hand edit or a merge shows as a small diff).
#[test]
fn the_expectations_are_in_the_written_form() {
    for plugin in plugins_with_fixtures() {
        let plugin = plugin.as_str();
        for (_, _, expect) in cases(plugin) {
            let text = std::fs::read_to_string(&expect).unwrap_or_default();
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", expect.display()));
            assert_eq!(
                text,
                switchyard::expect::render(&value),
                "{}",
                Path::new(&expect).display()
            );
        }
    }
}
