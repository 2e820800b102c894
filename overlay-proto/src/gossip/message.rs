//! The gossip wire format. Every message is one [`Message`], sent either as a QUIC datagram (probes: loss is
//! tolerated) or as one QUIC stream (everything else). [`Message::reliable`] says which.
//!
//! Claims a node makes about itself are signed by it: its [`SignedAlive`] announcement and each of its
//! [`SignedRecord`]s. Relayers pass them on unchanged, so every receiver verifies the origin, not the messenger.
//! Suspicion and death are claims about *others*; they are not signed, because SWIM lets any member make them and
//! the accused refutes them with a higher incarnation.

use std::net::{IpAddr, SocketAddr};

use crate::codec::{get_bytes, get_list, put_bytes, put_list, Codec, DecodeError, Reader};
use crate::NodeId;

/// Longest node name.
pub const MAX_NAME: usize = 64;
/// Longest credential (certificate).
pub const MAX_CREDENTIAL: usize = 8 * 1024;
/// Longest signature.
pub const MAX_SIGNATURE: usize = 512;
/// Longest record key.
pub const MAX_KEY: usize = 256;
/// Longest record value.
pub const MAX_VALUE: usize = 16 * 1024;
/// Number of digest buckets; origins fall into one by the first byte of their id.
pub const BUCKETS: usize = 32;

/// A node's signed statement that it is alive, where it listens, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAlive {
    /// The node.
    pub id: NodeId,
    /// Raised by the node to refute suspicion or death.
    pub incarnation: u64,
    /// Its control-plane (QUIC) address.
    pub addr: SocketAddr,
    /// Its data-plane (VXLAN) address.
    pub vtep: IpAddr,
    /// Its configured name.
    pub name: String,
    /// Its certificate, so others can check the signature.
    pub credential: Vec<u8>,
    /// The node's signature over [`SignedAlive::signed_bytes`].
    pub signature: Vec<u8>,
}

impl SignedAlive {
    /// The bytes the signature covers (domain-separated; the credential is bound by the id it hashes to).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"weft alive v1\0".to_vec();
        self.id.encode(&mut out);
        self.incarnation.encode(&mut out);
        self.addr.encode(&mut out);
        self.vtep.encode(&mut out);
        put_bytes(&mut out, self.name.as_bytes());
        out
    }
}

impl Codec for SignedAlive {
    fn encode(&self, out: &mut Vec<u8>) {
        self.id.encode(out);
        self.incarnation.encode(out);
        self.addr.encode(out);
        self.vtep.encode(out);
        put_bytes(out, self.name.as_bytes());
        put_bytes(out, &self.credential);
        put_bytes(out, &self.signature);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: NodeId::decode(r)?,
            incarnation: u64::decode(r)?,
            addr: SocketAddr::decode(r)?,
            vtep: IpAddr::decode(r)?,
            name: String::from_utf8(get_bytes(r, MAX_NAME, "name")?.to_vec())
                .map_err(|_| DecodeError::Invalid("name"))?,
            credential: get_bytes(r, MAX_CREDENTIAL, "credential")?.to_vec(),
            signature: get_bytes(r, MAX_SIGNATURE, "signature")?.to_vec(),
        })
    }
}

/// One entry of an origin's table: a value, or a tombstone (`value: None`), at a position in the origin's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// The node that owns the record.
    pub origin: NodeId,
    /// The origin's record epoch: chosen at start, so a restarted node's records supersede its old ones.
    pub epoch: u64,
    /// Position in the origin's history within the epoch; every change takes the next number.
    pub seq: u64,
    /// The record's key, unique per origin.
    pub key: Vec<u8>,
    /// The value, or `None` for a deletion.
    pub value: Option<Vec<u8>>,
    /// The origin's signature over [`SignedRecord::signed_bytes`].
    pub signature: Vec<u8>,
}

impl SignedRecord {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"weft record v1\0".to_vec();
        self.origin.encode(&mut out);
        self.epoch.encode(&mut out);
        self.seq.encode(&mut out);
        put_bytes(&mut out, &self.key);
        match &self.value {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
            None => out.push(0),
        }
        out
    }
}

impl Codec for SignedRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        self.origin.encode(out);
        self.epoch.encode(out);
        self.seq.encode(out);
        put_bytes(out, &self.key);
        match &self.value {
            Some(v) => {
                out.push(1);
                put_bytes(out, v);
            }
            None => out.push(0),
        }
        put_bytes(out, &self.signature);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let origin = NodeId::decode(r)?;
        let epoch = u64::decode(r)?;
        let seq = u64::decode(r)?;
        let key = get_bytes(r, MAX_KEY, "key")?.to_vec();
        let value = match bool::decode(r)? {
            true => Some(get_bytes(r, MAX_VALUE, "value")?.to_vec()),
            false => None,
        };
        let signature = get_bytes(r, MAX_SIGNATURE, "signature")?.to_vec();
        Ok(Self { origin, epoch, seq, key, value, signature })
    }
}

/// One piece of gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A node's own announcement.
    Alive(SignedAlive),
    /// Someone failed to reach `id` at `incarnation`.
    Suspect {
        /// The suspected node.
        id: NodeId,
        /// Its incarnation when suspected.
        incarnation: u64,
    },
    /// `id` at `incarnation` is considered dead (or left).
    Dead {
        /// The node.
        id: NodeId,
        /// Its incarnation when declared dead.
        incarnation: u64,
    },
    /// A record change.
    Record(SignedRecord),
}

impl Codec for Update {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Update::Alive(a) => {
                out.push(0);
                a.encode(out);
            }
            Update::Suspect { id, incarnation } => {
                out.push(1);
                id.encode(out);
                incarnation.encode(out);
            }
            Update::Dead { id, incarnation } => {
                out.push(2);
                id.encode(out);
                incarnation.encode(out);
            }
            Update::Record(rec) => {
                out.push(3);
                rec.encode(out);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match u8::decode(r)? {
            0 => Update::Alive(SignedAlive::decode(r)?),
            1 => Update::Suspect { id: NodeId::decode(r)?, incarnation: u64::decode(r)? },
            2 => Update::Dead { id: NodeId::decode(r)?, incarnation: u64::decode(r)? },
            3 => Update::Record(SignedRecord::decode(r)?),
            _ => return Err(DecodeError::Invalid("update tag")),
        })
    }
}

/// Liveness as summarised in anti-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    /// Alive.
    Alive = 0,
    /// Suspected.
    Suspect = 1,
    /// Dead or left.
    Dead = 2,
}

/// What one node knows about one origin, for anti-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginSummary {
    /// The origin.
    pub id: NodeId,
    /// Its membership incarnation.
    pub incarnation: u64,
    /// Its liveness.
    pub liveness: Liveness,
    /// Its record epoch.
    pub epoch: u64,
    /// The newest record sequence number known.
    pub max_seq: u64,
    /// Order-independent hash of the live entries (key, seq): equal `max_seq` with a different hash means one side
    /// missed a change, and the origin's own snapshot settles it.
    pub live_hash: u64,
}

impl Codec for OriginSummary {
    fn encode(&self, out: &mut Vec<u8>) {
        self.id.encode(out);
        self.incarnation.encode(out);
        (self.liveness as u8).encode(out);
        self.epoch.encode(out);
        self.max_seq.encode(out);
        self.live_hash.encode(out);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: NodeId::decode(r)?,
            incarnation: u64::decode(r)?,
            liveness: match u8::decode(r)? {
                0 => Liveness::Alive,
                1 => Liveness::Suspect,
                2 => Liveness::Dead,
                _ => return Err(DecodeError::Invalid("liveness")),
            },
            epoch: u64::decode(r)?,
            max_seq: u64::decode(r)?,
            live_hash: u64::decode(r)?,
        })
    }
}

/// Encoded size of an [`OriginSummary`].
const SUMMARY_LEN: usize = NodeId::LEN + 8 + 1 + 8 + 8 + 8;

/// A gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A direct probe.
    Ping {
        /// Matches the ack.
        seq: u32,
    },
    /// The answer to a ping.
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// The responder's wall clock when it answered, in milliseconds since the Unix epoch (0: unknown). The
        /// prober compares it with its own clock to estimate the skew between the two hosts (`weft doctor`).
        time_ms: u64,
    },
    /// Please probe `target` for me (SWIM's indirect probe).
    PingReq {
        /// The requester's sequence number, echoed in the indirect ack.
        seq: u32,
        /// Who to probe.
        target: NodeId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// `target` answered the probe made on the requester's behalf.
    IndirectAck {
        /// The requester's sequence number.
        seq: u32,
    },
    /// A new node's first message to a seed; the seed answers with a full [`Message::Push`].
    Join {
        /// The joiner's announcement.
        alive: SignedAlive,
    },
    /// Updates, pushed as rumours or in answer to a summary.
    Push {
        /// The updates.
        updates: Vec<Update>,
    },
    /// Anti-entropy, step 1: a hash per bucket of origins.
    Digest {
        /// [`BUCKETS`] hashes.
        buckets: Vec<u64>,
    },
    /// Anti-entropy, steps 2 and 3: per-origin state for the buckets that differ. `reply` asks the receiver to
    /// answer with its own summary of the same buckets; either way the receiver pushes what the sender lacks.
    Summary {
        /// Whether the receiver should send its summary back.
        reply: bool,
        /// The bucket numbers covered.
        buckets: Vec<u8>,
        /// The sender's state for every origin in those buckets.
        origins: Vec<OriginSummary>,
    },
    /// Ask the receiver for all of its own records.
    SnapshotRequest,
    /// All of the sender's own live records; only trusted from the origin itself.
    Snapshot {
        /// The sender's epoch.
        epoch: u64,
        /// Its newest sequence number.
        max_seq: u64,
        /// Every live record.
        records: Vec<SignedRecord>,
    },
}

impl Message {
    /// Whether the message needs a reliable stream; probes go as datagrams.
    pub fn reliable(&self) -> bool {
        !matches!(
            self,
            Message::Ping { .. } | Message::Ack { .. } | Message::PingReq { .. } | Message::IndirectAck { .. }
        )
    }
}

impl Codec for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Ping { seq } => {
                out.push(0);
                seq.encode(out);
            }
            Message::Ack { seq, time_ms } => {
                out.push(1);
                seq.encode(out);
                time_ms.encode(out);
            }
            Message::PingReq { seq, target, addr } => {
                out.push(2);
                seq.encode(out);
                target.encode(out);
                addr.encode(out);
            }
            Message::IndirectAck { seq } => {
                out.push(3);
                seq.encode(out);
            }
            Message::Join { alive } => {
                out.push(4);
                alive.encode(out);
            }
            Message::Push { updates } => {
                out.push(5);
                put_list(out, updates);
            }
            Message::Digest { buckets } => {
                out.push(6);
                put_list(out, buckets);
            }
            Message::Summary { reply, buckets, origins } => {
                out.push(7);
                reply.encode(out);
                put_list(out, buckets);
                put_list(out, origins);
            }
            Message::SnapshotRequest => out.push(8),
            Message::Snapshot { epoch, max_seq, records } => {
                out.push(9);
                epoch.encode(out);
                max_seq.encode(out);
                put_list(out, records);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match u8::decode(r)? {
            0 => Message::Ping { seq: u32::decode(r)? },
            1 => Message::Ack { seq: u32::decode(r)?, time_ms: u64::decode(r)? },
            2 => Message::PingReq { seq: u32::decode(r)?, target: NodeId::decode(r)?, addr: SocketAddr::decode(r)? },
            3 => Message::IndirectAck { seq: u32::decode(r)? },
            4 => Message::Join { alive: SignedAlive::decode(r)? },
            5 => Message::Push { updates: get_list(r, 1 + NodeId::LEN, "update count")? },
            6 => {
                let buckets: Vec<u64> = get_list(r, 8, "bucket count")?;
                if buckets.len() != BUCKETS {
                    return Err(DecodeError::Invalid("bucket count"));
                }
                Message::Digest { buckets }
            }
            7 => {
                let reply = bool::decode(r)?;
                let buckets: Vec<u8> = get_list(r, 1, "bucket list")?;
                if buckets.len() > BUCKETS || buckets.iter().any(|b| usize::from(*b) >= BUCKETS) {
                    return Err(DecodeError::Invalid("bucket list"));
                }
                Message::Summary { reply, buckets, origins: get_list(r, SUMMARY_LEN, "origin count")? }
            }
            8 => Message::SnapshotRequest,
            9 => Message::Snapshot {
                epoch: u64::decode(r)?,
                max_seq: u64::decode(r)?,
                records: get_list(r, NodeId::LEN + 8 + 8, "record count")?,
            },
            _ => return Err(DecodeError::Invalid("message tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 16]>().prop_map(NodeId)
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
        ]
    }

    fn alive() -> impl Strategy<Value = SignedAlive> {
        (
            node_id(),
            any::<u64>(),
            socket_addr(),
            socket_addr(),
            "[a-z0-9-]{0,64}",
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(id, incarnation, addr, vtep, name, credential, signature)| SignedAlive {
                id,
                incarnation,
                addr,
                vtep: vtep.ip(),
                name,
                credential,
                signature,
            })
    }

    fn record() -> impl Strategy<Value = SignedRecord> {
        (
            node_id(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..32),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(origin, epoch, seq, key, value, signature)| SignedRecord {
                origin,
                epoch,
                seq,
                key,
                value,
                signature,
            })
    }

    fn update() -> impl Strategy<Value = Update> {
        prop_oneof![
            alive().prop_map(Update::Alive),
            (node_id(), any::<u64>()).prop_map(|(id, incarnation)| Update::Suspect { id, incarnation }),
            (node_id(), any::<u64>()).prop_map(|(id, incarnation)| Update::Dead { id, incarnation }),
            record().prop_map(Update::Record),
        ]
    }

    fn summary() -> impl Strategy<Value = OriginSummary> {
        (node_id(), any::<u64>(), 0u8..3, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(id, incarnation, l, epoch, max_seq, live_hash)| {
                let liveness = [Liveness::Alive, Liveness::Suspect, Liveness::Dead][usize::from(l)];
                OriginSummary { id, incarnation, liveness, epoch, max_seq, live_hash }
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            any::<u32>().prop_map(|seq| Message::Ping { seq }),
            (any::<u32>(), any::<u64>()).prop_map(|(seq, time_ms)| Message::Ack { seq, time_ms }),
            (any::<u32>(), node_id(), socket_addr()).prop_map(|(seq, target, addr)| Message::PingReq {
                seq,
                target,
                addr
            }),
            any::<u32>().prop_map(|seq| Message::IndirectAck { seq }),
            alive().prop_map(|alive| Message::Join { alive }),
            proptest::collection::vec(update(), 0..8).prop_map(|updates| Message::Push { updates }),
            proptest::collection::vec(any::<u64>(), BUCKETS).prop_map(|buckets| Message::Digest { buckets }),
            (
                any::<bool>(),
                proptest::collection::vec(0u8..BUCKETS as u8, 0..BUCKETS),
                proptest::collection::vec(summary(), 0..8)
            )
                .prop_map(|(reply, buckets, origins)| Message::Summary { reply, buckets, origins }),
            Just(Message::SnapshotRequest),
            (any::<u64>(), any::<u64>(), proptest::collection::vec(record(), 0..4))
                .prop_map(|(epoch, max_seq, records)| Message::Snapshot { epoch, max_seq, records }),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trips(m in message()) {
            prop_assert_eq!(Message::from_bytes(&m.to_bytes()), Ok(m));
        }

        #[test]
        fn truncated_or_extended_messages_are_rejected(m in message(), cut in any::<proptest::sample::Index>()) {
            let bytes = m.to_bytes();
            let cut = cut.index(bytes.len());
            prop_assert!(Message::from_bytes(&bytes[..cut]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(Message::from_bytes(&longer), Err(DecodeError::TrailingBytes));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::from_bytes(&bytes);
        }
    }

    #[test]
    fn known_encoding_of_a_ping_and_a_digest_size() {
        assert_eq!(Message::Ping { seq: 0x0102_0304 }.to_bytes(), vec![0, 1, 2, 3, 4]);
        assert!(!Message::Ping { seq: 1 }.reliable());
        let digest = Message::Digest { buckets: vec![0; BUCKETS] };
        assert!(digest.reliable());
        assert_eq!(digest.to_bytes().len(), 1 + 4 + 8 * BUCKETS);
        assert_eq!(
            Message::from_bytes(&[6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Invalid("bucket count"))
        );
    }
}
