//! A deterministic sample `sales` dataset, shared by the end-to-end tests and `cargo xtask demo`.
//!
//! Standard library only: xtask includes this file by path (it must not depend on the host), and
//! the tests include it as `roam_tests::sample`. The same `(rows, seed)` always gives the same
//! rows, on every platform, so a test can recompute natively what a query computed remotely.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The regions a sale can belong to.
pub const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];

/// The products on sale.
pub const PRODUCTS: [&str; 12] =
    ["anvil", "bellows", "chisel", "drill", "easel", "file", "gauge", "hammer", "level", "mallet", "pliers", "saw"];

/// The CSV header, in the column order of [`Sale`].
pub const CSV_HEADER: &str = "id,day,region,product,quantity,amount_cents";

/// One row of the `sales` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sale {
    /// 1-based row number, unique within one generated dataset.
    pub id: i64,
    /// Day of the year, `1..=365`.
    pub day: i64,
    /// One of [`REGIONS`].
    pub region: String,
    /// One of [`PRODUCTS`].
    pub product: String,
    /// Units sold, `1..=20`.
    pub quantity: i64,
    /// `quantity` times a unit price of `100..=50_000` cents.
    pub amount_cents: i64,
}

/// Generates `rows` sales from `seed`; deterministic, so tests can recompute results natively.
pub fn generate(rows: usize, seed: u64) -> Vec<Sale> {
    let mut rng = SplitMix64(seed);
    (1..=rows)
        .map(|id| {
            let quantity = rng.between(1, 20);
            Sale {
                id: i64::try_from(id).unwrap_or(i64::MAX),
                day: rng.between(1, 365),
                region: rng.pick(&REGIONS).to_owned(),
                product: rng.pick(&PRODUCTS).to_owned(),
                quantity,
                amount_cents: quantity * rng.between(100, 50_000),
            }
        })
        .collect()
}

/// Writes `sales` as CSV with the header [`CSV_HEADER`], the format `roam host --table` reads.
pub fn write_csv(path: &Path, sales: &[Sale]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "{CSV_HEADER}")?;
    for s in sales {
        // Region and product names are plain words, so no field needs quoting.
        writeln!(out, "{},{},{},{},{},{}", s.id, s.day, s.region, s.product, s.quantity, s.amount_cents)?;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
}

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and good enough for sample data. Written out
/// here rather than taken from a crate so that the data can never change under a dependency
/// update.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (the modulo bias is negligible for these small ranges).
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        let span = hi.abs_diff(lo) + 1;
        lo + i64::try_from(self.next() % span).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let len = u64::try_from(items.len()).unwrap_or(u64::MAX);
        let index = usize::try_from(self.next() % len).unwrap_or(0);
        items.get(index).copied().unwrap_or_default()
    }
}
