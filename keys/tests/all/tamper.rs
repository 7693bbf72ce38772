//! Flipping any single byte of a signed module never yields a verified module.

use roam_keys::verify;

use crate::{ctx, signed, store};

#[test]
fn every_single_byte_flip_is_refused() {
    let trust = store();
    let c = ctx(&trust);
    let module = signed();
    assert!(verify(module.clone(), &c).is_ok());
    for at in 0..module.len() {
        for mask in [0x01u8, 0x80] {
            let mut flipped = module.clone();
            flipped[at] ^= mask;
            if let Ok(m) = verify(flipped, &c) {
                panic!("flipping byte {at} with {mask:#04x} still verified: {:?}", m.claims());
            }
        }
    }
}
