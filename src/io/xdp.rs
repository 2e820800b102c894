//! The AF_XDP underlay (`node.underlay_mode = "af_xdp"`): VXLAN and ESP-in-UDP datagrams go between weft and the
//! underlay NIC through AF_XDP sockets (xsk-rs), past the kernel's IP and UDP stack.
//!
//! ```text
//!  NIC queue q ─► weft_xdp (XDP) ─ UDP to underlay:{vxlan_port, esp_port}? ─yes─► XSK q ─► recv: outer headers
//!                                 └─no (ARP, ND, QUIC 7946, SSH, fragments…) ─► kernel        parsed, payload copied
//!  send_segments: per datagram a free UMEM frame ◄─ Ethernet/IP/UDP written with checksums ◄─ next-hop MAC (cache;
//!                 ─► TX ring of XSK (flow % queues) ─► wakeup (copy mode)                      netlink on a miss)
//! ```
//!
//! - One XSK per queue of the underlay NIC, each with its own UMEM of [`FRAMES`] frames: half on the fill ring for
//!   receiving, half for sending, recycled through the completion ring. Zero-copy is asked for and copy mode taken
//!   when the driver lacks it (veth); both use need_wakeup.
//! - The XDP program ([`program`]) redirects only UDP to this host's underlay address on weft's two ports, and only
//!   once every queue has its socket. Everything else reaches the kernel as before.
//! - The kernel's UDP sockets on the two ports stay open ([`Underlay`]): what the program leaves to the kernel that is
//!   still weft's (IPv4 fragments, IP options) arrives there, and is counted as `kernel_rx`.
//! - Sending builds the outer headers with [`overlay_proto::wire::outer`]; the destination MAC comes from the kernel's
//!   neighbour table ([`neighbour`]), and the outer source port from the inner flow hash, as on the UDP path.
//!
//! If any of this cannot be set up, the daemon falls back to the UDP underlay with one log line saying why.

pub mod neighbour;
pub mod program;

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use overlay_proto::wire::outer::{self, Inbound, Outer};
use overlay_proto::MacAddr;
use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use self::neighbour::Neighbours;
use self::program::XdpProgram;
use super::udp::Underlay;
use super::underlay::{Datagram, Received, UnderlayIo, UnderlayStats};

/// UMEM frames per socket: half receive, half send.
pub const FRAMES: u32 = 4096;
/// Bytes per UMEM frame (a page).
const FRAME_SIZE: u32 = 4096;
/// The kernel keeps this much of each frame in front of the packet (XDP_PACKET_HEADROOM).
const XDP_HEADROOM: usize = 256;
/// The longest Ethernet frame one UMEM frame holds.
pub const MAX_FRAME: usize = FRAME_SIZE as usize - XDP_HEADROOM;
/// Descriptors taken from the receive ring at a time.
const RX_BATCH: usize = 64;
/// Copy-mode transmit sends at most 32 frames per wakeup and answers EAGAIN while more wait; this bounds the kicks
/// one flush makes before it leaves the rest for the next.
const MAX_KICKS: usize = 256;
/// Receive sources before the first XSK: the kernel's VXLAN and ESP sockets.
const KERNEL_SOURCES: usize = 2;

/// Why the AF_XDP underlay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The link's MTU does not fit a UMEM frame.
    #[error("the MTU of {link} ({mtu}) is too large for AF_XDP frames of {max} bytes")]
    Mtu {
        /// The link.
        link: String,
        /// Its MTU.
        mtu: u32,
        /// The largest MTU that fits.
        max: usize,
    },
    /// The link has no Ethernet address.
    #[error("{0} has no Ethernet address")]
    NoMac(String),
    /// The link has more queues than the program's socket map.
    #[error("{link} has {queues} queues, more than the {max} weft's XDP program serves")]
    Queues {
        /// The link.
        link: String,
        /// Its queue count.
        queues: u32,
        /// The map's size.
        max: u32,
    },
    /// Creating a UMEM or a socket failed.
    #[error("creating the AF_XDP socket for queue {queue} of {link}: {reason}")]
    Socket {
        /// The link.
        link: String,
        /// The queue.
        queue: u32,
        /// What xsk-rs said, with the OS error.
        reason: String,
    },
    /// The XDP program could not be loaded, configured or attached.
    #[error(transparent)]
    Program(#[from] program::ProgramError),
}

/// The underlay link, as [`XdpUnderlay::open`] needs it.
#[derive(Debug, Clone)]
pub struct XdpLink {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Ethernet address.
    pub mac: Option<MacAddr>,
}

/// One queue's socket and its UMEM.
#[derive(Debug)]
struct Queue {
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    /// Send frames not in the kernel's hands.
    free: Vec<FrameDesc>,
    /// Written and waiting for the next [`Queue::flush`].
    pending: Vec<FrameDesc>,
    /// Received descriptors being handed out, and those read, waiting to go back on the fill ring.
    rx_batch: Vec<FrameDesc>,
    rx_next: usize,
    rx_len: usize,
    refill: Vec<FrameDesc>,
    /// Scratch for the completion ring.
    done: Vec<FrameDesc>,
    tx_size: u32,
}

impl Queue {
    fn open(link: &XdpLink, queue: u32, zero_copy: bool) -> Result<Self, XdpError> {
        let fail = |reason: String| XdpError::Socket { link: link.name.clone(), queue, reason };
        let half = QueueSize::new(FRAMES / 2).map_err(|e| fail(e.to_string()))?;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| fail(e.to_string()))?)
            .fill_queue_size(half)
            .comp_queue_size(half)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let frames = NonZeroU32::new(FRAMES).expect("FRAMES is not zero");
        let (umem, mut descs) = Umem::new(umem_config, frames, false).map_err(|e| fail(error_chain(&e)))?;
        let mode = if zero_copy { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
        let socket_config = SocketConfig::builder()
            .rx_queue_size(half)
            .tx_queue_size(half)
            // weft attaches its own program: libxdp must not load its default one.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | mode)
            .build();
        let name = link.name.parse().map_err(|_| fail("the link name holds a NUL byte".into()))?;
        // SAFETY: the UMEM is new and handed to this one socket; its frames are used only through this Queue, each
        // by at most one ring at a time (fill/rx for the first half, tx/completion for the second).
        let (tx, rx, rings) =
            unsafe { Socket::new(socket_config, &umem, &name, queue) }.map_err(|e| fail(error_chain(&e)))?;
        let (mut fill, comp) = rings.ok_or_else(|| fail("the UMEM's fill and completion rings are taken".into()))?;
        let free = descs.split_off(descs.len() / 2);
        // SAFETY: these frames belong to `umem` and nothing else holds them.
        let filled = unsafe { fill.produce(&descs) };
        if filled != descs.len() {
            return Err(fail(format!("the fill ring took {filled} of {} frames", descs.len())));
        }
        Ok(Self {
            umem,
            fill,
            comp,
            tx,
            rx,
            pending: Vec::with_capacity(free.len()),
            free,
            rx_batch: vec![FrameDesc::default(); RX_BATCH],
            rx_next: 0,
            rx_len: 0,
            refill: Vec::with_capacity(RX_BATCH),
            done: vec![FrameDesc::default(); (FRAMES / 2) as usize],
            tx_size: FRAMES / 2,
        })
    }

    fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Takes back the frames the kernel has sent.
    fn reclaim(&mut self) {
        // SAFETY: the completion ring returns frames of this queue's UMEM that this queue put on its TX ring.
        let n = unsafe { self.comp.consume(&mut self.done) };
        self.free.extend_from_slice(&self.done[..n]);
    }

    /// Puts the written frames on the TX ring and makes the kernel send them.
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            // SAFETY: the pending frames are this UMEM's, written and not on any ring. The TX ring has room for
            // every send frame, so it takes them all.
            let n = unsafe { self.tx.produce(&self.pending) };
            self.pending.drain(..n);
        }
        if self.tx.needs_wakeup() {
            self.kick();
        }
    }

    /// Wakes the kernel's transmit. In copy mode each call sends a batch synchronously and says EAGAIN while more
    /// wait, so it loops (bounded) until the ring is empty.
    fn kick(&mut self) {
        for _ in 0..MAX_KICKS {
            // SAFETY: a zero-length sendto on our own AF_XDP socket, the documented TX wakeup.
            let rc = unsafe { libc::sendto(self.fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            let again = rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
            if !again || self.tx.nb_free_exact() == self.tx_size {
                return;
            }
            self.reclaim();
        }
    }

    /// A free send frame, reclaiming and kicking once if none is.
    fn frame(&mut self) -> Option<FrameDesc> {
        if self.free.is_empty() {
            self.reclaim();
        }
        if self.free.is_empty() {
            self.flush();
            self.kick();
            self.reclaim();
        }
        self.free.pop()
    }

    /// The next received frame, or `None` when the ring is empty.
    fn next_rx(&mut self) -> Option<FrameDesc> {
        if self.rx_next == self.rx_len {
            if !self.refill.is_empty() {
                // SAFETY: these frames came off this socket's RX ring and are no longer read.
                let n = unsafe { self.fill.produce(&self.refill) };
                self.refill.drain(..n);
            }
            // SAFETY: the RX ring hands out frames of this queue's UMEM; they stay ours until put on the fill ring.
            self.rx_len = unsafe { self.rx.consume(&mut self.rx_batch) };
            self.rx_next = 0;
            if self.rx_len == 0 {
                if self.fill.needs_wakeup() {
                    // The wakeup is a zero-timeout poll: it cannot block.
                    let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
                }
                return None;
            }
        }
        let desc = self.rx_batch[self.rx_next];
        self.rx_next += 1;
        self.refill.push(desc);
        Some(desc)
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The AF_XDP underlay.
#[derive(Debug)]
pub struct XdpUnderlay {
    kernel: Underlay,
    queues: Vec<Queue>,
    /// Detached (in Drop) before the sockets close: that hands the ports back to the kernel.
    program: XdpProgram,
    local: IpAddr,
    local_mac: MacAddr,
    vxlan_port: u16,
    esp_port: u16,
    neighbours: Neighbours,
    stats: UnderlayStats,
}

impl XdpUnderlay {
    /// Opens one AF_XDP socket per queue of `link` and attaches weft's XDP program to it. `kernel` stays as the
    /// receiver of what the program leaves to the kernel; on failure it is handed back for the UDP fallback
    /// (boxed: an `Underlay` is large).
    pub fn open(
        kernel: Underlay,
        link: &XdpLink,
        local: IpAddr,
        vxlan_port: u16,
        esp_port: u16,
        netlink: rtnetlink::Handle,
    ) -> Result<Self, Box<(XdpError, Underlay)>> {
        match Self::setup(&kernel, link, local, vxlan_port, esp_port) {
            Ok((queues, program, local_mac, stats)) => Ok(Self {
                kernel,
                queues,
                program,
                local,
                local_mac,
                vxlan_port,
                esp_port,
                neighbours: Neighbours::start(netlink, link.index),
                stats,
            }),
            Err(e) => Err(Box::new((e, kernel))),
        }
    }

    fn setup(
        kernel: &Underlay,
        link: &XdpLink,
        local: IpAddr,
        vxlan_port: u16,
        esp_port: u16,
    ) -> Result<(Vec<Queue>, XdpProgram, MacAddr, UnderlayStats), XdpError> {
        let max = MAX_FRAME - overlay_proto::wire::ethernet::HEADER_LEN;
        if link.mtu as usize > max {
            return Err(XdpError::Mtu { link: link.name.clone(), mtu: link.mtu, max });
        }
        let local_mac = link.mac.ok_or_else(|| XdpError::NoMac(link.name.clone()))?;
        let count = queue_count(kernel.vxlan.as_raw_fd(), &link.name);
        if count > program::MAX_QUEUES {
            return Err(XdpError::Queues { link: link.name.clone(), queues: count, max: program::MAX_QUEUES });
        }
        // Zero-copy where the driver has it; else (veth, most virtual NICs) copy mode, for every queue alike.
        let mut zero_copy = true;
        let mut queues = Vec::with_capacity(count as usize);
        for queue in 0..count {
            let opened = match Queue::open(link, queue, zero_copy) {
                Err(_) if zero_copy && queue == 0 => {
                    zero_copy = false;
                    Queue::open(link, queue, false)
                }
                other => other,
            };
            queues.push(opened?);
        }
        let mut program = XdpProgram::load(local, vxlan_port, esp_port)?;
        for (queue, q) in queues.iter().enumerate() {
            program.set_socket(queue as u32, q.fd())?;
        }
        let attach = program.attach(link.index, &link.name)?;
        let stats = UnderlayStats {
            mode: "af_xdp",
            xsk_bind: Some(if zero_copy { "zero-copy" } else { "copy" }),
            xdp_attach: Some(attach.as_str()),
            xsk_sockets: queues.len(),
            ..UnderlayStats::default()
        };
        Ok((queues, program, local_mac, stats))
    }

    /// How the program is attached and the sockets bound, for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} XSK(s), {} mode, XDP {}",
            self.queues.len(),
            self.stats.xsk_bind.unwrap_or("?"),
            self.stats.xdp_attach.unwrap_or("?")
        )
    }

    /// Writes one datagram into a frame of queue `q` and queues it for the TX ring.
    /// The outer headers and the queue for `count` datagrams to `vtep`; `None` (the datagrams counted as
    /// neighbour misses) while the next hop's MAC is not known yet.
    fn outer(&mut self, flow: u32, vtep: IpAddr, esp: bool, count: usize) -> io::Result<Option<(Outer, usize)>> {
        if vtep.is_ipv4() != self.local.is_ipv4() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "VTEP of the other address family"));
        }
        let Some(dst_mac) = self.neighbours.lookup(vtep) else {
            self.stats.neighbour_misses += count as u64;
            return Ok(None);
        };
        let outer = Outer {
            src_mac: self.local_mac,
            dst_mac,
            src: SocketAddr::new(self.local, outer::source_port(flow)),
            dst: SocketAddr::new(vtep, if esp { self.esp_port } else { self.vxlan_port }),
        };
        Ok(Some((outer, flow as usize % self.queues.len())))
    }

    /// Queues one datagram, the concatenation of `pieces`, on queue `q`'s TX ring (sent on the next flush).
    fn push(&mut self, q: usize, outer: &Outer, pieces: &[&[u8]]) {
        let header = outer.header_len();
        let len: usize = pieces.iter().map(|piece| piece.len()).sum();
        if !fits_frame(&mut self.stats, header, len) {
            return;
        }
        let queue = &mut self.queues[q];
        let Some(mut desc) = queue.frame() else {
            self.stats.tx_ring_full += 1;
            return;
        };
        // SAFETY: `desc` is a free send frame of this queue's UMEM: no ring and no other reference holds it.
        let mut data = unsafe { queue.umem.data_mut(&mut desc) };
        data.cursor().set_pos(header + len);
        let frame = data.contents_mut();
        let mut at = header;
        for piece in pieces {
            frame[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        // Only a datagram too long for one IP packet gets here (the frame is sized and the families checked).
        if outer.emit(frame, len).is_err() {
            queue.free.push(desc);
            self.stats.tx_oversize += 1;
            return;
        }
        queue.pending.push(desc);
        self.stats.xsk_tx += 1;
    }
}

impl Drop for XdpUnderlay {
    fn drop(&mut self) {
        // Detach first, so the kernel takes the ports back before the sockets close.
        self.program.detach();
    }
}

impl UnderlayIo for XdpUnderlay {
    fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds = self.kernel.poll_fds();
        fds.extend(self.queues.iter().map(Queue::fd));
        fds
    }

    fn recv(&mut self, source: usize, buf: &mut [u8]) -> io::Result<Received> {
        if source < KERNEL_SOURCES {
            let received = self.kernel.recv(source, buf)?;
            self.stats.kernel_rx += 1;
            return Ok(received);
        }
        let queue = &mut self.queues[source - KERNEL_SOURCES];
        loop {
            let Some(desc) = queue.next_rx() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            // SAFETY: `desc` came off this queue's RX ring and is not back on the fill ring until the next batch.
            let frame = unsafe { queue.umem.data(&desc) }.contents();
            let inbound = match Inbound::parse(frame) {
                Ok(inbound) if inbound.to.ip() == self.local && inbound.payload.len() <= buf.len() => inbound,
                _ => {
                    self.stats.xsk_rx_malformed += 1;
                    continue;
                }
            };
            let len = inbound.payload.len();
            buf[..len].copy_from_slice(&frame[inbound.payload]);
            self.stats.xsk_rx += 1;
            return Ok(Received { len, from: inbound.from, segment: len, esp: inbound.to.port() == self.esp_port });
        }
    }

    fn send_segments(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let count = datagrams.len().div_ceil(segment.max(1));
        let Some((outer, q)) = self.outer(flow, vtep, esp, count)? else {
            return Ok(());
        };
        for datagram in datagrams.chunks(segment.max(1)) {
            self.push(q, &outer, &[datagram]);
        }
        self.queues[q].flush();
        Ok(())
    }

    /// Puts every datagram on its queue's TX ring first and wakes each queue's transmit once at the end, rather
    /// than once per datagram.
    fn send_batch(&mut self, data: &[u8], datagrams: &mut [Datagram]) -> usize {
        let mut failed = 0;
        for d in datagrams.iter_mut() {
            d.sent = match self.outer(d.flow, d.vtep, d.esp, 1) {
                Ok(Some((outer, q))) => {
                    self.push(q, &outer, &[&data[d.bytes.clone()]]);
                    true
                }
                // A next hop not resolved yet is counted and asked for, as `send_segments` does.
                Ok(None) => true,
                Err(_) => false,
            };
            failed += usize::from(!d.sent);
        }
        for queue in self.queues.iter_mut().filter(|q| !q.pending.is_empty()) {
            queue.flush();
        }
        failed
    }

    /// Gathers each datagram's two pieces straight into its UMEM frame: the copy into the frame is the one AF_XDP
    /// makes anyway.
    fn send_gathered(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[[IoSlice<'_>; 2]],
        _segment: usize,
    ) -> io::Result<()> {
        let Some((outer, q)) = self.outer(flow, vtep, esp, datagrams.len())? else {
            return Ok(());
        };
        for [headers, payload] in datagrams {
            self.push(q, &outer, &[&headers[..], &payload[..]]);
        }
        self.queues[q].flush();
        Ok(())
    }

    fn handle_timeout(&mut self, _now: Instant) {
        self.neighbours.handle_tick();
        for queue in &mut self.queues {
            // Anything a busy device refused earlier goes now; finished frames come back.
            queue.flush();
            queue.reclaim();
        }
    }

    fn stats(&self) -> UnderlayStats {
        let mut stats = self.stats.clone();
        stats.add_syscalls(&self.kernel.counters());
        for queue in &self.queues {
            // A socket that cannot say (an old kernel) simply adds nothing.
            if let Ok(s) = queue.rx.fd().xdp_statistics() {
                stats.xsk_rx_ring_full += s.rx_ring_full();
                stats.xsk_rx_dropped += s.rx_dropped();
                stats.xsk_fill_empty += s.rx_fill_ring_empty_descs();
            }
        }
        stats
    }
}

/// Whether a datagram of `len` bytes behind `header` bytes of outer headers fits one UMEM frame; one that does not is
/// counted in `stats.tx_oversize`.
fn fits_frame(stats: &mut UnderlayStats, header: usize, len: usize) -> bool {
    let fits = header + len <= MAX_FRAME;
    if !fits {
        stats.tx_oversize += 1;
    }
    fits
}

/// The queue count of `link`: ethtool's channel count (the larger of rx and combined), 1 when it has none to say.
fn queue_count(socket: RawFd, link: &str) -> u32 {
    /// `struct ethtool_channels` (include/uapi/linux/ethtool.h).
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    /// `struct ifreq` with the `ifr_data` member, padded to the kernel's 40 bytes.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut channels = Channels { cmd: ETHTOOL_GCHANNELS, ..Channels::default() };
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: (&mut channels as *mut Channels).cast(), _pad: [0; 16] };
    let name = link.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return 1;
    }
    request.name[..name.len()].copy_from_slice(name);
    // SAFETY: SIOCETHTOOL reads the ifreq and writes `channels` through ifr_data; both live across the call.
    let rc = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, &mut request) };
    if rc != 0 {
        return 1;
    }
    channels.rx_count.max(channels.combined_count).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_too_big_for_a_frame_is_counted_as_oversize_not_ring_full() {
        let mut stats = UnderlayStats::default();
        let header = overlay_proto::wire::ethernet::HEADER_LEN + 20 + 8;
        assert!(fits_frame(&mut stats, header, MAX_FRAME - header));
        assert_eq!(stats, UnderlayStats::default(), "a datagram that fits is not counted");
        assert!(!fits_frame(&mut stats, header, MAX_FRAME - header + 1));
        assert_eq!((stats.tx_oversize, stats.tx_ring_full), (1, 0));
        let mut sum = UnderlayStats::default();
        sum.merge(&stats);
        sum.merge(&stats);
        assert_eq!(sum.tx_oversize, 2, "workers' counts add up");
    }
}
