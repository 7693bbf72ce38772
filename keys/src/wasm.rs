//! A minimal walker over the sections of a core WebAssembly module.
//!
//! The verifier has to find the signature section and hash everything around it *before* the
//! module is compiled, so this walker runs on untrusted bytes. It therefore does as little as it
//! can: it checks the 8-byte header, splits the rest into sections by their declared sizes, and
//! reads the names of custom sections. It does not validate section order or contents; that is
//! the compiler's job, and it only ever sees bytes whose signature has been checked.
//!
//! Every offset is computed with checked arithmetic and every slice is taken with `get`, so the
//! walker never panics and never overflows, whatever the input.

use std::ops::Range;

/// The four bytes every Wasm binary starts with.
const MAGIC: [u8; 4] = *b"\0asm";
/// Version 1, layer 0: a core module.
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
/// The length of the magic number plus the version field.
pub(crate) const HEADER_LEN: usize = 8;
/// Section id 0 marks a custom section, whose contents start with a name.
pub(crate) const CUSTOM_SECTION_ID: u8 = 0;
/// A u32 in LEB128 takes at most ceil(32 / 7) = 5 bytes.
const MAX_LEB_BYTES: usize = 5;

/// Why a byte string is not a core Wasm module that this walker can split into sections.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    /// The input does not start with the Wasm magic number.
    #[error(
        "not a WebAssembly module: it does not start with the magic bytes \\0asm; \
         pass the compiled .wasm file, not its source or an archive"
    )]
    BadMagic,
    /// The input is a Wasm component (layer 1), not a core module.
    #[error(
        "this is a WebAssembly component, but roam runs core modules only; \
         build the guest for a core target such as wasm32-unknown-unknown"
    )]
    Component,
    /// The version field is neither a core module's nor a component's.
    #[error(
        "unsupported WebAssembly binary version {version:#010x}; roam accepts core modules \
         of version 1 only"
    )]
    UnsupportedVersion {
        /// The version field, read as a little-endian u32.
        version: u32,
    },
    /// The input ends in the middle of the header, a section id or a section size.
    #[error(
        "the module is truncated: it ends at byte {offset} in the middle of a header; \
         the file was probably cut short while copying or downloading"
    )]
    Truncated {
        /// Where the input ended.
        offset: usize,
    },
    /// A LEB128-encoded size is longer than 5 bytes or does not fit in a u32.
    #[error(
        "malformed size at byte {offset}: the LEB128 number is longer than 5 bytes or does not \
         fit in 32 bits; the module is corrupt"
    )]
    LebOverflow {
        /// Where the number starts.
        offset: usize,
    },
    /// A section declares more bytes than the input has left.
    #[error(
        "section {id} at byte {offset} declares {size} bytes, but only {remaining} remain; \
         the module is truncated or corrupt"
    )]
    SectionOutOfBounds {
        /// The section id.
        id: u8,
        /// Where the section starts (its id byte).
        offset: usize,
        /// The declared size of the section's contents.
        size: u32,
        /// How many bytes follow the size field.
        remaining: usize,
    },
    /// A custom section's name length runs past the end of the section.
    #[error(
        "the custom section at byte {offset} has a name that runs past the end of the section; \
         the module is corrupt"
    )]
    NameOutOfBounds {
        /// Where the section starts (its id byte).
        offset: usize,
    },
    /// A custom section's name is not valid UTF-8.
    #[error(
        "the custom section at byte {offset} has a name that is not valid UTF-8; \
         the module is corrupt"
    )]
    NameNotUtf8 {
        /// Where the section starts (its id byte).
        offset: usize,
    },
}

/// One section of a module, borrowed from the module's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section<'a> {
    /// The section id; 0 is a custom section.
    pub id: u8,
    /// The name of a custom section; `None` for every other section.
    pub name: Option<&'a str>,
    /// The whole section within the module, including its id byte and size field, so that a
    /// caller can cut the section out or copy it verbatim.
    pub range: Range<usize>,
    /// The section's contents; for a custom section, the bytes after its name.
    pub payload: &'a [u8],
}

/// Splits a core Wasm module into its sections, in order.
///
/// Checks the magic number and version (components and other layers are refused), decodes each
/// section size as a LEB128 u32 of at most 5 bytes, checks that every section lies within the
/// input, and that every custom-section name is valid UTF-8. Nothing else is parsed.
///
/// # Errors
/// A [`WasmError`] saying what is wrong and where. Never panics.
pub fn sections(bytes: &[u8]) -> Result<Vec<Section<'_>>, WasmError> {
    check_header(bytes)?;
    let mut out = Vec::new();
    let mut offset = HEADER_LEN;
    while offset < bytes.len() {
        let section = read_section(bytes, offset)?;
        offset = section.range.end;
        out.push(section);
    }
    Ok(out)
}

/// Checks the magic number and the version field.
fn check_header(bytes: &[u8]) -> Result<(), WasmError> {
    // A prefix of the magic that then ends is still "not Wasm" rather than "truncated": an
    // empty or 2-byte file is far more likely the wrong file than a cut-short module.
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(WasmError::BadMagic);
    }
    let version: [u8; 4] = bytes
        .get(MAGIC.len()..HEADER_LEN)
        .and_then(|v| v.try_into().ok())
        .ok_or(WasmError::Truncated { offset: bytes.len() })?;
    if version == CORE_VERSION {
        return Ok(());
    }
    // Bytes 6..8 are the layer: 1 is the component model.
    if version[2..] == [1, 0] {
        return Err(WasmError::Component);
    }
    Err(WasmError::UnsupportedVersion { version: u32::from_le_bytes(version) })
}

/// Reads the section that starts at `start`, which is within `bytes`.
fn read_section(bytes: &[u8], start: usize) -> Result<Section<'_>, WasmError> {
    let id = *bytes.get(start).ok_or(WasmError::Truncated { offset: start })?;
    let size_at = start + 1; // cannot overflow: `start` indexes a byte of a slice
    let (size, size_len) = read_u32(bytes, size_at)?;
    let contents_start = size_at + size_len; // at most bytes.len()
    let remaining = bytes.len() - contents_start;
    let end = usize::try_from(size)
        .ok()
        .filter(|&s| s <= remaining)
        .map(|s| contents_start + s)
        .ok_or(WasmError::SectionOutOfBounds { id, offset: start, size, remaining })?;
    let contents = bytes.get(contents_start..end).ok_or(WasmError::Truncated { offset: end })?;

    if id != CUSTOM_SECTION_ID {
        return Ok(Section { id, name: None, range: start..end, payload: contents });
    }

    // The name length is read from the section contents only, so a bad length can never
    // reach into the next section.
    let name_err = WasmError::NameOutOfBounds { offset: start };
    let (name_len, len_len) = read_u32(contents, 0).map_err(|e| match e {
        WasmError::Truncated { .. } => name_err.clone(),
        WasmError::LebOverflow { offset } => WasmError::LebOverflow { offset: contents_start + offset },
        other => other,
    })?;
    let name_end =
        usize::try_from(name_len).ok().and_then(|n| len_len.checked_add(n)).ok_or_else(|| name_err.clone())?;
    let name_bytes = contents.get(len_len..name_end).ok_or(name_err)?;
    let name = std::str::from_utf8(name_bytes).map_err(|_| WasmError::NameNotUtf8 { offset: start })?;
    let payload = contents.get(name_end..).unwrap_or_default();
    Ok(Section { id, name: Some(name), range: start..end, payload })
}

/// Decodes an unsigned LEB128 u32 at `at`, returning the value and how many bytes it took.
///
/// Non-minimal encodings are allowed (as the Wasm spec allows), but never more than 5 bytes, and
/// the unused high bits of a fifth byte must be zero.
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Result<(u32, usize), WasmError> {
    let mut value: u32 = 0;
    for i in 0..MAX_LEB_BYTES {
        let pos = at.checked_add(i).ok_or(WasmError::Truncated { offset: at })?;
        let byte = *bytes.get(pos).ok_or(WasmError::Truncated { offset: pos })?;
        let bits = u32::from(byte & 0x7f);
        if i == MAX_LEB_BYTES - 1 && (byte & 0x70 != 0 || byte & 0x80 != 0) {
            // The fifth byte may only carry the top 4 bits of a u32 and must be the last.
            return Err(WasmError::LebOverflow { offset: at });
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(WasmError::LebOverflow { offset: at })
}

/// Appends `value` as a minimal unsigned LEB128 (how Wasm writes sizes, counts and indices).
pub fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        // Truncation is the point: take the low 7 bits.
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leb(bytes: &[u8]) -> Result<(u32, usize), WasmError> {
        read_u32(bytes, 0)
    }

    #[test]
    fn leb_decodes_minimal_and_padded_forms() -> Result<(), WasmError> {
        assert_eq!(leb(&[0x00])?, (0, 1));
        assert_eq!(leb(&[0x7f])?, (127, 1));
        assert_eq!(leb(&[0x80, 0x01])?, (128, 2));
        assert_eq!(leb(&[0x80, 0x80, 0x80, 0x80, 0x00])?, (0, 5));
        assert_eq!(leb(&[0xff, 0xff, 0xff, 0xff, 0x0f])?, (u32::MAX, 5));
        Ok(())
    }

    #[test]
    fn leb_refuses_overflow_and_overlong() {
        // Bits above 32 set in the fifth byte.
        assert_eq!(leb(&[0xff, 0xff, 0xff, 0xff, 0x1f]), Err(WasmError::LebOverflow { offset: 0 }));
        assert_eq!(leb(&[0xff, 0xff, 0xff, 0xff, 0x7f]), Err(WasmError::LebOverflow { offset: 0 }));
        // A sixth byte announced by the continuation bit.
        assert_eq!(leb(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), Err(WasmError::LebOverflow { offset: 0 }));
        assert_eq!(leb(&[0x80, 0x80]), Err(WasmError::Truncated { offset: 2 }));
        assert_eq!(leb(&[]), Err(WasmError::Truncated { offset: 0 }));
    }

    #[test]
    fn leb_round_trips() -> Result<(), WasmError> {
        for v in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX / 2, u32::MAX] {
            let mut buf = Vec::new();
            write_u32(&mut buf, v);
            assert_eq!(leb(&buf)?, (v, buf.len()));
        }
        Ok(())
    }

    #[test]
    fn leb_at_end_of_usize_range_does_not_overflow() {
        assert!(read_u32(&[0x80], usize::MAX).is_err());
    }
}
