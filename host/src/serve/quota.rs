//! A tenant's quotas at run time, and what it has used of them: the
//! limits that keep one tenant from slowing down the others.
//!
//! Every quota is enforced per tenant, so a tenant over its quota waits or
//! is refused while the others go on:
//!
//! - **Concurrent batches** ([`Quota::batch_slots`]): a semaphore shared by
//!   the tenant's pipelines. A micro-batch holds a permit from before its
//!   first plugin call to its commit, so a tenant with slow or looping
//!   plugins occupies at most `max_concurrent_batches` worker threads (and
//!   as many instances per stage).
//! - **Fair share of the service** ([`Quota::run_slot`]): then the batch
//!   waits for one of the service's `max_running_batches` slots, which the
//!   [`FairScheduler`] hands out by weighted fair share between tenants.
//! - **Fuel per second** ([`Quota::wait_for_fuel`]): a bucket refilled at
//!   `fuel_per_second`, holding one second of it. Each batch debits the fuel
//!   its calls burned; while the bucket is below zero, the tenant's next
//!   batch waits for the refill (holding no service slot) before calling
//!   any plugin.
//! - **Ingest rate** ([`Quota::admit_request`]): a token bucket of
//!   `ingest_burst` requests refilled at `ingest_requests_per_second`;
//!   an empty bucket answers `429` before the body is decoded.
//! - **Linear memory** ([`Quota::memory`]): a [`MemoryPool`] of
//!   `max_memory_bytes` that every instance of the tenant draws on when its
//!   memories grow and gives back when dropped.
//! - **Body size**: `max_body_bytes` per ingest request, `max_plugin_bytes`
//!   per upload (`413`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::config::Quotas;
use super::scheduler::{FairScheduler, SchedulerShare, SlotGuard};
use crate::plugin::MemoryPool;

/// A tenant's quotas and what it has used of them; shared by the tenant's
/// pipelines.
#[derive(Debug)]
pub struct Quota {
    /// The tenant's name (a metrics label).
    pub tenant: Arc<str>,
    /// The limits.
    pub quotas: Quotas,
    batch_slots: Arc<Semaphore>,
    fuel: Mutex<Bucket>,
    requests: Mutex<Bucket>,
    memory: Arc<MemoryPool>,
    scheduler: Arc<FairScheduler>,
    buffers: super::body::BufferBudget,
    uploads: Mutex<Bucket>,
    state: Arc<crate::state::StateBudget>,
    usage: Usage,
}

/// What a tenant has used and been refused since the service started.
#[derive(Debug, Default)]
struct Usage {
    fuel_consumed: std::sync::atomic::AtomicU64,
    requests_throttled: std::sync::atomic::AtomicU64,
    uploads_throttled: std::sync::atomic::AtomicU64,
    fuel_wait_us: std::sync::atomic::AtomicU64,
}

/// A tenant's usage since the service started, for `GET /v1/tenants`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct UsageStatus {
    /// Fuel units its plugins burned.
    pub fuel_consumed: u64,
    /// Ingest requests refused with 429 (over `ingest_requests_per_second`).
    pub requests_throttled: u64,
    /// Plugin uploads refused with 429 (over `plugin_uploads_per_minute`).
    pub uploads_throttled: u64,
    /// Time its batches waited for fuel (over `fuel_per_second`), in ms.
    pub fuel_wait_ms: u64,
}

/// A token bucket: `level` units, refilled at `rate` per second up to
/// `capacity`. The level may go below zero (a debt) when more was used
/// than was there.
#[derive(Debug)]
struct Bucket {
    level: f64,
    capacity: f64,
    rate: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(capacity: f64, rate: f64) -> Bucket {
        Bucket {
            level: capacity,
            capacity,
            rate,
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.refilled = now;
    }

    /// Time until the level is back at `wanted`.
    /// Takes one unit after refilling, or says how long until one is
    /// there.
    fn take_one(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.level >= 1.0 {
            self.level -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for(1.0))
        }
    }

    fn wait_for(&self, wanted: f64) -> Duration {
        if self.level >= wanted {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((wanted - self.level) / self.rate)
        }
    }
}

impl Quota {
    /// Fresh usage of `quotas` for tenant `tenant`, whose batches run in
    /// the slots of `scheduler` (registered there with its weight).
    pub fn new(tenant: &str, quotas: Quotas, scheduler: Arc<FairScheduler>) -> Quota {
        let fuel_rate = quotas.fuel_per_second as f64;
        let tenant: Arc<str> = Arc::from(tenant);
        scheduler.register(&tenant, quotas.weight);
        Quota {
            batch_slots: Arc::new(Semaphore::new(quotas.max_concurrent_batches)),
            fuel: Mutex::new(Bucket::new(fuel_rate, fuel_rate)),
            requests: Mutex::new(Bucket::new(
                f64::from(quotas.ingest_burst),
                quotas.ingest_requests_per_second,
            )),
            memory: Arc::new(MemoryPool::new(
                format!("tenant `{tenant}`"),
                quotas.max_memory_bytes,
            )),
            buffers: super::body::BufferBudget::new(quotas.max_buffered_bytes),
            uploads: Mutex::new(Bucket::new(
                f64::from(quotas.plugin_uploads_per_minute),
                f64::from(quotas.plugin_uploads_per_minute) / 60.0,
            )),
            state: Arc::new(crate::state::StateBudget::new(quotas.max_state_bytes)),
            quotas,
            scheduler,
            tenant,
            usage: Usage::default(),
        }
    }

    /// What the tenant has used and been refused since the service started.
    pub fn usage(&self) -> UsageStatus {
        use std::sync::atomic::Ordering::Relaxed;
        UsageStatus {
            fuel_consumed: self.usage.fuel_consumed.load(Relaxed),
            requests_throttled: self.usage.requests_throttled.load(Relaxed),
            uploads_throttled: self.usage.uploads_throttled.load(Relaxed),
            fuel_wait_ms: self.usage.fuel_wait_us.load(Relaxed) / 1000,
        }
    }

    /// The tenant's budget of keyed state ([`Quotas::max_state_bytes`]).
    pub fn state_budget(&self) -> &Arc<crate::state::StateBudget> {
        &self.state
    }

    /// The tenant's budget of request-body bytes in memory
    /// ([`Quotas::max_buffered_bytes`]).
    pub fn buffers(&self) -> &super::body::BufferBudget {
        &self.buffers
    }

    /// Waits for a slot of the service's scheduler for one batch; the slot
    /// is held until the guard is dropped.
    pub async fn run_slot(&self) -> SlotGuard {
        self.scheduler.acquire(&self.tenant).await
    }

    /// A slot of the service's scheduler if one is idle now (see
    /// [`FairScheduler::try_acquire`]), with one of the tenant's
    /// concurrent-batch permits; `None` rather than wait.
    pub fn try_idle_slot(&self) -> Option<(SlotGuard, tokio::sync::OwnedSemaphorePermit)> {
        let permit = self.batch_slots.clone().try_acquire_owned().ok()?;
        let slot = self.scheduler.try_acquire(&self.tenant)?;
        Some((slot, permit))
    }

    /// Micro-batches of the tenant running now (permits of
    /// `max_concurrent_batches` in use).
    pub fn running_batches(&self) -> usize {
        self.quotas.max_concurrent_batches - self.batch_slots.available_permits()
    }

    /// Fuel units in the tenant's bucket now; negative when in debt.
    pub fn fuel_level(&self) -> f64 {
        let mut bucket = self.fuel.lock().expect("bucket lock");
        bucket.refill();
        bucket.level
    }

    /// The tenant's use of the service's batch slots, when registered.
    pub fn scheduler_share(&self) -> Option<SchedulerShare> {
        self.scheduler.shares().remove(&*self.tenant)
    }

    /// The tenant's linear-memory pool, shared by its instances.
    pub fn memory(&self) -> &Arc<MemoryPool> {
        &self.memory
    }

    /// Waits for one of the tenant's `max_concurrent_batches` permits for
    /// work done on its behalf outside a micro-batch (decoding a body,
    /// compiling an upload); held until dropped.
    pub async fn work_permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.batch_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// The semaphore bounding its concurrent micro-batches.
    pub fn batch_slots(&self) -> &Arc<Semaphore> {
        &self.batch_slots
    }

    /// Takes one plugin upload from the tenant's upload bucket
    /// ([`Quotas::plugin_uploads_per_minute`]).
    ///
    /// # Errors
    /// When the bucket is empty: how long until an upload is allowed.
    pub fn admit_upload(&self) -> Result<(), Duration> {
        let admitted = self.uploads.lock().expect("bucket lock").take_one();
        if admitted.is_err() {
            self.usage
                .uploads_throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        admitted
    }

    /// Takes one ingest request from the tenant's bucket.
    ///
    /// # Errors
    /// When the bucket is empty: how long until a request is allowed.
    pub fn admit_request(&self) -> Result<(), Duration> {
        let admitted = self.requests.lock().expect("bucket lock").take_one();
        if admitted.is_err() {
            metrics::counter!("weir_tenant_requests_throttled_total", "tenant" => self.tenant.to_string())
                .increment(1);
            self.usage
                .requests_throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        admitted
    }

    /// Waits while the tenant's fuel budget is in debt; returns how long it
    /// waited. Unlimited with `fuel_per_second = 0`.
    pub async fn wait_for_fuel(&self) -> Duration {
        if self.quotas.fuel_per_second == 0 {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut slept = false;
        loop {
            let wait = {
                let mut bucket = self.fuel.lock().expect("bucket lock");
                bucket.refill();
                bucket.wait_for(0.0)
            };
            if wait.is_zero() {
                if !slept {
                    return Duration::ZERO;
                }
                let waited = started.elapsed();
                self.usage.fuel_wait_us.fetch_add(
                    waited.as_micros() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                metrics::histogram!("weir_tenant_fuel_throttle_seconds", "tenant" => self.tenant.to_string()).record(waited.as_secs_f64());
                return waited;
            }
            slept = true;
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
    }

    /// Debits `fuel` units burned by one batch's plugin calls (after the
    /// batch: see [`crate::stages::FuelBudget`] for the view during it).
    pub fn charge_fuel(&self, fuel: u64) {
        metrics::counter!("weir_tenant_fuel_consumed_total", "tenant" => self.tenant.to_string())
            .increment(fuel);
        self.usage
            .fuel_consumed
            .fetch_add(fuel, std::sync::atomic::Ordering::Relaxed);
        if self.quotas.fuel_per_second == 0 {
            return;
        }
        let mut bucket = self.fuel.lock().expect("bucket lock");
        bucket.refill();
        bucket.level -= fuel as f64;
    }
}

impl crate::stages::FuelBudget for Quota {
    fn available(&self) -> f64 {
        if self.quotas.fuel_per_second == 0 {
            return f64::INFINITY;
        }
        let mut bucket = self.fuel.lock().expect("bucket lock");
        bucket.refill();
        bucket.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bucket_refuses_beyond_the_burst_and_refills() {
        let quotas = Quotas {
            ingest_burst: 3,
            ingest_requests_per_second: 20.0,
            ..Quotas::default()
        };
        let tenant = Quota::new("a", quotas, FairScheduler::new(1));
        for _ in 0..3 {
            tenant.admit_request().unwrap();
        }
        let wait = tenant.admit_request().unwrap_err();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        std::thread::sleep(Duration::from_millis(60));
        tenant.admit_request().unwrap();
    }

    #[tokio::test]
    async fn fuel_debt_makes_the_next_batch_wait() {
        let quotas = Quotas {
            fuel_per_second: 1_000_000,
            ..Quotas::default()
        };
        let tenant = Quota::new("a", quotas, FairScheduler::new(1));
        assert_eq!(tenant.wait_for_fuel().await, Duration::ZERO);
        // One second of budget plus 0.2 s of debt.
        tenant.charge_fuel(1_200_000);
        let waited = tenant.wait_for_fuel().await;
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
