//! The Zig guest modules (agents/zig/): installs the pinned Zig compiler from PyPI, runs the
//! tests of agents/zig/roam.zig (its CBOR against sdk/ABI.md's examples), and builds each other
//! `.zig` file there to `agents/target/zig/<stem>.wasm`.
//!
//! Zig comes as the PyPI package `ziglang`, which ships the compiler in a wheel: pip is the one
//! installer a fresh Debian has (with python3-pip) that can fetch it from a package registry.
//! It is installed with `pip --target` into the build tree rather than with `--user`: Debian's
//! Python refuses `--user` installs (PEP 668, "externally-managed-environment") and `--target`
//! is exempt, it never touches the user's own Python packages, and `cargo clean`-style removal
//! of agents/target takes it away with everything else built there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{pip_install, repo_root, run, step};

/// The Zig release the modules are written for. Zig's language and standard library still
/// change from one release to the next (containers, I/O, reflection), so it is pinned.
const ZIG_VERSION: &str = "0.17.1";

/// Shared by every module: the imports, CBOR and the entry glue. Not a module of its own.
const LIBRARY: &str = "roam.zig";

/// Installs the pinned Zig if needed, then builds every module of agents/zig/.
pub fn build_zig() -> Result<()> {
    let root = repo_root();
    let out = root.join("agents/target/zig");
    let toolchain = out.join(format!("ziglang-{ZIG_VERSION}"));
    ensure_zig(&toolchain)?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let sources = root.join("agents/zig");
    let mut modules: Vec<PathBuf> = std::fs::read_dir(&sources)
        .with_context(|| format!("cannot list {}", sources.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    modules.retain(|p| p.extension().is_some_and(|e| e == "zig") && p.file_name().is_some_and(|n| n != LIBRARY));
    modules.sort();
    let caches = |cmd: &mut Command| {
        // Zig caches into the source directory by default; keep the tree clean.
        cmd.arg("--cache-dir").arg(out.join("cache")).arg("--global-cache-dir").arg(out.join("global-cache"));
    };

    step(&format!("Testing agents/zig/{LIBRARY} against sdk/ABI.md's CBOR examples (natively)"));
    let mut test = zig(&toolchain);
    // Single-threaded: roam.zig's `heap` is Zig's allocator for single-threaded targets.
    test.current_dir(&sources).args(["test", LIBRARY, "-fsingle-threaded"]);
    caches(&mut test);
    run(&mut test)?;

    step(&format!("Building the Zig modules (agents/zig/, Zig {ZIG_VERSION}, wasm32-freestanding)"));
    for source in &modules {
        let stem = source.file_stem().context("a module without a name")?.to_string_lossy();
        let mut build = zig(&toolchain);
        build
            .current_dir(&sources)
            .arg("build-exe")
            .arg(source)
            .args(["-target", "wasm32-freestanding"])
            // A module has no `main`: the host calls its exported entries, and refuses a start
            // function, which would run again before every entry (and before a restore).
            .arg("-fno-entry")
            // Exports every `export fn` (the entries); the memory is exported as `memory`
            // anyway. It also exports the mutable `__stack_pointer`, which an agent's snapshot
            // then carries under that name.
            .arg("-rdynamic")
            // Safety checks stay on: a bug panics, and roam.zig reports the panic's message as
            // the call's error, instead of corrupting state that an agent carries on.
            .args(["-O", "ReleaseSafe", "-fstrip"])
            // A small stack keeps the initial memory, and every agent snapshot, small (as
            // agents/.cargo/config.toml does for Rust modules). Zig puts the stack below the
            // data, so an overflow traps instead of overwriting the agent's state.
            .args(["--stack", "65536"])
            .arg(format!("-femit-bin={}", out.join(format!("{stem}.wasm")).display()));
        caches(&mut build);
        run(&mut build)?;
    }
    Ok(())
}

/// `python3 -m ziglang`, finding the pinned Zig in `toolchain` (or, failing that, any `ziglang`
/// the Python installation has).
fn zig(toolchain: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", toolchain).args(["-m", "ziglang"]);
    cmd
}

/// Installs Zig `ZIG_VERSION` into `toolchain` with pip, unless that version is there already.
fn ensure_zig(toolchain: &Path) -> Result<()> {
    let version = zig(toolchain).arg("version").output();
    if let Ok(out) = &version
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == ZIG_VERSION
    {
        return Ok(());
    }
    pip_install(&format!("Zig {ZIG_VERSION} (PyPI package ziglang)"), toolchain, &format!("ziglang=={ZIG_VERSION}"))?;
    let out = zig(toolchain).arg("version").output().context("cannot run `python3 -m ziglang version`")?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if got != ZIG_VERSION {
        bail!("pip installed ziglang, but `python3 -m ziglang version` says {got:?}, not {ZIG_VERSION}");
    }
    Ok(())
}
