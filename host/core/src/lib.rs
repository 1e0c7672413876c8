//! # switchyard-core
//!
//! The router's core, with no broker, database or WebAssembly engine in
//! it: those plug in through the traits of [`work`] and [`state::Ports`].
//!
//! - [`event`]: a consumed event and where it comes from;
//! - [`config`]: the routing config, parsed and checked;
//!   [`routes`]: which plugins an event goes to (the router and
//!   `switchyard explain` share it);
//! - [`work`]: the unit of work — begin, claim markers, run plugins,
//!   queue outbox rows, commit — and the traits it runs on;
//! - [`decision`]: what happens after an attempt (commit, retry,
//!   dead-letter, pause), a pure function;
//! - [`lane`]: one ordered lane running events through the unit of work;
//!   [`state`]: what the lanes share;
//! - [`deadletter`]: the dead-letter format, written and read;
//! - [`outcome`], [`message`], [`grants`], [`limits`], [`env`],
//!   [`identity`]: what a plugin returns, publishes, may do and is;
//! - [`breaker`]: per-plugin circuit breakers; [`metrics`]: `/metrics`;
//! - [`offsets`], [`keys`]: what a partition may commit when its events
//!   finish out of order, and which of its events may start, by key (the
//!   groundwork of key-ordered concurrency; not wired into the lanes yet);
//! - [`partitions`]: what `publish` asks of the brokers' metadata;
//! - [`memory`]: in-memory versions of the traits, for tests;
//! - [`native`]: the names of the benchmark's native handlers.

pub mod breaker;
pub mod config;
pub mod deadletter;
pub mod decision;
pub mod env;
pub mod event;
pub mod grants;
pub mod identity;
pub mod keys;
pub mod lane;
pub mod limits;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod native;
pub mod offsets;
pub mod outcome;
pub mod partitions;
pub mod routes;
pub mod state;
pub mod work;
