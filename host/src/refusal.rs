//! The network form of local failures: what a host answers when storage, verification, loading
//! or running a module fails, shared by the request handlers and the agents.

use roam_keys::VerifyError;

use crate::admission::AdmitError;
use crate::engine::{LoadError, RunError};
use crate::protocol::{ErrorKind, RemoteError};
use crate::state::StateError;

/// A refusal with `message`.
pub(crate) fn refused(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::Refused, message)
}

/// A state failure: a full disk is worth retrying later, anything else is the host's own fault.
/// Either way the operator hears of it, not only the peer.
pub(crate) fn internal(e: StateError) -> RemoteError {
    tracing::warn!("{e}");
    let kind = match e {
        StateError::Full { .. } => ErrorKind::Busy,
        _ => ErrorKind::Internal,
    };
    RemoteError::new(kind, e.to_string())
}

/// A module that failed a check.
pub(crate) fn verify_error(e: &VerifyError) -> RemoteError {
    let kind = match e {
        VerifyError::CapabilityDenied { .. } => ErrorKind::Capability,
        _ => ErrorKind::Verification,
    };
    RemoteError::new(kind, format!("module refused: {e}"))
}

/// A module that was not admitted.
pub(crate) fn admit_error(e: AdmitError) -> RemoteError {
    match e {
        AdmitError::Verify(e) => verify_error(&e),
        AdmitError::State(e) => internal(e),
    }
}

/// A module that did not load.
pub(crate) fn load_error(e: LoadError) -> RemoteError {
    RemoteError::new(ErrorKind::Load, e.to_string())
}

/// A call that failed.
pub(crate) fn run_error(e: RunError) -> RemoteError {
    let kind = match &e {
        RunError::OutOfTime(_) => ErrorKind::OutOfTime,
        RunError::OutOfMemory(_) => ErrorKind::OutOfMemory,
        RunError::StackOverflow(_) => ErrorKind::StackOverflow,
        RunError::Trap { .. } | RunError::Contract(_) | RunError::NoResult => ErrorKind::Trap,
        RunError::Module(_) => ErrorKind::Module,
        RunError::Capability(_) => ErrorKind::Capability,
        RunError::ResultTooLarge { .. } => ErrorKind::Refused,
        RunError::Busy => ErrorKind::Busy,
        RunError::Instantiate(_) => ErrorKind::Load,
    };
    RemoteError::new(kind, e.to_string())
}
