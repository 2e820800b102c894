//! ARP for IPv4 over Ethernet (overlay_proto::wire::arp).
//!
//! Invariants: parse on an unchecked view agrees with the checked path; a parsed packet is a request or reply, and
//! emitting it reproduces the input's 28 bytes exactly (parse accepts only the one Ethernet/IPv4 layout, so nothing
//! is lost), which then parses to the same Repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::arp::{operation, Packet, Repr, PACKET_LEN};

fuzz_target!(|data: &[u8]| {
    let unchecked = Repr::parse(&Packet::new_unchecked(data));
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    let parsed = Repr::parse(&packet);
    assert_eq!(unchecked, parsed);
    let Ok(repr) = parsed else { return };
    assert!(matches!(repr.operation, operation::REQUEST | operation::REPLY));

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    assert_eq!(&buf[..], &data[..PACKET_LEN], "emit did not reproduce the packet");
    assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).expect("emitted packet is complete")), Ok(repr));
});
