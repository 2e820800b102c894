//! The gossip wire format (overlay_proto::gossip::message::Message and the codec beneath it).
//!
//! Invariants, for any bytes that decode:
//! - the encoding is canonical: `to_bytes` gives back exactly the input, which decodes to the same value;
//! - the codec is prefix-free: every shorter prefix fails to decode, and one more byte is `TrailingBytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::codec::{Codec, DecodeError};
use overlay_proto::gossip::message::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::from_bytes(data) else { return };
    let _ = message.reliable();
    let encoded = message.to_bytes();
    assert_eq!(encoded, data, "decode then encode changed the bytes of {message:?}");
    assert_eq!(Message::from_bytes(&encoded), Ok(message));
    if let Some((_, prefix)) = data.split_last() {
        assert!(Message::from_bytes(prefix).is_err(), "a prefix of a message decoded");
    }
    let mut longer = data.to_vec();
    longer.push(0);
    assert_eq!(Message::from_bytes(&longer), Err(DecodeError::TrailingBytes));
});
