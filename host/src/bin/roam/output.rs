//! What `roam` prints and how it exits: data alone on stdout (lines and tables for people, or
//! one JSON document with `--json`), notes and errors on stderr, and an exit status per kind of
//! outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use roam_host::client::{ClientError, cbor_to_json};
use roam_host::protocol::ModuleInfo;
use roam_host::protocol::wire::AgentInfo;
use serde_json::{Value, json};

/// Writes a line of data to stdout. A closed pipe (`roam modules | head -1`) is an error that
/// `main` ends quietly on, where `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::output::stdout_error)?;
    }};
}

/// Writes a note for people to stderr, unless `-q`.
macro_rules! note {
    ($($arg:tt)*) => {{
        if !$crate::output::quiet() {
            eprintln!($($arg)*);
        }
    }};
}

pub(crate) use {note, out};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences notes (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// What `roam --help` says of exit statuses; [`status`] follows it.
pub const EXIT_STATUSES: &str = "Exit status: 0 done; 1 error (the host unreachable, a file \
    unreadable, a value roam cannot use, a module that failed); 2 usage (an unknown flag, a missing \
    argument); 3 refused by the host (no right, a signature or capability refused, a limit); 4 \
    --wait gave up waiting; 5 the agent ended without finishing (it failed, or was recalled while \
    `roam launch --wait` waited for its result).";

/// stdout was closed by its reader: the command ends quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// A failed write to stdout as an error: [`StdoutClosed`] for a closed pipe (only a write to
/// stdout: a peer's closed socket is an error like any other).
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe { StdoutClosed.into() } else { e.into() }
}

/// A `--wait` that gave up: exit status 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

/// An agent that ended without its result: exit status 5.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFinished(pub String);

/// The exit status for an error; `None` for a closed stdout, which ends quietly.
pub fn status(e: &anyhow::Error) -> Option<u8> {
    if e.is::<StdoutClosed>() {
        return None;
    }
    let refused = e.chain().any(|c| {
        matches!(c.downcast_ref::<ClientError>(),
            Some(ClientError::Remote(r) | ClientError::Refused(r)) if r.kind.is_refusal())
    });
    Some(if e.is::<TimedOut>() {
        4
    } else if e.is::<NotFinished>() {
        5
    } else if refused {
        3
    } else {
        1
    })
}

/// An error and its causes in one line, each said once: a library error that puts its cause
/// in its own message is not followed by that cause again.
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

pub use roam_keys::date;

/// "3s ago" for a time in unix seconds.
pub fn ago(secs: u64) -> String {
    let elapsed = roam_host::state::now_secs().saturating_sub(secs);
    format!("{} ago", humantime::format_duration(Duration::from_secs(elapsed)))
}

/// Prints `value` as the command's one JSON document.
pub fn json_out(value: &Value) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A module result (CBOR) as JSON on stdout.
pub fn print_result(output: &[u8]) -> Result<()> {
    json_out(&cbor_to_json(output).map_err(anyhow::Error::msg)?)
}

pub fn module_json(m: &ModuleInfo) -> Value {
    json!({
        "name": m.name,
        "version": m.version.to_string(),
        "kind": m.kind.to_string(),
        "size": m.size,
        "downloads": m.downloads,
        "signer": m.signer.to_hex(),
        "hash": m.hash.to_string(),
    })
}

/// An agent as `--json` shows it: times as dates, its result as JSON.
pub fn agent_json(a: &AgentInfo) -> Result<Value> {
    let result = if a.result.is_empty() { Value::Null } else { cbor_to_json(&a.result).map_err(anyhow::Error::msg)? };
    let route: Vec<Value> = a
        .route
        .iter()
        .map(|v| {
            let bindings: Vec<Value> = v
                .bindings
                .iter()
                .map(
                    |b| json!({ "name": b.name, "action": format!("{:?}", b.action).to_lowercase(), "error": b.error }),
                )
                .collect();
            json!({
                "hop": v.hop,
                "host": v.host,
                "address": v.address,
                "began": (v.at > 0).then(|| date(v.at / 1000)),
                "bindings": bindings,
                "receipt": v.receipt.is_some(),
            })
        })
        .collect();
    Ok(json!({
        "id": a.id,
        "agent": a.label,
        "state": a.state,
        "detail": a.detail,
        "location": a.location,
        "hops": a.hops,
        "home": a.home,
        "owner": a.owner.map(|k| k.to_hex()),
        "launched": (a.launched_at > 0).then(|| date(a.launched_at)),
        "ended": a.ended_at.map(date),
        "last_heard": (a.heard_at > 0).then(|| date(a.heard_at)),
        "recall_ordered": a.recall_ordered.map(|ms| date(ms / 1000)),
        "result": result,
        "route": route,
    }))
}
