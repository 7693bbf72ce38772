//! What a host admits: only verified modules are stored and compiled, a held module is named by
//! hash without its bytes, and the store survives a restart.

use std::path::Path;

use anyhow::{Result, bail};
use roam_host::client::{Client, ClientError};
use roam_host::config::HostConfig;
use roam_host::host::Host;
use roam_host::protocol::{ErrorKind, ModuleRef, Request, Response};
use roam_host::server::RunningHost;
use roam_keys::{Kind, SecretKey};

const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

struct Setup {
    dir: tempfile::TempDir,
    alice: SecretKey,
    mallory: SecretKey,
}

impl Setup {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let keys = dir.path().join("keys");
        let (alice, _, _) = roam_keys::write_keypair(&keys, "alice")?;
        let (mallory, _, _) = roam_keys::write_keypair(&keys, "mallory")?;
        std::fs::create_dir_all(dir.path().join("trust"))?;
        roam_tests::open_access(&dir.path().join("trust"))?;
        std::fs::copy(keys.join("alice.pub"), dir.path().join("trust/alice.pub"))?;
        std::fs::write(dir.path().join("trust/policy.toml"), "[keys.alice]\ncapabilities = [\"log:*\"]\n")?;
        Ok(Self { alice: SecretKey::load(&alice)?, mallory: SecretKey::load(&mallory)?, dir })
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    async fn start(&self) -> Result<RunningHost> {
        let config = HostConfig::new(self.dir.path().join("trust"), self.data());
        Ok(RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?)
    }

    fn sign(&self, key: &SecretKey, kind: Kind, version: &str, lifetime: (i64, i64), caps: &[&str]) -> Result<Vec<u8>> {
        roam_tests::sign_with(key, &wat::parse_str(QUICK)?, kind, "quick", version, caps, lifetime)
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

async fn refusal(host: &RunningHost, module: &[u8]) -> Result<(ErrorKind, String)> {
    let mut client = Client::connect(&host.addr().to_string()).await?;
    match client.eval(module, vec![0xa0]).await {
        Err(ClientError::Remote(e)) => Ok((e.kind, e.message)),
        Ok(_) => bail!("the host ran a module it should have refused"),
        Err(e) => bail!("expected a refusal, got {e}"),
    }
}

#[tokio::test]
async fn refused_modules_are_neither_stored_nor_compiled() -> Result<()> {
    let s = Setup::new()?;
    let host = s.start().await?;
    let good = s.sign(&s.alice, Kind::Query, "1.0.0", (0, 3600), &[])?;

    // A byte flipped in the signature section, in the code, and in the last byte.
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    for (label, at) in [("signature", 40), ("middle", good.len() / 2 + 20), ("end", good.len() - 1)] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        cases.push((label, bad, ""));
    }
    cases.push(("untrusted", s.sign(&s.mallory, Kind::Query, "1.0.0", (0, 3600), &[])?, "not in the trust store"));
    cases.push(("expired", s.sign(&s.alice, Kind::Query, "1.0.0", (-7200, -3600), &[])?, "expired"));
    cases.push(("not yet valid", s.sign(&s.alice, Kind::Query, "1.0.0", (3600, 7200), &[])?, "not valid until"));
    cases.push(("wrong kind", s.sign(&s.alice, Kind::Agent, "1.0.0", (0, 3600), &[])?, "query module is needed"));
    cases.push(("unsigned", wat::parse_str(QUICK)?, "not signed"));
    for (label, module, words) in &cases {
        let (kind, message) = refusal(&host, module).await?;
        assert_eq!(kind, ErrorKind::Verification, "{label}: {message}");
        assert!(message.contains(words), "{label}: {message:?} should mention {words:?}");
    }

    let escalating = s.sign(&s.alice, Kind::Query, "1.0.0", (0, 3600), &["table:payroll"])?;
    let (kind, message) = refusal(&host, &escalating).await?;
    assert_eq!(kind, ErrorKind::Capability, "{message}");
    assert!(message.contains("table:payroll"), "{message}");

    assert_eq!(files_in(&s.data().join("modules")), 0, "a refused module was stored");
    assert_eq!(files_in(&s.data().join("code")), 0, "a refused module was compiled");

    // The good one is admitted, stored and compiled once.
    let mut client = Client::connect(&host.addr().to_string()).await?;
    assert_eq!(client.eval(&good, vec![0xa0]).await?, vec![0xf5]);
    assert_eq!(files_in(&s.data().join("modules")), 1);
    assert_eq!(files_in(&s.data().join("code")), 1);

    // Rollback: once 1.0.0 is accepted, 0.9.0 of the same name is refused.
    let older = s.sign(&s.alice, Kind::Query, "0.9.0", (0, 3600), &[])?;
    let (kind, message) = refusal(&host, &older).await?;
    assert_eq!(kind, ErrorKind::Verification);
    assert!(message.contains("rollback"), "{message}");
    host.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_held_module_is_named_by_hash_even_after_a_restart() -> Result<()> {
    let s = Setup::new()?;
    let module = s.sign(&s.alice, Kind::Query, "1.0.0", (0, 3600), &[])?;
    let hash = roam_keys::hash_module(&module);
    let by_hash = Request::Eval { module: ModuleRef::Hash(hash), input: vec![0xa0] };

    let host = s.start().await?;
    let mut client = Client::connect(&host.addr().to_string()).await?;
    assert!(matches!(client.request(&by_hash).await?, Response::NeedModule(h) if h == hash));
    assert_eq!(client.eval(&module, vec![0xa0]).await?, vec![0xf5]);
    assert!(matches!(client.request(&by_hash).await?, Response::Result(r) if r == vec![0xf5]));
    host.shutdown().await;

    // A new process on the same data directory still holds it, and reuses the compiled code.
    let host = s.start().await?;
    let mut client = Client::connect(&host.addr().to_string()).await?;
    assert!(matches!(client.request(&by_hash).await?, Response::Result(r) if r == vec![0xf5]));
    assert_eq!(files_in(&s.data().join("code")), 1);
    host.shutdown().await;
    Ok(())
}
