//! The ARP and IPv6 Neighbor Discovery responder behind ARP/ND suppression, and the source-address snooping that
//! feeds it.
//!
//! A VTEP that knows which MAC owns an IP address can answer a local endpoint's ARP request (RFC 826) or Neighbor
//! Solicitation (RFC 4861 §4.3) itself, instead of flooding the query to every VTEP of the network:
//!
//! ```text
//!   TAP frame ──► query(frame) ──► Arp { target } | Solicit { target } ──► caller looks the target up
//!                                                                        ├─ known: answer(frame, mac, out) ──► TAP
//!                                                                        └─ unknown: forward as usual (flood)
//!   TAP frame ──► source(frame) ──► (MAC, IP) a local endpoint uses ──► caller records it for the lookup above
//! ```
//!
//! Pure functions over bytes: no table, no state, no allocation. Which queries to answer, and the table of
//! addresses, are the caller's. Packets that announce or check an address rather than ask for its owner are not
//! queries, so they keep reaching the other endpoints: gratuitous ARP (RFC 5227 §2.3, RFC 5944 §4.6), ARP probes
//! (RFC 5227 §2.1.1) and Duplicate Address Detection (RFC 4862 §5.4.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::MacAddr;
use crate::wire::ethernet::ethertype;
use crate::wire::icmpv6::{NdiscRepr, NeighborFlags};
use crate::wire::ipv4::protocol;
use crate::wire::{arp, ethernet, icmpv6, ipv4, ipv6};

/// The hop limit of every Neighbor Discovery message: a receiver discards one with any other, since it may have
/// crossed a router (RFC 4861 §7.1.1, §7.1.2).
const ND_HOP_LIMIT: u8 = 255;

/// What a frame read from a TAP asks about, if it is an ARP request or an IPv6 Neighbor Solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighborQuery {
    /// An ARP request for the MAC of `target`.
    Arp {
        /// The address asked about.
        target: Ipv4Addr,
    },
    /// A Neighbor Solicitation for the MAC of `target`.
    Solicit {
        /// The address asked about.
        target: Ipv6Addr,
    },
}

/// Whether `frame` is an ARP request or a Neighbor Solicitation that [`answer`] can answer, and for which address.
///
/// An ARP request counts if it is Ethernet/IPv4 and neither a probe (sender address 0.0.0.0) nor an announcement
/// (sender address equal to the target). A Neighbor Solicitation counts if it passes the checks of RFC 4861 §7.1.1
/// (hop limit 255, valid checksum, code 0, well-formed options, unicast target) and is not a Duplicate Address
/// Detection probe (source ::). Either must come from a unicast MAC, which the answer goes back to.
pub fn query(frame: &[u8]) -> Option<NeighborQuery> {
    Request::parse(frame).map(|request| match request.kind {
        RequestKind::Arp { target, .. } => NeighborQuery::Arp { target },
        RequestKind::Solicit { target, .. } => NeighborQuery::Solicit { target },
    })
}

/// Whether `frame` belongs to a gateway of the network rather than to the overlay: an ARP packet whose sender or
/// target address is one of `gateways`, a Neighbor Solicitation for one, or any IPv4/IPv6 packet sent from one.
///
/// Every host's bridge holds the same gateway address with its own MAC, so such frames must stay on the host they
/// were sent on: a query for the gateway that crossed to another host would be answered with that host's bridge
/// MAC, and the bridge's own ARP and ND traffic would overwrite other hosts' neighbour entries. The responder also
/// must not answer for a gateway from the table: our Neighbor Advertisements have the Router flag clear, and a host
/// that receives one for its router drops it from its default router list (RFC 4861 §7.2.5).
pub fn gateway_frame(frame: &[u8], gateways: &[IpAddr]) -> bool {
    if gateways.is_empty() {
        return false;
    }
    let Ok(eth) = ethernet::Frame::new_checked(frame) else { return false };
    let is_gateway = |ip: IpAddr| gateways.contains(&ip);
    match eth.ethertype() {
        ethertype::ARP => {
            arp::Packet::new_checked(eth.payload()).ok().and_then(|p| arp::Repr::parse(&p).ok()).is_some_and(|a| {
                is_gateway(IpAddr::V4(a.sender_protocol_addr)) || is_gateway(IpAddr::V4(a.target_protocol_addr))
            })
        }
        ethertype::IPV4 => ipv4::Packet::new_checked(eth.payload()).is_ok_and(|p| is_gateway(IpAddr::V4(p.src_addr()))),
        ethertype::IPV6 => {
            let from_gateway =
                ipv6::Packet::new_checked(eth.payload()).is_ok_and(|p| is_gateway(IpAddr::V6(p.src_addr())));
            from_gateway
                || matches!(query(frame), Some(NeighborQuery::Solicit { target }) if is_gateway(IpAddr::V6(target)))
        }
        _ => false,
    }
}

/// Writes the reply frame answering `request` (an ARP request or NS frame) with `mac` owning the queried address into
/// `out`; returns its length, or None if `request` is not a query or `out` is too small.
///
/// The reply keeps the request's VLAN tag, if it has one, and goes to the requester's MAC.
/// - ARP: a reply (RFC 826) from `mac` with sender (`mac`, target address) and target the requester's addresses.
/// - ND: a Neighbor Advertisement (RFC 4861 §7.2.4) from the target address to the solicitation's source, with the
///   Solicited and Override flags, the Router flag clear, and a Target Link-Layer Address option holding `mac`.
///
///   The Router flag is clear because the caller's table does not say which endpoints are routers. A host that had
///   the target as a router drops it from its default router list on such an answer (RFC 4861 §7.2.5), so callers
///   should not answer solicitations for routers' addresses.
///
/// No Ethernet padding is added: a TAP device takes short frames.
pub fn answer(request: &[u8], mac: MacAddr, out: &mut [u8]) -> Option<usize> {
    let request = Request::parse(request)?;
    let header_len = request.header.len();
    let len = header_len + request.kind.reply_len();
    let out = out.get_mut(..len)?;
    // Copying the header keeps the tag exactly: its TPID (802.1Q or 802.1ad), priority and VLAN id.
    out[..header_len].copy_from_slice(request.header);
    let mut frame = ethernet::Frame::new_unchecked(out);
    frame.set_src_addr(mac);
    match request.kind {
        RequestKind::Arp { sender_hardware_addr, sender_protocol_addr, target } => {
            frame.set_dst_addr(sender_hardware_addr);
            let reply = arp::Repr {
                operation: arp::operation::REPLY,
                sender_hardware_addr: mac,
                sender_protocol_addr: target,
                target_hardware_addr: sender_hardware_addr,
                target_protocol_addr: sender_protocol_addr,
            };
            reply.emit(&mut arp::Packet::new_unchecked(frame.payload_mut()));
        }
        RequestKind::Solicit { src_addr, target } => {
            frame.set_dst_addr(request.requester);
            let advert = advert(target, mac);
            let ip = ipv6::Repr {
                src_addr: target,
                dst_addr: src_addr,
                next_header: protocol::ICMPV6,
                payload_len: advert.buffer_len(),
                hop_limit: ND_HOP_LIMIT,
            };
            let mut ip_packet = ipv6::Packet::new_unchecked(frame.payload_mut());
            ip.emit(&mut ip_packet);
            let mut message = icmpv6::Packet::new_unchecked(ip_packet.payload_mut());
            advert.emit(&mut message);
            message.fill_checksum(&target, &src_addr);
        }
    }
    Some(len)
}

/// The source MAC and, if the frame carries one, the source IP address of a frame that a local endpoint sent: ARP
/// sender protocol address (requests and replies, also gratuitous), IPv4 source (not 0.0.0.0, not
/// multicast/broadcast), IPv6 source (not ::, not multicast), NS/NA source. None for frames whose source MAC is a
/// group address.
///
/// Beyond that, no IP address is given for loopback sources, which never belong on a link (RFC 1122 §3.2.1.3,
/// RFC 4291 §2.5.3); for IPv4 headers whose checksum fails; or for ARP packets whose sender hardware address is not
/// the frame's source, since the binding they claim is not the sender's own (proxy ARP, or spoofing).
pub fn source(frame: &[u8]) -> Option<(MacAddr, Option<IpAddr>)> {
    let frame = ethernet::Frame::new_checked(frame).ok()?;
    let mac = frame.src_addr();
    if mac.is_multicast() {
        return None;
    }
    let ip = match frame.ethertype() {
        ethertype::ARP => arp_source(frame.payload(), mac).map(IpAddr::V4),
        ethertype::IPV4 => ipv4_source(frame.payload()).map(IpAddr::V4),
        ethertype::IPV6 => ipv6_source(frame.payload()).map(IpAddr::V6),
        _ => None,
    };
    Some((mac, ip))
}

fn arp_source(packet: &[u8], mac: MacAddr) -> Option<Ipv4Addr> {
    let arp = arp::Repr::parse(&arp::Packet::new_checked(packet).ok()?).ok()?;
    (arp.sender_hardware_addr == mac).then_some(arp.sender_protocol_addr).filter(is_usable_v4)
}

fn ipv4_source(packet: &[u8]) -> Option<Ipv4Addr> {
    let ip = ipv4::Repr::parse(&ipv4::Packet::new_checked(packet).ok()?).ok()?;
    Some(ip.src_addr).filter(is_usable_v4)
}

fn ipv6_source(packet: &[u8]) -> Option<Ipv6Addr> {
    let src = ipv6::Packet::new_checked(packet).ok()?.src_addr();
    (!src.is_unspecified() && !src.is_multicast() && !src.is_loopback()).then_some(src)
}

/// Whether an IPv4 source address can be an endpoint's own.
fn is_usable_v4(addr: &Ipv4Addr) -> bool {
    !addr.is_unspecified() && !addr.is_multicast() && !addr.is_broadcast() && !addr.is_loopback()
}

/// The Neighbor Advertisement answering a solicitation for `target`, owned by `mac`.
fn advert(target: Ipv6Addr, mac: MacAddr) -> NdiscRepr {
    NdiscRepr::NeighborAdvert {
        flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
        target_addr: target,
        lladdr: Some(mac),
    }
}

/// A query frame, with what its answer needs.
struct Request<'a> {
    /// The Ethernet header, with the VLAN tag if there is one.
    header: &'a [u8],
    /// The frame's source.
    requester: MacAddr,
    kind: RequestKind,
}

enum RequestKind {
    Arp { sender_hardware_addr: MacAddr, sender_protocol_addr: Ipv4Addr, target: Ipv4Addr },
    Solicit { src_addr: Ipv6Addr, target: Ipv6Addr },
}

impl<'a> Request<'a> {
    fn parse(frame: &'a [u8]) -> Option<Self> {
        let ethernet = ethernet::Frame::new_checked(frame).ok()?;
        let requester = ethernet.src_addr();
        if requester.is_multicast() {
            return None;
        }
        let kind = match ethernet.ethertype() {
            ethertype::ARP => parse_arp_request(ethernet.payload())?,
            ethertype::IPV6 => parse_solicit(ethernet.payload())?,
            _ => return None,
        };
        Some(Self { header: &frame[..ethernet.header_len()], requester, kind })
    }
}

impl RequestKind {
    /// Length of the reply after the Ethernet header.
    fn reply_len(&self) -> usize {
        match *self {
            Self::Arp { .. } => arp::PACKET_LEN,
            // The address is a placeholder: only the shape of the advertisement matters here.
            Self::Solicit { target, .. } => ipv6::HEADER_LEN + advert(target, MacAddr::default()).buffer_len(),
        }
    }
}

fn parse_arp_request(packet: &[u8]) -> Option<RequestKind> {
    let arp = arp::Repr::parse(&arp::Packet::new_checked(packet).ok()?).ok()?;
    let asks = arp.operation == arp::operation::REQUEST
        // RFC 5227 §2.1.1: a probe has sender address 0; it checks whether the address is free, and answering it
        // would tell the prober that it is taken.
        && !arp.sender_protocol_addr.is_unspecified()
        // RFC 5227 §2.3: an announcement (gratuitous ARP) asks for its own address, to update others' caches.
        && arp.sender_protocol_addr != arp.target_protocol_addr
        // The reply goes to this address.
        && arp.sender_hardware_addr.is_unicast();
    asks.then_some(RequestKind::Arp {
        sender_hardware_addr: arp.sender_hardware_addr,
        sender_protocol_addr: arp.sender_protocol_addr,
        target: arp.target_protocol_addr,
    })
}

fn parse_solicit(packet: &[u8]) -> Option<RequestKind> {
    let ip = ipv6::Packet::new_checked(packet).ok()?;
    let (src_addr, dst_addr) = (ip.src_addr(), ip.dst_addr());
    // RFC 4861 §7.1.1. An unspecified source is Duplicate Address Detection (RFC 4862 §5.4.2), which must see no
    // answer unless the address is really taken; a multicast source is never valid (RFC 4291 §2.7).
    if ip.next_header() != protocol::ICMPV6
        || ip.hop_limit() != ND_HOP_LIMIT
        || src_addr.is_unspecified()
        || src_addr.is_multicast()
    {
        return None;
    }
    let message = icmpv6::Packet::new_checked(ip.payload()).ok()?;
    if !message.verify_checksum(&src_addr, &dst_addr) {
        return None;
    }
    match NdiscRepr::parse(&message).ok()? {
        NdiscRepr::NeighborSolicit { target_addr, .. } => Some(RequestKind::Solicit { src_addr, target: target_addr }),
        NdiscRepr::NeighborAdvert { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::icmpv6::option_type;

    /// The requesting endpoint.
    const HOST: MacAddr = MacAddr([0x02, 0x19, 0x00, 0x00, 0x01, 0x01]);
    /// The endpoint that owns the address asked about, on whose behalf the VTEP answers.
    const OWNER: MacAddr = MacAddr([0x02, 0x19, 0x00, 0x00, 0x00, 0x21]);
    const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
    const OWNER_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
    /// fe80::19:ff:fe00:101, HOST's link-local address.
    const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x19, 0xff, 0xfe00, 0x101);
    const OWNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x21);
    /// ff02::1:ff00:21, OWNER_V6's solicited-node multicast address.
    const SOLICITED_NODE: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x21);

    /// HOST (198.19.1.1) broadcasts who has 198.19.1.2.
    const ARP_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // source: HOST
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet, IPv4, address lengths
        0x00, 0x01, // request
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // sender MAC: HOST
        0xc6, 0x13, 0x01, 0x01, // sender IP: 198.19.1.1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC, unknown
        0xc6, 0x13, 0x01, 0x02, // target IP: 198.19.1.2
    ];

    /// The same request in VLAN 100 with priority 5, 802.1Q-tagged.
    const ARP_REQUEST_TAGGED: [u8; 46] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // source: HOST
        0x81, 0x00, 0xa0, 0x64, // 802.1Q, priority 5, VLAN 100
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet, IPv4, address lengths
        0x00, 0x01, // request
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // sender MAC: HOST
        0xc6, 0x13, 0x01, 0x01, // sender IP: 198.19.1.1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC, unknown
        0xc6, 0x13, 0x01, 0x02, // target IP: 198.19.1.2
    ];

    /// HOST_V6 asks the solicited-node group who has 2001:db8:19::21 (the ICMPv6 fixture of `wire::icmpv6`, whose
    /// checksum tshark reports correct).
    const SOLICIT: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x21, // destination: 33:33 + the group's low 32 bits (RFC 2464 §7)
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // source: HOST
        0x86, 0xdd, // IPv6
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class and flow label 0
        0x00, 0x20, 0x3a, 0xff, // payload length 32, ICMPv6, hop limit 255
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x00, 0x19, 0x00, 0xff, 0xfe, 0x00, 0x01, 0x01, // source: HOST_V6
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0x00, 0x00, 0x21, // destination: SOLICITED_NODE
        0x87, 0x00, 0x49, 0xd6, // Neighbor Solicitation, code 0, checksum
        0x00, 0x00, 0x00, 0x00, // reserved
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21, // target: OWNER_V6
        0x01, 0x01, 0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // Source Link-Layer Address: HOST
    ];

    /// OWNER's answer to SOLICIT, as `answer` writes it; tshark reads it as a valid Neighbor Advertisement.
    const ADVERT: [u8; 86] = [
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // destination: HOST
        0x02, 0x19, 0x00, 0x00, 0x00, 0x21, // source: OWNER
        0x86, 0xdd, // IPv6
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class and flow label 0
        0x00, 0x20, 0x3a, 0xff, // payload length 32, ICMPv6, hop limit 255
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21, // source: OWNER_V6
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x00, 0x19, 0x00, 0xff, 0xfe, 0x00, 0x01, 0x01, // destination: HOST_V6
        0x88, 0x00, 0xb8, 0xe8, // Neighbor Advertisement, code 0, checksum
        0x60, 0x00, 0x00, 0x00, // Solicited, Override
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21, // target: OWNER_V6
        0x02, 0x01, 0x02, 0x19, 0x00, 0x00, 0x00, 0x21, // Target Link-Layer Address: OWNER
    ];

    /// HOST sends 198.19.1.1 → 198.19.1.2, UDP 49152 → 4789 with no payload and no UDP checksum.
    const IPV4_UDP: [u8; 42] = [
        0x02, 0x19, 0x00, 0x00, 0x00, 0x21, // destination: OWNER
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // source: HOST
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x1c, // version 4, IHL 5, total length 28
        0x00, 0x00, 0x40, 0x00, // ident 0, DF
        0x40, 0x11, 0xac, 0xa7, // TTL 64, UDP, checksum
        0xc6, 0x13, 0x01, 0x01, // source: 198.19.1.1
        0xc6, 0x13, 0x01, 0x02, // destination: 198.19.1.2
        0xc0, 0x00, 0x12, 0xb5, 0x00, 0x08, 0x00, 0x00, // UDP header
    ];

    /// HOST sends 2001:db8:19::1 → 2001:db8:19::2 with No Next Header and no payload.
    const IPV6_EMPTY: [u8; 54] = [
        0x02, 0x19, 0x00, 0x00, 0x00, 0x21, // destination: OWNER
        0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // source: HOST
        0x86, 0xdd, // IPv6
        0x60, 0x00, 0x00, 0x00, // version 6, traffic class and flow label 0
        0x00, 0x00, 0x3b, 0x40, // payload length 0, No Next Header, hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination
    ];

    /// A copy of `frame` changed by `edit`.
    fn edited<const N: usize>(frame: [u8; N], edit: impl FnOnce(&mut [u8])) -> [u8; N] {
        let mut frame = frame;
        edit(&mut frame);
        frame
    }

    /// The ARP packet of an untagged frame, mutably.
    fn arp_of(frame: &mut [u8]) -> arp::Packet<&mut [u8]> {
        arp::Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..])
    }

    /// The IPv6 packet of an untagged frame, mutably.
    fn ipv6_of(frame: &mut [u8]) -> ipv6::Packet<&mut [u8]> {
        ipv6::Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..])
    }

    /// Recomputes the ICMPv6 checksum of an untagged frame after an edit.
    fn refill_checksum(frame: &mut [u8]) {
        let mut ip = ipv6_of(frame);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        icmpv6::Packet::new_unchecked(ip.payload_mut()).fill_checksum(&src, &dst);
    }

    fn answered(request: &[u8]) -> Vec<u8> {
        let mut out = [0u8; 128];
        let len = answer(request, OWNER, &mut out).expect("a query");
        out[..len].to_vec()
    }

    #[test]
    fn gateway_frames_are_recognised() {
        let none: &[IpAddr] = &[];
        assert!(!gateway_frame(&ARP_REQUEST, none));
        // A query for the gateway, and the gateway's own queries (sender address).
        assert!(gateway_frame(&ARP_REQUEST, &[IpAddr::V4(OWNER_V4)]));
        assert!(gateway_frame(&ARP_REQUEST, &[IpAddr::V4(HOST_V4)]));
        assert!(!gateway_frame(&ARP_REQUEST, &[IpAddr::V4(Ipv4Addr::new(198, 19, 1, 9))]));
        // A solicitation for the gateway, and packets the gateway sends.
        assert!(gateway_frame(&SOLICIT, &[IpAddr::V6(OWNER_V6)]));
        assert!(gateway_frame(&SOLICIT, &[IpAddr::V6(HOST_V6)]));
        assert!(!gateway_frame(&SOLICIT, &[IpAddr::V4(OWNER_V4)]));
        assert!(gateway_frame(&IPV4_UDP, &[IpAddr::V4(HOST_V4)]));
        // Packets to the gateway's address are routed through it (egress), not for other hosts' bridges, but the
        // bridge consumes them by MAC before weft sees them: only sources count.
        assert!(!gateway_frame(&IPV4_UDP, &[IpAddr::V4(Ipv4Addr::new(198, 19, 1, 2))]));
        assert!(!gateway_frame(&ARP_REQUEST[..20], &[IpAddr::V4(OWNER_V4)]));
    }

    #[test]
    fn arp_request_is_answered() {
        assert_eq!(query(&ARP_REQUEST), Some(NeighborQuery::Arp { target: OWNER_V4 }));
        let reply = answered(&ARP_REQUEST);
        assert_eq!(reply.len(), ethernet::HEADER_LEN + arp::PACKET_LEN);

        let frame = ethernet::Frame::new_checked(&reply[..]).unwrap();
        assert_eq!(
            ethernet::Repr::parse(&frame),
            Ok(ethernet::Repr { src_addr: OWNER, dst_addr: HOST, vlan_tci: None, ethertype: ethertype::ARP })
        );
        let packet = arp::Packet::new_checked(frame.payload()).unwrap();
        assert_eq!((packet.hardware_type(), packet.protocol_type()), (1, ethertype::IPV4));
        assert_eq!((packet.hardware_len(), packet.protocol_len()), (6, 4));
        assert_eq!(
            arp::Repr::parse(&packet),
            Ok(arp::Repr {
                operation: arp::operation::REPLY,
                sender_hardware_addr: OWNER,
                sender_protocol_addr: OWNER_V4,
                target_hardware_addr: HOST,
                target_protocol_addr: HOST_V4,
            })
        );
        // A reply is not itself a query.
        assert_eq!(query(&reply), None);
    }

    #[test]
    fn arp_reply_goes_to_the_sender_hardware_address() {
        // Ethernet source and ARP sender differ (a proxy): the ARP sender is who asked.
        let proxy = MacAddr([0x02, 0x19, 0x00, 0x00, 0x09, 0x09]);
        let request = edited(ARP_REQUEST, |f| ethernet::Frame::new_unchecked(f).set_src_addr(proxy));
        let reply = answered(&request);
        assert_eq!(ethernet::Frame::new_checked(&reply[..]).unwrap().dst_addr(), HOST);
    }

    #[test]
    fn padded_arp_request_is_answered() {
        let mut padded = [0u8; 60];
        padded[..ARP_REQUEST.len()].copy_from_slice(&ARP_REQUEST);
        assert_eq!(answered(&padded), answered(&ARP_REQUEST));
    }

    #[test]
    fn announcements_and_probes_are_not_queries() {
        let gratuitous = edited(ARP_REQUEST, |f| arp_of(f).set_target_protocol_addr(HOST_V4));
        let probe = edited(ARP_REQUEST, |f| arp_of(f).set_sender_protocol_addr(Ipv4Addr::UNSPECIFIED));
        let reply = edited(ARP_REQUEST, |f| arp_of(f).set_operation(arp::operation::REPLY));
        let rarp = edited(ARP_REQUEST, |f| arp_of(f).set_operation(3));
        let group_sender = edited(ARP_REQUEST, |f| arp_of(f).set_sender_hardware_addr(MacAddr::BROADCAST));
        let group_source = edited(ARP_REQUEST, |f| ethernet::Frame::new_unchecked(f).set_src_addr(MacAddr::BROADCAST));
        for (name, frame) in [
            ("gratuitous", gratuitous),
            ("probe", probe),
            ("reply", reply),
            ("RARP", rarp),
            ("group sender", group_sender),
            ("group source", group_source),
        ] {
            assert_eq!(query(&frame), None, "{name}");
            assert_eq!(answer(&frame, OWNER, &mut [0; 128]), None, "{name}");
        }
    }

    #[test]
    fn tagged_arp_request_gets_a_tagged_reply() {
        assert_eq!(query(&ARP_REQUEST_TAGGED), Some(NeighborQuery::Arp { target: OWNER_V4 }));
        let reply = answered(&ARP_REQUEST_TAGGED);
        assert_eq!(reply.len(), ethernet::HEADER_LEN + ethernet::VLAN_TAG_LEN + arp::PACKET_LEN);
        let frame = ethernet::Frame::new_checked(&reply[..]).unwrap();
        assert_eq!(
            ethernet::Repr::parse(&frame),
            Ok(ethernet::Repr { src_addr: OWNER, dst_addr: HOST, vlan_tci: Some(0xa064), ethertype: ethertype::ARP })
        );
        // The tagged reply carries the same ARP packet as the untagged one.
        assert_eq!(frame.payload(), &answered(&ARP_REQUEST)[ethernet::HEADER_LEN..]);

        // An 802.1ad tag stays one. On a tagged frame, `set_ethertype` writes the TPID.
        let service = edited(ARP_REQUEST_TAGGED, |f| ethernet::Frame::new_unchecked(f).set_ethertype(ethertype::QINQ));
        let header_len = ethernet::HEADER_LEN + ethernet::VLAN_TAG_LEN;
        let mut expected = service;
        let mut header = ethernet::Frame::new_unchecked(&mut expected[..]);
        header.set_dst_addr(HOST);
        header.set_src_addr(OWNER);
        assert_eq!(answered(&service)[..header_len], expected[..header_len]);
    }

    #[test]
    fn solicit_is_answered() {
        assert_eq!(query(&SOLICIT), Some(NeighborQuery::Solicit { target: OWNER_V6 }));
        let reply = answered(&SOLICIT);
        assert_eq!(reply.len(), ethernet::HEADER_LEN + ipv6::HEADER_LEN + 32);

        let frame = ethernet::Frame::new_checked(&reply[..]).unwrap();
        assert_eq!(
            ethernet::Repr::parse(&frame),
            Ok(ethernet::Repr { src_addr: OWNER, dst_addr: HOST, vlan_tci: None, ethertype: ethertype::IPV6 })
        );
        let ip = ipv6::Packet::new_checked(frame.payload()).unwrap();
        assert_eq!((ip.traffic_class(), ip.flow_label()), (0, 0));
        assert_eq!(
            ipv6::Repr::parse(&ip),
            Ok(ipv6::Repr {
                src_addr: OWNER_V6,
                dst_addr: HOST_V6,
                next_header: protocol::ICMPV6,
                payload_len: 32,
                hop_limit: 255,
            })
        );
        let message = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert!(message.verify_checksum(&OWNER_V6, &HOST_V6));
        assert_eq!((message.msg_type(), message.code()), (icmpv6::message_type::NEIGHBOR_ADVERT, 0));
        let flags = message.neighbor_flags();
        assert!(!flags.is_router() && flags.is_solicited() && flags.is_override());
        assert_eq!(message.target_addr(), OWNER_V6);
        let options: Vec<_> = message.options().map(Result::unwrap).collect();
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].option_type, option_type::TARGET_LINK_LAYER_ADDR);
        assert_eq!(options[0].link_layer_addr(), Some(OWNER));
        assert_eq!(
            NdiscRepr::parse(&message),
            Ok(NdiscRepr::NeighborAdvert { flags, target_addr: OWNER_V6, lladdr: Some(OWNER) })
        );
        assert_eq!(reply, ADVERT);
        // An advertisement is not a query.
        assert_eq!(query(&reply), None);
    }

    #[test]
    fn unicast_solicit_without_link_layer_address_is_answered() {
        // Neighbor Unreachability Detection: unicast to the target, from the cached MAC, often without the option.
        let mut frame = [0u8; 78];
        frame.copy_from_slice(&SOLICIT[..78]);
        ethernet::Frame::new_unchecked(&mut frame[..]).set_dst_addr(OWNER);
        let mut ip = ipv6_of(&mut frame);
        ip.set_payload_len(24);
        ip.set_dst_addr(OWNER_V6);
        refill_checksum(&mut frame);
        assert_eq!(query(&frame), Some(NeighborQuery::Solicit { target: OWNER_V6 }));
        assert_eq!(answered(&frame), answered(&SOLICIT));
    }

    #[test]
    fn invalid_solicits_are_not_queries() {
        // Duplicate Address Detection: from ::, with no Source Link-Layer Address option (RFC 4861 §7.1.1).
        let mut dad = [0u8; 78];
        dad.copy_from_slice(&SOLICIT[..78]);
        let mut ip = ipv6_of(&mut dad);
        ip.set_payload_len(24);
        ip.set_src_addr(Ipv6Addr::UNSPECIFIED);
        refill_checksum(&mut dad);
        // The hop limit is not in the pseudo-header, so the checksum still verifies.
        let hop_limit_64 = edited(SOLICIT, |f| ipv6_of(f).set_hop_limit(64));
        let bad_checksum = edited(SOLICIT, |f| {
            let mut ip = ipv6_of(f);
            let mut message = icmpv6::Packet::new_unchecked(ip.payload_mut());
            message.set_checksum(message.checksum() ^ 1);
        });
        let multicast_target = edited(SOLICIT, |f| {
            icmpv6::Packet::new_unchecked(ipv6_of(f).payload_mut()).set_target_addr(SOLICITED_NODE);
            refill_checksum(f);
        });
        let bad_code = edited(SOLICIT, |f| {
            icmpv6::Packet::new_unchecked(ipv6_of(f).payload_mut()).set_code(1);
            refill_checksum(f);
        });
        let multicast_source = edited(SOLICIT, |f| {
            ipv6_of(f).set_src_addr(SOLICITED_NODE);
            refill_checksum(f);
        });
        let not_icmpv6 = edited(SOLICIT, |f| ipv6_of(f).set_next_header(protocol::UDP));
        let group_source = edited(SOLICIT, |f| ethernet::Frame::new_unchecked(f).set_src_addr(MacAddr::BROADCAST));
        let cases: [(&str, &[u8]); 8] = [
            ("DAD", &dad),
            ("hop limit 64", &hop_limit_64),
            ("bad checksum", &bad_checksum),
            ("multicast target", &multicast_target),
            ("code 1", &bad_code),
            ("multicast source", &multicast_source),
            ("not ICMPv6", &not_icmpv6),
            ("group source", &group_source),
        ];
        for (name, frame) in cases {
            assert_eq!(query(frame), None, "{name}");
            assert_eq!(answer(frame, OWNER, &mut [0; 128]), None, "{name}");
        }
        assert_eq!(query(&IPV4_UDP), None);
        assert_eq!(query(&IPV6_EMPTY), None);
    }

    #[test]
    fn truncated_frames_are_not_queries() {
        for request in [&ARP_REQUEST[..], &ARP_REQUEST_TAGGED, &SOLICIT] {
            let header_len = ethernet::Frame::new_checked(request).unwrap().header_len();
            for len in 0..request.len() {
                let prefix = &request[..len];
                assert_eq!(query(prefix), None, "{len} bytes");
                assert_eq!(answer(prefix, OWNER, &mut [0; 128]), None, "{len} bytes");
                // `source` needs only the Ethernet header, tag included; it must not panic on the rest.
                assert_eq!(source(prefix).is_some(), len >= header_len, "{len} bytes");
            }
        }
    }

    #[test]
    fn small_output_buffers_are_refused() {
        for request in [&ARP_REQUEST[..], &ARP_REQUEST_TAGGED, &SOLICIT] {
            let needed = answered(request).len();
            for len in 0..needed {
                assert_eq!(answer(request, OWNER, &mut vec![0; len]), None, "{len} bytes");
            }
            let mut out = vec![0; needed];
            assert_eq!(answer(request, OWNER, &mut out), Some(needed));
            assert_eq!(out, answered(request));
        }
    }

    #[test]
    fn source_of_arp() {
        assert_eq!(source(&ARP_REQUEST), Some((HOST, Some(IpAddr::V4(HOST_V4)))));
        assert_eq!(source(&ARP_REQUEST_TAGGED), Some((HOST, Some(IpAddr::V4(HOST_V4)))));
        let reply = answered(&ARP_REQUEST);
        assert_eq!(source(&reply), Some((OWNER, Some(IpAddr::V4(OWNER_V4)))));
        let gratuitous = edited(ARP_REQUEST, |f| arp_of(f).set_target_protocol_addr(HOST_V4));
        assert_eq!(source(&gratuitous), Some((HOST, Some(IpAddr::V4(HOST_V4)))));
        let probe = edited(ARP_REQUEST, |f| arp_of(f).set_sender_protocol_addr(Ipv4Addr::UNSPECIFIED));
        assert_eq!(source(&probe), Some((HOST, None)));
        let proxied = edited(ARP_REQUEST, |f| arp_of(f).set_sender_hardware_addr(OWNER));
        assert_eq!(source(&proxied), Some((HOST, None)));
    }

    #[test]
    fn source_of_ip() {
        assert_eq!(source(&IPV4_UDP), Some((HOST, Some(IpAddr::V4(HOST_V4)))));
        for (name, src) in [
            ("unspecified", Ipv4Addr::UNSPECIFIED),
            ("broadcast", Ipv4Addr::BROADCAST),
            ("multicast", Ipv4Addr::new(224, 0, 0, 251)),
            ("loopback", Ipv4Addr::LOCALHOST),
        ] {
            let frame = edited(IPV4_UDP, |f| {
                let mut ip = ipv4::Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]);
                ip.set_src_addr(src);
                ip.fill_checksum();
            });
            assert_eq!(source(&frame), Some((HOST, None)), "{name}");
        }
        let bad_checksum =
            edited(IPV4_UDP, |f| ipv4::Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]).set_hop_limit(1));
        assert_eq!(source(&bad_checksum), Some((HOST, None)));

        let src_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1);
        assert_eq!(source(&IPV6_EMPTY), Some((HOST, Some(IpAddr::V6(src_v6)))));
        for (name, src) in
            [("unspecified", Ipv6Addr::UNSPECIFIED), ("multicast", SOLICITED_NODE), ("loopback", Ipv6Addr::LOCALHOST)]
        {
            let frame = edited(IPV6_EMPTY, |f| ipv6_of(f).set_src_addr(src));
            assert_eq!(source(&frame), Some((HOST, None)), "{name}");
        }
    }

    #[test]
    fn source_of_neighbor_discovery() {
        assert_eq!(source(&SOLICIT), Some((HOST, Some(IpAddr::V6(HOST_V6)))));
        let advert = answered(&SOLICIT);
        assert_eq!(source(&advert), Some((OWNER, Some(IpAddr::V6(OWNER_V6)))));
        let dad = edited(SOLICIT, |f| ipv6_of(f).set_src_addr(Ipv6Addr::UNSPECIFIED));
        assert_eq!(source(&dad), Some((HOST, None)));
    }

    #[test]
    fn source_of_other_frames() {
        for frame in [&ARP_REQUEST[..], &IPV4_UDP, &IPV6_EMPTY, &SOLICIT] {
            let multicast = MacAddr([0x03, 0x19, 0x00, 0x00, 0x01, 0x01]);
            let mut frame = frame.to_vec();
            ethernet::Frame::new_unchecked(&mut frame[..]).set_src_addr(multicast);
            assert_eq!(source(&frame), None);
        }
        let other = edited(IPV4_UDP, |f| ethernet::Frame::new_unchecked(f).set_ethertype(0x88cc)); // LLDP
        assert_eq!(source(&other), Some((HOST, None)));
    }
}
