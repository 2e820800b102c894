//! Zero-copy views over untrusted bytes, in the style of smoltcp's `wire` module.
//!
//! Each protocol has a `Packet<T: AsRef<[u8]>>` view (or `Frame` for Ethernet) with `new_checked`, which validates
//! every length the getters rely on, and `new_unchecked` for emitting into a buffer the caller sized. Field offsets
//! live in a private `field` module as named ranges. A `Repr` is the parsed, owned meaning of a header, with
//! `parse`, `emit` and `buffer_len`/`header_len`.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod outer;
pub mod proxy;
pub mod quic;
pub mod tcp;
pub mod udp;
pub mod vxlan;

/// A byte range of a fixed-size field.
pub(crate) type Field = core::ops::Range<usize>;
/// The rest of a packet, from an offset on.
pub(crate) type Rest = core::ops::RangeFrom<usize>;

/// Why bytes could not be read as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header, or than a length field claims.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the protocol forbids (bad version, header length, flag).
    #[error("malformed")]
    Malformed,
    /// A checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Well-formed, but a kind this code does not handle (for example ARP for a non-IPv4 protocol).
    #[error("unsupported")]
    Unsupported,
}

/// Result of parsing wire bytes.
pub type Result<T> = core::result::Result<T, WireError>;

/// Copies a fixed-size field out of a buffer, as an array for `u16::from_be_bytes`, `Ipv4Addr::from` and the like.
///
/// Panics if the buffer is shorter than the field (the callers' `check_len` rules that out) or if the field is not
/// `N` bytes long (a bug in a `field` table).
pub(crate) fn read<const N: usize>(buffer: &[u8], field: Field) -> [u8; N] {
    let mut bytes = [0; N];
    bytes.copy_from_slice(&buffer[field]);
    bytes
}
