//! The driver: one thread per host that moves agents along. Each round runs the ready agents on
//! the module threads, starts the due transfers (each once at a time), and flushes the outbox of
//! reports per home; it sleeps until woken, or until parked agents may be due.
//!
//! The driver is a thread of its own rather than a task: its scans of the agent table are
//! SQLite reads, which must not run on the async runtime, and a trip to the blocking pool for
//! each of them cost every hop a thread wake-up or two (measured: about 25 % of a hop on
//! loopback). It waits, and starts transfers and deliveries, through the runtime's handle.

use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::store::{self, RowState};
use super::{Agents, CLOCK_SKEW, PRUNE_BATCH, PRUNE_EVERY, RETRY_EVERY};
use crate::state::now_secs;
use crate::sync::lock;

/// The most transfers one round of the agent driver starts: a host with many parked agents
/// retries them a batch at a time instead of loading every one of them at once.
const MOVES_PER_ROUND: usize = 256;

/// The key a transfer runs under in `in_flight`.
fn transfer_key(id: &str, hop: u32) -> String {
    format!("transfer {id} {hop}")
}

impl Agents {
    /// Moves agents along until `stop` fires: runs ready agents on the module threads,
    /// transfers leaving ones, retries parked ones, and sends reports home.
    pub(crate) async fn drive(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let handle = Handle::current();
        let (ended, has_ended) = tokio::sync::oneshot::channel::<()>();
        let started = std::thread::Builder::new().name("roam-driver".into()).spawn(move || {
            // Jobs given to the module threads from here run inside the runtime (forwarded
            // calls need it), as they do when given from a task.
            let _inside = handle.enter();
            self.drive_here(&handle, stop);
            drop(ended);
        });
        match started {
            Ok(_) => {
                let _ = has_ended.await;
            }
            Err(e) => tracing::error!("cannot start the agent driver's thread: {e}"),
        }
    }

    fn drive_here(self: &Arc<Self>, handle: &Handle, mut stop: watch::Receiver<bool>) {
        loop {
            // Stopped (or the host dropped, and its runtime with it): a round would start tasks
            // and timers on a runtime that is going away.
            if stop.has_changed().unwrap_or(true) {
                return;
            }
            self.round(handle);
            let stopped = handle.block_on(async {
                tokio::select! {
                    _ = self.wake.notified() => false,
                    _ = tokio::time::sleep(RETRY_EVERY) => false,
                    _ = stop.changed() => true,
                }
            });
            if stopped {
                return;
            }
        }
    }

    /// Forgets the records of agents that ended more than the retention ago, once in a while.
    fn prune(&self) {
        {
            let mut at = lock(&self.pruned_at);
            if at.elapsed() < PRUNE_EVERY.min(self.retention) {
                return;
            }
            *at = Instant::now();
        }
        let now = now_secs();
        let cutoff = now.saturating_sub(self.retention.as_secs());
        match self.state.transaction(|tx| store::prune(tx, cutoff, now, CLOCK_SKEW, PRUNE_BATCH)) {
            Ok(0) => {}
            Ok(n) => tracing::info!("forgot {n} records of agents that ended over {:?} ago", self.retention),
            Err(e) => tracing::warn!("cannot forget old agent records: {e}"),
        }
    }

    fn round(self: &Arc<Self>, handle: &Handle) {
        self.prune();
        // Queued messages go first: a recall order passed on must not wait for the visits of
        // this round. Reports and transfers run as tasks of their own, one per destination and
        // one per agent, so a slow or dead peer holds up only what is bound for it; what this
        // round's visits queue goes out on the next round, which their wake-up starts.
        if let Ok(dests) = store::outbox_destinations(&self.state) {
            for dest in dests {
                self.spawn_once(handle, format!("report {dest}"), move |agents| async move {
                    agents.flush_outbox_to(&dest).await
                });
            }
        }
        if let Ok(ready) = store::in_states(&self.state, &[RowState::Ready]) {
            let mut running = Vec::new();
            for row in ready {
                let Ok(permit) = handle.block_on(self.workers.clone().acquire_owned()) else { return };
                let agents = self.clone();
                running.push(self.threads.run(move || {
                    let _permit = permit;
                    agents.run_ready(row);
                }));
            }
            for r in running {
                let _ = handle.block_on(r);
            }
        }
        let due = store::due_to_move(&self.state, MOVES_PER_ROUND, |id, hop| {
            lock(&self.in_flight).contains(&transfer_key(id, hop))
        });
        for row in due.unwrap_or_default() {
            let key = transfer_key(&row.id, row.hop);
            self.spawn_once(handle, key, move |agents| async move { agents.transfer(row).await });
        }
    }

    /// Spawns `work` unless a task with the same key is still running.
    fn spawn_once<F, Fut>(self: &Arc<Self>, handle: &Handle, key: String, work: F)
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !lock(&self.in_flight).insert(key.clone()) {
            return;
        }
        let agents = self.clone();
        // No wake-up when it ends: work that leaves something new to do says so itself, and a
        // wake-up per finished task made hosts with many parked agents spin.
        handle.spawn(async move {
            work(agents.clone()).await;
            lock(&agents.in_flight).remove(&key);
        });
    }
}
