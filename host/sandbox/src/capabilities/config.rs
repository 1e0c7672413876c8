//! The `config` capability: the plugin's own settings from the routing
//! config, read-only.

use super::HostState;
use switchyard_wit::switchyard::plugin::config;

impl config::Host for HostState {
    async fn settings(&mut self) -> wasmtime::Result<String> {
        Ok(serde_json::Value::Object((*self.env.settings).clone()).to_string())
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.env.settings.get(&key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
    }
}
