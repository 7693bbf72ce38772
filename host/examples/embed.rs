//! Embedding code on demand: fetch a code module from a host once, then call it many times in
//! this process with no further network traffic.
//!
//! Run it against a host that has `order-validator` published (`cargo xtask demo` leaves the
//! pieces in `demo/`):
//! `cargo run -p roam-host --example embed -- 127.0.0.1:7700 order-validator demo/trust`

use std::time::Instant;

use anyhow::{Context, Result};
use roam_host::local::CodeOnDemand;
use roam_keys::TrustStore;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed HOST_ADDR MODULE TRUST_DIR";
    let addr = args.next().context(usage)?;
    let module = args.next().context(usage)?;
    let trust = args.next().context(usage)?;

    // Only modules signed by a key in this trust store are ever cached or run.
    let cod = CodeOnDemand::builder(TrustStore::load(trust.as_ref())?).build()?;
    let started = Instant::now();
    let validator = cod.fetch(&addr, &module.parse().map_err(anyhow::Error::msg)?).await?;
    println!("fetched {module} ({}) in {:?}", validator.hash(), started.elapsed());

    let started = Instant::now();
    let mut invalid = 0;
    for id in 0..1000 {
        let order = json!({
            "id": id, "region": if id % 10 == 0 { "mars" } else { "north" }, "product": "widget",
            "quantity": 1 + id % 7, "unit_cents": 250, "total_cents": 250 * (1 + id % 7), "day": 1 + id % 365,
        });
        let verdict: Value = cod.call(&validator, &order)?;
        if verdict["valid"] == json!(false) {
            invalid += 1;
        }
    }
    println!("validated 1000 orders locally in {:?}: {invalid} invalid", started.elapsed());
    Ok(())
}
