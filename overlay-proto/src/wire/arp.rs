//! ARP for IPv4 over Ethernet (RFC 826, "Packet format"; operation codes from RFC 5494 §2).
//!
//! The view reads the fixed 28-byte Ethernet/IPv4 layout. [`Repr::parse`] checks that a packet really is that kind
//! and a request or reply: anything else (other hardware or protocol types, RARP, InARP) is
//! [`WireError::Unsupported`], since ARP suppression only answers IPv4 requests on Ethernet.

use std::net::Ipv4Addr;

use super::ethernet::ethertype;
use super::{read, Result, WireError};
use crate::types::MacAddr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operation codes.
pub mod operation {
    /// "Who has this protocol address?"
    pub const REQUEST: u16 = 1;
    /// "This protocol address is at this hardware address."
    pub const REPLY: u16 = 2;
}

/// Hardware type of Ethernet (IANA "Hardware Types").
const HARDWARE_ETHERNET: u16 = 1;
const ETHERNET_ADDR_LEN: u8 = 6;
const IPV4_ADDR_LEN: u8 = 4;

mod field {
    use crate::wire::Field;

    pub const HARDWARE_TYPE: Field = 0..2;
    pub const PROTOCOL_TYPE: Field = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Field = 6..8;
    pub const SENDER_HARDWARE_ADDR: Field = 8..14;
    pub const SENDER_PROTOCOL_ADDR: Field = 14..18;
    pub const TARGET_HARDWARE_ADDR: Field = 18..24;
    pub const TARGET_PROTOCOL_ADDR: Field = 24..28;
}

/// A view of an ARP packet.
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

    /// Checks that the buffer holds the 28 bytes the getters read. Trailing bytes (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The hardware address space; 1 for Ethernet.
    pub fn hardware_type(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::HARDWARE_TYPE))
    }

    /// The protocol address space, as an ethertype.
    pub fn protocol_type(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::PROTOCOL_TYPE))
    }

    /// Length of a hardware address in bytes.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HARDWARE_LEN]
    }

    /// Length of a protocol address in bytes.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL_LEN]
    }

    /// The operation, one of [`operation`].
    pub fn operation(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::OPERATION))
    }

    /// The sender's MAC address.
    pub fn sender_hardware_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SENDER_HARDWARE_ADDR])
    }

    /// The sender's IPv4 address.
    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read::<4>(self.buffer.as_ref(), field::SENDER_PROTOCOL_ADDR))
    }

    /// The target's MAC address; ignored in a request.
    pub fn target_hardware_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::TARGET_HARDWARE_ADDR])
    }

    /// The target's IPv4 address.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read::<4>(self.buffer.as_ref(), field::TARGET_PROTOCOL_ADDR))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware address space.
    pub fn set_hardware_type(&mut self, value: u16) {
        self.buffer.as_mut()[field::HARDWARE_TYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the protocol address space.
    pub fn set_protocol_type(&mut self, value: u16) {
        self.buffer.as_mut()[field::PROTOCOL_TYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the length of a hardware address.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HARDWARE_LEN] = value;
    }

    /// Sets the length of a protocol address.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL_LEN] = value;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, value: u16) {
        self.buffer.as_mut()[field::OPERATION].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the sender's MAC address.
    pub fn set_sender_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SENDER_HARDWARE_ADDR].copy_from_slice(addr.as_bytes());
    }

    /// Sets the sender's IPv4 address.
    pub fn set_sender_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SENDER_PROTOCOL_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the target's MAC address.
    pub fn set_target_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::TARGET_HARDWARE_ADDR].copy_from_slice(addr.as_bytes());
    }

    /// Sets the target's IPv4 address.
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TARGET_PROTOCOL_ADDR].copy_from_slice(&addr.octets());
    }
}

/// The meaning of an Ethernet/IPv4 ARP request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// [`operation::REQUEST`] or [`operation::REPLY`].
    pub operation: u16,
    /// The sender's MAC address.
    pub sender_hardware_addr: MacAddr,
    /// The sender's IPv4 address.
    pub sender_protocol_addr: Ipv4Addr,
    /// The target's MAC address.
    pub target_hardware_addr: MacAddr,
    /// The target's IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Reads an Ethernet/IPv4 request or reply; other kinds of ARP are [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        let ethernet_ipv4 = packet.hardware_type() == HARDWARE_ETHERNET
            && packet.protocol_type() == ethertype::IPV4
            && packet.hardware_len() == ETHERNET_ADDR_LEN
            && packet.protocol_len() == IPV4_ADDR_LEN;
        let operation = packet.operation();
        if !ethernet_ipv4 || !matches!(operation, operation::REQUEST | operation::REPLY) {
            return Err(WireError::Unsupported);
        }
        Ok(Self {
            operation,
            sender_hardware_addr: packet.sender_hardware_addr(),
            sender_protocol_addr: packet.sender_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Bytes `emit` writes: the whole packet.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet into the start of `packet`, which must hold at least `buffer_len` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(ethertype::IPV4);
        packet.set_hardware_len(ETHERNET_ADDR_LEN);
        packet.set_protocol_len(IPV4_ADDR_LEN);
        packet.set_operation(self.operation);
        packet.set_sender_hardware_addr(self.sender_hardware_addr);
        packet.set_sender_protocol_addr(self.sender_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 198.19.0.1 (02:00:c6:13:00:01) asks who has 198.19.0.2.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, // Ethernet
        0x08, 0x00, // IPv4
        0x06, 0x04, // address lengths
        0x00, 0x01, // request
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, // sender MAC
        0xc6, 0x13, 0x00, 0x01, // sender IP
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC, unknown
        0xc6, 0x13, 0x00, 0x02, // target IP
    ];

    fn request_repr() -> Repr {
        Repr {
            operation: operation::REQUEST,
            sender_hardware_addr: MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x01]),
            sender_protocol_addr: Ipv4Addr::new(198, 19, 0, 1),
            target_hardware_addr: MacAddr::default(),
            target_protocol_addr: Ipv4Addr::new(198, 19, 0, 2),
        }
    }

    #[test]
    fn parse_request() {
        let packet = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(packet.operation(), operation::REQUEST);
        assert_eq!(packet.target_protocol_addr(), Ipv4Addr::new(198, 19, 0, 2));
        assert_eq!(Repr::parse(&packet), Ok(request_repr()));
    }

    #[test]
    fn parse_allows_ethernet_padding() {
        let mut padded = [0u8; 46];
        padded[..PACKET_LEN].copy_from_slice(&REQUEST);
        assert_eq!(Repr::parse(&Packet::new_checked(&padded[..]).unwrap()), Ok(request_repr()));
    }

    #[test]
    fn emit_request() {
        let repr = request_repr();
        let mut bytes = [0xffu8; 28];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn rejects_truncated() {
        assert_eq!(Packet::new_checked(&REQUEST[..27]), Err(WireError::Truncated));
        assert_eq!(Repr::parse(&Packet::new_unchecked(&REQUEST[..20])), Err(WireError::Truncated));
    }

    #[test]
    fn rejects_other_kinds() {
        let cases: [(usize, u8); 5] = [
            (field::HARDWARE_TYPE.start, 0x01),   // hardware type 0x0101
            (field::PROTOCOL_TYPE.end - 1, 0xdd), // protocol type 0x08dd
            (field::HARDWARE_LEN, 8),
            (field::PROTOCOL_LEN, 16),
            (field::OPERATION.end - 1, 3), // RARP request
        ];
        for (at, value) in cases {
            let mut bytes = REQUEST;
            bytes[at] = value;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(WireError::Unsupported), "byte {at} = {value}");
        }
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (
            prop_oneof![Just(operation::REQUEST), Just(operation::REPLY)],
            any::<[u8; 6]>(),
            any::<u32>(),
            any::<[u8; 6]>(),
            any::<u32>(),
        )
            .prop_map(|(operation, sha, spa, tha, tpa)| Repr {
                operation,
                sender_hardware_addr: MacAddr(sha),
                sender_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: MacAddr(tha),
                target_protocol_addr: Ipv4Addr::from(tpa),
            })
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr(), fill in any::<u8>()) {
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }
    }
}
