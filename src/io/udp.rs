//! The underlay sockets.
//!
//! One socket bound to `underlay:vxlan_port` receives plaintext VXLAN, another on `underlay:esp_port` receives
//! ESP-in-UDP. Sending goes through a small pool of sockets
//! bound to ephemeral ports on the same address: the inner flow hash picks the socket, and so the outer UDP source
//! port (RFC 7348 §5), which gives ECMP and RSS on the underlay per-flow entropy without raw sockets, while every
//! packet of one flow leaves from one port in order.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for; the kernel caps it at net.core.{r,w}mem_max unless we are privileged.
const SOCKET_BUFFER: usize = 4 << 20;

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
                Ok(Self { vxlan, esp, send, vxlan_port, esp_port, batching: Batching::default() })
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
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
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
        self.batching = Batching { gso: true, gro };
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
        if !self.batching.gso || datagrams.len() <= segment || segment == 0 {
            for datagram in datagrams.chunks(segment.max(1)) {
                socket.send_to(datagram, to)?;
            }
            return Ok(());
        }
        let per_send = (GSO_MAX_BYTES / segment).clamp(1, GSO_MAX_SEGMENTS) * segment;
        for chunk in datagrams.chunks(per_send) {
            let piece = [IoSlice::new(chunk)];
            if let Err(e) = send_msg(socket, to, &piece, Some(segment)) {
                if !gso_refused(&e) {
                    return Err(e);
                }
                // The route's device cannot segment: fall back for good, after sending this chunk plainly.
                self.batching.gso = false;
                for datagram in chunk.chunks(segment) {
                    socket.send_to(datagram, to)?;
                }
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
        let mut rest = datagrams;
        while !rest.is_empty() {
            let per_send =
                if self.batching.gso && segment > 0 { (GSO_MAX_BYTES / segment).clamp(1, GSO_MAX_SEGMENTS) } else { 1 };
            let (chunk, after) = rest.split_at(per_send.min(rest.len()));
            rest = after;
            if chunk.len() == 1 {
                send_msg(socket, to, &chunk[0], None)?;
                continue;
            }
            if let Err(e) = send_msg(socket, to, chunk.as_flattened(), Some(segment)) {
                if !gso_refused(&e) {
                    return Err(e);
                }
                self.batching.gso = false;
                for datagram in chunk {
                    send_msg(socket, to, datagram, None)?;
                }
            }
        }
        Ok(())
    }

    /// Where a datagram to `vtep` goes: its VXLAN or ESP port.
    fn destination(&self, vtep: IpAddr, esp: bool) -> SocketAddr {
        SocketAddr::new(vtep, if esp { self.esp_port } else { self.vxlan_port })
    }
}

/// Whether a GSO send failed because the route's device or the kernel cannot segment (EIO, EINVAL), so plain sends
/// should be used from now on.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
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
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: msg_control points at `control`, which is at least CMSG_SPACE(2) bytes and suitably aligned, so
        // the first header and its data lie within it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
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
    let mut segment = len;
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG macros walk only within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                segment = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) as usize;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let from = socket_addr(&addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address"))?;
    Ok((len, from, segment.clamp(1, len.max(1))))
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
