//! `cargo xtask demo`: the three ways of moving code, end to end, with real processes on loopback.
//!
//! Three data hosts each hold their own slice of a sales dataset and their own stock table; a
//! home host holds a configuration table and a reports log.
//! - Remote evaluation: a client signs the two example queries and ships them to the data
//!   hosts, which verify them, run them next to their data and send back only the results.
//! - Code on demand: a validator is published on a data host; a client fetches it once and checks
//!   a thousand orders locally, next to the same checks made as a thousand round trips.
//! - A mobile agent launched at home visits the three data hosts, binds each host's stock table by
//!   type, carries the configuration by value, reports home by identifier, and comes home with
//!   its aggregate; the demo prints its route and bindings.

use std::fs::{self, File};
use std::io::IsTerminal as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sample;
use crate::{build_agents, cargo, display, repo_root, run, step};

/// Rows of sales data per host.
const ROWS_PER_HOST: usize = 50_000;
/// The data hosts: name and the seed of their slice of the data.
const HOSTS: [(&str, u64); 3] = [("data-1", 1), ("data-2", 2), ("data-3", 3)];
/// The agents' home host.
const HOME: &str = "home";
/// Capabilities alice's modules may ask for.
const CAPS: [&str; 4] = ["table:sales", "table:stock", "table:config", "log:reports"];
/// The example queries: the built module's file stem and the name it is signed under.
const QUERIES: [(&str, &str, &str); 2] = [
    ("sales_by_region", "sales-by-region", r#"{"min_quantity": 2, "from_day": 1, "to_day": 180}"#),
    ("sales_median", "sales-median", r#"{"min_quantity": 2}"#),
];
/// How long a host may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a host may take to shut down after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) fn main() -> Result<()> {
    let root = repo_root();
    // Relative paths from here on, so that every command shown reads as one to type.
    std::env::set_current_dir(&root).with_context(|| format!("cannot change to {}", root.display()))?;
    let demo = PathBuf::from("demo");
    let show = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();

    step("[1/11] Preparing an empty demo/ directory");
    if demo.exists() {
        fs::remove_dir_all(&demo).with_context(|| format!("cannot remove {}", demo.display()))?;
    }
    fs::create_dir_all(&demo).with_context(|| format!("cannot create {}", demo.display()))?;

    step("[2/11] Building the example query modules");
    build_agents()?;

    step("[3/11] Building the roam binary and the embedding example (release)");
    run(cargo().args(["build", "--release", "--bin", "roam", "--example", "embed", "-p", "roam-host"]))?;
    let roam = target_dir(&root).join("release").join(format!("roam{}", std::env::consts::EXE_SUFFIX));
    if !roam.is_file() {
        bail!("the build succeeded but {} is missing", roam.display());
    }

    step("[4/11] Keys for alice and bob; a trust store that trusts alice's modules; who may ask what");
    let keys = demo.join("keys");
    let trust = demo.join("trust");
    roam_run(&roam, |c| c.args(["keys", "new", "alice", "--dir"]).arg(&keys))?;
    fs::create_dir_all(&trust)?;
    fs::copy(keys.join("alice.pub"), trust.join("alice.pub")).context("cannot install alice.pub")?;
    let policy = format!(
        "# What alice's modules may ask for.\n[keys.alice]\ncapabilities = [{}]\n",
        CAPS.map(|c| format!("\"{c}\"")).join(", ")
    );
    fs::write(trust.join("policy.toml"), policy).context("cannot write policy.toml")?;
    println!("trust store {}: alice.pub, and policy.toml granting alice {}", show(&trust), CAPS.join(", "));
    // alice is also a person who uses the hosts: her client proves her key (--identity). bob
    // may launch agents of his own, nothing else.
    roam_run(&roam, |c| c.args(["keys", "new", "bob", "--dir"]).arg(&keys))?;
    let hex = |name: &str| -> Result<String> {
        let text = fs::read_to_string(keys.join(format!("{name}.pub")))?;
        Ok(text.split_whitespace().last().context("an empty public key file")?.to_owned())
    };
    let access = format!(
        "# Who may ask these hosts for what.\n[clients]\nalice = \"{}\"\nbob = \"{}\"\n\n[allow]\n\
         eval = [\"alice\"]\npublish = [\"alice\"]\nlist = [\"alice\"]\nfetch_code = [\"anyone\"]\n\
         launch = [\"alice\", \"bob\"]\nrecall = [\"alice\", \"bob\"]\n",
        hex("alice")?,
        hex("bob")?
    );
    fs::write(trust.join("access.toml"), access).context("cannot write access.toml")?;
    println!(
        "access policy {}: alice may evaluate, publish, list and launch; bob may launch; anyone may fetch code",
        show(&trust.join("access.toml"))
    );
    let alice = keys.join("alice.key");
    // Every host has a key, certified with its name and address by a cluster key that every
    // host trusts: the hosts accept each other as peers, and dial only each other.
    let host_keys = demo.join("hostkeys");
    let peers = demo.join("peers");
    let clusters = peers.join("clusters");
    fs::create_dir_all(&clusters)?;
    roam_run(&roam, |c| c.args(["keys", "new", "cluster", "--dir"]).arg(&keys))?;
    fs::copy(keys.join("cluster.pub"), clusters.join("cluster.pub")).context("cannot install cluster.pub")?;
    let mut listen = std::collections::BTreeMap::new();
    for name in HOSTS.map(|(n, _)| n).into_iter().chain([HOME]) {
        roam_run(&roam, |c| c.args(["keys", "new", name, "--dir"]).arg(&host_keys))?;
        let addr = free_address()?;
        roam_run(&roam, |c| {
            c.args(["keys", "certify"])
                .arg(host_keys.join(format!("{name}.pub")))
                .arg("--cluster")
                .arg(keys.join("cluster.key"))
                .args(["--name", name, "--address", &addr, "--dir"])
                .arg(&peers)
        })?;
        listen.insert(name, addr);
    }
    println!("peers {}: clusters/cluster.pub, and each host's certificate (NAME.cert)", show(&peers));

    step(&format!("[5/11] Generating {ROWS_PER_HOST} sales rows for each host"));
    for (name, seed) in HOSTS {
        let dir = demo.join(name);
        fs::create_dir_all(&dir)?;
        let csv = dir.join("sales.csv");
        sample::write_csv(&csv, &sample::generate(ROWS_PER_HOST, seed))
            .with_context(|| format!("cannot write {}", csv.display()))?;
        let size = fs::metadata(&csv)?.len();
        println!("{}: {ROWS_PER_HOST} rows, {} KiB (seed {seed})", show(&csv), size / 1024);
        let stock = dir.join("stock.csv");
        fs::write(&stock, stock_csv(name, seed))?;
        println!("{}: this warehouse's stock", show(&stock));
    }
    let home_dir = demo.join(HOME);
    fs::create_dir_all(&home_dir)?;
    fs::write(home_dir.join("config.csv"), "key,value\nlow_stock_below,5\n")?;
    fs::write(
        home_dir.join("host.toml"),
        "# The agents' home: a configuration agents carry by value, and a reports log.\n\
         name = \"home\"\ntrust = \"../trust\"\npeers = \"../peers\"\nkey = \"../hostkeys/home.key\"\n\
         data_dir = \"state\"\n\n[[resources]]\nname = \"config\"\ntype = \"table\"\n\
         attachment = \"unattached\"\nsource = \"config.csv\"\n\n[[resources]]\nname = \"reports\"\n\
         type = \"log\"\nattachment = \"fixed\"\n",
    )?;
    println!("{}: the home host's configuration", show(&home_dir.join("host.toml")));

    step("[6/11] Starting the data hosts on loopback");
    // From here on the guard stops the hosts however this function ends.
    let mut hosts = Hosts::default();
    for (name, _) in HOSTS {
        let dir = demo.join(name);
        let log = dir.join("host.log");
        let mut table = std::ffi::OsString::from("sales=");
        table.push(dir.join("sales.csv"));
        let mut stock = std::ffi::OsString::from("stock=");
        stock.push(dir.join("stock.csv"));
        let mut cmd = Command::new(&roam);
        cmd.args(["host", "--name", name, "--listen", &listen[name], "--trust"])
            .arg(&trust)
            .arg("--peers")
            .arg(&peers)
            .arg("--key")
            .arg(host_keys.join(format!("{name}.key")))
            .arg("--data-dir")
            .arg(dir.join("state"))
            .arg("--table")
            .arg(&table)
            .arg("--table")
            .arg(&stock);
        println!("$ {}", display(&cmd));
        let addr = hosts.start(name, cmd, &log)?;
        println!("{name} listening on {addr} (log: {})", show(&log));
    }
    let mut cmd = Command::new(&roam);
    // The home serves its live page on loopback: its agents' routes as they grow.
    let page = free_address()?;
    cmd.args(["host", "--config"]).arg(home_dir.join("host.toml")).args(["--listen", &listen[HOME]]);
    cmd.args(["--status-listen", &page]);
    println!("$ {}", display(&cmd));
    let home_log = home_dir.join("host.log");
    let home_addr = hosts.start(HOME, cmd, &home_log)?;
    println!("{HOME} listening on {home_addr} (log: {})", show(&home_log));
    println!("{HOME}'s live page: http://{page}/ (open it to watch the agent of step 10 move; metrics at /metrics)");
    let data_hosts: Vec<(String, String)> =
        hosts.running.iter().filter(|h| h.name != HOME).map(|h| (h.name.clone(), h.addr.clone())).collect();
    // Clients name each host with its key (KEY@HOST:PORT): TLS then proves it is that host.
    let pinned = |name: &str, addr: &str| -> Result<String> {
        let file = host_keys.join(format!("{name}.pub"));
        let text = fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let key = text.split_whitespace().last().context("an empty public key file")?;
        Ok(format!("{key}@{addr}"))
    };
    let home_target = pinned(HOME, &home_addr)?;

    step("[7/11] Signing the example queries as alice (kind query, capability table:sales)");
    let modules = demo.join("modules");
    fs::create_dir_all(&modules)?;
    let built = Path::new("agents/target/wasm32-unknown-unknown/release");
    let mut signed = Vec::new();
    for (file, name, input) in QUERIES {
        let out = modules.join(format!("{file}.signed.wasm"));
        roam_run(&roam, |c| {
            c.arg("sign")
                .arg(built.join(format!("{file}.wasm")))
                .arg("--key")
                .arg(keys.join("alice.key"))
                .args(["--kind", "query", "--name", name, "--version", "1.0.0"])
                .args(["--cap", "table:sales", "-o"])
                .arg(&out)
        })?;
        signed.push((name, out, input));
    }

    step("[8/11] Evaluating each query on each host: the code travels, the data stays");
    for (name, module, input) in &signed {
        let module_size = fs::metadata(module)?.len();
        for (host_name, host_addr) in &data_hosts {
            println!("\n{name} on {host_name} ({host_addr}), input {input}");
            let mut cmd = Command::new(&roam);
            cmd.arg("eval").arg(module).args(["--host", &pinned(host_name, host_addr)?, "--input", input]);
            cmd.arg("--identity").arg(&alice);
            let started = Instant::now();
            let output =
                cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run `{}`", display(&cmd)))?;
            let elapsed = started.elapsed();
            if !output.status.success() {
                bail!(
                    "`{}` failed ({}):\n{}\n(host log: {})",
                    display(&cmd),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim_end(),
                    show(&demo.join(host_name).join("host.log"))
                );
            }
            let result = String::from_utf8_lossy(&output.stdout);
            for line in result.lines() {
                println!("    {line}");
            }
            println!(
                "  took {} ms; sent a {} KiB module, got back {} bytes",
                elapsed.as_millis(),
                module_size / 1024,
                output.stdout.len()
            );
        }
    }

    step("[9/11] Code on demand: publish a validator, fetch it once, check orders locally");
    let validator = Path::new("agents/target/wasm32-unknown-unknown/release/order_validator.wasm");
    let as_code = modules.join("order_validator.signed.wasm");
    let as_query = modules.join("order_validator.query.wasm");
    for (kind, out) in [("code", &as_code), ("query", &as_query)] {
        roam_run(&roam, |c| {
            c.arg("sign")
                .arg(validator)
                .arg("--key")
                .arg(keys.join("alice.key"))
                .args(["--kind", kind, "--name", "order-validator", "--version", "1.0.0", "-o"])
                .arg(out)
        })?;
    }
    let (first_name, first_addr) = data_hosts.first().context("no data host")?.clone();
    let first_addr = pinned(&first_name, &first_addr)?;
    roam_run(&roam, |c| c.arg("publish").arg(&as_code).args(["--host", &first_addr, "--identity"]).arg(&alice))?;
    roam_run(&roam, |c| c.args(["modules", "--host", &first_addr, "--identity"]).arg(&alice))?;
    let embed = target_dir(&root).join("release/examples").join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    run(Command::new(&embed)
        .args([&first_addr, "order-validator"])
        .arg(&trust)
        .arg(&as_query)
        .env("ROAM_CACHE", demo.join("client-cache"))
        .env("ROAM_IDENTITY", &alice))?;
    println!("(the validator was downloaded once from {first_name}; see the downloads column)");
    roam_run(&roam, |c| c.args(["modules", "--host", &first_addr, "--identity"]).arg(&alice))?;

    step("[10/11] A mobile agent: launched at home, it visits the three data hosts and comes home");
    let survey = modules.join("stock_survey.signed.wasm");
    roam_run(&roam, |c| {
        c.arg("sign")
            .arg(built.join("stock_survey.wasm"))
            .arg("--key")
            .arg(keys.join("alice.key"))
            .args(["--kind", "agent", "--name", "stock-survey", "--version", "1.0.0"])
            .args(["--cap", "table:stock", "--cap", "table:config", "--cap", "log:reports", "-o"])
            .arg(&survey)
    })?;
    let itinerary = format!(
        "{{\"hosts\": [{}]}}",
        data_hosts.iter().map(|(_, a)| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
    );
    let mut launch = Command::new(&roam);
    launch.arg("launch").arg(&survey).args(["--host", &home_target, "--input", &itinerary, "--wait", "--identity"]);
    launch.arg(&alice);
    println!("$ {}", display(&launch));
    let started = Instant::now();
    let output = launch.stdin(Stdio::null()).output().context("cannot run roam launch")?;
    if !output.status.success() {
        bail!(
            "roam launch failed: {}\n(home log: {})",
            String::from_utf8_lossy(&output.stderr).trim_end(),
            show(&home_log)
        );
    }
    // stdout holds the result alone; the id is on stderr ("launched agent ID").
    let said = String::from_utf8_lossy(&output.stderr);
    let id = said.lines().find_map(|l| l.strip_prefix("launched agent ")).context("roam launch gave no id")?.to_owned();
    println!("agent {id} came home after {} ms with:", started.elapsed().as_millis());
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("    {line}");
    }

    step("[11/11] The agent's route and how each resource was bound at each hop; it is alice's alone");
    roam_run(&roam, |c| c.args(["agents", "--host", &home_target, &id, "--identity"]).arg(&alice))?;
    let mut as_bob = Command::new(&roam);
    as_bob.args(["agents", "--host", &home_target, &id, "--identity"]).arg(keys.join("bob.key"));
    println!("$ {}", display(&as_bob));
    let refused = as_bob.stdin(Stdio::null()).output().context("cannot run roam agents")?;
    if refused.status.success() {
        bail!("bob was shown alice's agent");
    }
    println!("{}", String::from_utf8_lossy(&refused.stderr).trim_end());

    println!();
    if std::io::stdin().is_terminal() {
        println!("The page at http://{page}/ shows the agent's route. Press Enter to stop the hosts.");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    hosts.stop_all()?;
    println!("\nDone. Keys, data, host logs and the signed modules are in {}.", show(&demo));
    println!(
        "To try it by hand, start a host (it prints its address; its log shows its key) and evaluate a query on it \
         (the first connection remembers the host's key; name it as KEY@127.0.0.1:7700 to pin it):\n  \
         {roam} host --trust demo/trust --data-dir demo/data-1/state --table sales=demo/data-1/sales.csv --listen 127.0.0.1:7700\n  \
         {roam} eval demo/modules/sales_median.signed.wasm --host 127.0.0.1:7700 --identity demo/keys/alice.key --input '{{\"min_quantity\": 5}}'",
        roam = show(&roam)
    );
    Ok(())
}

/// A warehouse's stock table: a few SKUs with deterministic quantities and prices.
fn stock_csv(warehouse: &str, seed: u64) -> String {
    let mut csv = String::from("sku,warehouse,quantity,unit_cents\n");
    for (i, sku) in ["bolt", "gear", "nut", "spring", "valve", "washer"].iter().enumerate() {
        let i = i as u64;
        let quantity = (seed * 7 + i * 5) % 12;
        let unit_cents = 50 + (seed * 13 + i * 29) % 400;
        csv.push_str(&format!("{sku},{warehouse},{quantity},{unit_cents}\n"));
    }
    csv
}

/// The target directory `cargo build` writes to, as far as the environment says.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .or_else(|| std::env::var_os("CARGO_BUILD_TARGET_DIR"))
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// Runs `roam` with the arguments `build` adds, echoing the command and inheriting stdio.
fn roam_run(roam: &Path, build: impl FnOnce(&mut Command) -> &mut Command) -> Result<()> {
    let mut cmd = Command::new(roam);
    run(build(&mut cmd))
}

/// A running data host.
struct Host {
    name: String,
    addr: String,
    log: PathBuf,
    child: Child,
}

/// The hosts started so far. Dropping it stops them, so an error (or a panic) in the middle of
/// the demo never leaves a host running.
#[derive(Default)]
struct Hosts {
    running: Vec<Host>,
}

impl Hosts {
    /// Starts `cmd` (a `roam host` command) with its logs in `log`, and waits for it to print
    /// `listening on ADDR`.
    fn start(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<String> {
        let log_file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = cmd
            // The log is a file: no colour codes in it.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start `{}`", display(&cmd)))?;
        let stdout = child.stdout.take();
        // Guarded before waiting, so that a host that never gets ready is stopped too.
        self.running.push(Host { name: name.to_owned(), addr: String::new(), log: log.to_owned(), child });
        let Some(stdout) = stdout else { bail!("{name}'s stdout was not captured") };
        let addr = wait_for_listening(stdout)
            .with_context(|| format!("{name} did not start; its log {}:\n{}", log.display(), tail(log)))?;
        if let Some(host) = self.running.last_mut() {
            host.addr.clone_from(&addr);
        }
        Ok(addr)
    }

    /// Stops every host with SIGTERM and checks that each exits cleanly.
    fn stop_all(&mut self) -> Result<()> {
        let mut unclean = Vec::new();
        for mut host in std::mem::take(&mut self.running) {
            match terminate(&mut host.child) {
                Ok(status) if status.success() => println!("{} stopped ({status})", host.name),
                Ok(status) => unclean.push(format!("{} exited with {status}; see {}", host.name, host.log.display())),
                Err(e) => unclean.push(format!("{}: {e:#}", host.name)),
            }
        }
        if !unclean.is_empty() {
            bail!("not every host shut down cleanly:\n{}", unclean.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &mut self.running {
            eprintln!("stopping {}", host.name);
            if let Err(e) = terminate(&mut host.child) {
                eprintln!("could not stop {} (pid {}): {e:#}", host.name, host.child.id());
            }
        }
    }
}

/// Asks `child` to shut down with SIGTERM; kills it if it is still there after
/// [`STOP_DEADLINE`].
fn terminate(child: &mut Child) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = child.id().to_string();
    let signalled = Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
    if signalled {
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            // std has no wait-with-timeout; polling against a deadline is the portable way.
            thread::sleep(Duration::from_millis(20));
        }
    }
    // Fails only if the process is already gone, which `wait` then reports.
    let _ = child.kill();
    let status = child.wait()?;
    bail!("it did not exit within {STOP_DEADLINE:?} of SIGTERM and was killed ({status})")
}

/// Reads a host's stdout until `listening on ADDR`; a thread keeps draining it afterwards.
fn wait_for_listening(stdout: ChildStdout) -> Result<String> {
    let (lines_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // After the address line nobody listens; keep reading so the host never blocks.
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Ok(addr.trim().to_owned());
                }
                println!("  (host said: {line})");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no `listening on ADDR` line within {START_DEADLINE:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("it exited (or closed its stdout) without printing `listening on ADDR`")
            }
        }
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A loopback address with a port free now, for a host to be certified at and then listen on.
fn free_address() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.to_string())
}
