//! What an agent's home does: launch it, keep the registry of where it is from the reports
//! other hosts send (and apply its own at once), recall it, and list its agents.

use std::sync::Arc;

use roam_keys::Kind;

use super::store::{self, Homed, Journey, Row, RowState};
use super::{Agents, CLOCK_SKEW, PEER_TIMEOUT, binding, new_id};
use crate::admission::Rollback;
use crate::client::{Client, ClientError};
use crate::protocol::wire::{AgentInfo, AgentRecord, Event, Recall, Report, Signed, Visit, domain, from_cbor};
use crate::protocol::{ErrorKind, RemoteError, Request, Response};
use crate::refusal::{admit_error, internal, refused};
use crate::state::now_secs;

impl Agents {
    /// Launches an agent with this host as its home. Returns its id once it is persisted.
    pub(crate) fn launch(&self, module: Vec<u8>, input: Vec<u8>) -> Result<String, RemoteError> {
        let hash = roam_keys::hash_module(&module);
        if self.state.module(&hash).map_err(internal)?.is_none() {
            self.admission.admit(module, Some(Kind::Agent), Rollback::Refuse).map_err(admit_error)?;
        }
        let code = self.agent_code(hash)?;
        let anchors = binding::anchors(&code.manifest, &self.resources, &self.address(), self.max_copy);
        let id = new_id()?;
        let record = AgentRecord {
            id: id.clone(),
            code: hash,
            label: code.runnable.label().to_owned(),
            home: self.address(),
            home_key: self.key.public(),
            launched_at: now_secs(),
            limits: self.agent_limits,
            anchors,
        };
        let row = Row {
            id: id.clone(),
            hop: 0,
            state: RowState::Ready,
            record: Ok(record.clone()),
            snapshot: None,
            input: Some(input),
            next: None,
            envelope: None,
            detail: None,
            recall: false,
        };
        self.state
            .transaction(|tx| {
                store::insert_homed(tx, &id, &record.label, &self.name)?;
                store::insert(tx, &row).map(|_| ())
            })
            .map_err(internal)?;
        tracing::info!(agent = %id, label = %record.label, "launched agent");
        self.wake.notify_one();
        Ok(id)
    }

    /// Applies a report from another host about an agent whose home this is.
    pub(crate) fn receive_report(&self, signed: &Signed) -> Result<Response, RemoteError> {
        let report: Report = signed.open(domain::REPORT, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
        self.state.transaction(|tx| apply_report(tx, &report)).map_err(internal)?;
        Ok(Response::Accepted)
    }

    /// Sends the reports queued for one home, in order; each is deleted once acknowledged. Stops
    /// at the first that cannot be delivered (they are retried on a later round).
    pub(crate) async fn flush_outbox_to(self: &Arc<Self>, dest: &str) {
        let mut client = None;
        // Until the outbox is empty: reports queued while a batch is on its way go out too.
        loop {
            let owned = dest.to_owned();
            match self.blocking(move |agents| store::outbox_for(&agents.state, &owned)).await {
                Some(Ok(queued)) if !queued.is_empty() => {
                    if !self.send_reports(dest, queued, &mut client).await {
                        return;
                    }
                }
                _ => break,
            }
        }
        if let Some(client) = client {
            self.keep(dest, client);
        }
    }

    /// Sends queued reports over one connection, in order; false when one could not be sent.
    async fn send_reports(
        self: &Arc<Self>,
        dest: &str,
        queued: Vec<(i64, Vec<u8>)>,
        client: &mut Option<Client>,
    ) -> bool {
        let delete = |seq| async move {
            self.blocking(move |agents| store::delete_outbox(&agents.state, seq)).await.is_some_and(|r| r.is_ok())
        };
        for (seq, message) in queued {
            let Ok(signed) = from_cbor::<Signed>(&message, "a report") else {
                if !delete(seq).await {
                    return false;
                }
                continue;
            };
            let sent = async {
                if client.is_none() {
                    *client = Some(self.connect(dest).await?.0);
                }
                match client.as_mut() {
                    Some(c) => c.request(&Request::Report(signed)).await,
                    None => Err(ClientError::Unexpected("no connection".into())),
                }
            };
            match tokio::time::timeout(PEER_TIMEOUT, sent).await {
                Ok(Ok(Response::Accepted)) => {}
                Ok(Ok(Response::Error(e))) if matches!(e.kind, ErrorKind::Refused | ErrorKind::Unauthenticated) => {
                    tracing::warn!(%dest, "home refused a report: {}", e.message);
                }
                _ => return false,
            }
            // A report that cannot be deleted would be sent again and again: stop here, and
            // let the next round try.
            if !delete(seq).await {
                return false;
            }
        }
        true
    }

    /// `roam recall`: at the agent's home, asks the host that holds it to send it back.
    pub(crate) async fn recall(self: &Arc<Self>, id: &str) -> Result<Response, RemoteError> {
        let local = {
            let id = id.to_owned();
            self.blocking(move |agents| agents.recall_here(&id)).await.unwrap_or_else(|| {
                Err(RemoteError::new(ErrorKind::Internal, "the recall failed inside the host".to_owned()))
            })?
        };
        let homed = match local {
            Ok(()) => {
                self.wake.notify_one();
                return Ok(Response::Accepted);
            }
            Err(homed) => homed,
        };
        let route = &homed.route;
        let location = route.last().map(|v| v.address.clone()).unwrap_or_else(|| self.address());
        let order = Signed::sign(domain::RECALL, &Recall { agent: id.to_owned(), at: now_secs() }, &self.key)
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?;
        let mut client = Client::connect_as(&location, &self.key).await.map_err(|e| {
            RemoteError::new(
                ErrorKind::NotFound,
                format!("cannot reach {location}, where agent {id} was last seen: {e}"),
            )
        })?;
        let answer =
            tokio::time::timeout(PEER_TIMEOUT, client.request(&Request::RecallAgent(order))).await.map_err(|_| {
                RemoteError::new(ErrorKind::NotFound, format!("{location} did not answer within {PEER_TIMEOUT:?}"))
            })?;
        match answer {
            Ok(Response::Accepted) => Ok(Response::Accepted),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(RemoteError::new(ErrorKind::Internal, format!("unexpected answer {other:?}"))),
            Err(ClientError::Remote(e)) => Err(e),
            Err(e) => Err(RemoteError::new(ErrorKind::NotFound, e.to_string())),
        }
    }

    /// A recall at home: refused for an unknown or ended agent; `Ok` if the agent is here (it
    /// goes home from its next step), else where the registry last saw it. Blocking.
    fn recall_here(&self, id: &str) -> Result<Result<(), Homed>, RemoteError> {
        let homed = self.state.transaction(|tx| store::get_homed(tx, id)).map_err(internal)?.ok_or_else(|| {
            RemoteError::new(ErrorKind::NotFound, format!("agent {id} does not have this host as its home"))
        })?;
        if homed.state.is_over() {
            return Err(refused(format!("agent {id} has already ended ({})", homed.state.as_str())));
        }
        if store::mark_recall(&self.state, id).map_err(internal)? {
            return Ok(Ok(()));
        }
        Ok(Err(homed))
    }

    /// A home's recall order, at the host holding the agent: it must be signed by the key of
    /// that agent's home.
    pub(crate) fn receive_recall(&self, signed: &Signed) -> Result<Response, RemoteError> {
        let order: Recall = signed.open(domain::RECALL, |_| true).map_err(|e| refused(e.to_string()))?;
        if order.at.saturating_add(CLOCK_SKEW) < now_secs() || order.at > now_secs().saturating_add(CLOCK_SKEW) {
            return Err(refused("the recall order is stale or from the future"));
        }
        let live = store::live(&self.state, &order.agent).map_err(internal)?;
        let from_home =
            live.as_ref().and_then(|r| r.record.as_ref().ok()).is_some_and(|rec| rec.home_key == signed.signer);
        if !from_home {
            return Err(RemoteError::new(
                ErrorKind::NotFound,
                format!(
                    "agent {} is not here, or the order is not from its home (it may be moving; retry)",
                    order.agent
                ),
            ));
        }
        store::mark_recall(&self.state, &order.agent).map_err(internal)?;
        self.wake.notify_one();
        Ok(Response::Accepted)
    }

    /// Agents this host knows: those it is home to, then those that are (or were) here.
    pub(crate) fn agents(&self, only: Option<&str>) -> Result<Vec<AgentInfo>, RemoteError> {
        let mut out = Vec::new();
        let homed = store::all_homed(&self.state).map_err(internal)?;
        for h in &homed {
            if only.is_none_or(|id| id == h.id) {
                out.push(homed_info(h));
            }
        }
        for row in store::latest(&self.state, only).map_err(internal)? {
            if homed.iter().any(|h| h.id == row.id) {
                continue;
            }
            out.push(AgentInfo {
                id: row.id,
                label: row.label,
                state: row.state.shown().into(),
                location: self.name.clone(),
                hops: row.hop,
                result: Vec::new(),
                detail: row.detail,
                route: Vec::new(),
                home: false,
            });
        }
        if let Some(id) = only
            && out.is_empty()
        {
            return Err(RemoteError::new(ErrorKind::NotFound, format!("this host knows no agent {id}")));
        }
        Ok(out)
    }
}

fn homed_info(h: &Homed) -> AgentInfo {
    AgentInfo {
        id: h.id.clone(),
        label: h.label.clone(),
        state: h.state.as_str().into(),
        location: h.location.clone(),
        hops: h.hops,
        result: h.result.clone().unwrap_or_default(),
        detail: h.detail.clone(),
        route: h.route.clone(),
        home: true,
    }
}

/// Applies a report to the home's registry. Idempotent: a report seen twice changes nothing
/// more, and an ended agent stays ended.
pub(super) fn apply_report(tx: &rusqlite::Transaction<'_>, report: &Report) -> rusqlite::Result<()> {
    let Some(mut h) = store::get_homed(tx, &report.agent)? else {
        return Ok(());
    };
    let ended = h.state.is_over();
    match &report.event {
        Event::Arrived { host, address, bindings } => {
            if !h.route.iter().any(|v| v.hop == report.hop) {
                h.route.push(Visit {
                    hop: report.hop,
                    host: host.clone(),
                    address: address.clone(),
                    bindings: bindings.clone(),
                });
                h.route.sort_by_key(|v| v.hop);
            }
            if !ended && report.hop >= h.hops {
                h.hops = report.hop;
                h.location = host.clone();
                h.state = Journey::Running;
                h.detail = None;
            }
        }
        Event::Departed { to } if !ended && report.hop >= h.hops => {
            h.state = Journey::InTransit;
            h.detail = Some(format!("to {to}"));
        }
        Event::Parked { reason } if !ended && report.hop >= h.hops => {
            h.state = Journey::Parked;
            h.detail = Some(reason.clone());
        }
        Event::Finished { host, result } if !ended => {
            h.state = Journey::Finished;
            h.location = host.clone();
            h.result = Some(result.clone());
            h.hops = h.hops.max(report.hop);
            h.detail = None;
        }
        Event::Failed { reason } if !ended => {
            h.state = Journey::Failed;
            h.detail = Some(reason.clone());
        }
        Event::Recalled if !ended => {
            h.state = Journey::Recalled;
            h.location = "home".into();
            h.detail = Some("recalled by its home".into());
        }
        _ => return Ok(()),
    }
    store::put_homed(tx, &h)
}
