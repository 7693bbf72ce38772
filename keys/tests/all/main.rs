//! Tests for roam-keys, one module per area, with the shared fixtures below.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod keys;
mod sign;
mod tamper;
mod trust;
mod verify;
mod wasm;

use roam_keys::{
    Kind, NoHistory, SecretKey, SignRequest, TrustStore, VerifiedModule, VerifyContext, VerifyError, sign_module,
};

pub use roam_keys::testing::{custom_section, payload_for, ranges, replace_signature_section, reseal, reseal_raw};

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
    wat::parse_str(r#"(module (func (export "answer") (result i32) i32.const 42))"#).expect("fixture WAT is valid")
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
