//! Rules about the code itself, checked rather than hoped for: one lint table, and test-only
//! code kept out of what a plain build ships.

use anyhow::{Context, Result};
use roam_tests::repo_root;

/// The text of `[workspace.lints.*]` in a manifest: from its first lint table to the next table
/// that is not one.
fn lint_tables(manifest: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(repo_root().join(manifest)).with_context(|| format!("cannot read {manifest}"))?;
    let mut tables = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[workspace.lints.");
        }
        if inside && !line.trim().is_empty() {
            tables.push_str(line);
            tables.push('\n');
        }
    }
    anyhow::ensure!(!tables.is_empty(), "{manifest} has no [workspace.lints.*] table");
    Ok(tables)
}

#[test]
fn the_guest_workspace_has_the_same_lint_table_as_the_host_workspace() -> Result<()> {
    let (host, guests) = (lint_tables("Cargo.toml")?, lint_tables("agents/Cargo.toml")?);
    assert_eq!(guests, host, "agents/Cargo.toml's lint table must be a copy of the root's; copy it over");
    Ok(())
}

#[test]
fn a_plain_build_leaves_the_test_only_features_out() -> Result<()> {
    let root = std::fs::read_to_string(repo_root().join("Cargo.toml"))?;
    let members = root
        .lines()
        .find_map(|l| l.strip_prefix("default-members = "))
        .context("the root Cargo.toml has no default-members")?;
    // The tests crate turns on fault injection and the hostile-module builders; in a plain
    // `cargo build`, feature unification would otherwise carry them into the roam binary.
    assert!(!members.contains("\"tests\""), "default-members must leave out tests: {members}");
    for manifest in ["host/Cargo.toml", "keys/Cargo.toml"] {
        let text = std::fs::read_to_string(repo_root().join(manifest))?;
        assert!(
            !text.lines().any(|l| l.starts_with("default = ")),
            "{manifest} has default features; a test-only feature must never be on by default"
        );
    }
    Ok(())
}
