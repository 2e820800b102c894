//! TCP headers (RFC 9293 §3.1), with the checksum over the IPv4 pseudo-header (RFC 9293 §3.1, "Checksum") or the
//! IPv6 one (RFC 8200 §8.1).
//!
//! TCP has no length field: the segment is the whole IP payload, so the view must be given exactly that slice.
//! Options are carried as bytes and not interpreted (RFC 9293 §3.2). The bits between the data offset and the
//! flags (reserved, and AE from RFC 3168's successors) are left alone by every setter.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ipv4::protocol;
use super::{checksum, read, Result, WireError};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Length of a header with the most options the data offset can describe (15 words).
pub const MAX_HEADER_LEN: usize = 60;

/// The control bits of the flags byte (RFC 9293 §3.1; ECE and CWR from RFC 3168 §6.1).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is significant.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo.
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced.
    pub const CWR: u8 = 0x80;
}

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUMBER: Field = 4..8;
    pub const ACK_NUMBER: Field = 8..12;
    /// Data offset in 32-bit words (high nibble), then reserved bits.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Offset of the checksum field in the header: the `csum_offset` a checksum offload names for TCP.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A view of a TCP segment: header, options and payload.
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

    /// Checks that the fixed header fits, that the data offset covers at least the fixed header, and that the
    /// options it announces fit.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.header_len() < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if self.header_len() > len {
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

    /// The sequence number of the first payload byte (or of the SYN).
    pub fn seq_number(&self) -> u32 {
        u32::from_be_bytes(read(self.buffer.as_ref(), field::SEQ_NUMBER))
    }

    /// The acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        u32::from_be_bytes(read(self.buffer.as_ref(), field::ACK_NUMBER))
    }

    /// Length of the header with its options, in bytes (the data offset counts 32-bit words).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The control bits; see [`flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The receive window, unscaled.
    pub fn window(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::WINDOW))
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::CHECKSUM))
    }

    /// The urgent pointer, meaningful only with [`flags::URG`].
    pub fn urgent_pointer(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::URGENT))
    }

    /// The options: the header bytes after the fixed header.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the checksum verifies over IPv4.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.sum_with(|len| checksum::pseudo_header_v4(src, dst, protocol::TCP, len)) == Some(0xffff)
    }

    /// Whether the checksum verifies over IPv6.
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.sum_with(|len| checksum::pseudo_header_v6(src, dst, protocol::TCP, len)) == Some(0xffff)
    }

    /// The sum of the whole segment and its pseudo-header, or `None` if the segment is too long for any
    /// pseudo-header (it cannot verify then).
    fn sum_with(&self, pseudo_header: impl FnOnce(u32) -> u16) -> Option<u16> {
        let segment = self.buffer.as_ref();
        let len = u32::try_from(segment.len()).ok()?;
        Some(checksum::combine(&[pseudo_header(len), checksum::data(segment)]))
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

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::SEQ_NUMBER].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::ACK_NUMBER].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the header length in bytes, keeping the reserved bits. The data offset counts 32-bit words, so `len`
    /// should be a multiple of 4 from 20 to 60; anything else is written as `len / 4`, masked to four bits.
    pub fn set_header_len(&mut self, len: usize) {
        let byte = &mut self.buffer.as_mut()[field::DATA_OFFSET];
        *byte = (*byte & 0x0f) | (((len / 4) as u8 & 0x0f) << 4);
    }

    /// Sets the control bits.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the receive window.
    pub fn set_window(&mut self, value: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the checksum field; see [`fill_checksum_v4`](Self::fill_checksum_v4).
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_pointer(&mut self, value: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&value.to_be_bytes());
    }

    /// The options, mutably.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let options = HEADER_LEN..self.header_len();
        &mut self.buffer.as_mut()[options]
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let payload = self.header_len()..;
        &mut self.buffer.as_mut()[payload]
    }

    /// Computes and writes the checksum over IPv4; call it once header and payload are in place.
    ///
    /// # Panics
    /// If the segment is 4 GiB or longer, which no IP packet can carry.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let sum = self.sum_with(|len| checksum::pseudo_header_v4(src, dst, protocol::TCP, len));
        self.set_checksum(!sum.expect("TCP segment over 4 GiB"));
    }

    /// Computes and writes the checksum over IPv6; call it once header and payload are in place.
    ///
    /// # Panics
    /// If the segment is 4 GiB or longer, which no IP packet can carry.
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let sum = self.sum_with(|len| checksum::pseudo_header_v6(src, dst, protocol::TCP, len));
        self.set_checksum(!sum.expect("TCP segment over 4 GiB"));
    }
}

/// The meaning of a TCP header. Like [`super::udp::Repr`], the checksum is not part of it: it needs the IP
/// addresses and the payload, so [`Repr::emit`] writes zero for the caller to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Control bits; see [`flags`].
    pub flags: u8,
    /// Receive window, unscaled.
    pub window: u16,
    /// Urgent pointer.
    pub urgent_pointer: u16,
    /// Option bytes, padded by the sender to a multiple of 4, at most 40.
    pub options: &'a [u8],
    /// Length of the payload in bytes.
    pub payload_len: usize,
}

impl<'a> Repr<'a> {
    /// Reads a header; `packet` must be exactly the segment (the IP payload).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self> {
        packet.check_len()?;
        let bytes = packet.buffer.as_ref();
        let header_len = packet.header_len();
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window(),
            urgent_pointer: packet.urgent_pointer(),
            options: &bytes[HEADER_LEN..header_len],
            payload_len: bytes.len() - header_len,
        })
    }

    /// Length of the header `emit` writes: the fixed header and the options.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Length of header and payload.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header and options with a zero checksum and zero reserved bits. `packet` must hold at least
    /// `header_len` bytes.
    ///
    /// # Panics
    /// If the options are not a multiple of 4 bytes or longer than 40: the data offset cannot describe them.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        assert!(
            self.options.len().is_multiple_of(4) && self.header_len() <= MAX_HEADER_LEN,
            "TCP options must be whole words, at most 40 bytes"
        );
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.buffer.as_mut()[field::DATA_OFFSET] = 0;
        packet.set_header_len(self.header_len());
        packet.set_flags(self.flags);
        packet.set_window(self.window);
        packet.set_checksum(0);
        packet.set_urgent_pointer(self.urgent_pointer);
        packet.options_mut().copy_from_slice(self.options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
    const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
    const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// 49152 → 80, PSH|ACK, with a timestamp option and payload "weft", checksummed between 198.19.0.1 and
    /// 198.19.0.2 (checksum computed independently).
    const SEGMENT_V4: [u8; 36] = [
        0xc0, 0x00, 0x00, 0x50, // ports
        0x01, 0x02, 0x03, 0x04, // sequence number
        0x0a, 0x0b, 0x0c, 0x0d, // acknowledgment number
        0x80, 0x18, 0xff, 0xff, // data offset 8 words, PSH|ACK, window
        0x20, 0xea, 0x00, 0x00, // checksum, urgent pointer
        0x01, 0x01, 0x08, 0x0a, // NOP, NOP, timestamps (kind 8, length 10)
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // TSval, TSecr
        0x77, 0x65, 0x66, 0x74, // payload
    ];
    /// The checksum of the same segment between 2001:db8::1 and 2001:db8::2.
    const CHECKSUM_V6: u16 = 0x519f;
    const OPTIONS: [u8; 12] = [0x01, 0x01, 0x08, 0x0a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

    fn repr() -> Repr<'static> {
        Repr {
            src_port: 49152,
            dst_port: 80,
            seq_number: 0x0102_0304,
            ack_number: 0x0a0b_0c0d,
            flags: flags::PSH | flags::ACK,
            window: 0xffff,
            urgent_pointer: 0,
            options: &OPTIONS,
            payload_len: 4,
        }
    }

    #[test]
    fn parse() {
        let packet = Packet::new_checked(&SEGMENT_V4[..]).unwrap();
        assert_eq!((packet.src_port(), packet.dst_port()), (49152, 80));
        assert_eq!((packet.seq_number(), packet.ack_number()), (0x0102_0304, 0x0a0b_0c0d));
        assert_eq!((packet.header_len(), packet.flags(), packet.window()), (32, 0x18, 0xffff));
        assert_eq!((packet.checksum(), packet.urgent_pointer()), (0x20ea, 0));
        assert_eq!(packet.options(), &OPTIONS);
        assert_eq!(packet.payload(), b"weft");
        assert!(packet.verify_checksum_v4(SRC_V4, DST_V4));
        assert!(!packet.verify_checksum_v4(DST_V4, DST_V4));
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    #[test]
    fn emit_and_fill_checksums() {
        let mut bytes = [0xffu8; 36];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        assert_eq!(packet.checksum(), 0);
        packet.payload_mut().copy_from_slice(b"weft");
        packet.fill_checksum_v4(SRC_V4, DST_V4);
        assert_eq!(bytes, SEGMENT_V4);

        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum_v6(&SRC_V6, &DST_V6);
        assert_eq!(packet.checksum(), CHECKSUM_V6);
        assert!(packet.verify_checksum_v6(&SRC_V6, &DST_V6));
        assert!(!packet.verify_checksum_v6(&SRC_V6, &SRC_V6));
    }

    #[test]
    fn setters_keep_reserved_bits() {
        let mut bytes = SEGMENT_V4;
        bytes[field::DATA_OFFSET] |= 0x01;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_header_len(20);
        assert_eq!(packet.buffer[field::DATA_OFFSET], 0x51);
        assert_eq!(packet.header_len(), 20);
        assert!(packet.options().is_empty());
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(Packet::new_checked(&SEGMENT_V4[..19]), Err(WireError::Truncated));
        // The options announced by the data offset are cut short.
        assert_eq!(Packet::new_checked(&SEGMENT_V4[..31]), Err(WireError::Truncated));
        let mut bytes = SEGMENT_V4;
        Packet::new_unchecked(&mut bytes[..]).set_header_len(16);
        assert_eq!(Packet::new_checked(&bytes[..]), Err(WireError::Malformed));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&SEGMENT_V4[..4])), Err(WireError::Truncated));
        // Without a payload, the header may end the buffer.
        assert!(Packet::new_checked(&SEGMENT_V4[..32]).unwrap().payload().is_empty());
    }

    proptest! {
        #[test]
        fn round_trip(
            options in (0..=10usize).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4)),
            (src_port, dst_port, seq_number, ack_number) in any::<(u16, u16, u32, u32)>(),
            (flags, window, urgent_pointer) in any::<(u8, u16, u16)>(),
            payload_len in 0..=1500usize,
            fill in any::<u8>(),
        ) {
            let repr = Repr {
                src_port,
                dst_port,
                seq_number,
                ack_number,
                flags,
                window,
                urgent_pointer,
                options: &options,
                payload_len,
            };
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(packet.options(), &options[..]);
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
        }

        #[test]
        fn filled_checksums_verify(payload in proptest::collection::vec(any::<u8>(), 0..64), src in any::<u32>()) {
            let repr = Repr { payload_len: payload.len(), ..repr() };
            let mut bytes = vec![0; repr.buffer_len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            packet.fill_checksum_v4(Ipv4Addr::from(src), DST_V4);
            prop_assert!(packet.verify_checksum_v4(Ipv4Addr::from(src), DST_V4));
            packet.fill_checksum_v6(&SRC_V6, &DST_V6);
            prop_assert!(packet.verify_checksum_v6(&SRC_V6, &DST_V6));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                prop_assert_eq!(packet.header_len() + packet.payload().len(), bytes.len());
                let _ = Repr::parse(&packet);
                let _ = packet.verify_checksum_v4(SRC_V4, DST_V4);
            }
        }
    }
}
