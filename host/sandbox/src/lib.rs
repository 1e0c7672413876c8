//! # switchyard-sandbox
//!
//! Where plugins run:
//! - [`runtime`]: the wasmtime engine and plugin loading;
//! - [`compiled`]: the on-disk cache of compiled components (the crate's
//!   one `unsafe` call, and why it is sound);
//! - [`worker`]: the workers that run events on reused or per-event
//!   instances (the core's `Runner`), and what each call produced;
//! - [`capabilities`]: what plugins import — `db`, `publish`, `config`,
//!   `log` — one module each;
//! - [`native`]: the benchmark's handlers compiled into the host (only
//!   with the `bench-native` feature).

mod call;
pub mod capabilities;
pub mod compiled;
pub mod native;
pub mod runtime;
pub mod worker;
