//! IPv6 fixed headers (overlay_proto::wire::ipv6).
//!
//! Invariants: parse on an unchecked view agrees with the checked path; a checked packet always parses, and its
//! payload is exactly the payload length; emit then parse gives the same Repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::ipv6::{Packet, Repr, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let unchecked = Repr::parse(&Packet::new_unchecked(data));
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    let repr = Repr::parse(&packet).expect("a checked packet parses");
    assert_eq!(unchecked, Ok(repr));
    assert_eq!(packet.version(), 6);
    assert_eq!(repr.payload_len, packet.payload().len());
    assert_eq!(repr.header_len(), HEADER_LEN);

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let emitted = Packet::new_checked(&buf[..]).expect("emitted packet is complete");
    assert_eq!((emitted.traffic_class(), emitted.flow_label()), (0, 0));
    assert_eq!(Repr::parse(&emitted), Ok(repr), "round trip changed the header");
});
