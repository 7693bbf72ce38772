//! A query module (remote evaluation): filter the host's `sales` table and total it by region,
//! next to the data, so that only the totals travel back. After `cargo xtask demo`, run it with
//! `roam eval agents/target/wasm32-unknown-unknown/release/sales_by_region.signed.wasm --host 127.0.0.1:7700 --input '{"min_quantity": 2}'`.

use std::collections::BTreeMap;

use roam_sdk::{Table, Value};
use serde::{Deserialize, Serialize};

/// Which sales to count; every field may be left out.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Input {
    min_quantity: u32,
    from_day: u32,
    to_day: u32,
}

impl Default for Input {
    fn default() -> Self {
        Self { min_quantity: 1, from_day: 1, to_day: 365 }
    }
}

#[derive(Serialize)]
struct Output {
    regions: Vec<Region>,
}

#[derive(Serialize)]
struct Region {
    region: String,
    orders: u64,
    total_cents: i64,
    mean_cents: f64,
}

fn sales_by_region(input: Input) -> roam_sdk::Result<Output> {
    let sales = Table::open("sales")?;
    let rows = sales.query::<(String, i64)>(
        "SELECT region, amount_cents FROM sales WHERE quantity >= ?1 AND day BETWEEN ?2 AND ?3",
        &[
            Value::Integer(input.min_quantity.into()),
            Value::Integer(input.from_day.into()),
            Value::Integer(input.to_day.into()),
        ],
    )?;

    // A BTreeMap keeps the regions sorted by name.
    let mut totals = BTreeMap::<String, (u64, i64)>::new();
    let mut count = 0;
    for row in rows {
        let (region, amount_cents) = row?;
        let (orders, total_cents) = totals.entry(region).or_default();
        *orders += 1;
        *total_cents += amount_cents;
        count += 1;
    }
    roam_sdk::log::info(&format!("sales-by-region: {count} matching sales"));

    let regions = totals
        .into_iter()
        .map(|(region, (orders, total_cents))| Region {
            region,
            orders,
            total_cents,
            mean_cents: total_cents as f64 / orders as f64,
        })
        .collect();
    Ok(Output { regions })
}

roam_sdk::query!(sales_by_region);
