//! A mobile agent that visits data hosts in turn, totals their `stock` tables in its own memory
//! and carries the totals home, binding each resource its own way (`stock` by type, `config` by
//! value, `reports` by identifier). After `cargo xtask demo`, run it with
//! `roam launch agents/target/wasm32-unknown-unknown/release/stock_survey.signed.wasm --host 127.0.0.1:7700 --input '{"hosts": ["127.0.0.1:7701", "127.0.0.1:7702"]}' --wait`.
//!
//! The input may also give alternates per host, tried in order when that host is unreachable:
//! `{"hosts": ["a:7701", "b:7702"], "alternates": {"a:7701": ["c:7703"]}}`.
//!
//! The agent's state is the `StockSurvey` value: the hosts still to visit, the threshold read
//! from home's `config` on the first arrival, and the running totals. Nothing serializes it by
//! hand: each host snapshots the module's memory and the next one restores it.

use std::collections::BTreeMap;

use roam_sdk::{Agent, Arrival, Error, Itinerary, Log, Next, Result, Table};
use serde::{Deserialize, Serialize};

/// Where to go.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The data hosts' addresses, in the order to visit them.
    hosts: Vec<String>,
    /// Where to go instead of a host that cannot be reached, keyed by that host's address.
    #[serde(default)]
    alternates: BTreeMap<String, Vec<String>>,
}

/// The agent, which is all of its state.
#[derive(Default)]
struct StockSurvey {
    /// The hosts still to visit.
    itinerary: Itinerary,
    /// The totals so far: what goes home.
    survey: Survey,
}

/// The running totals, and the result the agent brings home. Integers only, so that a test can
/// compare them exactly with its own sums.
#[derive(Default, Serialize)]
struct Survey {
    /// The name of each host visited, in order.
    hosts_visited: Vec<String>,
    /// Stock rows read, over all hosts.
    rows_seen: u64,
    /// Σ quantity × unit_cents, over all rows.
    total_value_cents: i64,
    /// Rows whose quantity is below `low_stock_below`.
    low_stock_rows: u64,
    /// Home's `config` threshold, read once on the first arrival and kept here, so that later
    /// hosts need not bind `config` again; `None` until then.
    low_stock_below: Option<i64>,
    /// Total quantity per SKU, over all hosts.
    quantity_by_sku: BTreeMap<String, i64>,
    /// Reports that could not be appended to home's `reports` log; losing one is no reason to
    /// lose the survey.
    report_errors: Vec<String>,
}

/// What one host's `stock` adds, read in full before it is added to the survey.
#[derive(Default)]
struct Visit {
    rows: u64,
    value_cents: i64,
    low_stock_rows: u64,
    quantity_by_sku: BTreeMap<String, i64>,
}

/// One row of `stock`, its columns in query order.
#[derive(Deserialize)]
struct StockRow {
    sku: String,
    quantity: i64,
    unit_cents: i64,
}

impl Agent for StockSurvey {
    type Input = Input;

    fn on_start(&mut self, input: Input) -> Result<Next> {
        if let Some(unknown) = input.alternates.keys().find(|h| !input.hosts.contains(h)) {
            return Err(Error::msg(format!("alternates are given for {unknown}, which is not in hosts")));
        }
        let stops = input
            .hosts
            .into_iter()
            .map(|host| {
                // A host may come twice in the route: each stop gets its alternates.
                let instead = input.alternates.get(&host).cloned().unwrap_or_default();
                (host, instead)
            })
            .collect();
        self.itinerary = Itinerary::with_alternates(stops);
        match self.itinerary.next_stop() {
            Some(next) => Ok(next),
            None => Next::finish(&self.survey),
        }
    }

    fn on_arrival(&mut self, here: &Arrival) -> Result<Next> {
        if !here.unreachable.is_empty() {
            roam_sdk::log::warn(&format!("stock-survey: could not reach {}", here.unreachable.join(", ")));
        }
        let low_stock_below = match self.survey.low_stock_below {
            Some(threshold) => threshold,
            None => *self.survey.low_stock_below.insert(read_threshold()?),
        };
        let visit =
            read_stock(low_stock_below).map_err(|err| Error::msg(format!("reading stock on {}: {err}", here.host)))?;

        let line = format!("{}: {} rows, {} cents", here.host, visit.rows, visit.value_cents);
        self.survey.add(&here.host, visit)?;
        if let Err(err) = Log::open("reports").and_then(|reports| reports.append(&line)) {
            self.survey.report_errors.push(format!("{}: {err}", here.host));
        }

        match self.itinerary.next_stop() {
            Some(next) => Ok(next),
            None => Next::home(&self.survey),
        }
    }
}

/// Reads `low_stock_below` from the `config` table (home's, or the copy travelling by value).
fn read_threshold() -> Result<i64> {
    let fail = |why: &dyn std::fmt::Display| Error::msg(format!("cannot read low_stock_below from config: {why}"));
    let config = Table::open("config").map_err(|e| fail(&e))?;
    // The column is TEXT, but a host that loaded it from CSV may hold an integer: read it as
    // text either way, and parse it here, where a bad value is an error, not 0.
    let mut rows = config
        .query::<(String,)>("SELECT CAST(value AS TEXT) FROM config WHERE key = ?1", &["low_stock_below".into()])
        .map_err(|e| fail(&e))?;
    let (text,) = rows.next().ok_or_else(|| fail(&"config has no row with that key"))?.map_err(|e| fail(&e))?;
    text.trim().parse().map_err(|_| fail(&format_args!("{text:?} is not an integer")))
}

/// Reads this host's `stock` table into a [`Visit`].
fn read_stock(low_stock_below: i64) -> Result<Visit> {
    let stock = Table::open("stock")?;
    let mut visit = Visit::default();
    for row in stock.query::<StockRow>("SELECT sku, quantity, unit_cents FROM stock", &[])? {
        let row = row?;
        let value = row.quantity.checked_mul(row.unit_cents).ok_or_else(|| overflow(&row.sku))?;
        visit.rows += 1;
        visit.value_cents = checked_add(visit.value_cents, value, &row.sku)?;
        if row.quantity < low_stock_below {
            visit.low_stock_rows += 1;
        }
        let total = visit.quantity_by_sku.entry(row.sku).or_default();
        *total = total.checked_add(row.quantity).ok_or_else(|| overflow("a SKU"))?;
    }
    Ok(visit)
}

impl Survey {
    /// Adds what `host` had to the totals.
    fn add(&mut self, host: &str, visit: Visit) -> Result<()> {
        self.hosts_visited.push(host.to_owned());
        self.rows_seen += visit.rows;
        self.low_stock_rows += visit.low_stock_rows;
        self.total_value_cents = checked_add(self.total_value_cents, visit.value_cents, host)?;
        for (sku, quantity) in visit.quantity_by_sku {
            let total = self.quantity_by_sku.entry(sku).or_default();
            *total = total.checked_add(quantity).ok_or_else(|| overflow(host))?;
        }
        Ok(())
    }
}

/// `a + b`, or an error: a total that wrapped around would be silently wrong.
fn checked_add(a: i64, b: i64, at: &str) -> Result<i64> {
    a.checked_add(b).ok_or_else(|| overflow(at))
}

fn overflow(at: &str) -> Error {
    Error::msg(format!("a stock total overflows 64 bits at {at}"))
}

roam_sdk::agent!(StockSurvey, resources: [
    table "stock" by type,
    table "config" by value,
    log "reports" by identifier,
]);
