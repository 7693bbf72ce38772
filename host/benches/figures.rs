//! roam's performance figures, measured in one run and printed as one table.
//!
//! `cargo xtask bench` runs it in full (it builds the example modules and the `roam` binary
//! first); `cargo xtask bench --smoke` runs every figure briefly, which `cargo xtask test` does
//! so the benchmark never rots. Each figure is a median with its spread (p10–p90, or p50 and p99
//! for latencies) over repeated samples, and each comparison is a ratio of two medians measured
//! in the same run. Hosts are real: in this process on loopback, or `roam host` processes where
//! the host's own memory and restart are measured.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use roam_host::client::{Client, json_to_cbor};
use roam_host::config::HostConfig;
use roam_host::engine::{Engine, Limits};
use roam_host::fetch::ModuleSpec;
use roam_host::host::Host;
use roam_host::local::CodeOnDemand;
use roam_host::protocol::{ModuleRef, Request, Response};
use roam_host::resources::{Attachment, Resources};
use roam_host::server::RunningHost;
use roam_host::snapshot::Snapshot;
use roam_keys::{Kind, SecretKey, TrustStore, VerifyContext};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
#[path = "../../tests/lineitem.rs"]
mod lineitem;
#[path = "../../tests/sample.rs"]
mod sample;

use common::{QUICK, Stats, bytes, sign, time};

/// The groups of figures, in the order they run; `--only GROUP` measures one.
const GROUPS: [&str; 12] = [
    "instantiate",
    "aggregate",
    "round-trip",
    "connect",
    "snapshot",
    "hops",
    "observability",
    "shipping",
    "code-on-demand",
    "throughput",
    "parked",
    "analytics",
];

/// Concurrent clients in the throughput figure.
const CLIENTS: [usize; 4] = [1, 4, 16, 64];

/// Sizes of the run: full, or a seconds-long smoke run.
struct Scale {
    rows: usize,
    samples: usize,
    iterations: usize,
    /// Hops of each timed agent (the host's default limit is 256).
    hops: usize,
    /// Timed agents, one after the other.
    hop_agents: usize,
    /// Hops whose bytes on the wire are counted.
    wire_hops: usize,
    snapshot_mib: usize,
    /// Rows per page when the client pulls the whole table.
    page_rows: u32,
    /// Size of the generated code-on-demand module.
    module_bytes: usize,
    /// How long each client count of the throughput figure runs.
    load: Duration,
    parked: usize,
    /// Order lines of the analytics group.
    order_lines: usize,
}

const FULL: Scale = Scale {
    rows: 1_000_000,
    samples: 7,
    iterations: 2_000,
    hops: 200,
    hop_agents: 3,
    wire_hops: 20,
    snapshot_mib: 256,
    page_rows: 100_000,
    module_bytes: 1 << 20,
    load: Duration::from_secs(2),
    // Not the 100,000 of the goal: launching is the slow part (each launch verifies the module
    // and runs the agent's start), so 100,000 would take most of the run's ten minutes alone.
    parked: 10_000,
    order_lines: 6_000_000,
};
const SMOKE: Scale = Scale {
    rows: 20_000,
    samples: 3,
    iterations: 100,
    hops: 10,
    hop_agents: 1,
    wire_hops: 4,
    snapshot_mib: 8,
    page_rows: 5_000,
    module_bytes: 128 << 10,
    load: Duration::from_millis(150),
    parked: 50,
    order_lines: 20_000,
};

/// One row of the table.
struct Row {
    figure: String,
    value: String,
    spread: String,
    goal: &'static str,
    reference: &'static str,
}

impl Row {
    fn new(figure: impl Into<String>, value: String, spread: String, goal: &'static str) -> Self {
        Self { figure: figure.into(), value, spread, goal, reference: "—" }
    }

    /// The published figure beside this one (see /work/shared/design/limits.md).
    fn reference(self, reference: &'static str) -> Self {
        Self { reference, ..self }
    }
}

fn row(figure: impl Into<String>, s: &Stats, goal: &'static str) -> Row {
    Row::new(figure, time(s.median()), format!("p10 {} – p90 {}", time(s.q(0.1)), time(s.q(0.9))), goal)
}

/// A latency figure: p50, with p99 as its spread.
fn latency(figure: impl Into<String>, s: &Stats, note: &str, goal: &'static str) -> Row {
    Row::new(figure, format!("p50 {}", time(s.median())), format!("p99 {}{note}", time(s.q(0.99))), goal)
}

fn ratio(figure: impl Into<String>, a: &Stats, b: &Stats, goal: &'static str) -> Row {
    Row::new(
        figure,
        format!("{:.2}×", a.median() / b.median()),
        format!("{} vs {}", time(a.median()), time(b.median())),
        goal,
    )
}

fn sample(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(Stats::new(v))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn built(name: &str) -> Result<Vec<u8>> {
    let path = repo().join("agents/target/wasm32-unknown-unknown/release").join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("{} is missing: run `cargo xtask agents`", path.display()))
}

/// What every group shares: a scratch directory, the signing key and a trust store holding it.
struct Setup {
    dir: tempfile::TempDir,
    key: SecretKey,
    trust_dir: PathBuf,
    trust: TrustStore,
    scale: Scale,
    smoke: bool,
}

impl Setup {
    fn verify(&self, module: &[u8]) -> Result<roam_keys::VerifiedModule> {
        Ok(roam_keys::verify(module.to_vec(), &VerifyContext::new(&self.trust, roam_host::state::now_secs()))?)
    }

    /// The sample `sales` table as CSV, written once.
    fn sales_csv(&self) -> Result<PathBuf> {
        let csv = self.dir.path().join("sales.csv");
        if !csv.exists() {
            sample::write_csv(&csv, &sample::generate(self.scale.rows, 1))?;
        }
        Ok(csv)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    if let Some(o) = &only
        && !GROUPS.contains(&o.as_str())
    {
        bail!("unknown group {o:?}; the groups are {}", GROUPS.join(", "));
    }
    let want = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let arrivals = Arrivals::install()?;
    let dir = tempfile::tempdir()?;
    let (key_path, _, _) = roam_keys::write_keypair(&dir.path().join("keys"), "bench")?;
    let key = SecretKey::load(&key_path)?;
    let trust_dir = dir.path().join("trust");
    std::fs::create_dir_all(&trust_dir)?;
    std::fs::copy(dir.path().join("keys/bench.pub"), trust_dir.join("bench.pub"))?;
    common::open_access(&trust_dir)?;
    let trust = TrustStore::load(&trust_dir)?;
    let setup = Setup { dir, key, trust_dir, trust, scale: if smoke { SMOKE } else { FULL }, smoke };
    let mut rows = Vec::new();
    let started = Instant::now();
    // How long each group took, on stderr: the table on stdout stays the table.
    let timed = |group: &str, start: Instant| eprintln!("[{group}: {:.1} s]", start.elapsed().as_secs_f64());

    for group in GROUPS.iter().filter(|g| want(g)) {
        let t = Instant::now();
        let new = match *group {
            "instantiate" => instantiate(&setup)?,
            "aggregate" => aggregate(&setup)?,
            "round-trip" => round_trip(&setup).await?,
            "connect" => connect(&setup).await?,
            "snapshot" => snapshot(&setup)?,
            "hops" => hops(&setup, &arrivals).await?,
            "observability" => observability(&setup, &arrivals).await?,
            "shipping" => shipping(&setup).await?,
            "code-on-demand" => code_on_demand(&setup).await?,
            "throughput" => throughput(&setup).await?,
            "parked" => parked(&setup).await?,
            "analytics" => analytics(&setup).await?,
            other => bail!("no group {other}"),
        };
        rows.extend(new);
        timed(group, t);
    }
    timed("total", started);

    println!("\n| figure | median | spread | goal | published reference |\n| --- | --- | --- | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r.figure, r.value, r.spread, r.goal, r.reference);
    }
    Ok(())
}

/// Warm instantiate (and an empty call) of a module the engine has compiled.
fn instantiate(s: &Setup) -> Result<Vec<Row>> {
    let engine = Engine::new(Limits { instances: 8, ..Limits::default() }, None, std::sync::Arc::default())?;
    let quick = sign(&s.key, &wat::parse_str(QUICK)?, Kind::Query, "quick", &[])?;
    let runnable = engine.load(roam_keys::hash_module(&quick), &s.verify(&quick)?)?;
    let none = Arc::new(Resources::default());
    let n = s.scale.iterations;
    let mut v = Vec::new();
    for _ in 0..s.scale.samples {
        let t = Instant::now();
        for _ in 0..n {
            engine.run(&runnable, vec![0xa0], none.clone())?;
        }
        v.push(t.elapsed().as_secs_f64() / n as f64);
    }
    Ok(vec![
        row("warm instantiate + empty call, cached module", &Stats::new(v), "≤ 5 µs")
            .reference("0.8–4 µs instantiate with the pooling allocator (wasmtime #3697, #6835)"),
    ])
}

/// The aggregate query in Wasm, the same Rust natively, and SQLite's own SQL, on one table.
fn aggregate(s: &Setup) -> Result<Vec<Row>> {
    let engine = Engine::new(Limits { instances: 8, ..Limits::default() }, None, std::sync::Arc::default())?;
    let mut resources = Resources::default();
    resources.add_table("sales", Attachment::Fastened, &s.sales_csv()?, s.dir.path())?;
    let resources = Arc::new(resources);
    let db = s.dir.path().join("tables/sales.db");

    let query = sign(&s.key, &built("sales_by_region")?, Kind::Query, "sales-by-region", &["table:sales"])?;
    let agg = engine.load(roam_keys::hash_module(&query), &s.verify(&query)?)?;
    let input = json_to_cbor(&serde_json::json!({}));
    let wasm =
        sample(s.scale.samples, || engine.run(&agg, input.clone(), resources.clone()).map(drop).map_err(Into::into))?;
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let native = sample(s.scale.samples, || {
        let mut stmt = conn
            .prepare_cached("SELECT region, amount_cents FROM sales WHERE quantity >= ?1 AND day BETWEEN ?2 AND ?3")?;
        let mut totals = BTreeMap::<String, (u64, i64)>::new();
        let mut rows = stmt.query((1, 1, 365))?;
        while let Some(r) = rows.next()? {
            let (region, amount): (String, i64) = (r.get(0)?, r.get(1)?);
            let e = totals.entry(region).or_default();
            e.0 += 1;
            e.1 += amount;
        }
        std::hint::black_box(totals);
        Ok(())
    })?;
    let sql = sample(s.scale.samples, || {
        let mut stmt = conn.prepare_cached(
            "SELECT region, count(*), sum(amount_cents) FROM sales \
             WHERE quantity >= 1 AND day BETWEEN 1 AND 365 GROUP BY region ORDER BY region",
        )?;
        let n = stmt.query_map([], |r| r.get::<_, i64>(1))?.count();
        std::hint::black_box(n);
        Ok(())
    })?;
    Ok(vec![
        row(format!("aggregate over {} rows, Wasm query", s.scale.rows), &wasm, "—"),
        ratio("  … Wasm vs the same Rust natively in the host", &wasm, &native, "≤ 1.3×")
            .reference("Wasm 1.45–1.55× native on SPEC (\"Not So Fast\", ATC 2019)"),
        ratio("  … Wasm vs SQLite's own SQL (`GROUP BY`)", &wasm, &sql, "report"),
    ])
}

/// Evaluations of a small query the host holds, by its hash, over one connection.
struct Trips {
    client: Client,
    by_hash: Request,
}

impl Trips {
    /// A host in this process (its data in `name`) holding the query, and a client of it.
    async fn start(s: &Setup, name: &str) -> Result<(RunningHost, Self)> {
        let mut cfg = HostConfig::new(s.trust_dir.clone(), s.dir.path().join(name));
        cfg.durable = !s.smoke;
        let running = RunningHost::start(Host::open(&cfg)?, "127.0.0.1:0".parse()?).await?;
        let mut client = Client::connect(&running.addr().to_string()).await?;
        let quick = sign(&s.key, &wat::parse_str(QUICK)?, Kind::Query, "quick", &[])?;
        client.eval(&quick, vec![0xa0]).await?;
        let by_hash = Request::Eval { module: ModuleRef::Hash(roam_keys::hash_module(&quick)), input: vec![0xa0] };
        Ok((running, Self { client, by_hash }))
    }

    /// `n` round trips, each one's seconds added to `into`.
    async fn run(&mut self, n: usize, into: &mut Vec<f64>) -> Result<()> {
        for _ in 0..n {
            let t = Instant::now();
            let r = self.client.request(&self.by_hash).await?;
            into.push(t.elapsed().as_secs_f64());
            ensure!(matches!(r, Response::Result(_)), "unexpected {r:?}");
        }
        Ok(())
    }
}

/// Remote evaluation round trip, module held by the host, loopback.
async fn round_trip(s: &Setup) -> Result<Vec<Row>> {
    let (running, mut trip) = Trips::start(s, "round-trip").await?;
    let mut trips = Vec::with_capacity(s.scale.iterations);
    trip.run(s.scale.iterations, &mut trips).await?;
    running.shutdown().await;
    Ok(vec![latency(
        "remote evaluation round trip, small query, cached, loopback",
        &Stats::new(trips),
        "",
        "p50 ≤ 250 µs",
    )])
}

/// A cold connection: TCP, the handshake (TLS and roam's hello), the host's proven key checked
/// against the one pinned, on loopback; then a person's client sends its request.
async fn connect(s: &Setup) -> Result<Vec<Row>> {
    let cfg = HostConfig::new(s.trust_dir.clone(), s.dir.path().join("connect"));
    let running = RunningHost::start(Host::open(&cfg)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let pinned = format!("{}@{addr}", Client::connect(&addr).await?.host_key().to_hex());
    let (mut resumed, mut full) = (Vec::new(), Vec::new());
    for _ in 0..s.scale.iterations / 2 {
        // A client that connected before resumes its TLS session (as `roam` commands of one
        // process, and hosts, do); a first contact makes the full handshake.
        let t = Instant::now();
        drop(Client::connect(&pinned).await?);
        resumed.push(t.elapsed().as_secs_f64());
        let config = roam_host::transport::client_config(None)?;
        let t = Instant::now();
        drop(Client::connect_with(&addr, config).await?);
        full.push(t.elapsed().as_secs_f64());
    }
    running.shutdown().await;
    Ok(vec![
        latency("a new connection, first contact (full TLS handshake), loopback", &Stats::new(full), "", "report"),
        latency("a new connection, TLS session resumed, loopback", &Stats::new(resumed), "", "report"),
    ])
}

/// Snapshot capture and restore of a large, fully changed memory.
fn snapshot(s: &Setup) -> Result<Vec<Row>> {
    let size = s.scale.snapshot_mib << 20;
    // As for a real agent: a small initial image (1 MiB), the rest of memory grown since.
    let initial = vec![0u8; 1 << 20];
    let memory: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
    let mut snap = None;
    let capture = sample(s.scale.samples, || {
        snap = Some(Snapshot::capture(&memory, &initial, Vec::new()));
        Ok(())
    })?;
    let snap = snap.context("no snapshot")?;
    let mut target = vec![0u8; size];
    let restore = sample(s.scale.samples, || {
        for c in &snap.chunks {
            target[c.offset as usize..c.offset as usize + c.bytes.len()].copy_from_slice(&c.bytes);
        }
        Ok(())
    })?;
    let gbps = |st: &Stats| size as f64 / st.median() / 1e9;
    Ok(vec![
        Row::new(
            format!("snapshot capture / restore of {} MiB, every page changed", s.scale.snapshot_mib),
            format!("{:.1} / {:.1} GB/s", gbps(&capture), gbps(&restore)),
            format!("{} / {}", time(capture.median()), time(restore.median())),
            "≥ 4 GB/s",
        )
        .reference("Wanco: ~1.1 GB/s checkpoint, ~2.4 GB/s restore at 285 MB"),
    ])
}

/// When each hop of an agent arrived: the receiving host's `agent arrived` event, logged once
/// the agent is persisted there. The time between two arrivals is one whole hop (the visit, the
/// sender's commit, the transfer and the receiver's commit), measured inside the hosts, with no
/// polling.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(u64, Instant)>>>);

impl Arrivals {
    /// Installs the only tracing subscriber of this process: it listens to that one event and,
    /// while [`EXPORTING`] is set, exports roam's spans as `roam host` does with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (to a receiver in this process); it disables everything
    /// else, so the hosts pay for nothing else.
    fn install() -> Result<Self> {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt;
        let arrivals = Self::default();
        let provider =
            roam_host::trace::exporter(Some(format!("{}/v1/traces", otlp_sink()?))).map_err(anyhow::Error::msg)?;
        let traces = roam_host::trace::layer(&provider).with_filter(
            tracing_subscriber::filter::DynFilterFn::new(|m, _| {
                EXPORTING.load(std::sync::atomic::Ordering::Relaxed) && roam_host::trace::traced(m)
            })
            .with_callsite_filter(|m| {
                if roam_host::trace::traced(m) {
                    tracing::subscriber::Interest::sometimes()
                } else {
                    tracing::subscriber::Interest::never()
                }
            }),
        );
        let only_arrivals = tracing_subscriber::filter::filter_fn(|m| {
            m.is_event() && m.target() == "roam_host::agents::arrival" && m.fields().field("hop").is_some()
        });
        let subscriber = tracing_subscriber::registry().with(arrivals.clone().with_filter(only_arrivals)).with(traces);
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(arrivals)
    }

    fn take(&self) -> Vec<(u64, Instant)> {
        std::mem::take(&mut *lock(&self.0))
    }
}

/// The message and `hop` of an event.
#[derive(Default)]
struct ArrivalFields {
    arrived: bool,
    hop: Option<u64>,
}

impl tracing::field::Visit for ArrivalFields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "hop" {
            self.hop = Some(value);
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.arrived = format!("{value:?}") == "agent arrived";
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Arrivals {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = ArrivalFields::default();
        event.record(&mut fields);
        if let (true, Some(hop)) = (fields.arrived, fields.hop) {
            lock(&self.0).push((hop, Instant::now()));
        }
    }
}

/// Whether the benchmark's hosts export their spans (see [`Arrivals::install`]).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An OTLP/HTTP receiver on loopback that takes every export and keeps nothing; its address.
fn otlp_sink() -> Result<String> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || -> Result<()> {
                let mut reader = std::io::BufReader::new(stream.try_clone()?);
                let mut stream = stream;
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    while {
                        line.clear();
                        reader.read_line(&mut line)?;
                        !line.trim().is_empty()
                    } {
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse()?;
                        }
                    }
                    reader.by_ref().take(length).read_to_end(&mut Vec::new())?;
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// What metrics and traces cost. Traces: the same round trips and hops with the spans exported
/// over OTLP (to a receiver in this process) and without, alternately, in rounds. Metrics are
/// always on, so their cost is the time of the updates a round trip and a hop make, measured
/// alone, against the round trip's and the hop's medians.
async fn observability(s: &Setup, arrivals: &Arrivals) -> Result<Vec<Row>> {
    let rounds = if s.smoke { 2 } else { 30 };
    let set = |on: bool| EXPORTING.store(on, std::sync::atomic::Ordering::Relaxed);

    let (running, mut trip) = Trips::start(s, "observability").await?;
    let mut trips = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for on in [false, true] {
            set(on);
            trip.run(s.scale.iterations / rounds, &mut trips[usize::from(on)]).await?;
        }
    }
    set(false);
    running.shutdown().await;
    let [trip_off, trip_on] = trips.map(Stats::new);

    let module = sign(&s.key, &built("hop_counter")?, Kind::Agent, "hop-counter", &[])?;
    let (running, _) = agent_hosts(&s.dir.path().join("agents-observed"), &s.key, false, false).await?;
    let home = running[0].addr().to_string();
    journey(&home, &module, &PEERS.map(String::from)).await?;
    let route: Vec<String> = (0..s.scale.hops / 2).map(|i| PEERS[i % 2].to_owned()).collect();
    let mut hops = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for on in [false, true] {
            set(on);
            arrivals.take();
            journey(&home, &module, &route).await?;
            let mut times = arrivals.take();
            times.sort_by_key(|&(hop, _)| hop);
            hops[usize::from(on)].extend(times.windows(2).map(|w| (w[1].1 - w[0].1).as_secs_f64()));
        }
    }
    set(false);
    for r in running {
        r.shutdown().await;
    }
    let [hop_off, hop_on] = hops.map(Stats::new);

    // The updates on each path (see README's metrics): a round trip counts its request and
    // finds its code in memory; a hop counts the transfer at the sender, the transfer request
    // and the arrival at the receiver, the report request and its code lookup at the home.
    let metrics = roam_host::metrics::Metrics::default();
    let per = |updates: &dyn Fn()| {
        let n = 100_000;
        let t = Instant::now();
        for _ in 0..n {
            updates();
        }
        t.elapsed().as_secs_f64() / f64::from(n)
    };
    let trip_updates = per(&|| {
        metrics.request("eval", "ok", false, 1e-4);
        metrics.module_load("memory");
    });
    let hop_updates = per(&|| {
        metrics.transfer("handed_off", 20_000);
        metrics.request("transfer", "ok", false, 1e-4);
        metrics.hop();
        metrics.request("report", "ok", false, 1e-4);
        metrics.module_load("memory");
    });
    let share = |figure: &str, cost: f64, of: &Stats| {
        Row::new(
            figure,
            format!("{:.2} %", 100.0 * cost / of.median()),
            format!("{} of updates against a p50 of {}", time(cost), time(of.median())),
            "≤ 5 %",
        )
    };
    Ok(vec![
        ratio("round trip with traces exported vs without", &trip_on, &trip_off, "≤ 1.05×"),
        ratio("agent hop with traces exported vs without", &hop_on, &hop_off, "≤ 1.05×"),
        share("metrics' share of a round trip", trip_updates, &trip_off),
        share("metrics' share of an agent hop", hop_updates, &hop_off),
    ])
}

/// A TCP relay in front of a host that records, per connection, the bytes the client sent and
/// how many came back: the bytes actually on the wire, handshake and framing included.
struct Relay {
    addr: SocketAddr,
    flows: Arc<Mutex<Vec<Arc<Mutex<Flow>>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One connection through a [`Relay`], as far as it has gone.
#[derive(Clone, Default)]
struct Flow {
    up: u64,
    down: u64,
}

impl Relay {
    async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let flows: Arc<Mutex<Vec<Arc<Mutex<Flow>>>>> = Arc::default();
        let seen = flows.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flow = Arc::new(Mutex::new(Flow::default()));
                lock(&seen).push(flow.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let ((mut cr, mut cw), (mut sr, mut sw)) = (client.into_split(), server.into_split());
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            lock(&flow).up += n as u64;
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            lock(&flow).down += n as u64;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Self { addr, flows, task })
    }

    /// Every connection so far, open or closed, as far as it has gone: call it once the
    /// exchanges to count have been answered.
    fn flows(&self) -> Vec<Flow> {
        lock(&self.flows).iter().map(|f| lock(f).clone()).collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Flow {
    fn total(&self) -> u64 {
        self.up + self.down
    }
}

/// Home, a and b: three hosts in this process that know each other (keys and addresses). With
/// `relayed`, a and b are known to their peers by the addresses of relays in front of them,
/// which count the bytes; the relays are returned with the hosts.
async fn agent_hosts(
    dir: &Path,
    key: &SecretKey,
    durable: bool,
    relayed: bool,
) -> Result<(Vec<RunningHost>, Vec<Relay>)> {
    let keys = dir.join("host-keys");
    let peers = dir.join("peers");
    std::fs::create_dir_all(&peers)?;
    let trust = dir.join("trust");
    std::fs::create_dir_all(&trust)?;
    std::fs::write(trust.join("bench.pub"), format!("roam-public-key ed25519 {}\n", key.public().to_hex()))?;
    common::open_access(&trust)?;
    let (mut listeners, mut relays, mut addresses) = (Vec::new(), Vec::new(), String::new());
    for name in ["home", "a", "b"] {
        roam_keys::write_keypair(&keys, name)?;
        std::fs::copy(keys.join(format!("{name}.pub")), peers.join(format!("{name}.pub")))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut addr = listener.local_addr()?;
        if relayed && name != "home" {
            let relay = Relay::start(addr).await?;
            addr = relay.addr;
            relays.push(relay);
        }
        addresses.push_str(&format!("{name} = \"{addr}\"\n"));
        listeners.push((name, listener));
    }
    std::fs::write(peers.join("addresses.toml"), addresses)?;
    let mut running = Vec::new();
    for (name, listener) in listeners {
        let mut cfg = HostConfig::new(trust.clone(), dir.join(format!("data-{name}")));
        cfg.name = name.into();
        cfg.key = Some(keys.join(format!("{name}.key")));
        cfg.peers = Some(peers.clone());
        cfg.durable = durable;
        running.push(RunningHost::start_on(Host::open(&cfg)?, listener).await?);
    }
    Ok((running, relays))
}

/// The hosts agents hop between, by name (their peers' address books list them).
const PEERS: [&str; 2] = ["a", "b"];

/// Launches the hop counter at `home` along `route` and waits for it to finish.
async fn journey(home: &str, module: &[u8], route: &[String]) -> Result<()> {
    let mut c = Client::connect(home).await?;
    let input = json_to_cbor(&serde_json::json!({ "hosts": route }));
    let id = match c.request(&Request::Launch { module: module.to_vec(), input }).await? {
        Response::Launched { id } => id,
        other => bail!("launch failed: {other:?}"),
    };
    loop {
        if let Response::Agents(list) = c.request(&Request::Agents { id: Some(id.clone()) }).await?
            && let Some(a) = list.first()
        {
            match a.state.as_str() {
                "finished" => return Ok(()),
                "failed" => bail!("the agent failed: {:?}", a.detail),
                _ => {}
            }
        }
        // Seldom enough not to slow the hops measured.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Agent hops between two hosts, without and with fsync: time per hop, and bytes per hop.
async fn hops(s: &Setup, arrivals: &Arrivals) -> Result<Vec<Row>> {
    let module = sign(&s.key, &built("hop_counter")?, Kind::Agent, "hop-counter", &[])?;
    let mut rows = Vec::new();
    for durable in [false, true] {
        let (running, _) = agent_hosts(&s.dir.path().join(format!("agents-{durable}")), &s.key, durable, false).await?;
        let home = running[0].addr().to_string();
        // Warm up: every host compiles the agent once.
        journey(&home, &module, &PEERS.map(String::from)).await?;
        let route: Vec<String> = (0..s.scale.hops).map(|i| PEERS[i % 2].to_owned()).collect();
        let mut per_hop = Vec::new();
        for _ in 0..s.scale.hop_agents {
            arrivals.take();
            journey(&home, &module, &route).await?;
            let mut times = arrivals.take();
            ensure!(times.len() == route.len(), "{} arrivals logged for {} hops", times.len(), route.len());
            times.sort_by_key(|&(hop, _)| hop);
            per_hop.extend(times.windows(2).map(|w| (w[1].1 - w[0].1).as_secs_f64()));
        }
        let per_hop = Stats::new(per_hop);
        let note = format!("; {} hops", per_hop.0.len());
        rows.push(if durable {
            latency("agent hop, small agent, loopback, with fsync", &per_hop, &note, "report")
        } else {
            latency("agent hop, small agent, loopback, without fsync", &per_hop, &note, "p50 ≤ 300 µs, p99 ≤ 1 ms")
                .reference("Nomad < 2 ms; Igor ~300 ms (recompiles every hop)")
        });
        if !durable {
            rows.push(wire_per_hop(s, &module).await?);
        }
        for r in running {
            r.shutdown().await;
        }
    }
    Ok(rows)
}

/// Bytes on the wire per hop: the agent goes through relays in front of a and b, which count
/// every byte of the connections to them (TLS handshakes and records, envelopes, snapshots,
/// receipts). Everything is encrypted, so the relays cannot tell the transfers apart: the figure
/// is the mean over the journey's hops. Hosts keep connections to their peers, so a handshake
/// is shared by the transfers of its connection.
async fn wire_per_hop(s: &Setup, module: &[u8]) -> Result<Row> {
    let (running, relays) = agent_hosts(&s.dir.path().join("agents-wire"), &s.key, false, true).await?;
    let home = running[0].addr().to_string();
    // Per relay, per connection in the order they were opened.
    let counted = || -> Vec<Vec<u64>> { relays.iter().map(|r| r.flows().iter().map(Flow::total).collect()).collect() };
    // Warm up, as the hop figure does: a and b fetch and compile the agent once.
    journey(&home, module, &PEERS.map(String::from)).await?;
    let before = counted();
    let route: Vec<String> = (0..s.scale.wire_hops).map(|i| PEERS[i % 2].to_owned()).collect();
    journey(&home, module, &route).await?;
    // Connections kept from the warm-up carry some of the journey: count what each one moved since.
    let moved: Vec<u64> = counted()
        .iter()
        .zip(&before)
        .flat_map(|(now, then)| now.iter().enumerate().map(|(i, n)| n - then.get(i).copied().unwrap_or(0)))
        .filter(|&n| n > 0)
        .collect();
    let total: u64 = moved.iter().sum();
    ensure!(total > 0, "nothing went through the relays");
    for r in running {
        r.shutdown().await;
    }
    Ok(Row::new(
        "bytes on the wire per hop, small agent",
        bytes(total as f64 / route.len() as f64),
        format!("mean of {} hops over {} connections, TLS included", route.len(), moved.len()),
        "≤ 16 KiB + changed pages",
    ))
}

/// One page of `table-dump`'s result.
#[derive(Deserialize)]
struct Page {
    rows: Vec<(i64, i64, i64, String, String, i64, i64)>,
    last: Option<i64>,
}

/// `sales-by-region`'s result.
#[derive(Deserialize)]
struct ByRegion {
    regions: Vec<RegionTotal>,
}

#[derive(Deserialize)]
struct RegionTotal {
    region: String,
    orders: u64,
    total_cents: i64,
}

/// Data shipping: pulls every row of the table, a page at a time, and aggregates here what
/// `sales-by-region` aggregates at the host.
async fn pull_and_aggregate(client: &mut Client, dump: &[u8], page_rows: u32) -> Result<BTreeMap<String, (u64, i64)>> {
    let mut totals = BTreeMap::<String, (u64, i64)>::new();
    let mut after = 0;
    loop {
        let out = client.eval(dump, json_to_cbor(&serde_json::json!({ "after": after, "limit": page_rows }))).await?;
        let page: Page = ciborium::from_reader(out.as_slice())?;
        for (_, _, day, region, _, quantity, amount) in page.rows {
            if quantity >= 1 && (1..=365).contains(&day) {
                let e = totals.entry(region).or_default();
                e.0 += 1;
                e.1 += amount;
            }
        }
        match page.last {
            Some(last) => after = last,
            None => return Ok(totals),
        }
    }
}

/// Remote evaluation against data shipping on the same table and host, over the same TCP path.
async fn shipping(s: &Setup) -> Result<Vec<Row>> {
    let mut cfg = HostConfig::new(s.trust_dir.clone(), s.dir.path().join("shipping"));
    cfg.add_table(&format!("sales={}", s.sales_csv()?.display()))?;
    let running = RunningHost::start(Host::open(&cfg)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let by_region = sign(&s.key, &built("sales_by_region")?, Kind::Query, "sales-by-region", &["table:sales"])?;
    let dump = sign(&s.key, &built("table_dump")?, Kind::Query, "table-dump", &["table:sales"])?;
    let input = json_to_cbor(&serde_json::json!({}));
    let mut client = Client::connect(&addr).await?;
    // Both modules held and compiled by the host before anything is timed.
    client.eval(&dump, json_to_cbor(&serde_json::json!({ "after": 0, "limit": 1 }))).await?;
    let answer: ByRegion = ciborium::from_reader(client.eval(&by_region, input.clone()).await?.as_slice())?;
    let (mut rev, mut ship) = (Vec::new(), Vec::new());
    for _ in 0..s.scale.samples {
        let t = Instant::now();
        client.eval(&by_region, input.clone()).await?;
        rev.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let totals = pull_and_aggregate(&mut client, &dump, s.scale.page_rows).await?;
        ship.push(t.elapsed().as_secs_f64());
        let expected: BTreeMap<String, (u64, i64)> =
            answer.regions.iter().map(|r| (r.region.clone(), (r.orders, r.total_cents))).collect();
        ensure!(totals == expected, "data shipping and remote evaluation disagree");
    }
    // The bytes, through a relay: each way's whole connection, handshake included.
    let relay = Relay::start(running.addr()).await?;
    let mut client = Client::connect(&relay.addr.to_string()).await?;
    client.eval(&by_region, input.clone()).await?;
    drop(client);
    let mut client = Client::connect(&relay.addr.to_string()).await?;
    pull_and_aggregate(&mut client, &dump, s.scale.page_rows).await?;
    drop(client);
    let flows = relay.flows();
    ensure!(flows.len() == 2, "{} connections went through the relay, not 2", flows.len());
    let (rev_bytes, ship_bytes) = (flows[0].total() as f64, flows[1].total() as f64);
    running.shutdown().await;
    let (rev, ship) = (Stats::new(rev), Stats::new(ship));
    Ok(vec![
        ratio(format!("remote evaluation vs data shipping, {} rows: wall time", s.scale.rows), &ship, &rev, "≥ 20×"),
        Row::new(
            "  … bytes on the wire",
            format!("{:.0}×", ship_bytes / rev_bytes),
            format!("{} vs {}", bytes(ship_bytes), bytes(rev_bytes)),
            "≥ 1000×",
        ),
    ])
}

/// A valid code module of about `size` bytes: the quick query and enough small functions,
/// each a chain of arithmetic, to make up the size; Cranelift compiles every one of them.
fn large_module(size: usize) -> Result<Vec<u8>> {
    const OPS: [&str; 3] = ["add", "xor", "mul"];
    // Each function is about 250 bytes of code: 48 pairs of a constant and an operation.
    let mut wat = String::from(QUICK.strip_suffix(')').context("QUICK is one module")?);
    for f in 0..size / 250 {
        wat.push_str(&format!("\n  (func $f{f} (param i32) (result i32) local.get 0"));
        for k in 0..48 {
            wat.push_str(&format!(" i32.const {} i32.{}", (f * 48 + k) * 7919 % 1_000_003, OPS[k % 3]));
        }
        wat.push(')');
    }
    wat.push(')');
    Ok(wat::parse_str(&wat)?)
}

/// Code on demand through `CodeOnDemand`, the API `roam run` uses: a cold fetch from a host
/// into an empty cache, then a warm start from that cache by a fresh client (as a new `roam
/// run` process would start), for a large generated module and for the order validator.
async fn code_on_demand(s: &Setup) -> Result<Vec<Row>> {
    let cfg = HostConfig::new(s.trust_dir.clone(), s.dir.path().join("code-host"));
    let running = RunningHost::start(Host::open(&cfg)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let mut publisher = Client::connect(&addr).await?;
    let large = sign(&s.key, &large_module(s.scale.module_bytes)?, Kind::Code, "large", &[])?;
    let validator = sign(&s.key, &built("order_validator")?, Kind::Code, "order-validator", &[])?;
    let order = serde_json::json!({
        "id": 1, "region": "north", "product": "anvil", "quantity": 3, "unit_cents": 250, "total_cents": 750, "day": 12
    });
    let mut rows = Vec::new();
    for (name, module, input) in [("large", large, vec![0xa0]), ("order-validator", validator, json_to_cbor(&order))] {
        publisher.publish(module.clone()).await?;
        let spec: ModuleSpec = name.parse().map_err(anyhow::Error::msg)?;
        let client = |cache: &Path| -> Result<CodeOnDemand> {
            Ok(CodeOnDemand::builder(s.trust.clone()).cache_dir(cache.to_owned()).build()?)
        };
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for i in 0..s.scale.samples {
            let cache = s.dir.path().join(format!("cache-{name}-{i}"));
            let cod = client(&cache)?;
            let t = Instant::now();
            cod.fetch(&addr, &spec).await?;
            cold.push(t.elapsed().as_secs_f64());
            drop(cod);
            let cod = client(&cache)?;
            let t = Instant::now();
            let fetched = cod.fetch(&addr, &spec).await?;
            warm.push(t.elapsed().as_secs_f64());
            std::hint::black_box(cod.call_raw(&fetched, input.clone()))?;
        }
        let size = bytes(module.len() as f64);
        rows.push(
            row(
                format!("code on demand: cold fetch + verify + compile, {name} ({size})"),
                &Stats::new(cold),
                "≤ 150 ms",
            )
            .reference("Cranelift ~8–11 MB of Wasm per second (wasmtime #6798, #5328)"),
        );
        rows.push(
            row(
                format!("code on demand: warm start from the verified cache, {name} ({size})"),
                &Stats::new(warm),
                "≤ 100 µs",
            )
            .reference("load a precompiled module from disk ~90–110 µs (wasmtime #6420)"),
        );
    }
    running.shutdown().await;
    Ok(rows)
}

/// A `roam host` process on a free port of loopback, killed when dropped.
struct HostProcess {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the host's writes to a closed stdout would fail.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

/// The `roam` binary beside this benchmark's executable (`target/PROFILE/deps/figures-…` →
/// `target/PROFILE/roam`), or `$ROAM_BIN`; `cargo xtask bench` builds it first.
fn roam_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ROAM_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(Path::parent).context("no target directory")?.join("roam");
    ensure!(bin.is_file(), "{} is missing: run `cargo xtask bench`, which builds it", bin.display());
    Ok(bin)
}

impl HostProcess {
    /// Starts `roam host` with `--trust trust --data-dir data` and waits until it listens. The
    /// benchmark's clients all connect from 127.0.0.1, one source as the host counts them: it
    /// may hold as many connections as the host does.
    fn spawn(trust: &Path, data: &Path) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let config = data.join("host.toml");
        std::fs::write(
            &config,
            format!("trust = {:?}\n[limits]\nconnections_per_source = 256\n", trust.display().to_string()),
        )?;
        let mut child = Command::new(roam_bin()?)
            .args(["host", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--trust")
            .arg(trust)
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start `roam host`")?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr =
            line.trim().strip_prefix("listening on ").with_context(|| format!("roam host said {line:?}"))?.parse();
        // Built first, so that the host is killed if its answer does not parse.
        let mut host = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), _stdout: stdout };
        host.addr = addr?;
        Ok(host)
    }

    /// Resident memory now and at its peak, in bytes, from /proc.
    fn memory(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<f64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
            let kib: f64 = line.split_whitespace().nth(1).context("no value")?.parse()?;
            Ok(kib * 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Bytes the process has caused to be written to disk, from /proc.
    fn written(&self) -> Result<f64> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id()))?;
        let line = io.lines().find(|l| l.starts_with("write_bytes:")).context("no write_bytes")?;
        Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
    }

    /// CPU time the process has used, in seconds, from /proc (user + system, at 100 ticks/s).
    fn cpu(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let fields: Vec<&str> = stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Small evaluations from concurrent clients against one `roam host` process: requests per
/// second and the latency each client sees. Clients and host share the machine's cores.
async fn throughput(s: &Setup) -> Result<Vec<Row>> {
    let host = HostProcess::spawn(&s.trust_dir, &s.dir.path().join("throughput"))?;
    let addr = host.addr.to_string();
    let quick = sign(&s.key, &wat::parse_str(QUICK)?, Kind::Query, "quick", &[])?;
    Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?;
    let by_hash = Request::Eval { module: ModuleRef::Hash(roam_keys::hash_module(&quick)), input: vec![0xa0] };
    let mut rows = Vec::new();
    for clients in CLIENTS {
        let mut connected = Vec::new();
        for _ in 0..clients {
            connected.push(Client::connect(&addr).await?);
        }
        let start = Instant::now();
        let until = start + s.scale.load;
        let mut tasks = tokio::task::JoinSet::new();
        for mut client in connected {
            let request = by_hash.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let r = client.request(&request).await?;
                    latencies.push(t.elapsed().as_secs_f64());
                    ensure!(matches!(r, Response::Result(_)), "unexpected {r:?}");
                }
                anyhow::Ok(latencies)
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done??);
        }
        let rate = all.len() as f64 / start.elapsed().as_secs_f64();
        let all = Stats::new(all);
        rows.push(Row::new(
            format!("host throughput, small evaluations, {clients} concurrent clients"),
            format!("{rate:.0} req/s"),
            format!("p50 {} – p99 {}", time(all.median()), time(all.q(0.99))),
            "report",
        ));
    }
    Ok(rows)
}

/// Many agents parked on one `roam host` process: each is launched there (its home) to go to
/// a destination that refuses connections, so it runs its start entry, fails to leave and
/// parks. Then the host's memory and disk, and how long it takes to serve again after a crash.
async fn parked(s: &Setup) -> Result<Vec<Row>> {
    let data = s.dir.path().join("parked");
    let n = s.scale.parked;
    let mut host = HostProcess::spawn(&s.trust_dir, &data)?;
    let module = sign(&s.key, &built("hop_counter")?, Kind::Agent, "hop-counter", &[])?;
    // Port 1 of loopback refuses connections: a destination host that is down.
    let input = json_to_cbor(&serde_json::json!({ "hosts": ["127.0.0.1:1"] }));
    let addr = host.addr.to_string();
    let start = Instant::now();
    let launchers = 4;
    let mut tasks = tokio::task::JoinSet::new();
    for l in 0..launchers {
        let (addr, module, input) = (addr.clone(), module.clone(), input.clone());
        tasks.spawn(async move {
            let mut client = Client::connect(&addr).await?;
            for _ in (l..n).step_by(launchers) {
                let r = client.request(&Request::Launch { module: module.clone(), input: input.clone() }).await?;
                ensure!(matches!(r, Response::Launched { .. }), "launch failed: {r:?}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let launched = start.elapsed().as_secs_f64();
    let db = data.join("state.db");
    let count_parked = || -> Result<usize> {
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(conn.query_row("SELECT count(*) FROM agents WHERE state = 'parked'", [], |r| r.get(0))?)
    };
    while count_parked()? < n {
        ensure!(start.elapsed() < Duration::from_secs(600), "only {} of {n} agents parked", count_parked()?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_parked = start.elapsed().as_secs_f64();
    let (rss, peak) = host.memory()?;
    let disk: u64 = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.db"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();

    // A crash, then a restart: until the host listens, and until it answers.
    drop(host);
    let t = Instant::now();
    host = HostProcess::spawn(&s.trust_dir, &data)?;
    let listening = t.elapsed().as_secs_f64();
    let mut client = Client::connect(&host.addr.to_string()).await?;
    ensure!(matches!(client.request(&Request::Ping).await?, Response::Pong), "no pong");
    let serving = t.elapsed().as_secs_f64();
    // What the restarted host does with its parked agents: it retries them with a backoff.
    let (cpu, written) = (host.cpu()?, host.written()?);
    let mut pings = Vec::new();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(if s.smoke { 1 } else { 5 }) {
        let t = Instant::now();
        ensure!(matches!(client.request(&Request::Ping).await?, Response::Pong), "no pong");
        pings.push(t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = (host.cpu()? - cpu) / watch.elapsed().as_secs_f64();
    let writes = (host.written()? - written) / watch.elapsed().as_secs_f64();
    let (rss_after, _) = host.memory()?;
    let pings = Stats::new(pings);
    ensure!(count_parked()? == n, "agents were lost across the restart");
    Ok(vec![
        Row::new(
            format!("{n} parked agents: launch until all parked"),
            time(all_parked),
            format!("{:.0} agents/s; launch requests done in {}", n as f64 / all_parked, time(launched)),
            "report",
        ),
        Row::new(
            "  … host memory (RSS) and state database on disk",
            format!("{} / {}", bytes(rss), bytes(disk as f64)),
            format!("peak RSS {}; {} per agent on disk", bytes(peak), bytes(disk as f64 / n as f64)),
            "report",
        ),
        Row::new(
            "  … restart after a crash: listening / serving",
            format!("{} / {}", time(listening), time(serving)),
            format!(
                "then, retrying them: {:.0}% of a core, {}/s written, RSS {}, ping p50 {} p99 {}",
                busy * 100.0,
                bytes(writes),
                bytes(rss_after),
                time(pings.median()),
                time(pings.q(0.99))
            ),
            "report",
        ),
    ])
}

/// SQLite's dialect of the example's reports (no date or interval literals; dates are text).
const REVENUE_SQLITE: &str = "SELECT sum(l_extendedprice * l_discount) FROM lineitem \
     WHERE l_shipdate >= '1994-01-01' AND l_shipdate < '1995-01-01' AND l_discount BETWEEN 0.05 AND 0.07 \
     AND l_quantity < 24";
const SUMMARY_SQLITE: &str = "SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice), \
     sum(l_extendedprice * (1 - l_discount)), sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)), \
     avg(l_quantity), avg(l_extendedprice), avg(l_discount), count(*) \
     FROM lineitem WHERE l_shipdate <= '1998-09-02' GROUP BY l_returnflag, l_linestatus \
     ORDER BY l_returnflag, l_linestatus";

/// What DuckDB measured (host/benches/analytics_duckdb.py).
#[derive(Deserialize)]
struct DuckDb {
    load_s: f64,
    revenue: DuckDbReport,
    summary: DuckDbReport,
}

#[derive(Deserialize)]
struct DuckDbReport {
    median_s: f64,
    rows: Vec<Vec<serde_json::Value>>,
}

/// Whether two answers agree cell by cell: equal, or numbers within `tolerance` of each other
/// relatively (exact decimals are compared as numbers too: DuckDB's averages are doubles).
fn agree(a: &[Vec<serde_json::Value>], b: &[Vec<serde_json::Value>], tolerance: f64) -> bool {
    let number = |v: &serde_json::Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse::<f64>().ok()));
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| {
            p == q
                || matches!((number(p), number(q)), (Some(p), Some(q)) if (p - q).abs() <= tolerance * p.abs().max(1.0))
        })
        })
}

/// An analytic workload (order lines as in TPC-H; a filtered sum and a grouped aggregate, the
/// example module lineitem-report) in roam's columnar engine, through `roam eval`'s round trip
/// with the module cached, both as the engine's SQL and as column batches aggregated in Wasm;
/// against DuckDB in-process (Python) and SQLite in-process on the same data, in this run.
async fn analytics(s: &Setup) -> Result<Vec<Row>> {
    let n = s.scale.order_lines;
    let csv = s.dir.path().join("lineitem.csv");
    lineitem::write_csv(&csv, n)?;

    // DuckDB first, while this process holds nothing big.
    let duckdb_path = std::env::var_os("ROAM_BENCH_DUCKDB").context(
        "ROAM_BENCH_DUCKDB is not set: run the benchmark through `cargo xtask bench`, which installs DuckDB",
    )?;
    let out = Command::new("python3")
        .env("PYTHONPATH", duckdb_path)
        .arg(repo().join("host/benches/analytics_duckdb.py"))
        .arg(&csv)
        .arg(s.scale.samples.to_string())
        .output()
        .context("cannot run python3")?;
    ensure!(out.status.success(), "DuckDB's run failed: {}", String::from_utf8_lossy(&out.stderr));
    let duck: DuckDb = serde_json::from_slice(&out.stdout).context("DuckDB's run printed unexpected JSON")?;

    // The columnar table, converted from the CSV: the import that DuckDB's load compares with.
    let data_dir = s.dir.path().join("analytics");
    let decimal = |p| roam_host::resources::ColumnType::Decimal { precision: p, scale: 2 };
    let columns = BTreeMap::from([
        ("l_extendedprice".to_owned(), decimal(15)),
        ("l_discount".to_owned(), decimal(15)),
        ("l_tax".to_owned(), decimal(15)),
        ("l_shipdate".to_owned(), roam_host::resources::ColumnType::Date),
    ]);
    let started = Instant::now();
    let mut converted = Resources::default();
    converted.add_columnar_table("lineitem", Attachment::Fastened, &csv, &data_dir, &columns, 256 << 20)?;
    let import = started.elapsed().as_secs_f64();
    drop(converted);

    // A host holding it (the conversion above is reused), and a client evaluating the module;
    // first with the table read from its Parquet file at every statement, as a host does before
    // its copy in memory is read (or without room for it), then as it is read once it is.
    let module = sign(&s.key, &built("lineitem_report")?, Kind::Query, "lineitem-report", &["table:lineitem"])?;
    let report = async |client: &mut Client, report: &str, via: &str| -> Result<(Stats, Vec<Vec<serde_json::Value>>)> {
        let input = json_to_cbor(&serde_json::json!({"report": report, "via": via}));
        let mut times = Vec::new();
        let mut rows = Vec::new();
        // One call first, which also hands the host the module: the samples are cached calls.
        for i in 0..=s.scale.samples {
            let t = Instant::now();
            let out = client.eval(&module, input.clone()).await?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
            let out = roam_host::client::cbor_to_json(&out).map_err(anyhow::Error::msg)?;
            rows = serde_json::from_value(out["rows"].clone())?;
        }
        Ok((Stats::new(times), rows))
    };
    let host = |table_memory_mib: usize| -> Result<Host> {
        let mut cfg = HostConfig::new(s.trust_dir.clone(), data_dir.clone());
        cfg.limits.time_ms = 120_000;
        cfg.limits.table_memory_mib = table_memory_mib;
        cfg.resources.push(roam_host::config::ResourceConfig {
            name: "lineitem".into(),
            kind: roam_host::resources::ResourceType::Table,
            attachment: Attachment::Fastened,
            source: Some(csv.clone()),
            columns: columns.clone(),
            engine: Some(roam_host::config::TableEngine::Columnar),
        });
        Host::open(&cfg)
    };
    let running = RunningHost::start(host(0)?, "127.0.0.1:0".parse()?).await?;
    let mut client = Client::connect(&running.addr().to_string()).await?;
    let (revenue_disk, on_disk) = report(&mut client, "revenue", "sql").await?;
    running.shutdown().await;

    let held = host(4096)?;
    let table = held.resources().get("lineitem").cloned().context("the host has no lineitem")?;
    let loading = Instant::now();
    let deadline = loading + Duration::from_secs(600);
    while table.storage() == Some(roam_host::resources::Storage::Loading) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let load = loading.elapsed().as_secs_f64();
    let Some(roam_host::resources::Storage::Memory(held_bytes)) = table.storage() else {
        bail!("the table is not held in memory: {:?}", table.storage());
    };
    let running = RunningHost::start(held, "127.0.0.1:0".parse()?).await?;
    let mut client = Client::connect(&running.addr().to_string()).await?;
    let (revenue_sql, revenue) = report(&mut client, "revenue", "sql").await?;
    let (revenue_columns, revenue_in_wasm) = report(&mut client, "revenue", "columns").await?;
    let (summary_sql, summary) = report(&mut client, "summary", "sql").await?;
    let (summary_columns, summary_in_wasm) = report(&mut client, "summary", "columns").await?;
    let (scan, scanned) = report(&mut client, "scan", "columns").await?;
    running.shutdown().await;
    ensure!(scanned == vec![vec![serde_json::json!(4 * n)]], "the scan read {scanned:?} values, not {}", 4 * n);
    // Exact sums: the same digits in the engine, in Wasm and in DuckDB; averages to a millionth
    // (the engine shows a decimal's average to 6 places).
    ensure!(
        revenue == revenue_in_wasm && revenue == duck.revenue.rows && revenue == on_disk,
        "revenue: {revenue:?} {revenue_in_wasm:?} {:?}",
        duck.revenue.rows
    );
    ensure!(
        agree(&summary, &summary_in_wasm, 1e-6) && agree(&summary, &duck.summary.rows, 1e-6),
        "summary: {summary:?}\n{summary_in_wasm:?}\n{:?}",
        duck.summary.rows
    );

    // SQLite in-process on the same lines, imported by roam's SQLite path (decimals as REAL).
    let started = Instant::now();
    let mut sqlite = Resources::default();
    sqlite.add_table("lineitem", Attachment::Fastened, &csv, &s.dir.path().join("analytics-sqlite"))?;
    let sqlite_import = started.elapsed().as_secs_f64();
    drop(sqlite);
    let conn = rusqlite::Connection::open_with_flags(
        s.dir.path().join("analytics-sqlite/tables/lineitem.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let in_sqlite = |sql: &str| -> Result<(Stats, Vec<Vec<serde_json::Value>>)> {
        let mut answer = Vec::new();
        let stats = sample(s.scale.samples, || {
            let mut stmt = conn.prepare_cached(sql)?;
            let columns = stmt.column_count();
            let rows = stmt.query_map([], |r| {
                (0..columns)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Integer(v) => serde_json::json!(v),
                            rusqlite::types::ValueRef::Real(v) => serde_json::json!(v),
                            rusqlite::types::ValueRef::Text(t) => serde_json::json!(String::from_utf8_lossy(t)),
                            _ => serde_json::Value::Null,
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?;
            answer = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(())
        })?;
        Ok((stats, answer))
    };
    let (revenue_sqlite, answer) = in_sqlite(REVENUE_SQLITE)?;
    ensure!(agree(&revenue, &answer, 1e-9), "SQLite's revenue: {answer:?}, the engine's {revenue:?}");
    let (summary_sqlite, answer) = in_sqlite(SUMMARY_SQLITE)?;
    ensure!(agree(&summary, &answer, 1e-6), "SQLite's summary: {answer:?}, the engine's {summary:?}");

    let duck_time = |median_s: f64| Stats::new(vec![median_s]);
    let (duck_revenue, duck_summary) = (duck_time(duck.revenue.median_s), duck_time(duck.summary.median_s));
    let values_per_s = (4 * n) as f64 / scan.median();
    let lines = if n >= 1_000_000 { format!("{} M", n / 1_000_000) } else { format!("{n}") };
    Ok(vec![
        Row::new(
            format!("CSV import of {lines} order lines into the columnar engine (Parquet)"),
            format!("{import:.2} s"),
            format!("DuckDB {:.2} s, SQLite {sqlite_import:.2} s", duck.load_s),
            "report",
        ),
        Row::new("  … vs DuckDB's read_csv", format!("{:.2}×", import / duck.load_s), "one load each".into(), "≤ 2×"),
        Row::new(
            "  … held in memory after a (re)start",
            format!("{load:.2} s"),
            format!("{} MiB, read from Parquet in the background", held_bytes >> 20),
            "report",
        ),
        row(format!("filtered sum over {lines} lines, engine SQL, `roam eval`"), &revenue_sql, "report"),
        ratio("  … vs DuckDB in-process", &revenue_sql, &duck_revenue, "≤ 3×"),
        ratio("  … SQLite in-process vs it", &revenue_sqlite, &revenue_sql, "report"),
        ratio("  … columns aggregated in Wasm vs engine SQL", &revenue_columns, &revenue_sql, "≤ 1.5×"),
        ratio("  … read from Parquet vs held in memory", &revenue_disk, &revenue_sql, "report"),
        row(format!("grouped aggregate over {lines} lines, engine SQL, `roam eval`"), &summary_sql, "report"),
        ratio("  … vs DuckDB in-process", &summary_sql, &duck_summary, "≤ 3×"),
        ratio("  … SQLite in-process vs it", &summary_sqlite, &summary_sql, "report"),
        ratio("  … columns aggregated in Wasm vs engine SQL", &summary_columns, &summary_sql, "≤ 1.5×"),
        Row::new(
            "values into Wasm, four whole columns as column batches",
            format!("{:.0} M/s", values_per_s / 1e6),
            format!("{} values in {}", 4 * n, time(scan.median())),
            "≥ 200 M/s",
        ),
    ])
}
