//! WASI preview 1, for modules built against a libc: wasi-libc C, Rust on `wasm32-wasip1`
//! with `std`, Zig, TinyGo. The implementation is wasmtime-wasi's; this file decides what a
//! module gets from it:
//!
//! - stdout and stderr go to the host's diagnostic log, line by line, within the call's log
//!   budget (stdout as info, stderr as warnings), never to the host's own streams;
//! - clocks and random numbers work; arguments and environment are empty; stdin is empty;
//! - nothing reaches outside the sandbox: there are no preopened directories and no sockets,
//!   so opening a file or a socket fails with a WASI error code the module can handle.
//!
//! No WASI state outlives a call but the open standard streams, which every instance gets
//! anew: an agent's snapshot (its memory and globals) carries everything it needs, and its
//! libc's buffers live in that memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use roam_abi::LogLevel;
use wasmtime::{Linker, Module};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::guest::{Diagnostics, Guest};
use crate::resources::MAX_LOG_LINE;
use crate::sync::lock;

/// The import module of WASI preview 1.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// The export a reactor (a libc module without `main`) needs called once before anything else:
/// it runs the libc's and the language's constructors.
pub const INITIALIZE: &str = "_initialize";

/// Adds WASI preview 1 to the linker, each call's context made at its first WASI call.
pub fn register(linker: &mut Linker<Guest>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, Guest::wasi)
}

/// Whether `module` imports anything from WASI.
pub fn imported_by(module: &Module) -> bool {
    module.imports().any(|i| i.module() == MODULE)
}

/// One call's WASI context: see the module's documentation for what it allows.
pub fn context(diagnostics: &Diagnostics) -> WasiP1Ctx {
    WasiCtxBuilder::new()
        .stdout(Output::new(diagnostics.clone(), LogLevel::Info))
        .stderr(Output::new(diagnostics.clone(), LogLevel::Warn))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build_p1()
}

/// A standard stream of the module's, written to the diagnostic log a line at a time. Every
/// stream made from it shares one line, so the module's writes join up whatever stream they
/// went through.
#[derive(Clone)]
struct Output {
    line: Arc<Mutex<Line>>,
}

impl Output {
    fn new(diagnostics: Diagnostics, level: LogLevel) -> Self {
        Self { line: Arc::new(Mutex::new(Line { diagnostics, level, pending: Vec::new() })) }
    }

    /// Takes `bytes` whole: past the log budget they are dropped, not refused, so a module
    /// that prints a lot runs on as it would with its output sent nowhere.
    fn take(&self, bytes: &[u8]) {
        lock(&self.line).push(bytes);
    }
}

/// The part of a line written so far.
struct Line {
    diagnostics: Diagnostics,
    level: LogLevel,
    pending: Vec<u8>,
}

impl Line {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.add(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.add(bytes);
        if self.pending.len() >= MAX_LOG_LINE {
            self.emit();
        }
    }

    /// Keeps what a log line can hold (and the budget allows): a line longer than that is cut.
    fn add(&mut self, bytes: &[u8]) {
        let room = self.diagnostics.room(MAX_LOG_LINE).saturating_sub(self.pending.len());
        self.pending.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let line = std::mem::take(&mut self.pending);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        self.diagnostics.line(self.level, line);
    }
}

impl Drop for Line {
    /// What the module wrote after its last newline is a line too.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Output {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready, for as much as a write may carry.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
