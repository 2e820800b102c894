//! Local endpoint discovery: which MACs and addresses live behind this host's TAPs, learnt from the frames the
//! local bridge sends into them (source MAC, ARP sender address, IP source address).
//!
//! The control plane announces what this finds, so remote hosts can forward unicast and answer neighbour queries
//! without flooding. An endpoint that stays silent for the ageing time is withdrawn; its next frame brings it back.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::FastMap;
use crate::{neighbor, MacAddr};

/// Most addresses remembered per endpoint; the oldest is forgotten first.
const MAX_IPS: usize = 8;

/// A change in the local endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    /// A new endpoint, or new addresses of a known one.
    Seen {
        /// The network index.
        network: usize,
        /// Its MAC.
        mac: MacAddr,
        /// All its known addresses.
        ips: Vec<IpAddr>,
    },
    /// An endpoint went silent and is withdrawn.
    Gone {
        /// The network index.
        network: usize,
        /// Its MAC.
        mac: MacAddr,
    },
}

#[derive(Debug)]
struct Local {
    ips: Vec<IpAddr>,
    last_seen: Instant,
}

/// The endpoints behind this host's TAPs.
#[derive(Debug)]
pub struct LocalEndpoints {
    ageing: Duration,
    max: usize,
    entries: FastMap<(usize, MacAddr), Local>,
    by_ip: FastMap<(usize, IpAddr), MacAddr>,
    events: VecDeque<LocalEvent>,
}

impl LocalEndpoints {
    /// Tracks at most `max` endpoints, each withdrawn after `ageing` of silence.
    pub fn new(ageing: Duration, max: usize) -> Self {
        Self { ageing, max, entries: FastMap::default(), by_ip: FastMap::default(), events: VecDeque::new() }
    }

    /// Learns from a frame read from network `network`'s TAP.
    pub fn observe(&mut self, now: Instant, network: usize, frame: &[u8]) {
        let Some((mac, ip)) = neighbor::source(frame) else { return };
        let ip = ip.filter(|ip| usable(*ip));
        if let Some(local) = self.entries.get_mut(&(network, mac)) {
            local.last_seen = now;
            let Some(ip) = ip.filter(|ip| !local.ips.contains(ip)) else { return };
            if local.ips.len() == MAX_IPS {
                let old = local.ips.remove(0);
                self.by_ip.remove(&(network, old));
            }
            local.ips.push(ip);
            self.by_ip.insert((network, ip), mac);
            self.events.push_back(LocalEvent::Seen { network, mac, ips: local.ips.clone() });
            return;
        }
        if self.entries.len() >= self.max {
            return;
        }
        let ips: Vec<IpAddr> = ip.into_iter().collect();
        for ip in &ips {
            self.by_ip.insert((network, *ip), mac);
        }
        self.events.push_back(LocalEvent::Seen { network, mac, ips: ips.clone() });
        self.entries.insert((network, mac), Local { ips, last_seen: now });
    }

    /// Withdraws endpoints silent for the ageing time.
    pub fn expire(&mut self, now: Instant) {
        let ageing = self.ageing;
        let gone: Vec<(usize, MacAddr)> = self
            .entries
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_seen) >= ageing)
            .map(|(k, _)| *k)
            .collect();
        for (network, mac) in gone {
            if let Some(local) = self.entries.remove(&(network, mac)) {
                for ip in local.ips {
                    self.by_ip.remove(&(network, ip));
                }
            }
            self.events.push_back(LocalEvent::Gone { network, mac });
        }
    }

    /// The local endpoint that owns `ip` on `network`.
    pub fn owner(&self, network: usize, ip: IpAddr) -> Option<MacAddr> {
        self.by_ip.get(&(network, ip)).copied()
    }

    /// Every local endpoint.
    pub fn iter(&self) -> impl Iterator<Item = (usize, MacAddr, &[IpAddr])> {
        self.entries.iter().map(|((n, m), l)| (*n, *m, l.ips.as_slice()))
    }

    /// The next change.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<LocalEvent> {
        self.events.pop_front()
    }
}

/// Addresses worth announcing: unicast and specific (link-local IPv6 included, since ND uses it).
fn usable(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip == IpAddr::from([255, 255, 255, 255]))
}

/// Joins the local endpoints of several data-path workers into one view for the control plane.
///
/// With a multi-queue TAP every worker sees only the frames the kernel steered to its queue, so each keeps its own
/// [`LocalEndpoints`]. An endpoint is present while any worker has it; its addresses are the union of what the
/// workers learnt; it is gone when the last worker withdraws it. Only changes to that joined view come out, so one
/// worker behaves exactly as if there were no merge.
#[derive(Debug, Default)]
pub struct LocalMerge {
    /// Per endpoint: the addresses each worker that has it reported, and the addresses last announced.
    entries: FastMap<(usize, MacAddr), Merged>,
}

#[derive(Debug, Default)]
struct Merged {
    by_worker: Vec<(usize, Vec<IpAddr>)>,
    announced: Vec<IpAddr>,
}

impl Merged {
    fn union(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in self.by_worker.iter().flat_map(|(_, ips)| ips) {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        ips
    }
}

impl LocalMerge {
    /// Takes `event` from worker `worker`; returns the change to the joined view, if any.
    pub fn apply(&mut self, worker: usize, event: LocalEvent) -> Option<LocalEvent> {
        match event {
            LocalEvent::Seen { network, mac, ips } => {
                let merged = self.entries.entry((network, mac)).or_default();
                let fresh = merged.by_worker.is_empty();
                match merged.by_worker.iter_mut().find(|(w, _)| *w == worker) {
                    Some((_, mine)) => *mine = ips,
                    None => merged.by_worker.push((worker, ips)),
                }
                let union = merged.union();
                (fresh || union != merged.announced).then(|| {
                    merged.announced = union.clone();
                    LocalEvent::Seen { network, mac, ips: union }
                })
            }
            LocalEvent::Gone { network, mac } => {
                let merged = self.entries.get_mut(&(network, mac))?;
                merged.by_worker.retain(|(w, _)| *w != worker);
                if merged.by_worker.is_empty() {
                    self.entries.remove(&(network, mac));
                    return Some(LocalEvent::Gone { network, mac });
                }
                let union = merged.union();
                (union != merged.announced).then(|| {
                    merged.announced = union.clone();
                    LocalEvent::Seen { network, mac, ips: union }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(mac: u8, ips: &[[u8; 4]]) -> LocalEvent {
        let ips = ips.iter().map(|ip| IpAddr::from(*ip)).collect();
        LocalEvent::Seen { network: 0, mac: MacAddr([2, 0, 0, 0, 0, mac]), ips }
    }

    fn gone(mac: u8) -> LocalEvent {
        LocalEvent::Gone { network: 0, mac: MacAddr([2, 0, 0, 0, 0, mac]) }
    }

    #[test]
    fn an_endpoint_stays_while_any_worker_has_it_with_the_union_of_its_addresses() {
        let mut m = LocalMerge::default();
        let (a, b) = ([198, 19, 0, 2], [198, 19, 0, 3]);
        assert_eq!(m.apply(0, seen(1, &[a])), Some(seen(1, &[a])));
        // Worker 1 sees the same endpoint with nothing new: no change to announce.
        assert_eq!(m.apply(1, seen(1, &[a])), None);
        assert_eq!(m.apply(1, seen(1, &[a, b])), Some(seen(1, &[a, b])));
        // Worker 0 ages it out; worker 1 still has both addresses.
        assert_eq!(m.apply(0, gone(1)), None);
        assert_eq!(m.apply(1, gone(1)), Some(gone(1)));
        // Gone from a worker that never had it changes nothing.
        assert_eq!(m.apply(0, gone(1)), None);
        assert_eq!(m.apply(0, seen(1, &[])), Some(seen(1, &[])));
    }

    #[test]
    fn an_address_only_one_worker_knew_is_withdrawn_with_that_worker() {
        let mut m = LocalMerge::default();
        let (a, b) = ([198, 19, 0, 2], [198, 19, 0, 3]);
        m.apply(0, seen(1, &[a]));
        m.apply(1, seen(1, &[b]));
        assert_eq!(m.apply(1, gone(1)), Some(seen(1, &[a])));
    }

    #[test]
    fn a_single_worker_passes_events_through() {
        let mut m = LocalMerge::default();
        let events = [seen(1, &[[198, 19, 0, 2]]), seen(2, &[]), gone(1), seen(1, &[]), gone(2), gone(1)];
        for event in events {
            assert_eq!(m.apply(0, event.clone()), Some(event));
        }
    }
}
