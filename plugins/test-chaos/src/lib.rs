//! The chaos test's plugin (`tests/chaos.rs`). For each event
//! `{"id": "...", "poison": false}` it
//! - inserts an effect row into `chaos_effects`, which has no unique key:
//!   only the host's processed-marker keeps a redelivered event from
//!   inserting it twice;
//! - increments the one shared counter in `chaos_counter`;
//! - publishes `{"id": ...}` to `chaos.out`.
//!
//! A `"poison": true` event is rejected, so it must end in the dead-letter
//! topic and nowhere else.

use serde::Deserialize;
use switchyard_plugin::{Event, Outcome, PluginInfo, db, migration, publish, rejected, run};

#[derive(Deserialize)]
struct ChaosEvent {
    id: String,
    #[serde(default)]
    poison: bool,
}

struct Chaos;

impl switchyard_plugin::Guest for Chaos {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "test-chaos",
            env!("CARGO_PKG_VERSION"),
            vec![
                migration(
                    "0001-chaos-effects",
                    "CREATE TABLE IF NOT EXISTS chaos_effects (event_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
                    "CREATE TABLE IF NOT EXISTS chaos_effects (event_id TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
                ),
                migration(
                    "0002-chaos-counter",
                    "CREATE TABLE IF NOT EXISTS chaos_counter (id integer PRIMARY KEY, n bigint NOT NULL)",
                    "CREATE TABLE IF NOT EXISTS chaos_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
                ),
            ],
        )
    }

    fn handle(ev: Event) -> Outcome {
        run(|| {
            let event: ChaosEvent = ev.json()?;
            if event.poison {
                return Err(rejected(format!("poison event {}", event.id)));
            }
            db::exec(
                "INSERT INTO chaos_effects (event_id) VALUES ($1)",
                &[event.id.as_str().into()],
            )?;
            db::exec(
                "INSERT INTO chaos_counter (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = chaos_counter.n + 1",
                &[],
            )?;
            publish::json(
                "chaos.out",
                Some(&event.id),
                &serde_json::json!({ "id": event.id }),
            )?;
            Ok(Outcome::Done)
        })
    }
}

switchyard_plugin::export_plugin!(Chaos);
