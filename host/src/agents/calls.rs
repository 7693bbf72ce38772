//! Calls an agent makes on a resource it holds by identifier, forwarded by the host it is on to
//! the host that owns the resource: the owner's side.

use super::store;
use super::{Agents, CLOCK_SKEW};
use crate::access::{Access, Right};
use crate::protocol::wire::{Call, CallOp, Signed, domain};
use crate::protocol::{ErrorKind, RemoteError, Response};
use crate::refusal::{internal, refused};
use crate::state::now_secs;

impl Agents {
    /// A call forwarded by the host where an agent is, on a resource this host owns. The agent
    /// must be one of this host's own (launched here), its owner must still hold the right to
    /// launch here (a client the operator has since shut out no longer reaches this host's
    /// resources through agents already out), and its signed capabilities must grant it.
    pub(crate) fn receive_call(&self, signed: &Signed, access: &Access) -> Result<Response, RemoteError> {
        let call: Call = signed.open(domain::CALL, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
        let now = now_secs();
        if call.at.saturating_add(CLOCK_SKEW) < now || call.at > now.saturating_add(CLOCK_SKEW) {
            return Err(refused("the call is stale or from the future"));
        }
        let homed = self.state.transaction(|tx| store::get_homed(tx, &call.agent)).map_err(internal)?;
        if homed.is_none_or(|h| h.state.is_over()) {
            return Err(refused(format!("agent {} is not a live agent of this host", call.agent)));
        }
        let row = self
            .state
            .transaction(|tx| store::get(tx, &call.agent, 0))
            .map_err(internal)?
            .ok_or_else(|| refused(format!("agent {} was not launched here", call.agent)))?;
        let record = row.record.map_err(refused)?;
        access.check(Right::Launch, record.owner.as_ref()).map_err(|e| {
            RemoteError::new(
                e.kind,
                format!("agent {} may no longer use this host's resources: {}", call.agent, e.message),
            )
        })?;
        let granted = self.capabilities(record.code)?;
        let resource = self.resources.get(&call.resource).ok_or_else(|| {
            RemoteError::new(ErrorKind::NotFound, format!("this host offers no resource {}", call.resource))
        })?;
        let needed = resource.capability();
        if !granted.iter().any(|p| roam_keys::Policy::pattern_allows(p, &needed)) {
            return Err(RemoteError::new(
                ErrorKind::Capability,
                format!("the agent's signature does not grant {needed}"),
            ));
        }
        match call.op {
            CallOp::Query { sql, params } => {
                let deadline = std::time::Instant::now() + self.engine.limits().time;
                let cursor = resource.query(&sql, params, deadline).map_err(|e| refused(e.to_string()))?;
                let batches = cursor.drain(self.engine.limits().result_bytes).map_err(|e| refused(e.to_string()))?;
                Ok(Response::Rows(batches.into_iter().map(serde_bytes::ByteBuf::from).collect()))
            }
            CallOp::Append { line } => {
                if line.len() > crate::resources::MAX_LOG_LINE {
                    return Err(refused(format!("log lines are limited to {} bytes", crate::resources::MAX_LOG_LINE)));
                }
                resource.append(&record.label, &line).map_err(|e| refused(e.to_string()))?;
                Ok(Response::Accepted)
            }
        }
    }
}
