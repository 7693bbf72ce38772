//! What the benchmarks share: signing their modules, and summarising and printing figures.

use anyhow::Result;
use roam_keys::{Kind, SecretKey, SignRequest};

/// A query that answers CBOR `true` at once: the smallest evaluation.
pub const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// An access policy that grants every right to anyone: the benchmarks measure speed, and their
/// clients are anonymous.
pub fn open_access(trust_dir: &std::path::Path) -> Result<()> {
    let rights = ["eval", "publish", "fetch_code", "fetch_query", "fetch_agent", "list", "launch", "recall", "admin"];
    let text: String = rights.iter().map(|r| format!("{r} = [\"anyone\"]\n")).collect();
    std::fs::write(trust_dir.join(roam_host::access::ACCESS_FILE), format!("[allow]\n{text}"))?;
    Ok(())
}

/// Signs `wasm` with `key` as version 1.0.0 of `name`, valid for an hour.
pub fn sign(key: &SecretKey, wasm: &[u8], kind: Kind, name: &str, caps: &[&str]) -> Result<Vec<u8>> {
    let now = roam_host::state::now_secs();
    let request = SignRequest {
        kind,
        name: name.into(),
        version: semver::Version::new(1, 0, 0),
        issued_at: now,
        not_before: now,
        expires: now + 3600,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    };
    Ok(roam_keys::sign_module(wasm, key, request)?)
}

/// Sorted samples.
pub struct Stats(pub Vec<f64>);

impl Stats {
    pub fn new(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self(v)
    }

    /// The `p` quantile (0 to 1), the nearest sample.
    pub fn q(&self, p: f64) -> f64 {
        let i = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[i]
    }

    pub fn median(&self) -> f64 {
        self.q(0.5)
    }
}

/// A duration in seconds, in the unit that suits it.
pub fn time(d: f64) -> String {
    match d {
        d if d < 1e-6 => format!("{:.0} ns", d * 1e9),
        d if d < 1e-3 => format!("{:.1} µs", d * 1e6),
        d if d < 1.0 => format!("{:.2} ms", d * 1e3),
        d => format!("{d:.2} s"),
    }
}

/// A number of bytes, in the unit that suits it.
pub fn bytes(n: f64) -> String {
    match n {
        n if n < 10_000.0 => format!("{n:.0} B"),
        n if n < 10e6 => format!("{:.1} KB", n / 1e3),
        n if n < 10e9 => format!("{:.1} MB", n / 1e6),
        n => format!("{:.2} GB", n / 1e9),
    }
}
