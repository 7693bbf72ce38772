//! Traces across hosts: two `roam host` processes export to a small OTLP receiver (HTTP,
//! protobuf, as a collector takes it), and one agent's journey is one trace.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

use crate::agents::Net;

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP receiver on loopback: every span exported to `/v1/traces`.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || {
                    // Ends when the exporter closes its connection, or sends what is not OTLP.
                    let _ = serve(stream, &kept);
                });
            }
        });
        Ok(Self { endpoint, spans })
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Answers the requests of one connection (the exporter keeps it open between batches).
fn serve(stream: TcpStream, spans: &Mutex<Vec<Span>>) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut length = 0;
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(());
        }
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        ensure!(first.starts_with("POST /v1/traces "), "unexpected request {first:?}");
        let request = ExportTraceServiceRequest::decode(body.as_slice())?;
        let mut got = Vec::new();
        for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            let attributes = span
                .attributes
                .iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.clone(),
                        Some(Value::IntValue(i)) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), value)
                })
                .collect();
            got.push(Span {
                name: span.name.clone(),
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes,
            });
        }
        spans.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.extend(got);
        write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")?;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn one_agents_journey_across_two_host_processes_is_one_trace() -> Result<()> {
    let receiver = Receiver::start()?;
    let net = Net::new(&["home", "a"])?;
    // A short batch delay, so that spans reach the receiver soon after they end.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let host = |name: &str| net.process(name, &env);
    let home = host("home")?;
    let a = host("a")?;
    let module = net.path("hop.wasm");
    std::fs::write(&module, net.sign_agent("hop_counter", "hop-counter", &[])?)?;
    let input = serde_json::json!({ "hosts": [a.addr.to_string()] }).to_string();
    let launched = roam_tests::roam(roam_tests::args![
        "launch",
        module,
        "--host",
        home.addr.to_string(),
        "--input",
        input,
        "--wait"
    ])?;
    let said = String::from_utf8_lossy(&launched.stderr).into_owned();
    ensure!(launched.status.success(), "{said}");
    let id = said.lines().find_map(|l| l.strip_prefix("launched agent ")).context("no id")?.to_owned();

    // Launched at home, a visit there, a transfer to a, its arrival and visit at a, a transfer
    // home and its arrival: seven spans of the agent, from two processes.
    let find = |spans: &[Span], name: &str, host: &str, hop: Option<u32>| -> Option<Span> {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.attributes.get("agent") == Some(&id)
                    && s.attributes.get("host").map(String::as_str) == Some(host)
                    && hop.is_none_or(|h| s.attributes.get("hop") == Some(&h.to_string()))
            })
            .cloned()
    };
    let wanted = [
        ("launch", "home", None),
        ("visit", "home", Some(0)),
        ("transfer", "home", Some(1)),
        ("arrival", "a", Some(1)),
        ("visit", "a", Some(1)),
        ("transfer", "a", Some(2)),
        ("arrival", "home", Some(2)),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let journey = loop {
        let spans = receiver.spans();
        let found: Vec<Option<Span>> = wanted.iter().map(|(n, h, hop)| find(&spans, n, h, *hop)).collect();
        if found.iter().all(Option::is_some) {
            break found.into_iter().flatten().collect::<Vec<_>>();
        }
        ensure!(
            Instant::now() < deadline,
            "missing {:?} among {} spans: {spans:#?}\nhome's log:\n{}",
            wanted.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(w, _)| w).collect::<Vec<_>>(),
            spans.len(),
            home.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let [launch, visit_home, _, arrival_a, visit_a, _, arrival_home] = journey.as_slice() else {
        unreachable!("seven spans were found");
    };
    for span in &journey {
        ensure!(span.trace == launch.trace, "{span:?} is not in the launch's trace {}", launch.trace);
    }
    ensure!(launch.parent.is_empty() || launch.parent == "0000000000000000", "the launch is the root: {launch:?}");
    for child in [visit_home, visit_a] {
        ensure!(child.parent == launch.id, "{child:?} is not a child of the launch");
    }
    // Each arrival follows the transfer that brought it, a child of the launch (a transfer
    // tried again is a span of its own: the one the arrival names is checked).
    let spans = receiver.spans();
    for (arrival, from) in [(arrival_a, "home"), (arrival_home, "a")] {
        let transfer =
            spans.iter().find(|s| s.id == arrival.parent).with_context(|| format!("{arrival:?} has no parent"))?;
        ensure!(
            transfer.name == "transfer"
                && transfer.attributes.get("host").map(String::as_str) == Some(from)
                && transfer.attributes.get("hop") == arrival.attributes.get("hop")
                && transfer.parent == launch.id,
            "{arrival:?} does not follow a transfer from {from}: {transfer:?}"
        );
    }
    // Each request is a span too, on the host that answered it.
    let spans = receiver.spans();
    ensure!(
        spans
            .iter()
            .any(|s| s.name == "request" && s.attributes.get("operation").map(String::as_str) == Some("launch")),
        "no span of the launch request"
    );
    // The log's lines stay as they were: no span names in them.
    ensure!(!home.stderr().contains("arrival{"), "{}", home.stderr());
    Ok(())
}
