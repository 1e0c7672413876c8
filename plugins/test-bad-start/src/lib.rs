//! A plugin whose start-up fails: `describe` panics, or, with the setting
//! `on_start = "loop"`, spins forever. The hot-reload tests drop it over a
//! running plugin and expect it to be refused while the running version
//! stays in service; the sandbox tests expect the loop to be stopped by
//! the plugin's deadline.

use switchyard_plugin::{Event, Outcome, PluginInfo};

struct BadStart;

impl switchyard_plugin::Guest for BadStart {
    fn describe() -> PluginInfo {
        if switchyard_plugin::config::get("on_start").as_deref() == Some("loop") {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        panic!("this build cannot start")
    }

    fn handle(_ev: Event) -> Outcome {
        Outcome::Done
    }
}

switchyard_plugin::export_plugin!(BadStart);
