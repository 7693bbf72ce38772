//! The driver: one task per host that moves agents along. Each round runs the ready agents on the
//! module threads, starts the due transfers (each once at a time), and flushes the outbox of
//! reports per home; it sleeps until woken, or until parked agents may be due.

use std::sync::Arc;

use super::store::{self, RowState};
use super::{Agents, RETRY_EVERY};
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
    pub(crate) async fn drive(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.round().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn round(self: &Arc<Self>) {
        let ready = self.blocking(|agents| store::in_states(&agents.state, &[RowState::Ready])).await;
        if let Some(Ok(ready)) = ready {
            let mut running = Vec::new();
            for row in ready {
                let Ok(permit) = self.workers.clone().acquire_owned().await else { return };
                let agents = self.clone();
                running.push(self.threads.run(move || {
                    let _permit = permit;
                    agents.run_ready(row);
                }));
            }
            for r in running {
                let _ = r.await;
            }
        }
        // Reports and transfers run as tasks of their own, one per destination and one per
        // agent, so a slow or dead peer holds up only what is bound for it.
        if let Some(Ok(dests)) = self.blocking(|agents| store::outbox_destinations(&agents.state)).await {
            for dest in dests {
                self.spawn_once(
                    format!("report {dest}"),
                    move |agents| async move { agents.flush_outbox_to(&dest).await },
                );
            }
        }
        let moving = self
            .blocking(|agents| {
                store::due_to_move(&agents.state, MOVES_PER_ROUND, |id, hop| {
                    lock(&agents.in_flight).contains(&transfer_key(id, hop))
                })
            })
            .await;
        for row in moving.and_then(Result::ok).unwrap_or_default() {
            let key = transfer_key(&row.id, row.hop);
            self.spawn_once(key, move |agents| async move { agents.transfer(row).await });
        }
    }

    /// Spawns `work` unless a task with the same key is still running.
    fn spawn_once<F, Fut>(self: &Arc<Self>, key: String, work: F)
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
        tokio::spawn(async move {
            work(agents.clone()).await;
            lock(&agents.in_flight).remove(&key);
        });
    }
}
