//! A host's metrics, in Prometheus' text format: one registry per host (tests run many hosts
//! in one process), updated where the request path already passes (`server::log_request`) and
//! read by the status listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// What a host counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    latency: Family<Operation, Histogram, fn() -> Histogram>,
    refusals: Family<Reason, Counter>,
    connections: Gauge,
    connections_refused: Family<Reason, Counter>,
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
        Self { registry, requests, latency, refusals, connections, connections_refused }
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

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// A connection refused before its first request: `per_source`, `no_tls`, `busy`,
    /// `certificate`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&Reason { reason }).inc();
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
