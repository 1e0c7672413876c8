//! The benchmark plugin (`scripts/bench`).
//!
//! Setting `mode`:
//! - `"noop"` (default): returns `done` without touching the database or
//!   publishing — the cost of the pipeline itself (marker, transaction,
//!   sandbox call);
//! - `"upsert"`: one upsert per event into `bench_counters`, keyed by the
//!   record key, as a typical counter plugin would.

use switchyard_plugin::{Event, Outcome, PluginInfo, db, migration, run};

struct BenchSink;

const TABLE: &str =
    "CREATE TABLE IF NOT EXISTS bench_counters (k TEXT PRIMARY KEY, n BIGINT NOT NULL)";

impl switchyard_plugin::Guest for BenchSink {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "bench-sink",
            env!("CARGO_PKG_VERSION"),
            vec![migration("0001-bench-counters", TABLE, TABLE)],
        )
    }

    fn handle(ev: Event) -> Outcome {
        run(|| {
            if switchyard_plugin::config::get("mode").as_deref() != Some("upsert") {
                return Ok(Outcome::Done);
            }
            let key = ev.key_str().unwrap_or("none").to_string();
            db::exec(
                "INSERT INTO bench_counters (k, n) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = bench_counters.n + 1",
                &[key.into()],
            )?;
            Ok(Outcome::Done)
        })
    }
}

switchyard_plugin::export_plugin!(BenchSink);
