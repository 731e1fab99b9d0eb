//! Tenants at run time: what each owns (a directory, pipelines) and its
//! [`Quota`], the usage that keeps one tenant from slowing down the others
//! ([`super::quota`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::config::Quotas;
pub use super::confine::is_inside;
use super::live::LivePipeline;
pub use super::quota::Quota;
use super::scheduler::SchedulerShare;
use super::schedules::Scheduled;

/// One tenant being served.
pub struct Tenant {
    /// Its name.
    pub name: Arc<str>,
    /// Its directory (absolute or relative to the working directory).
    pub dir: PathBuf,
    quota: Arc<Quota>,
    pipelines: BTreeMap<String, Arc<LivePipeline>>,
    schedules: BTreeMap<String, Arc<Scheduled>>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Status of one tenant, for `GET /v1/tenants`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantStatus {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its pipelines' names.
    pub pipelines: Vec<String>,
    /// Its schedules' names.
    pub schedules: Vec<String>,
    /// Its quotas.
    pub quotas: Quotas,
    /// Micro-batches running now.
    pub running_batches: usize,
    /// Fuel units left in the bucket now (negative: in debt, throttled).
    pub fuel_available: f64,
    /// Linear memory its live instances hold, in bytes.
    pub memory_used_bytes: u64,
    /// Its use of the service's batch slots.
    pub scheduler: Option<SchedulerShare>,
    /// What it used and was refused since the service started.
    pub usage: super::quota::UsageStatus,
}

impl Tenant {
    /// A tenant owning `dir` and `pipelines`, which share `quota`.
    pub fn new(
        dir: PathBuf,
        quota: Arc<Quota>,
        pipelines: BTreeMap<String, Arc<LivePipeline>>,
    ) -> Tenant {
        // Reloads compile in the tenant's own part of the compile cache.
        for live in pipelines.values() {
            for stage in live.pipeline().stages() {
                stage.slot.set_cache_scope(&quota.tenant);
            }
        }
        Tenant {
            name: quota.tenant.clone(),
            dir,
            quota,
            pipelines,
            schedules: BTreeMap::new(),
        }
    }

    /// The tenant with its scheduled pipelines.
    pub fn with_schedules(mut self, schedules: BTreeMap<String, Arc<Scheduled>>) -> Tenant {
        self.schedules = schedules;
        self
    }

    /// Its scheduled pipelines by name.
    pub fn schedules(&self) -> &BTreeMap<String, Arc<Scheduled>> {
        &self.schedules
    }

    /// Its quotas and usage.
    pub fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    /// Its pipelines by name.
    pub fn pipelines(&self) -> &BTreeMap<String, Arc<LivePipeline>> {
        &self.pipelines
    }

    /// One of its pipelines.
    pub fn pipeline(&self, name: &str) -> Option<&Arc<LivePipeline>> {
        self.pipelines.get(name)
    }

    /// Its state, for the admin API.
    pub fn status(&self) -> TenantStatus {
        let quota = &self.quota;
        TenantStatus {
            name: self.name.to_string(),
            dir: self.dir.clone(),
            pipelines: self.pipelines.keys().cloned().collect(),
            schedules: self.schedules.keys().cloned().collect(),
            quotas: quota.quotas,
            running_batches: quota.running_batches(),
            fuel_available: quota.fuel_level(),
            memory_used_bytes: quota.memory().used_bytes(),
            scheduler: quota.scheduler_share(),
            usage: quota.usage(),
        }
    }
}
