//! UDP headers (RFC 768), with the checksum over the IPv4 pseudo-header (RFC 768) or the IPv6 one (RFC 8200 §8.1).
//!
//! A zero checksum means "none": allowed over IPv4, forbidden over IPv6 (RFC 8200 §8.1; the RFC 6935 exception for
//! tunnels is not taken). A computed checksum of zero is therefore sent as 0xffff, its ones'-complement twin.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ipv4::protocol;
use super::{checksum, read, Result, WireError};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// The checksum field value meaning "no checksum".
const NO_CHECKSUM: u16 = 0;

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// Length of header and payload.
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// A view of a UDP datagram.
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

    /// Checks that the header fits and that the length field covers the header and no more than the buffer. The
    /// buffer may be longer (the IP payload can carry padding).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let udp_len = usize::from(self.len());
        if udp_len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if udp_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::SRC_PORT))
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::DST_PORT))
    }

    /// Length of header and payload.
    pub fn len(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::LENGTH))
    }

    /// Whether the length field says there is no payload (clippy asks for this next to `len`).
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) == HEADER_LEN
    }

    /// The checksum field; 0 means none.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::CHECKSUM))
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Whether the checksum verifies over IPv4; a datagram without one passes.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == NO_CHECKSUM
            || self.sum(checksum::pseudo_header_v4(src, dst, protocol::UDP, self.len().into())) == 0xffff
    }

    /// Whether the checksum verifies over IPv6, where one is mandatory.
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.checksum() != NO_CHECKSUM
            && self.sum(checksum::pseudo_header_v6(src, dst, protocol::UDP, self.len().into())) == 0xffff
    }

    /// The sum of the datagram, up to the length field, and the given pseudo-header sum.
    fn sum(&self, pseudo_header: u16) -> u16 {
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::combine(&[pseudo_header, checksum::data(datagram)])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the length of header and payload.
    pub fn set_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// The payload, mutably, up to the length field.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let payload = HEADER_LEN..usize::from(self.len());
        &mut self.buffer.as_mut()[payload]
    }

    /// Computes and writes the checksum over IPv4; call it once the payload is in place.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = self.sum(checksum::pseudo_header_v4(src, dst, protocol::UDP, self.len().into()));
        self.set_checksum(on_wire(sum));
    }

    /// Computes and writes the checksum over IPv6; call it once the payload is in place.
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let sum = self.sum(checksum::pseudo_header_v6(src, dst, protocol::UDP, self.len().into()));
        self.set_checksum(on_wire(sum));
    }
}

/// The checksum field for a datagram summing to `sum`: its complement, with 0 (which would read as "none") sent as
/// 0xffff.
fn on_wire(sum: u16) -> u16 {
    match !sum {
        NO_CHECKSUM => 0xffff,
        value => value,
    }
}

/// The meaning of a UDP header. The checksum is not part of it: [`Repr::parse`] does not check it, since it needs
/// the IP addresses (use `verify_checksum_v4`/`_v6`), and [`Repr::emit`] writes zero for the caller to fill once
/// the payload is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Length of the payload in bytes; at most 65527.
    pub payload_len: usize,
}

impl Repr {
    /// Reads a header.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
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

    /// Writes the header with a zero checksum. `packet` must hold at least `header_len` bytes.
    ///
    /// # Panics
    /// If `payload_len` is over 65527; the caller's MTU check should have stopped such a datagram.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let len = u16::try_from(self.buffer_len()).expect("UDP datagram over 65535 bytes");
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.set_checksum(NO_CHECKSUM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// Port 49152 → 4789, payload "weft", checksummed between 198.18.0.1 and 198.18.0.2.
    const DATAGRAM_V4: [u8; 12] = [0xc0, 0x00, 0x12, 0xb5, 0x00, 0x0c, 0xc3, 0x1e, 0x77, 0x65, 0x66, 0x74];
    /// The same datagram checksummed between 2001:db8::1 and 2001:db8::2.
    const DATAGRAM_V6: [u8; 12] = [0xc0, 0x00, 0x12, 0xb5, 0x00, 0x0c, 0xf3, 0xd1, 0x77, 0x65, 0x66, 0x74];

    fn repr() -> Repr {
        Repr { src_port: 49152, dst_port: 4789, payload_len: 4 }
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&DATAGRAM_V4[..]).unwrap();
        assert_eq!((packet.src_port(), packet.dst_port(), packet.len()), (49152, 4789, 12));
        assert_eq!(packet.payload(), b"weft");
        assert!(!packet.is_empty());
        assert!(packet.verify_checksum_v4(SRC_V4, DST_V4));
        assert!(!packet.verify_checksum_v4(SRC_V4, Ipv4Addr::new(198, 18, 0, 3)));
        assert_eq!(Repr::parse(&packet), Ok(repr()));

        let packet = Packet::new_checked(&DATAGRAM_V6[..]).unwrap();
        assert!(packet.verify_checksum_v6(&SRC_V6, &DST_V6));
        assert!(!packet.verify_checksum_v6(&DST_V6, &DST_V6));
    }

    #[test]
    fn emit_and_fill_checksums() {
        for (expected, fill) in [
            (DATAGRAM_V4, (|p| p.fill_checksum_v4(SRC_V4, DST_V4)) as fn(&mut Packet<&mut [u8]>)),
            (DATAGRAM_V6, |p| p.fill_checksum_v6(&SRC_V6, &DST_V6)),
        ] {
            let mut bytes = [0xffu8; 12];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr().emit(&mut packet);
            assert_eq!(packet.checksum(), 0);
            packet.payload_mut().copy_from_slice(b"weft");
            fill(&mut packet);
            assert_eq!(bytes, expected);
        }
    }

    #[test]
    fn zero_checksum_means_none_over_ipv4_only() {
        let mut bytes = DATAGRAM_V4;
        Packet::new_unchecked(&mut bytes[..]).set_checksum(0);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum_v4(SRC_V4, DST_V4));
        assert!(!packet.verify_checksum_v6(&SRC_V6, &DST_V6));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the payload so that the datagram and pseudo-header sum to 0xffff, whose complement is 0.
        let mut bytes = [0u8; 10];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr { src_port: 1, dst_port: 2, payload_len: 2 }.emit(&mut packet);
        let pseudo = checksum::pseudo_header_v4(SRC_V4, DST_V4, protocol::UDP, 10);
        let rest = checksum::combine(&[pseudo, checksum::data(&packet.buffer[..HEADER_LEN])]);
        packet.payload_mut().copy_from_slice(&(!rest).to_be_bytes());
        packet.fill_checksum_v4(SRC_V4, DST_V4);
        assert_eq!(packet.checksum(), 0xffff);
        assert!(packet.verify_checksum_v4(SRC_V4, DST_V4));
        packet.fill_checksum_v6(&SRC_V6, &DST_V6);
        assert!(packet.verify_checksum_v6(&SRC_V6, &DST_V6));
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(Packet::new_checked(&DATAGRAM_V4[..7]), Err(WireError::Truncated));
        assert_eq!(Packet::new_checked(&DATAGRAM_V4[..11]), Err(WireError::Truncated));
        let mut bytes = DATAGRAM_V4;
        Packet::new_unchecked(&mut bytes[..]).set_len(7);
        assert_eq!(Packet::new_checked(&bytes[..]), Err(WireError::Malformed));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&DATAGRAM_V4[..4])), Err(WireError::Truncated));
        // Trailing bytes past the length field are not payload.
        let mut padded = [0u8; 16];
        padded[..12].copy_from_slice(&DATAGRAM_V4);
        assert_eq!(Packet::new_checked(&padded[..]).unwrap().payload(), b"weft");
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (any::<u16>(), any::<u16>(), 0..=usize::from(u16::MAX) - HEADER_LEN)
            .prop_map(|(src_port, dst_port, payload_len)| Repr { src_port, dst_port, payload_len })
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr(), fill in any::<u8>()) {
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn filled_checksums_verify(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<u32>(),
            dst in any::<u128>(),
        ) {
            let repr = Repr { src_port: 4789, dst_port: 4789, payload_len: payload.len() };
            let mut bytes = vec![0; repr.buffer_len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            packet.fill_checksum_v4(Ipv4Addr::from(src), DST_V4);
            prop_assert!(packet.verify_checksum_v4(Ipv4Addr::from(src), DST_V4));
            packet.fill_checksum_v6(&SRC_V6, &Ipv6Addr::from(dst));
            prop_assert!(packet.verify_checksum_v6(&SRC_V6, &Ipv6Addr::from(dst)));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                prop_assert_eq!(HEADER_LEN + packet.payload().len(), usize::from(packet.len()));
                let _ = Repr::parse(&packet);
            }
        }
    }
}
