//! Code on demand: fetching signed modules from a host's code repository.
//!
//! [`download`] reads a module by hash in bounded chunks, within a size cap and a deadline, and
//! checks the hash of what arrived; hosts fetching from peers and clients fetching for `roam run`
//! both use it. [`CodeCache`] is the client's side: a content-addressed store (the same
//! [`State`] a host keeps) whose modules are verified against the client's own trust store
//! before they are cached, and checked against their hash and verified again whenever loaded.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use roam_keys::{Kind, ModuleHash, TrustStore, VerifiedModule, VerifyError};

use crate::admission::{Admission, AdmitError, Rollback};
use crate::client::{Client, ClientError};
use crate::state::{State, StateError};

/// How long one whole download may take.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How much one fetch request asks for.
pub const CHUNK: u32 = 1 << 20;

/// Why a module could not be fetched or loaded.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Talking to the host failed, or it refused.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The host announced more bytes than the cap.
    #[error("the module is {size} bytes, over the limit of {max} bytes; it was not downloaded")]
    TooLarge {
        /// What the host announced.
        size: u64,
        /// The cap.
        max: usize,
    },
    /// The bytes that arrived are not the module asked for.
    #[error("the host sent bytes whose hash is {got}, not the {expected} asked for; the host is faulty or hostile")]
    HashMismatch {
        /// What was asked for.
        expected: ModuleHash,
        /// What arrived.
        got: ModuleHash,
    },
    /// The host sent more, or other, than it announced.
    #[error("the host's answer does not add up: {0}")]
    Inconsistent(String),
    /// The download ran past its deadline.
    #[error("the download took longer than {0:?} and was abandoned")]
    Timeout(Duration),
    /// The module failed verification against the local trust store.
    #[error("module refused: {0}")]
    Verify(#[from] VerifyError),
    /// The local cache failed.
    #[error("code cache: {0}")]
    Cache(#[from] StateError),
}

impl From<AdmitError> for FetchError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::Verify(e) => Self::Verify(e),
            AdmitError::State(e) => Self::Cache(e),
        }
    }
}

/// Downloads the signed module `hash` over the connection `connect` opens (a client's
/// `Client::connect`, a host's dial of a peer), in chunks, refusing more than `max_size` bytes
/// or more than [`DOWNLOAD_TIMEOUT`] in all. `progress` hears `(received, total)`.
pub async fn download(
    connect: impl Future<Output = Result<Client, ClientError>>,
    hash: ModuleHash,
    max_size: usize,
    progress: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<Vec<u8>, FetchError> {
    let started = Instant::now();
    let work = async {
        let mut client = connect.await?;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let (total, chunk) = client.fetch_chunk(hash, bytes.len() as u64, CHUNK).await?;
            if total > max_size as u64 {
                return Err(FetchError::TooLarge { size: total, max: max_size });
            }
            if bytes.is_empty() {
                bytes.reserve_exact(total as usize);
            }
            if chunk.is_empty() && (bytes.len() as u64) < total {
                return Err(FetchError::Inconsistent(format!("no bytes at offset {} of {total}", bytes.len())));
            }
            if bytes.len() as u64 + chunk.len() as u64 > total {
                return Err(FetchError::Inconsistent("more bytes than announced".into()));
            }
            bytes.extend_from_slice(&chunk);
            if let Some(report) = progress {
                report(bytes.len() as u64, total);
            }
            if bytes.len() as u64 == total {
                return Ok(bytes);
            }
        }
    };
    let bytes =
        tokio::time::timeout(DOWNLOAD_TIMEOUT, work).await.map_err(|_| FetchError::Timeout(started.elapsed()))??;
    let got = roam_keys::hash_module(&bytes);
    if got != hash {
        return Err(FetchError::HashMismatch { expected: hash, got });
    }
    Ok(bytes)
}

/// How a module is named when fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleSpec {
    /// The highest version published under a name.
    Name(String),
    /// One version of a name.
    Version(String, semver::Version),
    /// Exactly this signed file.
    Hash(ModuleHash),
}

impl FromStr for ModuleSpec {
    type Err = String;

    /// `NAME`, `NAME@VERSION`, or a 64-hex-digit hash.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return s.parse().map(Self::Hash).map_err(|e| format!("{s}: {e}"));
        }
        match s.split_once('@') {
            Some((name, version)) if !name.is_empty() => semver::Version::parse(version)
                .map(|v| Self::Version(name.to_owned(), v))
                .map_err(|e| format!("{s}: the version after '@' is not semver ({e})")),
            Some(_) => Err(format!("{s}: expected NAME, NAME@VERSION or a module hash")),
            None if s.is_empty() => Err("the module name is empty".into()),
            None => Ok(Self::Name(s.to_owned())),
        }
    }
}

impl std::fmt::Display for ModuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Version(n, v) => write!(f, "{n}@{v}"),
            Self::Hash(h) => write!(f, "{h}"),
        }
    }
}

/// The client's code cache: verified modules by hash, and what names resolved to.
#[derive(Debug)]
pub struct CodeCache {
    dir: PathBuf,
    state: Arc<State>,
    admission: Admission,
    /// TLS proving the person's identity to hosts; anonymous when `None`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl CodeCache {
    /// Opens (creating) a cache under `dir`, verifying against `trust`.
    pub fn open(dir: &Path, trust: TrustStore) -> Result<Self, FetchError> {
        let state = Arc::new(State::open(dir)?);
        let admission = Admission::new(trust, state.clone(), roam_keys::DEFAULT_MAX_MODULE_SIZE);
        Ok(Self { dir: dir.to_owned(), state, admission, tls: None })
    }

    /// Connects to hosts with `tls` (made by [`crate::transport::client_config`]): proving the
    /// person's identity, for hosts that grant code on demand only to the clients they know.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    async fn connect(&self, source: &str) -> Result<Client, ClientError> {
        match &self.tls {
            Some(tls) => Client::connect_target(source, tls.clone()).await,
            None => Client::connect(source).await,
        }
    }

    /// `$ROAM_CACHE`, else `$XDG_CACHE_HOME/roam`, else `~/.cache/roam`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("ROAM_CACHE") {
            return dir.into();
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(dir).join("roam");
        }
        std::env::var_os("HOME").map_or_else(|| PathBuf::from(".roam-cache"), |h| PathBuf::from(h).join(".cache/roam"))
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where compiled code for cached modules is kept.
    pub fn code_dir(&self) -> PathBuf {
        self.dir.join("code")
    }

    /// The module `spec` names at `source`, of `kind`: from the cache when it holds it (no
    /// network at all once a name was resolved, unless `refresh`), else downloaded, verified
    /// and cached. Returns it with its hash.
    pub async fn get(
        &self,
        source: &str,
        spec: &ModuleSpec,
        kind: Kind,
        refresh: bool,
        progress: Option<&(dyn Fn(u64, u64) + Sync)>,
    ) -> Result<(ModuleHash, VerifiedModule), FetchError> {
        let hash = self.resolve(source, spec, refresh).await?;
        if let Some(module) = self.load(hash, kind)? {
            return Ok((hash, module));
        }
        let bytes = download(self.connect(source), hash, self.admission.max_size(), progress).await?;
        self.add(bytes, kind)
    }

    async fn resolve(&self, source: &str, spec: &ModuleSpec, refresh: bool) -> Result<ModuleHash, FetchError> {
        let (name, version) = match spec {
            ModuleSpec::Hash(h) => return Ok(*h),
            ModuleSpec::Name(n) => (n, None),
            ModuleSpec::Version(n, v) => (n, Some(v.clone())),
        };
        let key = spec.to_string();
        // Remembered by address, whether or not the source pins the host's key.
        let (_, addr) = crate::client::split_target(source)?;
        if !refresh && let Some(hash) = self.state.resolution(addr, &key)? {
            return Ok(hash);
        }
        let mut client = self.connect(source).await?;
        let info = client.resolve(name, version).await?;
        self.state.set_resolution(addr, &key, &info.hash)?;
        Ok(info.hash)
    }

    /// A cached module, checked against its hash and verified again; `None` if the cache does
    /// not hold it, or held a copy that no longer matches its hash (which is then dropped).
    pub fn load(&self, hash: ModuleHash, kind: Kind) -> Result<Option<VerifiedModule>, FetchError> {
        Ok(self.admission.load(hash, Some(kind), Rollback::Refuse)?)
    }

    /// Verifies a signed module the caller already holds (bundled with an application, say)
    /// and only then caches it. Returns it with its hash.
    pub fn add(&self, bytes: Vec<u8>, kind: Kind) -> Result<(ModuleHash, VerifiedModule), FetchError> {
        Ok(self.admission.admit(bytes, Some(kind), Rollback::Refuse)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_names_versions_or_hashes() {
        assert_eq!("validator".parse(), Ok(ModuleSpec::Name("validator".into())));
        assert_eq!(
            "validator@1.2.3".parse(),
            Ok(ModuleSpec::Version("validator".into(), semver::Version::new(1, 2, 3)))
        );
        let hex = "ab".repeat(32);
        assert!(matches!(hex.parse::<ModuleSpec>(), Ok(ModuleSpec::Hash(_))));
        assert!("validator@one".parse::<ModuleSpec>().is_err());
        assert!("@1.0.0".parse::<ModuleSpec>().is_err());
        assert!("".parse::<ModuleSpec>().is_err());
    }
}
