//! Ethernet II frames with at most one VLAN tag (overlay_proto::wire::ethernet).
//!
//! Invariants, for any bytes that `Frame::new_checked` accepts:
//! - header and payload split the frame exactly, and `Repr::parse` succeeds (the view checked every length);
//! - `Repr::parse` on an unchecked view agrees with the checked path (parse does its own length check);
//! - emit then parse gives the same Repr, and the emitted header is the input's, except that an 802.1ad TPID is
//!   written back as 802.1Q (emit only writes C-tags).
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::ethernet::{ethertype, Frame, Repr};

fuzz_target!(|data: &[u8]| {
    let unchecked = Repr::parse(&Frame::new_unchecked(data));
    let Ok(frame) = Frame::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    assert_eq!(frame.header_len() + frame.payload().len(), data.len());
    let repr = Repr::parse(&frame).expect("a checked frame parses");
    assert_eq!(unchecked, Ok(repr));
    assert_eq!(repr.header_len(), frame.header_len());

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Frame::new_unchecked(&mut buf[..]));
    let again = Repr::parse(&Frame::new_checked(&buf[..]).expect("emitted header is complete"));
    assert_eq!(again, Ok(repr), "round trip changed the header");

    let mut expected = data[..repr.header_len()].to_vec();
    if expected[12..14] == ethertype::QINQ.to_be_bytes() {
        expected[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
    }
    assert_eq!(buf, expected, "emit did not reproduce the header");
});
