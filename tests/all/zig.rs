//! Zig as a guest language, end to end: the modules of agents/zig/ (built by `cargo xtask
//! agents` with the pinned Zig) on real hosts. A query evaluated where the data is, checked
//! against the same computation done natively and by the Rust example; an agent whose state
//! survives its hops and a recall, checked like the Rust hop-counter.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use roam_host::client::Client;
use roam_keys::Kind;
use roam_tests::sample::{self, Sale};
use roam_tests::{Fixture, agent_wasm, args, roam_err, roam_ok, zig_wasm};
use serde::Deserialize;

use crate::agents::{Net, check_hop_counter, ended, launch, parked, result_json, with_route};
use crate::guests::signed_query;

/// What region_totals.zig answers.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Totals {
    regions: Vec<Region>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Region {
    region: String,
    orders: u64,
    units: i64,
    total_cents: i64,
    mean_cents: f64,
}

/// What the Rust example sales-by-region answers: the same, without the units.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByRegion {
    regions: Vec<RustRegion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RustRegion {
    region: String,
    orders: u64,
    total_cents: i64,
    mean_cents: f64,
}

/// The Zig query's answer computed here: the same filter, grouping and formula, so that the
/// means are bit-identical.
fn totals_natively(sales: &[Sale], min_quantity: i64, from_day: i64, to_day: i64) -> Totals {
    let mut by_region = BTreeMap::<&str, (u64, i64, i64)>::new();
    for s in sales.iter().filter(|s| s.quantity >= min_quantity && (from_day..=to_day).contains(&s.day)) {
        let (orders, units, total) = by_region.entry(&s.region).or_default();
        *orders += 1;
        *units += s.quantity;
        *total += s.amount_cents;
    }
    let regions = by_region
        .into_iter()
        .map(|(region, (orders, units, total_cents))| Region {
            region: region.to_owned(),
            orders,
            units,
            total_cents,
            mean_cents: total_cents as f64 / orders as f64,
        })
        .collect();
    Totals { regions }
}

fn parse<T: for<'de> Deserialize<'de>>(stdout: &str) -> Result<T> {
    serde_json::from_str(stdout).with_context(|| format!("`roam eval` printed unexpected JSON:\n{stdout}"))
}

#[test]
fn a_zig_query_totals_the_sales_as_a_native_computation_and_the_rust_example_do() -> Result<()> {
    let fx = Fixture::new()?;
    // 5,000 sales: several batches of rows (at most 1,024 each) reach the Zig reader.
    let sales = sample::generate(5_000, 23);
    let csv = fx.path().join("sales.csv");
    sample::write_csv(&csv, &sales)?;
    let mut table = std::ffi::OsString::from("sales=");
    table.push(&csv);
    let host = fx.host(args!["--table", table])?;
    let addr = host.addr.to_string();
    let zig = signed_query(&fx, zig_wasm("region_totals")?, "region-totals")?;
    let rust = signed_query(&fx, agent_wasm("sales_by_region")?, "sales-by-region")?;

    let input = r#"{"min_quantity": 3, "from_day": 10, "to_day": 300}"#;
    let got: Totals = parse(&roam_ok(args!["eval", zig, "--host", addr, "--input", input])?)?;
    assert_eq!(got.regions.len(), sample::REGIONS.len(), "{got:?}");
    assert_eq!(got, totals_natively(&sales, 3, 10, 300));

    // The Rust module, on the same host and input, agrees on every field they share.
    let by_rust: ByRegion = parse(&roam_ok(args!["eval", rust, "--host", addr, "--input", input])?)?;
    assert_eq!(by_rust.regions.len(), got.regions.len());
    for (z, r) in got.regions.iter().zip(&by_rust.regions) {
        assert_eq!(
            (&z.region, z.orders, z.total_cents, z.mean_cents.to_bits()),
            (&r.region, r.orders, r.total_cents, r.mean_cents.to_bits())
        );
    }

    // Without --input the query gets `{}`, so its defaults: every sale.
    let got: Totals = parse(&roam_ok(args!["eval", zig, "--host", addr])?)?;
    assert_eq!(got.regions.iter().map(|r| r.orders).sum::<u64>(), 5_000);
    assert_eq!(got, totals_natively(&sales, 1, 1, 365));

    // No row matches: the cursor ends before any batch.
    let got: Totals =
        parse(&roam_ok(args!["eval", zig, "--host", addr, "--input", r#"{"from_day": 300, "to_day": 10}"#])?)?;
    assert_eq!(got, Totals { regions: vec![] });

    // An error the Zig code reports reaches the caller with its explanation.
    let stderr = roam_err(args!["eval", zig, "--host", addr, "--input", r#"{"min_qty": 3}"#])?;
    assert!(stderr.contains("Invalid: unknown input field min_qty"), "{stderr}");
    host.stop()
}

/// Signs the Zig hop counter as alice's agent, with no capabilities (it opens nothing).
fn zig_hop_counter(net: &Net) -> Result<Vec<u8>> {
    net.sign_file(&zig_wasm("hop_counter")?, Kind::Agent, "zig-hop-counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zig_agent_keeps_its_state_across_hosts_and_brings_it_home() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    let route: Vec<String> = [&a, &b, &a, &b].iter().map(|h| h.addr().to_string()).collect();
    let home_addr = home.addr().to_string();
    let id = launch(&home_addr, zig_hop_counter(&net)?, serde_json::json!({ "hosts": route })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let result = result_json(&info)?;
    // Counters, the heap's list of hosts and its hop table, and their checksum, as hop-counter.
    check_hop_counter(&result, &["a", "b", "a", "b"])?;
    // Depart ran after start and after each arrival before the last, in the instance that
    // decided to leave, and its count travelled on.
    assert_eq!(result["departures"], 4, "{result}");
    assert_eq!(info.hops, 5, "4 hops out and one home");
    let info = with_route(&home_addr, &id, 5).await?;
    let visits: Vec<_> = info.route.iter().map(|v| v.host.as_str()).collect();
    assert_eq!(visits, ["home", "a", "b", "a", "b"]);
    for r in [a, b, home] {
        r.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_zig_agent_hands_over_the_state_it_carried() -> Result<()> {
    let net = Net::new(&["home", "a", "down"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    // A peer that never starts: the agent parks at a, on its way there.
    let dead = format!("127.0.0.1:{}", net.port("down")?);
    let home_addr = home.addr().to_string();
    let input = serde_json::json!({ "hosts": [a.addr().to_string(), dead] });
    let id = launch(&home_addr, zig_hop_counter(&net)?, input).await?;
    parked(&home_addr, &id).await?;
    let ordered = Client::connect(&home_addr).await?.recall(&id).await?;
    ensure!(ordered.recall_ordered.is_some(), "{ordered:?}");
    let info = ended(&home_addr, &id, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "recalled", "{info:?}");
    // roam_agent_recall ran at home on the state as it left a: one arrival, and the depart
    // towards the host that was down.
    let partial = result_json(&info)?;
    check_hop_counter(&partial, &["a"])?;
    assert_eq!(partial["departures"], 2, "{partial}");
    a.shutdown().await;
    home.shutdown().await;
    Ok(())
}
