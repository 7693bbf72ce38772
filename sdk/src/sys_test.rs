//! Stands in for `sys.rs` when unit tests build natively. It behaves like a host that offers
//! nothing: no input, no resources, and every call that could fail fails with `Unavailable`.
//! The tests cover the pure logic; none of them relies on a host being there.

use roam_abi::{ErrorCode, LogLevel};

use crate::{Error, Result};

fn absent<T>() -> Result<T> {
    Err(Error::host(Some(ErrorCode::Unavailable), "no roam host in native unit tests".into()))
}

pub(crate) fn input() -> Vec<u8> {
    Vec::new()
}
pub(crate) fn begin() {}
pub(crate) fn finish(_status: u32, _bytes: &[u8]) {}
pub(crate) fn finished() -> bool {
    false
}
pub(crate) fn log(_level: LogLevel, _msg: &str) {}
pub(crate) fn resource_open(_name: &str) -> Result<u32> {
    absent()
}
pub(crate) fn table_query(_handle: u32, _sql: &str, _params: &[u8]) -> Result<u32> {
    absent()
}
pub(crate) fn cursor_next(_cursor: u32, _batch: &mut Vec<u8>) -> Result<bool> {
    absent()
}
pub(crate) fn table_query_columns(_handle: u32, _sql: &str, _params: &[u8]) -> Result<u32> {
    absent()
}
pub(crate) fn cursor_next_aligned(_cursor: u32, _words: &mut Vec<u128>) -> Result<Option<usize>> {
    absent()
}
pub(crate) fn cursor_close(_cursor: u32) {}
pub(crate) fn log_append(_handle: u32, _line: &str) -> Result<()> {
    absent()
}
