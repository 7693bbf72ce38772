//! A visit: an agent's entry runs on this host (`start` at home, `arrive` elsewhere) with its
//! resources bound and its snapshot restored, and what it decided is persisted with its new
//! snapshot in one transaction, with the reports home that go with it.

use std::sync::Arc;

use roam_abi::{Arrival, Next};

use super::Agents;
use super::binding;
use super::home::apply_report;
use super::store::{self, Row, RowState};
use super::transfer::Move;
use crate::protocol::wire::{AgentRecord, Ending, Event, Report, Signed, domain, from_cbor, to_cbor};
use crate::snapshot::Snapshot;
use crate::state::now_secs;

impl Agents {
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
        let record = row.record.as_ref().map_err(Clone::clone)?;
        if now_secs() >= record.launched_at.saturating_add(record.limits.lifetime_secs) {
            return Err(format!("lifetime limit of {} s exceeded", record.limits.lifetime_secs));
        }
        let code = self.agent_code(record.code).map_err(|e| e.message)?;
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
        *arrived = Some(Event::Arrived { host: self.name.clone(), address: self.address(), bindings });

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
                if row.hop + 1 > record.limits.max_hops {
                    return Err(format!("hop limit of {} reached", record.limits.max_hops));
                }
                let mut dests = vec![host];
                dests.extend(alternates);
                Move { dests, pinned: false, ending: None, unreachable: vec![] }
            }
            Next::Home { result } => {
                if record.home_key == self.key.public() {
                    return self.end_here(row, record, Ending::Finished(result), arrived.take());
                }
                Move {
                    dests: vec![record.home.clone()],
                    pinned: false,
                    ending: Some(Ending::Finished(result)),
                    unreachable: vec![],
                }
            }
            Next::Finish { result } => return self.end_here(row, record, Ending::Finished(result), arrived.take()),
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
                    self.queue_report(tx, record, row.hop, event)?;
                }
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
                self.queue_report(tx, record, row.hop, departed)
            })
            .map_err(|e| e.to_string())?;
        crate::fault::point("sender-persisted");
        self.wake.notify_one();
        Ok(())
    }

    /// Ends the journey on this host: the row is done and the ending reported home.
    fn end_here(&self, row: &Row, record: &AgentRecord, ending: Ending, arrived: Option<Event>) -> Result<(), String> {
        let event = self.ended(&ending);
        self.state
            .transaction(|tx| {
                if let Some(a) = arrived {
                    self.queue_report(tx, record, row.hop, a)?;
                }
                store::set_state(tx, &row.id, row.hop, RowState::Done, None, None, None)?;
                self.queue_report(tx, record, row.hop, event)
            })
            .map_err(|e| e.to_string())?;
        self.wake.notify_one();
        Ok(())
    }

    /// The report of a journey ending on this host.
    pub(super) fn ended(&self, ending: &Ending) -> Event {
        match ending {
            Ending::Finished(result) => Event::Finished { host: self.name.clone(), result: result.clone() },
            Ending::Recalled => Event::Recalled,
        }
    }

    /// Marks an agent failed here and tells its home why (after its arrival, if it arrived).
    pub(super) fn fail(&self, row: &Row, reason: &str, arrived: Option<Event>) {
        tracing::warn!(agent = %row.id, hop = row.hop, reason, "agent failed");
        let record = &row.record;
        let done = self.state.transaction(|tx| {
            store::set_state(tx, &row.id, row.hop, RowState::Failed, None, None, Some(reason))?;
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
    pub(super) fn queue_report(
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
}
