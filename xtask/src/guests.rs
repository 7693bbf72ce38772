//! The C guests: `agents/c/*.c`, built with clang and wasm-ld against `sdk/c/roam.h` into
//! `agents/target/c/<stem>.wasm`, next to the Rust modules' target directory.
//!
//! A file whose stem ends in `_wasi` is built against wasi-libc as a reactor; every other one
//! is built freestanding, with no libc at all (roam.h brings what it needs). The toolchain is
//! Debian's: clang, lld's wasm-ld, wasi-libc and the wasm32 compiler-rt builtins, installed with
//! apt-get when they are missing and apt-get is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::{apt_install, repo_root, run, step, succeeds};

/// The Debian packages that hold the toolchain: clang; lld (wasm-ld); wasi-libc (the libc and
/// its headers for `--target=wasm32-wasi`); the wasm32 compiler-rt builtins (`__multi3` and the
/// like, which clang may call for 128-bit and long double arithmetic).
const PACKAGES: [&str; 4] = ["clang", "lld", "wasi-libc", "libclang-rt-dev-wasm32"];

/// Where wasi-libc's sysroot is in Debian from trixie on, and in wasi-sdk. Bookworm's wasi-libc
/// instead installs into clang's multiarch directories (/usr/include/wasm32-wasi,
/// /usr/lib/wasm32-wasi), which Debian's clang searches without a `--sysroot`.
const WASI_SYSROOT: &str = "/usr/share/wasi-sysroot";

/// Flags for every C guest.
const COMMON_FLAGS: &[&str] = &[
    // The C the examples are written in; a warning in an example is a bug in it.
    "-std=c11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    // The C stack (for locals whose address is taken, and big ones) lives in linear memory.
    // 64 KiB is plenty for code that keeps its data on the heap; an agent carries only the
    // pages of it that were written.
    "-Wl,-z,stack-size=65536",
    // wasm-ld exports the memory as "memory", which the host requires, unless told to import
    // it; no flag needed. Entries are exported by name in the source (roam.h's ROAM_EXPORT,
    // clang's export_name), so no --export flags either, and an unknown import fails the link
    // (no --allow-undefined): roam.h declares each one with its module and name.
];

/// Flags for a guest with no libc (`--target=wasm32`, unknown OS: no WASI imports at all).
const FREESTANDING_FLAGS: &[&str] = &[
    "--target=wasm32",
    // <stdint.h> and friends from clang itself, and no assumption that a libc is there.
    "-ffreestanding",
    // Never the build machine's own headers (/usr/include is for another architecture).
    "-nostdlibinc",
    // No crt1.o, no libc: roam.h brings memcpy and an allocator. The builtins archive is added
    // by hand (see `Toolchain::builtins`), since -nostdlib leaves it out too.
    "-nostdlib",
    // The entry points are exported functions: there is no `main` or `_start` to call them.
    "-Wl,--no-entry",
    // The stack at the bottom of memory, below the data: an overflow runs off address 0 and
    // traps, instead of overwriting the statics above it (an agent's state).
    "-Wl,--stack-first",
];

/// Flags for a guest against wasi-libc (`_wasi.c`).
const WASI_FLAGS: &[&str] = &[
    "--target=wasm32-wasi",
    // A reactor: libc's crt1-reactor.o exports `_initialize` (the constructors, which the host
    // runs first) instead of `_start` running main and exiting; it is also the link's entry,
    // so there is no --no-entry here.
    "-mexec-model=reactor",
];

/// Where the toolchain's parts are.
struct Toolchain {
    /// compiler-rt's builtins for wasm32, for the freestanding guests.
    builtins: PathBuf,
    /// `--sysroot` for wasi-libc, if clang does not find it by itself.
    wasi_sysroot: Option<PathBuf>,
}

impl Toolchain {
    /// The toolchain, or what is missing from it.
    fn find() -> Result<Self, Vec<&'static str>> {
        let mut missing = Vec::new();
        if !succeeds(Command::new("clang").arg("--version")) {
            missing.push("clang");
        }
        if !succeeds(Command::new("wasm-ld").arg("--version")) {
            missing.push("wasm-ld");
        }
        // clang names the archive it would link for wasm32-wasi (Debian ships the builtins for
        // that triple only; they call nothing from WASI, so freestanding code can use them).
        let builtins = clang_prints(&["--target=wasm32-wasi", "-print-libgcc-file-name"]);
        if builtins.as_deref().is_none_or(|b| !b.is_file()) {
            missing.push("the wasm32 compiler-rt builtins");
        }
        let wasi_sysroot = if Path::new(WASI_SYSROOT).is_dir() {
            Some(PathBuf::from(WASI_SYSROOT))
        } else {
            // `-print-file-name` answers the name unchanged when clang cannot find the file.
            let libc = clang_prints(&["--target=wasm32-wasi", "-print-file-name=libc.a"]);
            if libc.is_none_or(|l| !l.is_absolute() || !l.is_file()) {
                missing.push("wasi-libc");
            }
            None
        };
        match builtins {
            Some(builtins) if missing.is_empty() => Ok(Self { builtins, wasi_sysroot }),
            _ => Err(missing),
        }
    }

    /// The clang command that builds `source` into `out`.
    fn command(&self, source: &Path, out: &Path, include: &Path) -> Command {
        let mut cmd = Command::new("clang");
        let wasi = source.file_stem().is_some_and(|s| s.to_string_lossy().ends_with("_wasi"));
        if wasi {
            cmd.args(WASI_FLAGS);
            if let Some(sysroot) = &self.wasi_sysroot {
                cmd.arg(format!("--sysroot={}", sysroot.display()));
            }
        } else {
            cmd.args(FREESTANDING_FLAGS);
        }
        cmd.args(COMMON_FLAGS).arg("-I").arg(include).arg("-o").arg(out).arg(source);
        if !wasi {
            cmd.arg(&self.builtins);
        }
        cmd
    }
}

/// What clang prints for `args` (a path), if it runs.
fn clang_prints(args: &[&str]) -> Option<PathBuf> {
    let out = Command::new("clang").args(args).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(text.trim()))
}

/// Installs the toolchain with apt-get if it is missing; elsewhere says what to install.
fn toolchain() -> Result<Toolchain> {
    let missing = match Toolchain::find() {
        Ok(found) => return Ok(found),
        Err(missing) => missing,
    };
    apt_install(
        &format!("the C guests (agents/c), which lack {}", missing.join(", ")),
        &PACKAGES,
        "install clang, wasm-ld (LLVM's lld), wasi-libc and compiler-rt's builtins for wasm32",
    )?;
    Toolchain::find().map_err(|missing| {
        anyhow::anyhow!("after installing {}, the C guests still lack {}", PACKAGES.join(", "), missing.join(", "))
    })
}

/// When `path` was last modified, if it exists.
fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// Builds every `agents/c/*.c` into `agents/target/c/`, skipping those whose module is newer
/// than its source, roam.h and this xtask binary (whose flags may have changed).
pub fn build_c() -> Result<()> {
    let root = repo_root();
    let (sources, include, target) = (root.join("agents/c"), root.join("sdk/c"), root.join("agents/target/c"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sources)
        .with_context(|| format!("cannot list {}", sources.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", sources.display()))?;
    files.retain(|f| f.extension().is_some_and(|e| e == "c"));
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    step("Building the C guests (agents/c, clang for wasm32)");
    let toolchain = toolchain()?;
    std::fs::create_dir_all(&target).with_context(|| format!("cannot create {}", target.display()))?;
    let xtask = std::env::current_exe().ok().and_then(|exe| modified(&exe));
    let header = modified(&include.join("roam.h"));
    for source in files {
        let stem = source.file_stem().context("a C file without a name")?.to_string_lossy().into_owned();
        let out = target.join(format!("{stem}.wasm"));
        let inputs = [modified(&source), header, xtask];
        if let Some(built) = modified(&out)
            && inputs.iter().all(|input| input.is_some_and(|t| t <= built))
        {
            println!("{} is up to date", out.display());
            continue;
        }
        run(&mut toolchain.command(&source, &out, &include))?;
    }
    Ok(())
}
