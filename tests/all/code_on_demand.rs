//! Code on demand against real hosts on loopback: publish, fetch, verify, cache, run locally.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use roam_host::client::{Client, ClientError};
use roam_host::config::HostConfig;
use roam_host::fetch::{FetchError, ModuleSpec};
use roam_host::host::Host;
use roam_host::local::{CodeOnDemand, LocalError};
use roam_host::protocol::ErrorKind;
use roam_host::server::RunningHost;
use roam_keys::{Kind, ModuleHash, SecretKey, TrustStore, VerifyError};

/// A code module that answers its input's `n` doubled: `{"n": 21}` → `42`.
const DOUBLER: &str = r#"(module
  (import "roam" "input_len" (func $input_len (result i32)))
  (import "roam" "input_read" (func $input_read (param i32)))
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "roam_query")
    (call $input_read (i32.const 0))
    ;; The input is the CBOR map {"n": small uint}: a1 61 6e <n>; n < 24 is one byte.
    (i32.store8 (i32.const 100) (i32.mul (i32.load8_u (i32.const 3)) (i32.const 2)))
    (call $finish (i32.const 0) (i32.const 100) (i32.const 1))))"#;

struct World {
    dir: tempfile::TempDir,
    alice: SecretKey,
    mallory: SecretKey,
}

impl World {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let keys = dir.path().join("keys");
        let (alice, _, _) = roam_keys::write_keypair(&keys, "alice")?;
        let (mallory, _, _) = roam_keys::write_keypair(&keys, "mallory")?;
        for trust in ["host-trust", "client-trust"] {
            std::fs::create_dir_all(dir.path().join(trust))?;
            std::fs::copy(keys.join("alice.pub"), dir.path().join(trust).join("alice.pub"))?;
        }
        // The host also trusts mallory; the client does not.
        std::fs::copy(keys.join("mallory.pub"), dir.path().join("host-trust/mallory.pub"))?;
        roam_tests::open_access(&dir.path().join("host-trust"))?;
        Ok(Self { alice: SecretKey::load(&alice)?, mallory: SecretKey::load(&mallory)?, dir })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn host(&self, name: &str) -> Result<(Host, RunningHost)> {
        let config = HostConfig::new(self.path("host-trust"), self.path(name));
        let host = Host::open(&config)?;
        let running = RunningHost::start(host.clone(), "127.0.0.1:0".parse()?).await?;
        Ok((host, running))
    }

    fn sign(&self, key: &SecretKey, name: &str, version: &str, expires_in: i64) -> Result<Vec<u8>> {
        roam_tests::sign_with(key, &wat::parse_str(DOUBLER)?, Kind::Code, name, version, &[], (-100, expires_in))
    }

    fn client(&self, cache: &str) -> Result<CodeOnDemand> {
        let trust = TrustStore::load(&self.path("client-trust"))?;
        Ok(CodeOnDemand::builder(trust).cache_dir(self.path(cache)).build()?)
    }
}

async fn publish(addr: &RunningHost, module: Vec<u8>) -> Result<ModuleHash> {
    Ok(Client::connect(&addr.addr().to_string()).await?.publish(module).await?.hash)
}

fn downloads(host: &Host, hash: &ModuleHash) -> Result<u64> {
    Ok(host.state().module(hash)?.context("the host lost the module")?.downloads)
}

fn spec(s: &str) -> Result<ModuleSpec> {
    s.parse().map_err(anyhow::Error::msg)
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map_or(0, |d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "wasm")).count())
}

#[tokio::test]
async fn a_module_is_fetched_once_then_runs_from_the_cache_with_the_host_gone() -> Result<()> {
    let w = World::new()?;
    let (host, running) = w.host("host").await?;
    let addr = running.addr().to_string();
    let hash = publish(&running, w.sign(&w.alice, "doubler", "1.0.0", 3600)?).await?;

    let listed = Client::connect(&addr).await?.list().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].kind, listed[0].hash), ("doubler", Kind::Code, hash));

    let cod = w.client("cache")?;
    let module = cod.fetch(&addr, &spec("doubler")?).await?;
    assert_eq!(module.hash(), hash);
    for n in [1u8, 7, 11] {
        let out: u8 = cod.call(&module, &serde_json::json!({ "n": n }))?;
        assert_eq!(out, n * 2);
    }
    assert_eq!(downloads(&host, &hash)?, 1);

    // A second client on the same cache, as a second run of `roam run` would be.
    running.shutdown().await;
    let again = w.client("cache")?;
    let module = again.fetch(&addr, &spec("doubler")?).await?;
    let out: u8 = again.call(&module, &serde_json::json!({ "n": 5 }))?;
    assert_eq!(out, 10, "the cached module ran without its host");
    assert_eq!(downloads(&host, &hash)?, 1, "the cache went back to the network");
    Ok(())
}

#[tokio::test]
async fn a_tampered_cache_file_is_detected_and_fetched_again() -> Result<()> {
    let w = World::new()?;
    let (host, running) = w.host("host").await?;
    let addr = running.addr().to_string();
    let hash = publish(&running, w.sign(&w.alice, "doubler", "1.0.0", 3600)?).await?;
    w.client("cache")?.fetch(&addr, &spec("doubler")?).await?;

    let cached = w.path("cache/modules").join(format!("{hash}.wasm"));
    let mut bytes = std::fs::read(&cached)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cached, &bytes)?;

    let cod = w.client("cache")?;
    let module = cod.fetch(&addr, &spec("doubler")?).await?;
    let out: u8 = cod.call(&module, &serde_json::json!({ "n": 4 }))?;
    assert_eq!(out, 8);
    assert_eq!(downloads(&host, &hash)?, 2, "the tampered copy was not replaced from the host");
    assert_eq!(roam_keys::hash_module(&std::fs::read(&cached)?), hash);
    running.shutdown().await;
    Ok(())
}

fn verify_error(result: Result<roam_host::local::LocalModule, LocalError>) -> Result<VerifyError> {
    match result {
        Err(LocalError::Fetch(FetchError::Verify(e))) => Ok(e),
        Ok(_) => bail!("the module was accepted"),
        Err(e) => bail!("expected a verification error, got {e}"),
    }
}

#[tokio::test]
async fn a_module_in_hand_is_verified_cached_and_then_loads_without_a_host() -> Result<()> {
    let w = World::new()?;
    let cod = w.client("cache")?;
    let e = verify_error(cod.load(w.sign(&w.mallory, "mallory-tool", "1.0.0", 3600)?))?;
    assert!(matches!(e, VerifyError::UntrustedSigner { .. }), "{e}");
    assert_eq!(files_in(&w.path("cache/modules")), 0, "a refused module was cached");

    let module = cod.load(w.sign(&w.alice, "doubler", "1.0.0", 3600)?)?;
    let out: u8 = cod.call(&module, &serde_json::json!({ "n": 6 }))?;
    assert_eq!(out, 12);
    // A later run finds it by hash in the cache; the address is never contacted.
    let again = w.client("cache")?;
    let cached = again.fetch("127.0.0.1:1", &ModuleSpec::Hash(module.hash())).await?;
    let out: u8 = again.call(&cached, &serde_json::json!({ "n": 3 }))?;
    assert_eq!(out, 6);
    Ok(())
}

#[tokio::test]
async fn untrusted_expired_and_rolled_back_modules_are_refused_and_not_cached() -> Result<()> {
    let w = World::new()?;
    let (host, running) = w.host("host").await?;
    let addr = running.addr().to_string();
    let cod = w.client("cache")?;

    // Signed by a key the host trusts but the client does not.
    publish(&running, w.sign(&w.mallory, "mallory-tool", "1.0.0", 3600)?).await?;
    let e = verify_error(cod.fetch(&addr, &spec("mallory-tool")?).await)?;
    assert!(matches!(e, VerifyError::UntrustedSigner { .. }), "{e}");

    // A stale module the host still serves (a freeze attack): put in its store directly.
    let stale = w.sign(&w.alice, "stale", "1.0.0", -10)?;
    let stale_hash = roam_keys::hash_module(&stale);
    let claims = roam_keys::read_claims_unverified(&stale)?;
    host.state().store_module(stale_hash, &stale, &claims)?;
    let e = verify_error(cod.fetch(&addr, &ModuleSpec::Hash(stale_hash)).await)?;
    assert!(matches!(e, VerifyError::Expired { .. }), "{e}");
    assert_eq!(files_in(&w.path("cache/modules")), 0, "a refused module was cached");

    // Rollback, on the host: an older version than one published is refused.
    publish(&running, w.sign(&w.alice, "doubler", "2.0.0", 3600)?).await?;
    let older = Client::connect(&addr).await?.publish(w.sign(&w.alice, "doubler", "1.0.0", 3600)?).await;
    match older {
        Err(ClientError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::Verification);
            assert!(e.message.contains("rollback"), "{}", e.message);
        }
        other => bail!("an older version was published: {other:?}"),
    }
    running.shutdown().await;

    // Rollback, on the client: after running 2.0.0 it refuses 1.0.0, even from a host that has it.
    let (_other, older_host) = w.host("older-host").await?;
    let older_addr = older_host.addr().to_string();
    let (_newer, newer_host) = w.host("newer-host").await?;
    publish(&older_host, w.sign(&w.alice, "doubler", "1.0.0", 3600)?).await?;
    publish(&newer_host, w.sign(&w.alice, "doubler", "2.0.0", 3600)?).await?;
    cod.fetch(&newer_host.addr().to_string(), &spec("doubler")?).await?;
    let e = verify_error(cod.fetch(&older_addr, &spec("doubler@1.0.0")?).await)?;
    assert!(matches!(e, VerifyError::Rollback { .. }), "{e}");
    older_host.shutdown().await;
    newer_host.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn many_clients_fetching_at_once_all_get_the_module() -> Result<()> {
    let w = World::new()?;
    let (host, running) = w.host("host").await?;
    let addr = running.addr().to_string();
    let hash = publish(&running, w.sign(&w.alice, "doubler", "1.0.0", 3600)?).await?;
    let clients = 16;
    let mut tasks = Vec::new();
    for i in 0..clients {
        // Half share one cache directory, half have their own.
        let cache = if i % 2 == 0 { "shared-cache".to_owned() } else { format!("cache-{i}") };
        let cod = w.client(&cache)?;
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let module = cod.fetch(&addr, &ModuleSpec::Name("doubler".into())).await?;
            let out: u8 = cod.call(&module, &serde_json::json!({ "n": 3 }))?;
            anyhow::Ok(out)
        }));
    }
    for task in tasks {
        assert_eq!(task.await??, 6);
    }
    let n = downloads(&host, &hash)?;
    assert!((clients / 2 + 1..=clients).contains(&n), "{n} downloads for {clients} clients");
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn hosts_fetch_missing_modules_from_peers_by_hash() -> Result<()> {
    let w = World::new()?;
    let (_a, repo) = w.host("repo").await?;
    let (b, _running_b) = w.host("peer").await?;
    let hash = publish(&repo, w.sign(&w.alice, "doubler", "1.0.0", 3600)?).await?;
    let info = b.fetch_from(&repo.addr().to_string(), hash).await?;
    assert_eq!((info.hash, info.name.as_str()), (hash, "doubler"));
    assert!(b.state().load_module(&hash)?.is_some());

    // A hash nobody holds is a clear error, and nothing is stored.
    let missing = roam_keys::hash_module(b"nothing");
    let e = b.fetch_from(&repo.addr().to_string(), missing).await.err().context("fetched a missing module")?;
    assert!(e.message.contains("holds no module"), "{}", e.message);
    Ok(())
}

#[tokio::test]
async fn downloads_are_bounded_and_hash_checked() -> Result<()> {
    let w = World::new()?;
    let (host, running) = w.host("host").await?;
    let addr = running.addr().to_string();
    let module = w.sign(&w.alice, "doubler", "1.0.0", 3600)?;
    let hash = publish(&running, module.clone()).await?;

    let small = roam_host::fetch::download(Client::connect(&addr), hash, 100, None).await;
    assert!(matches!(small, Err(FetchError::TooLarge { max: 100, .. })), "{small:?}");

    // A host whose stored copy went bad serves bytes that do not match the hash.
    let stored = w.path("host/modules").join(format!("{hash}.wasm"));
    let mut bytes = std::fs::read(&stored)?;
    bytes[10] ^= 1;
    std::fs::write(&stored, &bytes)?;
    let bad = roam_host::fetch::download(Client::connect(&addr), hash, 1 << 20, None).await;
    assert!(matches!(bad, Err(FetchError::HashMismatch { .. })), "{bad:?}");
    let _ = host;
    running.shutdown().await;
    Ok(())
}
