//! Hostile and broken query modules against a real host on loopback: each is stopped within
//! its limit with its own error, and the host keeps serving other clients meanwhile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roam_host::client::{Client, ClientError};
use roam_host::config::HostConfig;
use roam_host::host::Host;
use roam_host::protocol::ErrorKind;
use roam_host::server::RunningHost;
use roam_keys::{Kind, SecretKey};

/// A host with small limits and a trusted key to sign test modules with.
struct Small {
    _dir: tempfile::TempDir,
    key: SecretKey,
    running: RunningHost,
}

impl Small {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let trust = dir.path().join("trust");
        let (key_path, _, _) = roam_keys::write_keypair(&dir.path().join("keys"), "tester")?;
        std::fs::create_dir_all(&trust)?;
        std::fs::copy(dir.path().join("keys/tester.pub"), trust.join("tester.pub"))?;
        let mut config = HostConfig::new(trust, dir.path().join("data"));
        config.limits.time_ms = 400;
        config.limits.memory_mib = 16;
        config.limits.workers = Some(2);
        config.add_log("audit");
        let host = Host::open(&config)?;
        let running = RunningHost::start(host, "127.0.0.1:0".parse()?).await?;
        Ok(Self { _dir: dir, key: SecretKey::load(&key_path)?, running })
    }

    fn sign(&self, wat: &str, name: &str, caps: &[&str]) -> Result<Vec<u8>> {
        roam_tests::sign_with(&self.key, &wat::parse_str(wat)?, Kind::Query, name, "1.0.0", caps, (0, 3600))
    }

    async fn eval(&self, module: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut client = Client::connect(&self.running.addr().to_string()).await?;
        client.eval(module, vec![0xa0]).await
    }
}

/// A query that answers CBOR `true` at once.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

const LOOP: &str = r#"(module (memory (export "memory") 1)
  (func (export "roam_query") (loop $l (br $l))))"#;

const MEMORY_BOMB: &str = r#"(module (memory (export "memory") 1)
  (func (export "roam_query") (loop $l (drop (memory.grow (i32.const 16))) (br $l))))"#;

const TABLE_BOMB: &str = r#"(module (memory (export "memory") 1) (table 1 funcref)
  (func (export "roam_query") (loop $l (drop (table.grow (ref.null func) (i32.const 1000))) (br $l))))"#;

const RECURSION: &str = r#"(module (memory (export "memory") 1)
  (func $r (export "roam_query") (call $r)))"#;

fn kind_of(result: Result<Vec<u8>, ClientError>) -> Result<(ErrorKind, String)> {
    match result {
        Err(ClientError::Remote(e)) => Ok((e.kind, e.message)),
        Ok(_) => bail!("the module was expected to fail, but it returned a result"),
        Err(other) => bail!("expected an error from the host, got {other}"),
    }
}

#[tokio::test]
async fn runaway_modules_are_stopped_with_their_own_error() -> Result<()> {
    let host = Small::start().await?;
    for (wat, name, expected, words) in [
        (LOOP, "loop", ErrorKind::OutOfTime, "out of time"),
        (MEMORY_BOMB, "memory-bomb", ErrorKind::OutOfMemory, "memory"),
        (TABLE_BOMB, "table-bomb", ErrorKind::OutOfMemory, "table"),
        (RECURSION, "recursion", ErrorKind::StackOverflow, "stack"),
    ] {
        let module = host.sign(wat, name, &[])?;
        let started = Instant::now();
        let (kind, message) = kind_of(host.eval(&module).await)?;
        assert_eq!(kind, expected, "{name}: {message}");
        assert!(message.contains(words), "{name}: {message:?} should mention {words:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }
    // The host survived all of them.
    let quick = host.sign(QUICK, "quick", &[])?;
    assert_eq!(host.eval(&quick).await?, vec![0xf5]);
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn other_clients_are_served_while_a_module_spins() -> Result<()> {
    let host = Small::start().await?;
    let spinning = host.sign(LOOP, "loop", &[])?;
    let quick = host.sign(QUICK, "quick", &[])?;
    let addr = host.running.addr().to_string();
    let spinner = tokio::spawn(async move {
        let mut client = Client::connect(&addr).await?;
        let result = client.eval(&spinning, vec![0xa0]).await;
        Ok::<_, ClientError>((result, Instant::now()))
    });
    // Give the spinner time to occupy a worker.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut answered = Vec::new();
    for _ in 0..5 {
        assert_eq!(host.eval(&quick).await?, vec![0xf5]);
        answered.push(Instant::now());
    }
    let (spun, spin_ended) = spinner.await??;
    assert_eq!(kind_of(spun)?.0, ErrorKind::OutOfTime);
    let last_quick = answered.last().context("no answers")?;
    assert!(last_quick < &spin_ended, "quick queries waited for the spinning module to be stopped");
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_module_that_imports_what_the_host_lacks_is_refused_at_load() -> Result<()> {
    let host = Small::start().await?;
    let module = host.sign(
        r#"(module (import "roam" "launch_missiles" (func)) (memory (export "memory") 1)
           (func (export "roam_query")))"#,
        "missiles",
        &[],
    )?;
    let (kind, message) = kind_of(host.eval(&module).await)?;
    assert_eq!(kind, ErrorKind::Load);
    assert!(message.contains("launch_missiles"), "{message}");
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn contract_breaches_and_missing_results_trap_with_a_reason() -> Result<()> {
    let host = Small::start().await?;
    let out_of_bounds = host.sign(
        r#"(module (import "roam" "finish" (func $finish (param i32 i32 i32)))
           (memory (export "memory") 1)
           (func (export "roam_query") (call $finish (i32.const 0) (i32.const 65530) (i32.const 100))))"#,
        "oob",
        &[],
    )?;
    let (kind, message) = kind_of(host.eval(&out_of_bounds).await)?;
    assert_eq!(kind, ErrorKind::Trap);
    assert!(message.contains("out of bounds"), "{message}");

    let silent = host.sign(r#"(module (memory (export "memory") 1) (func (export "roam_query")))"#, "silent", &[])?;
    let (kind, message) = kind_of(host.eval(&silent).await)?;
    assert_eq!(kind, ErrorKind::Trap);
    assert!(message.contains("without a result"), "{message}");
    host.running.shutdown().await;
    Ok(())
}

/// A query that opens the resource named in its data segment and finishes with CBOR `true` if
/// that succeeded, or reports the host's refusal as its error.
fn opener(resource: &str) -> String {
    format!(
        r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (import "roam" "resource_open" (func $open (param i32 i32) (result i64)))
  (import "roam" "last_error_len" (func $err_len (result i32)))
  (import "roam" "last_error_read" (func $err_read (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (data (i32.const 16) "{resource}")
  (func (export "roam_query")
    (if (i64.ge_s (call $open (i32.const 16) (i32.const {len})) (i64.const 0))
      (then (call $finish (i32.const 0) (i32.const 0) (i32.const 1)))
      (else (call $err_read (i32.const 1024))
            (call $finish (i32.const 1) (i32.const 1024) (call $err_len))))))"#,
        len = resource.len()
    )
}

#[tokio::test]
async fn resources_open_only_with_a_signed_capability() -> Result<()> {
    let host = Small::start().await?;
    let granted = host.sign(&opener("audit"), "open-granted", &["log:audit"])?;
    assert_eq!(host.eval(&granted).await?, vec![0xf5]);

    let ungranted = host.sign(&opener("audit"), "open-ungranted", &[])?;
    let (kind, message) = kind_of(host.eval(&ungranted).await)?;
    assert_eq!(kind, ErrorKind::Module);
    assert!(message.contains("log:audit"), "{message}");

    let unknown = host.sign(&opener("nowhere"), "open-unknown", &["log:*"])?;
    let (kind, message) = kind_of(host.eval(&unknown).await)?;
    assert_eq!(kind, ErrorKind::Module);
    assert!(message.contains("no resource named"), "{message}");
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_are_told_so_and_closed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("trust"))?;
    let mut config = HostConfig::new(dir.path().join("trust"), dir.path().join("data"));
    config.limits.max_connections = 1;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let first = Client::connect(&addr).await?;
    match Client::connect(&addr).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::Busy);
            assert!(e.message.contains("limit of 1 connections"), "{}", e.message);
        }
        other => bail!("a second connection was not refused: {other:?}"),
    }
    drop(first);
    // The slot is free again once the first client leaves.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(&addr).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = again.context("the freed connection slot was never reused")?;
    assert!(matches!(again.request(&roam_host::protocol::Request::Ping).await?, roam_host::protocol::Response::Pong));
    running.shutdown().await;
    Ok(())
}
