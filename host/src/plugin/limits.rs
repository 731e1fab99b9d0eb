//! Per-call resource limits and the store limiter that enforces the memory cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Limits applied to every call of one stage's plugin, set per stage in the
/// pipeline file. Each exhaustion is its own [`PluginError`](super::PluginError)
/// kind, and costs only the batch being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel units one call may consume (wasmtime counts roughly one unit per
    /// WebAssembly instruction). Default 20,000,000,000: about 10 s of work
    /// at wasmtime speeds, far above what the built-in plugins need for a
    /// batch (tens of millions). Example: `fuel_per_batch = 1_000_000_000`.
    pub fuel_per_batch: u64,
    /// Wall-clock deadline for one call, in milliseconds, enforced by epoch
    /// interruption with a [`EPOCH_TICK_MS`](crate::engine::EPOCH_TICK_MS)
    /// tick, so a call is stopped within `timeout_ms + 2 × tick`. Default
    /// 30,000. Example: `timeout_ms = 5000`.
    pub timeout_ms: u64,
    /// Largest linear memory an instance may have, in bytes; a `memory.grow`
    /// past it stops the call. Default 536,870,912 (512 MiB); at most
    /// [`MAX_MEMORY_CEILING_BYTES`](crate::engine::MAX_MEMORY_CEILING_BYTES).
    /// Example: `max_memory_bytes = 67_108_864`.
    pub max_memory_bytes: u64,
    /// Largest result a call may return, in bytes of column buffers
    /// (values, offsets, bitmaps, strings). Default 268,435,456 (256 MiB).
    /// A bigger result is `output_too_large`; one more than 16 MiB over it
    /// is not even copied out of the plugin in full
    /// ([`Limits::copy_budget_bytes`]). Example: `max_output_bytes = 16_777_216`.
    pub max_output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_batch: 20_000_000_000,
            timeout_ms: 30_000,
            max_memory_bytes: 512 * 1024 * 1024,
            max_output_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Bytes the host copies out of a plugin in one call beyond
/// `max_output_bytes` before it stops: room for the schema, names and list
/// headers that `max_output_bytes` does not count, so a result just under
/// the limit is always copied whole and then measured.
pub const COPY_HEADROOM_BYTES: u64 = 16 * 1024 * 1024;

impl Limits {
    /// Most bytes the host copies out of the plugin in one call (a result,
    /// or the arguments of one host call): `max_output_bytes` +
    /// [`COPY_HEADROOM_BYTES`]. A result past it is stopped mid-copy and
    /// reported as `output_too_large`, so no result over `max_output_bytes`
    /// is ever held in full.
    pub fn copy_budget_bytes(&self) -> u64 {
        self.max_output_bytes.saturating_add(COPY_HEADROOM_BYTES)
    }

    /// These limits with each given value replacing its default.
    pub fn overridden(
        self,
        fuel_per_batch: Option<u64>,
        timeout_ms: Option<u64>,
        max_memory_bytes: Option<u64>,
        max_output_bytes: Option<u64>,
    ) -> Limits {
        Limits {
            fuel_per_batch: fuel_per_batch.unwrap_or(self.fuel_per_batch),
            timeout_ms: timeout_ms.unwrap_or(self.timeout_ms),
            max_memory_bytes: max_memory_bytes.unwrap_or(self.max_memory_bytes),
            max_output_bytes: max_output_bytes.unwrap_or(self.max_output_bytes),
        }
    }
}

/// The error a denied `memory.grow` raises; the call's trap carries it, and
/// [`PluginError::classify`](super::PluginError) turns it into
/// [`PluginError::MemoryLimit`](super::PluginError::MemoryLimit).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "linear memory would grow to {requested_bytes} bytes, over max_memory_bytes = {limit_bytes}"
)]
pub struct MemoryLimitExceeded {
    /// Size the plugin asked for, in bytes.
    pub requested_bytes: u64,
    /// The stage's `max_memory_bytes`.
    pub limit_bytes: u64,
}

/// Linear memory shared by several instances (a tenant's): every instance
/// adds what it grows to `used` and gives it back when dropped.
#[derive(Debug)]
pub struct MemoryPool {
    /// Whose memory (for messages), e.g. `tenant \`acme\``.
    pub owner: String,
    /// Most bytes of linear memory all instances may hold together.
    pub limit_bytes: u64,
    used: AtomicU64,
}

impl MemoryPool {
    /// A pool of `limit_bytes` for `owner`.
    pub fn new(owner: impl Into<String>, limit_bytes: u64) -> MemoryPool {
        MemoryPool {
            owner: owner.into(),
            limit_bytes,
            used: AtomicU64::new(0),
        }
    }

    /// Bytes held now by live instances.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` if they fit under the limit.
    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= self.limit_bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The error a `memory.grow` denied by a [`MemoryPool`] raises; classified
/// as [`PluginError::MemoryLimit`](super::PluginError::MemoryLimit).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{owner} would hold more than its max_memory_bytes = {limit_bytes} of linear memory over all its instances ({used_bytes} in use, {requested_bytes} more asked)"
)]
pub struct PoolExhausted {
    /// The pool's owner.
    pub owner: String,
    /// The pool's limit, in bytes.
    pub limit_bytes: u64,
    /// Bytes in use before the request.
    pub used_bytes: u64,
    /// Bytes the instance asked to add.
    pub requested_bytes: u64,
}

/// A [`wasmtime::ResourceLimiter`] that caps linear memory and records the
/// peak size reached, in bytes; optionally also draws on a shared
/// [`MemoryPool`].
#[derive(Debug)]
pub struct MemoryCap {
    limit_bytes: u64,
    peak_bytes: u64,
    pool: Option<Arc<MemoryPool>>,
    /// Bytes this instance holds from the pool (all its memories).
    held_bytes: u64,
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(self.held_bytes);
        }
    }
}

impl MemoryCap {
    /// A limiter allowing at most `limit_bytes` of linear memory per memory.
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            limit_bytes,
            peak_bytes: 0,
            pool: None,
            held_bytes: 0,
        }
    }

    /// This limiter, also drawing every byte from `pool`.
    pub fn with_pool(mut self, pool: Option<Arc<MemoryPool>>) -> Self {
        self.pool = pool;
        self
    }

    /// The largest linear memory size granted so far, in bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit_bytes {
            return Err(MemoryLimitExceeded {
                requested_bytes: desired,
                limit_bytes: self.limit_bytes,
            }
            .into());
        }
        if let Some(pool) = &self.pool {
            let more = desired.saturating_sub(current as u64);
            if !pool.take(more) {
                return Err(PoolExhausted {
                    owner: pool.owner.clone(),
                    limit_bytes: pool.limit_bytes,
                    used_bytes: pool.used_bytes(),
                    requested_bytes: more,
                }
                .into());
            }
            self.held_bytes += more;
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn a_pool_bounds_all_its_instances_and_gets_memory_back_on_drop() {
        let pool = Arc::new(MemoryPool::new("tenant `a`", 100));
        let mut first = MemoryCap::new(80).with_pool(Some(pool.clone()));
        let mut second = MemoryCap::new(80).with_pool(Some(pool.clone()));
        assert!(first.memory_growing(0, 60, None).unwrap());
        assert!(second.memory_growing(0, 30, None).unwrap());
        assert_eq!(pool.used_bytes(), 90);
        let error = second.memory_growing(30, 50, None).unwrap_err();
        let exhausted = error.downcast_ref::<PoolExhausted>().unwrap();
        assert_eq!((exhausted.used_bytes, exhausted.requested_bytes), (90, 20));
        drop(first);
        assert_eq!(pool.used_bytes(), 30);
        assert!(second.memory_growing(30, 50, None).unwrap());
        drop(second);
        assert_eq!(pool.used_bytes(), 0);
    }
}
