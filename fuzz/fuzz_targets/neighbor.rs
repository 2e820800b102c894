//! The ARP/ND responder and source snooping (overlay_proto::neighbor) on arbitrary frames.
//!
//! The input is tried as it is, and with its IPv4 header checksum and ICMPv6 checksum filled in, so that the
//! fuzzer reaches Neighbor Solicitation handling without forging checksums.
//!
//! Invariants:
//! - `answer` gives a reply exactly when `query` sees a query, and never writes past a too-small buffer (it says
//!   None instead);
//! - the reply keeps the request's Ethernet header (VLAN tag included) but for the addresses: from the answering MAC
//!   to the requester (for ARP, the sender hardware address of the request; for ND, the frame's source);
//! - an ARP reply parses as a reply from (MAC, queried address) to the requester's (MAC, address);
//! - an NA parses as IPv6 (hop limit 255, from the target to the solicitation's source) carrying an ICMPv6 NA whose
//!   checksum verifies, with the Solicited and Override flags and the MAC as its target link-layer address;
//! - a reply is never itself a query;
//! - `source` gives the frame's own source MAC, never a group address, and only usable unicast IPs.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use overlay_proto::neighbor::{answer, query, source, NeighborQuery};
use overlay_proto::wire::ethernet::{ethertype, Frame};
use overlay_proto::wire::icmpv6::{NdiscRepr, NeighborFlags};
use overlay_proto::wire::ipv4::protocol;
use overlay_proto::wire::{arp, icmpv6, ipv4, ipv6};
use overlay_proto::MacAddr;

const MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = with_checksums(data) {
        check(&fixed);
    }
});

fn check(frame: &[u8]) {
    check_source(frame);
    let asked = query(frame);
    let mut out = [0u8; 128];
    let reply = answer(frame, MAC, &mut out);
    assert_eq!(asked.is_some(), reply.is_some(), "query and answer disagree");
    let (Some(asked), Some(len)) = (asked, reply) else { return };
    // One byte short is refused rather than written past.
    assert_eq!(answer(frame, MAC, &mut vec![0u8; len - 1]), None);

    let request = Frame::new_checked(frame).expect("a query is a frame");
    let reply = Frame::new_checked(&out[..len]).expect("the reply is a frame");
    assert_eq!(reply.src_addr(), MAC);
    assert_eq!(reply.header_len(), request.header_len());
    assert_eq!(out[12..reply.header_len()], frame[12..request.header_len()], "the tag and ethertype changed");

    match asked {
        NeighborQuery::Arp { target } => {
            assert_eq!(reply.ethertype(), ethertype::ARP);
            let request_arp = arp::Repr::parse(&arp::Packet::new_checked(request.payload()).unwrap()).unwrap();
            let arp = arp::Repr::parse(&arp::Packet::new_checked(reply.payload()).expect("ARP is complete"));
            let expected = arp::Repr {
                operation: arp::operation::REPLY,
                sender_hardware_addr: MAC,
                sender_protocol_addr: target,
                target_hardware_addr: request_arp.sender_hardware_addr,
                target_protocol_addr: request_arp.sender_protocol_addr,
            };
            assert_eq!(arp, Ok(expected));
            // RFC 826: the reply goes to the requester's hardware address as the ARP packet gives it.
            assert_eq!(reply.dst_addr(), request_arp.sender_hardware_addr);
            assert_eq!(target, request_arp.target_protocol_addr);
        }
        NeighborQuery::Solicit { target } => {
            assert_eq!(reply.ethertype(), ethertype::IPV6);
            let request_ip = ipv6::Packet::new_checked(request.payload()).unwrap();
            let ip = ipv6::Packet::new_checked(reply.payload()).expect("IPv6 is complete");
            let ip_repr = ipv6::Repr::parse(&ip).unwrap();
            assert_eq!(reply.dst_addr(), request.src_addr());
            assert_eq!(ip_repr.src_addr, target);
            assert_eq!(ip_repr.dst_addr, request_ip.src_addr());
            assert_eq!(ip_repr.next_header, protocol::ICMPV6);
            assert_eq!(ip_repr.hop_limit, 255);
            assert_eq!(ip.payload().len(), ip_repr.payload_len);
            let message = icmpv6::Packet::new_checked(ip.payload()).expect("NA is complete");
            assert!(message.verify_checksum(&ip_repr.src_addr, &ip_repr.dst_addr), "NA checksum does not verify");
            let expected = NdiscRepr::NeighborAdvert {
                flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
                target_addr: target,
                lladdr: Some(MAC),
            };
            assert_eq!(NdiscRepr::parse(&message), Ok(expected));
        }
    }
    assert_eq!(query(&out[..len]), None, "a reply must not read as a query");
}

fn check_source(frame: &[u8]) {
    let Some((mac, ip)) = source(frame) else { return };
    let parsed = Frame::new_checked(frame).expect("source read a frame");
    assert_eq!(mac, parsed.src_addr());
    assert!(mac.is_unicast());
    match ip {
        Some(IpAddr::V4(v4)) => {
            assert!(!(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback()))
        }
        Some(IpAddr::V6(v6)) => assert!(!(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback())),
        None => {}
    }
}

/// The frame with a correct IPv4 header checksum, or a correct ICMPv6 checksum; None if it has neither.
fn with_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let frame = Frame::new_checked(data).ok()?;
    let header_len = frame.header_len();
    let mut fixed = data.to_vec();
    let payload = &mut fixed[header_len..];
    match frame.ethertype() {
        ethertype::IPV4 => {
            ipv4::Packet::new_checked(&*payload).ok()?;
            ipv4::Packet::new_unchecked(payload).fill_checksum();
        }
        ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(&*payload).ok()?;
            if ip.next_header() != protocol::ICMPV6 || ip.payload().len() < icmpv6::HEADER_LEN {
                return None;
            }
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let mut ip = ipv6::Packet::new_unchecked(payload);
            icmpv6::Packet::new_unchecked(ip.payload_mut()).fill_checksum(&src, &dst);
        }
        _ => return None,
    }
    (fixed != data).then_some(fixed)
}
