//! Write roam query modules and mobile agents in ordinary Rust.
//!
//! A query module is a small, signed WebAssembly module that a data host runs next to its data
//! (remote evaluation): it receives an input, reads the host's resources, and returns a result.
//! A mobile agent is one that moves itself from host to host, keeping its state as plain Rust
//! values in its own memory, which the hosts snapshot and restore along the way.
//! The concepts, one line each:
//!
//! - [`query!`]: makes a plain `fn(I) -> Result<O, E>` the module's entry point; the input is
//!   decoded into `I` and the output encoded from `O` (both CBOR, JSON-like on the command line).
//! - [`input`]: decodes the evaluation's input by hand, for modules that do not use [`query!`].
//! - [`Table`]: a SQL table the host offers; [`Table::query`] runs a read-only statement.
//! - [`Rows`]: the rows of a query, fetched from the host in batches and decoded one at a time.
//! - [`Log`]: an append-only log resource the host offers.
//! - [`log`]: the host's diagnostic log, which needs no capability.
//! - [`Error`] and [`Result`]: what a host call or a query returns when it fails.
//! - [`Value`], [`ErrorCode`], [`LogLevel`]: the interface's own types, from `roam-abi`.
//! - [`Agent`]: a mobile agent, whose value is its state; [`agent!`] exports it with the
//!   resources it uses and how it refers to each ([`Binding`]: by identifier, value or type).
//! - [`Next`]: what an agent does after an entry: go to a host, go home, or finish.
//! - [`Itinerary`]: a route of hosts, with alternates, that hands out one [`Next`] per stop.
//! - [`Arrival`], [`Bound`], [`Action`]: where an agent arrived, and how the host bound each
//!   of its resources there (MV, GR, CP, RB, or unbound).
//!
//! Opening a resource needs the matching capability (`table:sales` for the table `sales`) in the
//! module's signed manifest; without it [`Table::open`] fails with [`ErrorCode::Denied`].
//!
//! # A query
//!
//! ```no_run
//! use roam_sdk::{Table, Value};
//!
//! /// Counts, per region, the orders of at least `min_quantity` items.
//! fn orders_per_region(min_quantity: i64) -> roam_sdk::Result<Vec<(String, i64)>> {
//!     let sales = Table::open("sales")?;
//!     let sql = "SELECT region, count(*) FROM sales WHERE quantity >= ?1 GROUP BY region";
//!     sales.query(sql, &[Value::Integer(min_quantity)])?.collect()
//! }
//!
//! roam_sdk::query!(orders_per_region);
//! ```
//!
//! # An agent
//!
//! ```no_run
//! use roam_sdk::{Agent, Arrival, Itinerary, Next, Table};
//!
//! /// Counts the rows of each host's `stock` table, then goes home with the total.
//! #[derive(Default)]
//! struct StockCount {
//!     route: Itinerary,
//!     rows: u64,
//! }
//!
//! impl Agent for StockCount {
//!     type Input = Vec<String>;
//!
//!     fn on_start(&mut self, hosts: Vec<String>) -> roam_sdk::Result<Next> {
//!         self.route = Itinerary::new(hosts);
//!         self.route.next_stop().map_or_else(|| Next::finish(&0), Ok)
//!     }
//!
//!     fn on_arrival(&mut self, _here: &Arrival) -> roam_sdk::Result<Next> {
//!         let stock = Table::open("stock")?;
//!         for row in stock.query::<(u64,)>("SELECT count(*) FROM stock", &[])? {
//!             self.rows += row?.0;
//!         }
//!         match self.route.next_stop() {
//!             Some(next) => Ok(next),
//!             None => Next::home(&self.rows),
//!         }
//!     }
//! }
//!
//! roam_sdk::agent!(StockCount, resources: [table "stock" by type]);
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

// The host functions exist only inside a roam host; native builds would fail later with a less
// helpful message. Unit tests build natively against a stand-in (`sys_test.rs`): from agents/,
// `cargo test -p roam-sdk --lib --target x86_64-unknown-linux-gnu`.
#[cfg(not(any(target_arch = "wasm32", test)))]
compile_error!("roam-sdk builds for wasm32-unknown-unknown only: build guest code from the agents/ workspace");

mod agent;
mod cbor;
mod columns;
mod entry;
mod error;
pub mod log;
mod resources;
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod sys;
#[cfg(all(test, not(target_arch = "wasm32")))]
#[path = "sys_test.rs"]
mod sys;

pub use agent::{Agent, Itinerary, Next, Partial};
pub use columns::{Blobs, Column, ColumnBatch, ColumnBatches, Strings, Values};
pub use entry::input;
pub use error::{Error, Result};
pub use resources::{Log, Rows, Table};
pub use roam_abi::{Action, Arrival, Binding, Bound, ErrorCode, LogLevel, Value};

/// What the macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::agent::private::*;
    pub use crate::entry::__private::*;
}
