//! Flow hashing of inner frames, for the outer UDP source port (RFC 7348 §5: "it is recommended that the UDP
//! source port number be calculated using a hash of fields from the inner packet").
//!
//! The hash covers the inner MACs and EtherType, and for IPv4/IPv6 the addresses, the protocol and, for TCP and UDP
//! in unfragmented packets, the ports. Every packet of one transport flow gets the same value, so ECMP and RSS on the
//! underlay keep a flow on one path and one queue, and weft's own workers can steer by it without reordering.

use std::net::IpAddr;

use crate::wire::{ethernet, ipv4, ipv6};

/// IP protocol numbers whose first four payload bytes are the source and destination ports.
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A fast, non-cryptographic mixer. Entropy for ECMP, not a defence: the seed keeps hosts from agreeing.
#[derive(Debug, Clone, Copy)]
struct Mixer(u64);

impl Mixer {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::K);
        self.0 ^= self.0 >> 29;
    }

    fn add_bytes(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("chunks_exact yields 8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }

    fn finish(self) -> u32 {
        let h = self.0.wrapping_mul(Self::K);
        (h >> 32) as u32 ^ h as u32
    }
}

/// The flow hash of an Ethernet frame. Frames too short to parse still hash (over what is there).
pub fn hash(seed: u64, frame: &[u8]) -> u32 {
    let mut m = Mixer(seed);
    let Ok(eth) = ethernet::Frame::new_checked(frame) else {
        m.add_bytes(frame);
        return m.finish();
    };
    m.add_bytes(&eth.dst_addr().0);
    m.add_bytes(&eth.src_addr().0);
    m.add(u64::from(eth.ethertype()));
    if let Some((src, dst, protocol, ports)) = l3_tuple(eth.ethertype(), eth.payload()) {
        add_ip(&mut m, src);
        add_ip(&mut m, dst);
        m.add(u64::from(protocol) << 32 | u64::from(ports.unwrap_or(0)));
    }
    m.finish()
}

fn add_ip(m: &mut Mixer, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => m.add(u64::from(a.to_bits())),
        IpAddr::V6(a) => m.add_bytes(&a.octets()),
    }
}

/// (source, destination, protocol, ports as one u32) of an IP packet; ports only for unfragmented TCP/UDP.
fn l3_tuple(ethertype: u16, payload: &[u8]) -> Option<(IpAddr, IpAddr, u8, Option<u32>)> {
    match ethertype {
        ethernet::ethertype::IPV4 => {
            let ip = ipv4::Packet::new_checked(payload).ok()?;
            let whole = !ip.more_frags() && ip.frag_offset() == 0;
            let ports = ports(ip.next_header(), ip.payload(), whole);
            Some((IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), ip.next_header(), ports))
        }
        ethernet::ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(payload).ok()?;
            let ports = ports(ip.next_header(), ip.payload(), true);
            Some((IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()), ip.next_header(), ports))
        }
        _ => None,
    }
}

/// The source and destination ports as one word, for TCP and UDP when the transport header is present.
fn ports(protocol: u8, l4: &[u8], first_fragment: bool) -> Option<u32> {
    (first_fragment && matches!(protocol, TCP | UDP) && l4.len() >= 4)
        .then(|| u32::from_be_bytes([l4[0], l4[1], l4[2], l4[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from 198.19.0.11:sport to 198.19.0.21:dport.
    fn udp_frame(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x21, 0x02, 0, 0, 0, 0, 0x11, 0x08, 0x00];
        let total: u16 = 20 + 8 + 4;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[198, 19, 0, 11, 198, 19, 0, 21]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 12, 0, 0, 1, 2, 3, 4]);
        // Header checksum, so checked parsers accept it.
        let sum = crate::wire::checksum::data(&f[14..34]);
        f[24..26].copy_from_slice(&(!sum).to_be_bytes());
        f
    }

    #[test]
    fn same_flow_same_hash_other_ports_differ() {
        let a = hash(7, &udp_frame(1000, 2000));
        assert_eq!(a, hash(7, &udp_frame(1000, 2000)));
        let mut payload_changed = udp_frame(1000, 2000);
        *payload_changed.last_mut().unwrap() ^= 0xff;
        assert_eq!(a, hash(7, &payload_changed), "payload must not affect the flow hash");
        let distinct: std::collections::HashSet<u32> = (0..64).map(|p| hash(7, &udp_frame(1000 + p, 2000))).collect();
        assert!(distinct.len() > 60, "ports must spread the hash: {}", distinct.len());
        assert_ne!(a, hash(8, &udp_frame(1000, 2000)), "the seed changes the hash");
    }

    #[test]
    fn short_and_non_ip_frames_hash() {
        assert_eq!(hash(1, &[1, 2, 3]), hash(1, &[1, 2, 3]));
        let arp = [0xffu8; 42];
        assert_eq!(hash(1, &arp), hash(1, &arp));
    }
}
