//! Fixtures shared by roam's fuzz targets and by `examples/seeds.rs`, which writes the seed
//! corpora from them: fixed keys (so that signed seeds verify inside the targets), one clock
//! reading, a trust store with a policy, and a small agent module whose layout snapshots are
//! checked against.

use roam_host::snapshot::{GlobalSlots, WASM_PAGE, instrument};
use roam_keys::{Policy, SecretKey, TrustStore};

/// The clock reading every verification in the targets uses; signed seeds are valid then.
pub const NOW: u64 = 1_700_000_100;

/// The key the trusted module signer signs with.
pub fn module_signer() -> SecretKey {
    SecretKey::from_seed([0x11; 32])
}

/// A key that is in the trust store but revoked by its policy.
pub fn revoked_signer() -> SecretKey {
    SecretKey::from_seed([0x33; 32])
}

/// A key no one trusts.
pub fn stranger() -> SecretKey {
    SecretKey::from_seed([0x44; 32])
}

/// The host that signs the host-to-host messages (envelopes, reports, recalls, calls); the
/// receiving side trusts it as a peer.
pub fn peer() -> SecretKey {
    SecretKey::from_seed([0x22; 32])
}

/// The trust store modules are verified against (the signing.md checks): `fuzz` may sign
/// queries and code that use `table:sales` and logs, `old` is revoked.
pub fn trust_store() -> TrustStore {
    let policy = format!(
        "revoked = [\"{}\"]\n[keys.fuzz]\ncapabilities = [\"table:sales\", \"log:*\"]\nkinds = [\"query\", \"code\"]\n",
        revoked_signer().public().to_hex()
    );
    let policy = Policy::parse(&policy).unwrap_or_else(|e| panic!("the fixture policy does not parse: {e}"));
    TrustStore::empty()
        .with_key("fuzz", module_signer().public())
        .with_key("old", revoked_signer().public())
        .with_policy(policy)
}

/// Pages of the agent module's initial memory.
pub const AGENT_PAGES: u64 = 2;

/// A small agent module laid out as the SDK's agents are: an exported memory, an internal
/// mutable stack pointer, an exported mutable global, a mutable float and an immutable global.
pub fn agent_module() -> Vec<u8> {
    let text = format!(
        r#"(module
             (memory (export "memory") {AGENT_PAGES})
             (global $sp (mut i32) (i32.const 65536))
             (global (export "hops") (mut i64) (i64.const 0))
             (global $scale (mut f64) (f64.const 1))
             (global $k i32 (i32.const 7))
             (func (export "roam_agent_start") (global.set $sp (i32.const 1024))))"#
    );
    wat::parse_str(text).unwrap_or_else(|e| panic!("the fixture agent does not parse: {e}"))
}

/// The agent module's layout as a receiving host sees it: the globals a snapshot carries
/// (from the host's own instrumentation) and the size of its initial memory.
pub fn agent_layout() -> (GlobalSlots, u64) {
    let (_, slots) =
        instrument(&agent_module()).unwrap_or_else(|e| panic!("the fixture agent cannot be instrumented: {e}"));
    (slots, AGENT_PAGES * WASM_PAGE)
}

/// A runtime for the async frame reader: current-thread, with the timer its timeout needs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("no tokio runtime: {e}"))
}

/// Encodes `value` as CBOR, as the host does.
pub fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap_or_else(|e| panic!("encoding failed: {e}"));
    out
}
