//! An agent's execution state between hops: its linear memory and its mutable globals.
//!
//! Weak mobility: the snapshot is taken after an entry point returned, so the Wasm call stack is
//! empty. Every mutable global is captured, including internal ones such as Rust's shadow-stack
//! pointer: [`instrument`] exports them under reserved names when an agent module is loaded.
//! Only the 4 KiB pages that differ from the module's initial memory image are kept. A snapshot
//! that arrives from the network is hostile input: [`Snapshot::check`] bounds every size and
//! type against the module and the host's limits before anything is restored.

use serde::{Deserialize, Serialize};
use wasmtime::wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

/// Granularity of the dirty-page comparison.
pub const PAGE: usize = 4096;
/// A Wasm memory page.
pub const WASM_PAGE: u64 = 65536;
/// Prefix of the exports [`instrument`] adds for internal mutable globals.
pub const GLOBAL_EXPORT_PREFIX: &str = "__roam_global_";

/// Why a module could not be instrumented or a snapshot restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The module could not be parsed.
    #[error("cannot read the agent module: {0}")]
    Parse(String),
    /// The module imports mutable globals, whose value the host cannot carry.
    #[error("agent modules may not import globals")]
    ImportedGlobal,
    /// The module can change its tables, which snapshots do not carry.
    #[error(
        "agent modules may not change their tables at run time (the module uses {0}), since snapshots do not carry tables; see sdk/ABI.md"
    )]
    MutableTable(&'static str),
    /// The snapshot does not fit the module or the host's limits.
    #[error("snapshot refused: {0}")]
    Invalid(String),
}

/// The type of one captured global.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalKind {
    /// i32
    I32,
    /// i64
    I64,
    /// f32, as bits
    F32,
    /// f64, as bits
    F64,
}

/// A mutable global's value (floats as their bits, so values round-trip exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalValue {
    /// i32
    I32(i32),
    /// i64
    I64(i64),
    /// f32 bits
    F32(u32),
    /// f64 bits
    F64(u64),
}

impl GlobalValue {
    /// Its type.
    pub fn kind(&self) -> GlobalKind {
        match self {
            Self::I32(_) => GlobalKind::I32,
            Self::I64(_) => GlobalKind::I64,
            Self::F32(_) => GlobalKind::F32,
            Self::F64(_) => GlobalKind::F64,
        }
    }
}

/// The mutable globals of an agent module, in the order snapshots carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalSlots {
    /// Export name and type of each mutable global.
    pub slots: Vec<(String, GlobalKind)>,
}

/// Adds an export for every mutable global the module does not export yet, so the host can read
/// and write all of them. Returns the new module and the globals a snapshot carries.
pub fn instrument(module: &[u8]) -> Result<(Vec<u8>, GlobalSlots), SnapshotError> {
    let parse = |e: wasmtime::wasmparser::BinaryReaderError| SnapshotError::Parse(e.to_string());
    let mut mutable: Vec<(u32, GlobalKind)> = Vec::new();
    let mut exported: Vec<(u32, String)> = Vec::new();
    let mut export_section: Option<std::ops::Range<usize>> = None;
    let mut export_count = 0u32;
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(parse)? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if matches!(import.map_err(parse)?.ty, TypeRef::Global(_)) {
                        return Err(SnapshotError::ImportedGlobal);
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.into_iter().enumerate() {
                    let ty = global.map_err(parse)?.ty;
                    if ty.mutable {
                        let kind = match ty.content_type {
                            ValType::I32 => GlobalKind::I32,
                            ValType::I64 => GlobalKind::I64,
                            ValType::F32 => GlobalKind::F32,
                            ValType::F64 => GlobalKind::F64,
                            other => {
                                return Err(SnapshotError::Parse(format!(
                                    "mutable global of type {other} cannot be carried"
                                )));
                            }
                        };
                        mutable.push((index as u32, kind));
                    }
                }
            }
            // Snapshots carry memory and globals. A table changes only through these
            // instructions; Rust agents never use them, and a module that does is refused here
            // rather than moved with a stale table.
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(parse)?;
                while !ops.eof() {
                    let op = ops.read().map_err(parse)?;
                    let name = match op {
                        Operator::TableSet { .. } => "table.set",
                        Operator::TableGrow { .. } => "table.grow",
                        Operator::TableFill { .. } => "table.fill",
                        Operator::TableCopy { .. } => "table.copy",
                        Operator::TableInit { .. } => "table.init",
                        _ => continue,
                    };
                    return Err(SnapshotError::MutableTable(name));
                }
            }
            Payload::ExportSection(reader) => {
                export_section = Some(reader.range());
                export_count = reader.count();
                for export in reader {
                    let export = export.map_err(parse)?;
                    if export.kind == ExternalKind::Global {
                        exported.push((export.index, export.name.to_owned()));
                    }
                }
            }
            _ => {}
        }
    }
    let Some(range) = export_section else {
        return Err(SnapshotError::Parse("an agent module must export its memory".into()));
    };

    let mut slots = GlobalSlots::default();
    let mut added = Vec::new();
    for (index, kind) in mutable {
        let name = match exported.iter().find(|(i, _)| *i == index) {
            Some((_, name)) => name.clone(),
            None => {
                let name = format!("{GLOBAL_EXPORT_PREFIX}{index}");
                added.push((name.clone(), index));
                name
            }
        };
        slots.slots.push((name, kind));
    }
    if added.is_empty() {
        return Ok((module.to_vec(), slots));
    }

    // Rewrite the export section: the old entries as they are, then the new ones.
    let entries_start =
        range.start + leb_len(&module[range.start..]).ok_or_else(|| SnapshotError::Parse("bad export count".into()))?;
    let mut body = Vec::new();
    roam_keys::write_leb_u32(&mut body, export_count + added.len() as u32);
    body.extend_from_slice(&module[entries_start..range.end]);
    for (name, index) in &added {
        roam_keys::write_leb_u32(&mut body, name.len() as u32);
        body.extend_from_slice(name.as_bytes());
        body.push(0x03); // global
        roam_keys::write_leb_u32(&mut body, *index);
    }
    // The section header (id byte + size) sits just before the section's contents.
    let header_start = section_header_start(module, range.start)?;
    let mut out = Vec::with_capacity(module.len() + body.len());
    out.extend_from_slice(&module[..header_start]);
    out.push(7);
    roam_keys::write_leb_u32(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out.extend_from_slice(&module[range.end..]);
    Ok((out, slots))
}

/// Finds where the section whose contents start at `contents` begins (its id byte).
fn section_header_start(module: &[u8], contents: usize) -> Result<usize, SnapshotError> {
    let sections = roam_keys::sections(module).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    sections
        .iter()
        .find(|s| s.id == 7 && s.range.end > contents && s.range.start < contents)
        .map(|s| s.range.start)
        .ok_or_else(|| SnapshotError::Parse("export section not found".into()))
}

fn leb_len(bytes: &[u8]) -> Option<usize> {
    bytes.iter().take(5).position(|b| b & 0x80 == 0).map(|p| p + 1)
}

/// A contiguous run of changed pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Byte offset in linear memory, a multiple of [`PAGE`].
    pub offset: u64,
    /// The pages' bytes, a multiple of [`PAGE`] long.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// An agent's state after an entry point returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Size of linear memory, in bytes (a multiple of 64 KiB).
    pub memory_bytes: u64,
    /// The pages that differ from the module's initial memory image.
    pub chunks: Vec<Chunk>,
    /// Every mutable global, in the order of the module's [`GlobalSlots`].
    pub globals: Vec<GlobalValue>,
}

impl Snapshot {
    /// Captures `memory` as the pages that differ from `initial` (the memory right after
    /// instantiation), and `globals`.
    pub fn capture(memory: &[u8], initial: &[u8], globals: Vec<GlobalValue>) -> Self {
        let zero = [0u8; PAGE];
        // First find the runs of changed pages, then copy each run once into a buffer of its
        // exact size: no buffer grows page by page.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, page) in memory.chunks(PAGE).enumerate() {
            let start = i * PAGE;
            let before = initial.get(start..start + page.len()).unwrap_or(&zero[..page.len()]);
            // Slice equality compiles to memcmp, which compares whole words at a time.
            if page == before {
                continue;
            }
            match runs.last_mut() {
                Some((_, end)) if *end == start => *end = start + page.len(),
                _ => runs.push((start, start + page.len())),
            }
        }
        let chunks = runs
            .into_iter()
            .map(|(start, end)| Chunk { offset: start as u64, bytes: memory[start..end].to_vec() })
            .collect();
        Self { memory_bytes: memory.len() as u64, chunks, globals }
    }

    /// Checks the snapshot against the module it claims to be of and the host's memory limit.
    pub fn check(&self, slots: &GlobalSlots, initial_bytes: u64, max_bytes: u64) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Invalid(m));
        if !self.memory_bytes.is_multiple_of(WASM_PAGE) {
            return bad(format!("memory size {} is not whole Wasm pages", self.memory_bytes));
        }
        if self.memory_bytes < initial_bytes {
            return bad(format!("memory of {} bytes is smaller than the module's {initial_bytes}", self.memory_bytes));
        }
        if self.memory_bytes > max_bytes {
            return bad(format!("memory of {} bytes is over this host's limit of {max_bytes}", self.memory_bytes));
        }
        let mut end = 0u64;
        for c in &self.chunks {
            let len = c.bytes.len() as u64;
            if !c.offset.is_multiple_of(PAGE as u64) || len == 0 || !len.is_multiple_of(PAGE as u64) {
                return bad(format!("chunk at {} of {len} bytes is not whole pages", c.offset));
            }
            if c.offset < end {
                return bad("chunks overlap or are out of order".into());
            }
            end = c.offset.checked_add(len).ok_or_else(|| SnapshotError::Invalid("chunk overflows".into()))?;
            if end > self.memory_bytes {
                return bad(format!("chunk ends at {end}, past the memory's {} bytes", self.memory_bytes));
            }
        }
        if self.globals.len() != slots.slots.len() {
            return bad(format!("{} globals for a module with {}", self.globals.len(), slots.slots.len()));
        }
        for (value, (name, kind)) in self.globals.iter().zip(&slots.slots) {
            if value.kind() != *kind {
                return bad(format!("global {name} is {kind:?}, the snapshot has {:?}", value.kind()));
            }
        }
        Ok(())
    }

    /// Bytes carried (page data only).
    pub fn page_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_pages_are_captured_and_adjacent_ones_merge() {
        let initial = vec![1u8; 4 * PAGE];
        let mut memory = vec![1u8; 6 * PAGE];
        for b in &mut memory[4 * PAGE..] {
            *b = 0;
        }
        memory[PAGE + 5] = 9;
        memory[2 * PAGE] = 9;
        memory[5 * PAGE + 1] = 7;
        let s = Snapshot::capture(&memory, &initial, vec![]);
        assert_eq!(s.chunks.len(), 2);
        assert_eq!((s.chunks[0].offset, s.chunks[0].bytes.len()), (PAGE as u64, 2 * PAGE));
        assert_eq!((s.chunks[1].offset, s.chunks[1].bytes.len()), (5 * PAGE as u64, PAGE));
        assert_eq!(s.page_bytes(), 3 * PAGE);
    }

    #[test]
    fn hostile_snapshots_are_refused_before_restoring() {
        let slots = GlobalSlots { slots: vec![("sp".into(), GlobalKind::I32)] };
        let good = Snapshot {
            memory_bytes: 2 * WASM_PAGE,
            chunks: vec![Chunk { offset: 0, bytes: vec![0; PAGE] }],
            globals: vec![GlobalValue::I32(5)],
        };
        assert!(good.check(&slots, WASM_PAGE, 16 * WASM_PAGE).is_ok());
        let cases = [
            Snapshot { memory_bytes: 100, ..good.clone() },
            Snapshot { memory_bytes: 0, ..good.clone() },
            Snapshot { memory_bytes: 1 << 40, ..good.clone() },
            Snapshot { chunks: vec![Chunk { offset: 2 * WASM_PAGE, bytes: vec![0; PAGE] }], ..good.clone() },
            Snapshot { chunks: vec![Chunk { offset: 3, bytes: vec![0; PAGE] }], ..good.clone() },
            Snapshot { chunks: vec![Chunk { offset: 0, bytes: vec![0; 10] }], ..good.clone() },
            Snapshot {
                chunks: vec![
                    Chunk { offset: PAGE as u64, bytes: vec![0; PAGE] },
                    Chunk { offset: 0, bytes: vec![0; PAGE] },
                ],
                ..good.clone()
            },
            Snapshot { chunks: vec![Chunk { offset: u64::MAX - 100, bytes: vec![0; PAGE] }], ..good.clone() },
            Snapshot { globals: vec![], ..good.clone() },
            Snapshot { globals: vec![GlobalValue::I64(5)], ..good.clone() },
        ];
        for (i, s) in cases.iter().enumerate() {
            assert!(s.check(&slots, WASM_PAGE, 16 * WASM_PAGE).is_err(), "case {i} was accepted");
        }
    }

    #[test]
    fn agents_that_can_change_their_tables_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1) (table 2 funcref)
                 (func (export "f") (table.set (i32.const 0) (ref.null func))))"#,
        )?;
        assert!(matches!(instrument(&wasm), Err(SnapshotError::MutableTable("table.set"))));
        Ok(())
    }

    #[test]
    fn internal_mutable_globals_get_exported() -> Result<(), Box<dyn std::error::Error>> {
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (global $sp (mut i32) (i32.const 1024))
                 (global $k i32 (i32.const 7))
                 (global $seen (export "seen") (mut i64) (i64.const 0))
                 (func (export "f")))"#,
        )?;
        let (out, slots) = instrument(&wasm)?;
        assert_eq!(
            slots.slots,
            vec![(format!("{GLOBAL_EXPORT_PREFIX}0"), GlobalKind::I32), ("seen".into(), GlobalKind::I64)]
        );
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &out)?;
        let names: Vec<_> = module.exports().map(|e| e.name().to_owned()).collect();
        assert!(names.contains(&format!("{GLOBAL_EXPORT_PREFIX}0")), "{names:?}");
        assert!(names.contains(&"f".to_owned()) && names.contains(&"memory".to_owned()));
        Ok(())
    }
}
