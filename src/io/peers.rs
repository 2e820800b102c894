//! Per-peer traffic counters of the data path: a small table of slots keyed by VTEP, allocated once.
//!
//! The worker looks a slot up once per send (a frame, or a whole superframe to one VTEP) and once per receive
//! batch (UDP GRO gives one sender's datagrams together), never per segment. The table never grows past its
//! capacity, so the hot path neither allocates nor rehashes: VTEPs beyond [`MAX_PEERS`] share one overflow slot.
//!
//! Slots are freed when their VTEP leaves ([`PeerCounters::retain`], called by the worker when the control plane
//! changes a network's members), so a daemon that sees more than [`MAX_PEERS`] VTEPs over its life, one churn at a
//! time, still counts every live one on its own. A freed slot's counts fold into the overflow slot: the sums over
//! all slots stay the totals. A VTEP that comes back starts a new slot from zero.

use std::net::IpAddr;

/// Distinct VTEPs counted on their own at one time; more than that are summed in [`PeerCounters::overflow`].
pub const MAX_PEERS: usize = 256;

/// Packets and bytes exchanged with one VTEP, counted on the underlay (whole UDP payloads, ESP included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Datagrams sent to it.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Datagrams received from it that were accepted (decrypted and delivered).
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
}

impl PeerTraffic {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &PeerTraffic) {
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
    }
}

/// The table.
#[derive(Debug)]
pub struct PeerCounters {
    slots: Vec<(IpAddr, PeerTraffic)>,
    /// The slot found last: traffic comes in runs to one VTEP, so most lookups end here.
    last: usize,
    /// Every VTEP that found the table full, and every VTEP whose slot was freed after it left.
    pub overflow: PeerTraffic,
}

impl Default for PeerCounters {
    fn default() -> Self {
        Self { slots: Vec::with_capacity(MAX_PEERS), last: 0, overflow: PeerTraffic::default() }
    }
}

impl PeerCounters {
    /// The slot of `vtep`, taken on first use while there is room.
    pub fn slot(&mut self, vtep: IpAddr) -> &mut PeerTraffic {
        if self.slots.get(self.last).is_some_and(|(ip, _)| *ip == vtep) {
            return &mut self.slots[self.last].1;
        }
        match self.slots.iter().position(|(ip, _)| *ip == vtep) {
            Some(i) => {
                self.last = i;
                &mut self.slots[i].1
            }
            // Within the capacity reserved up front, so this push never allocates.
            None if self.slots.len() < MAX_PEERS => {
                self.last = self.slots.len();
                self.slots.push((vtep, PeerTraffic::default()));
                &mut self.slots.last_mut().expect("just pushed").1
            }
            None => &mut self.overflow,
        }
    }

    /// Counts `packets` datagrams of `bytes` in total sent to `vtep`.
    pub fn sent(&mut self, vtep: IpAddr, packets: u64, bytes: u64) {
        let slot = self.slot(vtep);
        slot.tx_packets += packets;
        slot.tx_bytes += bytes;
    }

    /// Counts `packets` datagrams of `bytes` in total accepted from `vtep`.
    pub fn received(&mut self, vtep: IpAddr, packets: u64, bytes: u64) {
        let slot = self.slot(vtep);
        slot.rx_packets += packets;
        slot.rx_bytes += bytes;
    }

    /// Frees the slots of the VTEPs `keep` rejects (they left), folding their counts into [`Self::overflow`]. The
    /// table keeps its capacity, so slots taken later still do not allocate.
    pub fn retain(&mut self, mut keep: impl FnMut(IpAddr) -> bool) {
        let overflow = &mut self.overflow;
        self.slots.retain(|(vtep, traffic)| {
            let kept = keep(*vtep);
            if !kept {
                overflow.add(traffic);
            }
            kept
        });
        self.last = 0;
    }

    /// Every counted VTEP.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, PeerTraffic)> + '_ {
        self.slots.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_vtep_and_overflows_without_growing() {
        let mut c = PeerCounters::default();
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap());
        c.sent(a, 3, 300);
        c.received(a, 1, 100);
        c.sent(b, 2, 20);
        c.sent(a, 1, 50);
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            vec![
                (a, PeerTraffic { tx_packets: 4, tx_bytes: 350, rx_packets: 1, rx_bytes: 100 }),
                (b, PeerTraffic { tx_packets: 2, tx_bytes: 20, ..PeerTraffic::default() }),
            ]
        );
        let capacity = c.slots.capacity();
        for i in 0..(MAX_PEERS as u32 + 10) {
            c.received(IpAddr::from([198, 18, 1 + (i / 250) as u8, (i % 250) as u8]), 1, 10);
        }
        assert_eq!(c.slots.len(), MAX_PEERS);
        assert_eq!(c.slots.capacity(), capacity, "the table never reallocates");
        // Two slots were taken by a and b: 266 new VTEPs, 254 free slots.
        assert_eq!(c.overflow.rx_packets, 12, "the VTEPs beyond the table are summed");
    }

    fn total(c: &PeerCounters) -> PeerTraffic {
        let mut sum = c.overflow;
        c.iter().for_each(|(_, t)| sum.add(&t));
        sum
    }

    #[test]
    fn slots_of_vteps_that_left_are_freed_for_new_ones_and_totals_stay_true() {
        let mut c = PeerCounters::default();
        let vtep = |i: u32| IpAddr::from([198, 18, 1 + (i / 250) as u8, (i % 250) as u8]);
        for i in 0..MAX_PEERS as u32 {
            c.sent(vtep(i), 1, 100);
        }
        let capacity = c.slots.capacity();
        // Churn: the first half leaves, and as many new VTEPs arrive.
        c.retain(|v| !(0..MAX_PEERS as u32 / 2).any(|i| vtep(i) == v));
        assert_eq!(c.overflow.tx_packets, MAX_PEERS as u64 / 2, "the gone VTEPs' counts are kept in the sum");
        for i in MAX_PEERS as u32..MAX_PEERS as u32 * 3 / 2 {
            c.received(vtep(i), 2, 20);
        }
        let newcomer = vtep(MAX_PEERS as u32 * 3 / 2 - 1);
        assert_eq!(
            c.iter().find(|(v, _)| *v == newcomer).map(|(_, t)| t),
            Some(PeerTraffic { rx_packets: 2, rx_bytes: 20, ..PeerTraffic::default() }),
            "a VTEP arriving after others left has a slot of its own"
        );
        assert_eq!(c.overflow.rx_packets, 0, "no newcomer overflowed");
        assert_eq!(c.slots.len(), MAX_PEERS);
        assert_eq!(c.slots.capacity(), capacity, "freeing and retaking slots never reallocates");
        let sum = total(&c);
        assert_eq!((sum.tx_packets, sum.tx_bytes), (MAX_PEERS as u64, MAX_PEERS as u64 * 100));
        assert_eq!((sum.rx_packets, sum.rx_bytes), (MAX_PEERS as u64, MAX_PEERS as u64 * 10));
    }
}
