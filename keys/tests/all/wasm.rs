//! The section walker on valid, truncated, hostile and garbage input.

use roam_keys::{WasmError, sections};

use crate::{TestResult, custom_section, signed, tiny_module};

const HEADER: &[u8] = b"\0asm\x01\0\0\0";

fn module_with(body: &[u8]) -> Vec<u8> {
    let mut m = HEADER.to_vec();
    m.extend_from_slice(body);
    m
}

#[test]
fn walks_the_sections_of_a_real_module() -> TestResult {
    let module = tiny_module();
    let secs = sections(&module)?;
    let ids: Vec<u8> = secs.iter().map(|s| s.id).collect();
    assert_eq!(ids, [1, 3, 7, 10]); // type, function, export, code
    assert_eq!(secs[0].range.start, 8);
    assert_eq!(secs.last().map(|s| s.range.end), Some(module.len()));
    for pair in secs.windows(2) {
        assert_eq!(pair[0].range.end, pair[1].range.start);
    }
    assert!(secs.iter().all(|s| s.name.is_none()));
    Ok(())
}

#[test]
fn custom_sections_expose_name_and_payload() -> TestResult {
    let module = module_with(&custom_section("hello", b"world"));
    let secs = sections(&module)?;
    assert_eq!(secs.len(), 1);
    assert_eq!(secs[0].name, Some("hello"));
    assert_eq!(secs[0].payload, b"world");
    assert_eq!(secs[0].range, 8..module.len());
    assert_eq!(sections(HEADER)?.len(), 0, "a header alone is an empty module");
    Ok(())
}

#[test]
fn headers_other_than_core_version_1_are_refused() {
    assert_eq!(sections(b""), Err(WasmError::BadMagic));
    assert_eq!(sections(b"\0as"), Err(WasmError::BadMagic));
    assert_eq!(sections(b"\x7fELF\x02\x01\x01\0"), Err(WasmError::BadMagic));
    assert_eq!(sections(b"\0asm\x01\0"), Err(WasmError::Truncated { offset: 6 }));
    assert_eq!(sections(b"\0asm\x0d\0\x01\0"), Err(WasmError::Component));
    assert_eq!(sections(b"\0asm\x02\0\0\0"), Err(WasmError::UnsupportedVersion { version: 2 }));
}

#[test]
fn leb128_overflow_is_refused() {
    // Bits above 32 in the fifth byte.
    assert_eq!(sections(&module_with(&[1, 0xff, 0xff, 0xff, 0xff, 0x1f])), Err(WasmError::LebOverflow { offset: 9 }));
    // Six bytes.
    assert_eq!(
        sections(&module_with(&[1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00])),
        Err(WasmError::LebOverflow { offset: 9 })
    );
    // u32::MAX is a valid size, but far more than the input holds.
    assert!(matches!(
        sections(&module_with(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f])),
        Err(WasmError::SectionOutOfBounds { size: u32::MAX, .. })
    ));
    // A custom-section name length that overflows.
    assert_eq!(
        sections(&module_with(&[0, 6, 0xff, 0xff, 0xff, 0xff, 0x7f, 0])),
        Err(WasmError::LebOverflow { offset: 10 })
    );
}

#[test]
fn custom_section_names_are_checked() {
    // Name longer than the section.
    assert_eq!(sections(&module_with(&[0, 3, 5, b'a', b'b'])), Err(WasmError::NameOutOfBounds { offset: 8 }));
    // Empty custom section: no room for a name length.
    assert_eq!(sections(&module_with(&[0, 0])), Err(WasmError::NameOutOfBounds { offset: 8 }));
    // A name length whose LEB runs past the section, into the next section.
    assert_eq!(sections(&module_with(&[0, 1, 0x80, 1, 0])), Err(WasmError::NameOutOfBounds { offset: 8 }));
    assert_eq!(sections(&module_with(&[0, 3, 2, 0xc3, 0x28])), Err(WasmError::NameNotUtf8 { offset: 8 }));
}

#[test]
fn every_prefix_of_a_module_is_handled() {
    let module = signed();
    let boundaries: Vec<usize> = sections(&module).unwrap().iter().map(|s| s.range.end).chain([8]).collect();
    for len in 0..module.len() {
        match sections(&module[..len]) {
            Ok(secs) => {
                assert!(boundaries.contains(&len), "prefix {len} parsed but is mid-section");
                assert_eq!(secs.last().map_or(8, |s| s.range.end), len);
            }
            Err(_) => assert!(!boundaries.contains(&len) || len < 8, "prefix {len} refused"),
        }
    }
}

/// A small deterministic generator, so a failure is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

#[test]
fn garbage_never_panics_and_ranges_stay_in_bounds() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let len = usize::from(rng.next()) % 64;
        let mut body: Vec<u8> = (0..len).map(|_| rng.next()).collect();
        // Bias towards small section sizes and custom sections so that deep paths are reached.
        if round % 2 == 0 && body.len() > 2 {
            body[0] = if round % 4 == 0 { 0 } else { body[0] % 13 };
            body[1] %= 16;
        }
        let module = module_with(&body);
        if let Ok(secs) = sections(&module) {
            let mut at = 8;
            for s in &secs {
                assert_eq!(s.range.start, at);
                assert!(s.range.end <= module.len());
                at = s.range.end;
            }
            assert_eq!(at, module.len());
        }
        // Raw garbage without a header, too.
        let _ = sections(&body);
    }
}
