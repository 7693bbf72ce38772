//! What an agent's home does: launch it, keep the registry of where it is from the reports
//! other hosts send (and apply its own at once), and list its agents. Recall is in
//! [`recall`](super::recall).

use std::sync::Arc;

use roam_keys::{Kind, PublicKey};

use super::store::{self, Homed, Journey, Outgoing, Row, RowState};
use super::{Agents, PEER_TIMEOUT, binding, new_id};
use crate::admission::Rollback;
use crate::client::{Client, ClientError};
use crate::protocol::wire::{
    AgentInfo, AgentLimits, AgentRecord, Event, Recall, Report, Signed, Visit, domain, from_cbor,
};
use crate::protocol::{ErrorKind, RemoteError, Request, Response};
use crate::refusal::{admit_error, internal, refused};
use crate::state::{StateError, now_secs};

impl Agents {
    /// Launches an agent with this host as its home. Returns its id once it is persisted.
    pub(crate) fn launch(
        &self,
        module: Vec<u8>,
        input: Vec<u8>,
        owner: Option<PublicKey>,
    ) -> Result<String, RemoteError> {
        let hash = roam_keys::hash_module(&module);
        if self.state.module(&hash).map_err(internal)?.is_none() {
            self.admission.admit(module, Some(Kind::Agent), Rollback::Refuse).map_err(admit_error)?;
        }
        let code = self.agent_code(hash)?;
        let anchors = binding::anchors(&code.manifest, &self.resources, &self.address(), self.max_copy);
        let id = new_id()?;
        // The journey's root: every later span of this agent, on any host, is its child.
        let span = tracing::info_span!(target: crate::trace::TARGET, "launch", agent = %id, host = %self.name);
        let _entered = span.enter();
        let record = AgentRecord {
            id: id.clone(),
            code: hash,
            label: code.runnable.label().to_owned(),
            home: self.address(),
            home_key: self.key.public(),
            launched_at: now_secs(),
            limits: self.agent_limits,
            anchors,
            owner,
            trace: crate::trace::traceparent(&span),
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
            sent_to: None,
            receipt: None,
        };
        self.state
            .transaction(|tx| {
                store::insert_homed(tx, &id, &record.label, &self.name, owner.as_ref())?;
                store::insert(tx, &row).map(|_| ())
            })
            .map_err(internal)?;
        tracing::info!(agent = %id, label = %record.label, "launched agent");
        self.wake.notify_one();
        Ok(id)
    }

    /// Applies a report from another host about an agent whose home this is.
    pub(crate) fn receive_report(&self, signed: &Signed) -> Result<Response, RemoteError> {
        let mut report: Report =
            signed.open(domain::REPORT, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
        // A receipt in an arrival report must be the reporting host's own. Its signature is
        // checked where it is shown (`roam agents ID`), not here on every hop: the home is where
        // every hop's reports arrive.
        for event in &mut report.events {
            if let Event::Arrived { receipt: receipt @ Some(_), .. } = event
                && receipt.as_ref().is_some_and(|r| r.signer != signed.signer)
            {
                tracing::warn!(agent = %report.agent, hop = report.hop, "an arrival report carried another host's receipt");
                *receipt = None;
            }
        }
        if self.state.transaction(|tx| self.apply_report(tx, &report)).map_err(internal)? {
            // A recall order is on its way to where the report placed the agent.
            self.wake.notify_one();
        }
        Ok(Response::Accepted)
    }

    /// Sends the messages queued for one host (reports to a home, recall orders passed on), in
    /// order; each is deleted once acknowledged. Stops at the first that cannot be delivered
    /// (they are retried on a later round).
    pub(crate) async fn flush_outbox_to(self: &Arc<Self>, dest: &str) {
        let mut client = None;
        // Until the outbox is empty: messages queued while a batch is on its way go out too.
        loop {
            let owned = dest.to_owned();
            match self.blocking(move |agents| store::outbox_for(&agents.state, &owned)).await {
                Some(Ok(queued)) if !queued.is_empty() => {
                    if !self.send_queued(dest, queued, &mut client).await {
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

    /// Sends queued messages over one connection, in order; false when one could not be sent.
    async fn send_queued(
        self: &Arc<Self>,
        dest: &str,
        queued: Vec<(i64, Outgoing, Vec<u8>)>,
        client: &mut Option<Client>,
    ) -> bool {
        let delete = |seq| async move {
            self.blocking(move |agents| store::delete_outbox(&agents.state, seq)).await.is_some_and(|r| r.is_ok())
        };
        for (seq, kind, message) in queued {
            let Ok(signed) = from_cbor::<Signed>(&message, "a queued message") else {
                if !delete(seq).await {
                    return false;
                }
                continue;
            };
            let order = match kind {
                Outgoing::Recall => signed.open::<Recall>(domain::RECALL, |_| true).ok(),
                Outgoing::Report => None,
            };
            // An order older than an agent may live is for an agent that has ended: it goes no
            // further (its next host may be gone for good).
            let lifetime = AgentLimits::default().lifetime_secs;
            if order.as_ref().is_some_and(|o| o.at.saturating_add(lifetime) < now_secs()) {
                if !delete(seq).await {
                    return false;
                }
                continue;
            }
            let agent = order.map(|o| o.agent);
            let request = match kind {
                Outgoing::Report => Request::Report(signed),
                Outgoing::Recall => Request::RecallAgent(signed),
            };
            let sent = async {
                if client.is_none() {
                    *client = Some(self.connect(dest).await?.0);
                }
                match client.as_mut() {
                    Some(c) => c.request(&request).await,
                    None => Err(ClientError::Unexpected("no connection".into())),
                }
            };
            match tokio::time::timeout(PEER_TIMEOUT, sent).await {
                Ok(Ok(Response::Accepted)) => {
                    if let Some(agent) = &agent {
                        tracing::info!(%agent, to = %dest, "recall order delivered");
                    }
                }
                // Refused for good: sending it again would change nothing.
                Ok(Ok(Response::Error(e)))
                    if matches!(e.kind, ErrorKind::Refused | ErrorKind::Unauthenticated | ErrorKind::NotFound) =>
                {
                    tracing::warn!(%dest, kind = kind.as_str(), "the host refused a message: {}", e.message);
                }
                _ => return false,
            }
            // A message that cannot be deleted would be sent again and again: stop here, and
            // let the next round try.
            if !delete(seq).await {
                return false;
            }
        }
        true
    }

    /// Agents this host knows: those it is home to, then those that are (or were) here.
    pub(crate) fn agents(&self, only: Option<&str>, viewer: Viewer) -> Result<Vec<AgentInfo>, RemoteError> {
        let mut out = Vec::new();
        // One agent (a `--wait` polls for it many times a second) by its key.
        let homed = match only {
            Some(id) => self.state.transaction(|tx| store::get_homed(tx, id)).map_err(internal)?.into_iter().collect(),
            None => store::all_homed(&self.state).map_err(internal)?,
        };
        let mut others = 0;
        for h in &homed {
            if only.is_none_or(|id| id == h.id) {
                if viewer.sees(h.owner.as_ref()) {
                    out.push(homed_info(h));
                } else {
                    others += 1;
                }
            }
        }
        let homed: std::collections::HashSet<&str> = homed.iter().map(|h| h.id.as_str()).collect();
        for row in store::latest(&self.state, only).map_err(internal)? {
            if homed.contains(row.id.as_str()) {
                continue;
            }
            if !viewer.sees(row.owner.as_ref()) {
                others += 1;
                continue;
            }
            out.push(self.visitor_info(row));
        }
        if let Some(id) = only
            && out.is_empty()
        {
            if others > 0 {
                return Err(RemoteError::new(ErrorKind::Denied, format!("agent {id} is not yours: {}", viewer.why())));
            }
            return Err(RemoteError::new(ErrorKind::NotFound, format!("this host knows no agent {id}")));
        }
        Ok(out)
    }

    /// Up to `n` agents for an operator's overview: the latest launched from here, newest
    /// first, then the latest updated of those that are (or were) only visiting.
    pub(crate) fn recent(&self, n: u32) -> Result<Vec<AgentInfo>, StateError> {
        let mut out: Vec<AgentInfo> = store::recent_homed(&self.state, n)?.iter().map(homed_info).collect();
        let room = n.saturating_sub(u32::try_from(out.len()).unwrap_or(n));
        if room > 0 {
            out.extend(store::recent_visitors(&self.state, room)?.into_iter().map(|row| self.visitor_info(row)));
        }
        Ok(out)
    }

    /// What is known of an agent this host is not home to, from its latest row here.
    fn visitor_info(&self, row: store::Listing) -> AgentInfo {
        AgentInfo {
            id: row.id,
            label: row.label,
            state: row.state.shown().into(),
            location: self.name.clone(),
            hops: row.hop,
            result: Vec::new(),
            detail: row.detail,
            route: Vec::new(),
            home: false,
            heard_at: row.updated,
            recall_ordered: None,
            owner: row.owner,
            launched_at: 0,
            ended_at: None,
        }
    }
}

/// Who asks about agents, and what they may see.
#[derive(Clone, Debug)]
pub struct Viewer {
    /// The key the client proved, if any.
    pub caller: Option<PublicKey>,
    /// Whether it may see every agent (an administrator).
    pub all: bool,
    /// Where the right to see every agent is granted, for refusals.
    pub granted_in: String,
}

impl Viewer {
    /// Whether this viewer sees an agent owned by `owner`.
    fn sees(&self, owner: Option<&PublicKey>) -> bool {
        self.all || (self.caller.is_some() && owner == self.caller.as_ref())
    }

    /// Why another's agent is hidden from this viewer.
    pub(super) fn why(&self) -> String {
        format!(
            "only the client that launched an agent sees and recalls it, and administrators (the right admin, in {})",
            self.granted_in
        )
    }
}

/// What `roam agents` shows of an agent whose home is this host.
pub(super) fn homed_info(h: &Homed) -> AgentInfo {
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
        heard_at: h.updated,
        recall_ordered: h.recall_at,
        owner: h.owner,
        launched_at: h.launched,
        ended_at: h.ended,
    }
}

impl Agents {
    /// Applies a report to the home's registry, its events in order. Idempotent: a report seen
    /// twice changes nothing more, and an ended agent stays ended. While a recall is pending, a
    /// host that reports the agent's arrival gets the order straight away; `true` if it was
    /// queued. (Not a host the agent says it is going to: that is the agent's word, not a
    /// host's.)
    pub(super) fn apply_report(&self, tx: &rusqlite::Transaction<'_>, report: &Report) -> rusqlite::Result<bool> {
        let Some(mut h) = store::get_homed(tx, &report.agent)? else {
            return Ok(false);
        };
        let mut now_at = None;
        let mut changed = false;
        for event in &report.events {
            let ended = h.state.is_over();
            match event {
                Event::Arrived { host, address, bindings, at, receipt } => {
                    if !h.route.iter().any(|v| v.hop == report.hop) {
                        h.route.push(Visit {
                            hop: report.hop,
                            host: host.clone(),
                            address: address.clone(),
                            bindings: bindings.clone(),
                            at: *at,
                            receipt: receipt.clone(),
                        });
                        h.route.sort_by_key(|v| v.hop);
                    }
                    if !ended && report.hop >= h.hops {
                        h.hops = report.hop;
                        h.location = host.clone();
                        h.state = Journey::Running;
                        h.detail = None;
                        now_at = Some(address.clone());
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
                Event::Recalled { result, detail } if !ended => {
                    h.state = Journey::Recalled;
                    h.location = self.name.clone();
                    h.hops = h.hops.max(report.hop);
                    h.result = Some(result.clone());
                    h.detail = Some(detail.clone());
                }
                _ => continue,
            }
            changed = true;
        }
        if !changed {
            return Ok(false);
        }
        store::put_homed(tx, &h)?;
        let Some(address) = now_at.filter(|a| h.recall_at.is_some() && *a != self.address()) else {
            return Ok(false);
        };
        let Some(order) = store::order(tx, &report.agent)? else { return Ok(false) };
        store::push_outbox(tx, &address, Outgoing::Recall, &order)?;
        Ok(true)
    }
}
