//! What the host knows about a plugin that its capabilities consult.

use crate::grants::Grants;
use crate::limits::Limits;
use std::sync::Arc;

/// What the host knows about a plugin that its capabilities consult:
/// name, limits, grants and settings. Shared by every instance of one
/// loaded version; a config reload makes a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEnv {
    /// The plugin's name in the routing config.
    pub name: Arc<str>,
    /// Resource limits.
    pub limits: Limits,
    /// Topics the plugin may publish to.
    pub grants: Grants,
    /// The plugin's settings, a JSON object.
    pub settings: Arc<serde_json::Map<String, serde_json::Value>>,
    /// The database role its SQL runs as (PostgreSQL), once granted.
    pub db_role: Option<String>,
    /// The tables its SQL may use: those its migrations create. The
    /// role's grants enforce them on PostgreSQL, the host on SQLite. Empty
    /// until the router has prepared the plugin.
    pub db_tables: Arc<[String]>,
    /// A handler compiled into the host that takes the component's events
    /// (`scripts/bench` only: it measures the sandbox's cost).
    pub native: Option<crate::native::Native>,
}

impl PluginEnv {
    /// An environment with default limits, every topic granted and no
    /// settings; what `switchyard plugin test` uses without a config.
    pub fn permissive(name: &str) -> Self {
        Self {
            name: name.into(),
            limits: Limits::default(),
            grants: Grants::all(),
            settings: Arc::new(serde_json::Map::new()),
            db_role: None,
            db_tables: Arc::from([]),
            native: None,
        }
    }
}
