//! stub
use switchyard_plugin::{Event, Outcome, PluginInfo};
struct P;
impl switchyard_plugin::Guest for P {
    fn describe() -> PluginInfo { switchyard_plugin::info("x", "0", vec![]) }
    fn handle(_ev: Event) -> Outcome { Outcome::Done }
}
switchyard_plugin::export_plugin!(P);
