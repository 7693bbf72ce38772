//! Who may ask a host for what: client identities proven in TLS, the access policy, and agents
//! that belong to whoever launched them. Real hosts on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use roam_host::client::{Client, ClientError, json_to_cbor};
use roam_host::protocol::{ErrorKind, ModuleRef, Request, Response};
use roam_keys::{Kind, SecretKey};

use crate::agents::Net;

/// A query that answers CBOR `true` at once.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// A client of `addr` proving `key`, or anonymous.
async fn client(addr: &str, key: Option<&SecretKey>) -> Result<Client> {
    let tls = roam_host::transport::client_config(key.cloned().map(Arc::new))?;
    Ok(Client::connect_target(addr, tls).await?)
}

/// The refusal `answer` must be: denied, naming `right` and the policy file.
fn denied(answer: Result<Response, ClientError>, right: &str) -> Result<String> {
    match answer? {
        Response::Error(e) if e.kind == ErrorKind::Denied => {
            ensure!(e.message.contains(right), "the refusal does not name {right}: {e}");
            ensure!(e.message.contains("access.toml"), "the refusal does not name the policy file: {e}");
            Ok(e.message)
        }
        other => bail!("expected a refusal for want of {right}, got {other:?}"),
    }
}

/// A host whose policy grants alice everything but administration, carol administration, dave
/// evaluations of queries that ask for logs only, and nobody else anything but code: a stranger, anonymous or with a key the host does not know,
/// cannot list, read, recall, evaluate (by hash or whole), fetch a query module or launch;
/// alice sees and recalls her own agent, carol every agent; mallory, identified but unknown,
/// gets no further than an anonymous client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_may_fetch_code_and_nothing_else_and_agents_are_their_owners() -> Result<()> {
    // "down" is a peer that never starts: the agent waits for it, so it can be recalled.
    let net = Net::new(&["home", "down"])?;
    let [alice, carol, dave, mallory] = ["alice", "carol", "dave", "mallory"].map(|_| SecretKey::generate());
    let (alice, carol, dave, mallory) = (alice?, carol?, dave?, mallory?);
    let policy = format!(
        "[clients]\nalice = \"{}\"\ncarol = \"{}\"\ndave = \"{}\"\n[allow]\n\
         eval = [\"alice\", \"dave\"]\npublish = [\"alice\"]\nfetch_query = [\"alice\"]\nfetch_agent = [\"alice\"]\n\
         list = [\"alice\"]\nlaunch = [\"alice\"]\nrecall = [\"alice\"]\nadmin = [\"carol\"]\n\
         [eval_capabilities]\ndave = [\"log:*\"]\n",
        alice.public(),
        carol.public(),
        dave.public()
    );
    std::fs::write(net.path("trust/access.toml"), policy)?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let addr = home.addr().to_string();

    // alice evaluates a query (the host keeps it), publishes a code module, launches an agent.
    let query =
        roam_tests::sign_with(&net.alice, &wat::parse_str(QUICK)?, Kind::Query, "quick", "1.0.0", &[], (0, 3600))?;
    let hash = roam_keys::hash_module(&query);
    let mut as_alice = client(&addr, Some(&alice)).await?;
    as_alice.eval(&query, vec![0xa0]).await.context("alice's evaluation")?;
    // dave may evaluate only queries that ask for logs: not one that asks for a table.
    let asks_for_sales = roam_tests::sign_with(
        &net.alice,
        &wat::parse_str(QUICK)?,
        Kind::Query,
        "quick",
        "1.1.0",
        &["table:sales"],
        (0, 3600),
    )?;
    let mut as_dave = client(&addr, Some(&dave)).await?;
    as_dave.eval(&query, vec![0xa0]).await.context("dave's evaluation of a query asking for nothing")?;
    let whole = Request::Eval { module: ModuleRef::Bytes(asks_for_sales), input: vec![0xa0] };
    let said = denied(as_dave.request(&whole).await, "eval_capabilities")?;
    assert!(said.contains("table:sales"), "{said}");
    let code = std::fs::read(roam_tests::agent_wasm("order_validator")?)?;
    let code = roam_tests::sign_with(&net.alice, &code, Kind::Code, "validator", "1.0.0", &[], (0, 3600))?;
    let code_hash = roam_keys::hash_module(&code);
    as_alice.publish(code).await.context("alice's publish")?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let id = as_alice.launch(module.clone(), json_to_cbor(&serde_json::json!({ "hosts": [dead] }))).await?;

    for (who, key) in [("anonymous", None), ("mallory", Some(&mallory))] {
        let mut c = client(&addr, key).await?;
        let by_hash = Request::Eval { module: ModuleRef::Hash(hash), input: vec![0xa0] };
        denied(c.request(&by_hash).await, "eval").context(who)?;
        let whole = Request::Eval { module: ModuleRef::Bytes(query.clone()), input: vec![0xa0] };
        denied(c.request(&whole).await, "eval").context(who)?;
        denied(c.request(&Request::Fetch { hash, offset: 0, max: 1 << 16 }).await, "fetch_query").context(who)?;
        denied(c.request(&Request::Resolve { name: "quick".into(), version: None }).await, "fetch_query")
            .context(who)?;
        denied(c.request(&Request::List).await, "list").context(who)?;
        let launch = Request::Launch { module: module.clone(), input: vec![0xa0] };
        denied(c.request(&launch).await, "launch").context(who)?;
        // Code on demand is open to anyone.
        let (total, _) = c.fetch_chunk(code_hash, 0, 1 << 16).await.context(who)?;
        ensure!(total > 0, "{who} fetched an empty code module");
        // Another's agent: not listed, not shown, not recalled.
        let listed = c.agents().await.context(who)?;
        ensure!(listed.is_empty(), "{who} was shown {listed:?}");
        match c.request(&Request::Agents { id: Some(id.clone()) }).await? {
            Response::Error(e) if e.kind == ErrorKind::Denied && e.message.contains("not yours") => {}
            other => bail!("{who} was shown alice's agent: {other:?}"),
        }
        match c.request(&Request::Recall { id: id.clone() }).await? {
            Response::Error(e) if e.kind == ErrorKind::Denied => {}
            other => bail!("{who} recalled alice's agent: {other:?}"),
        }
    }
    // The stranger's recall changed nothing: the agent still waits for its destination.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = as_alice.agent(&id).await?;
        ensure!(info.recall_ordered.is_none(), "a stranger's recall was ordered: {info:?}");
        if info.state == "parked" {
            assert_eq!(info.owner, Some(alice.public()), "{info:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "the agent never waited: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The administrator sees it; its owner recalls it.
    let mut as_carol = client(&addr, Some(&carol)).await?;
    ensure!(as_carol.agents().await?.iter().any(|a| a.id == id), "the administrator does not see the agent");
    let ordered = as_alice.recall(&id).await?;
    ensure!(ordered.recall_ordered.is_some(), "{ordered:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while as_alice.agent(&id).await?.state != "recalled" {
        ensure!(Instant::now() < deadline, "alice's recall never brought the agent home");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    home.shutdown().await;
    Ok(())
}

/// The command line proves the identity given with `--identity` (or `ROAM_IDENTITY`): the host
/// answers alice, and tells an anonymous client which right it lacks and where it is granted.
#[test]
fn the_command_line_proves_its_identity() -> Result<()> {
    use roam_tests::{HostProcess, args, roam, roam_err, roam_ok};
    let dir = tempfile::tempdir()?;
    let (alice, alice_pub, _) = roam_keys::write_keypair(dir.path(), "alice")?;
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&trust)?;
    let policy =
        format!("[clients]\nalice = \"{}\"\n[allow]\nlist = [\"alice\"]\n", roam_keys::PublicKey::load(&alice_pub)?);
    std::fs::write(trust.join("access.toml"), policy)?;
    let host = HostProcess::spawn(args!["--trust", trust])?;
    let addr = host.addr.to_string();

    let said = roam_err(args!["modules", "--host", addr])?;
    assert!(said.contains("anonymous") && said.contains("list") && said.contains("access.toml"), "{said}");
    roam_ok(args!["modules", "--host", addr, "--identity", alice])?;
    // The same through the environment.
    let mut cmd = std::process::Command::new(roam_tests::roam_bin()?);
    let out = cmd
        .args(args!["modules", "--host", addr])
        .env("ROAM_IDENTITY", &alice)
        .env("ROAM_KNOWN_HOSTS", dir.path().join("known_hosts"))
        .output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A file that is not a key says so.
    let out = roam(args!["modules", "--host", addr, "--identity", alice_pub])?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("identity"), "{said}");
    Ok(())
}

/// The host reloads its access policy on SIGHUP, and a connection open across the reload gets
/// the new answer; a policy that does not load on SIGHUP changes nothing, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_takes_effect_on_sighup_without_dropping_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let alice = SecretKey::generate()?;
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&trust)?;
    let clients = format!("[clients]\nalice = \"{}\"\n", alice.public());
    std::fs::write(trust.join("access.toml"), &clients)?;
    let host = roam_tests::HostProcess::spawn(roam_tests::args!["--trust", trust])?;
    let pid = host.pid().context("the host has no pid")?.to_string();
    let mut kept = client(&host.addr.to_string(), Some(&alice)).await?;
    denied(kept.request(&Request::List).await, "list")?;

    // Waits until the host's log says `what` for the `n`th time.
    let logged = |what: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while host.stderr().matches(what).count() < n {
            ensure!(Instant::now() < deadline, "the host never logged {what:?}:\n{}", host.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::Ok(())
    };
    let hangup = || -> Result<()> {
        let status = std::process::Command::new("kill").args(["-HUP", &pid]).status()?;
        ensure!(status.success(), "kill -HUP failed");
        Ok(())
    };
    std::fs::write(trust.join("access.toml"), format!("{clients}[allow]\nlist = [\"alice\"]\n"))?;
    hangup()?;
    logged("SIGHUP: reloaded", 1)?;
    match kept.request(&Request::List).await? {
        Response::Modules(_) => {}
        other => bail!("the new policy was not applied on the kept connection: {other:?}"),
    }

    std::fs::write(trust.join("access.toml"), format!("{clients}[allow]\nlist = [\"alcie\"]\n"))?;
    hangup()?;
    logged("nothing was reloaded", 1)?;
    assert!(host.stderr().contains("alcie"), "the log does not say what is wrong:\n{}", host.stderr());
    match kept.request(&Request::List).await? {
        Response::Modules(_) => {}
        other => bail!("a policy that did not load changed the host: {other:?}"),
    }
    host.stop()
}

/// A signer removed from the trust store, on a reload, is no longer trusted even for a module
/// the host already verified and holds: it is verified again when next asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_removed_on_reload_is_refused_even_for_modules_already_held() -> Result<()> {
    let net = Net::new(&["home"])?;
    let config = net.config("home", "trust")?;
    let (host, running) = net.start(&config).await?;
    let addr = running.addr().to_string();
    let query =
        roam_tests::sign_with(&net.alice, &wat::parse_str(QUICK)?, Kind::Query, "quick", "1.0.0", &[], (0, 3600))?;
    let mut c = client(&addr, None).await?;
    c.eval(&query, vec![0xa0]).await.context("the first evaluation")?;
    std::fs::remove_file(net.path("trust/alice.pub"))?;
    host.reload(&config)?;
    let by_hash = Request::Eval { module: ModuleRef::Hash(roam_keys::hash_module(&query)), input: vec![0xa0] };
    match c.request(&by_hash).await? {
        Response::Error(e) if e.kind == ErrorKind::Verification => {}
        other => bail!("a module of a signer no longer trusted ran: {other:?}"),
    }
    running.shutdown().await;
    Ok(())
}

/// Each caller may launch so many agents an hour: past that it is told when to retry, and
/// another caller the policy names is not held back; a key it does not name shares the
/// anonymous callers' quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_are_held_to_a_quota_per_caller() -> Result<()> {
    let net = Net::new(&["home"])?;
    let someone = SecretKey::generate()?;
    let policy = format!("[clients]\nsomeone = \"{}\"\n{}", someone.public(), roam_tests::OPEN_ACCESS);
    std::fs::write(net.path("trust/access.toml"), policy)?;
    let mut config = net.config("home", "trust")?;
    config.limits.launches_per_hour = 2;
    let (_, home) = net.start(&config).await?;
    let addr = home.addr().to_string();
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let input = json_to_cbor(&serde_json::json!({ "hosts": [] }));
    let mut anonymous = client(&addr, None).await?;
    for _ in 0..2 {
        anonymous.launch(module.clone(), input.clone()).await?;
    }
    match anonymous.request(&Request::Launch { module: module.clone(), input: input.clone() }).await? {
        Response::Error(e) if e.kind == ErrorKind::Busy => {
            assert!(e.message.contains("launches_per_hour") && e.message.contains("retry in"), "{e}");
        }
        other => bail!("a launch over the quota was {other:?}"),
    }
    // A key the policy does not name counts as anonymous: it cannot start a quota afresh.
    let throwaway = SecretKey::generate()?;
    let mut c = client(&addr, Some(&throwaway)).await?;
    match c.request(&Request::Launch { module: module.clone(), input: input.clone() }).await? {
        Response::Error(e) if e.kind == ErrorKind::Busy => {}
        other => bail!("a throwaway key got a quota of its own: {other:?}"),
    }
    client(&addr, Some(&someone)).await?.launch(module, input).await.context("another caller was held back")?;
    home.shutdown().await;
    Ok(())
}

/// A forwarded call on a home's resource is applied to the agent's owner: once the operator
/// takes away the owner's right to launch, the home's resources are closed to the agents the
/// owner already sent out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_shut_out_on_reload_loses_the_home_resources_of_agents_already_out() -> Result<()> {
    use roam_host::protocol::wire::{Call, CallOp, Signed, domain};
    // "down" never starts: the agent waits for it while the calls are made on its behalf.
    let net = Net::new(&["home", "down", "peer"])?;
    let alice = SecretKey::generate()?;
    let clients = format!("[clients]\nalice = \"{}\"\n", alice.public());
    std::fs::write(net.path("trust/access.toml"), format!("{clients}[allow]\nlaunch = [\"alice\"]\n"))?;
    let config = crate::agents::survey_home(&net)?;
    let (home, running) = net.start(&config).await?;
    let addr = running.addr().to_string();
    let module = net.sign_agent("stock_survey", "stock-survey", &["table:stock", "table:config", "log:reports"])?;
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let mut as_alice = client(&addr, Some(&alice)).await?;
    let id = as_alice.launch(module, json_to_cbor(&serde_json::json!({ "hosts": [dead] }))).await?;

    // The host the agent is on, appending to the home's reports log for it.
    let peer_key = SecretKey::load(&net.path("host-keys/peer.key"))?;
    let mut peer = Client::connect_as(&addr, &peer_key).await?;
    let append = |line: &str| -> Result<Request> {
        let call = Call {
            agent: id.clone(),
            resource: "reports".into(),
            op: CallOp::Append { line: line.into() },
            at: roam_host::state::now_secs(),
        };
        Ok(Request::Call(Signed::sign(domain::CALL, &call, &peer_key)?))
    };
    match peer.request(&append("while alice may launch")?).await? {
        Response::Accepted => {}
        other => bail!("the owner's agent could not use the home's log: {other:?}"),
    }
    std::fs::write(net.path("trust/access.toml"), &clients)?;
    home.reload(&config)?;
    let said = denied(peer.request(&append("after alice was shut out")?).await, "launch")?;
    ensure!(said.contains(&id), "the refusal does not name the agent: {said}");
    assert_eq!(home.state().log_lines("reports")?.len(), 1, "a refused call wrote to the log");
    running.shutdown().await;
    Ok(())
}

/// `roam run` proves the identity too: a host that grants code on demand only to alice serves
/// her, and tells an anonymous client which right it lacks.
#[test]
fn code_on_demand_proves_the_identity_for_hosts_that_ask_for_one() -> Result<()> {
    use roam_tests::{Fixture, args, roam_err, roam_ok};
    let fx = Fixture::new()?;
    let alice = roam_keys::PublicKey::load(&fx.keys_dir().join("alice.pub"))?;
    let policy = format!("[clients]\nalice = \"{alice}\"\n[allow]\npublish = [\"alice\"]\nfetch_code = [\"alice\"]\n");
    std::fs::write(fx.trust_dir().join("access.toml"), policy)?;
    let wasm = std::fs::read(roam_tests::agent_wasm("order_validator")?)?;
    let code = fx.write("validator.wasm", fx.sign(&wasm, "alice", Kind::Code, "order-validator", "1.0.0", &[])?)?;
    let host = fx.host::<[&str; 0], &str>([])?;
    let addr = host.addr.to_string();
    let identity = fx.key_path("alice");
    roam_ok(args!["publish", code, "--host", addr, "--identity", identity])?;
    let order = r#"{"id": 1, "region": "north", "product": "widget", "quantity": 3, "unit_cents": 250, "total_cents": 750, "day": 12}"#;
    let run = |cache: &str, more: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        let cache = fx.path().join(cache);
        let trust = fx.trust_dir();
        let mut all =
            args!["run", "order-validator", "--from", addr, "--trust", trust, "--cache", cache, "--input", order]
                .map(std::ffi::OsStr::to_owned)
                .to_vec();
        all.extend(more.iter().map(|a| a.to_os_string()));
        all
    };
    let said = roam_err(run("anonymous", &[]))?;
    assert!(said.contains("anonymous") && said.contains("fetch_code") && said.contains("access.toml"), "{said}");
    let as_alice = run("alice", &args!["--identity", identity]);
    let out = roam_ok(as_alice)?;
    let answer: serde_json::Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    ensure!(answer["valid"] == serde_json::Value::Bool(true), "{answer}");
    host.stop()
}
