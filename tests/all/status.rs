//! The status listener: `/metrics` counts exactly the requests made; details go to the
//! operator only, and strangers cannot crowd the operator out.

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
    get_as(addr, path, &addr.to_string())
}

/// `GET path` on `addr` for the host named `host` (the `Host` header).
fn get_as(addr: std::net::SocketAddr, path: &str, host: &str) -> Result<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
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
    // A page from elsewhere, in a browser on the host's machine, whose name was made to
    // resolve to 127.0.0.1 (DNS rebinding): it connects from loopback, but names itself.
    let local = std::net::SocketAddr::new("127.0.0.1".parse()?, status.port());
    let host = format!("rebound.example:{}", status.port());
    let (_, rebound) = tokio::task::spawn_blocking(move || get_as(local, "/overview", &host)).await??;
    for (who, seen) in [("a viewer elsewhere", outside), ("a page named otherwise", rebound)] {
        let seen: serde_json::Value = serde_json::from_str(&seen)?;
        for hidden in ["agents", "module_list", "refusal_list", "peers"] {
            ensure!(seen[hidden] == serde_json::json!([]), "{hidden} shown to {who}: {seen}");
        }
        ensure!(seen.to_string().matches(&id).count() == 0, "{seen}");
        // What it does see: counts.
        ensure!(seen["homed"].to_string().contains("[\"finished\",1]"), "{seen}");
        ensure!(seen["modules"] == 1 && seen["refusals"] == 1, "{seen}");
    }
    running.shutdown().await;
    Ok(())
}

/// Opens `/events` on `addr` and reads the answer's status line; the stream stays open.
fn open_events(addr: std::net::SocketAddr) -> Result<(std::net::TcpStream, String)> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut status = String::new();
    std::io::BufReader::new(&stream).read_line(&mut status)?;
    Ok((stream, status))
}

/// Whether the host closes `stream` (which sends nothing) within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> Result<bool> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(false);
            }
            Err(_) => return Ok(true),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_crowd_out_the_operator_nor_keep_silent_connections() -> Result<()> {
    let net = Net::new(&["home"])?;
    let (host, running) = net.start(&net.config("home", "trust")?).await?;
    let status = roam_host::status::start(host.clone(), "0.0.0.0:0".parse()?).await?;
    let outside = std::net::SocketAddr::new(outside_address()?, status.port());
    let local = std::net::SocketAddr::new("127.0.0.1".parse()?, status.port());

    tokio::task::spawn_blocking(move || {
        // Strangers open every event stream they may; the next one is turned away...
        let mut streams = Vec::new();
        loop {
            let (stream, line) = open_events(outside)?;
            if !line.contains("200") {
                ensure!(line.contains("503"), "{line}");
                break;
            }
            streams.push(stream);
            ensure!(streams.len() <= 64, "no stream was ever refused");
        }
        // ...but the operator's page still gets one.
        let (_operators, line) = open_events(local)?;
        ensure!(line.contains("200"), "the operator's stream: {line}");

        // Strangers connect and say nothing, as many times as the listener holds and more:
        // past its places, they are closed at once.
        let mut silent = (0..64).map(|_| std::net::TcpStream::connect(outside)).collect::<Result<Vec<_>, _>>()?;
        let mut last = silent.pop().context("no connection")?;
        ensure!(closed_within(&mut last, std::time::Duration::from_secs(10))?, "a connection past the cap was held");
        let (line, body) = get(local, "/overview")?;
        ensure!(line.contains("200") && body.contains("\"module_list\""), "the operator was crowded out: {line}");

        // Silent connections are closed after a while, and strangers are served again.
        let within = roam_host::status::IDLE + std::time::Duration::from_secs(30);
        ensure!(closed_within(&mut silent[0], within)?, "a silent connection was held past {within:?}");
        let (line, _) = get(outside, "/overview")?;
        ensure!(line.contains("200"), "a stranger after the silent ones: {line}");
        // The open streams, which hear from the host, were kept.
        for mut stream in streams {
            ensure!(!closed_within(&mut stream, std::time::Duration::from_millis(1))?, "a live stream was closed");
        }
        Ok(())
    })
    .await??;
    running.shutdown().await;
    Ok(())
}
