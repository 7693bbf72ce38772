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
