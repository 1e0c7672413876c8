//! Shared helpers for the tests: where the built plugins are, throwaway
//! databases on both backends, and a harness that runs events through a
//! plugin the way the router does (one transaction per event, committed
//! or rolled back from the outcome).

#![allow(dead_code)] // each test binary uses a different subset

use serde_json::{Map, Value as Json};
use std::path::PathBuf;
use std::sync::Arc;
use switchyard::capabilities::PluginEnv;
use switchyard::capabilities::publish::Grants;
use switchyard::database::{Backend, Database};
use switchyard::event::{Event, EventContext};
use switchyard::limits::Limits;
use switchyard::plugin_test::value_json;
use switchyard::runtime::{
    CallOptions, Invocation, Isolation, LoadedPlugin, PluginWorker, Runtime, RuntimeOptions,
};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The release build of plugin `name` (crate name, e.g. `role-mapping`).
/// `scripts/test` builds them; a missing file fails the test with the
/// command to run.
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip2/plugin"));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `scripts/build-plugins` (or run the tests with `scripts/test`)",
        path.display()
    );
    path
}

/// A database that exists for one test and is dropped afterwards.
pub struct TestDb {
    /// URL of the database.
    pub url: String,
    backend: Backend,
    pg_name: Option<String>,
}

fn pg_admin_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

impl TestDb {
    /// A fresh database on `backend`.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self {
                url: "sqlite::memory:".to_string(),
                backend,
                pg_name: None,
            },
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = pg_admin_url();
                let name = format!("switchyard_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("cannot reach PostgreSQL at {admin} ({e}); start it or set SWITCHYARD_TEST_PG_URL")
                });
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                Self {
                    url: format!("{base}/{name}"),
                    backend,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// Which backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs inside a test's runtime (or while a failed assertion
        // unwinds), so the async clean-up gets a thread and runtime of its
        // own.
        let admin = pg_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// One plugin on one database, run like the router runs it.
pub struct Harness {
    /// The database (also for assertions).
    pub db: Database,
    /// The loaded plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The worker.
    pub worker: PluginWorker,
    /// Call options (isolation).
    pub options: CallOptions,
    offset: i64,
    _runtime: Runtime,
    _testdb: TestDb,
}

impl Harness {
    /// Load `plugin` (crate name) with default limits and all topics
    /// granted, on a fresh database of `backend`, migrations applied.
    pub async fn new(plugin: &str, backend: Backend) -> Self {
        Self::with_env(
            plugin,
            backend,
            Map::new(),
            Limits::default(),
            Grants::all(),
        )
        .await
    }

    /// Like [`Harness::new`] with settings, limits and grants.
    pub async fn with_env(
        plugin: &str,
        backend: Backend,
        settings: Map<String, Json>,
        limits: Limits,
        grants: Grants,
    ) -> Self {
        let testdb = TestDb::new(backend).await;
        let runtime = Runtime::new(RuntimeOptions {
            max_instances: 16,
            ..RuntimeOptions::default()
        })
        .unwrap_or_else(|e| panic!("runtime: {e:#}"));
        let env = PluginEnv {
            name: plugin.into(),
            limits,
            grants,
            settings: Arc::new(settings),
        };
        let loaded = runtime
            .load_file(&plugin_path(plugin), env)
            .await
            .unwrap_or_else(|e| panic!("loading {plugin}: {e}"));
        let db = Database::connect(&testdb.url, 4)
            .await
            .unwrap_or_else(|e| panic!("database: {e}"));
        db.migrate(&loaded.info.name, &loaded.info.migrations)
            .await
            .unwrap_or_else(|e| panic!("migrations of {plugin}: {e}"));
        Self {
            db,
            worker: PluginWorker::new(loaded.clone()),
            plugin: loaded,
            options: CallOptions::default(),
            offset: 0,
            _runtime: runtime,
            _testdb: testdb,
        }
    }

    /// Use per-event isolation instead of instance reuse.
    pub fn per_event(mut self) -> Self {
        self.options.isolation = Isolation::PerEvent;
        self
    }

    /// Run `sql` with host privileges (fixtures).
    pub async fn exec(&self, sql: &str) {
        self.db
            .run_script(sql)
            .await
            .unwrap_or_else(|e| panic!("fixture SQL failed: {e}\n{sql}"));
    }

    /// Send an event whose value is `value` serialised as JSON.
    pub async fn send(
        &mut self,
        topic: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        value: Json,
    ) -> Invocation {
        let payload = serde_json::to_vec(&value).unwrap_or_default();
        self.send_raw(topic, key, headers, payload).await
    }

    /// Send an event with raw payload bytes.
    pub async fn send_raw(
        &mut self,
        topic: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        payload: Vec<u8>,
    ) -> Invocation {
        let event = Event {
            topic: topic.to_string(),
            partition: 0,
            offset: self.offset,
            timestamp_ms: Some(1_700_000_000_000),
            key: key.map(|k| k.as_bytes().to_vec()),
            payload,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
        };
        self.offset += 1;
        self.send_event(&event).await
    }

    /// Run one event in its own transaction: commit when the outcome
    /// commits, roll back otherwise (as the router does).
    pub async fn send_event(&mut self, event: &Event) -> Invocation {
        let tx = self
            .db
            .begin()
            .await
            .unwrap_or_else(|e| panic!("begin: {e}"));
        let ctx = Arc::new(EventContext::new("test", &self.plugin.info.name, event));
        let (invocation, tx) = self.worker.handle(ctx, event, tx, self.options).await;
        let tx = tx.unwrap_or_else(|| panic!("the host lost the transaction"));
        if invocation.outcome.commits() {
            tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
        } else {
            tx.rollback()
                .await
                .unwrap_or_else(|e| panic!("rollback: {e}"));
        }
        invocation
    }

    /// Rows of a query as JSON objects (booleans normalised across
    /// backends: SQLite's 0/1 in a BOOLEAN column reads as a boolean).
    pub async fn rows(&self, sql: &str) -> Vec<Json> {
        let mut tx = self
            .db
            .begin()
            .await
            .unwrap_or_else(|e| panic!("begin: {e}"));
        let rows = tx
            .query(sql, &[], &Limits::default())
            .await
            .unwrap_or_else(|e| panic!("query failed: {e:?}\n{sql}"));
        let _ = tx.rollback().await;
        rows.rows
            .iter()
            .map(|cells| {
                Json::Object(
                    rows.columns
                        .iter()
                        .cloned()
                        .zip(cells.iter().map(value_json))
                        .collect(),
                )
            })
            .collect()
    }

    /// `SELECT count(*)` of a table.
    pub async fn count(&self, table: &str) -> i64 {
        let rows = self
            .rows(&format!("SELECT count(*) AS n FROM {table}"))
            .await;
        rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(-1)
    }
}

/// A message's value parsed as JSON.
pub fn message_value(m: &switchyard::capabilities::publish::OutMessage) -> Json {
    serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
        panic!(
            "published value is not JSON ({e}): {}",
            String::from_utf8_lossy(&m.payload)
        )
    })
}

/// A message's key as text.
pub fn message_key(m: &switchyard::capabilities::publish::OutMessage) -> Option<String> {
    m.key
        .as_ref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
}

/// Generate a `#[tokio::test]` per backend for an `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(switchyard::database::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(switchyard::database::Backend::Postgres).await
                }
            )*
        }
    };
}
