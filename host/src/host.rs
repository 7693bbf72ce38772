//! A host: its key, trust store, state, resources and engine, and the handlers that serve
//! requests with them.
//!
//! Request path: `server` (listener → connection → frame → [`Request`]) → [`Host::handle`] →
//! a worker from the bounded pool → module admission (verify, store, compile) → the engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use roam_keys::{Kind, ModuleHash, PublicKey, SecretKey, TrustStore, VerifiedModule, VerifyContext, VerifyError};
use tokio::sync::{Notify, Semaphore};

use crate::cache::{Bounded, MODULES_KEPT};
use crate::config::HostConfig;
use crate::engine::{Engine, LoadError, RunError, Runnable};
use crate::protocol::{ErrorKind, ModuleInfo, ModuleRef, RemoteError, Request, Response};
use crate::resources::{ResourceType, Resources};
use crate::state::{State, now_secs};
use crate::sync::lock;
use crate::workers::Workers;

/// A module admitted by this host: verified, stored and compiled.
#[derive(Debug)]
struct Admitted {
    verified: VerifiedModule,
    runnable: Runnable,
}

/// A running host's shared parts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Host {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) key: Arc<SecretKey>,
    trust: TrustStore,
    /// Host keys this host accepts agents, reports and forwarded calls from.
    pub(crate) peers: TrustStore,
    pub(crate) state: Arc<State>,
    pub(crate) resources: Arc<Resources>,
    pub(crate) engine: Engine,
    pub(crate) data_dir: PathBuf,
    /// The address other hosts reach this one at; set once it listens.
    pub(crate) address: OnceLock<String>,
    /// Modules admitted since start, by the hash of their signed bytes.
    admitted: Mutex<Bounded<ModuleHash, Arc<Admitted>>>,
    /// Agent modules loaded since start.
    pub(crate) agent_code: Mutex<Bounded<ModuleHash, Arc<crate::agents::AgentCode>>>,
    /// Wakes the agent driver when there is work.
    pub(crate) wake: Notify,
    /// Transfers and report deliveries under way, so each runs once at a time.
    in_flight: Mutex<std::collections::HashSet<String>>,
    /// Idle proven connections to peers, by address, with when each was last used.
    pub(crate) peer_pool: Mutex<HashMap<String, Vec<(crate::client::Client, std::time::Instant)>>>,
    /// Bounds how many modules run at once, so slow modules never starve the accept loop.
    workers: Arc<Semaphore>,
    /// The threads modules run on, one per worker permit.
    threads: Workers,
    /// Permits for calls of modules that run long (see `Runnable::runs_long`): one fewer than
    /// `workers` (but at least one), so however many long calls arrive, a module thread stays
    /// free for short ones.
    long_calls: Arc<Semaphore>,
    queue_timeout: Duration,
    pub(crate) max_module: usize,
    max_frame: usize,
    /// How long a peer may take over one frame, from its first byte.
    frame_timeout: Duration,
    max_connections: usize,
    /// Limits given to agents launched here.
    pub(crate) agent_limits: crate::protocol::wire::AgentLimits,
    /// Largest table an agent carries by copy or move.
    pub(crate) max_copy: usize,
}

impl Host {
    /// Opens a host from its configuration: loads the key (creating it if missing), the trust
    /// store, the state database and the resources, and builds the engine.
    pub fn open(config: &HostConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        config.check()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        let key = Arc::new(load_or_create_key(config)?);
        let trust = TrustStore::load(&config.trust)?;
        let peers = match &config.peers {
            Some(dir) => TrustStore::load(dir)?,
            None => TrustStore::empty(),
        };
        let state = Arc::new(State::open(&config.data_dir)?);
        state.set_durable(config.durable)?;
        state.transaction(crate::agents::store::create)?;
        let mut resources = Resources::default();
        for r in &config.resources {
            match (r.kind, &r.source) {
                (ResourceType::Table, Some(source)) => {
                    resources.add_table(&r.name, r.attachment, source, &config.data_dir)?;
                }
                _ => resources.add_log(&r.name, r.attachment, state.clone()),
            }
        }
        let limits = config.limits.engine();
        let engine = Engine::new(limits, Some(config.data_dir.join("code")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                key,
                trust,
                peers,
                state,
                resources: Arc::new(resources),
                engine,
                data_dir: config.data_dir.clone(),
                address: OnceLock::new(),
                admitted: Mutex::new(Bounded::new(MODULES_KEPT)),
                agent_code: Mutex::new(Bounded::new(MODULES_KEPT)),
                wake: Notify::new(),
                in_flight: Mutex::new(std::collections::HashSet::new()),
                peer_pool: Mutex::new(HashMap::new()),
                workers: Arc::new(Semaphore::new(config.limits.workers())),
                threads: Workers::start("roam-worker", config.limits.workers())
                    .context("cannot start the worker threads")?,
                long_calls: Arc::new(Semaphore::new(config.limits.workers().saturating_sub(1).max(1))),
                queue_timeout: Duration::from_millis(config.limits.queue_ms),
                max_module: config.limits.module_kib << 10,
                max_frame: config.limits.frame_kib << 10,
                frame_timeout: Duration::from_millis(config.limits.frame_timeout_ms),
                max_connections: config.limits.max_connections,
                agent_limits: config.limits.agents(),
                max_copy: config.limits.copy_kib << 10,
            }),
        })
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host's public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.key.public()
    }

    /// The host's key, which it proves in every handshake and signs its messages to peers with.
    pub(crate) fn key(&self) -> &SecretKey {
        &self.inner.key
    }

    /// The largest frame the host reads.
    pub fn max_frame(&self) -> usize {
        self.inner.max_frame
    }

    /// How long a peer may take to send (or read) one whole frame, from its first byte.
    pub fn frame_timeout(&self) -> Duration {
        self.inner.frame_timeout
    }

    /// How many connections the host serves at once.
    pub fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    /// The host's state database.
    pub fn state(&self) -> &State {
        &self.inner.state
    }

    /// Records the address other hosts reach this one at (its agents' home address). Only the
    /// first call counts.
    pub fn set_address(&self, address: String) {
        let _ = self.inner.address.set(address);
    }

    /// Moves agents along until `stop` fires: runs ready agents on the worker pool, transfers
    /// leaving ones, retries parked ones, and sends reports home.
    pub async fn drive_agents(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.agent_round().await;
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(crate::agents::RETRY_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn agent_round(&self) {
        use crate::agents::store::{self, row_state};
        let inner = &self.inner;
        if let Ok(ready) = store::in_states(&inner.state, &[row_state::READY]) {
            let mut running = Vec::new();
            for row in ready {
                let Ok(permit) = inner.workers.clone().acquire_owned().await else { return };
                let worker = inner.clone();
                running.push(inner.threads.run(move || {
                    let _permit = permit;
                    worker.run_ready(row);
                }));
            }
            for r in running {
                let _ = r.await;
            }
        }
        // Reports and transfers run as tasks of their own, one per destination and one per
        // agent, so a slow or dead peer holds up only what is bound for it.
        if let Ok(dests) = store::outbox_destinations(&inner.state) {
            for dest in dests {
                self.spawn_once(
                    format!("report {dest}"),
                    move |inner| async move { inner.flush_outbox_to(&dest).await },
                );
            }
        }
        let moving = store::due_to_move(&inner.state, MOVES_PER_ROUND, |id, hop| {
            lock(&inner.in_flight).contains(&transfer_key(id, hop))
        });
        for row in moving.unwrap_or_default() {
            let key = transfer_key(&row.id, row.hop);
            self.spawn_once(key, move |inner| async move { inner.transfer(row).await });
        }
    }

    /// Spawns `work` unless a task with the same key is still running.
    fn spawn_once<F, Fut>(&self, key: String, work: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !lock(&self.inner.in_flight).insert(key.clone()) {
            return;
        }
        let inner = self.inner.clone();
        // No wake-up when it ends: work that leaves something new to do says so itself, and a
        // wake-up per finished task made hosts with many parked agents spin.
        tokio::spawn(async move {
            work(inner.clone()).await;
            lock(&inner.in_flight).remove(&key);
        });
    }

    /// Serves one request from a client that proved the key `peer` in the handshake (`None`:
    /// an anonymous client).
    pub async fn handle(&self, request: Request, peer: Option<PublicKey>) -> Response {
        if let Some(signer) = request.host_signer()
            && let Err(e) = self.inner.check_sender(signer, peer, matches!(request, Request::RecallAgent(_)))
        {
            return Response::Error(e);
        }
        match request {
            Request::Ping => Response::Pong,
            Request::Eval { module, input } => self.eval(module, input).await.unwrap_or_else(Response::Error),
            Request::Publish { module } => {
                let inner = self.inner.clone();
                blocking(move || inner.publish(module).map(Response::Published)).await
            }
            Request::List => {
                self.inner.state.modules().map_or_else(|e| Response::Error(internal(e)), Response::Modules)
            }
            Request::Resolve { name, version } => match self.inner.state.resolve(&name, version.as_ref()) {
                Ok(Some(info)) => Response::Resolved(info),
                Ok(None) => Response::Error(RemoteError::new(
                    ErrorKind::NotFound,
                    match version {
                        Some(v) => format!("this host holds no module {name}@{v}"),
                        None => format!("this host holds no module named {name}"),
                    },
                )),
                Err(e) => Response::Error(internal(e)),
            },
            Request::Fetch { hash, offset, max } => {
                let inner = self.inner.clone();
                blocking(move || inner.fetch(hash, offset, max)).await
            }
            Request::Launch { module, input } => {
                let inner = self.inner.clone();
                blocking(move || inner.launch(module, input).map(|id| Response::Launched { id })).await
            }
            Request::Transfer { envelope, snapshot } => {
                self.inner.receive(envelope, snapshot).await.unwrap_or_else(Response::Error)
            }
            Request::Report(signed) => self.inner.receive_report(&signed).unwrap_or_else(Response::Error),
            Request::Agents { id } => self.inner.agents(id.as_deref()).map_or_else(Response::Error, Response::Agents),
            Request::Recall { id } => self.inner.recall(&id).await.unwrap_or_else(Response::Error),
            Request::RecallAgent(signed) => self.inner.receive_recall(&signed).unwrap_or_else(Response::Error),
            Request::Call(signed) => {
                let inner = self.inner.clone();
                blocking(move || inner.receive_call(&signed)).await
            }
        }
    }

    /// Fetches a module this host lacks from a peer by hash, verifies it against this host's
    /// trust store, and stores it. The same download path as `roam run` uses.
    pub async fn fetch_from(&self, peer: &str, hash: ModuleHash) -> Result<ModuleInfo, RemoteError> {
        if let Some(info) = self.inner.state.module(&hash).map_err(internal)? {
            return Ok(info);
        }
        let bytes = crate::fetch::download(peer, hash, self.inner.max_module, Some(&self.inner.key), None)
            .await
            .map_err(|e| RemoteError::new(ErrorKind::NotFound, format!("cannot fetch {hash} from {peer}: {e}")))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.publish(bytes))
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?
    }

    async fn eval(&self, module: ModuleRef, input: Vec<u8>) -> Result<Response, RemoteError> {
        // A module known to run long waits here for a long-call permit, before it takes a module
        // thread. (One sent whole is checked once admitted, in `eval_blocking`.)
        let long = match &module {
            ModuleRef::Hash(hash) if self.inner.runs_long(*hash) => Some(self.queue(&self.inner.long_calls).await?),
            _ => None,
        };
        let permit = self.queue(&self.inner.workers).await?;
        let inner = self.inner.clone();
        let job = self.inner.threads.run(move || {
            let _permit = permit;
            inner.eval_blocking(module, input, long)
        });
        job.await
            .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("the evaluation failed inside the host: {e}")))?
    }

    /// Waits, at most the queue timeout, for one of `permits`.
    async fn queue(&self, permits: &Arc<Semaphore>) -> Result<tokio::sync::OwnedSemaphorePermit, RemoteError> {
        tokio::time::timeout(self.inner.queue_timeout, permits.clone().acquire_owned())
            .await
            .map_err(|_| RemoteError::new(ErrorKind::Busy, "every worker stayed busy; retry shortly"))?
            .map_err(|_| RemoteError::new(ErrorKind::ShuttingDown, "the host is shutting down"))
    }
}

/// Runs a blocking handler off the async runtime.
async fn blocking(f: impl FnOnce() -> Result<Response, RemoteError> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.unwrap_or_else(Response::Error),
        Err(e) => {
            Response::Error(RemoteError::new(ErrorKind::Internal, format!("the request failed inside the host: {e}")))
        }
    }
}

/// The network form of a state failure: a full disk is worth retrying later, anything else is
/// the host's own fault. Either way the operator hears of it, not only the peer.
pub(crate) fn internal(e: crate::state::StateError) -> RemoteError {
    tracing::warn!("{e}");
    let kind = match e {
        crate::state::StateError::Full { .. } => ErrorKind::Busy,
        _ => ErrorKind::Internal,
    };
    RemoteError::new(kind, e.to_string())
}

/// The largest chunk a fetch returns, so one request never holds a whole large module.
pub const MAX_CHUNK: u32 = 1 << 20;

/// The most transfers one round of the agent driver starts: a host with many parked agents
/// retries them a batch at a time instead of loading every one of them at once.
const MOVES_PER_ROUND: usize = 256;

/// The key a transfer runs under in `in_flight`.
fn transfer_key(id: &str, hop: u32) -> String {
    format!("transfer {id} {hop}")
}

impl Inner {
    /// Stores a signed code or agent module in the code repository, after verifying it.
    fn publish(&self, bytes: Vec<u8>) -> Result<ModuleInfo, RemoteError> {
        let hash = roam_keys::hash_module(&bytes);
        if let Some(info) = self.state.module(&hash).map_err(internal)? {
            return Ok(info);
        }
        let verified = self.verify(bytes, None)?;
        let claims = verified.claims();
        if claims.kind == Kind::Query {
            return Err(RemoteError::new(
                ErrorKind::Refused,
                "the code repository holds code and agent modules; a query module is sent with `roam eval`",
            ));
        }
        if let Some(existing) = self.state.resolve(&claims.name, Some(&claims.version)).map_err(internal)? {
            return Err(RemoteError::new(
                ErrorKind::Refused,
                format!(
                    "{}@{} is already published with other content ({}); publish a new version",
                    claims.name, claims.version, existing.hash
                ),
            ));
        }
        self.store(hash, &verified)?;
        tracing::info!(%hash, name = %claims.name, version = %claims.version, kind = %claims.kind, "published module");
        self.state
            .module(&hash)
            .map_err(internal)?
            .ok_or_else(|| RemoteError::new(ErrorKind::Internal, "the module was stored but cannot be read back"))
    }

    fn fetch(&self, hash: ModuleHash, offset: u64, max: u32) -> Result<Response, RemoteError> {
        let chunk = self.state.read_module_chunk(&hash, offset, max.min(MAX_CHUNK) as usize).map_err(internal)?;
        let Some((total, bytes)) = chunk else {
            return Err(RemoteError::new(ErrorKind::NotFound, format!("this host holds no module {hash}")));
        };
        if offset == 0 {
            self.state.count_download(&hash).map_err(internal)?;
        }
        Ok(Response::Chunk { total, bytes })
    }

    /// Runs every check on a module, with one clock reading.
    pub(crate) fn verify(&self, bytes: Vec<u8>, kind: Option<Kind>) -> Result<VerifiedModule, RemoteError> {
        self.verify_with(bytes, kind, &*self.state)
    }

    /// [`verify`](Self::verify) against another version history (none, for agents already
    /// launched).
    pub(crate) fn verify_with(
        &self,
        bytes: Vec<u8>,
        kind: Option<Kind>,
        history: &dyn roam_keys::VersionHistory,
    ) -> Result<VerifiedModule, RemoteError> {
        let ctx = VerifyContext {
            trust: &self.trust,
            now: now_secs(),
            max_size: self.max_module,
            expected_kind: kind,
            history,
        };
        roam_keys::verify(bytes, &ctx).map_err(|e| verify_error(&e))
    }

    /// Stores a verified module and records its version as accepted.
    pub(crate) fn store(&self, hash: ModuleHash, verified: &VerifiedModule) -> Result<(), RemoteError> {
        let claims = verified.claims();
        self.state.store_module(hash, verified.bytes(), claims).map_err(internal)?;
        self.state.accept_version(&claims.name, &claims.version).map_err(internal)
    }

    /// Runs a query module; `long` is the long-call permit it waited for, if it is known to run
    /// long.
    fn eval_blocking(
        &self,
        module: ModuleRef,
        input: Vec<u8>,
        long: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Response, RemoteError> {
        let whole = matches!(module, ModuleRef::Bytes(_));
        let admitted = match module {
            ModuleRef::Hash(hash) => match self.find(hash)? {
                Some(a) => a,
                None => return Ok(Response::NeedModule(hash)),
            },
            ModuleRef::Bytes(bytes) => {
                let hash = roam_keys::hash_module(&bytes);
                match self.cached(hash)? {
                    Some(a) => a,
                    None => self.admit(hash, bytes)?,
                }
            }
        };
        // A long module sent whole, so without its long-call permit: it runs only if one is
        // free now, since waiting here would hold a module thread.
        let _long = match long {
            None if whole && admitted.runnable.runs_long() => {
                Some(self.long_calls.clone().try_acquire_owned().map_err(|_| {
                    RemoteError::new(
                        ErrorKind::Busy,
                        "every module thread but one is running a long call; retry shortly",
                    )
                })?)
            }
            long => long,
        };
        let output = self.engine.run(&admitted.runnable, input, self.resources.clone()).map_err(run_error)?;
        Ok(Response::Result(output))
    }

    /// Whether the module with this hash is admitted here and its last call ran long.
    fn runs_long(&self, hash: ModuleHash) -> bool {
        lock(&self.admitted).get(&hash).is_some_and(|a| a.runnable.runs_long())
    }

    /// A module admitted earlier, still within its validity window.
    fn cached(&self, hash: ModuleHash) -> Result<Option<Arc<Admitted>>, RemoteError> {
        let Some(a) = lock(&self.admitted).get(&hash).cloned() else {
            return Ok(None);
        };
        let claims = a.verified.claims();
        let now = now_secs();
        if now >= claims.expires {
            let e = VerifyError::Expired { expires: claims.expires, now };
            return Err(verify_error(&e));
        }
        if now < claims.not_before {
            let e = VerifyError::NotYetValid { not_before: claims.not_before, now };
            return Err(verify_error(&e));
        }
        Ok(Some(a))
    }

    /// A module by hash: admitted already, or in the store from an earlier run.
    fn find(&self, hash: ModuleHash) -> Result<Option<Arc<Admitted>>, RemoteError> {
        if let Some(a) = self.cached(hash)? {
            return Ok(Some(a));
        }
        let stored = self.state.load_module(&hash).map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
        match stored {
            // A stored file whose hash no longer matches is treated as missing: the client
            // sends the module again and the good copy replaces it.
            Some(bytes) if roam_keys::hash_module(&bytes) == hash => self.admit(hash, bytes).map(Some),
            _ => Ok(None),
        }
    }

    /// Verifies a module (every check, before anything is compiled), stores it, and compiles it.
    fn admit(&self, hash: ModuleHash, bytes: Vec<u8>) -> Result<Arc<Admitted>, RemoteError> {
        let verified = self.verify(bytes, Some(Kind::Query))?;
        self.store(hash, &verified)?;
        let claims = verified.claims();
        let runnable = self.engine.load(hash, &verified).map_err(load_error)?;
        tracing::info!(%hash, name = %claims.name, version = %claims.version, signer = verified.signer_name(), "admitted module");
        let admitted = Arc::new(Admitted { runnable, verified });
        lock(&self.admitted).insert(hash, admitted.clone());
        Ok(admitted)
    }
}

fn verify_error(e: &VerifyError) -> RemoteError {
    let kind = match e {
        VerifyError::CapabilityDenied { .. } => ErrorKind::Capability,
        _ => ErrorKind::Verification,
    };
    RemoteError::new(kind, format!("module refused: {e}"))
}

/// The network form of a load failure.
pub fn load_error(e: LoadError) -> RemoteError {
    RemoteError::new(ErrorKind::Load, e.to_string())
}

/// The network form of a run failure.
pub fn run_error(e: RunError) -> RemoteError {
    let kind = match &e {
        RunError::OutOfTime(_) => ErrorKind::OutOfTime,
        RunError::OutOfMemory(_) => ErrorKind::OutOfMemory,
        RunError::StackOverflow(_) => ErrorKind::StackOverflow,
        RunError::Trap { .. } | RunError::Contract(_) | RunError::NoResult => ErrorKind::Trap,
        RunError::Module(_) => ErrorKind::Module,
        RunError::Busy => ErrorKind::Busy,
        RunError::Instantiate(_) => ErrorKind::Load,
    };
    RemoteError::new(kind, e.to_string())
}

fn load_or_create_key(config: &HostConfig) -> anyhow::Result<SecretKey> {
    let path = config.key.clone().unwrap_or_else(|| config.data_dir.join("host.key"));
    if path.exists() || config.key.is_some() {
        return Ok(SecretKey::load(&path)?);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let (key_path, _, public) = roam_keys::write_keypair(dir, "host")?;
    tracing::info!(key = %key_path.display(), %public, "created a new host key");
    Ok(SecretKey::load(&key_path)?)
}
