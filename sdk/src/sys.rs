//! The only module that calls the host: each raw import of `roam_abi::raw`, wrapped in a safe
//! function that owns the buffers the host reads or writes.
//!
//! Every pointer passed is a guest address (wasm32 pointers are 32-bit offsets into `memory`)
//! of a buffer borrowed for the duration of the call only: the host keeps no pointer.

use core::sync::atomic::{AtomicBool, Ordering};

use roam_abi::{ErrorCode, LogLevel, raw};

use crate::{Error, Result};

/// Set once `finish` was called in the current entry call, because a second call traps: the
/// panic hook checks it.
static FINISHED: AtomicBool = AtomicBool::new(false);

/// The guest address of a buffer, as the host sees it.
fn addr(ptr: *const u8) -> u32 {
    // Lossless: usize is 32 bits on wasm32.
    ptr.addr() as u32
}

/// The length of a buffer, as the host sees it.
fn len(bytes: &[u8]) -> u32 {
    // Lossless: usize is 32 bits on wasm32.
    bytes.len() as u32
}

/// Reads a host function's return value: a number (a handle, a length) or a negated
/// [`ErrorCode`], explained by `last_error`.
fn check(ret: i64) -> Result<u32> {
    if let Ok(value) = u32::try_from(ret) {
        return Ok(value);
    }
    let code = ErrorCode::from_return(ret);
    let mut message = last_error();
    if message.is_empty() {
        message = "the host gave no details".to_owned();
    }
    if code.is_none() {
        message = format!("the host returned {ret}, which roam-sdk does not know: {message}");
    }
    Err(Error::host(code, message))
}

/// The message that explains the last failed host call (empty if none).
fn last_error() -> String {
    // SAFETY: takes no pointer and only returns a length.
    let len = unsafe { raw::last_error_len() };
    if len == 0 {
        return String::new();
    }
    let mut buf = vec![0; len as usize];
    // SAFETY: `buf` is `len` bytes of memory we own and nothing else borrows, the room
    // `last_error_read` needs.
    unsafe { raw::last_error_read(addr(buf.as_mut_ptr())) };
    String::from_utf8_lossy(&buf).into_owned()
}

/// The evaluation's input (CBOR bytes).
pub(crate) fn input() -> Vec<u8> {
    // SAFETY: takes no pointer and only returns a length.
    let len = unsafe { raw::input_len() };
    let mut buf = vec![0; len as usize];
    // SAFETY: `buf` is `len` bytes of memory we own and nothing else borrows, the room
    // `input_read` needs.
    unsafe { raw::input_read(addr(buf.as_mut_ptr())) };
    buf
}

/// Starts a call of an entry point: no outcome is set yet. The flag lives in linear memory, so an
/// agent restored from a snapshot taken after an earlier call would otherwise see it set.
pub(crate) fn begin() {
    FINISHED.store(false, Ordering::Relaxed);
}

/// Sets the evaluation's outcome: `status` is `FINISH_OK` (CBOR result) or `FINISH_ERR` (UTF-8
/// message). Traps if called twice or if `bytes` is over the host's result limit.
pub(crate) fn finish(status: u32, bytes: &[u8]) {
    FINISHED.store(true, Ordering::Relaxed);
    // SAFETY: the host only reads `bytes`, which is valid for `len(bytes)` bytes.
    unsafe { raw::finish(status, addr(bytes.as_ptr()), len(bytes)) };
}

/// Whether `finish` was called already.
pub(crate) fn finished() -> bool {
    FINISHED.load(Ordering::Relaxed)
}

/// Writes `msg` to the host's diagnostic log.
pub(crate) fn log(level: LogLevel, msg: &str) {
    // SAFETY: the host only reads `msg`, which is valid for `len` bytes of UTF-8.
    unsafe { raw::log(level as u32, addr(msg.as_ptr()), len(msg.as_bytes())) };
}

/// Opens the resource `name`, returning its handle.
pub(crate) fn resource_open(name: &str) -> Result<u32> {
    // SAFETY: the host only reads `name`, which is valid for `len` bytes of UTF-8.
    check(unsafe { raw::resource_open(addr(name.as_ptr()), len(name.as_bytes())) })
}

/// Runs `sql` with `params` (a CBOR array of values) on the table `handle`, returning a cursor.
pub(crate) fn table_query(handle: u32, sql: &str, params: &[u8]) -> Result<u32> {
    // SAFETY: the host only reads `sql` and `params`, each valid for its length.
    check(unsafe {
        raw::table_query(handle, addr(sql.as_ptr()), len(sql.as_bytes()), addr(params.as_ptr()), len(params))
    })
}

/// Runs `sql` with `params` on the table `handle`, returning a cursor of column batches.
pub(crate) fn table_query_columns(handle: u32, sql: &str, params: &[u8]) -> Result<u32> {
    // SAFETY: the host only reads `sql` and `params`, each valid for its length.
    check(unsafe {
        raw::table_query_columns(handle, addr(sql.as_ptr()), len(sql.as_bytes()), addr(params.as_ptr()), len(params))
    })
}

/// Reads the next batch of `cursor` into `words` (whose alignment the column layout needs);
/// returns its length in bytes, or `None` when the cursor is exhausted.
pub(crate) fn cursor_next_aligned(cursor: u32, words: &mut Vec<u128>) -> Result<Option<usize>> {
    // SAFETY: takes no pointer; an unknown cursor is an error code, not a trap.
    let len = check(unsafe { raw::cursor_next(cursor) })? as usize;
    if len == 0 {
        return Ok(None);
    }
    words.clear();
    words.resize(len.div_ceil(16), 0);
    // SAFETY: a batch is staged, and `words` is at least `len` bytes of memory we own and
    // nothing else borrows, the room `cursor_read` needs.
    unsafe { raw::cursor_read(cursor, addr(words.as_mut_ptr().cast::<u8>())) };
    Ok(Some(len))
}

/// Replaces `batch` with the next batch of rows of `cursor`; returns false, leaving `batch`
/// empty, when the cursor is exhausted.
pub(crate) fn cursor_next(cursor: u32, batch: &mut Vec<u8>) -> Result<bool> {
    // SAFETY: takes no pointer; an unknown cursor is an error code, not a trap.
    let len = check(unsafe { raw::cursor_next(cursor) })?;
    batch.clear();
    if len == 0 {
        return Ok(false);
    }
    batch.resize(len as usize, 0);
    // SAFETY: a batch is staged (`cursor_next` just returned its length), and `batch` is `len`
    // bytes of memory we own and nothing else borrows, the room `cursor_read` needs.
    unsafe { raw::cursor_read(cursor, addr(batch.as_mut_ptr())) };
    Ok(true)
}

/// Releases `cursor`.
pub(crate) fn cursor_close(cursor: u32) {
    // SAFETY: takes no pointer; closing an unknown cursor does nothing.
    unsafe { raw::cursor_close(cursor) };
}

/// Appends `line` to the log resource `handle`.
pub(crate) fn log_append(handle: u32, line: &str) -> Result<()> {
    // SAFETY: the host only reads `line`, which is valid for `len` bytes of UTF-8.
    check(unsafe { raw::log_append(handle, addr(line.as_ptr()), len(line.as_bytes())) })?;
    Ok(())
}
