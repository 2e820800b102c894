//! The bridge between the control plane and the data plane: it mirrors the gossiped endpoint and network records
//! and turns their changes into [`ControlUpdate`]s for the forwarding engine.
//!
//! ```text
//!  gossip::Event::{RecordSet, RecordRemoved} ──► Directory::handle_event ──► ControlUpdate ──► Forwarder::handle_control
//! ```
//!
//! When two origins claim the same (VNI, MAC), the claim of the highest node id wins on every host, so all hosts
//! agree without coordination; when it is withdrawn the other claim takes over.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::codec::Codec;
use crate::endpoint::{EndpointRecord, NetworkRecord, RecordKey};
use crate::forward::ControlUpdate;
use crate::gossip::Event;
use crate::{MacAddr, NodeId, Vni};

/// The mirrored records.
#[derive(Debug, Default)]
pub struct Directory {
    endpoints: HashMap<(Vni, MacAddr), BTreeMap<NodeId, EndpointRecord>>,
    networks: HashMap<Vni, BTreeMap<NodeId, IpAddr>>,
    /// Records whose value did not decode, a sign of a newer or broken peer.
    pub undecodable: u64,
}

impl Directory {
    /// Applies one gossip event; returns what the data plane must change.
    pub fn handle_event(&mut self, event: &Event) -> Vec<ControlUpdate> {
        match event {
            Event::RecordSet { origin, key, value } => match RecordKey::parse(key) {
                Some(RecordKey::Endpoint(vni, mac)) => match EndpointRecord::from_bytes(value) {
                    Ok(record) if record.vni == vni && record.mac == mac => {
                        self.endpoints.entry((vni, mac)).or_default().insert(*origin, record);
                        vec![self.endpoint_update(vni, mac)]
                    }
                    _ => {
                        self.undecodable += 1;
                        Vec::new()
                    }
                },
                Some(RecordKey::Network(vni)) => match NetworkRecord::from_bytes(value) {
                    Ok(record) if record.vni == vni => {
                        self.networks.entry(vni).or_default().insert(*origin, record.vtep);
                        vec![self.members_update(vni)]
                    }
                    _ => {
                        self.undecodable += 1;
                        Vec::new()
                    }
                },
                Some(RecordKey::Block(..)) | None => Vec::new(),
            },
            Event::RecordRemoved { origin, key } => match RecordKey::parse(key) {
                Some(RecordKey::Endpoint(vni, mac)) => {
                    let Some(claims) = self.endpoints.get_mut(&(vni, mac)) else { return Vec::new() };
                    if claims.remove(origin).is_none() {
                        return Vec::new();
                    }
                    vec![self.endpoint_update(vni, mac)]
                }
                Some(RecordKey::Network(vni)) => {
                    let removed = self.networks.get_mut(&vni).is_some_and(|m| m.remove(origin).is_some());
                    if removed {
                        vec![self.members_update(vni)]
                    } else {
                        Vec::new()
                    }
                }
                Some(RecordKey::Block(..)) | None => Vec::new(),
            },
            Event::MemberUp { .. } | Event::MemberDown { .. } => Vec::new(),
        }
    }

    fn endpoint_update(&mut self, vni: Vni, mac: MacAddr) -> ControlUpdate {
        match self.endpoints.get(&(vni, mac)).and_then(|claims| claims.values().next_back()) {
            Some(record) => ControlUpdate::Endpoint { vni, mac, vtep: record.vtep, ips: record.ips.clone() },
            None => {
                self.endpoints.remove(&(vni, mac));
                ControlUpdate::EndpointGone { vni, mac }
            }
        }
    }

    fn members_update(&self, vni: Vni) -> ControlUpdate {
        let vteps = self.networks.get(&vni).map(|m| m.values().copied().collect()).unwrap_or_default();
        ControlUpdate::NetworkMembers { vni, vteps }
    }

    /// Every known remote endpoint, as the data plane sees it.
    pub fn endpoints(&self) -> impl Iterator<Item = (NodeId, &EndpointRecord)> {
        self.endpoints.values().filter_map(|claims| claims.iter().next_back().map(|(o, r)| (*o, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vni() -> Vni {
        Vni::new(100).unwrap()
    }

    const MAC: MacAddr = MacAddr([2, 0x19, 0, 0, 2, 1]);

    fn set_endpoint(origin: u8, vtep: [u8; 4]) -> Event {
        let record = EndpointRecord {
            vni: vni(),
            mac: MAC,
            ips: vec![IpAddr::from([198, 19, 0, 21])],
            vtep: IpAddr::from(vtep),
            name: String::new(),
            labels: vec![],
        };
        Event::RecordSet {
            origin: NodeId([origin; 16]),
            key: RecordKey::Endpoint(vni(), MAC).to_bytes(),
            value: record.to_bytes(),
        }
    }

    #[test]
    fn endpoints_and_members_become_control_updates() {
        let mut d = Directory::default();
        let updates = d.handle_event(&set_endpoint(1, [198, 18, 0, 2]));
        assert_eq!(
            updates,
            vec![ControlUpdate::Endpoint {
                vni: vni(),
                mac: MAC,
                vtep: IpAddr::from([198, 18, 0, 2]),
                ips: vec![IpAddr::from([198, 19, 0, 21])]
            }]
        );
        // A second claim from a higher id wins; withdrawing it restores the first.
        let updates = d.handle_event(&set_endpoint(9, [198, 18, 0, 3]));
        assert!(matches!(&updates[0], ControlUpdate::Endpoint { vtep, .. } if *vtep == IpAddr::from([198, 18, 0, 3])));
        let key = RecordKey::Endpoint(vni(), MAC).to_bytes();
        let updates = d.handle_event(&Event::RecordRemoved { origin: NodeId([9; 16]), key: key.clone() });
        assert!(matches!(&updates[0], ControlUpdate::Endpoint { vtep, .. } if *vtep == IpAddr::from([198, 18, 0, 2])));
        let updates = d.handle_event(&Event::RecordRemoved { origin: NodeId([1; 16]), key });
        assert_eq!(updates, vec![ControlUpdate::EndpointGone { vni: vni(), mac: MAC }]);

        let net = NetworkRecord { vni: vni(), vtep: IpAddr::from([198, 18, 0, 4]) };
        let event = Event::RecordSet {
            origin: NodeId([4; 16]),
            key: RecordKey::Network(vni()).to_bytes(),
            value: net.to_bytes(),
        };
        assert_eq!(d.handle_event(&event), vec![ControlUpdate::NetworkMembers { vni: vni(), vteps: vec![net.vtep] }]);
        let gone = Event::RecordRemoved { origin: NodeId([4; 16]), key: RecordKey::Network(vni()).to_bytes() };
        assert_eq!(d.handle_event(&gone), vec![ControlUpdate::NetworkMembers { vni: vni(), vteps: vec![] }]);
    }

    #[test]
    fn undecodable_and_mismatched_records_are_ignored_and_counted() {
        let mut d = Directory::default();
        let key = RecordKey::Endpoint(vni(), MAC).to_bytes();
        assert!(d.handle_event(&Event::RecordSet { origin: NodeId([1; 16]), key, value: vec![1, 2, 3] }).is_empty());
        // A record whose body names another MAC than its key is refused.
        let mut event = set_endpoint(1, [198, 18, 0, 2]);
        if let Event::RecordSet { key, .. } = &mut event {
            *key = RecordKey::Endpoint(vni(), MacAddr([2, 0, 0, 0, 0, 9])).to_bytes();
        }
        assert!(d.handle_event(&event).is_empty());
        assert_eq!(d.undecodable, 2);
    }
}
