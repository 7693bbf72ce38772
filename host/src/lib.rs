//! The roam host daemon and client.
//!
//! A host loads signed Wasm modules and runs them next to its data. Core concepts:
//!
//! - [`config::HostConfig`]: what a host offers and the limits it enforces (`host.toml`).
//! - [`host::Host`]: a host's key, trust store, state, resources and engine, and its handlers.
//! - [`server::RunningHost`]: the TCP listener and connections in front of a `Host`.
//! - [`protocol`]: length-prefixed CBOR frames, requests and responses, host-to-host messages.
//! - [`transport`]: TLS 1.3 keyed by roam's ed25519 keys (raw public keys), on every connection.
//! - [`handshake`]: both sides of the handshake that opens every connection.
//! - [`client::Client`]: connects to a host and sends requests (`roam eval`, `roam publish`).
//! - [`known_hosts`]: the host keys a person's client remembers (trust on first use).
//! - [`admission::Admission`]: the one way a module enters a store: verify, store, accept its
//!   version; and comes back out verified again.
//! - [`fetch`]: code on demand: bounded, hash-checked downloads and the client's code cache.
//! - [`local::CodeOnDemand`]: the embedding API: fetch a module once, call it many times locally.
//! - [`engine::Engine`]: the only wrapper around wasmtime; limits and code caches live there.
//! - [`engine::guest`]: the host functions a module imports, defined against `roam_abi`.
//! - [`resources`]: read-only SQL tables and append-only logs that modules open by name.
//! - [`agents`]: mobile agents: launch, snapshot, exactly-once transfer, binding, reports.
//! - [`snapshot`]: an agent's memory and globals between hops, and the checks on arrival.
//! - [`state::State`]: the host's SQLite state and content-addressed module store.

pub mod access;
pub mod admission;
pub mod agents;
mod cache;
pub mod client;
pub mod config;
pub mod engine;
mod fault;
pub mod fetch;
pub mod handshake;
pub mod host;
pub mod known_hosts;
pub mod local;
pub mod metrics;
pub mod protocol;
mod refusal;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod status;
mod sync;
pub mod trace;
pub mod transport;
mod workers;
