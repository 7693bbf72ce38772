//! Signing: output layout, claims encoding, request validation, and a pinned known answer.

use roam_keys::{
    Claims, DOMAIN, Kind, ModuleHash, SIGNATURE_SECTION, SignError, hash_module, read_claims_unverified, sections,
    sign_module,
};
use sha2::{Digest, Sha256};

use crate::{EXPIRES, ISSUED, TestResult, alice, request, signed, tiny_module};

/// The fixture module as `wat` encodes it; pinned so that a change in `wat` is told apart from a
/// change in roam's format.
const TINY_MODULE_HEX: &str = "0061736d010000000105016000017f0302010007\
                               0a0106616e737765720000\
                               0a06010400412a0b";

/// SHA-256 of `sign_module(tiny_module(), alice(), request())`. If this fails, the signed
/// format changed: every module signed before the change would stop verifying.
const SIGNED_SHA256: &str = "311a18ba90179266f2b39c998b24c97d98cfebb40f9507e9e6e9108d9ff5aaae";

#[test]
fn fixture_module_is_what_wat_produced_when_pinned() {
    assert_eq!(hex::encode(tiny_module()), TINY_MODULE_HEX);
}

#[test]
fn signed_output_is_pinned() {
    let digest = hex::encode(Sha256::digest(signed()));
    assert_eq!(digest, SIGNED_SHA256, "the signed module format changed");
}

#[test]
fn signature_section_comes_first_and_the_rest_is_unchanged() -> TestResult {
    let input = tiny_module();
    let output = signed();
    let secs = sections(&output)?;
    assert_eq!(secs[0].id, 0);
    assert_eq!(secs[0].name, Some(SIGNATURE_SECTION));
    assert_eq!(secs.iter().filter(|s| s.name == Some(SIGNATURE_SECTION)).count(), 1);
    // Header + everything after the signature section is exactly the input.
    let mut rest = output[..8].to_vec();
    rest.extend_from_slice(&output[secs[0].range.end..]);
    assert_eq!(rest, input);
    Ok(())
}

#[test]
fn claims_carry_the_request_the_signer_and_the_hash() -> TestResult {
    let claims = read_claims_unverified(&signed())?;
    let req = request();
    assert_eq!(
        claims,
        Claims {
            module_hash: hash_module(&tiny_module()),
            kind: req.kind,
            name: req.name,
            version: req.version,
            signer: alice().public(),
            issued_at: ISSUED,
            not_before: ISSUED,
            expires: EXPIRES,
            capabilities: req.capabilities,
        }
    );
    Ok(())
}

#[test]
fn envelope_and_claims_have_the_documented_cbor_shape() -> TestResult {
    use ciborium::Value;
    let output = signed();
    let secs = sections(&output)?;
    let envelope: Value = ciborium::from_reader(secs[0].payload)?;
    let map = envelope.as_map().ok_or("envelope is a map")?;
    let field = |name: &str| map.iter().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v.clone());
    let payload = field("payload").and_then(|v| v.into_bytes().ok()).ok_or("payload bytes")?;
    let signature = field("signature").and_then(|v| v.into_bytes().ok()).ok_or("sig bytes")?;
    assert_eq!(map.len(), 2);
    assert_eq!(signature.len(), 64);
    let sig: [u8; 64] = signature.as_slice().try_into()?;
    assert!(alice().public().verify_strict(&payload, &sig), "signature covers the whole payload");
    assert!(payload.starts_with(DOMAIN));

    let claims: Value = ciborium::from_reader(&payload[DOMAIN.len()..])?;
    let claims = claims.as_map().ok_or("claims are a map")?;
    let names: Vec<&str> = claims.iter().filter_map(|(k, _)| k.as_text()).collect();
    assert_eq!(
        names,
        ["module_hash", "kind", "name", "version", "signer", "issued_at", "not_before", "expires", "capabilities"]
    );
    let get = |name: &str| claims.iter().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v);
    assert_eq!(get("version").and_then(Value::as_text), Some("1.2.3"));
    assert_eq!(get("kind").and_then(Value::as_text), Some("query"));
    assert_eq!(get("module_hash").and_then(Value::as_bytes).map(Vec::len), Some(32));
    assert_eq!(get("signer").and_then(Value::as_bytes).map(Vec::len), Some(32));
    Ok(())
}

#[test]
fn resigning_replaces_the_old_signature() -> TestResult {
    let once = signed();
    let mut req = request();
    req.version = semver::Version::new(2, 0, 0);
    let twice = sign_module(&once, &alice(), req)?;
    let secs = sections(&twice)?;
    assert_eq!(secs.iter().filter(|s| s.name == Some(SIGNATURE_SECTION)).count(), 1);
    let claims = read_claims_unverified(&twice)?;
    assert_eq!(claims.version, semver::Version::new(2, 0, 0));
    assert_eq!(claims.module_hash, hash_module(&tiny_module()));
    Ok(())
}

#[test]
fn signing_is_deterministic() {
    assert_eq!(signed(), signed());
}

#[test]
fn bad_requests_are_refused() {
    let module = tiny_module();
    let sign = |req| sign_module(&module, &alice(), req);

    let mut req = request();
    req.name.clear();
    assert!(matches!(sign(req), Err(SignError::EmptyName)));

    let mut req = request();
    req.expires = req.not_before;
    assert!(matches!(sign(req), Err(SignError::EmptyValidity { .. })));

    for bad in ["", "table: sales", "log:\taudit", "x\n", "sales", "tables:sales"] {
        let mut req = request();
        req.capabilities.push(bad.to_owned());
        assert!(
            matches!(sign(req), Err(SignError::BadCapability { ref capability, .. }) if capability == bad),
            "{bad:?} accepted"
        );
    }

    assert!(matches!(sign_module(b"not wasm at all", &alice(), request()), Err(SignError::NotWasm(_))));
}

#[test]
fn kind_parses_and_displays() {
    for kind in [Kind::Query, Kind::Code, Kind::Agent] {
        assert_eq!(kind.to_string().parse::<Kind>(), Ok(kind));
    }
    let err = "Query".parse::<Kind>().unwrap_err();
    assert!(err.to_string().contains("\"query\""), "{err}");
}

#[test]
fn module_hash_parses_and_displays() -> TestResult {
    let hash = hash_module(b"abc");
    // SHA-256("abc") from FIPS 180-2.
    assert_eq!(hash.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(hash.to_string().parse::<ModuleHash>()?, hash);
    assert_eq!(ModuleHash::from_bytes(*hash.as_bytes()), hash);
    assert!("abc".parse::<ModuleHash>().is_err());
    assert!("zz".repeat(32).parse::<ModuleHash>().is_err());
    Ok(())
}
