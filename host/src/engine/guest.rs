//! The host side of the host–guest interface (`roam_abi`): the state each call's store holds,
//! and the host functions, grouped by namespace, each group with its own `register`.
//!
//! Every function checks the guest's pointers against its memory and returns an error code the
//! guest can handle for anything the guest may legitimately get wrong (an unknown resource, bad
//! SQL); it traps only when the guest breaks the contract (out-of-bounds pointers, a second
//! `finish`, a result over the limit) or the deadline passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use roam_abi::{ErrorCode, FINISH_ERR, FINISH_OK, LogLevel, MEMORY_EXPORT, Value, names};
use roam_keys::Policy;
use wasmtime::{Caller, Extern, Linker, ResourceLimiter};

use super::{Limits, RunError};
use crate::resources::{Cursor, Layout, MAX_LOG_LINE, Resource, ResourceError, ResourceType, Resources};

/// Most bytes a module may write to the host's diagnostic log per call; the rest is dropped.
const LOG_BUDGET: usize = 64 << 10;
/// What each log line costs of its budget at least (diagnostics: [`LOG_BUDGET`]; log resources:
/// `Limits::log_bytes`), so a storm of tiny lines is capped too.
const LOG_LINE_COST: usize = 64;
/// Most cursors a call may hold open at once (each holds a connection and a thread).
const MAX_CURSORS: usize = 16;

/// Why the host stopped a module in the middle of a host call.
#[derive(Debug, thiserror::Error)]
pub enum HostTrap {
    /// The wall-clock deadline passed during a host call.
    #[error("deadline passed during a host call")]
    Deadline,
    /// A pointer or length fell outside the module's memory.
    #[error("{0}: pointer or length out of bounds of the module's memory")]
    OutOfBounds(&'static str),
    /// The module has no exported memory.
    #[error("the module exports no memory named `memory`")]
    NoMemory,
    /// `finish` was called twice.
    #[error("`finish` called more than once")]
    FinishedTwice,
    /// The result is over the host's limit.
    #[error("result of {size} bytes is over the limit of {max} bytes")]
    ResultTooLarge {
        /// The result's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// `finish` was called with an unknown status.
    #[error("`finish` called with unknown status {0}")]
    BadStatus(u32),
    /// `cursor_read` was called with nothing staged.
    #[error("`cursor_read` without a staged batch")]
    NothingStaged,
    /// The call appended more to log resources than the host allows.
    #[error("the call appended more than {max} bytes to logs, the host's limit per call (limits.log_kib)")]
    LogVolume {
        /// The limit.
        max: usize,
    },
}

/// What a module reported through `finish`.
#[derive(Debug)]
enum Outcome {
    Ok(Vec<u8>),
    Err(String),
}

/// The state one call's store holds: its input, its outcome, the resources it may open.
pub struct Guest {
    input: Vec<u8>,
    outcome: Option<Outcome>,
    /// The capabilities the module's signature grants it; checked again at every open.
    capabilities: Arc<[String]>,
    resources: Arc<Resources>,
    handles: Vec<Arc<Resource>>,
    cursors: Vec<Option<Cursor>>,
    last_error: String,
    memory_bytes: usize,
    table_elements: usize,
    result_bytes: usize,
    deadline: Instant,
    /// Set when the limiter refused a memory or table growth, to report it as such.
    denied: Option<String>,
    /// Set when the module asked for a resource its signature does not grant: if it then
    /// fails, that refusal is why, not the module's own message about it.
    refused_capability: Option<String>,
    /// `name@version`, for log lines.
    label: Arc<str>,
    /// Where the module's diagnostics go, within this call's budget.
    diagnostics: Diagnostics,
    /// WASI preview 1, made at the module's first WASI call (most modules make none).
    wasi: Option<wasmtime_wasi::p1::WasiP1Ctx>,
    /// Bytes this call may still append to log resources.
    append_budget: usize,
    append_limit: usize,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest").field("label", &self.label).finish_non_exhaustive()
    }
}

impl Guest {
    /// State for one call of a module labelled `label` holding `capabilities`.
    pub fn new(
        input: Vec<u8>,
        label: Arc<str>,
        capabilities: Arc<[String]>,
        resources: Arc<Resources>,
        limits: &Limits,
        deadline: Instant,
    ) -> Self {
        Self {
            input,
            outcome: None,
            capabilities,
            resources,
            handles: Vec::new(),
            cursors: Vec::new(),
            last_error: String::new(),
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            result_bytes: limits.result_bytes,
            deadline,
            denied: None,
            refused_capability: None,
            diagnostics: Diagnostics::new(label.clone()),
            label,
            wasi: None,
            append_budget: limits.log_bytes,
            append_limit: limits.log_bytes,
        }
    }

    /// Why the limiter refused a growth, if it did.
    pub fn denied(&self) -> Option<&str> {
        self.denied.as_deref()
    }

    /// The error message the module reported, if any (a panic message before a trap).
    pub fn module_error(&self) -> Option<String> {
        match &self.outcome {
            Some(Outcome::Err(m)) => Some(m.clone()),
            _ => None,
        }
    }

    /// Takes the call's result, once the entry point returned.
    pub fn take_result(&mut self) -> Result<Vec<u8>, RunError> {
        match self.outcome.take() {
            Some(Outcome::Ok(bytes)) => Ok(bytes),
            Some(Outcome::Err(message)) => match self.refused_capability.take() {
                Some(refusal) => Err(RunError::Capability(refusal)),
                None => Err(RunError::Module(message)),
            },
            None => Err(RunError::NoResult),
        }
    }

    fn fail(&mut self, code: ErrorCode, message: impl Into<String>) -> i64 {
        self.last_error = message.into();
        code.to_return()
    }

    fn may_use(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|p| Policy::pattern_allows(p, capability))
    }

    /// The call's WASI context (see [`super::wasi`]).
    pub(super) fn wasi(&mut self) -> &mut wasmtime_wasi::p1::WasiP1Ctx {
        let diagnostics = &self.diagnostics;
        self.wasi.get_or_insert_with(|| super::wasi::context(diagnostics))
    }
}

/// Where one call's diagnostics go: the host's log, at most [`LOG_BUDGET`] bytes per call,
/// shared by the `log` import and WASI's stdout and stderr.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    label: Arc<str>,
    left: Arc<AtomicUsize>,
}

impl Diagnostics {
    fn new(label: Arc<str>) -> Self {
        Self { label, left: Arc::new(AtomicUsize::new(LOG_BUDGET)) }
    }

    /// How much of a line of `len` bytes is logged: none past the budget, and never more
    /// than a log line holds.
    pub fn room(&self, len: usize) -> usize {
        len.min(self.left.load(Ordering::Relaxed)).min(MAX_LOG_LINE)
    }

    /// Logs a line of the module's (cut to [`Self::room`]), charging at least
    /// [`LOG_LINE_COST`] so that a storm of tiny lines is capped too.
    pub fn line(&self, level: LogLevel, bytes: &[u8]) {
        let Some(bytes) = bytes.get(..self.room(bytes.len())).filter(|b| !b.is_empty()) else { return };
        let left = self.left.load(Ordering::Relaxed).saturating_sub(bytes.len().max(LOG_LINE_COST));
        self.left.store(left, Ordering::Relaxed);
        let text = String::from_utf8_lossy(bytes);
        let module = &*self.label;
        match level {
            LogLevel::Error => tracing::error!(module, "{text}"),
            LogLevel::Warn => tracing::warn!(module, "{text}"),
            LogLevel::Info => tracing::info!(module, "{text}"),
            LogLevel::Debug => tracing::debug!(module, "{text}"),
        }
        if left == 0 {
            tracing::warn!(
                module,
                "the module used its diagnostic log budget of {LOG_BUDGET} bytes; the rest of this call's log is dropped"
            );
        }
    }
}

impl ResourceLimiter for Guest {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = Some(format!(
                "memory would grow from {current} to {desired} bytes, over the limit of {} bytes",
                self.memory_bytes
            ));
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.denied = Some(format!(
                "table would grow from {current} to {desired} elements, over the limit of {}",
                self.table_elements
            ));
            return Err(wasmtime::Error::msg("table limit reached"));
        }
        Ok(true)
    }
}

/// Registers every host function with the linker.
pub fn register(linker: &mut Linker<Guest>) -> wasmtime::Result<()> {
    io::register(linker)?;
    data::register(linker)?;
    Ok(())
}

type Ctx<'a> = Caller<'a, Guest>;

fn memory(caller: &mut Ctx<'_>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export(MEMORY_EXPORT) {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(HostTrap::NoMemory.into()),
    }
}

/// Copies `len` bytes at `ptr` out of the guest's memory.
fn read(caller: &mut Ctx<'_>, what: &'static str, ptr: u32, len: u32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(HostTrap::OutOfBounds(what))?;
    let bytes = mem.data(&caller).get(start..end).ok_or(HostTrap::OutOfBounds(what))?;
    let mut copy = Vec::new();
    crate::workers::copy_giving_way(&mut copy, bytes);
    Ok(copy)
}

/// Reads a UTF-8 string argument; `None` (after setting the last error) if it is not UTF-8.
fn read_str(caller: &mut Ctx<'_>, what: &'static str, ptr: u32, len: u32) -> wasmtime::Result<Result<String, i64>> {
    let bytes = read(caller, what, ptr, len)?;
    Ok(String::from_utf8(bytes)
        .map_err(|_| caller.data_mut().fail(ErrorCode::InvalidArgument, format!("{what}: not UTF-8"))))
}

/// Copies `bytes` into the guest's memory at `ptr`.
fn write(caller: &mut Ctx<'_>, what: &'static str, ptr: u32, bytes: &[u8]) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    let start = ptr as usize;
    let end = start.checked_add(bytes.len()).ok_or(HostTrap::OutOfBounds(what))?;
    mem.data_mut(caller).get_mut(start..end).ok_or(HostTrap::OutOfBounds(what))?.copy_from_slice(bytes);
    Ok(())
}

/// Input, outcome, diagnostics and error details.
mod io {
    use super::*;

    pub(super) fn register(linker: &mut Linker<Guest>) -> wasmtime::Result<()> {
        let m = roam_abi::IMPORT_MODULE;
        linker.func_wrap(m, names::input_len, |c: Ctx<'_>| c.data().input.len() as u32)?;
        linker.func_wrap(m, names::input_read, |mut c: Ctx<'_>, ptr: u32| {
            let input = std::mem::take(&mut c.data_mut().input);
            let written = write(&mut c, "input_read", ptr, &input);
            c.data_mut().input = input;
            written
        })?;
        linker.func_wrap(m, names::finish, |mut c: Ctx<'_>, status: u32, ptr: u32, len: u32| {
            let max = c.data().result_bytes;
            if len as usize > max {
                return Err(HostTrap::ResultTooLarge { size: len as usize, max }.into());
            }
            if matches!(c.data().outcome, Some(Outcome::Ok(_))) {
                return Err(HostTrap::FinishedTwice.into());
            }
            let bytes = read(&mut c, "finish", ptr, len)?;
            let outcome = match status {
                FINISH_OK => Outcome::Ok(bytes),
                FINISH_ERR => Outcome::Err(String::from_utf8_lossy(&bytes).into_owned()),
                other => return Err(HostTrap::BadStatus(other).into()),
            };
            c.data_mut().outcome = Some(outcome);
            Ok(())
        })?;
        linker.func_wrap(m, names::log, |mut c: Ctx<'_>, level: u32, ptr: u32, len: u32| {
            // Only what will be logged is read out of the module's memory.
            let take = c.data().diagnostics.room(len as usize) as u32;
            if take == 0 {
                return Ok(());
            }
            let bytes = read(&mut c, "log", ptr, take)?;
            c.data().diagnostics.line(LogLevel::from_u32(level), &bytes);
            Ok(())
        })?;
        linker.func_wrap(m, names::last_error_len, |c: Ctx<'_>| c.data().last_error.len() as u32)?;
        linker.func_wrap(m, names::last_error_read, |mut c: Ctx<'_>, ptr: u32| {
            let text = std::mem::take(&mut c.data_mut().last_error);
            let written = write(&mut c, "last_error_read", ptr, text.as_bytes());
            c.data_mut().last_error = text;
            written
        })?;
        Ok(())
    }
}

/// Resources: tables, cursors and logs.
mod data {
    use super::*;

    pub(super) fn register(linker: &mut Linker<Guest>) -> wasmtime::Result<()> {
        let m = roam_abi::IMPORT_MODULE;
        linker.func_wrap(m, names::resource_open, |mut c: Ctx<'_>, ptr: u32, len: u32| {
            let name = match read_str(&mut c, "resource_open", ptr, len)? {
                Ok(n) => n,
                Err(code) => return Ok(code),
            };
            let g = c.data_mut();
            if let Some(reason) = g.resources.unbound(&name) {
                let message = format!("resource {name:?} could not be bound on this host: {reason}");
                return Ok(g.fail(ErrorCode::Unavailable, message));
            }
            let Some(resource) = g.resources.get(&name).cloned() else {
                return Ok(g.fail(ErrorCode::NotFound, format!("this host offers no resource named {name:?}")));
            };
            let needed = resource.capability();
            if !g.may_use(&needed) {
                let refusal = format!(
                    "the module's signature does not grant capability {needed:?}; re-sign it with --cap {needed}"
                );
                g.refused_capability = Some(refusal.clone());
                return Ok(g.fail(ErrorCode::Denied, refusal));
            }
            // One handle per resource, however often it is opened: the handle table stays as
            // small as the host's list of resources.
            if let Some(open) = g.handles.iter().position(|h| Arc::ptr_eq(h, &resource)) {
                return Ok(open as i64);
            }
            g.handles.push(resource);
            Ok(g.handles.len() as i64 - 1)
        })?;
        linker.func_wrap(
            m,
            names::table_query,
            |mut c: Ctx<'_>, handle: u32, sql_ptr: u32, sql_len: u32, p_ptr: u32, p_len: u32| {
                open_cursor(&mut c, Layout::Rows, handle, (sql_ptr, sql_len), (p_ptr, p_len))
            },
        )?;
        linker.func_wrap(
            m,
            names::table_query_columns,
            |mut c: Ctx<'_>, handle: u32, sql_ptr: u32, sql_len: u32, p_ptr: u32, p_len: u32| {
                open_cursor(&mut c, Layout::Columns, handle, (sql_ptr, sql_len), (p_ptr, p_len))
            },
        )?;
        linker.func_wrap(m, names::cursor_next, |mut c: Ctx<'_>, cursor: u32| {
            let g = c.data_mut();
            let Some(Some(cur)) = g.cursors.get_mut(cursor as usize) else {
                return Ok(g.fail(ErrorCode::NotFound, format!("no open cursor {cursor}")));
            };
            match cur.next_batch() {
                Ok(Some(len)) => Ok(len as i64),
                Ok(None) => Ok(0),
                Err(ResourceError::Deadline) => Err(HostTrap::Deadline.into()),
                Err(e) => Ok(g.fail(ErrorCode::Sql, e.to_string())),
            }
        })?;
        linker.func_wrap(m, names::cursor_read, |mut c: Ctx<'_>, cursor: u32, ptr: u32| {
            let batch = c
                .data_mut()
                .cursors
                .get_mut(cursor as usize)
                .and_then(Option::as_mut)
                .and_then(Cursor::take_staged_batch)
                .ok_or(HostTrap::NothingStaged)?;
            // Written straight into the module's memory: a column batch's values go from the
            // engine's arrays to the module in one copy.
            let mem = memory(&mut c)?;
            let start = ptr as usize;
            let end = start.checked_add(batch.len()).ok_or(HostTrap::OutOfBounds("cursor_read"))?;
            batch.write_into(mem.data_mut(&mut c).get_mut(start..end).ok_or(HostTrap::OutOfBounds("cursor_read"))?);
            Ok(())
        })?;
        linker.func_wrap(m, names::cursor_close, |mut c: Ctx<'_>, cursor: u32| {
            if let Some(slot) = c.data_mut().cursors.get_mut(cursor as usize) {
                *slot = None;
            }
        })?;
        linker.func_wrap(m, names::log_append, |mut c: Ctx<'_>, handle: u32, ptr: u32, len: u32| {
            if len as usize > MAX_LOG_LINE {
                let g = c.data_mut();
                return Ok(g.fail(ErrorCode::TooLarge, format!("log lines are limited to {MAX_LOG_LINE} bytes")));
            }
            let line = match read_str(&mut c, "log_append", ptr, len)? {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            let g = c.data_mut();
            let Some(resource) = g.handles.get(handle as usize).cloned() else {
                return Ok(g.fail(ErrorCode::NotFound, format!("no open resource with handle {handle}")));
            };
            if resource.kind != ResourceType::Log {
                return Ok(g.fail(ErrorCode::WrongType, format!("{} is not a log", resource.name)));
            }
            g.append_budget = match g.append_budget.checked_sub(line.len().max(LOG_LINE_COST)) {
                Some(left) => left,
                None => return Err(HostTrap::LogVolume { max: g.append_limit }.into()),
            };
            match resource.append(&g.label, &line) {
                Ok(()) => Ok(0),
                Err(e) => Ok(g.fail(ErrorCode::Unavailable, e.to_string())),
            }
        })?;
        Ok(())
    }

    /// `table_query` and `table_query_columns`: runs the statement at `sql` with the CBOR
    /// parameters at `params` on the table behind `handle`, and returns the cursor's slot.
    fn open_cursor(
        c: &mut Ctx<'_>,
        layout: Layout,
        handle: u32,
        sql: (u32, u32),
        params: (u32, u32),
    ) -> wasmtime::Result<i64> {
        let what = match layout {
            Layout::Rows => "table_query",
            Layout::Columns => "table_query_columns",
        };
        let sql = match read_str(c, what, sql.0, sql.1)? {
            Ok(s) => s,
            Err(code) => return Ok(code),
        };
        let raw = read(c, what, params.0, params.1)?;
        let g = c.data_mut();
        let params: Vec<Value> = if raw.is_empty() {
            Vec::new()
        } else {
            match ciborium::from_reader(raw.as_slice()) {
                Ok(p) => p,
                Err(e) => {
                    let why = roam_keys::cbor_error(&e);
                    return Ok(g.fail(ErrorCode::InvalidArgument, format!("parameters: {why}")));
                }
            }
        };
        let Some(resource) = g.handles.get(handle as usize).cloned() else {
            return Ok(g.fail(ErrorCode::NotFound, format!("no open resource with handle {handle}")));
        };
        if resource.kind != ResourceType::Table {
            return Ok(g.fail(ErrorCode::WrongType, format!("{} is not a table", resource.name)));
        }
        if g.cursors.iter().flatten().count() >= MAX_CURSORS {
            return Ok(
                g.fail(ErrorCode::TooLarge, format!("at most {MAX_CURSORS} cursors may be open at once; close one"))
            );
        }
        let opened = match layout {
            Layout::Rows => resource.query(&sql, params, g.deadline),
            Layout::Columns => resource.query_columns(&sql, params, g.deadline),
        };
        match opened {
            // A closed cursor's slot is reused, so the table never outgrows MAX_CURSORS.
            Ok(cursor) => {
                let free = g.cursors.iter().position(Option::is_none).unwrap_or(g.cursors.len());
                if free == g.cursors.len() {
                    g.cursors.push(None);
                }
                g.cursors[free] = Some(cursor);
                Ok(free as i64)
            }
            Err(ResourceError::Deadline) => Err(HostTrap::Deadline.into()),
            Err(e @ ResourceError::Unsupported(_)) => Ok(g.fail(ErrorCode::WrongType, e.to_string())),
            Err(e) => Ok(g.fail(ErrorCode::Sql, format!("{}: {e}", resource.name))),
        }
    }
}
