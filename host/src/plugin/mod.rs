//! Plugins: load a component, check its world, instantiate it under limits
//! and call it.
//!
//! - [`Plugin`] is a compiled, type-checked component of one [`PluginKind`],
//!   ready to instantiate (it wraps wasmtime's `InstancePre`, so creating an
//!   instance does no import resolution).
//! - [`PluginInstance`] is one live instance with its own store. Each call
//!   gets fresh fuel and a fresh deadline; a failed call makes the instance
//!   unusable, and the caller instantiates a new one for the next batch.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weir::plugin::{Limits, Plugin, PluginKind};
//! let plugin = Plugin::load("builtin:select", Some(PluginKind::Transform), std::path::Path::new("."))?;
//! let mut instance = plugin.instantiate("select", r#"{"drop":["x"]}"#.into(), Limits::default())?;
//! # Ok(()) }
//! ```

mod breaker;
pub mod cache;
mod capabilities;
pub(crate) mod clock;
pub mod compute;
mod error;
pub mod http;
mod limits;
mod slot;
pub mod state;
mod stderr;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use breaker::{Admission, BreakerConfig, BreakerState, BreakerStatus, CircuitBreaker};
pub use cache::{Origin, cache_dir};
pub use capabilities::{ALWAYS_ALLOWED, Grants, check_imports};
pub use error::{MAX_MESSAGE_BYTES, MAX_STDERR_BYTES, PluginError, head};
pub use http::{HttpAccess, HttpCounts, HttpGrant};
pub use limits::{Limits, MemoryCap, MemoryLimitExceeded, MemoryPool, PoolExhausted};
pub use slot::{HISTORY_LEN, PluginSlot, PluginVersion, Rejection, SlotStatus, Swap};
pub use watch::{DEFAULT_DEBOUNCE, PluginWatcher};

use crate::bindings::v0_1::{extractor, transformer, validator};
use crate::bindings::{host, types, v0_2};
use crate::engine::{EPOCH_TICK_MS, Runtime};
use crate::lent::BatchRef;

/// The process-wide linker of the shared engine ([`Runtime::shared`]):
/// WASI (with no capability granted by default), `wasi:http` (usable only
/// by extract plugins whose source grants it, see [`capabilities`] and
/// [`http`]), the deadline-aware monotonic clock and `weir:plugin/host`.
///
/// # Panics
/// If an interface cannot be added, which is a bug of weir's bindings.
fn linker() -> &'static wasmtime::component::Linker<PluginState> {
    static LINKER: std::sync::OnceLock<wasmtime::component::Linker<PluginState>> =
        std::sync::OnceLock::new();
    LINKER.get_or_init(|| new_linker().expect("linking the host imports"))
}

fn new_linker() -> Result<wasmtime::component::Linker<PluginState>> {
    use wasmtime::component::{HasSelf, Linker};
    let mut linker = Linker::new(Runtime::shared().engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(anyhow::Error::from)
        .context("adding WASI to the linker")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
        .map_err(anyhow::Error::from)
        .context("adding wasi:http to the linker")?;
    clock::add_to_linker(&mut linker)
        .context("adding the deadline-aware monotonic clock to the linker")?;
    host::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)
        .context("adding weir:plugin/host@0.1.0 to the linker")?;
    v0_2::host::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |state| state)
        .map_err(anyhow::Error::from)
        .context("adding weir:plugin/host@0.2.0 to the linker")?;
    state::add_to_linker(&mut linker).context("adding weir:plugin/state@0.2.0 to the linker")?;
    compute::add_to_linker(&mut linker)
        .context("adding weir:plugin/compute@0.2.0 to the linker")?;
    Ok(linker)
}

/// The three plugin kinds, one per WIT world.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// World `extractor`, exporting `weir:plugin/extract`.
    Extract,
    /// World `validator`, exporting `weir:plugin/validate`.
    Validate,
    /// World `transformer`, exporting `weir:plugin/transform`.
    Transform,
}

impl PluginKind {
    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Extract => "extractor",
            PluginKind::Validate => "validator",
            PluginKind::Transform => "transformer",
        }
    }

    /// The interface a plugin of this kind exports in `contract`.
    pub fn export(self, contract: Contract) -> String {
        format!("weir:plugin/{}@{}", self.as_str(), contract.version())
    }

    /// The kind's name as written in a pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Extract => "extract",
            PluginKind::Validate => "validate",
            PluginKind::Transform => "transform",
        }
    }
}

/// The version of the `weir:plugin` package a component targets. weir
/// loads both; the SDKs build 0.2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Contract {
    /// `weir:plugin@0.1.0` (`wit/0.1.0/`): every column crosses both ways
    /// and a transform returns a whole batch.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `weir:plugin@0.2.0` (`wit/`): a stage declares the columns it reads
    /// and a transform may return a splice.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    /// Every version weir loads, newest first.
    pub const ALL: [Contract; 2] = [Contract::V0_2, Contract::V0_1];

    /// The package version, `0.2.0`.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.version())
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type-checked entry points of a component, by kind and contract.
enum Pre {
    Extract(extractor::ExtractorPre<PluginState>),
    Validate(validator::ValidatorPre<PluginState>),
    Transform(transformer::TransformerPre<PluginState>),
    Extract2(v0_2::extractor::ExtractorPre<PluginState>),
    Validate2(v0_2::validator::ValidatorPre<PluginState>),
    Transform2(v0_2::transformer::TransformerPre<PluginState>),
}

/// A compiled plugin, ready to instantiate. Cheap to share across threads
/// (`Arc<Plugin>`); each worker creates its own [`PluginInstance`].
pub struct Plugin {
    name: String,
    kind: PluginKind,
    contract: Contract,
    sha256: String,
    size_bytes: u64,
    origin: Origin,
    compile_time: Duration,
    imports: Vec<String>,
    pre: Pre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// What a component declares, read without instantiating it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The plugin kind its exports make it, if any.
    pub kind: Option<PluginKind>,
    /// Its world, when it is a weir plugin.
    pub world: Option<&'static str>,
    /// The `weir:plugin` version it targets, when it is a weir plugin.
    pub contract: Option<Contract>,
    /// Names of the interfaces and functions it exports.
    pub exports: Vec<String>,
    /// Names of the interfaces and functions it imports.
    pub imports: Vec<String>,
    /// Size of the component file, in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the component bytes, lowercase hex.
    pub sha256: String,
}

/// Resolves a pipeline's `plugin` value: `builtin:NAME` for a plugin shipped
/// inside weir, or a path to a `.wasm` component, relative to `base_dir`
/// (the pipeline file's directory) unless absolute.
///
/// # Errors
/// An unknown built-in (listing the known ones) or an unreadable file.
pub fn read_plugin_bytes(reference: &str, base_dir: &Path) -> Result<(String, Vec<u8>)> {
    if let Some(name) = reference.strip_prefix("builtin:") {
        let bytes = crate::builtin::get(name).ok_or_else(|| {
            anyhow!(
                "no built-in plugin `{name}`; built-ins are: {}",
                crate::builtin::names().collect::<Vec<_>>().join(", ")
            )
        })?;
        return Ok((reference.to_string(), bytes.to_vec()));
    }
    let path: PathBuf = base_dir.join(reference);
    let bytes =
        std::fs::read(&path).with_context(|| format!("reading plugin {}", path.display()))?;
    Ok((reference.to_string(), bytes))
}

/// SHA-256 of `bytes`, lowercase hex: a plugin's identity in reports,
/// quarantine rows and the artifact cache.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `text` is a SHA-256 as [`sha256_hex`] writes it: 64 lowercase
/// hex characters (so it is also a safe file name).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn detect_kind(exports: &[String]) -> Option<(PluginKind, Contract)> {
    Contract::ALL.into_iter().find_map(|contract| {
        [
            PluginKind::Extract,
            PluginKind::Validate,
            PluginKind::Transform,
        ]
        .into_iter()
        .find(|kind| exports.iter().any(|e| *e == kind.export(contract)))
        .map(|kind| (kind, contract))
    })
}

fn names<'a, T>(items: impl Iterator<Item = (&'a str, T)>) -> Vec<String> {
    items.map(|(name, _)| name.to_string()).collect()
}

impl Plugin {
    /// Loads the plugin `reference` (see [`read_plugin_bytes`]) and checks
    /// that it is of `expected` kind, when given.
    ///
    /// # Errors
    /// An unreadable file, bytes that are not a component, a component that
    /// is not a weir plugin, one whose world differs from `expected`, or one
    /// importing something weir does not provide.
    pub fn load(reference: &str, expected: Option<PluginKind>, base_dir: &Path) -> Result<Plugin> {
        let (name, bytes) = read_plugin_bytes(reference, base_dir)?;
        Plugin::from_bytes(&name, &bytes, expected)
    }

    /// Compiles (or loads from the artifact cache) and type-checks a plugin
    /// from its component bytes. See [`Plugin::load`] for the errors.
    ///
    /// # Errors
    /// As [`Plugin::load`].
    pub fn from_bytes(name: &str, bytes: &[u8], expected: Option<PluginKind>) -> Result<Plugin> {
        Plugin::from_bytes_scoped(name, bytes, expected, None)
    }

    /// [`Plugin::from_bytes`] with the compiled artifact cached in `scope`
    /// (a tenant's own part of the cache; see [`cache`]).
    ///
    /// # Errors
    /// As [`Plugin::load`].
    pub fn from_bytes_scoped(
        name: &str,
        bytes: &[u8],
        expected: Option<PluginKind>,
        scope: Option<&str>,
    ) -> Result<Plugin> {
        let runtime = Runtime::shared();
        let engine = runtime.engine();
        let sha256 = sha256_hex(bytes);
        let started = Instant::now();
        let (component, origin) = cache::load_or_compile(engine, bytes, &sha256, scope)
            .with_context(|| format!("plugin `{name}` is not a valid WebAssembly component"))?;
        let compile_time = started.elapsed();
        let ty = component.component_type();
        let exports = names(ty.exports(engine));
        let imports = names(ty.imports(engine));
        let (kind, contract) = detect_kind(&exports).ok_or_else(|| {
            anyhow!(
                "plugin `{name}` is not a weir plugin: it exports none of weir:plugin/{{extract,validate,transform}} at versions {} (it exports: {})",
                Contract::ALL.map(Contract::version).join(", "),
                if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
            )
        })?;
        if let Some(expected) = expected
            && expected != kind
        {
            bail!(
                "plugin `{name}` is a {kind} plugin (world `{}`, exports {}) but the stage declares kind = \"{expected}\" (world `{}`)",
                kind.world(),
                kind.export(contract),
                expected.world()
            );
        }
        check_imports(name, kind, &imports)?;
        let instance_pre = linker().instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "plugin `{name}` imports something weir does not provide: {}",
                e.root_cause()
            )
        })?;
        let pre = match (kind, contract) {
            (PluginKind::Extract, Contract::V0_1) => {
                Pre::Extract(extractor::ExtractorPre::new(instance_pre)?)
            }
            (PluginKind::Validate, Contract::V0_1) => {
                Pre::Validate(validator::ValidatorPre::new(instance_pre)?)
            }
            (PluginKind::Transform, Contract::V0_1) => {
                Pre::Transform(transformer::TransformerPre::new(instance_pre)?)
            }
            (PluginKind::Extract, Contract::V0_2) => {
                Pre::Extract2(v0_2::extractor::ExtractorPre::new(instance_pre)?)
            }
            (PluginKind::Validate, Contract::V0_2) => {
                Pre::Validate2(v0_2::validator::ValidatorPre::new(instance_pre)?)
            }
            (PluginKind::Transform, Contract::V0_2) => {
                Pre::Transform2(v0_2::transformer::TransformerPre::new(instance_pre)?)
            }
        };
        Ok(Plugin {
            name: name.to_string(),
            kind,
            contract,
            sha256,
            size_bytes: bytes.len() as u64,
            origin,
            compile_time,
            imports,
            pre,
        })
    }

    /// Reads what a component file declares without instantiating it.
    ///
    /// # Errors
    /// When the bytes are not a valid component.
    pub fn inspect(bytes: &[u8]) -> Result<Inspection> {
        let engine = Runtime::shared().engine();
        let sha256 = sha256_hex(bytes);
        let (component, _) = cache::load_or_compile(engine, bytes, &sha256, None)?;
        let ty = component.component_type();
        let exports = names(ty.exports(engine));
        let detected = detect_kind(&exports);
        let kind = detected.map(|(kind, _)| kind);
        Ok(Inspection {
            kind,
            world: kind.map(PluginKind::world),
            contract: detected.map(|(_, contract)| contract),
            exports,
            imports: names(ty.imports(engine)),
            size_bytes: bytes.len() as u64,
            sha256,
        })
    }

    /// The name it was loaded by (`builtin:check`, `plugins/x.wasm`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The `weir:plugin` version it targets.
    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// SHA-256 of the component bytes, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the component file, in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Whether it was compiled now or loaded from the artifact cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Time spent compiling or loading it from the cache.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Names of the interfaces it imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Whether it keeps keyed state: it imports `weir:plugin/state` (a
    /// component of a `stateful-*` world that calls a state function).
    pub fn uses_state(&self) -> bool {
        self.imports.iter().any(|i| i == state::STATE_INTERFACE)
    }

    /// Creates an instance for stage `stage`, whose `config` import returns
    /// `config_json`, with `limits` applied to every call.
    ///
    /// # Errors
    /// [`PluginError::Instantiate`] when instantiation traps or runs out of
    /// pooling slots; a limit exhausted during start-up is reported as that
    /// limit's kind.
    pub fn instantiate(
        &self,
        stage: &str,
        config_json: Arc<str>,
        limits: Limits,
    ) -> Result<PluginInstance, PluginError> {
        self.instantiate_with(stage, config_json, limits, &Grants::default(), None, None)
    }

    /// [`Plugin::instantiate`] with the capabilities `grants` (read-only
    /// directories), outbound HTTP through `http` (extract plugins whose
    /// source grants it; without it every request is denied), drawing its
    /// linear memory from `pool` (a tenant's `max_memory_bytes`) when given.
    ///
    /// # Errors
    /// As [`Plugin::instantiate`], or a granted directory that cannot be
    /// opened ([`PluginError::Instantiate`]).
    pub fn instantiate_with(
        &self,
        stage: &str,
        config_json: Arc<str>,
        limits: Limits,
        grants: &Grants,
        pool: Option<Arc<MemoryPool>>,
        http: Option<&Arc<HttpAccess>>,
    ) -> Result<PluginInstance, PluginError> {
        let engine = Runtime::shared().engine();
        let stderr = stderr::TailPipe::new(error::MAX_STDERR_BYTES);
        let clock = clock::InstanceClock {
            start: Instant::now(),
        };
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder.stderr(stderr.clone()).monotonic_clock(clock);
        grants
            .apply(&mut builder)
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        let wasi = builder.build();
        let state = PluginState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap::new(limits.max_memory_bytes).with_pool(pool),
            config_json,
            plugin: Arc::from(self.name.as_str()),
            stage: Arc::from(stage),
            stderr,
            log_lines: 0,
            clock,
            call_deadline: None,
            http_ctx: WasiHttpCtx::new(),
            http_hooks: http::HttpHooks {
                access: http.cloned(),
                deadline: None,
            },
            state: None,
            compute: compute::ComputeCall::new(limits.max_memory_bytes),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.memory);
        let mut instance = PluginInstance {
            store,
            exports: Exports::Pending,
            limits,
            last_call: CallStats::default(),
            reads: None,
            typechecked: 0,
        };
        instance.arm();
        let exports = match &self.pre {
            Pre::Extract(pre) => pre.instantiate(&mut instance.store).map(Exports::Extract),
            Pre::Validate(pre) => pre.instantiate(&mut instance.store).map(Exports::Validate),
            Pre::Transform(pre) => pre.instantiate(&mut instance.store).map(Exports::Transform),
            Pre::Extract2(pre) => pre.instantiate(&mut instance.store).map(Exports::Extract2),
            Pre::Validate2(pre) => pre.instantiate(&mut instance.store).map(Exports::Validate2),
            Pre::Transform2(pre) => pre
                .instantiate(&mut instance.store)
                .map(Exports::Transform2),
        };
        instance.exports = exports.map_err(|e| match instance.classify(&e) {
            PluginError::Trap(message) => PluginError::Instantiate(message),
            other => other,
        })?;
        // From now on fuel is handed to the plugin `FUEL_SLICE` at a time
        // (see `FUEL_SLICE`); calls must then run on a fiber (`call_async`).
        instance
            .store
            .fuel_async_yield_interval(Some(FUEL_SLICE))
            .map_err(|e| PluginError::Instantiate(format!("{e:#}")))?;
        instance.describe()?;
        Ok(instance)
    }
}

/// Fuel units a plugin runs on between two visits to the host.
///
/// Compiled code keeps its fuel count in a register and writes it back to
/// the store only at calls, returns and when its fuel runs out; a call
/// interrupted at its deadline (an epoch check in a loop) loses what it
/// burned since. Handing fuel out in slices makes the plugin come back for
/// more every `FUEL_SLICE` units, writing its count back each time, so what
/// a call is charged is exact to within one slice (about 5 ms of work),
/// however it ends. Each refill costs a switch to the host and back
/// (microseconds), once per slice.
pub const FUEL_SLICE: u64 = 10_000_000;

/// What a call can lower as its `record-batch` argument: the owned WIT
/// type, or a [`BatchRef`] lent from Arrow buffers.
trait Lowerable: wasmtime::component::ComponentType + wasmtime::component::Lower + Sync {
    /// This type's bit in [`PluginInstance::typechecked`].
    const CHECKED: u8;
}
impl Lowerable for types::RecordBatch {
    const CHECKED: u8 = 1;
}
impl Lowerable for BatchRef<'_> {
    const CHECKED: u8 = 2;
}

/// `func` (the instance's `validate` or `transform` export, which takes one
/// `record-batch` and returns `R`) typed to take `&B`.
///
/// wasmtime checks the types against the component's the first time for
/// each `B` (`checked` remembers it), so a `B` that does not mirror
/// `record-batch` is refused before anything is lowered. Later calls skip
/// the check, which walks the whole `record-batch` type and compares its
/// names (about 6% of a call that sends 128 KiB).
fn typed<
    'a,
    B: Lowerable + 'a,
    R: wasmtime::component::ComponentType + wasmtime::component::Lift,
>(
    func: wasmtime::component::Func,
    store: &Store<PluginState>,
    checked: &mut u8,
) -> Result<wasmtime::component::TypedFunc<(&'a B,), (R,)>, PluginError> {
    if *checked & B::CHECKED != 0 {
        // SAFETY: `func` is this instance's one call export (an instance
        // is either a transform or a validator, of one contract version,
        // so `R` is the same on every call), and `&B` was checked against
        // it by `Func::typed` on an earlier call (`checked`); a lifetime
        // does not change the type.
        return Ok(unsafe { wasmtime::component::TypedFunc::new_unchecked(func) });
    }
    let typed = func.typed(store).map_err(|e| {
        PluginError::Instantiate(format!(
            "the plugin's export does not take a record batch: {e:#}"
        ))
    })?;
    *checked |= B::CHECKED;
    Ok(typed)
}

/// Drives a future to completion on this thread. Plugin calls run on a
/// wasmtime fiber whose only suspension point is a refuel (`FUEL_SLICE`),
/// which wakes itself at once: no reactor is needed.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Takes `cost` fuel units from the running call for work the host does
/// on its behalf (state and compute calls); a call that cannot pay stops as
/// out of fuel, with its fuel at 0.
fn take_fuel(
    store: &mut wasmtime::StoreContextMut<'_, PluginState>,
    cost: u64,
) -> wasmtime::Result<()> {
    let left = store.get_fuel()?;
    if left < cost {
        store.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)?;
    Ok(())
}

/// Log lines one instance may write per call before the rest are dropped.
const LOG_LINES_PER_CALL: u32 = 1000;

/// The data in each plugin's store: its WASI context (with no capability
/// granted: no files, no network, no environment), memory limiter, stage
/// configuration and captured stderr.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    config_json: Arc<str>,
    plugin: Arc<str>,
    stage: Arc<str>,
    stderr: stderr::TailPipe,
    log_lines: u32,
    /// The monotonic clock the plugin sees.
    clock: clock::InstanceClock,
    /// When the running call's `timeout_ms` ends; host-side sleeps and
    /// outbound requests end there at the latest.
    call_deadline: Option<Instant>,
    http_ctx: WasiHttpCtx,
    /// Outbound HTTP: denied unless the source granted it.
    http_hooks: http::HttpHooks,
    /// The stage's keyed state and this call's writes to it (stateful
    /// stages only, see [`PluginInstance::attach_state`]).
    state: Option<state::StateCall>,
    /// The running call's column handles and kernel outputs
    /// (`weir:plugin/compute`).
    compute: compute::ComputeCall,
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.http_hooks.deadline = self.call_deadline;
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for PluginState {
    fn log(&mut self, level: host::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            return;
        }
        let (plugin, stage) = (&*self.plugin, &*self.stage);
        match level {
            host::Level::Trace => tracing::trace!(plugin, stage, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, stage, "{message}"),
            host::Level::Info => tracing::info!(plugin, stage, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, stage, "{message}"),
            host::Level::Error => tracing::error!(plugin, stage, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.config_json.to_string()
    }
}

impl v0_2::host::Host for PluginState {
    fn log(&mut self, level: v0_2::host::Level, message: String) {
        use v0_2::host::Level;
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::Host::log(self, level, message);
    }

    fn config(&mut self) -> String {
        host::Host::config(self)
    }
}

impl types::Host for PluginState {}
impl v0_2::stage::Host for PluginState {}

enum Exports {
    Pending,
    Extract(extractor::Extractor),
    Validate(validator::Validator),
    Transform(transformer::Transformer),
    Extract2(v0_2::extractor::Extractor),
    Validate2(v0_2::validator::Validator),
    Transform2(v0_2::transformer::Transformer),
}

/// What a transform returned: a whole batch, or (0.2.0) its changes to the
/// input it was sent.
#[derive(Debug, Clone)]
pub enum TransformOutput {
    /// The whole output batch (any rows, any schema).
    Batch(types::RecordBatch),
    /// A row selection and the columns added, replaced or dropped; see
    /// [`crate::splice`].
    Splice {
        /// What the plugin returned.
        splice: Splice,
        /// The columns it emitted with compute kernels
        /// (`weir:plugin/compute.emit`): (name, one value per input row),
        /// added to the splice's new columns. They never crossed the
        /// boundary.
        computed: Vec<(String, arrow::array::ArrayRef)>,
    },
}

impl TransformOutput {
    /// Size of its buffers, in bytes: what `max_output_bytes` counts (a
    /// splice's selection and new columns; nothing for the columns that
    /// pass through on the host).
    pub fn payload_bytes(&self) -> u64 {
        match self {
            TransformOutput::Batch(batch) => crate::columnar::payload_bytes(batch),
            TransformOutput::Splice { splice, .. } => {
                let selection = match &splice.selection {
                    None => 0,
                    Some(Selection::Mask(mask)) => mask.len(),
                    Some(Selection::Indices(indices)) => indices.len() * 4,
                } as u64;
                let columns: u64 = splice
                    .columns
                    .iter()
                    .map(|c| crate::columnar::column_payload_bytes(&c.column))
                    .sum();
                selection + columns
            }
        }
    }
}

/// A transform's output as changes to its input (`weir:plugin/stage.splice`).
pub type Splice = v0_2::stage::Splice;
/// Which input rows a [`Splice`] keeps.
pub type Selection = v0_2::stage::Selection;
/// A column a [`Splice`] adds or replaces.
pub type NewColumn = v0_2::stage::NewColumn;

/// Resource use of one call, however it ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    /// Fuel units consumed, exact to within [`FUEL_SLICE`] (a call stopped
    /// at its deadline or memory limit is charged what it burned until then;
    /// one that ran out of fuel, its whole `fuel_per_batch`).
    pub fuel: u64,
    /// Wall-clock duration of the call, lifting and lowering included.
    pub duration: Duration,
    /// Largest linear memory the instance has reached, in bytes.
    pub peak_memory_bytes: u64,
}

/// One live plugin instance with its own store. Not shareable across
/// threads at once; after any error it must be dropped.
pub struct PluginInstance {
    store: Store<PluginState>,
    exports: Exports,
    limits: Limits,
    last_call: CallStats,
    /// The columns the stage reads (0.2.0 `describe`); none means all.
    reads: Option<Vec<String>>,
    /// Which argument types the call export was checked against, one bit
    /// per [`Lowerable`] type (see [`typed`]).
    typechecked: u8,
}

impl PluginInstance {
    /// Asks a 0.2.0 validate or transform plugin which columns it reads
    /// (once, at instantiation, under the call limits).
    fn describe(&mut self) -> Result<(), PluginError> {
        let info = match &self.exports {
            Exports::Validate2(exports) => {
                let exports = exports.weir_plugin_validate().clone();
                self.arm();
                block_on(exports.call_describe(&mut self.store))
            }
            Exports::Transform2(exports) => {
                let exports = exports.weir_plugin_transform().clone();
                self.arm();
                block_on(exports.call_describe(&mut self.store))
            }
            _ => return Ok(()),
        };
        let info = info.map_err(|e| match self.classify(&e) {
            PluginError::Trap(message) => PluginError::Instantiate(format!("describe: {message}")),
            other => other,
        })?;
        self.reads = info.reads;
        Ok(())
    }

    /// The names of the columns the plugin reads (0.2.0 `describe`); `None`
    /// when it reads every column (and for every 0.1.0 plugin).
    pub fn reads(&self) -> Option<&[String]> {
        self.reads.as_deref()
    }

    /// Gives the instance its stage's keyed state (`weir:plugin/state`);
    /// without it a plugin that calls a state function stops with an
    /// error.
    pub fn attach_state(&mut self, stage_state: Arc<crate::state::stage::StageState>) {
        self.store.data_mut().state = Some(state::StateCall::new(stage_state));
    }

    /// Applies the state writes of the last call, which the stage accepted
    /// (a call whose output is refused must not change the state).
    pub fn commit_state(&mut self) {
        if let Some(state) = self.store.data_mut().state.as_mut() {
            state.commit();
        }
    }

    /// Takes the state writes of the last call without applying them (an
    /// extract plugin's: see [`crate::source::SourceBatch::state`]).
    pub fn take_state_writes(&mut self) -> crate::state::Changes {
        self.store
            .data_mut()
            .state
            .as_mut()
            .map(state::StateCall::take)
            .unwrap_or_default()
    }

    /// Refills fuel and restarts the deadline before a call.
    fn arm(&mut self) {
        // wasmtime's own default copy budget (128 MiB) would otherwise be
        // the real output cap, below the default `max_output_bytes`.
        let budget = usize::try_from(self.limits.copy_budget_bytes()).unwrap_or(usize::MAX);
        self.store.set_hostcall_fuel(budget);
        self.store.data_mut().log_lines = 0;
        if let Some(state) = self.store.data_mut().state.as_mut() {
            state.clear();
        }
        self.store.data_mut().compute.begin(None);
        self.store.data_mut().call_deadline =
            Instant::now().checked_add(Duration::from_millis(self.limits.timeout_ms));
        self.store
            .set_fuel(self.limits.fuel_per_batch)
            .expect("fuel metering is enabled on the engine");
        self.store
            .set_epoch_deadline(self.limits.timeout_ms.div_ceil(EPOCH_TICK_MS).max(1));
    }

    fn classify(&self, error: &wasmtime::Error) -> PluginError {
        // Only the last MAX_STDERR_BYTES are kept; say how much came before.
        let (kept, dropped) = self.store.data().stderr.contents();
        match PluginError::classify(error, &self.limits, &kept) {
            PluginError::Trap(message) if dropped > 0 => PluginError::Trap(message.replacen(
                "plugin stderr: ",
                &format!("plugin stderr: [{dropped} earlier bytes cut] …"),
                1,
            )),
            other => other,
        }
    }

    fn stats(&mut self, started: Instant) -> CallStats {
        let left = self.store.get_fuel().unwrap_or(0);
        self.last_call = CallStats {
            fuel: self.limits.fuel_per_batch.saturating_sub(left),
            duration: started.elapsed(),
            peak_memory_bytes: self.store.data().memory.peak_bytes(),
        };
        self.last_call
    }

    /// What the latest call used, whether it succeeded or failed (a call
    /// stopped by its deadline has burned fuel too, which a tenant's fuel
    /// quota must be charged).
    pub fn last_call(&self) -> CallStats {
        self.last_call
    }

    fn check_output(&self, bytes: u64) -> Result<(), PluginError> {
        if bytes > self.limits.max_output_bytes {
            return Err(PluginError::OutputTooLarge {
                bytes,
                limit_bytes: self.limits.max_output_bytes,
            });
        }
        Ok(())
    }

    /// Calls `transform` on `batch` with no Arrow batch behind it: compute
    /// kernels then find no input column. The stages call
    /// [`Self::transform_with`].
    ///
    /// # Errors
    /// As [`Self::transform_with`].
    pub fn transform(
        &mut self,
        batch: &types::RecordBatch,
    ) -> Result<(TransformOutput, CallStats), PluginError> {
        self.call_transform(None, batch)
    }

    /// Calls `transform` on `batch`, the columns the stage reads of `input`
    /// (the whole batch, whose columns compute kernels reach), lent from
    /// their Arrow buffers ([`crate::lent`]).
    ///
    /// # Errors
    /// Any [`PluginError`] kind; the instance must then be dropped. Columns
    /// emitted with compute kernels next to a whole-batch output are
    /// [`PluginError::MalformedOutput`].
    pub fn transform_with(
        &mut self,
        input: &arrow::record_batch::RecordBatch,
        batch: &BatchRef<'_>,
    ) -> Result<(TransformOutput, CallStats), PluginError> {
        self.call_transform(Some(input), batch)
    }

    /// Calls `transform` with `batch`, any value of the `record-batch` type
    /// (owned, or lent from Arrow).
    fn call_transform<B: Lowerable>(
        &mut self,
        input: Option<&arrow::record_batch::RecordBatch>,
        batch: &B,
    ) -> Result<(TransformOutput, CallStats), PluginError> {
        use v0_2::transformer::exports::weir::plugin::transform::Output;
        let result = match &self.exports {
            Exports::Transform(exports) => {
                let func = *exports.weir_plugin_transform().func_transform().func();
                let call = typed::<B, Result<types::RecordBatch, types::Error>>(
                    func,
                    &self.store,
                    &mut self.typechecked,
                )?;
                self.arm();
                let started = Instant::now();
                let result = block_on(call.call_async(&mut self.store, (batch,)));
                (
                    result.map(|(r,)| r.map(|b| Ok(TransformOutput::Batch(b)))),
                    started,
                )
            }
            Exports::Transform2(exports) => {
                let func = *exports.weir_plugin_transform().func_transform().func();
                let call = typed::<B, Result<Output, types::Error>>(
                    func,
                    &self.store,
                    &mut self.typechecked,
                )?;
                self.arm();
                self.store.data_mut().compute.begin(input.cloned());
                let started = Instant::now();
                let result = block_on(call.call_async(&mut self.store, (batch,)));
                let computed = self.store.data_mut().compute.take_outputs().emitted;
                let output = result.map(|(r,)| {
                    r.map(|output| match output {
                        Output::Batch(batch) if computed.is_empty() => {
                            Ok(TransformOutput::Batch(batch))
                        }
                        Output::Batch(_) => Err(PluginError::MalformedOutput(
                            "columns emitted with compute kernels need a splice output, not a whole batch".into(),
                        )),
                        Output::Splice(splice) => Ok(TransformOutput::Splice { splice, computed }),
                    })
                });
                (output, started)
            }
            _ => unreachable!("PluginInstance::transform on a non-transform plugin"),
        };
        let (result, started) = result;
        let stats = self.stats(started);
        let output = result
            .map_err(|e| self.classify(&e))?
            .map_err(PluginError::returned)??;
        self.check_output(output.payload_bytes())?;
        Ok((output, stats))
    }

    /// Calls `validate` on `batch` with no Arrow batch behind it: compute
    /// kernels then find no input column. The stages call
    /// [`Self::validate_with`].
    ///
    /// # Errors
    /// As [`Self::validate_with`].
    pub fn validate(
        &mut self,
        batch: &types::RecordBatch,
    ) -> Result<(Vec<Verdict>, CallStats), PluginError> {
        self.call_validate(None, batch, batch.num_rows)
    }

    /// Calls `validate` on `batch`, the columns the stage reads of `input`
    /// (the whole batch, whose columns compute kernels reach), lent from
    /// their Arrow buffers ([`crate::lent`]); rows a kernel `reject`ed are
    /// added to the verdicts, after those returned.
    ///
    /// # Errors
    /// Any [`PluginError`] kind; a verdict naming a row outside the batch is
    /// [`PluginError::MalformedOutput`].
    pub fn validate_with(
        &mut self,
        input: &arrow::record_batch::RecordBatch,
        batch: &BatchRef<'_>,
    ) -> Result<(Vec<Verdict>, CallStats), PluginError> {
        self.call_validate(Some(input), batch, batch.num_rows())
    }

    /// Calls `validate` with `batch` of `num_rows` rows, any value of the
    /// `record-batch` type (owned, or lent from Arrow).
    fn call_validate<B: Lowerable>(
        &mut self,
        input: Option<&arrow::record_batch::RecordBatch>,
        batch: &B,
        num_rows: u32,
    ) -> Result<(Vec<Verdict>, CallStats), PluginError> {
        use v0_2::validator::exports::weir::plugin::validate::Verdict as Verdict2;
        use validator::exports::weir::plugin::validate::Verdict as Verdict1;
        let (result, started) = match &self.exports {
            Exports::Validate(exports) => {
                let func = *exports.weir_plugin_validate().func_validate().func();
                let call = typed::<B, Result<Vec<Verdict1>, types::Error>>(
                    func,
                    &self.store,
                    &mut self.typechecked,
                )?;
                self.arm();
                let started = Instant::now();
                let result = block_on(call.call_async(&mut self.store, (batch,)));
                let result =
                    result.map(|(r,)| r.map(|v| v.into_iter().map(Verdict::from).collect()));
                (result, started)
            }
            Exports::Validate2(exports) => {
                let func = *exports.weir_plugin_validate().func_validate().func();
                let call = typed::<B, Result<Vec<Verdict2>, types::Error>>(
                    func,
                    &self.store,
                    &mut self.typechecked,
                )?;
                self.arm();
                self.store.data_mut().compute.begin(input.cloned());
                let started = Instant::now();
                let result = block_on(call.call_async(&mut self.store, (batch,)));
                let rejected = self.store.data_mut().compute.take_outputs().rejected;
                let result = result.map(|(r,)| {
                    r.map(|listed| {
                        // Sized once: a chain of flat maps gives no size
                        // hint, and a million rejected rows grew the vector
                        // by doubling, copying it each time.
                        let rows =
                            listed.len() + rejected.iter().map(|r| r.rows.len()).sum::<usize>();
                        let mut verdicts = Vec::with_capacity(rows);
                        verdicts.extend(listed.into_iter().map(Verdict::from));
                        for rejection in rejected {
                            verdicts.extend(
                                rejection
                                    .into_verdicts()
                                    .map(|(row, rule, message)| Verdict { row, rule, message }),
                            );
                        }
                        verdicts
                    })
                });
                (result, started)
            }
            _ => unreachable!("PluginInstance::validate on a non-validate plugin"),
        };
        let stats = self.stats(started);
        let verdicts = result
            .map_err(|e| self.classify(&e))?
            .map_err(PluginError::returned)?;
        self.check_output(verdict_bytes(&verdicts))?;
        if let Some(bad) = verdicts.iter().find(|v| v.row >= num_rows) {
            return Err(PluginError::MalformedOutput(format!(
                "verdict for row {} but the batch has {num_rows} rows",
                bad.row
            )));
        }
        Ok((verdicts, stats))
    }

    /// Calls `extract` on one source object's bytes.
    ///
    /// # Errors
    /// Any [`PluginError`] kind; the instance must then be dropped.
    pub fn extract(
        &mut self,
        data: &[u8],
        metadata: &SourceMetadata,
    ) -> Result<(Vec<types::RecordBatch>, CallStats), PluginError> {
        let (result, started) = match &self.exports {
            Exports::Extract(exports) => {
                let exports = exports.weir_plugin_extract().clone();
                self.arm();
                let started = Instant::now();
                (
                    block_on(exports.call_extract(&mut self.store, data, metadata)),
                    started,
                )
            }
            Exports::Extract2(exports) => {
                let exports = exports.weir_plugin_extract().clone();
                self.arm();
                let started = Instant::now();
                let metadata = v0_2::extractor::exports::weir::plugin::extract::SourceMetadata {
                    source_name: metadata.source_name.clone(),
                    content_type: metadata.content_type.clone(),
                };
                (
                    block_on(exports.call_extract(&mut self.store, data, &metadata)),
                    started,
                )
            }
            _ => unreachable!("PluginInstance::extract on a non-extract plugin"),
        };
        let stats = self.stats(started);
        let batches = result
            .map_err(|e| self.classify(&e))?
            .map_err(PluginError::returned)?;
        self.check_output(batches.iter().map(crate::columnar::payload_bytes).sum())?;
        Ok((batches, stats))
    }
}

/// One failed check on one row: a verdict a validate plugin returned, or a
/// row one of its `reject`/`reject-each` calls failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The failing row of the batch, from 0.
    pub row: u32,
    /// The rule's id, shared by the rows one `reject` call failed.
    pub rule: Arc<str>,
    /// Why, for the quarantine; shared by the rows one `reject` call
    /// failed.
    pub message: VerdictMessage,
}

/// A [`Verdict`]'s message: a text of its own (or shared by the rows one
/// `reject` call failed), or one row of the messages a `reject-each` call
/// wrote into one buffer ([`crate::kernels::Texts`]). Reads as `str`;
/// equal when the texts are.
#[derive(Debug, Clone)]
pub enum VerdictMessage {
    /// A whole text.
    Text(Arc<str>),
    /// Row `i` of a call's messages.
    Row(Arc<crate::kernels::Texts>, u32),
}

impl std::ops::Deref for VerdictMessage {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            VerdictMessage::Text(text) => text,
            VerdictMessage::Row(texts, i) => texts.get(*i as usize),
        }
    }
}

impl PartialEq for VerdictMessage {
    fn eq(&self, other: &VerdictMessage) -> bool {
        **self == **other
    }
}

impl Eq for VerdictMessage {}

impl std::fmt::Display for VerdictMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl From<&str> for VerdictMessage {
    fn from(text: &str) -> VerdictMessage {
        VerdictMessage::Text(Arc::from(text))
    }
}

/// Bytes `verdicts` hold, for the output limit: 4 per row, plus each rule
/// and whole message once per allocation, and each row's own message. The verdicts of one `reject` or
/// `reject-each` call come together and share their rule (and, for
/// `reject`, their message), which is counted once, as it is held once;
/// each verdict a plugin returns brings its own strings.
fn verdict_bytes(verdicts: &[Verdict]) -> u64 {
    let mut bytes = 0;
    let mut previous: Option<&Verdict> = None;
    for verdict in verdicts {
        let new = |text: &Arc<str>, before: Option<&Arc<str>>| match before {
            Some(before) if Arc::ptr_eq(text, before) => 0,
            _ => text.len(),
        };
        let message = match (&verdict.message, previous.map(|p| &p.message)) {
            (VerdictMessage::Text(text), Some(VerdictMessage::Text(before))) => {
                new(text, Some(before))
            }
            (message, _) => message.len(),
        };
        bytes += 4 + new(&verdict.rule, previous.map(|p| &p.rule)) + message;
        previous = Some(verdict);
    }
    bytes as u64
}

/// The two contract versions' verdicts are the same record.
macro_rules! verdict_from {
    ($($wit:ty),*) => {$(
        impl From<$wit> for Verdict {
            fn from(v: $wit) -> Verdict {
                Verdict {
                    row: v.row,
                    rule: Arc::from(v.rule),
                    message: VerdictMessage::Text(Arc::from(v.message)),
                }
            }
        }
    )*};
}

verdict_from!(
    validator::exports::weir::plugin::validate::Verdict,
    v0_2::validator::exports::weir::plugin::validate::Verdict
);

/// Where an extract plugin's bytes came from.
pub type SourceMetadata = extractor::exports::weir::plugin::extract::SourceMetadata;

#[cfg(test)]
mod tests {
    use super::*;

    /// A `reject` call's rows share one rule and one message, counted
    /// once; verdicts with their own strings count theirs each.
    #[test]
    fn shared_verdict_strings_count_once_against_the_output_limit() {
        let rule: Arc<str> = Arc::from("positive");
        let message: Arc<str> = Arc::from("m".repeat(1000));
        let shared: Vec<Verdict> = (0..100)
            .map(|row| Verdict {
                row,
                rule: rule.clone(),
                message: VerdictMessage::Text(message.clone()),
            })
            .collect();
        assert_eq!(verdict_bytes(&shared), 100 * 4 + 8 + 1000);
        let own: Vec<Verdict> = (0..100)
            .map(|row| Verdict {
                row,
                rule: Arc::from("positive"),
                message: VerdictMessage::Text(Arc::from("m".repeat(1000))),
            })
            .collect();
        assert_eq!(verdict_bytes(&own), 100 * (4 + 8 + 1000));
        assert_eq!(verdict_bytes(&[]), 0);
    }
}
