//! The replicated record table: for every origin, its records at their newest version.
//!
//! Each origin numbers its changes (`seq`) within an `epoch` it picks at start. A record with a higher epoch wipes
//! the origin's older epoch (a restarted node supersedes its previous life); within an epoch the higher `seq` wins
//! per key. Deletions are tombstones, forgotten after a TTL; `horizon` remembers the newest forgotten one so a late
//! copy of it is not resurrected. The table stores signed records as received and never checks signatures itself:
//! the gossip node verifies before applying.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::message::SignedRecord;
use crate::NodeId;

/// The records of one origin.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The epoch the entries belong to.
    pub epoch: u64,
    /// The newest sequence number applied.
    pub max_seq: u64,
    /// The newest sequence number of a forgotten tombstone.
    pub horizon: u64,
    /// Order-independent hash of the live entries.
    pub live_hash: u64,
    entries: BTreeMap<Vec<u8>, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    record: SignedRecord,
    /// When the tombstone was applied here; `None` for live entries.
    removed_at: Option<Instant>,
}

/// A change to what is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` now has `value`.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// `key` is gone.
    Removed {
        /// The key.
        key: Vec<u8>,
    },
}

/// Hash of one live entry, combined by XOR into [`Origin::live_hash`].
fn entry_hash(key: &[u8], seq: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in key {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 31)
}

impl Origin {
    /// Live entries as (key, value).
    pub fn live(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().filter_map(|(k, e)| Some((k.as_slice(), e.record.value.as_deref()?)))
    }

    /// Every live entry's signed record.
    pub fn live_records(&self) -> impl Iterator<Item = &SignedRecord> {
        self.entries.values().filter(|e| e.record.value.is_some()).map(|e| &e.record)
    }

    /// Entries (tombstones included) newer than `seq`.
    pub fn records_after(&self, seq: u64) -> impl Iterator<Item = &SignedRecord> {
        self.entries.values().filter(move |e| e.record.seq > seq).map(|e| &e.record)
    }

    /// Every entry, tombstones included.
    pub fn all_records(&self) -> impl Iterator<Item = &SignedRecord> {
        self.entries.values().map(|e| &e.record)
    }
}

/// All origins' records.
#[derive(Debug, Default)]
pub struct Table {
    origins: HashMap<NodeId, Origin>,
}

impl Table {
    /// The origin's records, if any are known.
    pub fn origin(&self, id: &NodeId) -> Option<&Origin> {
        self.origins.get(id)
    }

    /// Every origin.
    pub fn origins(&self) -> impl Iterator<Item = (&NodeId, &Origin)> {
        self.origins.iter()
    }

    /// Applies a (verified) record. Returns the visible changes, or `None` if the record was old news.
    pub fn apply(&mut self, now: Instant, record: SignedRecord) -> Option<Vec<Change>> {
        let origin =
            self.origins.entry(record.origin).or_insert_with(|| Origin { epoch: record.epoch, ..Origin::default() });
        let mut changes = Vec::new();
        if record.epoch < origin.epoch {
            return None;
        }
        if record.epoch > origin.epoch {
            changes.extend(origin.live().map(|(key, _)| Change::Removed { key: key.to_vec() }));
            *origin = Origin { epoch: record.epoch, ..Origin::default() };
        }
        if record.value.is_none() && record.seq <= origin.horizon {
            // Old news itself, but a new epoch may already have withdrawn the old one's records.
            return (!changes.is_empty()).then_some(changes);
        }
        if let Some(existing) = origin.entries.get(&record.key) {
            if existing.record.seq >= record.seq {
                return (!changes.is_empty()).then_some(changes);
            }
            if existing.record.value.is_some() {
                origin.live_hash ^= entry_hash(&record.key, existing.record.seq);
            }
        }
        origin.max_seq = origin.max_seq.max(record.seq);
        let key = record.key.clone();
        match &record.value {
            Some(value) => {
                origin.live_hash ^= entry_hash(&key, record.seq);
                changes.push(Change::Set { key: key.clone(), value: value.clone() });
            }
            None => {
                let was_live = origin.entries.get(&key).is_some_and(|e| e.record.value.is_some());
                if was_live {
                    changes.push(Change::Removed { key: key.clone() });
                }
            }
        }
        let removed_at = record.value.is_none().then_some(now);
        origin.entries.insert(key, Entry { record, removed_at });
        Some(changes)
    }

    /// Replaces an origin's state with its own snapshot: the given live records, complete through `max_seq`.
    pub fn replace(&mut self, epoch: u64, max_seq: u64, origin_id: NodeId, records: Vec<SignedRecord>) -> Vec<Change> {
        let old = self.origins.remove(&origin_id).unwrap_or_default();
        let mut fresh = Origin { epoch, max_seq, horizon: max_seq, ..Origin::default() };
        for record in records {
            if record.value.is_some() && record.epoch == epoch && record.seq <= max_seq {
                fresh.live_hash ^= entry_hash(&record.key, record.seq);
                fresh.entries.insert(record.key.clone(), Entry { record, removed_at: None });
            }
        }
        let mut changes: Vec<Change> = old
            .live()
            .filter(|(k, v)| fresh.entries.get(*k).and_then(|e| e.record.value.as_deref()) != Some(*v))
            .filter(|(k, _)| !fresh.entries.contains_key(*k))
            .map(|(k, _)| Change::Removed { key: k.to_vec() })
            .collect();
        for (key, value) in fresh.live() {
            let old_value = old.entries.get(key).and_then(|e| e.record.value.as_deref());
            if old_value != Some(value) {
                changes.push(Change::Set { key: key.to_vec(), value: value.to_vec() });
            }
        }
        self.origins.insert(origin_id, fresh);
        changes
    }

    /// Forgets an origin entirely (its member entry was reaped). Returns its live keys.
    pub fn remove_origin(&mut self, id: &NodeId) -> Vec<Vec<u8>> {
        self.origins.remove(id).map(|o| o.live().map(|(k, _)| k.to_vec()).collect()).unwrap_or_default()
    }

    /// Forgets tombstones older than `ttl`.
    pub fn expire_tombstones(&mut self, now: Instant, ttl: Duration) {
        for origin in self.origins.values_mut() {
            let mut horizon = origin.horizon;
            origin.entries.retain(|_, e| match e.removed_at {
                Some(at) if now.saturating_duration_since(at) >= ttl => {
                    horizon = horizon.max(e.record.seq);
                    false
                }
                _ => true,
            });
            origin.horizon = horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, seq: u64, key: &str, value: Option<&str>) -> SignedRecord {
        SignedRecord {
            origin: NodeId([1; 16]),
            epoch,
            seq,
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
            signature: vec![],
        }
    }

    fn set(key: &str, value: &str) -> Change {
        Change::Set { key: key.into(), value: value.into() }
    }

    #[test]
    fn newest_seq_wins_and_order_does_not_matter_for_the_hash() {
        let now = Instant::now();
        let (mut a, mut b) = (Table::default(), Table::default());
        let records = [rec(1, 1, "x", Some("1")), rec(1, 2, "y", Some("2")), rec(1, 3, "x", Some("3"))];
        for r in &records {
            a.apply(now, r.clone());
        }
        for r in records.iter().rev() {
            b.apply(now, r.clone());
        }
        let (oa, ob) = (a.origin(&NodeId([1; 16])).unwrap(), b.origin(&NodeId([1; 16])).unwrap());
        assert_eq!(oa.live_hash, ob.live_hash);
        assert_eq!(oa.live().collect::<Vec<_>>(), vec![(&b"x"[..], &b"3"[..]), (&b"y"[..], &b"2"[..])]);
        assert_eq!(ob.live().collect::<Vec<_>>(), oa.live().collect::<Vec<_>>());
        assert_eq!(a.apply(now, rec(1, 2, "y", Some("2"))), None, "a duplicate is old news");
    }

    #[test]
    fn tombstones_remove_then_expire_without_resurrection() {
        let now = Instant::now();
        let mut t = Table::default();
        assert_eq!(t.apply(now, rec(1, 1, "x", Some("1"))), Some(vec![set("x", "1")]));
        assert_eq!(t.apply(now, rec(1, 2, "x", None)), Some(vec![Change::Removed { key: "x".into() }]));
        assert_eq!(t.origin(&NodeId([1; 16])).unwrap().live_hash, 0);
        t.expire_tombstones(now + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(t.origin(&NodeId([1; 16])).unwrap().horizon, 2);
        assert_eq!(t.apply(now, rec(1, 2, "x", None)), None, "a forgotten tombstone is not re-added");
        // A live copy older than a forgotten tombstone cannot be told from a late, legitimate record, so it is
        // applied; its live hash then differs from the origin's and anti-entropy fetches the origin's snapshot.
        assert_eq!(t.apply(now, rec(1, 1, "x", Some("1"))), Some(vec![set("x", "1")]));
    }

    #[test]
    fn a_new_epoch_supersedes_the_old_one() {
        let now = Instant::now();
        let mut t = Table::default();
        t.apply(now, rec(1, 5, "x", Some("old")));
        assert_eq!(t.apply(now, rec(0, 9, "y", Some("older"))), None);
        let changes = t.apply(now, rec(2, 1, "y", Some("new"))).unwrap();
        assert_eq!(changes, vec![Change::Removed { key: "x".into() }, set("y", "new")]);
    }

    #[test]
    fn a_new_epoch_tombstone_still_reports_the_withdrawal() {
        // Found by the gossip_node fuzz target: the removals of the old epoch were lost.
        let now = Instant::now();
        let mut t = Table::default();
        t.apply(now, rec(1, 1, "a", Some("1")));
        assert_eq!(t.apply(now, rec(2, 0, "a", None)), Some(vec![Change::Removed { key: "a".into() }]));
        assert_eq!(t.origin(&NodeId([1; 16])).unwrap().live().count(), 0);
    }

    #[test]
    fn snapshot_replaces_and_reports_differences() {
        let now = Instant::now();
        let mut t = Table::default();
        t.apply(now, rec(1, 1, "stale", Some("1")));
        t.apply(now, rec(1, 2, "kept", Some("2")));
        let changes = t.replace(1, 7, NodeId([1; 16]), vec![rec(1, 2, "kept", Some("2")), rec(1, 7, "new", Some("7"))]);
        assert_eq!(changes, vec![Change::Removed { key: "stale".into() }, set("new", "7")]);
        let o = t.origin(&NodeId([1; 16])).unwrap();
        assert_eq!((o.max_seq, o.horizon), (7, 7));
    }
}
