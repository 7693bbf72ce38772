//! Recall: a home orders its agent back, and the order chases the agent along the hosts it went
//! through until it reaches the one that holds it.
//!
//! The order is signed by the home and kept by every host it reaches (`recalls`), in the same
//! transaction as what that host does with it:
//! - the agent is here (its row is live): the row is marked, and it makes no further visit;
//!   it goes home from its next step (a visit under way finishes, and its decision is replaced);
//! - the agent left: the order is queued for the host it was handed to (`sent_to`), and so on
//!   along its trail, each step retried until acknowledged, across crashes and hosts that are
//!   down;
//! - the agent has not arrived yet (an order passed on by a peer while the transfer is under
//!   way): the order waits for it, and the arrival is marked.
//!
//! Alongside the trail the order also goes straight to the host each new report places the
//! agent at, and with every hand-off a host makes once it knows of the order (in the envelope),
//! so the next host knows before the agent can run there. See ARCHITECTURE.md for the invariants.

use std::sync::Arc;

use roam_keys::PublicKey;

use super::Agents;
use super::home::{Viewer, homed_info};
use super::store::{self, Outgoing, Row, RowState};
use crate::protocol::wire::{AgentInfo, AgentLimits, AgentRecord, Recall, Signed, domain, from_cbor, to_cbor};
use crate::protocol::{ErrorKind, RemoteError, Response};
use crate::refusal::{internal, refused};
use crate::state::now_secs;
use crate::sync::lock;

/// What a host did with a recall order.
pub(super) enum Chase {
    /// It already knew of it.
    Known,
    /// The agent is here: it goes home from its next step.
    Here,
    /// The agent went on: the order follows it there.
    Forwarded(String),
    /// The agent's journey ended here: nothing to do.
    Ended,
    /// The agent has not arrived: the order waits for it.
    Waiting,
}

/// Whether `signed` is a recall order for the agent of `record`, signed by its home.
pub(super) fn is_order_for(signed: &Signed, record: &AgentRecord) -> bool {
    signed.open::<Recall>(domain::RECALL, |k| *k == record.home_key).is_ok_and(|order| order.agent == record.id)
}

impl Agents {
    /// `roam recall` at the agent's home: persists the order, starts it on its way, and answers
    /// with what the home knows of the agent (already ended, if it was too late).
    pub(crate) async fn recall(
        self: &Arc<Self>,
        id: &str,
        viewer: Viewer,
        may_recall_own: Result<(), RemoteError>,
    ) -> Result<Response, RemoteError> {
        let id = id.to_owned();
        let info = self
            .blocking(move |agents| agents.order_recall(&id, &viewer, may_recall_own))
            .await
            .unwrap_or_else(|| Err(RemoteError::new(ErrorKind::Internal, "the recall failed inside the host")))?;
        self.wake.notify_one();
        Ok(Response::Agents(vec![info]))
    }

    /// The home's half of [`recall`](Self::recall): `viewer` must own the agent and may recall
    /// it (`may_recall_own`), or be an administrator. Blocking.
    fn order_recall(
        &self,
        id: &str,
        viewer: &Viewer,
        may_recall_own: Result<(), RemoteError>,
    ) -> Result<AgentInfo, RemoteError> {
        let order = Signed::sign(domain::RECALL, &Recall { agent: id.to_owned(), at: now_secs() }, &self.key)
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
        let done = self
            .state
            .transaction(|tx| {
                let Some(homed) = store::get_homed(tx, id)? else { return Ok(None) };
                if !viewer.all {
                    if viewer.caller.is_none() || homed.owner != viewer.caller {
                        return Ok(Some(Err(RemoteError::new(
                            ErrorKind::Denied,
                            format!("agent {id} is not yours: {}", viewer.why()),
                        ))));
                    }
                    if let Err(e) = may_recall_own.clone() {
                        return Ok(Some(Err(e)));
                    }
                }
                if homed.state.is_over() || homed.recall_at.is_some() {
                    return Ok(Some(Ok((homed, None))));
                }
                store::order_recall(tx, id)?;
                // The home is the first host of the agent's trail: the chase starts here.
                let chase = self.chase(tx, id, &order, None)?;
                // It also goes straight to where the agent was last reported, usually ahead.
                if let Some(last) = homed.route.last()
                    && last.address != self.address()
                    && !matches!(&chase, Chase::Forwarded(to) if *to == last.address)
                {
                    store::push_outbox(tx, &last.address, Outgoing::Recall, &to_cbor(&order))?;
                }
                Ok(store::get_homed(tx, id)?.map(|h| Ok((h, Some(chase)))))
            })
            .map_err(internal)?;
        crate::fault::point("recall-ordered");
        let Some(done) = done else {
            return Err(RemoteError::new(ErrorKind::NotFound, format!("this host knows no agent {id}")));
        };
        let (homed, chase) = done?;
        match chase {
            Some(chase) => {
                lock(&self.orders).insert(id.to_owned(), order);
                self.metrics.recall("ordered");
                tracing::info!(agent = %id, location = %homed.location, "recall ordered");
                self.log_chase(id, &chase);
            }
            None if homed.state.is_over() => {
                tracing::info!(agent = %id, state = homed.state.as_str(), "recall of an agent that already ended");
            }
            None => tracing::info!(agent = %id, "recall ordered again: the first order stands"),
        }
        Ok(homed_info(&homed))
    }

    /// A recall order from another host: the agent's home, or a peer passing it on along the
    /// agent's trail. It must be signed by the agent's home (checked against the agent's record
    /// here; an order for an agent not here yet is taken only from a peer, and applies only if
    /// the agent that arrives names its signer as home). Blocking.
    pub(crate) fn receive_recall(&self, signed: &Signed, peer: Option<PublicKey>) -> Result<Response, RemoteError> {
        let order: Recall = signed.open(domain::RECALL, |_| true).map_err(|e| refused(e.to_string()))?;
        if order.agent.len() != 32 || !order.agent.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(refused("an agent id is 32 lowercase hex digits"));
        }
        let from_peer = peer.is_some_and(|p| self.is_peer(&p));
        let unknown = || RemoteError::new(ErrorKind::NotFound, format!("this host knows no agent {}", order.agent));
        let chase = self
            .state
            .transaction(|tx| {
                let latest = store::latest_row(tx, &order.agent)?;
                match latest.as_ref().map(|row| row.record.as_ref()) {
                    Some(Ok(record)) if record.home_key == signed.signer => {}
                    Some(Ok(_)) => return Ok(Err(refused("the recall order is not signed by the agent's home"))),
                    Some(Err(_)) => return Ok(Err(refused("the agent's record here does not decode"))),
                    None if from_peer => {}
                    None => return Ok(Err(unknown())),
                }
                self.chase(tx, &order.agent, signed, latest).map(Ok)
            })
            .map_err(internal)??;
        crate::fault::point(if matches!(chase, Chase::Forwarded(_)) { "recall-passed-on" } else { "recall-received" });
        // Only an order checked against the agent's record is kept in memory: one waiting for
        // its agent is checked when the agent arrives.
        if matches!(chase, Chase::Here | Chase::Forwarded(_)) {
            lock(&self.orders).insert(order.agent.clone(), signed.clone());
        }
        self.metrics.recall("received");
        tracing::info!(agent = %order.agent, from = %signed.signer, "recall order received");
        self.log_chase(&order.agent, &chase);
        if matches!(chase, Chase::Here | Chase::Forwarded(_)) {
            self.wake.notify_one();
        }
        Ok(Response::Accepted)
    }

    /// Keeps the order and acts on it, in the caller's transaction: marks the agent if it is
    /// here, queues the order for the host it went to if it left. `latest` is the agent's
    /// latest row here, when the caller has read it.
    pub(super) fn chase(
        &self,
        tx: &rusqlite::Transaction<'_>,
        agent: &str,
        order: &Signed,
        latest: Option<Row>,
    ) -> rusqlite::Result<Chase> {
        let latest = match latest {
            Some(row) => Some(row),
            None => store::latest_row(tx, agent)?,
        };
        // Kept for the agent's lifetime, so that it is marked if it comes back here.
        let lifetime = AgentLimits::default().lifetime_secs;
        let expires = match latest.as_ref().map(|r| r.record.as_ref()) {
            Some(Ok(record)) => record.launched_at.saturating_add(record.limits.lifetime_secs),
            _ => now_secs().saturating_add(lifetime),
        };
        if !store::keep_order(tx, agent, &to_cbor(order), expires)? {
            // An order kept before the agent was known here is checked only now: one that is
            // not from its home gives way to this one.
            let record = latest.as_ref().and_then(|r| r.record.as_ref().ok());
            let kept: Option<Signed> = store::order(tx, agent)?.and_then(|b| from_cbor(&b, "a recall order").ok());
            match (record, kept) {
                (Some(record), Some(kept)) if !is_order_for(&kept, record) && is_order_for(order, record) => {
                    store::forget_order(tx, agent)?;
                    store::keep_order(tx, agent, &to_cbor(order), expires)?;
                }
                _ => return Ok(Chase::Known),
            }
        }
        let Some(row) = latest else { return Ok(Chase::Waiting) };
        Ok(match (row.state, row.sent_to) {
            (RowState::Ready | RowState::Leaving | RowState::Parked, _) => {
                store::mark_recall(tx, agent)?;
                Chase::Here
            }
            (RowState::Done, Some(dest)) => {
                store::push_outbox(tx, &dest, Outgoing::Recall, &to_cbor(order))?;
                Chase::Forwarded(dest)
            }
            _ => Chase::Ended,
        })
    }

    fn log_chase(&self, agent: &str, chase: &Chase) {
        match chase {
            Chase::Known => tracing::info!(%agent, "recall order already known here"),
            Chase::Here => tracing::info!(%agent, "recall: the agent is here and goes home from its next step"),
            Chase::Forwarded(to) => tracing::info!(%agent, %to, "recall: the agent left; the order follows it"),
            Chase::Ended => tracing::info!(%agent, "recall: the agent's journey already ended here"),
            Chase::Waiting => tracing::info!(%agent, "recall: the agent has not arrived; the order waits for it"),
        }
    }

    /// The recall order kept for an agent, if any. Blocking.
    pub(super) fn kept_order(&self, id: &str) -> Option<Signed> {
        let kept = self.state.transaction(|tx| store::order(tx, id)).ok().flatten()?;
        from_cbor(&kept, "a recall order").ok()
    }

    /// The order a host learned of since `row` was read, if any: checked just before sending.
    pub(super) fn order_since(&self, id: &str) -> Option<Signed> {
        lock(&self.orders).get(id).cloned()
    }

    /// The order an arriving agent carries or finds here, if it is from the agent's home; in
    /// the caller's transaction, which keeps it for the agent.
    pub(super) fn order_on_arrival(
        &self,
        tx: &rusqlite::Transaction<'_>,
        record: &AgentRecord,
        carried: Option<&Signed>,
    ) -> rusqlite::Result<Option<Signed>> {
        let kept: Option<Signed> = store::order(tx, &record.id)?.and_then(|b| from_cbor(&b, "a recall order").ok());
        let order = carried.into_iter().chain(kept.as_ref()).find(|s| is_order_for(s, record)).cloned();
        match &order {
            Some(order) => {
                store::forget_order(tx, &record.id)?;
                let expires = record.launched_at.saturating_add(record.limits.lifetime_secs);
                store::keep_order(tx, &record.id, &to_cbor(order), expires)?;
            }
            // An order kept here that is not from this agent's home is not for it.
            None if kept.is_some() => store::forget_order(tx, &record.id)?,
            None => {}
        }
        Ok(order)
    }
}
