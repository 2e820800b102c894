//! The forwarding engine: what to do with a frame from a network's TAP, and with a datagram from the underlay.
//!
//! ```text
//!  TAP frame (network n)                         underlay datagram (from VTEP v)
//!      │                                              │
//!      ▼                                              ▼
//!  handle_tap_frame ── dst unicast & in FDB ──► Egress::Unicast(vtep)        handle_underlay
//!      │                                              │ VXLAN I flag? VNI known? sender allowed?
//!      └─ broadcast / multicast / unknown ──► Egress::Flood(flood list)       │ inner frame sane? (learn src → v)
//!                                                     ▼
//!                                             Ingress { network, inner frame range }
//! ```
//!
//! The engine never copies a frame: the caller reads the frame into a buffer with [`HEADROOM`] bytes free in front
//! of it, asks for a decision, and then has [`encapsulate`] write the VXLAN header into that headroom. Every drop is
//! returned as a [`DropReason`] and counted in [`ForwardStats`]; nothing is logged per packet.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_crypto::esp::{self, Inbound, OpenError, Outbound};
use weft_crypto::replay::ReplayError;
use weft_crypto::Spi;

use crate::fdb::{Fdb, FdbConfig};
use crate::keying::KeyEvent;
use crate::local::{LocalEndpoints, LocalEvent};
use crate::neighbor::{self, NeighborQuery};
use crate::wire::{ethernet, udp, vxlan};
use crate::FastMap;
use crate::{flow, MacAddr, Vni};

/// Bytes a caller keeps free in front of a frame so headers can be prepended in place: VXLAN (8), and for
/// encrypted networks the inner UDP header (8) and the ESP header (16), rounded up.
pub const HEADROOM: usize = 64;
/// Bytes a caller keeps free after a frame: the ESP trailer and ICV.
pub const TAILROOM: usize = esp::MAX_TRAILER_LEN;

/// Per-network settings the engine needs.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The network's VNI.
    pub vni: Vni,
    /// Whether received frames teach the FDB, and from which senders frames are accepted.
    pub learning: Learning,
    /// Static VTEPs: the flood list, and the senders accepted when learning is off.
    pub peers: Vec<IpAddr>,
    /// Static FDB entries.
    pub static_fdb: Vec<(MacAddr, IpAddr)>,
    /// Head-end replication budget: broadcast, multicast and unknown-unicast frames per second, and burst.
    pub flood_limit: RateLimit,
    /// Frames travel as ESP-in-UDP; plaintext VXLAN for this VNI is dropped.
    pub encrypted: bool,
    /// The network's gateway addresses, held by this host's bridge (and every other host's): frames from or asking
    /// for them stay on this host, and remote records never make the responder answer for them.
    pub gateways: Vec<IpAddr>,
    /// The MACs of this host's bridge: its own frames (IPv6 link-local traffic, ARP from its addresses) are
    /// forwarded but never discovered as a local endpoint, since the bridge is no container.
    pub bridge_macs: Vec<MacAddr>,
}

/// Data-plane learning of (VNI, inner source MAC) → outer source address (RFC 7348 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Learning {
    /// Never learn; unicast goes where static entries say, everything else floods.
    Off,
    /// Learn from the network's configured VTEPs only, and drop frames from any other sender.
    #[default]
    Peers,
    /// Accept frames from any VTEP and learn from them: the behaviour of kernel VXLAN with `learning`.
    Any,
}

/// A token bucket's refill rate and depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Frames per second.
    pub per_second: u32,
    /// Frames that may pass at once after an idle period.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_second: 20_000, burst: 2_000 }
    }
}

/// Settings of the whole engine.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// This host's underlay address; frames are never sent to it.
    pub local_vtep: IpAddr,
    /// FDB ageing and limits.
    pub fdb: FdbConfig,
    /// Seed of the flow hash (non-secret).
    pub flow_seed: u64,
    /// Silence after which a local endpoint is withdrawn.
    pub local_ageing: Duration,
    /// The VXLAN UDP port, written as the inner UDP header's destination inside ESP.
    pub vxlan_port: u16,
    /// The networks, in the order the caller numbers them.
    pub networks: Vec<NetworkConfig>,
}

/// Why a frame or datagram was dropped. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than its headers claim, or an inner frame shorter than an Ethernet header.
    Malformed,
    /// A VXLAN header without the I flag (RFC 7348 §5: the VNI is not valid).
    NoVniFlag,
    /// A VNI this host does not carry.
    UnknownVni,
    /// A sender that is not a VTEP of the network (and the network does not accept any sender).
    UnknownSender,
    /// An inner frame whose source MAC is a group address.
    BadSourceMac,
    /// Nowhere to send: no FDB entry and an empty flood list.
    NoDestination,
    /// The head-end replication budget was spent.
    FloodLimited,
    /// Plaintext VXLAN for a network that is encrypted.
    PlaintextOnEncrypted,
    /// An ESP packet whose SPI no inbound SA has (or whose SA belongs to another VTEP); no decryption was tried.
    UnknownSpi,
    /// An ESP packet refused by the replay window, before decryption.
    Replay,
    /// An ESP packet whose ICV did not verify.
    Authentication,
    /// An ESP packet that authenticated but whose framing (trailer, inner UDP header) is wrong, or one too short.
    EspMalformed,
    /// No outbound SA to the destination yet (keys still being agreed).
    NoSa,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 13] = [
        DropReason::Malformed,
        DropReason::NoVniFlag,
        DropReason::UnknownVni,
        DropReason::UnknownSender,
        DropReason::BadSourceMac,
        DropReason::NoDestination,
        DropReason::FloodLimited,
        DropReason::PlaintextOnEncrypted,
        DropReason::UnknownSpi,
        DropReason::Replay,
        DropReason::Authentication,
        DropReason::EspMalformed,
        DropReason::NoSa,
    ];

    /// A stable snake_case name for counters and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoVniFlag => "no_vni_flag",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::BadSourceMac => "bad_source_mac",
            DropReason::NoDestination => "no_destination",
            DropReason::FloodLimited => "flood_limited",
            DropReason::PlaintextOnEncrypted => "plaintext_on_encrypted",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::Replay => "replay",
            DropReason::Authentication => "authentication",
            DropReason::EspMalformed => "esp_malformed",
            DropReason::NoSa => "no_sa",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Counters of the engine. Plain integers: one engine is owned by one worker; [`ForwardStats::merge`] sums workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Frames read from TAPs that were sent to one VTEP.
    pub tx_unicast: u64,
    /// Frames read from TAPs that were replicated to the flood list.
    pub tx_flooded: u64,
    /// Datagrams those frames became (one per unicast, one per flood-list member).
    pub tx_datagrams: u64,
    /// Inner bytes of the frames sent.
    pub tx_bytes: u64,
    /// ARP requests and neighbour solicitations answered locally for remote endpoints (suppression).
    pub suppressed: u64,
    /// Frames that stayed on this host: neighbour queries for local endpoints.
    pub kept_local: u64,
    /// Frames received from the underlay and passed to a TAP.
    pub rx_frames: u64,
    /// Inner bytes of those frames.
    pub rx_bytes: u64,
    /// MAC → VTEP entries learned or moved.
    pub learned: u64,
    /// Datagrams sealed into ESP.
    pub esp_sealed: u64,
    /// ESP packets opened.
    pub esp_opened: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl ForwardStats {
    /// The count of one drop reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Every drop reason with its count.
    pub fn iter_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.drops[r.index()]))
    }

    /// Adds another worker's counters to these.
    pub fn merge(&mut self, other: &ForwardStats) {
        let ForwardStats {
            tx_unicast,
            tx_flooded,
            tx_datagrams,
            tx_bytes,
            suppressed,
            kept_local,
            rx_frames,
            rx_bytes,
            learned,
            esp_sealed,
            esp_opened,
            drops,
        } = other;
        self.tx_unicast += tx_unicast;
        self.tx_flooded += tx_flooded;
        self.tx_datagrams += tx_datagrams;
        self.tx_bytes += tx_bytes;
        self.suppressed += suppressed;
        self.kept_local += kept_local;
        self.rx_frames += rx_frames;
        self.rx_bytes += rx_bytes;
        self.learned += learned;
        self.esp_sealed += esp_sealed;
        self.esp_opened += esp_opened;
        for (mine, theirs) in self.drops.iter_mut().zip(drops) {
            *mine += theirs;
        }
    }

    fn drop(&mut self, reason: DropReason) -> DropReason {
        self.drops[reason.index()] += 1;
        reason
    }
}

/// A change the control plane makes to the forwarding state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlUpdate {
    /// A remote endpoint: frames to `mac` go to `vtep`, and neighbour queries for `ips` are answered with `mac`.
    Endpoint {
        /// Its network.
        vni: Vni,
        /// Its MAC.
        mac: MacAddr,
        /// Its host's VTEP.
        vtep: IpAddr,
        /// Its addresses.
        ips: Vec<IpAddr>,
    },
    /// A remote endpoint is gone.
    EndpointGone {
        /// Its network.
        vni: Vni,
        /// Its MAC.
        mac: MacAddr,
    },
    /// The VTEPs of the live hosts that carry a network.
    NetworkMembers {
        /// The network.
        vni: Vni,
        /// The VTEPs.
        vteps: Vec<IpAddr>,
    },
}

/// An SA change, built once from a [`KeyEvent`] and handed to every worker's engine: the SAs inside are shared, so
/// all workers draw sequence numbers from one counter and check one replay window (DESIGN.md: one SA per direction
/// per host pair).
#[derive(Debug, Clone)]
pub enum SaUpdate {
    /// Accept packets on `sa` from `vtep`.
    Inbound {
        /// The peer's VTEP: packets on this SPI must come from it.
        vtep: IpAddr,
        /// The SA.
        sa: Arc<Inbound>,
    },
    /// Send to `vtep` with `sa` from now on.
    Outbound {
        /// The peer's VTEP.
        vtep: IpAddr,
        /// The SA.
        sa: Arc<Outbound>,
    },
    /// Stop accepting `spi`.
    RemoveInbound {
        /// The SPI.
        spi: Spi,
    },
    /// Forget the outbound SA to `vtep`.
    RemoveOutbound {
        /// The peer's VTEP.
        vtep: IpAddr,
    },
}

impl From<KeyEvent> for SaUpdate {
    fn from(event: KeyEvent) -> Self {
        match event {
            KeyEvent::InstallInbound { vtep, spi, keys, .. } => {
                SaUpdate::Inbound { vtep, sa: Arc::new(Inbound::new(spi, &keys)) }
            }
            KeyEvent::SetOutbound { vtep, spi, keys, .. } => {
                SaUpdate::Outbound { vtep, sa: Arc::new(Outbound::new(spi, &keys)) }
            }
            KeyEvent::RemoveInbound { spi } => SaUpdate::RemoveInbound { spi },
            KeyEvent::RemoveOutbound { vtep } => SaUpdate::RemoveOutbound { vtep },
        }
    }
}

/// Where a frame from a TAP goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Egress<'a> {
    /// To one VTEP.
    Unicast {
        /// The destination VTEP.
        vtep: IpAddr,
        /// The inner flow hash: source-port entropy and worker steering.
        flow: u32,
    },
    /// A copy to each VTEP of the flood list.
    Flood {
        /// The destinations.
        vteps: &'a [IpAddr],
        /// The inner flow hash.
        flow: u32,
    },
    /// Nowhere; counted.
    Drop(DropReason),
    /// Answer into the TAP on behalf of the remote endpoint `mac` ([`neighbor::answer`] writes the reply).
    Answer {
        /// The MAC that owns the queried address.
        mac: MacAddr,
    },
    /// Nothing to send: the frame is for this host's own endpoints, which the local bridge already reached.
    Local,
}

/// Which underlay port a datagram goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Plaintext VXLAN (4789 by default).
    Vxlan,
    /// ESP-in-UDP (4500 by default).
    Esp,
}

/// A received datagram that carries a frame for a local network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    /// Index of the network, in [`ForwarderConfig::networks`] order.
    pub network: usize,
    /// The inner Ethernet frame, as a range of the datagram.
    pub frame: Range<usize>,
}

#[derive(Debug)]
struct Network {
    vni: Vni,
    learning: Learning,
    encrypted: bool,
    gateways: Vec<IpAddr>,
    bridge_macs: Vec<MacAddr>,
    /// Configured peers (never this host).
    static_peers: Vec<IpAddr>,
    /// Static FDB VTEPs.
    static_vteps: Vec<IpAddr>,
    /// VTEPs of live members that carry this network, from the control plane.
    members: BTreeSet<IpAddr>,
    /// Sorted union of the three: the senders accepted without `Learning::Any`.
    senders: Vec<IpAddr>,
    flood_bucket: TokenBucket,
}

impl Network {
    fn senders_and_flood(&self) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let mut flood: Vec<IpAddr> = self.static_peers.iter().chain(&self.members).copied().collect();
        flood.sort_unstable();
        flood.dedup();
        let mut senders: Vec<IpAddr> = flood.iter().chain(&self.static_vteps).copied().collect();
        senders.sort_unstable();
        senders.dedup();
        (senders, flood)
    }
}

/// The forwarding engine of one worker.
#[derive(Debug)]
pub struct Forwarder {
    local_vtep: IpAddr,
    flow_seed: u64,
    networks: Vec<Network>,
    by_vni: FastMap<Vni, usize>,
    fdb: Fdb,
    /// (VNI, IP) → MAC of remote endpoints, for ARP/ND suppression.
    neighbors: FastMap<(Vni, IpAddr), MacAddr>,
    /// The addresses each remote endpoint announced, to withdraw them with it.
    remote_ips: FastMap<(Vni, MacAddr), Vec<IpAddr>>,
    /// Endpoints behind this host's TAPs.
    local: LocalEndpoints,
    vxlan_port: u16,
    /// The current outbound SA per peer VTEP.
    outbound: FastMap<IpAddr, Arc<Outbound>>,
    /// Inbound SAs by SPI, with the VTEP that may use them.
    inbound: FastMap<Spi, (IpAddr, Arc<Inbound>)>,
    stats: ForwardStats,
}

impl Forwarder {
    /// Builds the engine; `now` starts the rate limiters.
    pub fn new(config: ForwarderConfig, now: Instant) -> Self {
        let mut fdb = Fdb::new(config.fdb);
        let mut by_vni = FastMap::default();
        let mut networks = Vec::with_capacity(config.networks.len());
        for (index, net) in config.networks.into_iter().enumerate() {
            for (mac, vtep) in &net.static_fdb {
                fdb.insert_static(net.vni, *mac, *vtep);
            }
            let mut network = Network {
                vni: net.vni,
                learning: net.learning,
                encrypted: net.encrypted,
                gateways: net.gateways,
                bridge_macs: net.bridge_macs,
                static_peers: net.peers.iter().copied().filter(|p| *p != config.local_vtep).collect(),
                static_vteps: net.static_fdb.iter().map(|(_, vtep)| *vtep).collect(),
                members: BTreeSet::new(),
                senders: Vec::new(),
                flood_bucket: TokenBucket::new(net.flood_limit, now),
            };
            let (senders, flood) = network.senders_and_flood();
            network.senders = senders;
            fdb.set_flood_list(net.vni, flood);
            by_vni.insert(net.vni, index);
            networks.push(network);
        }
        Self {
            local_vtep: config.local_vtep,
            flow_seed: config.flow_seed,
            networks,
            by_vni,
            fdb,
            neighbors: FastMap::default(),
            remote_ips: FastMap::default(),
            local: LocalEndpoints::new(config.local_ageing, 16_384),
            vxlan_port: config.vxlan_port,
            outbound: FastMap::default(),
            inbound: FastMap::default(),
            stats: ForwardStats::default(),
        }
    }

    /// Decides where a frame read from network `network`'s TAP goes.
    ///
    /// # Panics
    /// If `network` is not an index of the configured networks.
    pub fn handle_tap_frame(&mut self, now: Instant, network: usize, frame: &[u8]) -> Egress<'_> {
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            return Egress::Drop(self.stats.drop(DropReason::Malformed));
        };
        let net = &mut self.networks[network];
        // The gateway is this host's bridge: its traffic, and queries for it, never leave the host (and the bridge is
        // not an endpoint to discover).
        if neighbor::gateway_frame(frame, &net.gateways) {
            self.stats.kept_local += 1;
            return Egress::Local;
        }
        if !net.bridge_macs.contains(&eth.src_addr()) {
            self.local.observe(now, network, frame);
        }
        if let Some(query) = neighbor::query(frame) {
            let ip = match query {
                NeighborQuery::Arp { target } => IpAddr::V4(target),
                NeighborQuery::Solicit { target } => IpAddr::V6(target),
            };
            if let Some(&mac) = self.neighbors.get(&(net.vni, ip)) {
                self.stats.suppressed += 1;
                return Egress::Answer { mac };
            }
            if self.local.owner(network, ip).is_some() {
                self.stats.kept_local += 1;
                return Egress::Local;
            }
        }
        let flow = flow::hash(self.flow_seed, frame);
        let dst = eth.dst_addr();
        if dst.is_unicast() {
            if let Some(vtep) = self.fdb.lookup(now, net.vni, dst) {
                if vtep != self.local_vtep {
                    self.stats.tx_unicast += 1;
                    self.stats.tx_datagrams += 1;
                    self.stats.tx_bytes += frame.len() as u64;
                    return Egress::Unicast { vtep, flow };
                }
            }
        }
        let vteps = self.fdb.flood_list(net.vni);
        if vteps.is_empty() {
            return Egress::Drop(self.stats.drop(DropReason::NoDestination));
        }
        if !net.flood_bucket.take(now) {
            return Egress::Drop(self.stats.drop(DropReason::FloodLimited));
        }
        self.stats.tx_flooded += 1;
        self.stats.tx_datagrams += vteps.len() as u64;
        self.stats.tx_bytes += frame.len() as u64;
        Egress::Flood { vteps, flow }
    }

    /// Validates a plaintext VXLAN datagram (the UDP payload) received from `from`, learns from it when the network
    /// learns, and says which network's TAP gets the inner frame.
    pub fn handle_underlay(&mut self, now: Instant, from: IpAddr, datagram: &[u8]) -> Result<Ingress, DropReason> {
        self.receive(now, from, datagram, false)
    }

    /// Opens an ESP packet (the UDP 4500 payload) from `from` in place and handles the VXLAN datagram inside it.
    /// The frame range of the result is within `packet`. The SPI is looked up, and the replay window checked,
    /// before any decryption work.
    pub fn handle_esp(&mut self, now: Instant, from: IpAddr, packet: &mut [u8]) -> Result<Ingress, DropReason> {
        let Some(spi) = esp::spi_of(packet) else {
            return Err(self.stats.drop(DropReason::EspMalformed));
        };
        let Some((_, sa)) = self.inbound.get(&spi).filter(|(vtep, _)| *vtep == from) else {
            return Err(self.stats.drop(DropReason::UnknownSpi));
        };
        let inner = sa.open(packet).map_err(|e| {
            self.stats.drop(match e {
                OpenError::Replay(ReplayError::Replayed | ReplayError::TooOld) => DropReason::Replay,
                OpenError::Authentication => DropReason::Authentication,
                OpenError::Truncated | OpenError::WrongSpi | OpenError::BadTrailer => DropReason::EspMalformed,
            })
        })?;
        self.stats.esp_opened += 1;
        let udp_ok = udp::Packet::new_checked(&packet[inner.clone()])
            .is_ok_and(|u| u.dst_port() == self.vxlan_port && usize::from(u.len()) == inner.len());
        if !udp_ok {
            return Err(self.stats.drop(DropReason::EspMalformed));
        }
        let datagram = inner.start + udp::HEADER_LEN..inner.end;
        let ingress = self.receive(now, from, &packet[datagram.clone()], true)?;
        Ok(Ingress {
            network: ingress.network,
            frame: ingress.frame.start + datagram.start..ingress.frame.end + datagram.start,
        })
    }

    fn receive(&mut self, now: Instant, from: IpAddr, datagram: &[u8], encrypted: bool) -> Result<Ingress, DropReason> {
        let packet = vxlan::Packet::new_checked(datagram).map_err(|_| self.stats.drop(DropReason::Malformed))?;
        let repr = vxlan::Repr::parse(&packet).map_err(|_| self.stats.drop(DropReason::NoVniFlag))?;
        let Some(&network) = self.by_vni.get(&repr.vni) else {
            return Err(self.stats.drop(DropReason::UnknownVni));
        };
        let net = &self.networks[network];
        if net.encrypted && !encrypted {
            return Err(self.stats.drop(DropReason::PlaintextOnEncrypted));
        }
        if net.learning != Learning::Any && net.senders.binary_search(&from).is_err() {
            return Err(self.stats.drop(DropReason::UnknownSender));
        }
        let frame = vxlan::HEADER_LEN..datagram.len();
        let Ok(eth) = ethernet::Frame::new_checked(&datagram[frame.clone()]) else {
            return Err(self.stats.drop(DropReason::Malformed));
        };
        let src = eth.src_addr();
        if src.is_multicast() {
            return Err(self.stats.drop(DropReason::BadSourceMac));
        }
        if net.learning != Learning::Off {
            use crate::fdb::Learned;
            if matches!(self.fdb.learn(now, net.vni, src, from), Learned::New | Learned::Moved) {
                self.stats.learned += 1;
            }
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        Ok(Ingress { network, frame })
    }

    /// Prepends the headers for network `network`'s frame at `buf[frame]` going to `vtep`: VXLAN, and for an
    /// encrypted network the inner UDP header and ESP (sealed in place, trailer after the frame). Returns the
    /// datagram's range and the port it goes to. For a flood to several VTEPs of an encrypted network, call this
    /// on a fresh copy of the frame per VTEP: sealing consumes the plaintext.
    pub fn encapsulate(
        &mut self,
        network: usize,
        vtep: IpAddr,
        flow: u32,
        buf: &mut [u8],
        frame: Range<usize>,
    ) -> Result<(Range<usize>, Port), DropReason> {
        let net = &self.networks[network];
        let datagram = encapsulate(net.vni, buf, frame);
        if !net.encrypted {
            return Ok((datagram, Port::Vxlan));
        }
        let Some(sa) = self.outbound.get(&vtep) else {
            return Err(self.stats.drop(DropReason::NoSa));
        };
        let start = datagram.start - udp::HEADER_LEN;
        let len = datagram.end - start;
        let mut header = udp::Packet::new_unchecked(&mut buf[start..datagram.start]);
        // RFC 7348 §5: the source port carries the flow's entropy (as the outer one does, from the send pool);
        // the checksum is zero, as VXLAN allows.
        header.set_src_port(49152 + (flow % 16384) as u16);
        header.set_dst_port(self.vxlan_port);
        header.set_len(len as u16);
        header.set_checksum(0);
        let sealed = sa.seal(buf, start..datagram.end).map_err(|_| self.stats.drop(DropReason::EspMalformed))?;
        self.stats.esp_sealed += 1;
        Ok((sealed, Port::Esp))
    }

    /// Whether an inbound SA with `spi` is installed.
    pub fn knows_inbound(&self, spi: Spi) -> bool {
        self.inbound.contains_key(&spi)
    }

    /// Whether network `network` is encrypted.
    pub fn is_encrypted(&self, network: usize) -> bool {
        self.networks[network].encrypted
    }

    /// Applies an SA change from the key agreement.
    pub fn handle_key_event(&mut self, event: KeyEvent) {
        self.handle_sa_update(event.into());
    }

    /// Applies an SA change whose state may be shared with other workers' engines.
    pub fn handle_sa_update(&mut self, update: SaUpdate) {
        match update {
            SaUpdate::Inbound { vtep, sa } => {
                self.inbound.insert(sa.spi(), (vtep, sa));
            }
            SaUpdate::Outbound { vtep, sa } => {
                self.outbound.insert(vtep, sa);
            }
            SaUpdate::RemoveInbound { spi } => {
                self.inbound.remove(&spi);
            }
            SaUpdate::RemoveOutbound { vtep } => {
                self.outbound.remove(&vtep);
            }
        }
    }

    /// Packets and bytes sealed by each current outbound SA: the key agreement rekeys on them.
    pub fn sa_usage(&self) -> impl Iterator<Item = (IpAddr, u64, u64)> + '_ {
        self.outbound.iter().map(|(vtep, sa)| (*vtep, sa.packets(), sa.bytes()))
    }

    /// Periodic housekeeping: expires learned FDB entries and silent local endpoints. Call about once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fdb.expire(now);
        self.local.expire(now);
    }

    /// The next change in the local endpoints, for the control plane to announce.
    #[must_use]
    pub fn poll_local_event(&mut self) -> Option<LocalEvent> {
        self.local.poll_event()
    }

    /// The endpoints behind this host's TAPs.
    pub fn local_endpoints(&self) -> &LocalEndpoints {
        &self.local
    }

    /// Sets the VTEPs of the live hosts that carry `vni` (from the control plane): they join the flood list and are
    /// accepted as senders. Unknown VNIs are ignored.
    pub fn set_network_members(&mut self, vni: Vni, vteps: impl IntoIterator<Item = IpAddr>) {
        let Some(&index) = self.by_vni.get(&vni) else { return };
        let local = self.local_vtep;
        let net = &mut self.networks[index];
        net.members = vteps.into_iter().filter(|v| *v != local).collect();
        let (senders, flood) = net.senders_and_flood();
        net.senders = senders;
        self.fdb.set_flood_list(vni, flood);
    }

    /// Every VTEP this host still deals with: the accepted senders of each network (configured peers, static FDB
    /// VTEPs, control-plane members) and those the FDB points at. A VTEP not in it has left; the data path frees
    /// what it kept for it (its traffic counters).
    pub fn known_vteps(&self) -> BTreeSet<IpAddr> {
        let senders = self.networks.iter().flat_map(|n| n.senders.iter().copied());
        senders.chain(self.fdb.iter().map(|(_, _, e)| e.vtep)).collect()
    }

    /// Applies a change from the control plane.
    pub fn handle_control(&mut self, update: ControlUpdate) {
        match update {
            ControlUpdate::Endpoint { vni, mac, vtep, ips } => {
                let Some(&index) = self.by_vni.get(&vni) else { return };
                if vtep == self.local_vtep {
                    return;
                }
                self.fdb.insert_remote(vni, mac, vtep);
                self.forget_neighbors(vni, mac);
                // A record that claims the gateway's address never makes us answer for the gateway.
                let gateways = &self.networks[index].gateways;
                for ip in ips.iter().filter(|ip| !gateways.contains(ip)) {
                    self.neighbors.insert((vni, *ip), mac);
                }
                self.remote_ips.insert((vni, mac), ips);
            }
            ControlUpdate::EndpointGone { vni, mac } => {
                self.fdb.remove_remote(vni, mac);
                self.forget_neighbors(vni, mac);
            }
            ControlUpdate::NetworkMembers { vni, vteps } => self.set_network_members(vni, vteps),
        }
    }

    fn forget_neighbors(&mut self, vni: Vni, mac: MacAddr) {
        for ip in self.remote_ips.remove(&(vni, mac)).unwrap_or_default() {
            if self.neighbors.get(&(vni, ip)) == Some(&mac) {
                self.neighbors.remove(&(vni, ip));
            }
        }
    }

    /// The MAC the control plane says owns `ip` on `vni`.
    pub fn neighbor(&self, vni: Vni, ip: IpAddr) -> Option<MacAddr> {
        self.neighbors.get(&(vni, ip)).copied()
    }

    /// The VNI of network `network`.
    pub fn vni(&self, network: usize) -> Vni {
        self.networks[network].vni
    }

    /// The counters.
    pub fn stats(&self) -> &ForwardStats {
        &self.stats
    }

    /// The forwarding table.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }
}

/// Writes the VXLAN header for `vni` into the [`vxlan::HEADER_LEN`] bytes in front of the frame at
/// `buf[frame.start..frame.end]`, and returns the range of the resulting UDP payload.
///
/// # Panics
/// If `frame.start < vxlan::HEADER_LEN` (the caller did not leave headroom).
pub fn encapsulate(vni: Vni, buf: &mut [u8], frame: Range<usize>) -> Range<usize> {
    let start = frame.start - vxlan::HEADER_LEN;
    let mut packet = vxlan::Packet::new_unchecked(&mut buf[start..frame.start]);
    vxlan::Repr { vni }.emit(&mut packet);
    start..frame.end
}

/// A token bucket on the caller's clock.
#[derive(Debug)]
struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(limit: RateLimit, now: Instant) -> Self {
        Self { limit, tokens: f64::from(limit.burst), last: now }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).min(Duration::from_secs(60));
        self.last = now.max(self.last);
        let burst = f64::from(self.limit.burst.max(1));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.limit.per_second)).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: [u8; 4] = [198, 18, 0, 1];
    const H2: [u8; 4] = [198, 18, 0, 2];
    const H3: [u8; 4] = [198, 18, 0, 3];
    const MAC_A: MacAddr = MacAddr([2, 0x19, 0, 0, 1, 1]);
    const MAC_B: MacAddr = MacAddr([2, 0x19, 0, 0, 2, 1]);
    /// This host's bridge.
    const BRIDGE: MacAddr = MacAddr([2, 0x19, 0, 0, 0xbb, 1]);

    fn ip(a: [u8; 4]) -> IpAddr {
        IpAddr::from(a)
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
        f.extend_from_slice(b"payload");
        f
    }

    fn net(vni: u32, learning: Learning) -> NetworkConfig {
        NetworkConfig {
            vni: Vni::new(vni).unwrap(),
            learning,
            peers: vec![ip(H2), ip(H3), ip(H1)],
            static_fdb: vec![(MAC_B, ip(H2))],
            flood_limit: RateLimit { per_second: 10, burst: 2 },
            gateways: vec![ip([198, 19, 0, 1])],
            bridge_macs: vec![BRIDGE],
            encrypted: false,
        }
    }

    fn forwarder(now: Instant, learning: Learning) -> Forwarder {
        Forwarder::new(
            ForwarderConfig {
                local_vtep: ip(H1),
                fdb: FdbConfig::default(),
                flow_seed: 1,
                local_ageing: Duration::from_secs(300),
                vxlan_port: 4789,
                networks: vec![net(100, learning), net(200, Learning::Off)],
            },
            now,
        )
    }

    fn vxlan_datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(inner);
        let range = encapsulate(Vni::new(vni).unwrap(), &mut buf, HEADROOM..HEADROOM + inner.len());
        buf[range].to_vec()
    }

    #[test]
    fn known_vteps_are_senders_and_fdb_targets_and_forget_a_host_that_left() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let vni = Vni::new(100).unwrap();
        let (h4, h5) = (ip([198, 18, 0, 4]), ip([198, 18, 0, 5]));
        fw.set_network_members(vni, [h4, h5]);
        let known = fw.known_vteps();
        assert!(known.contains(&h4) && known.contains(&h5) && known.contains(&ip(H2)), "{known:?}");
        assert!(!known.contains(&ip(H1)), "this host is not a peer");
        // h5's endpoint is still in the FDB when h5 leaves the members: it stays known until withdrawn.
        let mac = MacAddr([2, 0x19, 0, 0, 5, 1]);
        fw.handle_control(ControlUpdate::Endpoint { vni, mac, vtep: h5, ips: vec![] });
        fw.handle_control(ControlUpdate::NetworkMembers { vni, vteps: vec![] });
        let known = fw.known_vteps();
        assert!(!known.contains(&h4) && known.contains(&h5), "{known:?}");
        fw.handle_control(ControlUpdate::EndpointGone { vni, mac });
        assert!(!fw.known_vteps().contains(&h5));
        assert!(fw.known_vteps().contains(&ip(H3)), "configured peers stay");
    }

    #[test]
    fn control_plane_members_join_the_flood_list_and_senders() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let vni = Vni::new(100).unwrap();
        let h4 = ip([198, 18, 0, 4]);
        fw.set_network_members(vni, [h4, ip(H1)]);
        match fw.handle_tap_frame(now, 0, &frame(MacAddr::BROADCAST, MAC_A)) {
            Egress::Flood { vteps, .. } => assert_eq!(vteps, &[ip(H2), ip(H3), h4]),
            other => panic!("expected flood, got {other:?}"),
        }
        let from_h4 = vxlan_datagram(100, &frame(MAC_A, MacAddr([2, 0x19, 0, 0, 4, 1])));
        assert!(fw.handle_underlay(now, h4, &from_h4).is_ok());
        fw.set_network_members(vni, []);
        assert_eq!(fw.handle_underlay(now, h4, &from_h4), Err(DropReason::UnknownSender));
        let mac_d = MacAddr([2, 0x19, 0, 0, 4, 1]);
        let ip_d = IpAddr::from([198, 19, 0, 41]);
        fw.handle_control(ControlUpdate::Endpoint { vni, mac: mac_d, vtep: h4, ips: vec![ip_d] });
        assert!(
            matches!(fw.handle_tap_frame(now, 0, &frame(mac_d, MAC_A)), Egress::Unicast { vtep, .. } if vtep == h4)
        );
        assert_eq!(fw.neighbor(vni, ip_d), Some(mac_d));
        fw.handle_control(ControlUpdate::EndpointGone { vni, mac: mac_d });
        assert!(matches!(fw.handle_tap_frame(now, 0, &frame(mac_d, MAC_A)), Egress::Flood { .. }));
        assert_eq!(fw.neighbor(vni, ip_d), None);
    }

    #[test]
    fn encrypted_networks_seal_to_esp_and_refuse_everything_else() {
        use weft_crypto::keys::{Cipher, SaKeys};
        let now = Instant::now();
        let keys = SaKeys::new(Cipher::Aes128Gcm, &[7; 16], [1, 2, 3, 4]).unwrap();
        let spi = Spi::new(0x1001).unwrap();
        let encrypted = |local: [u8; 4]| {
            let mut config = net(100, Learning::Off);
            config.encrypted = true;
            Forwarder::new(
                ForwarderConfig {
                    local_vtep: ip(local),
                    fdb: FdbConfig::default(),
                    flow_seed: 1,
                    local_ageing: Duration::from_secs(300),
                    vxlan_port: 4789,
                    networks: vec![config],
                },
                now,
            )
        };
        let (mut h1, mut h2) = (encrypted(H1), encrypted(H2));
        let inner = frame(MAC_B, MAC_A);
        let mut buf = vec![0u8; HEADROOM + inner.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let range = HEADROOM..HEADROOM + inner.len();
        assert_eq!(h1.encapsulate(0, ip(H2), 5, &mut buf.clone(), range.clone()), Err(DropReason::NoSa));
        h1.handle_key_event(KeyEvent::SetOutbound { vtep: ip(H2), spi, keys: keys.clone(), epoch: 1 });
        h2.handle_key_event(KeyEvent::InstallInbound { vtep: ip(H1), spi, keys, epoch: 1 });
        let (sealed, port) = h1.encapsulate(0, ip(H2), 5, &mut buf, range).unwrap();
        assert_eq!(port, Port::Esp);
        let packet = buf[sealed].to_vec();
        assert!(!packet.windows(7).any(|w| w == b"payload"), "the frame is not visible in the ESP packet");

        let mut copy = packet.clone();
        let ingress = h2.handle_esp(now, ip(H1), &mut copy).unwrap();
        assert_eq!(&copy[ingress.frame], &inner[..]);
        assert_eq!(h2.handle_esp(now, ip(H1), &mut packet.clone()), Err(DropReason::Replay));
        let mut flipped = packet.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut fresh = h1_seal(&mut h1, &inner);
        let last = fresh.len() - 1;
        fresh[last] ^= 1;
        assert_eq!(h2.handle_esp(now, ip(H1), &mut fresh), Err(DropReason::Authentication));
        let mut other_spi = h1_seal(&mut h1, &inner);
        other_spi[3] ^= 0x55;
        assert_eq!(h2.handle_esp(now, ip(H1), &mut other_spi), Err(DropReason::UnknownSpi));
        assert_eq!(h2.handle_esp(now, ip(H3), &mut h1_seal(&mut h1, &inner)), Err(DropReason::UnknownSpi));
        assert_eq!(
            h2.handle_underlay(now, ip(H1), &vxlan_datagram(100, &inner)),
            Err(DropReason::PlaintextOnEncrypted)
        );
        assert_eq!(h2.handle_esp(now, ip(H1), &mut [0, 0, 0x10, 0x01, 0, 0]), Err(DropReason::EspMalformed));
        assert_eq!(h2.stats().esp_opened, 1);
        let counted: Vec<u64> = [
            DropReason::Replay,
            DropReason::Authentication,
            DropReason::UnknownSpi,
            DropReason::PlaintextOnEncrypted,
            DropReason::EspMalformed,
        ]
        .iter()
        .map(|r| h2.stats().drops(*r))
        .collect();
        assert_eq!(counted, vec![1, 1, 2, 1, 1]);
        assert_eq!(h1.sa_usage().collect::<Vec<_>>().len(), 1);
    }

    fn h1_seal(h1: &mut Forwarder, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADROOM + inner.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
        let (range, _) = h1.encapsulate(0, ip(H2), 5, &mut buf, HEADROOM..HEADROOM + inner.len()).unwrap();
        buf[range].to_vec()
    }

    /// An ARP request from `sender` (`sender_ip`) for `target`.
    fn arp_request(sender: MacAddr, sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        use crate::wire::arp;
        let mut f = Vec::new();
        f.extend_from_slice(&MacAddr::BROADCAST.0);
        f.extend_from_slice(&sender.0);
        f.extend_from_slice(&[0x08, 0x06]);
        f.resize(14 + arp::PACKET_LEN, 0);
        let repr = arp::Repr {
            operation: arp::operation::REQUEST,
            sender_hardware_addr: sender,
            sender_protocol_addr: sender_ip.into(),
            target_hardware_addr: MacAddr::default(),
            target_protocol_addr: target.into(),
        };
        repr.emit(&mut arp::Packet::new_unchecked(&mut f[14..]));
        f
    }

    #[test]
    fn gateway_frames_stay_local_and_are_never_answered_from_records() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let vni = Vni::new(100).unwrap();
        let gateway = ip([198, 19, 0, 1]);
        // A remote record that (wrongly) carries the gateway address, e.g. another host's bridge.
        let remote = MacAddr([2, 0x19, 0, 0, 2, 1]);
        fw.handle_control(ControlUpdate::Endpoint { vni, mac: remote, vtep: ip(H2), ips: vec![gateway] });
        assert_eq!(fw.neighbor(vni, gateway), None);
        // A container asking for the gateway: the local bridge answers; nothing floods, nothing is suppressed.
        let ask = arp_request(MAC_A, [198, 19, 0, 11], [198, 19, 0, 1]);
        assert_eq!(fw.handle_tap_frame(now, 0, &ask), Egress::Local);
        // The bridge asking for a container (sender = gateway) stays local too, and is not a local endpoint.
        let from_bridge = arp_request(BRIDGE, [198, 19, 0, 1], [198, 19, 0, 21]);
        assert_eq!(fw.handle_tap_frame(now, 0, &from_bridge), Egress::Local);
        assert_eq!(fw.poll_local_event(), None);
        assert_eq!((fw.stats().suppressed, fw.stats().kept_local, fw.stats().tx_flooded), (0, 2, 0));
    }

    #[test]
    fn the_bridges_own_frames_are_forwarded_but_never_discovered() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let vni = Vni::new(100).unwrap();
        let remote = MacAddr([2, 0x19, 0, 0, 2, 1]);
        fw.handle_control(ControlUpdate::Endpoint { vni, mac: remote, vtep: ip(H2), ips: vec![ip([198, 19, 0, 21])] });
        // The bridge's IPv6 link-local chatter (MLD reports to 33:33:00:00:00:16) floods as before.
        let mld = frame(MacAddr([0x33, 0x33, 0, 0, 0, 0x16]), BRIDGE);
        assert!(matches!(fw.handle_tap_frame(now, 0, &mld), Egress::Flood { .. }));
        // The bridge asking for a remote endpoint from an address of its own (the ingress address) is answered.
        let ask = arp_request(BRIDGE, [198, 19, 0, 200], [198, 19, 0, 21]);
        assert_eq!(fw.handle_tap_frame(now, 0, &ask), Egress::Answer { mac: remote });
        // Neither made the bridge a local endpoint; the same frames from a container do.
        assert_eq!(fw.poll_local_event(), None);
        assert_eq!(fw.local_endpoints().iter().count(), 0);
        assert!(matches!(
            fw.handle_tap_frame(now, 0, &frame(MacAddr([0x33, 0x33, 0, 0, 0, 0x16]), MAC_A)),
            Egress::Flood { .. }
        ));
        assert_eq!(fw.poll_local_event(), Some(LocalEvent::Seen { network: 0, mac: MAC_A, ips: vec![] }));
    }

    #[test]
    fn neighbour_queries_are_answered_for_remote_endpoints_and_kept_local_for_local_ones() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let vni = Vni::new(100).unwrap();
        let remote = MacAddr([2, 0x19, 0, 0, 2, 1]);
        fw.handle_control(ControlUpdate::Endpoint { vni, mac: remote, vtep: ip(H2), ips: vec![ip([198, 19, 0, 21])] });
        // The request also teaches the forwarder that MAC_A with 198.19.0.11 is local.
        let query = arp_request(MAC_A, [198, 19, 0, 11], [198, 19, 0, 21]);
        assert_eq!(fw.handle_tap_frame(now, 0, &query), Egress::Answer { mac: remote });
        assert_eq!(
            fw.poll_local_event(),
            Some(LocalEvent::Seen { network: 0, mac: MAC_A, ips: vec![ip([198, 19, 0, 11])] })
        );
        assert_eq!(fw.poll_local_event(), None);
        let mac_c = MacAddr([2, 0x19, 0, 0, 1, 2]);
        assert_eq!(fw.handle_tap_frame(now, 0, &arp_request(mac_c, [198, 19, 0, 12], [198, 19, 0, 11])), Egress::Local);
        // Unknown targets still flood.
        let unknown = arp_request(MAC_A, [198, 19, 0, 11], [198, 19, 0, 99]);
        assert!(matches!(fw.handle_tap_frame(now, 0, &unknown), Egress::Flood { .. }));
        assert_eq!((fw.stats().suppressed, fw.stats().kept_local), (1, 1));
        // Silence withdraws local endpoints.
        while fw.poll_local_event().is_some() {}
        fw.handle_timeout(now + Duration::from_secs(300));
        let mut gone: Vec<LocalEvent> = std::iter::from_fn(|| fw.poll_local_event()).collect();
        gone.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            gone,
            vec![LocalEvent::Gone { network: 0, mac: MAC_A }, LocalEvent::Gone { network: 0, mac: mac_c }]
        );
    }

    #[test]
    fn known_unicast_goes_to_its_vtep_and_the_rest_floods_without_self() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        assert!(
            matches!(fw.handle_tap_frame(now, 0, &frame(MAC_B, MAC_A)), Egress::Unicast { vtep, .. } if vtep == ip(H2))
        );
        match fw.handle_tap_frame(now, 0, &frame(MacAddr::BROADCAST, MAC_A)) {
            Egress::Flood { vteps, .. } => assert_eq!(vteps, &[ip(H2), ip(H3)]),
            other => panic!("expected flood, got {other:?}"),
        }
        assert_eq!(fw.stats().tx_unicast, 1);
        assert_eq!(fw.stats().tx_datagrams, 3);
    }

    #[test]
    fn flooding_is_rate_limited() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let unknown = frame(MacAddr([2, 9, 9, 9, 9, 9]), MAC_A);
        assert!(matches!(fw.handle_tap_frame(now, 0, &unknown), Egress::Flood { .. }));
        assert!(matches!(fw.handle_tap_frame(now, 0, &unknown), Egress::Flood { .. }));
        assert_eq!(fw.handle_tap_frame(now, 0, &unknown), Egress::Drop(DropReason::FloodLimited));
        let later = now + Duration::from_millis(100); // 10/s refills one token in 100 ms
        assert!(matches!(fw.handle_tap_frame(later, 0, &unknown), Egress::Flood { .. }));
        assert_eq!(fw.stats().drops(DropReason::FloodLimited), 1);
    }

    #[test]
    fn receive_validates_and_counts_each_reason() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Off);
        let inner = frame(MAC_A, MAC_B);
        let ok = vxlan_datagram(200, &inner);
        assert_eq!(fw.handle_underlay(now, ip(H2), &ok), Ok(Ingress { network: 1, frame: 8..8 + inner.len() }));

        assert_eq!(fw.handle_underlay(now, ip(H2), &ok[..7]), Err(DropReason::Malformed));
        let mut no_flag = ok.clone();
        no_flag[0] = 0;
        assert_eq!(fw.handle_underlay(now, ip(H2), &no_flag), Err(DropReason::NoVniFlag));
        assert_eq!(fw.handle_underlay(now, ip(H2), &vxlan_datagram(300, &inner)), Err(DropReason::UnknownVni));
        let stranger = ip([198, 18, 0, 99]);
        assert_eq!(fw.handle_underlay(now, stranger, &ok), Err(DropReason::UnknownSender));
        assert_eq!(fw.handle_underlay(now, ip(H2), &ok[..8 + 13]), Err(DropReason::Malformed));
        let group_src = vxlan_datagram(200, &frame(MAC_A, MacAddr::BROADCAST));
        assert_eq!(fw.handle_underlay(now, ip(H2), &group_src), Err(DropReason::BadSourceMac));

        let s = fw.stats();
        assert_eq!(s.rx_frames, 1);
        for reason in DropReason::ALL {
            let expected = match reason {
                DropReason::Malformed => 2,
                DropReason::NoVniFlag
                | DropReason::UnknownVni
                | DropReason::UnknownSender
                | DropReason::BadSourceMac => 1,
                _ => 0,
            };
            assert_eq!(s.drops(reason), expected, "{}", reason.as_str());
        }
    }

    #[test]
    fn learning_from_peers_only_by_default() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Peers);
        let mac_c = MacAddr([2, 0x19, 0, 0, 3, 1]);
        assert!(fw.handle_underlay(now, ip(H3), &vxlan_datagram(100, &frame(MAC_A, mac_c))).is_ok());
        assert!(
            matches!(fw.handle_tap_frame(now, 0, &frame(mac_c, MAC_A)), Egress::Unicast { vtep, .. } if vtep == ip(H3))
        );
        let stranger = ip([198, 18, 0, 99]);
        let from_stranger = vxlan_datagram(100, &frame(MAC_A, MacAddr([2, 0x19, 0, 0, 99, 1])));
        assert_eq!(fw.handle_underlay(now, stranger, &from_stranger), Err(DropReason::UnknownSender));
        assert_eq!(fw.stats().learned, 1);
    }

    #[test]
    fn learning_any_accepts_any_sender_and_learns_its_macs() {
        let now = Instant::now();
        let mut fw = forwarder(now, Learning::Any);
        let stranger = ip([198, 18, 0, 99]);
        let mac_c = MacAddr([2, 0x19, 0, 0, 99, 1]);
        assert!(fw.handle_underlay(now, stranger, &vxlan_datagram(100, &frame(MAC_A, mac_c))).is_ok());
        assert_eq!(fw.stats().learned, 1);
        assert!(
            matches!(fw.handle_tap_frame(now, 0, &frame(mac_c, MAC_A)), Egress::Unicast { vtep, .. } if vtep == stranger)
        );
        // Network 1 does not learn: the same MAC is unknown there and floods.
        assert!(matches!(fw.handle_tap_frame(now, 1, &frame(mac_c, MAC_A)), Egress::Flood { .. }));
    }

    #[test]
    fn encapsulate_writes_rfc7348_header_in_front() {
        let inner = frame(MAC_A, MAC_B);
        let datagram = vxlan_datagram(0x12_3456, &inner);
        assert_eq!(&datagram[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&datagram[8..], &inner[..]);
    }
}
