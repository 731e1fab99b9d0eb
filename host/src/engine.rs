//! The process-wide wasmtime engine and the epoch ticker.
//!
//! weir keeps exactly one [`Runtime`] per process ([`Runtime::shared`]):
//! one [`wasmtime::Engine`] configured for fuel metering, epoch interruption
//! and the pooling instance allocator, and one thread advancing the
//! engine's epoch every [`EPOCH_TICK_MS`] so that wall-clock deadlines can
//! interrupt a plugin. The linker of the host imports every plugin may use
//! belongs to the plugin runtime (`crate::plugin`), which knows the store's
//! state; this module knows nothing of plugins.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// Period of the epoch ticker, in milliseconds: the resolution of every
/// `timeout_ms` deadline.
pub const EPOCH_TICK_MS: u64 = 1;

/// Largest `max_memory_bytes` any stage may set: 4 GiB, the most a 32-bit
/// linear memory can address. The pooling allocator reserves (virtual, not
/// resident) address space of this size per slot.
pub const MAX_MEMORY_CEILING_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// How many component instances may be alive at once in the process
/// (pooling allocator slots). Each pipeline worker holds one instance per
/// stage, plus one being replaced after a failure.
pub const MAX_LIVE_INSTANCES: u32 = 256;

/// The engine and epoch ticker shared by every plugin in the process.
pub struct Runtime {
    engine: Engine,
}

impl Runtime {
    /// The process-wide runtime, created on first use.
    ///
    /// # Panics
    /// If the engine cannot be created (an unsupported CPU or an exhausted
    /// address space), which no pipeline could survive anyway.
    pub fn shared() -> &'static Runtime {
        static RUNTIME: OnceLock<Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| Runtime::new().expect("creating the wasmtime engine"))
    }

    fn new() -> Result<Self> {
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(MAX_LIVE_INSTANCES)
            .total_core_instances(MAX_LIVE_INSTANCES * 8)
            .total_memories(MAX_LIVE_INSTANCES * 2)
            .total_tables(MAX_LIVE_INSTANCES * 8)
            .total_stacks(MAX_LIVE_INSTANCES)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .table_elements(100_000)
            .max_memory_size(MAX_MEMORY_CEILING_BYTES as usize);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(1024 * 1024)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("configuring the wasmtime engine")?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                }
            })
            .context("starting the epoch ticker")?;

        Ok(Self { engine })
    }

    /// The shared engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
