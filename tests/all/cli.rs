//! The `roam` command line, driven as separate processes over real TCP on loopback: keys,
//! signing and verification, remote evaluation checked against the same computation done
//! locally, refusals of modules a host must not run, and shutdown on SIGTERM.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use roam_keys::{Kind, PublicKey, SIGNATURE_SECTION};
use roam_tests::sample::{self, Sale};
use roam_tests::{Fixture, agent_wasm, args, roam, roam_err, roam_ok};
use serde::Deserialize;

/// A small valid module with a 4 KiB data segment, so that its code (everything after the
/// signature section) is large enough to flip bytes in.
fn test_module() -> Result<Vec<u8>> {
    let filler = "roam".repeat(1024);
    let wat = format!(
        r#"(module (memory (export "memory") 1) (data (i32.const 0) "{filler}")
           (func (export "roam_query")))"#
    );
    Ok(wat::parse_str(wat)?)
}

/// The `key: value` lines of `roam verify`'s output.
fn fields(stdout: &str) -> BTreeMap<&str, &str> {
    stdout.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect()
}

/// Signs the example module `agent` (e.g. `sales_by_region`) with `roam sign` as a query.
fn sign_agent(fx: &Fixture, agent: &str, signer: &str, caps: &[&str]) -> Result<PathBuf> {
    let out = fx.path().join(format!("{agent}.{signer}.signed.wasm"));
    let mut args: Vec<OsString> = vec![
        "sign".into(),
        agent_wasm(agent)?.into(),
        "--key".into(),
        fx.key_path(signer).into(),
        "--kind".into(),
        "query".into(),
        "--name".into(),
        agent.replace('_', "-").into(),
        "--version".into(),
        "1.0.0".into(),
        "-o".into(),
        out.clone().into(),
    ];
    for cap in caps {
        args.extend(["--cap".into(), OsString::from(cap)]);
    }
    roam_ok(&args)?;
    Ok(out)
}

/// `--table sales=PATH`'s value.
fn sales_table(csv: &Path) -> OsString {
    let mut spec = OsString::from("sales=");
    spec.push(csv);
    spec
}

/// Writes `sales` as CSV in the fixture and starts a host serving it as the `sales` table.
fn host_with_sales(fx: &Fixture, sales: &[Sale]) -> Result<roam_tests::HostProcess> {
    let csv = fx.path().join("sales.csv");
    sample::write_csv(&csv, sales).context("cannot write the sample sales")?;
    fx.host(args!["--table", sales_table(&csv)])
}

#[test]
fn keys_new_writes_a_private_key_and_refuses_to_overwrite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    roam_ok(args!["keys", "new", "carol", "--dir", keys])?;

    let secret = keys.join("carol.key");
    let public = keys.join("carol.pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&secret)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "carol.key has mode {mode:o}; a secret key must be 0600");
    }
    // The files are the ones the library reads, and they belong together.
    let key = roam_keys::SecretKey::load(&secret)?;
    assert_eq!(key.public(), PublicKey::load(&public)?);

    let before = fs::read(&secret)?;
    let stderr = roam_err(args!["keys", "new", "carol", "--dir", keys])?;
    assert!(stderr.contains("overwrite"), "the refusal should say why: {stderr}");
    assert_eq!(fs::read(&secret)?, before, "a refused `keys new` changed carol.key");
    Ok(())
}

#[test]
fn sign_then_verify_prints_the_signed_claims() -> Result<()> {
    let fx = Fixture::new()?;
    let input = fx.write("hello.wasm", test_module()?)?;
    let signed = fx.path().join("hello.signed.wasm");
    roam_ok(args![
        "sign",
        input,
        "--key",
        fx.key_path("alice"),
        "--kind",
        "query",
        "--name",
        "hello",
        "--version",
        "1.2.3",
        "--expires",
        "2h",
        "--cap",
        "table:sales",
        "--cap",
        "log:audit",
        "-o",
        signed,
    ])?;

    let stdout = roam_ok(args!["verify", signed, "--trust", fx.trust_dir()])?;
    let fields = fields(&stdout);
    let alice = PublicKey::load(&fx.keys_dir().join("alice.pub"))?;
    let hash = roam_keys::hash_module(&fs::read(&signed)?).to_string();
    assert_eq!(fields.get("signer"), Some(&format!("alice ({alice})").as_str()), "{stdout}");
    assert_eq!(fields.get("kind"), Some(&"query"), "{stdout}");
    assert_eq!(fields.get("name"), Some(&"hello"), "{stdout}");
    assert_eq!(fields.get("version"), Some(&"1.2.3"), "{stdout}");
    assert_eq!(fields.get("hash"), Some(&hash.as_str()), "{stdout}");
    let caps = fields.get("capabilities").copied().unwrap_or_default();
    assert!(caps.contains("table:sales") && caps.contains("log:audit"), "{stdout}");

    // --expires is honoured, and the module is otherwise the input, signed.
    let claims = roam_keys::read_claims_unverified(&fs::read(&signed)?)?;
    assert_eq!(claims.expires - claims.issued_at, 2 * 3600);

    roam_ok(args!["verify", signed, "--trust", fx.trust_dir(), "--kind", "query"])?;
    let stderr = roam_err(args!["verify", signed, "--trust", fx.trust_dir(), "--kind", "agent"])?;
    assert!(stderr.contains("agent"), "the refusal should name the kind: {stderr}");
    Ok(())
}

#[test]
fn verify_refuses_a_signer_missing_from_the_trust_store() -> Result<()> {
    let fx = Fixture::new()?;
    let input = fx.write("hello.wasm", test_module()?)?;
    let signed = fx.path().join("hello.mallory.wasm");
    roam_ok(args![
        "sign",
        input,
        "--key",
        fx.key_path("mallory"),
        "--kind",
        "query",
        "--name",
        "hello",
        "--version",
        "1.0.0",
        "-o",
        signed,
    ])?;
    let stderr = roam_err(args!["verify", signed, "--trust", fx.trust_dir()])?;
    assert!(stderr.contains("trust"), "the refusal should say the signer is not trusted: {stderr}");
    Ok(())
}

#[test]
fn a_flipped_byte_anywhere_in_a_signed_module_fails_verification() -> Result<()> {
    let fx = Fixture::new()?;
    let signed = fx.sign(&test_module()?, "alice", Kind::Query, "hello", "1.0.0", &[])?;
    let good = fx.write("good.wasm", &signed)?;
    roam_ok(args!["verify", good, "--trust", fx.trust_dir()])?;

    let sections = roam_keys::sections(&signed)?;
    let signature = sections
        .iter()
        .find(|s| s.name == Some(SIGNATURE_SECTION))
        .context("the signed module has no signature section")?;
    let code = signature.range.end;
    let positions = [
        ("the middle of the signature section", signature.range.start + signature.range.len() / 2),
        // The envelope ends with the 64-byte signature itself.
        ("the signature's last byte", signature.range.end - 1),
        ("the middle of the code", code + (signed.len() - code) / 2),
        ("the module's last byte", signed.len() - 1),
    ];
    for (place, at) in positions {
        let mut tampered = signed.clone();
        tampered[at] ^= 0x01;
        let path = fx.write(&format!("tampered-{at}.wasm"), &tampered)?;
        roam_err(args!["verify", path, "--trust", fx.trust_dir()])
            .with_context(|| format!("flipping a bit in {place} (byte {at})"))?;
    }
    Ok(())
}

/// What `sales-by-region` answers (and its C twin, agents/c/sales_by_region.c).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByRegion {
    pub regions: Vec<RegionTotal>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionTotal {
    pub region: String,
    pub orders: u64,
    pub total_cents: i64,
    pub mean_cents: f64,
}

/// What `sales-median` answers.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Medians {
    products: Vec<ProductMedian>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductMedian {
    product: String,
    orders: u64,
    median_cents: f64,
}

/// `sales-by-region`, computed here: the same filter, grouping and formula, so the floats are
/// bit-identical (and serde_json's `float_roundtrip` feature parses the host's floats exactly).
pub fn by_region_natively(sales: &[Sale], min_quantity: i64, from_day: i64, to_day: i64) -> ByRegion {
    let mut totals = BTreeMap::<&str, (u64, i64)>::new();
    for s in sales.iter().filter(|s| s.quantity >= min_quantity && (from_day..=to_day).contains(&s.day)) {
        let (orders, total) = totals.entry(&s.region).or_default();
        *orders += 1;
        *total += s.amount_cents;
    }
    let regions = totals
        .into_iter()
        .map(|(region, (orders, total_cents))| RegionTotal {
            region: region.to_owned(),
            orders,
            total_cents,
            mean_cents: total_cents as f64 / orders as f64,
        })
        .collect();
    ByRegion { regions }
}

/// `sales-median`, computed here with the same formula.
fn medians_natively(sales: &[Sale], min_quantity: i64) -> Medians {
    let mut amounts = BTreeMap::<&str, Vec<i64>>::new();
    for s in sales.iter().filter(|s| s.quantity >= min_quantity) {
        amounts.entry(&s.product).or_default().push(s.amount_cents);
    }
    let products = amounts
        .into_iter()
        .map(|(product, mut cents)| {
            cents.sort_unstable();
            let mid = cents.len() / 2;
            let median_cents = if cents.len() % 2 == 1 {
                cents[mid] as f64
            } else {
                (cents[mid - 1] as f64 + cents[mid] as f64) / 2.0
            };
            ProductMedian { product: product.to_owned(), orders: cents.len() as u64, median_cents }
        })
        .collect();
    Medians { products }
}

fn parse<T: for<'de> Deserialize<'de>>(stdout: &str) -> Result<T> {
    serde_json::from_str(stdout).with_context(|| format!("`roam eval` printed unexpected JSON:\n{stdout}"))
}

#[test]
fn remote_evaluation_matches_the_same_computation_done_locally() -> Result<()> {
    let fx = Fixture::new()?;
    let sales = sample::generate(5_000, 7);
    let by_region = sign_agent(&fx, "sales_by_region", "alice", &["table:sales"])?;
    let median = sign_agent(&fx, "sales_median", "alice", &["table:sales"])?;
    let host = host_with_sales(&fx, &sales)?;
    let addr = host.addr.to_string();

    let input = r#"{"min_quantity": 3, "from_day": 10, "to_day": 300}"#;
    let got: ByRegion = parse(&roam_ok(args!["eval", by_region, "--host", addr, "--input", input])?)?;
    let expected = by_region_natively(&sales, 3, 10, 300);
    assert_eq!(got.regions.len(), sample::REGIONS.len(), "{got:?}");
    assert_eq!(got, expected);

    // Without --input the query gets `{}`, so its defaults: every sale.
    let got: ByRegion = parse(&roam_ok(args!["eval", by_region, "--host", addr])?)?;
    assert_eq!(got.regions.iter().map(|r| r.orders).sum::<u64>(), 5_000);
    assert_eq!(got, by_region_natively(&sales, 1, 1, 365));

    let input = fx.write("median-input.json", r#"{"min_quantity": 3}"#)?;
    let got: Medians = parse(&roam_ok(args!["eval", median, "--host", addr, "--input-file", input])?)?;
    assert_eq!(got.products.len(), sample::PRODUCTS.len(), "{got:?}");
    assert_eq!(got, medians_natively(&sales, 3));

    host.stop()
}

/// Runs `roam eval` on a module the host must refuse: exit code 3 (refused) and `error: <reason>`.
fn refused(module: &Path, addr: &str) -> Result<String> {
    let output = roam(args!["eval", module, "--host", addr])?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(3),
        "`roam eval {}` should have been refused\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        module.display(),
        String::from_utf8_lossy(&output.stdout),
    );
    assert!(stderr.contains("error: "), "no `error: <reason>` on stderr: {stderr}");
    Ok(stderr)
}

#[test]
fn modules_a_host_must_not_run_are_refused_with_a_reason() -> Result<()> {
    let fx = Fixture::new()?;
    let sales = sample::generate(200, 11);
    let host = host_with_sales(&fx, &sales)?;
    let addr = host.addr.to_string();

    let untrusted = sign_agent(&fx, "sales_by_region", "mallory", &["table:sales"])?;
    let stderr = refused(&untrusted, &addr)?;
    assert!(stderr.contains("trust"), "the refusal should say the signer is not trusted: {stderr}");

    // bob is trusted, but the policy lets him grant no capability.
    let beyond_policy = sign_agent(&fx, "sales_by_region", "bob", &["table:sales"])?;
    let stderr = refused(&beyond_policy, &addr)?;
    assert!(stderr.contains("table:sales"), "the refusal should name the capability: {stderr}");

    // Signed by alice, but without asking for the table it then opens.
    let unrequested = sign_agent(&fx, "sales_by_region", "alice", &[])?;
    let stderr = refused(&unrequested, &addr)?;
    assert!(stderr.contains("table:sales"), "the refusal should name the capability: {stderr}");

    let wasm = fs::read(agent_wasm("sales_by_region")?)?;
    refused(&fx.write("unsigned.wasm", &wasm)?, &addr)?;
    let not_a_query = fx.sign(&wasm, "alice", Kind::Code, "by-region-code", "1.0.0", &["table:sales"])?;
    refused(&fx.write("code.wasm", not_a_query)?, &addr)?;
    let mut tampered = fs::read(sign_agent(&fx, "sales_by_region", "alice", &["table:sales"])?)?;
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x01;
    }
    refused(&fx.write("tampered.wasm", tampered)?, &addr)?;

    // After all that, the host still serves a module it should run.
    let good = sign_agent(&fx, "sales_median", "alice", &["table:sales"])?;
    let got: Medians = parse(&roam_ok(args!["eval", good, "--host", addr])?)?;
    assert_eq!(got, medians_natively(&sales, 1));
    host.stop()
}

#[test]
fn host_exits_cleanly_on_sigterm_with_a_client_connected() -> Result<()> {
    let fx = Fixture::new()?;
    let host = fx.host(["--name", "sigterm-test"])?;
    let addr = host.addr;

    // An idle client that has completed the handshake must not hold up the shutdown.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = runtime.block_on(roam_host::client::Client::connect(&addr.to_string()))?;
    assert_eq!(client.host_name(), "sigterm-test");

    host.stop()?;
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the host still accepts connections on {addr} after exiting"
    );
    drop(client);
    Ok(())
}
