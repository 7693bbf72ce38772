//! A query that uses Rust's `std` the way ordinary code does, built for `wasm32-wasip1`
//! (`cargo xtask agents` builds it so): `println!` and `eprintln!` land in the host's log, the
//! clock and the random keys of a `HashMap` work, arguments and environment are empty, and reading a file fails with an error the
//! module handles, since a module reaches nothing outside its sandbox.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
    /// Seconds since 1970 by the host's clock.
    now: u64,
    /// Distinct words in the greeting, counted in a `HashMap` (its keys come from WASI's random).
    words: usize,
    /// What reading a file gave: an error, as a string.
    file: String,
    /// How many arguments and environment variables the module sees.
    args: usize,
    env: usize,
}

fn hello(input: Input) -> roam_sdk::Result<Output> {
    let greeting = format!("hello, {}", input.name);
    println!("{greeting} from wasm32-wasip1");
    eprintln!("a line on stderr");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let mut counts = HashMap::new();
    for word in greeting.split_whitespace() {
        *counts.entry(word).or_insert(0) += 1;
    }
    let words = counts.len();
    let file = match std::fs::read("/etc/passwd") {
        Ok(bytes) => format!("read {} bytes", bytes.len()),
        Err(e) => format!("error: {e}"),
    };
    Ok(Output { greeting, now, words, file, args: std::env::args().count(), env: std::env::vars().count() })
}

roam_sdk::query!(hello);
