//! The threads modules run on, and how a long run gives way to everyone else.
//!
//! A host runs modules on a fixed set of its own threads rather than on tokio's blocking pool,
//! because a module that runs long has its thread's scheduling class lowered ([`demote`],
//! called by the engine once a call passes [`crate::engine::DEMOTE_AFTER`]): on a machine with
//! few cores, a module spinning until its deadline would otherwise hold a core that other
//! clients' short requests are waiting for, while any thread that wakes preempts one in the
//! idle class. The class cannot always be raised again (leaving `SCHED_IDLE` takes
//! `CAP_SYS_NICE` or an `RLIMIT_NICE` allowance), so a thread that stays demoted after its job
//! hands its place to a new thread and ends; a thread is never reused at a lowered priority.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed number of threads that run jobs in the order they are given.
#[derive(Debug)]
pub(crate) struct Workers {
    jobs: mpsc::Sender<Job>,
}

/// A job ended without an answer: it panicked, or the pool is gone.
#[derive(Debug, thiserror::Error)]
#[error("the job ended without an answer")]
pub(crate) struct Lost;

thread_local! {
    /// Set on the pool's threads: only they are ever demoted.
    static WORKER: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread runs at a lowered priority (for a bulk thread, always).
    static DEMOTED: Cell<bool> = const { Cell::new(false) };
}

/// The queue the threads take jobs from.
type Queue = Arc<Mutex<mpsc::Receiver<Job>>>;

/// A thread's request to the keeper for its replacement.
struct Replace {
    /// Told whether the replacement started.
    started: mpsc::SyncSender<bool>,
    /// The requester's way to the keeper, handed on to the replacement: the keeper holds none
    /// itself, so it ends with the last thread.
    keeper: mpsc::Sender<Replace>,
}

impl Workers {
    /// Starts `threads` threads, named `{name}-N`, and a keeper thread (`{name}s`) that starts
    /// their replacements: a thread started by a demoted one would inherit its priority.
    pub(crate) fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (keeper, requests) = mpsc::channel::<Replace>();
        for n in 0..threads.max(1) {
            spawn(format!("{name}-{n}"), queue.clone(), keeper.clone())?;
        }
        drop(keeper);
        let name = name.to_owned();
        std::thread::Builder::new().name(format!("{name}s")).spawn(move || {
            // Ends once every worker has ended (each holds a sender): after the pool is dropped.
            for (n, Replace { started, keeper }) in requests.into_iter().enumerate() {
                let spawned = spawn(format!("{name}-r{n}"), queue.clone(), keeper);
                if let Err(e) = &spawned {
                    tracing::warn!("a module thread stays at low priority: cannot start its replacement: {e}");
                }
                let _ = started.send(spawned.is_ok());
            }
        })?;
        Ok(Self { jobs })
    }

    /// Queues `job` at once, for the next free thread; the future is its answer.
    pub(crate) fn run<T, F>(&self, job: F) -> impl Future<Output = Result<T, Lost>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        // The job runs inside the caller's runtime, as on tokio's own blocking threads: host
        // functions that reach other hosts (forwarded calls) drive their requests with it.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let queued = self.jobs.send(Box::new(move || {
            let _inside = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let _ = answer.send(job());
        }));
        async move {
            queued.map_err(|_| Lost)?;
            answered.await.map_err(|_| Lost)
        }
    }
}

fn spawn(name: String, queue: Queue, keeper: mpsc::Sender<Replace>) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        WORKER.set(true);
        loop {
            // The lock is held only while waiting; the job runs after it is released.
            let job = lock(&queue).recv();
            let Ok(job) = job else { return };
            // A job that panics has already answered with `Lost` (its sender is dropped); the
            // thread carries on.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
            if DEMOTED.get() && !restore() {
                // Without a replacement the pool would shrink: then this thread keeps serving,
                // demoted.
                let (started, replaced) = mpsc::sync_channel(1);
                if keeper.send(Replace { started, keeper: keeper.clone() }).is_ok() && replaced.recv() == Ok(true) {
                    return;
                }
            }
        }
    })?;
    Ok(())
}

/// Lowers the calling thread to the idle scheduling class, if it is one of the pool's threads
/// and not already lowered. Any other thread (a client's, a test's) is left alone.
pub(crate) fn demote() {
    if WORKER.get() && !DEMOTED.get() && set_idle(true) {
        DEMOTED.set(true);
    }
}

/// Lowers the calling thread to the idle class for as long as it lives: for threads that only
/// ever do bulk work, which never need raising again.
pub(crate) fn lower_for_good() {
    if set_idle(true) {
        DEMOTED.set(true);
    } else {
        tracing::debug!("cannot lower a bulk thread's priority; it runs at normal priority");
    }
}

/// Called between slices of long work (a long call, a large copy, a large write): on a thread
/// at lowered priority, gives its core to any other thread waiting for it; elsewhere nothing.
///
/// A lowered priority alone does not bound that wait. The kernel's scheduler (EEVDF) may pick
/// the lowered thread while a normal one is queued (one that has just run is briefly not
/// "eligible") and then let it run out its slice, milliseconds, before choosing again; a yield
/// makes it choose again at once.
pub(crate) fn give_way() {
    if DEMOTED.get() {
        std::thread::yield_now();
    }
}

/// Appends `bytes` to `to` a slice at a time, giving way between slices (see [`give_way`]): a
/// copy of megabytes is milliseconds of work, most of it page faults on memory touched first.
pub(crate) fn copy_giving_way(to: &mut Vec<u8>, bytes: &[u8]) {
    to.reserve(bytes.len());
    for (n, slice) in bytes.chunks(COPY_SLICE).enumerate() {
        if n > 0 {
            give_way();
        }
        to.extend_from_slice(slice);
    }
}

/// How much of a large copy goes between chances to give way.
const COPY_SLICE: usize = 256 << 10;

/// Raises a demoted thread back to the normal class; false if the system does not allow it.
fn restore() -> bool {
    let restored = set_idle(false);
    if restored {
        DEMOTED.set(false);
    }
    restored
}

/// Moves the calling thread into Linux's idle scheduling class (`SCHED_IDLE`), or back to the
/// normal one (`SCHED_OTHER` at nice 0).
///
/// In the idle class a thread has the least weight there is, any normal thread that wakes
/// preempts it, and the kernel counts a core that runs only such threads as free when it places
/// a woken thread. That last point is why it beats `SCHED_BATCH` at nice 19 here: with a
/// batch thread spinning on one core, threads woken while the other core is held (by a kernel
/// thread that does not yield for milliseconds, say) queue behind it instead of taking the
/// spinning core. What neither class bounds is a queued thread's wait once the kernel has
/// picked the low one to run; [`give_way`] does.
#[cfg(target_os = "linux")]
fn set_idle(idle: bool) -> bool {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy};
    let (priority, policy) = if idle {
        (ThreadPriority::Min, NormalThreadSchedulePolicy::Idle)
    } else {
        (ThreadPriority::Os(ThreadPriorityOsValue::default()), NormalThreadSchedulePolicy::Other)
    };
    let thread = thread_priority::thread_native_id();
    thread_priority::set_thread_priority_and_policy(thread, priority, ThreadSchedulePolicy::Normal(policy)).is_ok()
}

/// Elsewhere, threads are never demoted.
#[cfg(not(target_os = "linux"))]
fn set_idle(_: bool) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};

    fn idle() -> bool {
        thread_priority::thread_schedule_policy().ok()
            == Some(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle))
    }

    #[tokio::test]
    async fn a_demoted_worker_is_never_reused_at_low_priority() -> Result<(), Lost> {
        let workers = Workers::start("test", 1).map_err(|_| Lost)?;
        let (demoted, lowered) = workers
            .run(|| {
                demote();
                (DEMOTED.get(), idle())
            })
            .await?;
        assert!(demoted && lowered, "a worker is demoted");
        // The next job runs at normal priority: on the same thread raised again, or on its
        // replacement (tests/all/limits.rs covers a host that cannot raise it).
        assert!(!workers.run(idle).await?, "the next job runs at normal priority");
        assert!(!workers.run(idle).await?);
        Ok(())
    }

    #[test]
    fn only_workers_are_demoted() {
        demote();
        assert!(!DEMOTED.get());
        assert!(!idle());
    }

    #[tokio::test]
    async fn a_panicking_job_answers_lost_and_the_worker_goes_on() -> Result<(), Lost> {
        let workers = Workers::start("test", 1).map_err(|_| Lost)?;
        #[allow(clippy::panic)]
        let panics = || panic!("a job panics");
        assert!(workers.run(panics).await.is_err());
        assert_eq!(workers.run(|| 7).await?, 7);
        Ok(())
    }
}
