//! QUIC headers as far as a datagram can be judged before decryption: the version-independent invariants
//! (RFC 8999 §5) and the QUIC v1 long-header fields (RFC 9000 §17.2, Initial §17.2.2). The control plane's UDP
//! socket runs every received datagram through [`classify`] so that what its QUIC endpoint (quinn) would drop
//! without a trace is counted by reason ([`QuicDrop`]).
//!
//! ```text
//! long:  |1|1|T T|X X X X| version (32) | DCID len (8) | DCID (0..160) | SCID len (8) | SCID (0..160) | ...
//!        Initial (T = 0) continues: token length (varint) | token | length (varint) | packet number | payload
//! short: |0|1|S|X X X X X| DCID (our connection id length) | packet number | payload
//! ```
//!
//! The verdicts follow quinn-proto 0.11's `Endpoint::handle` and `handle_first_packet` in order, so that a
//! datagram counted here is one quinn drops (or answers with a version negotiation or a close, never with a
//! connection), and one quinn would use is never counted:
//! - The fixed bit (0x40) must be set: quinn's endpoint is configured not to grease it (RFC 9287), so a clear bit is
//!   not QUIC.
//! - Connection ids are at most 20 bytes in v1 (RFC 9000 §17.2); quinn parses them before the version.
//! - A datagram whose destination connection id is one of ours ([`classify`]'s `is_local`) belongs to a connection
//!   (or did): it is passed on, whatever it is.
//! - Otherwise only a v1 Initial can start a connection: it must come in a datagram of at least 1,200 bytes
//!   (RFC 9000 §14.1) with a destination connection id of at least 8 bytes (§7.2), and hold the 16-byte header
//!   protection sample (RFC 9001 §5.4.2). Such a packet is returned as [`Incoming::NewInitial`] for the caller to
//!   check with the Initial keys (RFC 9001 §5.2), which need a TLS library this crate does not have.
//!
//! Only the first packet of a datagram is judged: quinn drops the coalesced rest with it.

use super::{read, Field};

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 1;
/// The version field of a Version Negotiation packet (RFC 8999 §6).
pub const VERSION_NEGOTIATION: u32 = 0;
/// The longest connection id QUIC v1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;
/// The shortest datagram that may carry a client's Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// The shortest destination connection id of a client's first Initial (RFC 9000 §7.2).
pub const MIN_INITIAL_DCID_LEN: usize = 8;
/// Header protection samples 16 bytes starting 4 bytes after the packet number's offset (RFC 9001 §5.4.2).
pub const SAMPLE_OFFSET: usize = 4;
/// Length of the header protection sample (RFC 9001 §5.4.2).
pub const SAMPLE_LEN: usize = 16;

/// Header form bit: 1 for a long header (RFC 8999 §5.1).
const HEADER_FORM: u8 = 0x80;
/// The fixed bit, 1 in every QUIC v1 packet (RFC 9000 §17.2).
const FIXED_BIT: u8 = 0x40;
/// The long packet type bits (RFC 9000 §17.2).
const LONG_TYPE: u8 = 0x30;

mod field {
    use crate::wire::Field;

    pub const FIRST: usize = 0;
    pub const VERSION: Field = 1..5;
    pub const DCID_LEN: usize = 5;
    /// Where the destination connection id of a short header starts.
    pub const SHORT_DCID: usize = 1;
}

/// Why a datagram for the QUIC port was dropped before reaching any connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuicDrop {
    /// Empty, or shorter than its header, its length field or its header protection sample.
    TooShort,
    /// Not QUIC v1: the fixed bit is clear, or a connection id is longer than 20 bytes.
    NotQuic,
    /// A long header with a version other than 1 (quinn answers a large one with Version Negotiation).
    UnknownVersion,
    /// An Initial that would start a connection, in a datagram smaller than 1,200 bytes.
    InitialTooShort,
    /// An Initial that would start a connection, with a destination connection id shorter than 8 bytes (quinn
    /// answers with a close).
    InitialBadCid,
    /// An Initial that would start a connection but fails header protection, its reserved bits or its AEAD tag
    /// under the Initial keys: not from a QUIC client (decided by the caller, see [`Incoming::NewInitial`]).
    InitialUnauthenticated,
    /// Any other packet whose destination connection id is not one of ours.
    UnknownConnection,
}

impl QuicDrop {
    /// Every reason, in the order of [`QuicDrop::index`].
    pub const ALL: [QuicDrop; 7] = [
        QuicDrop::TooShort,
        QuicDrop::NotQuic,
        QuicDrop::UnknownVersion,
        QuicDrop::InitialTooShort,
        QuicDrop::InitialBadCid,
        QuicDrop::InitialUnauthenticated,
        QuicDrop::UnknownConnection,
    ];

    /// The reason's name in the API and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            QuicDrop::TooShort => "too_short",
            QuicDrop::NotQuic => "not_quic",
            QuicDrop::UnknownVersion => "unknown_version",
            QuicDrop::InitialTooShort => "initial_too_short",
            QuicDrop::InitialBadCid => "initial_bad_cid",
            QuicDrop::InitialUnauthenticated => "initial_unauthenticated",
            QuicDrop::UnknownConnection => "unknown_connection",
        }
    }

    /// A dense index, for a counter array.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A datagram that may go on to the QUIC endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// Its destination connection id is one of ours.
    Local,
    /// A v1 Initial for a connection id that is not ours: a client's first flight, if it authenticates under the
    /// Initial keys derived from `dst_cid`.
    NewInitial(InitialPacket<'a>),
}

/// Where the parts of an Initial packet are, for removing header protection and opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialPacket<'a> {
    /// The destination connection id, from which the Initial keys are derived.
    pub dst_cid: &'a [u8],
    /// The offset of the (protected) packet number.
    pub pn_offset: usize,
    /// The length of the packet (header, packet number and payload) at the start of the datagram.
    pub packet_len: usize,
}

/// Judges the first packet of `datagram`. `local_cid_len` is the length of the connection ids we issue (short
/// headers carry no length); `is_local` says whether a connection id is one of ours.
pub fn classify<'a>(
    datagram: &'a [u8],
    local_cid_len: usize,
    is_local: impl Fn(&[u8]) -> bool,
) -> Result<Incoming<'a>, QuicDrop> {
    let Some(&first) = datagram.get(field::FIRST) else { return Err(QuicDrop::TooShort) };
    if first & FIXED_BIT == 0 {
        return Err(QuicDrop::NotQuic);
    }
    if first & HEADER_FORM == 0 {
        let dst_cid = slice(datagram, field::SHORT_DCID..field::SHORT_DCID + local_cid_len)?;
        return if is_local(dst_cid) { Ok(Incoming::Local) } else { Err(QuicDrop::UnknownConnection) };
    }
    slice(datagram, field::VERSION)?;
    let version = u32::from_be_bytes(read(datagram, field::VERSION));
    let mut reader = Reader { buffer: datagram, position: field::DCID_LEN };
    let dst_cid = reader.connection_id()?;
    reader.connection_id()?;
    if version != VERSION_NEGOTIATION && version != VERSION_1 {
        return Err(QuicDrop::UnknownVersion);
    }
    if is_local(dst_cid) {
        return Ok(Incoming::Local);
    }
    // Version Negotiation, Retry, Handshake or 0-RTT for someone else: nothing of ours (weft never sends 0-RTT).
    if version == VERSION_NEGOTIATION || first & LONG_TYPE != 0 {
        return Err(QuicDrop::UnknownConnection);
    }
    let token_len = reader.varint()?;
    reader.skip(token_len)?;
    let length = reader.varint()?;
    let pn_offset = reader.position;
    let packet_len = usize::try_from(length).ok().and_then(|l| l.checked_add(pn_offset)).ok_or(QuicDrop::TooShort)?;
    if packet_len > datagram.len() {
        return Err(QuicDrop::TooShort);
    }
    if datagram.len() < MIN_INITIAL_DATAGRAM {
        return Err(QuicDrop::InitialTooShort);
    }
    if dst_cid.len() < MIN_INITIAL_DCID_LEN {
        return Err(QuicDrop::InitialBadCid);
    }
    if packet_len < pn_offset + SAMPLE_OFFSET + SAMPLE_LEN {
        return Err(QuicDrop::TooShort);
    }
    Ok(Incoming::NewInitial(InitialPacket { dst_cid, pn_offset, packet_len }))
}

fn slice(buffer: &[u8], range: Field) -> Result<&[u8], QuicDrop> {
    buffer.get(range).ok_or(QuicDrop::TooShort)
}

/// A cursor over a long header.
struct Reader<'a> {
    buffer: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], QuicDrop> {
        let end = self.position.checked_add(len).ok_or(QuicDrop::TooShort)?;
        let bytes = slice(self.buffer, self.position..end)?;
        self.position = end;
        Ok(bytes)
    }

    fn skip(&mut self, len: u64) -> Result<(), QuicDrop> {
        self.take(usize::try_from(len).map_err(|_| QuicDrop::TooShort)?).map(drop)
    }

    /// A length-prefixed connection id (RFC 8999 §5.1), at most [`MAX_CID_LEN`] bytes.
    fn connection_id(&mut self) -> Result<&'a [u8], QuicDrop> {
        let len = usize::from(self.take(1)?[0]);
        if len > MAX_CID_LEN {
            return Err(QuicDrop::NotQuic);
        }
        self.take(len)
    }

    /// A variable-length integer (RFC 9000 §16): the top two bits of the first byte give its length.
    fn varint(&mut self) -> Result<u64, QuicDrop> {
        let first = self.take(1)?[0];
        let rest = self.take((1 << (first >> 6)) - 1)?;
        Ok(rest.iter().fold(u64::from(first & 0x3f), |value, &byte| value << 8 | u64::from(byte)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 8] = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8];

    fn is_ours(cid: &[u8]) -> bool {
        cid == OURS
    }

    fn judge(datagram: &[u8]) -> Result<Incoming<'_>, QuicDrop> {
        classify(datagram, OURS.len(), is_ours)
    }

    /// A v1 Initial (RFC 9000 §17.2.2) with a 2-byte length field, padded to `datagram_len`.
    fn initial(dst_cid: &[u8], token: &[u8], datagram_len: usize) -> Vec<u8> {
        let mut p = vec![0xc3, 0, 0, 0, 1, dst_cid.len() as u8];
        p.extend(dst_cid);
        p.extend([4, 9, 9, 9, 9]);
        p.push(token.len() as u8);
        p.extend(token);
        let rest = datagram_len - p.len() - 2;
        p.extend([0x40 | (rest >> 8) as u8, rest as u8]);
        p.resize(datagram_len, 0x55);
        p
    }

    #[test]
    fn short_headers_pass_only_for_our_connection_ids() {
        let mut ours = vec![0x41];
        ours.extend(OURS);
        ours.extend([1, 2, 3]);
        assert_eq!(judge(&ours), Ok(Incoming::Local));
        let mut other = ours.clone();
        other[3] ^= 1;
        assert_eq!(judge(&other), Err(QuicDrop::UnknownConnection));
        assert_eq!(judge(&ours[..8]), Err(QuicDrop::TooShort));
        assert_eq!(judge(&ours[..9]), Ok(Incoming::Local));
    }

    #[test]
    fn empty_and_fixed_bit_clear() {
        assert_eq!(judge(&[]), Err(QuicDrop::TooShort));
        assert_eq!(judge(&[0x00]), Err(QuicDrop::NotQuic));
        assert_eq!(judge(&[0x80, 0, 0, 0, 1]), Err(QuicDrop::NotQuic));
        assert_eq!(judge(&[0x40]), Err(QuicDrop::TooShort));
    }

    #[test]
    fn long_headers_truncated_or_with_long_connection_ids() {
        let packet = initial(&[7; 8], &[], 1200);
        for len in [1, 4, 5, 6, 13, 14, 22] {
            assert_eq!(judge(&packet[..len]), Err(QuicDrop::TooShort), "{len} bytes");
        }
        let mut long_cid = vec![0xc0, 0, 0, 0, 1, 21];
        long_cid.extend([0; 40]);
        assert_eq!(judge(&long_cid), Err(QuicDrop::NotQuic));
    }

    #[test]
    fn unknown_versions_and_version_negotiation() {
        let mut packet = initial(&[7; 8], &[], 1200);
        packet[1..5].copy_from_slice(&0x0a1a_2a3a_u32.to_be_bytes());
        assert_eq!(judge(&packet), Err(QuicDrop::UnknownVersion));
        // Unknown even for one of our connection ids: quinn checks the version first.
        let mut ours = initial(&OURS, &[], 1200);
        ours[4] = 2;
        assert_eq!(judge(&ours), Err(QuicDrop::UnknownVersion));
        let mut negotiation = vec![0xc0, 0, 0, 0, 0, 8];
        negotiation.extend(OURS);
        negotiation.extend([0, 0, 0, 0, 1]);
        assert_eq!(judge(&negotiation), Ok(Incoming::Local));
        negotiation[6] = 0;
        assert_eq!(judge(&negotiation), Err(QuicDrop::UnknownConnection));
    }

    #[test]
    fn handshake_and_other_long_types_need_our_connection_id() {
        for kind in [0x10, 0x20, 0x30] {
            let mut packet = initial(&OURS, &[], 1200);
            packet[0] = 0xc0 | kind;
            assert_eq!(judge(&packet), Ok(Incoming::Local));
            packet[6] ^= 0xff;
            assert_eq!(judge(&packet), Err(QuicDrop::UnknownConnection));
        }
    }

    #[test]
    fn a_client_first_initial_is_handed_back_with_its_parts() {
        let cid = [7; 12];
        let packet = initial(&cid, &[1, 2, 3], 1250);
        let pn_offset = 1 + 4 + 1 + 12 + 1 + 4 + 1 + 3 + 2;
        assert_eq!(
            judge(&packet),
            Ok(Incoming::NewInitial(InitialPacket { dst_cid: &cid, pn_offset, packet_len: 1250 }))
        );
        // Coalesced packets after the Initial are not judged.
        let mut coalesced = packet.clone();
        coalesced.extend([0; 100]);
        assert_eq!(
            judge(&coalesced),
            Ok(Incoming::NewInitial(InitialPacket { dst_cid: &cid, pn_offset, packet_len: 1250 }))
        );
        // Our own connection id (the server's Initials to us as a client) is not judged further.
        assert_eq!(judge(&initial(&OURS, &[], 300)), Ok(Incoming::Local));
    }

    #[test]
    fn initials_too_small_with_short_ids_or_lengths_beyond_the_datagram() {
        assert_eq!(judge(&initial(&[7; 8], &[], 1199)), Err(QuicDrop::InitialTooShort));
        assert_eq!(judge(&initial(&[7; 7], &[], 1200)), Err(QuicDrop::InitialBadCid));
        assert_eq!(judge(&initial(&[7; 0], &[], 1200)), Err(QuicDrop::InitialBadCid));
        let mut long = initial(&[7; 8], &[], 1200);
        long[20] = 0x47; // length 0x07xx: beyond the datagram
        assert_eq!(judge(&long), Err(QuicDrop::TooShort));
        // A length that leaves no room for the header protection sample.
        let mut short = initial(&[7; 8], &[], 1200);
        short[20..22].copy_from_slice(&[0x40, 19]);
        assert_eq!(judge(&short), Err(QuicDrop::TooShort));
        short[21] = 20;
        assert!(matches!(judge(&short), Ok(Incoming::NewInitial(_))));
        // A token length beyond the datagram.
        let mut token = initial(&[7; 8], &[], 1200);
        token[19] = 0x7f;
        token[20] = 0xff;
        assert_eq!(judge(&token[..100]), Err(QuicDrop::TooShort));
    }

    #[test]
    fn varints_of_every_length() {
        for (bytes, value) in [
            (&[0x25][..], 37),
            (&[0x7b, 0xbd], 15_293),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c], 151_288_809_941_952_652),
        ] {
            // RFC 9000 §A.1's examples.
            let mut reader = Reader { buffer: bytes, position: 0 };
            assert_eq!(reader.varint(), Ok(value));
            assert_eq!(reader.position, bytes.len());
            let mut truncated = Reader { buffer: &bytes[..bytes.len() - 1], position: 0 };
            assert!(bytes.len() == 1 || truncated.varint() == Err(QuicDrop::TooShort));
        }
    }

    #[test]
    fn names_and_indices_are_dense_and_distinct() {
        for (i, reason) in QuicDrop::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(QuicDrop::ALL.iter().filter(|r| r.as_str() == reason.as_str()).count(), 1);
        }
    }
}
