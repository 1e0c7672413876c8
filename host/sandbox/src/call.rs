//! One wasmtime store and the calls made in it: the memory cap, the
//! deadline armed before each call, and the failure a trap becomes.

use crate::capabilities::{HostState, PluginEnv};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::outcome::Failure;
use switchyard_core::partitions::Partitions;
use wasmtime::{Engine, Store};

/// A store running `env`'s plugin: its memory cap, and a deadline
/// checked at every epoch tick.
pub(crate) fn new_store(
    engine: &Engine,
    env: Arc<PluginEnv>,
    topics: Option<Arc<dyn Partitions>>,
) -> Store<HostState> {
    let mut store = Store::new(engine, HostState::new(env, topics));
    store.limiter(|s| &mut s.limits);
    // Check the deadline at every tick and yield to the executor meanwhile,
    // so a busy plugin does not hold a runtime thread for its whole budget.
    store.epoch_deadline_callback(|mut ctx| {
        let data = ctx.data_mut();
        if Instant::now() >= data.deadline {
            data.deadline_hit = true;
            Ok(wasmtime::UpdateDeadline::Interrupt)
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Start the deadline of one call (instantiation, `describe` or `handle`).
pub(crate) fn arm_deadline(store: &mut Store<HostState>) {
    let budget = Duration::from_millis(store.data().env.limits.deadline_ms);
    let data = store.data_mut();
    data.deadline = Instant::now() + budget;
    data.deadline_hit = false;
    store.set_epoch_deadline(1);
}

/// Why a call failed: its deadline, its memory cap, or a trap, named from
/// what the store recorded and wasmtime's trap code, not its message.
pub(crate) fn failure_of(store: &Store<HostState>, e: &wasmtime::Error) -> Failure {
    let data = store.data();
    if data.deadline_hit || e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return Failure::Deadline {
            deadline_ms: data.env.limits.deadline_ms,
        };
    }
    if data.limits.hit
        || e.downcast_ref::<crate::capabilities::MemoryRefused>()
            .is_some()
    {
        return Failure::Memory {
            limit_bytes: data.env.limits.memory_bytes,
        };
    }
    // Name the trap itself (`unreachable`, stack overflow, ...) rather
    // than the generic "error while executing" context around it.
    let trap = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => e
            .chain()
            .last()
            .map(|root| root.to_string())
            .unwrap_or_else(|| "unknown trap".to_string()),
    };
    Failure::Trap(trap)
}
