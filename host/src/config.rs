//! A host's configuration: `host.toml`, with command-line flags for the common fields.
//!
//! ```toml
//! name = "data-1"
//! listen = "127.0.0.1:7700"
//! key = "host.key"            # default: DATA_DIR/host.key, created on first start
//! trust = "trust"             # directory of *.pub files (+ optional policy.toml)
//! data_dir = "data"
//!
//! [limits]
//! memory_mib = 256
//! time_ms = 10000
//! result_kib = 8192           # largest result of one call
//! log_kib = 1024              # most bytes one call appends to log resources
//! workers = 2                 # default: number of cores
//! max_connections = 256
//! connections_per_source = 32 # open at once from one IP address
//! reserved_connections = 64   # of max_connections, kept for peers and the clients access.toml names
//! idle_s = 60                 # a connection silent between requests is closed after this
//! inflight_mib = 256          # large frames being read or written, host-wide
//! frame_timeout_ms = 30000    # a frame must arrive whole within this of its first byte
//! table_memory_mib = 1024     # columnar tables held in memory, together; 0: read from disk
//!
//! [[resources]]
//! name = "sales"
//! type = "table"
//! attachment = "fastened"     # unattached | fastened | fixed
//! source = "sales.csv"        # .csv, or a SQLite file holding a table of this name
//!
//! [[resources]]
//! name = "lineitem"
//! type = "table"
//! engine = "columnar"         # DataFusion; the default for a .parquet source
//! source = "lineitem.csv"     # .csv (converted into Parquet once) or .parquet
//! columns = { l_discount = "decimal(15,2)", l_shipdate = "date" }
//!
//! [[resources]]
//! name = "audit"
//! type = "log"
//! ```
//! Relative paths are relative to the configuration file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::Limits;
use crate::resources::{Attachment, ColumnType, ResourceType};

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A host's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The host's name, shown to clients and in logs.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where to listen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The host's secret key file; default `DATA_DIR/host.key`, created if missing.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The trust store: a directory of `*.pub` files and an optional `policy.toml`. Required,
    /// in the file or from the command line (`--trust`).
    #[serde(default)]
    pub trust: PathBuf,
    /// Where the host keeps its state, module store and code cache.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Whether every commit to the host's state is synced to disk (default). Off, an agent
    /// transfer survives a crash of the host process but not of the machine.
    #[serde(default = "durable_default")]
    pub durable: bool,
    /// Trusted peer hosts: a directory of their `*.pub` keys. Agents, reports and forwarded
    /// calls are accepted only from these hosts.
    #[serde(default)]
    pub peers: Option<PathBuf>,
    /// The access policy: who may ask this host for what; default `access.toml` in the trust
    /// store's directory (see [`crate::access`]).
    #[serde(default)]
    pub access: Option<PathBuf>,
    /// Where to serve the read-only status listener (`/metrics`); off when `None`.
    #[serde(default)]
    pub status_listen: Option<SocketAddr>,
    /// Limits on modules and connections.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The resources offered to modules.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
}

fn default_name() -> String {
    "roam-host".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}
fn durable_default() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("roam-data")
}

/// Limits, as written in the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest memory of one module, MiB.
    pub memory_mib: usize,
    /// Wall-clock time of one call, milliseconds: from 1 to a day.
    pub time_ms: u64,
    /// Largest Wasm stack, KiB.
    pub stack_kib: usize,
    /// Largest result, KiB.
    pub result_kib: usize,
    /// Most bytes one call may append to log resources, KiB.
    pub log_kib: usize,
    /// Largest signed module, KiB.
    pub module_kib: usize,
    /// Largest frame on the wire, KiB.
    pub frame_kib: usize,
    /// How long a peer may take to send one whole frame from its first byte (or to read a
    /// response), milliseconds: a connection trickling bytes is closed after this.
    pub frame_timeout_ms: u64,
    /// Modules running at once; default: the number of cores.
    pub workers: Option<usize>,
    /// Open connections at once.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub connections_per_source: usize,
    /// Of `max_connections`, how many only peers and the clients the access policy names may
    /// take: strangers can never fill the host.
    pub reserved_connections: usize,
    /// How long a connection may stay silent between requests, seconds.
    pub idle_s: u64,
    /// Bytes of large frames being read or written at once, host-wide, MiB: half for peers and
    /// the clients the access policy names, half for everyone else. A frame that does not fit
    /// waits (up to the frame timeout) for others to finish.
    pub inflight_mib: usize,
    /// How long a request may wait for a free worker, milliseconds.
    pub queue_ms: u64,
    /// Most hops of an agent launched here.
    pub agent_hops: u32,
    /// Largest snapshot of an agent launched here, MiB.
    pub agent_snapshot_mib: u64,
    /// Lifetime of an agent launched here, seconds.
    pub agent_lifetime_s: u64,
    /// Largest table an agent carries by copy or move, KiB.
    pub copy_kib: usize,
    /// Memory the columnar tables may take, together, to be held in memory, MiB: a table that
    /// fits is read into memory in the background after the host starts, and its statements
    /// skip reading and decoding its Parquet file. 0 keeps every table on disk.
    pub table_memory_mib: usize,
    /// Agents one caller (a client key, or all anonymous callers together) may launch an hour.
    pub launches_per_hour: u32,
    /// Modules one caller may publish an hour.
    pub publishes_per_hour: u32,
    /// How long the records of agents that ended are kept, seconds: then they are forgotten
    /// (those of an agent whose lifetime is not over yet are kept until it is).
    pub agent_retention_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            memory_mib: l.memory_bytes >> 20,
            time_ms: l.time.as_millis() as u64,
            stack_kib: l.stack_bytes >> 10,
            result_kib: l.result_bytes >> 10,
            log_kib: l.log_bytes >> 10,
            module_kib: roam_keys::DEFAULT_MAX_MODULE_SIZE >> 10,
            frame_kib: crate::protocol::DEFAULT_MAX_FRAME >> 10,
            frame_timeout_ms: crate::protocol::FRAME_TIMEOUT.as_millis() as u64,
            workers: None,
            max_connections: 256,
            connections_per_source: 32,
            reserved_connections: 64,
            idle_s: 60,
            inflight_mib: 256,
            queue_ms: 5_000,
            agent_hops: 256,
            agent_snapshot_mib: 16,
            agent_lifetime_s: 24 * 3600,
            copy_kib: 1024,
            table_memory_mib: 1024,
            agent_retention_s: 7 * 24 * 3600,
            launches_per_hour: 1000,
            publishes_per_hour: 100,
        }
    }
}

/// How a host shares its connections and the memory of frames in flight.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open connections at once.
    pub max: usize,
    /// From one IP address.
    pub per_source: usize,
    /// Kept for peers and the clients the access policy names.
    pub reserved: usize,
    /// Silence allowed between requests.
    pub idle: Duration,
    /// Bytes of large frames in flight, host-wide.
    pub inflight_bytes: usize,
}

impl LimitsConfig {
    /// The connection limits these settings give.
    pub fn connections(&self) -> ConnectionLimits {
        ConnectionLimits {
            max: self.max_connections,
            per_source: self.connections_per_source,
            reserved: self.reserved_connections,
            idle: Duration::from_secs(self.idle_s),
            inflight_bytes: self.inflight_mib << 20,
        }
    }

    /// How many modules run at once.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1)
    }

    /// The engine limits these settings give.
    pub fn engine(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_mib << 20,
            time: Duration::from_millis(self.time_ms),
            stack_bytes: self.stack_kib << 10,
            result_bytes: self.result_kib << 10,
            log_bytes: self.log_kib << 10,
            // Spare slots let a finished call's instance be torn down while the next starts.
            instances: (self.workers() * 2 + 2) as u32,
            ..Limits::default()
        }
    }

    /// The limits agents launched here carry.
    pub fn agents(&self) -> crate::protocol::wire::AgentLimits {
        crate::protocol::wire::AgentLimits {
            max_hops: self.agent_hops,
            max_snapshot_bytes: self.agent_snapshot_mib << 20,
            lifetime_secs: self.agent_lifetime_s,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        // Deadlines are instants a call's length from now: a day keeps them far from overflow.
        const MAX_TIME_MS: u64 = 86_400_000;
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.memory_mib == 0 || self.memory_mib > 4096 {
            return bad("limits.memory_mib must be between 1 and 4096");
        }
        if self.time_ms == 0 || self.time_ms > MAX_TIME_MS {
            return bad("limits.time_ms must be between 1 and 86400000 (a day)");
        }
        if self.table_memory_mib > 1 << 30 {
            return bad("limits.table_memory_mib must be at most 1073741824 (a pebibyte)");
        }
        if self.stack_kib < 64 {
            return bad("limits.stack_kib must be at least 64");
        }
        if self.result_kib + 64 > self.frame_kib {
            return bad("limits.frame_kib must exceed limits.result_kib by 64 KiB, so a result fits in a frame");
        }
        if self.frame_timeout_ms == 0 {
            return bad("limits.frame_timeout_ms must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("limits.max_connections must be at least 1");
        }
        if self.connections_per_source == 0 || self.reserved_connections >= self.max_connections {
            return bad("limits.connections_per_source must be at least 1, and limits.reserved_connections less than \
                 limits.max_connections");
        }
        if self.agent_retention_s == 0 {
            return bad("limits.agent_retention_s must be at least 1");
        }
        if self.idle_s == 0 {
            return bad("limits.idle_s must be at least 1");
        }
        if (self.inflight_mib << 10) / 2 < self.frame_kib {
            return bad("limits.inflight_mib must hold at least two frames of limits.frame_kib (one in each half)");
        }
        if ((self.agent_snapshot_mib as usize) << 10) + 64 > self.frame_kib {
            return bad(
                "limits.agent_snapshot_mib must leave 64 KiB of limits.frame_kib for the envelope, so a snapshot fits in a frame",
            );
        }
        if self.frame_kib < self.module_kib + 64 {
            return bad("limits.frame_kib must exceed limits.module_kib by 64 KiB, so a module fits in a frame");
        }
        Ok(())
    }
}

/// One resource, as written in the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// The name modules open it by.
    pub name: String,
    /// `table` or `log`.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// How it is tied to this host.
    #[serde(default)]
    pub attachment: Attachment,
    /// For a table: a CSV or SQLite file.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// For a CSV table: the types of some of its columns (`integer`, `real`, `text`; for a
    /// columnar table also `decimal(P,S)`, `date`, `timestamp`), which win over inference.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, ColumnType>,
    /// For a table: `sqlite`, or `columnar` (Apache DataFusion: exact decimals, dates, analytic
    /// speed). Default: `columnar` for a Parquet file, `sqlite` otherwise.
    #[serde(default)]
    pub engine: Option<TableEngine>,
}

/// Which engine answers a table's statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableEngine {
    /// SQLite: a CSV file imported into a SQLite file, or a SQLite file.
    Sqlite,
    /// The columnar engine: a CSV file converted into Parquet, or a Parquet file.
    Columnar,
}

impl ResourceConfig {
    /// The engine of a table: as configured, else by its source's kind.
    pub fn engine(&self) -> TableEngine {
        let parquet =
            self.source.as_ref().and_then(|s| s.extension()).is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        self.engine.unwrap_or(if parquet { TableEngine::Columnar } else { TableEngine::Sqlite })
    }
}

impl HostConfig {
    /// A configuration with defaults and the given trust directory.
    pub fn new(trust: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            name: default_name(),
            listen: default_listen(),
            key: None,
            trust,
            data_dir,
            durable: true,
            peers: None,
            access: None,
            status_listen: None,
            limits: LimitsConfig::default(),
            resources: Vec::new(),
        }
    }

    /// Reads a configuration file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg: Self = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string().trim_end().to_owned() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut cfg.trust);
        rebase(&mut cfg.data_dir);
        if let Some(k) = &mut cfg.key {
            rebase(k);
        }
        if let Some(p) = &mut cfg.peers {
            rebase(p);
        }
        if let Some(p) = &mut cfg.access {
            rebase(p);
        }
        for r in &mut cfg.resources {
            if let Some(s) = &mut r.source {
                rebase(s);
            }
        }
        Ok(cfg)
    }

    /// Adds a table resource (from a `--table NAME=PATH` flag).
    pub fn add_table(&mut self, spec: &str) -> Result<(), ConfigError> {
        let (name, path) = spec
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("--table {spec:?}: expected NAME=PATH")))?;
        self.resources.push(ResourceConfig {
            name: name.into(),
            kind: ResourceType::Table,
            attachment: Attachment::Fastened,
            source: Some(path.into()),
            columns: Default::default(),
            engine: None,
        });
        Ok(())
    }

    /// Adds a log resource.
    pub fn add_log(&mut self, name: &str) {
        self.resources.push(ResourceConfig {
            name: name.into(),
            kind: ResourceType::Log,
            attachment: Attachment::Fixed,
            source: None,
            columns: Default::default(),
            engine: None,
        });
    }

    /// Checks the values that a type cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.trust.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "no trust store: give `trust = \"DIR\"` in the configuration file, or --trust DIR".into(),
            ));
        }
        self.limits.check()?;
        let mut names = std::collections::BTreeSet::new();
        for r in &self.resources {
            if r.name.is_empty() || r.name.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
                return Err(ConfigError::Invalid(format!(
                    "resource name {:?} must be non-empty, without spaces, ':' or '/'",
                    r.name
                )));
            }
            if !names.insert(&r.name) {
                return Err(ConfigError::Invalid(format!("resource {:?} is defined twice", r.name)));
            }
            match (r.kind, &r.source) {
                (ResourceType::Table, None) => {
                    return Err(ConfigError::Invalid(format!("table {:?} needs a source file", r.name)));
                }
                (ResourceType::Log, Some(_)) => {
                    return Err(ConfigError::Invalid(format!("log {:?} takes no source", r.name)));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_taken_from_the_config_files_directory() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("host.toml");
        std::fs::write(
            &path,
            "name = \"h\"\ntrust = \"trust\"\n[[resources]]\nname = \"sales\"\ntype = \"table\"\nsource = \"s.csv\"\n",
        )?;
        let cfg = HostConfig::load(&path)?;
        assert_eq!(cfg.trust, dir.path().join("trust"));
        assert_eq!(cfg.resources[0].source.as_deref(), Some(dir.path().join("s.csv").as_path()));
        assert_eq!(cfg.resources[0].attachment, Attachment::Fastened);
        cfg.check()?;
        Ok(())
    }

    #[test]
    fn unknown_fields_and_duplicate_resources_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("host.toml");
        std::fs::write(&path, "trust = \"t\"\nlisten_on = \"x\"\n")?;
        assert!(matches!(HostConfig::load(&path), Err(ConfigError::Parse { .. })));
        let mut cfg = HostConfig::new("t".into(), "d".into());
        cfg.add_log("audit");
        cfg.add_log("audit");
        assert!(matches!(cfg.check(), Err(ConfigError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn a_call_time_limit_must_be_between_a_millisecond_and_a_day() {
        let mut cfg = HostConfig::new("t".into(), "d".into());
        for (ms, ok) in [(0, false), (1, true), (86_400_000, true), (86_400_001, false), (u64::MAX, false)] {
            cfg.limits.time_ms = ms;
            assert_eq!(cfg.check().is_ok(), ok, "time_ms = {ms}");
        }
    }
}
