//! IPv4 headers (RFC 791 §3.1), with the header checksum of RFC 1071.
//!
//! Options are skipped, not interpreted. Fragments parse like any other packet; their flags and offset are
//! available from the getters, and reassembly is not this module's business.

use std::net::Ipv4Addr;

use super::{checksum, read, Result, WireError};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers"), also the values of IPv6's Next Header.
pub mod protocol {
    /// Internet Control Message Protocol.
    pub const ICMP: u8 = 1;
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

const VERSION: u8 = 4;
/// The Don't Fragment flag in the flags-and-offset field.
const DONT_FRAG: u16 = 0x4000;
/// The More Fragments flag in the flags-and-offset field.
const MORE_FRAGS: u16 = 0x2000;
/// The fragment offset, in units of 8 bytes.
const FRAG_OFFSET: u16 = 0x1fff;

mod field {
    use crate::wire::Field;

    /// Version (high nibble) and header length in 32-bit words (IHL, low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP (high 6 bits) and ECN (low 2 bits), formerly Type of Service.
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG_OFFSET: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// A view of an IPv4 packet.
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

    /// Checks the version, since the length fields mean nothing without it, and that the header and the total
    /// length fit in the buffer. The buffer may be longer than the total length (Ethernet padding).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != VERSION || self.header_len() < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if self.header_len() > len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < self.header_len() {
            return Err(WireError::Malformed);
        }
        if total_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version; 4 in a checked packet.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Length of the header with its options, in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP and ECN bits.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Length of header and payload, in bytes.
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::TOTAL_LEN))
    }

    /// The identification, shared by the fragments of one datagram.
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::IDENT))
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.flags_frag_offset() & DONT_FRAG != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.flags_frag_offset() & MORE_FRAGS != 0
    }

    /// The fragment offset, in bytes (the field counts units of 8 bytes).
    pub fn frag_offset(&self) -> u16 {
        (self.flags_frag_offset() & FRAG_OFFSET) * 8
    }

    /// The time to live.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload, one of [`protocol`] or another IANA number.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::CHECKSUM))
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read::<4>(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read::<4>(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Whether the header checksum, options included, verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.header()) == 0xffff
    }

    /// The payload: from the end of the header to the total length, without any link-layer padding.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    fn flags_frag_offset(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::FLAGS_FRAG_OFFSET))
    }

    fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version, keeping the header length.
    pub fn set_version(&mut self, value: u8) {
        let byte = &mut self.buffer.as_mut()[field::VER_IHL];
        *byte = (*byte & 0x0f) | (value << 4);
    }

    /// Sets the header length in bytes, keeping the version. The field counts 32-bit words, so `len` should be a
    /// multiple of 4 up to 60; anything else is written as `len / 4`, masked to four bits.
    pub fn set_header_len(&mut self, len: usize) {
        let byte = &mut self.buffer.as_mut()[field::VER_IHL];
        *byte = (*byte & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the DSCP and ECN bits.
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::TOTAL_LEN].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, value: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&value.to_be_bytes());
    }

    /// Clears the flags, the reserved bit included, and the fragment offset.
    pub fn clear_flags(&mut self) {
        self.set_flags_frag_offset(0);
    }

    /// Sets the Don't Fragment flag.
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(DONT_FRAG, value);
    }

    /// Sets the More Fragments flag.
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(MORE_FRAGS, value);
    }

    /// Sets the fragment offset in bytes; the field counts units of 8 bytes, so the low three bits are dropped.
    pub fn set_frag_offset(&mut self, offset: u16) {
        let value = (self.flags_frag_offset() & !FRAG_OFFSET) | (offset / 8);
        self.set_flags_frag_offset(value);
    }

    /// Sets the time to live.
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    /// Sets the protocol of the payload.
    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    /// Sets the header checksum field; see [`fill_checksum`](Self::fill_checksum).
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Computes and writes the header checksum; call it after the last change to the header.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.header());
        self.set_checksum(!sum);
    }

    /// The payload, mutably: from the end of the header to the total length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let payload = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[payload]
    }

    fn set_flag(&mut self, flag: u16, value: bool) {
        let word = self.flags_frag_offset();
        self.set_flags_frag_offset(if value { word | flag } else { word & !flag });
    }

    fn set_flags_frag_offset(&mut self, value: u16) {
        self.buffer.as_mut()[field::FLAGS_FRAG_OFFSET].copy_from_slice(&value.to_be_bytes());
    }
}

/// The meaning of an IPv4 header, as far as the overlay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol of the payload.
    pub next_header: u8,
    /// Length of the payload in bytes; at most 65515, so the total length fits in 16 bits.
    pub payload_len: usize,
    /// Time to live.
    pub hop_limit: u8,
}

impl Repr {
    /// Reads a header, rejecting a bad checksum as [`WireError::Checksum`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::Checksum);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            hop_limit: packet.hop_limit(),
        })
    }

    /// Length of the header `emit` writes: no options.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of header and payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with DF set, identification 0 (RFC 6864 §4.1 allows it for atomic datagrams) and a
    /// correct checksum. `packet` must hold at least `header_len` bytes.
    ///
    /// # Panics
    /// If `payload_len` is over 65515: such a datagram cannot be expressed, and the caller's MTU check should have
    /// stopped it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let total_len = u16::try_from(self.buffer_len()).expect("IPv4 datagram over 65535 bytes");
        packet.set_version(VERSION);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp_ecn(0);
        packet.set_total_len(total_len);
        packet.set_ident(0);
        packet.clear_flags();
        packet.set_dont_frag(true);
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 198.18.0.1 → 198.18.0.2, UDP, TTL 64, DF, with a 12-byte payload.
    const UDP_PACKET: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, // version 4, IHL 5, total length 32
        0x00, 0x00, 0x40, 0x00, // ident 0, DF
        0x40, 0x11, 0xae, 0xa5, // TTL 64, UDP, checksum
        0xc6, 0x12, 0x00, 0x01, // source
        0xc6, 0x12, 0x00, 0x02, // destination
        0xc0, 0x00, 0x12, 0xb5, 0x00, 0x0c, 0xc3, 0x1e, 0x77, 0x65, 0x66, 0x74, // payload
    ];

    fn udp_repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(198, 18, 0, 1),
            dst_addr: Ipv4Addr::new(198, 18, 0, 2),
            next_header: protocol::UDP,
            payload_len: 12,
            hop_limit: 64,
        }
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&UDP_PACKET[..]).unwrap();
        assert_eq!((packet.version(), packet.header_len(), packet.total_len()), (4, 20, 32));
        assert_eq!((packet.ident(), packet.dont_frag(), packet.more_frags()), (0, true, false));
        assert_eq!(packet.frag_offset(), 0);
        assert_eq!(packet.checksum(), 0xaea5);
        assert!(packet.verify_checksum());
        assert_eq!(packet.payload(), &UDP_PACKET[HEADER_LEN..]);
        assert_eq!(Repr::parse(&packet), Ok(udp_repr()));
    }

    #[test]
    fn emit() {
        let mut bytes = [0xffu8; 32];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        udp_repr().emit(&mut packet);
        packet.payload_mut().copy_from_slice(&UDP_PACKET[HEADER_LEN..]);
        assert_eq!(bytes, UDP_PACKET);
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = [0u8; 46];
        padded[..UDP_PACKET.len()].copy_from_slice(&UDP_PACKET);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 12);
        assert_eq!(Repr::parse(&packet).unwrap().payload_len, 12);
    }

    #[test]
    fn options_are_skipped() {
        // IHL 6: one word of options (four NOPs), covered by the checksum.
        let mut bytes = [0u8; 36];
        bytes[..HEADER_LEN].copy_from_slice(&UDP_PACKET[..HEADER_LEN]);
        bytes[HEADER_LEN..24].copy_from_slice(&[1, 1, 1, 1]);
        bytes[24..].copy_from_slice(&UDP_PACKET[HEADER_LEN..]);
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_header_len(24);
        packet.set_total_len(36);
        packet.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.payload(), &UDP_PACKET[HEADER_LEN..]);
        assert_eq!(Repr::parse(&packet), Ok(udp_repr()));
    }

    #[test]
    fn fragments_parse() {
        let mut bytes = UDP_PACKET;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_ident(0x1234);
        packet.clear_flags();
        packet.set_more_frags(true);
        packet.set_frag_offset(1480);
        packet.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.ident(), 0x1234);
        assert!(!packet.dont_frag() && packet.more_frags());
        assert_eq!(packet.frag_offset(), 1480);
        assert_eq!(Repr::parse(&packet), Ok(udp_repr()));
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut bytes = UDP_PACKET;
        bytes[field::TTL] = 63;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!packet.verify_checksum());
        assert_eq!(Repr::parse(&packet), Err(WireError::Checksum));
    }

    #[test]
    fn rejects_bad_lengths_and_version() {
        let with = |edit: fn(&mut Packet<&mut [u8]>)| {
            let mut bytes = UDP_PACKET;
            edit(&mut Packet::new_unchecked(&mut bytes[..]));
            Packet::new_checked(&bytes[..]).map(|_| ())
        };
        assert_eq!(Packet::new_checked(&UDP_PACKET[..19]), Err(WireError::Truncated));
        assert_eq!(Packet::new_checked(&UDP_PACKET[..31]), Err(WireError::Truncated));
        assert_eq!(with(|p| p.set_version(6)), Err(WireError::Malformed));
        assert_eq!(with(|p| p.set_header_len(16)), Err(WireError::Malformed));
        assert_eq!(with(|p| p.set_header_len(60)), Err(WireError::Truncated));
        assert_eq!(with(|p| p.set_total_len(19)), Err(WireError::Malformed));
        assert_eq!(with(|p| p.set_total_len(33)), Err(WireError::Truncated));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&UDP_PACKET[..10])), Err(WireError::Truncated));
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (any::<u32>(), any::<u32>(), any::<u8>(), 0..=65535 - HEADER_LEN, any::<u8>()).prop_map(
            |(src, dst, next_header, payload_len, hop_limit)| Repr {
                src_addr: Ipv4Addr::from(src),
                dst_addr: Ipv4Addr::from(dst),
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
            prop_assert!(packet.dont_frag() && !packet.more_frags() && packet.frag_offset() == 0);
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                prop_assert!(packet.header_len() + packet.payload().len() <= bytes.len());
                let _ = Repr::parse(&packet);
            }
        }
    }
}
