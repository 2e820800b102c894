//! One node's gossip state machine: SWIM membership with suspicion, rumour pushes, digest anti-entropy and the
//! replicated record table, driven entirely by its caller.
//!
//! ```text
//!  handle_message(now, from, addr, bytes) ─┐                      ┌─► poll_transmit() → Transmit { to, reliable, payload }
//!  handle_timeout(now) ────────────────────┼─► Gossip ────────────┼─► poll_event()    → Event (members, records)
//!  set_record / remove_record / leave ─────┘                      └─► poll_timeout()  → next deadline
//! ```
//!
//! Timers, all on the caller's clock:
//! - every `probe_interval` the next member in a shuffled round-robin order is pinged; without an ack after
//!   `probe_timeout`, `indirect_probes` others are asked to ping it; without any ack by the next probe, it becomes
//!   suspect, and after `suspicion_timeout` without a refutation, dead;
//! - every `gossip_interval`, queued rumours go to `fanout` random members, each rumour `retransmits` times;
//! - every `sync_interval`, a digest goes to one random live member (and sometimes to a dead one, which is how a
//!   healed partition finds itself again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::Authenticator;
use super::message::{Liveness, Message, OriginSummary, SignedAlive, SignedRecord, Update, BUCKETS};
use super::table::{Change, Table};
use crate::codec::{Codec, DecodeError};
use crate::rng::Rng;
use crate::NodeId;

/// Timing and fan-out of the protocol.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Time between probes.
    pub probe_interval: Duration,
    /// Wait for a direct ack before asking others to probe.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspect has to refute before it is declared dead.
    pub suspicion_timeout: Duration,
    /// Time between rumour pushes.
    pub gossip_interval: Duration,
    /// Members each push goes to.
    pub fanout: usize,
    /// Pushes each rumour rides in.
    pub retransmits: u32,
    /// Time between anti-entropy digests.
    pub sync_interval: Duration,
    /// How long a dead member is remembered (and occasionally contacted) before it is forgotten.
    pub dead_reap: Duration,
    /// How long tombstones are kept.
    pub tombstone_ttl: Duration,
    /// Largest payload of one reliable message.
    pub max_message: usize,
    /// Time between join attempts while no seed has answered.
    pub join_retry: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(80),
            indirect_probes: 3,
            suspicion_timeout: Duration::from_millis(1200),
            gossip_interval: Duration::from_millis(30),
            fanout: 3,
            retransmits: 3,
            sync_interval: Duration::from_millis(500),
            dead_reap: Duration::from_secs(120),
            tombstone_ttl: Duration::from_secs(600),
            max_message: 256 * 1024,
            join_retry: Duration::from_secs(1),
        }
    }
}

/// What this node announces about itself.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// Its control-plane address.
    pub addr: SocketAddr,
    /// Its data-plane address.
    pub vtep: IpAddr,
    /// Its name.
    pub name: String,
    /// Start incarnation and record epoch; must grow across restarts (the daemon uses wall-clock milliseconds).
    pub incarnation: u64,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Stream (true) or datagram (false).
    pub reliable: bool,
    /// The encoded [`Message`].
    pub payload: Vec<u8>,
}

/// Something the layer above should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined, or came back.
    MemberUp {
        /// Who.
        id: NodeId,
        /// Its control address.
        addr: SocketAddr,
        /// Its VTEP.
        vtep: IpAddr,
        /// Its name.
        name: String,
    },
    /// A member was declared dead or left; its records were withdrawn (with `RecordRemoved` events).
    MemberDown {
        /// Who.
        id: NodeId,
    },
    /// A record of a live origin was set.
    RecordSet {
        /// The owner.
        origin: NodeId,
        /// Its key.
        key: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
    },
    /// A record is gone (deleted, or its origin died or restarted).
    RecordRemoved {
        /// The owner.
        origin: NodeId,
        /// Its key.
        key: Vec<u8>,
    },
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// Not a valid message.
    #[error("undecodable gossip message: {0}")]
    Decode(#[from] DecodeError),
    /// A claim that does not match the authenticated sender.
    #[error("claim about {claimed:?} sent by {sender:?}")]
    Impersonation {
        /// Who the message claimed to be from.
        claimed: NodeId,
        /// Who sent it (the TLS peer).
        sender: NodeId,
    },
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Messages handled.
    pub messages_in: u64,
    /// Messages queued for sending.
    pub messages_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Undecodable messages.
    pub malformed: u64,
    /// Announcements or records whose credential or signature did not verify, and impersonation attempts.
    pub rejected: u64,
    /// Times this node refuted a suspicion or death claim about itself.
    pub refutations: u64,
    /// Snapshots requested from origins.
    pub snapshots_requested: u64,
    /// Digests received that differed from this node's table in at least one bucket.
    pub digest_mismatches: u64,
}

/// What this node measured of a member: its state and the round trip and clock offset of the last direct probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHealth {
    /// Alive or suspect (dead members are not reported).
    pub liveness: Liveness,
    /// Ping → ack round trip of the last direct probe it answered.
    pub rtt: Option<Duration>,
    /// Its wall clock minus ours, in milliseconds, estimated at that probe (the ack's timestamp against our clock
    /// half a round trip earlier). `None` until a probe is answered by a node that reports its clock.
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Alive,
    Suspect { deadline: Instant },
    Dead { since: Instant },
}

impl State {
    fn liveness(self) -> Liveness {
        match self {
            State::Alive => Liveness::Alive,
            State::Suspect { .. } => Liveness::Suspect,
            State::Dead { .. } => Liveness::Dead,
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    alive: SignedAlive,
    incarnation: u64,
    state: State,
    rtt: Option<Duration>,
    clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    target: NodeId,
    seq: u32,
    sent: Instant,
    indirect_at: Option<Instant>,
    acked: bool,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    requester: SocketAddr,
    seq: u32,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Rumor {
    update: Update,
    remaining: u32,
}

/// A gossip node.
#[derive(Debug)]
pub struct Gossip<A> {
    config: GossipConfig,
    auth: A,
    rng: Rng,
    id: NodeId,
    me: SignedAlive,
    epoch: u64,
    seq: u64,
    /// Ordered, so that every iteration (and so every seeded choice) is the same from run to run.
    members: BTreeMap<NodeId, Member>,
    /// Live members with their addresses, rebuilt after membership changes; random choices sample from it.
    live_cache: Option<Vec<(NodeId, SocketAddr)>>,
    table: Table,
    probe_order: Vec<NodeId>,
    probe: Option<Probe>,
    relays: HashMap<u32, Relay>,
    next_seq: u32,
    rumors: Vec<Rumor>,
    suspects: Vec<(Instant, NodeId)>,
    snapshot_asked: HashMap<NodeId, Instant>,
    seeds: Vec<SocketAddr>,
    joined: bool,
    left: bool,
    next_probe: Instant,
    next_gossip: Instant,
    next_sync: Instant,
    next_housekeeping: Instant,
    next_join: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: GossipStats,
    /// The caller's wall clock at one instant ([`Gossip::set_wall_clock`]), so acks can carry the time.
    wall_clock: Option<(Instant, u64)>,
    /// Since when a digest exchange has shown this node's table differing from a member's (cleared by one that
    /// matched): the convergence lag.
    diverged_since: Option<Instant>,
}

impl<A: Authenticator> Gossip<A> {
    /// A node that knows only itself. `rng_seed` drives its non-secret choices.
    pub fn new(config: GossipConfig, auth: A, local: LocalNode, rng_seed: u64, now: Instant) -> Self {
        let id = auth.local_id();
        let mut me = SignedAlive {
            id,
            incarnation: local.incarnation,
            addr: local.addr,
            vtep: local.vtep,
            name: local.name,
            credential: auth.local_credential().to_vec(),
            signature: Vec::new(),
        };
        me.signature = auth.sign(&me.signed_bytes());
        let mut rng = Rng::new(rng_seed);
        // Spread the first probe so that nodes started together do not probe in lockstep.
        let jitter = Duration::from_micros(rng.below(config.probe_interval.as_micros().max(1) as usize) as u64);
        Self {
            next_probe: now + jitter,
            next_gossip: now,
            next_sync: now + config.sync_interval,
            next_housekeeping: now + Duration::from_secs(1),
            config,
            auth,
            rng,
            id,
            epoch: local.incarnation,
            seq: 0,
            me,
            members: BTreeMap::new(),
            live_cache: None,
            table: Table::default(),
            probe_order: Vec::new(),
            probe: None,
            relays: HashMap::new(),
            next_seq: 1,
            rumors: Vec::new(),
            suspects: Vec::new(),
            snapshot_asked: HashMap::new(),
            seeds: Vec::new(),
            joined: false,
            left: false,
            next_join: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: GossipStats::default(),
            wall_clock: None,
            diverged_since: None,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Counters.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// Members this node believes alive (suspects included), not counting itself.
    pub fn live_members(&self) -> impl Iterator<Item = (NodeId, &SignedAlive)> {
        self.members.iter().filter(|(_, m)| !matches!(m.state, State::Dead { .. })).map(|(id, m)| (*id, &m.alive))
    }

    /// Live members (suspects included) with what the probes measured of them.
    pub fn member_health(&self) -> impl Iterator<Item = (NodeId, MemberHealth)> + '_ {
        self.members.iter().filter(|(_, m)| !matches!(m.state, State::Dead { .. })).map(|(id, m)| {
            (*id, MemberHealth { liveness: m.state.liveness(), rtt: m.rtt, clock_offset_ms: m.clock_offset_ms })
        })
    }

    /// Tells the node the wall clock (milliseconds since the Unix epoch) at `now`; acks then carry the time so
    /// probers can estimate clock skew. The caller may call it again to follow clock steps.
    pub fn set_wall_clock(&mut self, now: Instant, wall_ms: u64) {
        self.wall_clock = Some((now, wall_ms));
    }

    fn wall_millis(&self, at: Instant) -> Option<u64> {
        let (anchor, ms) = self.wall_clock?;
        Some(match at.checked_duration_since(anchor) {
            Some(later) => ms + later.as_millis() as u64,
            None => ms.saturating_sub(anchor.duration_since(at).as_millis() as u64),
        })
    }

    /// How long this node's table has been known to differ from a member's: since the first digest that showed a
    /// difference, until a digest exchange matches again. Zero when the last exchange matched.
    pub fn convergence_lag(&self, now: Instant) -> Duration {
        self.diverged_since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Whether `id` is currently considered alive or suspect.
    pub fn is_live(&self, id: &NodeId) -> bool {
        *id == self.id || self.members.get(id).is_some_and(|m| !matches!(m.state, State::Dead { .. }))
    }

    /// The visible records of every live origin, this node's own included.
    pub fn records(&self) -> impl Iterator<Item = (NodeId, &[u8], &[u8])> {
        self.table
            .origins()
            .filter(|(id, _)| self.is_live(id))
            .flat_map(|(id, o)| o.live().map(move |(k, v)| (*id, k, v)))
    }

    /// A hash of the visible record table: equal on two nodes when they see the same records.
    pub fn table_digest(&self) -> u64 {
        self.table
            .origins()
            .filter(|(id, _)| self.is_live(id))
            .map(|(id, o)| mix(&[hash_id(id), o.epoch, o.live_hash]))
            .fold(0, |acc, h| acc ^ h)
    }

    /// Starts joining through `seeds` (addresses only; their ids are learnt from TLS). Retries until one answers.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        self.seeds = seeds.iter().copied().filter(|s| *s != self.me.addr).collect();
        self.joined = self.seeds.is_empty();
        self.send_join(now);
    }

    /// Announces that this node leaves; after this, it only answers probes until the caller stops it.
    pub fn leave(&mut self) {
        self.left = true;
        let update = Update::Dead { id: self.id, incarnation: self.me.incarnation };
        let payload = Message::Push { updates: vec![update] }.to_bytes();
        let targets = self.random_live(self.config.fanout * 2, None);
        for addr in targets {
            self.send_raw(addr, true, payload.clone());
        }
    }

    /// Sets one of this node's own records.
    pub fn set_record(&mut self, now: Instant, key: Vec<u8>, value: Vec<u8>) {
        self.write_record(now, key, Some(value));
    }

    /// Deletes one of this node's own records.
    pub fn remove_record(&mut self, now: Instant, key: Vec<u8>) {
        let exists = self.table.origin(&self.id).is_some_and(|o| o.live().any(|(k, _)| k == key.as_slice()));
        if exists {
            self.write_record(now, key, None);
        }
    }

    fn write_record(&mut self, now: Instant, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.seq += 1;
        let mut record =
            SignedRecord { origin: self.id, epoch: self.epoch, seq: self.seq, key, value, signature: vec![] };
        record.signature = self.auth.sign(&record.signed_bytes());
        self.table.apply(now, record.clone());
        self.rumor(Update::Record(record));
        // Local changes go out at once rather than at the next gossip tick.
        self.next_gossip = now;
    }

    /// Handles one message from the authenticated node `from`, which sent it from `addr`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: NodeId,
        addr: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), GossipError> {
        self.stats.messages_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let message = Message::from_bytes(bytes).inspect_err(|_| self.stats.malformed += 1)?;
        match message {
            Message::Ping { seq } => {
                let time_ms = self.wall_millis(now).unwrap_or(0);
                self.send(addr, &Message::Ack { seq, time_ms })
            }
            Message::Ack { seq, time_ms } => self.handle_ack(now, from, seq, time_ms),
            Message::PingReq { seq, target: _, addr: target_addr } => {
                let relay_seq = self.take_seq();
                let expires = now + self.config.probe_interval * 2;
                self.relays.insert(relay_seq, Relay { requester: addr, seq, expires });
                self.send(target_addr, &Message::Ping { seq: relay_seq });
            }
            Message::IndirectAck { seq } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    probe.acked = true;
                }
            }
            Message::Join { alive } => {
                if alive.id != from {
                    self.stats.rejected += 1;
                    return Err(GossipError::Impersonation { claimed: alive.id, sender: from });
                }
                self.apply(now, Update::Alive(alive));
                let updates = self.full_state();
                self.send_updates(addr, updates);
            }
            Message::Push { updates } => {
                self.joined = true;
                for update in updates {
                    self.apply(now, update);
                }
            }
            Message::Digest { buckets } => {
                let mine = self.buckets();
                let differing: Vec<u8> = (0..BUCKETS).filter(|b| mine[*b] != buckets[*b]).map(|b| b as u8).collect();
                if differing.is_empty() {
                    self.diverged_since = None;
                } else {
                    self.stats.digest_mismatches += 1;
                    self.diverged_since.get_or_insert(now);
                    let origins = self.summaries(&differing);
                    self.send(addr, &Message::Summary { reply: true, buckets: differing, origins });
                }
            }
            Message::Summary { reply, buckets, origins } => {
                self.joined = true;
                let updates = self.updates_for(now, &buckets, &origins);
                self.send_updates(addr, updates);
                if reply {
                    let origins = self.summaries(&buckets);
                    self.send(addr, &Message::Summary { reply: false, buckets, origins });
                }
            }
            Message::SnapshotRequest => {
                let (max_seq, records) = match self.table.origin(&self.id) {
                    Some(o) => (o.max_seq, o.live_records().cloned().collect()),
                    None => (0, Vec::new()),
                };
                self.send(addr, &Message::Snapshot { epoch: self.epoch, max_seq, records });
            }
            Message::Snapshot { epoch, max_seq, records } => self.handle_snapshot(from, epoch, max_seq, records)?,
        }
        Ok(())
    }

    fn handle_ack(&mut self, now: Instant, from: NodeId, seq: u32, time_ms: u64) {
        if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq && p.target == from) {
            probe.acked = true;
            let sent = probe.sent;
            let rtt = now.saturating_duration_since(sent);
            // The peer read its clock about half a round trip after we sent the ping.
            let ours = self.wall_millis(sent).map(|ms| ms + (rtt / 2).as_millis() as u64);
            if let Some(m) = self.members.get_mut(&from) {
                m.rtt = Some(rtt);
                if let (Some(ours), true) = (ours, time_ms != 0) {
                    m.clock_offset_ms = Some(time_ms as i64 - ours as i64);
                }
            }
            return;
        }
        if let Some(relay) = self.relays.remove(&seq) {
            self.send(relay.requester, &Message::IndirectAck { seq: relay.seq });
        }
    }

    /// A snapshot is the origin's own word on its records, so it is only taken from the origin itself.
    fn handle_snapshot(
        &mut self,
        from: NodeId,
        epoch: u64,
        max_seq: u64,
        records: Vec<SignedRecord>,
    ) -> Result<(), GossipError> {
        if let Some(bad) = records.iter().find(|r| r.origin != from) {
            self.stats.rejected += 1;
            return Err(GossipError::Impersonation { claimed: bad.origin, sender: from });
        }
        let Some(credential) = self.members.get(&from).map(|m| m.alive.credential.clone()) else {
            return Ok(());
        };
        if !records.iter().all(|r| self.auth.verify(&credential, &r.signed_bytes(), &r.signature)) {
            self.stats.rejected += 1;
            return Ok(());
        }
        if self.table.origin(&from).is_some_and(|o| o.epoch > epoch) {
            return Ok(());
        }
        let changes = self.table.replace(epoch, max_seq, from, records);
        if self.is_live(&from) {
            self.emit_changes(from, changes);
        }
        Ok(())
    }

    /// Applies one update; new information is re-gossiped.
    fn apply(&mut self, now: Instant, update: Update) {
        match update {
            Update::Alive(alive) => self.apply_alive(now, alive),
            Update::Suspect { id, incarnation } => self.apply_suspect(now, id, incarnation),
            Update::Dead { id, incarnation } => self.apply_dead(now, id, incarnation),
            Update::Record(record) => self.apply_record(now, record),
        }
    }

    fn apply_alive(&mut self, now: Instant, alive: SignedAlive) {
        if alive.id == self.id {
            // A signed announcement of ours at or above our incarnation that is not our current one comes from a
            // previous life (a clock that went back): move past it. Unsigned ones are forgeries.
            if alive.incarnation >= self.me.incarnation && alive != self.me {
                if self.auth.verify(&alive.credential, &alive.signed_bytes(), &alive.signature) {
                    self.refute(now, alive.incarnation);
                } else {
                    self.stats.rejected += 1;
                }
            }
            return;
        }
        let newer = match self.members.get(&alive.id) {
            Some(m) => alive.incarnation > m.incarnation,
            None => true,
        };
        if !newer {
            return;
        }
        if !self.auth.check_credential(alive.id, &alive.credential)
            || !self.auth.verify(&alive.credential, &alive.signed_bytes(), &alive.signature)
        {
            self.stats.rejected += 1;
            return;
        }
        let id = alive.id;
        let was_live = self.members.get(&id).is_some_and(|m| !matches!(m.state, State::Dead { .. }));
        let member = Member {
            incarnation: alive.incarnation,
            state: State::Alive,
            alive: alive.clone(),
            rtt: None,
            clock_offset_ms: None,
        };
        self.members.insert(id, member);
        self.live_cache = None;
        self.suspects.retain(|(_, s)| *s != id);
        if !was_live {
            self.events.push_back(Event::MemberUp { id, addr: alive.addr, vtep: alive.vtep, name: alive.name.clone() });
            let restored: Vec<Change> = self
                .table
                .origin(&id)
                .map(|o| o.live().map(|(k, v)| Change::Set { key: k.to_vec(), value: v.to_vec() }).collect())
                .unwrap_or_default();
            self.emit_changes(id, restored);
        }
        self.rumor(Update::Alive(alive));
    }

    /// Suspicion and death are unsigned claims, so they may only name incarnations the accused has announced
    /// (signed): anything higher is a forgery that would otherwise outbid every refutation.
    fn plausible_claim(&mut self, id: NodeId, incarnation: u64) -> bool {
        let announced =
            if id == self.id { Some(self.me.incarnation) } else { self.members.get(&id).map(|m| m.alive.incarnation) };
        match announced {
            Some(announced) if incarnation > announced => {
                self.stats.rejected += 1;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn apply_suspect(&mut self, now: Instant, id: NodeId, incarnation: u64) {
        if !self.plausible_claim(id, incarnation) {
            return;
        }
        if id == self.id {
            if incarnation >= self.me.incarnation {
                self.refute(now, incarnation);
            }
            return;
        }
        let Some(m) = self.members.get_mut(&id) else { return };
        let accept = match m.state {
            State::Alive => incarnation >= m.incarnation,
            State::Suspect { .. } => incarnation > m.incarnation,
            State::Dead { .. } => false,
        };
        if !accept {
            return;
        }
        let deadline = now + self.config.suspicion_timeout;
        m.incarnation = incarnation;
        m.state = State::Suspect { deadline };
        self.suspects.push((deadline, id));
        self.rumor(Update::Suspect { id, incarnation });
    }

    fn apply_dead(&mut self, now: Instant, id: NodeId, incarnation: u64) {
        if !self.plausible_claim(id, incarnation) {
            return;
        }
        if id == self.id {
            if incarnation >= self.me.incarnation && !self.left {
                self.refute(now, incarnation);
            }
            return;
        }
        let Some(m) = self.members.get_mut(&id) else { return };
        match m.state {
            State::Dead { .. } => {
                if incarnation > m.incarnation {
                    m.incarnation = incarnation;
                }
                return;
            }
            _ if incarnation < m.incarnation => return,
            _ => {}
        }
        m.incarnation = incarnation;
        self.mark_dead(now, id);
    }

    fn mark_dead(&mut self, now: Instant, id: NodeId) {
        let Some(m) = self.members.get_mut(&id) else { return };
        m.state = State::Dead { since: now };
        self.live_cache = None;
        let incarnation = m.incarnation;
        self.suspects.retain(|(_, s)| *s != id);
        let withdrawn: Vec<Change> = self
            .table
            .origin(&id)
            .map(|o| o.live().map(|(k, _)| Change::Removed { key: k.to_vec() }).collect())
            .unwrap_or_default();
        self.emit_changes(id, withdrawn);
        self.events.push_back(Event::MemberDown { id });
        self.rumor(Update::Dead { id, incarnation });
    }

    fn apply_record(&mut self, now: Instant, record: SignedRecord) {
        if record.origin == self.id {
            return;
        }
        let Some(credential) = self.members.get(&record.origin).map(|m| &m.alive.credential) else {
            // Unknown origin: nothing to verify against yet; anti-entropy brings it again after its announcement.
            return;
        };
        let old = self.table.origin(&record.origin).is_some_and(|o| {
            record.epoch < o.epoch
                || (record.epoch == o.epoch && o.all_records().any(|r| r.key == record.key && r.seq >= record.seq))
        });
        if old {
            return;
        }
        if !self.auth.verify(credential, &record.signed_bytes(), &record.signature) {
            self.stats.rejected += 1;
            return;
        }
        let origin = record.origin;
        if let Some(changes) = self.table.apply(now, record.clone()) {
            if self.is_live(&origin) {
                self.emit_changes(origin, changes);
            }
            self.rumor(Update::Record(record));
        }
    }

    fn emit_changes(&mut self, origin: NodeId, changes: Vec<Change>) {
        for change in changes {
            self.events.push_back(match change {
                Change::Set { key, value } => Event::RecordSet { origin, key, value },
                Change::Removed { key } => Event::RecordRemoved { origin, key },
            });
        }
    }

    fn refute(&mut self, now: Instant, incarnation: u64) {
        self.stats.refutations += 1;
        self.me.incarnation = incarnation.saturating_add(1);
        self.me.signature = self.auth.sign(&self.me.signed_bytes());
        self.rumor(Update::Alive(self.me.clone()));
        self.next_gossip = now;
    }

    fn rumor(&mut self, update: Update) {
        // A newer rumour about the same member replaces the older one.
        let subject = rumor_subject(&update);
        if let Some(subject) = subject {
            self.rumors.retain(|r| rumor_subject(&r.update) != Some(subject));
        }
        self.rumors.push(Rumor { update, remaining: self.config.retransmits });
        const MAX_RUMORS: usize = 8192;
        if self.rumors.len() > MAX_RUMORS {
            self.rumors.drain(..self.rumors.len() - MAX_RUMORS);
        }
    }

    /// Drives every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_join.is_some_and(|at| at <= now) {
            self.send_join(now);
        }
        self.expire_suspects(now);
        if let Some(probe) = self.probe {
            if !probe.acked && probe.indirect_at.is_some_and(|at| at <= now) {
                self.probe_indirectly(probe);
            }
        }
        if now >= self.next_probe {
            self.next_probe = now + self.config.probe_interval;
            self.finish_probe(now);
            self.start_probe(now);
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.push_rumors();
        }
        if now >= self.next_sync {
            self.next_sync = now + self.config.sync_interval;
            self.sync(now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + Duration::from_secs(1);
            self.housekeeping(now);
        }
    }

    /// When [`Gossip::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_probe.min(self.next_sync).min(self.next_housekeeping);
        if !self.rumors.is_empty() {
            next = next.min(self.next_gossip);
        }
        if let Some(at) = self.probe.filter(|p| !p.acked).and_then(|p| p.indirect_at) {
            next = next.min(at);
        }
        if let Some((at, _)) = self.suspects.iter().min_by_key(|(at, _)| *at) {
            next = next.min(*at);
        }
        if let Some(at) = self.next_join {
            next = next.min(at);
        }
        Some(next)
    }

    /// The next message to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn send_join(&mut self, now: Instant) {
        if self.joined || self.seeds.is_empty() {
            self.next_join = None;
            return;
        }
        let join = Message::Join { alive: self.me.clone() }.to_bytes();
        for seed in self.seeds.clone() {
            self.send_raw(seed, true, join.clone());
        }
        self.next_join = Some(now + self.config.join_retry);
    }

    fn expire_suspects(&mut self, now: Instant) {
        let due: Vec<NodeId> = self.suspects.iter().filter(|(at, _)| *at <= now).map(|(_, id)| *id).collect();
        self.suspects.retain(|(at, _)| *at > now);
        for id in due {
            if matches!(self.members.get(&id).map(|m| m.state), Some(State::Suspect { .. })) {
                self.mark_dead(now, id);
            }
        }
    }

    /// The previous probe's verdict: no ack by now means suspicion.
    fn finish_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.take() else { return };
        if probe.acked {
            return;
        }
        let Some(m) = self.members.get(&probe.target) else { return };
        if !matches!(m.state, State::Alive) {
            return;
        }
        let (incarnation, addr) = (m.incarnation, m.alive.addr);
        self.apply_suspect(now, probe.target, incarnation);
        // Tell the suspect straight away so it can refute before the timeout.
        self.send(addr, &Message::Push { updates: vec![Update::Suspect { id: probe.target, incarnation }] });
    }

    fn start_probe(&mut self, now: Instant) {
        if self.probe_order.is_empty() {
            self.probe_order = self
                .members
                .iter()
                .filter(|(_, m)| !matches!(m.state, State::Dead { .. }))
                .map(|(id, _)| *id)
                .collect();
            self.probe_order.sort_unstable();
            self.rng.shuffle(&mut self.probe_order);
        }
        while let Some(target) = self.probe_order.pop() {
            let Some(m) = self.members.get(&target) else { continue };
            if matches!(m.state, State::Dead { .. }) {
                continue;
            }
            let addr = m.alive.addr;
            let seq = self.take_seq();
            let indirect_at = Some(now + self.config.probe_timeout);
            self.probe = Some(Probe { target, seq, sent: now, indirect_at, acked: false });
            self.send(addr, &Message::Ping { seq });
            return;
        }
    }

    fn probe_indirectly(&mut self, probe: Probe) {
        if let Some(p) = self.probe.as_mut() {
            p.indirect_at = None;
        }
        let Some(addr) = self.members.get(&probe.target).map(|m| m.alive.addr) else { return };
        let helpers = self.random_live(self.config.indirect_probes, Some(probe.target));
        let request = Message::PingReq { seq: probe.seq, target: probe.target, addr };
        for helper in helpers {
            self.send(helper, &request);
        }
    }

    fn push_rumors(&mut self) {
        if self.rumors.is_empty() {
            return;
        }
        self.rumors.sort_by_key(|r| std::cmp::Reverse(r.remaining));
        let mut updates = Vec::new();
        let mut size = 0;
        let mut included = 0;
        for rumor in &self.rumors {
            let len = rumor.update.to_bytes().len();
            if size + len > self.config.max_message && !updates.is_empty() {
                break;
            }
            size += len;
            updates.push(rumor.update.clone());
            included += 1;
        }
        for rumor in &mut self.rumors[..included] {
            rumor.remaining -= 1;
        }
        self.rumors.retain(|r| r.remaining > 0);
        let payload = Message::Push { updates }.to_bytes();
        for addr in self.random_live(self.config.fanout, None) {
            self.send_raw(addr, true, payload.clone());
        }
    }

    fn sync(&mut self, now: Instant) {
        if !self.joined {
            return;
        }
        let buckets = self.buckets();
        if let Some(addr) = self.random_live(1, None).pop() {
            self.send(addr, &Message::Digest { buckets: buckets.clone() });
        } else if !self.seeds.is_empty() {
            // Alone: everyone else is dead to us, perhaps through a partition. Knock on the seeds again.
            self.joined = false;
            self.send_join(now);
        }
        // Talking to the dead now and then is how two sides of a healed partition meet again.
        if self.rng.chance(0.5) {
            let dead: Vec<SocketAddr> =
                self.members.values().filter(|m| matches!(m.state, State::Dead { .. })).map(|m| m.alive.addr).collect();
            if !dead.is_empty() {
                let addr = dead[self.rng.below(dead.len())];
                self.send(addr, &Message::Digest { buckets });
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.relays.retain(|_, r| r.expires > now);
        self.table.expire_tombstones(now, self.config.tombstone_ttl);
        let reap = self.config.dead_reap;
        let reaped: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.state, State::Dead { since } if now.saturating_duration_since(since) >= reap))
            .map(|(id, _)| *id)
            .collect();
        for id in reaped {
            self.members.remove(&id);
            self.live_cache = None;
            self.table.remove_origin(&id);
        }
        let window = self.config.sync_interval * 4;
        self.snapshot_asked.retain(|_, at| now.saturating_duration_since(*at) < window);
    }

    /// Every update needed to bring a new node up to date.
    fn full_state(&self) -> Vec<Update> {
        let mut updates = vec![Update::Alive(self.me.clone())];
        for m in self.members.values() {
            updates.push(Update::Alive(m.alive.clone()));
            match m.state {
                State::Alive => {}
                State::Suspect { .. } => updates.push(Update::Suspect { id: m.alive.id, incarnation: m.incarnation }),
                State::Dead { .. } => updates.push(Update::Dead { id: m.alive.id, incarnation: m.incarnation }),
            }
        }
        for (_, origin) in self.table.origins() {
            updates.extend(origin.all_records().cloned().map(Update::Record));
        }
        updates
    }

    fn summary_of(&self, id: &NodeId) -> Option<OriginSummary> {
        let (incarnation, liveness) = if *id == self.id {
            (self.me.incarnation, Liveness::Alive)
        } else {
            let m = self.members.get(id)?;
            (m.incarnation, m.state.liveness())
        };
        let (epoch, max_seq, live_hash) =
            self.table.origin(id).map_or((0, 0, 0), |o| (o.epoch, o.max_seq, o.live_hash));
        Some(OriginSummary { id: *id, incarnation, liveness, epoch, max_seq, live_hash })
    }

    fn all_ids(&self) -> impl Iterator<Item = &NodeId> {
        std::iter::once(&self.id).chain(self.members.keys())
    }

    /// One hash per bucket over the live origins in it.
    fn buckets(&self) -> Vec<u64> {
        let mut buckets = vec![0u64; BUCKETS];
        for id in self.all_ids() {
            let Some(s) = self.summary_of(id) else { continue };
            if s.liveness == Liveness::Dead {
                continue;
            }
            let h = mix(&[hash_id(id), s.incarnation, s.liveness as u64, s.epoch, s.max_seq, s.live_hash]);
            buckets[bucket_of(id)] ^= h;
        }
        buckets
    }

    fn summaries(&self, buckets: &[u8]) -> Vec<OriginSummary> {
        self.all_ids()
            .filter(|id| buckets.contains(&(bucket_of(id) as u8)))
            .filter_map(|id| self.summary_of(id))
            .collect()
    }

    /// What the peer whose summary of `buckets` is `theirs` lacks from us; also asks origins for snapshots where the
    /// two of us agree on the history's length but not on its content.
    fn updates_for(&mut self, now: Instant, buckets: &[u8], theirs: &[OriginSummary]) -> Vec<Update> {
        let theirs: HashMap<NodeId, &OriginSummary> = theirs.iter().map(|s| (s.id, s)).collect();
        let ids: Vec<NodeId> = self.all_ids().filter(|id| buckets.contains(&(bucket_of(id) as u8))).copied().collect();
        let mut updates = Vec::new();
        for id in ids {
            let Some(mine) = self.summary_of(&id) else { continue };
            let their = theirs.get(&id);
            // Membership: send our announcement and state if theirs is older or missing.
            let alive = if id == self.id { &self.me } else { &self.members[&id].alive };
            let newer_member = match their {
                None => true,
                Some(t) => {
                    mine.incarnation > t.incarnation
                        || (mine.incarnation == t.incarnation && mine.liveness > t.liveness)
                }
            };
            if newer_member {
                if their.is_none_or(|t| t.incarnation < alive.incarnation) {
                    updates.push(Update::Alive(alive.clone()));
                }
                match mine.liveness {
                    Liveness::Alive => {}
                    Liveness::Suspect => updates.push(Update::Suspect { id, incarnation: mine.incarnation }),
                    Liveness::Dead => updates.push(Update::Dead { id, incarnation: mine.incarnation }),
                }
            }
            // Records.
            let Some(origin) = self.table.origin(&id) else { continue };
            match their {
                Some(t) if t.epoch == origin.epoch && t.max_seq < origin.max_seq => {
                    updates.extend(origin.records_after(t.max_seq).cloned().map(Update::Record));
                }
                Some(t)
                    if t.epoch == origin.epoch && t.max_seq == origin.max_seq && t.live_hash != origin.live_hash =>
                {
                    self.ask_snapshot(now, id);
                }
                Some(t) if t.epoch >= origin.epoch => {}
                _ => updates.extend(origin.all_records().cloned().map(Update::Record)),
            }
        }
        updates
    }

    fn ask_snapshot(&mut self, now: Instant, origin: NodeId) {
        if origin == self.id || self.snapshot_asked.contains_key(&origin) {
            return;
        }
        let Some(addr) =
            self.members.get(&origin).filter(|m| !matches!(m.state, State::Dead { .. })).map(|m| m.alive.addr)
        else {
            return;
        };
        self.snapshot_asked.insert(origin, now);
        self.stats.snapshots_requested += 1;
        self.send(addr, &Message::SnapshotRequest);
    }

    /// Sends updates as as many pushes as the size limit needs.
    fn send_updates(&mut self, to: SocketAddr, updates: Vec<Update>) {
        let mut batch = Vec::new();
        let mut size = 0;
        for update in updates {
            let len = update.to_bytes().len();
            if size + len > self.config.max_message && !batch.is_empty() {
                self.send(to, &Message::Push { updates: std::mem::take(&mut batch) });
                size = 0;
            }
            size += len;
            batch.push(update);
        }
        if !batch.is_empty() {
            self.send(to, &Message::Push { updates: batch });
        }
    }

    /// Up to `n` distinct random live members' addresses, never `except`.
    fn random_live(&mut self, n: usize, except: Option<NodeId>) -> Vec<SocketAddr> {
        let members = &self.members;
        let live = self.live_cache.get_or_insert_with(|| {
            members
                .iter()
                .filter(|(_, m)| !matches!(m.state, State::Dead { .. }))
                .map(|(id, m)| (*id, m.alive.addr))
                .collect()
        });
        let eligible = live.len() - usize::from(except.is_some_and(|e| live.iter().any(|(id, _)| *id == e)));
        let n = n.min(eligible);
        let mut picked: Vec<usize> = Vec::with_capacity(n);
        while picked.len() < n {
            let i = self.rng.below(live.len());
            if Some(live[i].0) != except && !picked.contains(&i) {
                picked.push(i);
            }
        }
        picked.into_iter().map(|i| live[i].1).collect()
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    fn send(&mut self, to: SocketAddr, message: &Message) {
        self.send_raw(to, message.reliable(), message.to_bytes());
    }

    fn send_raw(&mut self, to: SocketAddr, reliable: bool, payload: Vec<u8>) {
        self.stats.messages_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        self.transmits.push_back(Transmit { to, reliable, payload });
    }
}

fn rumor_subject(update: &Update) -> Option<NodeId> {
    match update {
        Update::Alive(a) => Some(a.id),
        Update::Suspect { id, .. } | Update::Dead { id, .. } => Some(*id),
        Update::Record(_) => None,
    }
}

fn bucket_of(id: &NodeId) -> usize {
    usize::from(id.0[0]) % BUCKETS
}

fn hash_id(id: &NodeId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("16-byte id"))
        ^ u64::from_le_bytes(id.0[8..].try_into().expect("16-byte id"))
}

/// Mixes words into one well-spread hash (for XOR-combined digests, each term must be spread).
fn mix(words: &[u64]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 32;
    }
    h
}
