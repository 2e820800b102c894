//! VXLAN headers (overlay_proto::wire::vxlan).
//!
//! Invariants: parse on an unchecked view agrees with the checked path; parse succeeds exactly when the I flag is
//! set; emit writes `08 00 00 00`, the VNI and `00`, which parses to the same Repr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::vxlan::{Packet, Repr, HEADER_LEN, I_FLAG};

fuzz_target!(|data: &[u8]| {
    let unchecked = Repr::parse(&Packet::new_unchecked(data));
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    let parsed = Repr::parse(&packet);
    assert_eq!(unchecked, parsed);
    assert_eq!(parsed.is_ok(), packet.i_flag());
    assert_eq!(packet.payload().len(), data.len() - HEADER_LEN);
    let Ok(repr) = parsed else { return };
    assert_eq!(&repr.vni.get().to_be_bytes()[1..], &data[4..7]);

    let mut buf = vec![0xffu8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..4], [I_FLAG, 0, 0, 0]);
    assert_eq!(buf[4..7], data[4..7]);
    assert_eq!(buf[7], 0);
    assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).expect("emitted header is complete")), Ok(repr));
});
