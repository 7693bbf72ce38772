//! Running fetched code locally: the embedding API behind `roam run`.
//!
//! [`CodeOnDemand`] pulls a module from a host once (through the [`CodeCache`]), and then runs
//! it as often as the application likes with no further network traffic, in the same engine,
//! sandbox and limits a host uses (the same [`Engine::run`] path), and with only the
//! capabilities the application grants.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use roam_host::local::CodeOnDemand;
//! use roam_keys::TrustStore;
//!
//! let trust = TrustStore::load("trust".as_ref())?;
//! let cod = CodeOnDemand::builder(trust).build()?;
//! let spec = "order-validator".parse().map_err(anyhow::Error::msg)?;
//! let validator = cod.fetch("127.0.0.1:7700", &spec).await?;
//! for order in [serde_json::json!({"id": 1, "quantity": 3, "unit_cents": 250})] {
//!     let verdict: serde_json::Value = cod.call(&validator, &order)?;
//!     println!("{verdict}");
//! }
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use roam_keys::{Kind, ModuleHash, Policy, TrustStore, VerifiedModule};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Engine, Limits, LoadError, RunError, Runnable};
use crate::fetch::{CodeCache, FetchError, ModuleSpec};
use crate::resources::Resources;

/// Why local code on demand failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Fetching or verifying failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The module does not compile or link here.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The module asks for capabilities the application did not grant.
    #[error(
        "the module asks for {missing:?}, which were not granted; grant them with --allow if you trust it with them"
    )]
    NotGranted {
        /// The requested capabilities not granted.
        missing: Vec<String>,
    },
    /// The call failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The input or the result could not be encoded or decoded.
    #[error("{0}")]
    Codec(String),
    /// The engine could not be built.
    #[error("{0}")]
    Setup(String),
}

/// A fetched module, verified and compiled, ready to call.
#[derive(Clone, Debug)]
pub struct LocalModule {
    hash: ModuleHash,
    runnable: Runnable,
}

impl LocalModule {
    /// The hash of the module's signed file.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }
}

/// Settings for [`CodeOnDemand`].
#[derive(Debug)]
pub struct Builder {
    trust: TrustStore,
    cache: Option<PathBuf>,
    limits: Limits,
    allow: Vec<String>,
    resources: Resources,
    refresh: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Builder {
    /// Uses `dir` as the cache instead of [`CodeCache::default_dir`].
    pub fn cache_dir(mut self, dir: PathBuf) -> Self {
        self.cache = Some(dir);
        self
    }

    /// Runs modules under these limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Grants modules a capability (`table:orders`, `log:*`).
    pub fn allow(mut self, capability: impl Into<String>) -> Self {
        self.allow.push(capability.into());
        self
    }

    /// Offers modules these local resources (still only through granted capabilities).
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Asks the host again what names resolve to, instead of trusting earlier answers.
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// Connects to hosts with `tls` (see [`CodeCache::with_tls`]) instead of anonymously.
    pub fn tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Opens the cache and builds the engine.
    pub fn build(self) -> Result<CodeOnDemand, LocalError> {
        let dir = self.cache.unwrap_or_else(CodeCache::default_dir);
        let mut cache = CodeCache::open(&dir, self.trust)?;
        if let Some(tls) = self.tls {
            cache = cache.with_tls(tls);
        }
        let engine = Engine::new(self.limits, Some(cache.code_dir()), Arc::default())
            .map_err(|e| LocalError::Setup(format!("{e:#}")))?;
        Ok(CodeOnDemand {
            cache,
            engine,
            allow: self.allow,
            resources: Arc::new(self.resources),
            refresh: self.refresh,
        })
    }
}

/// Fetches code from hosts once and runs it locally many times.
#[derive(Debug)]
pub struct CodeOnDemand {
    cache: CodeCache,
    engine: Engine,
    allow: Vec<String>,
    resources: Arc<Resources>,
    refresh: bool,
}

impl CodeOnDemand {
    /// Settings, starting from a trust store: only modules its keys signed are ever cached or run.
    pub fn builder(trust: TrustStore) -> Builder {
        Builder {
            trust,
            cache: None,
            limits: Limits { instances: 16, ..Limits::default() },
            allow: Vec::new(),
            resources: Resources::default(),
            refresh: false,
            tls: None,
        }
    }

    /// The cache this uses.
    pub fn cache(&self) -> &CodeCache {
        &self.cache
    }

    /// Gets a code module from the cache, or from the host at `source` if the cache lacks it,
    /// and compiles it (or loads its compiled code from the cache).
    pub async fn fetch(&self, source: &str, spec: &ModuleSpec) -> Result<LocalModule, LocalError> {
        self.fetch_with_progress(source, spec, None).await
    }

    /// [`fetch`](Self::fetch), reporting download progress as `(received, total)` bytes.
    pub async fn fetch_with_progress(
        &self,
        source: &str,
        spec: &ModuleSpec,
        progress: Option<&(dyn Fn(u64, u64) + Sync)>,
    ) -> Result<LocalModule, LocalError> {
        let (hash, verified) = self.cache.get(source, spec, Kind::Code, self.refresh, progress).await?;
        self.ready(hash, &verified)
    }

    /// Verifies a signed code module the application already holds (bundled with it, or
    /// obtained some other way), caches it, and compiles it: the checks of
    /// [`fetch`](Self::fetch), without a host.
    pub fn load(&self, bytes: Vec<u8>) -> Result<LocalModule, LocalError> {
        let (hash, verified) = self.cache.add(bytes, Kind::Code)?;
        self.ready(hash, &verified)
    }

    /// Checks that a verified module asks only for granted capabilities, and compiles it.
    fn ready(&self, hash: ModuleHash, verified: &VerifiedModule) -> Result<LocalModule, LocalError> {
        let missing: Vec<String> = verified
            .claims()
            .capabilities
            .iter()
            .filter(|c| !self.allow.iter().any(|a| Policy::pattern_allows(a, c)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(LocalError::NotGranted { missing });
        }
        let runnable = self.engine.load(hash, verified)?;
        Ok(LocalModule { hash, runnable })
    }

    /// Calls a module with a CBOR input; returns its CBOR result. No network.
    pub fn call_raw(&self, module: &LocalModule, input: Vec<u8>) -> Result<Vec<u8>, LocalError> {
        Ok(self.engine.run(&module.runnable, input, self.resources.clone())?)
    }

    /// Calls a module with any serializable input and decodes its result. No network.
    pub fn call<I: Serialize, O: DeserializeOwned>(&self, module: &LocalModule, input: &I) -> Result<O, LocalError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(input, &mut bytes)
            .map_err(|e| LocalError::Codec(format!("cannot encode the input: {e}")))?;
        let output = self.call_raw(module, bytes)?;
        ciborium::from_reader(output.as_slice())
            .map_err(|e| LocalError::Codec(format!("cannot decode the result: {}", roam_keys::cbor_error(&e))))
    }
}
