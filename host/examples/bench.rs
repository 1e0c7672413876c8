//! Router benchmark: pushes N events through `switchyard run` (the real
//! binary, a real Tansu broker over TCP, a real database) with the
//! `bench-sink` plugin as a no-op and with one upsert per event, and prints
//! events/s and latency percentiles.
//!
//! Run it with `scripts/bench` (which builds everything first):
//!
//! ```text
//! scripts/bench [--events 20000] [--partitions 4] [--database postgres|sqlite] [--modes noop,upsert]
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

struct Args {
    events: usize,
    /// Events per second to produce at; 0 = as fast as possible (a burst).
    rate: u64,
    partitions: i32,
    database: String,
    modes: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        events: 20_000,
        rate: 0,
        partitions: 4,
        database: "postgres".into(),
        modes: vec!["noop".into(), "upsert".into()],
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
            "--help" | "-h" => {
                println!(
                    "scripts/bench [--events N] [--partitions P] [--database postgres|sqlite] [--modes noop,upsert]"
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
        .unwrap_or_else(|| root().join("target/debug/switchyard"));
    let router = Killed(
        Command::new(&bin)
            .args(["run", "--config", &config.to_string_lossy()])
            .env("SWITCHYARD_LOG", filter)
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

async fn run_mode(args: &Args, mode: &str) -> anyhow::Result<Json> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (_broker, addr) = start_broker()?;
    switchyard::kafka::create_topics(&addr, &["bench.in".to_string()], args.partitions).await?;
    let dir = tempfile::tempdir()?;

    // A fresh database.
    let admin = std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg_name = format!("switchyard_bench_{}", uuid::Uuid::new_v4().simple());
    let db_url = if args.database == "sqlite" {
        format!("sqlite:{}", dir.path().join("bench.db").display())
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE \"{pg_name}\""))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        format!("{base}/{pg_name}")
    };

    let plugin_dir = std::env::var_os("SWITCHYARD_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip2/plugin"));
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "{addr}"
group = "bench"
[database]
url = "{db_url}"
max_connections = 16
[plugins]
dir = "{}"
[plugins.bench]
file = "bench_sink.wasm"
settings = {{ mode = "{mode}" }}
[[routes]]
topics = ["bench.in"]
plugins = ["bench"]
"#,
            plugin_dir.display()
        ),
    )?;
    let log_path = dir.path().join("router.log");
    let _router = start_router(&config, &log_path, "warn,switchyard::consumer=info").await?;

    let db = Database::connect(&db_url, 2).await?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = br#"{"eventType":"bench","userId":"u","data":{"n":1}}"#;
    let started = Instant::now();
    let mut sent_at = std::collections::HashMap::with_capacity(args.events);
    let mut deliveries = Vec::with_capacity(args.events);
    let tick = Duration::from_millis(10);
    let per_tick = if args.rate == 0 {
        usize::MAX
    } else {
        (args.rate as usize / 100).max(1)
    };
    let mut next_tick = Instant::now() + tick;
    for i in 0..args.events {
        if i > 0 && i % per_tick == 0 {
            let now = Instant::now();
            if next_tick > now {
                tokio::time::sleep(next_tick - now).await;
            }
            next_tick += tick;
        }
        let key = format!("k{}", i % 1000);
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        let d = producer.send_result(
            FutureRecord::<str, [u8]>::to("bench.in")
                .key(&key)
                .payload(payload),
        );
        match d {
            Ok(d) => deliveries.push((now_us, d)),
            Err((e, _)) => anyhow::bail!("produce: {e}"),
        }
    }
    for (t, d) in deliveries {
        match d.await {
            Ok(Ok(delivery)) => {
                sent_at.insert((delivery.partition, delivery.offset), t);
            }
            Ok(Err((e, _))) => anyhow::bail!("delivery: {e}"),
            Err(_) => anyhow::bail!("delivery cancelled"),
        }
    }
    let produced_in = started.elapsed();
    let total = args.events as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while scalar(&db, "SELECT count(*) FROM switchyard_processed").await? < total {
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out; router log:\n{}",
                std::fs::read_to_string(&log_path)?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();

    // Per-event latency from the markers.
    let sql = format!(
        "SELECT kafka_partition, kafka_offset, {} FROM switchyard_processed",
        processed_at_micros(args.database == "sqlite")
    );
    let rows = all_rows(&db, &sql).await?;
    let mut latencies = Vec::with_capacity(rows.rows.len());
    let (mut first_sent, mut last_done) = (i64::MAX, i64::MIN);
    for r in &rows.rows {
        if let [Value::Int(p), Value::Int(o), Value::Int(done)] = r.as_slice()
            && let Some(sent) = sent_at.get(&(*p as i32, *o))
        {
            latencies.push((*done - *sent) as f64 / 1000.0);
            first_sent = first_sent.min(*sent);
            last_done = last_done.max(*done);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let span_s = (last_done - first_sent) as f64 / 1e6;
    let upserted = if mode == "upsert" {
        scalar(
            &db,
            "SELECT coalesce(sum(n), 0)::bigint FROM bench_counters",
        )
        .await
        .or_else(|_| Ok::<i64, anyhow::Error>(-1))?
    } else {
        0
    };
    db.close().await;
    drop(_router);
    if args.database != "sqlite" {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{pg_name}\" WITH (FORCE)"
        ))
        .execute(&mut conn)
        .await?;
    }
    Ok(serde_json::json!({
        "mode": mode,
        "database": args.database,
        "events": args.events,
        "rate": args.rate,
        "partitions": args.partitions,
        "events_per_s": (args.events as f64 / span_s).round(),
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().copied().unwrap_or(f64::NAN),
        },
        "produce_s": produced_in.as_secs_f64(),
        "wall_s": wall.as_secs_f64(),
        "upserted_total": upserted,
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
        "[kafka]\nbrokers = \"{addr}\"\ngroup = \"bench\"\n[database]\nurl = \"{db_url}\"\n[plugins.bench]\nfile = \"bench_sink.wasm\"\n[[routes]]\ntopics = [\"bench.in\"]\nplugins = [\"bench\"]\n"
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
        let name = if *f == "bench_sink" {
            "bench".to_string()
        } else {
            f.replace('_', "-")
        };
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
        "{:<8} {:<9} {:>8} {:>11} {:>9} {:>9} {:>9}",
        "mode", "database", "events", "events/s", "p50 ms", "p99 ms", "max ms"
    );
    for mode in &args.modes {
        let r = run_mode(&args, mode).await?;
        let l = &r["latency_ms"];
        println!(
            "{:<8} {:<9} {:>8} {:>11} {:>9.1} {:>9.1} {:>9.1}",
            mode,
            args.database,
            args.events,
            r["events_per_s"],
            l["p50"].as_f64().unwrap_or(f64::NAN),
            l["p99"].as_f64().unwrap_or(f64::NAN),
            l["max"].as_f64().unwrap_or(f64::NAN),
        );
        eprintln!("{r}");
    }
    Ok(())
}
