//! The outer headers the AF_XDP underlay reads itself (overlay_proto::wire::outer).
//!
//! Invariants: parse never panics; what it accepts has its payload inside the frame, bounded by the UDP length; and
//! emitting the same addresses and payload gives a frame that parses to the same sender, receiver and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::ethernet;
use overlay_proto::wire::outer::{Inbound, Outer};

fuzz_target!(|data: &[u8]| {
    let Ok(inbound) = Inbound::parse(data) else { return };
    assert!(inbound.payload.start <= inbound.payload.end && inbound.payload.end <= data.len());
    assert_eq!(inbound.from.is_ipv4(), inbound.to.is_ipv4());
    let frame = ethernet::Frame::new_checked(data).expect("parse accepted a short frame");
    let outer = Outer { src_mac: frame.src_addr(), dst_mac: frame.dst_addr(), src: inbound.from, dst: inbound.to };
    let payload = &data[inbound.payload.clone()];
    let mut buf = vec![0u8; outer.header_len() + payload.len()];
    buf[outer.header_len()..].copy_from_slice(payload);
    let len = outer.emit(&mut buf, payload.len()).expect("a parsed datagram fits one datagram again");
    assert_eq!(len, buf.len());
    let again = Inbound::parse(&buf).expect("an emitted frame parses");
    assert_eq!((again.from, again.to), (inbound.from, inbound.to));
    assert_eq!(&buf[again.payload], payload);
});
