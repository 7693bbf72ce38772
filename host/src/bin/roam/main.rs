//! `roam`: keys, signing, the host daemon and remote evaluation, from the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use roam_host::client::{Client, cbor_to_json, json_to_cbor, split_target};
use roam_host::config::HostConfig;
use roam_host::host::Host;
use roam_host::known_hosts::KnownHosts;
use roam_host::protocol::wire::AgentInfo;
use roam_host::server::RunningHost;
use roam_keys::{HostCertificate, Kind, PublicKey, SecretKey, SignRequest, TrustStore, VerifyContext};
use serde_json::json;

mod logs;
mod output;

use output::{NotFinished, TimedOut, agent_json, ago, date, json_out, module_json, note, out, print_result};

#[derive(Parser)]
#[command(
    name = "roam",
    version,
    about = "Move code to data: signed Wasm modules, run where the data lives",
    after_help = output::EXIT_STATUSES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print the data as one JSON document on stdout instead of lines and tables for people.
    #[arg(long, global = true)]
    json: bool,
    /// Show more of roam's log (-v debug, -vv trace); RUST_LOG, when set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors on stderr: no notes, no progress.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// How log lines are written on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: logs::LogFormat,
    /// The public key (hex) the host must prove; also given as KEY@HOST:PORT. Without either,
    /// the key remembered in the known hosts file, or, for a host never seen before, the key it
    /// proves now (trust on first use, as ssh does).
    #[arg(long, global = true, value_name = "KEY")]
    host_key: Option<String>,
    /// Where the keys of hosts this client has talked to are remembered [default:
    /// $ROAM_KNOWN_HOSTS, else ~/.config/roam/known_hosts].
    #[arg(long, global = true, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Your secret key (from `roam keys new`), proven to hosts so that their access policy
    /// knows you [default: $ROAM_IDENTITY, else ~/.config/roam/identity.key if it exists;
    /// without one, you are anonymous].
    #[arg(long, global = true, value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// How the client connects: who it is to the host, and how it makes sure it talks to the host
/// it means.
struct Pins {
    /// The key the person gave with --host-key.
    given: Option<PublicKey>,
    known: KnownHosts,
    /// TLS proving the person's identity, if they have one.
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Pins {
    fn new(cli: &Cli) -> Result<Self> {
        let given = cli.host_key.as_deref().map(PublicKey::from_hex).transpose().context("--host-key")?;
        let known = KnownHosts::at(cli.known_hosts.clone().unwrap_or_else(KnownHosts::default_path));
        let identity = identity(cli.identity.as_deref())?.map(std::sync::Arc::new);
        let tls = roam_host::transport::client_config(identity).context("cannot set up TLS")?;
        Ok(Self { given, known, tls })
    }

    /// Connects to `host` (HOST:PORT or KEY@HOST:PORT) and checks the key it proves: the one
    /// given, else the one remembered; a host never seen before is remembered now.
    async fn connect(&self, host: &str) -> Result<Client> {
        let (in_address, addr) = split_target(host)?;
        let client = Client::connect_with(addr, self.tls.clone()).await?;
        if let Some(key) = self.given {
            client.expect_key(addr, key, "give the new key with --host-key")?;
            return Ok(client);
        }
        if let Some(key) = in_address {
            client.expect_key(addr, key, "put the new key in the address (KEY@HOST:PORT)")?;
            return Ok(client);
        }
        let proven = client.host_key();
        match self.known.lookup(addr)? {
            Some(known) if known == proven => {}
            Some(known) => bail!(
                "the host at {addr} proved key {proven}, not the key {known} remembered for it in {}: it is another \
                 host, or its key changed. If you know it changed, delete the line for {addr} from that file (or give \
                 --host-key {proven}); otherwise do not trust it",
                self.known.path().display()
            ),
            None => {
                self.known.remember(addr, &proven)?;
                note!(
                    "roam: first connection to {addr}: its key {proven} is trusted from now on (remembered in {})",
                    self.known.path().display()
                );
            }
        }
        Ok(client)
    }

    /// `host` as a target that pins the key [`Pins::connect`] would check, for the library's
    /// own connections. Only a host never seen before is connected to now.
    async fn target(&self, host: &str) -> Result<String> {
        let (in_address, addr) = split_target(host)?;
        let key = match self.given.or(in_address) {
            Some(key) => key,
            None => match self.known.lookup(addr)? {
                Some(key) => key,
                None => self.connect(addr).await?.host_key(),
            },
        };
        Ok(format!("{}@{addr}", key.to_hex()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Sign a Wasm module: embed a signature section over its hash and claims.
    Sign {
        /// The module to sign.
        input: PathBuf,
        /// The signer's secret key (NAME.key from `roam keys new`).
        #[arg(long)]
        key: PathBuf,
        /// What the module is for: query (remote evaluation), code (code on demand) or agent.
        #[arg(long)]
        kind: Kind,
        /// The module's name; versions of one name are protected against rollback.
        #[arg(long)]
        name: String,
        /// The module's version (semver, e.g. 1.2.0).
        #[arg(long)]
        version: semver::Version,
        /// How long the signature stays valid (e.g. 90d, 12h).
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// A capability the module asks for, e.g. table:sales or log:audit (repeatable).
        #[arg(long = "cap", value_name = "CAPABILITY")]
        caps: Vec<String>,
        /// Where to write the signed module.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Verify a signed module against a trust store and print what it claims.
    Verify {
        /// The signed module.
        file: PathBuf,
        /// Trust store: a directory of *.pub files, with an optional policy.toml.
        #[arg(long)]
        trust: PathBuf,
        /// Require this kind of module.
        #[arg(long)]
        kind: Option<Kind>,
    },
    /// Run a host daemon: remote evaluation next to its data, a code repository, and mobile agents.
    Host(HostArgs),
    /// Evaluate a signed query module on a remote host and print its result as JSON.
    Eval {
        /// The signed query module.
        module: PathBuf,
        /// The host's address, e.g. 127.0.0.1:7700.
        #[arg(long, env = "ROAM_HOST")]
        host: String,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Publish a signed code or agent module to a host's code repository.
    Publish {
        /// The signed module.
        module: PathBuf,
        /// The host's address, HOST:PORT.
        #[arg(long, env = "ROAM_HOST")]
        host: String,
    },
    /// List the modules a host holds.
    Modules {
        /// The host's address, HOST:PORT.
        #[arg(long, env = "ROAM_HOST")]
        host: String,
    },
    /// Launch a mobile agent; the host becomes its home. Prints the agent's id.
    Launch {
        /// The signed agent module.
        module: PathBuf,
        /// The home host's address, HOST:PORT.
        #[arg(long, env = "ROAM_HOST")]
        host: String,
        #[command(flatten)]
        input: InputArgs,
        /// Wait for the agent to end and print its result (or why it failed).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Show your agents a host knows, newest first: where each is, its hops, state, and when
    /// it was launched and ended; for one agent, its route and how each resource was bound at
    /// each hop.
    ///
    /// States at an agent's home: running (a visit under way, here or on another host), in
    /// transit (between two hosts), parked (its next host did not answer; retried), finished
    /// (its result is here), failed (the detail says why), recalled (brought home by a recall;
    /// its partial result is here). On a host it only visited, an agent that moved on is left.
    Agents {
        /// The host's address, HOST:PORT (an agent's home knows its whole route).
        #[arg(long, env = "ROAM_HOST")]
        host: String,
        /// Only this agent, in detail.
        id: Option<String>,
        /// Only agents in this state (repeatable): running, "in transit", parked, finished,
        /// failed, recalled, left.
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
    },
    /// Bring an agent back to its home (receiver-initiated migration). The home persists the
    /// order and sends it after the agent, wherever it is; the agent comes home with its state
    /// and hands over a partial result. Exits 0 once the order is persisted, or, with --wait,
    /// once the agent came home recalled or finished (5 if it failed, 4 if --timeout passed).
    Recall {
        /// The agent's id.
        id: String,
        /// The agent's home host, HOST:PORT.
        #[arg(long, env = "ROAM_HOST")]
        host: String,
        /// Wait for the agent to end, then print how: recalled with its partial result, finished
        /// first with its result, or failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Fetch a code module from a host (once; then from the cache) and run it locally.
    Run {
        /// NAME, NAME@VERSION, or the module's hash.
        module: roam_host::fetch::ModuleSpec,
        /// The host to fetch it from, HOST:PORT.
        #[arg(long, env = "ROAM_HOST")]
        from: String,
        #[command(flatten)]
        input: InputArgs,
        /// Trust store to verify the module against [default: $ROAM_TRUST, else ~/.config/roam/trust].
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Grant the module a capability it asks for, e.g. table:orders (repeatable).
        #[arg(long = "allow", value_name = "CAPABILITY")]
        allow: Vec<String>,
        /// Offer a local table: NAME=FILE, CSV or SQLite (repeatable).
        #[arg(long = "table", value_name = "NAME=FILE")]
        tables: Vec<String>,
        /// The code cache [default: $ROAM_CACHE, else ~/.cache/roam].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Ask the host again what the name resolves to.
        #[arg(long)]
        refresh: bool,
    },
    /// Print a shell completion script: `roam completions bash > /etc/bash_completion.d/roam`,
    /// or for zsh, fish, elvish, powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A module's input, as JSON.
#[derive(clap::Args)]
struct InputArgs {
    /// The input as JSON (default {}).
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input (JSON) from a file; `-` reads it from stdin.
    #[arg(long)]
    input_file: Option<PathBuf>,
}

impl InputArgs {
    /// The input as CBOR.
    fn read(self) -> Result<Vec<u8>> {
        let text = match (self.input, self.input_file) {
            (Some(t), _) => t,
            (None, Some(f)) if f.as_os_str() == "-" => {
                std::io::read_to_string(std::io::stdin().lock()).context("cannot read the input from stdin")?
            }
            (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?,
            (None, None) => "{}".to_owned(),
        };
        let json: serde_json::Value = serde_json::from_str(&text).context("the input is not valid JSON")?;
        Ok(json_to_cbor(&json))
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key pair: NAME.key (secret, mode 0600) and NAME.pub.
    New {
        /// The key's name.
        name: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Certify a host key with a cluster key: writes NAME.cert, which makes the host a peer of
    /// every host that trusts the cluster key (in its peers directory's clusters/) and tells
    /// them where it listens. Give the certificate to the host (its peers directory) and to
    /// the hosts that dial it.
    Certify {
        /// The host's public key file (the .pub beside its --key, or from `roam keys new`).
        #[arg(value_name = "HOST.pub")]
        host_public: PathBuf,
        /// The cluster's secret key (from `roam keys new`).
        #[arg(long)]
        cluster: PathBuf,
        /// The host's name, as agents and peers' logs will show it.
        #[arg(long)]
        name: String,
        /// Where the host listens, HOST:PORT, as its peers dial it.
        #[arg(long)]
        address: String,
        /// How long the certificate stays valid (e.g. 90d, 12h).
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// Where to write NAME.cert.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct HostArgs {
    /// Configuration file (see the README); flags below override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The host's name.
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:7700].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The host's secret key (default DATA_DIR/host.key, created if missing).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Trust store: a directory of *.pub files, with an optional policy.toml.
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Where the host keeps its state, module store and code cache [default: roam-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Offer a table: NAME=FILE, a CSV file or a SQLite database with a table NAME (repeatable).
    #[arg(long = "table", value_name = "NAME=FILE")]
    tables: Vec<String>,
    /// Offer an append-only log named NAME (repeatable).
    #[arg(long = "log", value_name = "NAME")]
    logs: Vec<String>,
    /// Trusted peer hosts: a directory of their *.pub keys (agents, reports and forwarded
    /// calls are accepted only from them).
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Who may ask this host for what (see the README) [default: access.toml in the trust
    /// store; without it, anyone may fetch code modules and nobody may do anything else].
    #[arg(long)]
    access: Option<PathBuf>,
    /// Serve read-only HTTP status here, e.g. 127.0.0.1:9700: a live page of the host's agents
    /// at /, /metrics in Prometheus' format. Off unless given (or `status_listen` in the file);
    /// agent details are shown to viewers on this machine only.
    #[arg(long, value_name = "ADDR")]
    status_listen: Option<std::net::SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _telemetry = logs::init(cli.log_format, cli.verbose, cli.quiet);
    output::set_quiet(cli.quiet);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match output::status(&e) {
            // stdout was closed (`roam modules | head -1`): nothing more to say.
            None => std::process::ExitCode::SUCCESS,
            Some(status) => {
                eprintln!("error: {}", output::describe(&e));
                std::process::ExitCode::from(status)
            }
        },
    }
}

/// The person's secret key: `--identity`, else `$ROAM_IDENTITY`, else
/// `~/.config/roam/identity.key` if it exists; `None` means anonymous.
fn identity(given: Option<&Path>) -> Result<Option<SecretKey>> {
    let named = given.map(Path::to_path_buf).or_else(|| std::env::var_os("ROAM_IDENTITY").map(PathBuf::from));
    let default = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config/roam/identity.key"));
    let Some(path) = named.or(default.filter(|p| p.exists())) else { return Ok(None) };
    let key = SecretKey::load(&path).with_context(|| format!("cannot use {} as your identity", path.display()))?;
    Ok(Some(key))
}

fn run(cli: Cli) -> Result<()> {
    // Completions need no identity: a broken ROAM_IDENTITY must not stop a shell's set-up.
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut buffer = Vec::new();
        clap_complete::generate(shell, &mut command, "roam", &mut buffer);
        std::io::Write::write_all(&mut std::io::stdout().lock(), &buffer).map_err(output::stdout_error)?;
        return Ok(());
    }
    let pins = Pins::new(&cli)?;
    let as_json = cli.json;
    match cli.command {
        Command::Completions { .. } => Ok(()),
        Command::Keys { command: KeysCommand::New { name, dir } } => {
            let (key, public_path, public) = roam_keys::write_keypair(&dir, &name)?;
            if as_json {
                return json_out(&json!({
                    "secret_key_file": key,
                    "public_key_file": public_path,
                    "public_key": public.to_hex(),
                }));
            }
            out!("secret key: {}", key.display());
            out!("public key: {} ({public})", public_path.display());
            Ok(())
        }
        Command::Keys { command: KeysCommand::Certify { host_public, cluster, name, address, expires, dir } } => {
            let key = PublicKey::load(&host_public)?;
            let cluster = SecretKey::load(&cluster)?;
            let now = roam_host::state::now_secs();
            let cert =
                HostCertificate::issue(&cluster, &name, key, &address, now, now.saturating_add(expires.as_secs()))?;
            let path = dir.join(format!("{name}.{}", roam_keys::CERT_EXT));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("cannot create {} (delete an old certificate first)", path.display()))?;
            std::io::Write::write_all(&mut file, cert.to_file_text().as_bytes())?;
            let until = date(cert.expires);
            if as_json {
                return json_out(&json!({
                    "certificate_file": path,
                    "host": name,
                    "address": address,
                    "key": key.to_hex(),
                    "expires": until,
                    "cluster_key": cluster.public().to_hex(),
                }));
            }
            out!("certificate: {} (host {name} at {address}, key {key}, until {until})", path.display());
            out!("cluster key: {}", cluster.public());
            Ok(())
        }
        Command::Sign { input, key, kind, name, version, expires, caps, output } => {
            let wasm = std::fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let key = SecretKey::load(&key)?;
            let now = roam_host::state::now_secs();
            let request = SignRequest {
                kind,
                name,
                version,
                issued_at: now,
                not_before: now,
                expires: now.saturating_add(expires.as_secs()),
                capabilities: caps,
            };
            let signed = roam_keys::sign_module(&wasm, &key, request)?;
            std::fs::write(&output, &signed).with_context(|| format!("cannot write {}", output.display()))?;
            let hash = roam_keys::hash_module(&signed);
            if as_json {
                return json_out(&json!({ "input": input, "output": output, "hash": hash.to_string() }));
            }
            out!("signed {} -> {} ({hash})", input.display(), output.display());
            Ok(())
        }
        Command::Verify { file, trust, kind } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let trust = load_trust(&trust)?;
            let hash = roam_keys::hash_module(&bytes);
            let mut ctx = VerifyContext::new(&trust, roam_host::state::now_secs());
            ctx.expected_kind = kind;
            let verified = roam_keys::verify(bytes, &ctx).with_context(|| format!("{} refused", file.display()))?;
            let c = verified.claims();
            if as_json {
                return json_out(&json!({
                    "signer": verified.signer_name(),
                    "signer_key": c.signer.to_hex(),
                    "kind": c.kind.to_string(),
                    "name": c.name,
                    "version": c.version.to_string(),
                    "hash": hash.to_string(),
                    "code_hash": c.module_hash.to_string(),
                    "capabilities": c.capabilities,
                    "not_before": date(c.not_before),
                    "expires": date(c.expires),
                }));
            }
            out!("signer: {} ({})", verified.signer_name(), c.signer);
            out!("kind: {}", c.kind);
            out!("name: {}", c.name);
            out!("version: {}", c.version);
            out!("hash: {hash}");
            out!("code hash: {}", c.module_hash);
            out!("capabilities: {}", c.capabilities.join(", "));
            out!("valid: from {} until {} (UTC)", date(c.not_before), date(c.expires));
            Ok(())
        }
        Command::Host(args) => host(args),
        Command::Eval { module, host, input } => {
            let bytes = std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
            let input = input.read()?;
            let output = runtime()?.block_on(async {
                let mut client = pins.connect(&host).await?;
                anyhow::Ok(client.eval(&bytes, input).await?)
            })?;
            print_result(&output)
        }
        Command::Publish { module, host } => {
            let bytes = std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
            let info = runtime()?.block_on(async { anyhow::Ok(pins.connect(&host).await?.publish(bytes).await?) })?;
            if as_json {
                return json_out(&module_json(&info));
            }
            out!("published {}@{} ({}, {} bytes) as {}", info.name, info.version, info.kind, info.size, info.hash);
            Ok(())
        }
        Command::Modules { host } => {
            let list = runtime()?.block_on(async { anyhow::Ok(pins.connect(&host).await?.list().await?) })?;
            if as_json {
                return json_out(&list.iter().map(module_json).collect());
            }
            out!(
                "{:<24} {:<10} {:<6} {:>9} {:>9}  {:<16} hash",
                "name",
                "version",
                "kind",
                "size",
                "downloads",
                "signer"
            );
            for m in list {
                let signer = m.signer.to_hex();
                out!(
                    "{:<24} {:<10} {:<6} {:>9} {:>9}  {:<16} {}",
                    m.name,
                    m.version.to_string(),
                    m.kind.to_string(),
                    m.size,
                    m.downloads,
                    &signer[..16],
                    m.hash
                );
            }
            Ok(())
        }
        Command::Launch { module, host, input, wait, timeout } => {
            let bytes = std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
            let input = input.read()?;
            runtime()?.block_on(async {
                let mut client = pins.connect(&host).await?;
                let id = client.launch(bytes, input).await?;
                if !wait {
                    if as_json {
                        return json_out(&json!({ "id": id }));
                    }
                    out!("{id}");
                    return Ok(());
                }
                // stdout is for the result alone (`roam launch --wait | jq`).
                note!("launched agent {id}");
                let deadline = std::time::Instant::now() + timeout;
                loop {
                    let agent = client.agent(&id).await?;
                    match agent.state.as_str() {
                        "finished" if as_json => return json_out(&agent_json(&agent)?),
                        "finished" => return print_result(&agent.result),
                        "failed" | "recalled" => {
                            if as_json {
                                json_out(&agent_json(&agent)?)?;
                            }
                            let detail = agent.detail.unwrap_or_default();
                            return Err(NotFinished(format!("agent {id} {}: {detail}", agent.state)).into());
                        }
                        _ if std::time::Instant::now() > deadline => {
                            return Err(TimedOut(format!(
                                "agent {id} is still {} at {} after {}; it goes on (see `roam agents {id}`)",
                                agent.state,
                                agent.location,
                                humantime::format_duration(timeout)
                            ))
                            .into());
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        }
        Command::Agents { host, id, states } => runtime()?.block_on(async {
            const STATES: [&str; 7] = ["running", "in transit", "parked", "finished", "failed", "recalled", "left"];
            if let Some(unknown) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
                bail!("--state {unknown:?}: an agent's state is one of {}", STATES.join(", "));
            }
            let mut client = pins.connect(&host).await?;
            let Some(id) = id else {
                let mut list = client.agents().await?;
                list.retain(|a| states.is_empty() || states.contains(&a.state));
                // Newest first: the home lists its agents in the order they were launched, and
                // the sort keeps that order among agents launched in the same second. Agents a
                // visited host knows (launched elsewhere, at no time it knows) come last.
                list.reverse();
                list.sort_by_key(|a| std::cmp::Reverse(a.launched_at));
                if as_json {
                    return json_out(&list.iter().map(agent_json).collect::<Result<Vec<_>>>()?.into());
                }
                out!(
                    "{:<32}  {:<24} {:<11} {:>4}  {:<20} {:<20} {:<20} detail",
                    "id",
                    "agent",
                    "state",
                    "hops",
                    "launched",
                    "ended",
                    "host"
                );
                for a in list {
                    let mut detail = a.detail.clone().unwrap_or_default();
                    if a.recall_ordered.is_some() && !is_over(&a) {
                        detail = if detail.is_empty() {
                            "recall ordered".into()
                        } else {
                            format!("recall ordered; {detail}")
                        };
                    }
                    let launched = if a.launched_at > 0 { date(a.launched_at) } else { "-".to_owned() };
                    let ended = a.ended_at.map_or_else(|| "-".to_owned(), date);
                    out!(
                        "{:<32}  {:<24} {:<11} {:>4}  {:<20} {:<20} {:<20} {}",
                        a.id,
                        a.label,
                        a.state,
                        a.hops,
                        launched,
                        ended,
                        a.location,
                        detail
                    );
                }
                return Ok(());
            };
            let a = client.agent(&id).await?;
            if as_json {
                return json_out(&agent_json(&a)?);
            }
            out!("agent:    {} ({})", a.id, a.label);
            out!("state:    {}{}", a.state, a.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default());
            out!("location: {}", describe_location(&a));
            out!("hops:     {}", a.hops);
            if a.launched_at > 0 {
                out!("launched: {} ({})", date(a.launched_at), ago(a.launched_at));
            }
            if let Some(ended) = a.ended_at {
                out!("ended:    {} ({})", date(ended), ago(ended));
            }
            if let Some(owner) = a.owner {
                out!("owner:    {owner}");
            }
            if let Some(ordered) = a.recall_ordered {
                let over = matches!(a.state.as_str(), "finished" | "failed" | "recalled");
                let status = if over { "" } else { ", on its way to the agent" };
                out!("recall:   ordered {}{status}", ago(ordered / 1000));
            }
            if a.home {
                out!("route:");
                for v in &a.route {
                    out!(
                        "  hop {:>3}  {} ({})  {}{}",
                        v.hop,
                        v.host,
                        v.address,
                        describe_bindings(&v.bindings),
                        describe_receipt(v)
                    );
                }
            }
            if !a.result.is_empty() {
                let result = cbor_to_json(&a.result).map_err(anyhow::Error::msg)?;
                out!("result:   {}", serde_json::to_string(&result)?);
            }
            Ok(())
        }),
        Command::Recall { id, host, wait, timeout } => runtime()?.block_on(async {
            let mut client = pins.connect(&host).await?;
            let mut agent = client.recall(&id).await?;
            if is_over(&agent) {
                note!("agent {id} had already ended: nothing to recall");
                return print_outcome(&agent, as_json);
            }
            let ordered = format!("recall ordered: agent {id} was last at {}", describe_location(&agent));
            if !wait {
                if as_json {
                    return json_out(&agent_json(&agent)?);
                }
                out!("{ordered}");
                return Ok(());
            }
            note!("{ordered}");
            let deadline = std::time::Instant::now() + timeout;
            while !is_over(&agent) {
                if std::time::Instant::now() > deadline {
                    return Err(TimedOut(format!(
                        "agent {id} is still {} at {} after {}; the recall order stands",
                        agent.state,
                        agent.location,
                        humantime::format_duration(timeout)
                    ))
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                agent = client.agent(&id).await?;
            }
            print_outcome(&agent, as_json)
        }),
        Command::Run { module, from, input, trust, allow, tables, cache, refresh } => {
            let trust_dir = trust.or_else(default_trust_dir).context("give --trust DIR: no default trust store")?;
            let trust = load_trust(&trust_dir)?;
            let cache_dir = cache.unwrap_or_else(roam_host::fetch::CodeCache::default_dir);
            let mut resources = roam_host::resources::Resources::default();
            for spec in &tables {
                let (name, file) =
                    spec.split_once('=').with_context(|| format!("--table {spec:?}: expected NAME=FILE"))?;
                resources.add_table(name, Default::default(), file.as_ref(), &cache_dir)?;
            }
            let mut builder = roam_host::local::CodeOnDemand::builder(trust)
                .cache_dir(cache_dir)
                .resources(resources)
                .refresh(refresh)
                .tls(pins.tls.clone());
            for cap in allow {
                builder = builder.allow(cap);
            }
            let cod = builder.build()?;
            let input = input.read()?;
            let progress = |got: u64, total: u64| {
                if total >= 1 << 20 && !output::quiet() {
                    eprint!("\rdownloading {module}: {} / {} KiB", got >> 10, total >> 10);
                    if got == total {
                        eprintln!();
                    }
                }
            };
            let loaded = runtime()?.block_on(async {
                let from = pins.target(&from).await?;
                anyhow::Ok(cod.fetch_with_progress(&from, &module, Some(&progress)).await?)
            })?;
            let output = cod.call_raw(&loaded, input)?;
            print_result(&output)
        }
    }
}

/// Whether an agent's journey has ended.
fn is_over(agent: &AgentInfo) -> bool {
    matches!(agent.state.as_str(), "finished" | "failed" | "recalled")
}

/// How an agent's journey ended: a line for people on stderr, its result (or partial result) as
/// JSON on stdout.
fn print_outcome(agent: &AgentInfo, as_json: bool) -> Result<()> {
    let id = &agent.id;
    let detail = agent.detail.clone().unwrap_or_default();
    match agent.state.as_str() {
        "recalled" => note!("agent {id} is home: {detail}"),
        "finished" if agent.recall_ordered.is_some() => {
            note!("agent {id} finished at {} before the recall reached it", agent.location);
        }
        "finished" => note!("agent {id} finished at {}", agent.location),
        _ => note!("agent {id} {}: {detail}", agent.state),
    }
    if as_json {
        json_out(&agent_json(agent)?)?;
    } else if !agent.result.is_empty() {
        print_result(&agent.result)?;
    }
    if agent.state == "failed" {
        return Err(NotFinished(format!("agent {id} failed: {detail}")).into());
    }
    Ok(())
}

/// Where an agent is, as its home last heard, and how long ago that was.
fn describe_location(agent: &AgentInfo) -> String {
    let mut out = format!("{} (hop {}", agent.location, agent.hops);
    if let Some(visit) = agent.route.last().filter(|v| v.at > 0 && v.hop == agent.hops) {
        out.push_str(&format!(", its visit began {}", ago(visit.at / 1000)));
    }
    if agent.heard_at > 0 {
        out.push_str(&format!(", last heard of {}", ago(agent.heard_at)));
    }
    out.push(')');
    out
}

/// The receipt a host gave for a visit, as the route shows it: who signed, and when.
fn describe_receipt(visit: &roam_host::protocol::wire::Visit) -> String {
    use roam_host::protocol::wire::{Receipt, domain};
    let Some(signed) = &visit.receipt else { return String::new() };
    // The host that reported the visit gave it; it must also be the one its address names.
    match signed.open::<Receipt>(domain::RECEIPT, |k| *k == signed.signer) {
        Ok(r) if r.hop == visit.hop && r.receiver == signed.signer => {
            format!("  receipt signed by {}… {}", &r.receiver.to_hex()[..16], ago(r.at))
        }
        Ok(_) => "  receipt for another hop".into(),
        Err(e) => format!("  receipt invalid: {e}"),
    }
}

/// Shows bindings as `name: action` for people.
fn describe_bindings(bindings: &[roam_abi::Bound]) -> String {
    bindings
        .iter()
        .map(|b| {
            let action = format!("{:?}", b.action).to_lowercase();
            match &b.error {
                Some(e) => format!("{}: {action} ({e})", b.name),
                None => format!("{}: {action}", b.name),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The person's trust store, with a note for each likely mistake in its policy.
fn load_trust(dir: &Path) -> Result<TrustStore> {
    let trust = TrustStore::load(dir)?;
    for warning in trust.warnings() {
        note!("roam: warning: trust store {}: {warning}", dir.display());
    }
    Ok(trust)
}

fn default_trust_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ROAM_TRUST") {
        return Some(dir.into());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("roam/trust"))
}

fn host(args: HostArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => HostConfig::load(path)?,
        None => {
            let Some(trust) = args.trust.clone() else {
                bail!("give --trust DIR (a directory of trusted *.pub files) or --config FILE");
            };
            HostConfig::new(trust, args.data_dir.clone().unwrap_or_else(|| "roam-data".into()))
        }
    };
    if let Some(n) = args.name {
        config.name = n;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(k) = args.key {
        config.key = Some(k);
    }
    if let Some(t) = args.trust {
        config.trust = t;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    for t in &args.tables {
        config.add_table(t)?;
    }
    for l in &args.logs {
        config.add_log(l);
    }
    if let Some(p) = args.peers {
        config.peers = Some(p);
    }
    if let Some(p) = args.access {
        config.access = Some(p);
    }
    if let Some(a) = args.status_listen {
        config.status_listen = Some(a);
    }
    let rt = runtime()?;
    rt.block_on(async {
        // A host that does not start (a bad table, a port in use) leaves no data directory it
        // made: the next attempt starts as fresh as this one did.
        let fresh = !config.data_dir.exists();
        let started = async {
            let host = Host::open(&config)?;
            // The status listener first, so that failing to bind it comes before the host
            // serves anyone.
            if let Some(addr) = config.status_listen {
                let bound = roam_host::status::start(host.clone(), addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} for status (status_listen)"))?;
                tracing::info!(%bound, "status page at http://{bound}/ (metrics at /metrics)");
            }
            let running = RunningHost::start(host.clone(), config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            anyhow::Ok((host, running))
        };
        let (host, running) = match started.await {
            Ok(started) => started,
            Err(e) => {
                if fresh {
                    let _ = std::fs::remove_dir_all(&config.data_dir);
                }
                return Err(e);
            }
        };
        out!("listening on {}", running.addr());
        std::io::Write::flush(&mut std::io::stdout())?;
        // Only the address goes to stdout (scripts read that one line); the key, which clients
        // pin as KEY@ADDRESS, is in the log.
        tracing::info!(
            name = host.name(),
            key = %host.public_key(),
            addr = %running.addr(),
            "host ready; clients may pin its key: --host {}@{}",
            host.public_key(),
            running.addr()
        );
        serve_until_stopped(&host, &config).await?;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

/// Waits for SIGTERM or SIGINT; on SIGHUP, reloads the trust store, the access policy and the
/// peers, keeping what it had if one of them does not load.
async fn serve_until_stopped(host: &Host, config: &roam_host::config::HostConfig) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("cannot watch SIGINT"),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => match host.reload(config) {
                Ok(()) => tracing::info!("SIGHUP: reloaded the trust store, the access policy and the peers"),
                Err(e) => tracing::error!("SIGHUP: {e:#}; nothing was reloaded, the host goes on as it was"),
            },
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    /// clap checks some of a command's definition only when that command runs (conflicts and
    /// requirements naming arguments that exist, unique short flags): this checks them all.
    #[test]
    fn the_command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
