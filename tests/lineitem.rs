//! Deterministic order lines in the columns of TPC-H's `lineitem`, for the columnar engine's
//! tests and the analytics benchmark (which includes this file by path). Line `i` is always
//! the same, so a test recomputes natively what a query computed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Writes `n` order lines as CSV: quantities 1 to 50,
/// prices with cents, discounts 0.00 to 0.10, taxes 0.00 to 0.08, four pairs of return flag
/// and line status, ship dates from 1992 to 1998. Line `i` is [`line`]`(i)`.
pub fn write_csv(path: &Path, n: usize) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "l_orderkey,l_quantity,l_extendedprice,l_discount,l_tax,l_returnflag,l_linestatus,l_shipdate")?;
    for i in 0..n {
        let l = line(i);
        writeln!(
            out,
            "{},{},{}.{:02},0.{:02},0.{:02},{},{},{}-{:02}-{:02}",
            i / 4,
            l.quantity,
            l.price_cents / 100,
            l.price_cents % 100,
            l.discount,
            l.tax,
            l.flag,
            l.status,
            l.year,
            1 + i % 12,
            1 + i % 28
        )?;
    }
    out.flush()
}

/// The fields of order line `i` that a test recomputes natively.
#[derive(Debug, Clone, Copy)]
pub struct LineItem {
    /// 1 to 50.
    pub quantity: i64,
    /// The extended price, in cents.
    pub price_cents: i64,
    /// In hundredths: 0 to 10.
    pub discount: i64,
    /// In hundredths: 0 to 8.
    pub tax: i64,
    /// The return flag.
    pub flag: &'static str,
    /// The line status.
    pub status: &'static str,
    /// The ship date's year (its month is `1 + i % 12`, its day `1 + i % 28`).
    pub year: i64,
}

/// Order line `i` of [`write_lineitem_csv`].
pub fn line(i: usize) -> LineItem {
    let (flag, status) = [("A", "F"), ("N", "F"), ("N", "O"), ("R", "F")][i % 4];
    let i64 = |v: usize| v as i64;
    LineItem {
        quantity: i64(1 + i * 7 % 50),
        price_cents: i64((900 + i * 13 % 100_000) * 100 + i % 100),
        discount: i64(i % 11),
        tax: i64(i % 9),
        flag,
        status,
        year: i64(1992 + i / 5 % 7),
    }
}
