//! The runtime against a plugin that misbehaves on request
//! (`plugins/test-hostile`): every guest failure is an outcome with a
//! reason, never a host panic; a failed instance is never reused; effects
//! of a failed or rejected event are rolled back.

mod common;

use common::{Harness, plugin_path};
use serde_json::json;
use std::sync::Arc;
use switchyard::capabilities::PluginEnv;
use switchyard::capabilities::publish::Grants;
use switchyard::database::Backend;
use switchyard::limits::Limits;
use switchyard::runtime::{Failure, LoadError, Outcome, Runtime, RuntimeOptions};

const PLUGIN: &str = "test-hostile";

fn tight_limits() -> Limits {
    Limits {
        deadline_ms: 300,
        memory_bytes: 16 << 20,
        ..Limits::default()
    }
}

async fn hostile(backend: Backend) -> Harness {
    Harness::with_env(
        PLUGIN,
        backend,
        serde_json::Map::new(),
        tight_limits(),
        Grants::new(vec!["allowed.*".into()]),
    )
    .await
}

/// The hostile plugin with `limits` and every topic granted.
async fn hostile_with(backend: Backend, limits: Limits) -> Harness {
    Harness::with_env(
        PLUGIN,
        backend,
        serde_json::Map::new(),
        limits,
        Grants::all(),
    )
    .await
}

async fn insert_mark(h: &mut Harness, id: &str) -> Outcome {
    h.send(
        "t",
        None,
        &[],
        json!({"do": "sql", "sql": "INSERT INTO hostile_marks (id, note) VALUES ($1, $2) RETURNING id", "params": [id, "n"]}),
    )
    .await
    .outcome
}

async fn traps_are_outcomes_and_the_instance_is_replaced(backend: Backend) {
    let mut h = hostile(backend).await;
    let first = h.send("t", None, &[], json!({"do": "ok"})).await;
    assert_eq!(first.outcome, Outcome::Done);
    assert!(first.fresh_instance);

    h.options.record = true;
    let panic = h.send("t", None, &[], json!({"do": "panic"})).await;
    h.options.record = false;
    let lines: Vec<&str> = panic.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.contains("panicked at")),
        "the panic is logged: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("RUST_BACKTRACE")),
        "no advice a plugin cannot take: {lines:?}"
    );
    match &panic.outcome {
        Outcome::Failed(Failure::Trap(reason)) => {
            assert!(reason.contains("unreachable"), "{reason}");
            assert!(
                reason.contains("asked to panic"),
                "panic message kept: {reason}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // The trapped store is gone: the next event runs on a new instance.
    let after = h.send("t", None, &[], json!({"do": "ok"})).await;
    assert_eq!(after.outcome, Outcome::Done);
    assert!(
        after.fresh_instance,
        "a trapped instance must not be reused"
    );
    assert_eq!(h.worker.instances_started, 2);
}

async fn deadline_interrupts_an_endless_loop(backend: Backend) {
    let mut h = hostile(backend).await;
    let started = std::time::Instant::now();
    let inv = h.send("t", None, &[], json!({"do": "loop"})).await;
    assert_eq!(
        inv.outcome,
        Outcome::Failed(Failure::Deadline { deadline_ms: 300 })
    );
    // Within twice the deadline (generous for a loaded CI machine: the
    // point is that it ends, not the exact figure).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        h.send("t", None, &[], json!({"do": "ok"})).await.outcome,
        Outcome::Done
    );
}

async fn memory_cap_stops_a_memory_bomb(backend: Backend) {
    let mut h = hostile(backend).await;
    let inv = h.send("t", None, &[], json!({"do": "oom"})).await;
    assert_eq!(
        inv.outcome,
        Outcome::Failed(Failure::Memory {
            limit_bytes: 16 << 20
        })
    );
    let inv = h.send("t", None, &[], json!({"do": "recurse"})).await;
    assert!(
        matches!(&inv.outcome, Outcome::Failed(Failure::Trap(_))),
        "{:?}",
        inv.outcome
    );
}

/// The sandbox holds for plugins written in TypeScript and Python: the
/// deadline stops a loop, the memory cap a memory bomb, deep recursion and
/// an uncaught exception trap (the exception logged with its stack), the
/// SQL gate and the publish grants refuse what they refuse for Rust, and
/// after each failure the next event runs on a fresh instance.
async fn hostile_typescript_and_python_plugins_are_contained(backend: Backend) {
    for plugin in ["test-hostile-ts", "test-hostile-py"] {
        let limits = Limits {
            deadline_ms: 1000,
            memory_bytes: 64 << 20,
            ..Limits::default()
        };
        let mut h = Harness::with_env(
            plugin,
            backend,
            serde_json::Map::new(),
            limits,
            Grants::new(vec!["allowed.*".into()]),
        )
        .await;
        h.options.record = true;
        let mut send = async |cmd: serde_json::Value| h.send("t", None, &[], cmd).await;
        assert_eq!(
            send(json!({"do": "ok"})).await.outcome,
            Outcome::Done,
            "{plugin}"
        );
        assert_eq!(
            send(json!({"do": "loop"})).await.outcome,
            Outcome::Failed(Failure::Deadline { deadline_ms: 1000 }),
            "{plugin}"
        );
        assert_eq!(
            send(json!({"do": "ok"})).await.outcome,
            Outcome::Done,
            "{plugin}"
        );
        let inv = send(json!({"do": "oom"})).await;
        assert_eq!(
            inv.outcome,
            Outcome::Failed(Failure::Memory {
                limit_bytes: 64 << 20
            }),
            "{plugin}"
        );
        assert_eq!(
            send(json!({"do": "ok"})).await.outcome,
            Outcome::Done,
            "{plugin}"
        );
        // Deep recursion overflows the stack (a trap), or, where frames
        // live on the heap (CPython), reaches the memory cap.
        let inv = send(json!({"do": "recurse"})).await;
        assert!(
            matches!(
                &inv.outcome,
                Outcome::Failed(Failure::Trap(_) | Failure::Memory { .. })
            ),
            "{plugin}: {:?}",
            inv.outcome
        );
        assert_eq!(
            send(json!({"do": "ok"})).await.outcome,
            Outcome::Done,
            "{plugin}"
        );
        let inv = send(json!({"do": "throw"})).await;
        assert!(
            matches!(&inv.outcome, Outcome::Failed(Failure::Trap(_))),
            "{plugin}: {:?}",
            inv.outcome
        );
        assert!(
            inv.logs
                .iter()
                .any(|l| l.level == "error" && l.message.contains("asked to")),
            "{plugin}: the exception is in the log: {:?} {:?}",
            inv.logs,
            inv.outcome
        );
        for (cmd, words) in [
            (
                json!({"do": "sql", "sql": "CREATE TABLE stolen (x int)"}),
                "statement denied: CREATE",
            ),
            (
                json!({"do": "sql", "sql": "SELECT 1; SELECT 2"}),
                "several statements",
            ),
            (
                json!({"do": "publish", "topic": "payments.commands"}),
                "not granted",
            ),
        ] {
            let inv = send(cmd).await;
            assert!(
                matches!(&inv.outcome, Outcome::Rejected(r) if r.contains(words)),
                "{plugin}: {:?}",
                inv.outcome
            );
        }
        assert_eq!(
            send(json!({"do": "ok"})).await.outcome,
            Outcome::Done,
            "{plugin}"
        );
    }
    // CPython links WASI's files, environment and sockets: the host grants
    // none of them.
    let mut h = Harness::new("test-hostile-py", backend).await;
    let inv = h.send("t", None, &[], json!({"do": "wasi"})).await;
    let Outcome::Rejected(found) = &inv.outcome else {
        panic!("{:?}", inv.outcome)
    };
    for probe in ["file", "dir", "env", "net"] {
        assert!(
            found.contains(&format!("\"{probe}\": \"denied: ")),
            "{probe}: {found}"
        );
    }
}

async fn instances_are_reused_unless_isolated(backend: Backend) {
    let mut h = hostile(backend).await;
    for n in 1..=3 {
        let inv = h.send("t", None, &[], json!({"do": "count"})).await;
        let lines: Vec<&str> = inv.logs.iter().map(|l| l.message.as_str()).collect();
        assert!(lines.is_empty(), "logs are recorded only on request");
        assert_eq!(inv.fresh_instance, n == 1);
    }
    assert_eq!(h.worker.instances_started, 1);

    let mut h = hostile(backend).await.per_event();
    h.options.record = true;
    for _ in 0..3 {
        let inv = h.send("t", None, &[], json!({"do": "count"})).await;
        let lines: Vec<&str> = inv.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(lines, vec!["handled 1"], "each event sees a fresh instance");
    }
    assert_eq!(h.worker.instances_started, 3);
}

async fn rejected_and_failed_events_roll_back(backend: Backend) {
    let mut h = hostile(backend).await;
    assert_eq!(insert_mark(&mut h, "a").await, Outcome::Done);
    // A duplicate key is a constraint error the plugin turns into a
    // rejection; nothing of that event stays.
    let dup = insert_mark(&mut h, "a").await;
    assert!(
        matches!(&dup, Outcome::Rejected(r) if r.starts_with("unique constraint ")),
        "{dup:?}"
    );
    assert_eq!(h.count("hostile_marks").await, 1);
}

/// The SDK's default mapping of a database error (`?`) through the real
/// host: a CHECK or NOT NULL violation fails the same way on every try, so
/// the event is rejected with the database's reason intact; a UNIQUE
/// violation may pass once a race is over, so it is retried. Nothing of
/// any of them stays. (The table is made by a `portable_migration`.)
async fn constraint_violations_that_cannot_pass_are_rejected(backend: Backend) {
    let mut h = hostile(backend).await;
    let violate = |c: &str| json!({"do": "violate", "id": format!("v-{c}"), "constraint": c});
    let check = h.send("t", None, &[], violate("check")).await.outcome;
    // PostgreSQL names the constraint; SQLite quotes its expression.
    let check_words = match backend {
        Backend::Postgres => "hostile_checks_n_check",
        Backend::Sqlite => "CHECK constraint failed: n >= 0",
    };
    assert!(
        matches!(&check, Outcome::Rejected(r) if r.starts_with("check constraint ") && r.contains(check_words)),
        "{check:?}"
    );
    let not_null = h.send("t", None, &[], violate("not-null")).await.outcome;
    assert!(
        matches!(&not_null, Outcome::Rejected(r) if r.starts_with("not-null constraint ") && r.contains("note")),
        "{not_null:?}"
    );
    let unique = h.send("t", None, &[], violate("unique")).await.outcome;
    assert!(
        matches!(&unique, Outcome::Retry(r) if r.starts_with("unique constraint ")),
        "{unique:?}"
    );
    assert_eq!(h.count("hostile_checks").await, 0);
}

/// Rows decoded into a struct by the Rust SDK (`db::query_one_as`) read the
/// same on both backends: a timestamp is the same RFC 3339 text whether
/// PostgreSQL hands over microseconds or SQLite the text it stored, from
/// RFC 3339 or epoch milliseconds alike. A row that does not fit rejects
/// the event, naming the column.
async fn rows_decode_into_structs_alike_on_both_backends(backend: Backend) {
    let mut h = hostile(backend).await;
    h.options.record = true;
    for (id, at) in [
        ("d1", json!({"at": "2026-11-30T12:30:00.250+03:00"})),
        ("d2", json!({"at_ms": 1_796_031_000_250_i64})),
    ] {
        let mut command = json!({"do": "decode", "id": id, "n": 3});
        if let (Some(c), Some(a)) = (command.as_object_mut(), at.as_object()) {
            c.extend(a.clone());
        }
        let inv = h.send("t", None, &[], command).await;
        assert_eq!(inv.outcome, Outcome::Done, "{id}");
        let lines: Vec<&str> = inv.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            lines,
            vec![format!(
                r#"decoded {{"id":"{id}","note":"d","n":3,"at":"2026-11-30T09:30:00.250+00:00"}}"#
            )]
        );
    }
    let null_n = h
        .send("t", None, &[], json!({"do": "decode", "id": "d3"}))
        .await;
    assert_eq!(
        null_n.outcome,
        Outcome::Rejected(
            "invalid statement: row 1 does not decode into Mark: column n: invalid type: NULL, expected i64"
                .into()
        )
    );
    let far = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "decode", "id": "d4", "n": 1, "at_ms": 253_402_300_800_000_i64}),
        )
        .await;
    assert_eq!(
        far.outcome,
        Outcome::Rejected("at_ms 253402300800000 is out of range".into())
    );
    assert_eq!(h.count("hostile_checks").await, 2);
}

/// Settings decoded once per instance (`config::Settings`): read on the
/// first event, the same on the next; settings that do not decode reject
/// every event with the same reason.
async fn settings_are_decoded_once_per_instance(backend: Backend) {
    let settings = |v: serde_json::Value| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_value(v).unwrap_or_default()
    };
    let mut h = Harness::with_env(
        PLUGIN,
        backend,
        settings(json!({"greeting": "سلام"})),
        tight_limits(),
        Grants::all(),
    )
    .await;
    h.options.record = true;
    for _ in 0..2 {
        let inv = h.send("t", None, &[], json!({"do": "settings"})).await;
        assert_eq!(inv.outcome, Outcome::Done);
        let lines: Vec<&str> = inv.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(lines, vec!["greeting سلام"]);
    }
    assert_eq!(h.worker.instances_started, 1);
    let mut bad = Harness::with_env(
        PLUGIN,
        backend,
        settings(json!({"greeting": 5})),
        tight_limits(),
        Grants::all(),
    )
    .await;
    for _ in 0..2 {
        let inv = bad.send("t", None, &[], json!({"do": "settings"})).await;
        assert!(
            matches!(&inv.outcome, Outcome::Rejected(r) if r.starts_with("invalid plugin settings: invalid type: integer `5`, expected a string")),
            "{:?}",
            inv.outcome
        );
    }
}

async fn sql_gate_refuses_non_dml(backend: Backend) {
    let mut h = hostile(backend).await;
    assert_eq!(insert_mark(&mut h, "kept").await, Outcome::Done);
    for (sql, expect) in [
        // SQLite ends a comment at the first */, PostgreSQL nests them:
        // the gate must not see one statement where SQLite runs two.
        (
            "SELECT 1 /* /* */ ; DELETE FROM hostile_marks; -- */",
            "nested block comments",
        ),
        ("SELECT $0", "parameter $0 is not allowed"),
        (
            "INSERT OR ROLLBACK INTO hostile_marks (id, note) VALUES ('r', 'r')",
            "ROLLBACK is not allowed",
        ),
        (
            "DELETE FROM switchyard_processed",
            "switchyard's own tables",
        ),
        (
            "INSERT INTO \"switchyard_outbox\" (topic, payload, headers) VALUES ('t', 'x', '[]')",
            "switchyard's own tables",
        ),
        (
            "DROP TABLE hostile_marks",
            "DROP statements are not allowed",
        ),
        ("SELECT 1; DELETE FROM hostile_marks", "several statements"),
        ("BEGIN", "BEGIN statements are not allowed"),
        (
            "SET statement_timeout = 0",
            "SET statements are not allowed",
        ),
        (
            "SELECT pg_read_file('/etc/passwd')",
            "pg_read_file is not allowed",
        ),
    ] {
        let inv = h
            .send("t", None, &[], json!({"do": "sql", "sql": sql}))
            .await;
        assert!(
            matches!(&inv.outcome, Outcome::Rejected(r) if r.contains(expect)),
            "{sql}: {:?}",
            inv.outcome
        );
    }
    assert_eq!(
        h.count("hostile_marks").await,
        1,
        "no refused statement changed anything"
    );
}

async fn publish_grants_and_caps(backend: Backend) {
    let mut h = hostile(backend).await;
    let ok = h
        .send(
            "t",
            None,
            &[("request-id", "req-9")],
            json!({"do": "publish", "topic": "allowed.out", "bytes": 10, "count": 2}),
        )
        .await;
    assert_eq!(ok.outcome, Outcome::Done);
    assert_eq!(ok.messages.len(), 2);
    for m in &ok.messages {
        assert_eq!(m.header_str("request-id"), Some("req-9"));
        assert!(m.header_str("event-id").is_some_and(|id| id.len() == 36));
    }
    assert_ne!(
        ok.messages[0].header_str("event-id"),
        ok.messages[1].header_str("event-id")
    );

    let denied = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "publish", "topic": "secret", "bytes": 1}),
        )
        .await;
    assert!(
        matches!(&denied.outcome, Outcome::Rejected(r) if r.contains("not granted")),
        "{:?}",
        denied.outcome
    );
    assert_eq!(denied.refused_publishes.len(), 1);

    let huge = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "publish", "topic": "allowed.big", "bytes": 1_200_000}),
        )
        .await;
    assert!(
        matches!(&huge.outcome, Outcome::Rejected(r) if r.contains("over the limit")),
        "{:?}",
        huge.outcome
    );
    let many = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "publish", "topic": "allowed.x", "bytes": 1, "count": 101}),
        )
        .await;
    assert!(
        matches!(&many.outcome, Outcome::Rejected(r) if r.contains("more than 100 messages")),
        "{:?}",
        many.outcome
    );
}

async fn stdout_and_stderr_go_to_the_log(backend: Backend) {
    let mut h = hostile(backend).await;
    h.options.record = true;
    let inv = h.send("t", None, &[], json!({"do": "print"})).await;
    let lines: Vec<(String, String)> = inv
        .logs
        .iter()
        .map(|l| (l.level.clone(), l.message.clone()))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("info".to_string(), "to stdout".to_string()),
            ("warn".to_string(), "to stderr".to_string())
        ]
    );
}

/// Result caps: a query over `max_rows` or `max_result_bytes` is a
/// `limit` error, checked as the rows arrive (a single oversized value is
/// refused before the host copies it), not a truncated result.
async fn result_caps_are_errors(backend: Backend) {
    let limits = Limits {
        max_rows: 10,
        max_result_bytes: 1 << 20,
        ..tight_limits()
    };
    let mut h = hostile_with(backend, limits).await;
    let (many, huge) = match backend {
        Backend::Postgres => (
            "SELECT generate_series(1, 11)",
            "SELECT repeat('x', 4000000)",
        ),
        Backend::Sqlite => (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 11) SELECT x FROM c",
            "SELECT zeroblob(4000000)",
        ),
    };
    for (sql, expect) in [
        (many, "database limit: the query returned more than 10 rows"),
        (
            huge,
            "database limit: the query returned more than 1048576 bytes",
        ),
    ] {
        let inv = h
            .send("t", None, &[], json!({"do": "sql", "sql": sql}))
            .await;
        assert!(
            matches!(&inv.outcome, Outcome::Rejected(r) if r.starts_with(expect)),
            "{sql}: {:?}",
            inv.outcome
        );
    }
    h.options.record = true;
    let ten = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "sql", "sql": many.replace("11", "10")}),
        )
        .await;
    assert_eq!(ten.outcome, Outcome::Done);
    assert!(
        ten.logs.iter().any(|l| l.message == "10 rows"),
        "{:?}",
        ten.logs
    );
}

/// The benchmark's native handler does `bench-sink`'s work in the same
/// transaction, as the plugin's role: the same rows as the component. Each
/// native harness is configured with the *other* mode, so the component's
/// own behaviour would show if it ran instead.
async fn native_handler_does_the_plugins_work(backend: Backend) {
    let mode = |m: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_value(json!({ "mode": m })).unwrap_or_default()
    };
    let harness = |m: &str| {
        Harness::with_env(
            "bench-sink",
            backend,
            mode(m),
            Limits::default(),
            Grants::all(),
        )
    };
    let mut wasm = harness("upsert").await;
    let mut native = harness("noop")
        .await
        .with_native(switchyard::native::Native::BenchUpsert);
    for h in [&mut wasm, &mut native] {
        for key in ["k1", "k2", "k1"] {
            let inv = h.send("bench.in", Some(key), &[], json!({})).await;
            assert_eq!(inv.outcome, Outcome::Done);
            assert_eq!(inv.statement_count, 1);
        }
        assert_eq!(
            h.rows("SELECT k, n FROM bench_counters ORDER BY k").await,
            vec![json!({"k": "k1", "n": 2}), json!({"k": "k2", "n": 1})]
        );
    }
    let mut noop = harness("upsert")
        .await
        .with_native(switchyard::native::Native::BenchNoop);
    let inv = noop.send("bench.in", Some("k"), &[], json!({})).await;
    assert_eq!((inv.outcome, inv.statement_count), (Outcome::Done, 0));
    assert_eq!(noop.count("bench_counters").await, 0);
}

on_both_backends!(
    native_handler_does_the_plugins_work,
    result_caps_are_errors,
    traps_are_outcomes_and_the_instance_is_replaced,
    deadline_interrupts_an_endless_loop,
    hostile_typescript_and_python_plugins_are_contained,
    memory_cap_stops_a_memory_bomb,
    instances_are_reused_unless_isolated,
    rejected_and_failed_events_roll_back,
    constraint_violations_that_cannot_pass_are_rejected,
    rows_decode_into_structs_alike_on_both_backends,
    settings_are_decoded_once_per_instance,
    sql_gate_refuses_non_dml,
    publish_grants_and_caps,
    stdout_and_stderr_go_to_the_log,
);

#[tokio::test]
async fn bad_files_are_refused_with_a_reason() {
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 4,
        ..RuntimeOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let env = || PluginEnv::permissive("x");
    let good = std::fs::read(plugin_path(PLUGIN))
        .unwrap_or_else(|e| panic!("{}: {e}", plugin_path(PLUGIN).display()));

    let truncated = good[..good.len() / 2].to_vec();
    let err = runtime
        .load_bytes(truncated, "half.wasm".into(), env())
        .await
        .err();
    assert!(
        matches!(&err, Some(LoadError::NotAComponent { source_name, .. }) if source_name == "half.wasm"),
        "{err:?}"
    );

    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let err = runtime
        .load_bytes(core_module, "core.wasm".into(), env())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("wasm32-wasip2"), "{err}");

    // An empty component is valid WebAssembly but exports nothing.
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let err = runtime
        .load_bytes(empty_component, "empty.wasm".into(), env())
        .await
        .err();
    assert!(
        matches!(&err, Some(LoadError::WrongWorld { .. })),
        "{err:?}"
    );

    let loaded = runtime
        .load_bytes(good, "good.wasm".into(), env())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.info.name, "test-hostile");
    assert_eq!(loaded.info.migrations.len(), 3);
    assert_eq!(loaded.hash.len(), 12);
    let _: Arc<_> = loaded;
}

/// On PostgreSQL every plugin statement runs under the plugin's
/// `statement_timeout_ms`: a slow statement is cancelled by the server and
/// the plugin gets a `limit` error, well before its sleep would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancels_statements_over_the_plugin_timeout() {
    let limits = Limits {
        statement_timeout_ms: 200,
        ..tight_limits()
    };
    let mut h = hostile_with(Backend::Postgres, limits).await;
    let started = std::time::Instant::now();
    let inv = h
        .send(
            "t",
            None,
            &[],
            // Allowed SQL that runs for many seconds (pg_sleep itself is
            // not on the gate's allow-list).
            json!({"do": "sql", "sql": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000) SELECT count(*) FROM r"}),
        )
        .await;
    assert!(
        matches!(&inv.outcome, Outcome::Rejected(r) if r.starts_with("database limit: statement timeout")),
        "{:?}",
        inv.outcome
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "cancelled by the server, not waited out ({:?})",
        started.elapsed()
    );
    // The instance and the next event are unaffected.
    assert_eq!(insert_mark(&mut h, "after").await, Outcome::Done);
}

/// On PostgreSQL a plugin's SQL runs as its own role, granted only the
/// tables its migrations create: the database refuses anything else, even
/// a statement the SQL gate lets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_enforces_the_plugin_table_grants() {
    let mut h = hostile(Backend::Postgres).await;
    h.exec("CREATE TABLE other_team_secrets (k text); INSERT INTO other_team_secrets VALUES ('s')")
        .await;
    for sql in [
        "SELECT * FROM other_team_secrets",
        "DELETE FROM other_team_secrets",
        "UPDATE other_team_secrets SET k = 'mine'",
    ] {
        let inv = h
            .send("t", None, &[], json!({"do": "sql", "sql": sql}))
            .await;
        assert!(
            matches!(&inv.outcome, Outcome::Rejected(r) if r.starts_with("statement denied: permission denied")),
            "{sql}: {:?}",
            inv.outcome
        );
    }
    // Its own table works, as its role.
    assert_eq!(insert_mark(&mut h, "mine").await, Outcome::Done);
    // The table is its role's own (read from the catalog by the host).
    let owner = h
        .rows("SELECT tableowner::text AS o FROM pg_tables WHERE tablename = 'hostile_marks'")
        .await;
    assert_eq!(owner, vec![json!({"o": "switchyard_plugin_test_hostile"})]);
    assert_eq!(
        h.count("other_team_secrets").await,
        1,
        "nothing of theirs changed"
    );
    assert_eq!(
        h.plugin.env.db_role.as_deref(),
        Some("switchyard_plugin_test_hostile")
    );
}

/// SQLite has no roles: the host's authorizer holds a plugin to the tables
/// its migrations create, and refuses schema changes and PRAGMAs, with a
/// reason that names the table and the plugin's own tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_enforces_the_plugin_table_list() {
    let mut h = hostile(Backend::Sqlite).await;
    h.exec("CREATE TABLE other_team_secrets (k text); INSERT INTO other_team_secrets VALUES ('s')")
        .await;
    for sql in [
        "SELECT * FROM other_team_secrets",
        "DELETE FROM other_team_secrets",
        "INSERT INTO other_team_secrets VALUES ('mine now')",
        "UPDATE other_team_secrets SET k = 'x'",
        "SELECT k FROM hostile_marks JOIN other_team_secrets ON 1 = 1",
        "WITH s AS (SELECT k FROM other_team_secrets) SELECT * FROM s",
        "SELECT name FROM sqlite_master",
        "SELECT count(*) FROM other_team_secrets",
        "SELECT m.* FROM hostile_marks m, other_team_secrets",
    ] {
        let inv = h
            .send("t", None, &[], json!({"do": "sql", "sql": sql}))
            .await;
        assert!(
            matches!(&inv.outcome, Outcome::Rejected(r) if r.starts_with("statement denied: ") && r.contains("hostile_marks") && r.contains("not one of plugin test-hostile's tables")),
            "{sql}: {:?}",
            inv.outcome
        );
    }
    let pragma = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "sql", "sql": "SELECT * FROM pragma_table_info('other_team_secrets')"}),
        )
        .await;
    assert!(
        matches!(&pragma.outcome, Outcome::Rejected(r) if r.contains("denied")),
        "{:?}",
        pragma.outcome
    );
    // Its own table, JSON functions and recursive CTEs work, on the same
    // connection right after the refusals.
    assert_eq!(insert_mark(&mut h, "mine").await, Outcome::Done);
    for sql in [
        "SELECT id FROM hostile_marks WHERE id IN (SELECT value FROM json_each('[\"mine\"]'))",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT sum(x) FROM c",
    ] {
        let inv = h
            .send("t", None, &[], json!({"do": "sql", "sql": sql}))
            .await;
        assert_eq!(inv.outcome, Outcome::Done, "{sql}");
    }
    assert_eq!(
        h.count("other_team_secrets").await,
        1,
        "nothing of theirs changed"
    );
    assert_eq!(h.count("hostile_marks").await, 1);
}

/// On SQLite the host interrupts a statement that runs past the plugin's
/// `statement_timeout_ms` (SQLite's progress handler), and the connection
/// serves the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_interrupts_statements_over_the_plugin_timeout() {
    let limits = Limits {
        statement_timeout_ms: 200,
        deadline_ms: 10_000,
        ..tight_limits()
    };
    let mut h = hostile_with(Backend::Sqlite, limits).await;
    let started = std::time::Instant::now();
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let inv = h
        .send("t", None, &[], json!({"do": "sql", "sql": endless}))
        .await;
    assert!(
        matches!(&inv.outcome, Outcome::Rejected(r) if r.starts_with("database limit: statement timeout") && r.contains("200")),
        "{:?}",
        inv.outcome
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "interrupted at the timeout ({:?})",
        started.elapsed()
    );
    assert_eq!(insert_mark(&mut h, "after").await, Outcome::Done);
}

/// A component that never finishes starting (an endless loop in
/// `describe`, which the host calls at load) is stopped by the plugin's
/// deadline and refused with a reason; the runtime loads the next plugin.
#[tokio::test]
async fn an_endless_loop_at_start_is_stopped_by_the_deadline() {
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 4,
        ..RuntimeOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut settings = serde_json::Map::new();
    settings.insert("on_start".into(), json!("loop"));
    let env = PluginEnv {
        limits: Limits {
            deadline_ms: 200,
            ..Limits::default()
        },
        settings: Arc::new(settings),
        ..PluginEnv::permissive("bad-start")
    };
    let path = plugin_path("test-bad-start");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let err = runtime
        .load_bytes(bytes, "bad-start.wasm".into(), env)
        .await
        .err();
    assert!(
        matches!(&err, Some(LoadError::Start { reason, .. }) if reason.contains("deadline") && reason.contains("200")),
        "{err:?}"
    );
    let good = std::fs::read(plugin_path(PLUGIN))
        .unwrap_or_else(|e| panic!("{}: {e}", plugin_path(PLUGIN).display()));
    let loaded = runtime
        .load_bytes(good, "good.wasm".into(), PluginEnv::permissive("x"))
        .await;
    assert!(loaded.is_ok(), "the runtime is still usable");
}

/// SQLite rolls the whole transaction back when a write is interrupted at
/// the statement timeout. A plugin that ignores the error and returns done
/// must not commit what it does afterwards on its own, nor lose the
/// event's marker: the event is retried, and nothing of it remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_interrupted_write_loses_the_event_not_its_guarantees() {
    let limits = Limits {
        statement_timeout_ms: 200,
        deadline_ms: 10_000,
        ..tight_limits()
    };
    let mut h = hostile_with(Backend::Sqlite, limits).await;
    let endless_write = "INSERT INTO hostile_marks (id, note) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT 'w' || x, 'w' FROM c WHERE x < 0";
    let inv = h
        .send(
            "t",
            None,
            &[],
            json!({"do": "sqls", "sqls": [
                "INSERT INTO hostile_marks (id, note) VALUES ('before', 'n')",
                endless_write,
                "INSERT INTO hostile_marks (id, note) VALUES ('after', 'n')",
            ]}),
        )
        .await;
    assert!(
        matches!(&inv.outcome, Outcome::Retry(r) if r.contains("rolled the event's transaction back")),
        "{:?}",
        inv.outcome
    );
    assert!(inv.db_failed);
    assert_eq!(
        h.count("hostile_marks").await,
        0,
        "nothing committed on its own"
    );
    assert_eq!(insert_mark(&mut h, "next").await, Outcome::Done);
    assert_eq!(h.count("hostile_marks").await, 1);
}

/// A query stopped by the row cap while SQLite is still computing must not
/// keep running after the plugin's call: the host interrupts it, and the
/// connection (SQLite's only one) serves the next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stops_a_query_the_host_stopped_reading() {
    let limits = Limits {
        max_rows: 10,
        statement_timeout_ms: 600_000,
        ..tight_limits()
    };
    let mut h = hostile_with(Backend::Sqlite, limits).await;
    let runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c WHERE x <= 11 OR x > 1000000000000000000";
    let inv = h
        .send("t", None, &[], json!({"do": "sql", "sql": runaway}))
        .await;
    assert!(
        matches!(&inv.outcome, Outcome::Rejected(r) if r.contains("more than 10 rows")),
        "{:?}",
        inv.outcome
    );
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        insert_mark(&mut h, "next"),
    )
    .await;
    assert_eq!(
        next.ok(),
        Some(Outcome::Done),
        "the connection is free again"
    );
}

/// PostgreSQL infers a NULL parameter's type from the statement (int4 for
/// an `integer` column); the same statement text must still take an
/// integer afterwards (a cached statement typed by the NULL used to refuse
/// it: "incorrect binary data format", which once held a partition
/// forever when a NestJS reply named its partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_null_then_integer_in_the_same_statement() {
    use switchyard::bindings::switchyard::plugin::db::Value;
    let h = hostile(Backend::Postgres).await;
    h.exec("CREATE TABLE ints (n integer)").await;
    // In one transaction, as the outbox rows of one event are written.
    let mut tx = h.db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    for v in [Value::Null, Value::Int(7), Value::Null, Value::Int(8)] {
        tx.execute_host("INSERT INTO ints (n) VALUES ($1)", std::slice::from_ref(&v))
            .await
            .unwrap_or_else(|e| panic!("{v:?}: {e:?}"));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.count("ints").await, 4);
}

/// The shipped plugins' migrations, as their builds describe them (no
/// copy of their text to drift), pass the migration gate on both backends
/// with the tables each creates, read from the parse tree (PostgreSQL) and
/// the tokens (SQLite). Moved here from the gate's unit tests, which held
/// copies of the scripts.
#[tokio::test]
async fn the_shipped_plugins_migrations_pass_the_gate() {
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 4,
        ..RuntimeOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let cases: &[(&str, &[&str])] = &[
        ("role-mapping", &["customers", "customer_users"]),
        ("profile-creation", &["profiles"]),
        ("stats-increment", &["user_stats", "stats_processed_events"]),
        ("welcome-notification", &["welcome_notifications"]),
        ("test-chaos", &["chaos_effects", "chaos_counter"]),
        ("test-marker", &["marker_events"]),
        ("test-hostile", &["hostile_marks", "hostile_checks"]),
        ("bench-sink", &["bench_counters"]),
    ];
    for (plugin, tables) in cases {
        let loaded = runtime
            .load_file(&plugin_path(plugin), PluginEnv::permissive(plugin))
            .await
            .unwrap_or_else(|e| panic!("{plugin}: {e}"));
        for (backend, pick) in [(Backend::Postgres, true), (Backend::Sqlite, false)] {
            let mut created: Vec<String> = Vec::new();
            for m in &loaded.info.migrations {
                let script = if pick { &m.postgres } else { &m.sqlite };
                let summary = switchyard::sql_gate::check_migration(script, backend)
                    .unwrap_or_else(|e| panic!("{plugin} {} ({backend:?}): {e}", m.id));
                created.extend(summary.tables_created);
            }
            assert_eq!(created, *tables, "{plugin} ({backend:?})");
        }
    }
}

/// A runtime whose compiled-code cache is `dir`, holding at most `max_bytes`.
fn cached_runtime(dir: &std::path::Path, max_bytes: u64) -> Runtime {
    Runtime::new(RuntimeOptions {
        max_instances: 4,
        compile_cache: Some((dir.to_path_buf(), max_bytes)),
        ..RuntimeOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The cache's one entry file (`<sha256>-<engine>.cwasm`).
fn cache_entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    entries.sort();
    entries
}

/// A second runtime loads the compiled form from the cache; an entry that
/// is corrupt, truncated, forged (a right digest over bytes wasmtime never
/// wrote) or foreign is a miss, never trusted: the plugin is compiled
/// again, runs, and the entry is rewritten.
#[tokio::test]
async fn compiled_components_are_cached_and_bad_entries_are_compiled_again() {
    use switchyard::compiled::Source;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cache = dir.path().join("compiled");
    let bytes = std::fs::read(plugin_path(PLUGIN))
        .unwrap_or_else(|e| panic!("{}: {e}", plugin_path(PLUGIN).display()));
    let load = |runtime: Runtime| {
        let bytes = bytes.clone();
        async move {
            let plugin = runtime
                .load_bytes(bytes, "p.wasm".into(), PluginEnv::permissive("x"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(plugin.info.name, "test-hostile", "describe ran");
            plugin.compiled
        }
    };
    assert_eq!(
        load(cached_runtime(&cache, 1 << 30)).await,
        Source::Compiled
    );
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = entries[0].clone();
    assert_eq!(load(cached_runtime(&cache, 1 << 30)).await, Source::Hit);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache)
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the cache is the host user's alone: {mode:o}"
        );
    }

    let good = std::fs::read(&entry).unwrap_or_else(|e| panic!("{e}"));
    let flipped = {
        let mut b = good.clone();
        let i = b.len() / 2;
        b[i] ^= 0x40;
        b
    };
    let forged = {
        use sha2::Digest;
        let payload = vec![0x90u8; 4096];
        let mut b = good[..8].to_vec();
        b.extend_from_slice(&sha2::Sha256::digest(&payload));
        b.extend_from_slice(&payload);
        b
    };
    let foreign = {
        let mut b = b"NOTOURS!".to_vec();
        b.extend_from_slice(&good[8..]);
        b
    };
    for (what, bad) in [
        ("a flipped byte", flipped),
        ("half the file", good[..good.len() / 2].to_vec()),
        ("a forged digest over bytes wasmtime never wrote", forged),
        ("another format", foreign),
        ("nothing", Vec::new()),
    ] {
        std::fs::write(&entry, &bad).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            load(cached_runtime(&cache, 1 << 30)).await,
            Source::Compiled,
            "{what}: compiled again"
        );
        assert_eq!(
            std::fs::read(&entry).unwrap_or_default(),
            good,
            "{what}: the entry is rewritten"
        );
    }

    // An entry others may write to, or one copied under another
    // component's name, is not trusted either.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            load(cached_runtime(&cache, 1 << 30)).await,
            Source::Compiled,
            "a world-writable entry: compiled again"
        );
        let mode = std::fs::metadata(&entry)
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "rewritten as the host user's alone");
    }
    let other = std::fs::read(plugin_path("test-marker")).unwrap_or_else(|e| panic!("{e}"));
    let other_runtime = cached_runtime(&cache, 1 << 30);
    let other_source = other_runtime
        .load_bytes(other.clone(), "m.wasm".into(), PluginEnv::permissive("x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .compiled;
    assert_eq!(other_source, Source::Compiled);
    let other_entry = cache_entries(&cache)
        .into_iter()
        .find(|p| *p != entry)
        .unwrap_or_else(|| panic!("no second entry"));
    std::fs::copy(&entry, &other_entry).unwrap_or_else(|e| panic!("{e}"));
    let copied = cached_runtime(&cache, 1 << 30)
        .load_bytes(other, "m.wasm".into(), PluginEnv::permissive("x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        copied.compiled,
        Source::Compiled,
        "an entry under another component's name: compiled again"
    );
    assert_eq!(
        copied.info.name, "test-marker",
        "and the right component runs"
    );

    // A cap below one entry keeps only the newest.
    let small = dir.path().join("small");
    let runtime = cached_runtime(&small, 1);
    for name in [PLUGIN, "test-marker"] {
        let bytes = std::fs::read(plugin_path(name)).unwrap_or_else(|e| panic!("{e}"));
        let plugin = runtime
            .load_bytes(bytes, format!("{name}.wasm"), PluginEnv::permissive("x"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plugin.compiled, Source::Compiled);
    }
    assert_eq!(
        cache_entries(&small).len(),
        1,
        "the older entry was evicted"
    );
}

/// A cache directory that others may write to is never read: the
/// runtime runs without it.
#[cfg(unix)]
#[tokio::test]
async fn a_cache_others_can_write_to_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("{e}"));
    let runtime = cached_runtime(&open, 1 << 30);
    assert!(
        runtime.compile_cache().is_none(),
        "a world-writable cache stays off"
    );
    let bytes = std::fs::read(plugin_path(PLUGIN)).unwrap_or_else(|e| panic!("{e}"));
    let plugin = runtime
        .load_bytes(bytes, "p.wasm".into(), PluginEnv::permissive("x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plugin.compiled,
        switchyard::compiled::Source::CompiledNotCached
    );
    assert!(cache_entries(&open).is_empty());

    // A link to a private directory is not followed into a cache: the
    // link's owner could point it elsewhere later.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("{e}"));
    let inside = private.join("cache");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&private, &link).unwrap_or_else(|e| panic!("{e}"));
    let runtime = cached_runtime(&link.join("cache"), 1 << 30);
    let used = runtime.compile_cache().map(|c| c.dir().to_path_buf());
    assert_eq!(
        used,
        Some(std::fs::canonicalize(&inside).unwrap_or_else(|e| panic!("{e}"))),
        "the real path is what the cache keeps and checks"
    );
}

/// As many live instances as `max_instances` allows, all of them Python
/// and TypeScript plugins (14 and 4 core instances each): the pool is sized
/// so a mix of languages never runs out before the component instances do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_typescript_instances_fill_the_pool_to_max_instances() {
    use switchyard::database::Database;
    use switchyard::event::{Event, EventContext};
    use switchyard::worker::PluginWorker;
    const LIVE: u32 = 12;
    // One more than the live instances: the last is each load's `describe`.
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: LIVE + 1,
        compile_cache: Some((common::compile_cache_dir(), 4 << 30)),
        ..RuntimeOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let db = Database::connect("sqlite::memory:", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut plugins = Vec::new();
    for name in ["bench-sink-py", "bench-sink-ts"] {
        let bytes = std::fs::read(plugin_path(name)).unwrap_or_else(|e| panic!("{e}"));
        plugins.push(
            runtime
                .load_bytes(
                    bytes,
                    format!("{name}.wasm"),
                    PluginEnv::permissive("bench-sink"),
                )
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    let event = Event {
        topic: "bench.in".into(),
        payload: b"{}".to_vec(),
        ..Event::default()
    };
    let mut workers = Vec::new();
    for i in 0..LIVE as usize {
        let mut worker = PluginWorker::new(plugins[i % 2].clone());
        let tx = db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        let ctx = Arc::new(EventContext::new("test", "bench-sink", &event));
        let (inv, tx) = worker.handle(ctx, &event, tx, Default::default()).await;
        assert_eq!(inv.outcome, Outcome::Done, "live instance {}", i + 1);
        if let Some(tx) = tx {
            tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
        }
        workers.push(worker);
    }
}
