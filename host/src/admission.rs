//! The one way a signed module enters a module store, a host's or a client's code cache:
//! verify (every check, against this side's own trust store) → store → accept its version; and
//! the one way it comes back out: read, check against its hash, verify again.
//!
//! Evaluation, publishing, fetching from a peer, fetching an agent's code and the client's
//! [`CodeCache`](crate::fetch::CodeCache) all go through [`Admission`], so "nothing is compiled
//! before it is verified" has one implementation: what comes out of it is a
//! [`VerifiedModule`], the only thing the engine compiles.

use std::sync::Arc;

use roam_keys::{Kind, ModuleHash, NoHistory, TrustStore, VerifiedModule, VerifyContext, VerifyError};

use crate::state::{State, StateError, now_secs};

/// Whether a module older than a version this store accepted is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollback {
    /// Refused: a new evaluation, publication, launch or download.
    Refuse,
    /// Allowed: an agent already travelling keeps the version it was launched with, even after a
    /// newer one was accepted here.
    Allow,
}

/// Why a module was not admitted or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// It failed a check.
    #[error("module refused: {0}")]
    Verify(#[from] VerifyError),
    /// The store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A trust store, the module store it guards, and the size limit: see the module docs.
#[derive(Debug)]
pub struct Admission {
    /// Replaced whole when the host reloads its trust store.
    trust: std::sync::RwLock<Arc<TrustStore>>,
    state: Arc<State>,
    max_size: usize,
}

impl Admission {
    /// Modules for `state`, checked against `trust`, at most `max_size` bytes.
    pub fn new(trust: TrustStore, state: Arc<State>, max_size: usize) -> Self {
        Self { trust: std::sync::RwLock::new(Arc::new(trust)), state, max_size }
    }

    /// Checks modules against `trust` from now on.
    pub fn set_trust(&self, trust: TrustStore) {
        *self.trust.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(trust);
    }

    /// The largest module admitted.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Runs every check on a module, with one clock reading; `kind` is the kind it must be.
    pub fn verify(
        &self,
        bytes: Vec<u8>,
        kind: Option<Kind>,
        rollback: Rollback,
    ) -> Result<VerifiedModule, VerifyError> {
        let history: &dyn roam_keys::VersionHistory = match rollback {
            Rollback::Refuse => &*self.state,
            Rollback::Allow => &NoHistory,
        };
        let trust = self.trust.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let ctx =
            VerifyContext { trust: &trust, now: now_secs(), max_size: self.max_size, expected_kind: kind, history };
        roam_keys::verify(bytes, &ctx)
    }

    /// Stores a verified module under `hash` (the hash of its bytes) and records its version as
    /// accepted.
    pub fn keep(&self, hash: ModuleHash, verified: &VerifiedModule) -> Result<(), StateError> {
        let claims = verified.claims();
        // The store writes a module's file only if it is missing: a damaged copy under this
        // hash would stay, so it goes first.
        if self.state.load_module(&hash)?.is_some_and(|b| roam_keys::hash_module(&b) != hash) {
            self.state.remove_module(&hash)?;
        }
        self.state.store_module(hash, verified.bytes(), claims)?;
        self.state.accept_version(&claims.name, &claims.version)
    }

    /// [`verify`](Self::verify), then [`keep`](Self::keep). Returns the module with its hash.
    pub fn admit(
        &self,
        bytes: Vec<u8>,
        kind: Option<Kind>,
        rollback: Rollback,
    ) -> Result<(ModuleHash, VerifiedModule), AdmitError> {
        let hash = roam_keys::hash_module(&bytes);
        let verified = self.verify(bytes, kind, rollback)?;
        self.keep(hash, &verified)?;
        Ok((hash, verified))
    }

    /// A stored module, checked against its hash and verified again; `None` if the store does
    /// not hold it, or held a copy that no longer matches its hash (which is then dropped, so
    /// that a good copy can take its place).
    pub fn load(
        &self,
        hash: ModuleHash,
        kind: Option<Kind>,
        rollback: Rollback,
    ) -> Result<Option<VerifiedModule>, AdmitError> {
        let Some(bytes) = self.state.load_module(&hash)? else {
            return Ok(None);
        };
        if roam_keys::hash_module(&bytes) != hash {
            tracing::warn!(%hash, "a stored module does not match its hash; dropping it");
            self.state.remove_module(&hash)?;
            return Ok(None);
        }
        Ok(Some(self.verify(bytes, kind, rollback)?))
    }
}
