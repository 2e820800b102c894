//! The control-plane task: drives the sans-IO [`Gossip`] node over the QUIC [`Transport`], announces this host's
//! networks and discovered endpoints, and feeds gossiped endpoints to the data path.
//!
//! ```text
//!  TransportEvent ──► Gossip::handle_message ─┐                    ┌─► Transport::send_{datagram,message}
//!  timer ───────────► Gossip::handle_timeout ─┼─► Gossip ──────────┤
//!  LocalEvent (datapath) ─► set/remove_record ┘                    └─► Event ─► Directory ─► ControlUpdate ─► datapath
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use overlay_proto::codec::Codec;
use overlay_proto::directory::Directory;
use overlay_proto::endpoint::{EndpointRecord, NetworkRecord, RecordKey};
use overlay_proto::gossip::{Event, Gossip, GossipConfig, GossipStats, LocalNode};
use overlay_proto::local::LocalEvent;
use overlay_proto::Vni;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::pki::{NodeIdentity, PkiAuthenticator};
use super::transport::{Transport, TransportConfig, TransportEvent};
use crate::clock;
use crate::io::datapath::{DatapathHandle, Query};

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
}

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
}

/// A running control plane.
#[derive(Debug)]
pub struct Agent {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Shared with the API.
    pub status: Arc<Mutex<ControlStatus>>,
}

impl Agent {
    /// Binds the transport and starts the task. Must run inside the tokio runtime.
    pub fn start(
        config: AgentConfig,
        identity: Arc<NodeIdentity>,
        datapath: DatapathHandle,
        local_events: mpsc::Receiver<LocalEvent>,
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
        let gossip = Gossip::new(GossipConfig::default(), PkiAuthenticator::new(identity.clone()), local, seed, now);
        let status = Arc::new(Mutex::new(ControlStatus { id: identity.id().to_string(), ..ControlStatus::default() }));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let driver =
            Driver { gossip, transport, directory: Directory::default(), datapath, config, status: status.clone() };
        let task = tokio::spawn(driver.run(events, local_events, shutdown_rx));
        Ok(Self { shutdown, task, status })
    }

    /// Announces the leave, flushes it, and stops.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

struct Driver {
    gossip: Gossip<PkiAuthenticator>,
    transport: Transport,
    directory: Directory,
    datapath: DatapathHandle,
    config: AgentConfig,
    status: Arc<Mutex<ControlStatus>>,
}

impl Driver {
    async fn run(
        mut self,
        mut net: mpsc::Receiver<TransportEvent>,
        mut local: mpsc::Receiver<LocalEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let now = clock::now();
        for vni in self.config.vnis.clone() {
            let record = NetworkRecord { vni, vtep: self.config.vtep };
            self.gossip.set_record(now, RecordKey::Network(vni).to_bytes(), record.to_bytes());
        }
        self.gossip.join(now, &self.config.seeds);
        self.flush();
        info!(id = %self.gossip.id(), listen = %self.config.listen, seeds = self.config.seeds.len(), "control plane up");
        loop {
            let deadline = self.gossip.poll_timeout().unwrap_or_else(|| clock::now() + Duration::from_secs(1));
            tokio::select! {
                event = net.recv() => match event {
                    Some(event) => self.on_transport(event),
                    None => break,
                },
                Some(event) = local.recv() => self.on_local(event),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.gossip.handle_timeout(clock::now());
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
            TransportEvent::Datagram { from, addr, data } | TransportEvent::Message { from, addr, data } => {
                if let Err(e) = self.gossip.handle_message(clock::now(), from, addr, &data) {
                    debug!(peer = ?from, %addr, error = %e, "gossip message refused");
                }
            }
            TransportEvent::Refused { addr, reason } => warn!(%addr, %reason, "refused a control-plane peer"),
            TransportEvent::PeerUp { id, addr } => debug!(peer = ?id, %addr, "connection up"),
            TransportEvent::PeerDown { id, addr } => debug!(peer = ?id, %addr, "connection down"),
        }
    }

    fn on_local(&mut self, event: LocalEvent) {
        let now = clock::now();
        match event {
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

    /// Sends what the gossip node wants sent and applies what it learnt.
    fn flush(&mut self) {
        while let Some(t) = self.gossip.poll_transmit() {
            let data = Bytes::from(t.payload);
            if t.reliable {
                self.transport.send_message(t.to, data);
            } else {
                self.transport.send_datagram(t.to, data);
            }
        }
        let mut members_changed = false;
        while let Some(event) = self.gossip.poll_event() {
            match &event {
                Event::MemberUp { id, name, vtep, .. } => {
                    info!(peer = %name, id = ?id, %vtep, "member up");
                    members_changed = true;
                }
                Event::MemberDown { id } => {
                    info!(id = ?id, "member down");
                    members_changed = true;
                }
                _ => {}
            }
            for update in self.directory.handle_event(&event) {
                if self.datapath.send(Query::Control(update)).is_err() {
                    warn!("data path queue full: a control-plane update was dropped; anti-entropy will repair it");
                }
            }
        }
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
        status.undecodable = self.directory.undecodable;
        status.table_digest = self.gossip.table_digest();
    }
}
