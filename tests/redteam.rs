//! Red team: a hostile plugin against the plugin boundary on PostgreSQL,
//! with the host running as a **non-superuser** (`LOGIN CREATEROLE`, owner
//! of its database), as production does.
//!
//! The SQL here goes straight to the event's transaction in the hostile
//! plugin's session, *past the SQL gate*: these tests prove that the
//! identity alone holds (the gate is defence in depth, tested on its own).
//! Each attack is judged by its effects: the victim's rows unchanged and
//! unread, no forged markers or outbox rows, and the victim still
//! committing afterwards.

mod common;

use common::{TestDb, rows_of, scalar};
use std::sync::Arc;
use switchyard::bindings::switchyard::plugin::db::Value;
use switchyard::capabilities::PluginEnv;
use switchyard::database::{Backend, Database, PluginAccess};
use switchyard::limits::Limits;
use switchyard::runtime::{LoadedPlugin, Runtime, RuntimeOptions};

/// A database owned by a fresh non-superuser host role; dropped after.
struct HostDb {
    url: String,
    _db: TestDb,
}

impl HostDb {
    async fn new() -> Self {
        let db = TestDb::postgres_non_superuser().await;
        Self {
            url: db.url.clone(),
            _db: db,
        }
    }
}

/// Two plugins on one database: `stats-increment` (the victim) and
/// `test-hostile` (the attacker), prepared as the router prepares them.
struct Arena {
    db: Database,
    victim: Arc<LoadedPlugin>,
    attacker: Arc<LoadedPlugin>,
    _runtime: Runtime,
    _host: Option<HostDb>,
}

/// The environment of a plugin loaded under config key `name`, with a
/// 500 ms statement timeout and no grants.
fn env_of(name: &str) -> PluginEnv {
    PluginEnv {
        name: name.into(),
        limits: Limits {
            statement_timeout_ms: 500,
            ..Limits::default()
        },
        grants: switchyard::capabilities::publish::Grants::new(vec![]),
        settings: Arc::new(serde_json::Map::new()),
        db_role: None,
        db_tables: Arc::from([]),
        native: None,
    }
}

async fn load(runtime: &Runtime, db: &Database, name: &str) -> Arc<LoadedPlugin> {
    let env = env_of(name);
    let loaded = runtime
        .load_file(&common::plugin_path(name), env)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    switchyard::app::prepare_plugin(db, runtime, &loaded)
        .await
        .unwrap_or_else(|e| panic!("preparing {name}: {e:#}"))
}

impl Arena {
    /// On PostgreSQL with a non-superuser host.
    async fn new() -> Self {
        Self::on(Backend::Postgres).await
    }

    async fn on(backend: Backend) -> Self {
        let host = match backend {
            Backend::Postgres => Some(HostDb::new().await),
            Backend::Sqlite => None,
        };
        let url = host
            .as_ref()
            .map_or_else(|| "sqlite::memory:".to_string(), |h| h.url.clone());
        let db = Database::connect(&url, 4)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        switchyard::outbox::create_tables(&db)
            .await
            .unwrap_or_else(|e| panic!("host tables as a non-superuser: {e}"));
        let runtime = Runtime::new(RuntimeOptions {
            max_instances: 8,
            ..RuntimeOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let victim = load(&runtime, &db, "stats-increment").await;
        let attacker = load(&runtime, &db, "test-hostile").await;
        let arena = Self {
            db,
            victim,
            attacker,
            _runtime: runtime,
            _host: host,
        };
        // The victim's state: one user, one marker, one outbox row.
        let (answers, committed) = arena
            .as_plugin(
                &arena.victim.clone(),
                &[(
                    "INSERT INTO user_stats (user_id, interviews_created) VALUES ($1, 7)",
                    vec![Value::Text("victim-user".into())],
                )],
            )
            .await;
        assert!(
            committed.is_ok() && answers.iter().all(Result::is_ok),
            "victim setup: {answers:?} {committed:?}"
        );
        arena
    }

    /// Run `statements` in `plugin`'s call inside one event's
    /// transaction (each under its savepoint, so a refused one does not
    /// spoil the rest), write the event's marker and one outbox message as
    /// the host, and commit. Returns each statement's answer, and the
    /// commit's.
    async fn as_plugin(
        &self,
        plugin: &Arc<LoadedPlugin>,
        statements: &[(&str, Vec<Value>)],
    ) -> (Vec<Result<String, String>>, Result<(), String>) {
        let mut answers = Vec::new();
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => return (answers, Err(e.to_string())),
        };
        let name = plugin.env.name.clone();
        let key = format!("id:{}", uuid::Uuid::new_v4());
        let marker = switchyard::outbox::Marker {
            group: "redteam",
            plugin: &name,
            dedupe_key: &key,
            topic: "t",
            partition: 0,
            offset: 0,
        };
        if let Err(e) = switchyard::outbox::mark_processed(&mut tx, marker, "handled").await {
            return (answers, Err(format!("marker: {e:?}")));
        }
        let access = PluginAccess {
            plugin: &plugin.env.name,
            role: plugin.env.db_role.as_deref(),
            tables: &plugin.env.db_tables,
            timeout_ms: plugin.env.limits.statement_timeout_ms,
        };
        if let Err(e) = tx.enter_plugin(&access).await {
            return (answers, Err(format!("enter: {e:?}")));
        }
        for (sql, params) in statements {
            answers.push(match tx.query(sql, params, &Limits::default()).await {
                Ok(rows) => Ok(format!("{:?}", rows.rows)),
                Err(e) => Err(format!("{e:?}")),
            });
        }
        let _ = tx.leave_plugin(None).await;
        let message = switchyard::capabilities::publish::OutMessage {
            topic: format!("{name}.out"),
            key: None,
            payload: b"{}".to_vec(),
            headers: vec![],
            partition: None,
            plugin: name.to_string(),
        };
        if let Err(e) =
            switchyard::outbox::enqueue(&mut tx, &name, std::slice::from_ref(&message)).await
        {
            return (answers, Err(format!("outbox: {e:?}")));
        }
        let committed = tx.commit().await.map_err(|e| e.to_string());
        (answers, committed)
    }

    /// The host's view of what must not change.
    async fn state(&self) -> (Vec<serde_json::Value>, i64, i64, i64) {
        (
            rows_of(
                &self.db,
                "SELECT user_id, interviews_created FROM user_stats ORDER BY 1",
            )
            .await,
            // The attacker's own events write their own markers and
            // messages; nothing else may appear.
            scalar(
                &self.db,
                "SELECT count(*) FROM switchyard_processed WHERE plugin <> 'test-hostile'",
            )
            .await,
            scalar(
                &self.db,
                "SELECT count(*) FROM switchyard_outbox WHERE topic <> 'test-hostile.out'",
            )
            .await,
            scalar(
                &self.db,
                "SELECT count(*) FROM switchyard_outbox WHERE topic NOT LIKE '%.out'",
            )
            .await,
        )
    }
}

/// Run one attack of raw SQL statements (each may fail; failures are
/// expected) as the attacker and return what each statement answered.
async fn attack(arena: &Arena, statements: &[&str]) -> Vec<Result<String, String>> {
    let statements: Vec<(&str, Vec<Value>)> = statements.iter().map(|s| (*s, vec![])).collect();
    let (answers, committed) = arena.as_plugin(&arena.attacker.clone(), &statements).await;
    assert!(
        committed.is_ok(),
        "the attacker's event must still commit: {committed:?}"
    );
    answers
}

#[tokio::test]
async fn role_escalation_reaches_nothing_past_the_plugins_identity() {
    let arena = Arena::new().await;
    let before = arena.state().await;
    // Every spelling that reached set_config('role', ...) under SET ROLE,
    // followed by what the host could do: none of it is the host's here.
    let answers = attack(
        &arena,
        &[
            "SELECT set_config/**/('role', 'none', true)",
            "SELECT U&\"set\\005Fconfig\"('role', 'none', true)",
            "SELECT (ARRAY[set_config('role', 'none', true)])[1]",
            "SELECT query_to_xml('select set_config(''role'', ''none'', true)', true, true, '')",
            "RESET ROLE",
            "SELECT session_user::text, current_user::text",
            "SELECT * FROM user_stats",
            "UPDATE user_stats SET interviews_created = 0",
            "SELECT * FROM switchyard_processed",
            "INSERT INTO switchyard_processed (consumer_group, plugin, dedupe_key, topic, kafka_partition, kafka_offset, outcome) VALUES ('redteam', 'stats-increment', 'id:planted', 't', 0, 0, 'handled')",
            "INSERT INTO switchyard_outbox (topic, payload, headers) VALUES ('forged', '\\x00', '[]')",
            "SELECT * FROM switchyard_host.secrets",
            "SELECT * FROM switchyard_host.plugin_roles",
            "SELECT switchyard_host.enqueue('guess', pg_current_xact_id()::text, 'test-hostile', ARRAY['forged'], ARRAY[NULL::bytea], ARRAY['\\x00'::bytea], ARRAY['[]'], ARRAY[NULL::int])",
            "SELECT switchyard_host.mark('guess', pg_current_xact_id()::text, 'redteam', 'stats-increment', ARRAY['id:planted'], ARRAY['t'], ARRAY[0], ARRAY[0::bigint], 'handled', now())",
            "SET ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT lo_import('/etc/passwd')",
            "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'select 1'",
        ],
    )
    .await;
    let who = &answers[5];
    assert!(
        matches!(who, Ok(rows) if rows.contains("switchyard_plugin_test_hostile") && !rows.contains("sy_host")),
        "the session is the plugin's, before and after a role reset: {who:?}"
    );
    for (i, answer) in answers.iter().enumerate().skip(6) {
        assert!(
            answer.is_err(),
            "attack statement {i} must be refused by the database, got {answer:?}"
        );
    }
    assert_eq!(arena.state().await, before, "the attack changed something");
    // No planted marker: the victim's next event with that key is not a
    // duplicate.
    let mut tx = arena.db.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let fresh = switchyard::outbox::mark_processed(
        &mut tx,
        switchyard::outbox::Marker {
            group: "redteam",
            plugin: "stats-increment",
            dedupe_key: "id:planted",
            topic: "t",
            partition: 0,
            offset: 0,
        },
        "handled",
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(fresh, "a marker was planted for the victim");
    let _ = tx.rollback().await;
}

#[tokio::test]
async fn the_secret_is_not_reachable_and_the_functions_check_the_session_user() {
    let arena = Arena::new().await;
    let before = arena.state().await;
    // Even with the host's real secret (which a plugin never sees), the
    // attacker's session cannot write the victim's markers or outbox.
    let secret: String = rows_of(
        &arena.db,
        "SELECT secret FROM switchyard_host.secrets LIMIT 1",
    )
    .await
    .first()
    .and_then(|r| r["secret"].as_str().map(str::to_string))
    .unwrap_or_default();
    assert_eq!(secret.len(), 64, "the host reads its secret");
    let mark = format!(
        "SELECT switchyard_host.mark('{secret}', pg_current_xact_id()::text, 'redteam', 'stats-increment', ARRAY['id:planted2'], ARRAY['t'], ARRAY[0], ARRAY[0::bigint], 'handled', now())"
    );
    let answers = attack(&arena, &[&mark]).await;
    assert!(
        matches!(&answers[0], Err(e) if e.contains("not the database role of plugin")),
        "{answers:?}"
    );
    assert_eq!(arena.state().await, before);
}

#[tokio::test]
async fn session_state_does_not_outlive_the_event() {
    let arena = Arena::new().await;
    // Poison the attacker's pooled sessions every way a session can be.
    let answers = attack(
        &arena,
        &[
            "SELECT set_config('default_transaction_read_only', 'on', false)",
            "SELECT set_config('statement_timeout', '0', false)",
            "SELECT set_config('search_path', 'pg_temp', false)",
            "SELECT pg_advisory_lock(8319683387291953522)",
            "CREATE TEMP TABLE t_left (x int)",
            "PREPARE planted AS SELECT 1",
            "ALTER ROLE CURRENT_USER SET work_mem = '1GB'",
        ],
    )
    .await;
    assert!(
        answers[0].is_ok() && answers[5].is_ok() && answers[6].is_ok(),
        "the raw session can do it: {answers:?}"
    );
    // The attacker's next events still commit (markers and outbox go
    // through), and its statement timeout is the host's.
    for _ in 0..4 {
        let (answers, committed) = arena
            .as_plugin(
                &arena.attacker.clone(),
                &[
                    (
                        "SELECT current_setting('statement_timeout') AS t, current_setting('transaction_read_only') AS ro, current_setting('search_path') AS p, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) + (SELECT count(*) FROM pg_prepared_statements WHERE name = 'planted') AS locks",
                        vec![],
                    ),
                    (
                        "INSERT INTO hostile_marks (id, note) VALUES (gen_random_uuid()::text, 'x')",
                        vec![],
                    ),
                ],
            )
            .await;
        assert!(
            committed.is_ok(),
            "a poisoned session served an event: {committed:?}"
        );
        let first = answers.first().cloned().unwrap_or(Err("none".into()));
        assert!(
            matches!(&first, Ok(cells) if cells.contains("500ms") && cells.contains("\"off\"") && cells.contains("public") && cells.contains("Int(0)")),
            "session state leaked into the next event: {first:?}"
        );
        assert!(answers[1].is_ok(), "{answers:?}");
    }
    // The host's setup (a new plugin's role, as on a hot reload) is not
    // held up by the advisory lock a plugin session may still hold.
    let started = std::time::Instant::now();
    switchyard::outbox::create_tables(&arena.db)
        .await
        .unwrap_or_else(|e| panic!("host setup after the attack: {e}"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "setup waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        scalar(&arena.db, "SELECT count(*) FROM hostile_marks").await,
        4
    );
    // The setting stored on the role is taken back by the host.
    let reset = common::eventually(std::time::Duration::from_secs(10), || async {
        scalar(
            &arena.db,
            "SELECT count(*) FROM pg_db_role_setting WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = 'switchyard_plugin_test_hostile')",
        )
        .await
            == 0
    })
    .await;
    assert!(reset, "the role's own settings were not reset");
}

#[tokio::test]
async fn a_plugin_cannot_lift_its_statement_timeout() {
    let arena = Arena::new().await;
    let started = std::time::Instant::now();
    let answers = attack(
        &arena,
        &[
            "SELECT set_config('statement_timeout', '0', true)",
            "SELECT pg_sleep(30)",
        ],
    )
    .await;
    let waited = started.elapsed();
    assert!(
        matches!(&answers[1], Err(e) if e.contains("Limit")),
        "the sleep must be stopped: {answers:?}"
    );
    // 500 ms timeout + the host's 2 s grace + the cancel: far from 30 s.
    assert!(
        waited < std::time::Duration::from_secs(12),
        "held {waited:?}"
    );
}

#[tokio::test]
async fn identity_follows_the_config_key_not_describe() {
    let host = HostDb::new().await;
    let db = Database::connect(&host.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    switchyard::outbox::create_tables(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let runtime = Runtime::new(RuntimeOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    // test-hostile's describe() says "test-hostile"; loaded as another
    // plugin's key it is refused.
    let loaded = runtime
        .load_file(
            &common::plugin_path("test-hostile"),
            env_of("stats-increment"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = switchyard::app::prepare_plugin(&db, &runtime, &loaded)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("says it is plugin `test-hostile`")
            && err.contains("[plugins.stats-increment]"),
        "{err}"
    );
    // Two config keys that map to one role: the second is refused.
    let pg = db.postgres().unwrap_or_else(|| panic!("postgres"));
    pg.provision("role-mapping")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let clash = pg
        .provision("role_mapping")
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        clash
            .as_deref()
            .is_some_and(|m| m.contains("belongs to plugin role-mapping")),
        "{clash:?}"
    );
}

#[tokio::test]
async fn migrations_run_as_the_plugin_and_grants_come_from_the_catalog() {
    let arena = Arena::new().await;
    // The attacker's migration names switchyard_outbox in a comment and a
    // string; it owns its own two tables only.
    assert_eq!(
        &*arena.attacker.env.db_tables,
        &["hostile_checks".to_string(), "hostile_marks".to_string()]
    );
    assert_eq!(
        &*arena.victim.env.db_tables,
        &[
            "stats_processed_events".to_string(),
            "user_stats".to_string()
        ]
    );
    let owners = rows_of(
        &arena.db,
        "SELECT c.relname::text AS t, pg_get_userbyid(c.relowner)::text AS owner FROM pg_class c
          WHERE c.relname IN ('hostile_marks', 'user_stats', 'switchyard_outbox') ORDER BY 1",
    )
    .await;
    let owner = |t: &str| {
        owners
            .iter()
            .find(|r| r["t"] == t)
            .and_then(|r| r["owner"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(owner("hostile_marks"), "switchyard_plugin_test_hostile");
    assert_eq!(owner("user_stats"), "switchyard_plugin_stats_increment");
    assert!(owner("switchyard_outbox").starts_with("sy_host_"));
    // The victim's table is not the attacker's, whatever its text says.
    let answers = attack(&arena, &["SELECT count(*) FROM stats_processed_events"]).await;
    assert!(answers[0].is_err(), "{answers:?}");
}

/// An existing deployment (tables created by the host, plugin roles
/// NOLOGIN with grants read from migration text, including a stray grant
/// on the outbox) moves forward: the plugin's tables become its own, the
/// stray grant is gone, data stays.
#[tokio::test]
async fn upgrade_from_the_earlier_layout_keeps_data_and_drops_stray_grants() {
    let host = HostDb::new().await;
    let db = Database::connect(&host.url, 2)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let hostile_sql = "/* CREATE TABLE switchyard_outbox (x int) */ CREATE TABLE IF NOT EXISTS hostile_marks (id TEXT PRIMARY KEY, note TEXT NOT NULL DEFAULT 'CREATE TABLE switchyard_processed (x int)')";
    let checksum = switchyard::runtime::short_hash(hostile_sql.as_bytes());
    // The earlier layout, as the host of then left it.
    db.run_script(&format!(
        "CREATE TABLE switchyard_processed (consumer_group text NOT NULL, plugin text NOT NULL, dedupe_key text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL, kafka_offset bigint NOT NULL, outcome text NOT NULL, processed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer_group, plugin, dedupe_key));
         CREATE TABLE switchyard_outbox (id bigserial PRIMARY KEY, topic text NOT NULL, msg_key bytea, payload bytea NOT NULL, headers text NOT NULL, msg_partition integer, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE switchyard_migrations (plugin TEXT NOT NULL, id TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (plugin, id));
         {hostile_sql};
         INSERT INTO hostile_marks VALUES ('kept', 'from before');
         INSERT INTO switchyard_migrations VALUES ('test-hostile', '0001-create-hostile-marks', '{checksum}', '2026-01-01T00:00:00Z');
         DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'switchyard_plugin_test_hostile') THEN
             CREATE ROLE switchyard_plugin_test_hostile NOLOGIN;
           END IF;
         END $$;
         GRANT switchyard_plugin_test_hostile TO CURRENT_USER;
         GRANT SELECT, INSERT, UPDATE, DELETE ON hostile_marks, switchyard_outbox TO switchyard_plugin_test_hostile;"
    ))
    .await
    .unwrap_or_else(|e| panic!("earlier layout: {e}"));
    let ids = rows_of(&db, "SELECT id FROM switchyard_migrations").await;
    assert_eq!(ids.len(), 1);
    switchyard::outbox::create_tables(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let runtime = Runtime::new(RuntimeOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let attacker = load(&runtime, &db, "test-hostile").await;
    assert_eq!(
        &*attacker.env.db_tables,
        &["hostile_checks".to_string(), "hostile_marks".to_string()]
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM hostile_marks WHERE id = 'kept'").await,
        1
    );
    let stray = scalar(
        &db,
        "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'switchyard_plugin_test_hostile' AND table_name = 'switchyard_outbox'",
    )
    .await;
    assert_eq!(stray, 0, "the stray grant on the outbox is still there");
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'hostile_marks' AND tableowner = 'switchyard_plugin_test_hostile'"
        )
        .await,
        1
    );
    // Its next migration (an index on that table) ran as the plugin after
    // the upgrade, and the table is back where the contracts put it.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'hostile_marks' AND indexname = 'hostile_marks_note'"
        )
        .await,
        1
    );
}

/// SQLite, which has no roles: the authorizer holds the same line. Raw SQL
/// in the hostile plugin's scope, past the gate, reaches neither the
/// victim's table nor switchyard's, nor the schema, files or extensions.
#[tokio::test]
async fn sqlite_plugin_reaches_only_its_own_tables() {
    let arena = Arena::on(Backend::Sqlite).await;
    assert_eq!(
        &*arena.attacker.env.db_tables,
        &["hostile_checks".to_string(), "hostile_marks".to_string()]
    );
    let before = arena.state().await;
    let answers = attack(
        &arena,
        &[
            "SELECT * FROM user_stats",
            "SELECT * FROM main.user_stats",
            "SELECT * FROM \"USER_STATS\"",
            "SELECT * FROM [user_stats]",
            "SELECT * FROM temp.sqlite_master",
            "UPDATE user_stats SET interviews_created = 0",
            "WITH x AS (SELECT * FROM user_stats) SELECT * FROM x",
            "INSERT INTO hostile_marks (id, note) SELECT user_id, 'x' FROM user_stats",
            "SELECT * FROM switchyard_processed",
            "INSERT INTO switchyard_processed (consumer_group, plugin, dedupe_key, topic, kafka_partition, kafka_offset, outcome) VALUES ('redteam', 'stats-increment', 'id:planted', 't', 0, 0, 'handled')",
            "INSERT INTO switchyard_outbox (topic, payload, headers) VALUES ('forged', x'00', '[]')",
            "INSERT INTO switchyard_plugin_tables (plugin, table_name) VALUES ('test-hostile', 'user_stats')",
            "SELECT name FROM sqlite_master",
            "SELECT * FROM pragma_table_info('user_stats')",
            "SELECT load_extension('/tmp/x')",
            "ATTACH DATABASE ':memory:' AS other",
            "PRAGMA writable_schema = 1",
            "CREATE TABLE evil (x)",
            "CREATE TEMP TRIGGER t AFTER INSERT ON hostile_marks BEGIN DELETE FROM user_stats; END",
        ],
    )
    .await;
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            answer.is_err(),
            "attack statement {i} must be refused, got {answer:?}"
        );
    }
    assert_eq!(arena.state().await, before, "the attack changed something");
    let owned = rows_of(
        &arena.db,
        "SELECT plugin, table_name FROM switchyard_plugin_tables ORDER BY 2",
    )
    .await;
    assert_eq!(
        owned,
        vec![
            serde_json::json!({"plugin": "test-hostile", "table_name": "hostile_checks"}),
            serde_json::json!({"plugin": "test-hostile", "table_name": "hostile_marks"}),
            serde_json::json!({"plugin": "stats-increment", "table_name": "stats_processed_events"}),
            serde_json::json!({"plugin": "stats-increment", "table_name": "user_stats"}),
        ],
        "what each plugin owns is what its migrations created"
    );
}

/// An SQLite database of the earlier layout (no ownership records) moves
/// forward: the plugin's tables are recorded from its migrations of then,
/// and a plugin whose new migration names an existing table it did not
/// create does not get it.
#[tokio::test]
async fn sqlite_upgrade_records_the_earlier_tables_once() {
    let db = Database::connect("sqlite::memory:", 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let hostile_sql = "/* CREATE TABLE switchyard_outbox (x int) */ CREATE TABLE IF NOT EXISTS hostile_marks (id TEXT PRIMARY KEY, note TEXT NOT NULL DEFAULT 'CREATE TABLE switchyard_processed (x int)')";
    let checksum = switchyard::runtime::short_hash(hostile_sql.as_bytes());
    db.run_script(&format!(
        "CREATE TABLE switchyard_migrations (plugin TEXT NOT NULL, id TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (plugin, id));
         {hostile_sql};
         INSERT INTO hostile_marks VALUES ('kept', 'from before');
         INSERT INTO switchyard_migrations VALUES ('test-hostile', '0001-create-hostile-marks', '{checksum}', '2026-01-01T00:00:00Z');
         CREATE TABLE fragile_marks (id TEXT PRIMARY KEY, note TEXT NOT NULL);"
    ))
    .await
    .unwrap_or_else(|e| panic!("earlier layout: {e}"));
    switchyard::outbox::create_tables(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let runtime = Runtime::new(RuntimeOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let attacker = load(&runtime, &db, "test-hostile").await;
    assert_eq!(
        &*attacker.env.db_tables,
        &["hostile_checks".to_string(), "hostile_marks".to_string()]
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM hostile_marks WHERE id = 'kept'").await,
        1
    );
    // test-fragile is new: its migration (CREATE TABLE IF NOT EXISTS
    // fragile_marks) names a table that exists but that no migration of
    // it created: refused, with the table named, and it owns nothing.
    let fragile = runtime
        .load_file(&common::plugin_path("test-fragile"), env_of("test-fragile"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refused = switchyard::app::prepare_plugin(&db, &runtime, &fragile)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        refused.contains("refused") && refused.contains("fragile_marks"),
        "{refused}"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_plugin_tables WHERE plugin = 'test-fragile'"
        )
        .await,
        0
    );
}

/// The same attacks sent the way a plugin sends them — through the `db`
/// capability and the SQL gate — on PostgreSQL with a non-superuser host:
/// each is refused with a reason that names what was refused, and the
/// hostile plugin's ordinary statements still run.
#[tokio::test]
async fn the_gate_names_what_it_refuses_through_the_plugin() {
    use switchyard::event::{Event, EventContext};
    use switchyard::runtime::{CallOptions, Outcome, PluginWorker};
    let arena = Arena::new().await;
    let before = arena.state().await;
    let mut worker = PluginWorker::new(arena.attacker.clone());
    let mut run = async |sql: &str| -> Outcome {
        let event = Event {
            topic: "hostile.cmds".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            payload: serde_json::json!({"do": "sql", "sql": sql})
                .to_string()
                .into_bytes(),
            headers: vec![],
        };
        let tx = arena.db.begin().await.unwrap_or_else(|e| panic!("{e}"));
        let ctx = Arc::new(EventContext::new("redteam", "test-hostile", &event));
        let (inv, tx) = worker.handle(ctx, &event, tx, CallOptions::default()).await;
        if let Some(tx) = tx {
            let _ = if inv.outcome.commits() {
                tx.commit().await
            } else {
                tx.rollback().await
            };
        }
        inv.outcome
    };
    for (sql, named) in [
        ("SELECT set_config/**/('role', 'none', true)", "set_config"),
        (
            "SELECT U&\"set\\005Fconfig\"('role', 'none', true)",
            "set_config",
        ),
        (
            "SELECT (ARRAY[set_config('role', 'none', true)])[1]",
            "set_config",
        ),
        (
            "SELECT query_to_xml('select 1', true, true, '')",
            "query_to_xml",
        ),
        ("SELECT ts_stat('select 1')", "ts_stat"),
        ("SELECT pg_sleep(30)", "pg_sleep"),
        ("SELECT lo_import('/etc/passwd')", "lo_import"),
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        ("SELECT * FROM switchyard_outbox", "switchyard_outbox"),
        ("SELECT 'pg_authid'::regclass", "regclass"),
        ("SELECT * FROM user_stats", "user_stats"),
        ("SELECT count(*) FROM pg_authid", "pg_authid"),
        ("PREPARE p AS SELECT 1", "PREPARE"),
        ("DEALLOCATE ALL", "DEALLOCATE"),
        ("COMMIT", "COMMIT"),
        ("ALTER ROLE CURRENT_USER SET work_mem = '1GB'", "ALTER"),
    ] {
        let outcome = run(sql).await;
        assert!(
            matches!(&outcome, Outcome::Rejected(reason) if reason.contains(named)),
            "{sql}: {outcome:?}"
        );
    }
    let ok = run("INSERT INTO hostile_marks (id, note) VALUES ('fine', 'x') RETURNING id").await;
    assert!(matches!(ok, Outcome::Done), "{ok:?}");
    assert_eq!(arena.state().await, before);
}

/// A plugin that ends the event's transaction itself (`COMMIT`, past the
/// gate) cannot make the host's writes that follow commit on their own:
/// the guarded calls carry the transaction id the host read when it
/// opened the transaction, and refuse any other. No outbox row appears.
#[tokio::test]
async fn host_writes_never_commit_outside_the_events_transaction() {
    let arena = Arena::new().await;
    let outbox = |db: &Database| {
        let db = db.clone();
        async move {
            scalar(
                &db,
                "SELECT count(*) FROM switchyard_outbox WHERE topic = 'test-hostile.out'",
            )
            .await
        }
    };
    let before = outbox(&arena.db).await;
    let (answers, committed) = arena
        .as_plugin(&arena.attacker.clone(), &[("COMMIT", vec![])])
        .await;
    assert!(
        committed
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("outside the event's transaction")),
        "the host's outbox write must be refused: {answers:?} {committed:?}"
    );
    assert_eq!(
        outbox(&arena.db).await,
        before,
        "an outbox row committed on its own"
    );
}

/// Functions and operators a plugin creates (past the gate, in the one
/// schema it may create in: its own) are never found by the host's
/// sessions, whose search_path does not include it; it cannot create in
/// the service schema at all.
#[tokio::test]
async fn objects_a_plugin_creates_never_shadow_the_hosts() {
    let arena = Arena::new().await;
    let answers = attack(
        &arena,
        &[
            "CREATE FUNCTION format(text, name, name) RETURNS text LANGUAGE sql AS $$ SELECT 'shadowed' $$",
            "CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE sql AS $$ SELECT 'shadowed' $$",
            "CREATE TABLE public.planted (x int)",
        ],
    )
    .await;
    assert!(answers[0].is_ok(), "its own schema is its own: {answers:?}");
    assert!(answers[1].is_err() && answers[2].is_err(), "{answers:?}");
    let seen = rows_of(
        &arena.db,
        "SELECT format('%I.%I', 'a'::name, 'b'::name) AS f",
    )
    .await;
    assert_eq!(seen, vec![serde_json::json!({"f": "a.b"})]);
    // The host's setup and a new plugin's role still run their own code.
    switchyard::outbox::create_tables(&arena.db)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pg = arena.db.postgres().unwrap_or_else(|| panic!("postgres"));
    pg.provision("welcome-notification")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
