//! Handlers compiled into the host, to measure what the sandbox costs
//! (`scripts/bench`, modes `native-noop` and `native-upsert`).
//!
//! A native handler does the `bench-sink` plugin's work — nothing, or one
//! upsert per event — through the same pipeline: the event's transaction
//! and processed-marker, the plugin's database role and statement timeout,
//! the outbox, the offset store. Only the WebAssembly call is missing (and
//! with it the instance, the SQL gate and the result caps). A plugin whose
//! config says `native = "bench-upsert"` still loads its component, for its
//! name, version and migrations; its events go to the native handler.
//!
//! This is a measuring instrument, not a way to ship handlers: there are
//! only the two below.

#[cfg(feature = "bench-native")]
use {
    switchyard_core::event::Event, switchyard_core::outcome::Outcome,
    switchyard_store::database::Tx, switchyard_store::error::StoreError,
    switchyard_wit::switchyard::plugin::db::Value,
};

pub use switchyard_core::native::{BENCH_UPSERT, Native};

/// Handle `event` in `tx` as the plugin would.
#[cfg(feature = "bench-native")]
pub async fn handle(
    native: Native,
    event: &Event,
    tx: &mut Tx,
    use_savepoint: bool,
) -> Result<Outcome, StoreError> {
    match native {
        Native::BenchNoop => Ok(Outcome::Done),
        Native::BenchUpsert => {
            let key = event
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .unwrap_or("none");
            tx.execute_with(BENCH_UPSERT, &[Value::Text(key.to_string())], use_savepoint)
                .await?;
            Ok(Outcome::Done)
        }
    }
}
