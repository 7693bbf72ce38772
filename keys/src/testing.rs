//! Building hostile modules for tests: signature sections holding payloads, signatures or
//! envelopes the signer would never produce. Shared by this crate's tests and roam's end-to-end
//! attack suite; not part of the API.
//!
//! The helpers take well-formed signed modules made by [`crate::sign_module`] and panic on
//! anything else, as test fixtures do.
#![allow(clippy::expect_used)]

use std::ops::Range;

use crate::{Claims, DOMAIN, SIGNATURE_SECTION, SecretKey, sections, sign};

/// A whole custom section named `name` holding `contents`.
pub fn custom_section(name: &str, contents: &[u8]) -> Vec<u8> {
    sign::custom_section(name, contents).expect("a test section fits in a Wasm section")
}

/// The byte ranges of a module's sections (the signature section first, in a signed module),
/// owned so that the module can then be modified.
pub fn ranges(module: &[u8]) -> Vec<Range<usize>> {
    sections(module).expect("the test module walks").into_iter().map(|s| s.range).collect()
}

/// [`DOMAIN`] followed by the CBOR of `claims`: the payload the signer signs.
pub fn payload_for(claims: &Claims) -> Vec<u8> {
    let mut payload = DOMAIN.to_vec();
    ciborium::into_writer(claims, &mut payload).expect("claims encode");
    payload
}

/// Replaces a signed module's signature section with one holding `payload` signed by `key`.
pub fn reseal(module: &[u8], payload: Vec<u8>, key: &SecretKey) -> Vec<u8> {
    let signature = key.sign(&payload);
    reseal_raw(module, payload, signature.to_vec())
}

/// Like [`reseal`] with a given signature, of any length.
pub fn reseal_raw(module: &[u8], payload: Vec<u8>, signature: Vec<u8>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Envelope {
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    }
    let mut envelope = Vec::new();
    ciborium::into_writer(&Envelope { payload, signature }, &mut envelope).expect("envelope encodes");
    replace_signature_section(module, &custom_section(SIGNATURE_SECTION, &envelope))
}

/// Replaces the first section (the signature) of a signed module with `section`.
pub fn replace_signature_section(module: &[u8], section: &[u8]) -> Vec<u8> {
    let first = ranges(module).remove(0);
    let mut out = module[..first.start].to_vec();
    out.extend_from_slice(section);
    out.extend_from_slice(&module[first.end..]);
    out
}

/// The module with its signature section twice in a row.
pub fn duplicate_signature(module: &[u8]) -> Vec<u8> {
    let first = ranges(module).remove(0);
    let mut out = module[..first.end].to_vec();
    out.extend_from_slice(&module[first.clone()]);
    out.extend_from_slice(&module[first.end..]);
    out
}

/// The module with its signature section moved after the next section.
pub fn move_signature_back(module: &[u8]) -> Vec<u8> {
    let r = ranges(module);
    let mut out = module[..r[0].start].to_vec();
    out.extend_from_slice(&module[r[1].clone()]);
    out.extend_from_slice(&module[r[0].clone()]);
    out.extend_from_slice(&module[r[1].end..]);
    out
}
