//! TAP offloads through the virtio-net header: segmentation of the superframes a TAP hands us (TSO, USO and checksum
//! offload) and coalescing of received TCP segments into superframes for the TAP (GRO).
//!
//! With `IFF_VNET_HDR`, `TUNSETVNETHDRSZ` = 10 and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 |
//! TUN_F_USO6)`, every TAP read and write starts with a [`VirtioNetHdr`] (`struct virtio_net_hdr` of
//! `include/uapi/linux/virtio_net.h` without `num_buffers`; virtio 1.2 §5.1.6), and the Ethernet frame after it may
//! be a superframe of up to 64 KiB that the wire cannot carry as is.
//!
//! ```text
//!   TAP read ─► VirtioNetHdr::parse ─► segment(hdr, superframe, out, offset, stride, lens)
//!                                        └─► n wire frames, every checksum complete ─► VXLAN/ESP, one per slot
//!   decapsulated frames ─► Coalescer::push(buf, frame) … ─► Coalescer::finish(buf) ─► TAP write (header + superframe)
//! ```
//!
//! # Checksum conventions
//!
//! Reading: with [`flags::NEEDS_CSUM`] the L4 checksum field holds the *pseudo-header* sum, folded and not
//! complemented (Linux fills it so, `th->check = ~tcp_v4_check(len, saddr, daddr, 0)` in `__tcp_v4_send_check`, and
//! the UDP and IPv6 equivalents), and the sum from `csum_start` to the end of the frame, complemented, belongs at
//! `csum_start + csum_offset`. For a single frame we do exactly what the kernel's `skb_checksum_help` does, seed
//! included, and write 0xffff for a computed 0 (`CSUM_MANGLED_0`; for UDP a 0 would mean "no checksum", RFC 768).
//! For a superframe the seed is useless: it covers the superframe's length, not a segment's. Each segment's checksum
//! is computed from scratch over its own pseudo-header, as wireguard-go's `tun/offload_linux.go` does too; so is the
//! IPv4 header checksum, and the kernel's `hdr_len` (the skb's linear length, not always the header length) is
//! ignored in favour of the headers we parse.
//!
//! Writing: a coalesced superframe goes out with [`flags::NEEDS_CSUM`], `csum_start` at the TCP header,
//! `csum_offset` 16 and, in the checksum field, the pseudo-header sum over the superframe's TCP length, folded and not
//! complemented: the state Linux's own stack leaves a `CHECKSUM_PARTIAL` skb in, which `tcp_gso_segment` adjusts per
//! segment and local delivery trusts without verifying. Since the kernel will not look at the payload again, every
//! segment's checksum is verified before it is merged. A lone segment goes out untouched with `flags` 0, not
//! `DATA_VALID`: virtio 1.2 §5.1.6.2.1 forbids the driver side (a TAP writer) to set it, and the kernel verifies the
//! complete checksums itself.
//!
//! Not here: the ioctls and the reads and writes (the `weft` binary's `io` module), and the flow table of a
//! multi-flow GRO; a [`Coalescer`] builds one superframe at a time.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::wire::ethernet::{self, ethertype};
use crate::wire::ipv4::{self, protocol};
use crate::wire::{checksum, ipv6, read, tcp, udp, Field, WireError};

/// The `flags` of a [`VirtioNetHdr`].
pub mod flags {
    /// The L4 checksum is partial: `csum_start` and `csum_offset` say where to complete it.
    pub const NEEDS_CSUM: u8 = 1;
    /// The device verified the checksums (reads only).
    pub const DATA_VALID: u8 = 2;
}

/// The `gso_type` values of a [`VirtioNetHdr`].
pub mod gso {
    /// Not a superframe.
    pub const NONE: u8 = 0;
    /// TCP over IPv4 (TSO).
    pub const TCPV4: u8 = 1;
    /// Legacy UDP fragmentation offload (UFO): IP fragments, not segments. Rejected.
    pub const UDP: u8 = 3;
    /// TCP over IPv6 (TSO).
    pub const TCPV6: u8 = 4;
    /// UDP segmentation offload (USO): the payload splits into datagrams of `gso_size` bytes.
    pub const UDP_L4: u8 = 5;
    /// Bit set with a TCP type when the superframe carries CWR (RFC 3168 ECN).
    pub const ECN: u8 = 0x80;
}

mod field {
    use crate::wire::Field;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    /// Length of the headers; from the kernel, the skb's linear length, so only a hint.
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
}

/// Offset of the checksum in a UDP header (RFC 768): the `csum_offset` USO uses.
const UDP_CHECKSUM_OFFSET: usize = 6;

/// The virtio-net header in front of every TAP read and write, without `num_buffers` (10 bytes). Its fields are
/// little-endian: the TAP is set up for virtio 1.0 byte order, which is little-endian on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// [`flags`] bits.
    pub flags: u8,
    /// One of [`gso`], possibly with [`gso::ECN`].
    pub gso_type: u8,
    /// Length of the Ethernet, IP and L4 headers (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment: the TCP MSS, or the UDP payload per datagram.
    pub gso_size: u16,
    /// Where the checksummed region starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Length on the wire.
    pub const LEN: usize = 10;

    /// Reads the header from the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        if bytes.len() < Self::LEN {
            return Err(OffloadError::BadHeader);
        }
        Ok(Self {
            flags: bytes[field::FLAGS],
            gso_type: bytes[field::GSO_TYPE],
            hdr_len: u16::from_le_bytes(read(bytes, field::HDR_LEN)),
            gso_size: u16::from_le_bytes(read(bytes, field::GSO_SIZE)),
            csum_start: u16::from_le_bytes(read(bytes, field::CSUM_START)),
            csum_offset: u16::from_le_bytes(read(bytes, field::CSUM_OFFSET)),
        })
    }

    /// Writes the header into the start of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than [`LEN`](Self::LEN).
    pub fn emit(&self, bytes: &mut [u8]) {
        bytes[field::FLAGS] = self.flags;
        bytes[field::GSO_TYPE] = self.gso_type;
        bytes[field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        bytes[field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        bytes[field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        bytes[field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Why a superframe could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// A header is cut short or malformed: the virtio-net header, or the superframe's Ethernet, IP, TCP or UDP
    /// header; or `csum_start`/`csum_offset` point outside the frame or, for a superframe, away from its L4
    /// checksum.
    #[error("bad header")]
    BadHeader,
    /// The GSO type is one we do not segment: legacy UFO ([`gso::UDP`]), an unknown value, or [`gso::ECN`] on
    /// anything but TCP.
    #[error("unsupported GSO type {0:#04x}")]
    UnsupportedGsoType(u8),
    /// The frame is not what its GSO type says, or is something we do not segment: another ethertype (stacked
    /// VLAN tags included), IP version or protocol, IPv6 extension headers, an IPv4 fragment.
    #[error("frame does not match its GSO type")]
    UnsupportedPacket,
    /// The IP or UDP length fields disagree with the length of the frame (a jumbogram, a cut frame, trailing
    /// bytes).
    #[error("inconsistent lengths")]
    InconsistentLengths,
    /// `out` cannot hold the segments at the given offset and stride, or `lens` has too few entries.
    #[error("output too small")]
    OutputTooSmall,
    /// A superframe with a `gso_size` of 0.
    #[error("zero GSO size")]
    ZeroGsoSize,
}

/// Splits the superframe `frame` (described by `hdr`) into wire frames written to `out` at `offset + i * stride`
/// (each slot holds at most `stride` bytes; the caller leaves headroom/tailroom inside the stride for its own
/// headers). Writes each segment's length into `lens[i]`. Returns the number of segments.
///
/// Slot `i` is `out[i * stride..(i + 1) * stride]`: `offset` bytes of headroom, the frame, and what is left,
/// `stride - offset - lens[i]`, as tailroom, which the caller checks against its trailer. `out` must hold every
/// slot whole. Nothing is written unless all the segments fit.
///
/// - [`gso::NONE`]: one frame, its checksum completed if [`flags::NEEDS_CSUM`] (see [`complete_checksum`]).
/// - [`gso::TCPV4`], [`gso::TCPV6`] (with or without [`gso::ECN`]): the payload in `gso_size` pieces, each with
///   the headers; the IPv4 identification counts up from the superframe's, sequence numbers advance, FIN and PSH
///   stay on the last segment and CWR on the first, and every IP and TCP checksum is computed afresh.
/// - [`gso::UDP_L4`]: the UDP payload in `gso_size` datagrams, each with its own length and checksum.
pub fn segment(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut [u8],
    offset: usize,
    stride: usize,
    lens: &mut [usize],
) -> Result<usize, OffloadError> {
    let ecn = hdr.gso_type & gso::ECN != 0;
    match (hdr.gso_type & !gso::ECN, ecn) {
        (gso::NONE, false) => segment_none(hdr, frame, out, offset, stride, lens),
        (gso::TCPV4 | gso::TCPV6, _) => segment_l4(hdr, frame, Transport::Tcp, out, offset, stride, lens),
        (gso::UDP_L4, false) => segment_l4(hdr, frame, Transport::Udp, out, offset, stride, lens),
        _ => Err(OffloadError::UnsupportedGsoType(hdr.gso_type)),
    }
}

/// The length of the longest frame [`segment`] cuts from `frame`: the headers plus `gso_size`, or the whole frame
/// when it fits in one. Callers size their slots with it, so full-size segments sit at a fixed stride.
pub fn max_segment_len(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<usize, OffloadError> {
    let (protocol, tcp) = match hdr.gso_type & !gso::ECN {
        gso::NONE => return Ok(frame.len()),
        gso::TCPV4 | gso::TCPV6 => (ipv4::protocol::TCP, true),
        gso::UDP_L4 => (ipv4::protocol::UDP, false),
        other => return Err(OffloadError::UnsupportedGsoType(other)),
    };
    let layout = Layout::parse(frame, protocol)?;
    let l4_header = if tcp {
        let offset = frame.get(layout.l4 + 12).ok_or(OffloadError::BadHeader)?;
        usize::from(offset >> 4) * 4
    } else {
        udp::HEADER_LEN
    };
    Ok((layout.l4 + l4_header + usize::from(hdr.gso_size)).min(frame.len()))
}

/// Completes the partial checksum of a single frame in place, as the kernel's `skb_checksum_help` would: the sum
/// from `csum_start` to the end of the frame, with the checksum field's contents (the pseudo-header sum) as the
/// seed, complemented and written at `csum_start + csum_offset`; a computed 0 is written as 0xffff. Does nothing
/// without [`flags::NEEDS_CSUM`].
pub fn complete_checksum(hdr: &VirtioNetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.flags & flags::NEEDS_CSUM == 0 {
        return Ok(());
    }
    let field = checksum_field(hdr, frame.len())?;
    let sum = checksum::data(&frame[usize::from(hdr.csum_start)..]);
    let value = match !sum {
        0 => 0xffff,
        value => value,
    };
    frame[field].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// The two-byte range `csum_start + csum_offset` names, if it lies inside a frame of `frame_len` bytes.
fn checksum_field(hdr: &VirtioNetHdr, frame_len: usize) -> Result<Field, OffloadError> {
    let at = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
    if at + 2 > frame_len {
        return Err(OffloadError::BadHeader);
    }
    Ok(at..at + 2)
}

fn segment_none(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut [u8],
    offset: usize,
    stride: usize,
    lens: &mut [usize],
) -> Result<usize, OffloadError> {
    if hdr.flags & flags::NEEDS_CSUM != 0 {
        checksum_field(hdr, frame.len())?;
    }
    check_output(out.len(), offset, stride, lens.len(), 1, frame.len())?;
    let slot = &mut out[offset..offset + frame.len()];
    slot.copy_from_slice(frame);
    complete_checksum(hdr, slot)?;
    lens[0] = frame.len();
    Ok(1)
}

/// The transport a GSO type splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

fn segment_l4(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    transport: Transport,
    out: &mut [u8],
    offset: usize,
    stride: usize,
    lens: &mut [usize],
) -> Result<usize, OffloadError> {
    let plan = Plan::new(hdr, frame, transport)?;
    let longest = plan.header_len + plan.payload_len.min(plan.size);
    check_output(out.len(), offset, stride, lens.len(), plan.count, longest)?;

    let (headers, payload) = frame.split_at(plan.header_len);
    for (index, len) in lens.iter_mut().enumerate().take(plan.count) {
        let chunk = &payload[plan.chunk(index)];
        let segment = &mut out[segment_range(offset, stride, index, plan.header_len + chunk.len())];
        segment[..plan.header_len].copy_from_slice(headers);
        segment[plan.header_len..].copy_from_slice(chunk);
        plan.rewrite(segment, index, chunk.len());
        let l4 = &mut segment[plan.layout.l4..];
        match plan.transport {
            Transport::Tcp => {
                let mut packet = tcp::Packet::new_unchecked(l4);
                match &plan.layout.addrs {
                    Addrs::V4(src, dst) => packet.fill_checksum_v4(*src, *dst),
                    Addrs::V6(src, dst) => packet.fill_checksum_v6(src, dst),
                }
            }
            Transport::Udp => {
                let mut packet = udp::Packet::new_unchecked(l4);
                match &plan.layout.addrs {
                    Addrs::V4(src, dst) => packet.fill_checksum_v4(*src, *dst),
                    Addrs::V6(src, dst) => packet.fill_checksum_v6(src, dst),
                }
            }
        }
        *len = segment.len();
    }
    Ok(plan.count)
}

/// How [`segment_gather`] laid out a superframe's segments: a header block per segment in the caller's arena, the
/// payloads left where they are in the superframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gather {
    /// Number of segments.
    pub count: usize,
    /// Bytes per header block: the caller's `front` bytes, then the segment's own headers. Block `i` is
    /// `arena[i * block..(i + 1) * block]`.
    pub block: usize,
}

/// [`segment`] without copying the payload: for each segment writes a header block into `arena` (`front` bytes
/// left for the caller, typically the VXLAN header, then the segment's Ethernet, IP and TCP or UDP headers with
/// every checksum complete) and puts into `payloads[i]` the range of `frame` that follows those headers on the wire.
/// Segment `i` is `arena[i * block + front..(i + 1) * block]` followed by `frame[payloads[i]]`, byte for byte what
/// [`segment`] writes into its slot `i`; the caller sends the two pieces with one gathering system call.
///
/// The payload is read once, for its checksum, and not copied. A frame that is not a superframe ([`gso::NONE`]) is
/// copied whole into its block (its checksum completed), with an empty payload range. Nothing is written unless
/// every block fits in `arena` and `payloads` has an entry per segment ([`OffloadError::OutputTooSmall`]).
pub fn segment_gather(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    front: usize,
    arena: &mut [u8],
    payloads: &mut [Range<usize>],
) -> Result<Gather, OffloadError> {
    let ecn = hdr.gso_type & gso::ECN != 0;
    let transport = match (hdr.gso_type & !gso::ECN, ecn) {
        (gso::NONE, false) => {
            if hdr.flags & flags::NEEDS_CSUM != 0 {
                checksum_field(hdr, frame.len())?;
            }
            let block = front + frame.len();
            if block > arena.len() || payloads.is_empty() {
                return Err(OffloadError::OutputTooSmall);
            }
            arena[front..block].copy_from_slice(frame);
            complete_checksum(hdr, &mut arena[front..block])?;
            payloads[0] = frame.len()..frame.len();
            return Ok(Gather { count: 1, block });
        }
        (gso::TCPV4 | gso::TCPV6, _) => Transport::Tcp,
        (gso::UDP_L4, false) => Transport::Udp,
        _ => return Err(OffloadError::UnsupportedGsoType(hdr.gso_type)),
    };
    let plan = Plan::new(hdr, frame, transport)?;
    let block = front + plan.header_len;
    let fits = plan.count.checked_mul(block).is_some_and(|total| total <= arena.len());
    if !fits || payloads.len() < plan.count {
        return Err(OffloadError::OutputTooSmall);
    }
    let headers = &frame[..plan.header_len];
    for (index, payload) in payloads.iter_mut().enumerate().take(plan.count) {
        let chunk = plan.chunk(index);
        let chunk = plan.header_len + chunk.start..plan.header_len + chunk.end;
        let segment = &mut arena[index * block + front..(index + 1) * block];
        segment.copy_from_slice(headers);
        plan.rewrite_with_len(segment, plan.header_len + chunk.len(), index, chunk.len());
        // The L4 header's length is a multiple of 2 (TCP's of 4, UDP's is 8), so the payload's words line up with
        // the segment's and the two sums add.
        let l4_len = plan.header_len - plan.layout.l4 + chunk.len();
        let (protocol, checksum_at) = match plan.transport {
            Transport::Tcp => (protocol::TCP, tcp::CHECKSUM_OFFSET),
            Transport::Udp => (protocol::UDP, UDP_CHECKSUM_OFFSET),
        };
        let field = plan.layout.l4 + checksum_at..plan.layout.l4 + checksum_at + 2;
        segment[field.clone()].fill(0);
        let sum = checksum::combine(&[
            plan.layout.addrs.pseudo_header(protocol, l4_len),
            checksum::data(&segment[plan.layout.l4..]),
            checksum::data(&frame[chunk.clone()]),
        ]);
        let value = match (!sum, plan.transport) {
            // A computed 0 means "no checksum" to UDP (RFC 768): it is sent as 0xffff, as udp::Packet does.
            (0, Transport::Udp) => 0xffff,
            (value, _) => value,
        };
        segment[field].copy_from_slice(&value.to_be_bytes());
        *payload = chunk;
    }
    Ok(Gather { count: plan.count, block })
}

/// What [`segment`] and [`segment_gather`] derive once from a superframe: where its headers end, how its payload
/// splits, and the TCP fields each segment's own are computed from.
struct Plan {
    layout: Layout,
    transport: Transport,
    /// Ethernet, IP and L4 headers.
    header_len: usize,
    payload_len: usize,
    /// Payload bytes per segment (`gso_size`).
    size: usize,
    count: usize,
    first_seq: u32,
    first_flags: u8,
}

impl Plan {
    fn new(hdr: &VirtioNetHdr, frame: &[u8], transport: Transport) -> Result<Self, OffloadError> {
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let ip_protocol = match transport {
            Transport::Tcp => protocol::TCP,
            Transport::Udp => protocol::UDP,
        };
        let layout = Layout::parse(frame, ip_protocol)?;
        let version_matches = matches!(
            (hdr.gso_type & !gso::ECN, layout.addrs),
            (gso::TCPV4, Addrs::V4(..)) | (gso::TCPV6, Addrs::V6(..)) | (gso::UDP_L4, _)
        );
        if !version_matches {
            return Err(OffloadError::UnsupportedPacket);
        }
        // The TCP fields each segment derives from the superframe's; unused for UDP.
        let (l4_header_len, checksum_offset, first_seq, first_flags) = match transport {
            Transport::Tcp => {
                let packet = tcp::Packet::new_checked(&frame[layout.l4..]).map_err(|_| OffloadError::BadHeader)?;
                (packet.header_len(), tcp::CHECKSUM_OFFSET, packet.seq_number(), packet.flags())
            }
            Transport::Udp => {
                let packet = udp::Packet::new_checked(&frame[layout.l4..]).map_err(|error| match error {
                    WireError::Truncated if frame.len() - layout.l4 >= udp::HEADER_LEN => {
                        OffloadError::InconsistentLengths
                    }
                    _ => OffloadError::BadHeader,
                })?;
                if usize::from(packet.len()) != frame.len() - layout.l4 {
                    return Err(OffloadError::InconsistentLengths);
                }
                (udp::HEADER_LEN, UDP_CHECKSUM_OFFSET, 0, 0)
            }
        };
        // The kernel always asks for the checksum with GSO; when it does, it must name the one we are about to fill.
        if hdr.flags & flags::NEEDS_CSUM != 0
            && (usize::from(hdr.csum_start) != layout.l4 || usize::from(hdr.csum_offset) != checksum_offset)
        {
            return Err(OffloadError::BadHeader);
        }
        let header_len = layout.l4 + l4_header_len;
        let payload_len = frame.len() - header_len;
        let size = usize::from(hdr.gso_size);
        // A superframe without payload (which no stack sends) still yields its headers once.
        let count = payload_len.div_ceil(size).max(1);
        Ok(Self { layout, transport, header_len, payload_len, size, count, first_seq, first_flags })
    }

    /// Segment `index`'s payload, as a range of the superframe's payload.
    fn chunk(&self, index: usize) -> Range<usize> {
        (index * self.size).min(self.payload_len)..((index + 1) * self.size).min(self.payload_len)
    }

    /// Rewrites the headers copied from the superframe at the start of `segment` (the whole segment) for segment
    /// `index` carrying `chunk_len` payload bytes; the L4 checksum is left to the caller.
    fn rewrite(&self, segment: &mut [u8], index: usize, chunk_len: usize) {
        let len = segment.len();
        self.rewrite_with_len(segment, len, index, chunk_len);
    }

    /// [`rewrite`](Self::rewrite) for headers alone (`headers`), of a segment `segment_len` bytes long.
    fn rewrite_with_len(&self, headers: &mut [u8], segment_len: usize, index: usize, chunk_len: usize) {
        // The identification counts up per segment like the kernel's own GSO (inet_gso_segment); over 65535
        // segments it wraps, which IPv4 identification does anyway.
        self.layout.fix_ip_header_len(headers, segment_len, index as u16);
        let l4 = &mut headers[self.layout.l4..];
        match self.transport {
            Transport::Tcp => {
                let mut packet = tcp::Packet::new_unchecked(l4);
                // The offset of a payload byte fits in 32 bits: the superframe's IP length field has 16.
                packet.set_seq_number(self.first_seq.wrapping_add((index * self.size) as u32));
                let mut segment_flags = self.first_flags;
                if index + 1 < self.count {
                    segment_flags &= !(tcp::flags::FIN | tcp::flags::PSH);
                }
                if index > 0 {
                    segment_flags &= !tcp::flags::CWR;
                }
                packet.set_flags(segment_flags);
            }
            Transport::Udp => {
                // At most the superframe's UDP length, which fits its 16-bit field.
                udp::Packet::new_unchecked(l4).set_len((udp::HEADER_LEN + chunk_len) as u16);
            }
        }
    }
}

/// Checks that `count` slots of `stride` bytes fit in `out_len`, that a frame of `longest` bytes fits in a slot
/// after `offset` bytes of headroom, and that `lens` has an entry per segment.
fn check_output(
    out_len: usize,
    offset: usize,
    stride: usize,
    lens: usize,
    count: usize,
    longest: usize,
) -> Result<(), OffloadError> {
    let slots_fit = count.checked_mul(stride).is_some_and(|total| total <= out_len);
    let frame_fits = offset.checked_add(longest).is_some_and(|end| end <= stride);
    if slots_fit && frame_fits && lens >= count {
        Ok(())
    } else {
        Err(OffloadError::OutputTooSmall)
    }
}

/// The IP addresses of a frame, which also say its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Addrs {
    /// The pseudo-header sum for `protocol` over `len` bytes of transport header and payload.
    fn pseudo_header(&self, protocol: u8, len: usize) -> u16 {
        // Frames here are bounded by 16-bit IP length fields, far below 4 GiB.
        let len = len as u32;
        match self {
            Self::V4(src, dst) => checksum::pseudo_header_v4(*src, *dst, protocol, len),
            Self::V6(src, dst) => checksum::pseudo_header_v6(src, dst, protocol, len),
        }
    }
}

/// Where the IP and transport headers of a frame start, and its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Offset of the IP header: the length of the Ethernet header.
    l3: usize,
    /// Offset of the transport header.
    l4: usize,
    addrs: Addrs,
}

impl Layout {
    /// Reads the Ethernet header (at most one VLAN tag) and an IPv4 or IPv6 header whose length field covers exactly
    /// the rest of the frame, carrying `ip_protocol` directly: no IPv4 fragment, no IPv6 extension header.
    fn parse(frame: &[u8], ip_protocol: u8) -> Result<Self, OffloadError> {
        let ethernet = ethernet::Frame::new_checked(frame).map_err(|_| OffloadError::BadHeader)?;
        let l3 = ethernet.header_len();
        let rest = ethernet.payload();
        match ethernet.ethertype() {
            ethertype::IPV4 => {
                let packet = ipv4::Packet::new_unchecked(rest);
                match packet.check_len() {
                    Ok(()) => {}
                    // The header is whole but the total length runs past the frame.
                    Err(WireError::Truncated)
                        if rest.len() >= ipv4::HEADER_LEN && packet.header_len() <= rest.len() =>
                    {
                        return Err(OffloadError::InconsistentLengths)
                    }
                    Err(_) => return Err(OffloadError::BadHeader),
                }
                if usize::from(packet.total_len()) != rest.len() {
                    return Err(OffloadError::InconsistentLengths);
                }
                if packet.more_frags() || packet.frag_offset() != 0 || packet.next_header() != ip_protocol {
                    return Err(OffloadError::UnsupportedPacket);
                }
                let addrs = Addrs::V4(packet.src_addr(), packet.dst_addr());
                Ok(Self { l3, l4: l3 + packet.header_len(), addrs })
            }
            ethertype::IPV6 => {
                let packet = ipv6::Packet::new_unchecked(rest);
                match packet.check_len() {
                    Ok(()) => {}
                    Err(WireError::Truncated) if rest.len() >= ipv6::HEADER_LEN => {
                        return Err(OffloadError::InconsistentLengths)
                    }
                    Err(_) => return Err(OffloadError::BadHeader),
                }
                // Also refuses jumbograms (payload length 0, RFC 2675), which only BIG TCP would send.
                if ipv6::HEADER_LEN + usize::from(packet.payload_len()) != rest.len() {
                    return Err(OffloadError::InconsistentLengths);
                }
                // An extension header shows up as a next header other than the transport.
                if packet.next_header() != ip_protocol {
                    return Err(OffloadError::UnsupportedPacket);
                }
                let addrs = Addrs::V6(packet.src_addr(), packet.dst_addr());
                Ok(Self { l3, l4: l3 + ipv6::HEADER_LEN, addrs })
            }
            _ => Err(OffloadError::UnsupportedPacket),
        }
    }

    /// Rewrites the IP length of a frame of `frame_len` bytes whose headers, in `headers` (the payload may lie
    /// elsewhere), were copied from this layout's frame: the IPv4 total length, identification (plus `ident_step`)
    /// and header checksum, or the IPv6 payload length. The lengths fit their 16-bit fields: frames never outgrow the IP packet they were cut from or
    /// checked against.
    fn fix_ip_header_len(&self, headers: &mut [u8], frame_len: usize, ident_step: u16) {
        let ip_len = frame_len - self.l3;
        match self.addrs {
            Addrs::V4(..) => {
                let mut packet = ipv4::Packet::new_unchecked(&mut headers[self.l3..]);
                packet.set_total_len(ip_len as u16);
                packet.set_ident(packet.ident().wrapping_add(ident_step));
                packet.fill_checksum();
            }
            Addrs::V6(..) => {
                ipv6::Packet::new_unchecked(&mut headers[self.l3..])
                    .set_payload_len((ip_len - ipv6::HEADER_LEN) as u16);
            }
        }
    }
}

/// What [`Coalescer::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Push {
    /// The frame is now part of the superframe (or starts it).
    Appended,
    /// The frame cannot join the superframe being built; `buf` and the coalescer are unchanged.
    NotMergeable,
}

/// The most a superframe's IP length field can say: IPv4's total length, IPv6's payload length.
const MAX_IP_LEN: usize = 0xffff;

/// Accumulates received TCP segments into one superframe.
///
/// The superframe lives in the caller's `buf`, after [`VirtioNetHdr::LEN`] reserved bytes; pass the same `buf` to
/// every [`push`](Self::push) until [`finish`](Self::finish). The pending flow's headers are those of the first
/// segment, kept in `buf`, and each new segment is compared against them. A driving loop:
///
/// ```text
/// for frame in batch {
///     if coalescer.push(buf, frame) == Push::NotMergeable {
///         if let Some(len) = coalescer.finish(buf) { tap.write(&buf[..len]) }
///         if coalescer.push(buf, frame) == Push::NotMergeable { tap.write(zero VirtioNetHdr + frame) }
///     }
/// }
/// if let Some(len) = coalescer.finish(buf) { tap.write(&buf[..len]) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Coalescer {
    /// The first segment's layout; `None` while empty.
    layout: Option<Layout>,
    /// Length of the superframe in `buf`, after the virtio-net header.
    len: usize,
    /// Length of the Ethernet, IP and TCP headers.
    header_len: usize,
    /// Payload length of the first segment: the `gso_size` every segment but the last must have.
    segment_size: usize,
    /// The sequence number the next segment must carry.
    next_seq: u32,
    /// Segments merged so far.
    count: usize,
    /// A segment with PSH or a short payload ended the superframe: nothing may follow it.
    closed: bool,
}

/// What a frame must look like to be coalesced at all, and where its parts are.
struct Candidate {
    layout: Layout,
    header_len: usize,
    seq: u32,
    psh: bool,
    payload_len: usize,
}

impl Candidate {
    /// The cheap checks: TCP over IPv4 without options or fragments, or over IPv6 without extension headers; no
    /// padding after the IP packet; ACK, possibly with PSH, and no other flag; some payload.
    fn parse(frame: &[u8]) -> Option<Self> {
        let layout = Layout::parse(frame, protocol::TCP).ok()?;
        // Like the kernel's inet_gro_receive, which only merges 20-byte IPv4 headers.
        if matches!(layout.addrs, Addrs::V4(..)) && layout.l4 - layout.l3 != ipv4::HEADER_LEN {
            return None;
        }
        let packet = tcp::Packet::new_checked(&frame[layout.l4..]).ok()?;
        let flags = packet.flags();
        if flags & !tcp::flags::PSH != tcp::flags::ACK || packet.payload().is_empty() {
            return None;
        }
        Some(Self {
            layout,
            header_len: layout.l4 + packet.header_len(),
            seq: packet.seq_number(),
            psh: flags & tcp::flags::PSH != 0,
            payload_len: packet.payload().len(),
        })
    }

    /// Whether the IPv4 header checksum and the TCP checksum of `frame` verify.
    fn verify(&self, frame: &[u8]) -> bool {
        let segment = tcp::Packet::new_unchecked(&frame[self.layout.l4..]);
        match &self.layout.addrs {
            Addrs::V4(src, dst) => {
                ipv4::Packet::new_unchecked(&frame[self.layout.l3..]).verify_checksum()
                    && segment.verify_checksum_v4(*src, *dst)
            }
            Addrs::V6(src, dst) => segment.verify_checksum_v6(src, dst),
        }
    }
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no segment is pending.
    pub fn is_empty(&self) -> bool {
        self.layout.is_none()
    }

    /// Tries to append `frame` (a plain Ethernet frame with valid checksums) to the superframe being built in `buf`
    /// (whose first [`VirtioNetHdr::LEN`] bytes are reserved for the header). Returns [`Push::Appended`], or
    /// [`Push::NotMergeable`] (then the caller calls [`finish`](Self::finish) and retries into an empty
    /// coalescer, or writes the frame alone).
    ///
    /// Merges only what the kernel's `tcp_gro_receive` would: the same Ethernet header (addresses, VLAN), IP
    /// version and addresses; for IPv4 the same TOS, TTL and DF, no fragment, and without DF an identification one
    /// more than the last; for IPv6 the same traffic class, flow label and hop limit; the same ports,
    /// acknowledgment number, window and option bytes; the expected sequence number; only ACK, with PSH allowed on
    /// a segment that then ends the superframe; a payload as long as the first segment's, or shorter on the last
    /// one; IP lengths within 16 bits; room in `buf`; and checksums that verify. A frame that fails its checksums
    /// is left for the caller to write alone, so that the kernel drops it.
    pub fn push(&mut self, buf: &mut [u8], frame: &[u8]) -> Push {
        self.push_checked(buf, frame, true)
    }

    /// [`push`](Self::push) for a frame whose integrity is already proven end to end, by the ESP ICV of the packet
    /// that carried it: its IP and TCP checksums are not summed again. The superframe is handed on with
    /// `NEEDS_CSUM`, so the checksum the receiver sees is recomputed either way; what is skipped is only the
    /// detection of corruption, which the ICV already did (and more strongly). Everything else is checked as in
    /// `push`.
    pub fn push_authenticated(&mut self, buf: &mut [u8], frame: &[u8]) -> Push {
        self.push_checked(buf, frame, false)
    }

    fn push_checked(&mut self, buf: &mut [u8], frame: &[u8], verify: bool) -> Push {
        let Some(candidate) = Candidate::parse(frame) else {
            return Push::NotMergeable;
        };
        if self.layout.is_none() {
            if VirtioNetHdr::LEN + frame.len() > buf.len() || (verify && !candidate.verify(frame)) {
                return Push::NotMergeable;
            }
            buf[VirtioNetHdr::LEN..VirtioNetHdr::LEN + frame.len()].copy_from_slice(frame);
            self.begin(&candidate, frame.len());
            return Push::Appended;
        }
        let end = VirtioNetHdr::LEN + self.len;
        let first = VirtioNetHdr::LEN..VirtioNetHdr::LEN + self.header_len;
        if !self.admits(&buf[first.clone()], frame, &candidate, verify, buf.len() - VirtioNetHdr::LEN) {
            return Push::NotMergeable;
        }
        buf[end..end + candidate.payload_len].copy_from_slice(&frame[candidate.header_len..]);
        self.append(&mut buf[first], &candidate);
        Push::Appended
    }

    /// Whether `frame` (parsed as `candidate`) may join the superframe whose first segment's headers are `first`,
    /// in `room` bytes of superframe at most.
    fn admits(&self, first: &[u8], frame: &[u8], candidate: &Candidate, verify: bool, room: usize) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        let new_len = self.len + candidate.payload_len;
        // IPv4 limits the total length to 16 bits, IPv6 the payload after its fixed header.
        let ip_len = match layout.addrs {
            Addrs::V4(..) => new_len - layout.l3,
            Addrs::V6(..) => new_len - layout.l3 - ipv6::HEADER_LEN,
        };
        !self.closed
            && candidate.payload_len <= self.segment_size
            && ip_len <= MAX_IP_LEN
            && new_len <= room
            && self.matches(first, frame, candidate)
            && (!verify || candidate.verify(frame))
    }

    /// Starts a superframe with a frame of `len` bytes, `candidate`.
    fn begin(&mut self, candidate: &Candidate, len: usize) {
        *self = Self {
            layout: Some(candidate.layout),
            len,
            header_len: candidate.header_len,
            segment_size: candidate.payload_len,
            next_seq: candidate.seq.wrapping_add(candidate.payload_len as u32),
            count: 1,
            closed: candidate.psh,
        };
    }

    /// Accounts for `candidate`'s payload joining the superframe whose first headers are `first`.
    fn append(&mut self, first: &mut [u8], candidate: &Candidate) {
        if candidate.psh {
            let mut first = tcp::Packet::new_unchecked(&mut first[candidate.layout.l4..]);
            first.set_flags(first.flags() | tcp::flags::PSH);
        }
        self.len += candidate.payload_len;
        self.next_seq = candidate.seq.wrapping_add(candidate.payload_len as u32);
        self.count += 1;
        self.closed = candidate.psh || candidate.payload_len < self.segment_size;
    }

    /// Completes the superframe: writes the virtio header (GSO TCPV4/TCPV6 with gso_size = first segment's payload
    /// length, NEEDS_CSUM with csum_start/csum_offset, TCP checksum field = pseudo-header sum as Linux expects for
    /// CHECKSUM_PARTIAL; or, for a single segment, gso NONE and the frame untouched with flags 0) and IPv4 total
    /// length/header checksum or IPv6 payload length; returns the total length (header + superframe) or None if
    /// empty. The coalescer is empty afterwards.
    ///
    /// # Panics
    /// If `buf` is shorter than the `buf` given to [`push`](Self::push).
    pub fn finish(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.finish_headers(buf).map(|(total, _)| total)
    }

    /// [`finish`](Self::finish) touching only the virtio-net header and the first segment's headers at the start of
    /// `buf`; returns the total length and the length of that header block.
    fn finish_headers(&mut self, buf: &mut [u8]) -> Option<(usize, usize)> {
        let layout = self.layout?;
        let state = std::mem::take(self);
        let total = VirtioNetHdr::LEN + state.len;
        let block = VirtioNetHdr::LEN + state.header_len;
        let hdr = if state.count == 1 {
            VirtioNetHdr::default()
        } else {
            let headers = &mut buf[VirtioNetHdr::LEN..block];
            layout.fix_ip_header_len(headers, state.len, 0);
            let pseudo_header = layout.addrs.pseudo_header(protocol::TCP, state.len - layout.l4);
            tcp::Packet::new_unchecked(&mut headers[layout.l4..]).set_checksum(pseudo_header);
            // The header lengths and offsets fit in 16 bits: at most 18 + 40 + 60 bytes of headers, and a
            // segment size bounded by the IP length field.
            VirtioNetHdr {
                flags: flags::NEEDS_CSUM,
                gso_type: match layout.addrs {
                    Addrs::V4(..) => gso::TCPV4,
                    Addrs::V6(..) => gso::TCPV6,
                },
                hdr_len: state.header_len as u16,
                gso_size: state.segment_size as u16,
                csum_start: layout.l4 as u16,
                csum_offset: tcp::CHECKSUM_OFFSET as u16,
            }
        };
        hdr.emit(&mut buf[..VirtioNetHdr::LEN]);
        Some((total, block))
    }

    /// Whether `frame` continues the flow of the superframe `first` (its headers are the first segment's).
    fn matches(&self, first: &[u8], frame: &[u8], candidate: &Candidate) -> bool {
        let Some(layout) = self.layout else {
            return false;
        };
        // Same header lengths, hence the same Ethernet header length, IP version and TCP option length.
        if candidate.header_len != self.header_len || candidate.layout.l4 != layout.l4 {
            return false;
        }
        // Same addresses (and so the same version), and the same Ethernet header, VLAN tag included.
        if candidate.layout.addrs != layout.addrs || first[..layout.l3] != frame[..layout.l3] {
            return false;
        }
        let ip_matches = match layout.addrs {
            Addrs::V4(..) => {
                let (a, b) = (
                    ipv4::Packet::new_unchecked(&first[layout.l3..]),
                    ipv4::Packet::new_unchecked(&frame[layout.l3..]),
                );
                a.dscp_ecn() == b.dscp_ecn()
                    && a.hop_limit() == b.hop_limit()
                    && a.dont_frag() == b.dont_frag()
                    // Without DF the identification matters to reassembly, and the kernel's re-segmentation will
                    // count up from the first one: only merge what already counts up.
                    && (a.dont_frag() || b.ident() == a.ident().wrapping_add(self.count as u16))
            }
            Addrs::V6(..) => {
                let (a, b) = (
                    ipv6::Packet::new_unchecked(&first[layout.l3..]),
                    ipv6::Packet::new_unchecked(&frame[layout.l3..]),
                );
                a.traffic_class() == b.traffic_class()
                    && a.flow_label() == b.flow_label()
                    && a.hop_limit() == b.hop_limit()
            }
        };
        let (a, b) = (
            tcp::Packet::new_unchecked(&first[layout.l4..self.header_len]),
            tcp::Packet::new_unchecked(&frame[layout.l4..self.header_len]),
        );
        ip_matches
            && candidate.seq == self.next_seq
            && a.src_port() == b.src_port()
            && a.dst_port() == b.dst_port()
            && a.ack_number() == b.ack_number()
            && a.window() == b.window()
            && a.options() == b.options()
    }
}

/// Most payload pieces a [`GatherCoalescer`] holds: with the header block, one `writev` of UIO_MAXIOV (1024) iovecs.
pub const GATHER_SEGMENTS: usize = 1023;

/// Room a [`GatherCoalescer`]'s header block needs: the virtio-net header, Ethernet with a VLAN tag, IPv4 with
/// options (or IPv6) and TCP with options.
pub const GATHER_HEAD: usize = VirtioNetHdr::LEN + 18 + 60 + 60;

/// A [`Coalescer`] that copies only headers: the superframe is described as a header block (the virtio-net header
/// and the first segment's headers, fixed up, in the caller's `head`) followed by payload ranges that stay where the
/// segments were received, for one gathering write (`writev`) to the TAP. It merges exactly what [`Coalescer`]
/// merges, and the gathered bytes are exactly what [`Coalescer::finish`] leaves in its buffer.
///
/// The ranges point into the caller's receive buffer (`rx`), which must not be written between the first
/// [`push`](Self::push) and [`finish`](Self::finish): pass the same `rx` and `head` to every call, and finish before
/// receiving into that part of `rx` again.
#[derive(Debug, Clone)]
pub struct GatherCoalescer {
    state: Coalescer,
    /// Where each merged segment's payload lies in `rx`, the first segment's first. Preallocated.
    payloads: Vec<Range<usize>>,
}

impl Default for GatherCoalescer {
    fn default() -> Self {
        Self { state: Coalescer::new(), payloads: Vec::with_capacity(GATHER_SEGMENTS) }
    }
}

impl GatherCoalescer {
    /// An empty coalescer, its range list allocated once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no segment is pending.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// [`Coalescer::push`] for the frame at `rx[frame]`; `head` holds at least [`GATHER_HEAD`] bytes.
    pub fn push(&mut self, head: &mut [u8], rx: &[u8], frame: Range<usize>) -> Push {
        self.push_checked(head, rx, frame, true)
    }

    /// [`Coalescer::push_authenticated`] for the frame at `rx[frame]`.
    pub fn push_authenticated(&mut self, head: &mut [u8], rx: &[u8], frame: Range<usize>) -> Push {
        self.push_checked(head, rx, frame, false)
    }

    fn push_checked(&mut self, head: &mut [u8], rx: &[u8], frame: Range<usize>, verify: bool) -> Push {
        let bytes = &rx[frame.clone()];
        let Some(candidate) = Candidate::parse(bytes) else {
            return Push::NotMergeable;
        };
        let payload = frame.start + candidate.header_len..frame.end;
        if self.state.is_empty() {
            if VirtioNetHdr::LEN + candidate.header_len > head.len() || (verify && !candidate.verify(bytes)) {
                return Push::NotMergeable;
            }
            head[VirtioNetHdr::LEN..VirtioNetHdr::LEN + candidate.header_len]
                .copy_from_slice(&bytes[..candidate.header_len]);
            self.state.begin(&candidate, bytes.len());
            self.payloads.clear();
            self.payloads.push(payload);
            return Push::Appended;
        }
        let first = VirtioNetHdr::LEN..VirtioNetHdr::LEN + self.state.header_len;
        // The payloads are not copied anywhere, so only the IP length bounds the superframe.
        if self.payloads.len() == GATHER_SEGMENTS
            || !self.state.admits(&head[first.clone()], bytes, &candidate, verify, usize::MAX)
        {
            return Push::NotMergeable;
        }
        self.payloads.push(payload);
        self.state.append(&mut head[first], &candidate);
        Push::Appended
    }

    /// Completes the superframe as [`Coalescer::finish`] does, writing only into `head`. Returns the length of the
    /// header block at the start of `head` and the payload ranges of `rx` that follow it, in order; `None` if
    /// empty. The coalescer is empty afterwards (the ranges stay readable until the next push).
    pub fn finish(&mut self, head: &mut [u8]) -> Option<(usize, &[Range<usize>])> {
        let (_, block) = self.state.finish_headers(head)?;
        Some((block, &self.payloads))
    }
}

/// Where [`segment`] put segment `index`, `len` bytes long, in its output: `out[segment_range(..)]`.
pub fn segment_range(offset: usize, stride: usize, index: usize, len: usize) -> Range<usize> {
    let start = index * stride + offset;
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MacAddr;
    use proptest::prelude::*;

    const LEN: usize = VirtioNetHdr::LEN;
    const HOST_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x01]);
    const PEER_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x02]);
    const OTHER_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x13, 0x00, 0x03]);
    const SRC_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
    const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
    const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    /// NOP, NOP, timestamps 0x11223344 / 0x55667788: what Linux puts on every segment of a bulk transfer.
    const TIMESTAMPS: [u8; 12] = [0x01, 0x01, 0x08, 0x0a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];

    /// NEEDS_CSUM, TCPV4 with ECN, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
    const VIRTIO_HDR: [u8; 10] = [0x01, 0x81, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    /// The headers of a TSO superframe as a TAP read returns it, for 250 bytes of [`pattern`] payload:
    /// 198.19.0.1:49152 → 198.19.0.2:5201, IPv4 identification 0xfffe and sequence number 0xffffffc0 (both about to
    /// wrap), CWR|ACK|PSH|FIN, and in the TCP checksum field the pseudo-header sum (0x8d4a) the kernel leaves for
    /// CHECKSUM_PARTIAL. Checksums computed independently of this crate.
    const TSO4_HEADERS: [u8; 66] = [
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x02, 0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, 0x08, 0x00, // Ethernet
        0x45, 0x00, 0x01, 0x2e, 0xff, 0xfe, 0x40, 0x00, 0x40, 0x06, 0xad, 0xa1, // IPv4: length 302, DF, TTL 64
        0xc6, 0x13, 0x00, 0x01, 0xc6, 0x13, 0x00, 0x02, // addresses
        0xc0, 0x00, 0x14, 0x51, 0xff, 0xff, 0xff, 0xc0, 0x01, 0x02, 0x03, 0x04, // ports, seq, ack
        0x80, 0x99, 0x01, 0xf5, 0x8d, 0x4a, 0x00, 0x00, // data offset 8, CWR|ACK|PSH|FIN, window, partial sum
        0x01, 0x01, 0x08, 0x0a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // timestamps
    ];

    /// A UDP datagram 198.19.0.1:40000 → 198.19.0.2:53 carrying "weft overlay", with the pseudo-header sum
    /// (0x8c4f) in its checksum field; complete, the checksum is 0x8e92.
    const UDP_PARTIAL: [u8; 54] = [
        0x02, 0x00, 0xc6, 0x13, 0x00, 0x02, 0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, 0x08, 0x00, // Ethernet
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x9c, 0x67, // IPv4
        0xc6, 0x13, 0x00, 0x01, 0xc6, 0x13, 0x00, 0x02, // addresses
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x14, 0x8c, 0x4f, // UDP header
        0x77, 0x65, 0x66, 0x74, 0x20, 0x6f, 0x76, 0x65, 0x72, 0x6c, 0x61, 0x79, // payload
    ];

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// RFC 1071 once more, written independently of `wire::checksum` so that a shared bug cannot hide: the
    /// complemented sum of the concatenated chunks (each but the last of even length).
    fn reference_checksum(chunks: &[&[u8]]) -> u16 {
        let bytes = chunks.concat();
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += (u32::from(pair[0]) << 8) | u32::from(pair.get(1).copied().unwrap_or(0));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Whether every checksum of a TCP or UDP frame verifies, by [`reference_checksum`].
    fn reference_verifies(frame: &[u8]) -> bool {
        let ethernet = ethernet::Frame::new_checked(frame).unwrap();
        let ip = ethernet.payload();
        let (pseudo, l4) = if ethernet.ethertype() == ethertype::IPV4 {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            if reference_checksum(&[&ip[..header_len]]) != 0 {
                return false;
            }
            let l4 = &ip[header_len..];
            let length = (l4.len() as u16).to_be_bytes();
            ([&ip[12..20], &[0, ip[9]], &length[..]].concat(), l4)
        } else {
            let l4 = &ip[ipv6::HEADER_LEN..];
            let length = (l4.len() as u32).to_be_bytes();
            ([&ip[8..40], &length[..], &[0, 0, 0, ip[6]]].concat(), l4)
        };
        reference_checksum(&[&pseudo, l4]) == 0
    }

    /// What a frame looks like, as a test varies it.
    #[derive(Debug, Clone)]
    struct Spec {
        v6: bool,
        vlan: Option<u16>,
        src_mac: MacAddr,
        dst_mac: MacAddr,
        /// TOS or traffic class.
        tos: u8,
        /// TTL or hop limit.
        ttl: u8,
        df: bool,
        more_frags: bool,
        ident: u16,
        flow_label: u32,
        src_v4: Ipv4Addr,
        dst_v4: Ipv4Addr,
        src_v6: Ipv6Addr,
        dst_v6: Ipv6Addr,
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: Vec<u8>,
    }

    impl Spec {
        fn v4() -> Self {
            Self {
                v6: false,
                vlan: None,
                src_mac: HOST_MAC,
                dst_mac: PEER_MAC,
                tos: 0,
                ttl: 64,
                df: true,
                more_frags: false,
                ident: 0x4242,
                flow_label: 0,
                src_v4: SRC_V4,
                dst_v4: DST_V4,
                src_v6: SRC_V6,
                dst_v6: DST_V6,
                src_port: 49152,
                dst_port: 5201,
                seq: 0x1000_0000,
                ack: 0x2000_0000,
                flags: tcp::flags::ACK,
                window: 502,
                options: TIMESTAMPS.to_vec(),
            }
        }

        fn v6() -> Self {
            Self { v6: true, flow_label: 0x12345, ..Self::v4() }
        }

        fn addrs(&self) -> Addrs {
            if self.v6 {
                Addrs::V6(self.src_v6, self.dst_v6)
            } else {
                Addrs::V4(self.src_v4, self.dst_v4)
            }
        }

        fn l3(&self) -> usize {
            ethernet::HEADER_LEN + if self.vlan.is_some() { ethernet::VLAN_TAG_LEN } else { 0 }
        }

        fn l4(&self) -> usize {
            self.l3() + if self.v6 { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN }
        }

        fn header_len(&self) -> usize {
            self.l4() + tcp::HEADER_LEN + self.options.len()
        }

        /// Ethernet and IP headers around `l4`, with a valid IPv4 header checksum.
        fn ip_frame(&self, ip_protocol: u8, l4: &[u8]) -> Vec<u8> {
            let mut frame = vec![0; self.l4() + l4.len()];
            let ethertype = if self.v6 { ethertype::IPV6 } else { ethertype::IPV4 };
            let ethernet =
                ethernet::Repr { src_addr: self.src_mac, dst_addr: self.dst_mac, vlan_tci: self.vlan, ethertype };
            ethernet.emit(&mut ethernet::Frame::new_unchecked(&mut frame[..]));
            let l3 = self.l3();
            if self.v6 {
                let mut packet = ipv6::Packet::new_unchecked(&mut frame[l3..]);
                let repr = ipv6::Repr {
                    src_addr: self.src_v6,
                    dst_addr: self.dst_v6,
                    next_header: ip_protocol,
                    payload_len: l4.len(),
                    hop_limit: self.ttl,
                };
                repr.emit(&mut packet);
                packet.set_traffic_class(self.tos);
                packet.set_flow_label(self.flow_label);
            } else {
                let mut packet = ipv4::Packet::new_unchecked(&mut frame[l3..]);
                let repr = ipv4::Repr {
                    src_addr: self.src_v4,
                    dst_addr: self.dst_v4,
                    next_header: ip_protocol,
                    payload_len: l4.len(),
                    hop_limit: self.ttl,
                };
                repr.emit(&mut packet);
                packet.set_dscp_ecn(self.tos);
                packet.set_ident(self.ident);
                packet.set_dont_frag(self.df);
                packet.set_more_frags(self.more_frags);
                packet.fill_checksum();
            }
            frame[self.l4()..].copy_from_slice(l4);
            frame
        }

        /// A TCP segment with complete checksums.
        fn tcp(&self, payload: &[u8]) -> Vec<u8> {
            let repr = tcp::Repr {
                src_port: self.src_port,
                dst_port: self.dst_port,
                seq_number: self.seq,
                ack_number: self.ack,
                flags: self.flags,
                window: self.window,
                urgent_pointer: 0,
                options: &self.options,
                payload_len: payload.len(),
            };
            let mut segment = vec![0; repr.buffer_len()];
            let mut packet = tcp::Packet::new_unchecked(&mut segment[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(payload);
            match self.addrs() {
                Addrs::V4(src, dst) => packet.fill_checksum_v4(src, dst),
                Addrs::V6(src, dst) => packet.fill_checksum_v6(&src, &dst),
            }
            self.ip_frame(protocol::TCP, &segment)
        }

        /// The frame as the kernel hands it over with NEEDS_CSUM: the TCP checksum field holds the pseudo-header
        /// sum over the whole TCP length.
        fn superframe(&self, payload: &[u8]) -> Vec<u8> {
            let mut frame = self.tcp(payload);
            let l4 = self.l4();
            let pseudo_header = self.addrs().pseudo_header(protocol::TCP, frame.len() - l4);
            tcp::Packet::new_unchecked(&mut frame[l4..]).set_checksum(pseudo_header);
            frame
        }

        /// A UDP datagram from the spec's ports, with the pseudo-header sum in its checksum field, as USO gives it.
        fn udp_superframe(&self, payload: &[u8]) -> Vec<u8> {
            let repr = udp::Repr { src_port: self.src_port, dst_port: self.dst_port, payload_len: payload.len() };
            let mut datagram = vec![0; repr.buffer_len()];
            let mut packet = udp::Packet::new_unchecked(&mut datagram[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(payload);
            packet.set_checksum(self.addrs().pseudo_header(protocol::UDP, repr.buffer_len()));
            self.ip_frame(protocol::UDP, &datagram)
        }

        /// The virtio-net header the kernel gives a TSO read of this spec's superframe.
        fn tso_hdr(&self, gso_size: u16) -> VirtioNetHdr {
            VirtioNetHdr {
                flags: flags::NEEDS_CSUM,
                gso_type: if self.v6 { gso::TCPV6 } else { gso::TCPV4 },
                hdr_len: self.header_len() as u16,
                gso_size,
                csum_start: self.l4() as u16,
                csum_offset: tcp::CHECKSUM_OFFSET as u16,
            }
        }

        fn uso_hdr(&self, gso_size: u16) -> VirtioNetHdr {
            VirtioNetHdr {
                gso_type: gso::UDP_L4,
                hdr_len: (self.l4() + udp::HEADER_LEN) as u16,
                csum_offset: UDP_CHECKSUM_OFFSET as u16,
                ..self.tso_hdr(gso_size)
            }
        }
    }

    const HEADROOM: usize = 8;
    const TAILROOM: usize = 16;
    const FILL: u8 = 0xa5;

    /// Segments with headroom and tailroom in every slot, checks that nothing outside the segments was written,
    /// and returns the segments.
    fn run_segment(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let (longest, slots) = match hdr.gso_size {
            0 => (frame.len(), 1),
            size => (frame.len().min(200 + usize::from(size)), frame.len() / usize::from(size) + 2),
        };
        let stride = HEADROOM + longest + TAILROOM;
        let mut out = vec![FILL; slots * stride];
        let mut lens = vec![0; slots];
        let count = segment(hdr, frame, &mut out, HEADROOM, stride, &mut lens)?;
        let mut segments = Vec::new();
        for (index, &len) in lens.iter().enumerate().take(count) {
            let range = segment_range(HEADROOM, stride, index, len);
            assert!(range.end <= (index + 1) * stride);
            segments.push(out[range.clone()].to_vec());
            out[range].fill(FILL);
        }
        assert!(out.iter().all(|&byte| byte == FILL), "segment wrote outside its frames");
        Ok(segments)
    }

    /// Feeds frames through a coalescer the way the daemon will, returning what it would write to the TAP.
    fn run_coalesce(frames: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut buf = vec![0; LEN + 70_000];
        let mut coalescer = Coalescer::new();
        let mut written = Vec::new();
        let flush = |coalescer: &mut Coalescer, buf: &mut [u8], written: &mut Vec<(VirtioNetHdr, Vec<u8>)>| {
            if let Some(len) = coalescer.finish(buf) {
                written.push((VirtioNetHdr::parse(buf).unwrap(), buf[LEN..len].to_vec()));
            }
        };
        for frame in frames {
            if coalescer.push(&mut buf, frame) == Push::NotMergeable {
                flush(&mut coalescer, &mut buf, &mut written);
                if coalescer.push(&mut buf, frame) == Push::NotMergeable {
                    written.push((VirtioNetHdr::default(), frame.clone()));
                }
            }
        }
        flush(&mut coalescer, &mut buf, &mut written);
        written
    }

    /// [`run_coalesce`] through a [`GatherCoalescer`]: the frames back to back in one receive buffer, and what a
    /// `writev` of the header block and the payload ranges would write.
    fn run_gather_coalesce(frames: &[Vec<u8>], authenticated: bool) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut rx = Vec::new();
        let mut ranges = Vec::new();
        for frame in frames {
            // Some bytes between frames, as the outer headers of the datagrams that carried them.
            rx.extend_from_slice(&[FILL; 8]);
            ranges.push(rx.len()..rx.len() + frame.len());
            rx.extend_from_slice(frame);
        }
        let mut head = [0u8; GATHER_HEAD];
        let mut coalescer = GatherCoalescer::new();
        let mut written = Vec::new();
        let flush = |coalescer: &mut GatherCoalescer, head: &mut [u8], written: &mut Vec<(VirtioNetHdr, Vec<u8>)>| {
            if let Some((block, payloads)) = coalescer.finish(head) {
                let mut frame = head[LEN..block].to_vec();
                for range in payloads {
                    frame.extend_from_slice(&rx[range.clone()]);
                }
                written.push((VirtioNetHdr::parse(head).unwrap(), frame));
            }
        };
        let push = |coalescer: &mut GatherCoalescer, head: &mut [u8], range: Range<usize>| match authenticated {
            true => coalescer.push_authenticated(head, &rx, range),
            false => coalescer.push(head, &rx, range),
        };
        for (frame, range) in frames.iter().zip(&ranges) {
            if push(&mut coalescer, &mut head, range.clone()) == Push::NotMergeable {
                flush(&mut coalescer, &mut head, &mut written);
                if push(&mut coalescer, &mut head, range.clone()) == Push::NotMergeable {
                    written.push((VirtioNetHdr::default(), frame.clone()));
                }
            }
        }
        flush(&mut coalescer, &mut head, &mut written);
        assert!(coalescer.is_empty());
        written
    }

    fn tcp_view(frame: &[u8], l4: usize) -> tcp::Packet<&[u8]> {
        tcp::Packet::new_checked(&frame[l4..]).unwrap()
    }

    // --- The virtio-net header ---

    #[test]
    fn virtio_header_known_answer() {
        let hdr = VirtioNetHdr::parse(&VIRTIO_HDR).unwrap();
        let expected = VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV4 | gso::ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(hdr, expected);
        let mut bytes = [0xff; LEN];
        hdr.emit(&mut bytes);
        assert_eq!(bytes, VIRTIO_HDR);
        // A frame may follow the header in the same buffer.
        assert_eq!(VirtioNetHdr::parse(&[&VIRTIO_HDR[..], &[0; 4]].concat()), Ok(expected));
        for len in 0..LEN {
            assert_eq!(VirtioNetHdr::parse(&VIRTIO_HDR[..len]), Err(OffloadError::BadHeader));
        }
    }

    // --- Segmentation ---

    #[test]
    fn max_segment_len_is_the_first_segments_length() {
        let (hdr, frame) = tso4_fixture();
        let segments = run_segment(&hdr, &frame).unwrap();
        assert_eq!(max_segment_len(&hdr, &frame), Ok(segments[0].len()));
        assert!(segments.iter().all(|s| s.len() <= segments[0].len()));
        let none = VirtioNetHdr { gso_type: gso::NONE, ..hdr };
        assert_eq!(max_segment_len(&none, &frame), Ok(frame.len()));
    }

    fn tso4_fixture() -> (VirtioNetHdr, Vec<u8>) {
        // The kernel reports hdr_len as the skb's linear length, here the whole frame: it must not matter.
        let hdr = VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV4 | gso::ECN,
            hdr_len: 316,
            gso_size: 100,
            csum_start: 34,
            csum_offset: 16,
        };
        (hdr, [&TSO4_HEADERS[..], &pattern(250)].concat())
    }

    #[test]
    fn segments_ipv4_tcp_superframe() {
        let (hdr, frame) = tso4_fixture();
        let segments = run_segment(&hdr, &frame).unwrap();
        let lens: Vec<_> = segments.iter().map(Vec::len).collect();
        assert_eq!(lens, [166, 166, 116]);
        let payload = pattern(250);
        let expected = [
            // (identification, IP checksum, sequence number, flags, TCP checksum), computed independently.
            (0xfffe, 0xae37, 0xffff_ffc0, tcp::flags::CWR | tcp::flags::ACK, 0x5343),
            (0xffff, 0xae36, 0x0000_0024, tcp::flags::ACK, 0x99a7),
            (0x0000, 0xae68, 0x0000_0088, tcp::flags::ACK | tcp::flags::PSH | tcp::flags::FIN, 0x8607),
        ];
        for (index, (segment, (ident, ip_checksum, seq, segment_flags, tcp_checksum))) in
            segments.iter().zip(expected).enumerate()
        {
            assert_eq!(segment[..14], TSO4_HEADERS[..14]);
            let ip = ipv4::Packet::new_checked(&segment[14..]).unwrap();
            assert_eq!(usize::from(ip.total_len()), segment.len() - 14);
            assert_eq!((ip.ident(), ip.checksum(), ip.dont_frag(), ip.hop_limit()), (ident, ip_checksum, true, 64));
            assert!(ip.verify_checksum());
            let tcp = tcp_view(segment, 34);
            assert_eq!((tcp.seq_number(), tcp.flags(), tcp.checksum()), (seq, segment_flags, tcp_checksum));
            assert_eq!((tcp.ack_number(), tcp.window(), tcp.options()), (0x0102_0304, 0x01f5, &TIMESTAMPS[..]));
            assert_eq!(tcp.payload(), &payload[index * 100..(index * 100 + 100).min(250)]);
            assert!(tcp.verify_checksum_v4(SRC_V4, DST_V4));
            assert!(reference_verifies(segment));
        }
    }

    #[test]
    fn segments_ipv6_tcp_superframe() {
        let spec = Spec { vlan: Some(0x0064), flags: tcp::flags::ACK | tcp::flags::PSH, ..Spec::v6() };
        let payload = pattern(2500);
        let frame = spec.superframe(&payload);
        let segments = run_segment(&spec.tso_hdr(1000), &frame).unwrap();
        assert_eq!(segments.len(), 3);
        let l4 = spec.l4();
        for (index, segment) in segments.iter().enumerate() {
            let chunk = &payload[index * 1000..(index * 1000 + 1000).min(2500)];
            assert_eq!(segment.len(), spec.header_len() + chunk.len());
            // Ethernet with its VLAN tag, and the IPv6 header but for the payload length, are copied.
            assert_eq!(segment[..spec.l3() + 4], frame[..spec.l3() + 4]);
            assert_eq!(segment[spec.l3() + 6..l4], frame[spec.l3() + 6..l4]);
            let ip = ipv6::Packet::new_checked(&segment[spec.l3()..]).unwrap();
            assert_eq!(usize::from(ip.payload_len()), segment.len() - l4);
            assert_eq!((ip.traffic_class(), ip.flow_label()), (0, 0x12345));
            let tcp = tcp_view(segment, l4);
            assert_eq!(tcp.seq_number(), spec.seq + 1000 * index as u32);
            let psh = if index == 2 { tcp::flags::PSH } else { 0 };
            assert_eq!(tcp.flags(), tcp::flags::ACK | psh);
            assert_eq!(tcp.options(), &TIMESTAMPS[..]);
            assert_eq!(tcp.payload(), chunk);
            assert!(tcp.verify_checksum_v6(&SRC_V6, &DST_V6));
            assert!(reference_verifies(segment));
        }
    }

    #[test]
    fn segments_udp_superframes() {
        for spec in [Spec::v4(), Spec { vlan: Some(7), ..Spec::v6() }] {
            let payload = pattern(3 * 1200 + 17);
            let frame = spec.udp_superframe(&payload);
            let segments = run_segment(&spec.uso_hdr(1200), &frame).unwrap();
            assert_eq!(segments.len(), 4);
            for (index, segment) in segments.iter().enumerate() {
                let chunk = &payload[index * 1200..(index * 1200 + 1200).min(payload.len())];
                let datagram = udp::Packet::new_checked(&segment[spec.l4()..]).unwrap();
                assert_eq!(usize::from(datagram.len()), udp::HEADER_LEN + chunk.len());
                assert_eq!(datagram.len() as usize, segment.len() - spec.l4());
                assert_eq!((datagram.src_port(), datagram.dst_port()), (49152, 5201));
                assert_eq!(datagram.payload(), chunk);
                assert_ne!(datagram.checksum(), 0);
                assert!(reference_verifies(segment));
                if spec.v6 {
                    assert!(datagram.verify_checksum_v6(&SRC_V6, &DST_V6));
                } else {
                    assert!(datagram.verify_checksum_v4(SRC_V4, DST_V4));
                    let ip = ipv4::Packet::new_checked(&segment[spec.l3()..]).unwrap();
                    assert_eq!(ip.ident(), spec.ident + index as u16);
                    assert!(ip.verify_checksum());
                }
            }
        }
    }

    #[test]
    fn gso_none_completes_udp_checksum() {
        let hdr = VirtioNetHdr { flags: flags::NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..VirtioNetHdr::default() };
        let segments = run_segment(&hdr, &UDP_PARTIAL).unwrap();
        let mut expected = UDP_PARTIAL;
        expected[40..42].copy_from_slice(&[0x8e, 0x92]);
        assert_eq!(segments, [expected.to_vec()]);
        assert!(reference_verifies(&expected));

        let mut in_place = UDP_PARTIAL;
        complete_checksum(&hdr, &mut in_place).unwrap();
        assert_eq!(in_place, expected);
    }

    #[test]
    fn gso_none_completes_tcp_checksum() {
        for spec in [Spec::v4(), Spec { vlan: Some(3), ..Spec::v6() }] {
            let hdr = VirtioNetHdr { gso_type: gso::NONE, gso_size: 0, ..spec.tso_hdr(0) };
            let segments = run_segment(&hdr, &spec.superframe(b"one small segment")).unwrap();
            assert_eq!(segments, [spec.tcp(b"one small segment")]);
            assert!(reference_verifies(&segments[0]));
        }
    }

    #[test]
    fn gso_none_writes_ffff_for_a_zero_checksum() {
        // Choose two payload bytes so that the datagram, seed included, sums to 0xffff.
        let spec = Spec::v4();
        let mut frame = spec.udp_superframe(&[0, 0]);
        let rest = checksum::data(&frame[spec.l4()..]);
        let end = frame.len();
        frame[end - 2..].copy_from_slice(&(!rest).to_be_bytes());
        let hdr = spec.uso_hdr(0);
        let hdr = VirtioNetHdr { gso_type: gso::NONE, ..hdr };
        let segments = run_segment(&hdr, &frame).unwrap();
        let datagram = udp::Packet::new_checked(&segments[0][spec.l4()..]).unwrap();
        assert_eq!(datagram.checksum(), 0xffff);
        assert!(datagram.verify_checksum_v4(SRC_V4, DST_V4));
    }

    #[test]
    fn gso_none_without_needs_csum_is_copied() {
        let frame = Spec::v4().tcp(b"complete already");
        assert_eq!(run_segment(&VirtioNetHdr::default(), &frame).unwrap(), std::slice::from_ref(&frame));
        // DATA_VALID on a read changes nothing either.
        let hdr = VirtioNetHdr { flags: flags::DATA_VALID, ..VirtioNetHdr::default() };
        assert_eq!(run_segment(&hdr, &frame).unwrap(), [frame]);
    }

    #[test]
    fn superframe_within_one_segment_is_one_segment() {
        let spec = Spec::v4();
        let frame = spec.superframe(&pattern(100));
        assert_eq!(run_segment(&spec.tso_hdr(100), &frame).unwrap(), [spec.tcp(&pattern(100))]);
        assert_eq!(run_segment(&spec.tso_hdr(1448), &frame).unwrap(), [spec.tcp(&pattern(100))]);
        // Headers alone (no stack sends this with GSO) come out once.
        assert_eq!(run_segment(&spec.tso_hdr(1448), &spec.superframe(&[])).unwrap(), [spec.tcp(&[])]);
    }

    // --- Rejections ---

    #[test]
    fn rejects_truncated_frames_at_every_length() {
        let spec = Spec { vlan: Some(9), ..Spec::v6() };
        let cases = [
            tso4_fixture(),
            (spec.tso_hdr(1000), spec.superframe(&pattern(2100))),
            (Spec::v4().uso_hdr(500), Spec::v4().udp_superframe(&pattern(1100))),
        ];
        for (hdr, frame) in cases {
            for len in 0..frame.len() {
                let result = run_segment(&hdr, &frame[..len]);
                assert!(
                    matches!(result, Err(OffloadError::BadHeader | OffloadError::InconsistentLengths)),
                    "{len}: {result:?}"
                );
            }
            assert!(run_segment(&hdr, &frame).is_ok());
        }
        // A single frame whose checksum field lies past its end.
        let hdr = VirtioNetHdr { flags: flags::NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..VirtioNetHdr::default() };
        for len in 0..42 {
            assert_eq!(run_segment(&hdr, &UDP_PARTIAL[..len]), Err(OffloadError::BadHeader), "{len}");
        }
    }

    #[test]
    fn rejects_ipv6_extension_headers() {
        let spec = Spec::v6();
        let mut frame = spec.superframe(&pattern(3000));
        // Insert a hop-by-hop options header (next header TCP, one PadN option) in front of TCP.
        let l4 = spec.l4();
        let hop_by_hop = [protocol::TCP, 0, 1, 4, 0, 0, 0, 0];
        frame.splice(l4..l4, hop_by_hop);
        let mut ip = ipv6::Packet::new_unchecked(&mut frame[spec.l3()..]);
        ip.set_next_header(0);
        ip.set_payload_len(ip.payload_len() + 8);
        let hdr = VirtioNetHdr { csum_start: (l4 + 8) as u16, ..spec.tso_hdr(1000) };
        assert_eq!(run_segment(&hdr, &frame), Err(OffloadError::UnsupportedPacket));
    }

    #[test]
    fn rejects_zero_gso_size() {
        let spec = Spec::v4();
        assert_eq!(run_segment(&spec.tso_hdr(0), &spec.superframe(&pattern(10))), Err(OffloadError::ZeroGsoSize));
        let frame = spec.udp_superframe(&pattern(10));
        assert_eq!(run_segment(&spec.uso_hdr(0), &frame), Err(OffloadError::ZeroGsoSize));
    }

    #[test]
    fn rejects_too_small_output() {
        let (hdr, frame) = tso4_fixture();
        let stride = 8 + 166;
        let mut out = vec![FILL; 3 * stride];
        let mut lens = [0; 3];
        // Each case leaves the output alone.
        let cases: [(usize, usize, usize, usize); 4] = [
            (3 * stride - 1, 8, stride, 3), // the last slot is cut short
            (3 * stride, 9, stride, 3),     // headroom pushes the longest segment out of its slot
            (3 * stride, 8, stride - 1, 3), // stride too small for the longest segment
            (3 * stride, 8, stride, 2),     // too few lengths
        ];
        for (out_len, offset, stride, lens_len) in cases {
            let result = segment(&hdr, &frame, &mut out[..out_len], offset, stride, &mut lens[..lens_len]);
            assert_eq!(result, Err(OffloadError::OutputTooSmall));
            assert!(out.iter().all(|&byte| byte == FILL) && lens == [0; 3]);
        }
        assert_eq!(segment(&hdr, &frame, &mut out, 8, stride, &mut lens), Ok(3));
        // An absurd stride does not overflow.
        assert_eq!(segment(&hdr, &frame, &mut out, 8, usize::MAX, &mut lens), Err(OffloadError::OutputTooSmall));
        assert_eq!(segment(&hdr, &frame, &mut out, usize::MAX, 10, &mut lens), Err(OffloadError::OutputTooSmall));
        let none = VirtioNetHdr::default();
        assert_eq!(segment(&none, &frame, &mut out[..10], 0, 10, &mut lens), Err(OffloadError::OutputTooSmall));
    }

    #[test]
    fn rejects_unsupported_gso_types() {
        let (hdr, frame) = tso4_fixture();
        for gso_type in [gso::UDP, 2, 6, 0x7f, gso::UDP_L4 | gso::ECN, gso::NONE | gso::ECN, gso::UDP | gso::ECN] {
            let hdr = VirtioNetHdr { gso_type, ..hdr };
            assert_eq!(run_segment(&hdr, &frame), Err(OffloadError::UnsupportedGsoType(gso_type)));
        }
    }

    #[test]
    fn rejects_frames_that_do_not_match_their_gso_type() {
        let (v4, v6) = (Spec::v4(), Spec::v6());
        let fragment = Spec { more_frags: true, df: false, ..Spec::v4() };
        let mut arp = v4.superframe(&pattern(300));
        arp[12..14].copy_from_slice(&ethertype::ARP.to_be_bytes());
        let mut qinq = Spec { vlan: Some(5), ..Spec::v4() }.superframe(&pattern(300));
        qinq[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        let cases = [
            (v4.tso_hdr(100), v6.superframe(&pattern(300))),
            (v6.tso_hdr(100), v4.superframe(&pattern(300))),
            (v4.tso_hdr(100), v4.udp_superframe(&pattern(300))),
            (v4.uso_hdr(100), v4.superframe(&pattern(300))),
            (v4.tso_hdr(100), fragment.superframe(&pattern(300))),
            (v4.tso_hdr(100), arp),
            (v4.tso_hdr(100), qinq),
        ];
        for (hdr, frame) in cases {
            assert_eq!(run_segment(&hdr, &frame), Err(OffloadError::UnsupportedPacket));
        }
    }

    #[test]
    fn rejects_misplaced_partial_checksums() {
        let (hdr, frame) = tso4_fixture();
        for (csum_start, csum_offset) in [(33, 16), (34, 6), (14, 10)] {
            let hdr = VirtioNetHdr { csum_start, csum_offset, ..hdr };
            assert_eq!(run_segment(&hdr, &frame), Err(OffloadError::BadHeader));
        }
        // Without NEEDS_CSUM the fields mean nothing, and the checksum is computed all the same.
        let hdr = VirtioNetHdr { flags: 0, csum_start: 0, csum_offset: 0, ..hdr };
        assert!(run_segment(&hdr, &frame).unwrap().iter().all(|segment| reference_verifies(segment)));
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let spec = Spec::v4();
        let mut trailing = spec.superframe(&pattern(300));
        trailing.push(0);
        assert_eq!(run_segment(&spec.tso_hdr(100), &trailing), Err(OffloadError::InconsistentLengths));

        let mut udp = spec.udp_superframe(&pattern(300));
        let l4 = spec.l4();
        udp::Packet::new_unchecked(&mut udp[l4..]).set_len(300);
        assert_eq!(run_segment(&spec.uso_hdr(100), &udp), Err(OffloadError::InconsistentLengths));

        // A jumbogram's payload length is 0.
        let v6 = Spec::v6();
        let mut jumbo = v6.superframe(&pattern(300));
        ipv6::Packet::new_unchecked(&mut jumbo[v6.l3()..]).set_payload_len(0);
        assert_eq!(run_segment(&v6.tso_hdr(100), &jumbo), Err(OffloadError::InconsistentLengths));
    }

    // --- Coalescing ---

    const MSS: usize = 1000;

    #[test]
    fn coalesces_segments_into_a_superframe() {
        for spec in [Spec::v4(), Spec { vlan: Some(0x0064), ..Spec::v6() }, Spec { df: false, ..Spec::v4() }] {
            let payload = pattern(2 * MSS + 300);
            let x = Spec { flags: tcp::flags::ACK | tcp::flags::PSH, ..spec.clone() };
            let segments = run_segment(&x.tso_hdr(MSS as u16), &x.superframe(&payload)).unwrap();
            assert_eq!(segments.len(), 3);

            let mut buf = vec![0; LEN + 4000];
            let mut coalescer = Coalescer::new();
            assert!(coalescer.is_empty());
            for segment in &segments {
                assert_eq!(coalescer.push(&mut buf, segment), Push::Appended);
            }
            assert!(!coalescer.is_empty());
            let len = coalescer.finish(&mut buf).unwrap();
            assert!(coalescer.is_empty());
            let hdr = VirtioNetHdr::parse(&buf).unwrap();
            assert_eq!(hdr, x.tso_hdr(MSS as u16));
            let superframe = &buf[LEN..len];
            assert_eq!(superframe, x.superframe(&payload));
            // The IP header's checksum is complete, the TCP one partial: the pseudo-header sum, not complemented.
            let tcp = tcp_view(superframe, x.l4());
            assert_eq!(tcp.checksum(), x.addrs().pseudo_header(protocol::TCP, superframe.len() - x.l4()));
            if !x.v6 {
                assert!(ipv4::Packet::new_checked(&superframe[x.l3()..]).unwrap().verify_checksum());
            }
            // And the kernel would cut it back into the same segments.
            assert_eq!(run_segment(&hdr, superframe).unwrap(), segments);
            assert_eq!(coalescer.finish(&mut buf), None);
        }
    }

    #[test]
    fn single_segment_is_written_untouched() {
        let frame = Spec::v4().tcp(&pattern(MSS));
        let mut buf = vec![0xff; LEN + 2000];
        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.finish(&mut buf), None);
        assert_eq!(coalescer.push(&mut buf, &frame), Push::Appended);
        assert_eq!(coalescer.finish(&mut buf), Some(LEN + frame.len()));
        assert_eq!(buf[..LEN], [0; LEN]);
        assert_eq!(buf[LEN..LEN + frame.len()], frame);
    }

    /// Asserts that `second` (the segment after a first one of `first`, built by `edit` from the natural next
    /// segment) is refused, while the natural one is merged; and that a refusal leaves the superframe alone.
    fn assert_second_refused(first: Spec, edit: impl FnOnce(&mut Spec)) {
        let payload = pattern(MSS);
        let first_frame = first.tcp(&payload);
        let mut second = first.clone();
        second.seq = first.seq.wrapping_add(MSS as u32);
        second.ident = first.ident.wrapping_add(1);
        let mut buf = vec![0; LEN + 70_000];

        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push(&mut buf, &first_frame), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &second.tcp(&payload)), Push::Appended, "the unedited control");

        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push(&mut buf, &first_frame), Push::Appended);
        edit(&mut second);
        assert_eq!(coalescer.push(&mut buf, &second.tcp(&payload)), Push::NotMergeable);
        assert_eq!(coalescer.finish(&mut buf), Some(LEN + first_frame.len()));
        assert_eq!(buf[LEN..LEN + first_frame.len()], first_frame);
    }

    #[test]
    fn refuses_other_ethernet_destination() {
        assert_second_refused(Spec::v4(), |s| s.dst_mac = OTHER_MAC);
    }

    #[test]
    fn refuses_other_ethernet_source() {
        assert_second_refused(Spec::v4(), |s| s.src_mac = OTHER_MAC);
    }

    #[test]
    fn refuses_other_vlan() {
        assert_second_refused(Spec { vlan: Some(100), ..Spec::v4() }, |s| s.vlan = Some(200));
        assert_second_refused(Spec { vlan: Some(100), ..Spec::v4() }, |s| s.vlan = None);
        assert_second_refused(Spec::v6(), |s| s.vlan = Some(100));
    }

    #[test]
    fn refuses_other_ip_version() {
        assert_second_refused(Spec::v4(), |s| s.v6 = true);
        assert_second_refused(Spec::v6(), |s| s.v6 = false);
    }

    #[test]
    fn refuses_other_addresses() {
        assert_second_refused(Spec::v4(), |s| s.src_v4 = Ipv4Addr::new(198, 19, 0, 3));
        assert_second_refused(Spec::v4(), |s| s.dst_v4 = Ipv4Addr::new(198, 19, 0, 3));
        assert_second_refused(Spec::v6(), |s| s.src_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3));
        assert_second_refused(Spec::v6(), |s| s.dst_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3));
    }

    #[test]
    fn refuses_other_tos_ttl_or_df() {
        assert_second_refused(Spec::v4(), |s| s.tos = 0x03);
        assert_second_refused(Spec::v4(), |s| s.ttl = 63);
        assert_second_refused(Spec::v4(), |s| s.df = false);
    }

    #[test]
    fn refuses_identification_gap_without_df() {
        assert_second_refused(Spec { df: false, ..Spec::v4() }, |s| s.ident = s.ident.wrapping_add(1));
        assert_second_refused(Spec { df: false, ..Spec::v4() }, |s| s.ident = s.ident.wrapping_sub(1));
    }

    #[test]
    fn refuses_fragments() {
        assert_second_refused(Spec { df: false, ..Spec::v4() }, |s| s.more_frags = true);
        let mut coalescer = Coalescer::new();
        let fragment = Spec { df: false, more_frags: true, ..Spec::v4() }.tcp(&pattern(MSS));
        assert_eq!(coalescer.push(&mut [0; 2000], &fragment), Push::NotMergeable);
        assert!(coalescer.is_empty());
    }

    #[test]
    fn refuses_other_ipv6_traffic_class_flow_label_or_hop_limit() {
        assert_second_refused(Spec::v6(), |s| s.tos = 0xb8);
        assert_second_refused(Spec::v6(), |s| s.flow_label = 0x54321);
        assert_second_refused(Spec::v6(), |s| s.ttl = 1);
    }

    #[test]
    fn refuses_other_ports() {
        assert_second_refused(Spec::v4(), |s| s.src_port = 49153);
        assert_second_refused(Spec::v6(), |s| s.dst_port = 5202);
    }

    #[test]
    fn refuses_unexpected_sequence_number() {
        assert_second_refused(Spec::v4(), |s| s.seq = s.seq.wrapping_add(1));
        assert_second_refused(Spec::v4(), |s| s.seq = s.seq.wrapping_sub(MSS as u32));
        assert_second_refused(Spec::v4(), |s| s.seq = s.seq.wrapping_add(MSS as u32));
    }

    #[test]
    fn refuses_other_ack_or_window() {
        assert_second_refused(Spec::v4(), |s| s.ack += 1);
        assert_second_refused(Spec::v4(), |s| s.window += 1);
    }

    #[test]
    fn refuses_other_options() {
        assert_second_refused(Spec::v4(), |s| s.options[7] ^= 1);
        assert_second_refused(Spec::v4(), |s| s.options[11] ^= 1);
        assert_second_refused(Spec::v4(), |s| s.options.clear());
        assert_second_refused(Spec { options: Vec::new(), ..Spec::v6() }, |s| s.options = vec![1; 4]);
    }

    #[test]
    fn refuses_flags_other_than_ack_and_psh() {
        use tcp::flags::*;
        for flag in [SYN, FIN, RST, URG, CWR, ECE] {
            assert_second_refused(Spec::v4(), |s| s.flags |= flag);
        }
        assert_second_refused(Spec::v4(), |s| s.flags = PSH);
        for flag in [SYN, FIN, RST, URG, CWR, ECE] {
            let mut coalescer = Coalescer::new();
            let frame = Spec { flags: ACK | flag, ..Spec::v4() }.tcp(&pattern(MSS));
            assert_eq!(coalescer.push(&mut [0; 2000], &frame), Push::NotMergeable, "{flag:#x}");
        }
    }

    #[test]
    fn psh_ends_the_superframe() {
        let spec = Spec::v4();
        let at = |index: usize, flags: u8| {
            Spec { seq: spec.seq + (index * MSS) as u32, flags, ..spec.clone() }.tcp(&pattern(MSS))
        };
        let mut buf = vec![0; LEN + 5000];
        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push(&mut buf, &at(0, tcp::flags::ACK)), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &at(1, tcp::flags::ACK | tcp::flags::PSH)), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &at(2, tcp::flags::ACK)), Push::NotMergeable);
        let len = coalescer.finish(&mut buf).unwrap();
        assert_eq!(tcp_view(&buf[LEN..len], spec.l4()).flags(), tcp::flags::ACK | tcp::flags::PSH);

        // A first segment with PSH stands alone.
        assert_eq!(coalescer.push(&mut buf, &at(0, tcp::flags::ACK | tcp::flags::PSH)), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &at(1, tcp::flags::ACK)), Push::NotMergeable);
    }

    #[test]
    fn shorter_segment_ends_the_superframe_and_longer_is_refused() {
        let spec = Spec::v6();
        let next = |seq: u32, len: usize| Spec { seq, ..spec.clone() }.tcp(&pattern(len));
        let mut buf = vec![0; LEN + 5000];
        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push(&mut buf, &next(spec.seq, MSS)), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &next(spec.seq + MSS as u32, MSS + 1)), Push::NotMergeable);
        assert_eq!(coalescer.push(&mut buf, &next(spec.seq + MSS as u32, 10)), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &next(spec.seq + MSS as u32 + 10, 10)), Push::NotMergeable);
        let len = coalescer.finish(&mut buf).unwrap();
        assert_eq!(VirtioNetHdr::parse(&buf).unwrap().gso_size, MSS as u16);
        assert_eq!(len, LEN + spec.header_len() + MSS + 10);
    }

    #[test]
    fn refuses_segments_past_the_ip_length_limit() {
        // 5 segments of 13100 bytes: 65500 bytes of payload fit IPv6's payload length (with 20 bytes of TCP
        // header) but not IPv4's total length (with 40 bytes of headers).
        for (spec, merged) in
            [(Spec { options: Vec::new(), ..Spec::v4() }, 4), (Spec { options: Vec::new(), ..Spec::v6() }, 5)]
        {
            let mut buf = vec![0; LEN + 70_000];
            let mut coalescer = Coalescer::new();
            for index in 0..5 {
                let segment = Spec { seq: spec.seq + 13_100 * index, ..spec.clone() }.tcp(&pattern(13_100));
                let expected = if (index as usize) < merged { Push::Appended } else { Push::NotMergeable };
                assert_eq!(coalescer.push(&mut buf, &segment), expected, "{index}");
            }
            let len = coalescer.finish(&mut buf).unwrap();
            let ip_len = if spec.v6 { len - LEN - spec.l4() } else { len - LEN - spec.l3() };
            assert!(ip_len <= 0xffff);
        }
    }

    #[test]
    fn refuses_segments_past_the_buffer() {
        let spec = Spec::v4();
        let first = spec.tcp(&pattern(MSS));
        let second = Spec { seq: spec.seq + MSS as u32, ..spec.clone() }.tcp(&pattern(MSS));
        let mut buf = vec![0; LEN + first.len() + MSS - 1];
        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push(&mut buf[..LEN + first.len() - 1], &first), Push::NotMergeable);
        assert_eq!(coalescer.push(&mut buf, &first), Push::Appended);
        assert_eq!(coalescer.push(&mut buf, &second), Push::NotMergeable);
        assert_eq!(coalescer.finish(&mut buf), Some(LEN + first.len()));
    }

    #[test]
    fn bad_checksums_are_not_merged() {
        let spec = Spec::v4();
        let first = spec.tcp(&pattern(MSS));
        let second = Spec { seq: spec.seq + MSS as u32, ident: spec.ident + 1, ..spec.clone() }.tcp(&pattern(MSS));
        let corrupt = |frame: &[u8], at: usize| {
            let mut frame = frame.to_vec();
            frame[at] ^= 0x40;
            frame
        };
        let bad_payload = corrupt(&second, second.len() - 1);
        let bad_ip_header = corrupt(&second, spec.l3() + 4); // the identification: only the IP checksum sees it
        let v6 = Spec::v6();
        let mut buf = vec![0; LEN + 5000];
        for (first, second) in [
            (first.clone(), bad_payload),
            (first.clone(), bad_ip_header),
            (v6.tcp(&pattern(MSS)), corrupt(&Spec { seq: v6.seq + MSS as u32, ..v6.clone() }.tcp(&pattern(MSS)), 100)),
        ] {
            let mut coalescer = Coalescer::new();
            assert_eq!(coalescer.push(&mut buf, &first), Push::Appended);
            assert_eq!(coalescer.push(&mut buf, &second), Push::NotMergeable);
            assert_eq!(coalescer.finish(&mut buf), Some(LEN + first.len()));
        }
        // A corrupt first segment does not start a superframe either.
        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push(&mut buf, &corrupt(&first, first.len() - 1)), Push::NotMergeable);
        assert!(coalescer.is_empty());
        // Frames an ICV already vouched for are not summed again: the same segments merge.
        let mut coalescer = Coalescer::new();
        assert_eq!(coalescer.push_authenticated(&mut buf, &first), Push::Appended);
        assert_eq!(coalescer.push_authenticated(&mut buf, &corrupt(&second, second.len() - 1)), Push::Appended);
        assert_eq!(coalescer.finish(&mut buf), Some(LEN + first.len() + MSS));
    }

    #[test]
    fn refuses_what_gro_does_not_merge() {
        let spec = Spec::v4();
        let mut padded = spec.tcp(&[1]);
        padded.resize(60, 0);
        let mut ip_options = Spec { options: Vec::new(), ..spec.clone() }.tcp(&pattern(MSS));
        // IHL 6 with one word of NOPs: rebuild the IPv4 header around it.
        ip_options.splice(spec.l4()..spec.l4(), [1, 1, 1, 1]);
        let mut ip = ipv4::Packet::new_unchecked(&mut ip_options[spec.l3()..]);
        ip.set_header_len(24);
        ip.set_total_len(ip.total_len() + 4);
        ip.fill_checksum();
        assert!(ipv4::Packet::new_checked(&ip_options[spec.l3()..]).unwrap().verify_checksum());
        let frames = [
            spec.tcp(&[]),                                 // a pure ACK
            padded,                                        // Ethernet padding after the IP packet
            ip_options,                                    // IPv4 options
            Spec::v4().udp_superframe(&pattern(MSS)),      // not TCP
            Spec::v4().tcp(&pattern(MSS))[..100].to_vec(), // cut short
        ];
        for frame in frames {
            let mut coalescer = Coalescer::new();
            assert_eq!(coalescer.push(&mut vec![0; LEN + 2000], &frame), Push::NotMergeable);
            assert!(coalescer.is_empty());
        }
    }

    #[test]
    fn round_trips_full_size_superframes() {
        for spec in [Spec::v4(), Spec::v6()] {
            let ip_header = if spec.v6 { 0 } else { ipv4::HEADER_LEN };
            let payload = pattern(0xffff - ip_header - tcp::HEADER_LEN - spec.options.len());
            let x = Spec { flags: tcp::flags::ACK | tcp::flags::PSH, ..spec.clone() };
            let superframe = x.superframe(&payload);
            let segments = run_segment(&x.tso_hdr(1448), &superframe).unwrap();
            assert_eq!(segments.len(), payload.len().div_ceil(1448));
            assert!(segments.iter().all(|segment| reference_verifies(segment)));
            assert_eq!(run_coalesce(&segments), [(x.tso_hdr(1448), superframe)]);
        }
    }

    #[test]
    fn gathering_coalescer_caps_its_pieces() {
        // 1,100 one-byte segments: the copying coalescer merges them all, the gathering one stops at one writev's
        // worth of pieces and starts a second superframe with the rest.
        let x = Spec { flags: tcp::flags::ACK, ..Spec::v4() };
        let payload = pattern(1100);
        let segments = run_segment(&x.tso_hdr(1), &x.superframe(&payload)).unwrap();
        assert_eq!(run_coalesce(&segments).len(), 1);
        let written = run_gather_coalesce(&segments, false);
        assert_eq!(written.len(), 2);
        assert_eq!(written[0].1.len(), x.header_len() + GATHER_SEGMENTS);
        let rejoined: Vec<u8> = written.iter().flat_map(|(_, frame)| frame[x.header_len()..].to_vec()).collect();
        assert_eq!(rejoined, payload);
    }

    // --- Properties ---

    prop_compose! {
        fn arb_superframe()(
            v6 in any::<bool>(),
            vlan in proptest::option::of(0..4096u16),
            options in (0..=10usize).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4)),
            mss in 1..=1500u16,
            payload_len in 0..=6000usize,
            (psh, fin, df) in any::<(bool, bool, bool)>(),
            (ident, seq) in any::<(u16, u32)>(),
        ) -> (Spec, u16, usize) {
            let mut flags = tcp::flags::ACK;
            if psh { flags |= tcp::flags::PSH; }
            if fin { flags |= tcp::flags::FIN; }
            (Spec { v6, vlan, options, df, ident, seq, flags, ..Spec::v4() }, mss, payload_len)
        }
    }

    proptest! {
        #[test]
        fn coalescing_inverts_segmentation((x, mss, payload_len) in arb_superframe()) {
            let payload = pattern(payload_len);
            let superframe = x.superframe(&payload);
            let segments = run_segment(&x.tso_hdr(mss), &superframe).unwrap();
            let size = usize::from(mss);
            let count = payload_len.div_ceil(size).max(1);
            prop_assert_eq!(segments.len(), count);
            for (index, segment) in segments.iter().enumerate() {
                prop_assert!(reference_verifies(segment));
                let tcp = tcp_view(segment, x.l4());
                match x.addrs() {
                    Addrs::V4(src, dst) => prop_assert!(tcp.verify_checksum_v4(src, dst)),
                    Addrs::V6(src, dst) => prop_assert!(tcp.verify_checksum_v6(&src, &dst)),
                }
                prop_assert_eq!(tcp.seq_number(), x.seq.wrapping_add((index * size) as u32));
                let last_flags = if index + 1 == count { x.flags } else { tcp::flags::ACK };
                prop_assert_eq!(tcp.flags(), last_flags);
            }

            // Everything but a FIN segment (and empty segments) merges; what merges is the superframe again.
            let merged = if payload_len == 0 { 0 } else if x.flags & tcp::flags::FIN != 0 { count - 1 } else { count };
            let mut expected = Vec::new();
            if merged >= 2 {
                let flags = if merged == count { x.flags } else { tcp::flags::ACK };
                let prefix = Spec { flags, ..x.clone() };
                let merged_payload = &payload[..(merged * size).min(payload_len)];
                expected.push((prefix.tso_hdr(mss), prefix.superframe(merged_payload)));
            } else if merged == 1 {
                expected.push((VirtioNetHdr::default(), segments[0].clone()));
            }
            expected.extend(segments[merged..].iter().map(|segment| (VirtioNetHdr::default(), segment.clone())));
            let written = run_coalesce(&segments);
            prop_assert_eq!(&written, &expected);
            let rejoined: Vec<u8> = written.iter().flat_map(|(_, frame)| frame[x.header_len()..].to_vec()).collect();
            prop_assert_eq!(rejoined, payload);
        }

        #[test]
        fn gathering_coalescer_writes_what_the_copying_one_does(
            (x, mss, payload_len) in arb_superframe(),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
            corrupt in proptest::option::of((any::<proptest::sample::Index>(), any::<usize>())),
        ) {
            // Segments of at least 64 bytes: below GATHER_SEGMENTS in a superframe, where the two must agree
            // (`gathering_coalescer_caps_its_pieces` covers the cap).
            let mss = mss.max(64);
            let payload = pattern(payload_len);
            let mut segments = run_segment(&x.tso_hdr(mss), &x.superframe(&payload)).unwrap();
            // In order, then with some segments repeated, reordered or dropped, and sometimes one corrupted.
            let mut frames = segments.clone();
            frames.extend(order.iter().map(|index| segments[index.index(segments.len())].clone()));
            if let Some((index, at)) = corrupt {
                let count = segments.len();
                let segment = &mut segments[index.index(count)];
                let at = at % segment.len();
                segment[at] ^= 0x5a;
                frames.push(segment.clone());
            }
            let mut copying = Vec::new();
            let mut buf = vec![0; LEN + 70_000];
            let mut coalescer = Coalescer::new();
            for frame in &frames {
                if coalescer.push_authenticated(&mut buf, frame) == Push::NotMergeable {
                    if let Some(len) = coalescer.finish(&mut buf) {
                        copying.push((VirtioNetHdr::parse(&buf).unwrap(), buf[LEN..len].to_vec()));
                    }
                    if coalescer.push_authenticated(&mut buf, frame) == Push::NotMergeable {
                        copying.push((VirtioNetHdr::default(), frame.clone()));
                    }
                }
            }
            if let Some(len) = coalescer.finish(&mut buf) {
                copying.push((VirtioNetHdr::parse(&buf).unwrap(), buf[LEN..len].to_vec()));
            }
            prop_assert_eq!(run_gather_coalesce(&frames, false), run_coalesce(&frames));
            prop_assert_eq!(run_gather_coalesce(&frames, true), copying);
        }

        #[test]
        fn gathering_sends_the_bytes_segment_writes(
            (x, mss, payload_len) in arb_superframe(),
            kind in 0..3u8,
            front in 0..16usize,
        ) {
            let payload = pattern(payload_len);
            let (hdr, frame) = match kind {
                0 => (x.tso_hdr(mss), x.superframe(&payload)),
                1 => (x.uso_hdr(mss), x.udp_superframe(&payload)),
                // A single frame with a partial checksum, as the TAP gives without GSO.
                _ => {
                    let single = x.superframe(&payload[..payload_len.min(1400)]);
                    let hdr = VirtioNetHdr { gso_type: gso::NONE, gso_size: 0, ..x.tso_hdr(mss) };
                    (hdr, single)
                }
            };
            let expected = run_segment(&hdr, &frame).unwrap();
            let mut arena = vec![FILL; expected.len() * (front + 200) + frame.len()];
            let mut payloads = vec![0..0; expected.len()];
            let gather = segment_gather(&hdr, &frame, front, &mut arena, &mut payloads).unwrap();
            prop_assert_eq!(gather.count, expected.len());
            for (index, segment) in expected.iter().enumerate() {
                let block = &arena[index * gather.block..(index + 1) * gather.block];
                // The caller's front bytes are left alone.
                prop_assert!(block[..front].iter().all(|&byte| byte == FILL));
                let gathered: Vec<u8> = block[front..].iter().chain(&frame[payloads[index].clone()]).copied().collect();
                prop_assert_eq!(&gathered, segment);
            }
            prop_assert!(arena[gather.count * gather.block..].iter().all(|&byte| byte == FILL));
        }

        #[test]
        fn corrupted_superframes_do_not_panic(
            (x, mss, payload_len) in arb_superframe(),
            udp in any::<bool>(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            truncate in any::<usize>(),
            flags_bits in any::<u8>(),
        ) {
            let payload = pattern(payload_len.min(3000));
            let (hdr, mut frame) = if udp {
                (x.uso_hdr(mss), x.udp_superframe(&payload))
            } else {
                (x.tso_hdr(mss), x.superframe(&payload))
            };
            for (at, value) in edits {
                let len = frame.len();
                frame[at % len] = value;
            }
            frame.truncate(truncate % (frame.len() + 1));
            let hdr = VirtioNetHdr { flags: flags_bits & 3, ..hdr };
            if let Ok(segments) = run_segment(&hdr, &frame) {
                prop_assert!(!segments.is_empty());
            }
            let (mut arena, mut payloads) = (vec![0; 64 * 1024], vec![0..0; 8]);
            let gathered = segment_gather(&hdr, &frame, 8, &mut arena, &mut payloads);
            prop_assert_eq!(gathered.is_ok(), run_segment(&hdr, &frame).is_ok_and(|s| s.len() <= 8));
            let mut coalescer = Coalescer::new();
            let mut buf = vec![0; LEN + 8000];
            let _ = coalescer.push(&mut buf, &frame);
            let _ = coalescer.push(&mut buf, &frame);
            let _ = coalescer.finish(&mut buf);
        }

        #[test]
        fn arbitrary_input_does_not_panic(
            header in any::<[u8; LEN]>(),
            gso_type in prop_oneof![Just(gso::NONE), Just(gso::TCPV4), Just(gso::TCPV6), Just(gso::UDP_L4), any::<u8>()],
            frame in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let hdr = VirtioNetHdr { gso_type, ..VirtioNetHdr::parse(&header).unwrap() };
            let mut out = [0u8; 4096];
            let mut lens = [0usize; 16];
            let _ = segment(&hdr, &frame, &mut out, 4, 256, &mut lens);
            let mut frame = frame;
            let _ = complete_checksum(&hdr, &mut frame);
            let mut coalescer = Coalescer::new();
            let _ = coalescer.push(&mut [0; 400], &frame);
            let _ = coalescer.finish(&mut [0; 400]);
        }
    }
}
