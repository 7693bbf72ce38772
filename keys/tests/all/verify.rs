//! Verification: a round trip, and every refusal triggered by a real case.

use std::collections::BTreeMap;

use roam_keys::testing::{duplicate_signature, move_signature_back};
use roam_keys::{
    DOMAIN, Kind, Policy, SIGNATURE_SECTION, TrustStore, VerifyContext, VerifyError, VersionHistory, WasmError,
    hash_module, read_claims_unverified, sign_module, verify,
};

use crate::{
    EXPIRES, ISSUED, NOW, TestResult, alice, ctx, custom_section, mallory, payload_for, ranges, refused, request,
    reseal, reseal_raw, signed, store, tiny_module,
};

/// A version history backed by a map, as a host's database would be.
struct History(BTreeMap<String, semver::Version>);

impl VersionHistory for History {
    fn highest_accepted(&self, name: &str) -> Option<semver::Version> {
        self.0.get(name).cloned()
    }
}

fn policy(text: &str) -> Policy {
    Policy::parse(text).expect("fixture policy parses")
}

#[test]
fn round_trip_returns_claims_hash_and_signer_name() -> TestResult {
    let trust = store();
    let module = signed();
    let verified = verify(module.clone(), &ctx(&trust))?;
    assert_eq!(&verified.bytes()[..], &module[..]);
    assert_eq!(verified.hash(), hash_module(&tiny_module()));
    assert_eq!(verified.signer_name(), "alice");
    assert_eq!(verified.claims(), &read_claims_unverified(&module)?);
    assert_eq!(verified.claims().name, "sales-total");
    assert_eq!(verified.claims().kind, Kind::Query);
    Ok(())
}

#[test]
fn too_large_is_refused_before_parsing() {
    let trust = store();
    let module = signed();
    let mut c = ctx(&trust);
    c.max_size = module.len() - 1;
    assert!(matches!(
        refused(verify(module.clone(), &c)),
        VerifyError::TooLarge { size, max } if size == module.len() && max == module.len() - 1
    ));
    // Exactly at the limit is fine.
    c.max_size = module.len();
    assert!(verify(module, &c).is_ok());
    // Garbage over the limit is refused for its size, not parsed.
    c.max_size = 4;
    assert!(matches!(refused(verify(vec![0xff; 5], &c)), VerifyError::TooLarge { .. }));
}

#[test]
fn malformed_module_is_refused() {
    let trust = store();
    assert!(matches!(
        refused(verify(b"\x7fELF not wasm".to_vec(), &ctx(&trust))),
        VerifyError::Malformed(WasmError::BadMagic)
    ));
    let mut truncated = signed();
    truncated.pop();
    assert!(matches!(refused(verify(truncated, &ctx(&trust))), VerifyError::Malformed(_)));
}

#[test]
fn unsigned_module_is_refused() {
    let trust = store();
    assert!(matches!(refused(verify(tiny_module(), &ctx(&trust))), VerifyError::MissingSignature));
}

#[test]
fn duplicate_signature_section_is_refused() {
    let trust = store();
    assert!(matches!(refused(verify(duplicate_signature(&signed()), &ctx(&trust))), VerifyError::DuplicateSignature));
}

#[test]
fn signature_moved_after_another_section_is_refused() {
    let trust = store();
    // header, then the type section, then the signature, then the rest.
    assert!(matches!(refused(verify(move_signature_back(&signed()), &ctx(&trust))), VerifyError::MisplacedSignature));
}

#[test]
fn undecodable_envelope_is_refused() {
    let trust = store();
    let module = signed();
    for contents in [&b""[..], b"\xff", b"\xa0", b"not cbor"] {
        let broken = crate::replace_signature_section(&module, &custom_section(SIGNATURE_SECTION, contents));
        assert!(matches!(refused(verify(broken, &ctx(&trust))), VerifyError::BadEnvelope(_)));
    }
    // A well-formed envelope followed by trailing bytes.
    let payload = payload_for(&read_claims_unverified(&module).unwrap());
    let mut resealed = reseal(&module, payload, &alice());
    let sig = ranges(&resealed)[0].clone();
    let mut section = resealed[sig.start..sig.end].to_vec();
    section.push(0);
    section[1] += 1; // the section size, a one-byte LEB for this fixture
    resealed = crate::replace_signature_section(&resealed, &section);
    assert!(matches!(refused(verify(resealed, &ctx(&trust))), VerifyError::BadEnvelope(_)));
}

#[test]
fn payload_signed_without_the_domain_prefix_is_refused() {
    let trust = store();
    let module = signed();
    let claims = read_claims_unverified(&module).unwrap();
    let mut bare = Vec::new();
    ciborium::into_writer(&claims, &mut bare).unwrap();
    let forged = reseal(&module, bare, &alice());
    assert!(matches!(refused(verify(forged, &ctx(&trust))), VerifyError::MissingDomainPrefix));
}

#[test]
fn undecodable_claims_are_refused() {
    let trust = store();
    let module = signed();
    let mut garbage = DOMAIN.to_vec();
    garbage.extend_from_slice(b"\xa1\x61x\x01");
    assert!(matches!(refused(verify(reseal(&module, garbage, &alice()), &ctx(&trust))), VerifyError::BadPayload(_)));
    // Claims with an extra field are refused rather than partly understood.
    let claims = read_claims_unverified(&module).unwrap();
    let mut value = ciborium::Value::serialized(&claims).unwrap();
    if let ciborium::Value::Map(m) = &mut value {
        m.push(("sandbox".into(), false.into()));
    }
    let mut payload = DOMAIN.to_vec();
    ciborium::into_writer(&value, &mut payload).unwrap();
    assert!(matches!(refused(verify(reseal(&module, payload, &alice()), &ctx(&trust))), VerifyError::BadPayload(_)));
}

#[test]
fn revoked_key_is_refused_even_with_its_pub_file() {
    let trust = store()
        .with_policy(policy(&format!("revoked = [\"{}\"]\n[keys.alice]\ncapabilities = [\"*\"]\n", alice().public())));
    assert!(matches!(
        refused(verify(signed(), &ctx(&trust))),
        VerifyError::Revoked { key } if key == alice().public()
    ));
}

#[test]
fn unknown_signer_is_refused() {
    // Mallory signs with her own key; a valid signature by an untrusted key proves nothing.
    let trust = store();
    let module = sign_module(&tiny_module(), &mallory(), request()).unwrap();
    assert!(matches!(
        refused(verify(module, &ctx(&trust))),
        VerifyError::UntrustedSigner { key } if key == mallory().public()
    ));
    assert!(matches!(refused(verify(signed(), &ctx(&TrustStore::empty()))), VerifyError::UntrustedSigner { .. }));
}

#[test]
fn forged_signer_field_is_refused() {
    // Mallory claims to be alice but can only sign with her own key.
    let trust = store();
    let module = signed();
    let claims = read_claims_unverified(&module).unwrap();
    assert_eq!(claims.signer, alice().public());
    let forged = reseal(&module, payload_for(&claims), &mallory());
    assert!(matches!(refused(verify(forged, &ctx(&trust))), VerifyError::BadSignature));
}

#[test]
fn altered_claims_are_refused() {
    let trust = store();
    let module = signed();
    let mut claims = read_claims_unverified(&module).unwrap();
    let original = payload_for(&claims);
    let signature = alice().sign(&original);
    claims.capabilities.push("table:salaries".to_owned());
    let altered = reseal_raw(&module, payload_for(&claims), signature.to_vec());
    assert!(matches!(refused(verify(altered, &ctx(&trust))), VerifyError::BadSignature));
    // A signature of the wrong length cannot even be decoded.
    let short = reseal_raw(&module, original, signature[..63].to_vec());
    assert!(matches!(refused(verify(short, &ctx(&trust))), VerifyError::BadEnvelope(_)));
}

#[test]
fn not_yet_valid_is_refused() {
    let trust = store();
    let mut c = ctx(&trust);
    c.now = ISSUED - 1;
    assert!(matches!(
        refused(verify(signed(), &c)),
        VerifyError::NotYetValid { not_before: ISSUED, now } if now == ISSUED - 1
    ));
    c.now = ISSUED;
    assert!(verify(signed(), &c).is_ok(), "valid from not_before on");
}

#[test]
fn expired_is_refused() {
    let trust = store();
    let mut c = ctx(&trust);
    c.now = EXPIRES;
    assert!(matches!(refused(verify(signed(), &c)), VerifyError::Expired { expires: EXPIRES, now: EXPIRES }));
    c.now = EXPIRES - 1;
    assert!(verify(signed(), &c).is_ok(), "valid until just before expires");
}

#[test]
fn rollback_is_refused() {
    let trust = store();
    let history = History(BTreeMap::from([("sales-total".to_owned(), semver::Version::new(1, 3, 0))]));
    let mut c = ctx(&trust);
    c.history = &history;
    assert!(matches!(
        refused(verify(signed(), &c)),
        VerifyError::Rollback { ref name, ref version, ref accepted }
            if name == "sales-total" && *version == semver::Version::new(1, 2, 3)
                && *accepted == semver::Version::new(1, 3, 0)
    ));
    // The same version again, or a newer one, is not a rollback.
    let same = History(BTreeMap::from([("sales-total".to_owned(), semver::Version::new(1, 2, 3))]));
    c.history = &same;
    assert!(verify(signed(), &c).is_ok());
    let other = History(BTreeMap::from([("other".to_owned(), semver::Version::new(9, 0, 0))]));
    c.history = &other;
    assert!(verify(signed(), &c).is_ok());
}

#[test]
fn code_altered_after_signing_is_refused() {
    let trust = store();
    let module = signed();
    // Appending a section keeps the module well-formed but changes what is hashed.
    let mut appended = module.clone();
    appended.extend_from_slice(&custom_section("extra", b"payload"));
    assert!(matches!(refused(verify(appended, &ctx(&trust))), VerifyError::HashMismatch));
    // Changing the constant the function returns (the last-but-one byte: 42 before `end`).
    let mut patched = module;
    let at = patched.len() - 2;
    assert_eq!(patched[at], 42);
    patched[at] = 43;
    assert!(matches!(refused(verify(patched, &ctx(&trust))), VerifyError::HashMismatch));
}

#[test]
fn wrong_kind_is_refused() {
    let trust = store();
    let mut c = ctx(&trust);
    c.expected_kind = Some(Kind::Agent);
    assert!(matches!(
        refused(verify(signed(), &c)),
        VerifyError::WrongKind { expected: Kind::Agent, found: Kind::Query }
    ));
    c.expected_kind = Some(Kind::Query);
    assert!(verify(signed(), &c).is_ok());
}

#[test]
fn kind_denied_by_policy_is_refused() {
    let trust = store().with_policy(policy("[keys.alice]\ncapabilities = [\"*\"]\nkinds = [\"code\", \"agent\"]\n"));
    assert!(matches!(
        refused(verify(signed(), &ctx(&trust))),
        VerifyError::KindDenied { kind: Kind::Query, ref signer } if signer == "alice"
    ));
}

#[test]
fn capability_escalation_is_refused() {
    // alice may read the sales table but not write to the audit log.
    let trust = store().with_policy(policy("[keys.alice]\ncapabilities = [\"table:sales\"]\n"));
    assert!(matches!(
        refused(verify(signed(), &ctx(&trust))),
        VerifyError::CapabilityDenied { ref capability, ref signer }
            if capability == "log:audit" && signer == "alice"
    ));
    let trust = store().with_policy(policy("[keys.alice]\ncapabilities = [\"table:*\", \"log:*\"]\n"));
    assert!(verify(signed(), &ctx(&trust)).is_ok());
}

#[test]
fn key_without_policy_entry_may_sign_modules_that_request_nothing() -> TestResult {
    let trust = store().with_policy(Policy::default());
    assert!(matches!(
        refused(verify(signed(), &ctx(&trust))),
        VerifyError::CapabilityDenied { ref capability, .. } if capability == "table:sales"
    ));
    let mut req = request();
    req.capabilities.clear();
    let module = sign_module(&tiny_module(), &alice(), req)?;
    let verified = verify(module, &ctx(&trust))?;
    assert!(verified.claims().capabilities.is_empty());
    Ok(())
}

#[test]
fn checks_run_in_the_documented_order() {
    // An expired module from an unknown signer: trust is checked before time.
    let module = sign_module(&tiny_module(), &mallory(), request()).unwrap();
    let trust = store();
    let mut c = ctx(&trust);
    c.now = EXPIRES + 1;
    assert!(matches!(refused(verify(module, &c)), VerifyError::UntrustedSigner { .. }));

    // Expired and altered: time is checked before the hash.
    let mut appended = signed();
    appended.extend_from_slice(&custom_section("extra", b""));
    assert!(matches!(refused(verify(appended.clone(), &c)), VerifyError::Expired { .. }));

    // Altered and of the wrong kind: the hash is checked before the kind.
    let mut c = ctx(&trust);
    c.expected_kind = Some(Kind::Agent);
    assert!(matches!(refused(verify(appended, &c)), VerifyError::HashMismatch));

    // Revoked and untrusted: revocation is reported first.
    let trust = TrustStore::empty().with_policy(policy(&format!("revoked = [\"{}\"]\n", mallory().public())));
    let module = sign_module(&tiny_module(), &mallory(), request()).unwrap();
    assert!(matches!(refused(verify(module, &ctx(&trust))), VerifyError::Revoked { .. }));

    // Wrong kind and capability denied: kind first.
    let trust = store().with_policy(Policy::default());
    let mut c = ctx(&trust);
    c.expected_kind = Some(Kind::Code);
    assert!(matches!(refused(verify(signed(), &c)), VerifyError::WrongKind { .. }));
}

#[test]
fn context_new_uses_the_defaults() -> TestResult {
    let trust = store();
    let c = VerifyContext::new(&trust, NOW);
    assert_eq!(c.max_size, roam_keys::DEFAULT_MAX_MODULE_SIZE);
    assert_eq!(c.expected_kind, None);
    verify(signed(), &c)?;
    Ok(())
}

#[test]
fn error_messages_state_facts_and_a_next_step() {
    let trust = store();
    let mut c = ctx(&trust);
    c.now = EXPIRES + 5;
    let msg = refused(verify(signed(), &c)).to_string();
    // Times as dates, not unix seconds.
    let (expired, now) = (roam_keys::date(EXPIRES), roam_keys::date(EXPIRES + 5));
    assert!(msg.contains(&expired) && msg.contains(&now) && !msg.contains(&EXPIRES.to_string()), "{msg}");
    let msg = refused(verify(signed(), &ctx(&TrustStore::empty()))).to_string();
    assert!(msg.contains(&alice().public().to_hex()) && msg.contains(".pub"), "{msg}");
}
