//! A query module that does what SQL makes awkward: the median sale per product, computed next
//! to the data. After `cargo xtask demo`, run it with
//! `roam eval agents/target/wasm32-unknown-unknown/release/sales_median.signed.wasm --host 127.0.0.1:7700 --input '{"min_quantity": 2}'`.

use std::collections::BTreeMap;

use roam_sdk::{Table, Value};
use serde::{Deserialize, Serialize};

/// Which sales to count; `min_quantity` may be left out.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Input {
    min_quantity: u32,
}

impl Default for Input {
    fn default() -> Self {
        Self { min_quantity: 1 }
    }
}

/// One row of the query: a struct takes the columns in order.
#[derive(Deserialize)]
struct Sale {
    product: String,
    amount_cents: i64,
}

#[derive(Serialize)]
struct Output {
    products: Vec<Product>,
}

#[derive(Serialize)]
struct Product {
    product: String,
    orders: u64,
    median_cents: f64,
}

fn sales_median(input: Input) -> roam_sdk::Result<Output> {
    let sales = Table::open("sales")?;
    let rows = sales.query::<Sale>(
        "SELECT product, amount_cents FROM sales WHERE quantity >= ?1",
        &[Value::Integer(input.min_quantity.into())],
    )?;

    // A BTreeMap keeps the products sorted by name.
    let mut amounts = BTreeMap::<String, Vec<i64>>::new();
    for sale in rows {
        let sale = sale?;
        amounts.entry(sale.product).or_default().push(sale.amount_cents);
    }

    let products = amounts
        .into_iter()
        .map(|(product, mut cents)| {
            cents.sort_unstable();
            Product { product, orders: cents.len() as u64, median_cents: median(&cents) }
        })
        .collect();
    Ok(Output { products })
}

/// The median of sorted, non-empty `cents` (every product in the map has at least one sale).
fn median(cents: &[i64]) -> f64 {
    let mid = cents.len() / 2;
    if cents.len() % 2 == 1 { cents[mid] as f64 } else { (cents[mid - 1] as f64 + cents[mid] as f64) / 2.0 }
}

roam_sdk::query!(sales_median);
