//! Router benchmark: pushes N events through `switchyard run` (the real
//! binary, a real Tansu broker over TCP, a real database) and prints
//! events/s and latency percentiles, with baselines measured in the same
//! run. Modes:
//! - `broker`: a bare rdkafka consumer that does nothing — the ceiling the
//!   broker and the client set on this machine;
//! - `noop`, `upsert`: the `bench-sink` plugin, a no-op or one upsert per
//!   event;
//! - `native-noop`, `native-upsert`: the same work by a handler compiled
//!   into the host, through the same pipeline (`native` in the plugin's
//!   config, see `host/sandbox/src/native.rs`): the sandbox's cost;
//! - `noop-ts`, `upsert-ts`, `noop-py`, `upsert-py`: the same `bench-sink`
//!   plugin written in TypeScript (`plugins/bench-sink-ts`) and Python
//!   (`plugins/bench-sink-py`): what a plugin's language costs per event;
//! - `hand-noop`, `hand-upsert`: the same work in a hand-written consumer
//!   in the seeds' stack (`tests/clients/handwritten_consumer.py`,
//!   aiokafka + asyncpg, one transaction per event with a processed_events
//!   marker);
//! - `seeds`: the four shipped plugins on a mix of the seeds' events;
//! - `stats`: seed 001's job, `interview.created` through the shipped
//!   `stats-increment` plugin (1 000 users), beside the same job written by
//!   hand in the seeds' stacks: `kafkajs-stats` (kafkajs + node-postgres,
//!   `tests/clients/nestjs/handwritten_stats.js`, the way a NestJS team
//!   writes it) and `hand-stats` (aiokafka + asyncpg).
//!
//! Run it with `scripts/bench` (which builds everything first):
//!
//! ```text
//! scripts/bench [--events 20000] [--rate 0] [--partitions 4] [--database postgres|sqlite] [--modes broker,noop,...]
//! scripts/bench --modes reload
//! ```
//!
//! `reload` measures hot reload instead: under a steady stream into the
//! no-op plugin, each shipped plugin's file is replaced by a new build (the
//! same code with a custom section appended, so its hash changes), then the
//! streamed plugin itself; it prints each plugin's time from write to
//! serving, and events/s in 250 ms windows around the swaps against the
//! median.
//!
//! Each mode also prints the CPU time the consumer under test, the broker
//! and PostgreSQL spent per 1 000 events during the timed part (from
//! /proc; the producer runs in the benchmark's own process).
//! `SWITCHYARD_BENCH_LOG=warn,sqlx::query=debug` keeps the router's log,
//! with every statement it sent and its time, as `bench-<mode>.log`.
//!
//! Latency is measured per event from the producer's send (wall clock) to
//! the moment the router wrote that event's processed-marker, which is the
//! first statement of the event's transaction (the commit follows in the
//! same step). Throughput is events / (last marker − first send).

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard::bindings::switchyard::plugin::db::{Rows, Value};
use switchyard::database::Database;
use switchyard::limits::Limits;

#[derive(Clone)]
struct Args {
    events: usize,
    /// Events per second to produce at; 0 = as fast as possible (a burst).
    rate: u64,
    partitions: i32,
    database: String,
    modes: Vec<String>,
    /// `fetch.wait.max.ms` for the consumers (router and bare), if set.
    fetch_wait_ms: Option<u64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        events: 20_000,
        rate: 0,
        partitions: 3,
        database: "postgres".into(),
        fetch_wait_ms: None,
        modes: [
            "broker",
            "noop",
            "native-noop",
            "hand-noop",
            "upsert",
            "native-upsert",
            "hand-upsert",
            "noop-ts",
            "upsert-ts",
            "noop-py",
            "upsert-py",
            "seeds",
            "stats",
            "kafkajs-stats",
            "hand-stats",
        ]
        .iter()
        .map(|m| m.to_string())
        .collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--events" => args.events = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--partitions" => args.partitions = value()?.parse()?,
            "--database" => args.database = value()?,
            "--modes" => args.modes = value()?.split(',').map(str::to_string).collect(),
            "--fetch-wait-ms" => args.fetch_wait_ms = Some(value()?.parse()?),
            // scripts/bench's own flag (a dev build); nothing to do here.
            "--dev" => {}
            "--help" | "-h" => {
                println!(
                    "scripts/bench [--dev] [--events N] [--rate R] [--partitions P] [--database postgres|sqlite] [--fetch-wait-ms MS] [--modes broker,noop,native-noop,hand-noop,upsert,native-upsert,hand-upsert,noop-ts,upsert-ts,noop-py,upsert-py,seeds,stats,kafkajs-stats,hand-stats|reload]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}; see --help"),
        }
    }
    Ok(args)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

struct Killed(Child);

impl Killed {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// CPU time (user + system, clock ticks) a process has used so far; 0
/// once it is gone.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The fields after the command (which may hold spaces), from field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15, here at 11 and 12.
    let at = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(11) + at(12)
}

/// CPU ticks of every `postgres` process (the server and its backends).
fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(cpu_ticks)
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU used during the timed part of a run, by the consumer under test,
/// the broker and PostgreSQL.
#[derive(Default, Clone, Copy)]
struct Cpu {
    consumer: u64,
    broker: u64,
    postgres: u64,
}

impl Cpu {
    fn now(consumer: Option<u32>, broker: u32) -> Self {
        Self {
            consumer: consumer.map_or(0, cpu_ticks),
            broker: cpu_ticks(broker),
            postgres: postgres_ticks(),
        }
    }

    /// Milliseconds of CPU per 1 000 events since `before`.
    fn per_1000(&self, before: &Cpu, events: usize) -> Json {
        let ms = |a: u64, b: u64| {
            (a.saturating_sub(b) as f64 * 1000.0 / clock_ticks() * 1000.0 / events.max(1) as f64)
                .round()
        };
        serde_json::json!({
            "consumer": ms(self.consumer, before.consumer),
            "broker": ms(self.broker, before.broker),
            "postgres": ms(self.postgres, before.postgres),
        })
    }
}
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_broker() -> anyhow::Result<(Killed, String)> {
    let tansu = std::env::var_os("SWITCHYARD_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".switchyard/bin/tansu"));
    let port = free_port()?;
    let child = Command::new(&tansu)
        .args(switchyard::dev::tansu_broker_args(&format!(
            "127.0.0.1:{port}"
        )))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start {}: {e} (run scripts/broker path)",
                tansu.display()
            )
        })?;
    let addr = format!("127.0.0.1:{port}");
    let guard = Killed(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Ok((guard, addr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("tansu did not start")
}

/// Start `switchyard run --config <config>` logging to `log_path`, and
/// wait until it has joined the group.
async fn start_router(config: &Path, log_path: &Path, filter: &str) -> anyhow::Result<Killed> {
    let bin = std::env::var_os("SWITCHYARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root().join("target"), PathBuf::from)
                .join("debug/switchyard")
        });
    let router = Killed(
        Command::new(&bin)
            .args(["run", "--config", &config.to_string_lossy()])
            .env("SWITCHYARD_LOG", filter)
            .env(switchyard::config::NATIVE_ENV, "1")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_path)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?,
    );
    let joined = Instant::now();
    while !std::fs::read_to_string(log_path)?.contains("partitions assigned") {
        if joined.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "router did not join:\n{}",
                std::fs::read_to_string(log_path)?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(router)
}

/// Every row of a query, without the plugin-facing caps.
async fn all_rows(db: &Database, sql: &str) -> anyhow::Result<Rows> {
    let mut tx = db.begin().await?;
    let limits = Limits {
        max_rows: usize::MAX,
        max_result_bytes: usize::MAX,
        ..Limits::default()
    };
    let rows = tx
        .query(sql, &[], &limits)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    tx.rollback().await?;
    Ok(rows)
}

async fn scalar(db: &Database, sql: &str) -> anyhow::Result<i64> {
    let rows = all_rows(db, sql).await?;
    Ok(match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Int(n)) => *n,
        _ => -1,
    })
}

/// SQL for a marker's `processed_at` in microseconds since the epoch.
fn processed_at_micros(sqlite: bool) -> &'static str {
    if sqlite {
        "CAST((julianday(processed_at) - 2440587.5) * 86400000000.0 AS INTEGER)"
    } else {
        "(extract(epoch from processed_at) * 1000000)::bigint"
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One record the benchmark produces.
struct Record {
    topic: &'static str,
    key: String,
    headers: Vec<(&'static str, String)>,
    payload: Vec<u8>,
}

/// The n-th record of the seed mix: the four plugins' seed events in turn
/// (seed 001's USER_CREATED for role-mapping, seed 002's create-user
/// request, seed 001/005's stats events, seed 004's user_registered), each
/// with ids of its own.
fn seed_record(i: usize) -> Record {
    let json = |v: Json| v.to_string().into_bytes();
    match i % 5 {
        0 => Record {
            topic: "USER_CREATED",
            key: format!("auth0|bench-{i}"),
            headers: vec![],
            payload: json(serde_json::json!({
                "userId": format!("auth0|bench-{i}"), "name": "Amélie Durand",
                "email": format!("amelie.{i}@boulangerie-durand.fr"), "role": "user",
                "userType": "SME_USER", "customerAccountId": "cust-bench",
                "customerName": "Boulangerie Durand SARL", "timestamp": "2024-05-14T09:30:00.000Z"})),
        },
        1 => Record {
            topic: "create-user",
            key: format!("req-{i}"),
            headers: vec![],
            payload: json(serde_json::json!({
                "requestId": format!("req-{i}"), "firstName": "احمد", "lastName": "محمدی",
                "email": format!("ahmad.{i}@example.com"), "nationalCode": 1_000_000_000u64 + i as u64,
                "birthDate": "1990-01-01"})),
        },
        2 => Record {
            topic: "user.created",
            key: format!("stats-user-{i}"),
            headers: vec![],
            payload: json(serde_json::json!({
                "eventId": format!("ev-uc-{i}"), "eventType": "user.created",
                "timestamp": "2025-10-06T10:00:00.000Z", "userId": format!("stats-user-{i}"),
                "data": {"keycloakId": "kc", "email": format!("ivan.{i}@example.ru"), "fullName": "Иван Петров"}})),
        },
        3 => {
            let user = format!("stats-seed-{}", i % SEED_USERS);
            Record {
                topic: "interview.created",
                key: user.clone(),
                headers: vec![],
                payload: json(serde_json::json!({
                    "eventId": format!("ev-iv-{i}"), "eventType": "interview.created",
                    "timestamp": "2025-10-06T10:15:30.000Z", "userId": user,
                    "data": {"interviewId": format!("iv-{i}")}})),
            }
        }
        _ => Record {
            topic: "user.registered.v1",
            key: format!("wr-user-{i}"),
            headers: vec![
                ("event-type", "user_registered".into()),
                ("event-id", format!("wr-{i}")),
                ("content-type", "application/json".into()),
                ("request-id", format!("rq-{i}")),
            ],
            payload: json(serde_json::json!({
                "event": "user_registered", "id": format!("wr-{i}"), "ts": 1_696_599_999_999u64, "v": 1,
                "payload": {"user_id": format!("wr-user-{i}"), "email": format!("lucia.{i}@example.com"),
                    "full_name": "Lucía Fernández"},
                "source": "auth-svc"})),
        },
    }
}

/// Users the seed mix's interview events count against, created before
/// the timed run.
const SEED_USERS: usize = 50;

/// Users the `stats` modes' interview events count against.
const STATS_USERS: usize = 1000;

/// Seed 001's job: an interview created by one of [`STATS_USERS`] users.
fn stats_record(i: usize) -> Record {
    let user = format!("stats-seed-{}", i % STATS_USERS);
    Record {
        topic: "interview.created",
        key: user.clone(),
        headers: vec![],
        payload: serde_json::json!({
            "eventId": format!("ev-iv-{i}"), "eventType": "interview.created",
            "timestamp": "2025-10-06T10:15:30.000Z", "userId": user,
            "data": {"interviewId": format!("iv-{i}")}})
        .to_string()
        .into_bytes(),
    }
}

/// The stats service's tables (as the stats-increment plugin's migration
/// creates them) and its users, for the hand-written consumers.
async fn stats_tables(db: &Database) -> anyhow::Result<()> {
    db.run_script(&format!(
        "CREATE TABLE user_stats (user_id text PRIMARY KEY, interviews_created integer NOT NULL DEFAULT 0, \
         storage_used bigint NOT NULL DEFAULT 0, max_interviews integer NOT NULL DEFAULT 10, \
         max_storage bigint NOT NULL DEFAULT 5368709120, updated_at timestamptz); \
         CREATE TABLE stats_processed_events (event_id text PRIMARY KEY, topic text NOT NULL, processed_at timestamptz NOT NULL); \
         INSERT INTO user_stats (user_id) SELECT 'stats-seed-' || g FROM generate_series(0, {}) g",
        STATS_USERS - 1
    ))
    .await?;
    Ok(())
}

fn bench_record(i: usize) -> Record {
    Record {
        topic: "bench.in",
        key: format!("k{}", i % 1000),
        headers: vec![],
        payload: br#"{"eventType":"bench","userId":"u","data":{"n":1}}"#.to_vec(),
    }
}

/// What consumes the events in a run.
enum Subject {
    /// `switchyard run` with this config.
    Router(String),
    /// The hand-written aiokafka + asyncpg consumer, in this mode.
    Handwritten(&'static str),
    /// The hand-written kafkajs + node-postgres consumer of seed 001's job.
    Kafkajs,
    /// A bare rdkafka consumer that does nothing with the events: the
    /// broker's and the client's own ceiling.
    Broker,
}

/// When each event was sent (µs since the epoch), by topic, partition and
/// offset.
type SentAt = std::collections::HashMap<(String, i32, i64), i64>;

/// When each event was done (µs since the epoch), by topic, partition and
/// offset.
type DoneAt = Vec<((String, i32, i64), i64)>;

async fn produce_all(
    addr: &str,
    args: &Args,
    records: impl Iterator<Item = Record>,
) -> anyhow::Result<SentAt> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut deliveries = Vec::with_capacity(args.events);
    let tick = Duration::from_millis(10);
    let per_tick = if args.rate == 0 {
        usize::MAX
    } else {
        (args.rate as usize / 100).max(1)
    };
    let mut next_tick = Instant::now() + tick;
    for (i, r) in records.enumerate() {
        if i > 0 && i % per_tick == 0 {
            let now = Instant::now();
            if next_tick > now {
                tokio::time::sleep(next_tick - now).await;
            }
            next_tick += tick;
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        let d = producer.send_result(
            FutureRecord::<str, [u8]>::to(r.topic)
                .key(&r.key)
                .payload(&r.payload)
                .headers(headers),
        );
        match d {
            Ok(d) => deliveries.push((r.topic, now_us, d)),
            Err((e, _)) => anyhow::bail!("produce: {e}"),
        }
    }
    let mut sent_at = SentAt::with_capacity(deliveries.len());
    for (topic, t, d) in deliveries {
        match d.await {
            Ok(Ok(delivery)) => {
                sent_at.insert((topic.to_string(), delivery.partition, delivery.offset), t);
            }
            Ok(Err((e, _))) => anyhow::bail!("delivery: {e}"),
            Err(_) => anyhow::bail!("delivery cancelled"),
        }
    }
    Ok(sent_at)
}

/// Events/s and latency percentiles from send times and done times.
fn figures(sent_at: &SentAt, done: &DoneAt) -> (f64, Vec<f64>) {
    let mut latencies = Vec::with_capacity(done.len());
    let (mut first_sent, mut last_done) = (i64::MAX, i64::MIN);
    for (k, t) in done {
        if let Some(sent) = sent_at.get(k) {
            latencies.push((*t - *sent) as f64 / 1000.0);
            first_sent = first_sent.min(*sent);
            last_done = last_done.max(*t);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let span_s = (last_done - first_sent) as f64 / 1e6;
    (latencies.len() as f64 / span_s, latencies)
}

/// A fresh database: its URL, and the PostgreSQL one's name to drop.
async fn fresh_database(args: &Args, dir: &Path) -> anyhow::Result<(String, Option<String>)> {
    if args.database == "sqlite" {
        return Ok((format!("sqlite:{}", dir.join("bench.db").display()), None));
    }
    use sqlx::Connection;
    let admin = pg_admin_url();
    let name = format!("switchyard_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await?;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Ok((format!("{base}/{name}"), Some(name)))
}

fn pg_admin_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn drop_database(name: Option<String>) -> anyhow::Result<()> {
    let Some(name) = name else { return Ok(()) };
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn plugin_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip2/plugin"))
}

/// The config of a router run: `bench-sink` in `mode`, or the shipped
/// config's four plugins (`seeds`, `stats`).
fn router_config(args: &Args, mode: &str, addr: &str, db_url: &str) -> anyhow::Result<String> {
    let text = router_config_text(mode, addr, db_url)?;
    Ok(match args.fetch_wait_ms {
        Some(ms) => format!("{text}\n[kafka.consumer]\n\"fetch.wait.max.ms\" = \"{ms}\"\n"),
        None => text,
    }
    .to_string()
        + &std::env::var("SWITCHYARD_BENCH_EXTRA").unwrap_or_default())
}

fn router_config_text(mode: &str, addr: &str, db_url: &str) -> anyhow::Result<String> {
    let dir = plugin_dir();
    if mode == "seeds" || mode == "stats" {
        let shipped = std::fs::read_to_string(root().join("config/switchyard.toml"))?;
        return Ok(shipped
            .replace(
                "brokers = \"127.0.0.1:9092\"",
                &format!("brokers = \"{addr}\""),
            )
            .replace("group = \"switchyard\"", "group = \"bench\"")
            .replace(
                "url = \"sqlite:.switchyard/switchyard.db\"",
                &format!("url = \"{db_url}\"\nmax_connections = 16"),
            )
            .replace(
                "dir = \"../target/wasm32-wasip2/plugin\"",
                &format!("dir = \"{}\"", dir.display()),
            )
            .replace("address = \"127.0.0.1:9180\"", "address = \"127.0.0.1:0\""));
    }
    // `native-*`: the same work by a handler compiled into the host;
    // `*-ts`, `*-py`: by the same plugin written in TypeScript or Python.
    let (work, native) = match mode.strip_prefix("native-") {
        Some(work) => (work, format!("native = \"bench-{work}\"\n")),
        None => (mode, String::new()),
    };
    let (work, file) = match (work.strip_suffix("-ts"), work.strip_suffix("-py")) {
        (Some(work), _) => (work, "bench_sink_ts.wasm"),
        (_, Some(work)) => (work, "bench_sink_py.wasm"),
        _ => (work, "bench_sink.wasm"),
    };
    Ok(format!(
        r#"[kafka]
brokers = "{addr}"
group = "bench"
[database]
url = "{db_url}"
max_connections = 16
[plugins]
dir = "{}"
[plugins.bench-sink]
file = "{file}"
settings = {{ mode = "{work}" }}
{native}[[routes]]
topics = ["bench.in"]
plugins = ["bench-sink"]
"#,
        dir.display()
    ))
}

/// The seed topics, inputs and outputs.
const SEED_TOPICS: [&str; 13] = [
    "USER_CREATED",
    "USER_STATUS_CHANGED",
    "USER_ROLE_CHANGED",
    "create-user",
    "create-user-response",
    "user.created",
    "interview.created",
    "media.uploaded",
    "user.quota_exceeded",
    "user.registered.v1",
    "notification.send.welcome",
    "notification.send.email",
    "switchyard.dlq",
];

async fn run_mode(args: &Args, mode: &str) -> anyhow::Result<Json> {
    let (broker, addr) = start_broker()?;
    let seeds = mode == "seeds";
    let stats = mode.ends_with("stats");
    let topics: Vec<String> = if seeds || stats {
        SEED_TOPICS.iter().map(|t| t.to_string()).collect()
    } else {
        vec!["bench.in".to_string()]
    };
    switchyard::kafka::create_topics(&addr, &topics, args.partitions).await?;
    let dir = tempfile::tempdir()?;
    let (db_url, pg_name) = fresh_database(args, dir.path()).await?;
    let subject = match mode {
        "broker" => Subject::Broker,
        "hand-noop" => Subject::Handwritten("noop"),
        "hand-upsert" => Subject::Handwritten("upsert"),
        "hand-stats" => Subject::Handwritten("stats"),
        "kafkajs-stats" => Subject::Kafkajs,
        "noop" | "upsert" | "native-noop" | "native-upsert" | "noop-ts" | "upsert-ts"
        | "noop-py" | "upsert-py" | "seeds" | "stats" => {
            Subject::Router(router_config(args, mode, &addr, &db_url)?)
        }
        other => anyhow::bail!(
            "unknown mode {other}: broker, noop, upsert, native-noop, native-upsert, noop-ts, upsert-ts, noop-py, upsert-py, hand-noop, hand-upsert, seeds, stats, hand-stats, kafkajs-stats or reload"
        ),
    };
    anyhow::ensure!(
        !matches!(subject, Subject::Handwritten(_) | Subject::Kafkajs) || pg_name.is_some(),
        "the hand-written consumers run on PostgreSQL only (asyncpg, node-postgres)"
    );
    let log_path = dir.path().join("consumer.log");
    let db = Database::connect(&db_url, 2).await?;
    let mut warmup = 0i64;
    let (_consumer, bare) = match &subject {
        Subject::Router(config) => {
            let path = dir.path().join("bench.toml");
            std::fs::write(&path, config)?;
            // SWITCHYARD_BENCH_LOG: the router's log filter, e.g.
            // `warn,sqlx::query=debug` to see every statement and its time;
            // the log is then kept as bench-<mode>.log.
            let filter = std::env::var("SWITCHYARD_BENCH_LOG")
                .unwrap_or_else(|_| "warn,switchyard::consumer=info".to_string());
            let router = start_router(&path, &log_path, &filter).await?;
            if seeds || stats {
                let users = if stats { STATS_USERS } else { SEED_USERS };
                db.run_script(
                    "INSERT INTO customers (id, name) VALUES ('cust-bench', 'Boulangerie Durand SARL')",
                )
                .await?;
                // The users the interview events count against.
                let created = (0..users).map(|u| {
                    let mut r = seed_record(2);
                    r.key = format!("stats-seed-{u}");
                    r.payload = serde_json::json!({
                        "eventId": format!("ev-seed-{u}"), "eventType": "user.created",
                        "timestamp": "2025-10-06T10:00:00.000Z", "userId": format!("stats-seed-{u}"),
                        "data": {"keycloakId": "kc", "email": format!("seed.{u}@example.ru"), "fullName": "Иван Петров"}})
                    .to_string()
                    .into_bytes();
                    r
                });
                let warm = Args {
                    rate: 0,
                    events: users,
                    ..args.clone()
                };
                produce_all(&addr, &warm, created).await?;
                warmup = users as i64;
                wait_for(
                    &db,
                    "SELECT count(*) FROM switchyard_processed",
                    warmup,
                    &log_path,
                )
                .await?;
            }
            (Some(router), None)
        }
        Subject::Handwritten(hmode) => {
            if stats {
                stats_tables(&db).await?;
            }
            (
                Some(start_handwritten(&addr, &db_url, hmode, args, &log_path).await?),
                None,
            )
        }
        Subject::Kafkajs => {
            stats_tables(&db).await?;
            (
                Some(start_kafkajs(&addr, &db_url, args, &log_path).await?),
                None,
            )
        }
        Subject::Broker => (None, Some(bare_consumer(&addr, args)?)),
    };

    let consumer_pid = _consumer.as_ref().map(Killed::pid);
    let cpu_before = Cpu::now(consumer_pid, broker.pid());
    let started = Instant::now();
    let sent_at = if seeds {
        produce_all(&addr, args, (0..args.events).map(seed_record)).await?
    } else if stats {
        produce_all(&addr, args, (0..args.events).map(stats_record)).await?
    } else {
        produce_all(&addr, args, (0..args.events).map(bench_record)).await?
    };
    let produced_in = started.elapsed();
    let total = args.events as i64;
    let sqlite = args.database == "sqlite";
    let done: DoneAt = match (&subject, bare) {
        (Subject::Broker, Some(consumer)) => consumer.await??,
        (Subject::Handwritten(_) | Subject::Kafkajs, _) => {
            wait_for(
                &db,
                "SELECT count(*) FROM processed_events",
                total,
                &log_path,
            )
            .await?;
            let rows = all_rows(
                &db,
                "SELECT event_key, (extract(epoch from processed_at) * 1000000)::bigint FROM processed_events",
            )
            .await?;
            rows.rows
                .iter()
                .filter_map(|r| match r.as_slice() {
                    [Value::Text(k), Value::Int(t)] => {
                        let mut parts = k.rsplitn(3, '/');
                        let offset = parts.next()?.parse().ok()?;
                        let partition = parts.next()?.parse().ok()?;
                        Some(((parts.next()?.to_string(), partition, offset), *t))
                    }
                    _ => None,
                })
                .collect()
        }
        _ => {
            wait_for(
                &db,
                "SELECT count(*) FROM switchyard_processed",
                total + warmup,
                &log_path,
            )
            .await?;
            let sql = format!(
                "SELECT topic, kafka_partition, kafka_offset, {} FROM switchyard_processed",
                processed_at_micros(sqlite)
            );
            all_rows(&db, &sql)
                .await?
                .rows
                .iter()
                .filter_map(|r| match r.as_slice() {
                    [Value::Text(t), Value::Int(p), Value::Int(o), Value::Int(at)] => {
                        Some(((t.clone(), *p as i32, *o), *at))
                    }
                    _ => None,
                })
                .collect()
        }
    };
    let wall = started.elapsed();
    let cpu = Cpu::now(consumer_pid, broker.pid()).per_1000(&cpu_before, args.events);
    let (events_per_s, latencies) = figures(&sent_at, &done);
    let upserted = match mode {
        "upsert" | "native-upsert" | "hand-upsert" | "upsert-ts" | "upsert-py" => {
            scalar(
                &db,
                "SELECT coalesce(sum(n), 0)::bigint FROM bench_counters",
            )
            .await?
        }
        _ => 0,
    };
    let dead_lettered = if matches!(subject, Subject::Router(_)) {
        scalar(
            &db,
            "SELECT count(*) FROM switchyard_processed WHERE outcome = 'dead-lettered'",
        )
        .await?
    } else {
        0
    };
    db.close().await;
    drop(_consumer);
    if std::env::var_os("SWITCHYARD_BENCH_LOG").is_some() {
        let kept = format!("bench-{mode}.log");
        std::fs::copy(&log_path, &kept)?;
        eprintln!("router log kept in {kept}");
    }
    drop_database(pg_name).await?;
    Ok(serde_json::json!({
        "mode": mode,
        "database": args.database,
        "events": args.events,
        "rate": args.rate,
        "partitions": args.partitions,
        "events_per_s": events_per_s.round(),
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().copied().unwrap_or(f64::NAN),
        },
        "measured": latencies.len(),
        "produce_s": produced_in.as_secs_f64(),
        "wall_s": wall.as_secs_f64(),
        "upserted_total": upserted,
        "cpu_ms_per_1000_events": cpu,
        "dead_lettered": dead_lettered,
    }))
}

/// Wait until `sql` counts `n`, for at most 10 minutes.
async fn wait_for(db: &Database, sql: &str, n: i64, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while scalar(db, sql).await.unwrap_or(-1) < n {
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out waiting for {n} from {sql}; consumer log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The hand-written consumer (tests/clients/handwritten_consumer.py),
/// started and ready (it has its partitions).
async fn start_handwritten(
    addr: &str,
    db_url: &str,
    mode: &str,
    args: &Args,
    log: &Path,
) -> anyhow::Result<Killed> {
    let topic = if mode == "stats" {
        "interview.created"
    } else {
        "bench.in"
    };
    let python = std::env::var_os("SWITCHYARD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".switchyard/venv/bin/python"));
    let out = log.with_file_name("stdout");
    let child = Command::new(&python)
        .arg(root().join("tests/clients/handwritten_consumer.py"))
        .args(["--brokers", addr, "--topic", topic, "--group", "bench-hand"])
        .args([
            "--database",
            &db_url.replacen("postgres://", "postgresql://", 1),
        ])
        .args(["--mode", mode, "--events", &args.events.to_string()])
        .args(["--pool", &args.partitions.to_string()])
        // Connected until killed, so that its sessions' CPU time is read.
        .args(["--linger", "600"])
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start {} (scripts/bench installs it): {e}",
                python.display()
            )
        })?;
    wait_ready(Killed(child), &out, log).await
}

/// A hand-written consumer once it says it has its partitions.
async fn wait_ready(child: Killed, out: &Path, log: &Path) -> anyhow::Result<Killed> {
    let started = Instant::now();
    while !std::fs::read_to_string(out)?.contains("\"ready\"") {
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "the hand-written consumer did not get its partitions:\n{}",
                std::fs::read_to_string(log)?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

/// The kafkajs + node-postgres consumer of seed 001's job
/// (tests/clients/nestjs/handwritten_stats.js), started and ready.
async fn start_kafkajs(
    addr: &str,
    db_url: &str,
    args: &Args,
    log: &Path,
) -> anyhow::Result<Killed> {
    let out = log.with_file_name("stdout");
    let child = Command::new("node")
        .arg(root().join("tests/clients/nestjs/handwritten_stats.js"))
        .args([addr, "bench-kafkajs", db_url])
        .arg(args.events.to_string())
        .arg(args.partitions.to_string())
        .arg("600000")
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start node (Node.js 20; scripts/bench installs kafkajs and pg): {e}"
            )
        })?;
    wait_ready(Killed(child), &out, log).await
}

/// A bare consumer in its own thread: reads `events` records and notes
/// when each arrived.
fn bare_consumer(
    addr: &str,
    args: &Args,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<DoneAt>>> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let events = args.events;
    let mut extra = std::collections::BTreeMap::new();
    if let Some(ms) = args.fetch_wait_ms {
        extra.insert("fetch.wait.max.ms".to_string(), ms.to_string());
    }
    let consumer: BaseConsumer =
        switchyard::kafka::consumer_config(addr, "bench-bare", &extra).create()?;
    consumer.subscribe(&["bench.in"])?;
    // Joined before the first event is sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment()?.count() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the bare consumer did not join");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
        }
    }
    Ok(tokio::task::spawn_blocking(move || {
        let mut done = Vec::with_capacity(events);
        let deadline = Instant::now() + Duration::from_secs(600);
        while done.len() < events {
            anyhow::ensure!(Instant::now() < deadline, "the bare consumer timed out");
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
            done.push(((m.topic().to_string(), m.partition(), m.offset()), now));
        }
        Ok(done)
    }))
}

/// `bytes` with a custom section appended: a different file (and hash)
/// with the same behaviour, like a rebuild.
fn with_custom_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

async fn run_reload(args: &Args) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (_broker, addr) = start_broker()?;
    switchyard::kafka::create_topics(&addr, &["bench.in".to_string()], args.partitions).await?;
    let dir = tempfile::tempdir()?;
    let plugin_src = std::env::var_os("SWITCHYARD_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip2/plugin"));
    let shipped = [
        "role_mapping",
        "profile_creation",
        "stats_increment",
        "welcome_notification",
    ];
    for f in shipped.iter().chain(["bench_sink"].iter()) {
        std::fs::copy(
            plugin_src.join(format!("{f}.wasm")),
            dir.path().join(format!("{f}.wasm")),
        )?;
    }
    let db_url = format!("sqlite:{}", dir.path().join("reload.db").display());
    let config = dir.path().join("reload.toml");
    let mut text = format!(
        "[kafka]\nbrokers = \"{addr}\"\ngroup = \"bench\"\n[database]\nurl = \"{db_url}\"\n[plugins.bench-sink]\nfile = \"bench_sink.wasm\"\n[[routes]]\ntopics = [\"bench.in\"]\nplugins = [\"bench-sink\"]\n"
    );
    for f in shipped {
        let name = f.replace('_', "-");
        text.push_str(&format!("[plugins.{name}]\nfile = \"{f}.wasm\"\npublish = [\"*\"]\n[[routes]]\ntopics = [\"unused.{name}\"]\nplugins = [\"{name}\"]\n"));
    }
    std::fs::write(&config, text)?;
    let log_path = dir.path().join("router.log");
    let _router = start_router(
        &config,
        &log_path,
        "warn,switchyard::consumer=info,switchyard::reload=info",
    )
    .await?;
    // A steady stream of about 1000 events/s for 14 s.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("linger.ms", "2")
        .create()?;
    let streaming = tokio::spawn(async move {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(14) {
            for _ in 0..10 {
                let key = format!("k{}", n % 100);
                let _ = producer.send_result(
                    FutureRecord::<str, str>::to("bench.in")
                        .key(&key)
                        .payload("{}"),
                );
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10));
        n
    });
    let mut swaps = Vec::new();
    let mut order: Vec<&str> = shipped.to_vec();
    order.push("bench_sink");
    for (i, f) in order.iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let path = dir.path().join(format!("{f}.wasm"));
        let bytes = with_custom_section(
            &std::fs::read(&path)?,
            "switchyard-bench-build",
            format!("{i}").as_bytes(),
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        let written = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        let wall = Instant::now();
        std::fs::rename(&tmp, &path)?;
        let name = f.replace('_', "-");
        let needle = format!("plugin reloaded plugin={name} ");
        while !std::fs::read_to_string(&log_path)?.contains(&needle) {
            if wall.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "{name} did not reload:\n{}",
                    std::fs::read_to_string(&log_path)?
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        swaps.push((name, written, wall.elapsed()));
    }
    let sent = streaming.await?;
    let db = Database::connect(&db_url, 1).await?;
    while scalar(&db, "SELECT count(*) FROM switchyard_processed").await? < sent as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sql = format!(
        "SELECT {} FROM switchyard_processed",
        processed_at_micros(true)
    );
    let rows = all_rows(&db, &sql).await?;
    let times: Vec<i64> = rows
        .rows
        .iter()
        .filter_map(|r| match r.first() {
            Some(Value::Int(t)) => Some(*t),
            _ => None,
        })
        .collect();
    let (t0, t1) = (
        times.iter().min().copied().unwrap_or(0),
        times.iter().max().copied().unwrap_or(0),
    );
    const WINDOW: i64 = 250_000;
    let mut buckets = vec![0u64; ((t1 - t0) / WINDOW + 1) as usize];
    for t in &times {
        buckets[((t - t0) / WINDOW) as usize] += 1;
    }
    // Ignore the first and last second (ramp up, drain).
    let inner: Vec<(usize, u64)> = buckets
        .iter()
        .copied()
        .enumerate()
        .skip(4)
        .take(buckets.len().saturating_sub(8))
        .collect();
    let mut rates: Vec<u64> = inner.iter().map(|(_, n)| n * 4).collect();
    rates.sort_unstable();
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0);
    println!(
        "hot reload under a steady stream ({sent} events, ~1000/s, {} partitions, SQLite)",
        args.partitions
    );
    println!(
        "{:<22} {:>16} {:>22}",
        "plugin", "write→serving ms", "events/s in its window"
    );
    for (name, written, took) in &swaps {
        let window = ((written - t0) / WINDOW).max(0) as usize;
        let around: Vec<u64> = (window..=window + (took.as_micros() as i64 / WINDOW) as usize + 1)
            .filter_map(|w| buckets.get(w).map(|n| n * 4))
            .collect();
        let low = around.iter().min().copied().unwrap_or(0);
        println!(
            "{:<22} {:>16.0} {:>22}",
            name,
            took.as_secs_f64() * 1000.0,
            low
        );
    }
    println!("median events/s over the run (250 ms windows): {median}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.modes == ["reload"] {
        return run_reload(&args).await;
    }
    println!(
        "machine: {} cores, {}; {} build; broker Tansu 0.6 (memory), {} partitions, rate {}, fetch.wait.max.ms {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.database,
        if cfg!(debug_assertions) {
            "dev (unoptimized)"
        } else {
            "release"
        },
        args.partitions,
        if args.rate == 0 {
            "burst".to_string()
        } else {
            format!("{}/s", args.rate)
        },
        args.fetch_wait_ms
            .map_or("500 (default)".to_string(), |ms| ms.to_string())
    );
    println!(
        "{:<14} {:>8} {:>11} {:>9} {:>9} {:>9}   CPU ms per 1 000 events: consumer / broker / postgres (the producer runs in this process)",
        "mode", "events", "events/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut rates = std::collections::HashMap::new();
    for mode in &args.modes {
        let r = run_mode(&args, mode).await?;
        let l = &r["latency_ms"];
        let cpu = &r["cpu_ms_per_1000_events"];
        println!(
            "{:<14} {:>8} {:>11} {:>9.1} {:>9.1} {:>9.1}   {} / {} / {}",
            mode,
            args.events,
            r["events_per_s"],
            l["p50"].as_f64().unwrap_or(f64::NAN),
            l["p99"].as_f64().unwrap_or(f64::NAN),
            l["max"].as_f64().unwrap_or(f64::NAN),
            cpu["consumer"],
            cpu["broker"],
            cpu["postgres"],
        );
        eprintln!("{r}");
        rates.insert(mode.clone(), r["events_per_s"].as_f64().unwrap_or(f64::NAN));
    }
    for (a, b, what) in [
        (
            "noop",
            "hand-noop",
            "switchyard no-op / hand-written marker-only consumer",
        ),
        (
            "upsert",
            "hand-upsert",
            "switchyard upsert / hand-written upsert consumer",
        ),
        (
            "noop",
            "native-noop",
            "sandbox cost on no-op: wasm / native",
        ),
        (
            "upsert",
            "native-upsert",
            "sandbox cost on upsert: wasm / native",
        ),
        (
            "noop",
            "broker",
            "switchyard no-op / bare consumer (broker ceiling)",
        ),
        ("upsert", "noop", "upsert / no-op"),
        (
            "upsert-ts",
            "upsert",
            "the same upsert plugin, TypeScript / Rust",
        ),
        (
            "upsert-py",
            "upsert",
            "the same upsert plugin, Python / Rust",
        ),
        (
            "noop-ts",
            "noop",
            "the same no-op plugin, TypeScript / Rust",
        ),
        ("noop-py", "noop", "the same no-op plugin, Python / Rust"),
        (
            "stats",
            "kafkajs-stats",
            "seed 001's job, switchyard stats-increment / kafkajs + node-postgres",
        ),
        (
            "stats",
            "hand-stats",
            "seed 001's job, switchyard stats-increment / aiokafka + asyncpg",
        ),
    ] {
        if let (Some(x), Some(y)) = (rates.get(a), rates.get(b)) {
            println!("ratio {what}: {:.2}", x / y);
        }
    }
    Ok(())
}
