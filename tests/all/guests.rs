//! C as a guest language, end to end: the modules of agents/c/ (built freestanding by `cargo
//! xtask agents` with clang and wasm-ld against sdk/c/roam.h) on real hosts. The query is
//! checked against the same computation done natively and against the Rust example it mirrors;
//! the agent's statics and heap against the Rust hop-counter over the same route, and through a
//! recall.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use roam_host::client::Client;
use roam_keys::Kind;
use roam_tests::sample;
use roam_tests::{Fixture, agent_wasm, args, c_wasm, roam_err, roam_ok};

use crate::agents::{Net, check_hop_counter, ended, launch, parked, result_json, with_route};
use crate::cli::{ByRegion, by_region_natively};

/// Signs `wasm` as alice's query asking for the sales table, and writes it to the fixture.
pub fn signed_query(fx: &Fixture, wasm: PathBuf, name: &str) -> Result<PathBuf> {
    let signed = fx.sign(&std::fs::read(&wasm)?, "alice", Kind::Query, name, "1.0.0", &["table:sales"])?;
    fx.write(&format!("{name}.signed.wasm"), signed)
}

fn parse(stdout: &str) -> Result<ByRegion> {
    serde_json::from_str(stdout).with_context(|| format!("`roam eval` printed unexpected JSON:\n{stdout}"))
}

#[test]
fn a_c_query_totals_the_sales_by_region_as_the_rust_example_and_a_native_computation_do() -> Result<()> {
    let fx = Fixture::new()?;
    // 5,000 sales: several batches of rows (at most 1,024 each) reach the C reader.
    let sales = sample::generate(5_000, 31);
    let csv = fx.path().join("sales.csv");
    sample::write_csv(&csv, &sales)?;
    let mut table = OsString::from("sales=");
    table.push(&csv);
    let host = fx.host(args!["--table", table])?;
    let addr = host.addr.to_string();
    let c = signed_query(&fx, c_wasm("sales_by_region")?, "sales-by-region-c")?;
    let rust = signed_query(&fx, agent_wasm("sales_by_region")?, "sales-by-region")?;

    let input = r#"{"min_quantity": 3, "from_day": 10, "to_day": 300}"#;
    let by_c = parse(&roam_ok(args!["eval", c, "--host", addr, "--input", input])?)?;
    assert_eq!(by_c.regions.len(), sample::REGIONS.len(), "{by_c:?}");
    assert_eq!(by_c, by_region_natively(&sales, 3, 10, 300));
    // The Rust module on the same host and input: the same answer, field for field.
    let by_rust = parse(&roam_ok(args!["eval", rust, "--host", addr, "--input", input])?)?;
    assert_eq!(by_c, by_rust);

    // Without --input the query gets `{}`, so its defaults: every sale.
    let by_c = parse(&roam_ok(args!["eval", c, "--host", addr])?)?;
    assert_eq!(by_c.regions.iter().map(|r| r.orders).sum::<u64>(), 5_000);
    assert_eq!(by_c, by_region_natively(&sales, 1, 1, 365));

    // No sale has more than 20 units: no row, so no batch at all.
    let none = parse(&roam_ok(args!["eval", c, "--host", addr, "--input", r#"{"min_quantity": 21}"#])?)?;
    assert_eq!(none, ByRegion { regions: vec![] });

    // The C code's own refusal of its input reaches the caller.
    let stderr = roam_err(args!["eval", c, "--host", addr, "--input", r#"{"min_qty": 3}"#])?;
    assert!(stderr.contains("invalid input: unknown field `min_qty`"), "{stderr}");

    // A host without the table: the error code and the host's explanation, as the C code
    // reports them from roam_last_error_read.
    let bare = fx.host(["--name", "bare"])?;
    let stderr = roam_err(args!["eval", c, "--host", bare.addr.to_string()])?;
    assert!(
        stderr.contains("cannot open the sales table: not found (code -1): this host offers no resource named"),
        "{stderr}"
    );
    bare.stop()?;
    host.stop()
}

/// Signs the C hop counter as alice's agent, with no capabilities (it opens nothing).
fn c_hop_counter(net: &Net) -> Result<Vec<u8>> {
    net.sign_file(&c_wasm("hop_counter")?, Kind::Agent, "hop-counter-c")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_agent_keeps_its_statics_and_heap_across_hosts_as_the_rust_agent_does() -> Result<()> {
    const VISITS: usize = 10;
    let net = Net::new(&["home", "a", "b"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    let names: Vec<&str> = (0..VISITS).map(|i| if i % 2 == 0 { "a" } else { "b" }).collect();
    let route: Vec<String> = (0..VISITS).map(|i| if i % 2 == 0 { a.addr() } else { b.addr() }.to_string()).collect();
    let home_addr = home.addr().to_string();

    let id = launch(&home_addr, c_hop_counter(&net)?, serde_json::json!({ "hosts": route })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let by_c = result_json(&info)?;
    // The counter (a static), the list of host names and the hop table (on the heap), and
    // their checksum, as hop-counter's test checks them.
    check_hop_counter(&by_c, &names)?;
    // Depart ran after start and after every arrival but the last, in the instance that decided
    // to leave, and its count travelled on in the snapshot.
    assert_eq!(by_c["departures"], VISITS, "{by_c}");
    assert_eq!(info.hops as usize, VISITS + 1, "{VISITS} hops out and one home");
    let info = with_route(&home_addr, &id, VISITS + 1).await?;
    let visits: Vec<&str> = info.route.iter().map(|v| v.host.as_str()).collect();
    assert_eq!(visits[0], "home");
    assert_eq!(visits[1..], names[..]);

    // The Rust agent over the same route brings home the same report, but for `departures`.
    let rust = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let id = launch(&home_addr, rust, serde_json::json!({ "hosts": route })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let mut by_c = by_c;
    by_c.as_object_mut().context("the C agent's result is not a map")?.remove("departures");
    assert_eq!(by_c, result_json(&info)?);
    for r in [a, b, home] {
        r.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_c_agent_hands_over_what_it_carried() -> Result<()> {
    let net = Net::new(&["home", "a", "b", "down"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    // A peer that never starts: the agent waits at b, on its way there, until recalled.
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let home_addr = home.addr().to_string();
    let input = serde_json::json!({ "hosts": [a.addr().to_string(), b.addr().to_string(), dead] });
    let id = launch(&home_addr, c_hop_counter(&net)?, input).await?;
    parked(&home_addr, &id).await?;
    let ordered = Client::connect(&home_addr).await?.recall(&id).await?;
    ensure!(ordered.recall_ordered.is_some(), "{ordered:?}");
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "recalled", "{info:?}");
    // roam_agent_recall ran at home on the state as it left b: two arrivals, and three
    // departures (from home, a, and b towards the host that was down).
    let partial = result_json(&info)?;
    check_hop_counter(&partial, &["a", "b"])?;
    assert_eq!(partial["departures"], 3, "{partial}");
    for r in [a, b, home] {
        r.shutdown().await;
    }
    Ok(())
}

/// The README's C and Zig queries are the files `cargo xtask agents` builds, word for word, and
/// they count what the table holds.
#[test]
fn the_readmes_c_and_zig_queries_are_the_built_examples_and_count_the_rows() -> Result<()> {
    let readme = std::fs::read_to_string(roam_tests::repo_root().join("README.md"))?;
    for source in ["agents/c/row_count.c", "agents/zig/row_count.zig"] {
        let text = std::fs::read_to_string(roam_tests::repo_root().join(source))?;
        ensure!(readme.contains(&text), "README.md does not show {source} as it is");
    }
    let fx = Fixture::new()?;
    let csv = fx.path().join("sales.csv");
    sample::write_csv(&csv, &sample::generate(2_500, 7))?;
    let mut table = OsString::from("sales=");
    table.push(&csv);
    let host = fx.host(args!["--table", table])?;
    let addr = host.addr.to_string();
    for (wasm, name) in [(c_wasm("row_count")?, "row-count-c"), (roam_tests::zig_wasm("row_count")?, "row-count-zig")] {
        let module = signed_query(&fx, wasm, name)?;
        let count = roam_ok(args!["eval", module, "--host", addr])?;
        ensure!(count.trim() == "2500", "{name} counted {count}");
    }
    host.stop()
}
