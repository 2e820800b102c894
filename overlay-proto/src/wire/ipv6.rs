//! IPv6 fixed headers (RFC 8200 §3).
//!
//! Extension headers are payload to this view: [`Packet::next_header`] names the first of them. Jumbograms
//! (RFC 2675, payload length 0 plus a hop-by-hop option) are not supported; a payload length of 0 means an empty
//! payload.

use std::net::Ipv6Addr;

use super::{read, Result, WireError};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

const VERSION: u8 = 6;

mod field {
    use crate::wire::Field;

    /// Version (4 bits), traffic class (8 bits) and flow label (20 bits).
    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Where each part sits in the first 32-bit word.
const VERSION_SHIFT: u32 = 28;
const TRAFFIC_CLASS_SHIFT: u32 = 20;
const FLOW_LABEL_MASK: u32 = 0x000f_ffff;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; getters panic if it is too short. Use this when emitting.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version and that the header and the payload length fit in the buffer. The buffer may be longer
    /// (Ethernet padding).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != VERSION {
            return Err(WireError::Malformed);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version; 6 in a checked packet.
    pub fn version(&self) -> u8 {
        (self.first_word() >> VERSION_SHIFT) as u8
    }

    /// The traffic class: DSCP and ECN.
    pub fn traffic_class(&self) -> u8 {
        // Truncation drops the version above the traffic class.
        (self.first_word() >> TRAFFIC_CLASS_SHIFT) as u8
    }

    /// The 20-bit flow label.
    pub fn flow_label(&self) -> u32 {
        self.first_word() & FLOW_LABEL_MASK
    }

    /// Length of what follows the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// The type of the first extension header or of the upper-layer payload, an IANA protocol number.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read::<16>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read::<16>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// The payload, `payload_len` bytes after the fixed header, without any link-layer padding.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    fn first_word(&self) -> u32 {
        u32::from_be_bytes(read(self.buffer.as_ref(), field::VER_TC_FLOW))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version.
    pub fn set_version(&mut self, value: u8) {
        let word = self.first_word() & !(0xf << VERSION_SHIFT);
        self.set_first_word(word | (u32::from(value & 0xf) << VERSION_SHIFT));
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, value: u8) {
        let word = self.first_word() & !(0xff << TRAFFIC_CLASS_SHIFT);
        self.set_first_word(word | (u32::from(value) << TRAFFIC_CLASS_SHIFT));
    }

    /// Sets the flow label; bits above the low 20 are ignored.
    pub fn set_flow_label(&mut self, value: u32) {
        let word = self.first_word() & !FLOW_LABEL_MASK;
        self.set_first_word(word | (value & FLOW_LABEL_MASK));
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let payload = HEADER_LEN..HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[payload]
    }

    fn set_first_word(&mut self, value: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&value.to_be_bytes());
    }
}

/// The meaning of an IPv6 fixed header, as far as the overlay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Type of the first extension header or of the upper-layer payload.
    pub next_header: u8,
    /// Length of the payload in bytes; at most 65535.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Repr {
    /// Reads a fixed header.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
        })
    }

    /// Length of the header `emit` writes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of header and payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the fixed header with traffic class and flow label 0. `packet` must hold at least `header_len` bytes.
    ///
    /// # Panics
    /// If `payload_len` is over 65535, which needs a jumbogram; the caller's MTU check should have stopped it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let payload_len = u16::try_from(self.payload_len).expect("IPv6 payload over 65535 bytes");
        packet.set_first_word(0);
        packet.set_version(VERSION);
        packet.set_payload_len(payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::protocol;
    use proptest::prelude::*;

    /// 2001:db8::1 → 2001:db8::2, UDP, hop limit 64, traffic class 0xb8 (EF), flow label 0x12345, 4-byte payload.
    const PACKET: [u8; 44] = [
        0x6b, 0x81, 0x23, 0x45, // version, traffic class, flow label
        0x00, 0x04, 0x11, 0x40, // payload length, UDP, hop limit
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination
        0xde, 0xad, 0xbe, 0xef, // payload
    ];

    fn repr() -> Repr {
        Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: protocol::UDP,
            payload_len: 4,
            hop_limit: 64,
        }
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0xb8);
        assert_eq!(packet.flow_label(), 0x12345);
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xffu8; 44];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        packet.set_traffic_class(0xb8);
        packet.set_flow_label(0x12345);
        packet.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes, PACKET);
    }

    #[test]
    fn rejects_truncated_and_malformed() {
        assert_eq!(Packet::new_checked(&PACKET[..39]), Err(WireError::Truncated));
        assert_eq!(Packet::new_checked(&PACKET[..43]), Err(WireError::Truncated));
        let mut bytes = PACKET;
        Packet::new_unchecked(&mut bytes[..]).set_version(4);
        assert_eq!(Packet::new_checked(&bytes[..]), Err(WireError::Malformed));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&PACKET[..8])), Err(WireError::Truncated));
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = [0u8; 60];
        padded[..PACKET.len()].copy_from_slice(&PACKET);
        assert_eq!(Packet::new_checked(&padded[..]).unwrap().payload().len(), 4);
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (any::<u128>(), any::<u128>(), any::<u8>(), 0..=usize::from(u16::MAX), any::<u8>()).prop_map(
            |(src, dst, next_header, payload_len, hop_limit)| Repr {
                src_addr: Ipv6Addr::from(src),
                dst_addr: Ipv6Addr::from(dst),
                next_header,
                payload_len,
                hop_limit,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr(), fill in any::<u8>()) {
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!((packet.traffic_class(), packet.flow_label()), (0, 0));
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                prop_assert!(HEADER_LEN + packet.payload().len() <= bytes.len());
                let _ = Repr::parse(&packet);
            }
        }
    }
}
