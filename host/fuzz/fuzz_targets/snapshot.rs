//! A snapshot from the network, as a receiving host handles it: decoded, checked against a real
//! agent module's layout (the globals the host's instrumentation found, the initial memory) and
//! the host's default memory limit, then restored: written page by page over the module's
//! initial memory, as `engine.rs` does into a fresh instance.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use roam_fuzz::{agent_layout, cbor};
use roam_host::engine::Limits;
use roam_host::protocol::wire::from_cbor;
use roam_host::snapshot::{GlobalSlots, Snapshot, WASM_PAGE};

static LAYOUT: LazyLock<(GlobalSlots, u64)> = LazyLock::new(agent_layout);

/// Restores and captures again only up to this memory size: checking is cheap at any size,
/// but materialising a memory of up to 256 MiB for every input would make runs crawl.
const RESTORE_MAX: u64 = 64 * WASM_PAGE;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = from_cbor::<Snapshot>(data, "the snapshot") else { return };
    let again: Snapshot = from_cbor(&cbor(&snapshot), "the snapshot").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, snapshot, "re-encoding does not round-trip");

    let (slots, initial_bytes) = &*LAYOUT;
    let max = Limits::default().memory_bytes as u64;
    if snapshot.check(slots, *initial_bytes, max).is_err() {
        return;
    }
    assert!(snapshot.memory_bytes >= *initial_bytes && snapshot.memory_bytes <= max);
    if snapshot.memory_bytes > RESTORE_MAX {
        return;
    }
    let initial = vec![0u8; *initial_bytes as usize];
    let memory = restore(&snapshot, &initial);
    // Capturing the restored memory yields a snapshot that passes the same check and restores
    // to the same memory: nothing a checked snapshot carries is lost or misplaced.
    let captured = Snapshot::capture(&memory, &initial, snapshot.globals.clone());
    assert!(captured.check(slots, *initial_bytes, max).is_ok());
    assert!(captured.page_bytes() <= snapshot.page_bytes());
    assert!(restore(&captured, &initial) == memory);
});

/// Grows `initial` to the snapshot's size and writes every chunk; a checked snapshot's chunks
/// always lie within the memory.
fn restore(snapshot: &Snapshot, initial: &[u8]) -> Vec<u8> {
    let mut memory = initial.to_vec();
    memory.resize(snapshot.memory_bytes as usize, 0);
    for chunk in &snapshot.chunks {
        let start = chunk.offset as usize;
        let target = memory
            .get_mut(start..start + chunk.bytes.len())
            .unwrap_or_else(|| panic!("checked chunk at {start} is out of bounds"));
        target.copy_from_slice(&chunk.bytes);
    }
    memory
}
