//! A query module for a columnar `lineitem` table (order lines, as in the TPC-H benchmark): two
//! analytic reports, each computed either by the host's engine in SQL or in this module over
//! column batches, with the same answer. Sign it as a query with the capability `table:lineitem`
//! and run it with `roam eval lineitem_report.signed.wasm --host HOST --input '{"report":
//! "revenue", "via": "columns"}'`.
//!
//! - `revenue`: what the discounts of 1994 cost, over lines of fewer than 24 units discounted
//!   by 5 to 7 percent (an exact decimal, as text).
//! - `summary`: per return flag and line status, the quantities, prices, discounted prices and
//!   charges shipped up to 90 days before 1998-12-01: sums (exact), averages and a count.
//! - `scan`: reads four whole columns and counts the values it read, to measure how fast
//!   values reach the module.
//!
//! Through `columns`, the engine still filters (the `WHERE` clause) and the module receives
//! only the rows that pass, column by column, and aggregates them itself.

use roam_sdk::{ColumnBatch, Error, Strings, Table, Value, Values};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Report {
    Revenue,
    Summary,
    Scan,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Via {
    Sql,
    Columns,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    report: Report,
    via: Via,
}

/// Rows of the report: one row for `revenue` and `scan`, one per group for `summary`.
#[derive(Serialize)]
struct Output {
    rows: Vec<Vec<Value>>,
}

const REVENUE_WHERE: &str = "l_shipdate >= date '1994-01-01' AND l_shipdate < date '1994-01-01' + interval '1' year \
     AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01 AND l_quantity < 24";
const SUMMARY_WHERE: &str = "l_shipdate <= date '1998-12-01' - interval '90' day";

fn lineitem_report(input: Input) -> roam_sdk::Result<Output> {
    let table = Table::open("lineitem")?;
    let rows = match (input.report, input.via) {
        (Report::Revenue, Via::Sql) => {
            sql(&table, &format!("SELECT sum(l_extendedprice * l_discount) FROM lineitem WHERE {REVENUE_WHERE}"))?
        }
        (Report::Summary, Via::Sql) => sql(
            &table,
            &format!(
                "SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice), \
                 sum(l_extendedprice * (1 - l_discount)), sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)), \
                 avg(l_quantity), avg(l_extendedprice), avg(l_discount), count(*) \
                 FROM lineitem WHERE {SUMMARY_WHERE} GROUP BY l_returnflag, l_linestatus \
                 ORDER BY l_returnflag, l_linestatus"
            ),
        )?,
        (Report::Scan, Via::Sql) => sql(
            &table,
            "SELECT count(l_quantity) + count(l_extendedprice) + count(l_discount) + count(l_shipdate) FROM lineitem",
        )?,
        (Report::Revenue, Via::Columns) => revenue(&table)?,
        (Report::Summary, Via::Columns) => summary(&table)?,
        (Report::Scan, Via::Columns) => scan(&table)?,
    };
    Ok(Output { rows })
}

fn sql(table: &Table, sql: &str) -> roam_sdk::Result<Vec<Vec<Value>>> {
    table.query::<Vec<Value>>(sql, &[])?.collect()
}

/// The unscaled values and scale of decimal column `index`.
fn decimals(batch: &ColumnBatch, index: usize) -> roam_sdk::Result<(&[i128], i8)> {
    let column = batch.column(index)?;
    match column.values {
        Values::Decimal { values, scale, .. } => Ok((values, scale)),
        _ => Err(Error::msg(format!("column {} must be declared decimal(P,S)", column.name))),
    }
}

fn integers(batch: &ColumnBatch, index: usize) -> roam_sdk::Result<&[i64]> {
    let column = batch.column(index)?;
    match column.values {
        Values::Integer(values) => Ok(values),
        _ => Err(Error::msg(format!("column {} must be integer", column.name))),
    }
}

/// `value / 10^scale`, exactly, as text.
fn decimal(value: i128, scale: u32) -> Value {
    let unit = 10i128.pow(scale);
    let sign = if value < 0 { "-" } else { "" };
    let (whole, fraction) = (value.unsigned_abs() / unit as u128, value.unsigned_abs() % unit as u128);
    Value::Text(if scale == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction:0width$}", width = scale as usize)
    })
}

fn revenue(table: &Table) -> roam_sdk::Result<Vec<Vec<Value>>> {
    let mut batches =
        table.query_columns(&format!("SELECT l_extendedprice, l_discount FROM lineitem WHERE {REVENUE_WHERE}"), &[])?;
    let (mut sum, mut scale) = (0i128, 0);
    while let Some(batch) = batches.next_batch()? {
        let ((prices, price_scale), (discounts, discount_scale)) = (decimals(batch, 0)?, decimals(batch, 1)?);
        scale = (price_scale + discount_scale) as u32;
        sum += prices.iter().zip(discounts).map(|(p, d)| p * d).sum::<i128>();
    }
    // No row passed: SQL's sum of nothing is null.
    Ok(vec![vec![if scale == 0 && sum == 0 { Value::Null } else { decimal(sum, scale) }]])
}

/// One group of the summary: sums in the columns' own scales.
#[derive(Default)]
struct Group {
    flag: String,
    status: String,
    /// `flag` and `status` packed into one number when they are short, as they usually are
    /// (one letter each): finding a row's group is then one comparison per group.
    key: Option<u64>,
    quantity: i64,
    price: i128,
    discounted: i128,
    charged: i128,
    discount: i128,
    count: i64,
}

/// `flag` and `status` as one number, if together they take at most 7 bytes: the first's
/// length, then the bytes of both.
fn pack(flag: &[u8], status: &[u8]) -> Option<u64> {
    (flag.len() + status.len() <= 7).then(|| {
        // Byte by byte: a copy of a few bytes would be a call in Wasm.
        let bytes = flag.iter().chain(status);
        bytes.enumerate().fold(flag.len() as u64, |key, (i, b)| key | (*b as u64) << (8 * (i + 1)))
    })
}

/// The index of the group of (`flag`, `status`), added if new.
fn group_of(groups: &mut Vec<Group>, flag: &str, status: &str) -> usize {
    let key = pack(flag.as_bytes(), status.as_bytes());
    let found = match key {
        Some(key) => groups.iter().position(|g| g.key == Some(key)),
        None => groups.iter().position(|g| g.flag == flag && g.status == status),
    };
    found.unwrap_or_else(|| {
        groups.push(Group { flag: flag.into(), status: status.into(), key, ..Group::default() });
        groups.len() - 1
    })
}

/// The largest magnitude among `values`.
fn largest(values: &[i128]) -> u128 {
    values.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0)
}

/// Each row's group in `ids`. One-byte flags and statuses (the usual) are looked up in
/// `by_bytes`, indexed by the two bytes (0: not seen yet, else the group's index + 1); other
/// text through [`group_of`].
fn group_ids(groups: &mut Vec<Group>, by_bytes: &mut [u16], flags: Strings, statuses: Strings, ids: &mut Vec<usize>) {
    let rows = flags.offsets.len().saturating_sub(1);
    let one_byte = |s: &Strings| s.offsets.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 1);
    ids.clear();
    if one_byte(&flags) && one_byte(&statuses) && groups.len() < u16::MAX as usize {
        let (flag_bytes, status_bytes) = (flags.text.as_bytes(), statuses.text.as_bytes());
        for (f, s) in flag_bytes.iter().zip(status_bytes).take(rows) {
            let slot = &mut by_bytes[(*f as usize) << 8 | *s as usize];
            if *slot == 0 {
                let (f, s) = (core::slice::from_ref(f), core::slice::from_ref(s));
                let (f, s) = (core::str::from_utf8(f).unwrap_or_default(), core::str::from_utf8(s).unwrap_or_default());
                *slot = group_of(groups, f, s) as u16 + 1;
            }
            ids.push(*slot as usize - 1);
        }
    } else {
        ids.extend((0..rows).map(|row| group_of(groups, flags.get(row), statuses.get(row))));
    }
}

fn summary(table: &Table) -> roam_sdk::Result<Vec<Vec<Value>>> {
    let mut batches = table.query_columns(
        &format!(
            "SELECT l_returnflag, l_linestatus, l_quantity, l_extendedprice, l_discount, l_tax \
             FROM lineitem WHERE {SUMMARY_WHERE}"
        ),
        &[],
    )?;
    let mut groups: Vec<Group> = Vec::new();
    let mut by_bytes = vec![0u16; 1 << 16];
    let mut ids: Vec<usize> = Vec::new();
    // Per group, this batch's sums in 64 bits: price, discounted, charged, discount.
    let mut partial: Vec<[i64; 4]> = Vec::new();
    let mut scale = 0u32;
    while let Some(batch) = batches.next_batch()? {
        if (0..batch.columns()).any(|i| batch.column(i).is_ok_and(|c| c.has_nulls())) {
            return Err(Error::msg("the summary expects no null value in its columns"));
        }
        let (Values::Text(flags), Values::Text(statuses)) = (batch.column(0)?.values, batch.column(1)?.values) else {
            return Err(Error::msg("l_returnflag and l_linestatus must be text"));
        };
        let quantities = integers(batch, 2)?;
        let ((prices, s), (discounts, ds), (taxes, ts)) =
            (decimals(batch, 3)?, decimals(batch, 4)?, decimals(batch, 5)?);
        if ds != s || ts != s {
            return Err(Error::msg("l_extendedprice, l_discount and l_tax must have the same scale"));
        }
        scale = s as u32;
        group_ids(&mut groups, &mut by_bytes, flags, statuses, &mut ids);
        for (g, q) in ids.iter().zip(quantities) {
            groups[*g].quantity += q;
            groups[*g].count += 1;
        }
        let one = 10i128.pow(scale);
        let rows = ids.iter().zip(prices).zip(discounts).zip(taxes);
        // Wasm has no 128-bit multiplication: when no product in this batch, nor the sum of
        // all of them, can pass 64 bits, the batch is summed in 64 bits (exactly the same
        // numbers), and only the totals are kept in 128.
        let bound = largest(prices)
            .checked_mul(one as u128 + largest(discounts))
            .and_then(|b| b.checked_mul(one as u128 + largest(taxes)))
            .and_then(|b| b.checked_mul(batch.rows() as u128));
        if bound.is_some_and(|b| b <= i64::MAX as u128) {
            let one = one as i64;
            partial.clear();
            partial.resize(groups.len(), [0; 4]);
            for (((g, p), d), t) in rows {
                let (p, d, t) = (*p as i64, *d as i64, *t as i64);
                let sums = &mut partial[*g];
                let discounted = p * (one - d);
                sums[0] += p;
                sums[1] += discounted;
                sums[2] += discounted * (one + t);
                sums[3] += d;
            }
            for (g, sums) in groups.iter_mut().zip(&partial) {
                g.price += sums[0] as i128;
                g.discounted += sums[1] as i128;
                g.charged += sums[2] as i128;
                g.discount += sums[3] as i128;
            }
        } else {
            for (((g, p), d), t) in rows {
                let g = &mut groups[*g];
                let discounted = p * (one - d);
                g.price += p;
                g.discounted += discounted;
                g.charged += discounted * (one + t);
                g.discount += d;
            }
        }
    }
    groups.sort_by(|a, b| (&a.flag, &a.status).cmp(&(&b.flag, &b.status)));
    let unit = 10f64.powi(scale as i32);
    Ok(groups
        .into_iter()
        .map(|g| {
            let n = g.count as f64;
            vec![
                Value::Text(g.flag),
                Value::Text(g.status),
                Value::Integer(g.quantity),
                decimal(g.price, scale),
                decimal(g.discounted, 2 * scale),
                decimal(g.charged, 3 * scale),
                Value::Real(g.quantity as f64 / n),
                Value::Real(g.price as f64 / unit / n),
                Value::Real(g.discount as f64 / unit / n),
                Value::Integer(g.count),
            ]
        })
        .collect())
}

fn scan(table: &Table) -> roam_sdk::Result<Vec<Vec<Value>>> {
    let mut batches =
        table.query_columns("SELECT l_quantity, l_extendedprice, l_discount, l_shipdate FROM lineitem", &[])?;
    let mut values = 0i64;
    while let Some(batch) = batches.next_batch()? {
        for index in 0..batch.columns() {
            let column = batch.column(index)?;
            let n = match column.values {
                Values::Integer(v) => v.len(),
                Values::Decimal { values, .. } => values.len(),
                Values::Date(v) => v.len(),
                _ => 0,
            };
            // Nulls are not values.
            values += if column.has_nulls() { (0..n).filter(|row| !column.is_null(*row)).count() } else { n } as i64;
        }
    }
    Ok(vec![vec![Value::Integer(values)]])
}

roam_sdk::query!(lineitem_report);
