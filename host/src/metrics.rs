//! A host's metrics, in Prometheus' text format: one registry per host (tests run many hosts
//! in one process), updated where the request path already passes (`server::log_request`) and
//! read by the status listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Agents by state, counted in the state database when the metrics are read.
#[derive(Debug, Default)]
pub struct Census {
    /// Agents held here, by the state of their row (`ready`, `leaving`, `parked`, `failed`).
    pub held: Vec<(&'static str, i64)>,
    /// Agents homed here, by where their journey stands (`running`, `in transit`, …).
    pub homed: Vec<(&'static str, i64)>,
}

/// A request's operation and how it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    operation: &'static str,
    /// `ok`, or the error's kind (`denied`, `verification`, `trap`, …).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    from: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ending {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Event {
    event: &'static str,
}

/// Permits of a kind: how many there are and how many are taken.
#[derive(Debug, Default)]
struct Permits {
    total: Gauge,
    busy: Gauge,
}

impl Permits {
    fn register(registry: &mut Registry, name: &str, what: &str) -> Self {
        let permits = Self::default();
        registry.register(name.to_owned(), format!("{what}: how many there are"), permits.total.clone());
        registry.register(format!("{name}_busy"), format!("{what}: how many are taken"), permits.busy.clone());
        permits
    }
}

/// A request refused, as the status page lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refusal {
    /// When (unix milliseconds).
    pub at: u64,
    pub operation: &'static str,
    /// The refusal's kind (`denied`, `verification`, …).
    pub reason: &'static str,
    /// Who asked, as the log names them.
    pub caller: String,
    /// Why, bounded and escaped as in the log.
    pub why: String,
}

/// How many refusals the status page keeps.
const REFUSALS_KEPT: usize = 20;

/// What a host counts.
#[derive(Debug)]
pub struct Metrics {
    /// The latest refusals, newest last.
    recent: std::sync::Mutex<std::collections::VecDeque<Refusal>>,
    registry: Registry,
    requests: Family<Outcome, Counter>,
    latency: Family<Operation, Histogram, fn() -> Histogram>,
    refusals: Family<Reason, Counter>,
    connections: Gauge,
    connections_refused: Family<Reason, Counter>,
    bytes_in_flight: Gauge,
    module_loads: Family<Source, Counter>,
    workers: Permits,
    long_calls: Permits,
    agents: Family<Stage, Gauge>,
    homed: Family<Stage, Gauge>,
    hops: Counter,
    transfers: Family<Ending, Counter>,
    transfer_bytes: Counter,
    recalls: Family<Event, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        fn latency_buckets() -> Histogram {
            // 100 µs to about 13 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        }
        let mut registry = Registry::with_prefix("roam");
        let requests = Family::<Outcome, Counter>::default();
        registry.register("requests", "Requests answered, by operation and outcome", requests.clone());
        let latency = Family::<Operation, Histogram, fn() -> Histogram>::new_with_constructor(latency_buckets);
        registry.register("request_duration_seconds", "Time from a decoded request to its response", latency.clone());
        let refusals = Family::<Reason, Counter>::default();
        registry.register("refusals", "Requests refused, by the kind of refusal", refusals.clone());
        let connections = Gauge::default();
        registry.register("connections", "Connections open", connections.clone());
        let connections_refused = Family::<Reason, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before any request, by reason",
            connections_refused.clone(),
        );
        let bytes_in_flight = Gauge::default();
        registry.register(
            "bytes_in_flight",
            "Bytes of large frames being read or written, held against the in-flight budget",
            bytes_in_flight.clone(),
        );
        let module_loads = Family::<Source, Counter>::default();
        registry.register(
            "module_loads",
            "Compiled code looked up for a call: from memory, from the disk cache, or compiled",
            module_loads.clone(),
        );
        let workers = Permits::register(&mut registry, "workers", "Worker permits (modules running at once)");
        let long_calls = Permits::register(&mut registry, "long_calls", "Permits for calls of modules that run long");
        let agents = Family::<Stage, Gauge>::default();
        registry.register("agents", "Agents held here, by state (parked: no destination answered yet)", agents.clone());
        let homed = Family::<Stage, Gauge>::default();
        registry.register("homed_agents", "Agents whose home is here, by where their journey stands", homed.clone());
        let hops = Counter::default();
        registry.register("hops", "Agents that arrived here (each arrival is one hop)", hops.clone());
        let transfers = Family::<Ending, Counter>::default();
        registry.register(
            "transfers",
            "Destinations tried for an agent's next hop, by outcome (handed_off, unreachable, refused), and moves \
             that found none (parked)",
            transfers.clone(),
        );
        let transfer_bytes = Counter::default();
        registry.register(
            "transfer_bytes",
            "Snapshot bytes of agents handed off to their next host",
            transfer_bytes.clone(),
        );
        let recalls = Family::<Event, Counter>::default();
        registry.register(
            "recall_orders",
            "Recall orders: ordered here (for an agent homed here) or received from a home or a peer",
            recalls.clone(),
        );
        Self {
            recent: std::sync::Mutex::default(),
            registry,
            requests,
            latency,
            refusals,
            connections,
            connections_refused,
            bytes_in_flight,
            module_loads,
            workers,
            long_calls,
            agents,
            homed,
            hops,
            transfers,
            transfer_bytes,
            recalls,
        }
    }
}

impl Metrics {
    /// Counts an answered request: `outcome` is `ok`, `need_module` (an evaluation by hash of
    /// a module the host lacks), or the refusal's or failure's kind, and `refused` says whether
    /// the host declined it.
    pub fn request(&self, operation: &'static str, outcome: &'static str, refused: bool, seconds: f64) {
        self.requests.get_or_create(&Outcome { operation, outcome }).inc();
        self.latency.get_or_create(&Operation { operation }).observe(seconds);
        if refused {
            self.refusals.get_or_create(&Reason { reason: outcome }).inc();
        }
    }

    /// Keeps `refusal` among the latest, for the status page.
    pub fn note_refusal(&self, refusal: Refusal) {
        let mut recent = crate::sync::lock(&self.recent);
        if recent.len() == REFUSALS_KEPT {
            recent.pop_front();
        }
        recent.push_back(refusal);
    }

    /// The latest refusals, newest last.
    pub fn recent_refusals(&self) -> Vec<Refusal> {
        crate::sync::lock(&self.recent).iter().cloned().collect()
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// A connection refused before its first request: `per_source`, `no_tls`, `busy`,
    /// `certificate`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&Reason { reason }).inc();
    }

    /// The gauge of bytes in large frames being read or written.
    pub fn bytes_in_flight(&self) -> &Gauge {
        &self.bytes_in_flight
    }

    /// Compiled code was found for a call: `memory`, `disk` (the code cache) or `compile`.
    pub fn module_load(&self, from: &'static str) {
        self.module_loads.get_or_create(&Source { from }).inc();
    }

    /// An agent arrived here.
    pub fn hop(&self) {
        self.hops.inc();
    }

    /// A try to hand an agent on ended with `outcome`, carrying `bytes` of snapshot if it was
    /// handed off.
    pub fn transfer(&self, outcome: &'static str, bytes: usize) {
        self.transfers.get_or_create(&Ending { outcome }).inc();
        self.transfer_bytes.inc_by(bytes as u64);
    }

    /// A recall order was `ordered` here or `received`.
    pub fn recall(&self, event: &'static str) {
        self.recalls.get_or_create(&Event { event }).inc();
    }

    /// Sets what is read at scrape time rather than counted as it happens: worker and long-call
    /// permits as (total, free), and agents by state.
    pub fn census(&self, workers: (usize, usize), long_calls: (usize, usize), agents: &Census) {
        for (permits, (total, free)) in [(&self.workers, workers), (&self.long_calls, long_calls)] {
            permits.total.set(total as i64);
            permits.busy.set(total.saturating_sub(free) as i64);
        }
        for (family, counts) in [(&self.agents, &agents.held), (&self.homed, &agents.homed)] {
            for &(state, n) in counts {
                family.get_or_create(&Stage { state }).set(n);
            }
        }
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
