//! The control plane's transport: QUIC (quinn) with mutual TLS 1.3 (rustls, ring provider) between nodes of one
//! cluster CA.
//!
//! ```text
//!   send_datagram(addr, bytes) ─► per-address queue ─► link task ─┐  connect on demand, one connection per
//!   send_message(addr, bytes)  ─► per-address queue ─► link task ─┤  remote address (ours or the peer's)
//!                                                                  ▼
//!                       quinn::Endpoint (one UDP socket, client and server, ALPN "weft/1")
//!                                                                  │
//!   Receiver<TransportEvent> ◄── reader task per connection ◄──────┘  Datagram / Message tagged with the NodeId
//!                                                                      derived from the peer's certificate
//! ```
//!
//! - **Who is at the other end.** Both sides present a node certificate and accept only certificates that chain
//!   to the cluster CA. The peer's [`NodeId`] is then derived from its certificate ([`node_id_of`]); every event
//!   carries it, so gossip can reject a claim that does not match its sender. If the caller said which node it
//!   expects at an address ([`Transport::expect`]) and another answers, the connection is closed and reported as
//!   [`TransportEvent::Refused`].
//! - **Server name.** Node certificates name the node (CN and DNS SAN), but a node dials an address and does not
//!   know the name in advance. The client therefore verifies the server's chain to the CA exactly as rustls' own
//!   verifier does, minus the host name check (`ClusterServerVerifier`); the identity check is the NodeId. The
//!   SNI sent is the fixed, meaningless name `weft`.
//! - **Datagrams** are QUIC datagrams (RFC 9221): unreliable, for probes. One that does not fit, or that finds its
//!   queue full or its peer unreachable, is dropped and counted.
//! - **Messages** use one unidirectional stream each, their length given by the end of the stream, up to
//!   [`MAX_MESSAGE_LEN`].
//! - **Connections.** Connections are kept by remote address, outgoing and incoming alike: since a node's one UDP
//!   socket both listens and dials, the address a peer connects from is its listen address, and replies reuse
//!   that connection. Two nodes that dial each other at the same moment may keep two connections; both work.
//!   Behind NAT the source address differs from the listen address, and a second connection is made.
//!
//! Not here: what is sent (gossip in overlay-proto), retries of lost messages (gossip's anti-entropy repairs them).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use overlay_proto::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, VarInt};
use quinn_proto::HashedConnectionIdGenerator;
use ring::rand::SystemRandom;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, trace};

use super::garbage::{GarbageCountingSocket, Judge, QuicDropSnapshot, QuicDropStats};
use super::pki::{node_id_of, NodeIdentity};
use crate::clock;

/// The ALPN protocol id of weft's control plane.
pub const ALPN: &[u8] = b"weft/1";
/// The largest message [`Transport::send_message`] carries.
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// The SNI sent when dialing. Not checked by the peer, nor by us (see the module docs).
const SERVER_NAME: &str = "weft";

/// Datagrams waiting for one address; beyond this the newest is dropped.
const DATAGRAM_QUEUE: usize = 64;
/// Messages waiting for one address; beyond this the newest is dropped.
const MESSAGE_QUEUE: usize = 256;
/// Messages written to one address at the same time.
const MESSAGES_IN_FLIGHT: usize = 8;
/// Events waiting for the caller. Datagrams are dropped when it is full; messages wait (QUIC flow control then
/// slows the sender).
const EVENT_QUEUE: usize = 1024;
/// Streams a peer may have open towards us, and messages from one connection waiting for the caller; with
/// [`MAX_MESSAGE_LEN`] this bounds what one connection can make us hold.
const MAX_INCOMING_STREAMS: u32 = 16;
/// Connection-wide receive window: at most this much unread data per connection.
const RECEIVE_WINDOW: u32 = 16 << 20;
/// After a failed connection attempt, items for that address are dropped for this long instead of redialing.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A link (queues and tasks for one address) with nothing to send for this long is retired.
const LINK_IDLE: Duration = Duration::from_secs(120);
/// `Refused` is reported at most once per address in this interval.
const REFUSED_INTERVAL: Duration = Duration::from_secs(60);
/// Bound on the addresses remembered for rate-limiting `Refused`.
const REFUSED_MEMORY: usize = 4096;

/// Application close code: the transport is shutting down.
const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the certificate was valid, but not the node expected at this address.
const CLOSE_WRONG_NODE: u32 = 1;
/// Stream stop code: the message is larger than [`MAX_MESSAGE_LEN`].
const STOP_TOO_LONG: u32 = 1;

/// How to run a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The UDP address to listen on and dial from.
    pub listen: SocketAddr,
    /// This node's certificate and key, and the cluster CA.
    pub identity: Arc<NodeIdentity>,
    /// A connection (or handshake) with no packets for this long is closed.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without traffic; must be shorter than `idle_timeout`.
    pub keep_alive: Duration,
}

impl TransportConfig {
    /// Defaults: a 10 s idle timeout with keep-alives every 2 s, so a dead peer's connection goes within seconds.
    pub fn new(listen: SocketAddr, identity: Arc<NodeIdentity>) -> TransportConfig {
        TransportConfig { listen, identity, idle_timeout: Duration::from_secs(10), keep_alive: Duration::from_secs(2) }
    }

    /// Checks the timeouts.
    pub fn validate(&self) -> Result<(), TransportError> {
        if self.idle_timeout.is_zero() || quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return Err(TransportError::Config { reason: "idle_timeout must be between 1 ms and 2^62 ms" });
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(TransportError::Config { reason: "keep_alive must be non-zero and shorter than idle_timeout" });
        }
        Ok(())
    }
}

/// Errors starting a [`Transport`]. Once running, failures are events and counters, not errors.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is inconsistent.
    #[error("transport configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
    },
    /// rustls refused the identity (for example a key type it cannot use for TLS 1.3).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the CA.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The operating system gave no randomness for the connection id key.
    #[error("no system randomness for the QUIC connection id key")]
    Random,
    /// `bind` was called outside a tokio runtime.
    #[error("Transport::bind must be called inside a tokio runtime")]
    NoRuntime,
    /// The UDP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
}

/// What the transport tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A QUIC datagram from an authenticated peer.
    Datagram {
        /// The sender, from its certificate.
        from: NodeId,
        /// The sender's address.
        addr: SocketAddr,
        /// The payload.
        data: Bytes,
    },
    /// A complete message (one stream) from an authenticated peer.
    Message {
        /// The sender, from its certificate.
        from: NodeId,
        /// The sender's address.
        addr: SocketAddr,
        /// The payload.
        data: Bytes,
    },
    /// A connection to or from `addr` failed authentication: a certificate from another CA, an expired one, an
    /// unexpected node, a protocol mismatch. Reported at most once per address per minute; every refusal counts in
    /// [`TransportStats::handshakes_refused`].
    Refused {
        /// The peer's address.
        addr: SocketAddr,
        /// Why, for the log.
        reason: String,
    },
    /// A connection with node `id` at `addr` was established (one event per connection).
    PeerUp {
        /// The peer.
        id: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// A connection with node `id` at `addr` closed (one event per connection).
    PeerDown {
        /// The peer.
        id: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
}

/// Counters; read them with [`TransportStats::snapshot`].
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Connections authenticated (both directions).
    pub handshakes_ok: AtomicU64,
    /// Connections refused: TLS authentication failed either way, or an unexpected node answered.
    pub handshakes_refused: AtomicU64,
    /// Outgoing connections that failed for other reasons (timeout, unreachable).
    pub connect_failures: AtomicU64,
    /// Datagrams handed to QUIC.
    pub datagrams_sent: AtomicU64,
    /// Datagrams received from authenticated peers.
    pub datagrams_received: AtomicU64,
    /// Messages whose stream was written and finished.
    pub messages_sent: AtomicU64,
    /// Messages received complete.
    pub messages_received: AtomicU64,
    /// Payload bytes sent (datagrams and messages).
    pub bytes_sent: AtomicU64,
    /// Payload bytes received (datagrams and messages).
    pub bytes_received: AtomicU64,
    /// Datagrams dropped: too large, queue full, peer unreachable, event queue full.
    pub datagrams_dropped: AtomicU64,
    /// Messages dropped: too large, queue full, peer unreachable, stream failed.
    pub messages_dropped: AtomicU64,
    /// Received datagrams quinn will not use (garbage to the QUIC port), by reason; counted by the socket.
    pub quic_drops: Arc<QuicDropStats>,
}

/// A copy of [`TransportStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransportStatsSnapshot {
    /// See [`TransportStats::handshakes_ok`].
    pub handshakes_ok: u64,
    /// See [`TransportStats::handshakes_refused`].
    pub handshakes_refused: u64,
    /// See [`TransportStats::connect_failures`].
    pub connect_failures: u64,
    /// See [`TransportStats::datagrams_sent`].
    pub datagrams_sent: u64,
    /// See [`TransportStats::datagrams_received`].
    pub datagrams_received: u64,
    /// See [`TransportStats::messages_sent`].
    pub messages_sent: u64,
    /// See [`TransportStats::messages_received`].
    pub messages_received: u64,
    /// See [`TransportStats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`TransportStats::bytes_received`].
    pub bytes_received: u64,
    /// See [`TransportStats::datagrams_dropped`].
    pub datagrams_dropped: u64,
    /// See [`TransportStats::messages_dropped`].
    pub messages_dropped: u64,
    /// See [`TransportStats::quic_drops`].
    pub quic_drops: QuicDropSnapshot,
}

impl TransportStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> TransportStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStatsSnapshot {
            handshakes_ok: get(&self.handshakes_ok),
            handshakes_refused: get(&self.handshakes_refused),
            connect_failures: get(&self.connect_failures),
            datagrams_sent: get(&self.datagrams_sent),
            datagrams_received: get(&self.datagrams_received),
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            datagrams_dropped: get(&self.datagrams_dropped),
            messages_dropped: get(&self.messages_dropped),
            quic_drops: self.quic_drops.snapshot(),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// A handle to the running transport. Clones share it; it closes when the last handle is dropped or on
/// [`close`](Self::close). Its methods never block, but must be called inside the tokio runtime that bound it
/// (they may start tasks).
#[derive(Clone)]
pub struct Transport {
    guard: Arc<CloseOnDrop>,
}

/// Held by the handles only (the tasks hold `Inner`), so dropping the last handle stops the tasks.
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.guard.0;
        f.debug_struct("Transport")
            .field("local_id", &format_args!("{}", inner.local_id))
            .field("local_addr", &inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the UDP socket and starts accepting connections. Must be called inside a tokio runtime. Events arrive
    /// on the returned receiver; if it is dropped, incoming traffic is discarded.
    pub fn bind(config: TransportConfig) -> Result<(Transport, mpsc::Receiver<TransportEvent>), TransportError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::NoRuntime);
        }
        let identity = &config.identity;
        let (server_tls, client_tls) = tls_configs(identity)?;
        let transport = Arc::new(quic_transport_config(&config)?);

        let server_crypto = Arc::new(QuicServerConfig::try_from(server_tls)?);
        let mut server = quinn::ServerConfig::with_crypto(server_crypto.clone());
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
        client.transport_config(transport);

        // The socket judges each datagram the way the endpoint will (garbage.rs), so both share the connection id
        // key; and the fixed bit is not greased, so a datagram with it clear is garbage, not a peer's grease.
        let cid_key = u64::from_ne_bytes(
            ring::rand::generate(&SystemRandom::new()).map_err(|_| TransportError::Random)?.expose(),
        );
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)))
            .grease_quic_bit(false);
        let stats = TransportStats::default();
        let bind_error = |source| TransportError::Bind { addr: config.listen, source };
        let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
        let socket = runtime
            .wrap_udp_socket(std::net::UdpSocket::bind(config.listen).map_err(bind_error)?)
            .map_err(bind_error)?;
        let judge = Judge::new(cid_key, server_crypto, stats.quic_drops.clone());
        let socket = Arc::new(GarbageCountingSocket::new(socket, judge));
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime)
            .map_err(bind_error)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr().map_err(bind_error)?;

        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(Inner {
            endpoint,
            local_id: identity.id(),
            local_addr,
            events,
            stats,
            state: Mutex::new(State::default()),
        });
        tokio::spawn(accept_loop(inner.clone()));
        debug!(id = %inner.local_id, addr = %local_addr, "control transport listening");
        Ok((Transport { guard: Arc::new(CloseOnDrop(inner)) }, receiver))
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.guard.0
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.inner().local_id
    }

    /// The bound UDP address (the port is the real one when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner().local_addr
    }

    /// Counters.
    pub fn stats(&self) -> &TransportStats {
        &self.inner().stats
    }

    /// Says that node `id` is expected at `to` (or, with `None`, that anyone from the cluster is welcome). A
    /// connection to or from `to` that authenticates as another node is closed and reported as `Refused`. An
    /// existing connection that does not match is closed at once.
    pub fn expect(&self, to: SocketAddr, id: Option<NodeId>) {
        let inner = self.inner();
        let mismatched = {
            let mut state = inner.lock();
            match id {
                Some(id) => {
                    state.expected.insert(to, id);
                    state.connections.get(&to).filter(|c| c.id != id).map(|c| (c.connection.clone(), c.id))
                }
                None => {
                    state.expected.remove(&to);
                    None
                }
            }
        };
        if let (Some((connection, found)), Some(expected)) = (mismatched, id) {
            connection.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
            let inner = inner.clone();
            tokio::spawn(async move { inner.refuse(to, wrong_node(expected, found)).await });
        }
    }

    /// Sends an unreliable datagram (for probes), connecting on demand. Never blocks: a datagram that does not fit
    /// in a QUIC datagram, finds its queue full, or whose peer is unreachable is dropped and counted.
    pub fn send_datagram(&self, to: SocketAddr, data: Bytes) {
        let inner = self.inner();
        let mut state = inner.lock();
        let Some(link) = state.link(inner, to) else {
            bump(&inner.stats.datagrams_dropped);
            return;
        };
        if link.datagrams.try_send(data).is_err() {
            bump(&inner.stats.datagrams_dropped);
        }
    }

    /// Sends a reliable message (for sync and pushes) on its own stream, connecting on demand. Never blocks: a
    /// message larger than [`MAX_MESSAGE_LEN`], or that finds its queue full, is dropped and counted; so is one
    /// whose peer stays unreachable. Messages to one peer may arrive in any order.
    pub fn send_message(&self, to: SocketAddr, data: Bytes) {
        let inner = self.inner();
        if data.len() > MAX_MESSAGE_LEN {
            bump(&inner.stats.messages_dropped);
            return;
        }
        let mut state = inner.lock();
        let Some(link) = state.link(inner, to) else {
            bump(&inner.stats.messages_dropped);
            return;
        };
        if link.messages.try_send(data).is_err() {
            bump(&inner.stats.messages_dropped);
        }
    }

    /// Closes every connection and stops accepting. Queued items are dropped. Idempotent.
    pub fn close(&self) {
        self.inner().close();
    }

    /// Waits until every connection has finished closing (after [`close`](Self::close)), so the peers were told.
    pub async fn closed(&self) {
        self.inner().endpoint.wait_idle().await;
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    local_id: NodeId,
    local_addr: SocketAddr,
    events: mpsc::Sender<TransportEvent>,
    stats: TransportStats,
    /// Never held across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Outgoing queues by destination.
    links: HashMap<SocketAddr, Link>,
    /// The connection used to send to each remote address.
    connections: HashMap<SocketAddr, Authenticated>,
    /// Nodes the caller expects at addresses.
    expected: HashMap<SocketAddr, NodeId>,
    /// When `Refused` was last reported for an address.
    refused_at: HashMap<SocketAddr, Instant>,
}

#[derive(Clone)]
struct Authenticated {
    connection: Connection,
    id: NodeId,
}

/// The queues for one destination; their link tasks own the receivers.
struct Link {
    datagrams: mpsc::Sender<Bytes>,
    messages: mpsc::Sender<Bytes>,
    shared: Arc<LinkShared>,
}

/// Serializes connection attempts of a link's two tasks and remembers the last failure.
struct LinkShared {
    connecting: tokio::sync::Mutex<Option<Instant>>,
}

impl State {
    /// The link to `to`, started on first use; `None` once closed.
    fn link(&mut self, inner: &Arc<Inner>, to: SocketAddr) -> Option<&Link> {
        if self.closed {
            return None;
        }
        Some(self.links.entry(to).or_insert_with(|| {
            let (datagrams, datagram_rx) = mpsc::channel(DATAGRAM_QUEUE);
            let (messages, message_rx) = mpsc::channel(MESSAGE_QUEUE);
            let shared = Arc::new(LinkShared { connecting: tokio::sync::Mutex::new(None) });
            tokio::spawn(datagram_link(inner.clone(), to, shared.clone(), datagram_rx));
            tokio::spawn(message_link(inner.clone(), to, shared.clone(), message_rx));
            Link { datagrams, messages, shared }
        }))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind, still consistent enough to keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn close(&self) {
        {
            let mut state = self.lock();
            state.closed = true;
            // Dropping the senders ends the link tasks.
            state.links.clear();
            state.connections.clear();
        }
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }

    fn live_connection(&self, to: SocketAddr) -> Option<Connection> {
        let state = self.lock();
        state.connections.get(&to).filter(|c| c.connection.close_reason().is_none()).map(|c| c.connection.clone())
    }

    /// A live connection to `to`, dialing if there is none. `None` if the peer is unreachable or refused, or was
    /// so less than [`RETRY_AFTER`] ago.
    async fn connection_to(self: &Arc<Self>, to: SocketAddr, link: &LinkShared) -> Option<Connection> {
        if let Some(connection) = self.live_connection(to) {
            return Some(connection);
        }
        let mut failed_at = link.connecting.lock().await;
        // The link's other task, or the peer, may have connected while we waited.
        if let Some(connection) = self.live_connection(to) {
            return Some(connection);
        }
        if failed_at.is_some_and(|at| clock::now().saturating_duration_since(at) < RETRY_AFTER) {
            return None;
        }
        let connection = self.dial(to).await;
        *failed_at = if connection.is_some() { None } else { Some(clock::now()) };
        connection
    }

    async fn dial(self: &Arc<Self>, to: SocketAddr) -> Option<Connection> {
        let connecting = match self.endpoint.connect(to, SERVER_NAME) {
            Ok(connecting) => connecting,
            Err(e) => {
                // An invalid address (port 0, unspecified) or a closed endpoint.
                trace!(addr = %to, error = %e, "cannot dial");
                bump(&self.stats.connect_failures);
                return None;
            }
        };
        match connecting.await {
            Ok(connection) => self.authenticated(connection).await,
            Err(e) => {
                self.handshake_failed(to, e).await;
                None
            }
        }
    }

    /// Checks a connection whose TLS handshake succeeded, registers it and starts reading from it.
    async fn authenticated(self: &Arc<Self>, connection: Connection) -> Option<Connection> {
        let addr = connection.remote_address();
        let Some(id) = peer_id(&connection) else {
            // Cannot happen with mutual TLS; refuse rather than trust an unnamed peer.
            connection.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"no certificate");
            self.refuse(addr, "the peer presented no usable certificate".into()).await;
            return None;
        };
        let expected = {
            let mut state = self.lock();
            if state.closed {
                connection.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
                return None;
            }
            match state.expected.get(&addr) {
                Some(&expected) if expected != id => Some(expected),
                _ => {
                    // The newest authenticated connection to an address carries what we send: a peer that
                    // restarted dials in afresh while its previous life's connection only times out later.
                    state.connections.insert(addr, Authenticated { connection: connection.clone(), id });
                    None
                }
            }
        };
        if let Some(expected) = expected {
            connection.close(VarInt::from_u32(CLOSE_WRONG_NODE), b"unexpected node");
            self.refuse(addr, wrong_node(expected, id)).await;
            return None;
        }
        bump(&self.stats.handshakes_ok);
        debug!(peer = %id, %addr, "control connection up");
        let _ = self.events.send(TransportEvent::PeerUp { id, addr }).await;
        tokio::spawn(read_connection(self.clone(), connection.clone(), id));
        Some(connection)
    }

    /// Classifies a failed handshake: an authentication failure is refused, anything else is a connect failure.
    async fn handshake_failed(&self, addr: SocketAddr, error: ConnectionError) {
        if let Some(reason) = refusal_reason(&error) {
            self.refuse(addr, reason).await;
        } else {
            trace!(%addr, %error, "control connection failed");
            bump(&self.stats.connect_failures);
        }
    }

    /// Counts a refusal and reports it, at most once per address per [`REFUSED_INTERVAL`].
    async fn refuse(&self, addr: SocketAddr, reason: String) {
        bump(&self.stats.handshakes_refused);
        let report = {
            let mut state = self.lock();
            should_report(&mut state.refused_at, addr, clock::now())
        };
        if report {
            let _ = self.events.send(TransportEvent::Refused { addr, reason }).await;
        } else {
            trace!(%addr, %reason, "control connection refused again");
        }
    }

    fn send_datagram_on(&self, connection: &Connection, data: Bytes) {
        let len = data.len();
        // None: the peer does not accept datagrams (every weft node does).
        if connection.max_datagram_size().is_none_or(|max| len > max) {
            bump(&self.stats.datagrams_dropped);
            return;
        }
        match connection.send_datagram(data) {
            Ok(()) => {
                bump(&self.stats.datagrams_sent);
                add(&self.stats.bytes_sent, len);
            }
            Err(_) => bump(&self.stats.datagrams_dropped),
        }
    }
}

/// `Some(reason)` if the handshake failed on authentication (either side's TLS alert, or our close for a wrong node).
fn refusal_reason(error: &ConnectionError) -> Option<String> {
    // TLS alerts travel as QUIC CRYPTO_ERROR codes 0x0100..=0x01ff (RFC 9001 §4.8).
    let is_crypto = |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
    match error {
        ConnectionError::TransportError(e) if is_crypto(e.code) => Some(format!("we refused the peer: {e}")),
        ConnectionError::ConnectionClosed(close) if is_crypto(close.error_code) => {
            Some(format!("the peer refused us: {close}"))
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == VarInt::from_u32(CLOSE_WRONG_NODE) => {
            Some("the peer did not expect this node at this address".into())
        }
        _ => None,
    }
}

fn wrong_node(expected: NodeId, found: NodeId) -> String {
    format!("expected node {expected} at this address, but node {found} answered")
}

/// Rate limit for `Refused`: true if `addr` was not reported within [`REFUSED_INTERVAL`] before `now`.
fn should_report(refused_at: &mut HashMap<SocketAddr, Instant>, addr: SocketAddr, now: Instant) -> bool {
    if refused_at.get(&addr).is_some_and(|&at| now.saturating_duration_since(at) < REFUSED_INTERVAL) {
        return false;
    }
    if refused_at.len() >= REFUSED_MEMORY {
        refused_at.retain(|_, at| now.saturating_duration_since(*at) < REFUSED_INTERVAL);
        if refused_at.len() >= REFUSED_MEMORY {
            // Under a flood of distinct addresses, forgetting one only means one extra report.
            if let Some(old) = refused_at.keys().next().copied() {
                refused_at.remove(&old);
            }
        }
    }
    refused_at.insert(addr, now);
    true
}

/// The peer's node id, from the first certificate it presented.
fn peer_id(connection: &Connection) -> Option<NodeId> {
    let certificates = connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of(certificates.first()?).ok()
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            match incoming.await {
                Ok(connection) => {
                    inner.authenticated(connection).await;
                }
                // Already counted by the socket as `initial_unauthenticated` (garbage.rs).
                Err(e) if is_unauthenticated_initial(&e) => trace!(%addr, error = %e, "garbage Initial"),
                Err(e) => inner.handshake_failed(addr, e).await,
            }
        });
    }
}

/// quinn's error for a client Initial that does not open under the Initial keys (quinn-proto `Endpoint::accept`).
fn is_unauthenticated_initial(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::TransportError(e)
        if e.code == quinn::TransportErrorCode::PROTOCOL_VIOLATION && e.reason == "authentication failed")
}

/// Reads datagrams and streams from one connection until it closes, then reports it down.
async fn read_connection(inner: Arc<Inner>, connection: Connection, from: NodeId) {
    let addr = connection.remote_address();
    let datagrams = tokio::spawn(read_datagrams(inner.clone(), connection.clone(), from));
    // Each stream holds a permit until its message is handed to the caller, so a peer (or a slow caller) can make
    // us hold at most MAX_INCOMING_STREAMS messages per connection.
    let permits = Arc::new(Semaphore::new(MAX_INCOMING_STREAMS as usize));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = connection.closed() => break,
        };
        let Ok(mut stream) = connection.accept_uni().await else { break };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match stream.read_to_end(MAX_MESSAGE_LEN).await {
                Ok(data) => {
                    bump(&inner.stats.messages_received);
                    add(&inner.stats.bytes_received, data.len());
                    let data = Bytes::from(data);
                    let _ = inner.events.send(TransportEvent::Message { from, addr, data }).await;
                }
                Err(e) => {
                    if matches!(e, quinn::ReadToEndError::TooLong) {
                        let _ = stream.stop(VarInt::from_u32(STOP_TOO_LONG));
                    }
                    trace!(peer = %from, %addr, error = %e, "incoming message lost");
                    bump(&inner.stats.messages_dropped);
                }
            }
        });
    }
    let _ = datagrams.await;
    {
        let mut state = inner.lock();
        if state.connections.get(&addr).is_some_and(|c| c.connection.stable_id() == connection.stable_id()) {
            state.connections.remove(&addr);
        }
    }
    // The peer may close right after the handshake because it expected another node here.
    if let Some(reason) = connection.close_reason().as_ref().and_then(refusal_reason) {
        inner.refuse(addr, reason).await;
    }
    debug!(peer = %from, %addr, reason = %connection.close_reason().map(|r| r.to_string()).unwrap_or_default(),
        "control connection down");
    let _ = inner.events.send(TransportEvent::PeerDown { id: from, addr }).await;
}

/// Hands a connection's datagrams to the caller, dropping them when the event queue is full.
async fn read_datagrams(inner: Arc<Inner>, connection: Connection, from: NodeId) {
    let addr = connection.remote_address();
    while let Ok(data) = connection.read_datagram().await {
        bump(&inner.stats.datagrams_received);
        add(&inner.stats.bytes_received, data.len());
        if inner.events.try_send(TransportEvent::Datagram { from, addr, data }).is_err() {
            bump(&inner.stats.datagrams_dropped);
        }
    }
}

/// Sends the datagrams queued for `to`, in order, dropping them while the peer is unreachable.
async fn datagram_link(inner: Arc<Inner>, to: SocketAddr, link: Arc<LinkShared>, mut queue: mpsc::Receiver<Bytes>) {
    loop {
        let data = match tokio::time::timeout(LINK_IDLE, queue.recv()).await {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(_) => {
                retire_link(&inner, to, &link);
                continue;
            }
        };
        match inner.connection_to(to, &link).await {
            Some(connection) => inner.send_datagram_on(&connection, data),
            None => bump(&inner.stats.datagrams_dropped),
        }
    }
}

/// Writes the messages queued for `to`, up to [`MESSAGES_IN_FLIGHT`] at a time.
async fn message_link(inner: Arc<Inner>, to: SocketAddr, link: Arc<LinkShared>, mut queue: mpsc::Receiver<Bytes>) {
    let mut writing = JoinSet::new();
    loop {
        while writing.len() >= MESSAGES_IN_FLIGHT {
            writing.join_next().await;
        }
        // Reap finished writes so the set does not grow.
        while writing.try_join_next().is_some() {}
        let data = match tokio::time::timeout(LINK_IDLE, queue.recv()).await {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(_) => {
                retire_link(&inner, to, &link);
                continue;
            }
        };
        let Some(connection) = inner.connection_to(to, &link).await else {
            bump(&inner.stats.messages_dropped);
            continue;
        };
        let inner = inner.clone();
        writing.spawn(async move {
            let len = data.len();
            let result = async {
                let mut stream = connection.open_uni().await?;
                stream.write_chunk(data).await?;
                stream.finish()?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
            .await;
            match result {
                Ok(()) => {
                    bump(&inner.stats.messages_sent);
                    add(&inner.stats.bytes_sent, len);
                }
                Err(e) => {
                    trace!(addr = %to, error = %e, "outgoing message lost");
                    bump(&inner.stats.messages_dropped);
                }
            }
        });
    }
    // Writes already started finish on their own; the connection outlives this task.
    writing.detach_all();
}

/// Removes an idle link from the map, which drops its senders: both link tasks then drain what is left (nothing
/// can be queued after removal, because queuing happens under the same lock) and end.
fn retire_link(inner: &Inner, to: SocketAddr, link: &Arc<LinkShared>) {
    let mut state = inner.lock();
    if state.links.get(&to).is_some_and(|l| Arc::ptr_eq(&l.shared, link)) {
        let idle = state.links.get(&to).is_some_and(|l| {
            l.datagrams.capacity() == l.datagrams.max_capacity() && l.messages.capacity() == l.messages.max_capacity()
        });
        if idle {
            state.links.remove(&to);
        }
    }
}

fn quic_transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, TransportError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| TransportError::Config { reason: "idle_timeout must be between 1 ms and 2^62 ms" })?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_INCOMING_STREAMS))
        // A whole message may be in flight on one stream; the connection window bounds the total.
        .stream_receive_window(VarInt::from_u32((MAX_MESSAGE_LEN as u32).min(RECEIVE_WINDOW)))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .datagram_receive_buffer_size(Some(1 << 20));
    Ok(transport)
}

/// The rustls configurations: TLS 1.3 only, ring only, ALPN `weft/1`, the cluster CA as the only root, client
/// certificates required.
fn tls_configs(identity: &NodeIdentity) -> Result<(rustls::ServerConfig, rustls::ClientConfig), TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca_der().clone())?;
    let roots = Arc::new(roots);

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![identity.cert_der().clone()], identity.private_key_der())?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let server_verifier =
        Arc::new(ClusterServerVerifier { roots, algorithms: provider.signature_verification_algorithms });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(vec![identity.cert_der().clone()], identity.private_key_der())?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

/// Verifies a server's certificate as rustls' `WebPkiServerVerifier` does (chain to the cluster CA, validity,
/// serverAuth usage, handshake signature), except the host name: nodes dial addresses, and who answered is checked
/// by its NodeId instead.
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        // The cluster CA signs node certificates directly; whatever intermediates a peer sends are ignored.
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, &[], now, self.algorithms.all)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never reached: only TLS 1.3 is enabled. Verified properly all the same.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::pki::tests::{load, make_cluster};
    use std::path::Path;

    const DEADLINE: Duration = Duration::from_secs(20);

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn start(ca_dir: &Path, node: &crate::control::pki::IssuedNode) -> (Transport, mpsc::Receiver<TransportEvent>) {
        let identity = Arc::new(load(ca_dir, node));
        Transport::bind(TransportConfig::new(loopback(), identity)).unwrap()
    }

    /// Waits for the first event matching `want`, failing after [`DEADLINE`]; other events are returned too.
    async fn wait_for(
        events: &mut mpsc::Receiver<TransportEvent>,
        want: impl Fn(&TransportEvent) -> bool,
    ) -> (TransportEvent, Vec<TransportEvent>) {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching event before the deadline; saw {seen:?}"))
                .expect("event channel closed");
            if want(&event) {
                return (event, seen);
            }
            seen.push(event);
        }
    }

    /// A v1 Initial (RFC 9000 §17.2.2) for a random-looking 8-byte connection id, with a body no key opens.
    fn fake_initial(datagram_len: usize, seed: u8) -> Vec<u8> {
        fake_initial_with_cid(8, datagram_len, seed)
    }

    fn fake_initial_with_cid(cid_len: u8, datagram_len: usize, seed: u8) -> Vec<u8> {
        let mut p = vec![0xc0, 0, 0, 0, 1, cid_len];
        p.extend((0..cid_len).map(|k| seed.wrapping_mul(31).wrapping_add(k)));
        p.extend([0, 0]); // no source connection id, no token
        let rest = datagram_len - p.len() - 2;
        p.extend([0x40 | (rest >> 8) as u8, rest as u8]);
        p.extend((0..rest).map(|k| (k as u8).wrapping_mul(seed | 1)));
        p
    }

    #[tokio::test]
    async fn garbage_to_the_port_is_counted_by_reason_and_real_traffic_never() {
        use overlay_proto::wire::quic::QuicDrop;

        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a", "node-b"]);
        let (a, mut a_events) = start(&ca_dir, &nodes[0]);
        let (b, mut b_events) = start(&ca_dir, &nodes[1]);
        // Real traffic both ways, handshake included: nothing counted on either side.
        a.send_message(b.local_addr(), Bytes::from_static(b"hello"));
        wait_for(&mut b_events, |e| matches!(e, TransportEvent::Message { .. })).await;
        b.send_message(a.local_addr(), Bytes::from_static(b"back"));
        wait_for(&mut a_events, |e| matches!(e, TransportEvent::Message { .. })).await;
        for t in [&a, &b] {
            assert_eq!(t.stats().snapshot().quic_drops, Default::default());
        }

        let mut short_header = vec![0x40];
        short_header.extend([0x5a; 20]);
        let mut other_version = fake_initial(1200, 1);
        other_version[1..5].copy_from_slice(&0x0a1a_2a3a_u32.to_be_bytes());
        let short_cid = fake_initial_with_cid(4, 1200, 2);
        // Destination ids of 0 to 2 bytes: shorter than the connection id check can take.
        let no_cid = fake_initial_with_cid(0, 1200, 6);
        let mut handshake_tiny_cid = fake_initial_with_cid(2, 1200, 7);
        handshake_tiny_cid[0] = 0xe0;
        let sent: Vec<(Vec<u8>, QuicDrop)> = vec![
            (vec![], QuicDrop::TooShort),
            (vec![0xc0, 0, 0], QuicDrop::TooShort),
            (vec![0x00; 40], QuicDrop::NotQuic),
            (other_version, QuicDrop::UnknownVersion),
            (fake_initial(1000, 3), QuicDrop::InitialTooShort),
            (short_cid, QuicDrop::InitialBadCid),
            (no_cid, QuicDrop::InitialBadCid),
            (handshake_tiny_cid, QuicDrop::UnknownConnection),
            (fake_initial(1200, 4), QuicDrop::InitialUnauthenticated),
            (fake_initial(1350, 5), QuicDrop::InitialUnauthenticated),
            (short_header, QuicDrop::UnknownConnection),
        ];
        let socket = std::net::UdpSocket::bind(loopback()).unwrap();
        for (datagram, _) in &sent {
            socket.send_to(datagram, a.local_addr()).unwrap();
        }
        let expected = |reason| sent.iter().filter(|(_, r)| *r == reason).count() as u64;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let drops = a.stats().snapshot().quic_drops;
            if drops.iter().all(|(reason, n)| n == expected(reason)) {
                break;
            }
            let reasons: Vec<_> = sent.iter().map(|(d, r)| (d.len(), r)).collect();
            assert!(tokio::time::Instant::now() < deadline, "counted {drops:?}, sent (length, reason) {reasons:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The Initials that got past quinn's reserved-bit check failed its authentication: not connect failures.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stats = a.stats().snapshot();
        assert_eq!((stats.connect_failures, stats.handshakes_refused), (0, 0), "{stats:?}");
        // Still working, and b never saw any of it.
        b.send_message(a.local_addr(), Bytes::from_static(b"again"));
        wait_for(&mut a_events, |e| matches!(e, TransportEvent::Message { .. })).await;
        assert_eq!(b.stats().snapshot().quic_drops, Default::default());
        a.close();
        b.close();
    }

    #[tokio::test]
    async fn two_nodes_exchange_datagrams_and_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a", "node-b"]);
        let (a, mut a_events) = start(&ca_dir, &nodes[0]);
        let (b, mut b_events) = start(&ca_dir, &nodes[1]);
        assert_eq!(a.local_id(), nodes[0].id);
        assert_ne!(a.local_addr().port(), 0);

        a.send_datagram(b.local_addr(), Bytes::from_static(b"ping"));
        let (event, _) = wait_for(&mut b_events, |e| matches!(e, TransportEvent::Datagram { .. })).await;
        assert_eq!(
            event,
            TransportEvent::Datagram { from: a.local_id(), addr: a.local_addr(), data: Bytes::from_static(b"ping") }
        );
        let (event, _) = wait_for(&mut a_events, |e| matches!(e, TransportEvent::PeerUp { .. })).await;
        assert_eq!(event, TransportEvent::PeerUp { id: b.local_id(), addr: b.local_addr() });

        // 1 MiB each way; b answers over the connection a opened.
        let big: Bytes = (0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        b.send_message(a.local_addr(), big.clone());
        let (event, _) = wait_for(&mut a_events, |e| matches!(e, TransportEvent::Message { .. })).await;
        assert_eq!(event, TransportEvent::Message { from: b.local_id(), addr: b.local_addr(), data: big.clone() });
        a.send_message(b.local_addr(), big.clone());
        let (event, _) = wait_for(&mut b_events, |e| matches!(e, TransportEvent::Message { .. })).await;
        assert_eq!(event, TransportEvent::Message { from: a.local_id(), addr: a.local_addr(), data: big });
        assert_eq!(b.stats().snapshot().handshakes_ok, 1, "b reused a's connection");

        // Too large for a datagram, and for a message: dropped and counted, never blocking.
        a.send_datagram(b.local_addr(), Bytes::from(vec![0u8; 64 * 1024]));
        a.send_message(b.local_addr(), Bytes::from(vec![0u8; MAX_MESSAGE_LEN + 1]));
        a.send_datagram(b.local_addr(), Bytes::from_static(b"after"));
        let (event, _) = wait_for(&mut b_events, |e| matches!(e, TransportEvent::Datagram { .. })).await;
        assert!(matches!(event, TransportEvent::Datagram { data, .. } if data == "after"));
        let stats = a.stats().snapshot();
        assert_eq!(stats.datagrams_dropped, 1, "{stats:?}");
        assert_eq!(stats.messages_dropped, 1, "{stats:?}");
        assert_eq!(stats.datagrams_sent, 2);
        assert_eq!(stats.messages_sent, 1);
        assert_eq!(stats.handshakes_refused, 0);
        assert_eq!(b.stats().snapshot().bytes_received, 4 + (1 << 20) + 5);

        a.close();
        let (event, _) = wait_for(&mut b_events, |e| matches!(e, TransportEvent::PeerDown { .. })).await;
        assert_eq!(event, TransportEvent::PeerDown { id: a.local_id(), addr: a.local_addr() });
        b.close();
    }

    #[tokio::test]
    async fn node_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(&dir.path().join("one"), &["node-a"]);
        let (other_ca, strangers) = make_cluster(&dir.path().join("two"), &["node-x"]);
        let (a, mut a_events) = start(&ca_dir, &nodes[0]);
        let (x, mut x_events) = start(&other_ca, &strangers[0]);

        x.send_message(a.local_addr(), Bytes::from_static(b"let me in"));
        x.send_datagram(a.local_addr(), Bytes::from_static(b"probe"));
        // Each side refuses the other's certificate: x's client check fails first, and a hears the alert.
        let (event, seen) = wait_for(&mut a_events, |e| matches!(e, TransportEvent::Refused { .. })).await;
        assert!(matches!(event, TransportEvent::Refused { addr, .. } if addr == x.local_addr()), "{event:?}");
        assert!(seen.is_empty(), "{seen:?}");
        let (event, seen) = wait_for(&mut x_events, |e| matches!(e, TransportEvent::Refused { .. })).await;
        assert!(matches!(&event, TransportEvent::Refused { addr, .. } if *addr == a.local_addr()), "{event:?}");
        assert!(seen.is_empty(), "{seen:?}");

        // a dialing x fails the same way (a's client rejects x's server certificate).
        a.send_datagram(x.local_addr(), Bytes::from_static(b"who are you"));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while a.stats().snapshot().handshakes_refused < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", a.stats().snapshot());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = a.stats().snapshot();
        assert_eq!((stats.handshakes_ok, stats.messages_received, stats.datagrams_received), (0, 0, 0), "{stats:?}");
        assert_eq!(x.stats().snapshot().handshakes_ok, 0);
        // Refused is reported once per address per minute, and nothing was delivered.
        while let Ok(event) = a_events.try_recv() {
            assert!(!matches!(event, TransportEvent::Message { .. } | TransportEvent::Datagram { .. }), "{event:?}");
            assert!(!matches!(event, TransportEvent::Refused { addr, .. } if addr == x.local_addr()), "{event:?}");
        }
    }

    #[tokio::test]
    async fn unexpected_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a", "node-b", "node-c"]);
        let (a, mut a_events) = start(&ca_dir, &nodes[0]);
        let (b, mut b_events) = start(&ca_dir, &nodes[1]);

        // a believes node-c lives at b's address.
        a.expect(b.local_addr(), Some(nodes[2].id));
        a.send_datagram(b.local_addr(), Bytes::from_static(b"ping"));
        let (event, _) = wait_for(&mut a_events, |e| matches!(e, TransportEvent::Refused { .. })).await;
        let TransportEvent::Refused { addr, reason } = event else { unreachable!() };
        assert_eq!(addr, b.local_addr());
        assert!(reason.contains(&nodes[2].id.to_string()) && reason.contains(&nodes[1].id.to_string()), "{reason}");
        // b hears that it was not wanted.
        let (event, _) = wait_for(&mut b_events, |e| matches!(e, TransportEvent::Refused { .. })).await;
        assert!(matches!(event, TransportEvent::Refused { addr, .. } if addr == a.local_addr()), "{event:?}");

        // Corrected, datagrams go through once the retry pause is over.
        a.expect(b.local_addr(), Some(nodes[1].id));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no datagram after the correction");
            a.send_datagram(b.local_addr(), Bytes::from_static(b"ping"));
            let wait = tokio::time::timeout(Duration::from_millis(200), async {
                loop {
                    match b_events.recv().await {
                        Some(TransportEvent::Datagram { from, .. }) => return from,
                        Some(_) => {}
                        None => panic!("event channel closed"),
                    }
                }
            });
            if let Ok(from) = wait.await {
                assert_eq!(from, a.local_id());
                break;
            }
        }
    }

    #[tokio::test]
    async fn bind_checks_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a"]);
        let identity = Arc::new(load(&ca_dir, &nodes[0]));
        let mut config = TransportConfig::new(loopback(), identity);
        config.keep_alive = config.idle_timeout;
        assert!(matches!(Transport::bind(config), Err(TransportError::Config { .. })));
    }

    #[test]
    fn bind_needs_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, nodes) = make_cluster(dir.path(), &["node-a"]);
        let identity = Arc::new(load(&ca_dir, &nodes[0]));
        let result = Transport::bind(TransportConfig::new(loopback(), identity));
        assert!(matches!(result, Err(TransportError::NoRuntime)));
    }

    #[test]
    fn refused_is_rate_limited_per_address() {
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        assert!(should_report(&mut seen, a, t0));
        assert!(!should_report(&mut seen, a, t0 + Duration::from_secs(59)));
        assert!(should_report(&mut seen, b, t0 + Duration::from_secs(1)));
        assert!(should_report(&mut seen, a, t0 + REFUSED_INTERVAL));
        for port in 0..(REFUSED_MEMORY as u16 + 10) {
            should_report(&mut seen, SocketAddr::from(([127, 0, 0, 2], port)), t0 + REFUSED_INTERVAL);
        }
        assert!(seen.len() <= REFUSED_MEMORY);
    }
}
