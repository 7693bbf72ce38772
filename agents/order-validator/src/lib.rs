//! A code module (code on demand): checks one order against the shop's rules. A client fetches
//! it once from a host's code repository and then validates every order locally, with no round
//! trips. After `cargo xtask demo`, run it with
//! `roam run order-validator --from 127.0.0.1:7700 --trust demo/trust --input '{"id": 1, "region": "north", "product": "widget", "quantity": 3, "unit_cents": 250, "total_cents": 750, "day": 12}'`.

use serde::{Deserialize, Serialize};

/// The regions orders may ship to.
const REGIONS: [&str; 5] = ["central", "east", "north", "south", "west"];
/// The most items one order may hold.
const MAX_QUANTITY: i64 = 100;

/// An order as the shop records it.
#[derive(Deserialize)]
struct Order {
    id: i64,
    region: String,
    product: String,
    quantity: i64,
    unit_cents: i64,
    total_cents: i64,
    day: i64,
}

/// The verdict: valid, or the list of rules the order breaks.
#[derive(Serialize)]
struct Verdict {
    id: i64,
    valid: bool,
    problems: Vec<String>,
}

fn validate(order: Order) -> roam_sdk::Result<Verdict> {
    let mut problems = Vec::new();
    if !REGIONS.contains(&order.region.as_str()) {
        problems.push(format!("unknown region {:?}", order.region));
    }
    if order.product.trim().is_empty() {
        problems.push("no product".to_owned());
    }
    if !(1..=MAX_QUANTITY).contains(&order.quantity) {
        problems.push(format!("quantity {} is not between 1 and {MAX_QUANTITY}", order.quantity));
    }
    if order.unit_cents <= 0 {
        problems.push("the unit price must be positive".to_owned());
    }
    match order.quantity.checked_mul(order.unit_cents) {
        Some(total) if total == order.total_cents => {}
        Some(total) => problems.push(format!("total {} should be {total}", order.total_cents)),
        None => problems.push("quantity times unit price overflows".to_owned()),
    }
    if !(1..=366).contains(&order.day) {
        problems.push(format!("day {} is not a day of the year", order.day));
    }
    Ok(Verdict { id: order.id, valid: problems.is_empty(), problems })
}

roam_sdk::query!(validate);
