//! The signature attack suite, end to end: each hostile module is sent to a real host (eval,
//! publish or launch over TCP) and refused with its own error, and nothing is stored, compiled
//! or launched.

use std::path::Path;

use anyhow::{Context, Result, bail};
use roam_host::client::{Client, ClientError};
use roam_host::config::HostConfig;
use roam_host::host::Host;
use roam_host::protocol::{ErrorKind, Request, Response};
use roam_host::server::RunningHost;
use roam_keys::testing::{
    custom_section, duplicate_signature, move_signature_back, payload_for, ranges, replace_signature_section, reseal,
    reseal_raw,
};
use roam_keys::{DOMAIN, Kind, SIGNATURE_SECTION, SecretKey, read_claims_unverified, sections};

/// A query that answers `true`, with a data section (the answer) and a code section.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// The host's module cap in the suite, so an oversized module stays well under the frame cap.
const MODULE_KIB: usize = 512;

/// How a hostile module is sent.
#[derive(Clone, Copy, Debug)]
enum Op {
    Eval,
    Publish,
    Launch,
}

/// Signing keys: alice (trusted, may grant `log:*`), bob (trusted for queries only), eve
/// (her `.pub` is in the trust store, but the policy revokes her), mallory (untrusted).
struct Keys {
    alice: SecretKey,
    bob: SecretKey,
    eve: SecretKey,
    mallory: SecretKey,
}

fn setup(dir: &Path) -> Result<Keys> {
    let keys = dir.join("keys");
    let trust = dir.join("trust");
    std::fs::create_dir_all(&trust)?;
    roam_tests::open_access(&trust)?;
    let load = |name: &str| -> Result<SecretKey> {
        let (key, public, _) = roam_keys::write_keypair(&keys, name)?;
        if name != "mallory" {
            std::fs::copy(&public, trust.join(format!("{name}.pub")))?;
        }
        Ok(SecretKey::load(&key)?)
    };
    let k = Keys { alice: load("alice")?, bob: load("bob")?, eve: load("eve")?, mallory: load("mallory")? };
    std::fs::write(
        trust.join(roam_keys::POLICY_FILE),
        format!(
            "revoked = [\"{}\"]\n[keys.alice]\ncapabilities = [\"log:*\"]\n[keys.bob]\ncapabilities = []\nkinds = [\"query\"]\n",
            k.eve.public()
        ),
    )?;
    Ok(k)
}

fn sign(
    key: &SecretKey,
    wasm: &[u8],
    kind: Kind,
    name: &str,
    version: &str,
    valid: (i64, i64),
    caps: &[&str],
) -> Result<Vec<u8>> {
    roam_tests::sign_with(key, wasm, kind, name, version, caps, valid)
}

/// `module` with bit 0 of byte `at` flipped.
fn flip(module: &[u8], at: usize) -> Vec<u8> {
    let mut out = module.to_vec();
    out[at] ^= 1;
    out
}

/// Where `needle` starts in the signature section of a signed module.
fn in_signature(module: &[u8], needle: &[u8]) -> Result<usize> {
    let sig = ranges(module).remove(0);
    module[sig.clone()]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| sig.start + p)
        .context("the needle is not in the signature section")
}

/// The byte range of the first section with `id`.
fn section(module: &[u8], id: u8) -> Result<std::ops::Range<usize>> {
    Ok(sections(module)?.into_iter().find(|s| s.id == id).context("no such section")?.range)
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Sends `module` the way `op` does and returns the host's refusal.
async fn refusal(client: &mut Client, op: Op, module: Vec<u8>) -> Result<(ErrorKind, String)> {
    let outcome = match op {
        Op::Eval => client.eval(&module, vec![0xa0]).await.map(|r| format!("result {r:?}")),
        Op::Publish => client.publish(module).await.map(|i| format!("published {i:?}")),
        Op::Launch => match client.request(&Request::Launch { module, input: vec![0xa0] }).await? {
            Response::Error(e) => Err(ClientError::Remote(e)),
            other => Ok(format!("{other:?}")),
        },
    };
    match outcome {
        Err(ClientError::Remote(e)) => Ok((e.kind, e.message)),
        Ok(done) => bail!("the host accepted a hostile module: {done}"),
        Err(e) => bail!("expected a refusal, got {e}"),
    }
}

/// What the host holds: stored module files, compiled artifacts, listed modules, agents.
async fn holdings(client: &mut Client, data: &Path) -> Result<(usize, usize, usize, usize)> {
    let agents = match client.request(&Request::Agents { id: None }).await? {
        Response::Agents(list) => list.len(),
        other => bail!("unexpected answer {other:?}"),
    };
    Ok((files_in(&data.join("modules")), files_in(&data.join("code")), client.list().await?.len(), agents))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_attack_is_refused_with_its_own_error_and_nothing_is_kept() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let k = setup(dir.path())?;
    let data = dir.path().join("data");
    let mut config = HostConfig::new(dir.path().join("trust"), data.clone());
    config.limits.module_kib = MODULE_KIB;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let mut client = Client::connect(&running.addr().to_string()).await?;

    let wasm = wat::parse_str(QUICK)?;
    let query = sign(&k.alice, &wasm, Kind::Query, "quick", "1.0.0", (0, 3600), &[])?;
    // The host accepts the good query (stored and compiled) and version 2 of a code module.
    assert_eq!(client.eval(&query, vec![0xa0]).await?, vec![0xf5]);
    let code = |version| sign(&k.alice, &wasm, Kind::Code, "quick-code", version, (0, 3600), &[]);
    client.publish(code("2.0.0")?).await?;
    let before = holdings(&mut client, &data).await?;
    assert_eq!(before, (2, 1, 2, 0), "the baseline: two modules stored, the query compiled");

    let claims = read_claims_unverified(&query)?;
    let sig = ranges(&query).remove(0);
    let mut padded = wasm.clone();
    padded.extend_from_slice(&custom_section("padding", &vec![0; (MODULE_KIB + 1) << 10]));
    let mut unprefixed = Vec::new();
    ciborium::into_writer(&claims, &mut unprefixed)?;
    let mut bad_claims = DOMAIN.to_vec();
    bad_claims.extend_from_slice(b"\xa1\x61x\x01");
    let mut other_content = wat::parse_str(QUICK.replace("\\f5", "\\f4"))?;
    other_content = sign(&k.alice, &other_content, Kind::Code, "quick-code", "2.0.0", (0, 3600), &[])?;
    let mut truncated = query.clone();
    truncated.pop();

    use ErrorKind::{Capability, Refused, Verification};
    use Op::{Eval, Launch, Publish};
    let cases: Vec<(&str, Op, Vec<u8>, ErrorKind, &str)> = vec![
        ("missing signature", Eval, wasm.clone(), Verification, "is not signed"),
        (
            "bit flipped in the header's magic",
            Eval,
            flip(&query, 1),
            Verification,
            "does not start with the magic bytes",
        ),
        (
            "bit flipped in the header's version",
            Eval,
            flip(&query, 4),
            Verification,
            "unsupported WebAssembly binary version",
        ),
        (
            "bit flipped in the code section",
            Eval,
            flip(&query, section(&query, 10)?.end - 2),
            Verification,
            "does not match the signed hash",
        ),
        (
            "bit flipped in the data section",
            Eval,
            flip(&query, section(&query, 11)?.end - 1),
            Verification,
            "does not match the signed hash",
        ),
        (
            "bit flipped in the claims (the name)",
            Eval,
            flip(&query, in_signature(&query, b"quick")?),
            Verification,
            "signature is invalid",
        ),
        ("bit flipped in the signature bytes", Eval, flip(&query, sig.end - 1), Verification, "signature is invalid"),
        (
            "bit flipped in the signer's key id",
            Eval,
            flip(&query, in_signature(&query, k.alice.public().as_bytes())?),
            Verification,
            "which is not in the trust store",
        ),
        ("truncated module", Eval, truncated, Verification, "truncated"),
        (
            "unknown key",
            Eval,
            sign(&k.mallory, &wasm, Kind::Query, "quick", "1.0.0", (0, 3600), &[])?,
            Verification,
            "which is not in the trust store",
        ),
        (
            "signer field forged (alice named, mallory signed)",
            Eval,
            reseal(&query, payload_for(&claims), &k.mallory),
            Verification,
            "signature is invalid",
        ),
        (
            "revoked key",
            Eval,
            sign(&k.eve, &wasm, Kind::Query, "quick", "1.0.0", (0, 3600), &[])?,
            Verification,
            "policy revokes",
        ),
        (
            "expired",
            Eval,
            sign(&k.alice, &wasm, Kind::Query, "quick", "1.0.0", (-7200, -3600), &[])?,
            Verification,
            "expired at",
        ),
        (
            "not yet valid",
            Eval,
            sign(&k.alice, &wasm, Kind::Query, "quick", "1.0.0", (3600, 7200), &[])?,
            Verification,
            "is not valid until",
        ),
        (
            "version rollback (2.0.0 published, then 1.0.0)",
            Publish,
            code("1.0.0")?,
            Verification,
            "looks like a rollback",
        ),
        (
            "same name and version, other content (mix-and-match)",
            Publish,
            other_content,
            Refused,
            "already published with other content",
        ),
        (
            "two signature sections",
            Eval,
            duplicate_signature(&query),
            Verification,
            "more than one \"roam.signature\" section",
        ),
        (
            "signature section misplaced",
            Eval,
            move_signature_back(&query),
            Verification,
            "is not the module's first section",
        ),
        (
            "capability escalation",
            Eval,
            sign(&k.alice, &wasm, Kind::Query, "quick", "1.0.0", (0, 3600), &["table:payroll"])?,
            Capability,
            "asks for capability \"table:payroll\"",
        ),
        (
            "kind the policy denies the signer",
            Launch,
            sign(&k.bob, &wasm, Kind::Agent, "quick", "1.0.0", (0, 3600), &[])?,
            Verification,
            "does not let signer bob sign agent modules",
        ),
        (
            "oversized module",
            Eval,
            sign(&k.alice, &padded, Kind::Query, "quick", "1.0.0", (0, 3600), &[])?,
            Verification,
            "module_kib",
        ),
        (
            "query launched as an agent",
            Launch,
            query.clone(),
            Verification,
            "is a query module, but an agent module is needed",
        ),
        (
            "agent sent as a query",
            Eval,
            sign(&k.alice, &wasm, Kind::Agent, "quick", "1.0.0", (0, 3600), &[])?,
            Verification,
            "is an agent module, but a query module is needed",
        ),
        (
            "query published to the code repository",
            Publish,
            sign(&k.alice, &wasm, Kind::Query, "quick-q", "1.0.0", (0, 3600), &[])?,
            Refused,
            "holds code and agent modules",
        ),
        (
            "payload signed without its domain prefix",
            Eval,
            reseal(&query, unprefixed, &k.alice),
            Verification,
            "does not start with the roam-module-v1 prefix",
        ),
        (
            "envelope that does not decode",
            Eval,
            replace_signature_section(&query, &custom_section(SIGNATURE_SECTION, b"not cbor")),
            Verification,
            "signature section cannot be decoded",
        ),
        (
            "signature of the wrong length",
            Eval,
            reseal_raw(&query, payload_for(&claims), vec![0; 63]),
            Verification,
            "signature section cannot be decoded",
        ),
        (
            "claims that do not decode",
            Eval,
            reseal(&query, bad_claims, &k.alice),
            Verification,
            "signed claims cannot be decoded",
        ),
    ];
    assert!(cases.len() >= 16);
    for (name, op, module, kind, words) in cases {
        let (got, message) = refusal(&mut client, op, module).await.with_context(|| name.to_owned())?;
        assert_eq!(got, kind, "{name}: {message}");
        assert!(message.contains(words), "{name}: {message:?} should say {words:?}");
    }

    assert_eq!(holdings(&mut client, &data).await?, before, "a refused module was stored, compiled or launched");
    drop(client);
    running.shutdown().await;
    Ok(())
}
