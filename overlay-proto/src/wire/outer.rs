//! The outer Ethernet / IPv4 or IPv6 / UDP headers of an underlay datagram, for an underlay that bypasses the
//! kernel's UDP stack (AF_XDP) and so writes and reads them itself.
//!
//! [`Outer::emit`] writes the three headers in front of a UDP payload already in place, with the IPv4 header checksum
//! (RFC 791 §3.1) and the UDP checksum over the pseudo-header (RFC 768 over IPv4; mandatory over IPv6, RFC 8200
//! §8.1). IPv4 datagrams carry DF and identification 0, as the kernel's UDP sockets send them (RFC 6864 §4.1).
//!
//! [`Inbound::parse`] reads a received frame: untagged Ethernet, IPv4 without options and not fragmented (the IPv4
//! header checksum verified), or IPv6 whose next header is UDP, then UDP, and it returns the sender, the receiver and
//! where the payload lies. It does not verify the UDP checksum: on a veth underlay a frame reaches the XDP hook before
//! checksum offload has filled it in (the sender's kernel leaves it partial, as with kernel VXLAN, see
//! docs/interop.md), so a valid datagram would fail; the payload's own integrity is VXLAN's inner frame checksums or
//! ESP's ICV.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::{ethernet, ipv4, ipv6, udp, Result, WireError};
use crate::MacAddr;

/// Hop limit (TTL) of the datagrams sent: Linux's default.
pub const HOP_LIMIT: u8 = 64;

/// Outer source ports are picked from the dynamic range 49152..=65535 by the inner flow's hash (RFC 7348 §5).
const SOURCE_PORT_BASE: u16 = 49_152;

/// The outer source port of a flow: within 49152..=65535, the same for every packet of the flow.
pub fn source_port(flow: u32) -> u16 {
    SOURCE_PORT_BASE + (flow % u32::from(u16::MAX - SOURCE_PORT_BASE + 1)) as u16
}

/// Bytes of outer header in front of the UDP payload: Ethernet + IP + UDP.
pub const fn header_len(ipv4: bool) -> usize {
    ethernet::HEADER_LEN + if ipv4 { ipv4::HEADER_LEN } else { ipv6::HEADER_LEN } + udp::HEADER_LEN
}

/// The headers of one outgoing datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// This host's MAC on the underlay link.
    pub src_mac: MacAddr,
    /// The next hop's MAC.
    pub dst_mac: MacAddr,
    /// This host's underlay address and the flow's source port.
    pub src: SocketAddr,
    /// The remote VTEP and its VXLAN or ESP port.
    pub dst: SocketAddr,
}

impl Outer {
    /// Bytes of header this datagram needs in front of its payload.
    pub fn header_len(&self) -> usize {
        header_len(self.src.is_ipv4())
    }

    /// Writes the headers into `frame[..header_len]` for the `payload_len` bytes of UDP payload that follow them, and
    /// returns the frame's length.
    ///
    /// Fails with [`WireError::Truncated`] when `frame` is too short for headers and payload,
    /// [`WireError::Malformed`] when the two addresses are of different families, and [`WireError::Unsupported`]
    /// when the payload does not fit one datagram.
    pub fn emit(&self, frame: &mut [u8], payload_len: usize) -> Result<usize> {
        let header = self.header_len();
        let total = header + payload_len;
        if frame.len() < total {
            return Err(WireError::Truncated);
        }
        let udp_len = udp::HEADER_LEN + payload_len;
        // IPv4's total length field covers its own header too; IPv6's payload length does not.
        let ip_overhead = if self.src.is_ipv4() { ipv4::HEADER_LEN } else { 0 };
        if udp_len + ip_overhead > usize::from(u16::MAX) {
            return Err(WireError::Unsupported);
        }
        let ethertype = if self.src.is_ipv4() { ethernet::ethertype::IPV4 } else { ethernet::ethertype::IPV6 };
        let eth = ethernet::Repr { src_addr: self.src_mac, dst_addr: self.dst_mac, vlan_tci: None, ethertype };
        eth.emit(&mut ethernet::Frame::new_unchecked(&mut frame[..]));
        let ip_start = ethernet::HEADER_LEN;
        let udp_start = header - udp::HEADER_LEN;
        let mut datagram = udp::Packet::new_unchecked(&mut frame[udp_start..total]);
        datagram.set_src_port(self.src.port());
        datagram.set_dst_port(self.dst.port());
        datagram.set_len(udp_len as u16);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                datagram.fill_checksum_v4(src, dst);
                let ip = ipv4::Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: ipv4::protocol::UDP,
                    payload_len: udp_len,
                    hop_limit: HOP_LIMIT,
                };
                ip.emit(&mut ipv4::Packet::new_unchecked(&mut frame[ip_start..udp_start]));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                datagram.fill_checksum_v6(&src, &dst);
                let ip = ipv6::Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: ipv4::protocol::UDP,
                    payload_len: udp_len,
                    hop_limit: HOP_LIMIT,
                };
                ip.emit(&mut ipv6::Packet::new_unchecked(&mut frame[ip_start..udp_start]));
            }
            _ => return Err(WireError::Malformed),
        }
        Ok(total)
    }
}

/// A received underlay datagram, located in its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sender's address and port.
    pub from: SocketAddr,
    /// The address and port it was sent to.
    pub to: SocketAddr,
    /// Where the UDP payload lies in the frame (the UDP length field bounds it, not the frame, which may be padded).
    pub payload: Range<usize>,
}

impl Inbound {
    /// Reads the outer headers of `frame` (see the module docs for what is accepted).
    pub fn parse(frame: &[u8]) -> Result<Self> {
        let eth = ethernet::Frame::new_checked(frame)?;
        if eth.vlan_tci().is_some() {
            return Err(WireError::Unsupported);
        }
        let ip_start = eth.header_len();
        let (src, dst, udp_start, ip_end, next_header) = match eth.ethertype() {
            ethernet::ethertype::IPV4 => {
                let packet = ipv4::Packet::new_checked(&frame[ip_start..])?;
                let ip = ipv4::Repr::parse(&packet)?;
                if packet.header_len() != ipv4::HEADER_LEN || packet.more_frags() || packet.frag_offset() != 0 {
                    return Err(WireError::Unsupported);
                }
                let udp_start = ip_start + ipv4::HEADER_LEN;
                (
                    IpAddr::V4(ip.src_addr),
                    IpAddr::V4(ip.dst_addr),
                    udp_start,
                    udp_start + ip.payload_len,
                    ip.next_header,
                )
            }
            ethernet::ethertype::IPV6 => {
                let packet = ipv6::Packet::new_checked(&frame[ip_start..])?;
                let ip = ipv6::Repr::parse(&packet)?;
                let udp_start = ip_start + ipv6::HEADER_LEN;
                (
                    IpAddr::V6(ip.src_addr),
                    IpAddr::V6(ip.dst_addr),
                    udp_start,
                    udp_start + ip.payload_len,
                    ip.next_header,
                )
            }
            _ => return Err(WireError::Unsupported),
        };
        // IPv6 extension headers are not followed: the XDP program passes such datagrams to the kernel as well.
        if next_header != ipv4::protocol::UDP {
            return Err(WireError::Unsupported);
        }
        let datagram = udp::Packet::new_checked(&frame[udp_start..ip_end])?;
        let payload = udp_start + udp::HEADER_LEN..udp_start + usize::from(datagram.len());
        Ok(Self {
            from: SocketAddr::new(src, datagram.src_port()),
            to: SocketAddr::new(dst, datagram.dst_port()),
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: MacAddr = MacAddr([0x02, 0x18, 0, 0, 0, 0x01]);
    const B: MacAddr = MacAddr([0x02, 0x18, 0, 0, 0, 0x02]);

    /// 198.18.0.1:49153 → 198.18.0.2:4789 carrying the 4 bytes "weft", byte for byte. Both checksums were computed
    /// apart from this crate (a few lines of RFC 1071 in Python), so the test does not check the code against itself.
    const V4_FRAME: [u8; 46] = [
        0x02, 0x18, 0x00, 0x00, 0x00, 0x02, // destination MAC
        0x02, 0x18, 0x00, 0x00, 0x00, 0x01, // source MAC
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x20, // version 4, IHL 5, total length 32
        0x00, 0x00, 0x40, 0x00, // identification 0, DF
        0x40, 0x11, 0xae, 0xa5, // TTL 64, UDP, header checksum
        198, 18, 0, 1, // source
        198, 18, 0, 2, // destination
        0xc0, 0x01, 0x12, 0xb5, // ports 49153 → 4789
        0x00, 0x0c, 0xc3, 0x1d, // length 12, checksum
        b'w', b'e', b'f', b't',
    ];

    fn v4() -> Outer {
        Outer {
            src_mac: A,
            dst_mac: B,
            src: "198.18.0.1:49153".parse().unwrap(),
            dst: "198.18.0.2:4789".parse().unwrap(),
        }
    }

    #[test]
    fn emits_the_known_ipv4_frame() {
        let mut frame = [0u8; 64];
        frame[42..46].copy_from_slice(b"weft");
        assert_eq!(v4().emit(&mut frame, 4), Ok(46));
        assert_eq!(frame[..46], V4_FRAME);
        // Both checksums verify with the crate's own views, too.
        let ip = ipv4::Packet::new_checked(&frame[14..46]).unwrap();
        assert!(ip.verify_checksum());
        let datagram = udp::Packet::new_checked(&frame[34..46]).unwrap();
        assert!(datagram.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
    }

    #[test]
    fn parses_the_known_ipv4_frame_with_padding() {
        let mut padded = V4_FRAME.to_vec();
        padded.resize(60, 0); // Ethernet's minimum frame: the UDP length, not the frame, ends the payload
        let inbound = Inbound::parse(&padded).unwrap();
        assert_eq!(inbound.from, "198.18.0.1:49153".parse().unwrap());
        assert_eq!(inbound.to, "198.18.0.2:4789".parse().unwrap());
        assert_eq!(&padded[inbound.payload], b"weft");
    }

    #[test]
    fn rejects_what_the_xdp_program_would_pass_to_the_kernel() {
        let mut bad_checksum = V4_FRAME;
        bad_checksum[24] ^= 1;
        assert_eq!(Inbound::parse(&bad_checksum), Err(WireError::Checksum));
        let mut fragment = V4_FRAME;
        fragment[20] = 0x20; // more fragments
        ipv4::Packet::new_unchecked(&mut fragment[14..34]).fill_checksum();
        assert_eq!(Inbound::parse(&fragment), Err(WireError::Unsupported));
        let mut tcp = V4_FRAME;
        tcp[23] = ipv4::protocol::TCP;
        ipv4::Packet::new_unchecked(&mut tcp[14..34]).fill_checksum();
        assert_eq!(Inbound::parse(&tcp), Err(WireError::Unsupported));
        let mut arp = V4_FRAME;
        arp[12..14].copy_from_slice(&ethernet::ethertype::ARP.to_be_bytes());
        assert_eq!(Inbound::parse(&arp), Err(WireError::Unsupported));
        assert_eq!(Inbound::parse(&V4_FRAME[..40]), Err(WireError::Truncated));
    }

    #[test]
    fn refuses_what_it_cannot_emit() {
        let mut small = [0u8; 45];
        assert_eq!(v4().emit(&mut small, 4), Err(WireError::Truncated));
        let mixed = Outer { dst: "[2001:db8::2]:4789".parse().unwrap(), ..v4() };
        assert_eq!(mixed.emit(&mut [0u8; 64], 4), Err(WireError::Malformed));
        let mut huge = vec![0u8; 70_000];
        assert_eq!(v4().emit(&mut huge, 65_510), Err(WireError::Unsupported));
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range() {
        assert_eq!(source_port(0), 49_152);
        assert_eq!(source_port(16_383), 65_535);
        assert_eq!(source_port(16_384), 49_152);
        assert_eq!(source_port(u32::MAX), 65_535);
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(
            v6 in any::<bool>(),
            src_port in 1u16.., dst_port in 1u16..,
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let (src_ip, dst_ip): (IpAddr, IpAddr) = if v6 {
                ("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap())
            } else {
                ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap())
            };
            let outer = Outer {
                src_mac: A,
                dst_mac: B,
                src: SocketAddr::new(src_ip, src_port),
                dst: SocketAddr::new(dst_ip, dst_port),
            };
            let mut frame = vec![0u8; outer.header_len() + payload.len()];
            frame[outer.header_len()..].copy_from_slice(&payload);
            let len = outer.emit(&mut frame, payload.len()).unwrap();
            prop_assert_eq!(len, frame.len());
            let inbound = Inbound::parse(&frame).unwrap();
            prop_assert_eq!(inbound.from, outer.src);
            prop_assert_eq!(inbound.to, outer.dst);
            prop_assert_eq!(&frame[inbound.payload.clone()], &payload[..]);
            let datagram = udp::Packet::new_checked(&frame[inbound.payload.start - udp::HEADER_LEN..]).unwrap();
            match (src_ip, dst_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => prop_assert!(datagram.verify_checksum_v4(s, d)),
                (IpAddr::V6(s), IpAddr::V6(d)) => prop_assert!(datagram.verify_checksum_v6(&s, &d)),
                _ => unreachable!(),
            }
        }
    }
}
