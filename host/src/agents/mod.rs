//! Mobile agents: launch, run, move exactly once, bind resources on arrival, report home.
//!
//! An agent is a signed agent module plus its state. Each host keeps the agents it holds in its
//! state database (see [`store`]) and a driver task ([`driver`]) moves them along, one file per
//! step of a hop:
//!
//! 1. `ready` rows run their entry ([`visit`]; `start` at home, `arrive` elsewhere) on the module
//!    threads, after their resources are bound ([`binding`]) and their snapshot restored;
//! 2. the decision is persisted with the new snapshot as `leaving` (or the agent finishes);
//! 3. the transfer ([`transfer`]) sends a signed envelope and the snapshot to a peer ([`peers`]);
//!    the receiver ([`arrival`]) verifies the
//!    peer, the envelope, the code and the snapshot, persists the agent durably, and only then
//!    acknowledges; the sender then marks its row `done` and drops its copy;
//! 4. reports (arrived, departed, parked, finished, failed) go home through an outbox; the home
//!    ([`home`]) keeps where each of its agents is and lists them.
//!
//! A home's recall order ([`recall`]) chases its agent along the hosts it went through, and
//! the agent comes home with its state and hands over a partial result.
//!
//! An agent's code is admitted and loaded once ([`code`]); calls on resources it holds by
//! identifier are forwarded to their owner ([`calls`]). [`Agents`] holds what these share; the
//! host hands it the agent requests and nothing else reaches in.
//!
//! A retry repeats the same (agent, hop), which the receiver deduplicates; a replayed envelope,
//! one addressed to another host or one whose snapshot does not match its digest is refused.

mod arrival;
pub mod binding;
mod calls;
mod code;
mod driver;
mod home;
pub(crate) mod peers;
mod recall;
pub(crate) mod store;
mod transfer;
mod visit;

pub use home::Viewer;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use roam_keys::{ModuleHash, SecretKey};
use tokio::sync::{Notify, Semaphore};

use crate::admission::Admission;
use crate::cache::{Bounded, MODULES_KEPT};
use crate::client::Client;
use crate::engine::Engine;
use crate::protocol::wire::{AgentLimits, Signed};
use crate::protocol::{ErrorKind, RemoteError};
use crate::resources::Resources;
use crate::state::State;
use crate::workers::Workers;

/// How far apart two hosts' clocks (and a message's age) may be.
const CLOCK_SKEW: u64 = 300;
/// How often the driver looks for work even when nothing woke it: unsent reports, and parked
/// agents whose backoff is over.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How long a peer may take to answer one host-to-host request (a transfer includes fetching
/// the code, if the peer lacks it), so a hung peer never stalls the driver.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the driver forgets the records of agents that ended long ago.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How many records one pass forgets at most, so that a pass stays short.
const PRUNE_BATCH: usize = 1000;
/// How many recall orders a host keeps in memory for its transfers' last look.
const ORDERS_KEPT: usize = 4096;

/// The agents of one host: what every step of a hop shares. The host builds it, hands it the
/// agent requests, and runs its driver.
#[derive(Debug)]
pub struct Agents {
    /// The host's name, as arrivals and reports show it.
    name: String,
    /// The host's key: it proves it to peers and signs envelopes, reports and calls with it.
    key: Arc<SecretKey>,
    /// The hosts this host accepts agents, reports and forwarded calls from, and dials; replaced
    /// whole when the host reloads its configuration.
    peers: std::sync::RwLock<Arc<peers::Peers>>,
    state: Arc<State>,
    resources: Arc<Resources>,
    engine: Arc<Engine>,
    /// How agent code enters the module store.
    admission: Arc<Admission>,
    /// Where copies of tables that travel with an agent are written for a visit.
    data_dir: PathBuf,
    /// The address other hosts reach this one at; set once it listens.
    address: OnceLock<String>,
    /// Agent modules loaded since start.
    agent_code: Mutex<Bounded<ModuleHash, Arc<code::AgentCode>>>,
    /// Wakes the driver when there is work.
    wake: Notify,
    /// Transfers and report deliveries under way, so each runs once at a time.
    in_flight: Mutex<HashSet<String>>,
    /// Moves decided by visits of this process and not tried yet, by (agent, hop): they have
    /// sent nothing, so a recall may still turn them home.
    untried: Mutex<HashSet<(String, u32)>>,
    /// Recall orders received since start, by agent, so a transfer about to leave sees one that
    /// came in after its row was read (the `recalls` table holds them all).
    orders: Mutex<Bounded<String, Signed>>,
    /// How this host connects to peers: TLS proving its key, with the sessions it resumes.
    tls: Arc<rustls::ClientConfig>,
    /// Idle proven connections to peers, by address, with when each was last used.
    peer_pool: Mutex<HashMap<String, Vec<(Client, Instant)>>>,
    /// The host's module threads, and the permits that bound how many run at once (shared with
    /// evaluations).
    workers: Arc<Semaphore>,
    threads: Arc<Workers>,
    /// How long a launch or an arrival waits for a worker permit before it is refused as busy,
    /// as an evaluation is.
    queue_timeout: Duration,
    /// Limits given to agents launched here.
    agent_limits: AgentLimits,
    /// Largest table an agent carries by copy or move.
    max_copy: usize,
    /// How long the records of agents that ended are kept.
    retention: Duration,
    /// When the driver last forgot old records.
    pruned_at: Mutex<Instant>,
    /// Counts hops, transfers and recall orders.
    metrics: Arc<crate::metrics::Metrics>,
}

/// What the host lends its agents.
#[derive(Debug)]
pub(crate) struct Parts {
    pub name: String,
    pub key: Arc<SecretKey>,
    /// TLS proving `key`, for connections to peers.
    pub tls: Arc<rustls::ClientConfig>,
    pub peers: Arc<peers::Peers>,
    pub state: Arc<State>,
    pub resources: Arc<Resources>,
    pub engine: Arc<Engine>,
    pub admission: Arc<Admission>,
    pub data_dir: PathBuf,
    pub workers: Arc<Semaphore>,
    pub threads: Arc<Workers>,
    pub queue_timeout: Duration,
    pub limits: AgentLimits,
    pub max_copy: usize,
    pub retention: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Agents {
    /// The agents of a host made of `parts`; creates the agent tables if they are missing.
    pub(crate) fn new(parts: Parts) -> Result<Self, crate::state::StateError> {
        parts.state.transaction(store::create)?;
        Ok(Self {
            tls: parts.tls,
            name: parts.name,
            key: parts.key,
            peers: std::sync::RwLock::new(parts.peers),
            state: parts.state,
            resources: parts.resources,
            engine: parts.engine,
            admission: parts.admission,
            data_dir: parts.data_dir,
            address: OnceLock::new(),
            agent_code: Mutex::new(Bounded::new(MODULES_KEPT)),
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
            untried: Mutex::new(HashSet::new()),
            orders: Mutex::new(Bounded::new(ORDERS_KEPT)),
            peer_pool: Mutex::new(HashMap::new()),
            workers: parts.workers,
            threads: parts.threads,
            queue_timeout: parts.queue_timeout,
            agent_limits: parts.limits,
            max_copy: parts.max_copy,
            retention: parts.retention,
            pruned_at: Mutex::new(Instant::now()),
            metrics: parts.metrics,
        })
    }

    /// The address other hosts reach this one at.
    pub(crate) fn address(&self) -> String {
        self.address.get().cloned().unwrap_or_default()
    }

    /// Runs `work` (SQLite, whose commits wait for fsync) on the blocking pool, off the async
    /// runtime; `None` if it panicked.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> Option<T> {
        let agents = self.clone();
        tokio::task::spawn_blocking(move || work(&agents)).await.ok()
    }

    /// Runs `work`, which may run Wasm (an agent's manifest, when its code first loads here), on
    /// a module thread under a worker permit, like every other call of a module; refused as
    /// busy if no permit comes within the queue timeout. Never for a forwarded call, which the
    /// calling agent's visit waits for while it holds a permit of its own host.
    pub(crate) async fn on_module_thread<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Self) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.workers.clone().acquire_owned())
            .await
            .map_err(|_| RemoteError::new(ErrorKind::Busy, "every worker stayed busy; retry shortly"))?
            .map_err(|_| RemoteError::new(ErrorKind::ShuttingDown, "the host is shutting down"))?;
        let agents = self.clone();
        let job = self.threads.run(move || {
            let _permit = permit;
            work(&agents)
        });
        job.await
            .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("the request failed inside the host: {e}")))?
    }

    /// A span of an agent's journey (`what`: a visit or a transfer), a child of its launch.
    fn journey_span(&self, what: &'static str, row: &store::Row, hop: u32) -> tracing::Span {
        let span = tracing::info_span!(target: crate::trace::TARGET, "agent", otel.name = what, agent = %row.id, hop, host = %self.name);
        crate::trace::follow(&span, row.record.as_ref().ok().and_then(|r| r.trace.as_deref()));
        span
    }

    /// Agents by state, for the metrics.
    pub(crate) fn census(&self) -> Result<crate::metrics::Census, crate::state::StateError> {
        store::census(&self.state)
    }

    /// Records the address other hosts reach this one at (its agents' home address). Only the
    /// first call counts.
    pub(crate) fn set_address(&self, address: String) {
        let _ = self.address.set(address);
    }
}

fn new_id() -> Result<String, RemoteError> {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn getrandom(buf: &mut [u8]) -> Result<(), RemoteError> {
    getrandom::getrandom(buf).map_err(|e| RemoteError::new(ErrorKind::Internal, format!("no randomness: {e}")))
}
