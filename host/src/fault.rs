//! Crashes at named steps of an agent's hand-off, for the exactly-once tests: with
//! `ROAM_FAULT_ABORT_AT=STEP`, a host built with the `fault-injection` feature aborts when it
//! reaches `STEP`. Without the feature (every shipped build) [`point`] is empty and the variable
//! means nothing.

/// Aborts the process here when `ROAM_FAULT_ABORT_AT` names `step`.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(step: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("ROAM_FAULT_ABORT_AT").ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(step) {
        tracing::error!(step, "fault injection: aborting");
        std::process::abort();
    }
}

/// Does nothing: this build has no fault injection.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn point(_step: &str) {}
