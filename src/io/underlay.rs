//! What the data-path worker needs from an underlay, whichever carries the datagrams: the kernel's UDP stack
//! ([`super::udp::Underlay`]) or AF_XDP sockets fed by weft's own XDP program ([`super::xdp::XdpUnderlay`]).
//!
//! ```text
//!  worker ──poll──► UnderlayIo::poll_fds ─ready─► recv(source) ─► (datagram, sender, port) ─► Forwarder
//!  worker ◄── Forwarder encapsulates ◄── send_segments(flow, vtep, esp, datagrams, segment) ──► wire
//!  worker ◄── segment_gather (headers in an arena, payloads in place) ◄── send_gathered(.., [[headers, payload]]) ──► wire
//! ```
//!
//! Both take and give UDP payloads (VXLAN or ESP-in-UDP datagrams); the AF_XDP underlay writes and strips the outer
//! Ethernet/IP/UDP headers itself.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use super::udp::{recv_segments, Underlay};

/// Most datagrams one [`UnderlayIo::send_gathered`] call takes: the kernel's UDP GSO limit (UDP_MAX_SEGMENTS is 64 on
/// older kernels), which also keeps the iovec array (two entries a datagram) far below UIO_MAXIOV (1024).
pub const GATHER_MAX: usize = 64;

/// One receive: `len` bytes at the start of the caller's buffer, from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// With UDP GRO, several datagrams of `segment` bytes each (the last may be shorter); else `len`.
    pub segment: usize,
    /// Whether they arrived on the ESP port (else the VXLAN port).
    pub esp: bool,
}

/// Counters an underlay keeps beyond the worker's own, for `weft stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnderlayStats {
    /// `udp` or `af_xdp`.
    pub mode: &'static str,
    /// AF_XDP: the sockets' bind mode, `copy` or `zero-copy`.
    pub xsk_bind: Option<&'static str>,
    /// AF_XDP: how the XDP program is attached, `native` or `generic`.
    pub xdp_attach: Option<&'static str>,
    /// AF_XDP sockets (one per queue of the underlay NIC).
    pub xsk_sockets: usize,
    /// Datagrams received through AF_XDP sockets.
    pub xsk_rx: u64,
    /// Datagrams sent through AF_XDP sockets.
    pub xsk_tx: u64,
    /// Frames the AF_XDP receive could not read as UDP to this host (counted, dropped).
    pub xsk_rx_malformed: u64,
    /// Datagrams dropped because the next hop's MAC was not known yet (resolution was asked for).
    pub neighbour_misses: u64,
    /// Datagrams dropped because no transmit frame was free.
    pub tx_ring_full: u64,
    /// Datagrams dropped because they do not fit one UMEM frame behind their outer headers (an overlay MTU set
    /// above what the AF_XDP frame holds). Not `tx_ring_full`: the ring may have room, the datagram never will.
    pub tx_oversize: u64,
    /// Datagrams the kernel passed to the UDP sockets anyway (fragments, IP options: what XDP leaves to it).
    pub kernel_rx: u64,
    /// The kernel's AF_XDP statistics, summed over the sockets: frames dropped because the RX ring was full, dropped
    /// for other reasons (too long for a frame, no fill descriptor), and times the fill ring was found empty.
    pub xsk_rx_ring_full: u64,
    /// See `xsk_rx_ring_full`.
    pub xsk_rx_dropped: u64,
    /// See `xsk_rx_ring_full`.
    pub xsk_fill_empty: u64,
}

impl UnderlayStats {
    /// Adds another worker's counters to these (the modes are the same for every worker).
    pub fn merge(&mut self, other: &UnderlayStats) {
        self.xsk_sockets += other.xsk_sockets;
        self.xsk_rx += other.xsk_rx;
        self.xsk_tx += other.xsk_tx;
        self.xsk_rx_malformed += other.xsk_rx_malformed;
        self.neighbour_misses += other.neighbour_misses;
        self.tx_ring_full += other.tx_ring_full;
        self.tx_oversize += other.tx_oversize;
        self.kernel_rx += other.kernel_rx;
        self.xsk_rx_ring_full += other.xsk_rx_ring_full;
        self.xsk_rx_dropped += other.xsk_rx_dropped;
        self.xsk_fill_empty += other.xsk_fill_empty;
    }
}

/// The underlay as the worker uses it.
pub trait UnderlayIo: Send + fmt::Debug {
    /// The descriptors to poll for input; the index of a ready one is the `source` for [`Self::recv`].
    fn poll_fds(&self) -> Vec<RawFd>;

    /// Receives into `buf` from `source`; `WouldBlock` when it has nothing more.
    fn recv(&mut self, source: usize, buf: &mut [u8]) -> io::Result<Received>;

    /// Sends `datagrams`, consecutive datagrams of `segment` bytes each (the last may be shorter), to `vtep` on the
    /// VXLAN port, or the ESP port when `esp`. The outer source port follows `flow`, the inner flow's hash.
    fn send_segments(&mut self, flow: u32, vtep: IpAddr, esp: bool, datagrams: &[u8], segment: usize)
        -> io::Result<()>;

    /// Sends datagrams in two pieces each, headers then payload, without copying them together where the underlay
    /// can gather: `datagrams[i][0]` followed by `datagrams[i][1]` is datagram `i`, and every datagram but the
    /// last is `segment` bytes long. At most [`GATHER_MAX`] datagrams per call. Otherwise as
    /// [`Self::send_segments`].
    fn send_gathered(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[[IoSlice<'_>; 2]],
        segment: usize,
    ) -> io::Result<()>;

    /// Called about once a second with the time.
    fn handle_timeout(&mut self, _now: Instant) {}

    /// Counters.
    fn stats(&self) -> UnderlayStats;
}

impl UnderlayIo for Underlay {
    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.vxlan.as_raw_fd(), self.esp.as_raw_fd()]
    }

    fn recv(&mut self, source: usize, buf: &mut [u8]) -> io::Result<Received> {
        let esp = source == 1;
        let socket = if esp { &self.esp } else { &self.vxlan };
        let (len, from, segment) = recv_segments(socket, buf)?;
        Ok(Received { len, from, segment, esp })
    }

    fn send_segments(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        Underlay::send_segments(self, flow, vtep, esp, datagrams, segment)
    }

    fn send_gathered(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[[IoSlice<'_>; 2]],
        segment: usize,
    ) -> io::Result<()> {
        Underlay::send_gathered(self, flow, vtep, esp, datagrams, segment)
    }

    fn stats(&self) -> UnderlayStats {
        UnderlayStats { mode: "udp", ..UnderlayStats::default() }
    }
}
