//! The forwarding table: (VNI, MAC) → VTEP, plus a flood list per VNI.
//!
//! Entries come from static configuration, from the control plane (gossiped endpoint records), or from data-plane
//! learning (the outer source address of received frames, RFC 7348 §4.2). Precedence is static > control plane >
//! learned: learning never overwrites the other two, and learned entries alone age out after an idle time. The number of learned entries is bounded so a MAC flood from a peer cannot grow
//! memory without limit.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::FastMap;
use crate::{MacAddr, Vni};

/// Where an FDB entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Configured; never ages and is never replaced by learning.
    Static,
    /// From the control plane; lives until the control plane withdraws it.
    Remote,
    /// Learned from a received frame; refreshed by traffic, expires after the ageing time.
    Learned {
        /// When a frame from this MAC last arrived.
        last_seen: Instant,
    },
}

/// One forwarding entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The VTEP the MAC lives behind.
    pub vtep: IpAddr,
    /// How the entry got here.
    pub origin: Origin,
}

/// Tunables of the table.
#[derive(Debug, Clone, Copy)]
pub struct FdbConfig {
    /// Idle time after which a learned entry expires (300 s, as Linux bridges and kernel VXLAN use).
    pub ageing: Duration,
    /// Upper bound on learned entries across all VNIs; learning stops (entries are not evicted) when reached.
    pub max_learned: usize,
}

impl Default for FdbConfig {
    fn default() -> Self {
        Self { ageing: Duration::from_secs(300), max_learned: 65_536 }
    }
}

/// What [`Fdb::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new MAC.
    New,
    /// A known MAC seen behind a different VTEP than before.
    Moved,
    /// Known and unchanged; only refreshed.
    Refreshed,
    /// A static or control-plane entry covers this MAC; nothing changed.
    Covered,
    /// The table is full of learned entries.
    Full,
}

/// The forwarding table.
#[derive(Debug, Default)]
pub struct Fdb {
    config: FdbConfig,
    entries: FastMap<(Vni, MacAddr), Entry>,
    flood: FastMap<Vni, Vec<IpAddr>>,
    learned: usize,
}

impl Fdb {
    /// An empty table.
    pub fn new(config: FdbConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Adds or replaces a static entry.
    pub fn insert_static(&mut self, vni: Vni, mac: MacAddr, vtep: IpAddr) {
        let old = self.entries.insert((vni, mac), Entry { vtep, origin: Origin::Static });
        if matches!(old, Some(Entry { origin: Origin::Learned { .. }, .. })) {
            self.learned -= 1;
        }
    }

    /// Adds or replaces a control-plane entry (a static one for the same MAC is kept).
    pub fn insert_remote(&mut self, vni: Vni, mac: MacAddr, vtep: IpAddr) {
        match self.entries.get(&(vni, mac)).map(|e| e.origin) {
            Some(Origin::Static) => {}
            old => {
                if matches!(old, Some(Origin::Learned { .. })) {
                    self.learned -= 1;
                }
                self.entries.insert((vni, mac), Entry { vtep, origin: Origin::Remote });
            }
        }
    }

    /// Removes a control-plane entry; other kinds stay.
    pub fn remove_remote(&mut self, vni: Vni, mac: MacAddr) {
        if self.entries.get(&(vni, mac)).is_some_and(|e| e.origin == Origin::Remote) {
            self.entries.remove(&(vni, mac));
        }
    }

    /// Records that `mac` on `vni` was seen behind `vtep` at `now`.
    pub fn learn(&mut self, now: Instant, vni: Vni, mac: MacAddr, vtep: IpAddr) -> Learned {
        let origin = Origin::Learned { last_seen: now };
        match self.entries.get_mut(&(vni, mac)) {
            Some(Entry { origin: Origin::Static | Origin::Remote, .. }) => Learned::Covered,
            Some(entry) => {
                let moved = entry.vtep != vtep;
                *entry = Entry { vtep, origin };
                if moved {
                    Learned::Moved
                } else {
                    Learned::Refreshed
                }
            }
            None if self.learned >= self.config.max_learned => Learned::Full,
            None => {
                self.entries.insert((vni, mac), Entry { vtep, origin });
                self.learned += 1;
                Learned::New
            }
        }
    }

    /// The VTEP for `mac` on `vni`, if there is a live entry. An expired learned entry is treated as missing even
    /// before [`Fdb::expire`] removes it, so lookups never depend on how often the caller sweeps.
    pub fn lookup(&self, now: Instant, vni: Vni, mac: MacAddr) -> Option<IpAddr> {
        let entry = self.entries.get(&(vni, mac))?;
        (!self.is_expired(now, entry)).then_some(entry.vtep)
    }

    /// Removes expired learned entries; returns how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let ageing = self.config.ageing;
        self.entries.retain(|_, e| !expired(ageing, now, e));
        let removed = before - self.entries.len();
        self.learned -= removed;
        removed
    }

    /// Replaces the flood list of `vni` (deduplicated, in a stable order).
    pub fn set_flood_list(&mut self, vni: Vni, mut vteps: Vec<IpAddr>) {
        vteps.sort_unstable();
        vteps.dedup();
        self.flood.insert(vni, vteps);
    }

    /// The VTEPs that broadcast, multicast and unknown unicast frames of `vni` are replicated to.
    pub fn flood_list(&self, vni: Vni) -> &[IpAddr] {
        self.flood.get(&vni).map_or(&[], Vec::as_slice)
    }

    /// Every entry, live or not yet swept, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Vni, MacAddr, &Entry)> {
        self.entries.iter().map(|((vni, mac), e)| (*vni, *mac, e))
    }

    /// Number of entries, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn is_expired(&self, now: Instant, entry: &Entry) -> bool {
        expired(self.config.ageing, now, entry)
    }
}

fn expired(ageing: Duration, now: Instant, entry: &Entry) -> bool {
    match entry.origin {
        Origin::Static | Origin::Remote => false,
        Origin::Learned { last_seen } => now.saturating_duration_since(last_seen) >= ageing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn vtep(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    #[test]
    fn learned_entries_age_out() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig { ageing: Duration::from_secs(300), max_learned: 10 });
        assert_eq!(fdb.learn(t0, vni(1), A, vtep(2)), Learned::New);
        assert_eq!(fdb.lookup(t0 + Duration::from_secs(299), vni(1), A), Some(vtep(2)));
        // Refreshing restarts the clock.
        assert_eq!(fdb.learn(t0 + Duration::from_secs(200), vni(1), A, vtep(2)), Learned::Refreshed);
        assert_eq!(fdb.lookup(t0 + Duration::from_secs(499), vni(1), A), Some(vtep(2)));
        assert_eq!(fdb.lookup(t0 + Duration::from_secs(500), vni(1), A), None);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(500)), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn vni_scopes_entries_and_moves_are_reported() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        fdb.learn(t0, vni(1), A, vtep(2));
        assert_eq!(fdb.lookup(t0, vni(2), A), None);
        assert_eq!(fdb.learn(t0, vni(1), A, vtep(3)), Learned::Moved);
        assert_eq!(fdb.lookup(t0, vni(1), A), Some(vtep(3)));
    }

    #[test]
    fn static_entries_win_and_never_age() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        fdb.learn(t0, vni(1), A, vtep(9));
        fdb.insert_static(vni(1), A, vtep(2));
        assert_eq!(fdb.learn(t0, vni(1), A, vtep(3)), Learned::Covered);
        let later = t0 + Duration::from_secs(10_000);
        assert_eq!(fdb.expire(later), 0);
        assert_eq!(fdb.lookup(later, vni(1), A), Some(vtep(2)));
    }

    #[test]
    fn control_plane_entries_beat_learning_but_not_static() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        fdb.learn(t0, vni(1), A, vtep(9));
        fdb.insert_remote(vni(1), A, vtep(2));
        assert_eq!(fdb.learn(t0, vni(1), A, vtep(9)), Learned::Covered);
        assert_eq!(fdb.lookup(t0 + Duration::from_secs(10_000), vni(1), A), Some(vtep(2)), "remote entries never age");
        fdb.insert_static(vni(1), B, vtep(3));
        fdb.insert_remote(vni(1), B, vtep(4));
        assert_eq!(fdb.lookup(t0, vni(1), B), Some(vtep(3)));
        fdb.remove_remote(vni(1), B);
        assert_eq!(fdb.lookup(t0, vni(1), B), Some(vtep(3)), "withdrawal leaves static entries alone");
        fdb.remove_remote(vni(1), A);
        assert_eq!(fdb.lookup(t0, vni(1), A), None);
    }

    #[test]
    fn learning_is_bounded() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig { ageing: Duration::from_secs(1), max_learned: 1 });
        assert_eq!(fdb.learn(t0, vni(1), A, vtep(2)), Learned::New);
        assert_eq!(fdb.learn(t0, vni(1), B, vtep(2)), Learned::Full);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(1)), 1);
        assert_eq!(fdb.learn(t0, vni(1), B, vtep(2)), Learned::New);
    }

    #[test]
    fn flood_lists() {
        let mut fdb = Fdb::new(FdbConfig::default());
        fdb.set_flood_list(vni(1), vec![vtep(3), vtep(2), vtep(3)]);
        assert_eq!(fdb.flood_list(vni(1)), &[vtep(2), vtep(3)]);
        assert_eq!(fdb.flood_list(vni(7)), &[] as &[IpAddr]);
    }
}
