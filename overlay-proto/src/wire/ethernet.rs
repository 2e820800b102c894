//! Ethernet II frames (IEEE 802.3-2018 §3.1.1, type field per §3.2.6) with at most one VLAN tag: an IEEE 802.1Q
//! C-tag (TPID 0x8100) or an 802.1ad S-tag (TPID 0x88a8), IEEE 802.1Q-2018 §9.
//!
//! The view looks through one tag, so [`Frame::ethertype`] and [`Frame::payload`] are those of the tagged content.
//! A second tag (QinQ) shows up as an inner ethertype of [`ethertype::VLAN`] and is left for the caller. Frames carry
//! no FCS: TAP devices and the inner frames of VXLAN (RFC 7348 §5) have none.

use super::{read, Rest, Result, WireError};
use crate::types::MacAddr;

/// Length of an untagged header: two addresses and the ethertype.
pub const HEADER_LEN: usize = 14;
/// Extra length of one VLAN tag: TPID and TCI.
pub const VLAN_TAG_LEN: usize = 4;

/// Ethertypes this crate looks at (IEEE "EtherType" registry).
pub mod ethertype {
    /// Internet Protocol version 4.
    pub const IPV4: u16 = 0x0800;
    /// Address Resolution Protocol.
    pub const ARP: u16 = 0x0806;
    /// Internet Protocol version 6.
    pub const IPV6: u16 = 0x86dd;
    /// IEEE 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service VLAN tag.
    pub const QINQ: u16 = 0x88a8;
}

mod field {
    use crate::wire::{Field, Rest};

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    /// The ethertype of an untagged frame, or the tag protocol identifier (TPID) of a tagged one.
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
    /// Tag control information: priority (3 bits), drop eligible (1 bit) and VLAN id (12 bits).
    pub const VLAN_TCI: Field = 14..16;
    pub const VLAN_ETHERTYPE: Field = 16..18;
    pub const VLAN_PAYLOAD: Rest = 18..;
}

/// A view of an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it; getters panic if it is too short. Use this when emitting.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds the whole header, including the VLAN tag if the frame has one.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        // `header_len` reads the ethertype, so the short-circuit order matters.
        if len < HEADER_LEN || len < self.header_len() {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination address.
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// The source address.
    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The ethertype of the content, after the VLAN tag if there is one.
    pub fn ethertype(&self) -> u16 {
        let field = if self.is_tagged() { field::VLAN_ETHERTYPE } else { field::ETHERTYPE };
        u16::from_be_bytes(read(self.buffer.as_ref(), field))
    }

    /// The tag control information of the VLAN tag, if there is one.
    pub fn vlan_tci(&self) -> Option<u16> {
        self.is_tagged().then(|| u16::from_be_bytes(read(self.buffer.as_ref(), field::VLAN_TCI)))
    }

    /// Length of the header: 14 bytes, or 18 with a VLAN tag.
    pub fn header_len(&self) -> usize {
        self.payload_field().start
    }

    /// The content after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_field()]
    }

    fn is_tagged(&self) -> bool {
        let tpid = u16::from_be_bytes(read(self.buffer.as_ref(), field::ETHERTYPE));
        matches!(tpid, ethertype::VLAN | ethertype::QINQ)
    }

    fn payload_field(&self) -> Rest {
        if self.is_tagged() {
            field::VLAN_PAYLOAD
        } else {
            field::PAYLOAD
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(addr.as_bytes());
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(addr.as_bytes());
    }

    /// Sets the ethertype of an untagged frame.
    pub fn set_ethertype(&mut self, value: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// Makes the frame 802.1Q-tagged with `tci`, carrying `ethertype`.
    pub fn set_vlan_tag(&mut self, tci: u16, ethertype: u16) {
        let buffer = self.buffer.as_mut();
        buffer[field::ETHERTYPE].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        buffer[field::VLAN_TCI].copy_from_slice(&tci.to_be_bytes());
        buffer[field::VLAN_ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
    }

    /// The content after the header, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let payload = self.payload_field();
        &mut self.buffer.as_mut()[payload]
    }
}

/// The meaning of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: MacAddr,
    /// Destination address.
    pub dst_addr: MacAddr,
    /// The VLAN tag's TCI, if the frame is tagged. `emit` writes an 802.1Q tag.
    pub vlan_tci: Option<u16>,
    /// The content's ethertype. Not [`ethertype::VLAN`] or [`ethertype::QINQ`] on an untagged Repr: that would
    /// emit a frame that reads back as tagged.
    pub ethertype: u16,
}

impl Repr {
    /// Reads the header of a frame.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Self> {
        frame.check_len()?;
        Ok(Self {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            vlan_tci: frame.vlan_tci(),
            ethertype: frame.ethertype(),
        })
    }

    /// Length of the header `emit` writes.
    pub const fn header_len(&self) -> usize {
        match self.vlan_tci {
            Some(_) => HEADER_LEN + VLAN_TAG_LEN,
            None => HEADER_LEN,
        }
    }

    /// Bytes `emit` writes; the same as `header_len`, since this Repr does not describe the payload.
    pub const fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the header into the start of `frame`, which must hold at least `header_len` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, frame: &mut Frame<&mut T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        match self.vlan_tci {
            Some(tci) => frame.set_vlan_tag(tci, self.ethertype),
            None => frame.set_ethertype(self.ethertype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNTAGGED: [u8; 18] = [
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x02, // destination
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, // source
        0x08, 0x06, // ARP
        0xaa, 0xbb, 0xcc, 0xdd, // payload
    ];

    const TAGGED: [u8; 20] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, // source
        0x81, 0x00, // 802.1Q
        0x20, 0x64, // priority 1, VLAN 100
        0x86, 0xdd, // IPv6
        0xaa, 0xbb, // payload
    ];

    const HOST_1: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x01]);
    const HOST_2: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x02]);

    #[test]
    fn parse_untagged() {
        let frame = Frame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(frame.dst_addr(), HOST_2);
        assert_eq!(frame.src_addr(), HOST_1);
        assert_eq!(frame.ethertype(), ethertype::ARP);
        assert_eq!(frame.vlan_tci(), None);
        assert_eq!(frame.header_len(), HEADER_LEN);
        assert_eq!(frame.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        let repr = Repr::parse(&frame).unwrap();
        assert_eq!(repr, Repr { src_addr: HOST_1, dst_addr: HOST_2, vlan_tci: None, ethertype: ethertype::ARP });
    }

    #[test]
    fn parse_tagged() {
        let frame = Frame::new_checked(&TAGGED[..]).unwrap();
        assert!(frame.dst_addr().is_broadcast());
        assert_eq!(frame.ethertype(), ethertype::IPV6);
        assert_eq!(frame.vlan_tci(), Some(0x2064));
        assert_eq!(frame.header_len(), HEADER_LEN + VLAN_TAG_LEN);
        assert_eq!(frame.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn parse_service_tag() {
        let mut bytes = TAGGED;
        bytes[field::ETHERTYPE].copy_from_slice(&ethertype::QINQ.to_be_bytes());
        let frame = Frame::new_checked(&bytes[..]).unwrap();
        assert_eq!((frame.vlan_tci(), frame.ethertype()), (Some(0x2064), ethertype::IPV6));
    }

    #[test]
    fn emit_untagged_and_tagged() {
        let repr = Repr::parse(&Frame::new_checked(&UNTAGGED[..]).unwrap()).unwrap();
        let mut bytes = [0u8; 18];
        let mut frame = Frame::new_unchecked(&mut bytes[..]);
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, UNTAGGED);

        let repr = Repr::parse(&Frame::new_checked(&TAGGED[..]).unwrap()).unwrap();
        assert_eq!(repr.header_len(), 18);
        let mut bytes = [0u8; 20];
        let mut frame = Frame::new_unchecked(&mut bytes[..]);
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(bytes, TAGGED);
    }

    #[test]
    fn rejects_truncated() {
        assert_eq!(Frame::new_checked(&UNTAGGED[..13]), Err(WireError::Truncated));
        assert!(Frame::new_checked(&UNTAGGED[..14]).unwrap().payload().is_empty());
        // A tag announced but cut short.
        assert_eq!(Frame::new_checked(&TAGGED[..17]), Err(WireError::Truncated));
        assert_eq!(Repr::parse(&Frame::new_unchecked(&TAGGED[..15])), Err(WireError::Truncated));
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        let untagged = any::<u16>()
            .prop_filter("a tag TPID reads back as tagged", |t| !matches!(*t, ethertype::VLAN | ethertype::QINQ));
        (any::<[u8; 6]>(), any::<[u8; 6]>(), proptest::option::of(any::<u16>()), untagged).prop_map(
            |(src, dst, vlan_tci, ethertype)| Repr {
                src_addr: MacAddr(src),
                dst_addr: MacAddr(dst),
                vlan_tci,
                ethertype,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr(), fill in any::<u8>()) {
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Frame::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Frame::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(frame) = Frame::new_checked(&bytes[..]) {
                prop_assert_eq!(frame.header_len() + frame.payload().len(), bytes.len());
                prop_assert!(Repr::parse(&frame).is_ok());
            }
        }
    }
}
