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
