#![allow(missing_docs)] // generated code; the WIT file documents every item
//! Host bindings for the `plugin` world of `wit/plugin.wit`, generated
//! once. Imports are async (the database is) and trappable (a host bug
//! becomes a trap of that one call, never a panic of the router).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});
