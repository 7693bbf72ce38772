//! Every CBOR message the network can deliver, decoded from the same arbitrary bytes: the
//! handshake inside TLS (`Hello`, `Welcome`), `Request` and `Response`, a result as the client shows it
//! (`cbor_to_json`), and the host-to-host messages of `agents/wire.rs`: `Signed`, opened
//! (signer, signature, domain, then the body) as the receiving host does, and the bodies
//! (`Envelope`, `Report`, `Recall`, `Call`) decoded directly, since a mutated body no longer
//! matches its signature. Before TLS is up roam decodes only the key the other side presents
//! (`transport::key_of`); rustls parses the rest of the TLS handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roam_fuzz::{cbor, peer};
use roam_host::handshake::{Hello, Welcome};
use roam_host::protocol::wire::{Call, Envelope, Recall, Report, Signed, SignedError, domain, from_cbor};
use roam_host::protocol::{self, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    round_trip(protocol::decode::<Hello>(data));
    round_trip(protocol::decode::<Welcome>(data));
    let _ = roam_host::transport::key_of(data);
    round_trip(protocol::decode::<Response>(data));
    if let Some(request) = round_trip(protocol::decode::<Request>(data)) {
        // What `Host::handle` opens, each with its own domain.
        match request {
            Request::Transfer { envelope, .. } => open::<Envelope>(&envelope, domain::ENVELOPE),
            Request::Report(signed) => open::<Report>(&signed, domain::REPORT),
            Request::RecallAgent(signed) => open::<Recall>(&signed, domain::RECALL),
            Request::Call(signed) => open::<Call>(&signed, domain::CALL),
            _ => {}
        }
    }
    let _ = roam_host::client::cbor_to_json(data);

    if let Some(signed) = round_trip(from_cbor::<Signed>(data, "a signed message")) {
        open::<Envelope>(&signed, domain::ENVELOPE);
        open::<Report>(&signed, domain::REPORT);
        open::<Recall>(&signed, domain::RECALL);
        open::<Call>(&signed, domain::CALL);
    }
    round_trip(from_cbor::<Envelope>(data, "an envelope"));
    round_trip(from_cbor::<Report>(data, "a report"));
    round_trip(from_cbor::<Recall>(data, "a recall"));
    round_trip(from_cbor::<Call>(data, "a call"));
});

/// Whatever decodes encodes, and its encoding decodes to a value with the same encoding.
fn round_trip<T: Serialize + DeserializeOwned, E>(decoded: Result<T, E>) -> Option<T> {
    let value = decoded.ok()?;
    let bytes = cbor(&value);
    let again: T =
        ciborium::from_reader(bytes.as_slice()).unwrap_or_else(|e| panic!("a re-encoded message does not decode: {e}"));
    assert_eq!(cbor(&again), bytes, "re-encoding does not round-trip");
    Some(value)
}

/// Opens `signed` as a host whose only peer is the fixture's, and checks what an accepted
/// message must be.
fn open<T: Serialize + DeserializeOwned>(signed: &Signed, domain: &[u8]) {
    let peer = peer().public();
    match signed.open::<T>(domain, |k| *k == peer) {
        Ok(message) => {
            assert_eq!(signed.signer, peer);
            assert!(signed.body.starts_with(domain));
            let signature: [u8; 64] = signed
                .signature
                .as_slice()
                .try_into()
                .unwrap_or_else(|_| panic!("accepted a signature that is not 64 bytes"));
            assert!(peer.verify_strict(&signed.body, &signature));
            round_trip::<T, ()>(Ok(message));
        }
        Err(SignedError::UntrustedPeer(key)) => assert_ne!(key, peer),
        Err(_) => {}
    }
}
