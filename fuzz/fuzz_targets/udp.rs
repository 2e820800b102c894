//! UDP headers (overlay_proto::wire::udp).
//!
//! Invariants: parse on an unchecked view agrees with the checked path; a checked datagram always parses, and its
//! payload is `length - 8` bytes; emit then parse gives the same Repr; after `fill_checksum_v4`/`_v6` (on the input
//! and on the emitted header) the checksum verifies over the same pseudo-header, and a v6 checksum is never zero.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::udp::{Packet, Repr, HEADER_LEN};

const V4: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
const V6: (Ipv6Addr, Ipv6Addr) =
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));

fuzz_target!(|data: &[u8]| {
    let unchecked = Repr::parse(&Packet::new_unchecked(data));
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    let repr = Repr::parse(&packet).expect("a checked datagram parses");
    assert_eq!(unchecked, Ok(repr));
    assert_eq!(repr.payload_len, packet.payload().len());
    assert_eq!(repr.payload_len + HEADER_LEN, usize::from(packet.len()));
    // Whatever the input's checksum, verification must not panic.
    let _ = packet.verify_checksum_v4(V4.0, V4.1);
    let _ = packet.verify_checksum_v6(&V6.0, &V6.1);

    let mut input = data.to_vec();
    fill_and_verify(&mut input);

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let emitted = Packet::new_checked(&buf[..]).expect("emitted datagram is complete");
    assert_eq!(emitted.checksum(), 0, "emit leaves the checksum to fill_checksum_*");
    assert_eq!(Repr::parse(&emitted), Ok(repr), "round trip changed the header");
    fill_and_verify(&mut buf);
});

fn fill_and_verify(bytes: &mut [u8]) {
    let mut packet = Packet::new_unchecked(&mut bytes[..]);
    packet.fill_checksum_v4(V4.0, V4.1);
    assert!(packet.verify_checksum_v4(V4.0, V4.1), "filled v4 checksum does not verify");
    packet.fill_checksum_v6(&V6.0, &V6.1);
    assert_ne!(packet.checksum(), 0, "a v6 checksum of zero means none");
    assert!(packet.verify_checksum_v6(&V6.0, &V6.1), "filled v6 checksum does not verify");
}
