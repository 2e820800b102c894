//! A gossip node as a state machine (overlay_proto::gossip::Gossip), fed messages from a joined peer.
//!
//! Node 0 and node 1 (`SimAuth` identities, as in the simulator) join each other; then operations decoded from the
//! input run against node 0: raw bytes or crafted messages (Ping, Join, Push with alive/suspect/dead/record updates,
//! Digest, Summary, Snapshot...) that claim to come from node 1, from a third identity, or from node 0 itself, signed
//! correctly or not; virtual time passing (both nodes' timers); record writes on either node; node 1 leaving. The
//! two nodes' own traffic is delivered between them after every operation.
//!
//! Invariants, checked after every operation:
//! - nothing panics, and `handle_message` fails with a decode error exactly when the bytes do not decode;
//! - `messages_in` counts every call, `malformed` every undecodable one, and no counter decreases;
//! - every transmit of either node decodes as a `Message`, and is reliable exactly when the message kind is;
//! - node 0's events are a faithful change log: MemberUp only for a member not up, MemberDown only for one up, never
//!   about itself; the members up are exactly `live_members()`; and replaying RecordSet/RecordRemoved gives exactly
//!   the other origins' records in `records()`.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use overlay_proto::codec::Codec;
use overlay_proto::gossip::auth::Authenticator;
use overlay_proto::gossip::message::{Liveness, Message, OriginSummary, SignedAlive, SignedRecord, Update, BUCKETS};
use overlay_proto::gossip::{Event, Gossip, GossipConfig, GossipError, GossipStats, LocalNode};
use overlay_proto::sim::SimAuth;
use overlay_proto::NodeId;

/// Node 0, node 1, and a third identity that only the fuzzer speaks for. Their first bytes put 0 and 2 in the same
/// digest bucket and 1 in another.
const IDS: [NodeId; 3] = [NodeId([0x21; 16]), NodeId([0x02; 16]), NodeId([0x41; 16])];
const INCARNATION: u64 = 1_000;
const KEYS: [&[u8]; 4] = [b"ep/a", b"ep/b", b"net/", b""];
const MAX_OPS: usize = 64;

/// With FUZZ_TRACE set, the harness prints each operation and event (for reading a reproducer).
fn trace() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if trace() {
            eprintln!($($arg)*);
        }
    };
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, i as u8 + 1)), 7946)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut harness = Harness::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() || harness.step(&mut u).is_err() {
            break;
        }
    }
});

struct Harness {
    nodes: [Gossip<SimAuth>; 2],
    now: Instant,
    /// Node 0's members that are up, from its events.
    up: BTreeSet<NodeId>,
    /// Node 0's view of other origins' records, from its events.
    records: BTreeMap<(NodeId, Vec<u8>), Vec<u8>>,
    stats: GossipStats,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        // Small messages, so that batching and the size limits are exercised too.
        let config = GossipConfig { max_message: 1024, ..GossipConfig::default() };
        let node = |i: usize| {
            let local =
                LocalNode { addr: addr(i), vtep: addr(i).ip(), name: format!("n{i}"), incarnation: INCARNATION };
            Gossip::new(config.clone(), SimAuth::new(IDS[i]), local, i as u64 + 1, now)
        };
        let mut harness = Self {
            nodes: [node(0), node(1)],
            now,
            up: BTreeSet::new(),
            records: BTreeMap::new(),
            stats: GossipStats::default(),
        };
        harness.nodes[0].join(now, &[]);
        harness.nodes[1].join(now, &[addr(0)]);
        harness.nodes[1].set_record(now, b"ep/a".to_vec(), b"1".to_vec());
        harness.pump();
        harness.check();
        harness
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=9u8)? {
            0..=3 => {
                let from = *u.choose(&[1, 1, 1, 1, 1, 2, 0])?;
                let message = message(u)?;
                trace!("node {from} -> node 0: {message:?}");
                self.deliver(IDS[from], addr(from), &message.to_bytes());
            }
            4 => {
                let bytes = small_bytes(u, 200)?;
                trace!("node 1 -> node 0: raw {bytes:02x?}");
                self.deliver(IDS[1], addr(1), &bytes);
            }
            5 | 6 => {
                let step = match u.int_in_range(0..=7u8)? {
                    0 => Duration::from_secs(u.int_in_range(1..=200)?),
                    _ => Duration::from_millis(u.int_in_range(0..=1_500)?),
                };
                self.now += step;
                trace!("+{step:?}: timeouts");
                for node in &mut self.nodes {
                    node.handle_timeout(self.now);
                }
            }
            7 => {
                let i = u.int_in_range(0..=1usize)?;
                let key = u.choose(&KEYS)?.to_vec();
                if u.ratio(1u8, 3u8)? {
                    trace!("node {i}: remove_record {key:?}");
                    self.nodes[i].remove_record(self.now, key);
                } else {
                    let value = small_bytes(u, 8)?;
                    trace!("node {i}: set_record {key:?} = {value:?}");
                    self.nodes[i].set_record(self.now, key, value);
                }
            }
            8 if u.ratio(1u8, 4u8)? => {
                trace!("node 1: leave");
                self.nodes[1].leave();
            }
            _ => {}
        }
        self.pump();
        self.check();
        Ok(())
    }

    /// Hands `bytes` to node 0 as if `from` sent them from `addr`.
    fn deliver(&mut self, from: NodeId, addr: SocketAddr, bytes: &[u8]) {
        let before = self.nodes[0].stats().clone();
        let result = self.nodes[0].handle_message(self.now, from, addr, bytes);
        let decodes = Message::from_bytes(bytes).is_ok();
        assert_eq!(
            matches!(result, Err(GossipError::Decode(_))),
            !decodes,
            "{result:?} for bytes that decode: {decodes}"
        );
        let after = self.nodes[0].stats();
        assert_eq!(after.messages_in, before.messages_in + 1);
        assert_eq!(after.malformed, before.malformed + u64::from(!decodes));
    }

    /// Delivers the two nodes' messages to each other until they fall silent; drops messages to anyone else.
    fn pump(&mut self) {
        for _ in 0..32 {
            let mut quiet = true;
            for (i, &id) in IDS[..2].iter().enumerate() {
                let other = 1 - i;
                while let Some(transmit) = self.nodes[i].poll_transmit() {
                    let message = Message::from_bytes(&transmit.payload)
                        .unwrap_or_else(|e| panic!("node {i} sent an undecodable message: {e}"));
                    assert_eq!(transmit.reliable, message.reliable(), "{message:?} on the wrong kind of channel");
                    if transmit.to == addr(other) {
                        trace!("  node {i} -> node {other}: {message:?}");
                        quiet = false;
                        let _ = self.nodes[other].handle_message(self.now, id, addr(i), &transmit.payload);
                    }
                }
            }
            self.drain_events();
            if quiet {
                return;
            }
        }
    }

    fn drain_events(&mut self) {
        while self.nodes[1].poll_event().is_some() {}
        while let Some(event) = self.nodes[0].poll_event() {
            trace!("  node 0 event: {event:?}");
            match event {
                Event::MemberUp { id, .. } => {
                    assert_ne!(id, IDS[0], "MemberUp about itself");
                    assert!(self.up.insert(id), "MemberUp for {id:?}, which is up");
                }
                Event::MemberDown { id } => {
                    assert_ne!(id, IDS[0], "MemberDown about itself");
                    assert!(self.up.remove(&id), "MemberDown for {id:?}, which is not up");
                }
                Event::RecordSet { origin, key, value } => {
                    assert_ne!(origin, IDS[0], "an event about its own record");
                    self.records.insert((origin, key), value);
                }
                Event::RecordRemoved { origin, key } => {
                    assert_ne!(origin, IDS[0], "an event about its own record");
                    self.records.remove(&(origin, key));
                }
            }
        }
    }

    fn check(&mut self) {
        let node = &self.nodes[0];
        let live: BTreeSet<NodeId> = node.live_members().map(|(id, _)| id).collect();
        assert_eq!(live, self.up, "MemberUp/MemberDown do not replay to live_members()");
        for id in &IDS[1..] {
            assert_eq!(node.is_live(id), self.up.contains(id));
        }
        let records: BTreeMap<(NodeId, Vec<u8>), Vec<u8>> = node
            .records()
            .filter(|(origin, _, _)| *origin != IDS[0])
            .map(|(origin, key, value)| ((origin, key.to_vec()), value.to_vec()))
            .collect();
        assert_eq!(records, self.records, "record events do not replay to records()");

        let (old, new) = (&self.stats, node.stats());
        let fields = |s: &GossipStats| {
            [
                s.messages_in,
                s.messages_out,
                s.bytes_in,
                s.bytes_out,
                s.malformed,
                s.rejected,
                s.refutations,
                s.snapshots_requested,
            ]
        };
        assert!(fields(old).iter().zip(fields(new).iter()).all(|(a, b)| b >= a), "a counter went down");
        self.stats = new.clone();
    }
}

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => Message::Ping { seq: seq(u)? },
        1 => Message::Ack { seq: seq(u)?, time_ms: u.arbitrary()? },
        2 => Message::PingReq { seq: seq(u)?, target: *u.choose(&IDS)?, addr: addr(u.int_in_range(0..=3)?) },
        3 => Message::IndirectAck { seq: seq(u)? },
        4 => Message::Join { alive: alive(u)? },
        5 => {
            let mut updates = Vec::new();
            for _ in 0..u.int_in_range(0..=6)? {
                updates.push(update(u)?);
            }
            Message::Push { updates }
        }
        6 => {
            let mut buckets = vec![0u64; BUCKETS];
            for bucket in &mut buckets {
                if u.ratio(1u8, 8u8)? {
                    *bucket = u.arbitrary()?;
                }
            }
            Message::Digest { buckets }
        }
        7 => {
            let mut buckets: Vec<u8> = Vec::new();
            for b in 0..BUCKETS as u8 {
                if u.ratio(1u8, 4u8)? {
                    buckets.push(b);
                }
            }
            let mut origins = Vec::new();
            for _ in 0..u.int_in_range(0..=3)? {
                origins.push(OriginSummary {
                    id: *u.choose(&IDS)?,
                    incarnation: incarnation(u)?,
                    liveness: *u.choose(&[Liveness::Alive, Liveness::Suspect, Liveness::Dead])?,
                    epoch: incarnation(u)?,
                    max_seq: u.int_in_range(0..=8)?,
                    live_hash: if u.arbitrary()? { u.arbitrary()? } else { 0 },
                });
            }
            Message::Summary { reply: u.arbitrary()?, buckets, origins }
        }
        8 => Message::SnapshotRequest,
        _ => {
            let mut records = Vec::new();
            for _ in 0..u.int_in_range(0..=4)? {
                records.push(record(u)?);
            }
            Message::Snapshot { epoch: incarnation(u)?, max_seq: u.int_in_range(0..=8)?, records }
        }
    })
}

fn seq(u: &mut Unstructured<'_>) -> Result<u32> {
    // Node 0 numbers its probes from 1: small numbers match them.
    if u.ratio(3u8, 4u8)? {
        u.int_in_range(0..=16)
    } else {
        u.arbitrary()
    }
}

fn incarnation(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => 0,
        1 => INCARNATION - 1,
        2 => INCARNATION,
        3 => INCARNATION + 1,
        4 => INCARNATION + 2,
        _ => u.arbitrary()?,
    })
}

/// A signature by `id`'s key, or (sometimes) garbage.
fn sign(u: &mut Unstructured<'_>, id: NodeId, bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(if u.ratio(1u8, 8u8)? { small_bytes(u, 8)? } else { SimAuth::new(id).sign(bytes) })
}

fn alive(u: &mut Unstructured<'_>) -> Result<SignedAlive> {
    let id = *u.choose(&IDS)?;
    let mut alive = SignedAlive {
        id,
        incarnation: incarnation(u)?,
        addr: addr(u.int_in_range(0..=3)?),
        vtep: addr(u.int_in_range(0..=3)?).ip(),
        name: (*u.choose(&["n0", "n1", "n2", ""])?).to_string(),
        credential: if u.ratio(1u8, 8u8)? { IDS[u.int_in_range(0..=2)?].0.to_vec() } else { id.0.to_vec() },
        signature: Vec::new(),
    };
    alive.signature = sign(u, id, &alive.signed_bytes())?;
    Ok(alive)
}

fn record(u: &mut Unstructured<'_>) -> Result<SignedRecord> {
    let origin = *u.choose(&IDS)?;
    let mut record = SignedRecord {
        origin,
        epoch: incarnation(u)?,
        seq: u.int_in_range(0..=8)?,
        key: u.choose(&KEYS)?.to_vec(),
        value: if u.ratio(3u8, 4u8)? { Some(small_bytes(u, 8)?) } else { None },
        signature: Vec::new(),
    };
    record.signature = sign(u, origin, &record.signed_bytes())?;
    Ok(record)
}

fn update(u: &mut Unstructured<'_>) -> Result<Update> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Update::Alive(alive(u)?),
        1 => Update::Suspect { id: *u.choose(&IDS)?, incarnation: incarnation(u)? },
        2 => Update::Dead { id: *u.choose(&IDS)?, incarnation: incarnation(u)? },
        _ => Update::Record(record(u)?),
    })
}

/// Up to `max` bytes of the input.
fn small_bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?.min(u.len());
    Ok(u.bytes(len)?.to_vec())
}
