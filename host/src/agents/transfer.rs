//! The sender's side of a move: the signed envelope and the snapshot go to the first
//! reachable destination, and the agent is released only once it acknowledged; unreachable
//! destinations park the agent for a later retry.

use std::sync::Arc;

use super::store::{self, Outgoing, Row, RowState};
use super::{Agents, PEER_TIMEOUT, getrandom};
use tracing::Instrument as _;

use crate::client::{Client, ClientError};
use crate::protocol::wire::{AgentRecord, Ending, Envelope, Event, Receipt, Signed, domain, from_cbor, to_cbor};
use crate::protocol::{ErrorKind, Request, Response};
use crate::state::{StateError, now_secs};
use crate::sync::lock;

/// A pending move, persisted with a `leaving` or `parked` row.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Move {
    /// Destinations in order of preference.
    pub(super) dests: Vec<String>,
    /// Set once an envelope may have reached `dests[0]`: only it is tried from then on, and a
    /// recall can no longer turn the move home (the agent may be there already).
    #[serde(default)]
    pub(super) pinned: bool,
    /// Set when the agent is going home to end its journey.
    pub(super) ending: Option<Ending>,
    /// Destinations found unreachable so far.
    pub(super) unreachable: Vec<String>,
}

impl Move {
    /// Home (at `home`, see [`Agents::home_of`]), to end the journey with `result`.
    pub(super) fn finishing(home: String, result: Vec<u8>) -> Self {
        Self::home(home, Ending::Finished(result))
    }

    /// Home (at `home`), because the home recalled the agent.
    pub(super) fn recalled(home: String) -> Self {
        Self::home(home, Ending::Recalled)
    }

    fn home(home: String, ending: Ending) -> Self {
        Self { dests: vec![home], pinned: false, ending: Some(ending), unreachable: vec![] }
    }
}

/// One attempt at a move: what goes in the envelope besides the record.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    hop: u32,
    snapshot: &'a [u8],
    mv: &'a Move,
    unreachable: &'a [String],
}

enum SendError {
    /// Worth trying another destination, or again later.
    Unreachable(String),
    /// The connection failed before an answer came: as unreachable, but a kept connection may
    /// just have gone stale.
    Broken(String),
    /// The destination will not take the agent.
    Refused(String),
}

impl Agents {
    /// Runs a transaction on a row, on the blocking pool; a panic in it is an error too.
    async fn on_row<T: Send + 'static>(
        self: &Arc<Self>,
        row: &Row,
        work: impl FnOnce(&Self, &str, u32) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, String> {
        let (id, hop) = (row.id.clone(), row.hop);
        match self.blocking(move |agents| work(agents, &id, hop)).await {
            Some(done) => done.map_err(|e| e.to_string()),
            None => Err("the write failed inside the host".into()),
        }
    }

    /// [`fail`](Self::fail), on the blocking pool.
    async fn fail_soon(self: &Arc<Self>, row: Row, reason: String) {
        self.blocking(move |agents| agents.fail(&row, &reason, None)).await;
    }

    /// Sends one `leaving` or `parked` agent on its way.
    ///
    /// Alternates are tried only while nothing was sent: once the envelope may have reached a
    /// destination, the move is pinned to it (persisted before sending) and retried there only,
    /// so an unanswered transfer can never leave a second copy elsewhere.
    pub(crate) async fn transfer(self: &Arc<Self>, row: Row) {
        let span = self.journey_span("transfer", &row, row.hop + 1);
        self.move_on(row).instrument(span).await;
    }

    async fn move_on(self: &Arc<Self>, row: Row) {
        let Ok(record) = row.record.clone() else {
            return self.fail_soon(row, "its record does not decode".into()).await;
        };
        let Some(mut mv) = row.next.as_deref().and_then(|b| from_cbor::<Move>(b, "the move").ok()) else {
            return self.fail_soon(row, "its next move does not decode".into()).await;
        };
        // A move this process made and has not tried yet has sent nothing. Any other `leaving`
        // row may have been sent by a process that crashed before recording it: its single
        // destination may hold the agent already. (Several destinations are pinned, durably,
        // before anything is sent.)
        let untried = lock(&self.untried).remove(&(row.id.clone(), row.hop));
        if row.state == RowState::Leaving && !untried && mv.dests.len() == 1 {
            mv.pinned = true;
        }
        // The driver read the row, recall flag included, just before it started this task; an
        // order received since is in memory. A recalled agent goes home unless an envelope may
        // already be at its destination (pinned): then it goes there with the order.
        let mut order = self.order_since(&row.id);
        if order.is_none() && row.recall {
            let id = row.id.clone();
            order = self.blocking(move |agents| agents.kept_order(&id)).await.flatten();
        }
        if (row.recall || order.is_some()) && mv.ending.is_none() && !mv.pinned {
            if record.home_key == self.key.public() {
                return self.stay_home(row).await;
            }
            mv = Move::recalled(self.home_of(&record));
        }
        let snapshot = row.snapshot.clone().unwrap_or_default();
        let mut unreachable = mv.unreachable.clone();
        // Destinations that are not peers (not dialed) or where another key answered, with why,
        // for the agent's home to show.
        let mut not_peers = Vec::new();
        for dest in mv.dests.clone() {
            let (mut client, kept) = match self.connect(&dest).await {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.transfer("unreachable", 0);
                    tracing::info!(agent = %row.id, %dest, "destination unreachable: {e}");
                    if matches!(e, ClientError::Target { .. } | ClientError::WrongKey { .. }) {
                        not_peers.push(e.to_string());
                    }
                    unreachable.push(dest);
                    continue;
                }
            };
            // From here an envelope may reach `dest`. The pin must be durable before anything
            // is sent when a crash would otherwise lose it: a retry after a crash could take an
            // alternate, or a recall turn the agent home, and leave a second copy. A fresh move
            // to one destination needs no write: after a crash it is `leaving`, which counts as
            // pinned (above).
            if !mv.pinned {
                let durable = mv.dests.len() > 1 || row.state == RowState::Parked;
                mv = Move { dests: vec![dest.clone()], pinned: true, ..mv };
                if durable {
                    let next = to_cbor(&mv);
                    let pinned = self
                        .on_row(&row, move |agents, id, hop| {
                            agents.state.transaction(|tx| store::set_next(tx, id, hop, &next))
                        })
                        .await;
                    if let Err(e) = pinned {
                        return tracing::error!(agent = %row.id, "cannot record the destination: {e}");
                    }
                }
            }
            // An order that came in while connecting goes with the agent.
            let carried = self.order_since(&row.id).or_else(|| order.clone());
            let attempt = Attempt { hop: row.hop + 1, snapshot: &snapshot, mv: &mv, unreachable: &unreachable };
            let mut sent = self.send(&mut client, &record, &attempt, carried.as_ref()).await;
            if kept && matches!(sent, Err(SendError::Broken(_))) {
                // A kept connection may have gone stale (the peer restarted, say): once more on
                // a new one to the same host. The receiver acknowledges a repeated transfer
                // without running it twice.
                if let Ok(fresh) = self.dial(&dest).await
                    && fresh.host_key() == client.host_key()
                {
                    client = fresh;
                    sent = self.send(&mut client, &record, &attempt, carried.as_ref()).await;
                }
            }
            match sent {
                Ok(receipt) => {
                    self.keep(&dest, client);
                    self.metrics.transfer("handed_off", snapshot.len());
                    crate::fault::point("sender-acked");
                    // An order kept here follows the agent, queued in the same transaction as the
                    // hand-off: one that came in during the send did not go with it, and one that
                    // did may have reached a host that already had this hop from an earlier try.
                    let follow = mv.ending.is_none();
                    let to = dest.clone();
                    let receipt = to_cbor(&receipt);
                    let released = self
                        .on_row(&row, move |agents, id, hop| {
                            agents.state.transaction(|tx| {
                                store::hand_off(tx, id, hop, &to, &receipt)?;
                                let order = if follow { store::order(tx, id)? } else { None };
                                if let Some(order) = &order {
                                    store::push_outbox(tx, &to, Outgoing::Recall, order)?;
                                }
                                Ok(order.is_some())
                            })
                        })
                        .await;
                    tracing::info!(agent = %row.id, hop = row.hop + 1, %dest, "agent handed off");
                    match released {
                        Err(e) => tracing::error!(agent = %row.id, "cannot record the hand-off: {e}"),
                        Ok(true) => {
                            tracing::info!(agent = %row.id, to = %dest, "recall: the order follows the agent");
                            self.wake.notify_one();
                        }
                        Ok(false) => {}
                    }
                    return;
                }
                Err(SendError::Unreachable(e) | SendError::Broken(e)) => {
                    self.metrics.transfer("unreachable", 0);
                    tracing::info!(agent = %row.id, %dest, "no answer from the destination: {e}");
                    unreachable.push(dest);
                    break;
                }
                Err(SendError::Refused(e)) => {
                    self.metrics.transfer("refused", 0);
                    return self.fail_soon(row, format!("{dest} refused the agent: {e}")).await;
                }
            }
        }
        let mut reason = format!("no destination reachable ({})", unreachable.join(", "));
        if !not_peers.is_empty() {
            reason = format!("{reason}: {}", not_peers.join("; "));
        }
        self.metrics.transfer("parked", 0);
        let first_time = row.state != RowState::Parked;
        let next = to_cbor(&Move { unreachable: Vec::new(), ..mv });
        let parked = self
            .on_row(&row, move |agents, id, hop| {
                agents.state.transaction(|tx| {
                    store::park(tx, id, hop, &next, &reason)?;
                    if first_time {
                        agents.queue_report(tx, &record, hop, vec![Event::Parked { reason: reason.clone() }])?;
                    }
                    Ok(())
                })
            })
            .await;
        match parked {
            Err(e) => tracing::error!(agent = %row.id, "cannot park the agent: {e}"),
            // The report that it parked is waiting in the outbox.
            Ok(()) if first_time => self.wake.notify_one(),
            Ok(()) => {}
        }
    }

    /// A recalled agent whose move had not started yet, at its home: it stays, and its next
    /// round hands over what it has.
    async fn stay_home(self: &Arc<Self>, row: Row) {
        let stayed = self
            .on_row(&row, |agents, id, hop| {
                agents.state.transaction(|tx| {
                    let snapshot = store::get(tx, id, hop)?.and_then(|r| r.snapshot);
                    store::set_state(tx, id, hop, RowState::Ready, snapshot.as_deref(), None, None)
                })
            })
            .await;
        match stayed {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!(agent = %row.id, "cannot keep the recalled agent home: {e}"),
        }
    }

    async fn send(
        &self,
        client: &mut Client,
        record: &AgentRecord,
        attempt: &Attempt<'_>,
        recall: Option<&Signed>,
    ) -> Result<Signed, SendError> {
        let Attempt { hop, snapshot, mv, unreachable } = *attempt;
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce).map_err(|e| SendError::Unreachable(e.message))?;
        let envelope_digest = roam_keys::hash_module(snapshot);
        let envelope = Envelope {
            record: record.clone(),
            hop,
            snapshot_digest: envelope_digest,
            sender_addr: self.address(),
            destination: client.host_key(),
            sent_at: now_secs(),
            nonce: u64::from_le_bytes(nonce),
            ending: mv.ending.clone(),
            unreachable: unreachable.to_vec(),
            recall: recall.cloned(),
            trace: crate::trace::traceparent(&tracing::Span::current()),
        };
        let signed =
            Signed::sign(domain::ENVELOPE, &envelope, &self.key).map_err(|e| SendError::Refused(e.to_string()))?;
        let request = Request::Transfer { envelope: signed, snapshot: snapshot.to_vec() };
        let answer = tokio::time::timeout(PEER_TIMEOUT, client.request(&request))
            .await
            .map_err(|_| SendError::Unreachable(format!("no answer within {PEER_TIMEOUT:?}")))?;
        match answer {
            // Released only on the destination's own receipt for what was sent; anything else
            // (a forged or missing receipt) counts as no answer: the move is retried.
            Ok(Response::Received(receipt))
                if Receipt::proves(&receipt, &record.id, hop, &envelope_digest, &client.host_key()) =>
            {
                Ok(receipt)
            }
            Ok(Response::Received(_)) => {
                Err(SendError::Broken("the destination's receipt does not verify for what was sent".into()))
            }
            Ok(Response::Accepted) => Err(SendError::Broken("the destination gave no receipt".into())),
            Ok(Response::Error(e))
                if matches!(e.kind, ErrorKind::Busy | ErrorKind::ShuttingDown | ErrorKind::Internal) =>
            {
                Err(SendError::Unreachable(e.message))
            }
            Ok(Response::Error(e)) => Err(SendError::Refused(e.message)),
            Ok(other) => Err(SendError::Refused(format!("unexpected answer {other:?}"))),
            Err(e) => Err(SendError::Broken(e.to_string())),
        }
    }
}
