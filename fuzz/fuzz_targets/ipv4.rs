//! IPv4 headers (overlay_proto::wire::ipv4).
//!
//! The input is tried twice: as it is, and with its header checksum filled in (`fill_checksum`), so that the
//! fuzzer reaches the code after the checksum check without having to forge checksums.
//!
//! Invariants: parse on an unchecked view agrees with the checked path; after `fill_checksum` the checksum verifies
//! and the header parses; the payload is `total length - header length` bytes; emit then parse gives the same Repr,
//! and the emitted header's checksum verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::ipv4::{Packet, Repr};
use overlay_proto::wire::WireError;

fuzz_target!(|data: &[u8]| {
    check(data);
    if Packet::new_checked(data).is_ok() {
        let mut fixed = data.to_vec();
        Packet::new_unchecked(&mut fixed[..]).fill_checksum();
        let packet = Packet::new_checked(&fixed[..]).expect("filling the checksum keeps the lengths");
        assert!(packet.verify_checksum(), "fill_checksum wrote a checksum that does not verify");
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let unchecked = Repr::parse(&Packet::new_unchecked(data));
    let Ok(packet) = Packet::new_checked(data) else {
        assert!(unchecked.is_err(), "parse accepted what new_checked refused");
        return;
    };
    let parsed = Repr::parse(&packet);
    assert_eq!(unchecked, parsed);
    assert_eq!(parsed.is_err(), !packet.verify_checksum());
    let Ok(repr) = parsed else {
        assert_eq!(parsed, Err(WireError::Checksum));
        return;
    };
    assert_eq!(repr.payload_len, packet.payload().len());
    assert_eq!(repr.payload_len + packet.header_len(), usize::from(packet.total_len()));

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let emitted = Packet::new_checked(&buf[..]).expect("emitted header is complete");
    assert!(emitted.verify_checksum(), "emit wrote a bad checksum");
    assert_eq!(emitted.header_len(), repr.header_len());
    assert_eq!(Repr::parse(&emitted), Ok(repr), "round trip changed the header");
}
