//! A module as a host receives it, verified against a fixed trust store with a policy
//! (`roam_keys::verify`, the checks of signing.md), together with the section walker and the
//! unverified claims reader (`roam verify`'s diagnostics) on the same bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use roam_fuzz::{NOW, cbor, trust_store};
use roam_keys::{
    Claims, SIGNATURE_SECTION, TrustStore, VerifyContext, hash_module, read_claims_unverified, sections, verify,
};

static TRUST: LazyLock<TrustStore> = LazyLock::new(trust_store);

fuzz_target!(|data: &[u8]| {
    // The walker splits the module into sections that tile it exactly, in order.
    if let Ok(sections) = sections(data) {
        let mut end = 8;
        for s in &sections {
            assert_eq!(s.range.start, end, "sections leave a gap or overlap");
            assert!(s.range.end > s.range.start && s.range.end <= data.len());
            assert_eq!(s.name.is_some(), s.id == 0);
            end = s.range.end;
        }
        assert_eq!(end, data.len(), "sections do not reach the end of the module");
    }

    let unverified = read_claims_unverified(data);
    if let Ok(claims) = &unverified {
        let again: Claims = ciborium::from_reader(cbor(claims).as_slice())
            .unwrap_or_else(|e| panic!("re-encoded claims do not decode: {e}"));
        assert_eq!(&again, claims, "claims do not round-trip");
    }

    let Ok(verified) = verify(data, &VerifyContext::new(&TRUST, NOW)) else { return };
    // Whatever verifies has exactly one signature section, first, and claims that bind it.
    let claims = verified.claims();
    assert_eq!(unverified.ok().as_ref(), Some(claims));
    let signer = TRUST.get(&claims.signer).unwrap_or_else(|| panic!("verified with an untrusted signer"));
    assert!(!TRUST.is_revoked(&signer.key));
    assert!(claims.not_before <= NOW && NOW < claims.expires);
    assert!(TRUST.allows_kind(&claims.signer, claims.kind));
    assert!(claims.capabilities.iter().all(|c| TRUST.allows(&claims.signer, c)));
    let all = sections(data).unwrap_or_else(|e| panic!("verified a module the walker refuses: {e}"));
    let signatures: Vec<usize> =
        all.iter().enumerate().filter(|(_, s)| s.name == Some(SIGNATURE_SECTION)).map(|(i, _)| i).collect();
    assert_eq!(signatures, [0]);
    let without: Vec<u8> = [&data[..all[0].range.start], &data[all[0].range.end..]].concat();
    assert_eq!(hash_module(&without), verified.hash());
    assert_eq!(hash_module(&without), claims.module_hash);
    assert_eq!(&verified.bytes()[..], data);
});
