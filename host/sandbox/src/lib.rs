//! # switchyard-sandbox
//!
//! Where plugins run:
//! - [`runtime`]: the wasmtime engine, plugin loading and the workers that
//!   run events on reused or per-event instances (the core's `Runner`);
//! - [`capabilities`]: what plugins import — `db`, `publish`, `config`,
//!   `log` — one module each;
//! - [`native`]: the benchmark's handlers compiled into the host (only
//!   with the `bench-native` feature).

pub mod capabilities;
pub mod native;
pub mod runtime;
