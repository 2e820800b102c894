//! The control-plane task: drives the sans-IO [`Gossip`] node over the QUIC [`Transport`], announces this host's
//! networks and discovered endpoints, and feeds gossiped endpoints to the data path.
//!
//! ```text
//!  TransportEvent ──► Gossip::handle_message ─┐                    ┌─► Transport::send_{datagram,message}
//!  timer ───────────► Gossip::handle_timeout ─┼─► Gossip ──────────┤
//!  LocalEvent (datapath) ─► set/remove_record ┘                    └─► Event ─► Directory ─► ControlUpdate ─► datapath
//!
//!  keying messages (tag ≥ 0x40) ─► Keyring ─► KeyEvent (SAs) ─► datapath (and the keylog, when asked for)
//!  member up/down ─► Keyring::add_peer / remove_peer;   SA usage (datapath) ─► Keyring::report_usage
//!
//!  record table changed ─► Catalog (services + labelled endpoints) ─► ingress (watch);  winning service
//!  definitions are re-published as this node's own (adoption), so a service outlives the host it was published on
//!  AgentCommand (API: service publish / rm) ─► svc/<name> record with a newer revision
//!  AgentCommand (api: attach/detach) ─► Ipam (blk/ claims) and own ep/ records; every ep/ record ─► Names (DNS)
//!  Catalog ─► IngressAddresses ─► Ipam (this host's ingress address per network) ─► ep/ record of the bridge MAC,
//!                                  and the addresses (watch) ─► daemon: on the bridge, then to the ingress
//! ```
//!
//! Endpoints registered by `weft attach` carry a name and labels; frame-based discovery never overwrites or
//! withdraws them (only `weft detach` does).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use overlay_proto::codec::Codec;
use overlay_proto::directory::Directory;
use overlay_proto::endpoint::{EndpointRecord, NetworkRecord, RecordKey};
use overlay_proto::gossip::{Event, Gossip, GossipConfig, GossipStats, LocalNode, MemberHealth};
use overlay_proto::ingress_address::{IngressAddressEvent, IngressAddresses, IngressNetwork};
use overlay_proto::ipam::{Ipam, IpamAction, IpamConfig, IpamStats};
use overlay_proto::keying::{KeyEvent, KeyingConfig, KeyingStats, Keyring, TAG_BASE};
use overlay_proto::local::{LocalEvent, LocalMerge};
use overlay_proto::names::Names;
use overlay_proto::service::{parse_service_key, service_key, Catalog, ServiceRecord};
use overlay_proto::{MacAddr, NodeId, Vni};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use weft_crypto::keys::{keylog_line, SecretRng};

use super::pki::{NodeIdentity, PkiAuthenticator};
use super::transport::{Transport, TransportConfig, TransportEvent, TransportStatsSnapshot};
use crate::clock;
use crate::io::datapath::{DatapathEvent, DatapathHandle, Query};

/// A member as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberInfo {
    /// Node id (hex).
    pub id: String,
    /// Configured name.
    pub name: String,
    /// Control address.
    pub addr: SocketAddr,
    /// VTEP.
    pub vtep: IpAddr,
}

/// What the API shows of the control plane.
#[derive(Debug, Clone, Default)]
pub struct ControlStatus {
    /// This node's id.
    pub id: String,
    /// Live members (suspects included), this node excluded.
    pub members: Vec<MemberInfo>,
    /// Gossip counters.
    pub gossip: GossipStats,
    /// Gossip records that did not decode.
    pub undecodable: u64,
    /// A digest of the visible record table, equal on hosts that agree.
    pub table_digest: u64,
    /// Key agreement counters, when a network is encrypted.
    pub keying: Option<KeyingStats>,
    /// Current SA epoch per peer id: (epoch, when it was agreed).
    pub epochs: Vec<(String, u64, std::time::Instant)>,
    /// What the probes measured of each live member (state, round trip, clock offset).
    pub health: Vec<(NodeId, MemberHealth)>,
    /// How long this node's table has been known to differ from a member's (see `Gossip::convergence_lag`).
    pub convergence_lag: Duration,
    /// Address management counters.
    pub ipam: IpamStats,
    /// Address blocks this host holds: (VNI, first address, prefix length).
    pub blocks: Vec<(Vni, Ipv4Addr, u8)>,
    /// QUIC transport counters: handshakes refused, connect failures, datagrams and messages dropped.
    pub transport: TransportStatsSnapshot,
}

/// An address pool `weft attach` hands addresses out of.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The network.
    pub vni: Vni,
    /// Its IPv4 subnet's network address.
    pub network: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The block size hosts claim.
    pub block_prefix: u8,
    /// Never handed out.
    pub gateway: Ipv4Addr,
}

/// What the API asks of the control plane.
#[derive(Debug)]
pub enum AgentCommand {
    /// An address for a new endpoint: `requested`, or any free one. The answer may wait for a block claim to settle.
    Allocate {
        /// The network.
        vni: Vni,
        /// A specific address, or `None` for any.
        requested: Option<Ipv4Addr>,
        /// The address, or why not.
        reply: AddressReply,
    },
    /// Gives an address back.
    Release {
        /// The network.
        vni: Vni,
        /// The address.
        ip: Ipv4Addr,
    },
    /// Publishes an attached endpoint.
    Register(EndpointRecord),
    /// Withdraws an attached endpoint.
    Withdraw {
        /// The network.
        vni: Vni,
        /// Its MAC.
        mac: MacAddr,
        /// Answered once the record and its name are gone, so the name can be attached again at once.
        done: oneshot::Sender<()>,
    },
    /// Publish (or re-define) a service cluster-wide. Its revision is set by the agent.
    PublishService {
        /// The definition.
        record: ServiceRecord,
        /// The definition as published.
        reply: oneshot::Sender<ServiceRecord>,
    },
    /// Remove a service cluster-wide; an error if there is no such service.
    RemoveService {
        /// Its name.
        name: String,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// How long an allocation may wait for a block claim before it fails.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where QUIC listens.
    pub listen: SocketAddr,
    /// Seed addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// This host's VTEP.
    pub vtep: IpAddr,
    /// This host's name.
    pub name: String,
    /// The networks, in the data path's order.
    pub vnis: Vec<Vni>,
    /// Key agreement settings, when any network is encrypted.
    pub keying: Option<KeyingConfig>,
    /// Where to append Wireshark ESP SA rows (debug only).
    pub keylog: Option<PathBuf>,
    /// Services to publish at start (`[[service]]`), written with the start time as their revision.
    pub services: Vec<ServiceRecord>,
    /// Where the catalog of services and backends goes (the ingress).
    pub catalog: Option<watch::Sender<Arc<Catalog>>>,
    /// Address pools for `weft attach`.
    pub pools: Vec<PoolConfig>,
    /// Each network's bridge MAC and configured ingress address, for this host's ingress addresses.
    pub ingress_networks: Vec<IngressNetwork>,
    /// Where this host's ingress address per network goes (the daemon puts them on the bridges).
    pub ingress_addresses: Option<watch::Sender<BTreeMap<Vni, IpAddr>>>,
}

/// The operating system's CSPRNG, for key shares.
struct OsRng(ring::rand::SystemRandom);

impl SecretRng for OsRng {
    fn fill(&mut self, dest: &mut [u8]) {
        ring::rand::SecureRandom::fill(&self.0, dest).expect("the operating system's random source failed");
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct Agent {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Shared with the API.
    pub status: Arc<Mutex<ControlStatus>>,
    /// Requests from the API.
    pub commands: mpsc::Sender<AgentCommand>,
    /// Every endpoint of the cluster by name and service (readers: DNS, API, ingress).
    pub names: Arc<std::sync::RwLock<Names>>,
}

impl Agent {
    /// Binds the transport and starts the task. Must run inside the tokio runtime.
    pub fn start(
        config: AgentConfig,
        identity: Arc<NodeIdentity>,
        datapath: DatapathHandle,
        datapath_events: mpsc::Receiver<DatapathEvent>,
    ) -> anyhow::Result<Self> {
        let (transport, events) = Transport::bind(TransportConfig::new(config.listen, identity.clone()))?;
        let now = clock::now();
        let local = LocalNode {
            addr: config.listen,
            vtep: config.vtep,
            name: config.name.clone(),
            incarnation: clock::wall_millis(),
        };
        let seed = u64::from_le_bytes(identity.id().0[..8].try_into().expect("16-byte id")) ^ local.incarnation;
        let mut gossip =
            Gossip::new(GossipConfig::default(), PkiAuthenticator::new(identity.clone()), local, seed, now);
        gossip.set_wall_clock(now, clock::wall_millis());
        let status = Arc::new(Mutex::new(ControlStatus { id: identity.id().to_string(), ..ControlStatus::default() }));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut ipam = Ipam::new(identity.id(), IpamConfig::default());
        for pool in &config.pools {
            ipam.add_network(pool.vni, pool.network, pool.prefix, Some(pool.block_prefix), pool.gateway)
                .map_err(|e| anyhow::anyhow!("address pool of network {}: {e}", pool.vni))?;
        }
        let ingress = IngressAddresses::new(config.vtep, &config.ingress_networks, &mut ipam);
        let names = Arc::new(std::sync::RwLock::new(Names::default()));
        let (commands, commands_rx) = mpsc::channel(256);
        let keyring =
            config.keying.clone().map(|k| Keyring::new(k, identity.id(), clock::wall_millis(), seed.rotate_left(17)));
        let keylog = match &config.keylog {
            Some(path) => {
                warn!(
                    path = %path.display(),
                    "WRITING ENCRYPTION KEYS TO A KEYLOG: anyone who can read it can decrypt this host's traffic (debug only)"
                );
                Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
            }
            None => None,
        };
        let driver = Driver {
            gossip,
            keyring,
            keylog,
            rng: OsRng(ring::rand::SystemRandom::new()),
            transport,
            directory: Directory::default(),
            datapath,
            config,
            status: status.clone(),
            digest_dirty: true,
            catalog: Arc::new(Catalog::default()),
            catalog_digest: None,
            ipam,
            ingress,
            pending: Vec::new(),
            attached: HashMap::new(),
            local: LocalMerge::default(),
            names: names.clone(),
        };
        let task = tokio::spawn(driver.run(events, datapath_events, commands_rx, shutdown_rx));
        Ok(Self { shutdown, task, status, commands, names })
    }

    /// Announces the leave, flushes it, and stops.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// An allocation waiting for a block claim to settle: (give up at, VNI, requested address, reply).
type PendingAllocation = (std::time::Instant, Vni, Option<Ipv4Addr>, AddressReply);
type AddressReply = oneshot::Sender<Result<Ipv4Addr, String>>;

struct Driver {
    gossip: Gossip<PkiAuthenticator>,
    keyring: Option<Keyring>,
    keylog: Option<std::fs::File>,
    rng: OsRng,
    transport: Transport,
    directory: Directory,
    datapath: DatapathHandle,
    config: AgentConfig,
    status: Arc<Mutex<ControlStatus>>,
    /// The record table changed (a gossip event, or a record of our own) since the status last showed it.
    digest_dirty: bool,
    /// The services and backends as of `catalog_digest`.
    catalog: Arc<Catalog>,
    /// The table digest the catalog was built at.
    catalog_digest: Option<u64>,
    ipam: Ipam,
    /// This host's own address per network for the ingress mesh.
    ingress: IngressAddresses,
    /// Allocations waiting for a block claim to settle.
    pending: Vec<PendingAllocation>,
    /// Endpoints registered by attach, which discovery leaves alone.
    attached: HashMap<(Vni, MacAddr), EndpointRecord>,
    /// Joins the discovered endpoints of the data-path workers.
    local: LocalMerge,
    names: Arc<std::sync::RwLock<Names>>,
}

impl Driver {
    async fn run(
        mut self,
        mut net: mpsc::Receiver<TransportEvent>,
        mut local: mpsc::Receiver<DatapathEvent>,
        mut commands: mpsc::Receiver<AgentCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let now = clock::now();
        for vni in self.config.vnis.clone() {
            let record = NetworkRecord { vni, vtep: self.config.vtep };
            self.gossip.set_record(now, RecordKey::Network(vni).to_bytes(), record.to_bytes());
        }
        for record in std::mem::take(&mut self.config.services) {
            info!(service = %record.name, port = record.port, "publishing a configured service");
            self.gossip.set_record(now, service_key(&record.name), record.to_bytes());
        }
        self.gossip.join(now, &self.config.seeds);
        self.flush();
        info!(id = %self.gossip.id(), listen = %self.config.listen, seeds = self.config.seeds.len(), "control plane up");
        loop {
            let keying_deadline = self.keyring.as_ref().and_then(Keyring::poll_timeout);
            let ipam_deadline = self.ipam.poll_timeout().filter(|_| !self.pending.is_empty());
            let ingress_deadline = self.ingress.poll_timeout();
            let deadline = (self.gossip.poll_timeout().into_iter().chain(keying_deadline).chain(ipam_deadline))
                .chain(ingress_deadline)
                .min()
                .unwrap_or_else(|| clock::now() + Duration::from_secs(1));
            tokio::select! {
                event = net.recv() => match event {
                    Some(event) => self.on_transport(event),
                    None => break,
                },
                Some(event) = local.recv() => self.on_datapath(event),
                Some(command) = commands.recv() => self.on_command(command),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    let now = clock::now();
                    // Follow steps of the wall clock (acks report it, for the peers' skew checks).
                    self.gossip.set_wall_clock(now, clock::wall_millis());
                    self.gossip.handle_timeout(now);
                    self.ipam.handle_timeout(now);
                    if let Some(keyring) = &mut self.keyring {
                        keyring.handle_timeout(now, &mut self.rng);
                    }
                }
                _ = shutdown.changed() => {
                    self.gossip.leave();
                    self.flush();
                    // Give the leave notices a moment to leave the host before the endpoint closes.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
            self.flush();
        }
        self.transport.close();
    }

    fn on_transport(&mut self, event: TransportEvent) {
        match event {
            TransportEvent::Message { from, addr, data } if data.first().is_some_and(|t| *t >= TAG_BASE) => {
                let Some(keyring) = &mut self.keyring else { return };
                if let Err(e) = keyring.handle_message(clock::now(), &mut self.rng, from, &data) {
                    debug!(peer = ?from, %addr, error = %e, "keying message refused");
                }
            }
            TransportEvent::Datagram { from, addr, data } | TransportEvent::Message { from, addr, data } => {
                if let Err(e) = self.gossip.handle_message(clock::now(), from, addr, &data) {
                    debug!(peer = ?from, %addr, error = %e, "gossip message refused");
                }
            }
            TransportEvent::Refused { addr, reason } => warn!(%addr, %reason, "refused a control-plane peer"),
            TransportEvent::PeerUp { id, addr } => {
                debug!(peer = ?id, %addr, "connection up");
                // A peer that restarted dials in afresh: let its key request be answered at once.
                if let Some(keyring) = &mut self.keyring {
                    keyring.peer_reconnected(&id);
                }
            }
            TransportEvent::PeerDown { id, addr } => debug!(peer = ?id, %addr, "connection down"),
        }
    }

    fn on_datapath(&mut self, event: DatapathEvent) {
        let now = clock::now();
        self.digest_dirty = true;
        let event = match event {
            DatapathEvent::Local { worker, event } => match self.local.apply(worker, event) {
                Some(event) => event,
                None => return,
            },
            DatapathEvent::SaUsage(usage) => {
                if let Some(keyring) = &mut self.keyring {
                    for (vtep, packets, bytes) in usage {
                        keyring.report_usage(now, &mut self.rng, vtep, packets, bytes);
                    }
                }
                return;
            }
        };
        match event {
            LocalEvent::Seen { network, mac, .. } | LocalEvent::Gone { network, mac }
                if self.attached.contains_key(&(self.config.vnis[network], mac)) => {}
            LocalEvent::Seen { network, mac, ips } => {
                let vni = self.config.vnis[network];
                let record =
                    EndpointRecord { vni, mac, ips, vtep: self.config.vtep, name: String::new(), labels: vec![] };
                debug!(%vni, %mac, ips = ?record.ips, "local endpoint");
                self.gossip.set_record(now, RecordKey::Endpoint(vni, mac).to_bytes(), record.to_bytes());
            }
            LocalEvent::Gone { network, mac } => {
                let vni = self.config.vnis[network];
                debug!(%vni, %mac, "local endpoint gone");
                self.gossip.remove_record(now, RecordKey::Endpoint(vni, mac).to_bytes());
            }
        }
    }

    fn on_command(&mut self, command: AgentCommand) {
        let now = clock::now();
        // A new service definition must beat the one in force everywhere, even if this host's clock is behind.
        let revision = |name: &str, catalog: &Catalog| {
            clock::wall_millis().max(catalog.definition(name).map_or(0, |d| d.revision.saturating_add(1)))
        };
        match command {
            AgentCommand::Allocate { vni, requested, reply } => {
                self.pending.push((now + ALLOCATE_TIMEOUT, vni, requested, reply));
            }
            AgentCommand::Release { vni, ip } => self.ipam.release(vni, ip),
            AgentCommand::Register(record) => {
                let record = EndpointRecord { vtep: self.config.vtep, ..record };
                let key = RecordKey::Endpoint(record.vni, record.mac).to_bytes();
                info!(vni = %record.vni, mac = %record.mac, name = %record.name, ips = ?record.ips, "endpoint attached");
                self.gossip.set_record(now, key, record.to_bytes());
                self.set_name(self.gossip.id(), record.clone());
                self.attached.insert((record.vni, record.mac), record);
                self.digest_dirty = true;
            }
            AgentCommand::Withdraw { vni, mac, done } => {
                info!(%vni, %mac, "endpoint detached");
                self.attached.remove(&(vni, mac));
                self.gossip.remove_record(now, RecordKey::Endpoint(vni, mac).to_bytes());
                if let Ok(mut names) = self.names.write() {
                    names.remove(self.gossip.id(), vni, mac);
                }
                self.digest_dirty = true;
                let _ = done.send(());
            }
            AgentCommand::PublishService { mut record, reply } => {
                record.revision = revision(&record.name, &self.catalog);
                record.removed = false;
                info!(service = %record.name, port = record.port, target = record.target, "publishing a service");
                self.gossip.set_record(now, service_key(&record.name), record.to_bytes());
                let _ = reply.send(record);
            }
            AgentCommand::RemoveService { name, reply } => {
                let Some(current) = self.catalog.definition(&name).filter(|d| !d.removed).cloned() else {
                    let _ = reply.send(Err(format!("no service named {name:?}")));
                    return;
                };
                let record = ServiceRecord { revision: revision(&name, &self.catalog), removed: true, ..current };
                info!(service = %name, "removing a service");
                self.gossip.set_record(now, service_key(&name), record.to_bytes());
                let _ = reply.send(Ok(()));
            }
        }
        self.refresh_catalog();
    }

    /// Rebuilds the catalog when the record table changed, hands it to the ingress, and adopts the winning service
    /// definitions this node does not publish yet.
    fn refresh_catalog(&mut self) {
        let digest = self.gossip.table_digest();
        if self.catalog_digest == Some(digest) {
            return;
        }
        self.catalog_digest = Some(digest);
        let catalog = Catalog::from_records(self.gossip.records());
        let me = self.gossip.id();
        let own: BTreeMap<String, ServiceRecord> = self
            .gossip
            .records()
            .filter(|(origin, _, _)| *origin == me)
            .filter_map(|(_, key, value)| {
                Some((parse_service_key(key)?.to_owned(), ServiceRecord::from_bytes(value).ok()?))
            })
            .collect();
        let now = clock::now();
        for record in catalog.adopt(me, &own) {
            debug!(service = %record.name, revision = record.revision, removed = record.removed, "adopting a service definition");
            self.gossip.set_record(now, service_key(&record.name), record.to_bytes());
        }
        self.ingress.handle_catalog(&catalog);
        self.catalog = Arc::new(catalog);
        if let Some(tx) = &self.config.catalog {
            tx.send_replace(self.catalog.clone());
        }
    }

    fn set_name(&self, origin: NodeId, record: EndpointRecord) {
        if let Ok(mut names) = self.names.write() {
            names.set(origin, record);
        }
    }

    /// Answers the allocations that can be answered, claiming blocks for the others (this host's ingress addresses
    /// first).
    fn serve_allocations(&mut self) {
        let (now, wall) = (clock::now(), clock::wall_millis());
        self.ingress.handle_timeout(now, wall, &mut self.ipam);
        let mut waiting = Vec::new();
        for (deadline, vni, requested, reply) in std::mem::take(&mut self.pending) {
            match self.ipam.allocate(now, wall, vni, requested) {
                Ok(Some(ip)) => {
                    if reply.send(Ok(ip)).is_err() {
                        self.ipam.release(vni, ip); // the API gave up waiting
                    }
                }
                Ok(None) if now < deadline => waiting.push((deadline, vni, requested, reply)),
                Ok(None) => {
                    let _ = reply.send(Err("timed out waiting for an address block claim to settle".into()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        self.pending = waiting;
        while let Some(action) = self.ipam.poll_action() {
            self.digest_dirty = true;
            match action {
                IpamAction::SetRecord { key, value } => {
                    debug!(key = ?key, "claiming an address block");
                    self.gossip.set_record(now, key, value);
                }
                IpamAction::RemoveRecord { key } => {
                    info!(key = ?key, "lost an address block to an earlier claim; claiming another");
                    self.gossip.remove_record(now, key);
                }
            }
        }
        self.flush_ingress_addresses();
    }

    /// Publishes this host's ingress address records and hands the addresses to the daemon.
    fn flush_ingress_addresses(&mut self) {
        let now = clock::now();
        while let Some(action) = self.ingress.poll_action() {
            self.digest_dirty = true;
            match action {
                IpamAction::SetRecord { key, value } => {
                    if let Ok(record) = EndpointRecord::from_bytes(&value) {
                        self.set_name(self.gossip.id(), record);
                    }
                    self.gossip.set_record(now, key, value);
                }
                IpamAction::RemoveRecord { key } => {
                    if let (Some(RecordKey::Endpoint(vni, mac)), Ok(mut names)) =
                        (RecordKey::parse(&key), self.names.write())
                    {
                        names.remove(self.gossip.id(), vni, mac);
                    }
                    self.gossip.remove_record(now, key);
                }
            }
        }
        let mut changed = false;
        while let Some(event) = self.ingress.poll_event() {
            changed = true;
            match event {
                IngressAddressEvent::Assigned { vni, addr } => info!(%vni, %addr, "ingress address assigned"),
                IngressAddressEvent::Lost { vni, addr } => {
                    warn!(%vni, %addr, "ingress address given up: its block went to an earlier claim")
                }
                IngressAddressEvent::Unavailable { vni, error } => warn!(
                    %vni, error = %error,
                    "no ingress address: backends on other hosts are not reachable from this host until one is free"
                ),
            }
        }
        if let Some(tx) = self.config.ingress_addresses.as_ref().filter(|_| changed) {
            tx.send_replace(self.ingress.addresses());
        }
    }

    /// Sends what the gossip node wants sent and applies what it learnt.
    fn flush(&mut self) {
        self.serve_allocations();
        while let Some(t) = self.gossip.poll_transmit() {
            let data = Bytes::from(t.payload);
            if t.reliable {
                self.transport.send_message(t.to, data);
            } else {
                self.transport.send_datagram(t.to, data);
            }
        }
        let mut members_changed = false;
        let now = clock::now();
        while let Some(event) = self.gossip.poll_event() {
            self.digest_dirty = true;
            match &event {
                Event::MemberUp { id, name, vtep, addr } => {
                    info!(peer = %name, id = ?id, %vtep, "member up");
                    members_changed = true;
                    if let Some(keyring) = &mut self.keyring {
                        keyring.add_peer(now, &mut self.rng, *id, *addr, *vtep);
                    }
                }
                Event::MemberDown { id } => {
                    info!(id = ?id, "member down");
                    members_changed = true;
                    if let Some(keyring) = &mut self.keyring {
                        keyring.remove_peer(id);
                    }
                }
                Event::RecordSet { origin, key, value } => {
                    if let Some(RecordKey::Endpoint(..)) = RecordKey::parse(key) {
                        if let Ok(record) = EndpointRecord::from_bytes(value) {
                            self.set_name(*origin, record);
                        }
                    }
                }
                Event::RecordRemoved { origin, key } => {
                    if let Some(RecordKey::Endpoint(vni, mac)) = RecordKey::parse(key) {
                        if let Ok(mut names) = self.names.write() {
                            names.remove(*origin, vni, mac);
                        }
                    }
                }
            }
            self.ipam.handle_event(now, &event);
            for update in self.directory.handle_event(&event) {
                if self.datapath.send(Query::Control(update)).is_err() {
                    warn!("data path queue full: a control-plane update was dropped; anti-entropy will repair it");
                }
            }
        }
        let keys_changed = self.flush_keys();
        self.refresh_catalog();
        let Ok(mut status) = self.status.lock() else { return };
        if members_changed {
            status.members = self
                .gossip
                .live_members()
                .map(|(id, a)| MemberInfo { id: id.to_string(), name: a.name.clone(), addr: a.addr, vtep: a.vtep })
                .collect();
            status.members.sort_by(|a, b| a.name.cmp(&b.name));
        }
        status.gossip = self.gossip.stats().clone();
        status.health.clear();
        status.health.extend(self.gossip.member_health());
        status.convergence_lag = self.gossip.convergence_lag(now);
        status.undecodable = self.directory.undecodable;
        status.ipam = self.ipam.stats().clone();
        status.blocks = self.ipam.my_blocks(now);
        status.transport = self.transport.stats().snapshot();
        // The digest and the epochs change only with gossip and key events; most loops handle a probe.
        if std::mem::take(&mut self.digest_dirty) {
            status.table_digest = self.gossip.table_digest();
        }
        if let Some(keyring) = &self.keyring {
            status.keying = Some(keyring.stats().clone());
            if keys_changed || members_changed {
                status.epochs = self
                    .gossip
                    .live_members()
                    .filter_map(|(id, _)| keyring.epoch(&id).map(|(epoch, at)| (id.to_string(), epoch, at)))
                    .collect();
            }
        }
    }

    /// Sends keying messages and hands SA changes to the data path (and the keylog). Returns whether SAs changed.
    fn flush_keys(&mut self) -> bool {
        let Some(keyring) = &mut self.keyring else { return false };
        let mut changed = false;
        // SA changes reach the data path's queue before the messages that let the peer use them go out; the data
        // path applies its queue before it calls an SPI unknown (make-before-break).
        while let Some(event) = keyring.poll_event() {
            changed = true;
            let local = self.config.vtep;
            match &event {
                KeyEvent::InstallInbound { vtep, spi, keys, epoch } => {
                    debug!(%vtep, %spi, epoch, "inbound SA installed");
                    write_keylog(&mut self.keylog, &keylog_line(*vtep, local, *spi, keys));
                }
                KeyEvent::SetOutbound { vtep, spi, keys, epoch } => {
                    info!(%vtep, %spi, epoch, "outbound SA switched");
                    write_keylog(&mut self.keylog, &keylog_line(local, *vtep, *spi, keys));
                }
                KeyEvent::RemoveInbound { spi } => debug!(%spi, "inbound SA retired"),
                KeyEvent::RemoveOutbound { vtep } => debug!(%vtep, "outbound SA removed"),
            }
            if self.datapath.send(Query::Key(event.into())).is_err() {
                warn!("data path queue full: an SA change was dropped");
            }
        }
        while let Some((to, bytes)) = keyring.poll_transmit() {
            self.transport.send_message(to, Bytes::from(bytes));
        }
        changed
    }
}

fn write_keylog(file: &mut Option<std::fs::File>, line: &str) {
    if let Some(f) = file {
        if let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush()) {
            warn!(error = %e, "cannot write the keylog");
        }
    }
}
