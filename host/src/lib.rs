//! # Switchyard
//!
//! A WebAssembly-plugin event router: one host process consumes Kafka
//! topics and hands each event to sandboxed WebAssembly components chosen
//! by a routing config, through the WIT interface in `wit/plugin.wit`.
//!
//! The router's core — events, the routing config and route selection,
//! the unit of work, the retry decision, the lane, the dead-letter format
//! — is the `switchyard-core` crate, re-exported here under the same
//! module names. This crate wires it to the outside:
//! - the store: [`database`] (PostgreSQL or SQLite, per-event
//!   transactions, typed values, plugin migrations), [`pg_identity`]
//!   (plugin login roles and the guarded host functions), [`sql_gate`]
//!   (which SQL a plugin may send), [`sqlite_sandbox`], [`ledger`] (the
//!   database as the unit of work's ledger) and [`outbox`] (the outbox
//!   table and its relay);
//! - the sandbox: [`runtime`] (the wasmtime engine, plugin loading, the
//!   workers), [`capabilities`] (`db`, `publish`, `config`, `log`),
//!   [`bindings`], [`native`] (the benchmark's handlers);
//! - Kafka: [`kafka`], [`consumer`] (the group consumer and its lanes),
//!   [`pipeline`] (the core's lane on the real ports), [`topics`];
//! - the process: [`app`] (`run`, `check`), [`loading`] (a config and
//!   its plugins), [`reload`], [`admin`];
//! - the tools: [`dev`], [`dlq`], [`explain`], [`plugin_test`], [`tail`]
//!   (`consume`, `record`).

pub use switchyard_core::{
    breaker, config, deadletter, decision, event, lane, limits, memory, metrics, outcome, routes,
    state, work,
};
pub use switchyard_sandbox::{capabilities, compiled, native, worker};

/// The engine, plugin loading and the workers, under the module name
/// they had before the sandbox was a crate of its own.
pub mod runtime {
    pub use switchyard_sandbox::runtime::*;
    pub use switchyard_sandbox::worker::*;
}
pub use switchyard_store::{
    database, error as store_error, ledger, outbox, pg_identity, sql_gate, sqlite_sandbox,
};
pub use switchyard_wit as bindings;

pub mod admin;
pub mod app;
pub mod consumer;
pub mod dev;
pub mod dlq;
pub mod expect;
pub mod explain;
pub mod kafka;
pub mod loading;
pub mod pipeline;
pub mod plugin_test;
pub mod relay;
pub mod reload;
pub mod scaffold;
pub mod tail;
pub mod topics;
pub mod watch;

#[cfg(test)]
mod layout {
    /// The README's layout section names every source file of the host
    /// and the core, so that it cannot drift from the tree.
    #[test]
    fn the_readme_layout_names_every_source_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("../README.md"))
            .unwrap_or_else(|e| panic!("README.md: {e}"));
        let start = readme
            .find("## Layout")
            .unwrap_or_else(|| panic!("no ## Layout"));
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let mut missing = Vec::new();
        for src in ["src", "core/src", "wit/src", "store/src", "sandbox/src"] {
            let mut dirs = vec![root.join(src)];
            while let Some(dir) = dirs.pop() {
                let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else if path.extension().is_some_and(|e| e == "rs") {
                        let rel = path
                            .strip_prefix(root.join(src))
                            .map(|p| p.display().to_string())
                            .unwrap_or_default();
                        if !section.contains(&rel) {
                            missing.push(format!("host/{src}/{rel}"));
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "README.md's ## Layout does not name: {missing:?}"
        );
    }
}
