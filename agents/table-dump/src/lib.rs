//! A query module that returns the `sales` table itself, a page of rows at a time: what a
//! client does when it ships the data to its code instead of the code to the data. The
//! benchmark compares it with `sales-by-region`. Sign it as a query with the capability
//! `table:sales` and run it with `roam eval table_dump.signed.wasm --host 127.0.0.1:7700 --input
//! '{"after": 0, "limit": 3}'`.
//!
//! The result is `{"rows": [[rowid, id, day, region, product, quantity, amount_cents], …],
//! "last": rowid}`; `last` is the rowid to pass as `after` for the next page, and `null` once
//! the table is exhausted.

use roam_sdk::{Table, Value};
use serde::{Deserialize, Serialize};

/// Which page: the rows after rowid `after`, at most `limit` of them (a page must fit the host's
/// result limit, 8 MiB by default: about 200,000 rows).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    after: i64,
    limit: u32,
}

/// One row, every column; serialized as an array.
#[derive(Deserialize, Serialize)]
struct Sale(i64, i64, i64, String, String, i64, i64);

#[derive(Serialize)]
struct Output {
    rows: Vec<Sale>,
    last: Option<i64>,
}

fn table_dump(input: Input) -> roam_sdk::Result<Output> {
    let sales = Table::open("sales")?;
    // Ranges of rowid are index lookups, so each page costs only its own rows.
    let rows = sales
        .query::<Sale>(
            "SELECT rowid, id, day, region, product, quantity, amount_cents FROM sales \
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            &[Value::Integer(input.after), Value::Integer(input.limit.into())],
        )?
        .collect::<roam_sdk::Result<Vec<Sale>>>()?;
    let last = match rows.last() {
        Some(row) if rows.len() == input.limit as usize => Some(row.0),
        _ => None,
    };
    Ok(Output { rows, last })
}

roam_sdk::query!(table_dump);
