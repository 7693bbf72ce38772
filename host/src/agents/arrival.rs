//! The receiver's side of a move: every check on the sender, the envelope, the code and the
//! snapshot, then a durable write, and only then the acknowledgement.

use std::sync::Arc;

use super::recall::is_order_for;
use super::store::{self, Row, RowState};
use super::{Agents, CLOCK_SKEW};
use tracing::Instrument as _;

use crate::protocol::wire::{Ending, Envelope, Event, Receipt, Report, Signed, domain, from_cbor, to_cbor};
use crate::protocol::{ErrorKind, RemoteError, Response};
use crate::refusal::{internal, refused};
use crate::snapshot::Snapshot;
use crate::state::now_secs;

/// How far the receiver got with an arriving agent.
enum Step {
    /// Done: this is the answer.
    Answered(Response),
    /// Its code must be fetched from the sender first; the snapshot, given back.
    NeedsCode(Vec<u8>),
}

impl Agents {
    /// Receives an agent: every check, then a durable write, then the acknowledgement.
    pub(crate) async fn receive(self: &Arc<Self>, signed: Signed, snapshot: Vec<u8>) -> Result<Response, RemoteError> {
        let envelope: Envelope =
            signed.open(domain::ENVELOPE, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
        let span = tracing::info_span!(
            target: crate::trace::TARGET, "arrival", agent = %envelope.record.id, hop = envelope.hop, host = %self.name
        );
        crate::trace::follow(&span, envelope.trace.as_deref().or(envelope.record.trace.as_deref()));
        self.receive_opened(envelope, signed, snapshot).instrument(span).await
    }

    async fn receive_opened(
        self: &Arc<Self>,
        envelope: Envelope,
        signed: Signed,
        snapshot: Vec<u8>,
    ) -> Result<Response, RemoteError> {
        let me = self.key.public();
        if envelope.destination != me {
            return Err(refused(format!(
                "the envelope is addressed to host {}, not to this host",
                envelope.destination
            )));
        }
        let now = now_secs();
        if envelope.sent_at.saturating_add(CLOCK_SKEW) < now || envelope.sent_at > now.saturating_add(CLOCK_SKEW) {
            return Err(refused("the envelope is stale or from the future; check the hosts' clocks"));
        }
        if roam_keys::hash_module(&snapshot) != envelope.snapshot_digest {
            return Err(refused("the snapshot does not match the envelope's digest: it was altered in transit"));
        }
        let id = envelope.record.id.clone();
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(refused("an agent id is 32 lowercase hex digits"));
        }
        // The dedupe, an ending, loading the code (which runs its manifest), checking the
        // snapshot and the durable write: one job on a module thread. Only an agent whose code
        // this host lacks comes back here, for the code to be fetched, and then goes again.
        let (envelope, signed) = (Arc::new(envelope), Arc::new(signed));
        let mut snapshot = snapshot;
        let mut fetched = false;
        loop {
            let (e, s) = (envelope.clone(), signed.clone());
            match self.on_module_thread(move |agents| agents.arrive(&e, &s, snapshot)).await? {
                Step::Answered(response) => return Ok(response),
                Step::NeedsCode(_) if fetched => {
                    return Err(RemoteError::new(
                        ErrorKind::NotFound,
                        format!("this host does not hold agent code {}", envelope.record.code),
                    ));
                }
                Step::NeedsCode(back) => {
                    snapshot = back;
                    let sender = self.peers().name_of(&signed.signer).unwrap_or_else(|| envelope.sender_addr.clone());
                    self.fetch_code(&sender, envelope.record.code).await?;
                    crate::fault::point("receiver-fetched-code");
                    fetched = true;
                }
            }
        }
    }

    /// The receiver's checks against its own state: a retry is acknowledged again, a replay
    /// refused, and an agent ending its journey here is recorded at once; otherwise, once its
    /// code is here, the last checks and the durable write. Blocking.
    fn arrive(&self, envelope: &Envelope, signed: &Signed, snapshot: Vec<u8>) -> Result<Step, RemoteError> {
        let (id, hop) = (&envelope.record.id, envelope.hop);
        // Dedupe before any work: a retry is acknowledged again, a replay refused.
        let (seen, latest) =
            self.state.transaction(|tx| Ok((store::get(tx, id, hop)?, store::max_hop(tx, id)?))).map_err(internal)?;
        if let Some(existing) = seen {
            if existing.envelope.as_deref() == Some(signed.body.as_slice()) {
                return Err(refused(format!("replayed envelope for agent {id} hop {hop}")));
            }
            // A retry: acknowledged again. An order it carries (its sender learned of one since
            // the first try) holds the agent here as it would have on the first try.
            if let Some(order) = self.carried_order(envelope)? {
                tracing::info!(agent = %id, hop, "recall: a retried transfer brought the order");
                crate::sync::lock(&self.orders).insert(id.clone(), order);
                self.wake.notify_one();
            }
            // The receipt names the snapshot this host holds: the one of the first try.
            let first: Envelope = existing
                .envelope
                .as_deref()
                .and_then(|body| body.strip_prefix(domain::ENVELOPE))
                .and_then(|body| from_cbor(body, "the envelope").ok())
                .ok_or_else(|| RemoteError::new(ErrorKind::Internal, "the stored envelope does not decode"))?;
            return self.receipt(id, hop, first.snapshot_digest).map(|r| Step::Answered(Response::Received(r)));
        }
        if latest.is_some_and(|h| h > hop) {
            return Err(refused(format!("replayed envelope: agent {id} is already past hop {hop}")));
        }
        if envelope.ending.is_some() && envelope.record.home_key != self.key.public() {
            return Err(refused("an agent can only end its journey at its home"));
        }
        // A journey ends only at a home that still knows it: one whose records were forgotten
        // (`store::prune`, long after it ended) cannot end, nor its recall entry run, again.
        if envelope.ending.is_some()
            && self.state.transaction(|tx| store::get_homed(tx, id)).map_err(internal)?.is_none()
        {
            return Err(refused(format!("this host is not the home of agent {id}, or forgot it long ago")));
        }
        // An agent past its lifetime would only fail here; refusing it is also what lets this
        // host forget the records of agents whose lifetime is over (`store::prune`).
        let record = &envelope.record;
        let over = record.launched_at.saturating_add(record.limits.lifetime_secs).saturating_add(CLOCK_SKEW);
        if envelope.ending.is_none() && over < now_secs() {
            return Err(refused(format!(
                "agent {id}'s lifetime of {} s is over; it cannot start another visit",
                record.limits.lifetime_secs
            )));
        }
        if let Some(Ending::Finished(result)) = &envelope.ending {
            let event = Event::Finished { host: self.name.clone(), result: result.clone() };
            let receipt = self.receipt(id, hop, envelope.snapshot_digest)?;
            let mut row = self.row_for(envelope, signed, None, RowState::Done);
            row.receipt = Some(to_cbor(&receipt));
            let report = Report { agent: id.clone(), hop, events: vec![event] };
            self.state
                .transaction(|tx| {
                    store::insert(tx, &row)?;
                    self.apply_report(tx, &report)
                })
                .map_err(internal)?;
            self.metrics.hop();
            return Ok(Step::Answered(Response::Received(receipt)));
        }
        // A recalled agent is restored at home like any arrival, to hand over what it has.
        if self.state.module(&envelope.record.code).map_err(internal)?.is_none() {
            return Ok(Step::NeedsCode(snapshot));
        }
        self.accept_arrival(envelope, signed, snapshot).map(Step::Answered)
    }

    /// The receiver's last checks (code, limits, snapshot), then the durable write.
    fn accept_arrival(&self, envelope: &Envelope, signed: &Signed, snapshot: Vec<u8>) -> Result<Response, RemoteError> {
        let (id, hop) = (&envelope.record.id, envelope.hop);
        let code = self.agent_code(envelope.record.code)?;
        // A recalled agent comes home whatever its hop count.
        if hop > envelope.record.limits.max_hops && envelope.ending != Some(Ending::Recalled) {
            return Err(refused(format!("hop {hop} is over the agent's limit of {}", envelope.record.limits.max_hops)));
        }
        if snapshot.len() as u64 > envelope.record.limits.max_snapshot_bytes {
            return Err(refused("the snapshot is over the agent's size limit"));
        }
        let decoded: Snapshot = from_cbor(&snapshot, "the snapshot").map_err(refused)?;
        decoded
            .check(code.runnable.slots(), code.runnable.initial_bytes(), self.engine.limits().memory_bytes as u64)
            .map_err(|e| refused(e.to_string()))?;
        let receipt = self.receipt(id, hop, envelope.snapshot_digest)?;
        let mut row = self.row_for(envelope, signed, Some(snapshot), RowState::Ready);
        row.input = Some(to_cbor(&envelope.unreachable));
        row.receipt = Some(to_cbor(&receipt));
        let coming_home = envelope.ending == Some(Ending::Recalled);
        let order = self
            .state
            .transaction(|tx| {
                // An order the agent carries, or one that got here first, holds it from the start.
                let order = self.order_on_arrival(tx, &envelope.record, envelope.recall.as_ref())?;
                row.recall = order.is_some() || coming_home;
                store::insert(tx, &row)?;
                Ok(order)
            })
            .map_err(internal)?;
        crate::fault::point("receiver-persisted");
        self.metrics.hop();
        tracing::info!(agent = %id, hop, from = %envelope.sender_addr, "agent arrived");
        if let Some(order) = order {
            if !coming_home {
                tracing::info!(agent = %id, hop, "recall: the agent arrived recalled and goes home without a visit");
            }
            crate::sync::lock(&self.orders).insert(id.clone(), order);
        }
        self.wake.notify_one();
        // Given only now that the agent is durably here.
        Ok(Response::Received(receipt))
    }

    /// This host's signed receipt for hop `hop` of agent `id`, holding the snapshot `digest`.
    fn receipt(&self, id: &str, hop: u32, digest: roam_keys::ModuleHash) -> Result<Signed, RemoteError> {
        let receipt =
            Receipt { agent: id.to_owned(), hop, snapshot_digest: digest, receiver: self.key.public(), at: now_secs() };
        Signed::sign(domain::RECEIPT, &receipt, &self.key)
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))
    }

    /// Keeps and acts on the order a retried envelope carries, if it is from the agent's home.
    fn carried_order(&self, envelope: &Envelope) -> Result<Option<Signed>, RemoteError> {
        if envelope.recall.is_none() {
            return Ok(None);
        }
        let Some(order) = envelope.recall.as_ref().filter(|o| is_order_for(o, &envelope.record)) else {
            return Ok(None);
        };
        // Wherever the agent is now: here, or handed on from here.
        self.state.transaction(|tx| self.chase(tx, &envelope.record.id, order, None)).map_err(internal)?;
        Ok(Some(order.clone()))
    }

    fn row_for(&self, envelope: &Envelope, signed: &Signed, snapshot: Option<Vec<u8>>, state: RowState) -> Row {
        Row {
            id: envelope.record.id.clone(),
            hop: envelope.hop,
            state,
            record: Ok(envelope.record.clone()),
            snapshot,
            input: None,
            next: None,
            envelope: Some(signed.body.clone()),
            detail: None,
            recall: false,
            sent_to: None,
            receipt: None,
        }
    }
}
