//! Tests for roam-keys, one module per area, with the shared fixtures below.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod keys;
mod sign;
mod tamper;
mod trust;
mod verify;
mod wasm;

use roam_keys::{
    Kind, NoHistory, SecretKey, SignRequest, TrustStore, VerifiedModule, VerifyContext,
    VerifyError, sections, sign_module,
};

/// Every test returns this, so failures carry their error instead of a panic.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A fixed seed, so signatures (and the pinned known answers) are reproducible.
pub const SEED: [u8; 32] = [7; 32];
/// When the fixture module is signed and becomes valid.
pub const ISSUED: u64 = 1_700_000_000;
/// When the fixture module expires.
pub const EXPIRES: u64 = ISSUED + 3600;
/// A time inside the validity window.
pub const NOW: u64 = ISSUED + 60;

/// The fixture signer, "alice".
pub fn alice() -> SecretKey {
    SecretKey::from_seed(SEED)
}

/// Another key, trusted or not depending on the test.
pub fn mallory() -> SecretKey {
    SecretKey::from_seed([9; 32])
}

/// A tiny unsigned module with a type, function, export and code section.
pub fn tiny_module() -> Vec<u8> {
    wat::parse_str(r#"(module (func (export "answer") (result i32) i32.const 42))"#)
        .expect("fixture WAT is valid")
}

/// The fixture signing request: a query module asking for two capabilities.
pub fn request() -> SignRequest {
    SignRequest {
        kind: Kind::Query,
        name: "sales-total".to_owned(),
        version: semver::Version::new(1, 2, 3),
        issued_at: ISSUED,
        not_before: ISSUED,
        expires: EXPIRES,
        capabilities: vec!["table:sales".to_owned(), "log:audit".to_owned()],
    }
}

/// The tiny module signed by alice with [`request`].
pub fn signed() -> Vec<u8> {
    sign_module(&tiny_module(), &alice(), request()).expect("fixture signs")
}

/// A store that trusts alice, with no policy.
pub fn store() -> TrustStore {
    TrustStore::empty().with_key("alice", alice().public())
}

/// A context at [`NOW`] with the default limits, any kind, and no history.
pub fn ctx(trust: &TrustStore) -> VerifyContext<'_> {
    VerifyContext {
        trust,
        now: NOW,
        max_size: roam_keys::DEFAULT_MAX_MODULE_SIZE,
        expected_kind: None,
        history: &NoHistory,
    }
}

/// The error of a verification that must fail.
pub fn refused(result: Result<VerifiedModule, VerifyError>) -> VerifyError {
    match result {
        Ok(m) => panic!("module unexpectedly verified: {:?}", m.claims()),
        Err(e) => e,
    }
}

/// Encodes a custom section by hand, independently of the crate's encoder.
pub fn custom_section(name: &str, contents: &[u8]) -> Vec<u8> {
    assert!(name.len() < 128, "fixture names fit a one-byte LEB");
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(contents);
    let mut out = vec![0u8];
    leb(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Appends an unsigned LEB128.
pub fn leb(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The byte ranges of a module's sections, owned so the module can then be modified.
pub fn ranges(module: &[u8]) -> Vec<std::ops::Range<usize>> {
    sections(module)
        .expect("fixture module walks")
        .into_iter()
        .map(|s| s.range)
        .collect()
}

/// Replaces a signed module's signature section with one holding `payload` signed by `key`,
/// for payloads the crate's signer would never produce.
pub fn reseal(module: &[u8], payload: Vec<u8>, key: &SecretKey) -> Vec<u8> {
    let signature = key.sign(&payload);
    reseal_raw(module, payload, signature.to_vec())
}

/// Like [`reseal`] with a given signature.
pub fn reseal_raw(module: &[u8], payload: Vec<u8>, signature: Vec<u8>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Envelope {
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    }
    let mut envelope = Vec::new();
    ciborium::into_writer(&Envelope { payload, signature }, &mut envelope).unwrap();
    replace_signature_section(module, &custom_section("roam.signature", &envelope))
}

/// Replaces the first section (the signature) of a signed module with `section`.
pub fn replace_signature_section(module: &[u8], section: &[u8]) -> Vec<u8> {
    let first = ranges(module)[0].clone();
    let mut out = module[..first.start].to_vec();
    out.extend_from_slice(section);
    out.extend_from_slice(&module[first.end..]);
    out
}

/// `roam_keys::DOMAIN` followed by the CBOR of `claims`.
pub fn payload_for(claims: &roam_keys::Claims) -> Vec<u8> {
    let mut payload = roam_keys::DOMAIN.to_vec();
    ciborium::into_writer(claims, &mut payload).unwrap();
    payload
}
