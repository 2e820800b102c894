//! Counting what quinn drops silently: the control plane's UDP socket, wrapped so that every received datagram is
//! judged ([`overlay_proto::wire::quic::classify`]) before quinn sees it, and those quinn will not use are counted
//! by reason ([`QuicDrop`]). The datagrams themselves go to quinn unchanged: this only counts, it never filters, so
//! the transport's security is quinn's and rustls' alone.
//!
//! ```text
//!   UDP socket ─► GarbageCountingSocket::poll_recv ─► quinn::Endpoint
//!                        │ each datagram (GRO segments too)
//!                        ▼
//!                 classify(bytes, our CID length, our CID check)
//!                   ├─ Local ─────────────► not counted (a connection's, or once was)
//!                   ├─ NewInitial ────────► Initial keys from its DCID: header protection, reserved bits, AEAD
//!                   │                        └─ fails ─► initial_unauthenticated
//!                   └─ Err(reason) ───────► counted by reason
//! ```
//!
//! Two pieces of the endpoint are shared with this socket so the verdicts match quinn's exactly:
//! - the connection id generator: quinn's `HashedConnectionIdGenerator` with a key we choose, so a received
//!   connection id can be checked for being one of ours without knowing the connection table;
//! - the server's QUIC-TLS configuration, which derives the Initial keys (RFC 9001 §5.2).
//!
//! The endpoint is configured not to grease the fixed bit (RFC 9287), so a packet with it clear is not QUIC.
//! Stateless resets (RFC 9000 §10.3) from a restarted peer look like short headers for an unknown connection and
//! count as `unknown_connection`: by design they cannot be told from garbage before quinn matches their token.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use overlay_proto::wire::quic::{self, Incoming, InitialPacket, QuicDrop};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use quinn_proto::HashedConnectionIdGenerator;

/// The reserved bits of a long header, after header protection is removed (RFC 9000 §17.2): must be 0.
const LONG_RESERVED_BITS: u8 = 0x0c;
/// The packet number length bits (RFC 9000 §17.2), plus one.
const PN_LEN_BITS: u8 = 0x03;

/// Datagrams quinn will not use, by [`QuicDrop`] reason.
#[derive(Debug, Default)]
pub struct QuicDropStats {
    counts: [AtomicU64; QuicDrop::ALL.len()],
}

impl QuicDropStats {
    fn bump(&self, reason: QuicDrop) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> QuicDropSnapshot {
        QuicDropSnapshot { counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)) }
    }
}

/// A copy of [`QuicDropStats`]; serialized as an object keyed by [`QuicDrop::as_str`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicDropSnapshot {
    counts: [u64; QuicDrop::ALL.len()],
}

impl QuicDropSnapshot {
    /// The count of one reason.
    pub fn get(&self, reason: QuicDrop) -> u64 {
        self.counts[reason.index()]
    }

    /// Every reason with its count, zero or not.
    pub fn iter(&self) -> impl Iterator<Item = (QuicDrop, u64)> + '_ {
        QuicDrop::ALL.iter().map(|&r| (r, self.get(r)))
    }
}

impl serde::Serialize for QuicDropSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(r, n)| (r.as_str(), n)))
    }
}

/// What the socket needs to judge datagrams the way the endpoint will.
pub struct Judge {
    cids: HashedConnectionIdGenerator,
    crypto: Arc<dyn quinn::crypto::ServerConfig>,
    stats: Arc<QuicDropStats>,
}

impl Judge {
    /// `cid_key` must be the key of the endpoint's `HashedConnectionIdGenerator`, `crypto` its server crypto.
    pub fn new(cid_key: u64, crypto: Arc<dyn quinn::crypto::ServerConfig>, stats: Arc<QuicDropStats>) -> Judge {
        Judge { cids: HashedConnectionIdGenerator::from_key(cid_key), crypto, stats }
    }

    /// Counts `datagram` if the endpoint will drop it; `None` if it will not.
    pub fn judge(&self, datagram: &[u8]) -> Option<QuicDrop> {
        // Ours are exactly `cid_len` bytes; and `validate` must not see another length (it splits the id at 3 bytes
        // and would panic on a shorter one, which a long header may carry).
        let cid_len = self.cids.cid_len();
        let is_local = |cid: &[u8]| cid.len() == cid_len && self.cids.validate(&ConnectionId::new(cid)).is_ok();
        let verdict = match quic::classify(datagram, cid_len, is_local) {
            Ok(Incoming::Local) => None,
            Ok(Incoming::NewInitial(initial)) => {
                (!self.initial_authenticates(datagram, &initial)).then_some(QuicDrop::InitialUnauthenticated)
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = verdict {
            self.stats.bump(reason);
        }
        verdict
    }

    /// Whether a client's Initial opens under the Initial keys of its destination connection id, as quinn's
    /// `handle_first_packet` and `accept` will check it (RFC 9001 §5.2, §5.4).
    fn initial_authenticates(&self, datagram: &[u8], initial: &InitialPacket<'_>) -> bool {
        let Ok(keys) = self.crypto.initial_keys(quic::VERSION_1, &ConnectionId::new(initial.dst_cid)) else {
            return false;
        };
        let mut packet = BytesMut::from(&datagram[..initial.packet_len]);
        keys.header.remote.decrypt(initial.pn_offset, &mut packet);
        let first = packet[0];
        if first & LONG_RESERVED_BITS != 0 {
            return false;
        }
        let header_len = initial.pn_offset + usize::from(first & PN_LEN_BITS) + 1;
        // The first packet number is expanded against 0 (RFC 9000 §A.3): its truncated value.
        let number = packet[initial.pn_offset..header_len].iter().fold(0u64, |n, &b| n << 8 | u64::from(b));
        let mut payload = packet.split_off(header_len);
        keys.packet.remote.decrypt(number, &packet, &mut payload).is_ok()
    }
}

impl fmt::Debug for Judge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Judge").field("cid_len", &self.cids.cid_len()).finish_non_exhaustive()
    }
}

/// The endpoint's UDP socket, judging every datagram it receives.
pub struct GarbageCountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    judge: Judge,
}

impl GarbageCountingSocket {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, judge: Judge) -> GarbageCountingSocket {
        GarbageCountingSocket { inner, judge }
    }
}

impl fmt::Debug for GarbageCountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GarbageCountingSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for GarbageCountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = received {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(n) {
                // With GRO one buffer holds several datagrams of `stride` bytes (the last may be shorter); quinn
                // splits them the same way. An empty datagram has a stride of 0.
                let data = &buf[..meta.len];
                if data.is_empty() || meta.stride == 0 {
                    self.judge.judge(data);
                } else {
                    for datagram in data.chunks(meta.stride) {
                        self.judge.judge(datagram);
                    }
                }
            }
        }
        received
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
