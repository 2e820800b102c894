//! The underlay sockets.
//!
//! One socket bound to `underlay:vxlan_port` receives plaintext VXLAN, another on `underlay:esp_port` receives
//! ESP-in-UDP. Sending goes through a small pool of sockets
//! bound to ephemeral ports on the same address: the inner flow hash picks the socket, and so the outer UDP source
//! port (RFC 7348 §5), which gives ECMP and RSS on the underlay per-flow entropy without raw sockets, while every
//! packet of one flow leaves from one port in order.
//!
//! System calls are batched three ways, each detected at run time and turned off for good (logged once) when the
//! kernel or the route refuses it:
//! - UDP GSO (`UDP_SEGMENT`): a run of equal datagrams to one destination, contiguous or gathered, is one `sendmsg`
//!   that the kernel cuts ([`Underlay::send_segments`], [`Underlay::send_gathered`]); refused with EIO or EINVAL.
//! - `sendmmsg`: a batch of small datagrams ([`Underlay::send_batch`]) is one call per send socket, whose messages
//!   are the batch's GSO runs ([`super::batch::plan`]) or single datagrams; a partial send is continued from where
//!   the kernel stopped. Refused with ENOSYS or EINVAL: then one `sendmsg` per message.
//! - `recvmmsg` with UDP GRO: one call fills several 64 KiB slots, each with one datagram or one sender's GRO batch
//!   ([`Underlay::recv_batch`]); refused with ENOSYS or EINVAL: then one `recvmsg` per call.
//!
//! [`SyscallCounters`] count the calls and the datagrams they carried, for `weft stats`. The syscalls are called
//! through libc rather than quinn-udp: quinn-udp's `UdpSocketState` sends one `Transmit` (one destination, one GSO
//! segment size) per call and has no `sendmmsg`, while a worker's batch mixes destinations and sizes; and the worker
//! needs the GSO sends gathered from header blocks and payloads in place ([`Underlay::send_gathered`]), which its
//! contiguous `Transmit` contents cannot express.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::Arc;

use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use super::batch::{self, Datagram, GsoLimits, Run};
use super::underlay::Received;

/// Send buffer size asked for; the kernel caps it at net.core.wmem_max unless we are privileged.
const SOCKET_BUFFER: usize = 4 << 20;
/// Receive buffer size asked for (the kernel doubles it, and caps it at net.core.rmem_max): 2 MiB of skbs. It bounds
/// how long a datagram can wait behind others under overload. A 64-byte datagram takes ~768 bytes of buffer, so a
/// full 8 MiB buffer (the old size) held ~130 ms of a 64-byte flood, which every packet after the flood waited
/// through; 2 MiB holds ~30 ms of that, and still ~2 ms of 64 KiB GRO batches at 7 Gb/s, enough for a TCP window's
/// burst while a worker waits for a core.
const RECV_BUFFER: usize = 1 << 20;

/// Send sockets in the pool: distinct source ports an underlay sees per peer.
pub const SEND_POOL: usize = 16;

/// Why the underlay sockets could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// Binding the receive socket failed.
    #[error("cannot listen on UDP {addr}: {source} (is another VXLAN endpoint, such as kernel VXLAN or another weft, using that port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Creating or configuring a socket failed.
    #[error("cannot open an underlay UDP socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: IpAddr,
        /// The error.
        source: io::Error,
    },
}

/// The receive sockets and the send pool.
#[derive(Debug)]
pub struct Underlay {
    /// Plaintext VXLAN arrives here.
    pub vxlan: UdpSocket,
    /// ESP-in-UDP arrives here.
    pub esp: UdpSocket,
    /// The send pool, shared by every worker: a flow's outer source port is the same whichever worker reads it.
    send: Arc<[UdpSocket]>,
    vxlan_port: u16,
    esp_port: u16,
    batching: Batching,
    counters: SyscallCounters,
    /// Boxed: it is large and only the sends use it.
    scratch: Box<SendScratch>,
}

/// System calls on the kernel sockets and the datagrams they carried: how well the batching works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallCounters {
    /// Calls that sent datagrams (`sendto`, `sendmsg`, `sendmmsg`), failed ones included.
    pub tx_syscalls: u64,
    /// Datagrams the kernel took.
    pub tx_datagrams: u64,
    /// Calls that received (`recvmsg`, `recvmmsg`), those that found nothing included.
    pub rx_syscalls: u64,
    /// Datagrams received (a GRO batch counts as the datagrams it holds).
    pub rx_datagrams: u64,
    /// Times a batching feature (GSO, `sendmmsg`, `recvmmsg`) was refused and turned off.
    pub batching_fallbacks: u64,
}

impl Underlay {
    /// Opens the sockets on `addr`, receiving VXLAN on `vxlan_port` and ESP on `esp_port`.
    pub fn open(addr: IpAddr, vxlan_port: u16, esp_port: u16) -> Result<Self, UnderlayError> {
        Ok(Self::open_workers(addr, vxlan_port, esp_port, 1)?.remove(0))
    }

    /// One set of sockets per data-path worker. With more than one, the receive sockets of a port form an
    /// SO_REUSEPORT group: the kernel picks one per datagram by hashing the outer addresses and ports, and the
    /// outer source port follows the inner flow, so each flow lands on one worker. The send pool is one for all
    /// workers (concurrent sends on a UDP socket are safe), so a flow keeps its source port, and its receiving
    /// worker at the far end, even when this host's TAP hands it to another worker. Before the group is made, each
    /// port is bound once without SO_REUSEPORT, so a port another program (or another weft) holds is still refused.
    pub fn open_workers(
        addr: IpAddr,
        vxlan_port: u16,
        esp_port: u16,
        workers: usize,
    ) -> Result<Vec<Self>, UnderlayError> {
        let reuse = workers > 1;
        let bind = |port| {
            let listen = SocketAddr::new(addr, port);
            socket(listen, false, reuse).map_err(|source| UnderlayError::Bind { addr: listen, source })
        };
        if reuse {
            // The probe closes before the group binds: a taken port fails here with the usual error.
            drop((bind_exclusive(addr, vxlan_port)?, bind_exclusive(addr, esp_port)?));
        }
        let send: Arc<[UdpSocket]> = (0..SEND_POOL)
            .map(|_| socket(SocketAddr::new(addr, 0), true, false))
            .collect::<io::Result<_>>()
            .map_err(|source| UnderlayError::Socket { addr, source })?;
        (0..workers.max(1))
            .map(|_| {
                let (vxlan, esp) = (bind(vxlan_port)?, bind(esp_port)?);
                let send = send.clone();
                let batching = Batching { mmsg: true, ..Batching::default() };
                let (counters, scratch) = (SyscallCounters::default(), Box::new(SendScratch::new()));
                Ok(Self { vxlan, esp, send, vxlan_port, esp_port, batching, counters, scratch })
            })
            .collect()
    }

    /// Sends `datagram` to `vtep` on the VXLAN or the ESP port, from the pool socket `flow` selects.
    pub fn send(&self, flow: u32, vtep: IpAddr, esp: bool, datagram: &[u8]) -> io::Result<usize> {
        let port = if esp { self.esp_port } else { self.vxlan_port };
        self.send[flow as usize % self.send.len()].send_to(datagram, SocketAddr::new(vtep, port))
    }
}

fn bind_exclusive(addr: IpAddr, port: u16) -> Result<UdpSocket, UnderlayError> {
    let listen = SocketAddr::new(addr, port);
    socket(listen, false, false).map_err(|source| UnderlayError::Bind { addr: listen, source })
}

fn socket(addr: SocketAddr, blocking: bool, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Larger buffers absorb bursts of a TCP window; failing to get them is not fatal.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    // Sends block so a full socket buffer slows the TAP reader instead of dropping; receives never block the worker.
    socket.set_nonblocking(!blocking)?;
    Ok(socket.into())
}

/// Largest payload one GSO send may carry (a UDP datagram's length field limits the unsegmented whole).
const GSO_MAX_BYTES: usize = 65_000;
/// Most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;

/// Kernel batching the underlay supports, detected at start and on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batching {
    /// UDP_SEGMENT: many datagrams in one send.
    pub gso: bool,
    /// UDP_GRO: many datagrams in one receive.
    pub gro: bool,
    /// `sendmmsg` and `recvmmsg`: many messages in one call.
    pub mmsg: bool,
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = addr.into();
    // SAFETY: sockaddr_storage is plain data and large enough for any address SockAddr holds; we copy exactly
    // `len` bytes from it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = sa.len();
    // SAFETY: both pointers are valid for `len` bytes and do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        )
    };
    (storage, len)
}

impl Underlay {
    /// Turns on UDP_GRO on the receive sockets; returns what the kernel supports.
    pub fn enable_batching(&mut self) -> Batching {
        let on: libc::c_int = 1;
        let mut gro = true;
        for socket in [&self.vxlan, &self.esp] {
            // SAFETY: setsockopt reads one int from a live local.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_GRO,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            gro &= rc == 0;
        }
        self.batching = Batching { gso: true, gro, mmsg: self.batching.mmsg };
        self.batching
    }

    /// The batching in effect.
    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// Sends `datagrams`, consecutive datagrams of `segment` bytes each (the last may be shorter), to `vtep`.
    /// With GSO, one system call carries up to 64 KB of them; without, or if the kernel refuses, one call each.
    pub fn send_segments(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let to = self.destination(vtep, esp);
        let socket = &self.send[flow as usize % self.send.len()];
        let counters = &mut self.counters;
        if !self.batching.gso || datagrams.len() <= segment || segment == 0 {
            for datagram in datagrams.chunks(segment.max(1)) {
                send_to(counters, socket, datagram, to)?;
            }
            return Ok(());
        }
        let per_send = (GSO_MAX_BYTES / segment).clamp(1, GSO_MAX_SEGMENTS) * segment;
        for chunk in datagrams.chunks(per_send) {
            let piece = [IoSlice::new(chunk)];
            counters.tx_syscalls += 1;
            match send_msg(socket, to, &piece, Some(segment)) {
                Ok(()) => counters.tx_datagrams += chunk.len().div_ceil(segment) as u64,
                Err(e) if gso_refused(&e) => {
                    // The route's device cannot segment: fall back for good, after sending this chunk plainly.
                    gso_off(&mut self.batching, counters, &e);
                    for datagram in chunk.chunks(segment) {
                        send_to(counters, socket, datagram, to)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends datagrams given in two pieces each (headers, then payload, as [`overlay_proto::offload::segment_gather`]
    /// lays them out) to `vtep`, without copying them together: every datagram but the last is `segment` bytes long.
    /// With GSO one `sendmsg` carries as many as fit in 64 KB (the kernel cuts the gathered bytes at `segment`, so
    /// the pieces' boundaries do not matter to it); without, one `sendmsg` per datagram, still gathering.
    pub fn send_gathered(
        &mut self,
        flow: u32,
        vtep: IpAddr,
        esp: bool,
        datagrams: &[[IoSlice<'_>; 2]],
        segment: usize,
    ) -> io::Result<()> {
        let to = self.destination(vtep, esp);
        let socket = &self.send[flow as usize % self.send.len()];
        let counters = &mut self.counters;
        let mut rest = datagrams;
        while !rest.is_empty() {
            let per_send =
                if self.batching.gso && segment > 0 { (GSO_MAX_BYTES / segment).clamp(1, GSO_MAX_SEGMENTS) } else { 1 };
            let (chunk, after) = rest.split_at(per_send.min(rest.len()));
            rest = after;
            counters.tx_syscalls += 1;
            if chunk.len() == 1 {
                send_msg(socket, to, &chunk[0], None)?;
                counters.tx_datagrams += 1;
                continue;
            }
            match send_msg(socket, to, chunk.as_flattened(), Some(segment)) {
                Ok(()) => counters.tx_datagrams += chunk.len() as u64,
                Err(e) if gso_refused(&e) => {
                    gso_off(&mut self.batching, counters, &e);
                    for datagram in chunk {
                        counters.tx_syscalls += 1;
                        send_msg(socket, to, datagram, None)?;
                        counters.tx_datagrams += 1;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends a batch of datagrams laid out anywhere in `data`, in as few system calls as the kernel allows: per send
    /// socket one `sendmmsg` whose messages are runs of equal datagrams to one destination (one UDP GSO message
    /// each) or single datagrams, in the order [`batch::plan`] keeps (a flow's datagrams leave in the order given).
    /// Marks each datagram the kernel took as `sent` and returns how many sends failed; a failed send does not stop
    /// the others.
    pub fn send_batch(&mut self, data: &[u8], datagrams: &mut [Datagram]) -> usize {
        let gso = GsoLimits { enabled: self.batching.gso, max_segments: GSO_MAX_SEGMENTS, max_bytes: GSO_MAX_BYTES };
        let scratch = &mut self.scratch;
        batch::plan(datagrams, self.send.len(), gso, &mut scratch.order, &mut scratch.runs);
        let (mut failed, mut first) = (0, 0);
        while first < scratch.runs.len() {
            // The runs of one socket, as many as one sendmmsg takes.
            let socket = scratch.runs[first].socket;
            let (mut end, mut iovecs) = (first, 0);
            while end < scratch.runs.len()
                && scratch.runs[end].socket == socket
                && end - first < MMSG_MAX
                && iovecs + scratch.runs[end].items.len() <= MMSG_IOVECS
            {
                iovecs += scratch.runs[end].items.len();
                end += 1;
            }
            let ports = (self.vxlan_port, self.esp_port);
            let calls =
                Calls { socket: &self.send[socket], batching: &mut self.batching, counters: &mut self.counters };
            failed += scratch.send(calls, ports, first..end, data, datagrams);
            first = end;
        }
        failed
    }

    /// Receives into up to `out.len()` slots of `buf`, slot `i` being `buf[i * stride..][..len]`, from the ESP
    /// socket or the VXLAN one: with `recvmmsg`, everything queued up to that many messages in one call (each
    /// message one datagram, or with UDP GRO one sender's datagrams back to back). Returns how many slots were
    /// filled, at least one, or `WouldBlock`.
    ///
    /// # Panics
    /// If a slot lies outside `buf`.
    pub fn recv_batch(
        &mut self,
        esp: bool,
        buf: &mut [u8],
        stride: usize,
        len: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        let socket = if esp { &self.esp } else { &self.vxlan };
        let n = out.len().min(RECV_MAX);
        assert!(n == 0 || (n - 1) * stride + len <= buf.len(), "receive slots outside the buffer");
        if n == 0 {
            return Ok(0);
        }
        self.counters.rx_syscalls += 1;
        if n == 1 || !self.batching.mmsg {
            let (got, from, segment) = recv_segments(socket, &mut buf[..len])?;
            self.counters.rx_datagrams += got.div_ceil(segment).max(1) as u64;
            out[0] = Received { len: got, from, segment, esp };
            return Ok(1);
        }
        // SAFETY: these are plain C structs for which all-zero bytes are a valid value.
        let (mut headers, mut addrs, mut iovecs): (
            [libc::mmsghdr; RECV_MAX],
            [libc::sockaddr_storage; RECV_MAX],
            [libc::iovec; RECV_MAX],
        ) = unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        let mut controls = [[0u64; 8]; RECV_MAX];
        let base = buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot `i` lies within `buf` (asserted above), which stays mutably borrowed until we return.
            iovecs[i] = libc::iovec { iov_base: unsafe { base.add(i * stride) }.cast(), iov_len: len };
            let msg = &mut headers[i].msg_hdr;
            msg.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iovecs[i];
            msg.msg_iovlen = 1;
            msg.msg_control = controls[i].as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&controls[i]);
        }
        // SAFETY: `headers[..n]` describe live, writable buffers (the slots, addresses and control blocks above)
        // for the duration of the call; a null timeout is allowed.
        let got =
            unsafe { libc::recvmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), n as u32, 0, std::ptr::null_mut()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if !mmsg_refused(&e) {
                return Err(e);
            }
            warn!("recvmmsg is refused ({e}): receiving one message per call from now on");
            (self.batching.mmsg, self.counters.batching_fallbacks) = (false, self.counters.batching_fallbacks + 1);
            return self.recv_batch(esp, buf, stride, len, &mut out[..1]);
        }
        for (i, slot) in out.iter_mut().enumerate().take(got as usize) {
            let got = headers[i].msg_len as usize;
            let segment = gro_segment(&headers[i].msg_hdr, got);
            // A sender that is not IP cannot happen on these sockets; should it, the forwarder drops it as a stranger.
            let from = socket_addr(&addrs[i]).unwrap_or(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
            self.counters.rx_datagrams += got.div_ceil(segment).max(1) as u64;
            *slot = Received { len: got, from, segment, esp };
        }
        Ok(got as usize)
    }

    /// The system calls made so far and what they carried.
    pub fn counters(&self) -> SyscallCounters {
        self.counters
    }

    /// Where a datagram to `vtep` goes: its VXLAN or ESP port.
    fn destination(&self, vtep: IpAddr, esp: bool) -> SocketAddr {
        SocketAddr::new(vtep, if esp { self.esp_port } else { self.vxlan_port })
    }
}

/// Most messages one `sendmmsg` carries (the kernel takes up to UIO_MAXIOV, 1024).
const MMSG_MAX: usize = 64;
/// Most datagrams, so iovecs, in one `sendmmsg` (each message a run of at most [`GSO_MAX_SEGMENTS`]).
const MMSG_IOVECS: usize = 256;
/// Most messages one `recvmmsg` fills.
pub const RECV_MAX: usize = 16;

/// What one socket's sends change: the socket, the batching that may be turned off, the counters.
struct Calls<'a> {
    socket: &'a UdpSocket,
    batching: &'a mut Batching,
    counters: &'a mut SyscallCounters,
}

/// The arrays one `sendmmsg` is built in, allocated once per worker: messages, their iovecs (a datagram each),
/// destinations and GSO control blocks, and the plan of the batch.
struct SendScratch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 4]>,
    order: Vec<usize>,
    runs: Vec<Run>,
}

// SAFETY: the raw pointers in `headers` and `iovecs` are written at the start of each `SendScratch::send` and used
// only during that call, while the buffers they point at are borrowed; between calls they are never read.
unsafe impl Send for SendScratch {}

impl std::fmt::Debug for SendScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendScratch").field("messages", &self.headers.len()).finish_non_exhaustive()
    }
}

impl SendScratch {
    fn new() -> Self {
        // SAFETY: plain C structs for which all-zero bytes are a valid value.
        let (header, addr, iovec) = unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        Self {
            headers: vec![header; MMSG_MAX],
            iovecs: vec![iovec; MMSG_IOVECS],
            addrs: vec![addr; MMSG_MAX],
            controls: vec![[0; 4]; MMSG_MAX],
            order: Vec::with_capacity(MMSG_IOVECS),
            runs: Vec::with_capacity(MMSG_IOVECS),
        }
    }

    /// Sends `self.runs[runs]`, all on `calls.socket`, with one `sendmmsg` continued after a partial send, or one
    /// `sendmsg` per message once `sendmmsg` was refused. Returns the failed sends.
    fn send(
        &mut self,
        calls: Calls<'_>,
        (vxlan_port, esp_port): (u16, u16),
        runs: Range<usize>,
        data: &[u8],
        datagrams: &mut [Datagram],
    ) -> usize {
        let Calls { socket, batching, counters } = calls;
        let runs = &self.runs[runs];
        let mut iovecs = 0;
        for (k, run) in runs.iter().enumerate() {
            let items = &self.order[run.items.clone()];
            for (iovec, &i) in self.iovecs[iovecs..].iter_mut().zip(items) {
                let bytes = &data[datagrams[i].bytes.clone()];
                *iovec = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
            }
            let first = &datagrams[items[0]];
            let to = SocketAddr::new(first.vtep, if first.esp { esp_port } else { vxlan_port });
            let addr_len;
            (self.addrs[k], addr_len) = sockaddr(to);
            // SAFETY: msghdr is plain data; every pointer set below points into this scratch or `data`, which stay
            // alive and unmoved until this call returns.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut self.addrs[k] as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = addr_len;
            msg.msg_iov = self.iovecs[iovecs..].as_mut_ptr();
            msg.msg_iovlen = items.len();
            if items.len() > 1 {
                set_segment(&mut msg, &mut self.controls[k], run.segment);
            }
            self.headers[k] = libc::mmsghdr { msg_hdr: msg, msg_len: 0 };
            iovecs += items.len();
        }
        let mut failed = 0;
        let mut done = 0;
        while done < runs.len() {
            let k = done;
            let mut error = None;
            if batching.mmsg && runs.len() - k > 1 {
                counters.tx_syscalls += 1;
                // SAFETY: `headers[k..runs.len()]` were filled above and point at live buffers.
                let sent = unsafe {
                    libc::sendmmsg(socket.as_raw_fd(), self.headers[k..].as_mut_ptr(), (runs.len() - k) as u32, 0)
                };
                if sent > 0 {
                    for run in &runs[k..k + sent as usize] {
                        counters.tx_datagrams += run.items.len() as u64;
                        self.order[run.items.clone()].iter().for_each(|&i| datagrams[i].sent = true);
                    }
                    // A partial send: the kernel stopped at a message it will report on the next call.
                    done += sent as usize;
                    continue;
                }
                error = Some(io::Error::last_os_error());
            }
            // One message alone: the last one, after sendmmsg failed on it, or without sendmmsg.
            let run = &runs[k];
            let items = &self.order[run.items.clone()];
            counters.tx_syscalls += 1;
            // SAFETY: `headers[k]` was filled above and points at live buffers.
            let outcome = unsafe { libc::sendmsg(socket.as_raw_fd(), &self.headers[k].msg_hdr, 0) };
            let outcome = if outcome < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
            if let (Ok(()), Some(e)) = (&outcome, &error) {
                if mmsg_refused(e) {
                    // sendmmsg failed where sendmsg of the same message works: the call itself is refused.
                    warn!("sendmmsg is refused ({e}): one sendmsg per message from now on");
                    batching.mmsg = false;
                    counters.batching_fallbacks += 1;
                }
            }
            match outcome {
                Ok(()) => {
                    counters.tx_datagrams += items.len() as u64;
                    items.iter().for_each(|&i| datagrams[i].sent = true);
                }
                Err(e) if items.len() > 1 && gso_refused(&e) => {
                    gso_off(batching, counters, &e);
                    for &i in items {
                        let d = &mut datagrams[i];
                        let to = SocketAddr::new(d.vtep, if d.esp { esp_port } else { vxlan_port });
                        d.sent = send_to(counters, socket, &data[d.bytes.clone()], to).is_ok();
                        failed += usize::from(!d.sent);
                    }
                }
                Err(_) => failed += 1,
            }
            done += 1;
        }
        failed
    }
}

/// One `sendto`, counted.
fn send_to(counters: &mut SyscallCounters, socket: &UdpSocket, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
    counters.tx_syscalls += 1;
    socket.send_to(datagram, to)?;
    counters.tx_datagrams += 1;
    Ok(())
}

/// Turns GSO off for good after the kernel refused it with `e`.
fn gso_off(batching: &mut Batching, counters: &mut SyscallCounters, e: &io::Error) {
    if batching.gso {
        warn!("UDP GSO is refused ({e}): one datagram per send from now on");
        batching.gso = false;
        counters.batching_fallbacks += 1;
    }
}

/// Whether a GSO send failed because the route's device or the kernel cannot segment (EIO, EINVAL), so plain sends
/// should be used from now on.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Whether `sendmmsg` or `recvmmsg` failed because the kernel does not offer it (ENOSYS) or rejects the call
/// (EINVAL), so one message per call should be used from now on.
fn mmsg_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL))
}

/// Puts a UDP_SEGMENT control message of `segment` into `msg`, in `control`.
fn set_segment(msg: &mut libc::msghdr, control: &mut [u64; 4], segment: usize) {
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    // SAFETY: msg_control points at `control`, which is at least CMSG_SPACE(2) bytes and suitably aligned, so the
    // first header and its data lie within it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
    }
}

/// One `sendmsg` of the bytes in `pieces` gathered, to `to`; with `segment`, as UDP GSO datagrams of that size.
fn send_msg(socket: &UdpSocket, to: SocketAddr, pieces: &[IoSlice<'_>], segment: Option<usize>) -> io::Result<()> {
    let (mut addr, addr_len) = sockaddr(to);
    // Room for one cmsg carrying a u16, aligned as the kernel expects.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below stays valid until sendmsg returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr_len;
    // IoSlice is guaranteed ABI-compatible with struct iovec on Unix; the kernel only reads through it.
    msg.msg_iov = pieces.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = pieces.len();
    if let Some(segment) = segment {
        set_segment(&mut msg, &mut control, segment);
    }
    // SAFETY: `msg` describes live buffers for the duration of the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one datagram, or with GRO several coalesced ones of the same source: returns the length, the sender,
/// and the segment size (equal to the length when the kernel did not coalesce).
pub fn recv_segments(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    // SAFETY: sockaddr_storage and msghdr are plain data; the pointers below stay valid until recvmsg returns.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 8];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` describes live, writable buffers for the duration of the call.
    let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = len as usize;
    let segment = gro_segment(&msg, len);
    let from = socket_addr(&addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address"))?;
    Ok((len, from, segment))
}

/// The GRO segment size the kernel reported in a received message of `len` bytes (`len` when it did not coalesce),
/// at least 1.
fn gro_segment(msg: &libc::msghdr, len: usize) -> usize {
    let mut segment = len;
    // SAFETY: the kernel filled the control buffer up to msg_controllen; the CMSG macros walk only within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                segment = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) as usize;
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    segment.clamp(1, len.max(1))
}

/// The IP address and port in a `sockaddr_storage` the kernel filled.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and aligned enough for.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use super::{Batching, Datagram, Received, Underlay, RECV_MAX};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// An underlay on loopback whose sends go to its own VXLAN socket.
    fn looped(batching: Batching) -> Underlay {
        let mut underlay = Underlay::open(LOCAL, 0, 0).expect("loopback sockets");
        underlay.enable_batching();
        underlay.batching = Batching { gro: underlay.batching.gro, ..batching };
        underlay.vxlan_port = underlay.vxlan.local_addr().expect("bound").port();
        underlay
    }

    /// Receives until `count` datagrams arrived (GRO batches split), or a second passed.
    fn receive(underlay: &mut Underlay, count: usize) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; RECV_MAX * 65_536];
        let mut out = [Received::EMPTY; RECV_MAX];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        while got.len() < count && Instant::now() < deadline {
            let Ok(filled) = underlay.recv_batch(false, &mut buf, 65_536, 65_536, &mut out) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            for (i, r) in out[..filled].iter().enumerate() {
                let message = &buf[i * 65_536..i * 65_536 + r.len];
                got.extend(message.chunks(r.segment).map(<[u8]>::to_vec));
            }
        }
        got
    }

    /// Two flows (two send sockets) of equal-size datagrams with a shorter one: whatever the batching, every
    /// datagram arrives and each flow's arrive in order; with batching, in fewer calls than datagrams.
    #[test]
    fn a_batch_arrives_whole_and_in_flow_order_with_and_without_batching() {
        let all = Batching { gso: true, gro: true, mmsg: true };
        let none = Batching { gso: false, gro: true, mmsg: false };
        for batching in [all, none] {
            let mut underlay = looped(batching);
            // Datagram i starts with its flow and its index, and is 100 bytes long but for two shorter ones.
            let (mut data, mut batch) = (Vec::new(), Vec::new());
            for i in 0..12u8 {
                let flow = u32::from(i % 3 == 0);
                let len = if i == 7 || i == 9 { 40 } else { 100 };
                let start = data.len();
                data.extend([flow as u8, i].iter().chain(&[0xa5; 98][..len - 2]));
                batch.push(Datagram { flow, vtep: LOCAL, esp: false, bytes: start..data.len(), sent: false });
            }
            assert_eq!(underlay.send_batch(&data, &mut batch), 0, "{batching:?}");
            assert!(batch.iter().all(|d| d.sent));
            let got = receive(&mut underlay, batch.len());
            assert_eq!(got.len(), batch.len(), "{batching:?}");
            for flow in 0..2u8 {
                let sent: Vec<_> = batch.iter().map(|d| &data[d.bytes.clone()]).filter(|d| d[0] == flow).collect();
                let received: Vec<_> = got.iter().filter(|d| d[0] == flow).map(Vec::as_slice).collect();
                assert_eq!(received, sent, "flow {flow}, {batching:?}");
            }
            let counters = underlay.counters();
            assert_eq!((counters.tx_datagrams, counters.batching_fallbacks), (12, 0));
            if batching.mmsg {
                assert!(counters.tx_syscalls < 12, "{counters:?}");
            } else {
                assert_eq!(counters.tx_syscalls, 12);
            }
        }
    }
}
