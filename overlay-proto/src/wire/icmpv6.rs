//! ICMPv6 messages (RFC 4443 §2.1), with the checksum over the IPv6 pseudo-header (RFC 4443 §2.3, RFC 8200 §8.1),
//! and the two Neighbor Discovery messages that address resolution needs: Neighbor Solicitation (RFC 4861 §4.3) and
//! Neighbor Advertisement (RFC 4861 §4.4), with their options (§4.6) and the Source/Target Link-Layer Address
//! options (§4.6.1) for Ethernet (RFC 2464 §6).
//!
//! ICMPv6 has no length field: a message is the whole IPv6 payload, so the view's buffer must be exactly that (as
//! [`ipv6::Packet::payload`](super::ipv6::Packet::payload) gives it), and the checksum covers all of it.
//!
//! [`NdiscRepr::parse`] makes the checks of RFC 4861 §7.1.1 and §7.1.2 that the message alone allows (code, length,
//! options, target). The checks that need the IPv6 header are the caller's: the checksum (it needs the addresses,
//! see [`Packet::verify_checksum`]), the hop limit of 255, and the rules for an unspecified source.

use std::net::Ipv6Addr;

use super::ipv4::protocol;
use super::{checksum, read, Result, WireError};
use crate::types::MacAddr;

/// Length of the header every ICMPv6 message starts with: type, code and checksum.
pub const HEADER_LEN: usize = 4;
/// Length of a Neighbor Solicitation or Advertisement without options.
pub const NEIGHBOR_HEADER_LEN: usize = 24;
/// Length of a Source or Target Link-Layer Address option carrying an Ethernet address: one 8-octet unit.
pub const LINK_LAYER_ADDR_OPTION_LEN: usize = 8;

/// ICMPv6 message types this crate looks at (IANA "ICMPv6 'type' Numbers").
pub mod message_type {
    /// Neighbor Solicitation, RFC 4861 §4.3.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbor Advertisement, RFC 4861 §4.4.
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// Neighbor Discovery option types this crate looks at (RFC 4861 §4.6).
pub mod option_type {
    /// Source Link-Layer Address, carried by solicitations.
    pub const SOURCE_LINK_LAYER_ADDR: u8 = 1;
    /// Target Link-Layer Address, carried by advertisements.
    pub const TARGET_LINK_LAYER_ADDR: u8 = 2;
}

/// The unit of an option's length field, in bytes.
const OPTION_UNIT: usize = 8;

mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// Neighbor Solicitation: reserved. Neighbor Advertisement: the R, S and O flags in the top three bits, then
    /// 29 reserved bits.
    pub const NEIGHBOR_FLAGS_RESERVED: Field = 4..8;
    pub const TARGET_ADDR: Field = 8..24;
    pub const OPTIONS: Rest = 24..;
}

/// Offsets inside one Neighbor Discovery option.
mod option_field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    /// Length of the whole option, type and length bytes included, in units of 8 bytes.
    pub const LENGTH: usize = 1;
    pub const BODY: Rest = 2..;
    /// The address in a link-layer address option for Ethernet.
    pub const LINK_LAYER_ADDR: Field = 2..8;
}

/// The flags of a Neighbor Advertisement (RFC 4861 §4.4): a set of [`ROUTER`](Self::ROUTER),
/// [`SOLICITED`](Self::SOLICITED) and [`OVERRIDE`](Self::OVERRIDE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeighborFlags(u8);

impl NeighborFlags {
    /// The sender is a router.
    pub const ROUTER: Self = Self(0x80);
    /// The advertisement answers a solicitation.
    pub const SOLICITED: Self = Self(0x40);
    /// The advertisement should replace a cached link-layer address.
    pub const OVERRIDE: Self = Self(0x20);
    const ALL: u8 = Self::ROUTER.0 | Self::SOLICITED.0 | Self::OVERRIDE.0;

    /// No flag set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Reads the first byte of the flags field, dropping the reserved bits: receivers must ignore them (§4.4).
    pub const fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & Self::ALL)
    }

    /// The flags as the first byte of the flags field.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The R flag.
    pub const fn is_router(self) -> bool {
        self.contains(Self::ROUTER)
    }

    /// The S flag.
    pub const fn is_solicited(self) -> bool {
        self.contains(Self::SOLICITED)
    }

    /// The O flag.
    pub const fn is_override(self) -> bool {
        self.contains(Self::OVERRIDE)
    }
}

impl core::ops::BitOr for NeighborFlags {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// A view of an ICMPv6 message.
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

    /// Checks that the buffer holds the common header and, for a Neighbor Solicitation or Advertisement, the fixed
    /// part that [`target_addr`](Self::target_addr) and [`neighbor_flags`](Self::neighbor_flags) read. Options are
    /// checked as they are read, by [`options`](Self::options).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        // `header_len` reads the type, so the short-circuit order matters.
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

    /// The message type, one of [`message_type`] or another IANA number.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The code, which refines the type; 0 for Neighbor Discovery.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes(read(self.buffer.as_ref(), field::CHECKSUM))
    }

    /// Length of the fixed part this view knows: 24 bytes for a Neighbor Solicitation or Advertisement, otherwise
    /// the 4-byte common header.
    pub fn header_len(&self) -> usize {
        match self.msg_type() {
            message_type::NEIGHBOR_SOLICIT | message_type::NEIGHBOR_ADVERT => NEIGHBOR_HEADER_LEN,
            _ => HEADER_LEN,
        }
    }

    /// The flags of a Neighbor Advertisement; reserved bits are dropped.
    pub fn neighbor_flags(&self) -> NeighborFlags {
        let word = read::<4>(self.buffer.as_ref(), field::NEIGHBOR_FLAGS_RESERVED);
        NeighborFlags::from_bits_truncate(word[0])
    }

    /// The target address of a Neighbor Solicitation or Advertisement.
    pub fn target_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read::<16>(self.buffer.as_ref(), field::TARGET_ADDR))
    }

    /// The options of a Neighbor Solicitation or Advertisement, validated one by one as the iterator reaches them.
    pub fn options(&self) -> NdiscOptions<'_> {
        // `get` rather than indexing: a message of another type may be shorter than the fixed part.
        NdiscOptions { rest: self.buffer.as_ref().get(field::OPTIONS).unwrap_or_default() }
    }

    /// Whether the checksum verifies for a message from `src` to `dst`.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.sum(src, dst) == 0xffff
    }

    /// The sum of the whole message and its pseudo-header.
    fn sum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> u16 {
        let message = self.buffer.as_ref();
        // An IPv6 payload is at most 2^32 - 1 bytes even as a jumbogram, so the length fits.
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        checksum::combine(&[checksum::pseudo_header_v6(src, dst, protocol::ICMPV6, len), checksum::data(message)])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the code.
    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field; see [`fill_checksum`](Self::fill_checksum).
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Zeroes the reserved field of a Neighbor Solicitation (and the flags of an Advertisement).
    pub fn clear_reserved(&mut self) {
        self.buffer.as_mut()[field::NEIGHBOR_FLAGS_RESERVED].fill(0);
    }

    /// Sets the flags of a Neighbor Advertisement and zeroes the reserved bits after them.
    pub fn set_neighbor_flags(&mut self, flags: NeighborFlags) {
        let word = u32::from(flags.bits()) << 24;
        self.buffer.as_mut()[field::NEIGHBOR_FLAGS_RESERVED].copy_from_slice(&word.to_be_bytes());
    }

    /// Sets the target address of a Neighbor Solicitation or Advertisement.
    pub fn set_target_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::TARGET_ADDR].copy_from_slice(&addr.octets());
    }

    /// The options area of a Neighbor Solicitation or Advertisement, mutably.
    pub fn options_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::OPTIONS]
    }

    /// Computes and writes the checksum for a message from `src` to `dst`; call it once the whole message is in
    /// place. Unlike UDP's, an ICMPv6 checksum of zero has no special meaning, so it is written as computed.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let sum = self.sum(src, dst);
        self.set_checksum(!sum);
    }
}

/// One Neighbor Discovery option (RFC 4861 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdiscOption<'a> {
    /// The option type, one of [`option_type`] or another IANA number.
    pub option_type: u8,
    /// What follows the type and length bytes: `8 * length - 2` bytes.
    pub body: &'a [u8],
}

impl NdiscOption<'_> {
    /// The Ethernet address of a Source or Target Link-Layer Address option; `None` for other options, or for a
    /// link-layer address option that is not one unit long and so does not hold an Ethernet address (RFC 2464 §6).
    pub fn link_layer_addr(&self) -> Option<MacAddr> {
        match self.option_type {
            option_type::SOURCE_LINK_LAYER_ADDR | option_type::TARGET_LINK_LAYER_ADDR => {
                <[u8; 6]>::try_from(self.body).ok().map(MacAddr)
            }
            _ => None,
        }
    }
}

/// The options of a Neighbor Discovery message, from [`Packet::options`].
///
/// Yields an error for an option with length 0 ([`WireError::Malformed`], RFC 4861 §4.6: nodes must silently
/// discard such a packet) or one that runs past the end of the message ([`WireError::Truncated`]), and then stops.
#[derive(Debug, Clone)]
pub struct NdiscOptions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NdiscOptions<'a> {
    type Item = Result<NdiscOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        if rest.len() < option_field::BODY.start {
            return Some(Err(WireError::Truncated));
        }
        let len = usize::from(rest[option_field::LENGTH]) * OPTION_UNIT;
        if len == 0 {
            return Some(Err(WireError::Malformed));
        }
        if len > rest.len() {
            return Some(Err(WireError::Truncated));
        }
        let (option, after) = rest.split_at(len);
        self.rest = after;
        Some(Ok(NdiscOption { option_type: option[option_field::TYPE], body: &option[option_field::BODY] }))
    }
}

impl core::iter::FusedIterator for NdiscOptions<'_> {}

/// The meaning of a Neighbor Solicitation or Advertisement with an Ethernet link layer.
///
/// The checksum is not part of it: [`NdiscRepr::parse`] does not check it, since it needs the IPv6 addresses (use
/// [`Packet::verify_checksum`]), and [`NdiscRepr::emit`] writes zero for the caller to fill with
/// [`Packet::fill_checksum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdiscRepr {
    /// "What is the link-layer address of `target_addr`?" (RFC 4861 §4.3).
    NeighborSolicit {
        /// The address asked about; never multicast.
        target_addr: Ipv6Addr,
        /// The sender's address, from the Source Link-Layer Address option.
        lladdr: Option<MacAddr>,
    },
    /// "`target_addr` is at this link-layer address" (RFC 4861 §4.4).
    NeighborAdvert {
        /// The R, S and O flags.
        flags: NeighborFlags,
        /// The address advertised; never multicast.
        target_addr: Ipv6Addr,
        /// The target's address, from the Target Link-Layer Address option.
        lladdr: Option<MacAddr>,
    },
}

impl NdiscRepr {
    /// Reads a Neighbor Solicitation or Advertisement. Other ICMPv6 messages are [`WireError::Unsupported`]; a
    /// code other than 0, a multicast target, a malformed option or a link-layer address option of the wrong size
    /// is [`WireError::Malformed`] (RFC 4861 §7.1.1, §7.1.2). Unknown options are skipped (§4.6); of repeated
    /// link-layer address options the first counts, as in Linux.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        let lladdr_type = match packet.msg_type() {
            message_type::NEIGHBOR_SOLICIT => option_type::SOURCE_LINK_LAYER_ADDR,
            message_type::NEIGHBOR_ADVERT => option_type::TARGET_LINK_LAYER_ADDR,
            _ => return Err(WireError::Unsupported),
        };
        if packet.code() != 0 {
            return Err(WireError::Malformed);
        }
        let target_addr = packet.target_addr();
        if target_addr.is_multicast() {
            return Err(WireError::Malformed);
        }
        let mut lladdr = None;
        for option in packet.options() {
            let option = option?;
            if option.option_type == lladdr_type && lladdr.is_none() {
                lladdr = Some(option.link_layer_addr().ok_or(WireError::Malformed)?);
            }
        }
        Ok(match packet.msg_type() {
            message_type::NEIGHBOR_SOLICIT => Self::NeighborSolicit { target_addr, lladdr },
            _ => Self::NeighborAdvert { flags: packet.neighbor_flags(), target_addr, lladdr },
        })
    }

    /// The address asked about or advertised.
    pub const fn target_addr(&self) -> Ipv6Addr {
        match *self {
            Self::NeighborSolicit { target_addr, .. } | Self::NeighborAdvert { target_addr, .. } => target_addr,
        }
    }

    /// The link-layer address the message carries, if any.
    pub const fn lladdr(&self) -> Option<MacAddr> {
        match *self {
            Self::NeighborSolicit { lladdr, .. } | Self::NeighborAdvert { lladdr, .. } => lladdr,
        }
    }

    /// Length of the message `emit` writes: the fixed part and, with a link-layer address, its option.
    pub const fn buffer_len(&self) -> usize {
        match self.lladdr() {
            Some(_) => NEIGHBOR_HEADER_LEN + LINK_LAYER_ADDR_OPTION_LEN,
            None => NEIGHBOR_HEADER_LEN,
        }
    }

    /// Writes the message with a zero checksum. `packet` must be exactly `buffer_len` bytes long, since the message
    /// ends where the buffer does; fill the checksum afterwards with [`Packet::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let (msg_type, lladdr_type) = match *self {
            Self::NeighborSolicit { .. } => (message_type::NEIGHBOR_SOLICIT, option_type::SOURCE_LINK_LAYER_ADDR),
            Self::NeighborAdvert { .. } => (message_type::NEIGHBOR_ADVERT, option_type::TARGET_LINK_LAYER_ADDR),
        };
        packet.set_msg_type(msg_type);
        packet.set_code(0);
        packet.set_checksum(0);
        match *self {
            Self::NeighborSolicit { .. } => packet.clear_reserved(),
            Self::NeighborAdvert { flags, .. } => packet.set_neighbor_flags(flags),
        }
        packet.set_target_addr(self.target_addr());
        if let Some(lladdr) = self.lladdr() {
            let option = packet.options_mut();
            option[option_field::TYPE] = lladdr_type;
            // One 8-octet unit; the constant is 8, so the division cannot truncate.
            option[option_field::LENGTH] = (LINK_LAYER_ADDR_OPTION_LEN / OPTION_UNIT) as u8;
            option[option_field::LINK_LAYER_ADDR].copy_from_slice(lladdr.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// fe80::19:ff:fe00:101, the link-local address of 02:19:00:00:01:01 (RFC 4291 §2.5.1).
    const SRC: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x19, 0xff, 0xfe00, 0x101);
    /// ff02::1:ff00:21, the solicited-node multicast address of the target (RFC 4291 §2.7.1).
    const DST: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x21);
    const TARGET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0x21);
    const MAC: MacAddr = MacAddr([0x02, 0x19, 0x00, 0x00, 0x01, 0x01]);

    /// SRC asks DST who has TARGET, giving its MAC. The checksum, 0x49d6, was computed offline (Python, and
    /// checked by tshark) and is recomputed by `reference_checksum` below.
    const SOLICIT: [u8; 32] = [
        0x87, 0x00, 0x49, 0xd6, // Neighbor Solicitation, code 0, checksum
        0x00, 0x00, 0x00, 0x00, // reserved
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21, // target
        0x01, 0x01, 0x02, 0x19, 0x00, 0x00, 0x01, 0x01, // Source Link-Layer Address option, one unit
    ];

    /// 2001:db8:19::21 answers SRC that it is at 02:19:00:00:00:21, solicited and overriding.
    const ADVERT: [u8; 32] = [
        0x88, 0x00, 0x00, 0x00, // Neighbor Advertisement, code 0, checksum (not filled)
        0x60, 0x00, 0x00, 0x00, // S and O
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21, // target
        0x02, 0x01, 0x02, 0x19, 0x00, 0x00, 0x00, 0x21, // Target Link-Layer Address option, one unit
    ];

    /// RFC 1071 done the long way, independently of [`checksum`]: the complement of the ones'-complement sum of the
    /// pseudo-header (RFC 8200 §8.1) and the message with its checksum field zeroed.
    fn reference_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        let start = bytes.len();
        bytes.extend_from_slice(message);
        bytes[start + 2] = 0;
        bytes[start + 3] = 0;
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += (u32::from(pair[0]) << 8) | u32::from(pair[1]);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn solicit_repr() -> NdiscRepr {
        NdiscRepr::NeighborSolicit { target_addr: TARGET, lladdr: Some(MAC) }
    }

    fn advert_repr() -> NdiscRepr {
        NdiscRepr::NeighborAdvert {
            flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
            target_addr: TARGET,
            lladdr: Some(MacAddr([0x02, 0x19, 0x00, 0x00, 0x00, 0x21])),
        }
    }

    #[test]
    fn known_answer_checksum() {
        assert_eq!(reference_checksum(&SRC, &DST, &SOLICIT), 0x49d6);
        let packet = Packet::new_checked(&SOLICIT[..]).unwrap();
        assert_eq!(packet.checksum(), 0x49d6);
        assert!(packet.verify_checksum(&SRC, &DST));
        // The pseudo-header sum does not depend on the order of the addresses, but it does on their values.
        assert!(!packet.verify_checksum(&Ipv6Addr::new(0xfe80, 0, 0, 0, 0x19, 0xff, 0xfe00, 0x102), &DST));
        assert!(!packet.verify_checksum(&SRC, &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x22)));
    }

    #[test]
    fn parse_solicit() {
        let packet = Packet::new_checked(&SOLICIT[..]).unwrap();
        assert_eq!((packet.msg_type(), packet.code(), packet.header_len()), (135, 0, NEIGHBOR_HEADER_LEN));
        assert_eq!(packet.target_addr(), TARGET);
        let options: Vec<_> = packet.options().collect();
        assert_eq!(
            options,
            [Ok(NdiscOption { option_type: option_type::SOURCE_LINK_LAYER_ADDR, body: &SOLICIT[26..] })]
        );
        assert_eq!(options[0].unwrap().link_layer_addr(), Some(MAC));
        assert_eq!(NdiscRepr::parse(&packet), Ok(solicit_repr()));
    }

    #[test]
    fn parse_advert() {
        let packet = Packet::new_checked(&ADVERT[..]).unwrap();
        let flags = packet.neighbor_flags();
        assert!(!flags.is_router() && flags.is_solicited() && flags.is_override());
        assert_eq!(NdiscRepr::parse(&packet), Ok(advert_repr()));
        // Reserved bits are ignored.
        let mut bytes = ADVERT;
        bytes[4..8].copy_from_slice(&[0xff; 4]);
        let all = NeighborFlags::ROUTER | NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE;
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap().neighbor_flags(), all);
    }

    #[test]
    fn emit_and_fill_checksum() {
        let mut bytes = [0xffu8; 32];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        solicit_repr().emit(&mut packet);
        assert_eq!(packet.checksum(), 0);
        packet.fill_checksum(&SRC, &DST);
        assert_eq!(bytes, SOLICIT);

        let mut bytes = [0xffu8; 32];
        advert_repr().emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, ADVERT);
    }

    #[test]
    fn without_link_layer_address() {
        let repr = NdiscRepr::NeighborSolicit { target_addr: TARGET, lladdr: None };
        assert_eq!(repr.buffer_len(), NEIGHBOR_HEADER_LEN);
        let packet = Packet::new_checked(&SOLICIT[..NEIGHBOR_HEADER_LEN]).unwrap();
        assert_eq!(packet.options().next(), None);
        assert_eq!(NdiscRepr::parse(&packet), Ok(repr));
    }

    #[test]
    fn options_skip_unknown_and_keep_the_first_address() {
        // A Nonce option (RFC 3971 §5.3, type 14, one unit), then two Source Link-Layer Address options.
        let mut bytes = [0u8; 48];
        bytes[..32].copy_from_slice(&SOLICIT);
        bytes[24..32].copy_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        bytes[32..40].copy_from_slice(&SOLICIT[24..]);
        bytes[40..48].copy_from_slice(&[1, 1, 0x02, 0x19, 0, 0, 0x09, 0x09]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.options().count(), 3);
        assert_eq!(packet.options().next().unwrap().unwrap().link_layer_addr(), None);
        assert_eq!(NdiscRepr::parse(&packet), Ok(solicit_repr()));
        // In an advertisement a source address option is not the one that counts.
        bytes[0] = message_type::NEIGHBOR_ADVERT;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(NdiscRepr::parse(&packet).unwrap().lladdr(), None);
    }

    #[test]
    fn rejects_bad_options() {
        let parse = |bytes: &[u8]| NdiscRepr::parse(&Packet::new_checked(bytes).unwrap());
        let mut bytes = SOLICIT;
        bytes[25] = 0; // length 0
        assert_eq!(parse(&bytes), Err(WireError::Malformed));
        let packet = Packet::new_unchecked(&bytes[..]);
        let mut options = packet.options();
        assert_eq!((options.next(), options.next()), (Some(Err(WireError::Malformed)), None));
        bytes[25] = 2; // 16 bytes, past the end
        assert_eq!(parse(&bytes), Err(WireError::Truncated));
        // An odd byte after the last option.
        let mut long = [0u8; 33];
        long[..32].copy_from_slice(&SOLICIT);
        assert_eq!(parse(&long), Err(WireError::Truncated));
        // A source address option two units long does not hold an Ethernet address.
        let mut long = [0u8; 40];
        long[..32].copy_from_slice(&SOLICIT);
        long[25] = 2;
        assert_eq!(parse(&long), Err(WireError::Malformed));
        // The same, as an unknown option type, is fine.
        long[24] = 200;
        assert_eq!(parse(&long).unwrap().lladdr(), None);
    }

    #[test]
    fn rejects_invalid_messages() {
        let parse = |bytes: &[u8]| NdiscRepr::parse(&Packet::new_checked(bytes).unwrap());
        let mut bytes = SOLICIT;
        bytes[field::CODE] = 1;
        assert_eq!(parse(&bytes), Err(WireError::Malformed));
        let mut bytes = SOLICIT;
        Packet::new_unchecked(&mut bytes[..]).set_target_addr(DST);
        assert_eq!(parse(&bytes), Err(WireError::Malformed));
        let mut bytes = SOLICIT;
        bytes[field::TYPE] = 128; // Echo Request
        assert_eq!(parse(&bytes), Err(WireError::Unsupported));
    }

    #[test]
    fn rejects_truncated() {
        for len in 0..NEIGHBOR_HEADER_LEN {
            assert_eq!(Packet::new_checked(&SOLICIT[..len]), Err(WireError::Truncated), "{len} bytes");
            assert_eq!(NdiscRepr::parse(&Packet::new_unchecked(&SOLICIT[..len])), Err(WireError::Truncated));
        }
        for len in NEIGHBOR_HEADER_LEN + 1..SOLICIT.len() {
            assert_eq!(NdiscRepr::parse(&Packet::new_checked(&SOLICIT[..len]).unwrap()), Err(WireError::Truncated));
        }
        // Other messages only need the common header.
        assert!(Packet::new_checked(&[128u8, 0, 0, 0][..]).is_ok());
        assert_eq!(Packet::new_checked(&[128u8, 0, 0, 0][..]).unwrap().options().next(), None);
    }

    fn arb_mac() -> impl Strategy<Value = MacAddr> {
        any::<[u8; 6]>().prop_map(MacAddr)
    }

    fn arb_repr() -> impl Strategy<Value = NdiscRepr> {
        let target = any::<u128>().prop_map(Ipv6Addr::from).prop_filter("multicast target", |a| !a.is_multicast());
        prop_oneof![
            (target.clone(), proptest::option::of(arb_mac()))
                .prop_map(|(target_addr, lladdr)| NdiscRepr::NeighborSolicit { target_addr, lladdr }),
            (any::<u8>(), target, proptest::option::of(arb_mac())).prop_map(|(flags, target_addr, lladdr)| {
                NdiscRepr::NeighborAdvert { flags: NeighborFlags::from_bits_truncate(flags), target_addr, lladdr }
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr(), fill in any::<u8>()) {
            let mut bytes = vec![fill; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(NdiscRepr::parse(&Packet::new_checked(&bytes[..]).unwrap()), Ok(repr));
        }

        #[test]
        fn filled_checksums_verify(repr in arb_repr(), src in any::<u128>(), dst in any::<u128>()) {
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let mut bytes = vec![0; repr.buffer_len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.fill_checksum(&src, &dst);
            prop_assert!(packet.verify_checksum(&src, &dst));
            prop_assert_eq!(packet.checksum(), reference_checksum(&src, &dst, &bytes));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), ns in any::<bool>()) {
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                // Half the time make it a Neighbor Discovery message, so the option parser sees the bytes.
                if ns {
                    *first = message_type::NEIGHBOR_SOLICIT;
                }
            }
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let lens: usize = packet.options().map(|o| o.map_or(0, |o| o.body.len() + 2)).sum();
                prop_assert!(packet.header_len() + lens <= bytes.len());
                let _ = NdiscRepr::parse(&packet);
                let _ = packet.verify_checksum(&Ipv6Addr::UNSPECIFIED, &Ipv6Addr::UNSPECIFIED);
            }
        }
    }
}
