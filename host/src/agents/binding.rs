//! Binding an agent's resources on arrival, by the design brief's table.
//!
//! | agent refers ↓ / resource is → | unattached | fastened | fixed |
//! | --- | --- | --- | --- |
//! | by identifier | MV (or GR) | GR (or MV) | GR |
//! | by value | CP (or MV, GR) | GR (or CP) | GR |
//! | by type | RB (or MV, CP) | RB (or GR, CP) | RB (or GR) |
//!
//! At launch the home records, for each declared resource it offers, an [`Anchor`]: where it
//! lives and how it is tied there, with a copy of its content when the table calls for moving or
//! copying it. On every host, [`choose`] picks the action and [`bind`] applies it: a local
//! resource (RB), the travelling copy (CP, MV), or a global reference whose calls go to the owner
//! (GR). A resource that cannot be bound is reported as `Unbound` and opening it fails with a
//! typed error the agent can handle.

use std::sync::Arc;
use std::time::Instant;

use roam_abi::{Action, Binding, Bound, Manifest, Value};

use super::Agents;
use crate::protocol::wire::{AgentRecord, Anchor, Call, CallOp, Signed, domain};
use crate::protocol::{Request, Response};
use crate::resources::{Attachment, Forward, ResourceError, ResourceType, Resources};
use crate::state::now_secs;

/// Picks the action for one resource. `local`: this host offers a resource of that name and
/// type; `copy`: a copy travels with the agent; `owner_here`: this host owns the anchored one.
pub fn choose(binding: Binding, anchor: Option<(Attachment, bool)>, local: bool, owner_here: bool) -> Action {
    match (binding, anchor) {
        (Binding::Type, _) if local => Action::Rb,
        (_, Some(_)) if owner_here => Action::Rb,
        (Binding::Identifier, Some((Attachment::Unattached, true))) => Action::Mv,
        (Binding::Identifier, Some(_)) => Action::Gr,
        (Binding::Value, Some((_, true))) => Action::Cp,
        (Binding::Value, Some(_)) => Action::Gr,
        (Binding::Type, Some((Attachment::Unattached, true))) => Action::Mv,
        (Binding::Type, Some((Attachment::Fastened | Attachment::Fixed, _))) => Action::Gr,
        (Binding::Type, Some((Attachment::Unattached, false))) => Action::Gr,
        (_, None) => Action::Unbound,
    }
}

fn kind_of(kind: &str) -> Option<ResourceType> {
    match kind {
        "table" => Some(ResourceType::Table),
        "log" => Some(ResourceType::Log),
        _ => None,
    }
}

/// At launch: where each declared resource the home offers lives, with a copy of a table's
/// content when it is unattached and referred to by identifier or value (it will move or be
/// copied with the agent) and fits in `max_copy` bytes.
pub fn anchors(manifest: &Manifest, resources: &Resources, home: &str, max_copy: usize) -> Vec<Anchor> {
    manifest
        .resources
        .iter()
        .filter_map(|decl| {
            let kind = kind_of(&decl.kind)?;
            let resource = resources.get(&decl.name).filter(|r| r.kind == kind)?;
            let travels = kind == ResourceType::Table
                && resource.attachment == Attachment::Unattached
                && matches!(decl.binding, Binding::Identifier | Binding::Value);
            let copy = travels.then(|| resource.copy(max_copy)).and_then(|c| {
                c.inspect_err(|e| tracing::info!(resource = %decl.name, "not copied with the agent: {e}")).ok()
            });
            Some(Anchor {
                name: decl.name.clone(),
                kind,
                attachment: resource.attachment,
                owner: home.to_owned(),
                copy,
            })
        })
        .collect()
}

/// Binds every declared resource on this host. Returns what the agent may open here and how
/// each was bound.
pub(crate) fn bind(inner: &Agents, record: &AgentRecord, manifest: &Manifest, agent: &str) -> (Resources, Vec<Bound>) {
    let mut bound = Resources::default();
    let mut report = Vec::new();
    let here = inner.address();
    for decl in &manifest.resources {
        let Some(kind) = kind_of(&decl.kind) else {
            let reason = format!("unknown resource type {:?}", decl.kind);
            bound.add_unbound(&decl.name, &reason);
            report.push(Bound { name: decl.name.clone(), action: Action::Unbound, error: Some(reason) });
            continue;
        };
        let local = inner.resources.get(&decl.name).filter(|r| r.kind == kind).cloned();
        let anchor = record.anchors.iter().find(|a| a.name == decl.name && a.kind == kind);
        let owner_here =
            anchor.is_some_and(|a| a.owner == here) || (anchor.is_some() && record.home_key == inner.key.public());
        let action =
            choose(decl.binding, anchor.map(|a| (a.attachment, a.copy.is_some())), local.is_some(), owner_here);
        let mut error = None;
        match (action, anchor) {
            (Action::Rb, _) => match local {
                Some(r) => bound.add_shared(r),
                None => error = Some("this host offers no such resource".to_owned()),
            },
            (Action::Mv | Action::Cp, Some(_)) if !safe_name(&decl.name) => {
                error = Some("a resource name usable as a file name is needed to copy it".to_owned());
            }
            (Action::Mv | Action::Cp, Some(a)) => {
                if let Some(copy) = &a.copy {
                    let path = copies_dir(&inner.data_dir, agent).join(format!("{}.db", decl.name));
                    if let Err(e) = bound.add_copy(&decl.name, a.attachment, copy, &path) {
                        error = Some(e.to_string());
                    }
                }
            }
            (Action::Gr, Some(a)) => {
                let forward = Forwarder {
                    owner: a.owner.clone(),
                    resource: a.name.clone(),
                    agent: agent.to_owned(),
                    key: inner.key.clone(),
                    tls: inner.tls.clone(),
                    peers: inner.peers(),
                };
                bound.add_remote(&decl.name, kind, a.attachment, Arc::new(forward));
            }
            _ => error = Some("no resource of that name and type here, and none to refer to elsewhere".to_owned()),
        }
        if let Some(reason) = &error {
            bound.add_unbound(&decl.name, reason);
        }
        let action = if error.is_some() { Action::Unbound } else { action };
        report.push(Bound { name: decl.name.clone(), action, error });
    }
    (bound, report)
}

/// Where an agent's travelling copies are written during a visit.
pub(crate) fn copies_dir(data_dir: &std::path::Path, agent: &str) -> std::path::PathBuf {
    data_dir.join("agent-copies").join(agent)
}

/// Whether `name` can name a file: copies are written under the agent's directory by name.
fn safe_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A global reference: forwards calls to the resource's owner, signed with this host's key.
#[derive(Debug)]
struct Forwarder {
    owner: String,
    resource: String,
    agent: String,
    key: Arc<roam_keys::SecretKey>,
    /// TLS proving `key`.
    tls: Arc<rustls::ClientConfig>,
    /// The owner must be one of them.
    peers: Arc<super::peers::Peers>,
}

impl Forwarder {
    fn call(&self, op: CallOp, deadline: Instant) -> Result<Response, ResourceError> {
        let call = Call { agent: self.agent.clone(), resource: self.resource.clone(), op, at: now_secs() };
        let signed = Signed::sign(domain::CALL, &call, &self.key).map_err(|e| ResourceError::Sql(e.to_string()))?;
        let (owner, tls, peers) = (self.owner.clone(), self.tls.clone(), self.peers.clone());
        let wait = deadline.saturating_duration_since(Instant::now());
        // Host functions run on the host's module threads, inside its runtime, which drives the call.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ResourceError::Sql("global references need the host's runtime".into()))?;
        handle.block_on(async move {
            let work = async {
                let mut client = super::peers::dial(&peers, &tls, &owner)
                    .await
                    .map_err(|e| ResourceError::Sql(format!("owner unreachable: {e}")))?;
                client.request(&Request::Call(signed)).await.map_err(|e| ResourceError::Sql(e.to_string()))
            };
            tokio::time::timeout(wait, work).await.map_err(|_| ResourceError::Deadline)?
        })
    }
}

impl Forward for Forwarder {
    fn query(&self, sql: &str, params: Vec<Value>, deadline: Instant) -> Result<Vec<Vec<u8>>, ResourceError> {
        match self.call(CallOp::Query { sql: sql.to_owned(), params }, deadline)? {
            Response::Rows(batches) => Ok(batches.into_iter().map(serde_bytes::ByteBuf::into_vec).collect()),
            Response::Error(e) => Err(ResourceError::Sql(format!("the owner refused: {}", e.message))),
            other => Err(ResourceError::Sql(format!("unexpected answer from the owner: {other:?}"))),
        }
    }

    fn append(&self, line: &str) -> Result<(), ResourceError> {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        match self.call(CallOp::Append { line: line.to_owned() }, deadline)? {
            Response::Accepted => Ok(()),
            Response::Error(e) => Err(ResourceError::Sql(format!("the owner refused: {}", e.message))),
            other => Err(ResourceError::Sql(format!("unexpected answer from the owner: {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Attachment::*;

    /// The brief's table, first choices, with a copy available where one would be made.
    #[test]
    fn first_choices_follow_the_binding_table() {
        let away = |binding, attachment, copy| choose(binding, Some((attachment, copy)), false, false);
        assert_eq!(away(Binding::Identifier, Unattached, true), Mv);
        assert_eq!(away(Binding::Identifier, Fastened, false), Gr);
        assert_eq!(away(Binding::Identifier, Fixed, false), Gr);
        assert_eq!(away(Binding::Value, Unattached, true), Cp);
        assert_eq!(away(Binding::Value, Fastened, false), Gr);
        assert_eq!(away(Binding::Value, Fixed, false), Gr);
        for attachment in [Unattached, Fastened, Fixed] {
            assert_eq!(choose(Binding::Type, Some((attachment, false)), true, false), Rb);
        }
    }

    #[test]
    fn fallbacks_apply_when_the_first_choice_cannot() {
        // An unattached resource too large to copy is referred to instead.
        assert_eq!(choose(Binding::Identifier, Some((Unattached, false)), false, false), Gr);
        assert_eq!(choose(Binding::Value, Some((Unattached, false)), false, false), Gr);
        // No local resource of the type: the one at home, by reference.
        assert_eq!(choose(Binding::Type, Some((Fastened, false)), false, false), Gr);
        assert_eq!(choose(Binding::Type, Some((Fixed, false)), false, false), Gr);
        assert_eq!(choose(Binding::Type, Some((Unattached, true)), false, false), Mv);
        // Nothing here and nothing to refer to.
        assert_eq!(choose(Binding::Type, None, false, false), Unbound);
        assert_eq!(choose(Binding::Identifier, None, true, false), Unbound);
        // At the owner, the resource itself.
        assert_eq!(choose(Binding::Identifier, Some((Fixed, false)), true, true), Rb);
    }
}
