//! The transport as an attacker on the path sees it: a client that pinned a host's key refuses
//! another key at that address; a capture of every byte of remote evaluation, code on demand and
//! an agent's journey holds none of what they carried; and a byte changed in transit costs an
//! agent a retry, never its journey or a second copy.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use roam_host::client::Client;
use roam_host::host::Host;
use roam_host::local::CodeOnDemand;
use roam_host::server::RunningHost;
use roam_host::transport;
use roam_keys::{Kind, PublicKey, TrustStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::agents::{Net, agent, check_hop_counter, ended, launch, parked, result_json, with_route};
use crate::crash::{account, free_port, host_args};

/// The type of a TLS record that carries encrypted data (in TLS 1.3, every record after the
/// hellos, whatever it holds).
const APPLICATION_DATA: u8 = 0x17;

/// Records at least this long are corrupted while a relay flips: the requests that carry a
/// snapshot, not the handshake's encrypted messages or roam's hello (a few hundred bytes).
const FLIP_AT_LEAST: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bytes of one connection through a [`Relay`], each way, as far as it has gone.
#[derive(Clone, Debug, Default)]
struct Flow {
    /// From the connecting side to the host.
    up: Vec<u8>,
    /// From the host back.
    down: Vec<u8>,
}

/// A TCP relay in front of a host that records every byte of every connection and, while
/// `flip` is set, corrupts one byte in the middle of each large encrypted record sent to the
/// host; while `flip_back` is set, of each encrypted record the host sends back on a
/// connection that carried a large one to it (the answer to a transfer: its receipt). What
/// someone on the path can read, and can do.
struct Relay {
    flows: Arc<Mutex<Vec<Arc<Mutex<Flow>>>>>,
    flip: Arc<AtomicBool>,
    flip_back: Arc<AtomicBool>,
    flips: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Where one direction of a connection is in its TLS records.
struct Records {
    /// The records of at least this many bytes are the ones that may be corrupted.
    min: usize,
    /// Whether a record of at least `min` bytes has passed.
    saw_large: bool,
    /// The header of the next record, as far as it has arrived.
    header: Vec<u8>,
    /// Bytes of the current record's payload still to come.
    left: usize,
    /// Bytes of the current record's payload passed so far.
    at: usize,
    /// Which byte of the current record's payload to flip, if any.
    flip: Option<usize>,
}

impl Records {
    fn new(min: usize) -> Self {
        Self { min, saw_large: false, header: Vec::new(), left: 0, at: 0, flip: None }
    }

    /// Passes `bytes` on their way, flipping a byte of each record `flip` says to, from the
    /// records' headers as they pass; returns how many it flipped.
    fn pass(&mut self, bytes: &mut [u8], flip: impl Fn() -> bool) -> usize {
        let mut flipped = 0;
        for b in bytes {
            if self.left == 0 {
                self.header.push(*b);
                if let [kind, _, _, hi, lo] = self.header[..] {
                    self.left = usize::from(u16::from_be_bytes([hi, lo]));
                    self.at = 0;
                    let large = kind == APPLICATION_DATA && self.left >= self.min;
                    self.saw_large |= large;
                    self.flip = (large && flip()).then_some(self.left / 2);
                    self.header.clear();
                }
                continue;
            }
            if self.flip == Some(self.at) {
                *b ^= 0xff;
                flipped += 1;
            }
            self.at += 1;
            self.left -= 1;
        }
        flipped
    }
}

impl Relay {
    /// Starts relaying what `listener` accepts to `target`.
    fn start(listener: TcpListener, target: SocketAddr) -> Self {
        let flows: Arc<Mutex<Vec<Arc<Mutex<Flow>>>>> = Arc::default();
        let flip = Arc::new(AtomicBool::new(false));
        let flip_back = Arc::new(AtomicBool::new(false));
        let flips = Arc::new(AtomicUsize::new(0));
        let (seen, flipping, flipping_back, flipped) = (flows.clone(), flip.clone(), flip_back.clone(), flips.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flow = Arc::new(Mutex::new(Flow::default()));
                lock(&seen).push(flow.clone());
                let (flip, flip_back, flips) = (flipping.clone(), flipping_back.clone(), flipped.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let ((mut cr, mut cw), (mut sr, mut sw)) = (client.into_split(), server.into_split());
                    let carried_large = AtomicBool::new(false);
                    let up = async {
                        let (mut buf, mut records) = (vec![0u8; 64 << 10], Records::new(FLIP_AT_LEAST));
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            lock(&flow).up.extend_from_slice(&buf[..n]);
                            let flipped = records.pass(&mut buf[..n], || flip.load(Ordering::SeqCst));
                            flips.fetch_add(flipped, Ordering::SeqCst);
                            carried_large.fetch_or(records.saw_large, Ordering::SeqCst);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let (mut buf, mut records) = (vec![0u8; 64 << 10], Records::new(1));
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            lock(&flow).down.extend_from_slice(&buf[..n]);
                            let armed = || flip_back.load(Ordering::SeqCst) && carried_large.load(Ordering::SeqCst);
                            flips.fetch_add(records.pass(&mut buf[..n], armed), Ordering::SeqCst);
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
        Self { flows, flip, flip_back, flips, task }
    }

    /// Every connection so far, open or closed, as far as it has gone.
    fn flows(&self) -> Vec<Flow> {
        lock(&self.flows).iter().map(|f| lock(f).clone()).collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener for a relay, bound first so that a host can be told its address before it starts.
async fn relay_listener() -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Hosts home, a and b of `net`, with a relay in front of a whose address is a's in its peers'
/// address book (returned too): everything bound for a goes through it.
async fn with_a_relayed(net: &Net) -> Result<([RunningHost; 3], Relay, SocketAddr)> {
    let (listener, to_a) = relay_listener().await?;
    net.set_addr("a", &to_a.to_string())?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    let relay = Relay::start(listener, a.addr());
    Ok(([home, a, b], relay, to_a))
}

/// Host `name` of `net`, in this process, that tells its peers to reach it at `advertised`.
async fn host_behind(net: &Net, name: &str, advertised: SocketAddr) -> Result<RunningHost> {
    let host = Host::open(&net.config(name, "trust")?)?;
    // The first address a host is given is the one it keeps: its agents' home address, and the
    // address its transfers name to fetch code from.
    host.set_address(advertised.to_string());
    Ok(RunningHost::start(host, "127.0.0.1:0".parse()?).await?)
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs `roam ARGS…`: whether it succeeded, and its stderr.
fn run(args: &[&OsString]) -> Result<(bool, String)> {
    let output = roam_tests::roam(args)?;
    Ok((output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned()))
}

#[test]
fn a_client_that_pinned_a_host_refuses_it_when_its_key_changes() -> Result<()> {
    let net = Net::new(&["first", "second"])?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let key =
        |name: &str| Ok::<_, anyhow::Error>(PublicKey::load(&net.path(&format!("host-keys/{name}.pub")))?.to_hex());
    let (a, b) = (key("first")?, key("second")?);
    let known = net.path("known_hosts");
    let remembered = || std::fs::read_to_string(&known).unwrap_or_default();
    let [modules, host, known_hosts, host_key] =
        ["modules", "--host", "--known-hosts", "--host-key"].map(OsString::from);
    let (known_arg, addr_arg) = (OsString::from(&known), OsString::from(&addr));
    let plain = [&modules, &host, &addr_arg, &known_hosts, &known_arg];
    let spawn = |name: &str| {
        let mut cmd = Command::new(roam_tests::roam_bin()?);
        cmd.args(host_args(&net, name, port));
        crate::crash::start(&net, name, cmd)
    };

    // First contact: the key is trusted from now on, and remembered.
    let first = spawn("first")?;
    let (ok, stderr) = run(&plain)?;
    ensure!(ok, "the first connection failed: {stderr}");
    assert!(stderr.contains("trusted from now on") && stderr.contains(&a), "{stderr}");
    assert_eq!(remembered(), format!("{addr} {a}\n"));
    // Second contact: the same key, nothing to say, nothing written.
    let (ok, stderr) = run(&plain)?;
    ensure!(ok, "the second connection failed: {stderr}");
    assert!(!stderr.contains("trusted"), "{stderr}");
    assert_eq!(remembered(), format!("{addr} {a}\n"));
    drop(first);

    // Another host, with another key and data of its own, at the same address.
    let _second = spawn("second")?;
    let (ok, stderr) = run(&plain)?;
    assert!(!ok, "a changed key was accepted: {stderr}");
    assert!(stderr.contains(&format!("proved key {b}")) && stderr.contains(&a), "{stderr}");
    assert!(stderr.contains(&known.display().to_string()), "the file is not named: {stderr}");
    assert!(stderr.contains(&format!("delete the line for {addr}")), "{stderr}");
    assert_eq!(remembered(), format!("{addr} {a}\n"), "a refused key was remembered");

    // A key given on the command line is the one checked, and it changes nothing in the file.
    let (b_arg, a_arg) = (OsString::from(&b), OsString::from(&a));
    let (ok, stderr) = run(&[&modules, &host, &addr_arg, &known_hosts, &known_arg, &host_key, &b_arg])?;
    ensure!(ok, "--host-key with the new key failed: {stderr}");
    let (ok, stderr) = run(&[&modules, &host, &addr_arg, &known_hosts, &known_arg, &host_key, &a_arg])?;
    assert!(!ok && stderr.contains(&format!("proved key {b}")), "--host-key with the old key: {stderr}");
    assert_eq!(remembered(), format!("{addr} {a}\n"));

    // As is a key in the address.
    let pinned = |k: &str| OsString::from(format!("{k}@{addr}"));
    let (old, new) = (pinned(&a), pinned(&b));
    let (ok, stderr) = run(&[&modules, &host, &old, &known_hosts, &known_arg])?;
    assert!(!ok, "the old key in the address was accepted: {stderr}");
    assert!(stderr.contains(&format!("proved key {b}, not the key {a}")), "{stderr}");
    let (ok, stderr) = run(&[&modules, &host, &new, &known_hosts, &known_arg])?;
    ensure!(ok, "the new key in the address failed: {stderr}");
    assert_eq!(remembered(), format!("{addr} {a}\n"));
    Ok(())
}

/// A query that answers `result`, a CBOR value of at most 255 bytes.
fn answering(result: &[u8]) -> String {
    let data: String = result.iter().map(|b| format!("\\{b:02x}")).collect();
    format!(
        r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{data}")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const {}))))"#,
        result.len()
    )
}

/// A code module that answers its input's `n` doubled (`{"n": 11}` → `22`; n up to 11) and holds `secret`
/// in its data.
fn doubler(secret: &str) -> String {
    format!(
        r#"(module
  (import "roam" "input_len" (func $input_len (result i32)))
  (import "roam" "input_read" (func $input_read (param i32)))
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "{secret}")
  (func (export "roam_query")
    (call $input_read (i32.const 0))
    (i32.store8 (i32.const 100) (i32.mul (i32.load8_u (i32.const 3)) (i32.const 2)))
    (call $finish (i32.const 0) (i32.const 100) (i32.const 1))))"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_eval_code_on_demand_and_an_agent_shows_no_plaintext() -> Result<()> {
    const EVAL_SECRET: &str = "eval-s3cr3t-result-51c9d";
    const CODE_SECRET: &str = "code-s3cr3t-data-0b7c4";
    const NAMES: [&str; 2] = ["s3cr3t-host-7f2a", "s3cr3t-host-b5e1"];
    let net = Net::new(&["home", NAMES[0], NAMES[1]])?;
    // Each host behind a relay, and known to its peers by the relay's address only: every
    // connection to it, a person's or a peer's, goes through the relay.
    let (mut relays, mut running, mut addrs, mut listeners) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for name in ["home", NAMES[0], NAMES[1]] {
        let (listener, addr) = relay_listener().await?;
        net.set_addr(name, &addr.to_string())?;
        listeners.push((name, listener, addr));
    }
    for (name, listener, addr) in listeners {
        let host = host_behind(&net, name, addr).await?;
        relays.push((name, Relay::start(listener, host.addr())));
        running.push(host);
        addrs.push(addr.to_string());
    }
    let home = addrs[0].clone();

    // Remote evaluation, whose answer holds a secret.
    let mut answer = Vec::new();
    ciborium::into_writer(&EVAL_SECRET, &mut answer)?;
    let query = roam_tests::sign_with(
        &net.alice,
        &wat::parse_str(answering(&answer))?,
        Kind::Query,
        "answer",
        "1.0.0",
        &[],
        (0, 3600),
    )?;
    let result = Client::connect(&home).await?.eval(&query, vec![0xa0]).await?;
    assert_eq!(result, answer);
    assert!(contains(&result, EVAL_SECRET.as_bytes()), "the control: the answer holds the secret");

    // Code on demand: published, then fetched back and run here.
    let code = roam_tests::sign_with(
        &net.alice,
        &wat::parse_str(doubler(CODE_SECRET))?,
        Kind::Code,
        "doubler",
        "1.0.0",
        &[],
        (0, 3600),
    )?;
    assert!(contains(&code, CODE_SECRET.as_bytes()), "the control: the module holds its secret");
    Client::connect(&home).await?.publish(code.clone()).await?;
    let cod = CodeOnDemand::builder(TrustStore::load(&net.path("trust"))?).cache_dir(net.path("cache")).build()?;
    let fetched = cod.fetch(&home, &"doubler".parse().map_err(anyhow::Error::msg)?).await?;
    assert_eq!(fetched.hash(), roam_keys::hash_module(&code));
    let doubled: u8 = cod.call(&fetched, &serde_json::json!({ "n": 11 }))?;
    assert_eq!(doubled, 22);

    // An agent that records the names of the hosts it visits, in its memory and its result.
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home, module, serde_json::json!({ "hosts": [addrs[1], addrs[2]] })).await?;
    let info = ended(&home, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &NAMES)?;
    assert!(NAMES.iter().all(|n| contains(&info.result, n.as_bytes())), "the control: the result holds the names");
    // Its arrivals were reported home (through the home's relay) from the relays' addresses.
    let info = with_route(&home, &id, 3).await?;
    let visited: Vec<_> = info.route.iter().map(|v| (v.host.as_str(), v.address.as_str())).collect();
    assert_eq!(visited, [("home", home.as_str()), (NAMES[0], addrs[1].as_str()), (NAMES[1], addrs[2].as_str())]);

    let secrets: [&[u8]; 5] =
        [EVAL_SECRET.as_bytes(), &answer, CODE_SECRET.as_bytes(), NAMES[0].as_bytes(), NAMES[1].as_bytes()];
    for (name, relay) in &relays {
        let flows = relay.flows();
        // Home: the evaluation, the publication, the fetch, the launch, the polls, the
        // agent's reports and its return. Each other host: at least the agent's arrival.
        ensure!(!flows.is_empty(), "nothing went through the relay in front of {name}");
        let answered = flows.iter().filter(|f| !f.down.is_empty()).count();
        ensure!(answered > 0, "no connection through the relay in front of {name} was answered");
        for (n, flow) in flows.iter().enumerate() {
            let what = format!("connection {n} to {name}");
            // A connection still opening (a late report, say) may have carried nothing yet.
            for (way, bytes) in [("to", &flow.up), ("from", &flow.down)] {
                ensure!(
                    bytes.is_empty() || bytes[0] == transport::TLS_HANDSHAKE_BYTE,
                    "{what}: the first byte {way} the host is not a TLS handshake record's"
                );
            }
            // The capture is searched for real: the ALPN in the client's hello is in the clear
            // (whole once the host answered it).
            ensure!(
                flow.down.is_empty() || contains(&flow.up, transport::ALPN),
                "{what}: the ALPN is not in its ClientHello"
            );
            for (way, bytes) in [("to", &flow.up), ("from", &flow.down)] {
                for secret in secrets {
                    ensure!(
                        !contains(bytes, secret),
                        "{what}: {:?} travelled in the clear {way} the host",
                        String::from_utf8_lossy(secret)
                    );
                }
            }
        }
    }
    drop(relays);
    for host in running {
        host.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipping_proxy_delays_a_transfer_but_the_agent_arrives_once() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    // The agent reaches a through a relay that corrupts what it carries there, for now.
    let ([home, a, b], relay, to_a) = with_a_relayed(&net).await?;
    relay.flip.store(true, Ordering::SeqCst);

    let home_addr = home.addr().to_string();
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let route = [to_a.to_string(), b.addr().to_string()];
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": route })).await?;

    // The transfer is hit, and the agent waits at home for a retry: neither lost nor failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = agent(&home_addr, &id).await?;
        ensure!(
            !matches!(info.state.as_str(), "finished" | "failed" | "recalled"),
            "with the path corrupted: {info:?}"
        );
        if info.state == "parked" && relay.flips.load(Ordering::SeqCst) > 0 {
            let detail = info.detail.unwrap_or_default();
            assert!(detail.contains("no destination reachable") && detail.contains(&route[0]), "{detail}");
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent never parked ({} bytes flipped): {info:?}", relay.flips.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flipped = relay.flips.load(Ordering::SeqCst);
    relay.flip.store(false, Ordering::SeqCst);

    // With the path clean again it goes on, once.
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &["a", "b"])?;
    assert_eq!(info.hops, 3, "two hops out and one home");
    let retried = relay.flows().len();
    assert!(retried >= 2, "{retried} connections to a: the corrupted one and a retry");
    eprintln!("{flipped} bytes flipped; {retried} connections through the relay");
    account(&net, &["home", "a", "b"], &BTreeMap::from([(id, info.hops)])).await.context("after the corruption")?;
    drop(relay);
    for host in [a, b, home] {
        host.shutdown().await;
    }
    Ok(())
}

/// A host dials only its peers (`peers/addresses.toml`): an agent that names anything else
/// waits, told why, and no connection is attempted there (a listener at that address sees
/// none); a peer may be named by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dials_only_its_peers() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let home_addr = home.addr().to_string();

    // Not a peer: a listener that counts the connections it is offered.
    let stranger = TcpListener::bind("127.0.0.1:0").await?;
    let stranger_addr = stranger.local_addr()?.to_string();
    let offered = Arc::new(AtomicUsize::new(0));
    let count = offered.clone();
    tokio::spawn(async move {
        while stranger.accept().await.is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, module.clone(), serde_json::json!({ "hosts": [stranger_addr] })).await?;
    let info = parked(&home_addr, &id).await?;
    let detail = info.detail.unwrap_or_default();
    assert!(detail.contains("not one of this host's peers") && detail.contains("not dialed"), "{detail}");
    assert_eq!(offered.load(Ordering::SeqCst), 0, "the host dialed an address that is not a peer's");

    // A peer, by name.
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": ["a", "a"] })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &["a", "a"])?;
    a.shutdown().await;
    home.shutdown().await;
    Ok(())
}

/// A peers directory for `name` that lists no host key: only the cluster key and the
/// certificates of `certified`, made with `roam keys certify` at their addresses in `net`.
fn cluster_peers(net: &Net, name: &str, certified: &[&str]) -> Result<std::path::PathBuf> {
    let dir = net.path(&format!("peers-{name}"));
    std::fs::create_dir_all(dir.join("clusters"))?;
    std::fs::copy(net.path("keys/cluster.pub"), dir.join("clusters/cluster.pub"))?;
    for host in certified {
        let addr = net.addr(host);
        let said = roam_tests::roam_ok(roam_tests::args![
            "keys",
            "certify",
            net.path(&format!("host-keys/{host}.pub")),
            "--cluster",
            net.path("keys/cluster.key"),
            "--name",
            host,
            "--address",
            addr,
            "--expires",
            "1h",
            "--dir",
            dir
        ])?;
        ensure!(said.contains(&format!("host {host} at {addr}")), "{said}");
    }
    Ok(dir)
}

/// Hosts that trust a cluster key need not list each other: each holds the certificates of the
/// hosts it dials, and a host that dials one that has never heard of it presents its own
/// certificate. Here the home knows a alone; b, whom the home never listed, still brings the
/// agent home, and its reports are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_certified_by_a_cluster_key_are_peers_without_listing_each_other() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    roam_keys::write_keypair(&net.path("keys"), "cluster")?;
    let mut running = Vec::new();
    for (name, certified) in [("home", &["home", "a"][..]), ("a", &["a", "b"]), ("b", &["b", "home"])] {
        let mut config = net.config(name, "trust")?;
        config.peers = Some(cluster_peers(&net, name, certified)?);
        running.push(net.start(&config).await?.1);
    }
    let home_addr = net.addr("home");
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": ["a", net.addr("b")] })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &["a", "b"])?;
    // b's report of its visit reached the home, which knew b only from its certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent(&home_addr, &id).await?.route.iter().any(|v| v.host == "b") {
        ensure!(Instant::now() < deadline, "b's report never reached the home");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for host in running {
        host.shutdown().await;
    }
    Ok(())
}

/// A certificate makes no peer when it is revoked (the host's key or the cluster's, in the
/// peers policy), expired, signed by a cluster key nobody trusts here, or presented by a host
/// that does not hold the key it certifies; each is refused with why, and an agent is never
/// sent to a revoked host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_foreign_and_borrowed_certificates_make_no_peer() -> Result<()> {
    use roam_keys::{HostCertificate, SecretKey};
    let net = Net::new(&["home", "a", "b"])?;
    roam_keys::write_keypair(&net.path("keys"), "cluster")?;
    let cluster = SecretKey::load(&net.path("keys/cluster.key"))?;
    let dir = cluster_peers(&net, "home", &["home", "a", "b"])?;
    let key = |name: &str| SecretKey::load(&net.path(&format!("host-keys/{name}.key")));
    std::fs::write(dir.join("policy.toml"), format!("revoked = [\"{}\"]\n", key("b")?.public()))?;
    let mut config = net.config("home", "trust")?;
    config.peers = Some(dir);
    let (_, home) = net.start(&config).await?;
    let home_addr = home.addr().to_string();

    // Connects to the home as the host holding `as_key`, presenting `cert`.
    let present = |as_key: SecretKey, cert: HostCertificate| {
        let addr = home_addr.clone();
        async move {
            let tls = transport::client_config(Some(Arc::new(as_key)))?;
            match Client::connect_peer(&addr, tls, Some(cert)).await {
                Err(roam_host::client::ClientError::Refused(e)) => Ok(e.message),
                other => bail!("the certificate was accepted: {other:?}"),
            }
        }
    };
    let now = roam_host::state::now_secs();
    let certify = |signer: &SecretKey, name: &str, host: &SecretKey, issued: u64, expires: u64| {
        HostCertificate::issue(signer, name, host.public(), &net.addr(name), issued, expires)
    };
    let revoked = certify(&cluster, "b", &key("b")?, now, now + 3600)?;
    let said = present(key("b")?, revoked).await?;
    assert!(said.contains("revoked"), "{said}");
    let expired = certify(&cluster, "a", &key("a")?, now - 7200, now - 3600)?;
    let said = present(key("a")?, expired).await?;
    assert!(said.contains("valid from") && said.contains("certify the host again"), "{said}");
    let foreign = certify(&SecretKey::generate()?, "a", &key("a")?, now, now + 3600)?;
    let said = present(key("a")?, foreign).await?;
    assert!(said.contains("does not trust"), "{said}");
    let borrowed = certify(&cluster, "a", &key("a")?, now, now + 3600)?;
    let said = present(SecretKey::generate()?, borrowed).await?;
    assert!(said.contains("the connection proved key"), "{said}");

    // An agent sent to the revoked host waits, told why; the host sees no connection.
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": ["b"] })).await?;
    let info = parked(&home_addr, &id).await?;
    assert!(info.detail.as_deref().unwrap_or_default().contains("not one of this host's peers"), "{info:?}");
    home.shutdown().await;
    Ok(())
}

/// Someone on the path records every connection to the home, among them the peer's that
/// appends the agent's line to the home's log through its global reference, and plays each
/// one's bytes to the home again, three times over fresh connections. TLS makes every replay a
/// handshake that fails: the log holds the agent's one line, and no second agent was launched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_connections_replayed_to_a_host_change_nothing() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let (listener, to_home) = relay_listener().await?;
    net.set_addr("home", &to_home.to_string())?;
    let home = Host::open(&crate::agents::survey_home(&net)?)?;
    home.set_address(to_home.to_string());
    let home_run = RunningHost::start(home.clone(), "127.0.0.1:0".parse()?).await?;
    let relay = Relay::start(listener, home_run.addr());
    let stock = net.path("stock.csv");
    std::fs::write(&stock, "sku,warehouse,quantity,unit_cents\nbolt,a,3,100\n")?;
    let mut a_cfg = net.config("a", "trust")?;
    a_cfg.add_table(&format!("stock={}", stock.display()))?;
    let (_, a) = net.start(&a_cfg).await?;

    let module = net.sign_agent("stock_survey", "stock-survey", &["table:stock", "table:config", "log:reports"])?;
    let home_addr = to_home.to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": ["a"] })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let lines = home.state().log_lines("reports")?;
    assert_eq!(lines.len(), 1, "{lines:?}");

    let flows = relay.flows();
    ensure!(flows.len() >= 2, "{} connections recorded: the launch's and a's at least", flows.len());
    for flow in &flows {
        for _ in 0..3 {
            let mut replay = TcpStream::connect(home_run.addr()).await?;
            // The host may close before it has read everything: that is the point.
            let _ = replay.write_all(&flow.up).await;
            let mut answer = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(20), replay.read_to_end(&mut answer)).await;
            ensure!(closed.is_ok(), "the host kept a replayed connection open");
        }
    }
    assert_eq!(home.state().log_lines("reports")?, lines, "a replayed call appended to the log");
    let agents = match Client::connect(&home_run.addr().to_string())
        .await?
        .request(&roam_host::protocol::Request::Agents { id: None })
        .await?
    {
        roam_host::protocol::Response::Agents(list) => list,
        other => bail!("unexpected answer: {other:?}"),
    };
    assert_eq!(agents.len(), 1, "a replayed launch launched another agent: {agents:?}");
    a.shutdown().await;
    home_run.shutdown().await;
    drop(relay);
    Ok(())
}

/// The receipt is what gets corrupted: the destination holds the agent, but its sender cannot
/// read the answer. The sender keeps its copy and retries; the destination, which has run the
/// agent and sent it on meanwhile, answers each retry with the receipt for what it holds, never
/// running it again; once a receipt gets through, the sender releases its copy. The agent
/// arrives everywhere once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_receipt_makes_the_sender_retry_and_the_agent_still_runs_once() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    let ([home, a, b], relay, _) = with_a_relayed(&net).await?;
    relay.flip_back.store(true, Ordering::SeqCst);

    let home_addr = home.addr().to_string();
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": ["a", "b"] })).await?;
    // The first answer and at least one retry's are hit; the home keeps its copy meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.flips.load(Ordering::SeqCst) < 2 {
        ensure!(Instant::now() < deadline, "no receipt was corrupted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = rusqlite::Connection::open(net.path("data-home/state.db"))?;
    let state: String = db.query_row("SELECT state FROM agents WHERE id = ?1 AND hop = 0", [&id], |r| r.get(0))?;
    assert!(matches!(state.as_str(), "leaving" | "parked"), "the home released the agent without a receipt: {state}");
    relay.flip_back.store(false, Ordering::SeqCst);

    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &["a", "b"])?;
    assert_eq!(info.hops, 3, "two hops out and one home");
    account(&net, &["home", "a", "b"], &BTreeMap::from([(id, info.hops)])).await?;
    drop(relay);
    for host in [a, b, home] {
        host.shutdown().await;
    }
    Ok(())
}
