//! ICMPv6 messages and the Neighbor Discovery messages NS and NA (overlay_proto::wire::icmpv6).
//!
//! Invariants: parse on an unchecked view agrees with the checked path; iterating the options of any checked
//! message ends without panicking, and the options' bodies fit in the message; a parsed NS/NA has code 0 and a
//! non-multicast target; emit then parse gives the same NdiscRepr; after `fill_checksum` (on the input and on the
//! emitted message) the checksum verifies.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::icmpv6::{message_type, NdiscRepr, Packet, HEADER_LEN};

const SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const DST: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);

fuzz_target!(|data: &[u8]| {
    let unchecked = NdiscRepr::parse(&Packet::new_unchecked(data));
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    assert!(packet.header_len() >= HEADER_LEN && packet.header_len() <= data.len());
    let mut option_bytes = 0;
    for option in packet.options() {
        match option {
            Ok(option) => {
                option_bytes += option.body.len() + 2;
                let _ = option.link_layer_addr();
            }
            Err(_) => break,
        }
    }
    assert!(option_bytes <= data.len());
    let _ = packet.verify_checksum(&SRC, &DST);

    let parsed = NdiscRepr::parse(&packet);
    assert_eq!(unchecked, parsed);

    let mut input = data.to_vec();
    let mut writable = Packet::new_unchecked(&mut input[..]);
    writable.fill_checksum(&SRC, &DST);
    assert!(writable.verify_checksum(&SRC, &DST), "filled checksum does not verify");

    let Ok(repr) = parsed else { return };
    assert_eq!(packet.code(), 0);
    assert!(!repr.target_addr().is_multicast());
    let expected_type = match repr {
        NdiscRepr::NeighborSolicit { .. } => message_type::NEIGHBOR_SOLICIT,
        NdiscRepr::NeighborAdvert { .. } => message_type::NEIGHBOR_ADVERT,
    };
    assert_eq!(packet.msg_type(), expected_type);

    let mut buf = vec![0u8; repr.buffer_len()];
    let mut emitted = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut emitted);
    emitted.fill_checksum(&SRC, &DST);
    let emitted = Packet::new_checked(&buf[..]).expect("emitted message is complete");
    assert!(emitted.verify_checksum(&SRC, &DST));
    assert_eq!(NdiscRepr::parse(&emitted), Ok(repr), "round trip changed the message");
});
