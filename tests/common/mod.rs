//! Shared helpers for the tests: where the built plugins are, throwaway
//! databases on both backends, and a harness that runs events through a
//! plugin the way the router does (one transaction per event, committed
//! or rolled back from the outcome).

#![allow(dead_code)] // each test binary uses a different subset

use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchyard::capabilities::PluginEnv;
use switchyard::capabilities::publish::Grants;
use switchyard::database::{Backend, Database};
use switchyard::event::{Event, EventContext};
use switchyard::limits::Limits;
use switchyard::plugin_test::rows_json;
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

/// The compiled-code cache the tests share, in the target directory (a
/// TypeScript or Python plugin takes 10-30 s to compile; CI keeps the
/// target directory, so it compiles each build once).
pub fn compile_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compiled")
}

/// A database that exists for one test and is dropped afterwards.
pub struct TestDb {
    /// URL of the database.
    pub url: String,
    backend: Backend,
    pg_name: Option<String>,
}

/// The directory the built plugins are in (checked through plugin
/// `name`'s file, which must be there).
pub fn plugin_dir_of(name: &str) -> PathBuf {
    plugin_path(name)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Write a routing config as `switchyard.toml` in `dir`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The PostgreSQL URL tests create their databases through.
pub fn pg_admin_url() -> String {
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

    /// A fresh PostgreSQL database owned by a fresh **non-superuser** role
    /// (`LOGIN CREATEROLE`), the host user production runs as; `url`
    /// connects as that role. The tests of the plugin boundary use it.
    pub async fn postgres_non_superuser() -> Self {
        use sqlx::Connection;
        let mut db = Self::new(Backend::Postgres).await;
        let name = db.pg_name.clone().unwrap_or_default();
        let role = format!("sy_host_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for sql in [
            format!("CREATE ROLE \"{role}\" LOGIN CREATEROLE"),
            format!("ALTER DATABASE \"{name}\" OWNER TO \"{role}\""),
        ] {
            sqlx::query(&sql)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
        assert_ne!(url, db.url, "the admin URL must name user postgres");
        db.url = url;
        db
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
    /// Events sent so far: part of each send's marker key.
    sends: u64,
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
            compile_cache: Some((compile_cache_dir(), 4 << 30)),
            ..RuntimeOptions::default()
        })
        .unwrap_or_else(|e| panic!("runtime: {e:#}"));
        let env = PluginEnv {
            name: plugin.into(),
            limits,
            grants,
            settings: Arc::new(settings),
            db_role: None,
            db_tables: std::sync::Arc::from([]),
            native: None,
        };
        let loaded = runtime
            .load_file(&plugin_path(plugin), env)
            .await
            .unwrap_or_else(|e| panic!("loading {plugin}: {e}"));
        // A build in another language (`role-mapping-ts`) is the plugin it
        // describes itself as, as in the router's config.
        let loaded = loaded
            .under_described_name(&runtime)
            .unwrap_or_else(|e| panic!("{plugin}: {e}"));
        let db = Database::connect(&testdb.url, 4)
            .await
            .unwrap_or_else(|e| panic!("database: {e}"));
        switchyard::outbox::create_tables(&db)
            .await
            .unwrap_or_else(|e| panic!("switchyard's tables: {e}"));
        let loaded = switchyard::app::prepare_plugin(&db, &runtime, &loaded)
            .await
            .unwrap_or_else(|e| panic!("preparing {plugin}: {e:#}"));
        Self {
            db,
            worker: PluginWorker::new(loaded.clone()),
            plugin: loaded,
            options: CallOptions::default(),
            offset: 0,
            sends: 0,
            _runtime: runtime,
            _testdb: testdb,
        }
    }

    /// Hand the plugin's events to a handler compiled into the host
    /// (`native` in the config), keeping its migrations and role.
    pub fn with_native(mut self, native: switchyard::native::Native) -> Self {
        let mut env = (*self.plugin.env).clone();
        env.native = Some(native);
        self.plugin = self
            .plugin
            .with_env(env, &self._runtime)
            .unwrap_or_else(|e| panic!("native: {e}"));
        self.worker = PluginWorker::new(self.plugin.clone());
        self
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
        use switchyard::work::{Marker, Work};
        let name = self.plugin.info.name.clone();
        let ctx = Arc::new(EventContext::new("test", &name, event));
        // The router's unit of work: marker, plugin, outbox rows, commit.
        // Every send is a delivery of its own (its marker key counts the
        // sends): a test may send one event twice and see the plugin run
        // twice, which is how the plugins' own idempotency is tested.
        self.sends += 1;
        let dedupe_key = format!(
            "pos:{}/{}/{}#{}",
            event.topic, event.partition, event.offset, self.sends
        );
        let mut work = Work::begin(&self.db)
            .await
            .unwrap_or_else(|e| panic!("begin: {e}"));
        let fresh = work
            .claim_one(Marker::of("test", &name, &dedupe_key, event), false)
            .await
            .unwrap_or_else(|e| panic!("marker: {e}"));
        assert!(
            fresh,
            "the marker {dedupe_key} existed before its first send"
        );
        let invocation = work
            .run(&mut self.worker, ctx, event, self.options)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!work.is_lost(), "the host lost the transaction");
        if invocation.outcome.commits() {
            work.commit(&[(name.as_str(), invocation.messages.as_slice())])
                .await
                .unwrap_or_else(|e| panic!("commit: {e}"));
        } else {
            work.rollback()
                .await
                .unwrap_or_else(|e| panic!("rollback: {e}"));
        }
        invocation
    }

    /// Rows of a query as JSON objects (booleans normalised across
    /// backends: SQLite's 0/1 in a BOOLEAN column reads as a boolean).
    pub async fn rows(&self, sql: &str) -> Vec<Json> {
        rows_of(&self.db, sql).await
    }

    /// `SELECT count(*)` of a table.
    pub async fn count(&self, table: &str) -> i64 {
        let rows = self
            .rows(&format!("SELECT count(*) AS n FROM {table}"))
            .await;
        rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(-1)
    }
}

/// Rows of a query on `db` as JSON objects.
pub async fn rows_of(db: &Database, sql: &str) -> Vec<Json> {
    let mut tx = db.begin().await.unwrap_or_else(|e| panic!("begin: {e}"));
    let limits = Limits {
        max_rows: 1_000_000,
        max_result_bytes: 1 << 30,
        ..Limits::default()
    };
    let rows = tx
        .query(sql, &[], &limits)
        .await
        .unwrap_or_else(|e| panic!("query failed: {e:?}\n{sql}"));
    let _ = tx.rollback().await;
    rows_json(&rows)
}

/// The first column of the first row as an integer (-1 when there is none).
pub async fn scalar(db: &Database, sql: &str) -> i64 {
    rows_of(db, sql)
        .await
        .first()
        .and_then(|r| {
            r.as_object()
                .and_then(|o| o.values().next())
                .and_then(|v| v.as_i64())
        })
        .unwrap_or(-1)
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

/// A Tansu broker on a free local port, killed when dropped.
pub struct Broker {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: std::process::Child,
}

/// The Tansu binary: `SWITCHYARD_TANSU`, else `.switchyard/bin/tansu`
/// (installed by `scripts/broker` and `scripts/test`).
pub fn tansu_path() -> PathBuf {
    let path = std::env::var_os("SWITCHYARD_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".switchyard/bin/tansu"));
    assert!(
        path.exists(),
        "{} is missing: install the broker with `scripts/broker path` (scripts/test does it)",
        path.display()
    );
    path
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Broker {
    /// Start a broker and wait until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new(tansu_path())
            .args(switchyard::dev::tansu_broker_args(&format!(
                "127.0.0.1:{port}"
            )))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu: {e}"));
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Self { addr, child };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("tansu did not start on {addr}");
    }

    /// Create topics with `partitions` partitions.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        switchyard::kafka::create_topics(&self.addr, &topics, partitions)
            .await
            .unwrap_or_else(|e| panic!("creating topics: {e:#}"));
    }

    /// Freeze the broker process (`SIGSTOP`): connections stay open and
    /// nothing answers, as with a broker stuck in a long pause.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused broker go on (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill {which} on the broker failed"
        );
    }

    /// A producer.
    pub fn producer(&self) -> rdkafka::producer::FutureProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("linger.ms", "1")
            .create()
            .unwrap_or_else(|e| panic!("producer: {e}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produce one JSON message and wait for its delivery.
pub async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &[u8],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic)
        .payload(value)
        .headers(h);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, std::time::Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// One consumed message, owned.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Key as text.
    pub key: Option<String>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers as text.
    pub headers: Vec<(String, String)>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value as JSON.
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.value).unwrap_or(Json::Null)
    }
}

/// Read `topics` from the beginning until `done` says enough or `timeout`.
pub async fn consume_until(
    broker: &str,
    topics: &[&str],
    timeout: std::time::Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    consumer
        .subscribe(topics)
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(Received {
                topic: m.topic().to_string(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    h.value
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                partition: m.partition(),
                offset: m.offset(),
            }),
            Ok(Err(e)) => eprintln!("test consumer: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The `switchyard run` process under test.
pub struct Router {
    child: Option<std::process::Child>,
    /// Its log file.
    pub log: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Router {
    /// Start `switchyard run --config <config>` with `env`, logging to
    /// `log`.
    pub fn start(config: &std::path::Path, log: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut r = Self {
            child: None,
            log: log.to_path_buf(),
            config: config.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .env("SWITCHYARD_COMPILE_CACHE", compile_cache_dir())
            .args(["run", "--config", &self.config.to_string_lossy()])
            // The config under test decides; the overrides a CI job may
            // export (scripts/lib.sh sets SWITCHYARD_PLUGIN_DIR) must not.
            .env_remove("SWITCHYARD_PLUGIN_DIR")
            .env_remove("SWITCHYARD_BROKERS")
            .env_remove("SWITCHYARD_DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SWITCHYARD_LOG", "info,switchyard=debug")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start switchyard: {e}"));
        self.child = Some(child);
    }

    /// Start it again after a stop or a kill.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Poll `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A TCP proxy that can cut and restore every connection through it: a
/// database or broker outage on demand.
pub struct Proxy {
    /// `127.0.0.1:PORT` to connect to instead of the target.
    pub addr: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forward a free local port to `target`.
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2, target) = (up.clone(), conns.clone(), target.to_string());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(task.abort_handle());
            }
        });
        Self {
            addr,
            up,
            conns,
            accept,
        }
    }

    /// Drop every open connection and refuse new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Wait up to `timeout` for the integer `sql` returns to reach `at_least`
/// (panicking with `what`, the value and the router's log if it does not),
/// then leave the router `quiet` more and return the value: a test can then
/// tell "everything arrived" from "everything arrived, and then some".
pub async fn value_after_reaching(
    db: &Database,
    sql: &str,
    at_least: i64,
    timeout: std::time::Duration,
    quiet: std::time::Duration,
    router: &Router,
    what: &str,
) -> i64 {
    let reached = eventually(timeout, || async { scalar(db, sql).await >= at_least }).await;
    assert!(
        reached,
        "{what} ({} of {at_least}):\n{}",
        scalar(db, sql).await,
        router.log_text()
    );
    tokio::time::sleep(quiet).await;
    scalar(db, sql).await
}

/// The admin server's address, from the router's log line (the latest,
/// if the router was restarted).
pub fn admin_address(log: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.contains("admin server listening"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// `GET path` on `addr` over plain HTTP/1.1: the status and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The Python with Kafka clients written by others (confluent-kafka):
/// `SWITCHYARD_PYTHON`, else `.switchyard/venv/bin/python` (made by
/// `scripts/test`).
pub fn client_python() -> PathBuf {
    let path = std::env::var_os("SWITCHYARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".switchyard/venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs confluent-kafka into .switchyard/venv",
        path.display()
    );
    path
}
