//! This host's own address on each network, the source of the ingress mesh's connections to backends on other
//! hosts, sans-IO.
//!
//! Every host's bridge holds the network's gateway address, so a connection the ingress opened from the gateway to
//! a backend on another host would be answered to that host's own gateway. Connections to remote backends therefore
//! come from an address only this host has: one address of this host's IPAM block, reserved (never handed to an
//! endpoint), put on the bridge by the daemon and gossiped as an endpoint record with the bridge's MAC, so the other
//! hosts answer ARP for it and forward the replies here.
//!
//! ```text
//!  Catalog ─► handle_catalog ─► a network is wanted once a service has a backend on it behind another host
//!  handle_timeout(now, wall, &mut Ipam) ─► Ipam::allocate (claims a block when this host has none: ~1.5 s)
//!      ─► poll_action: set / remove the record ep/<vni><bridge MAC> = (address, name "ingress-endpoint")
//!      ─► poll_event: assigned / lost / unavailable (for the log)
//!      ─► addresses(): per network, the address the daemon puts on the bridge and the ingress binds to
//! ```
//!
//! The rules:
//! - **On demand.** A network gets an address once some service has a backend on it on another host (only those
//!   need one), and keeps it until the daemon stops. Claiming a block per host and network up front would cap a
//!   /24 with /26 blocks at four hosts even where no service runs.
//! - **Configured.** A network with a configured address (`ingress_address`) uses it from the start, as is; it
//!   is reserved in IPAM when it lies in the subnet, so no endpoint gets it.
//! - **Lost block.** If the block holding the address stops being this host's (an earlier claim for it turned up
//!   after a partition), the address is given up at once, its record withdrawn, and a new one taken.
//! - **No room.** When the subnet has no free block, the allocation is retried every [`RETRY`]; meanwhile the
//!   ingress uses only backends on this host.
//!
//! Restart: the allocation starts over, and since a host walks free blocks in its own fixed order it usually gets
//! its old block, and the same address, back.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::codec::Codec;
use crate::endpoint::{EndpointRecord, RecordKey};
use crate::ipam::{Ipam, IpamAction, IpamError};
use crate::service::Catalog;
use crate::{MacAddr, Vni};

/// The name the address's endpoint record carries (as Docker's per-node ingress endpoint does).
pub const ENDPOINT_NAME: &str = "ingress-endpoint";
/// How long after a failed allocation (no free block) it is tried again.
pub const RETRY: Duration = Duration::from_secs(5);

/// A network this host carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressNetwork {
    /// The network.
    pub vni: Vni,
    /// The MAC of this host's bridge for it, which holds the address.
    pub bridge_mac: MacAddr,
    /// A configured address, used instead of an allocated one.
    pub fixed: Option<IpAddr>,
}

/// A change worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressAddressEvent {
    /// The network's address is now `addr`.
    Assigned {
        /// The network.
        vni: Vni,
        /// The address.
        addr: IpAddr,
    },
    /// The block holding `addr` is no longer this host's: the address was given up.
    Lost {
        /// The network.
        vni: Vni,
        /// The address given up.
        addr: IpAddr,
    },
    /// No address could be had; tried again every [`RETRY`] (and reported again only after a success).
    Unavailable {
        /// The network.
        vni: Vni,
        /// Why.
        error: IpamError,
    },
}

#[derive(Debug)]
struct Slot {
    bridge_mac: MacAddr,
    fixed: bool,
    wanted: bool,
    addr: Option<IpAddr>,
    /// When to ask IPAM next (after a failure, or when a claim settles).
    next_try: Option<Instant>,
    /// The last attempt failed (reported once, not at every retry).
    failing: bool,
}

/// The ingress source addresses of one host.
#[derive(Debug)]
pub struct IngressAddresses {
    vtep: IpAddr,
    slots: BTreeMap<Vni, Slot>,
    actions: VecDeque<IpamAction>,
    events: VecDeque<IngressAddressEvent>,
}

impl IngressAddresses {
    /// The addresses of the host behind `vtep`, for `networks`. Configured addresses are reserved in `ipam` and
    /// their records queued at once.
    pub fn new(vtep: IpAddr, networks: &[IngressNetwork], ipam: &mut Ipam) -> Self {
        let mut this = Self { vtep, slots: BTreeMap::new(), actions: VecDeque::new(), events: VecDeque::new() };
        for net in networks {
            let slot = Slot {
                bridge_mac: net.bridge_mac,
                fixed: net.fixed.is_some(),
                wanted: net.fixed.is_some(),
                addr: None,
                next_try: None,
                failing: false,
            };
            this.slots.insert(net.vni, slot);
            if let Some(addr) = net.fixed {
                if let IpAddr::V4(v4) = addr {
                    ipam.reserve(net.vni, v4);
                }
                this.assign(net.vni, addr);
            }
        }
        this
    }

    /// Marks the networks that need an address: those where a service has a backend behind another host.
    pub fn handle_catalog(&mut self, catalog: &Catalog) {
        for service in catalog.services() {
            for backend in catalog.backends(&service.name).iter().filter(|b| b.vtep != self.vtep) {
                if let Some(slot) = self.slots.get_mut(&backend.vni) {
                    slot.wanted = true;
                }
            }
        }
    }

    /// Takes addresses for wanted networks and gives up those whose block was lost. `wall_millis` stamps a new
    /// block claim; the claim itself comes out of [`Ipam::poll_action`].
    pub fn handle_timeout(&mut self, now: Instant, wall_millis: u64, ipam: &mut Ipam) {
        let vnis: Vec<Vni> = self.slots.keys().copied().collect();
        for vni in vnis {
            let slot = &self.slots[&vni];
            if !slot.wanted || slot.fixed || slot.next_try.is_some_and(|t| t > now) {
                continue;
            }
            if let Some(addr) = slot.addr {
                let IpAddr::V4(v4) = addr else { continue };
                if ipam.holds(now, vni, v4) {
                    continue;
                }
                ipam.release(vni, v4);
                self.withdraw(vni);
                self.events.push_back(IngressAddressEvent::Lost { vni, addr });
            }
            match ipam.allocate(now, wall_millis, vni, None) {
                Ok(Some(v4)) => self.assign(vni, IpAddr::V4(v4)),
                Ok(None) => self.slot(vni).next_try = ipam.poll_timeout(),
                Err(error) => {
                    let slot = self.slot(vni);
                    slot.next_try = Some(now + RETRY);
                    if !std::mem::replace(&mut slot.failing, true) {
                        self.events.push_back(IngressAddressEvent::Unavailable { vni, error });
                    }
                }
            }
        }
    }

    fn slot(&mut self, vni: Vni) -> &mut Slot {
        self.slots.get_mut(&vni).expect("callers pass known networks")
    }

    fn assign(&mut self, vni: Vni, addr: IpAddr) {
        let vtep = self.vtep;
        let slot = self.slot(vni);
        slot.addr = Some(addr);
        slot.next_try = None;
        slot.failing = false;
        let record = EndpointRecord {
            vni,
            mac: slot.bridge_mac,
            ips: vec![addr],
            vtep,
            name: ENDPOINT_NAME.into(),
            labels: Vec::new(),
        };
        let key = RecordKey::Endpoint(vni, record.mac).to_bytes();
        self.actions.push_back(IpamAction::SetRecord { key, value: record.to_bytes() });
        self.events.push_back(IngressAddressEvent::Assigned { vni, addr });
    }

    fn withdraw(&mut self, vni: Vni) {
        let slot = self.slot(vni);
        slot.addr = None;
        let key = RecordKey::Endpoint(vni, slot.bridge_mac).to_bytes();
        self.actions.push_back(IpamAction::RemoveRecord { key });
    }

    /// Per network, the address in force.
    pub fn addresses(&self) -> BTreeMap<Vni, IpAddr> {
        self.slots.iter().filter_map(|(vni, s)| Some((*vni, s.addr?))).collect()
    }

    /// Whether a wanted network still has no address.
    pub fn waiting(&self) -> bool {
        self.slots.values().any(|s| s.wanted && s.addr.is_none())
    }

    /// When [`IngressAddresses::handle_timeout`] has work next: a settling claim, a retry, or a held address to
    /// check (its block can be lost at any gossip event, so the caller also calls it after those).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.values().filter(|s| s.wanted && s.addr.is_none()).filter_map(|s| s.next_try).min()
    }

    /// The next record change to publish through gossip.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<IpamAction> {
        self.actions.pop_front()
    }

    /// The next change worth a log line.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<IngressAddressEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::Event;
    use crate::ipam::IpamConfig;
    use crate::service::{service_key, Policy, Protocol, ServiceRecord, SERVICE_LABEL};
    use crate::NodeId;
    use std::net::Ipv4Addr;

    const BRIDGE: MacAddr = MacAddr([2, 0x57, 0, 0, 0xbb, 1]);
    const H1: [u8; 4] = [198, 18, 0, 1];
    const H2: [u8; 4] = [198, 18, 0, 2];

    fn vni() -> Vni {
        Vni::new(100).unwrap()
    }

    fn ipam(node: u8) -> Ipam {
        let mut ipam = Ipam::new(NodeId([node; 16]), IpamConfig::default());
        ipam.add_network(vni(), Ipv4Addr::new(198, 19, 0, 0), 24, None, Ipv4Addr::new(198, 19, 0, 1)).unwrap();
        ipam
    }

    fn network(fixed: Option<[u8; 4]>) -> IngressNetwork {
        IngressNetwork { vni: vni(), bridge_mac: BRIDGE, fixed: fixed.map(IpAddr::from) }
    }

    /// Service `web` with one backend, behind `vtep`.
    fn catalog(vtep: [u8; 4]) -> Catalog {
        let service = ServiceRecord {
            name: "web".into(),
            port: 80,
            target: 80,
            protocol: Protocol::Tcp,
            policy: Policy::RoundRobin,
            proxy_protocol: false,
            revision: 1,
            removed: false,
        };
        let backend = EndpointRecord {
            vni: vni(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec![IpAddr::from([198, 19, 0, 130])],
            vtep: IpAddr::from(vtep),
            name: "web-1".into(),
            labels: vec![(SERVICE_LABEL.into(), "web".into())],
        };
        let records = [
            (service_key("web"), service.to_bytes()),
            (RecordKey::Endpoint(vni(), backend.mac).to_bytes(), backend.to_bytes()),
        ];
        Catalog::from_records(records.iter().map(|(k, v)| (NodeId([2; 16]), k.as_slice(), v.as_slice())))
    }

    /// The record actions as (key is the bridge's ep/ key, the address set or `None` for a removal).
    fn records(ingress: &mut IngressAddresses) -> Vec<Option<Vec<IpAddr>>> {
        let key = RecordKey::Endpoint(vni(), BRIDGE).to_bytes();
        std::iter::from_fn(|| ingress.poll_action())
            .map(|a| match a {
                IpamAction::SetRecord { key: k, value } => {
                    assert_eq!(k, key);
                    let record = EndpointRecord::from_bytes(&value).unwrap();
                    assert_eq!((record.mac, record.name.as_str(), record.vtep), (BRIDGE, ENDPOINT_NAME, H1.into()));
                    Some(record.ips)
                }
                IpamAction::RemoveRecord { key: k } => {
                    assert_eq!(k, key);
                    None
                }
            })
            .collect()
    }

    #[test]
    fn an_address_is_taken_only_once_a_remote_backend_needs_it_and_never_handed_to_an_endpoint() {
        let mut ipam = ipam(1);
        let mut ingress = IngressAddresses::new(H1.into(), &[network(None)], &mut ipam);
        let mut now = Instant::now();
        // Nothing needs one: a service whose only backend is on this host does not, and no block is claimed.
        ingress.handle_catalog(&catalog(H1));
        ingress.handle_timeout(now, 1, &mut ipam);
        assert!(ingress.addresses().is_empty() && !ingress.waiting());
        assert_eq!(ipam.poll_action(), None);
        // A backend behind another host: a block is claimed, and the address comes once it settled.
        ingress.handle_catalog(&catalog(H2));
        ingress.handle_timeout(now, 1, &mut ipam);
        assert!(matches!(ipam.poll_action(), Some(IpamAction::SetRecord { .. })), "a block claim");
        assert!(ingress.waiting());
        let settled = ingress.poll_timeout().expect("the settle time");
        assert_eq!(settled, now + IpamConfig::default().settle);
        ingress.handle_timeout(settled - Duration::from_millis(1), 1, &mut ipam);
        assert!(ingress.addresses().is_empty(), "not before the claim settled");
        now = settled;
        ingress.handle_timeout(now, 1, &mut ipam);
        let addr = ingress.addresses()[&vni()];
        let IpAddr::V4(v4) = addr else { panic!("{addr}") };
        assert!(ipam.holds(now, vni(), v4));
        assert_eq!(records(&mut ingress), vec![Some(vec![addr])]);
        assert_eq!(ingress.poll_event(), Some(IngressAddressEvent::Assigned { vni: vni(), addr }));
        assert_eq!(ingress.poll_timeout(), None);
        // Endpoints get the rest of the block, never the ingress address.
        while let Ok(Some(other)) = ipam.allocate(now, 1, vni(), None) {
            assert_ne!(other, v4);
        }
        assert_eq!(ipam.allocate(now, 1, vni(), Some(v4)), Err(IpamError::InUse(v4)));
        // It is kept, even when nothing needs it any more.
        ingress.handle_catalog(&Catalog::default());
        ingress.handle_timeout(now, 1, &mut ipam);
        assert_eq!(ingress.addresses()[&vni()], addr);
        assert!(records(&mut ingress).is_empty());
    }

    #[test]
    fn a_configured_address_is_used_at_once_and_reserved() {
        let mut ipam = ipam(1);
        let fixed = [198, 19, 0, 251];
        let mut ingress = IngressAddresses::new(H1.into(), &[network(Some(fixed))], &mut ipam);
        let now = Instant::now();
        assert_eq!(ingress.addresses()[&vni()], IpAddr::from(fixed));
        assert_eq!(records(&mut ingress), vec![Some(vec![IpAddr::from(fixed)])]);
        ingress.handle_catalog(&catalog(H2));
        ingress.handle_timeout(now, 1, &mut ipam);
        assert_eq!(ipam.poll_action(), None, "no block is claimed for it");
        assert_eq!(ipam.allocate(now, 1, vni(), Some(fixed.into())), Err(IpamError::InUse(fixed.into())));
    }

    #[test]
    fn a_lost_block_gives_the_address_up_and_a_new_one_is_taken() {
        let mut ipam = ipam(1);
        let mut ingress = IngressAddresses::new(H1.into(), &[network(None)], &mut ipam);
        let mut now = Instant::now();
        ingress.handle_catalog(&catalog(H2));
        ingress.handle_timeout(now, 500, &mut ipam);
        let Some(IpamAction::SetRecord { key: claim_key, value }) = ipam.poll_action() else { panic!("no claim") };
        now += Duration::from_secs(2);
        ingress.handle_timeout(now, 500, &mut ipam);
        let IpAddr::V4(first) = ingress.addresses()[&vni()] else { panic!() };
        let _ = records(&mut ingress);
        // After a partition: a rival claimed the same block earlier. Ours loses.
        let mut claim = crate::ipam::BlockClaim::from_bytes(&value).unwrap();
        claim.claimed_at = 400;
        ipam.handle_event(now, &Event::RecordSet { origin: NodeId([2; 16]), key: claim_key, value: claim.to_bytes() });
        assert!(!ipam.holds(now, vni(), first));
        ingress.handle_timeout(now, 600, &mut ipam);
        assert_eq!(
            ingress.poll_event(),
            Some(IngressAddressEvent::Assigned { vni: vni(), addr: first.into() }),
            "the first assignment"
        );
        assert_eq!(ingress.poll_event(), Some(IngressAddressEvent::Lost { vni: vni(), addr: first.into() }));
        assert_eq!(records(&mut ingress), vec![None], "the record is withdrawn while a new block settles");
        assert!(ingress.addresses().is_empty() && ingress.waiting());
        now += Duration::from_secs(2);
        ingress.handle_timeout(now, 600, &mut ipam);
        let IpAddr::V4(second) = ingress.addresses()[&vni()] else { panic!() };
        assert_ne!(first.octets()[3] / 64, second.octets()[3] / 64, "in another block");
        assert_eq!(records(&mut ingress), vec![Some(vec![IpAddr::V4(second)])]);
    }

    #[test]
    fn a_full_subnet_is_retried_later() {
        let mut ipam = Ipam::new(NodeId([1; 16]), IpamConfig::default());
        // A /30 is one block with two host addresses: the gateway and one more, which an endpoint takes.
        ipam.add_network(vni(), Ipv4Addr::new(198, 19, 0, 0), 30, None, Ipv4Addr::new(198, 19, 0, 1)).unwrap();
        let mut now = Instant::now();
        while ipam.allocate(now, 1, vni(), None).unwrap().is_none() {
            now += Duration::from_millis(100);
        }
        let mut ingress = IngressAddresses::new(H1.into(), &[network(None)], &mut ipam);
        ingress.handle_catalog(&catalog(H2));
        ingress.handle_timeout(now, 1, &mut ipam);
        assert_eq!(
            ingress.poll_event(),
            Some(IngressAddressEvent::Unavailable { vni: vni(), error: IpamError::Exhausted })
        );
        assert_eq!(ingress.poll_timeout(), Some(now + RETRY));
        ingress.handle_timeout(now + Duration::from_secs(1), 1, &mut ipam);
        assert_eq!(ingress.poll_event(), None, "not retried before RETRY");
        ingress.handle_timeout(now + RETRY, 1, &mut ipam);
        assert_eq!(ingress.poll_event(), None, "retried, and not reported twice");
        assert_eq!(ingress.poll_timeout(), Some(now + RETRY * 2));
        // The endpoint leaves: the next retry gets its address.
        ipam.release(vni(), Ipv4Addr::new(198, 19, 0, 2));
        ingress.handle_timeout(now + RETRY * 2, 1, &mut ipam);
        let addr = IpAddr::from([198, 19, 0, 2]);
        assert_eq!(ingress.poll_event(), Some(IngressAddressEvent::Assigned { vni: vni(), addr }));
    }
}
