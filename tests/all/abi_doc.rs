//! sdk/ABI.md cannot drift from the code: every CBOR example in it decodes, whole, into the
//! Rust type its first line names.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use serde::de::DeserializeOwned;

/// The examples: (line, type, bytes).
fn examples(doc: &str) -> Result<Vec<(usize, String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((at, line)) = lines.next() {
        if line.trim() != "```cbor-hex" {
            continue;
        }
        let (_, first) = lines.next().context("a cbor-hex block ends at once")?;
        let ty = first.strip_prefix("# ").with_context(|| format!("line {}: no `# type` line", at + 2))?;
        let mut hex = String::new();
        for (_, line) in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            hex.extend(line.chars().filter(|c| !c.is_whitespace()));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .with_context(|| format!("line {}: not hex: {hex}", at + 1))?;
        out.push((at + 1, ty.trim().to_owned(), bytes));
    }
    Ok(out)
}

/// Decodes `bytes` as a `T`, requiring every byte to be used.
fn decodes<T: DeserializeOwned>(bytes: &[u8]) -> Result<()> {
    let mut rest = bytes;
    ciborium::from_reader::<T, _>(&mut rest).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(rest.is_empty(), "{} bytes left over", rest.len());
    Ok(())
}

#[test]
fn every_cbor_example_in_the_abi_document_decodes_to_its_type() -> Result<()> {
    let doc = std::fs::read_to_string(roam_tests::repo_root().join("sdk/ABI.md"))?;
    let examples = examples(&doc)?;
    let mut seen = BTreeMap::<String, usize>::new();
    for (line, ty, bytes) in &examples {
        let decoded = match ty.as_str() {
            "std::collections::BTreeMap<String, i64>" => decodes::<BTreeMap<String, i64>>(bytes),
            "std::collections::BTreeMap<String, u32>" => decodes::<BTreeMap<String, u32>>(bytes),
            "ciborium::Value" => decodes::<ciborium::Value>(bytes),
            "Vec<(String, i64)>" => decodes::<Vec<(String, i64)>>(bytes),
            "roam_abi::Value" => decodes::<roam_abi::Value>(bytes),
            "Vec<roam_abi::Value>" => decodes::<Vec<roam_abi::Value>>(bytes),
            "Vec<Vec<roam_abi::Value>>" => decodes::<Vec<Vec<roam_abi::Value>>>(bytes),
            "roam_abi::Next" => decodes::<roam_abi::Next>(bytes),
            "roam_abi::Manifest" => decodes::<roam_abi::Manifest>(bytes),
            "roam_abi::Binding" => decodes::<roam_abi::Binding>(bytes),
            "roam_abi::Arrival" => decodes::<roam_abi::Arrival>(bytes),
            "roam_abi::Bound" => decodes::<roam_abi::Bound>(bytes),
            "roam_abi::Action" => decodes::<roam_abi::Action>(bytes),
            "roam_host::snapshot::Snapshot" => decodes::<roam_host::snapshot::Snapshot>(bytes),
            other => bail!("sdk/ABI.md line {line}: this test does not know the type {other}; add it here"),
        };
        decoded.with_context(|| format!("sdk/ABI.md line {line}: the example does not decode as {ty}"))?;
        *seen.entry(ty.clone()).or_default() += 1;
    }
    // Every encoding a guest produces or reads has an example.
    for ty in [
        "roam_abi::Next",
        "roam_abi::Manifest",
        "roam_abi::Arrival",
        "roam_abi::Binding",
        "Vec<Vec<roam_abi::Value>>",
        "Vec<roam_abi::Value>",
    ] {
        ensure!(seen.contains_key(ty), "sdk/ABI.md has no example of {ty}");
    }
    Ok(())
}

/// The checker itself notices a wrong example: a `Next` that is not one.
#[test]
fn a_wrong_example_fails_to_decode() -> Result<()> {
    let doc = "```cbor-hex\n# roam_abi::Next\na1 62 476f 01\n```\n";
    let [(_, ty, bytes)] = examples(doc)?.try_into().map_err(|_| anyhow::anyhow!("one example"))?;
    ensure!(ty == "roam_abi::Next");
    ensure!(decodes::<roam_abi::Next>(&bytes).is_err(), "{{\"Go\": 1}} decoded as a Next");
    ensure!(decodes::<BTreeMap<String, i64>>(&[0xa0, 0x00]).is_err(), "trailing bytes were accepted");
    Ok(())
}
