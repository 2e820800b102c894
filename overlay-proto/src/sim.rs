//! A deterministic network simulator for the gossip protocol: many [`Gossip`] nodes in one process, on virtual time,
//! with seeded latency, jitter, loss and partitions.
//!
//! ```text
//!   ┌── timers (min-heap of each node's poll_timeout) ──┐
//!   │                                                    ▼
//!   │   node.handle_timeout / handle_message ──► poll_transmit ──► loss? partition? ──► in-flight heap
//!   └──────────────────────────────────────────────── deliver at now + latency + jitter ◄──────┘
//! ```
//!
//! Datagrams that are lost are gone. Reliable messages model QUIC streams: a loss costs a retransmission timeout
//! and the message is tried again, but nothing crosses a partition. Every choice comes from one seeded RNG and every
//! queue is ordered, so a run is reproducible from its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::gossip::auth::Authenticator;
use crate::gossip::{Event, Gossip, GossipConfig, LocalNode};
use crate::rng::Rng;
use crate::NodeId;

/// Network conditions and protocol settings of a run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// One-way latency.
    pub latency: Duration,
    /// Uniform extra latency, 0..jitter.
    pub jitter: Duration,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Extra delay of a reliable message per loss (QUIC's retransmission).
    pub rto: Duration,
    /// Header bytes counted per packet on top of the payload (IPv4 + UDP + QUIC short header and AEAD tag).
    pub overhead: usize,
    /// The protocol's settings on every node.
    pub gossip: GossipConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            latency: Duration::from_millis(2),
            jitter: Duration::from_millis(3),
            loss: 0.0,
            rto: Duration::from_millis(30),
            overhead: 20 + 8 + 25,
            gossip: GossipConfig::default(),
        }
    }
}

/// The simulator's stand-in for certificates and signatures: a node's credential is its id, a signature is a keyed
/// hash of the signer's id and the message. Forging another node's signature fails as it would with real keys.
#[derive(Debug, Clone)]
pub struct SimAuth {
    id: NodeId,
    credential: Vec<u8>,
}

impl SimAuth {
    /// The authenticator of node `id`.
    pub fn new(id: NodeId) -> Self {
        Self { id, credential: id.0.to_vec() }
    }

    fn tag(id: &[u8], message: &[u8]) -> Vec<u8> {
        let mut h = 0x6a09_e667_f3bc_c908u64;
        for b in id.iter().chain(message) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h.to_le_bytes().to_vec()
    }
}

impl Authenticator for SimAuth {
    fn local_id(&self) -> NodeId {
        self.id
    }
    fn local_credential(&self) -> &[u8] {
        &self.credential
    }
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        Self::tag(&self.credential, message)
    }
    fn check_credential(&mut self, id: NodeId, credential: &[u8]) -> bool {
        credential == id.0
    }
    fn verify(&self, credential: &[u8], message: &[u8], signature: &[u8]) -> bool {
        Self::tag(credential, message) == signature
    }
}

/// One simulated host.
#[derive(Debug)]
pub struct SimNode {
    /// The protocol state.
    pub gossip: Gossip<SimAuth>,
    /// Its control address.
    pub addr: SocketAddr,
    /// False after a crash, until a restart.
    pub up: bool,
    /// Payload + overhead bytes it sent.
    pub bytes_sent: u64,
    incarnation: u64,
    timer: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    at: Instant,
    order: u64,
    from: usize,
    to: usize,
    payload: Vec<u8>,
}

/// The simulated network.
#[derive(Debug)]
pub struct Sim {
    /// Settings.
    pub config: SimConfig,
    /// The hosts.
    pub nodes: Vec<SimNode>,
    /// The virtual clock.
    pub now: Instant,
    start: Instant,
    rng: Rng,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Reverse<Delivery>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    order: u64,
    /// Which side of a partition each node is on; `None` when the network is whole.
    groups: Option<Vec<u8>>,
    /// Events are kept here (with the node index and time) while `capture` is on.
    pub events: Vec<(usize, Instant, Event)>,
    /// Whether to keep events.
    pub capture: bool,
}

impl Sim {
    /// `n` nodes, not yet joined.
    pub fn new(n: usize, config: SimConfig) -> Self {
        let start = Instant::now();
        let mut rng = Rng::new(config.seed);
        let mut sim = Sim {
            nodes: Vec::with_capacity(n),
            now: start,
            start,
            by_addr: HashMap::new(),
            in_flight: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            order: 0,
            groups: None,
            events: Vec::new(),
            capture: false,
            rng: Rng::new(0),
            config,
        };
        for i in 0..n {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            id[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            // Simulated hosts are numbered inside the underlay test range, 198.18.0.0/16.
            let ip = Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8);
            let addr = SocketAddr::new(IpAddr::V4(ip), 7946);
            sim.by_addr.insert(addr, i);
            let incarnation = 1_000;
            let gossip = sim.make_node(NodeId(id), addr, incarnation, rng.next_u64());
            sim.nodes.push(SimNode { gossip, addr, up: true, bytes_sent: 0, incarnation, timer: None });
        }
        sim.rng = rng;
        sim
    }

    fn make_node(&self, id: NodeId, addr: SocketAddr, incarnation: u64, seed: u64) -> Gossip<SimAuth> {
        let local = LocalNode { addr, vtep: addr.ip(), name: format!("n{}", self.by_addr[&addr]), incarnation };
        Gossip::new(self.config.gossip.clone(), SimAuth::new(id), local, seed, self.now)
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Node `i` starts joining through the given seed nodes.
    pub fn join(&mut self, i: usize, seeds: &[usize]) {
        let seeds: Vec<SocketAddr> = seeds.iter().map(|s| self.nodes[*s].addr).collect();
        let now = self.now;
        self.nodes[i].gossip.join(now, &seeds);
        self.drain(i);
    }

    /// Stops node `i` without a word, as kill -9 would: in-flight messages to it are lost.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Starts node `i` again with no memory and a higher incarnation, joining through `seeds`.
    pub fn restart(&mut self, i: usize, seeds: &[usize]) {
        let id = self.nodes[i].gossip.id();
        let incarnation = self.nodes[i].incarnation + 1_000;
        let seed = self.rng.next_u64();
        let gossip = self.make_node(id, self.nodes[i].addr, incarnation, seed);
        let node = &mut self.nodes[i];
        node.gossip = gossip;
        node.incarnation = incarnation;
        node.up = true;
        node.timer = None;
        self.join(i, seeds);
    }

    /// Splits the network: nodes with different group numbers cannot reach each other.
    pub fn partition(&mut self, groups: Vec<u8>) {
        assert_eq!(groups.len(), self.nodes.len());
        self.groups = Some(groups);
    }

    /// Makes the network whole again.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g[a] == g[b])
    }

    /// Runs until the virtual clock reaches `start + at`.
    pub fn run_until(&mut self, at: Duration) {
        let until = self.start + at;
        loop {
            let next_delivery = self.in_flight.peek().map(|Reverse(d)| d.at);
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            let next = match (next_delivery, next_timer) {
                (Some(d), Some(t)) => d.min(t),
                (Some(d), None) => d,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if next_delivery == Some(next) {
                let Reverse(d) = self.in_flight.pop().expect("peeked");
                self.deliver(d);
            } else {
                let Reverse((at, i)) = self.timers.pop().expect("peeked");
                // Stale heap entries (the node re-armed its timer since) are skipped.
                if self.nodes[i].timer == Some(at) && self.nodes[i].up {
                    self.nodes[i].timer = None;
                    let now = self.now;
                    self.nodes[i].gossip.handle_timeout(now);
                    self.drain(i);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let at = self.elapsed() + d;
        self.run_until(at);
    }

    fn deliver(&mut self, d: Delivery) {
        if !self.nodes[d.to].up || !self.reachable(d.from, d.to) {
            return;
        }
        let from_id = self.nodes[d.from].gossip.id();
        let from_addr = self.nodes[d.from].addr;
        let now = self.now;
        // Malformed input is counted by the node; the simulator only produces valid messages.
        let _ = self.nodes[d.to].gossip.handle_message(now, from_id, from_addr, &d.payload);
        self.drain(d.to);
    }

    /// Moves node `i`'s transmits onto the network, collects its events and re-arms its timer.
    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].gossip.poll_transmit() {
            self.nodes[i].bytes_sent += (t.payload.len() + self.config.overhead) as u64;
            let Some(&to) = self.by_addr.get(&t.to) else { continue };
            if !self.reachable(i, to) {
                continue;
            }
            let mut at = self.now + self.config.latency + self.jitter();
            if t.reliable {
                while self.rng.chance(self.config.loss) {
                    at += self.config.rto;
                }
            } else if self.rng.chance(self.config.loss) {
                continue;
            }
            self.order += 1;
            let delivery = Delivery { at, order: self.order, from: i, to, payload: t.payload };
            self.in_flight.push(Reverse(delivery));
        }
        while let Some(e) = self.nodes[i].gossip.poll_event() {
            if self.capture {
                self.events.push((i, self.now, e));
            }
        }
        if let Some(at) = self.nodes[i].gossip.poll_timeout() {
            if self.nodes[i].timer != Some(at) {
                self.nodes[i].timer = Some(at);
                self.timers.push(Reverse((at, i)));
            }
        }
    }

    fn jitter(&mut self) -> Duration {
        let j = self.config.jitter.as_micros() as usize;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.below(j) as u64)
        }
    }
}
