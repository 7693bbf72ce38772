//! Exactly-once transfer under crashes: a host process is killed at each step of a transfer
//! (`ROAM_FAULT_ABORT_AT` makes it abort at that exact point), restarted on its data directory,
//! and the traffic drained. Every launched agent must finish exactly once: none lost, none run
//! on two hosts at the same hop, none left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agents::{Net, check_hop_counter, ended, launch, result_json};

const HOSTS: [&str; 3] = ["home", "a", "b"];

/// A host process on a fixed port, so it can come back where its peers expect it.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(net: &Net, name: &str, port: u16, fault: Option<&str>) -> Result<Proc> {
    let mut cmd = Command::new(roam_tests::roam_bin()?);
    cmd.args(["host", "--name", name, "--listen", &format!("127.0.0.1:{port}")])
        .arg("--key")
        .arg(net.path(&format!("host-keys/{name}.key")))
        .arg("--trust")
        .arg(net.path("trust"))
        .arg("--peers")
        .arg(net.path("peers"))
        .arg("--data-dir")
        .arg(net.path(&format!("data-{name}")))
        .env_remove("ROAM_FAULT_ABORT_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(net.path(&format!("{name}.log")))?);
    if let Some(step) = fault {
        cmd.env("ROAM_FAULT_ABORT_AT", step);
    }
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

fn free_port() -> Result<u16> {
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
    let ports: BTreeMap<&str, u16> = HOSTS.iter().map(|h| Ok((*h, free_port()?))).collect::<Result<_>>()?;
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
            bail!("{victim} never reached {step}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    procs.insert(victim, spawn(&net, victim, ports[victim], None)?);
    if launched.is_empty() {
        launched.push(launch(&addr("home"), module.clone(), serde_json::json!({ "hosts": route })).await?);
    }

    for id in &launched {
        let info = ended(&addr("home"), id, Duration::from_secs(60)).await?;
        assert_eq!(info.state, "finished", "{victim}@{step}: {info:?}");
        check_hop_counter(&result_json(&info)?, &["a", "b", "a"])?;
    }

    // The accounting: each hop of each agent happened on exactly one host, nothing is left.
    // A sender records its hand-off just after the receiver persisted, so allow it a moment.
    let settle = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let mut seen: BTreeMap<(String, u32), Vec<&str>> = BTreeMap::new();
        let mut unsettled = Vec::new();
        for h in HOSTS {
            for (id, hop, state) in rows(&net, h)? {
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
            bail!("{victim}@{step}: {unsettled:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let agents: BTreeSet<&String> = seen.keys().map(|(id, _)| id).collect();
    for id in &launched {
        assert!(agents.contains(id), "{victim}@{step}: agent {id} was lost");
    }
    for ((id, hop), hosts) in &seen {
        assert_eq!(hosts.len(), 1, "{victim}@{step}: agent {id} hop {hop} ran on {hosts:?}");
    }
    for id in agents {
        let hops: Vec<u32> = seen.keys().filter(|(i, _)| i == id).map(|(_, h)| *h).collect();
        assert_eq!(hops, vec![0, 1, 2, 3, 4], "{victim}@{step}: agent {id}");
    }
    Ok(())
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

