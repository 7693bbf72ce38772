//! An agent's code: fetched from the host it comes from when this host lacks it, admitted like
//! any module, loaded once, with the declarations its manifest makes.

use std::sync::Arc;

use roam_keys::{Kind, ModuleHash, VerifiedModule};

use super::Agents;
use crate::admission::Rollback;
use crate::engine::AgentRunnable;
use crate::protocol::wire::from_cbor;
use crate::protocol::{ErrorKind, RemoteError};
use crate::refusal::{admit_error, load_error, refused, run_error};
use crate::sync::lock;

/// An agent module, loaded, with its declarations.
#[derive(Debug)]
pub(crate) struct AgentCode {
    pub(super) runnable: AgentRunnable,
    pub(super) manifest: roam_abi::Manifest,
}

impl Agents {
    /// Forgets the agent modules loaded so far: they are verified again when next used (after
    /// the trust store changed).
    pub(crate) fn forget_code(&self) {
        lock(&self.agent_code).clear();
    }

    /// Loads (once) an agent module this host holds.
    pub(super) fn agent_code(&self, hash: ModuleHash) -> Result<Arc<AgentCode>, RemoteError> {
        if let Some(code) = lock(&self.agent_code).get(&hash) {
            return Ok(code.clone());
        }
        let verified = self.stored_code(hash)?;
        let runnable = self.engine.load_agent(hash, &verified).map_err(load_error)?;
        let (out, _) = self
            .engine
            .run_agent(&runnable, roam_abi::AGENT_MANIFEST, Vec::new(), Arc::default(), None, |_| false)
            .map_err(run_error)?;
        let manifest: roam_abi::Manifest = from_cbor(&out, "the agent's manifest").map_err(refused)?;
        // Each resource is bound by its name: a name declared twice would be bound twice, the
        // second binding silently replacing the first.
        let mut names = std::collections::BTreeSet::new();
        if let Some(twice) = manifest.resources.iter().find(|r| !names.insert(r.name.as_str())) {
            return Err(refused(format!("the agent's manifest declares resource {:?} twice", twice.name)));
        }
        let code = Arc::new(AgentCode { runnable, manifest });
        lock(&self.agent_code).insert(hash, code.clone());
        Ok(code)
    }

    /// What an agent module's signature grants, without running it: from its loaded code, or
    /// from its signature in the store. Forwarded calls check it on the blocking pool, never
    /// waiting for a module thread, which the calling agent's own host may be holding.
    pub(super) fn capabilities(&self, hash: ModuleHash) -> Result<Vec<String>, RemoteError> {
        if let Some(code) = lock(&self.agent_code).get(&hash) {
            return Ok(code.runnable.capabilities().to_vec());
        }
        Ok(self.stored_code(hash)?.claims().capabilities.clone())
    }

    /// An agent module from the store, checked against its hash and verified again. Rollback is
    /// checked when an agent is launched; agents already travelling keep the version they were
    /// launched with, even after a newer one was accepted here.
    fn stored_code(&self, hash: ModuleHash) -> Result<VerifiedModule, RemoteError> {
        self.admission
            .load(hash, Some(Kind::Agent), Rollback::Allow)
            .map_err(admit_error)?
            .ok_or_else(|| RemoteError::new(ErrorKind::NotFound, format!("this host does not hold agent code {hash}")))
    }

    /// Downloads an agent's code from the host it comes from and admits it (on the blocking
    /// pool: verifying, writing and syncing the file, and the index).
    pub(super) async fn fetch_code(self: &Arc<Self>, peer: &str, hash: ModuleHash) -> Result<(), RemoteError> {
        let bytes =
            crate::fetch::download(self.dial(peer), hash, self.admission.max_size(), None).await.map_err(|e| {
                RemoteError::new(ErrorKind::NotFound, format!("cannot fetch agent code {hash} from {peer}: {e}"))
            })?;
        let admitted =
            self.blocking(move |agents| agents.admission.admit(bytes, Some(Kind::Agent), Rollback::Allow)).await;
        match admitted {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(admit_error(e)),
            None => Err(RemoteError::new(
                ErrorKind::Internal,
                format!("admitting agent code {hash} failed inside the host"),
            )),
        }
    }
}
