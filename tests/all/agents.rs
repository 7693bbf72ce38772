//! Mobile agents across real hosts on loopback: the example's answer, state over many hops,
//! bindings on arrival, refusals of replayed, altered, misaddressed and untrusted transfers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use roam_abi::Action;
use roam_host::client::{Client, ClientError};
use roam_host::config::HostConfig;
use roam_host::handshake::{Hello, Welcome};
use roam_host::host::Host;
use roam_host::protocol::wire::{
    AgentInfo, AgentLimits, AgentRecord, Call, CallOp, Envelope, Event, Recall, Receipt, Report, Signed, domain,
};
use roam_host::protocol::{ErrorKind, FRAME_TIMEOUT, Request, Response, read_message, write_message};
use roam_host::resources::{Attachment, ResourceType};
use roam_host::server::RunningHost;
use roam_keys::{Kind, SecretKey};
use roam_tests::agent_wasm;

/// Keys and directories shared by the hosts of one test.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub alice: SecretKey,
    /// Each host's address, as its peers' address book has it.
    addresses: Mutex<BTreeMap<String, String>>,
    /// The sockets bound for the hosts not started yet, so that no other test takes their port.
    listeners: Mutex<BTreeMap<String, std::net::TcpListener>>,
}

impl Net {
    /// A net whose hosts are `hosts`: each gets a key and an address that every other one
    /// has as a peer's (`peers/NAME.pub`, `peers/addresses.toml`).
    pub fn new(hosts: &[&str]) -> Result<Self> {
        // RUST_LOG=debug shows the hosts' logs with --nocapture.
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let dir = tempfile::tempdir()?;
        let (alice, _, _) = roam_keys::write_keypair(&dir.path().join("keys"), "alice")?;
        std::fs::create_dir_all(dir.path().join("trust"))?;
        std::fs::copy(dir.path().join("keys/alice.pub"), dir.path().join("trust/alice.pub"))?;
        std::fs::create_dir_all(dir.path().join("empty-trust"))?;
        for trust in ["trust", "empty-trust"] {
            roam_tests::open_access(&dir.path().join(trust))?;
        }
        let net =
            Self { alice: SecretKey::load(&alice)?, dir, addresses: Mutex::default(), listeners: Mutex::default() };
        for name in hosts {
            net.host_key(name)?;
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            lock(&net.addresses).insert((*name).to_owned(), listener.local_addr()?.to_string());
            lock(&net.listeners).insert((*name).to_owned(), listener);
        }
        net.write_addresses()?;
        Ok(net)
    }

    /// Host `name`'s address.
    pub fn addr(&self, name: &str) -> String {
        lock(&self.addresses).get(name).cloned().unwrap_or_default()
    }

    /// Tells the peers that host `name` is reached at `addr` (a relay in front of it, say).
    pub fn set_addr(&self, name: &str, addr: &str) -> Result<()> {
        lock(&self.addresses).insert(name.to_owned(), addr.to_owned());
        self.write_addresses()
    }

    /// Host `name`'s port, freed for a `roam host` process to listen on.
    pub fn port(&self, name: &str) -> Result<u16> {
        lock(&self.listeners).remove(name);
        let addr: std::net::SocketAddr = self.addr(name).parse().context("no address for that host")?;
        Ok(addr.port())
    }

    fn write_addresses(&self) -> Result<()> {
        let lines: String = lock(&self.addresses).iter().map(|(name, addr)| format!("{name} = \"{addr}\"\n")).collect();
        std::fs::write(self.path("peers/addresses.toml"), lines)?;
        Ok(())
    }

    /// Starts host `config` in this process, on the socket bound for it.
    pub async fn start(&self, config: &HostConfig) -> Result<(Host, RunningHost)> {
        let host = Host::open(config)?;
        let listener = lock(&self.listeners).remove(&config.name);
        let running = match listener {
            Some(listener) => RunningHost::start_on(host.clone(), listener).await?,
            None => RunningHost::start(host.clone(), "127.0.0.1:0".parse()?).await?,
        };
        Ok((host, running))
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Creates a host key and adds it to the peers every host of this net trusts.
    fn host_key(&self, name: &str) -> Result<PathBuf> {
        let (key, _, _) = roam_keys::write_keypair(&self.path("host-keys"), name)?;
        std::fs::create_dir_all(self.path("peers"))?;
        std::fs::copy(self.path(&format!("host-keys/{name}.pub")), self.path(&format!("peers/{name}.pub")))?;
        Ok(key)
    }

    pub fn config(&self, name: &str, trust: &str) -> Result<HostConfig> {
        let mut config = HostConfig::new(self.path(trust), self.path(&format!("data-{name}")));
        config.name = name.into();
        config.key = Some(self.path(&format!("host-keys/{name}.key")));
        config.peers = Some(self.path("peers"));
        Ok(config)
    }

    /// Host `name` as a `roam host` process (with `env` added to its environment), on the
    /// port bound for it.
    pub fn process(&self, name: &str, env: &[(&str, &str)]) -> Result<roam_tests::HostProcess> {
        let key = self.path(&format!("host-keys/{name}.key"));
        let (trust, peers, data) = (self.path("trust"), self.path("peers"), self.path(&format!("data-{name}")));
        let listen = format!("127.0.0.1:{}", self.port(name)?);
        roam_tests::HostProcess::spawn_env(
            env,
            roam_tests::args![
                "--name",
                name,
                "--listen",
                listen,
                "--key",
                key,
                "--trust",
                trust,
                "--peers",
                peers,
                "--data-dir",
                data
            ],
        )
    }

    pub fn sign_agent(&self, file: &str, name: &str, caps: &[&str]) -> Result<Vec<u8>> {
        let wasm = std::fs::read(agent_wasm(file)?)?;
        roam_tests::sign_with(&self.alice, &wasm, Kind::Agent, name, "1.0.0", caps, (0, 3600))
    }

    /// The module at `path` (an example of any language), signed by alice as `kind` named
    /// `name`, asking for no capability.
    pub fn sign_file(&self, path: &Path, kind: Kind, name: &str) -> Result<Vec<u8>> {
        roam_tests::sign_with(&self.alice, &std::fs::read(path)?, kind, name, "1.0.0", &[], (0, 3600))
    }
}

pub async fn launch(home: &str, module: Vec<u8>, input: serde_json::Value) -> Result<String> {
    let mut client = Client::connect(home).await?;
    let input = roam_host::client::json_to_cbor(&input);
    match client.request(&Request::Launch { module, input }).await? {
        Response::Launched { id } => Ok(id),
        other => bail!("launch failed: {other:?}"),
    }
}

pub async fn agent(home: &str, id: &str) -> Result<AgentInfo> {
    let mut client = Client::connect(home).await?;
    match client.request(&Request::Agents { id: Some(id.into()) }).await? {
        Response::Agents(mut list) if !list.is_empty() => Ok(list.remove(0)),
        other => bail!("no such agent: {other:?}"),
    }
}

/// Waits (up to 30 s) until the agent waits, parked, at its home; returns what the home knows.
pub async fn parked(home: &str, id: &str) -> Result<AgentInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = agent(home, id).await?;
        if info.state == "parked" {
            return Ok(info);
        }
        ensure!(Instant::now() < deadline, "the agent never parked: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to `limit`) until the agent ended at its home; returns what the home knows.
pub async fn ended(home: &str, id: &str, limit: Duration) -> Result<AgentInfo> {
    let deadline = Instant::now() + limit;
    loop {
        let info = agent(home, id).await?;
        if matches!(info.state.as_str(), "finished" | "failed" | "recalled") {
            return Ok(info);
        }
        if Instant::now() > deadline {
            bail!("agent {id} did not end within {limit:?}: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the home has heard of `visits` arrivals (reports travel on their own, so the
/// last ones may land just after the agent itself).
pub async fn with_route(home: &str, id: &str, visits: usize) -> Result<AgentInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = agent(home, id).await?;
        if info.route.len() >= visits {
            return Ok(info);
        }
        if Instant::now() > deadline {
            bail!("the home heard of {} arrivals of agent {id}, not {visits}", info.route.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn result_json(info: &AgentInfo) -> Result<serde_json::Value> {
    roam_host::client::cbor_to_json(&info.result).map_err(anyhow::Error::msg)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)?;
    Ok(())
}

/// The stock survey's home: the configuration it carries by value (unattached, so it is
/// copied) and the reports log it writes to by identifier.
pub fn survey_home(net: &Net) -> Result<HostConfig> {
    write(&net.path("config.csv"), "key,value\nlow_stock_below,4\n")?;
    let mut home = net.config("home", "trust")?;
    home.resources.push(roam_host::config::ResourceConfig {
        name: "config".into(),
        kind: ResourceType::Table,
        attachment: Attachment::Unattached,
        source: Some(net.path("config.csv")),
        columns: Default::default(),
        engine: None,
    });
    home.add_log("reports");
    Ok(home)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_survey_visits_three_hosts_and_brings_home_the_exact_aggregate() -> Result<()> {
    let net = Net::new(&["home", "data-a", "data-b", "data-c"])?;
    let (home, home_run) = net.start(&survey_home(&net)?).await?;

    // Each data host's stock, generated here so the test can aggregate it natively.
    let mut expected_by_sku = std::collections::BTreeMap::<String, i64>::new();
    let (mut value, mut low, mut rows) = (0i64, 0u64, 0u64);
    let mut hosts = Vec::new();
    let mut running = Vec::new();
    for (i, name) in ["data-a", "data-b", "data-c"].iter().enumerate() {
        let mut csv = String::from("sku,warehouse,quantity,unit_cents\n");
        for n in 0..(20 + i * 7) {
            let sku = format!("sku-{}", (n * 7 + i) % 9);
            let quantity = ((n * 13 + i * 5) % 11) as i64;
            let unit = 100 + ((n * 31 + i) % 50) as i64 * 10;
            csv.push_str(&format!("{sku},{name},{quantity},{unit}\n"));
            *expected_by_sku.entry(sku).or_default() += quantity;
            value += quantity * unit;
            low += u64::from(quantity < 4);
            rows += 1;
        }
        let file = net.path(&format!("{name}.csv"));
        write(&file, &csv)?;
        let mut cfg = net.config(name, "trust")?;
        cfg.add_table(&format!("stock={}", file.display()))?;
        let (_, run) = net.start(&cfg).await?;
        hosts.push(run.addr().to_string());
        running.push(run);
    }

    let module = net.sign_agent("stock_survey", "stock-survey", &["table:stock", "table:config", "log:reports"])?;
    let home_addr = home_run.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": hosts })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let result = result_json(&info)?;
    assert_eq!(result["rows_seen"], rows);
    assert_eq!(result["total_value_cents"], value);
    assert_eq!(result["low_stock_rows"], low);
    assert_eq!(result["low_stock_below"], 4);
    assert_eq!(result["hosts_visited"], serde_json::json!(["data-a", "data-b", "data-c"]));
    assert_eq!(result["quantity_by_sku"], serde_json::to_value(&expected_by_sku)?);
    assert_eq!(result["report_errors"], serde_json::json!([]));

    // The route and the bindings at each hop, as the home recorded them.
    let info = with_route(&home_addr, &id, 4).await?;
    let visits: Vec<_> = info.route.iter().map(|v| v.host.as_str()).collect();
    assert_eq!(visits, ["home", "data-a", "data-b", "data-c"]);
    for visit in &info.route[1..] {
        let action = |name: &str| visit.bindings.iter().find(|b| b.name == name).map(|b| b.action);
        assert_eq!(action("stock"), Some(Action::Rb), "{visit:?}");
        assert_eq!(action("config"), Some(Action::Cp), "{visit:?}");
        assert_eq!(action("reports"), Some(Action::Gr), "{visit:?}");
    }
    // The copy of the configuration lived on each data host for its visit only.
    for name in ["data-a", "data-b", "data-c"] {
        let copies = net.path(&format!("data-{name}/agent-copies/{id}"));
        assert!(!copies.exists(), "{} was left behind", copies.display());
    }
    // The summaries went to the home's reports log through the global reference.
    let lines = home.state().log_lines("reports")?;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("data-a"), "{lines:?}");
    for r in running {
        r.shutdown().await;
    }
    home_run.shutdown().await;
    Ok(())
}

/// FNV-1a, as the hop-counter agent computes its checksum.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

pub fn check_hop_counter(result: &serde_json::Value, expected_hosts: &[&str]) -> Result<()> {
    let arrivals = result["arrivals"].as_u64().context("arrivals")?;
    assert_eq!(arrivals, expected_hosts.len() as u64, "{result}");
    let hosts: Vec<String> = serde_json::from_value(result["hosts"].clone())?;
    assert_eq!(hosts, expected_hosts);
    let hops: std::collections::BTreeMap<u32, u64> = result["hops"]
        .as_object()
        .context("hops")?
        .iter()
        .map(|(k, v)| Ok((k.parse()?, v.as_u64().context("count")?)))
        .collect::<Result<_>>()?;
    assert_eq!(hops.len(), expected_hosts.len());
    for (i, (hop, count)) in hops.iter().enumerate() {
        assert_eq!((*hop, *count), (i as u32 + 1, i as u64 + 1), "the counter in memory skipped or repeated");
    }
    let mut bytes: Vec<Vec<u8>> = vec![arrivals.to_le_bytes().to_vec()];
    for h in &hosts {
        bytes.push((h.len() as u64).to_le_bytes().to_vec());
        bytes.push(h.as_bytes().to_vec());
    }
    for (hop, count) in &hops {
        bytes.push(hop.to_le_bytes().to_vec());
        bytes.push(count.to_le_bytes().to_vec());
    }
    let parts: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    assert_eq!(result["checksum"].as_u64(), Some(fnv1a(&parts)), "the heap state was corrupted on the way");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_and_a_heap_survive_forty_hops() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    let route: Vec<String> = (0..40).map(|i| if i % 2 == 0 { a.addr() } else { b.addr() }.to_string()).collect();
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": route })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let names: Vec<&str> = (0..40).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    check_hop_counter(&result_json(&info)?, &names)?;
    assert_eq!(info.hops, 41, "40 hops out and one home");
    for r in [a, b, home_run] {
        r.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_signer_the_destination_does_not_trust_is_refused_and_home_is_told() -> Result<()> {
    let net = Net::new(&["home", "trusting", "wary"])?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let (_, trusting) = net.start(&net.config("trusting", "trust")?).await?;
    let (_, wary) = net.start(&net.config("wary", "empty-trust")?).await?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let hosts = [trusting.addr().to_string(), wary.addr().to_string()];
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": hosts })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "failed");
    let detail = info.detail.unwrap_or_default();
    assert!(detail.contains("refused") && detail.contains("not in the trust store"), "{detail}");
    let info = with_route(&home_addr, &id, 2).await?;
    assert_eq!(info.route.last().map(|v| v.host.as_str()), Some("trusting"));
    for r in [trusting, wary, home_run] {
        r.shutdown().await;
    }
    Ok(())
}

/// The message of a refusal for want of an authenticated peer.
fn unauthenticated(r: Response) -> Result<String> {
    match r {
        Response::Error(e) if e.kind == ErrorKind::Unauthenticated => Ok(e.message),
        other => bail!("expected a refusal of the connection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_of_the_old_protocol_is_told_to_upgrade() -> Result<()> {
    let net = Net::new(&["home"])?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let addr = home_run.addr().to_string();
    // A client of version 2 speaks in the clear: it is told, in the clear, to upgrade.
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    write_message(&mut stream, &Hello { versions: vec![2], ..Hello::new("old") }).await?;
    match read_message(&mut stream, 1 << 16, FRAME_TIMEOUT).await? {
        Welcome::Refused(e) => {
            assert_eq!(e.kind, ErrorKind::Protocol);
            assert!(e.message.contains("over TLS") && e.message.contains("upgrade"), "{e}");
        }
        Welcome::Accepted { .. } => bail!("a client in the clear was accepted"),
    }
    // One that speaks TLS but offers only an older version is refused inside it.
    let mut stream = roam_tests::tls_stream(&addr).await?;
    write_message(&mut stream, &Hello { versions: vec![2], ..Hello::new("old") }).await?;
    match read_message(&mut stream, 1 << 16, FRAME_TIMEOUT).await? {
        Welcome::Refused(e) => {
            assert_eq!(e.kind, ErrorKind::Protocol);
            assert!(e.message.contains("speaks protocol version 3") && e.message.contains("upgrade"), "{e}");
        }
        Welcome::Accepted { .. } => bail!("a version 2 client was accepted"),
    }
    home_run.shutdown().await;
    Ok(())
}

/// Transfers made by hand, as a hostile or confused peer would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_altered_misaddressed_and_unknown_transfers_are_refused() -> Result<()> {
    let net = Net::new(&["home", "target", "peer"])?;
    let peer_key = SecretKey::load(&net.path("host-keys/peer.key"))?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let (target, target_run) = net.start(&net.config("target", "trust")?).await?;
    let addr = target_run.addr().to_string();

    // The target holds the agent's code (published there), so only the envelope matters.
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let code = roam_keys::hash_module(&module);
    let mut client = Client::connect_as(&addr, &peer_key).await?;
    let target_key = client.host_key();
    let pre = target.state();
    let claims = roam_keys::read_claims_unverified(&module)?;
    pre.store_module(code, &module, &claims)?;

    // A minimal, valid snapshot: the initial memory and one i32 global (the stack pointer).
    let snapshot = roam_host::snapshot::Snapshot {
        memory_bytes: 2 * 65536,
        chunks: Vec::new(),
        globals: vec![roam_host::snapshot::GlobalValue::I32(65536)],
    };
    let snapshot = roam_host::protocol::wire::to_cbor(&snapshot);
    let envelope = |destination, nonce, digest_of: &[u8]| Envelope {
        record: AgentRecord {
            id: "00112233445566778899aabbccddeeff".into(),
            code,
            label: "hop-counter@1.0.0".into(),
            home: home_run.addr().to_string(),
            home_key: peer_key.public(),
            launched_at: roam_host::state::now_secs(),
            limits: AgentLimits::default(),
            anchors: Vec::new(),
            owner: None,
            trace: None,
        },
        hop: 1,
        snapshot_digest: roam_keys::hash_module(digest_of),
        sender_addr: "127.0.0.1:9".into(),
        destination,
        sent_at: roam_host::state::now_secs(),
        nonce,
        ending: None,
        recall: None,
        unreachable: Vec::new(),
        trace: None,
    };
    let mut send = async |signed: Signed, snapshot: Vec<u8>| -> Result<Response> {
        Ok(client.request(&Request::Transfer { envelope: signed, snapshot }).await?)
    };
    let refusal = |r: Response| match r {
        Response::Error(e) => Ok(e.message),
        other => bail!("expected a refusal, got {other:?}"),
    };

    // Altered snapshot: the digest no longer matches.
    let good = Signed::sign(domain::ENVELOPE, &envelope(target_key, 1, &snapshot), &peer_key)?;
    let mut altered = snapshot.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let message = refusal(send(good.clone(), altered).await?)?;
    assert!(message.contains("altered"), "{message}");

    // Addressed to another host.
    let elsewhere = Signed::sign(domain::ENVELOPE, &envelope(peer_key.public(), 2, &snapshot), &peer_key)?;
    let message = refusal(send(elsewhere, snapshot.clone()).await?)?;
    assert!(message.contains("addressed to host"), "{message}");

    // From a host that is not a trusted peer, on a connection where it proved its own key.
    let stranger = SecretKey::generate()?;
    let unknown = Signed::sign(domain::ENVELOPE, &envelope(target_key, 3, &snapshot), &stranger)?;
    let transfer = |envelope, snapshot| Request::Transfer { envelope, snapshot };
    let mut as_stranger = Client::connect_as(&addr, &stranger).await?;
    let message = refusal(as_stranger.request(&transfer(unknown.clone(), snapshot.clone())).await?)?;
    assert!(message.contains("not among this host's trusted peers"), "{message}");
    // The same, sent on the trusted peer's connection: a host sends only its own messages.
    let message = refusal(send(unknown, snapshot.clone()).await?)?;
    assert!(message.contains("a host sends only its own messages"), "{message}");

    // An agent whose lifetime is over, in a fresh envelope from a trusted peer: what a replay
    // of a transfer whose records this host has forgotten (`agent_retention_s`) would be.
    let mut expired = envelope(target_key, 4, &snapshot);
    expired.record.launched_at -= expired.record.limits.lifetime_secs + 3600;
    let expired = Signed::sign(domain::ENVELOPE, &expired, &peer_key)?;
    let message = refusal(send(expired, snapshot.clone()).await?)?;
    assert!(message.contains("lifetime") && message.contains("is over"), "{message}");

    // An envelope whose signed body was changed after signing.
    let mut forged = good.clone();
    let n = forged.body.len() - 3;
    forged.body[n] ^= 1;
    let message = refusal(send(forged, snapshot.clone()).await?)?;
    assert!(message.contains("signature") || message.contains("malformed"), "{message}");

    // The good envelope on an anonymous connection is refused for the connection alone. (A
    // connection cannot claim the peer's key without holding it: TLS proves it, see
    // `a_host_that_cannot_prove_its_key_gets_no_agent`.)
    let mut anonymous = Client::connect(&addr).await?;
    let message = unauthenticated(anonymous.request(&transfer(good.clone(), snapshot.clone())).await?)?;
    assert!(message.contains("this connection is anonymous"), "{message}");
    // Nothing of all that was persisted.
    match anonymous.request(&Request::Agents { id: None }).await? {
        Response::Agents(list) => assert!(list.is_empty(), "{list:?}"),
        other => bail!("unexpected answer {other:?}"),
    }

    // The good one is accepted once; sent again byte for byte, it is a replay.
    // Accepted with the target's receipt for exactly what was sent.
    let digest = roam_keys::hash_module(&snapshot);
    let receipt = match send(good.clone(), snapshot.clone()).await? {
        Response::Received(receipt) => receipt,
        other => bail!("the good envelope was answered with {other:?}"),
    };
    assert!(Receipt::proves(&receipt, "00112233445566778899aabbccddeeff", 1, &digest, &target_key));
    assert!(!Receipt::proves(&receipt, "00112233445566778899aabbccddeeff", 1, &digest, &peer_key.public()));
    let message = refusal(send(good, snapshot.clone()).await?)?;
    assert!(message.contains("replayed"), "{message}");
    // A fresh attempt at the same hop (a sender's retry) is acknowledged, not run twice.
    let retry = Signed::sign(domain::ENVELOPE, &envelope(target_key, 4, &snapshot), &peer_key)?;
    assert!(
        matches!(send(retry, snapshot.clone()).await?, Response::Received(r) if Receipt::proves(&r, "00112233445566778899aabbccddeeff", 1, &digest, &target_key))
    );
    match anonymous.request(&Request::Agents { id: None }).await? {
        Response::Agents(list) => assert_eq!(list.len(), 1, "{list:?}"),
        other => bail!("unexpected answer {other:?}"),
    }
    target_run.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_to_host_messages_are_refused_without_a_peer_proven_in_the_handshake() -> Result<()> {
    let net = Net::new(&["home", "peer"])?;
    let peer_key = SecretKey::load(&net.path("host-keys/peer.key"))?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let addr = home_run.addr().to_string();
    let agent = "00112233445566778899aabbccddeeff".to_owned();
    let at = roam_host::state::now_secs();
    let report = Report { agent: agent.clone(), hop: 1, events: vec![Event::Failed { reason: "forged".into() }] };
    let call =
        Call { agent: agent.clone(), resource: "reports".into(), op: CallOp::Append { line: "forged".into() }, at };
    let messages = [
        Request::Report(Signed::sign(domain::REPORT, &report, &peer_key)?),
        Request::RecallAgent(Signed::sign(domain::RECALL, &Recall { agent, at }, &peer_key)?),
        Request::Call(Signed::sign(domain::CALL, &call, &peer_key)?),
    ];
    let stranger = SecretKey::generate()?;
    let mut anonymous = Client::connect(&addr).await?;
    let mut as_stranger = Client::connect_as(&addr, &stranger).await?;
    for message in &messages {
        let refused = unauthenticated(anonymous.request(message).await?)?;
        assert!(refused.contains("this connection is anonymous"), "{refused}");
        // Signed by a peer, sent by a host that proved another key.
        let refused = unauthenticated(as_stranger.request(message).await?)?;
        assert!(refused.contains("a host sends only its own messages"), "{refused}");
    }
    // The same messages from the peer itself get past the connection check to their own.
    let mut as_peer = Client::connect_as(&addr, &peer_key).await?;
    for message in &messages {
        if let Response::Error(e) = as_peer.request(message).await? {
            assert_ne!(e.kind, ErrorKind::Unauthenticated, "{e}");
        }
    }
    home_run.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_destination_parks_the_agent_and_recall_brings_it_home() -> Result<()> {
    let net = Net::new(&["home", "a", "down"])?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    // A peer that never starts: nothing listens at its address.
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": [a.addr().to_string(), dead] })).await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = agent(&home_addr, &id).await?;
        if info.state == "parked" {
            assert!(info.detail.unwrap_or_default().contains("no destination reachable"));
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent never parked: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ordered = Client::connect(&home_addr).await?.recall(&id).await?;
    assert!(ordered.recall_ordered.is_some(), "{ordered:?}");
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "recalled", "{info:?}");
    // It came home with what it carried: one arrival, at a.
    let partial = result_json(&info)?;
    check_hop_counter(&partial, &["a"])?;
    assert_eq!(info.detail.as_deref(), Some("recalled home after 2 hops"));
    a.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_hop_limit_fails_and_home_is_told_why() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let mut home_cfg = net.config("home", "trust")?;
    home_cfg.limits.agent_hops = 3;
    let (_, home_run) = net.start(&home_cfg).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let route = vec![a.addr().to_string(); 5];
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": route })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "failed");
    assert!(info.detail.unwrap_or_default().contains("hop limit of 3"), "{:?}", info.route);
    assert_eq!(info.hops, 3);
    a.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_agent_survives_its_hosts_restart_and_moves_on_when_the_destination_returns() -> Result<()> {
    let net = Net::new(&["home", "late"])?;
    let home_cfg = net.config("home", "trust")?;
    let (_, home_run) = net.start(&home_cfg).await?;
    let home_addr = home_run.addr();
    let late_addr: std::net::SocketAddr = format!("127.0.0.1:{}", net.port("late")?).parse()?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr.to_string(), module, serde_json::json!({ "hosts": [late_addr.to_string()] })).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent(&home_addr.to_string(), &id).await?.state != "parked" {
        if Instant::now() > deadline {
            bail!("the agent never parked");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The home restarts on its data; the agent is still parked there, then the destination
    // comes up and the agent goes on and comes home.
    home_run.shutdown().await;
    let home = Host::open(&home_cfg)?;
    let home_run = RunningHost::start(home, home_addr).await?;
    assert_eq!(agent(&home_addr.to_string(), &id).await?.state, "parked");
    let late = RunningHost::start(Host::open(&net.config("late", "trust")?)?, late_addr).await?;
    let info = ended(&home_addr.to_string(), &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &["late"])?;
    late.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_over_their_snapshot_or_lifetime_limit_fail_with_the_reason() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    for (snapshot_mib, lifetime_s, words) in [(0, 3600, "snapshot of"), (16, 0, "lifetime limit")] {
        let mut home_cfg = net.config("home", "trust")?;
        home_cfg.data_dir = net.path(&format!("data-home-{lifetime_s}"));
        home_cfg.limits.agent_snapshot_mib = snapshot_mib;
        home_cfg.limits.agent_lifetime_s = lifetime_s;
        let (_, home_run) = net.start(&home_cfg).await?;
        let home_addr = home_run.addr().to_string();
        let id = launch(&home_addr, module.clone(), serde_json::json!({ "hosts": [a.addr().to_string()] })).await?;
        let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
        assert_eq!(info.state, "failed");
        assert!(info.detail.clone().unwrap_or_default().contains(words), "{info:?}");
        home_run.shutdown().await;
    }
    a.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_cannot_be_bound_is_an_error_the_agent_sees_not_a_trap() -> Result<()> {
    let net = Net::new(&["home", "bare"])?;
    let (_, home_run) = net.start(&survey_home(&net)?).await?;
    // This host offers no stock table, so `stock` (by type) has nothing to bind to.
    let (_, bare) = net.start(&net.config("bare", "trust")?).await?;
    let module = net.sign_agent("stock_survey", "stock-survey", &["table:stock", "table:config", "log:reports"])?;
    let home_addr = home_run.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": [bare.addr().to_string()] })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "failed");
    let detail = info.detail.clone().unwrap_or_default();
    assert!(detail.contains("reported an error") && detail.contains("could not be bound"), "{detail}");
    let info = with_route(&home_addr, &id, 2).await?;
    let at_bare = info.route.iter().find(|v| v.host == "bare").context("no visit to bare")?;
    let stock = at_bare.bindings.iter().find(|b| b.name == "stock").context("no stock binding")?;
    assert_eq!(stock.action, Action::Unbound);
    bare.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_never_handed_to_a_host_that_is_not_a_trusted_peer() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    // A host with a key of its own that no one listed among the peers, at peer a's address.
    let mut rogue_cfg = HostConfig::new(net.path("trust"), net.path("data-rogue"));
    rogue_cfg.name = "a".into();
    rogue_cfg.peers = Some(net.path("peers"));
    let (rogue, rogue_run) = net.start(&rogue_cfg).await?;
    assert_eq!(rogue_run.addr().to_string(), net.addr("a"));
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": ["a"] })).await?;
    // The agent waits for the real a, told why.
    let info = parked(&home_addr, &id).await?;
    let detail = info.detail.unwrap_or_default();
    assert!(detail.contains("proved key") && detail.contains("do not trust it"), "{detail}");
    assert!(rogue.state().module(&roam_keys::hash_module(&net.sign_agent("hop_counter", "x", &[])?))?.is_none());
    rogue_run.shutdown().await;
    home_run.shutdown().await;
    Ok(())
}

/// Presents a key it does not hold in the TLS handshake, signing with another.
#[derive(Debug)]
struct Liar {
    claimed: roam_keys::PublicKey,
    signs_with: std::sync::Arc<SecretKey>,
}

impl rustls::sign::SigningKey for Liar {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&rustls::SignatureScheme::ED25519).then(|| {
            Box::new(Liar { claimed: self.claimed, signs_with: self.signs_with.clone() })
                as Box<dyn rustls::sign::Signer>
        })
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }
}

impl rustls::sign::Signer for Liar {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.signs_with.sign(message).to_vec())
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        rustls::SignatureScheme::ED25519
    }
}

/// A TLS listener on `at` that claims a trusted host's key without holding it, and claims to
/// accept whatever it is sent.
async fn impostor(claimed: roam_keys::PublicKey, at: &str) -> Result<std::net::SocketAddr> {
    let spki =
        [&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..], claimed.as_bytes()].concat();
    let liar = Liar { claimed, signs_with: std::sync::Arc::new(SecretKey::generate()?) };
    let certified = rustls::sign::CertifiedKey::new(vec![spki.into()], std::sync::Arc::new(liar));
    let resolver = rustls::server::AlwaysResolvesServerRawPublicKeys::new(std::sync::Arc::new(certified));
    let mut config = rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(resolver));
    config.alpn_protocols = vec![roam_host::transport::ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut stream) = acceptor.accept(stream).await else { continue };
            let _ = read_message::<_, Hello>(&mut stream, 1 << 16, FRAME_TIMEOUT).await;
            let welcome = Welcome::Accepted { version: roam_host::protocol::VERSION, host: "a".into() };
            let _ = write_message(&mut stream, &welcome).await;
            while read_message::<_, Request>(&mut stream, 64 << 20, FRAME_TIMEOUT).await.is_ok() {
                let _ = write_message(&mut stream, &Response::Accepted).await;
            }
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_prove_its_key_gets_no_agent() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let a_key = roam_keys::PublicKey::load(&net.path("peers/a.pub"))?;
    // At a's address, which the home has in its address book.
    net.port("a")?;
    let fake = impostor(a_key, &net.addr("a")).await?;
    match Client::connect(&fake.to_string()).await {
        Err(roam_host::client::ClientError::Tls { .. }) => {}
        other => bail!("the impostor was believed: {other:?}"),
    }
    // An agent sent there is not handed over: it waits (parked) instead of being lost.
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let home_addr = home_run.addr().to_string();
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": [fake.to_string()] })).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = agent(&home_addr, &id).await?;
        if info.state == "parked" {
            break;
        }
        assert!(!matches!(info.state.as_str(), "finished" | "failed"), "{info:?}");
        if Instant::now() > deadline {
            bail!("the agent never parked: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    home_run.shutdown().await;
    Ok(())
}

/// A peer (it holds a trusted key) that answers a transfer without its own valid receipt: first
/// with a bare acknowledgement, then with a receipt signed by another key, then with one for
/// another snapshot. The sender never releases the agent: it stays parked at home, retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_is_released_only_on_the_destinations_own_receipt() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let a_key = std::sync::Arc::new(SecretKey::load(&net.path("host-keys/a.key"))?);
    let acceptor = tokio_rustls::TlsAcceptor::from(roam_host::transport::server_config(a_key.clone())?);
    net.port("a")?;
    let listener = tokio::net::TcpListener::bind(net.addr("a")).await?;
    let fake = listener.local_addr()?.to_string();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut stream) = acceptor.accept(stream).await else { continue };
            let _ = read_message::<_, Hello>(&mut stream, 1 << 16, FRAME_TIMEOUT).await;
            let welcome = Welcome::Accepted { version: roam_host::protocol::VERSION, host: "a".into() };
            let _ = write_message(&mut stream, &welcome).await;
            while let Ok(request) = read_message::<_, Request>(&mut stream, 64 << 20, FRAME_TIMEOUT).await {
                let Request::Transfer { envelope, snapshot } = request else {
                    let _ = write_message(&mut stream, &Response::Accepted).await;
                    continue;
                };
                let Ok(envelope) = envelope.open::<Envelope>(domain::ENVELOPE, |_| true) else { break };
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut receipt = Receipt {
                    agent: envelope.record.id.clone(),
                    hop: envelope.hop,
                    snapshot_digest: roam_keys::hash_module(&snapshot),
                    receiver: a_key.public(),
                    at: roam_host::state::now_secs(),
                };
                let answer = match n % 3 {
                    0 => Response::Accepted,
                    1 => match SecretKey::generate().map(|k| Signed::sign(domain::RECEIPT, &receipt, &k)) {
                        Ok(Ok(forged)) => Response::Received(forged),
                        _ => break,
                    },
                    _ => {
                        receipt.snapshot_digest = roam_keys::hash_module(b"another snapshot");
                        match Signed::sign(domain::RECEIPT, &receipt, &a_key) {
                            Ok(wrong) => Response::Received(wrong),
                            Err(_) => break,
                        }
                    }
                };
                let _ = write_message(&mut stream, &answer).await;
            }
        }
    });
    let (_, home_run) = net.start(&net.config("home", "trust")?).await?;
    let home_addr = home_run.addr().to_string();
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, module, serde_json::json!({ "hosts": [fake] })).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        ensure!(Instant::now() < deadline, "the sender stopped retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every answer so far was refused: the home still holds the agent, waiting to retry.
    let info = agent(&home_addr, &id).await?;
    assert_eq!(info.state, "parked", "{info:?}");
    let db = rusqlite::Connection::open(net.path("data-home/state.db"))?;
    let state: String = db.query_row("SELECT state FROM agents WHERE id = ?1 AND hop = 0", [&id], |r| r.get(0))?;
    assert_eq!(state, "parked", "the home released the agent without a valid receipt");
    home_run.shutdown().await;
    Ok(())
}

/// A call forwarded by a peer is answered while every module thread of the owner is busy. The
/// calling agent's visit holds a module thread on its own host while it waits for the answer,
/// so a call that queued here for a module thread could hold up (or, between two busy hosts
/// calling each other, deadlock) both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_is_answered_while_every_module_thread_is_busy() -> Result<()> {
    const LOOP: &str = r#"(module (memory (export "memory") 1) (func (export "roam_query") (loop $l (br $l))))"#;
    const IDLE: u32 = 5;
    let net = Net::new(&["home", "peer"])?;
    let peer_key = SecretKey::load(&net.path("host-keys/peer.key"))?;
    let mut config = net.config("home", "trust")?;
    config.limits.workers = Some(1);
    config.limits.time_ms = 5_000;
    config.limits.queue_ms = 30_000;
    let (_, home) = net.start(&config).await?;
    let addr = home.addr().to_string();
    let spin = roam_tests::sign_with(&net.alice, &wat::parse_str(LOOP)?, Kind::Query, "loop", "1.0.0", &[], (0, 3600))?;
    let spinner = {
        let addr = addr.clone();
        tokio::spawn(async move { Client::connect(&addr).await?.eval(&spin, vec![0xa0]).await })
    };
    // The only module thread runs the loop once it has been demoted for running long.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !roam_tests::threads(std::process::id(), "roam-worker-")?.iter().any(|&(_, policy)| policy == IDLE) {
        ensure!(!spinner.is_finished(), "the loop ended before it was seen running");
        ensure!(Instant::now() < deadline, "the loop's module thread was never demoted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = roam_host::state::now_secs();
    let agent = "00112233445566778899aabbccddeeff".to_owned();
    let call = Call { agent, resource: "reports".into(), op: CallOp::Append { line: "hello".into() }, at };
    let answer = Client::connect_as(&addr, &peer_key)
        .await?
        .request(&Request::Call(Signed::sign(domain::CALL, &call, &peer_key)?))
        .await?;
    // Answered on its merits (no such agent here), not queued behind the loop.
    match answer {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Refused, "{e}");
            assert!(e.message.contains("not a live agent of this host"), "{e}");
        }
        other => bail!("a call for an unknown agent was answered {other:?}"),
    }
    assert!(!spinner.is_finished(), "the call was answered only once the loop had ended");
    let ended = spinner.await?;
    assert!(matches!(&ended, Err(ClientError::Remote(e)) if e.kind == ErrorKind::OutOfTime), "{ended:?}");
    home.shutdown().await;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An agent that declares one resource twice (which the Rust SDK cannot build) is refused with
/// its reason when its code is loaded, before it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_declaring_a_resource_twice_is_refused() -> Result<()> {
    let net = Net::new(&["home"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let wat = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\a1\69\72\65\73\6f\75\72\63\65\73\82\a3\64\6e\61\6d\65\65\73\74\6f\63\6b\64\6b\69\6e\64\65\74\61\62\6c\65\67\62\69\6e\64\69\6e\67\64\74\79\70\65\a3\64\6e\61\6d\65\65\73\74\6f\63\6b\64\6b\69\6e\64\65\74\61\62\6c\65\67\62\69\6e\64\69\6e\67\64\74\79\70\65")
  (func (export "roam_agent_manifest") (call $finish (i32.const 0) (i32.const 0) (i32.const 84)))
  (func (export "roam_agent_start")))"#;
    let module =
        roam_tests::sign_with(&net.alice, &wat::parse_str(wat)?, Kind::Agent, "twice", "1.0.0", &[], (0, 3600))?;
    let refused = launch(&home.addr().to_string(), module, serde_json::json!({})).await;
    let said = format!("{refused:?}");
    ensure!(said.contains("declares resource") && said.contains("stock") && said.contains("twice"), "{said}");
    home.shutdown().await;
    Ok(())
}
