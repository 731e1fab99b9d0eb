//! The service file (TOML) of `weir serve`: where to listen, where to keep
//! state, and which pipeline files to host with their serve-mode settings,
//! either for one implicit tenant (`[[pipelines]]`, tenant `default`) or
//! per tenant (`[[tenants]]`, each with its directory, tokens and quotas).
//!
//! ```toml
//! [service]
//! listen = "127.0.0.1:7878"
//! state_dir = "weir-state"
//! operator_token_sha256 = "…"   # `weir token` prints a token and its hash
//!
//! [[tenants]]
//! name = "acme"
//! dir = "tenants/acme"
//! tokens = [{ id = "ci", sha256 = "…" }]
//! quotas = { max_concurrent_batches = 2, ingest_requests_per_second = 50 }
//!
//! [[tenants.pipelines]]
//! file = "pipeline.toml"          # relative to the tenant's dir
//! drop_dir = "incoming"
//! ```
//!
//! Paths are relative to the service file (a tenant's pipeline paths to
//! its `dir`). The reference is `docs/serve.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigErrors, Problems, parse_toml, read_text};

/// A whole service file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service-wide settings.
    #[serde(default)]
    pub service: ServiceSettings,
    /// Pipelines of the implicit tenant `default` (paths relative to the
    /// service file).
    #[serde(default)]
    pub pipelines: Vec<HostedPipeline>,
    /// Tenants, each owning its pipelines. At least one pipeline or
    /// schedule in all.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Batch pipelines of the implicit tenant `default` run at the instants
    /// of a cron pattern (paths relative to the service file; see
    /// [`super::cron`]).
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
}

pub use super::cron::ScheduleConfig;

pub use crate::stages::DEFAULT_TENANT;

/// `[[tenants]]`: one client, isolated from the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Name: 1–64 of `a-z 0-9 _ -`; in routes, metrics and logs.
    pub name: String,
    /// The tenant's directory, relative to the service file. Its pipeline
    /// files, plugins, reference tables, drop directories, outputs and
    /// quarantine must all be inside it; uploaded plugins are stored in
    /// `DIR/plugins/sha256/`.
    pub dir: PathBuf,
    /// API tokens, stored as SHA-256 hashes (`weir token`).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Resource quotas.
    #[serde(default)]
    pub quotas: Quotas,
    /// The tenant's pipelines, paths relative to `dir`.
    #[serde(default)]
    pub pipelines: Vec<HostedPipeline>,
    /// The tenant's scheduled batch pipelines, paths relative to `dir`
    /// (see [`super::cron`]).
    #[serde(default)]
    pub schedules: Vec<ScheduleConfig>,
    /// The hosts the tenant's scheduled extract plugins may be granted
    /// outbound HTTP to: every `capabilities.http.allow_hosts` entry of its
    /// pipeline files must be one of these, written the same way (a
    /// `*.example.com` entry allows exactly that entry). Default: none, so
    /// a tenant's plugins reach no host unless the operator allows it.
    #[serde(default)]
    pub http_allow_hosts: Vec<String>,
    /// The secrets the tenant's scheduled pipelines may refer to as
    /// `${secret:NAME}`: name → `env:VARIABLE` or `file:PATH` (relative to
    /// the service file), see [`crate::secrets`]. A tenant's pipeline
    /// files may not declare secrets of their own. Default: none.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, String>,
}

/// One API token, by the SHA-256 of its text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for the token (in logs, and to revoke it).
    pub id: String,
    /// SHA-256 of the token text, lowercase hex (64 characters).
    pub sha256: String,
}

/// What one tenant may use. A tenant over a quota is slowed down or
/// refused; the other tenants are not affected.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Micro-batches of the tenant running at once (over all its
    /// pipelines), i.e. plugin instances in use per stage and worker
    /// threads it can occupy; decoding an ingest body holds one too.
    /// Default 2.
    pub max_concurrent_batches: usize,
    /// Fuel the tenant's plugins may burn per second, in fuel units
    /// (≈ WebAssembly instructions), measured over a window of one second
    /// of budget: once spent, its next batches wait until the budget has
    /// refilled. Default 20,000,000,000 (about 10 s of plugin CPU per
    /// second: it throttles only floods of heavy work); 0 means unlimited.
    pub fuel_per_second: u64,
    /// Ingest requests per second (`POST …/records`), a token bucket
    /// holding `ingest_burst` requests; beyond it requests get `429 Too
    /// Many Requests` with `Retry-After`. Default 50.
    pub ingest_requests_per_second: f64,
    /// Requests the ingest bucket holds. Default 100.
    pub ingest_burst: u32,
    /// Largest ingest or upload body, in bytes; larger ones get `413`.
    /// Default 16,777,216 (16 MiB).
    pub max_body_bytes: usize,
    /// Largest plugin upload, in bytes. Default 67,108,864 (64 MiB).
    pub max_plugin_bytes: usize,
    /// Plugin uploads the tenant may make per minute (each is compiled,
    /// seconds of CPU); beyond it uploads get `429`. Default 10.
    pub plugin_uploads_per_minute: u32,
    /// Bytes of uploaded plugins the tenant may keep stored. When an
    /// upload would pass it, stored plugins that no stage serves or holds
    /// for rollback are deleted first; if that is not enough the upload
    /// gets `507`. Default 1,073,741,824 (1 GiB).
    pub max_stored_plugin_bytes: u64,
    /// Request bodies the tenant may have in memory at once, all its
    /// requests together, in bytes (decoded size for gzip); a request that
    /// would go past it gets `429`. Default 67,108,864 (64 MiB).
    pub max_buffered_bytes: usize,
    /// Linear memory all the tenant's live plugin instances may hold
    /// together, in bytes (idle instances kept for the next batch count
    /// too). A `memory.grow` past it fails that call as `memory_limit`.
    /// Default 4,294,967,296 (4 GiB).
    pub max_memory_bytes: u64,
    /// Keyed state all the tenant's pipelines may keep, in bytes of keys
    /// plus values: their operators' and stateful plugin stages' together
    /// (each also has its own `max_state_bytes`). A batch whose state would
    /// pass it is quarantined as `state_quota`. Default 1,073,741,824
    /// (1 GiB; state is held in memory).
    pub max_state_bytes: u64,
    /// The tenant's share of the service's batch slots when tenants
    /// contend for them, relative to the other tenants' weights (see
    /// [`super::scheduler`]). Default 1.
    pub weight: f64,
}

impl Quotas {
    /// The quotas of the implicit tenant `default` (top-level
    /// `[[pipelines]]`): none but the body size, as before tenants existed.
    pub fn unlimited(max_body_bytes: usize) -> Quotas {
        Quotas {
            max_concurrent_batches: 4096,
            fuel_per_second: 0,
            ingest_requests_per_second: 1e12,
            ingest_burst: u32::MAX,
            max_body_bytes,
            max_memory_bytes: u64::MAX,
            max_buffered_bytes: usize::MAX,
            max_state_bytes: u64::MAX,
            ..Quotas::default()
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_concurrent_batches: 2,
            fuel_per_second: 20_000_000_000,
            ingest_requests_per_second: 50.0,
            ingest_burst: 100,
            max_body_bytes: 16 * 1024 * 1024,
            max_plugin_bytes: 64 * 1024 * 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            plugin_uploads_per_minute: 10,
            max_stored_plugin_bytes: 1024 * 1024 * 1024,
            max_memory_bytes: 4 * 1024 * 1024 * 1024,
            max_state_bytes: 1024 * 1024 * 1024,
            weight: 1.0,
        }
    }
}

/// The operator token's id: reserved, no tenant token may take it.
pub const OPERATOR_TOKEN_ID: &str = "operator";

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Address of the HTTP API. Default `127.0.0.1:7878` (loopback only).
    /// Without any token configured the API is unauthenticated, so weir
    /// refuses to listen beyond loopback then.
    pub listen: String,
    /// SHA-256 (lowercase hex) of the operator token, which may do
    /// everything on every tenant. Default: none.
    pub operator_token_sha256: Option<String>,
    /// Directory for the drop-directory checkpoints and quarantine-replay
    /// records. Default `weir-state`.
    pub state_dir: PathBuf,
    /// Largest request body accepted, in bytes; larger ones get
    /// `413 Payload Too Large`. Default 16,777,216 (16 MiB).
    pub max_body_bytes: usize,
    /// Request bodies the whole service may have in memory at once, every
    /// tenant's together, in bytes; a request that would go past it gets
    /// `503` with `Retry-After`. Default 268,435,456 (256 MiB).
    pub max_buffered_bytes: usize,
    /// Longest time to receive a request's headers, and longest a
    /// keep-alive connection may sit idle between requests, in
    /// milliseconds; the connection is closed after it. Default 10,000.
    pub header_read_timeout_ms: u64,
    /// Longest time to receive a request's whole body, in milliseconds;
    /// `408` after it. Default 60,000.
    pub body_read_timeout_ms: u64,
    /// Open connections the service accepts at once; more wait in the
    /// listen backlog until one closes. Default 1,024.
    pub max_connections: usize,
    /// Quiet period after a plugin file changes before it is reloaded, in
    /// milliseconds. Default 200.
    pub reload_debounce_ms: u64,
    /// On SIGTERM / Ctrl-C, how long to wait for in-flight batches to be
    /// written before exiting anyway, in milliseconds. Default 30,000.
    pub shutdown_timeout_ms: u64,
    /// Micro-batches running at once in the whole service, all tenants
    /// together; when more are ready, tenants get the slots by weighted
    /// fair share (see [`super::scheduler`]). Default: the number of cores
    /// (at least 2).
    pub max_running_batches: Option<usize>,
}

impl ServiceSettings {
    /// [`ServiceSettings::max_running_batches`], the default applied.
    pub fn running_batches(&self) -> usize {
        self.max_running_batches.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2)
                .max(2)
        })
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            operator_token_sha256: None,
            state_dir: PathBuf::from("weir-state"),
            max_body_bytes: 16 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 60_000,
            max_connections: 1024,
            reload_debounce_ms: 200,
            shutdown_timeout_ms: 30_000,
            max_running_batches: None,
        }
    }
}

/// `[[pipelines]]`: one pipeline file and how it is fed in serve mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedPipeline {
    /// The pipeline file (same format as for `weir run`).
    pub file: PathBuf,
    /// Micro-batching: a batch is cut once it holds this many rows. Default:
    /// the pipeline's `batch_size` (8192 unless set).
    pub max_batch_rows: Option<usize>,
    /// Micro-batching: a batch is cut at most this long after its first
    /// record arrived, in milliseconds, however few rows it holds. Default
    /// 200: a record waits at most 0.2 s for company.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Micro-batching: a batch is also cut once no record has come for
    /// this long, in milliseconds, while no request for the pipeline is
    /// still being received or decoded and a worker is free (waiting
    /// longer could not add to it). Callers that wait for their answer
    /// before posting again then share micro-batches without waiting out
    /// `linger_ms`. 0 turns it off: a batch waits for `linger_ms` or
    /// `max_batch_rows`. Default 2.
    #[serde(default = "default_quiet_ms")]
    pub quiet_ms: u64,
    /// A directory whose new files (`.csv`, `.jsonl`/`.ndjson`, `.json`)
    /// are ingested once each. Default: none.
    pub drop_dir: Option<PathBuf>,
    /// Directory the sink appends to, instead of the pipeline file's
    /// `[sink] path` (so that `weir run` and `weir serve` outputs of one
    /// pipeline file stay apart). Default: `[sink] path`.
    pub sink_path: Option<PathBuf>,
    /// Directory of quarantine parts, instead of `[quarantine] path`.
    pub quarantine_path: Option<PathBuf>,
    /// How long an `Idempotency-Key` (and a dropped file's record) is
    /// remembered, in seconds: a request repeating a key within it is
    /// answered with the original result instead of writing again.
    /// Default 86400 (24 h).
    #[serde(default = "default_idempotency_window_s")]
    pub idempotency_window_s: u64,
}

/// Default `idempotency_window_s`: 24 hours (Stripe's window; the IETF
/// draft leaves it to the server).
pub const DEFAULT_IDEMPOTENCY_WINDOW_S: u64 = 24 * 3600;

fn default_idempotency_window_s() -> u64 {
    DEFAULT_IDEMPOTENCY_WINDOW_S
}

fn default_linger_ms() -> u64 {
    200
}

/// Default `quiet_ms`: 2 ms, longer than a client on the same network
/// takes between an answer and its next request, shorter than a
/// micro-batch's commit.
pub const DEFAULT_QUIET_MS: u64 = 2;

fn default_quiet_ms() -> u64 {
    DEFAULT_QUIET_MS
}

impl HostedPipeline {
    /// The linger time.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    /// The quiet time after which a micro-batch is cut early; `None` when
    /// `quiet_ms = 0`.
    pub fn quiet(&self) -> Option<Duration> {
        (self.quiet_ms > 0).then(|| Duration::from_millis(self.quiet_ms))
    }

    /// The idempotency window.
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_window_s)
    }
}

impl ServiceConfig {
    /// Reads and checks the service file at `path`.
    ///
    /// # Errors
    /// Every problem found, each with file and key.
    pub fn from_file(path: &Path) -> Result<ServiceConfig, ConfigErrors> {
        let config: ServiceConfig = parse_toml(&read_text(path)?, path)?;
        let mut problems = Problems::new(path);
        config.check(&mut problems, path.parent().unwrap_or(Path::new("")));
        problems.finish()?;
        Ok(config)
    }

    /// Whether the API asks for tokens: when any token is configured.
    pub fn auth_enabled(&self) -> bool {
        self.service.operator_token_sha256.is_some()
            || self.tenants.iter().any(|t| !t.tokens.is_empty())
    }

    fn check(&self, problems: &mut Problems, base_dir: &Path) {
        if self.service.listen.parse::<SocketAddr>().is_err() {
            problems.add(
                "service.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:7878",
                    self.service.listen
                ),
            );
        }
        if self.service.max_body_bytes == 0 {
            problems.add("service.max_body_bytes", "must be at least 1");
        }
        for (value, key) in [
            (
                self.service.max_buffered_bytes as u64,
                "service.max_buffered_bytes",
            ),
            (
                self.service.header_read_timeout_ms,
                "service.header_read_timeout_ms",
            ),
            (
                self.service.body_read_timeout_ms,
                "service.body_read_timeout_ms",
            ),
            (
                self.service.max_connections as u64,
                "service.max_connections",
            ),
        ] {
            if value == 0 {
                problems.add(key, "must be at least 1");
            }
        }
        if self.service.max_running_batches == Some(0) {
            problems.add("service.max_running_batches", "must be at least 1");
        }
        if !self.auth_enabled()
            && let Ok(address) = self.service.listen.parse::<SocketAddr>()
            && !address.ip().is_loopback()
        {
            problems.add(
                "service.listen",
                format!("{address} is reachable from other machines but no API token is configured; set service.operator_token_sha256 and tenant tokens (`weir token`), or listen on 127.0.0.1"),
            );
        }
        let all: usize = self.pipelines.len()
            + self.schedules.len()
            + self
                .tenants
                .iter()
                .map(|t| t.pipelines.len() + t.schedules.len())
                .sum::<usize>();
        if all == 0 {
            problems.add(
                "pipelines",
                "no pipeline to serve; add a [[pipelines]], [[schedules]] or [[tenants]] table",
            );
        }
        check_pipelines(problems, "pipelines", &self.pipelines, base_dir);
        check_schedules(problems, "schedules", &self.schedules, base_dir, None);
        if let Some(hash) = &self.service.operator_token_sha256 {
            check_hash(problems, "service.operator_token_sha256", hash);
        }
        let mut names = std::collections::HashSet::new();
        if !self.pipelines.is_empty() || !self.schedules.is_empty() {
            names.insert(DEFAULT_TENANT.to_string());
        }
        let mut ids = std::collections::HashSet::new();
        for (t, tenant) in self.tenants.iter().enumerate() {
            let key = |k: &str| format!("tenants[{t}].{k}");
            if !valid_name(&tenant.name) {
                problems.add(
                    key("name"),
                    format!(
                        "`{}` must be 1-64 characters of a-z, 0-9, _ and -",
                        tenant.name
                    ),
                );
            } else if !names.insert(tenant.name.clone()) {
                problems.add(key("name"), format!("`{}` is used twice (top-level [[pipelines]] are tenant `{DEFAULT_TENANT}`)", tenant.name));
            }
            let dir = base_dir.join(&tenant.dir);
            if !dir.is_dir() {
                problems.add(key("dir"), format!("{} is not a directory", dir.display()));
                continue;
            }
            for (i, token) in tenant.tokens.iter().enumerate() {
                check_hash(
                    problems,
                    &key(&format!("tokens[{i}].sha256")),
                    &token.sha256,
                );
                if token.id == OPERATOR_TOKEN_ID {
                    problems.add(
                        key(&format!("tokens[{i}].id")),
                        format!(
                            "`{}` is reserved for the operator token; choose another id",
                            token.id
                        ),
                    );
                } else if !ids.insert(token.id.clone()) {
                    problems.add(
                        key(&format!("tokens[{i}].id")),
                        format!(
                            "`{}` is used twice; token ids are unique across tenants",
                            token.id
                        ),
                    );
                }
            }
            let q = &tenant.quotas;
            if q.max_concurrent_batches == 0 {
                problems.add(key("quotas.max_concurrent_batches"), "must be at least 1");
            }
            if q.ingest_requests_per_second.is_nan() || q.ingest_requests_per_second <= 0.0 {
                problems.add(key("quotas.ingest_requests_per_second"), "must be above 0");
            }
            if !q.weight.is_finite() || q.weight <= 0.0 {
                problems.add(key("quotas.weight"), "must be a number above 0");
            }
            for (value, name) in [
                (q.ingest_burst as usize, "ingest_burst"),
                (q.max_body_bytes, "max_body_bytes"),
                (q.max_plugin_bytes, "max_plugin_bytes"),
            ] {
                if value == 0 {
                    problems.add(key(&format!("quotas.{name}")), "must be at least 1");
                }
            }
            check_schedules(
                problems,
                &key("schedules"),
                &tenant.schedules,
                &dir,
                Some(&dir),
            );
            for (name, source) in &tenant.secrets {
                if let Err(message) = crate::secrets::check_source(source) {
                    problems.add(key(&format!("secrets.{name}")), message);
                }
            }
            let prefix = key("pipelines");
            check_pipelines(problems, &prefix, &tenant.pipelines, &dir);
            for (i, hosted) in tenant.pipelines.iter().enumerate() {
                for (name, path) in [
                    ("file", Some(&hosted.file)),
                    ("drop_dir", hosted.drop_dir.as_ref()),
                    ("sink_path", hosted.sink_path.as_ref()),
                    ("quarantine_path", hosted.quarantine_path.as_ref()),
                ] {
                    if let Some(path) = path
                        && !super::confine::is_inside(&dir, &dir.join(path))
                    {
                        problems.add(
                            format!("{prefix}[{i}].{name}"),
                            format!(
                                "{} is outside the tenant's dir {}",
                                dir.join(path).display(),
                                dir.display()
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Checks the `[[pipelines]]` entries at `prefix`, paths relative to
/// `base_dir`.
fn check_pipelines(
    problems: &mut Problems,
    prefix: &str,
    pipelines: &[HostedPipeline],
    base_dir: &Path,
) {
    for (i, hosted) in pipelines.iter().enumerate() {
        if !base_dir.join(&hosted.file).is_file() {
            problems.add(
                format!("{prefix}[{i}].file"),
                format!("{} does not exist", base_dir.join(&hosted.file).display()),
            );
        }
        if hosted.max_batch_rows == Some(0) {
            problems.add(
                format!("{prefix}[{i}].max_batch_rows"),
                "must be at least 1",
            );
        }
        if let Some(dir) = &hosted.drop_dir
            && !base_dir.join(dir).is_dir()
        {
            problems.add(
                format!("{prefix}[{i}].drop_dir"),
                format!("{} is not a directory", base_dir.join(dir).display()),
            );
        }
    }
}

/// Checks the `[[schedules]]` entries at `prefix`, paths relative to
/// `base_dir`; with `confine_to`, their files must be inside it (a
/// tenant's directory). What the pipeline files themselves name is
/// checked when they are loaded ([`super::Service::load`]).
fn check_schedules(
    problems: &mut Problems,
    prefix: &str,
    schedules: &[ScheduleConfig],
    base_dir: &Path,
    confine_to: Option<&Path>,
) {
    let mut names = std::collections::HashSet::new();
    for (i, schedule) in schedules.iter().enumerate() {
        let key = |k: &str| format!("{prefix}[{i}].{k}");
        let file = base_dir.join(&schedule.file);
        if let Some(dir) = confine_to
            && !super::confine::is_inside(dir, &file)
        {
            problems.add(
                key("file"),
                format!(
                    "{} is outside the tenant's dir {}",
                    file.display(),
                    dir.display()
                ),
            );
        } else if !file.is_file() {
            problems.add(key("file"), format!("{} does not exist", file.display()));
        }
        let name = schedule.name_or_stem();
        if !valid_name(&name) {
            problems.add(
                key("name"),
                format!("`{name}` must be 1-64 characters of a-z, 0-9, _ and - (set `name`)"),
            );
        } else if !names.insert(name.clone()) {
            problems.add(
                key("name"),
                format!("a second schedule named `{name}`; names must be unique (set `name`)"),
            );
        }
        // Each on its own, so that both problems are named at once.
        if let Err(message) = super::cron::Timetable::new(&schedule.cron, "UTC") {
            problems.add(key("cron"), message);
        }
        if let Err(message) = super::cron::Timetable::new("0 0 * * *", &schedule.timezone) {
            problems.add(key("timezone"), message);
        }
        if schedule.max_catch_up == 0 {
            problems.add(key("max_catch_up"), "must be at least 1");
        }
    }
}

fn check_hash(problems: &mut Problems, key: &str, hash: &str) {
    if !crate::plugin::is_sha256_hex(hash) {
        problems.add(
            key,
            "must be a SHA-256 in lowercase hex (64 characters); `weir token` prints one",
        );
    }
}

/// Whether `name` is a valid tenant name: 1–64 of `a-z 0-9 _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
