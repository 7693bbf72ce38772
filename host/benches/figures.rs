//! roam's performance figures, measured in one run and printed as one table.
//!
//! `cargo xtask bench` runs it in full (it builds the example modules first); `cargo xtask
//! bench --smoke` runs every figure briefly, which CI does so the benchmark never rots. Each
//! figure is a median with its spread (p10–p90) over repeated samples, and each comparison is a
//! ratio of two medians measured in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use roam_host::client::Client;
use roam_host::config::HostConfig;
use roam_host::engine::{Engine, Limits};
use roam_host::host::Host;
use roam_host::protocol::{ModuleRef, Request, Response};
use roam_host::resources::{Attachment, Resources};
use roam_host::server::RunningHost;
use roam_host::snapshot::Snapshot;
use roam_keys::{Kind, SecretKey, SignRequest, TrustStore, VerifyContext};

#[path = "../../tests/sample.rs"]
mod sample;

/// A query that answers CBOR `true` at once.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// Sizes of the run: full, or a seconds-long smoke run.
struct Scale {
    rows: usize,
    samples: usize,
    iterations: usize,
    hops: usize,
    snapshot_mib: usize,
}

const FULL: Scale = Scale { rows: 1_000_000, samples: 7, iterations: 2_000, hops: 200, snapshot_mib: 256 };
const SMOKE: Scale = Scale { rows: 20_000, samples: 3, iterations: 100, hops: 10, snapshot_mib: 8 };

/// Sorted samples, in seconds.
struct Stats(Vec<f64>);

impl Stats {
    fn new(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self(v)
    }
    fn q(&self, p: f64) -> f64 {
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i]
    }
    fn median(&self) -> f64 {
        self.q(0.5)
    }
}

fn time(d: f64) -> String {
    match d {
        d if d < 1e-6 => format!("{:.0} ns", d * 1e9),
        d if d < 1e-3 => format!("{:.1} µs", d * 1e6),
        d if d < 1.0 => format!("{:.2} ms", d * 1e3),
        d => format!("{d:.2} s"),
    }
}

/// One row of the table.
struct Row {
    figure: String,
    value: String,
    spread: String,
    goal: &'static str,
}

fn row(figure: impl Into<String>, s: &Stats, goal: &'static str) -> Row {
    Row {
        figure: figure.into(),
        value: time(s.median()),
        spread: format!("p10 {} – p90 {}", time(s.q(0.1)), time(s.q(0.9))),
        goal,
    }
}

fn ratio(figure: impl Into<String>, a: &Stats, b: &Stats, goal: &'static str) -> Row {
    Row {
        figure: figure.into(),
        value: format!("{:.2}×", a.median() / b.median()),
        spread: format!("{} vs {}", time(a.median()), time(b.median())),
        goal,
    }
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

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn built(name: &str) -> Result<Vec<u8>> {
    let path = repo().join("agents/target/wasm32-unknown-unknown/release").join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("{} is missing: run `cargo xtask agents`", path.display()))
}

fn sign(key: &SecretKey, wasm: &[u8], kind: Kind, name: &str, caps: &[&str]) -> Result<Vec<u8>> {
    let now = roam_host::state::now_secs();
    let request = SignRequest {
        kind,
        name: name.into(),
        version: semver::Version::new(1, 0, 0),
        issued_at: now,
        not_before: now,
        expires: now + 3600,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    };
    Ok(roam_keys::sign_module(wasm, key, request)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    // `--only hops` (or instantiate, aggregate, round-trip, snapshot) measures one group.
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let want = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let scale = if smoke { SMOKE } else { FULL };
    let dir = tempfile::tempdir()?;
    let (key_path, _, _) = roam_keys::write_keypair(&dir.path().join("keys"), "bench")?;
    let key = SecretKey::load(&key_path)?;
    let trust_dir = dir.path().join("trust");
    std::fs::create_dir_all(&trust_dir)?;
    std::fs::copy(dir.path().join("keys/bench.pub"), trust_dir.join("bench.pub"))?;
    let trust = TrustStore::load(&trust_dir)?;
    let mut rows = Vec::new();

    // Warm instantiate (and an empty call) of a module the engine has compiled.
    let engine = Engine::new(Limits { instances: 8, ..Limits::default() }, None)?;
    let quick = sign(&key, &wat::parse_str(QUICK)?, Kind::Query, "quick", &[])?;
    let quick_hash = roam_keys::hash_module(&quick);
    let verified = roam_keys::verify(quick.clone(), &VerifyContext::new(&trust, roam_host::state::now_secs()))?;
    let runnable = engine.load(quick_hash, &verified)?;
    let none = Arc::new(Resources::default());
    let per_call = |n: usize| -> Result<Stats> {
        let mut v = Vec::new();
        for _ in 0..scale.samples {
            let t = Instant::now();
            for _ in 0..n {
                engine.run(&runnable, vec![0xa0], none.clone())?;
            }
            v.push(t.elapsed().as_secs_f64() / n as f64);
        }
        Ok(Stats::new(v))
    };
    if want("instantiate") {
        rows.push(row("warm instantiate + empty call, cached module", &per_call(scale.iterations)?, "≤ 5 µs"));
    }

    if want("aggregate") {
        // The data: one sales table, loaded once.
        let csv = dir.path().join("sales.csv");
        sample::write_csv(&csv, &sample::generate(scale.rows, 1))?;
        let mut resources = Resources::default();
        resources.add_table("sales", Attachment::Fastened, &csv, dir.path())?;
        let resources = Arc::new(resources);
        let db = dir.path().join("tables/sales.db");

        // Aggregate: the example query in Wasm, the same Rust natively, and SQLite's own SQL.
        let query = sign(&key, &built("sales_by_region")?, Kind::Query, "sales-by-region", &["table:sales"])?;
        let verified = roam_keys::verify(query.clone(), &VerifyContext::new(&trust, roam_host::state::now_secs()))?;
        let agg = engine.load(roam_keys::hash_module(&query), &verified)?;
        let input = roam_host::client::json_to_cbor(&serde_json::json!({}));
        let wasm =
            sample(scale.samples, || engine.run(&agg, input.clone(), resources.clone()).map(drop).map_err(Into::into))?;
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let native = sample(scale.samples, || {
            let mut stmt = conn.prepare_cached(
                "SELECT region, amount_cents FROM sales WHERE quantity >= ?1 AND day BETWEEN ?2 AND ?3",
            )?;
            let mut totals = std::collections::BTreeMap::<String, (u64, i64)>::new();
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
        let sql = sample(scale.samples, || {
            let mut stmt = conn.prepare_cached(
                "SELECT region, count(*), sum(amount_cents) FROM sales \
             WHERE quantity >= 1 AND day BETWEEN 1 AND 365 GROUP BY region ORDER BY region",
            )?;
            let n = stmt.query_map([], |r| r.get::<_, i64>(1))?.count();
            std::hint::black_box(n);
            Ok(())
        })?;
        rows.push(row(format!("aggregate over {} rows, Wasm query", scale.rows), &wasm, "—"));
        rows.push(ratio("  … Wasm vs the same Rust natively in the host", &wasm, &native, "≤ 1.3×"));
        rows.push(ratio("  … Wasm vs SQLite's own SQL", &wasm, &sql, "report"));
    }

    if want("round-trip") {
        // Remote evaluation round trip, module held by the host, loopback.
        let host_dir = dir.path().join("host");
        let mut cfg = HostConfig::new(trust_dir.clone(), host_dir.clone());
        cfg.durable = !smoke;
        let host = Host::open(&cfg)?;
        let running = RunningHost::start(host, "127.0.0.1:0".parse()?).await?;
        let mut client = Client::connect(&running.addr().to_string()).await?;
        client.eval(&quick, vec![0xa0]).await?;
        let by_hash = Request::Eval { module: ModuleRef::Hash(quick_hash), input: vec![0xa0] };
        let mut trips = Vec::with_capacity(scale.iterations);
        for _ in 0..scale.iterations {
            let t = Instant::now();
            let r = client.request(&by_hash).await?;
            trips.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(matches!(r, Response::Result(_)), "unexpected {r:?}");
        }
        let trips = Stats::new(trips);
        rows.push(Row {
            figure: "remote evaluation round trip, small query, cached".into(),
            value: format!("p50 {}", time(trips.median())),
            spread: format!("p99 {}", time(trips.q(0.99))),
            goal: "p50 ≤ 250 µs",
        });
        running.shutdown().await;
    }

    if want("snapshot") {
        // Snapshot capture and restore of a large, fully changed memory.
        let bytes = scale.snapshot_mib << 20;
        // As for a real agent: a small initial image (1 MiB), the rest of memory grown since.
    let initial = vec![0u8; 1 << 20];
        let memory: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8 | 1).collect();
        let mut snap = None;
        let capture = sample(scale.samples, || {
            snap = Some(Snapshot::capture(&memory, &initial, Vec::new()));
            Ok(())
        })?;
        let snap = snap.context("no snapshot")?;
        let mut target = vec![0u8; bytes];
        let restore = sample(scale.samples, || {
            for c in &snap.chunks {
                target[c.offset as usize..c.offset as usize + c.bytes.len()].copy_from_slice(&c.bytes);
            }
            Ok(())
        })?;
        let gbps = |s: &Stats| bytes as f64 / s.median() / 1e9;
        rows.push(Row {
            figure: format!("snapshot capture / restore of {} MiB", scale.snapshot_mib),
            value: format!("{:.1} / {:.1} GB/s", gbps(&capture), gbps(&restore)),
            spread: format!("{} / {}", time(capture.median()), time(restore.median())),
            goal: "≥ 4 GB/s",
        });
    }

    // Agent hops between two hosts, with and without fsync.
    for durable in [false, true].into_iter().filter(|_| want("hops")) {
        let (per_hop, wire) = hops(&dir.path().join(format!("agents-{durable}")), &key, scale.hops).await?;
        rows.push(Row {
            figure: format!(
                "agent hop, small agent, loopback, {}",
                if durable { "with fsync" } else { "without fsync" }
            ),
            value: format!("mean {}", time(per_hop)),
            spread: format!("{} hops; {} B snapshot", scale.hops, wire),
            goal: if durable { "report" } else { "p50 ≤ 300 µs" },
        });
    }

    println!("\n| figure | median | spread | goal |\n| --- | --- | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.figure, r.value, r.spread, r.goal);
    }
    Ok(())
}

/// Sends the hop-counter agent back and forth `n` times between two hosts; returns the mean time
/// per hop and the size of its last snapshot on the wire.
async fn hops(dir: &Path, key: &SecretKey, n: usize) -> Result<(f64, usize)> {
    let keys = dir.join("host-keys");
    let peers = dir.join("peers");
    std::fs::create_dir_all(&peers)?;
    let trust = dir.join("trust");
    std::fs::create_dir_all(&trust)?;
    std::fs::write(trust.join("bench.pub"), format!("roam-public-key ed25519 {}\n", key.public().to_hex()))?;
    let mut running = Vec::new();
    for name in ["home", "a", "b"] {
        roam_keys::write_keypair(&keys, name)?;
        std::fs::copy(keys.join(format!("{name}.pub")), peers.join(format!("{name}.pub")))?;
    }
    for name in ["home", "a", "b"] {
        let mut cfg = HostConfig::new(trust.clone(), dir.join(format!("data-{name}")));
        cfg.name = name.into();
        cfg.key = Some(keys.join(format!("{name}.key")));
        cfg.peers = Some(peers.clone());
        cfg.durable = dir.ends_with("agents-true");
        running.push(RunningHost::start(Host::open(&cfg)?, "127.0.0.1:0".parse()?).await?);
    }
    let module = sign(key, &built("hop_counter")?, Kind::Agent, "hop-counter", &[])?;
    let addr = |i: usize| running[i].addr().to_string();
    let home = addr(0);
    let launch = async |route: Vec<String>, module: Vec<u8>| {
        let mut c = Client::connect(&home).await?;
        let input = roam_host::client::json_to_cbor(&serde_json::json!({ "hosts": route }));
        let id = match c.request(&Request::Launch { module, input }).await? {
            Response::Launched { id } => id,
            other => anyhow::bail!("launch failed: {other:?}"),
        };
        loop {
            if let Response::Agents(list) = c.request(&Request::Agents { id: Some(id.clone()) }).await?
                && list.first().is_some_and(|a| a.state == "finished")
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    // Warm up: compile the agent on every host.
    launch(vec![addr(1), addr(2)], module.clone()).await?;
    let route: Vec<String> = (0..n).map(|i| addr(1 + i % 2)).collect();
    let t = Instant::now();
    launch(route, module.clone()).await?;
    let per_hop = t.elapsed().as_secs_f64() / (n + 1) as f64;
    for r in running {
        r.shutdown().await;
    }
    Ok((per_hop, snapshot_size(key)?))
}

/// Bytes of a small agent's snapshot after its start entry, as it goes on the wire.
fn snapshot_size(key: &SecretKey) -> Result<usize> {
    let module = sign(key, &built("hop_counter")?, Kind::Agent, "hop-counter", &[])?;
    let trust = TrustStore::empty().with_key("bench", key.public());
    let verified = roam_keys::verify(module.clone(), &VerifyContext::new(&trust, roam_host::state::now_secs()))?;
    let engine = Engine::new(Limits { instances: 4, ..Limits::default() }, None)?;
    let agent = engine.load_agent(roam_keys::hash_module(&module), &verified)?;
    let input = roam_host::client::json_to_cbor(&serde_json::json!({ "hosts": ["127.0.0.1:1"] }));
    let (_, snapshot) = engine.run_agent(&agent, roam_abi::AGENT_START, input, Arc::default(), None, |_| true)?;
    Ok(roam_host::agents::wire::to_cbor(&snapshot).len())
}
