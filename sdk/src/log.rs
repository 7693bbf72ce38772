//! The host's diagnostic log: progress and problems for the host's operator to read.
//!
//! Needs no capability. The host truncates long messages and rate-limits them, so log
//! summaries (a row count), not a line per row.

use roam_abi::LogLevel;

use crate::sys;

/// Writes `msg` to the host's log at `level`.
pub fn write(level: LogLevel, msg: &str) {
    sys::log(level, msg);
}

/// Logs that something failed.
pub fn error(msg: &str) {
    write(LogLevel::Error, msg);
}

/// Logs that something looks wrong.
pub fn warn(msg: &str) {
    write(LogLevel::Warn, msg);
}

/// Logs normal progress.
pub fn info(msg: &str) {
    write(LogLevel::Info, msg);
}

/// Logs detail for debugging.
pub fn debug(msg: &str) {
    write(LogLevel::Debug, msg);
}
