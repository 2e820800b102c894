//! VXLAN headers (RFC 7348 §5), carried in UDP to port 4789, followed by the inner Ethernet frame.
//!
//! ```text
//!  0       7 8                            31
//! +---------+-------------------------------+
//! |R R R R I R R R|      reserved (24)      |   flags: I = 0x08
//! +---------------+-------------+-----------+
//! |          VNI (24)           | reserved  |
//! +-----------------------------+-----------+
//! ```
//!
//! RFC 7348 §5: the I flag "MUST be set to 1 for a valid VXLAN Network ID", and the reserved fields "MUST be set to
//! zero on transmission and ignored on receipt". So [`Repr::parse`] requires the I flag and looks at nothing else
//! but the VNI, which also lets extensions that use reserved bits (GPE, GBP) through as plain VXLAN; [`Repr::emit`]
//! writes exactly `08 00 00 00` and the VNI followed by `00`.

use super::{read, Result, WireError};
use crate::types::Vni;

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// The IANA-assigned UDP destination port.
pub const DEFAULT_PORT: u16 = 4789;
/// The I flag: the VNI field is valid.
pub const I_FLAG: u8 = 0x08;

mod field {
    use crate::wire::{Field, Rest};

    pub const FLAGS: usize = 0;
    pub const RESERVED_AFTER_FLAGS: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED_AFTER_VNI: usize = 7;
    pub const PAYLOAD: Rest = 8..;
}

/// A view of a VXLAN header and the frame it carries.
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

    /// Checks that the buffer holds the header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole flags byte, reserved bits included.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set, making the VNI valid.
    pub fn i_flag(&self) -> bool {
        self.flags() & I_FLAG != 0
    }

    /// The VNI field, whether or not the I flag vouches for it.
    pub fn vni(&self) -> Vni {
        let [high, middle, low] = read(self.buffer.as_ref(), field::VNI);
        Vni::from_u24(u32::from_be_bytes([0, high, middle, low]))
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the whole flags byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the VNI field.
    pub fn set_vni(&mut self, vni: Vni) {
        let [_, high, middle, low] = vni.get().to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&[high, middle, low]);
    }

    /// Zeroes both reserved fields, as RFC 7348 §5 requires on transmission.
    pub fn clear_reserved(&mut self) {
        let buffer = self.buffer.as_mut();
        buffer[field::RESERVED_AFTER_FLAGS].fill(0);
        buffer[field::RESERVED_AFTER_VNI] = 0;
    }

    /// The inner Ethernet frame, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The meaning of a VXLAN header: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The VXLAN Network Identifier.
    pub vni: Vni,
}

impl Repr {
    /// Reads a header. Without the I flag the VNI is not valid, so that is [`WireError::Malformed`]; reserved bits
    /// are ignored.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.i_flag() {
            return Err(WireError::Malformed);
        }
        Ok(Self { vni: packet.vni() })
    }

    /// Length of the header `emit` writes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Bytes `emit` writes; the same as `header_len`, since this Repr does not describe the inner frame.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: only the I flag set, reserved fields zero. `packet` must hold at least `header_len` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_flags(I_FLAG);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MacAddr;
    use crate::wire::{ethernet, ipv4};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// RFC 7348 §5 layout for VNI 0x123456.
    const HEADER_0X123456: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00];

    fn vni(value: u32) -> Vni {
        Vni::new(value).unwrap()
    }

    #[test]
    fn known_answer() {
        let mut bytes = [0xffu8; HEADER_LEN];
        Repr { vni: vni(0x12_3456) }.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, HEADER_0X123456);

        let packet = Packet::new_checked(&HEADER_0X123456[..]).unwrap();
        assert_eq!(packet.flags(), I_FLAG);
        assert!(packet.i_flag());
        assert_eq!(packet.vni(), vni(0x12_3456));
        assert!(packet.payload().is_empty());
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: vni(0x12_3456) }));
    }

    #[test]
    fn reserved_bits_are_ignored_on_receive() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x12, 0x34, 0x56, 0xff];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.flags(), 0xff);
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: vni(0x12_3456) }));
    }

    #[test]
    fn rejects_missing_i_flag() {
        let mut bytes = HEADER_0X123456;
        Packet::new_unchecked(&mut bytes[..]).set_flags(!I_FLAG);
        assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()), Err(WireError::Malformed));
    }

    #[test]
    fn rejects_truncated() {
        assert_eq!(Packet::new_checked(&HEADER_0X123456[..7]), Err(WireError::Truncated));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&HEADER_0X123456[..3])), Err(WireError::Truncated));
    }

    /// A VXLAN datagram's UDP payload as a capture shows it: VNI 4097 carrying an ICMP echo request from
    /// 198.19.0.1 (02:00:c6:13:00:01) to 198.19.0.2 (02:00:c6:13:00:02).
    const CAPTURED: [u8; 58] = [
        // VXLAN
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x01, 0x00, //
        // Ethernet
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x02, 0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, 0x08, 0x00, //
        // IPv4: ident 0x1c46, DF, TTL 64, ICMP
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x92, 0x69, //
        0xc6, 0x13, 0x00, 0x01, 0xc6, 0x13, 0x00, 0x02, //
        // ICMP echo request, id 0x4a2f, sequence 1, "weft-e2e"
        0x08, 0x00, 0x70, 0x2b, 0x4a, 0x2f, 0x00, 0x01, 0x77, 0x65, 0x66, 0x74, 0x2d, 0x65, 0x32, 0x65,
    ];

    #[test]
    fn captured_datagram_end_to_end() {
        let vxlan = Packet::new_checked(&CAPTURED[..]).unwrap();
        assert_eq!(Repr::parse(&vxlan), Ok(Repr { vni: vni(4097) }));

        let frame = ethernet::Frame::new_checked(vxlan.payload()).unwrap();
        let eth = ethernet::Repr::parse(&frame).unwrap();
        assert_eq!(eth.src_addr, MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x01]));
        assert_eq!(eth.dst_addr, MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x02]));
        assert_eq!((eth.vlan_tci, eth.ethertype), (None, ethernet::ethertype::IPV4));

        let packet = ipv4::Packet::new_checked(frame.payload()).unwrap();
        let ip = ipv4::Repr::parse(&packet).unwrap();
        assert_eq!((ip.src_addr, ip.dst_addr), (Ipv4Addr::new(198, 19, 0, 1), Ipv4Addr::new(198, 19, 0, 2)));
        assert_eq!((ip.next_header, ip.payload_len, ip.hop_limit), (ipv4::protocol::ICMP, 16, 64));
        let icmp = packet.payload();
        assert_eq!(icmp[0], 8, "echo request");
        assert_eq!(crate::wire::checksum::data(icmp), 0xffff, "ICMP checksum");
    }

    proptest! {
        #[test]
        fn round_trip(value in 0..=Vni::MAX, fill in any::<u8>()) {
            let repr = Repr { vni: vni(value) };
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let [_, high, middle, low] = value.to_be_bytes();
            prop_assert_eq!(&bytes[..], &[I_FLAG, 0, 0, 0, high, middle, low, 0][..]);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn parse_reads_only_the_i_flag_and_vni(mut bytes in any::<[u8; HEADER_LEN]>()) {
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            let parsed = Repr::parse(&packet);
            let [high, middle, low] = read(&bytes, field::VNI);
            let expected = Vni::from_u24(u32::from_be_bytes([0, high, middle, low]));
            prop_assert_eq!(parsed, if bytes[field::FLAGS] & I_FLAG != 0 {
                Ok(Repr { vni: expected })
            } else {
                Err(WireError::Malformed)
            });
            bytes[field::FLAGS] |= I_FLAG;
            prop_assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Ok(Repr { vni: expected }));
        }
    }
}
