//! roam's end-to-end tests: one test binary, one module per area. Run them with
//! `cargo xtask test`, which first builds the `roam` binary and the example query modules that
//! the process-level tests (`cli`) use.

mod abi_doc;
mod access;
mod admission;
mod agents;
mod agents_cli;
mod attacks;
mod cli;
mod code_on_demand;
mod columnar;
mod connections;
mod crash;
mod guests;
mod limits;
mod page;
mod readme;
mod recall;
mod scripting;
mod status;
mod storage;
mod tidy;
mod tracing;
mod transport;
mod wasi;
mod zig;
