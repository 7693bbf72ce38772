//! Recall across real hosts: the home's order catches an agent wherever it is (running, in
//! transit, parked, at a host that is down) and the agent comes home once, with its state, and
//! hands over a partial result. A parked agent's recall is in `agents.rs`, the crash cases in
//! `crash.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use roam_host::client::Client;
use roam_host::host::Host;
use roam_host::protocol::wire::{AgentInfo, Recall, Signed, domain};
use roam_host::protocol::{Request, Response};
use roam_host::server::RunningHost;
use roam_host::state::now_millis;

use crate::agents::{Net, agent, check_hop_counter, ended, launch, parked, result_json, with_route};
use crate::crash::{Rng, account};

/// Checks what a recalled hop-counter handed over against the hosts of its route, and returns
/// how many visits it made before it came home.
pub fn check_recalled(info: &AgentInfo, route: &[&str]) -> Result<usize> {
    ensure!(info.state == "recalled", "not recalled: {info:?}");
    let detail = info.detail.clone().unwrap_or_default();
    if info.result.is_empty() {
        ensure!(detail.contains("before its first visit") && info.hops == 0, "{info:?}");
        return Ok(0);
    }
    let partial = result_json(info)?;
    let arrivals = usize::try_from(partial["arrivals"].as_u64().context("no arrivals in the partial result")?)?;
    check_hop_counter(&partial, route.get(..arrivals).context("more arrivals than stops")?)?;
    // It came home from the last host it ran on, or from the next one, which it reached after
    // the order and left without a visit; or it never left home.
    let hops = usize::try_from(info.hops)?;
    ensure!(
        (arrivals == 0 && hops == 0) || (arrivals + 1..=arrivals + 2).contains(&hops),
        "{arrivals} visits but home at hop {hops}: {info:?}"
    );
    Ok(arrivals)
}

/// A route of `visits` stops alternating between a and b.
fn alternating(visits: usize) -> Vec<&'static str> {
    (0..visits).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect()
}

/// An agent hopping between two hosts as fast as it can, recalled at a random moment, 100 times:
/// each comes home recalled, with what it carried, or finished first, which is right if its last
/// visit began before the order was issued and may happen otherwise in at most 5 trials (an
/// order that trailed the agent to its end); and every hop was held by exactly one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_at_a_random_moment_brings_a_fast_hopping_agent_home() -> Result<()> {
    const TRIALS: usize = 100;
    const VISITS: usize = 100;
    let net = Net::new(&["home", "a", "b"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    let home_addr = home.addr().to_string();
    let names = alternating(VISITS);
    let hosts: Vec<String> =
        names.iter().map(|n| if *n == "a" { a.addr().to_string() } else { b.addr().to_string() }).collect();
    let input = serde_json::json!({ "hosts": hosts });
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let seed = std::env::var("ROAM_RECALL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("ROAM_RECALL_SEED={seed}");
    let mut rng = Rng(seed);

    // How long a whole journey takes here and now: the fastest of three.
    let mut journey = Duration::MAX;
    let mut last_hops = BTreeMap::new();
    for _ in 0..3 {
        let began = Instant::now();
        let id = launch(&home_addr, module.clone(), input.clone()).await?;
        let info = ended(&home_addr, &id, Duration::from_secs(120)).await?;
        journey = journey.min(began.elapsed());
        ensure!(info.state == "finished", "{info:?}");
        last_hops.insert(id, u32::try_from(VISITS)? + 1);
    }
    eprintln!("a journey of {VISITS} visits takes {journey:?}");

    let (mut recalled, mut finished, mut after_order, mut missed) = (0, 0, Vec::new(), Vec::new());
    // Kept open for the polling: a new connection each poll would soon be over the hosts'
    // share for one address.
    let mut at_a = Client::connect(&a.addr().to_string()).await?;
    let mut at_b = Client::connect(&b.addr().to_string()).await?;
    for trial in 0..TRIALS {
        let id = launch(&home_addr, module.clone(), input.clone()).await?;
        // A moment in the first half of a journey, far enough from its end that the order has
        // time to catch up: once the agent is at a random hop (as the hosts it visits say: the
        // home's reports may lag), plus a random part of a hop's time. Counted in hops, not in
        // time measured earlier, so a machine whose load changes during the test does not move
        // the moment to the journey's end.
        let target = u32::try_from(rng.below(VISITS as u64 / 2))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut reached = 0;
            for watching in [&mut at_a, &mut at_b] {
                // A host the agent has not reached yet does not know it.
                reached = reached.max(watching.agent(&id).await.map_or(0, |info| info.hops));
            }
            if reached >= target {
                break;
            }
            ensure!(Instant::now() < deadline, "trial {trial}: the agent never reached hop {target}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(journey.mul_f64(rng.below(1000) as f64 / 1000.0 / VISITS as f64)).await;
        let asked_at = now_millis();
        let answer = Client::connect(&home_addr).await?.recall(&id).await?;
        // When the home persisted the order: on a loaded machine, connecting and asking may
        // take longer than several visits.
        let ordered_at = answer.recall_ordered.unwrap_or(asked_at);
        let info = ended(&home_addr, &id, Duration::from_secs(120)).await.with_context(|| format!("trial {trial}"))?;
        match info.state.as_str() {
            "recalled" => {
                ensure!(answer.recall_ordered.is_some(), "trial {trial}: {answer:?}");
                let visits = check_recalled(&info, &names).with_context(|| format!("trial {trial}"))?;
                // Recalled before its first visit (at home), it has no route at all.
                let before_first = info.result.is_empty();
                let info = with_route(&home_addr, &id, if before_first { 0 } else { visits + 1 }).await?;
                after_order.push(info.route.iter().filter(|v| v.at >= ordered_at).count());
                recalled += 1;
            }
            "finished" => {
                // Legitimate if its last visit had begun before the order. Otherwise the order
                // trailed the agent to the end: an order and an agent move at the same speed,
                // and on a machine loaded enough (the whole suite on two cores) the order can
                // trail every hop; that must stay rare.
                let info = with_route(&home_addr, &id, VISITS + 1).await?;
                let last = info.route.last().context("no route")?;
                if last.at >= ordered_at {
                    missed.push(format!(
                        "trial {trial}: its last visit began {} ms after the order",
                        last.at - ordered_at
                    ));
                }
                finished += 1;
            }
            _ => bail!("trial {trial}: {info:?}"),
        }
        last_hops.insert(id, info.hops);
    }
    after_order.sort_unstable();
    let (median, max) = (after_order.get(after_order.len() / 2).copied(), after_order.last().copied());
    eprintln!(
        "{recalled} recalled, {finished} finished first; visits begun after the order: median {median:?}, max {max:?}"
    );
    ensure!(recalled + finished == TRIALS);
    ensure!(missed.len() <= TRIALS / 20, "the order trailed the agent to its end too often: {missed:?}");
    if !missed.is_empty() {
        eprintln!("the order trailed the agent to its end in {} trials: {missed:?}", missed.len());
    }
    // The order was issued well before the end of each journey.
    ensure!(recalled >= TRIALS * 9 / 10, "only {recalled} of {TRIALS} recalled");
    // The order catches up with the agent instead of trailing it to its hop limit.
    ensure!(max.unwrap_or_default() <= 20, "an agent made {max:?} visits after its recall was ordered");
    account(&net, &["home", "a", "b"], &last_hops).await?;
    for run in [a, b, home] {
        run.shutdown().await;
    }
    Ok(())
}

/// The host holding the agent is down when the recall is ordered: the order waits at the home
/// and is delivered when that host comes back, and the agent comes home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_reaches_an_agent_whose_host_was_down_when_it_was_ordered() -> Result<()> {
    // "down" is a peer that never starts.
    let net = Net::new(&["home", "a", "down"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let a_cfg = net.config("a", "trust")?;
    let (_, a) = net.start(&a_cfg).await?;
    let a_addr = a.addr();
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": [a_addr.to_string(), dead] })).await?;
    parked(&home_addr, &id).await?;

    a.shutdown().await;
    let ordered = Client::connect(&home_addr).await?.recall(&id).await?;
    assert!(ordered.recall_ordered.is_some() && ordered.state == "parked", "{ordered:?}");
    // While a is down the order waits at the home: the agent is still parked there.
    let waiting = agent(&home_addr, &id).await?;
    assert!(waiting.state == "parked" && waiting.recall_ordered.is_some(), "{waiting:?}");

    let a = RunningHost::start(Host::open(&a_cfg)?, a_addr).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(check_recalled(&info, &["a"])?, 1, "{info:?}");
    a.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// Waits until the home reports the agent parked.
/// A recall order acts only on an agent whose home signed it: a trusted peer's own order for
/// another home's agent is refused, the agent stays where it waits, and its home's order works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_agents_home_can_recall_it() -> Result<()> {
    let net = Net::new(&["home", "a", "other"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    // "other" never starts.
    let dead = format!("127.0.0.1:{}", net.port("other")?);
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": [a.addr().to_string(), dead] })).await?;
    parked(&home_addr, &id).await?;

    // "other" is one of a's trusted peers, but not the agent's home.
    let other = roam_keys::SecretKey::load(&net.path("host-keys/other.key"))?;
    let order = Signed::sign(domain::RECALL, &Recall { agent: id.clone(), at: roam_host::state::now_secs() }, &other)?;
    let mut as_other = Client::connect_as(&a.addr().to_string(), &other).await?;
    match as_other.request(&Request::RecallAgent(order)).await? {
        Response::Error(e) => assert!(e.message.contains("not signed by the agent's home"), "{e}"),
        other => bail!("a peer's recall of another home's agent was {other:?}"),
    }
    // Nothing moved: the agent still waits at a for its next stop.
    let info = agent(&home_addr, &id).await?;
    ensure!(info.state == "parked" && info.recall_ordered.is_none(), "{info:?}");
    Client::connect(&home_addr).await?.recall(&id).await?;
    assert_eq!(check_recalled(&ended(&home_addr, &id, Duration::from_secs(30)).await?, &["a"])?, 1);
    a.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// An agent at its last allowed hop, recalled there, still comes home: the order waits at the
/// host before the agent arrives, and the trip home is not a hop over its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_recalled_at_its_last_allowed_hop_comes_home() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    let mut home_cfg = net.config("home", "trust")?;
    home_cfg.limits.agent_hops = 2;
    let (_, home) = net.start(&home_cfg).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    // b is not up yet: the agent waits at a, its next stop (hop 2, its last) down.
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{}", net.port("b")?).parse()?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home.addr().to_string();
    let route = serde_json::json!({ "hosts": [a.addr().to_string(), b_addr.to_string()] });
    let id = launch(&home_addr, module, route).await?;
    // Until a's retries are seconds apart, so that the order reaches b first.
    let db = net.path("data-a/state.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let retries: Option<u32> = rusqlite::Connection::open(&db)?
            .query_row("SELECT retries FROM agents WHERE id = ?1 AND state = 'parked'", [&id], |r| r.get(0))
            .ok();
        if retries.is_some_and(|r| r >= 3) {
            break;
        }
        ensure!(Instant::now() < deadline, "the agent never waited at a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = RunningHost::start(Host::open(&net.config("b", "trust")?)?, b_addr).await?;
    // The home's order reaches b before the agent does, as one passed on along a trail would.
    let home_key = roam_keys::SecretKey::load(&net.path("host-keys/home.key"))?;
    let order = Recall { agent: id.clone(), at: roam_host::state::now_secs() };
    let order = Signed::sign(domain::RECALL, &order, &home_key)?;
    let answer =
        Client::connect_as(&b_addr.to_string(), &home_key).await?.request(&Request::RecallAgent(order)).await?;
    ensure!(matches!(answer, Response::Accepted), "{answer:?}");
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    // It reached b (hop 2) recalled, made no visit there, and came home at hop 3.
    assert_eq!(check_recalled(&info, &["a", "b"])?, 1, "{info:?}");
    assert_eq!(info.hops, 3, "{info:?}");
    for run in [b, a, home] {
        run.shutdown().await;
    }
    Ok(())
}
