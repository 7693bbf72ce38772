//! A host: its key, trust store, state, resources and engine, and the handlers that serve
//! requests with them.
//!
//! Request path: `server` (listener → connection → frame → [`Request`]) → [`Host::handle`] →
//! a module thread from the bounded pool → admission (verify, store, accept the version) and
//! compilation → the engine. Agent requests go to [`Agents`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roam_keys::{Kind, ModuleHash, PublicKey, SecretKey, TrustStore, VerifiedModule, VerifyError};
use tokio::sync::Semaphore;

use crate::access::{ACCESS_FILE, Access, Quotas, Right};
use crate::admission::{Admission, Rollback};
use crate::agents::peers::Peers;
use crate::agents::{Agents, Parts, Viewer};
use crate::cache::{Bounded, MODULES_KEPT};
use crate::config::{ConnectionLimits, HostConfig, TableEngine};
use crate::engine::{Engine, Runnable};
use crate::protocol::{ErrorKind, ModuleInfo, ModuleRef, RemoteError, Request, Response};
use crate::refusal::{admit_error, internal, load_error, run_error, verify_error};
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
struct Inner {
    name: String,
    key: Arc<SecretKey>,
    state: Arc<State>,
    resources: Arc<Resources>,
    engine: Arc<Engine>,
    /// How modules enter this host's store: verified against its trust store first.
    admission: Arc<Admission>,
    /// Modules admitted since start, by the hash of their signed bytes.
    admitted: Mutex<Bounded<ModuleHash, Arc<Admitted>>>,
    /// The agents this host launched, holds or is home to.
    agents: Arc<Agents>,
    /// Bounds how many modules run at once, so slow modules never starve the accept loop.
    workers: Arc<Semaphore>,
    /// The threads modules run on, one per worker permit.
    threads: Arc<Workers>,
    /// Permits for calls of modules that run long (see `Runnable::runs_long`): one fewer than
    /// `workers` (but at least one), so however many long calls arrive, a module thread stays
    /// free for short ones.
    long_calls: Arc<Semaphore>,
    /// How many permits `workers` and `long_calls` hold when none is taken.
    workers_total: usize,
    long_calls_total: usize,
    queue_timeout: Duration,
    max_frame: usize,
    /// How long a peer may take over one frame, from its first byte.
    frame_timeout: Duration,
    connections: ConnectionLimits,
    /// How many launches and publishes each caller has left this hour.
    quotas: Quotas,
    /// Who may ask this host for what; replaced whole on a reload.
    access: std::sync::RwLock<Arc<Access>>,
    /// What it counts, for `/metrics` (shared with its engine and agents).
    metrics: Arc<crate::metrics::Metrics>,
}

/// How many agents the status page shows.
const OVERVIEW_AGENTS: u32 = 50;

/// What the status page shows of a host (see [`Host::overview`]).
#[derive(Debug, serde::Serialize)]
pub struct Overview {
    pub host: String,
    /// For the operator: the address its peers reach it at.
    pub address: String,
    /// For the operator: its peers, by name, with their addresses.
    pub peers: Vec<(String, String)>,
    /// Agents held here, by state.
    pub held: Vec<(&'static str, i64)>,
    /// Agents homed here, by state.
    pub homed: Vec<(&'static str, i64)>,
    /// How many modules are stored, and how many refusals are kept.
    pub modules: usize,
    pub refusals: usize,
    /// For the operator: the latest agents launched, held or homed here, newest first.
    pub agents: Vec<AgentView>,
    pub module_list: Vec<ModuleView>,
    /// The latest refusals, newest last.
    pub refusal_list: Vec<crate::metrics::Refusal>,
}

/// An agent as the status page shows it.
#[derive(Debug, serde::Serialize)]
pub struct AgentView {
    pub id: String,
    pub label: String,
    pub state: String,
    pub location: String,
    pub hops: u32,
    /// Whether this host is its home (and so knows its route).
    pub home: bool,
    /// Its visits: hop, host name, unix milliseconds (of that host's clock).
    pub route: Vec<(u32, String, u64)>,
    pub detail: Option<String>,
    /// When this host last heard of it (unix seconds).
    pub heard_at: u64,
}

impl From<crate::protocol::wire::AgentInfo> for AgentView {
    fn from(a: crate::protocol::wire::AgentInfo) -> Self {
        Self {
            route: a.route.into_iter().map(|v| (v.hop, v.host, v.at)).collect(),
            id: a.id,
            label: a.label,
            state: a.state,
            location: a.location,
            hops: a.hops,
            home: a.home,
            detail: a.detail,
            heard_at: a.heard_at,
        }
    }
}

/// A stored module as the status page shows it.
#[derive(Debug, serde::Serialize)]
pub struct ModuleView {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub hash: String,
    pub size: u64,
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
        let Policies { trust, access, peers } = Policies::load(config, key.public())?;
        let state = Arc::new(State::open(&config.data_dir)?);
        state.set_durable(config.durable)?;
        let mut resources = Resources::default();
        resources.hold_tables_in_memory(config.limits.table_memory_mib << 20);
        for r in &config.resources {
            match (r.kind, &r.source) {
                (ResourceType::Table, Some(source)) => match r.engine() {
                    TableEngine::Sqlite => {
                        resources.add_table_with(&r.name, r.attachment, source, &config.data_dir, &r.columns)?;
                    }
                    TableEngine::Columnar => resources.add_columnar_table(
                        &r.name,
                        r.attachment,
                        source,
                        &config.data_dir,
                        &r.columns,
                        config.limits.engine().memory_bytes,
                    )?,
                },
                _ => resources.add_log(&r.name, r.attachment, state.clone()),
            }
        }
        let resources = Arc::new(resources);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let engine =
            Arc::new(Engine::new(config.limits.engine(), Some(config.data_dir.join("code")), metrics.clone())?);
        let admission = Arc::new(Admission::new(trust, state.clone(), config.limits.module_kib << 10));
        let workers = Arc::new(Semaphore::new(config.limits.workers()));
        let long_calls = config.limits.workers().saturating_sub(1).max(1);
        let threads = Arc::new(
            Workers::start("roam-worker", config.limits.workers()).context("cannot start the worker threads")?,
        );
        let tls = crate::transport::client_config(Some(key.clone())).context("cannot set up TLS")?;
        let agents = Agents::new(Parts {
            name: config.name.clone(),
            key: key.clone(),
            tls,
            peers: Arc::new(peers),
            state: state.clone(),
            resources: resources.clone(),
            engine: engine.clone(),
            admission: admission.clone(),
            data_dir: config.data_dir.clone(),
            workers: workers.clone(),
            threads: threads.clone(),
            queue_timeout: Duration::from_millis(config.limits.queue_ms),
            limits: config.limits.agents(),
            max_copy: config.limits.copy_kib << 10,
            retention: Duration::from_secs(config.limits.agent_retention_s),
            metrics: metrics.clone(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                key,
                state,
                resources,
                engine,
                admission,
                admitted: Mutex::new(Bounded::new(MODULES_KEPT)),
                agents: Arc::new(agents),
                workers,
                threads,
                long_calls: Arc::new(Semaphore::new(long_calls)),
                workers_total: config.limits.workers(),
                long_calls_total: long_calls,
                queue_timeout: Duration::from_millis(config.limits.queue_ms),
                max_frame: config.limits.frame_kib << 10,
                frame_timeout: Duration::from_millis(config.limits.frame_timeout_ms),
                connections: config.limits.connections(),
                access: std::sync::RwLock::new(Arc::new(access)),
                quotas: Quotas::new(config.limits.launches_per_hour, config.limits.publishes_per_hour),
                metrics,
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
    pub(crate) fn key(&self) -> &Arc<SecretKey> {
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

    /// How this host shares its connections and the memory of frames in flight.
    pub fn connection_limits(&self) -> ConnectionLimits {
        self.inner.connections
    }

    /// The resources the host offers its modules.
    pub fn resources(&self) -> &Resources {
        &self.inner.resources
    }

    /// The host's state database.
    pub fn state(&self) -> &State {
        &self.inner.state
    }

    /// Records the address other hosts reach this one at (its agents' home address). Only the
    /// first call counts.
    pub fn set_address(&self, address: String) {
        self.inner.agents.set_address(address);
    }

    /// Reads the trust store, the access policy and the peers directory of `config` again and
    /// uses them from now on, without dropping agents or connections (on SIGHUP). All three are
    /// read before any is replaced: if one does not load, nothing changes.
    ///
    /// # Errors
    /// Why one of them could not be loaded; the host goes on with what it had.
    pub fn reload(&self, config: &HostConfig) -> anyhow::Result<()> {
        let Policies { trust, access, peers } = Policies::load(config, self.public_key())?;
        let inner = &self.inner;
        inner.admission.set_trust(trust);
        *inner.access.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(access);
        inner.agents.set_peers(peers);
        // Modules verified under the old trust store are verified again when next used.
        lock(&inner.admitted).clear();
        inner.agents.forget_code();
        Ok(())
    }

    /// Whether `key` is known here: a peer's, or a client's the access policy names. Others,
    /// however many keys they make, share what anonymous clients get (slots, quotas, room for
    /// frames).
    pub(crate) fn is_known(&self, key: &PublicKey) -> bool {
        self.inner.agents.peers().is_peer(key) || self.inner.access().names(key)
    }

    /// What the host counts.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// What the status page shows of this host now. `operator` (a viewer on the host's own
    /// machine) sees the agents and the refusals; anyone else only counts. Reads the state
    /// database: call it off the async runtime.
    ///
    /// # Errors
    /// If the state database cannot be read.
    pub fn overview(&self, operator: bool) -> Result<Overview, RemoteError> {
        let inner = &self.inner;
        let census = inner.agents.census().map_err(internal)?;
        let modules = inner.state.modules().map_err(internal)?;
        let mut overview = Overview {
            host: inner.name.clone(),
            address: String::new(),
            peers: Vec::new(),
            held: census.held,
            homed: census.homed,
            modules: modules.len(),
            refusals: inner.metrics.recent_refusals().len(),
            agents: Vec::new(),
            module_list: Vec::new(),
            refusal_list: Vec::new(),
        };
        if operator {
            overview.address = inner.agents.address();
            overview.peers = inner.agents.peers().addresses();
            let agents = inner.agents.recent(OVERVIEW_AGENTS).map_err(internal)?;
            overview.agents = agents.into_iter().map(AgentView::from).collect();
            overview.module_list = modules
                .into_iter()
                .map(|m| ModuleView {
                    name: m.name,
                    version: m.version.to_string(),
                    kind: m.kind.to_string(),
                    hash: m.hash.to_string(),
                    size: m.size,
                })
                .collect();
            overview.refusal_list = inner.metrics.recent_refusals();
        }
        Ok(overview)
    }

    /// The metrics in Prometheus' text format, with the permits in use and the agents by state
    /// read now. Reads the state database: call it off the async runtime.
    ///
    /// # Errors
    /// If the state database cannot be read.
    pub fn render_metrics(&self) -> Result<String, crate::state::StateError> {
        let inner = &self.inner;
        let census = inner.agents.census()?;
        let workers = (inner.workers_total, inner.workers.available_permits());
        let long_calls = (inner.long_calls_total, inner.long_calls.available_permits());
        inner.metrics.census(workers, long_calls, &census);
        Ok(inner.metrics.render())
    }

    /// Who a caller is, for the log: a peer by its name, a client by the access policy's name
    /// for it, else its key, or anonymous.
    pub(crate) fn describe_caller(&self, key: Option<&PublicKey>) -> String {
        let Some(key) = key else { return "anonymous".to_owned() };
        if let Some(name) = self.inner.agents.peers().name_of(key) {
            return format!("peer {name}");
        }
        let access = self.inner.access();
        if access.names(key) { access.describe(key) } else { format!("unnamed key {key}") }
    }

    /// Checks the certificate a connecting host presented for the key it proved, and keeps it
    /// (see [`Peers::present`]); `Err` says why it is refused.
    pub(crate) fn present_certificate(
        &self,
        cert: roam_keys::HostCertificate,
        proven: &PublicKey,
    ) -> Result<(), String> {
        self.inner.agents.peers().present(cert, proven)
    }

    /// Moves agents along until `stop` fires: runs ready agents on the module threads,
    /// transfers leaving ones, retries parked ones, and sends reports home.
    pub async fn drive_agents(&self, stop: tokio::sync::watch::Receiver<bool>) {
        self.inner.agents.clone().drive(stop).await;
    }

    /// Serves one request from a client that proved the key `peer` in the handshake (`None`:
    /// an anonymous client).
    pub async fn handle(&self, request: Request, peer: Option<PublicKey>) -> Response {
        let agents = &self.inner.agents;
        if let Some(signer) = request.host_signer()
            && let Err(e) = agents.check_sender(signer, peer, matches!(request, Request::RecallAgent(_)))
        {
            return Response::Error(e);
        }
        let access = self.inner.access();
        let needs = match &request {
            Request::Eval { .. } => Some(Right::Eval),
            Request::Publish { .. } => Some(Right::Publish),
            Request::List => Some(Right::List),
            Request::Launch { .. } => Some(Right::Launch),
            // Fetching needs the right for the module's kind, checked once it is known; seeing
            // and recalling agents depends on whose they are.
            _ => None,
        };
        if let Some(right) = needs
            && let Err(e) = access.check(right, peer.as_ref()).and_then(|()| {
                // Keys the policy does not name share the anonymous callers' quota.
                let counted = peer.as_ref().filter(|k| access.names(k));
                self.inner.quotas.take(right, counted, &access.caller(peer.as_ref()))
            })
        {
            return Response::Error(e);
        }
        let viewer = Viewer {
            caller: peer,
            all: access.allows(Right::Admin, peer.as_ref()),
            granted_in: access.path().display().to_string(),
        };
        // Every handler that touches SQLite or runs Wasm leaves the async runtime: a commit
        // waits for fsync, and the runtime's threads serve every other connection.
        let inner = self.inner.clone();
        let agents = agents.clone();
        match request {
            Request::Ping => Response::Pong,
            Request::Eval { module, input } => self.eval(module, input, peer).await.unwrap_or_else(Response::Error),
            Request::Publish { module } => blocking(move || inner.publish(module).map(Response::Published)).await,
            Request::List => blocking(move || inner.state.modules().map(Response::Modules).map_err(internal)).await,
            Request::Resolve { name, version } => {
                blocking(move || inner.resolve(&name, version.as_ref(), peer.as_ref())).await
            }
            Request::Fetch { hash, offset, max } => {
                blocking(move || inner.fetch(hash, offset, max, peer.as_ref())).await
            }
            Request::Launch { module, input } => agents
                .on_module_thread(move |agents| agents.launch(module, input, peer))
                .await
                .map_or_else(Response::Error, |id| Response::Launched { id }),
            Request::Transfer { envelope, snapshot } => {
                agents.receive(envelope, snapshot).await.unwrap_or_else(Response::Error)
            }
            Request::Report(signed) => blocking(move || agents.receive_report(&signed)).await,
            Request::Agents { id } => {
                blocking(move || agents.agents(id.as_deref(), viewer).map(Response::Agents)).await
            }
            Request::Recall { id } => {
                let may_recall_own = access.check(Right::Recall, peer.as_ref());
                agents.recall(&id, viewer, may_recall_own).await.unwrap_or_else(Response::Error)
            }
            Request::RecallAgent(signed) => blocking(move || agents.receive_recall(&signed, peer)).await,
            Request::Call(signed) => blocking(move || agents.receive_call(&signed, &access)).await,
        }
    }

    /// Fetches a module this host lacks from a peer by hash, verifies it against this host's
    /// trust store, and stores it. The same download path, anonymous, as `roam run` uses.
    pub async fn fetch_from(&self, peer: &str, hash: ModuleHash) -> Result<ModuleInfo, RemoteError> {
        let inner = self.inner.clone();
        if let Some(info) = off_runtime(move || inner.state.module(&hash).map_err(internal)).await? {
            return Ok(info);
        }
        // As any client does: the module's signature, not the connection, says whether to trust it.
        let connect = crate::client::Client::connect(peer);
        let bytes = crate::fetch::download(connect, hash, self.inner.admission.max_size(), None)
            .await
            .map_err(|e| RemoteError::new(ErrorKind::NotFound, format!("cannot fetch {hash} from {peer}: {e}")))?;
        let inner = self.inner.clone();
        off_runtime(move || inner.publish(bytes)).await
    }

    async fn eval(
        &self,
        module: ModuleRef,
        input: Vec<u8>,
        caller: Option<PublicKey>,
    ) -> Result<Response, RemoteError> {
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
            inner.eval_blocking(module, input, long, caller)
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

/// Runs blocking work (SQLite, whose commits wait for fsync) off the async runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("the request failed inside the host: {e}")))?
}

/// Runs a blocking handler off the async runtime.
async fn blocking(f: impl FnOnce() -> Result<Response, RemoteError> + Send + 'static) -> Response {
    off_runtime(f).await.unwrap_or_else(Response::Error)
}

/// The largest chunk a fetch returns, so one request never holds a whole large module.
pub const MAX_CHUNK: u32 = 1 << 20;

impl Inner {
    /// Stores a signed code or agent module in the code repository, after verifying it.
    fn publish(&self, bytes: Vec<u8>) -> Result<ModuleInfo, RemoteError> {
        let hash = roam_keys::hash_module(&bytes);
        if let Some(info) = self.state.module(&hash).map_err(internal)? {
            return Ok(info);
        }
        let verified = self.admission.verify(bytes, None, Rollback::Refuse).map_err(|e| verify_error(&e))?;
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
        self.admission.keep(hash, &verified).map_err(internal)?;
        tracing::info!(%hash, name = %claims.name, version = %claims.version, kind = %claims.kind, "published module");
        self.state
            .module(&hash)
            .map_err(internal)?
            .ok_or_else(|| RemoteError::new(ErrorKind::Internal, "the module was stored but cannot be read back"))
    }

    fn fetch(
        &self,
        hash: ModuleHash,
        offset: u64,
        max: u32,
        caller: Option<&PublicKey>,
    ) -> Result<Response, RemoteError> {
        // A module without its index row (being stored, say) is not served: its kind, which
        // says who may fetch it, is in the row.
        let Some(info) = self.state.module(&hash).map_err(internal)? else {
            return Err(RemoteError::new(ErrorKind::NotFound, format!("this host holds no module {hash}")));
        };
        self.may_fetch(info.kind, caller)?;
        let chunk = self.state.read_module_chunk(&hash, offset, max.min(MAX_CHUNK) as usize).map_err(internal)?;
        let Some((total, bytes)) = chunk else {
            return Err(RemoteError::new(ErrorKind::NotFound, format!("this host holds no module {hash}")));
        };
        if offset == 0 {
            self.state.count_download(&hash).map_err(internal)?;
        }
        Ok(Response::Chunk { total, bytes })
    }

    /// Whether `caller` may fetch a module of `kind`: the access policy says, except that this
    /// host's peers may always fetch agent and code modules (an agent's code travels so).
    fn may_fetch(&self, kind: Kind, caller: Option<&PublicKey>) -> Result<(), RemoteError> {
        if kind != Kind::Query && caller.is_some_and(|k| self.agents.peers().is_peer(k)) {
            return Ok(());
        }
        self.access().check(Right::fetch(kind), caller)
    }

    /// The access policy, as of now.
    fn access(&self) -> Arc<Access> {
        self.access.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The module a name (and version) resolves to, for code on demand.
    fn resolve(
        &self,
        name: &str,
        version: Option<&semver::Version>,
        caller: Option<&PublicKey>,
    ) -> Result<Response, RemoteError> {
        match self.state.resolve(name, version).map_err(internal)? {
            Some(info) => {
                self.may_fetch(info.kind, caller)?;
                Ok(Response::Resolved(info))
            }
            None => Err(RemoteError::new(
                ErrorKind::NotFound,
                match version {
                    Some(v) => format!("this host holds no module {name}@{v}"),
                    None => format!("this host holds no module named {name}"),
                },
            )),
        }
    }

    /// Runs a query module for `caller`; `long` is the long-call permit it waited for, if it is
    /// known to run long.
    fn eval_blocking(
        &self,
        module: ModuleRef,
        input: Vec<u8>,
        long: Option<tokio::sync::OwnedSemaphorePermit>,
        caller: Option<PublicKey>,
    ) -> Result<Response, RemoteError> {
        let whole = matches!(module, ModuleRef::Bytes(_));
        let admitted = match module {
            ModuleRef::Hash(hash) => match self.find(hash)? {
                Some(a) => a,
                None => return Ok(Response::NeedModule(hash)),
            },
            ModuleRef::Bytes(bytes) => match self.cached(roam_keys::hash_module(&bytes))? {
                Some(a) => a,
                None => self.admit(bytes)?,
            },
        };
        self.access().check_eval(caller.as_ref(), &admitted.verified.claims().capabilities)?;
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
        // A stored copy that no longer matches its hash counts as missing: the client sends
        // the module again and the good copy replaces it.
        match self.admission.load(hash, Some(Kind::Query), Rollback::Refuse).map_err(admit_error)? {
            Some(verified) => self.compile(hash, verified).map(Some),
            None => Ok(None),
        }
    }

    /// Admits a module sent whole (every check before anything is compiled), then compiles it.
    fn admit(&self, bytes: Vec<u8>) -> Result<Arc<Admitted>, RemoteError> {
        let (hash, verified) = self.admission.admit(bytes, Some(Kind::Query), Rollback::Refuse).map_err(admit_error)?;
        self.compile(hash, verified)
    }

    /// Compiles an admitted query module and keeps it for the next call.
    fn compile(&self, hash: ModuleHash, verified: VerifiedModule) -> Result<Arc<Admitted>, RemoteError> {
        let claims = verified.claims();
        let runnable = self.engine.load(hash, &verified).map_err(load_error)?;
        tracing::info!(%hash, name = %claims.name, version = %claims.version, signer = verified.signer_name(), "admitted module");
        let admitted = Arc::new(Admitted { runnable, verified });
        lock(&self.admitted).insert(hash, admitted.clone());
        Ok(admitted)
    }
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

/// What a host reads from files and may read again on a reload: who signs what it runs, who may
/// ask it for what, and who its peers are.
struct Policies {
    trust: TrustStore,
    access: Access,
    peers: Peers,
}

impl Policies {
    fn load(config: &HostConfig, own_key: PublicKey) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let trust = TrustStore::load(&config.trust)?;
        let access_path = config.access.clone().unwrap_or_else(|| config.trust.join(ACCESS_FILE));
        let access = Access::load(&access_path)?;
        let peers = match &config.peers {
            Some(dir) => Peers::load(dir, own_key)
                .with_context(|| format!("cannot load the peers directory {}", dir.display()))?,
            None => Peers::none(own_key),
        };
        // Said once all three loaded: a reload that fails describes nothing it did not apply.
        tracing::info!("access policy {}", access.describe_policy());
        for warning in trust.warnings() {
            tracing::warn!("trust store {}: {warning}", config.trust.display());
        }
        if let Some(dir) = &config.peers {
            tracing::info!("peers ({}): {}", dir.display(), peers.describe());
        }
        Ok(Self { trust, access, peers })
    }
}
