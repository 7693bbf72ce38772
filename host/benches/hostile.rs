//! What a hostile module costs its neighbours: the latency of small evaluations from a few
//! clients, alone (the baseline), then while a hostile module runs over and over from another
//! client. Prints one table row per hostile module: p99 under attack against the p99 of the
//! baseline measured just before it, as a ratio (goal ≤ 2×).
//!
//! `cargo bench -p roam-host --bench hostile` runs it in full (about two minutes);
//! `-- --smoke` runs it for seconds, and `-- WORD` only the hostile modules whose names have WORD. The host runs on its own runtime, as in `roam host`, with
//! the default limits except a 1 s deadline, so each hostile module is stopped and started
//! again many times while the neighbours are measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use roam_host::client::Client;
use roam_host::config::HostConfig;
use roam_host::host::Host;
use roam_host::protocol::{ModuleRef, Request, Response};
use roam_host::server::RunningHost;
use roam_keys::{Kind, SecretKey};

// Each benchmark uses only part of what they share.
#[allow(dead_code)]
mod common;
#[path = "../../tests/hostile.rs"]
mod hostile_modules;
#[path = "../../tests/sample.rs"]
mod sample;

use common::{QUICK, Stats, time};

/// The hostile modules, each stopped by a limit.
const HOSTILE: &[(&str, &str)] = &[
    ("infinite loop", r#"(module (memory (export "memory") 1) (func (export "roam_query") (loop $l (br $l))))"#),
    // Grows 1 MiB at a time and touches every page, until the memory limit.
    (
        "memory bomb (touches every page)",
        r#"(module (memory (export "memory") 1)
  (func (export "roam_query") (local $p i32) (local $end i32)
    (loop $grow
      (local.set $p (i32.mul (memory.grow (i32.const 16)) (i32.const 65536)))
      (local.set $end (i32.add (local.get $p) (i32.const 1048576)))
      (loop $touch
        (i32.store8 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $touch (i32.lt_u (local.get $p) (local.get $end))))
      (br $grow))))"#,
    ),
    ("host-call storm: log", hostile_modules::LOG_STORM),
    ("host-call storm: table queries", hostile_modules::CURSOR_STORM),
    // A result of exactly the default cap (8 MiB), returned and sent in full every time.
    (
        "huge result (8 MiB, the cap)",
        r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 129)
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 8388608))))"#,
    ),
    ("deep recursion", r#"(module (memory (export "memory") 1) (func $r (export "roam_query") (call $r)))"#),
];

/// Sizes of the run: full, or a seconds-long smoke run.
struct Scale {
    /// How long each phase measures the neighbours.
    window: Duration,
}

const FULL: Scale = Scale { window: Duration::from_secs(8) };
const SMOKE: Scale = Scale { window: Duration::from_millis(1500) };

/// How many neighbours, and how often each sends a small evaluation: a light, steady load, so
/// what is measured is the latency a hostile module adds, not queueing among neighbours.
const NEIGHBOURS: usize = 3;
const EVERY: Duration = Duration::from_millis(4);

fn sign(key: &SecretKey, wat: &str, name: &str, caps: &[&str]) -> Result<Vec<u8>> {
    common::sign(key, &wat::parse_str(wat)?, Kind::Query, name, caps)
}

/// Small evaluations from the neighbours, each paced at [`EVERY`], for `window`.
async fn neighbours(addr: &str, quick: &[u8], window: Duration) -> Result<Stats> {
    let hash = roam_keys::hash_module(quick);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..NEIGHBOURS {
        let (addr, quick) = (addr.to_owned(), quick.to_vec());
        clients.spawn(async move {
            let mut client = Client::connect(&addr).await?;
            client.eval(&quick, vec![0xa0]).await?;
            let by_hash = Request::Eval { module: ModuleRef::Hash(hash), input: vec![0xa0] };
            let mut pace = tokio::time::interval(EVERY);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (end, mut trips) = (Instant::now() + window, Vec::new());
            while Instant::now() < end {
                pace.tick().await;
                let t = Instant::now();
                let r = client.request(&by_hash).await?;
                trips.push(t.elapsed().as_secs_f64());
                anyhow::ensure!(matches!(r, Response::Result(_)), "a neighbour's evaluation failed: {r:?}");
            }
            anyhow::Ok(trips)
        });
    }
    let mut all = Vec::new();
    while let Some(trips) = clients.join_next().await {
        all.extend(trips??);
    }
    Ok(Stats::new(all))
}

/// Runs `module` over and over from one client until `stop`, on a thread and runtime of its
/// own; returns how many runs ended.
///
/// The attacker stands for a client on another machine, so its own work (receiving and decoding
/// 8 MiB a run, say) is not what is measured: its thread runs in the idle scheduling class,
/// where it takes only cores that nothing else wants. Everything the host does for it runs as
/// the host would run it.
fn attack(addr: String, module: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<usize>> {
    std::thread::spawn(move || {
        #[cfg(target_os = "linux")]
        {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            thread_priority::set_thread_priority_and_policy(
                thread_priority::thread_native_id(),
                ThreadPriority::Min,
                idle,
            )
            .map_err(|e| anyhow::anyhow!("cannot lower the attacking client's priority: {e:?}"))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let mut client = Client::connect(&addr).await?;
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                // Each run is refused or answered; either way the host goes on.
                let _ = client.eval(&module, vec![0xa0]).await;
                runs += 1;
            }
            Ok(runs)
        })
    })
}

fn main() -> Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // A word given on the command line measures only the hostile modules it names.
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let chosen: Vec<_> = HOSTILE
        .iter()
        .enumerate()
        .filter(|(_, (what, _))| only.as_ref().is_none_or(|w| what.contains(w.as_str())))
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> = HOSTILE.iter().map(|(what, _)| *what).collect();
        anyhow::bail!(
            "no hostile module's name has {:?}; the modules are: {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    let scale = if smoke { SMOKE } else { FULL };
    let dir = tempfile::tempdir()?;
    let (key_path, _, _) = roam_keys::write_keypair(&dir.path().join("keys"), "bench")?;
    let key = SecretKey::load(&key_path)?;
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&trust)?;
    std::fs::copy(dir.path().join("keys/bench.pub"), trust.join("bench.pub"))?;
    common::open_access(&trust)?;
    let csv = dir.path().join("sales.csv");
    sample::write_csv(&csv, &sample::generate(100, 1))?;

    // The host, on a runtime of its own as in `roam host`.
    let mut config = HostConfig::new(trust, dir.path().join("host"));
    config.limits.time_ms = 1000;
    config.durable = false;
    config.add_table(&format!("sales={}", csv.display()))?;
    let workers = config.limits.workers();
    let host_rt = tokio::runtime::Builder::new_multi_thread().thread_name("host-rt").enable_all().build()?;
    let running = host_rt.block_on(RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?))?;
    let addr = running.addr().to_string();

    let clients = tokio::runtime::Builder::new_multi_thread().thread_name("neighbours").enable_all().build()?;
    let quick = sign(&key, QUICK, "quick", &[])?;
    // Each attack is compared with a baseline measured just before it, so that load from
    // elsewhere on a shared machine drifts into both sides of a ratio alike.
    let (mut rows, mut alone) = (Vec::new(), Vec::new());
    for (i, (what, wat)) in chosen {
        let module = sign(&key, wat, &format!("hostile-{i}"), &["table:sales"])?;
        let baseline = clients.block_on(neighbours(&addr, &quick, scale.window))?;
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = attack(addr.clone(), module, stop.clone());
        // Let the attack start before measuring.
        std::thread::sleep(Duration::from_millis(300));
        let under = clients.block_on(neighbours(&addr, &quick, scale.window))?;
        stop.store(true, Ordering::Relaxed);
        let runs = attacker.join().map_err(|_| anyhow::anyhow!("the attacking client panicked"))??;
        rows.push(format!(
            "|   … while {what} runs ({runs} runs) | {:.2}× | p99 {} vs {}; p50 {} vs {} | ≤ 2× |",
            under.q(0.99) / baseline.q(0.99),
            time(under.q(0.99)),
            time(baseline.q(0.99)),
            time(under.median()),
            time(baseline.median()),
        ));
        alone.extend(baseline.0);
    }
    let alone = Stats::new(alone);
    rows.insert(
        0,
        format!(
            "| small evaluations, {NEIGHBOURS} clients every {} ms, alone ({workers} workers) | p50 {} | p99 {} | baseline |",
            EVERY.as_millis(),
            time(alone.median()),
            time(alone.q(0.99)),
        ),
    );
    host_rt.block_on(running.shutdown());

    println!("\n| figure | median | spread | goal |\n| --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
