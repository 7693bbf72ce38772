//! Mobile agents: launch, run, move exactly once, bind resources on arrival, report home.
//!
//! An agent is a signed agent module plus its state. Each host keeps the agents it holds in its
//! state database (see [`store`]) and a driver task moves them along:
//!
//! 1. `ready` rows run their entry (`start` at home, `arrive` elsewhere) on the worker pool,
//!    after their resources are bound ([`binding`]) and their snapshot restored;
//! 2. the decision is persisted with the new snapshot as `leaving` (or the agent finishes);
//! 3. the transfer sends a signed [`Envelope`] and the snapshot; the receiver verifies the
//!    peer, the envelope, the code and the snapshot, persists the agent durably, and only then
//!    acknowledges; the sender then marks its row `done` and drops its copy;
//! 4. reports (arrived, departed, parked, finished, failed) go home through an outbox.
//!
//! A retry repeats the same (agent, hop), which the receiver deduplicates; a replayed envelope,
//! one addressed to another host or one whose snapshot does not match its digest is refused.

pub mod binding;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use roam_abi::{Arrival, Bound, Next};
use roam_keys::{Kind, ModuleHash, PublicKey};

use self::store::{Homed, Row, row_state};
use crate::client::{Client, ClientError};
use crate::engine::AgentRunnable;
use crate::host::{Inner, internal};
use crate::protocol::wire::{
    AgentInfo, AgentRecord, Call, CallOp, Ending, Envelope, Event, Recall, Report, Signed, Visit, domain, from_cbor,
    to_cbor,
};
use crate::protocol::{ErrorKind, RemoteError, Request, Response};
use crate::snapshot::Snapshot;
use crate::state::now_secs;

/// How far apart two hosts' clocks (and a message's age) may be.
const CLOCK_SKEW: u64 = 300;
/// How often the driver looks for work even when nothing woke it: unsent reports, and parked
/// agents whose backoff is over.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How long a connection to a peer is kept for reuse: well inside the peer's idle timeout.
const KEEP_CONNECTION: Duration = Duration::from_secs(30);
/// How many idle connections are kept per peer address.
const KEPT_PER_PEER: usize = 4;
/// How long a peer may take to answer one host-to-host request (a transfer includes fetching
/// the code, if the peer lacks it), so a hung peer never stalls the driver.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent module, loaded, with its declarations.
#[derive(Debug)]
pub(crate) struct AgentCode {
    runnable: AgentRunnable,
    manifest: roam_abi::Manifest,
}

/// A pending move, persisted with a `leaving` or `parked` row.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Move {
    /// Destinations in order of preference.
    dests: Vec<String>,
    /// Set once an envelope may have reached `dests[0]`: only it is tried from then on.
    #[serde(default)]
    pinned: bool,
    /// Set when the agent is going home to end its journey.
    ending: Option<Ending>,
    /// Destinations found unreachable so far.
    unreachable: Vec<String>,
}

fn refused(message: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::Refused, message)
}

fn new_id() -> Result<String, RemoteError> {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn getrandom(buf: &mut [u8]) -> Result<(), RemoteError> {
    getrandom::getrandom(buf).map_err(|e| RemoteError::new(ErrorKind::Internal, format!("no randomness: {e}")))
}

impl Inner {
    /// The address other hosts reach this one at.
    pub(crate) fn address(&self) -> String {
        self.address.get().cloned().unwrap_or_default()
    }

    fn is_peer(&self, key: &PublicKey) -> bool {
        *key == self.key.public() || self.peers.get(key).is_some() && !self.peers.is_revoked(key)
    }

    /// Checks who sends a host-to-host message signed by `signer` on a connection whose client
    /// proved `peer`: a host sends only its own messages, on a connection where it proved its
    /// key, and that key must be one of this host's peers. A recall order may also come from an
    /// agent's home that is not a peer; `receive_recall` checks that it is the agent's home.
    pub(crate) fn check_sender(
        &self,
        signer: &PublicKey,
        peer: Option<PublicKey>,
        recall: bool,
    ) -> Result<(), RemoteError> {
        let refuse = |m: String| Err(RemoteError::new(ErrorKind::Unauthenticated, m));
        let Some(peer) = peer else {
            return refuse(
                "host-to-host messages are accepted only on a connection where the sending host proved its key in the \
                 handshake; this connection is anonymous"
                    .into(),
            );
        };
        if *signer != peer {
            return refuse(format!(
                "the message is signed by key {signer}, but the connection proved key {peer}; a host sends only its own \
                 messages"
            ));
        }
        if !recall && !self.is_peer(&peer) {
            return refuse(format!("the connection proved key {peer}, which is not among this host's trusted peers"));
        }
        Ok(())
    }

    /// A connection to another host, proving this host's key: one kept from an earlier
    /// exchange if there is one (then `true`), else a new one. A handshake costs each side a
    /// signature and a verification, more than a small agent's whole transfer.
    pub(crate) async fn connect(&self, addr: &str) -> Result<(Client, bool), ClientError> {
        let kept = {
            let mut pool = crate::sync::lock(&self.peer_pool);
            // Connections past their time are dropped for every address, so none lingers.
            pool.retain(|_, conns| {
                conns.retain(|(_, since)| since.elapsed() < KEEP_CONNECTION);
                !conns.is_empty()
            });
            pool.get_mut(addr).and_then(Vec::pop)
        };
        match kept {
            Some((client, _)) => Ok((client, true)),
            None => Client::connect_as(addr, &self.key).await.map(|c| (c, false)),
        }
    }

    /// Keeps a connection whose last exchange succeeded, for the next one to `addr`.
    fn keep(&self, addr: &str, client: Client) {
        let mut pool = crate::sync::lock(&self.peer_pool);
        let conns = pool.entry(addr.to_owned()).or_default();
        if conns.len() < KEPT_PER_PEER {
            conns.push((client, std::time::Instant::now()));
        }
    }

    /// Loads (once) an agent module this host holds.
    fn agent_code(&self, hash: ModuleHash) -> Result<Arc<AgentCode>, RemoteError> {
        if let Some(code) = crate::sync::lock(&self.agent_code).get(&hash) {
            return Ok(code.clone());
        }
        let bytes = self.state.load_module(&hash).map_err(internal)?.ok_or_else(|| {
            RemoteError::new(ErrorKind::NotFound, format!("this host does not hold agent code {hash}"))
        })?;
        // Rollback is checked when an agent is launched; agents already travelling keep the
        // version they were launched with, even after a newer one was accepted here.
        let verified = self.verify_with(bytes, Some(Kind::Agent), &roam_keys::NoHistory)?;
        let runnable = self.engine.load_agent(hash, &verified).map_err(crate::host::load_error)?;
        let (out, _) = self
            .engine
            .run_agent(&runnable, roam_abi::AGENT_MANIFEST, Vec::new(), Arc::default(), None, |_| false)
            .map_err(crate::host::run_error)?;
        let manifest = from_cbor(&out, "the agent's manifest").map_err(refused)?;
        let code = Arc::new(AgentCode { runnable, manifest });
        crate::sync::lock(&self.agent_code).insert(hash, code.clone());
        Ok(code)
    }

    /// Launches an agent with this host as its home. Returns its id once it is persisted.
    pub(crate) fn launch(&self, module: Vec<u8>, input: Vec<u8>) -> Result<String, RemoteError> {
        let hash = roam_keys::hash_module(&module);
        if self.state.module(&hash).map_err(internal)?.is_none() {
            let verified = self.verify(module, Some(Kind::Agent))?;
            self.store(hash, &verified)?;
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
            state: row_state::READY.into(),
            record: to_cbor(&record),
            snapshot: None,
            input: Some(input),
            next: None,
            envelope: None,
            detail: None,
            recall: false,
        };
        self.state
            .transaction(|tx| {
                store::insert_homed(tx, &id, &record.label, &self.name, &to_cbor(&Vec::<Visit>::new()))?;
                store::insert(tx, &row).map(|_| ())
            })
            .map_err(internal)?;
        tracing::info!(agent = %id, label = %record.label, "launched agent");
        self.wake.notify_one();
        Ok(id)
    }

    /// Runs one `ready` agent's entry and persists what it decided. Blocking.
    pub(crate) fn run_ready(&self, row: Row) {
        // The arrival is reported in the same transaction as what the visit led to.
        let mut arrived = None;
        if let Err(reason) = self.try_run(&row, &mut arrived) {
            self.fail(&row, &reason, arrived);
        }
        // Copies that travel with the agent are written out for one visit only.
        let copies = binding::copies_dir(&self.data_dir, &row.id);
        if let Err(e) = std::fs::remove_dir_all(&copies)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(agent = %row.id, "cannot remove {}: {e}", copies.display());
        }
    }

    fn try_run(&self, row: &Row, arrived: &mut Option<Event>) -> Result<(), String> {
        let record: AgentRecord = from_cbor(&row.record, "the agent record")?;
        if now_secs() >= record.launched_at.saturating_add(record.limits.lifetime_secs) {
            return Err(format!("lifetime limit of {} s exceeded", record.limits.lifetime_secs));
        }
        let code = self.agent_code(record.code).map_err(|e| e.message)?;
        let (resources, bindings) = binding::bind(self, &record, &code.manifest, &row.id);
        let (entry, input, from) = if row.hop == 0 {
            (roam_abi::AGENT_START, row.input.clone().unwrap_or_default(), None)
        } else {
            let unreachable: Vec<String> =
                row.input.as_deref().map(|b| from_cbor(b, "unreachable")).transpose()?.unwrap_or_default();
            let arrival = Arrival {
                host: self.name.clone(),
                address: self.address(),
                hop: row.hop,
                bindings: bindings.clone(),
                unreachable,
            };
            let snapshot: Snapshot = from_cbor(row.snapshot.as_deref().unwrap_or_default(), "the snapshot")?;
            (roam_abi::AGENT_ARRIVE, to_cbor(&arrival), Some(snapshot))
        };
        *arrived = Some(Event::Arrived { host: self.name.clone(), address: self.address(), bindings });

        let leaving = |out: &[u8]| matches!(from_cbor::<Next>(out, "next"), Ok(Next::Go { .. } | Next::Home { .. }));
        let (out, snapshot) = self
            .engine
            .run_agent(&code.runnable, entry, input, Arc::new(resources), from.as_ref(), leaving)
            .map_err(|e| e.to_string())?;
        let next: Next = from_cbor(&out, "the agent's decision")?;
        let snapshot_bytes = to_cbor(&snapshot);
        if snapshot_bytes.len() as u64 > record.limits.max_snapshot_bytes {
            return Err(format!(
                "snapshot of {} bytes is over the limit of {}",
                snapshot_bytes.len(),
                record.limits.max_snapshot_bytes
            ));
        }
        let mv = match next {
            Next::Go { host, alternates } => {
                if row.hop + 1 > record.limits.max_hops {
                    return Err(format!("hop limit of {} reached", record.limits.max_hops));
                }
                let mut dests = vec![host];
                dests.extend(alternates);
                Move { dests, pinned: false, ending: None, unreachable: vec![] }
            }
            Next::Home { result } => {
                if record.home_key == self.key.public() {
                    return self.end_here(row, &record, Ending::Finished(result), arrived.take());
                }
                Move {
                    dests: vec![record.home.clone()],
                    pinned: false,
                    ending: Some(Ending::Finished(result)),
                    unreachable: vec![],
                }
            }
            Next::Finish { result } => return self.end_here(row, &record, Ending::Finished(result), arrived.take()),
        };
        let home = Move {
            dests: vec![record.home.clone()],
            pinned: false,
            ending: Some(Ending::Recalled),
            unreachable: vec![],
        };
        self.state
            .transaction(|tx| {
                // A recall that came in during the visit sends the agent home instead.
                let recalled = store::get(tx, &row.id, row.hop)?.is_some_and(|r| r.recall);
                let mv = if recalled && mv.ending.is_none() { home } else { mv };
                if let Some(event) = arrived.take() {
                    self.queue_report(tx, &record, row.hop, event)?;
                }
                store::set_state(
                    tx,
                    &row.id,
                    row.hop,
                    row_state::LEAVING,
                    Some(&snapshot_bytes),
                    Some(&to_cbor(&mv)),
                    None,
                )?;
                let departed = Event::Departed { to: mv.dests.first().cloned().unwrap_or_default() };
                self.queue_report(tx, &record, row.hop, departed)
            })
            .map_err(|e| e.to_string())?;
        crate::fault::point("sender-persisted");
        self.wake.notify_one();
        Ok(())
    }

    fn recall_pending(&self, id: &str, hop: u32) -> bool {
        self.state.transaction(|tx| store::get(tx, id, hop)).ok().flatten().is_some_and(|r| r.recall)
    }

    /// Ends the journey on this host: the row is done and the ending reported home.
    fn end_here(&self, row: &Row, record: &AgentRecord, ending: Ending, arrived: Option<Event>) -> Result<(), String> {
        let event = self.ended(&ending);
        self.state
            .transaction(|tx| {
                if let Some(a) = arrived {
                    self.queue_report(tx, record, row.hop, a)?;
                }
                store::set_state(tx, &row.id, row.hop, row_state::DONE, None, None, None)?;
                self.queue_report(tx, record, row.hop, event)
            })
            .map_err(|e| e.to_string())?;
        self.wake.notify_one();
        Ok(())
    }

    /// The report of a journey ending on this host.
    fn ended(&self, ending: &Ending) -> Event {
        match ending {
            Ending::Finished(result) => Event::Finished { host: self.name.clone(), result: result.clone() },
            Ending::Recalled => Event::Recalled,
        }
    }

    /// Marks an agent failed here and tells its home why (after its arrival, if it arrived).
    fn fail(&self, row: &Row, reason: &str, arrived: Option<Event>) {
        tracing::warn!(agent = %row.id, hop = row.hop, reason, "agent failed");
        let record: Result<AgentRecord, _> = from_cbor(&row.record, "the agent record");
        let done = self.state.transaction(|tx| {
            store::set_state(tx, &row.id, row.hop, row_state::FAILED, None, None, Some(reason))?;
            let Ok(r) = &record else { return Ok(()) };
            if let Some(a) = arrived {
                self.queue_report(tx, r, row.hop, a)?;
            }
            self.queue_report(tx, r, row.hop, Event::Failed { reason: reason.to_owned() })
        });
        if let Err(e) = done {
            tracing::error!(agent = %row.id, "cannot record the failure: {e}");
        }
        self.wake.notify_one();
    }

    /// Queues a report for the agent's home, in the caller's transaction. At home it is
    /// applied at once.
    fn queue_report(
        &self,
        tx: &rusqlite::Transaction<'_>,
        record: &AgentRecord,
        hop: u32,
        event: Event,
    ) -> rusqlite::Result<()> {
        let report = Report { agent: record.id.clone(), hop, event };
        if record.home_key == self.key.public() {
            return apply_report(tx, &report);
        }
        let signed = Signed::sign(domain::REPORT, &report, &self.key)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.to_string().into()))?;
        store::push_outbox(tx, &record.home, &to_cbor(&signed))
    }

    /// Sends one `leaving` or `parked` agent on its way.
    ///
    /// Alternates are tried only while nothing was sent: once the envelope may have reached a
    /// destination, the move is pinned to it (persisted before sending) and retried there only,
    /// so an unanswered transfer can never leave a second copy elsewhere.
    pub(crate) async fn transfer(&self, row: Row) {
        let Ok(record) = from_cbor::<AgentRecord>(&row.record, "the agent record") else {
            return self.fail(&row, "its record does not decode", None);
        };
        let Some(mut mv) = row.next.as_deref().and_then(|b| from_cbor::<Move>(b, "the move").ok()) else {
            return self.fail(&row, "its next move does not decode", None);
        };
        // Re-read the recall flag: a recall may have come in since the row was listed.
        let recalled = row.recall || self.recall_pending(&row.id, row.hop);
        if recalled && mv.ending.is_none() && !mv.pinned {
            mv = Move { dests: vec![record.home.clone()], ending: Some(Ending::Recalled), ..mv };
        }
        let snapshot = row.snapshot.clone().unwrap_or_default();
        let mut unreachable = mv.unreachable.clone();
        for dest in mv.dests.clone() {
            let (mut client, kept) = match self.connect(&dest).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(agent = %row.id, %dest, "destination unreachable: {e}");
                    unreachable.push(dest);
                    continue;
                }
            };
            if !self.is_peer(&client.host_key()) {
                let reason = format!("{dest} is not a trusted peer (its key is {})", client.host_key());
                return self.fail(&row, &reason, None);
            }
            // With a single destination there is nowhere else to go: nothing to pin.
            if !mv.pinned && mv.dests.len() > 1 {
                mv = Move { dests: vec![dest.clone()], pinned: true, ..mv };
                let pinned = self.state.transaction(|tx| store::set_next(tx, &row.id, row.hop, &to_cbor(&mv)));
                if let Err(e) = pinned {
                    return tracing::error!(agent = %row.id, "cannot record the destination: {e}");
                }
            }
            let mut sent = self.send(&mut client, &record, row.hop + 1, &snapshot, &mv, &unreachable).await;
            if kept && matches!(sent, Err(SendError::Broken(_))) {
                // A kept connection may have gone stale (the peer restarted, say): once more on
                // a new one to the same host. The receiver acknowledges a repeated transfer
                // without running it twice.
                if let Ok(fresh) = Client::connect_as(&dest, &self.key).await
                    && fresh.host_key() == client.host_key()
                {
                    client = fresh;
                    sent = self.send(&mut client, &record, row.hop + 1, &snapshot, &mv, &unreachable).await;
                }
            }
            match sent {
                Ok(()) => {
                    self.keep(&dest, client);
                    crate::fault::point("sender-acked");
                    let released = self
                        .state
                        .transaction(|tx| store::set_state(tx, &row.id, row.hop, row_state::DONE, None, None, None));
                    if let Err(e) = released {
                        tracing::error!(agent = %row.id, "cannot record the hand-off: {e}");
                    }
                    tracing::info!(agent = %row.id, hop = row.hop + 1, %dest, "agent handed off");
                    return;
                }
                Err(SendError::Unreachable(e) | SendError::Broken(e)) => {
                    tracing::info!(agent = %row.id, %dest, "no answer from the destination: {e}");
                    unreachable.push(dest);
                    break;
                }
                Err(SendError::Refused(e)) => {
                    return self.fail(&row, &format!("{dest} refused the agent: {e}"), None);
                }
            }
        }
        let reason = format!("no destination reachable ({})", unreachable.join(", "));
        let first_time = row.state != row_state::PARKED;
        let parked = self.state.transaction(|tx| {
            let next = Move { unreachable: Vec::new(), ..mv.clone() };
            store::park(tx, &row.id, row.hop, &to_cbor(&next), &reason)?;
            if first_time {
                self.queue_report(tx, &record, row.hop, Event::Parked { reason: reason.clone() })?;
            }
            Ok(())
        });
        match parked {
            Err(e) => tracing::error!(agent = %row.id, "cannot park the agent: {e}"),
            // The report that it parked is waiting in the outbox.
            Ok(()) if first_time => self.wake.notify_one(),
            Ok(()) => {}
        }
    }

    async fn send(
        &self,
        client: &mut Client,
        record: &AgentRecord,
        hop: u32,
        snapshot: &[u8],
        mv: &Move,
        unreachable: &[String],
    ) -> Result<(), SendError> {
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce).map_err(|e| SendError::Unreachable(e.message))?;
        let envelope = Envelope {
            record: record.clone(),
            hop,
            snapshot_digest: roam_keys::hash_module(snapshot),
            sender_addr: self.address(),
            destination: client.host_key(),
            sent_at: now_secs(),
            nonce: u64::from_le_bytes(nonce),
            ending: mv.ending.clone(),
            unreachable: unreachable.to_vec(),
        };
        let signed =
            Signed::sign(domain::ENVELOPE, &envelope, &self.key).map_err(|e| SendError::Refused(e.to_string()))?;
        let request = Request::Transfer { envelope: signed, snapshot: snapshot.to_vec() };
        let answer = tokio::time::timeout(PEER_TIMEOUT, client.request(&request))
            .await
            .map_err(|_| SendError::Unreachable(format!("no answer within {PEER_TIMEOUT:?}")))?;
        match answer {
            Ok(Response::Accepted) => Ok(()),
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

    /// Receives an agent: every check, then a durable write, then the acknowledgement.
    pub(crate) async fn receive(self: &Arc<Self>, signed: Signed, snapshot: Vec<u8>) -> Result<Response, RemoteError> {
        let envelope: Envelope =
            signed.open(domain::ENVELOPE, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
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
        let hop = envelope.hop;
        // Dedupe before any work: a retry is acknowledged again, a replay refused.
        let (seen, latest) =
            self.state.transaction(|tx| Ok((store::get(tx, &id, hop)?, store::max_hop(tx, &id)?))).map_err(internal)?;
        if let Some(existing) = seen {
            return if existing.envelope.as_deref() == Some(signed.body.as_slice()) {
                Err(refused(format!("replayed envelope for agent {id} hop {hop}")))
            } else {
                Ok(Response::Accepted)
            };
        }
        if latest.is_some_and(|h| h > hop) {
            return Err(refused(format!("replayed envelope: agent {id} is already past hop {hop}")));
        }

        if let Some(ending) = &envelope.ending {
            if envelope.record.home_key != me {
                return Err(refused("an agent can only end its journey at its home"));
            }
            let event = self.ended(ending);
            let row = self.row_for(&envelope, &signed, None, row_state::DONE);
            let report = Report { agent: id.clone(), hop, event };
            self.state
                .transaction(|tx| {
                    store::insert(tx, &row)?;
                    apply_report(tx, &report)
                })
                .map_err(internal)?;
            return Ok(Response::Accepted);
        }

        if self.state.module(&envelope.record.code).map_err(internal)?.is_none() {
            self.fetch_code(&envelope.sender_addr, envelope.record.code).await?;
            crate::fault::point("receiver-fetched-code");
        }
        // Compiling the code and checking the snapshot are CPU work: off the async runtime.
        let inner = self.clone();
        tokio::task::spawn_blocking(move || inner.accept_arrival(&envelope, &signed, snapshot))
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Internal, format!("the transfer failed inside the host: {e}")))?
    }

    /// The receiver's last checks (code, limits, snapshot), then the durable write.
    fn accept_arrival(&self, envelope: &Envelope, signed: &Signed, snapshot: Vec<u8>) -> Result<Response, RemoteError> {
        let (id, hop) = (&envelope.record.id, envelope.hop);
        let code = self.agent_code(envelope.record.code)?;
        if hop > envelope.record.limits.max_hops {
            return Err(refused(format!("hop {hop} is over the agent's limit of {}", envelope.record.limits.max_hops)));
        }
        if snapshot.len() as u64 > envelope.record.limits.max_snapshot_bytes {
            return Err(refused("the snapshot is over the agent's size limit"));
        }
        let decoded: Snapshot = from_cbor(&snapshot, "the snapshot").map_err(refused)?;
        decoded
            .check(code.runnable.slots(), code.runnable.initial_bytes(), self.engine.limits().memory_bytes as u64)
            .map_err(|e| refused(e.to_string()))?;
        let mut row = self.row_for(envelope, signed, Some(snapshot), row_state::READY);
        row.input = Some(to_cbor(&envelope.unreachable));
        self.state.transaction(|tx| store::insert(tx, &row)).map_err(internal)?;
        crate::fault::point("receiver-persisted");
        tracing::info!(agent = %id, hop, from = %envelope.sender_addr, "agent arrived");
        self.wake.notify_one();
        Ok(Response::Accepted)
    }

    fn row_for(&self, envelope: &Envelope, signed: &Signed, snapshot: Option<Vec<u8>>, state: &str) -> Row {
        Row {
            id: envelope.record.id.clone(),
            hop: envelope.hop,
            state: state.into(),
            record: to_cbor(&envelope.record),
            snapshot,
            input: None,
            next: None,
            envelope: Some(signed.body.clone()),
            detail: None,
            recall: false,
        }
    }

    async fn fetch_code(&self, peer: &str, hash: ModuleHash) -> Result<(), RemoteError> {
        let bytes = crate::fetch::download(peer, hash, self.max_module, Some(&self.key), None).await.map_err(|e| {
            RemoteError::new(ErrorKind::NotFound, format!("cannot fetch agent code {hash} from {peer}: {e}"))
        })?;
        let verified = self.verify_with(bytes, Some(Kind::Agent), &roam_keys::NoHistory)?;
        self.store(hash, &verified)
    }

    /// Applies a report from another host about an agent whose home this is.
    pub(crate) fn receive_report(&self, signed: &Signed) -> Result<Response, RemoteError> {
        let report: Report = signed.open(domain::REPORT, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
        self.state.transaction(|tx| apply_report(tx, &report)).map_err(internal)?;
        Ok(Response::Accepted)
    }

    /// Sends the reports queued for one home, in order; each is deleted once acknowledged. Stops
    /// at the first that cannot be delivered (they are retried on a later round).
    pub(crate) async fn flush_outbox_to(&self, dest: &str) {
        let mut client = None;
        // Until the outbox is empty: reports queued while a batch is on its way go out too.
        loop {
            match store::outbox_for(&self.state, dest) {
                Ok(queued) if !queued.is_empty() => {
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
    async fn send_reports(&self, dest: &str, queued: Vec<(i64, Vec<u8>)>, client: &mut Option<Client>) -> bool {
        for (seq, message) in queued {
            let Ok(signed) = from_cbor::<Signed>(&message, "a report") else {
                if store::delete_outbox(&self.state, seq).is_err() {
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
            if store::delete_outbox(&self.state, seq).is_err() {
                return false;
            }
        }
        true
    }

    /// `roam recall`: at the agent's home, asks the host that holds it to send it back.
    pub(crate) async fn recall(&self, id: &str) -> Result<Response, RemoteError> {
        let homed = self.state.transaction(|tx| store::get_homed(tx, id)).map_err(internal)?.ok_or_else(|| {
            RemoteError::new(ErrorKind::NotFound, format!("agent {id} does not have this host as its home"))
        })?;
        if matches!(homed.state.as_str(), "finished" | "failed" | "recalled") {
            return Err(refused(format!("agent {id} has already ended ({})", homed.state)));
        }
        if store::mark_recall(&self.state, id).map_err(internal)? {
            self.wake.notify_one();
            return Ok(Response::Accepted);
        }
        let route: Vec<Visit> = from_cbor(&homed.route, "the route").unwrap_or_default();
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

    /// A home's recall order, at the host holding the agent: it must be signed by the key of
    /// that agent's home.
    pub(crate) fn receive_recall(&self, signed: &Signed) -> Result<Response, RemoteError> {
        let order: Recall = signed.open(domain::RECALL, |_| true).map_err(|e| refused(e.to_string()))?;
        if order.at.saturating_add(CLOCK_SKEW) < now_secs() || order.at > now_secs().saturating_add(CLOCK_SKEW) {
            return Err(refused("the recall order is stale or from the future"));
        }
        let live = store::live(&self.state, &order.agent).map_err(internal)?;
        let from_home = live
            .as_ref()
            .and_then(|r| from_cbor::<AgentRecord>(&r.record, "record").ok())
            .is_some_and(|rec| rec.home_key == signed.signer);
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

    /// A call forwarded by the host where an agent is, on a resource this host owns. The agent
    /// must be one of this host's own (launched here) and its signed capabilities must grant it.
    pub(crate) fn receive_call(&self, signed: &Signed) -> Result<Response, RemoteError> {
        let call: Call = signed.open(domain::CALL, |k| self.is_peer(k)).map_err(|e| refused(e.to_string()))?;
        let now = now_secs();
        if call.at.saturating_add(CLOCK_SKEW) < now || call.at > now.saturating_add(CLOCK_SKEW) {
            return Err(refused("the call is stale or from the future"));
        }
        let homed = self.state.transaction(|tx| store::get_homed(tx, &call.agent)).map_err(internal)?;
        if homed.is_none_or(|h| matches!(h.state.as_str(), "finished" | "failed" | "recalled")) {
            return Err(refused(format!("agent {} is not a live agent of this host", call.agent)));
        }
        let row = self
            .state
            .transaction(|tx| store::get(tx, &call.agent, 0))
            .map_err(internal)?
            .ok_or_else(|| refused(format!("agent {} was not launched here", call.agent)))?;
        let record: AgentRecord = from_cbor(&row.record, "the agent record").map_err(refused)?;
        let code = self.agent_code(record.code)?;
        let resource = self.resources.get(&call.resource).ok_or_else(|| {
            RemoteError::new(ErrorKind::NotFound, format!("this host offers no resource {}", call.resource))
        })?;
        let needed = resource.capability();
        if !code.runnable.capabilities().iter().any(|p| roam_keys::Policy::pattern_allows(p, &needed)) {
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

    /// Agents this host knows: those it is home to, then those that are (or were) here.
    pub(crate) fn agents(&self, only: Option<&str>) -> Result<Vec<AgentInfo>, RemoteError> {
        let mut out = Vec::new();
        let homed = store::all_homed(&self.state).map_err(internal)?;
        for h in &homed {
            if only.is_none_or(|id| id == h.id) {
                out.push(homed_info(h));
            }
        }
        for (id, hop, state, record, detail) in store::latest(&self.state, only).map_err(internal)? {
            if homed.iter().any(|h| h.id == id) {
                continue;
            }
            let state = match state.as_str() {
                row_state::READY => "running",
                row_state::LEAVING => "in transit",
                row_state::PARKED => "parked",
                row_state::DONE => "left",
                _ => "failed",
            };
            out.push(AgentInfo {
                label: from_cbor::<AgentRecord>(&record, "record").map(|rec| rec.label).unwrap_or_default(),
                id,
                state: state.into(),
                location: self.name.clone(),
                hops: hop,
                result: Vec::new(),
                detail,
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
        state: h.state.clone(),
        location: h.location.clone(),
        hops: h.hops,
        result: h.result.clone().unwrap_or_default(),
        detail: h.detail.clone(),
        route: from_cbor(&h.route, "route").unwrap_or_default(),
        home: true,
    }
}

/// Applies a report to the home's registry. Idempotent: a report seen twice changes nothing
/// more, and an ended agent stays ended.
fn apply_report(tx: &rusqlite::Transaction<'_>, report: &Report) -> rusqlite::Result<()> {
    let Some(mut h) = store::get_homed(tx, &report.agent)? else {
        return Ok(());
    };
    let ended = matches!(h.state.as_str(), "finished" | "failed" | "recalled");
    match &report.event {
        Event::Arrived { host, address, bindings } => {
            let mut route: Vec<Visit> = from_cbor(&h.route, "route").unwrap_or_default();
            if !route.iter().any(|v| v.hop == report.hop) {
                route.push(Visit {
                    hop: report.hop,
                    host: host.clone(),
                    address: address.clone(),
                    bindings: bindings.clone(),
                });
                route.sort_by_key(|v| v.hop);
                h.route = to_cbor(&route);
            }
            if !ended && report.hop >= h.hops {
                h.hops = report.hop;
                h.location = host.clone();
                h.state = "running".into();
                h.detail = None;
            }
        }
        Event::Departed { to } if !ended && report.hop >= h.hops => {
            h.state = "in transit".into();
            h.detail = Some(format!("to {to}"));
        }
        Event::Parked { reason } if !ended && report.hop >= h.hops => {
            h.state = "parked".into();
            h.detail = Some(reason.clone());
        }
        Event::Finished { host, result } if !ended => {
            h.state = "finished".into();
            h.location = host.clone();
            h.result = Some(result.clone());
            h.hops = h.hops.max(report.hop);
            h.detail = None;
        }
        Event::Failed { reason } if !ended => {
            h.state = "failed".into();
            h.detail = Some(reason.clone());
        }
        Event::Recalled if !ended => {
            h.state = "recalled".into();
            h.location = "home".into();
            h.detail = Some("recalled by its home".into());
        }
        _ => return Ok(()),
    }
    store::put_homed(tx, &h)
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

/// Shows bindings as `name: action` for people.
pub fn describe_bindings(bindings: &[Bound]) -> String {
    bindings
        .iter()
        .map(|b| {
            let action = format!("{:?}", b.action).to_lowercase();
            match &b.error {
                Some(e) => format!("{}: {action} ({e})", b.name),
                None => format!("{}: {action}", b.name),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
