//! The router's wiring of the core's lane: the store's [`Database`] as the
//! ledger, the sandbox's [`PluginWorker`] as the runner, and Kafka for
//! dead letters. The logic — one unit of work per event or batch, what
//! happens after each attempt, dead letters — is
//! [`switchyard_core::lane`]'s.

use crate::database::Database;
use crate::kafka::KafkaProducer;
use crate::runtime::{LoadedPlugin, PluginWorker};
use switchyard_core::state::Ports;
use switchyard_core::work::ProducerSink;

pub use switchyard_core::lane::{End, EventEnd};

/// The real ports: PostgreSQL or SQLite, wasmtime, Kafka.
#[derive(Debug)]
pub struct Router;

impl Ports for Router {
    type Ledger = Database;
    type Runner = PluginWorker;
    type DeadLetters = ProducerSink<KafkaProducer>;
}

/// What every lane of the router shares.
pub type Shared = switchyard_core::state::Shared<Router>;
/// One ordered lane of the router.
pub type Lane = switchyard_core::lane::Lane<Router>;
/// Routes and plugins in service.
pub type RouterState = switchyard_core::state::RouterState<LoadedPlugin>;
/// A plugin version in service and how it runs.
pub type PluginSlot = switchyard_core::state::PluginSlot<LoadedPlugin>;
