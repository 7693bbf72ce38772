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

use roam_sdk::{ColumnBatch, Error, Table, Value, Values};
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
struct Group {
    flag: String,
    status: String,
    quantity: i64,
    price: i128,
    discounted: i128,
    charged: i128,
    discount: i128,
    count: i64,
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
    let mut scale = 0u32;
    while let Some(batch) = batches.next_batch()? {
        let (Values::Text(flags), Values::Text(statuses)) = (batch.column(0)?.values, batch.column(1)?.values) else {
            return Err(Error::msg("l_returnflag and l_linestatus must be text"));
        };
        let quantities = integers(batch, 2)?;
        let ((prices, s), (discounts, _), (taxes, _)) = (decimals(batch, 3)?, decimals(batch, 4)?, decimals(batch, 5)?);
        scale = s as u32;
        let one = 10i128.pow(scale);
        for row in 0..batch.rows() {
            let (flag, status) = (flags.get(row), statuses.get(row));
            let at = match groups.iter().position(|g| g.flag == flag && g.status == status) {
                Some(at) => at,
                None => {
                    groups.push(Group {
                        flag: flag.into(),
                        status: status.into(),
                        quantity: 0,
                        price: 0,
                        discounted: 0,
                        charged: 0,
                        discount: 0,
                        count: 0,
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[at];
            let discounted = prices[row] * (one - discounts[row]);
            g.quantity += quantities[row];
            g.price += prices[row];
            g.discounted += discounted;
            g.charged += discounted * (one + taxes[row]);
            g.discount += discounts[row];
            g.count += 1;
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
