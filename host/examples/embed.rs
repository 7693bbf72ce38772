//! Embedding code on demand: fetch a code module from a host once, then call it many times in
//! this process with no further network traffic; optionally, the same checks as remote
//! evaluations, one round trip each, for comparison.
//!
//! Run it against a host that has `order-validator` published (`cargo xtask demo` does this):
//! `cargo run -p roam-host --example embed -- HOST_ADDR order-validator demo/trust [QUERY.wasm]`
//! where QUERY.wasm is the same validator signed as a query module. Evaluating it needs the right
//! `eval` on the host: set `ROAM_IDENTITY` to the secret key of a client its access policy names.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use roam_host::client::{Client, json_to_cbor};
use roam_host::local::CodeOnDemand;
use roam_keys::TrustStore;
use serde_json::{Value, json};

/// How many orders to check.
const ORDERS: i64 = 1000;

fn order(id: i64) -> Value {
    // Every tenth order ships to a region that does not exist.
    json!({
        "id": id, "region": if id % 10 == 0 { "mars" } else { "north" }, "product": "widget",
        "quantity": 1 + id % 7, "unit_cents": 250, "total_cents": 250 * (1 + id % 7), "day": 1 + id % 365,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed HOST_ADDR MODULE TRUST_DIR [QUERY_MODULE.wasm]";
    let addr = args.next().context(usage)?;
    let module = args.next().context(usage)?;
    let trust = args.next().context(usage)?;
    let query = args.next();

    // Only modules signed by a key in this trust store are ever cached or run.
    let cod = CodeOnDemand::builder(TrustStore::load(trust.as_ref())?).build()?;
    let started = Instant::now();
    let validator = cod.fetch(&addr, &module.parse().map_err(anyhow::Error::msg)?).await?;
    println!("fetched and verified {module} ({}) in {:?}", validator.hash(), started.elapsed());

    let started = Instant::now();
    let mut invalid = 0;
    for id in 0..ORDERS {
        let verdict: Value = cod.call(&validator, &order(id))?;
        invalid += i32::from(verdict["valid"] == json!(false));
    }
    let local = started.elapsed();
    println!("code on demand: {ORDERS} orders checked locally in {local:?} ({invalid} invalid)");

    if let Some(query) = query {
        let bytes = std::fs::read(&query).with_context(|| format!("cannot read {query}"))?;
        let identity = match std::env::var_os("ROAM_IDENTITY") {
            Some(path) => Some(std::sync::Arc::new(roam_keys::SecretKey::load(path.as_ref())?)),
            None => None,
        };
        let mut client = Client::connect_target(&addr, roam_host::transport::client_config(identity)?).await?;
        let started = Instant::now();
        let mut invalid = 0;
        for id in 0..ORDERS {
            let out = client.eval(&bytes, json_to_cbor(&order(id))).await?;
            let verdict = roam_host::client::cbor_to_json(&out).map_err(anyhow::Error::msg)?;
            invalid += i32::from(verdict["valid"] == json!(false));
        }
        let remote = started.elapsed();
        println!("remote evaluation: the same {ORDERS} checks as round trips in {remote:?} ({invalid} invalid)");
        println!(
            "code on demand was {:.1}x faster",
            remote.as_secs_f64() / local.as_secs_f64().max(Duration::from_nanos(1).as_secs_f64())
        );
    }
    Ok(())
}
