//! The underlay sockets.
//!
//! One socket bound to `underlay:vxlan_port` receives plaintext VXLAN, another on `underlay:esp_port` receives
//! ESP-in-UDP. Sending goes through a small pool of sockets
//! bound to ephemeral ports on the same address: the inner flow hash picks the socket, and so the outer UDP source
//! port (RFC 7348 §5), which gives ECMP and RSS on the underlay per-flow entropy without raw sockets, while every
//! packet of one flow leaves from one port in order.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

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
    send: Vec<UdpSocket>,
    vxlan_port: u16,
    esp_port: u16,
}

impl Underlay {
    /// Opens the sockets on `addr`, receiving VXLAN on `vxlan_port` and ESP on `esp_port`.
    pub fn open(addr: IpAddr, vxlan_port: u16, esp_port: u16) -> Result<Self, UnderlayError> {
        let bind = |port| {
            let listen = SocketAddr::new(addr, port);
            socket(listen, false).map_err(|source| UnderlayError::Bind { addr: listen, source })
        };
        let (vxlan, esp) = (bind(vxlan_port)?, bind(esp_port)?);
        let send = (0..SEND_POOL)
            .map(|_| socket(SocketAddr::new(addr, 0), true))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| UnderlayError::Socket { addr, source })?;
        Ok(Self { vxlan, esp, send, vxlan_port, esp_port })
    }

    /// Sends `datagram` to `vtep` on the VXLAN or the ESP port, from the pool socket `flow` selects.
    pub fn send(&self, flow: u32, vtep: IpAddr, esp: bool, datagram: &[u8]) -> io::Result<usize> {
        let port = if esp { self.esp_port } else { self.vxlan_port };
        self.send[flow as usize % self.send.len()].send_to(datagram, SocketAddr::new(vtep, port))
    }
}

fn socket(addr: SocketAddr, blocking: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Larger buffers absorb bursts of a TCP window; failing to get them is not fatal.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    // Sends block so a full socket buffer slows the TAP reader instead of dropping; receives never block the worker.
    socket.set_nonblocking(!blocking)?;
    Ok(socket.into())
}
