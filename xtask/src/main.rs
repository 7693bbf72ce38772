//! Project automation, run as `cargo xtask <command>` from anywhere in the repository.
//!
//! - `agents`: builds the example query modules (a separate wasm32 workspace in `agents/`).
//! - `test`: builds the modules, checks style (fmt, clippy), builds the `roam` binary, runs every
//!   test, then the benchmark's smoke run and a brief pass of each fuzzer.
//! - `demo`: data hosts on loopback: remote evaluation, code on demand and a mobile agent.
//! - `bench`: builds the modules and prints the table of performance figures.
//! - `fuzz`: builds the fuzz targets of `host/fuzz` (cargo fuzz, libFuzzer) and runs each for a
//!   while from its committed seed corpus, printing executions and exec/s; `test` ends with a
//!   brief pass of it unless `ROAM_SKIP_FUZZ=1`.
//!
//! Only the standard library and anyhow: xtask must build quickly and never depend on the host,
//! so the sample data generator is shared with the tests by path, not as a crate.

mod demo;
mod guests;
#[path = "../../tests/sample.rs"]
mod sample;
mod zig;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  agents         build the example query modules (agents/, for wasm32-unknown-unknown)
  test [ARGS]    build the modules, check style (cargo fmt --check and cargo clippy
                 -D warnings, both workspaces), build the roam binary, then run every
                 test; ARGS go to the test runner (cargo nextest run, or cargo test) and
                 skip the style check; without ARGS, then the benchmark's smoke run (skipped if ROAM_SKIP_BENCH=1) and 10 s
                 of fuzzing per target (skipped if ROAM_SKIP_FUZZ=1)
  demo           start hosts on loopback: remote evaluation, code on demand and a mobile
                 agent (everything is written under demo/, which is wiped first)
  bench [--smoke] [--only GROUP]
                 print the performance figures (--smoke: a seconds-long run; GROUP is
                 instantiate, aggregate, round-trip, snapshot, hops, shipping,
                 code-on-demand, throughput, parked, hostile (other clients' latency
                 while hostile modules run) or extism (the comparison with Extism,
                 which the full run prints last; --smoke leaves it out unless asked))
  fuzz [--time SECONDS] [TARGET...]
                 build the fuzz targets (host/fuzz; installs cargo-fuzz if missing) and
                 run each TARGET (default: all of frame, message, snapshot, signature) for
                 SECONDS (default 60); fails if any target crashes";

/// The wasm32 target the example modules are built for.
const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The target of the example built with Rust's `std` on WASI preview 1.
const WASI_TARGET: &str = "wasm32-wasip1";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let command = args.next();
    let rest: Vec<OsString> = args.collect();
    let result = match command.as_deref().map(OsStr::to_string_lossy).as_deref() {
        Some("agents") => no_args("agents", &rest).and_then(|()| agents()),
        Some("test") => test(&rest),
        Some("demo") => no_args("demo", &rest).and_then(|()| demo::main()),
        Some("bench") => bench(&rest),
        Some("fuzz") => fuzz_command(&rest),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Some(other) => {
            eprintln!("error: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A failing test run exits with the runner's own code, as if it had been run directly.
            let code = e.downcast_ref::<Failed>().and_then(|f| f.code);
            ExitCode::from(code.and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0).unwrap_or(1))
        }
    }
}

fn no_args(command: &str, rest: &[OsString]) -> Result<()> {
    if !rest.is_empty() {
        bail!("`cargo xtask {command}` takes no arguments, got {rest:?}");
    }
    Ok(())
}

/// The repository root: xtask lives in `<root>/xtask`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `cargo` (the one that runs xtask, when there is one), run in the repository root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// A command that ran and failed; its exit code becomes xtask's own.
#[derive(Debug)]
struct Failed {
    command: String,
    /// `None` if the command was killed by a signal.
    code: Option<i32>,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.command),
            None => write!(f, "`{}` was killed by a signal", self.command),
        }
    }
}

impl std::error::Error for Failed {}

/// The command as a person would type it, for messages.
fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program()).file_name().unwrap_or(cmd.get_program()).to_string_lossy().into_owned();
    cmd.get_args().fold(program, |line, arg| format!("{line} {}", arg.to_string_lossy()))
}

/// Runs `cmd` with inherited stdio, after echoing it; a non-zero exit is a [`Failed`] error.
fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd.status().with_context(|| format!("cannot run `{line}`; is it installed and on PATH?"))?;
    if !status.success() {
        return Err(Failed { command: line, code: status.code() }.into());
    }
    Ok(())
}

/// Whether `cmd` runs and succeeds, with its output discarded.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// `cargo xtask agents`: builds the example query modules into
/// `agents/target/wasm32-unknown-unknown/release/`.
/// `cargo xtask bench [--smoke] [--only GROUP]`: the figures of host/benches/figures.rs and
/// host/benches/hostile.rs (the arguments go to the benchmark), then the comparison with Extism.
///
/// The comparison (`--only extism`) is its own workspace, host/benches/extism, with its own
/// target directory: Extism brings another wasmtime, whose build the main workspace and
/// `cargo xtask test` should not pay for, so no test builds it, and a smoke run leaves it out
/// unless it is asked for by name.
fn bench(args: &[OsString]) -> Result<()> {
    build_agents()?;
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1));
    if only.is_none_or(|o| o != "extism") {
        measure(smoke, args)?;
    }
    let extism = match only {
        Some(o) => o == "extism",
        None => !smoke,
    };
    if extism { compare_with_extism(smoke) } else { Ok(()) }
}

/// Builds the `roam` binary the benchmark starts as a separate host, then runs the benchmark.
///
/// The full run is built in release mode. The smoke run only has to show that every figure
/// still runs, so it is built in the dev profile, whose dependencies (wasmtime, Cranelift,
/// SQLite) are already optimised (opt-level 2) and already built by `cargo xtask test`: only the
/// benchmark's own file is compiled. In release mode the smoke would first rebuild all of
/// wasmtime, several minutes on two cores, for figures nobody reads.
fn measure(smoke: bool, args: &[OsString]) -> Result<()> {
    let profile = if smoke { "dev" } else { "release" };
    step(&format!("Building the roam binary ({profile} profile)"));
    // `--workspace`, as in `test`: the same features, so the artifacts the tests built are reused.
    run(cargo().args(["build", "--profile", profile, "--workspace", "--bin", "roam"]))?;
    // `--only hostile` is the neighbours' latency under hostile modules (host/benches/hostile.rs);
    // any other group is one of figures.rs; without `--only`, both run.
    let only = args.iter().skip_while(|a| *a != "--only").nth(1).map(|g| g.to_string_lossy().into_owned());
    if only.as_deref() != Some("hostile") {
        // The analytics group compares with DuckDB in the same run.
        let mut figures = cargo();
        if only.as_deref().is_none_or(|o| o == "analytics") {
            figures.env("ROAM_BENCH_DUCKDB", ensure_duckdb()?);
        }
        step("Measuring (host/benches/figures.rs)");
        run(figures.args(["bench", "--profile", profile, "--workspace", "--bench", "figures", "--"]).args(args))?;
    }
    if only.is_none() || only.as_deref() == Some("hostile") {
        step("Measuring other clients' latency while hostile modules run (host/benches/hostile.rs)");
        let smoke: &[&str] = if smoke { &["--smoke"] } else { &[] };
        run(cargo().args(["bench", "--profile", profile, "--workspace", "--bench", "hostile", "--"]).args(smoke))?;
    }
    Ok(())
}

/// Roam's code on demand against Extism on the same logic (host/benches/extism).
fn compare_with_extism(smoke: bool) -> Result<()> {
    let dir = repo_root().join("host/benches/extism");
    let target = dir.join("target");
    step("Building the Extism plugin (host/benches/extism/plugin, wasm32)");
    run(cargo()
        .args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"])
        .arg(dir.join("plugin/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target))?;
    step("Measuring roam's code on demand against Extism (host/benches/extism)");
    let modules = |dir: &Path, file: &str| dir.join(WASM_TARGET).join("release").join(file);
    run(cargo()
        .args(["run", "--release", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .arg("--")
        .args(smoke.then_some("--smoke"))
        .arg(modules(&repo_root().join("agents/target"), "count_vowels.wasm"))
        .arg(modules(&target, "count_vowels_extism.wasm")))
}

fn agents() -> Result<()> {
    step("Building the example query modules (agents/, wasm32)");
    build_agents()
}

/// Builds the example query modules, without announcing a step.
fn build_agents() -> Result<()> {
    let dir = repo_root().join("agents");
    ensure_wasm_target(&dir, WASM_TARGET)?;
    let mut build = cargo();
    build.current_dir(&dir).args(["build", "--release"]);
    // agents/ is its own workspace with its own target and flags (agents/.cargo/config.toml):
    // RUSTFLAGS would replace the wasm32 rustflags, a target directory would move the modules
    // where the tests do not look.
    run(own_build(&mut build))?;
    // The example of Rust with `std` on WASI, into agents/target/wasm32-wasip1/release/.
    ensure_wasm_target(&dir, WASI_TARGET)?;
    let mut build = cargo();
    build.current_dir(&dir).args(["build", "--release", "--target", WASI_TARGET, "-p", "wasi-hello"]);
    run(own_build(&mut build))?;
    // The Zig modules (agents/zig/), with the Zig toolchain that xtask/src/zig.rs pins.
    zig::build_zig()?;
    guests::build_c()?;
    Ok(())
}

/// Keeps settings meant for the host build out of a build of another workspace (agents/,
/// host/fuzz/), which has its own target directory and flags.
fn own_build(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks =
            matches!(key, "RUSTFLAGS" | "CARGO_ENCODED_RUSTFLAGS" | "RUSTDOCFLAGS" | "CARGO_ENCODED_RUSTDOCFLAGS")
                || key.starts_with("CARGO_BUILD_")
                || key.starts_with("CARGO_TARGET_")
                || key.starts_with("CARGO_PROFILE_");
        if leaks {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Installs the wasm32 target with rustup if it is missing. Without rustup (a toolchain from a
/// distribution, say) there is nothing to install with; the build then says what is missing.
fn ensure_wasm_target(agents_dir: &Path, target: &str) -> Result<()> {
    // Run in agents/ so that any toolchain override there applies, as it will to the build.
    let listed = Command::new("rustup")
        .current_dir(agents_dir)
        .args(["target", "list", "--installed"])
        .stderr(Stdio::inherit())
        .output();
    let installed = match listed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => bail!("`rustup target list --installed` failed ({})", out.status),
        Err(e) => {
            println!("rustup is not available ({e}); assuming the {target} target is installed");
            return Ok(());
        }
    };
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    run(Command::new("rustup").current_dir(agents_dir).args(["target", "add", target]))
}

/// The browser the status page's test drives, and its WebDriver.
const BROWSER: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromedriver"];

/// Installs Debian's Chromium and ChromeDriver if they are missing (the status page is tested
/// in a real browser); elsewhere says what to install.
fn ensure_browser() -> Result<()> {
    if BROWSER.iter().all(|p| Path::new(p).is_file()) {
        return Ok(());
    }
    apt_install(
        "the status page's test (Chromium and ChromeDriver)",
        &["chromium", "chromium-driver"],
        &format!("install Chromium and ChromeDriver at {} and {}", BROWSER[0], BROWSER[1]),
    )
}

/// Installs Debian `packages` that `what` needs, with apt-get; where there is no apt-get,
/// fails saying `otherwise`, what to do instead.
fn apt_install(what: &str, packages: &[&str], otherwise: &str) -> Result<()> {
    if !succeeds(Command::new("apt-get").arg("--version")) {
        bail!("{what} needs what this machine lacks, and there is no apt-get to install it: {otherwise}");
    }
    step(&format!("Installing Debian's {} for {what}", packages.join(", ")));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
}

/// Installs the PyPI package `spec` (`what`) into `dir` with pip, which a fresh Debian lacks
/// until python3-pip is installed. `--target` rather than `--user`: Debian's Python refuses
/// user installs (PEP 668), and the build tree is where the rest of the toolchain lives.
fn pip_install(what: &str, dir: &Path, spec: &str) -> Result<()> {
    if !succeeds(Command::new("python3").args(["-m", "pip", "--version"])) {
        apt_install(&format!("installing {what}"), &["python3", "python3-pip"], "install python3 with pip")?;
    }
    step(&format!("Installing {what} from PyPI into {}", dir.display()));
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--upgrade", "--target"])
        .arg(dir)
        .arg(spec))
}

/// The DuckDB the analytics figures compare with (PyPI `duckdb`, run in-process by Python).
const DUCKDB_VERSION: &str = "2.0.1";

/// Installs DuckDB `DUCKDB_VERSION` into target/duckdb unless it is there; returns that directory.
fn ensure_duckdb() -> Result<PathBuf> {
    let dir = repo_root().join("target/duckdb");
    let probe = Command::new("python3")
        .env("PYTHONPATH", &dir)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output();
    if let Ok(out) = &probe
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == DUCKDB_VERSION
    {
        return Ok(dir);
    }
    pip_install(&format!("DuckDB {DUCKDB_VERSION}"), &dir, &format!("duckdb=={DUCKDB_VERSION}"))?;
    Ok(dir)
}

/// `cargo xtask test [ARGS]`: the modules, the `roam` binary, then every test.
fn test(extra: &[OsString]) -> Result<()> {
    agents()?;
    ensure_browser()?;
    // With ARGS the caller is after some tests, not the whole check.
    if extra.is_empty() {
        style()?;
    }
    step("Building the roam binary that the end-to-end tests run");
    // `--workspace` resolves features as the test build below will, so this build's artifacts
    // are reused by it instead of being compiled a second time with other features.
    run(cargo().args(["build", "--workspace", "--bin", "roam"]))?;
    if succeeds(cargo().args(["nextest", "--version"])) {
        step("Running the tests (cargo nextest)");
        run(cargo().args(["nextest", "run", "--workspace"]).args(extra))?;
        // nextest does not run doctests; they are examples that must keep compiling and working.
        // With a filter or runner flags in ARGS, the caller asked for something narrower.
        if extra.is_empty() {
            step("Running the doctests (cargo test --doc)");
            run(cargo().args(["test", "--workspace", "--doc"]))?;
        }
    } else {
        step("Running the tests (cargo test; install cargo-nextest for faster runs)");
        run(cargo().args(["test", "--workspace"]).args(extra))?;
    }
    println!("\nAll tests passed.");
    if !extra.is_empty() {
        return Ok(());
    }
    // The smoke run of the benchmark, so that it never rots; ROAM_SKIP_BENCH=1 leaves it out.
    if std::env::var_os("ROAM_SKIP_BENCH").is_some_and(|v| v == "1") {
        println!("Benchmark smoke run skipped (ROAM_SKIP_BENCH=1).");
    } else {
        step("Smoke run of the benchmark (cargo xtask bench --smoke; ROAM_SKIP_BENCH=1 skips it)");
        measure(true, &["--smoke".into()])?;
    }
    if std::env::var_os("ROAM_SKIP_FUZZ").is_some_and(|v| v == "1") {
        println!("Fuzzing skipped (ROAM_SKIP_FUZZ=1).");
        return Ok(());
    }
    fuzz(&FUZZ_TARGETS, TEST_FUZZ_SECONDS)
}

/// The workspaces whose style `cargo xtask test` checks: the host's, the guests', and the two
/// built on their own (fuzz targets, the Extism comparison), which are only formatted, since
/// linting them would mean building them.
const LINTED: [&str; 2] = [".", "agents"];
const FORMATTED_ONLY: [&str; 2] = ["host/fuzz", "host/benches/extism"];

/// `cargo fmt --check` on every workspace and `cargo clippy --all-targets -D warnings` on the
/// host's and the guests' (one lint table, rustfmt.toml at the root): style is enforced, not
/// hoped for. Adds the rustfmt and clippy components with rustup if they are missing.
fn style() -> Result<()> {
    step("Checking style (cargo fmt --check, cargo clippy -D warnings)");
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if !succeeds(cargo().args([probe, "--version"])) {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    for dir in LINTED.iter().chain(&FORMATTED_ONLY) {
        let mut fmt = cargo();
        fmt.current_dir(repo_root().join(dir)).args(["fmt", "--all", "--check"]);
        run(own_build(&mut fmt)).context("the code is not formatted; `cargo fmt --all` in that workspace fixes it")?;
    }
    for dir in LINTED {
        let mut clippy = cargo();
        clippy.current_dir(repo_root().join(dir)).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        // The root workspace shares the build's settings; agents/ has its own target and flags.
        if dir != "." {
            own_build(&mut clippy);
        }
        run(&mut clippy)?;
    }
    Ok(())
}

/// The fuzz targets of host/fuzz, in the order they run.
const FUZZ_TARGETS: [&str; 4] = ["frame", "message", "snapshot", "signature"];
/// How long `cargo xtask fuzz` runs each target by default.
const FUZZ_SECONDS: u64 = 60;
/// How long `cargo xtask test` runs each target: a smoke test of the targets and the corpus.
const TEST_FUZZ_SECONDS: u64 = 10;

/// `cargo xtask fuzz [--time SECONDS] [TARGET...]`.
fn fuzz_command(args: &[OsString]) -> Result<()> {
    let mut seconds = FUZZ_SECONDS;
    let mut targets = Vec::new();
    let mut args = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--time" {
            let value = args.next().context("--time needs a number of seconds")?;
            seconds = value
                .parse()
                .ok()
                .filter(|&s| s > 0)
                .with_context(|| format!("--time takes a positive number of seconds, got {value:?}"))?;
        } else if let Some(&target) = FUZZ_TARGETS.iter().find(|t| **t == arg) {
            targets.push(target);
        } else {
            bail!("unknown fuzz target or option {arg:?}; the targets are {FUZZ_TARGETS:?}");
        }
    }
    if targets.is_empty() {
        targets.extend(FUZZ_TARGETS);
    }
    fuzz(&targets, seconds)
}

/// `cargo fuzz` on host/fuzz. libFuzzer's instrumentation needs nightly compiler flags, which
/// RUSTC_BOOTSTRAP=1 allows on a stable toolchain. No sanitizer: every roam crate denies
/// `unsafe`, so AddressSanitizer would mostly slow the runs; the targets look for panics, broken
/// round trips and runaway allocation. The build uses host/fuzz/target, never the shared one.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = cargo();
    own_build(&mut cmd).env("RUSTC_BOOTSTRAP", "1").args([
        "fuzz",
        subcommand,
        "--fuzz-dir",
        "host/fuzz",
        "--sanitizer",
        "none",
    ]);
    cmd
}

/// Builds the fuzz targets, then runs each for `seconds` and prints libFuzzer's figures.
fn fuzz(targets: &[&str], seconds: u64) -> Result<()> {
    if !succeeds(cargo().args(["fuzz", "--version"])) {
        step("Installing cargo-fuzz");
        run(own_build(cargo().args(["install", "cargo-fuzz", "--locked"])))?;
    }
    step("Building the fuzz targets (host/fuzz, instrumented for libFuzzer)");
    run(&mut cargo_fuzz("build"))?;
    let mut figures = Vec::new();
    for target in targets {
        step(&format!("Fuzzing {target} for {seconds} s"));
        figures.push((target, fuzz_target(target, seconds)?));
    }
    println!("\n{:<10} {:>12} {:>9} {:>8} {:>8}", "target", "executions", "exec/s", "corpus", "cov");
    for (target, done) in figures {
        let field = |key| stat(&done, key).unwrap_or("?");
        println!(
            "{target:<10} {:>12} {:>9} {:>8} {:>8}",
            done.split_whitespace().next().unwrap_or("?").trim_start_matches('#'),
            field("exec/s:"),
            field("corp:"),
            field("cov:")
        );
    }
    Ok(())
}

/// Runs one target from its committed seeds (host/fuzz/corpus/TARGET, read only) and a working
/// corpus that is kept between runs (host/fuzz/target/corpus/TARGET, where new inputs go).
/// Returns libFuzzer's final `DONE` line; a crash fails, naming the input that caused it.
fn fuzz_target(target: &str, seconds: u64) -> Result<String> {
    let working = format!("host/fuzz/target/corpus/{target}");
    std::fs::create_dir_all(repo_root().join(&working))?;
    let mut cmd = cargo_fuzz("run");
    cmd.args([target, &working, &format!("host/fuzz/corpus/{target}"), "--"])
        .arg(format!("-max_total_time={seconds}"))
        // A decoder that takes seconds on one input is a finding too.
        .arg("-timeout=10")
        .stderr(Stdio::piped());
    let line = display(&cmd);
    println!("$ {line}");
    let mut child = cmd.spawn().with_context(|| format!("cannot run `{line}`"))?;
    let mut done = None;
    if let Some(stderr) = child.stderr.take() {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let l = l?;
            // Progress lines (new inputs, reductions) and the dictionary it recommends would
            // bury the rest.
            if l.contains("\tNEW ") || l.contains("\tREDUCE ") || l.contains("# Uses: ") {
                continue;
            }
            eprintln!("{l}");
            if l.contains("\tDONE ") {
                done = Some(l);
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(Failed { command: line, code: status.code() }).with_context(|| {
            format!("fuzz target {target} failed: the input that broke it is under host/fuzz/artifacts/{target}/")
        });
    }
    done.with_context(|| format!("libFuzzer printed no summary for {target}"))
}

/// The value after `key` in a libFuzzer status line (`... corp: 210/45Kb ... exec/s: 4115 ...`).
fn stat<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()
}
