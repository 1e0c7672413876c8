//! # Switchyard
//!
//! A WebAssembly-plugin event router: one host process consumes Kafka
//! topics and hands each event to sandboxed WebAssembly components chosen
//! by a routing config, through the WIT interface in `wit/plugin.wit`.
//!
//! The library is organised by what lives where:
//! - [`runtime`]: the wasmtime engine, plugin loading and the workers that
//!   run events on reused or per-event instances;
//! - [`capabilities`]: what plugins import — `db`, `publish`, `config`,
//!   `log` — one module each;
//! - [`database`]: PostgreSQL or SQLite, per-event transactions, typed
//!   values, plugin migrations;
//! - [`pg_identity`]: PostgreSQL plugin identities — login roles, their
//!   pools, and the guarded functions the host writes markers and outbox
//!   rows with;
//! - [`sql_gate`]: which SQL a plugin may send;
//! - [`limits`]: per-plugin resource limits;
//! - [`event`]: the host's view of a consumed event;
//! - [`plugin_test`]: `switchyard plugin test`, the plugin author's loop;
//! - [`config`]: the routing config; [`routes`]: the route table;
//! - [`consumer`]: the group consumer and its ordered lanes;
//! - [`pipeline`]: one event in one lane — marker, plugin, outbox,
//!   retries, dead letters;
//! - [`outbox`]: the outbox table and its relay; [`kafka`]: client
//!   settings; [`app`]: `switchyard run` and `switchyard check`;
//! - [`reload`]: hot reload of plugin files and the routing config;
//! - [`topics`]: partition counts, to refuse a publish to a partition
//!   that does not exist.

pub mod admin;
pub mod app;
pub mod bindings;
pub mod breaker;
pub mod capabilities;
pub mod config;
pub mod consumer;
pub mod database;
pub mod dev;
pub mod dlq;
pub mod event;
pub mod explain;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod native;
pub mod outbox;
pub mod pg_identity;
pub mod pipeline;
pub mod plugin_test;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod sql_gate;
pub mod sqlite_sandbox;
pub mod topics;
