//! A plugin whose start-up traps: `describe` panics. The hot-reload tests
//! drop it over a running plugin and expect it to be refused while the
//! running version stays in service.

use switchyard_plugin::{Event, Outcome, PluginInfo};

struct BadStart;

impl switchyard_plugin::Guest for BadStart {
    fn describe() -> PluginInfo {
        panic!("this build cannot start")
    }

    fn handle(_ev: Event) -> Outcome {
        Outcome::Done
    }
}

switchyard_plugin::export_plugin!(BadStart);
