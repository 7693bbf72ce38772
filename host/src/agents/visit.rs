//! A visit: an agent's entry runs on this host (`start` at home, `arrive` elsewhere) with its
//! resources bound and its snapshot restored, and what it decided is persisted with its new
//! snapshot in one transaction, with the reports home that go with it.

use std::sync::Arc;

use roam_abi::{Arrival, Next};

use super::Agents;
use super::binding;
use super::store::{self, Outgoing, Row, RowState};
use super::transfer::Move;
use crate::protocol::wire::{AgentRecord, Event, Report, Signed, domain, from_cbor, to_cbor};
use crate::snapshot::Snapshot;
use crate::state::{now_millis, now_secs};
use crate::sync::lock;

impl Agents {
    /// Runs one `ready` agent's entry and persists what it decided. Blocking.
    pub(crate) fn run_ready(&self, row: Row) {
        let span = self.journey_span("visit", &row, row.hop);
        let _entered = span.enter();
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
        let record = row.record.as_ref().map_err(Clone::clone)?;
        if now_secs() >= record.launched_at.saturating_add(record.limits.lifetime_secs) {
            return Err(format!("lifetime limit of {} s exceeded", record.limits.lifetime_secs));
        }
        if row.recall {
            return self.recalled(row, record);
        }
        let code = self.agent_code(record.code).map_err(|e| e.message)?;
        let started = now_millis();
        let (resources, bindings) = binding::bind(self, record, &code.manifest, &row.id);
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
        let receipt = row.receipt.as_deref().and_then(|r| from_cbor(r, "the receipt").ok());
        *arrived =
            Some(Event::Arrived { host: self.name.clone(), address: self.address(), bindings, at: started, receipt });

        // The decision is decoded once: the engine asks whether the agent is leaving (to run
        // its departure entry) and the answer is kept for what follows.
        let mut decided = None;
        let leaving = |out: &[u8]| {
            let next = from_cbor::<Next>(out, "the agent's decision");
            let moves = matches!(next, Ok(Next::Go { .. } | Next::Home { .. }));
            decided = Some(next);
            moves
        };
        let (out, snapshot) = self
            .engine
            .run_agent(&code.runnable, entry, input, Arc::new(resources), from.as_ref(), leaving)
            .map_err(|e| e.to_string())?;
        let next = match decided {
            Some(next) => next?,
            None => from_cbor(&out, "the agent's decision")?,
        };
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
                // A recalled agent goes home whatever its hop count.
                if row.hop + 1 > record.limits.max_hops && !self.marked(row) {
                    return Err(format!("hop limit of {} reached", record.limits.max_hops));
                }
                let mut dests = vec![host];
                dests.extend(alternates);
                Move { dests, pinned: false, ending: None, unreachable: vec![] }
            }
            Next::Home { result } => {
                let finished = Event::Finished { host: self.name.clone(), result: result.clone() };
                if record.home_key == self.key.public() {
                    return self.end_here(row, record, finished, arrived.take());
                }
                Move::finishing(self.home_of(record), result)
            }
            Next::Finish { result } => {
                let finished = Event::Finished { host: self.name.clone(), result };
                return self.end_here(row, record, finished, arrived.take());
            }
        };
        let at_home = record.home_key == self.key.public();
        let leaving = self
            .state
            .transaction(|tx| {
                let arrival = arrived.take();
                // A recall that came in during the visit sends the agent home instead; at home,
                // it stays to hand over what it has.
                let recalled = store::get(tx, &row.id, row.hop)?.is_some_and(|r| r.recall);
                if recalled && mv.ending.is_none() && at_home {
                    self.queue_report(tx, record, row.hop, arrival.into_iter().collect())?;
                    store::set_state(tx, &row.id, row.hop, RowState::Ready, Some(&snapshot_bytes), None, None)?;
                    return Ok(false);
                }
                let mv = if recalled && mv.ending.is_none() { Move::recalled(self.home_of(record)) } else { mv };
                store::set_state(
                    tx,
                    &row.id,
                    row.hop,
                    RowState::Leaving,
                    Some(&snapshot_bytes),
                    Some(&to_cbor(&mv)),
                    None,
                )?;
                let departed = Event::Departed { to: mv.dests.first().cloned().unwrap_or_default() };
                self.queue_report(tx, record, row.hop, arrival.into_iter().chain([departed]).collect())?;
                Ok(true)
            })
            .map_err(|e| e.to_string())?;
        if leaving {
            lock(&self.untried).insert((row.id.clone(), row.hop));
        }
        crate::fault::point("sender-persisted");
        self.wake.notify_one();
        Ok(())
    }

    /// Whether the row is marked for recall now (it may have been marked during the visit).
    fn marked(&self, row: &Row) -> bool {
        self.state.transaction(|tx| store::get(tx, &row.id, row.hop)).ok().flatten().is_some_and(|r| r.recall)
    }

    /// A visit of an agent its home recalled. Away from home it is sent home as it arrived,
    /// without running; at home its recall entry hands over what it has, and its journey ends.
    fn recalled(&self, row: &Row, record: &AgentRecord) -> Result<(), String> {
        if record.home_key != self.key.public() {
            let mv = to_cbor(&Move::recalled(self.home_of(record)));
            self.state
                .transaction(|tx| {
                    store::set_state(
                        tx,
                        &row.id,
                        row.hop,
                        RowState::Leaving,
                        row.snapshot.as_deref(),
                        Some(&mv),
                        None,
                    )?;
                    self.queue_report(tx, record, row.hop, vec![Event::Departed { to: record.home.clone() }])
                })
                .map_err(|e| e.to_string())?;
            tracing::info!(agent = %row.id, hop = row.hop, "recalled: the agent goes home without a visit here");
            self.wake.notify_one();
            return Ok(());
        }
        let (result, detail) = match row.snapshot.as_deref() {
            None => (Vec::new(), "recalled before its first visit".to_owned()),
            Some(snapshot) => {
                let when = match row.hop {
                    0 => "recalled before it left home".to_owned(),
                    hops => format!("recalled home after {hops} hops"),
                };
                match self.hand_over(row, record, snapshot) {
                    Ok(result) => (result, when),
                    Err(e) => (Vec::new(), format!("{when}; it handed over nothing: {e}")),
                }
            }
        };
        tracing::info!(agent = %row.id, hop = row.hop, bytes = result.len(), "recalled agent is home");
        self.end_here(row, record, Event::Recalled { result, detail }, None)
    }

    /// Runs a recalled agent's recall entry at home, on its state: its partial result.
    fn hand_over(&self, row: &Row, record: &AgentRecord, snapshot: &[u8]) -> Result<Vec<u8>, String> {
        let code = self.agent_code(record.code).map_err(|e| e.message)?;
        if !code.runnable.exports(roam_abi::AGENT_RECALL) {
            return Err(format!("the agent has no recall entry ({})", roam_abi::AGENT_RECALL));
        }
        let snapshot: Snapshot = from_cbor(snapshot, "the snapshot")?;
        let (resources, _) = binding::bind(self, record, &code.manifest, &row.id);
        let entry = roam_abi::AGENT_RECALL;
        let resources = Arc::new(resources);
        let (result, _) = self
            .engine
            .run_agent(&code.runnable, entry, Vec::new(), resources, Some(&snapshot), |_| false)
            .map_err(|e| e.to_string())?;
        Ok(result)
    }

    /// Ends the journey on this host: the row is done and `event`, its ending, reported home.
    fn end_here(&self, row: &Row, record: &AgentRecord, event: Event, arrived: Option<Event>) -> Result<(), String> {
        self.state
            .transaction(|tx| {
                store::set_state(tx, &row.id, row.hop, RowState::Done, None, None, None)?;
                self.queue_report(tx, record, row.hop, arrived.into_iter().chain([event]).collect())
            })
            .map_err(|e| e.to_string())?;
        self.wake.notify_one();
        Ok(())
    }

    /// Marks an agent failed here and tells its home why (after its arrival, if it arrived).
    pub(super) fn fail(&self, row: &Row, reason: &str, arrived: Option<Event>) {
        tracing::warn!(agent = %row.id, hop = row.hop, reason, "agent failed");
        let record = &row.record;
        let done = self.state.transaction(|tx| {
            store::set_state(tx, &row.id, row.hop, RowState::Failed, None, None, Some(reason))?;
            let Ok(r) = &record else { return Ok(()) };
            let failed = Event::Failed { reason: reason.to_owned() };
            self.queue_report(tx, r, row.hop, arrived.into_iter().chain([failed]).collect())
        });
        if let Err(e) = done {
            tracing::error!(agent = %row.id, "cannot record the failure: {e}");
        }
        self.wake.notify_one();
    }

    /// Queues a report of `events` for the agent's home, in the caller's transaction, as one
    /// signed message. At home it is applied at once.
    pub(super) fn queue_report(
        &self,
        tx: &rusqlite::Transaction<'_>,
        record: &AgentRecord,
        hop: u32,
        events: Vec<Event>,
    ) -> rusqlite::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let report = Report { agent: record.id.clone(), hop, events };
        if record.home_key == self.key.public() {
            // Whatever it queues, the caller's wake-up of the driver sends.
            return self.apply_report(tx, &report).map(|_| ());
        }
        let signed = Signed::sign(domain::REPORT, &report, &self.key)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.to_string().into()))?;
        store::push_outbox(tx, &self.home_of(record), Outgoing::Report, &to_cbor(&signed))
    }
}
