//! The one place roam touches wasmtime.
//!
//! It narrows wasmtime to what roam needs and sets every limit once: one [`Engine`] per
//! process with the pooling allocator, epoch interruption with a wall-clock deadline per call,
//! a memory and table cap per store, and a maximum Wasm stack. Compiled code is cached in memory
//! (an `InstancePre` per module hash) and on disk (keyed by module hash and engine), so a module
//! is compiled once per host. Only a [`VerifiedModule`] can be compiled.

pub mod guest;
mod wasi;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roam_keys::{ModuleHash, VerifiedModule};
use wasmtime::{Instance, InstancePre, Linker, Module, Store, Trap, Val};

use self::guest::{Guest, HostTrap};
use crate::cache::Bounded;
use crate::metrics::Metrics;
use crate::resources::Resources;
use crate::snapshot::{GlobalSlots, GlobalValue, Snapshot, instrument};
use crate::sync::lock;

/// How often the epoch ticks: a call ends at the first tick past its deadline.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How often the epoch ticks while a call runs demoted, and so how often such a call gives way
/// to other threads waiting for its core (see [`crate::workers::give_way`]).
const YIELD_EVERY: Duration = Duration::from_micros(250);

/// How long a call runs at normal priority: past this, its thread is demoted (see
/// [`crate::workers`]) so that other clients' short requests run first. Small queries take tens
/// to hundreds of microseconds; a call past a few milliseconds is a long one on a busy host.
pub const DEMOTE_AFTER: Duration = Duration::from_millis(5);

/// A call that runs this long is a long one: the module's next call starts demoted.
pub const LONG_CALL: Duration = Duration::from_millis(1);

/// The limits every call runs under.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest linear memory a module may grow to, in bytes.
    pub memory_bytes: usize,
    /// Largest table a module may grow to, in elements.
    pub table_elements: usize,
    /// Wall-clock time one call may take, host calls (SQL) included.
    pub time: Duration,
    /// Largest Wasm stack, in bytes: deep recursion traps here, not in the host.
    pub stack_bytes: usize,
    /// Largest result a module may return, in bytes.
    pub result_bytes: usize,
    /// Most bytes one call may append to log resources: a module appending in a loop is stopped
    /// here rather than filling the host's disk until its deadline.
    pub log_bytes: usize,
    /// How many instances may be alive at once (the pooling allocator's slots).
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            table_elements: 10_000,
            time: Duration::from_secs(10),
            stack_bytes: 512 << 10,
            result_bytes: 8 << 20,
            log_bytes: 1 << 20,
            instances: 64,
        }
    }
}

/// Why a module could not be prepared to run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Cranelift refused the module (it is not valid Wasm, or uses an unsupported feature).
    #[error("the module does not compile: {0}")]
    Compile(String),
    /// The module imports something the host does not offer, or lacks a required export.
    #[error("the module cannot be linked: {0}")]
    Link(String),
}

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The call ran past its wall-clock deadline.
    #[error("the module ran out of time (limit {0:?}) and was stopped")]
    OutOfTime(Duration),
    /// The module tried to grow its memory or table past the limit.
    #[error("the module ran out of memory: {0}")]
    OutOfMemory(String),
    /// The module recursed past the Wasm stack limit.
    #[error("the module overflowed its stack (limit {0} bytes)")]
    StackOverflow(usize),
    /// The module trapped; `message` is what the module reported before (a panic message).
    #[error("the module trapped: {reason}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Trap {
        /// The trap, as wasmtime describes it.
        reason: String,
        /// The module's own last words, if it said any.
        message: Option<String>,
    },
    /// The result is over the host's limit: a limit, not a fault of the module.
    #[error(
        "the result is {size} bytes, over this host's limit of {max} bytes (result_kib in its \
         configuration); ask for less, or ask its operator to raise the limit"
    )]
    ResultTooLarge {
        /// The result's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The module failed after asking for a resource its signature does not grant.
    #[error("{0}")]
    Capability(String),
    /// The module itself reported an error (its query function returned `Err`).
    #[error("the module reported an error: {0}")]
    Module(String),
    /// The host stopped the module for breaking the interface's contract.
    #[error("the module broke the host interface: {0}")]
    Contract(String),
    /// The module finished without reporting a result.
    #[error("the module returned without a result (it never called `finish`)")]
    NoResult,
    /// Every instance slot is taken.
    #[error("the host is at its limit of concurrent instances; retry shortly")]
    Busy,
    /// Instantiation failed for another reason.
    #[error("the module could not be instantiated: {0}")]
    Instantiate(String),
}

/// A module compiled and linked, ready to instantiate cheaply.
pub struct Prepared {
    pre: InstancePre<Guest>,
    /// Whether it imports WASI (see [`Engine::call`]).
    wasi: bool,
    /// Whether it exports `_initialize` (see [`Engine::initialize`]).
    reactor: bool,
    /// How long the last call ran, in microseconds. Past [`LONG_CALL`], the next call starts
    /// demoted, so a module that runs long again and again never takes the first part of each
    /// run from others (the way a multilevel feedback queue treats jobs that use up their
    /// slice); past [`DEMOTE_AFTER`], see [`Runnable::runs_long`].
    last_call_us: AtomicU64,
}

impl Prepared {
    /// Whether the last call ran at least `length`.
    fn last_ran_past(&self, length: Duration) -> bool {
        u128::from(self.last_call_us.load(Ordering::Relaxed)) >= length.as_micros()
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// A verified module, compiled and linked, with what its signature grants it.
#[derive(Clone, Debug)]
pub struct Runnable {
    prepared: Arc<Prepared>,
    /// `name@version`, for logs.
    label: Arc<str>,
    /// The capabilities its signature requests: the most it can ever open.
    capabilities: Arc<[String]>,
}

impl Runnable {
    /// The capabilities the module's signature requests.
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Whether the module's last call ran past [`DEMOTE_AFTER`], long enough to be demoted: its
    /// next call will likely run as long. (A higher bar than [`LONG_CALL`], which only decides
    /// whether a call starts demoted: the host makes such calls wait for each other, and a
    /// query of a few milliseconds, or a short one on a loaded machine, should not.)
    pub fn runs_long(&self) -> bool {
        self.prepared.last_ran_past(DEMOTE_AFTER)
    }
}

fn runnable(prepared: Arc<Prepared>, module: &VerifiedModule) -> Runnable {
    let claims = module.claims();
    Runnable {
        prepared,
        label: format!("{}@{}", claims.name, claims.version).into(),
        capabilities: claims.capabilities.clone().into(),
    }
}

/// An agent module, loaded: its code, the globals it carries, and its initial memory image.
#[derive(Clone, Debug)]
pub struct AgentRunnable {
    runnable: Runnable,
    slots: GlobalSlots,
    /// Memory right after instantiation; snapshots carry only the pages that differ from it.
    initial: Arc<[u8]>,
}

impl AgentRunnable {
    /// The module's mutable globals, in snapshot order.
    pub fn slots(&self) -> &GlobalSlots {
        &self.slots
    }

    /// Size of the module's initial memory, in bytes.
    pub fn initial_bytes(&self) -> u64 {
        self.initial.len() as u64
    }

    /// The capabilities the module's signature requests.
    pub fn capabilities(&self) -> &[String] {
        self.runnable.capabilities()
    }

    /// `name@version`.
    pub fn label(&self) -> &str {
        &self.runnable.label
    }

    /// Whether the module exports a function named `name` (an optional entry, say).
    pub fn exports(&self, name: &str) -> bool {
        self.runnable.prepared.pre.module().get_export(name).is_some()
    }
}

/// Writes a checked snapshot into a fresh instance.
fn restore(
    store: &mut Store<Guest>,
    instance: &Instance,
    snapshot: &Snapshot,
    agent: &AgentRunnable,
) -> Result<(), RunError> {
    let broken = |m: String| RunError::Contract(format!("cannot restore the agent: {m}"));
    let memory = instance.get_memory(&mut *store, roam_abi::MEMORY_EXPORT).ok_or_else(|| broken("no memory".into()))?;
    let current = memory.data_size(&*store) as u64;
    if snapshot.memory_bytes > current {
        let pages = (snapshot.memory_bytes - current) / crate::snapshot::WASM_PAGE;
        memory.grow(&mut *store, pages).map_err(|e| broken(format!("cannot grow memory: {e}")))?;
    }
    let data = memory.data_mut(&mut *store);
    for chunk in &snapshot.chunks {
        let start = chunk.offset as usize;
        let target = data
            .get_mut(start..start + chunk.bytes.len())
            .ok_or_else(|| broken(format!("chunk at {start} is out of bounds")))?;
        target.copy_from_slice(&chunk.bytes);
    }
    for ((name, _), value) in agent.slots.slots.iter().zip(&snapshot.globals) {
        let global = instance.get_global(&mut *store, name).ok_or_else(|| broken(format!("no global {name}")))?;
        let v = match *value {
            GlobalValue::I32(v) => Val::I32(v),
            GlobalValue::I64(v) => Val::I64(v),
            GlobalValue::F32(v) => Val::F32(v),
            GlobalValue::F64(v) => Val::F64(v),
        };
        global.set(&mut *store, v).map_err(|e| broken(format!("global {name}: {e}")))?;
    }
    Ok(())
}

/// Reads an agent's memory (as pages changed since instantiation) and mutable globals.
fn capture(store: &mut Store<Guest>, instance: &Instance, agent: &AgentRunnable) -> Snapshot {
    let mut globals = Vec::with_capacity(agent.slots.slots.len());
    for (name, _) in &agent.slots.slots {
        let Some(global) = instance.get_global(&mut *store, name) else { continue };
        globals.push(match global.get(&mut *store) {
            Val::I64(v) => GlobalValue::I64(v),
            Val::F32(v) => GlobalValue::F32(v),
            Val::F64(v) => GlobalValue::F64(v),
            Val::I32(v) => GlobalValue::I32(v),
            // `instrument` admits only numeric mutable globals.
            _ => GlobalValue::I32(0),
        });
    }
    let memory = instance.get_memory(&mut *store, roam_abi::MEMORY_EXPORT);
    let data = memory.map(|m| m.data(&*store)).unwrap_or(&[]);
    Snapshot::capture(data, &agent.initial, globals)
}

/// The host's wasmtime engine, with its linker and code caches.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<Guest>,
    limits: Limits,
    /// Where compiled code is cached across restarts; `None` keeps it in memory only.
    code_dir: Option<PathBuf>,
    /// Identifies this engine's code format in cache file names.
    fingerprint: String,
    /// `InstancePre` per module hash: instantiation skips compilation and import resolution.
    prepared: Mutex<Bounded<String, Arc<Prepared>>>,
    /// Stops the epoch ticker when the engine is dropped.
    stop: Arc<AtomicBool>,
    /// How many calls run demoted: while any does, the epoch ticks at [`YIELD_EVERY`].
    demoted: Arc<AtomicUsize>,
    /// Counts where compiled code came from.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("limits", &self.limits).field("code_dir", &self.code_dir).finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Engine {
    /// Builds the engine. `code_dir` caches compiled code on disk (created if missing); `metrics`
    /// counts where code came from.
    pub fn new(limits: Limits, code_dir: Option<PathBuf>, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(limits.stack_bytes);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(limits.instances);
        pool.total_memories(limits.instances);
        pool.total_tables(limits.instances);
        pool.max_memory_size(limits.memory_bytes);
        pool.table_elements(limits.table_elements);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot configure the Wasm engine: {e}"))?;

        let mut linker = Linker::new(&engine);
        guest::register(&mut linker).map_err(|e| anyhow::anyhow!("cannot link host functions: {e}"))?;
        wasi::register(&mut linker).map_err(|e| anyhow::anyhow!("cannot link WASI: {e}"))?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!("{:016x}", hasher.finish());

        if let Some(dir) = &code_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create code cache {}: {e}", dir.display()))?;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let demoted = Arc::new(AtomicUsize::new(0));
        spawn_ticker(engine.clone(), stop.clone(), demoted.clone())?;
        Ok(Self {
            engine,
            linker,
            limits,
            code_dir,
            fingerprint,
            prepared: Mutex::new(Bounded::new(crate::cache::MODULES_KEPT)),
            stop,
            demoted,
            metrics,
        })
    }

    /// The limits calls run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles (or loads from the disk cache) and links code derived from a verified module.
    /// `key` names it in the caches: the module's address, plus a suffix for instrumented code.
    fn prepare(&self, key: &str, bytes: &[u8]) -> Result<Arc<Prepared>, LoadError> {
        if let Some(p) = lock(&self.prepared).get(key) {
            self.metrics.module_load("memory");
            return Ok(p.clone());
        }
        let compiled = self.compile(key, bytes)?;
        let pre = self.linker.instantiate_pre(&compiled).map_err(|e| LoadError::Link(link_error(&e)))?;
        let prepared = Arc::new(Prepared {
            pre,
            wasi: wasi::imported_by(&compiled),
            reactor: compiled.get_export(wasi::INITIALIZE).is_some(),
            last_call_us: AtomicU64::new(0),
        });
        lock(&self.prepared).insert(key.to_owned(), prepared.clone());
        Ok(prepared)
    }

    fn compile(&self, key: &str, bytes: &[u8]) -> Result<Module, LoadError> {
        refuse_start_function(bytes)?;
        let Some(dir) = &self.code_dir else {
            self.metrics.module_load("compile");
            return Module::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")));
        };
        let path = dir.join(format!("{key}.{}.cwasm", self.fingerprint));
        if let Some(m) = self.load_cached(&path) {
            self.metrics.module_load("disk");
            return Ok(m);
        }
        self.metrics.module_load("compile");
        let compiled = Module::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let artifact =
            compiled.serialize().map_err(|e| LoadError::Compile(format!("cannot serialize compiled code: {e:#}")))?;
        // The cache only saves a later compile: a host whose disk is full still runs the code.
        if let Err(e) = write_artifact(&path, &artifact) {
            tracing::warn!(path = %path.display(), "cannot write the code cache: {e}");
        }
        Ok(compiled)
    }

    /// Loads compiled code this host wrote earlier. The artifact ends with the SHA-256 of what
    /// precedes it, so a torn or corrupted file is recompiled, never deserialized.
    fn load_cached(&self, path: &Path) -> Option<Module> {
        let bytes = std::fs::read(path).ok()?;
        let (artifact, digest) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if roam_keys::hash_module(artifact).as_bytes().as_slice() != digest {
            tracing::warn!(path = %path.display(), "compiled code cache is corrupt; recompiling");
            return None;
        }
        #[allow(unsafe_code)]
        // SAFETY: the artifact was produced by `Module::serialize` of this engine configuration
        // (the file name carries the engine fingerprint) from a verified module, written by this
        // host into its own data directory, and its digest matches: it never came from the
        // network. wasmtime also checks the engine compatibility header itself.
        let module = unsafe { Module::deserialize(&self.engine, artifact) };
        module
            .inspect_err(|e| tracing::warn!(path = %path.display(), "cannot load cached code ({e}); recompiling"))
            .ok()
    }

    /// Compiles (or finds) a verified module and pairs it with what its signature grants.
    pub fn load(&self, hash: ModuleHash, module: &VerifiedModule) -> Result<Runnable, LoadError> {
        Ok(runnable(self.prepare(&hash.to_string(), module.bytes())?, module))
    }

    /// Runs a module's entry point once on `input` (CBOR), with `resources` to open, within the
    /// limits. Hosts (remote evaluation) and clients (code on demand) both run modules here.
    pub fn run(&self, module: &Runnable, input: Vec<u8>, resources: Arc<Resources>) -> Result<Vec<u8>, RunError> {
        let guest = self.guest(module, input, resources);
        let (output, ()) = self.call(
            &module.prepared,
            guest,
            roam_abi::QUERY_EXPORT,
            |store, instance| self.initialize(&module.prepared, store, instance),
            |_, _, _| Ok(()),
        )?;
        Ok(output)
    }

    /// Loads an agent module: instruments it so every mutable global can be carried, compiles
    /// it, and records its initial memory image (what snapshots are compared against).
    pub fn load_agent(&self, hash: ModuleHash, module: &VerifiedModule) -> Result<AgentRunnable, LoadError> {
        let (bytes, slots) = instrument(module.bytes()).map_err(|e| LoadError::Link(e.to_string()))?;
        let prepared = self.prepare(&format!("{hash}-agent"), &bytes)?;
        let runnable = runnable(prepared, module);
        let mut store = Store::new(&self.engine, self.guest(&runnable, Vec::new(), Arc::default()));
        store.limiter(|g| g);
        let instance = runnable.prepared.pre.instantiate(&mut store).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, roam_abi::MEMORY_EXPORT)
            .ok_or_else(|| LoadError::Link("an agent module must export its memory as `memory`".into()))?;
        let initial: Arc<[u8]> = memory.data(&store).into();
        for (name, _) in &slots.slots {
            if instance.get_global(&mut store, name).is_none() {
                return Err(LoadError::Link(format!("global {name} is not exported after instrumentation")));
            }
        }
        Ok(AgentRunnable { runnable, slots, initial })
    }

    /// Runs one of an agent's entries: restores `from` first (if any), calls `entry` with
    /// `input`, then, if `leaving` says the result means the agent moves, its depart entry, and
    /// captures the agent's state once every entry returned.
    pub fn run_agent(
        &self,
        agent: &AgentRunnable,
        entry: &str,
        input: Vec<u8>,
        resources: Arc<Resources>,
        from: Option<&Snapshot>,
        leaving: impl FnOnce(&[u8]) -> bool + Send,
    ) -> Result<(Vec<u8>, Snapshot), RunError> {
        let guest = self.guest(&agent.runnable, input, resources);
        self.call(
            &agent.runnable.prepared,
            guest,
            entry,
            // A reactor is initialized when the agent starts; on arrival its memory already
            // holds what that did.
            |store, instance| match from {
                Some(s) => restore(store, instance, s, agent),
                None => self.initialize(&agent.runnable.prepared, store, instance),
            },
            |store, instance, output| {
                if leaving(output)
                    && let Ok(depart) = instance.get_typed_func::<(), ()>(&mut *store, roam_abi::AGENT_DEPART)
                {
                    depart.call(&mut *store, ())?;
                    // Whatever depart reports is not the agent's decision.
                    let _ = store.data_mut().take_result();
                }
                Ok(capture(store, instance, agent))
            },
        )
    }

    fn guest(&self, module: &Runnable, input: Vec<u8>, resources: Arc<Resources>) -> Guest {
        Guest::new(
            input,
            module.label.clone(),
            module.capabilities.clone(),
            resources,
            &self.limits,
            Instant::now() + self.limits.time,
        )
    }

    /// Calls a reactor's `_initialize` (its libc's and language's constructors), if it
    /// exports one; most modules do not, and pay no lookup for it.
    fn initialize(&self, prepared: &Prepared, store: &mut Store<Guest>, instance: &Instance) -> Result<(), RunError> {
        if !prepared.reactor {
            return Ok(());
        }
        let init = instance.get_typed_func::<(), ()>(&mut *store, wasi::INITIALIZE).map_err(|_| {
            RunError::Instantiate(format!(
                "the module exports `{}`, which must be a function with no parameters and no results",
                wasi::INITIALIZE
            ))
        })?;
        init.call(&mut *store, ()).map_err(|e| self.classify(e, store.data()))
    }

    /// Instantiates, runs `before` (an initialization or a restore), calls `entry`, takes its
    /// result, and runs `after` (a capture) on the live instance: all within the call's limits.
    fn call<T: Send>(
        &self,
        prepared: &Prepared,
        guest: Guest,
        entry: &str,
        before: impl FnOnce(&mut Store<Guest>, &Instance) -> Result<(), RunError> + Send,
        after: impl FnOnce(&mut Store<Guest>, &Instance, &[u8]) -> wasmtime::Result<T> + Send,
    ) -> Result<(Vec<u8>, T), RunError> {
        // wasmtime-wasi's synchronous functions each block on a future, which a thread of a
        // Tokio runtime must not do: a WASI module called from async code runs on a thread
        // of its own.
        if prepared.wasi && tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|scope| {
                let call = scope.spawn(|| self.call_here(prepared, guest, entry, before, after));
                call.join().unwrap_or_else(|_| Err(RunError::Instantiate("the module's thread failed".into())))
            });
        }
        self.call_here(prepared, guest, entry, before, after)
    }

    fn call_here<T>(
        &self,
        prepared: &Prepared,
        guest: Guest,
        entry: &str,
        before: impl FnOnce(&mut Store<Guest>, &Instance) -> Result<(), RunError>,
        after: impl FnOnce(&mut Store<Guest>, &Instance, &[u8]) -> wasmtime::Result<T>,
    ) -> Result<(Vec<u8>, T), RunError> {
        let mut store = Store::new(&self.engine, guest);
        store.limiter(|g| g);
        let started = Instant::now();
        let (demote_at, end) = (started + DEMOTE_AFTER, started + self.limits.time);
        let _long = RecordLength { started, prepared };
        // Held while the call runs demoted; the callback owns it, so it ends with the store.
        let mut demoted = prepared.last_ran_past(LONG_CALL).then(|| Demoted::enter(&self.demoted));
        let count = self.demoted.clone();
        // Checked at every tick: the deadline, the demotion, and, once demoted, a turn for
        // anything else runnable on this core (see `YIELD_EVERY`).
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            if now >= end {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            if demoted.is_none() && now >= demote_at {
                demoted = Some(Demoted::enter(&count));
            }
            crate::workers::give_way();
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });

        let instance = prepared.pre.instantiate(&mut store).map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("concurrent") || text.contains("maximum") {
                RunError::Busy
            } else if let Some(denied) = store.data().denied() {
                RunError::OutOfMemory(denied.to_owned())
            } else {
                RunError::Instantiate(text)
            }
        })?;
        before(&mut store, &instance)?;
        let func = instance
            .get_typed_func::<(), ()>(&mut store, entry)
            .map_err(|_| RunError::Instantiate(missing_entry(prepared.pre.module(), entry)))?;
        if let Err(e) = func.call(&mut store, ()) {
            return Err(self.classify(e, store.data()));
        }
        let output = store.data_mut().take_result()?;
        match after(&mut store, &instance, &output) {
            Ok(t) => Ok((output, t)),
            Err(e) => Err(self.classify(e, store.data())),
        }
    }

    fn classify(&self, e: wasmtime::Error, guest: &Guest) -> RunError {
        if let Some(denied) = guest.denied() {
            return RunError::OutOfMemory(denied.to_owned());
        }
        if let Some(trap) = e.downcast_ref::<HostTrap>() {
            return match trap {
                HostTrap::Deadline => RunError::OutOfTime(self.limits.time),
                HostTrap::ResultTooLarge { size, max } => RunError::ResultTooLarge { size: *size, max: *max },
                other => RunError::Contract(other.to_string()),
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => RunError::OutOfTime(self.limits.time),
            Some(Trap::StackOverflow) => RunError::StackOverflow(self.limits.stack_bytes),
            Some(trap) => RunError::Trap { reason: trap.to_string(), message: guest.module_error() },
            None => RunError::Trap { reason: format!("{e:#}"), message: guest.module_error() },
        }
    }
}

/// Refuses a module with a start function: it would run at every instantiation, before every
/// entry and before an agent's memory is restored, so setup it does would happen again on every
/// call and every host. A reactor's `_initialize` is the way to run code once, at start.
fn refuse_start_function(bytes: &[u8]) -> Result<(), LoadError> {
    use wasmtime::wasmparser::{Parser, Payload};
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::StartSection { .. }) => {
                return Err(LoadError::Link(
                    "the module has a start function, which would run again before every call; export \
                     `_initialize` instead to run code once when the module starts (see sdk/ABI.md)"
                        .into(),
                ));
            }
            // Nothing after the code section can be a start section.
            Ok(Payload::CodeSectionStart { .. }) => return Ok(()),
            Ok(_) => {}
            // Compiling reports it better.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Why a module lacks `entry`, in terms of the ABI rather than of one SDK.
fn missing_entry(module: &Module, entry: &str) -> String {
    let what = match entry {
        roam_abi::QUERY_EXPORT => "a query's or code module's entry point",
        roam_abi::AGENT_MANIFEST => "an agent's manifest",
        _ => "an agent's entry point",
    };
    let mut message =
        format!("the module does not export `{entry}` ({what}), a function with no parameters and no results");
    if module.get_export("_start").is_some() {
        message.push_str(
            "; it exports `_start`, so it was built as a command: build it as a reactor (clang \
             -mexec-model=reactor, Rust crate-type cdylib, zig build-exe -fno-entry)",
        );
    }
    message.push_str("; see sdk/ABI.md");
    message
}

/// Why a module cannot be linked: an import the host does not offer is named as such.
fn link_error(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("unknown import") {
        format!(
            "{text}: a module may import only the functions of `{}` and of `{}` (WASI preview 1) \
             that sdk/ABI.md lists",
            roam_abi::IMPORT_MODULE,
            wasi::MODULE
        )
    } else {
        text
    }
}

/// Records, when a call ends however it ends, how long it ran.
struct RecordLength<'a> {
    started: Instant,
    prepared: &'a Prepared,
}

impl Drop for RecordLength<'_> {
    fn drop(&mut self) {
        let took = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.prepared.last_call_us.store(took, Ordering::Relaxed);
    }
}

/// A call running demoted, counted in the engine's `demoted` while it lasts.
struct Demoted(Arc<AtomicUsize>);

impl Demoted {
    /// Demotes the calling thread (see [`crate::workers::demote`]) and counts the call.
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        crate::workers::demote();
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Demoted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_ticker(engine: wasmtime::Engine, stop: Arc<AtomicBool>, demoted: Arc<AtomicUsize>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("roam-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let fast = demoted.load(Ordering::Relaxed) > 0;
                std::thread::sleep(if fast { YIELD_EVERY } else { EPOCH_TICK });
                engine.increment_epoch();
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker: {e}"))?;
    Ok(())
}

/// Writes `artifact` followed by its SHA-256. Not synced: a lost or torn file is caught by
/// its hash and compiled again.
fn write_artifact(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    crate::state::write_file(path, &[artifact, roam_keys::hash_module(artifact).as_bytes()], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch ticks fast only while some call runs demoted: each is counted until it ends,
    /// however it ends.
    #[test]
    fn a_demoted_call_is_counted_until_it_ends() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = Demoted::enter(&count);
        let second = Demoted::enter(&count);
        assert_eq!(count.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        let ended = std::panic::catch_unwind(move || {
            let _second = second;
            #[allow(clippy::panic)]
            {
                panic!("a call that ends in a panic");
            }
        });
        assert!(ended.is_err());
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
