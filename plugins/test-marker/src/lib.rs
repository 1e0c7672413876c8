//! Records which build handled each event, for the hot-reload tests.
//!
//! The same source builds two crates, `test-marker` and `test-marker-b`;
//! each writes its own crate name as the marker, so a test can swap one
//! file for the other under load and see which version handled what.

use switchyard_plugin::{Event, Outcome, PluginInfo, db, migration, run};

const MARKER: &str = env!("CARGO_PKG_NAME");

struct Marker;

impl switchyard_plugin::Guest for Marker {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "test-marker",
            env!("CARGO_PKG_VERSION"),
            vec![migration(
                "0001-marker-events",
                "CREATE TABLE IF NOT EXISTS marker_events (id bigserial PRIMARY KEY, topic text NOT NULL, kafka_partition integer NOT NULL, kafka_offset bigint NOT NULL, marker text NOT NULL)",
                "CREATE TABLE IF NOT EXISTS marker_events (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset INTEGER NOT NULL, marker TEXT NOT NULL)",
            )],
        )
    }

    fn handle(ev: Event) -> Outcome {
        run(|| {
            db::exec(
                "INSERT INTO marker_events (topic, kafka_partition, kafka_offset, marker) VALUES ($1, $2, $3, $4)",
                &[
                    ev.topic.as_str().into(),
                    i64::from(ev.partition).into(),
                    ev.offset.into(),
                    MARKER.into(),
                ],
            )?;
            Ok(Outcome::Done)
        })
    }
}

switchyard_plugin::export_plugin!(Marker);
