//! The control port's datagram judge (overlay_proto::wire::quic::classify).
//!
//! Input: one byte choosing whether the connection id under test is ours, then the datagram.
//!
//! Invariants: never panics; a datagram passed on as `Local` has the fixed bit and a connection id the check
//! accepted; a `NewInitial` is a v1 long-header Initial in a datagram of at least 1,200 bytes, with a destination
//! connection id of 8 to 20 bytes that the check refused, a packet length within the datagram and room for the
//! header protection sample after the packet number; the empty datagram is `too_short`; and the verdict depends
//! only on the first packet (appending bytes to a datagram judged on its header alone does not change it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::wire::quic::{self, Incoming, QuicDrop};

const CID_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, datagram)) = data.split_first() else {
        assert_eq!(quic::classify(&[], CID_LEN, |_| true), Err(QuicDrop::TooShort));
        return;
    };
    // Ours: every id (choice odd), or those starting with the choice byte.
    let is_local = |cid: &[u8]| choice & 1 == 1 || cid.first() == Some(&choice);
    match quic::classify(datagram, CID_LEN, is_local) {
        Ok(Incoming::Local) => assert!(datagram[0] & 0x40 != 0),
        Ok(Incoming::NewInitial(p)) => {
            assert_eq!(datagram[0] & 0xf0, 0xc0, "not a long-header Initial");
            assert_eq!(datagram[1..5], quic::VERSION_1.to_be_bytes());
            assert!(datagram.len() >= quic::MIN_INITIAL_DATAGRAM);
            assert!((quic::MIN_INITIAL_DCID_LEN..=quic::MAX_CID_LEN).contains(&p.dst_cid.len()));
            assert!(!is_local(p.dst_cid));
            assert_eq!(datagram[5] as usize, p.dst_cid.len());
            assert_eq!(&datagram[6..6 + p.dst_cid.len()], p.dst_cid);
            assert!(p.packet_len <= datagram.len());
            assert!(p.pn_offset + quic::SAMPLE_OFFSET + quic::SAMPLE_LEN <= p.packet_len);
        }
        Err(QuicDrop::InitialUnauthenticated) => panic!("the classifier cannot decide authentication"),
        Err(_) => {}
    }
    // Bytes after the first packet never change a verdict that did not look at the length field.
    let verdict = quic::classify(datagram, CID_LEN, is_local);
    let mut longer = datagram.to_vec();
    longer.extend_from_slice(&[0u8; 16]);
    let after = quic::classify(&longer, CID_LEN, is_local);
    let header_only = matches!(
        verdict,
        Ok(Incoming::Local) | Err(QuicDrop::NotQuic | QuicDrop::UnknownVersion | QuicDrop::UnknownConnection)
    );
    if header_only {
        assert_eq!(verdict.map(|_| ()), after.map(|_| ()));
    }
});
