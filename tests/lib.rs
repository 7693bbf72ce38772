//! Support for roam's end-to-end tests, which drive the real `roam` binary as separate processes
//! over real TCP on loopback.
//!
//! Core concepts:
//! - [`sample`]: the deterministic sample `sales` dataset (shared with `cargo xtask demo`).
//! - [`roam_bin`] / [`agent_wasm`] / [`wasip1_wasm`] / [`zig_wasm`] / [`c_wasm`]: where the
//!   binary and the example modules (Rust, Rust on WASI, Zig, C) are built; `cargo xtask test` builds them before running the tests.
//! - [`roam`] / [`roam_ok`] / [`roam_err`]: run one `roam` command and check how it ended.
//! - [`args!`]: a command line mixing strings and paths.
//! - [`Fixture`]: a temporary directory with keys (`alice` trusted, `bob` trusted without
//!   capabilities, `mallory` untrusted), a trust store, and helpers to sign and write modules.
//! - [`HostProcess`]: a `roam host` process on `127.0.0.1:0`, killed when dropped.

pub mod hostile;
pub mod lineitem;
pub mod sample;

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use roam_keys::{Kind, SecretKey, SignRequest};

/// How long a host may take to start listening: generous, since a loaded CI machine may be
/// slow to start a process that sets up a Wasm engine.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a host may take to shut down after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The capabilities the fixture's policy grants `alice`.
pub const ALICE_CAPABILITIES: [&str; 3] = ["table:sales", "table:lineitem", "log:*"];

/// The repository root (the workspace that holds `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The `roam` binary the tests run: `$ROAM_BIN` if set, otherwise `roam` in the target directory
/// of the running test executable (`…/target/debug/deps/all-<hash>` → `…/target/debug/roam`).
///
/// Cargo does not build another package's binaries for a test, hence `cargo xtask test`, which
/// builds `roam` first.
///
/// # Errors
/// If the binary does not exist, with what to run to build it.
pub fn roam_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ROAM_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("ROAM_BIN is {}, which is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the running test executable")?;
    let mut dir = exe.parent().context("the test executable has no parent directory")?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().context("the deps directory has no parent")?;
    }
    let bin = dir.join(format!("roam{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "the roam binary is missing at {}; run `cargo xtask test`, which builds it before \
             the tests (or run `cargo build --bin roam` with the same target directory and \
             profile as the tests, or set ROAM_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// An example module in Rust (`agents/NAME/`, for wasm32-unknown-unknown) built by
/// `cargo xtask agents`, e.g. `agent_wasm("sales_by_region")`.
///
/// # Errors
/// If the module has not been built, with what to run to build it.
pub fn agent_wasm(name: &str) -> Result<PathBuf> {
    built("wasm32-unknown-unknown/release", name)
}

/// An example module in Zig (`agents/zig/NAME.zig`), e.g. `zig_wasm("region_totals")`.
///
/// # Errors
/// As [`agent_wasm`].
pub fn zig_wasm(name: &str) -> Result<PathBuf> {
    built("zig", name)
}

/// An example module in C (`agents/c/NAME.c`, against `sdk/c/roam.h`), e.g.
/// `c_wasm("sales_by_region")`.
///
/// # Errors
/// As [`agent_wasm`].
pub fn c_wasm(name: &str) -> Result<PathBuf> {
    built("c", name)
}

/// The example module in Rust with `std` for WASI (`agents/NAME/`, for wasm32-wasip1).
///
/// # Errors
/// As [`agent_wasm`].
pub fn wasip1_wasm(name: &str) -> Result<PathBuf> {
    built("wasm32-wasip1/release", name)
}

/// An example module of any language: `agents/target/DIR/NAME.wasm`.
fn built(dir: &str, name: &str) -> Result<PathBuf> {
    let path = repo_root().join("agents/target").join(dir).join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!(
            "the example module {name}.wasm is missing at {}; run `cargo xtask agents` (or `cargo xtask \
             test`, which runs it), which builds the examples of every language and installs the \
             compilers they need",
            path.display()
        );
    }
    Ok(path)
}

/// A command line of strings and paths, for [`roam`], [`roam_ok`], [`roam_err`] and
/// [`HostProcess::spawn`]: `args!["verify", &path, "--trust", fixture.trust_dir()]`.
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        [$(::std::ffi::OsStr::new(&$arg)),*]
    };
}

/// An access policy that grants every right to anyone, anonymous callers included: for the
/// hosts of tests about something else (the tests of access itself write their own).
pub const OPEN_ACCESS: &str = "[allow]\neval = [\"anyone\"]\npublish = [\"anyone\"]\nfetch_code = [\"anyone\"]\n\
fetch_query = [\"anyone\"]\nfetch_agent = [\"anyone\"]\nlist = [\"anyone\"]\nlaunch = [\"anyone\"]\n\
recall = [\"anyone\"]\nadmin = [\"anyone\"]\n";

/// Writes [`OPEN_ACCESS`] as the access policy of the trust store `trust_dir`.
///
/// # Errors
/// If the file cannot be written.
pub fn open_access(trust_dir: &Path) -> Result<()> {
    let path = trust_dir.join(roam_host::access::ACCESS_FILE);
    fs::write(&path, OPEN_ACCESS).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `roam ARGS…` to completion, with its stdout and stderr captured.
///
/// # Errors
/// If the binary is missing or cannot be started; how the command itself ended is in the
/// returned [`Output`].
pub fn roam<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    // Each command trusts the hosts it meets on first use, in a file of its own: hosts of
    // different tests reuse ports with other keys. Tests of pinning give `--known-hosts`.
    let known_hosts = tempfile::NamedTempFile::new()?.into_temp_path();
    // Nor does it take an identity from the person running the tests: tests give --identity.
    let home = tempfile::tempdir()?;
    Command::new(roam_bin()?)
        .args(&args)
        .env("ROAM_KNOWN_HOSTS", &known_hosts)
        .env_remove("ROAM_IDENTITY")
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", command_line(&args)))
}

/// Runs `roam ARGS…`, requires it to succeed, and returns its stdout.
///
/// # Errors
/// If the command fails, with its exit status, stdout and stderr.
pub fn roam_ok<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = roam(&args)?;
    if !output.status.success() {
        bail!("{} failed ({}){}", command_line(&args), output.status, describe(&output));
    }
    String::from_utf8(output.stdout).context("roam printed something that is not UTF-8")
}

/// Runs `roam ARGS…`, requires it to fail with a non-zero exit code and a reason on stderr, and
/// returns that stderr.
///
/// # Errors
/// If the command succeeds, is killed by a signal, or fails without saying why.
pub fn roam_err<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = roam(&args)?;
    match output.status.code() {
        Some(0) => bail!("{} succeeded, but it was expected to fail{}", command_line(&args), describe(&output)),
        None => bail!(
            "{} was killed ({}) instead of failing with an error{}",
            command_line(&args),
            output.status,
            describe(&output)
        ),
        Some(_) => {}
    }
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.trim().is_empty() {
        bail!("{} failed ({}) without a reason on stderr{}", command_line(&args), output.status, describe(&output));
    }
    Ok(stderr)
}

fn command_line(args: &[std::ffi::OsString]) -> String {
    let mut line = String::from("`roam");
    for a in args {
        line.push(' ');
        line.push_str(&a.to_string_lossy());
    }
    line.push('`');
    line
}

fn describe(output: &Output) -> String {
    format!(
        "\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// Seconds since the Unix epoch, the clock signatures are checked against.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A temporary directory with keys, a trust store, and room for modules and host data.
///
/// - `alice`: trusted; the policy grants her [`ALICE_CAPABILITIES`].
/// - `bob`: trusted, but the policy grants him no capability, to test policy refusals.
/// - `mallory`: has a key pair, but is not in the trust store.
///
/// Everything is deleted when the fixture is dropped.
#[derive(Debug)]
pub struct Fixture {
    dir: tempfile::TempDir,
    /// Numbers the data directories of the hosts started from this fixture, so that two hosts
    /// never share state.
    hosts_started: Cell<u32>,
}

impl Fixture {
    /// Creates the keys and the trust store.
    ///
    /// # Errors
    /// If the temporary directory or a key cannot be written.
    pub fn new() -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("roam-test-").tempdir().context("cannot create a temporary directory")?;
        let fixture = Self { dir, hosts_started: Cell::new(0) };
        let keys = fixture.keys_dir();
        let trust = fixture.trust_dir();
        fs::create_dir_all(&trust).with_context(|| format!("cannot create {}", trust.display()))?;
        open_access(&trust)?;
        for name in ["alice", "bob", "mallory"] {
            roam_keys::write_keypair(&keys, name).with_context(|| format!("cannot create the test key {name}"))?;
        }
        for name in ["alice", "bob"] {
            let file = format!("{name}.pub");
            fs::copy(keys.join(&file), trust.join(&file))
                .with_context(|| format!("cannot install {file} in the trust store"))?;
        }
        let granted = ALICE_CAPABILITIES.map(|c| format!("{c:?}")).join(", ");
        fs::write(
            trust.join(roam_keys::POLICY_FILE),
            format!("[keys.alice]\ncapabilities = [{granted}]\n\n[keys.bob]\ncapabilities = []\n"),
        )
        .context("cannot write the trust store's policy")?;
        Ok(fixture)
    }

    /// The fixture's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the key pairs are: `NAME.key` and `NAME.pub`.
    pub fn keys_dir(&self) -> PathBuf {
        self.path().join("keys")
    }

    /// The secret key file of `signer`.
    pub fn key_path(&self, signer: &str) -> PathBuf {
        self.keys_dir().join(format!("{signer}.key"))
    }

    /// The trust store: `alice.pub`, `bob.pub` and `policy.toml`.
    pub fn trust_dir(&self) -> PathBuf {
        self.path().join("trust")
    }

    /// Signs `wasm` as `signer` with `roam_keys` directly (no process), valid for an hour.
    ///
    /// # Errors
    /// If the key cannot be read, `version` is not semver, or signing fails.
    pub fn sign(
        &self,
        wasm: &[u8],
        signer: &str,
        kind: Kind,
        name: &str,
        version: &str,
        caps: &[&str],
    ) -> Result<Vec<u8>> {
        let key =
            SecretKey::load(&self.key_path(signer)).with_context(|| format!("cannot load the test key {signer}"))?;
        sign_with(&key, wasm, kind, name, version, caps, (0, 3600))
    }

    /// Writes `bytes` to the file `name` in the fixture's directory and returns its path.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.path().join(name);
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Starts `roam host` trusting this fixture's trust store, with a fresh data directory in the
    /// fixture and the `extra` flags (e.g. `--table sales=FILE`).
    ///
    /// # Errors
    /// As [`HostProcess::spawn`].
    pub fn host<I, S>(&self, extra: I) -> Result<HostProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.host_in(&[], extra)
    }

    /// As [`Fixture::host`], with the host started through `wrapper` (e.g. `unshare --user`).
    ///
    /// # Errors
    /// As [`HostProcess::spawn`].
    pub fn host_in<I, S>(&self, wrapper: &[&str], extra: I) -> Result<HostProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let n = self.hosts_started.get() + 1;
        self.hosts_started.set(n);
        let data_dir = self.path().join(format!("host-{n}"));
        let mut args =
            vec!["--trust".into(), self.trust_dir().into_os_string(), "--data-dir".into(), data_dir.into_os_string()];
        args.extend(extra.into_iter().map(|a| a.as_ref().to_owned()));
        HostProcess::spawn_in(wrapper, &args)
    }
}

/// Signs `wasm` with `key`, valid from `valid.0` to `valid.1` seconds from now (negative: in
/// the past), asking for `caps`.
///
/// # Errors
/// If `version` is not semver or signing fails.
pub fn sign_with(
    key: &SecretKey,
    wasm: &[u8],
    kind: Kind,
    name: &str,
    version: &str,
    caps: &[&str],
    valid: (i64, i64),
) -> Result<Vec<u8>> {
    let now = now_secs() as i64;
    let request = SignRequest {
        kind,
        name: name.to_owned(),
        version: version.parse().with_context(|| format!("{version:?} is not a semver version"))?,
        issued_at: now as u64,
        not_before: (now + valid.0).max(0) as u64,
        expires: (now + valid.1).max(0) as u64,
        capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
    };
    roam_keys::sign_module(wasm, key, request).with_context(|| format!("cannot sign {name}"))
}

/// A running `roam host` process, listening on a free port of 127.0.0.1.
///
/// Dropping it kills the process (so a failing test never leaves a host behind); [`stop`]
/// instead shuts it down the way an operator would and checks that it exits cleanly.
///
/// [`stop`]: HostProcess::stop
#[derive(Debug)]
pub struct HostProcess {
    /// `None` once the process has been stopped and reaped, so that `Drop` leaves it alone.
    child: Option<Child>,
    /// The address the host reported on stdout.
    pub addr: SocketAddr,
    /// The host's data directory.
    data_dir: PathBuf,
    /// Holds the host's stderr log and, unless the caller chose one, its data directory; kept
    /// until the process is gone.
    scratch: tempfile::TempDir,
}

impl HostProcess {
    /// Runs `roam host ARGS…` and waits (at most [`START_DEADLINE`]) for it to print
    /// `listening on ADDR`. Unless `args` has `--listen`, the host listens on a free port of
    /// 127.0.0.1; unless it has `--data-dir`, it gets a fresh one.
    /// The host's stderr goes to a file, read by [`HostProcess::stderr`].
    ///
    /// # Errors
    /// If the host exits, says something else, or is silent past the deadline; the error
    /// includes what the host wrote to stderr.
    pub fn spawn<I, S>(args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_in(&[], args)
    }

    /// As [`HostProcess::spawn`], with the host started through `wrapper`, a command that ends
    /// by executing its arguments in its own place (`unshare --user`), so that the process
    /// is still the host's.
    ///
    /// # Errors
    /// As [`HostProcess::spawn`].
    pub fn spawn_in<I, S>(wrapper: &[&str], args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with(wrapper, &[], args)
    }

    /// As [`HostProcess::spawn`], with `env` added to the host's environment.
    ///
    /// # Errors
    /// As [`HostProcess::spawn`].
    pub fn spawn_env<I, S>(env: &[(&str, &str)], args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with(&[], env, args)
    }

    fn spawn_with<I, S>(wrapper: &[&str], env: &[(&str, &str)], args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let scratch = tempfile::Builder::new()
            .prefix("roam-host-")
            .tempdir()
            .context("cannot create a temporary directory for the host")?;
        let data_dir = match args.iter().position(|a| a == "--data-dir") {
            Some(i) => PathBuf::from(args.get(i + 1).context("--data-dir without a directory")?),
            None => scratch.path().join("data"),
        };
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(roam_bin()?);
                c
            }
            None => Command::new(roam_bin()?),
        };
        command.arg("host").args(&args).envs(env.iter().copied());
        if !args.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.iter().any(|a| a == "--data-dir") {
            command.arg("--data-dir").arg(&data_dir);
        }
        // A file rather than a pipe: a pipe nobody reads would fill up and block the host's
        // logging, and the file is still there to read when the host has died.
        let log = scratch.path().join("stderr.log");
        let stderr = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start `roam host`")?;
        let stdout = child.stdout.take().context("the host's stdout was not captured")?;

        let mut host = Self {
            child: Some(child),
            // Replaced below once the host has said where it listens.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            scratch,
        };
        host.addr = host.wait_for_listening(stdout)?;
        Ok(host)
    }

    /// Reads the host's stdout on a thread (which keeps draining it afterwards) until the
    /// `listening on ADDR` line, the end of the output, or the deadline.
    fn wait_for_listening(&mut self, stdout: std::process::ChildStdout) -> Result<SocketAddr> {
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    // Nobody listens any more; keep reading so the host never blocks on stdout.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let mut other = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("listening on ") {
                    Some(addr) => {
                        return addr
                            .trim()
                            .parse()
                            .with_context(|| format!("the host printed {line:?}, which has no valid address"));
                    }
                    None => other.push(line),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(self.failed_to_start(
                        &format!("did not print `listening on ADDR` within {START_DEADLINE:?}"),
                        &other,
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.failed_to_start("closed its stdout without printing `listening on ADDR`", &other));
                }
            }
        }
    }

    fn failed_to_start(&mut self, what: &str, stdout: &[String]) -> anyhow::Error {
        let status = self.kill().map_or_else(|e| format!("{e:#}"), |s| s.to_string());
        anyhow!(
            "`roam host` {what} ({status})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.join("\n"),
            self.stderr().trim_end()
        )
    }

    /// The host's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A memory figure of the host process from `/proc/PID/status`, in bytes: `"VmRSS"` (resident)
    /// or `"VmSize"` (address space).
    ///
    /// # Errors
    /// If the process is gone, the file cannot be read (a system without `/proc`), or it has no
    /// such field.
    pub fn memory(&self, field: &str) -> Result<u64> {
        let pid = self.pid().context("the host was already stopped")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("/proc/{pid}/status has no {field} line"))?;
        Ok(kib << 10)
    }

    /// The host's threads whose names start with `prefix`: each one's id and scheduling policy
    /// (0 normal, 5 idle), from `/proc/PID/task`.
    ///
    /// # Errors
    /// If the process is gone or `/proc` cannot be read.
    pub fn threads(&self, prefix: &str) -> Result<Vec<(u32, u32)>> {
        threads(self.pid().context("the host was already stopped")?, prefix)
    }

    /// The host's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the host has written to stderr (its logs) so far.
    pub fn stderr(&self) -> String {
        fs::read(self.scratch.path().join("stderr.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read the host's stderr: {e})"))
    }

    /// Sends SIGTERM and requires the host to exit with status 0 within [`STOP_DEADLINE`].
    ///
    /// # Errors
    /// If the signal cannot be sent, or the host exits otherwise or too late (it is then
    /// killed); the error includes the host's stderr.
    pub fn stop(mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the host was already stopped");
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("cannot run `kill` to send SIGTERM to the host")?;
        if !sent.success() {
            bail!("`kill -TERM {pid}` failed ({sent})");
        }
        let status = match wait_until(child, Instant::now() + STOP_DEADLINE)? {
            Some(status) => status,
            None => {
                let killed = self.kill()?;
                bail!(
                    "the host did not exit within {STOP_DEADLINE:?} of SIGTERM, so it was killed \
                     ({killed})\n--- stderr ---\n{}",
                    self.stderr().trim_end()
                );
            }
        };
        self.child = None;
        if !status.success() {
            bail!(
                "the host exited with {status} after SIGTERM, expected a clean exit (0)\n\
                 --- stderr ---\n{}",
                self.stderr().trim_end()
            );
        }
        Ok(())
    }

    /// Kills and reaps the process, if it is still there.
    fn kill(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the host was already stopped")?;
        // Fails only if the process has exited already, which `wait` then reports.
        let _ = child.kill();
        child.wait().context("cannot wait for the host process")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
    }
}

/// One TCP socket on this machine, as `/proc/net/tcp` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// The address at the other end.
    pub remote: SocketAddr,
    /// Whether the connection is established (not closing, nor a listener).
    pub established: bool,
    /// Bytes that arrived and that the process holding the socket has not read yet.
    pub unread: u64,
}

/// The IPv4 TCP sockets of this network namespace whose local address is `local`: for a host's
/// address, its listener and its side of each connection. How a test knows that a host has read
/// what a peer sent (its side of the connection has nothing unread), without waiting for time.
///
/// # Errors
/// If `/proc/net/tcp` cannot be read or parsed.
pub fn tcp_sockets(local: SocketAddr) -> Result<Vec<TcpSocket>> {
    // `0100007F:1F90`: the address as the kernel holds it (network order, printed as a native
    // u32), then the port.
    fn addr(hex: &str) -> Option<SocketAddr> {
        let (ip, port) = hex.split_once(':')?;
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
        Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_str_radix(port, 16).ok()?)))
    }
    let table = fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
    let mut sockets = Vec::new();
    // Columns: sl, local_address, rem_address, st, tx_queue:rx_queue, …
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| {
            let (state, queues) = (fields.get(3)?, fields.get(4)?);
            let unread = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
            Some((addr(fields.get(1)?)?, addr(fields.get(2)?)?, *state == "01", unread))
        })();
        let (at, remote, established, unread) = parsed.with_context(|| format!("/proc/net/tcp: {line:?}"))?;
        if at == local {
            sockets.push(TcpSocket { remote, established, unread });
        }
    }
    Ok(sockets)
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the host process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        // std has no wait-with-timeout; polling against an explicit deadline is the portable way.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The threads of process `pid` whose names start with `prefix`, as (thread id, Linux
/// scheduling policy) pairs, from `/proc`. Policy 0 is the normal class, 5 the idle class.
///
/// # Errors
/// If `/proc` cannot be read.
pub fn threads(pid: u32, prefix: &str) -> Result<Vec<(u32, u32)>> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        // A thread may end between the listing and the reads.
        let (Ok(name), Ok(stat)) = (fs::read_to_string(task.join("comm")), fs::read_to_string(task.join("stat")))
        else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        // After the name in parentheses: field 3 (the state), 4, …; the policy is field 41.
        let policy = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(41 - 3))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no scheduling policy in {}: {stat}", task.display()))?;
        let tid = task.file_name().and_then(|n| n.to_str()?.parse().ok()).context("a task without a number")?;
        threads.push((tid, policy));
    }
    threads.sort_unstable();
    Ok(threads)
}

/// An anonymous client's TLS connection to the host at `addr`, before roam's own handshake: for
/// tests that speak the protocol by hand.
///
/// # Errors
/// If the host cannot be reached or TLS fails.
pub async fn tls_stream(addr: &str) -> Result<roam_host::transport::ClientStream> {
    tls_stream_from(addr, None).await
}

/// A TCP connection to `addr` from the loopback address `source` (any of 127.0.0.0/8 reaches a
/// host on 127.0.0.1), so that a test can be several clients, as a host counts them; `None`:
/// the usual source.
///
/// # Errors
/// If the socket cannot be bound or connected.
pub async fn connect_from(addr: &str, source: Option<Ipv4Addr>) -> Result<tokio::net::TcpStream> {
    let Some(source) = source else { return Ok(tokio::net::TcpStream::connect(addr).await?) };
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    Ok(socket.connect(addr.parse()?).await?)
}

/// [`tls_stream`] from the loopback address `source` (see [`connect_from`]).
///
/// # Errors
/// As [`tls_stream`].
pub async fn tls_stream_from(addr: &str, source: Option<Ipv4Addr>) -> Result<roam_host::transport::ClientStream> {
    let tcp = connect_from(addr, source).await?;
    let config = roam_host::transport::anonymous()?;
    let (stream, _) = roam_host::handshake::tls(tcp, addr, config, roam_host::protocol::FRAME_TIMEOUT).await?;
    Ok(stream)
}

/// [`tls_stream`], then roam's hello, by hand: the stream and the host's welcome.
///
/// # Errors
/// If the host cannot be reached, TLS fails, or the welcome does not come.
pub async fn opened(addr: &str) -> Result<(roam_host::transport::ClientStream, roam_host::handshake::Welcome)> {
    opened_from(addr, None).await
}

/// [`opened`] from the loopback address `source` (see [`connect_from`]).
///
/// # Errors
/// As [`opened`].
pub async fn opened_from(
    addr: &str,
    source: Option<Ipv4Addr>,
) -> Result<(roam_host::transport::ClientStream, roam_host::handshake::Welcome)> {
    use roam_host::protocol::{FRAME_TIMEOUT, read_message, write_message};
    let mut stream = tls_stream_from(addr, source).await?;
    write_message(&mut stream, &roam_host::handshake::Hello::new("by hand")).await?;
    let welcome = read_message(&mut stream, 1 << 16, FRAME_TIMEOUT).await?;
    Ok((stream, welcome))
}
