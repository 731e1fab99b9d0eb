//! Sleeping inside a host call, cut short by the call's deadline.
//!
//! Epoch interruption stops a plugin only while WebAssembly runs. A plugin
//! that sleeps (`std::thread::sleep`, `time.sleep`, `setTimeout`) waits in
//! WASI's `monotonic-clock.subscribe-*` + `poll`, which is host code, so
//! without this a plugin could hold its worker thread for as long as it
//! likes. weir replaces the two subscribe functions: a sleep that would end
//! after the call's deadline stops the call at once, as a `timeout` (the
//! call could not have finished in time anyway), and frees the thread.

use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::PluginState;

/// The instance whose functions are replaced (wasmtime-wasi 48 defines
/// `wasi:clocks@0.2.12`; imports of other 0.2 versions resolve to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The monotonic clock a plugin sees: nanoseconds since its instance was
/// created, at nanosecond resolution.
#[derive(Debug, Clone, Copy)]
pub struct InstanceClock {
    /// When the instance was created.
    pub start: Instant,
}

impl HostMonotonicClock for InstanceClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// A sleep that ends at `until`.
struct Sleep {
    until: tokio::time::Instant,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.until).await;
    }
}

/// The error that stops a call whose plugin asked to sleep past the call's
/// deadline; classified as a timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the plugin asked to sleep {asked_ms} ms, past the call's deadline")]
pub struct SleepPastDeadline {
    /// The sleep asked for, in milliseconds.
    pub asked_ms: u64,
}

/// A pollable ready after `duration`.
///
/// # Errors
/// [`SleepPastDeadline`] when that is after the call's deadline.
fn sleep_for(
    mut store: StoreContextMut<'_, PluginState>,
    duration: Duration,
) -> wasmtime::Result<Resource<DynPollable>> {
    let state = store.data_mut();
    let until = Instant::now().checked_add(duration);
    match (until, state.call_deadline) {
        (Some(until), Some(deadline)) if until <= deadline => {
            let sleep = state.table.push(Sleep {
                until: tokio::time::Instant::from_std(until),
            })?;
            subscribe(&mut state.table, sleep)
        }
        // Outside a call (instantiation has its own deadline) or too long.
        _ => Err(wasmtime::Error::new(SleepPastDeadline {
            asked_ms: duration.as_millis() as u64,
        })),
    }
}

/// Replaces `subscribe-duration` and `subscribe-instant` of the monotonic
/// clock in `linker` (which already holds WASI) by deadline-aware ones.
///
/// # Errors
/// When the linker has no such instance to shadow.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |store: StoreContextMut<'_, PluginState>, (nanos,): (u64,)| {
            Ok((sleep_for(store, Duration::from_nanos(nanos))?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |store: StoreContextMut<'_, PluginState>, (when,): (u64,)| {
            let now = store.data().clock.now();
            Ok((sleep_for(
                store,
                Duration::from_nanos(when.saturating_sub(now)),
            )?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
