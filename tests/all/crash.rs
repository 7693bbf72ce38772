//! Exactly-once transfer under crashes: a host process is killed at each step of a transfer
//! (`ROAM_FAULT_ABORT_AT` makes it abort at that exact point), restarted on its data directory,
//! and the traffic drained; and hosts are killed with SIGKILL at random moments during heavy
//! agent traffic. Every launched agent must finish exactly once: none lost, none run on two
//! hosts at the same hop, none left behind, none unexpected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use roam_host::client::Client;

use crate::agents::{Net, agent, check_hop_counter, ended, launch, result_json};
use crate::recall::check_recalled;

const HOSTS: [&str; 3] = ["home", "a", "b"];

/// A host process on a fixed port, so it can come back where its peers expect it.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of `roam` that start host `name` of `net` on `port`.
pub fn host_args(net: &Net, name: &str, port: u16) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["host", "--name", name, "--listen", &format!("127.0.0.1:{port}")].into_iter().map(OsString::from).collect();
    for (flag, path) in [
        ("--key", format!("host-keys/{name}.key")),
        ("--trust", "trust".into()),
        ("--peers", "peers".into()),
        ("--data-dir", format!("data-{name}")),
    ] {
        args.push(flag.into());
        args.push(net.path(&path).into());
    }
    args
}

fn spawn(net: &Net, name: &str, port: u16, fault: Option<&str>) -> Result<Proc> {
    let mut cmd = Command::new(roam_tests::roam_bin()?);
    cmd.args(host_args(net, name, port)).env_remove("ROAM_FAULT_ABORT_AT");
    if let Some(step) = fault {
        cmd.env("ROAM_FAULT_ABORT_AT", step);
    }
    start(net, name, cmd)
}

/// Starts `cmd`, a command that runs host `name`, and waits until it listens. Its log goes to
/// `<name>.log` in the net's directory, appended so that it survives restarts.
pub fn start(net: &Net, name: &str, mut cmd: Command) -> Result<Proc> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(net.path(&format!("{name}.log")))?;
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn().context("cannot start roam host")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("listening on") {
        let _ = child.kill();
        bail!("host {name} did not start: {line:?}; see {}", net.path(&format!("{name}.log")).display());
    }
    Ok(Proc { child })
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The (agent, hop) rows of one host's state, with their states.
fn rows(net: &Net, host: &str) -> Result<Vec<(String, u32, String)>> {
    let db = rusqlite::Connection::open_with_flags(
        net.path(&format!("data-{host}/state.db")),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = db.prepare("SELECT id, hop, state FROM agents")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

async fn crash_at(victim: &str, step: &str) -> Result<()> {
    let net = Net::new(&HOSTS)?;
    let ports: BTreeMap<&str, u16> = HOSTS.iter().map(|h| Ok((*h, net.port(h)?))).collect::<Result<_>>()?;
    let addr = |h: &str| format!("127.0.0.1:{}", ports[h]);
    let mut procs: BTreeMap<&str, Proc> = BTreeMap::new();
    for h in HOSTS {
        let fault = (h == victim).then_some(step);
        procs.insert(h, spawn(&net, h, ports[h], fault)?);
    }

    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let route = [addr("a"), addr("b"), addr("a")];
    let mut launched = Vec::new();
    for _ in 0..3 {
        // A launch can fail when the home itself is the victim and dies meanwhile; only
        // acknowledged launches are owed a result.
        if let Ok(id) = launch(&addr("home"), module.clone(), serde_json::json!({ "hosts": route })).await {
            launched.push(id);
        }
    }

    // Wait for the victim to die at the step, then bring it back on its data.
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim_proc = procs.get_mut(victim).context("no victim")?;
    loop {
        if victim_proc.child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{victim} never reached {step}; is the roam binary built with the fault-injection feature \
                 (`cargo xtask test` builds it so)?"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    procs.insert(victim, spawn(&net, victim, ports[victim], None)?);
    if launched.is_empty() {
        launched.push(launch(&addr("home"), module.clone(), serde_json::json!({ "hosts": route })).await?);
    }

    // A home that dies after persisting a launch, before answering it, still owes that agent
    // its journey: every agent the home recorded must finish, acknowledged or not.
    let homed = homed(&net)?;
    for id in &launched {
        assert!(homed.contains(id), "{victim}@{step}: the acknowledged agent {id} is unknown at home");
    }
    for id in &homed {
        let info = ended(&addr("home"), id, Duration::from_secs(60)).await?;
        assert_eq!(info.state, "finished", "{victim}@{step}: {info:?}");
        check_hop_counter(&result_json(&info)?, &["a", "b", "a"])?;
    }
    let last_hops: BTreeMap<String, u32> = homed.iter().map(|id| (id.clone(), route.len() as u32 + 1)).collect();
    account(&net, &HOSTS, &last_hops).await.with_context(|| format!("{victim}@{step}"))?;
    Ok(())
}

/// The agents the home has recorded as launched.
fn homed(net: &Net) -> Result<Vec<String>> {
    let db = rusqlite::Connection::open_with_flags(
        net.path("data-home/state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = db.prepare("SELECT id FROM homed")?;
    let ids = stmt.query_map([], |r| r.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// The accounting once traffic has drained: each hop of each agent in `last_hops` (id → the hop
/// at which its journey ended) was persisted on exactly one host and handed on; no agent is
/// lost, duplicated or unexpected. Returns the number of transfers (hand-offs between hosts).
pub async fn account(net: &Net, hosts: &[&str], last_hops: &BTreeMap<String, u32>) -> Result<usize> {
    // A sender records its hand-off just after the receiver persisted, so allow it a moment.
    let settle = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let mut seen: BTreeMap<(String, u32), Vec<&str>> = BTreeMap::new();
        let mut unsettled = Vec::new();
        for &h in hosts {
            for (id, hop, state) in rows(net, h)? {
                if state != "done" {
                    unsettled.push(format!("agent {id} hop {hop} is {state} on {h}"));
                }
                seen.entry((id, hop)).or_default().push(h);
            }
        }
        if unsettled.is_empty() {
            break seen;
        }
        if Instant::now() > settle {
            bail!("left behind: {unsettled:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for ((id, hop), on) in &seen {
        if !last_hops.contains_key(id) {
            bail!("unexpected agent {id} (hop {hop}) on {on:?}");
        }
        if on.len() != 1 {
            bail!("agent {id} hop {hop} was held by {on:?}");
        }
    }
    let mut transfers = 0;
    for (id, last) in last_hops {
        let hops: Vec<u32> = seen.keys().filter(|(i, _)| i == id).map(|(_, h)| *h).collect();
        // Hop 0 is the launch at home; every later hop arrived by a transfer.
        let expected: Vec<u32> = (0..=*last).collect();
        if hops != expected {
            bail!("agent {id}: hops {hops:?} held, expected {expected:?} (lost or skipped)");
        }
        transfers += usize::try_from(*last)?;
    }
    Ok(transfers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_killed_after_persisting_a_departure() -> Result<()> {
    crash_at("home", "sender-persisted").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_killed_after_the_receiver_acknowledged() -> Result<()> {
    crash_at("home", "sender-acked").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_after_persisting_before_acknowledging() -> Result<()> {
    crash_at("a", "receiver-persisted").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_after_fetching_the_code_before_persisting() -> Result<()> {
    crash_at("a", "receiver-fetched-code").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_host_killed_after_persisting_its_departure() -> Result<()> {
    crash_at("a", "sender-persisted").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middle_host_killed_after_being_acknowledged() -> Result<()> {
    crash_at("b", "sender-acked").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_receiver_killed_before_acknowledging() -> Result<()> {
    crash_at("b", "receiver-persisted").await
}

/// A host killed at a step of a recall while the order chases an agent parked at b (it visited
/// a, then b, and its next stop is down), restarted on its data: the agent still comes home
/// recalled, once, with what it carried, and every hop was held by exactly one host.
async fn recall_crash(victim: &str, step: &str) -> Result<()> {
    // "down" is a peer that never starts.
    let net = Net::new(&["home", "a", "b", "down"])?;
    let ports: BTreeMap<&str, u16> = HOSTS.iter().map(|h| Ok((*h, net.port(h)?))).collect::<Result<_>>()?;
    let addr = |h: &str| format!("127.0.0.1:{}", ports[h]);
    let mut procs: BTreeMap<&str, Proc> = BTreeMap::new();
    for h in HOSTS {
        procs.insert(h, spawn(&net, h, ports[h], (h == victim).then_some(step))?);
    }
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let id = launch(&addr("home"), module, serde_json::json!({ "hosts": [addr("a"), addr("b"), dead] })).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent(&addr("home"), &id).await?.state != "parked" {
        ensure!(Instant::now() < deadline, "the agent never parked at b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The home may die before it answers (at `recall-ordered`): the order is persisted anyway.
    let _ = async { Client::connect(&addr("home")).await?.recall(&id).await }.await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let victim_proc = procs.get_mut(victim).context("no victim")?;
    while victim_proc.child.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "{victim} never reached {step}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    procs.insert(victim, spawn(&net, victim, ports[victim], None)?);

    let info = ended(&addr("home"), &id, Duration::from_secs(60)).await?;
    assert_eq!(check_recalled(&info, &["a", "b"]).with_context(|| format!("{victim}@{step}"))?, 2);
    account(&net, &HOSTS, &BTreeMap::from([(id, info.hops)])).await.with_context(|| format!("{victim}@{step}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_killed_after_persisting_a_recall_order() -> Result<()> {
    recall_crash("home", "recall-ordered").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_after_persisting_a_recall_order_before_acknowledging_it() -> Result<()> {
    recall_crash("b", "recall-received").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_agent_left_killed_after_passing_the_order_on() -> Result<()> {
    recall_crash("a", "recall-passed-on").await
}

/// The receiver of a transfer persists the agent and dies before acknowledging; the sender
/// parks it; the recall is ordered then. The sender must not turn the agent home (the receiver
/// holds it): it retries the receiver with the order, and the agent comes home from there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_never_turns_home_an_agent_whose_transfer_may_have_arrived() -> Result<()> {
    let net = Net::new(&HOSTS)?;
    let ports: BTreeMap<&str, u16> = HOSTS.iter().map(|h| Ok((*h, net.port(h)?))).collect::<Result<_>>()?;
    let addr = |h: &str| format!("127.0.0.1:{}", ports[h]);
    let mut procs: BTreeMap<&str, Proc> = BTreeMap::new();
    for h in HOSTS {
        procs.insert(h, spawn(&net, h, ports[h], (h == "b").then_some("receiver-persisted"))?);
    }
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&addr("home"), module, serde_json::json!({ "hosts": [addr("a"), addr("b"), addr("a")] })).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let b = procs.get_mut("b").context("no b")?;
    while b.child.try_wait()?.is_none() {
        ensure!(Instant::now() < deadline, "b never reached receiver-persisted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while agent(&addr("home"), &id).await?.state != "parked" {
        ensure!(Instant::now() < deadline, "the agent never parked at a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Client::connect(&addr("home")).await?.recall(&id).await?;
    procs.insert("b", spawn(&net, "b", ports["b"], None)?);
    let info = ended(&addr("home"), &id, Duration::from_secs(60)).await?;
    // b may run its visit when it comes back, before the order reaches it; either way every
    // hop was held once (before the fix, the home also held hop 2).
    check_recalled(&info, &["a", "b", "a"])?;
    account(&net, &HOSTS, &BTreeMap::from([(id, info.hops)])).await?;
    Ok(())
}

/// A small xorshift generator: the kill schedule needs no statistical quality, only a seed that
/// a failing run prints so its choices can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Hosts killed with SIGKILL at random moments while agents travel among them (more than 1,000
/// transfers in all), restarted on their data, then drained: every agent finishes exactly once
/// with its memory intact, and the hosts' records account for every hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_during_agent_traffic_lose_and_duplicate_nothing() -> Result<()> {
    const HOSTS: [&str; 4] = ["home", "a", "b", "c"];
    const VISITORS: [&str; 3] = ["a", "b", "c"];
    const AGENTS: usize = 32;
    const VISITS: usize = 49;
    let seed = std::env::var("ROAM_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("ROAM_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let net = Net::new(&HOSTS)?;
    let ports: BTreeMap<&str, u16> = HOSTS.iter().map(|h| Ok((*h, net.port(h)?))).collect::<Result<_>>()?;
    let addr = |h: &str| format!("127.0.0.1:{}", ports[h]);
    let mut procs: BTreeMap<&str, Proc> = BTreeMap::new();
    for h in HOSTS {
        procs.insert(h, spawn(&net, h, ports[h], None)?);
    }

    // Each agent wanders its own random route among the three visitors, never staying put.
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let mut launched: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for _ in 0..AGENTS {
        let mut route: Vec<&str> = Vec::with_capacity(VISITS);
        while route.len() < VISITS {
            let next = VISITORS[rng.below(3) as usize];
            if route.last() != Some(&next) {
                route.push(next);
            }
        }
        let hosts: Vec<String> = route.iter().map(|h| addr(h)).collect();
        let id = launch(&addr("home"), module.clone(), serde_json::json!({ "hosts": hosts })).await?;
        launched.insert(id, route);
    }

    // Every fifth agent is recalled along the way, one at each kill while some are left.
    let mut to_recall: Vec<String> = launched.keys().step_by(5).cloned().collect();
    let recalls: Vec<String> = to_recall.clone();

    // Kill a random host every 50–450 ms while agents are still out, and bring it back after
    // 0–200 ms on the same port and data directory. The kills stop after a while, so that the
    // drain below makes progress even on a slow machine, where a restarted host may need longer
    // than the gap between kills to compile the agent's code.
    let mut kills = 0;
    while kills < 24 {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        if let Some(id) = to_recall.last() {
            // The home may be down: then this one is recalled at a later kill.
            let ordered = async { Client::connect(&addr("home")).await?.recall(id).await };
            if ordered.await.is_ok() {
                to_recall.pop();
            }
        }
        let mut out = 0;
        for id in launched.keys() {
            // The home may be the one that is down; then count the agent as out.
            match agent(&addr("home"), id).await {
                Ok(info) if matches!(info.state.as_str(), "finished" | "failed" | "recalled") => {}
                _ => out += 1,
            }
        }
        if out == 0 {
            break;
        }
        let victim = HOSTS[rng.below(HOSTS.len() as u64) as usize];
        drop(procs.remove(victim));
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        procs.insert(victim, spawn(&net, victim, ports[victim], None)?);
    }

    let (mut last_hops, mut recalled) = (BTreeMap::new(), 0);
    for (id, route) in &launched {
        let info = ended(&addr("home"), id, Duration::from_secs(120)).await.with_context(|| format!("seed {seed}"))?;
        // A recalled agent may still finish first: while a host holding its order is down, it
        // moves on elsewhere. Either way it ends once.
        if info.state == "recalled" && recalls.contains(id) {
            check_recalled(&info, route).with_context(|| format!("seed {seed}, agent {id}"))?;
            recalled += 1;
        } else {
            assert_eq!(info.state, "finished", "seed {seed}: {info:?}");
            check_hop_counter(&result_json(&info)?, route).with_context(|| format!("seed {seed}, agent {id}"))?;
        }
        last_hops.insert(id.clone(), info.hops);
    }
    let mut homed = homed(&net)?;
    homed.sort();
    assert_eq!(homed, launched.keys().cloned().collect::<Vec<_>>(), "seed {seed}: the home launched other agents");
    let transfers = account(&net, &HOSTS, &last_hops).await.with_context(|| format!("seed {seed}"))?;
    eprintln!(
        "{transfers} transfers, {kills} hosts killed, {recalled} of {} ordered recalls brought their agent home: 0 \
         lost, 0 duplicated, 0 unexpected",
        recalls.len() - to_recall.len()
    );
    assert!(transfers >= 1000, "only {transfers} transfers");
    assert!(kills >= 5, "the agents finished before the hosts were killed often enough ({kills} kills)");
    Ok(())
}
