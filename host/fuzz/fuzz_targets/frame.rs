//! The frame reader a host runs on every connection (inside TLS), fed arbitrary bytes: the
//! handshake frame under its 64 KiB cap decoded as a `Hello`, then frames under the default cap
//! decoded as `Request`s until the input ends or a frame is refused, as `server.rs` does.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use roam_fuzz::cbor;
use roam_host::handshake::Hello;
use roam_host::protocol::{self, DEFAULT_MAX_FRAME, FRAME_TIMEOUT, FrameError, Request};
use tokio::runtime::Runtime;

/// The cap on the handshake frame (`server.rs`).
const HELLO_MAX: usize = 64 << 10;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(roam_fuzz::runtime);

fuzz_target!(|data: &[u8]| {
    RUNTIME.block_on(async {
        let mut reader = data;
        if read::<Hello>(&mut reader, HELLO_MAX).await.is_err() {
            return;
        }
        while read::<Request>(&mut reader, DEFAULT_MAX_FRAME).await.is_ok() {}
    });
});

/// Reads one frame and decodes it, checking what holds of every frame read.
async fn read<T>(reader: &mut &[u8], max: usize) -> Result<(), FrameError>
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let before = reader.len();
    let body = match protocol::read_frame(reader, max, FRAME_TIMEOUT).await {
        Ok(body) => body,
        Err(e @ FrameError::TooLarge { size, max: cap }) => {
            // Refused from the header alone: nothing past it was read.
            assert!(size > cap && cap == max);
            assert_eq!(reader.len(), before - 4);
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    assert!(!body.is_empty() && body.len() <= max);
    assert_eq!(reader.len(), before - 4 - body.len(), "a frame consumes its header and body only");
    let message: T = protocol::decode(&body)?;
    // What was decoded encodes, and the encoding decodes to the same encoding.
    let mut frame = Vec::new();
    let encoded = protocol::write_message(&mut frame, &message).await;
    assert!(encoded.is_ok(), "a decoded message does not encode: {encoded:?}");
    let again: Result<T, _> = protocol::read_message(&mut frame.as_slice(), usize::MAX, FRAME_TIMEOUT).await;
    let again = again.unwrap_or_else(|e| panic!("a re-encoded message does not decode: {e}"));
    assert_eq!(cbor(&again), frame[4..], "re-encoding does not round-trip");
    Ok(())
}
