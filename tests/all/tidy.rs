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
        let default = text.lines().find(|l| l.starts_with("default = ")).unwrap_or_default();
        assert!(
            !["fault-injection", "testing"].iter().any(|f| default.contains(f)),
            "{manifest}'s default features name a test-only feature: {default}"
        );
    }
    Ok(())
}

/// roam-host's modules from the bottom up. A module may use the modules of the layers below its
/// own and nothing else: not its own layer's neighbours, not anything above. ARCHITECTURE.md
/// says the same in prose; a new module must be placed here.
const LAYERS: &[&[&str]] = &[
    // Helpers every layer may use.
    &["sync"],
    &["cache", "fault", "workers", "metrics", "trace"],
    // Storage, and the shape of an agent's memory.
    &["state", "snapshot"],
    &["resources"],
    // Running modules; what crosses the network.
    &["engine", "protocol", "transport"],
    &["handshake"],
    &["access", "client", "admission"],
    &["fetch", "config", "refusal", "known_hosts"],
    &["local", "agents"],
    &["host"],
    &["server", "status"],
    // The binary.
    &["main"],
];

/// The layer of a module of roam-host, by name.
fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules a source file names, as `crate::NAME` (or `roam_host::NAME` in the
/// binary), comments left out.
fn modules_used(source: &str, prefix: &str) -> std::collections::BTreeSet<String> {
    let mut used = std::collections::BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                used.insert(name);
            }
        }
    }
    used
}

#[test]
fn the_host_crates_layers_only_use_the_layers_below_them() -> Result<()> {
    let src = repo_root().join("host/src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut broken = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src)?.to_string_lossy().into_owned();
        if relative == "lib.rs" {
            continue;
        }
        // host/src/engine/guest.rs belongs to `engine`, host/src/state.rs to `state`.
        let module = relative.split(['/', '.']).next().unwrap_or_default().to_owned();
        // The binary's modules (host/src/bin/roam/) are all the top layer, `main`.
        let module = if module == "bin" { "main".to_owned() } else { module };
        let Some(own) = layer(&module) else {
            broken.push(format!("{relative}: module {module} has no layer in tests/all/tidy.rs"));
            continue;
        };
        let source = std::fs::read_to_string(&file)?;
        let prefix = if module == "main" { "roam_host::" } else { "crate::" };
        for used in modules_used(&source, prefix) {
            match layer(&used) {
                _ if used == module => {}
                Some(theirs) if theirs < own => {}
                Some(_) => broken.push(format!("{relative} ({module}) uses {used}, which is not below it")),
                None => broken.push(format!("{relative} uses {used}, which has no layer")),
            }
        }
    }
    assert!(broken.is_empty(), "layer rule broken:\n{}", broken.join("\n"));
    Ok(())
}
