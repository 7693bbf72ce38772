//! The status listener: `/metrics` counts exactly the requests made.

use anyhow::{Context, Result, ensure};
use roam_host::client::Client;
use roam_host::protocol::{ModuleRef, Request, Response};
use roam_keys::Kind;

use crate::agents::Net;

/// A query that answers CBOR `true` at once.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// `GET path` on `addr`, HTTP/1.1: the status and the body.
fn get(addr: std::net::SocketAddr, path: &str) -> Result<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no end of headers")?;
    Ok((head.lines().next().unwrap_or_default().to_owned(), body.to_owned()))
}

/// The value of the sample `name` (with its labels, as written) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_made() -> Result<()> {
    let net = Net::new(&["home"])?;
    let (host, running) = net.start(&net.config("home", "trust")?).await?;
    let status = roam_host::status::start(host.clone(), "127.0.0.1:0".parse()?).await?;
    let query =
        roam_tests::sign_with(&net.alice, &wat::parse_str(QUICK)?, Kind::Query, "quick", "1.0.0", &[], (0, 3600))?;
    let mut tampered = query.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;

    let mut client = Client::connect(&running.addr().to_string()).await?;
    for module in [&query, &query, &tampered] {
        let _ = client.request(&Request::Eval { module: ModuleRef::Bytes(module.clone()), input: vec![0xa0] }).await?;
    }
    ensure!(matches!(client.request(&Request::List).await?, Response::Modules(_)));

    let (status_line, text) = tokio::task::spawn_blocking(move || get(status, "/metrics")).await??;
    ensure!(status_line.contains("200"), "{status_line}");
    let expect = |name: &str, value: f64| {
        let got = sample(&text, name);
        ensure!(got == Some(value), "{name} is {got:?}, not {value}:\n{text}");
        anyhow::Ok(())
    };
    expect("roam_requests_total{operation=\"eval\",outcome=\"ok\"}", 2.0)?;
    expect("roam_requests_total{operation=\"eval\",outcome=\"verification\"}", 1.0)?;
    expect("roam_requests_total{operation=\"list\",outcome=\"ok\"}", 1.0)?;
    expect("roam_refusals_total{reason=\"verification\"}", 1.0)?;
    expect("roam_request_duration_seconds_count{operation=\"eval\"}", 3.0)?;
    // This connection is open while the page is read.
    expect("roam_connections", 1.0)?;
    running.shutdown().await;
    Ok(())
}

/// Reads `/metrics` at `addr` until `name` has `value` (counters move as the agents' driver
/// gets to them); fails with the page after 30 s.
async fn until(addr: std::net::SocketAddr, name: &str, value: f64) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, text) = tokio::task::spawn_blocking(move || get(addr, "/metrics")).await??;
        if sample(&text, name) == Some(value) {
            return Ok(text);
        }
        ensure!(std::time::Instant::now() < deadline, "{name} never reached {value}:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_an_agent_that_hops_parks_and_is_recalled() -> Result<()> {
    let net = Net::new(&["home", "a", "down"])?;
    let (home, home_run) = net.start(&net.config("home", "trust")?).await?;
    let (a, a_run) = net.start(&net.config("a", "trust")?).await?;
    let home_status = roam_host::status::start(home.clone(), "127.0.0.1:0".parse()?).await?;
    let a_status = roam_host::status::start(a.clone(), "127.0.0.1:0".parse()?).await?;
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let id =
        crate::agents::launch(&home_addr, module, serde_json::json!({ "hosts": [a_run.addr().to_string(), dead] }))
            .await?;

    // It reaches a, which cannot hand it on and parks it.
    let text = until(a_status, "roam_agents{state=\"parked\"}", 1.0).await?;
    ensure!(sample(&text, "roam_hops_total") == Some(1.0), "{text}");
    ensure!(sample(&text, "roam_transfers_total{outcome=\"unreachable\"}") >= Some(1.0), "{text}");
    ensure!(sample(&text, "roam_transfers_total{outcome=\"parked\"}") >= Some(1.0), "{text}");
    ensure!(sample(&text, "roam_module_loads_total{from=\"compile\"}") >= Some(1.0), "{text}");
    let text = until(home_status, "roam_homed_agents{state=\"parked\"}", 1.0).await?;
    ensure!(sample(&text, "roam_transfers_total{outcome=\"handed_off\"}") == Some(1.0), "{text}");
    ensure!(sample(&text, "roam_transfer_bytes_total") > Some(0.0), "{text}");
    ensure!(sample(&text, "roam_agents{state=\"ready\"}") == Some(0.0), "{text}");
    ensure!(sample(&text, "roam_workers_busy") == Some(0.0), "{text}");
    ensure!(sample(&text, "roam_workers") == Some(net.config("home", "trust")?.limits.workers() as f64), "{text}");

    // Recalled, it comes home: one order given at home, one received at a.
    Client::connect(&home_addr).await?.recall(&id).await?;
    let text = until(home_status, "roam_homed_agents{state=\"recalled\"}", 1.0).await?;
    ensure!(sample(&text, "roam_recall_orders_total{event=\"ordered\"}") == Some(1.0), "{text}");
    ensure!(sample(&text, "roam_hops_total") == Some(1.0), "it came home once:\n{text}");
    ensure!(sample(&text, "roam_homed_agents{state=\"parked\"}") == Some(0.0), "{text}");
    let text = until(a_status, "roam_transfers_total{outcome=\"handed_off\"}", 1.0).await?;
    ensure!(sample(&text, "roam_recall_orders_total{event=\"received\"}") == Some(1.0), "{text}");
    let text = until(a_status, "roam_agents{state=\"parked\"}", 0.0).await?;
    ensure!(sample(&text, "roam_bytes_in_flight") == Some(0.0), "{text}");
    a_run.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

/// This machine's address on its first network interface (not loopback), as the route to
/// a documentation address picks it; no packet is sent.
fn outside_address() -> Result<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect("192.0.2.1:9").context("this machine has no network interface besides loopback")?;
    let ip = socket.local_addr()?.ip();
    ensure!(!ip.is_loopback(), "this machine has no network interface besides loopback");
    Ok(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_viewer_on_the_hosts_machine_sees_its_agents_modules_and_refusals() -> Result<()> {
    let net = Net::new(&["home"])?;
    let (host, running) = net.start(&net.config("home", "trust")?).await?;
    // Listening on every interface, as an operator who wants the counts scraped from elsewhere.
    let status = roam_host::status::start(host.clone(), "0.0.0.0:0".parse()?).await?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home = running.addr().to_string();
    let id = crate::agents::launch(&home, module, serde_json::json!({ "hosts": [] })).await?;
    crate::agents::ended(&home, &id, std::time::Duration::from_secs(30)).await?;
    let mut tampered = net.sign_agent("hop_counter", "hop-counter", &[])?;
    tampered[100] ^= 1;
    let _ = Client::connect(&home).await?.request(&Request::Publish { module: tampered }).await?;

    let read = |ip: std::net::IpAddr| {
        let addr = std::net::SocketAddr::new(ip, status.port());
        tokio::task::spawn_blocking(move || get(addr, "/overview"))
    };
    let (_, inside) = read("127.0.0.1".parse()?).await??;
    let inside: serde_json::Value = serde_json::from_str(&inside)?;
    ensure!(inside["agents"][0]["id"] == id.as_str(), "{inside}");
    ensure!(inside["module_list"][0]["name"] == "hop-counter", "{inside}");
    ensure!(inside["refusal_list"][0]["operation"] == "publish", "{inside}");

    let (_, outside) = read(outside_address()?).await??;
    let outside: serde_json::Value = serde_json::from_str(&outside)?;
    for hidden in ["agents", "module_list", "refusal_list", "peers"] {
        ensure!(outside[hidden] == serde_json::json!([]), "{hidden} shown to a viewer elsewhere: {outside}");
    }
    ensure!(outside.to_string().matches(&id).count() == 0, "{outside}");
    // What it does see: counts.
    ensure!(outside["homed"].to_string().contains("[\"finished\",1]"), "{outside}");
    ensure!(outside["modules"] == 1 && outside["refusals"] == 1, "{outside}");
    running.shutdown().await;
    Ok(())
}
