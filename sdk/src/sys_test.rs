//! Stands in for `sys.rs` when unit tests build natively: the tests cover the pure logic and
//! never reach the host, which exists only inside a roam host.
#![allow(clippy::unimplemented)]

use roam_abi::LogLevel;

use crate::Result;

pub(crate) fn input() -> Vec<u8> {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn begin() {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn finish(_status: u32, _bytes: &[u8]) {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn finished() -> bool {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn log(_level: LogLevel, _msg: &str) {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn resource_open(_name: &str) -> Result<u32> {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn table_query(_handle: u32, _sql: &str, _params: &[u8]) -> Result<u32> {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn cursor_next(_cursor: u32, _batch: &mut Vec<u8>) -> Result<bool> {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn cursor_close(_cursor: u32) {
    unimplemented!("no roam host in native unit tests")
}
pub(crate) fn log_append(_handle: u32, _line: &str) -> Result<()> {
    unimplemented!("no roam host in native unit tests")
}
