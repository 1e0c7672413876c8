//! # switchyard-store
//!
//! The service database, and everything the host keeps in it:
//! - [`database`]: PostgreSQL or SQLite, per-event transactions, typed
//!   values, plugin migrations;
//! - [`pg_identity`]: PostgreSQL plugin identities — login roles, their
//!   pools, and the guarded functions the host writes markers and outbox
//!   rows with;
//! - [`sqlite_sandbox`]: SQLite's authorizer and progress handler (the one
//!   `unsafe` module);
//! - [`sql_gate`]: which SQL a plugin may send;
//! - [`outbox`]: the router's tables, the processed-markers and the
//!   outbox rows; [`ledger`]: all of it as the core's unit-of-work ledger;
//! - [`error`]: the store's errors.

pub mod database;
pub mod error;
pub mod ledger;
pub mod outbox;
pub mod pg_identity;
pub mod sql_gate;
pub mod sqlite_sandbox;
