//! What the data-path worker needs from an underlay, whichever carries the datagrams: the kernel's UDP stack
//! ([`super::udp::Underlay`]) or AF_XDP sockets fed by weft's own XDP program ([`super::xdp::XdpUnderlay`]).
//!
//! ```text
//!  worker ──poll──► UnderlayIo::poll_fds ─ready─► recv(source) ─► (datagram, sender, port) ─► Forwarder
//!  worker ◄── Forwarder encapsulates ◄── send_segments(flow, vtep, esp, datagrams, segment) ──► wire
//!  worker ◄── segment_gather (headers in an arena, payloads in place) ◄── send_gathered(.., [[headers, payload]]) ──► wire
//!  worker ◄── small frames encapsulated into slots of an arena ◄── send_batch(arena, [Datagram]) ──► wire
//!  worker ──► recv_batch(source, slots) ─► [(datagrams, sender, port)] ─► Forwarder
//! ```
//!
//! The UDP underlay does `send_batch` with `sendmmsg` and UDP GSO and `recv_batch` with `recvmmsg`; AF_XDP takes the
//! defaults (one `send_segments` per datagram, which queues it on the TX ring; one `recv` per slot).
//!
//! Both take and give UDP payloads (VXLAN or ESP-in-UDP datagrams); the AF_XDP underlay writes and strips the outer
//! Ethernet/IP/UDP headers itself.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

pub use super::batch::Datagram;
use super::udp::Underlay;

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
    /// Kernel UDP sockets: calls that sent (`sendto`, `sendmsg`, `sendmmsg`), failed ones included.
    pub tx_syscalls: u64,
    /// Kernel UDP sockets: datagrams those calls carried.
    pub tx_datagrams: u64,
    /// Kernel UDP sockets: calls that received (`recvmsg`, `recvmmsg`), those that found nothing included.
    pub rx_syscalls: u64,
    /// Kernel UDP sockets: datagrams those calls returned (a GRO batch counts as the datagrams it holds).
    pub rx_datagrams: u64,
    /// Times a batching feature (UDP GSO, `sendmmsg`, `recvmmsg`) was refused by the kernel and turned off.
    pub batching_fallbacks: u64,
}

impl Received {
    /// A placeholder for arrays of receives, before they are filled.
    pub const EMPTY: Received = Received {
        len: 0,
        from: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
        segment: 1,
        esp: false,
    };
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
        self.tx_syscalls += other.tx_syscalls;
        self.tx_datagrams += other.tx_datagrams;
        self.rx_syscalls += other.rx_syscalls;
        self.rx_datagrams += other.rx_datagrams;
        self.batching_fallbacks += other.batching_fallbacks;
    }

    /// Adds the kernel sockets' system call counters.
    pub fn add_syscalls(&mut self, c: &super::udp::SyscallCounters) {
        self.tx_syscalls += c.tx_syscalls;
        self.tx_datagrams += c.tx_datagrams;
        self.rx_syscalls += c.rx_syscalls;
        self.rx_datagrams += c.rx_datagrams;
        self.batching_fallbacks += c.batching_fallbacks;
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

    /// Sends datagrams laid out anywhere in `data` (`data[d.bytes]`, each to `d.vtep` from the socket `d.flow`
    /// picks), in as few calls as the underlay can, keeping each flow's order. Marks each one sent as `sent` and
    /// returns how many sends failed. By default one [`Self::send_segments`] each.
    fn send_batch(&mut self, data: &[u8], datagrams: &mut [Datagram]) -> usize {
        let mut failed = 0;
        for d in datagrams.iter_mut() {
            let bytes = &data[d.bytes.clone()];
            d.sent = self.send_segments(d.flow, d.vtep, d.esp, bytes, bytes.len()).is_ok();
            failed += usize::from(!d.sent);
        }
        failed
    }

    /// Receives from `source` into up to `out.len()` slots, slot `i` being `buf[i * stride..][..len]`, each holding
    /// what one [`Self::recv`] would; returns how many were filled (at least one), or `WouldBlock` when nothing
    /// was there. By default one [`Self::recv`] per slot until there is nothing more.
    ///
    /// # Panics
    /// If a slot lies outside `buf`.
    fn recv_batch(
        &mut self,
        source: usize,
        buf: &mut [u8],
        stride: usize,
        len: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        let mut filled = 0;
        while filled < out.len() {
            match self.recv(source, &mut buf[filled * stride..filled * stride + len]) {
                Ok(received) => out[filled] = received,
                // An error after some receives shows again on the next call.
                Err(_) if filled > 0 => break,
                Err(e) => return Err(e),
            }
            filled += 1;
        }
        Ok(filled)
    }

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
        let mut out = [Received::EMPTY];
        let len = buf.len();
        Underlay::recv_batch(self, source == 1, buf, len, len, &mut out)?;
        Ok(out[0])
    }

    fn recv_batch(
        &mut self,
        source: usize,
        buf: &mut [u8],
        stride: usize,
        len: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        Underlay::recv_batch(self, source == 1, buf, stride, len, out)
    }

    fn send_batch(&mut self, data: &[u8], datagrams: &mut [Datagram]) -> usize {
        Underlay::send_batch(self, data, datagrams)
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
        let mut stats = UnderlayStats { mode: "udp", ..UnderlayStats::default() };
        stats.add_syscalls(&self.counters());
        stats
    }
}
