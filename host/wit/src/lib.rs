//! # switchyard-wit
//!
//! Host bindings for the `plugin` world of `wit/plugin.wit`, generated
//! once: the types the store and the sandbox share (a plugin's SQL values
//! and rows) and the traits the sandbox implements. Imports are async (the
//! database is) and trappable (a host bug becomes a trap of that one call,
//! never a panic of the router).

// Generated code; the WIT file documents every item.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});
