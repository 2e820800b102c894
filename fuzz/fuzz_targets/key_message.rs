//! The keying wire format (overlay_proto::keying::KeyMessage): X25519 offers and accepts, confirms, requests.
//!
//! Invariants, for any bytes that decode: the encoding is canonical (`to_bytes` gives back exactly the input, which
//! decodes to the same value); SPIs are never zero; the codec is prefix-free.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::codec::{Codec, DecodeError};
use overlay_proto::keying::KeyMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = KeyMessage::from_bytes(data) else { return };
    if let KeyMessage::Offer { spi, .. } | KeyMessage::Accept { spi, .. } = message {
        assert_ne!(spi, 0, "SPI 0 is reserved (RFC 4303 §2.1)");
    }
    let encoded = message.to_bytes();
    assert_eq!(encoded, data, "decode then encode changed the bytes of {message:?}");
    assert_eq!(KeyMessage::from_bytes(&encoded), Ok(message));
    if let Some((_, prefix)) = data.split_last() {
        assert!(KeyMessage::from_bytes(prefix).is_err(), "a prefix of a message decoded");
    }
    let mut longer = data.to_vec();
    longer.push(0);
    assert_eq!(KeyMessage::from_bytes(&longer), Err(DecodeError::TrailingBytes));
});
