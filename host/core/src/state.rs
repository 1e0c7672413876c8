//! The router-wide state: the routes and plugin versions in service
//! (swapped whole on reload), and what every lane shares.

use crate::breaker::{BreakerConfig, Breakers};
use crate::config::RetryConfig;
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::work::{Isolation, Ledger, Runner};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// What the lanes run on: the store's ledger, the sandbox's runner and
/// where dead letters go. The router wires the real ones;
/// [`crate::memory`] has in-memory ones.
pub trait Ports: Send + Sync + 'static {
    /// Transactions, markers, outbox rows.
    type Ledger: Ledger;
    /// One plugin version's worker.
    type Runner: Runner<<Self::Ledger as Ledger>::Tx>;
    /// Dead letters.
    type DeadLetters: crate::work::DeadLetterSink;
}

/// A loaded plugin version of `P`'s runner.
pub type PluginOf<P> =
    <<P as Ports>::Runner as Runner<<<P as Ports>::Ledger as Ledger>::Tx>>::Plugin;

/// A loaded plugin and how its instances are shared.
#[derive(Debug)]
pub struct PluginSlot<V> {
    /// The version in service.
    pub plugin: Arc<V>,
    /// Instance sharing.
    pub isolation: Isolation,
    /// Its circuit breaker's settings.
    pub breaker: BreakerConfig,
}

impl<V> Clone for PluginSlot<V> {
    fn clone(&self) -> Self {
        Self {
            plugin: self.plugin.clone(),
            isolation: self.isolation,
            breaker: self.breaker,
        }
    }
}

/// Routes and plugins in service; swapped whole on reload.
#[derive(Debug)]
pub struct RouterState<V> {
    /// Topic → routes.
    pub routes: RouteTable,
    /// Plugin name → version in service.
    pub plugins: HashMap<String, PluginSlot<V>>,
}

impl<V> Default for RouterState<V> {
    fn default() -> Self {
        Self {
            routes: RouteTable::default(),
            plugins: HashMap::new(),
        }
    }
}

impl<V> Clone for RouterState<V> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            plugins: self.plugins.clone(),
        }
    }
}

/// What every lane shares.
pub struct Shared<P: Ports> {
    /// Routes and plugins in service.
    pub state: arc_swap::ArcSwap<RouterState<PluginOf<P>>>,
    /// The service database: transactions, markers, outbox rows.
    pub db: P::Ledger,
    /// Where dead letters go.
    pub dead_letters: P::DeadLetters,
    /// Consumer group (part of every dedupe key).
    pub group: String,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Wakes the outbox relay after a commit with messages.
    pub relay_wake: Arc<Notify>,
    /// Counts and timings, exported at `/metrics` (shared with the
    /// outbox relay).
    pub metrics: Arc<Metrics>,
    /// Each plugin's circuit breaker.
    pub breakers: Breakers,
}
