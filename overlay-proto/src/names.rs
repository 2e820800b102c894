//! The cluster's endpoint directory by name: every endpoint record (this host's and gossiped ones) with its name,
//! service and addresses, for the DNS resolver and for anything else that needs to find endpoints by name or
//! service (the ingress mesh).
//!
//! ```text
//!  gossip::Event (ep/ records), own registrations ─► Names::set / remove ─► resolve(name) | service(s) | reverse(ip)
//! ```
//!
//! A service is the label `service=<name>` ([`SERVICE_LABEL`]). Lookups are per network (VNI): names are only
//! visible to endpoints of the same network, as in Docker.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::endpoint::EndpointRecord;
use crate::{MacAddr, NodeId, Vni};

/// The label that names an endpoint's service.
pub const SERVICE_LABEL: &str = "service";

/// One endpoint as the directory shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    /// The host that announced it.
    pub owner: NodeId,
    /// The record.
    pub record: EndpointRecord,
}

impl EndpointEntry {
    /// The endpoint's service, if it has one.
    pub fn service(&self) -> Option<&str> {
        self.record.labels.iter().find(|(k, _)| k == SERVICE_LABEL).map(|(_, v)| v.as_str())
    }
}

/// Every endpoint record of the cluster, by (VNI, MAC).
#[derive(Debug, Default, Clone)]
pub struct Names {
    entries: BTreeMap<(Vni, MacAddr), BTreeMap<NodeId, EndpointRecord>>,
}

impl Names {
    /// Records (or replaces) `owner`'s record.
    pub fn set(&mut self, owner: NodeId, record: EndpointRecord) {
        self.entries.entry((record.vni, record.mac)).or_default().insert(owner, record);
    }

    /// Drops `owner`'s record of (vni, mac).
    pub fn remove(&mut self, owner: NodeId, vni: Vni, mac: MacAddr) {
        if let Some(claims) = self.entries.get_mut(&(vni, mac)) {
            claims.remove(&owner);
            if claims.is_empty() {
                self.entries.remove(&(vni, mac));
            }
        }
    }

    /// Every endpoint; where two hosts claim one MAC, the highest node id's claim (as the forwarding directory).
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointEntry> + '_ {
        self.entries.values().filter_map(|claims| {
            claims.iter().next_back().map(|(owner, record)| EndpointEntry { owner: *owner, record: record.clone() })
        })
    }

    fn on(&self, vni: Vni) -> impl Iterator<Item = EndpointEntry> + '_ {
        self.endpoints().filter(move |e| e.record.vni == vni)
    }

    /// Addresses of the endpoint called `name` (case-insensitive), or else of every endpoint of service `name`.
    /// Sorted, so answers are stable.
    pub fn resolve(&self, vni: Vni, name: &str) -> Vec<IpAddr> {
        let by_name: Vec<IpAddr> =
            self.on(vni).filter(|e| e.record.name.eq_ignore_ascii_case(name)).flat_map(|e| e.record.ips).collect();
        let mut ips = if by_name.is_empty() { self.service(vni, name) } else { by_name };
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    /// Addresses of every endpoint of service `service` (the `tasks.<service>` answer).
    pub fn service(&self, vni: Vni, service: &str) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .on(vni)
            .filter(|e| e.service().is_some_and(|s| s.eq_ignore_ascii_case(service)))
            .flat_map(|e| e.record.ips)
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    /// The name of the endpoint that holds `ip` on `vni`, if it has one.
    pub fn reverse(&self, vni: Vni, ip: IpAddr) -> Option<String> {
        self.on(vni).find(|e| !e.record.name.is_empty() && e.record.ips.contains(&ip)).map(|e| e.record.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mac: u8, name: &str, service: Option<&str>, ip: [u8; 4]) -> EndpointRecord {
        EndpointRecord {
            vni: Vni::new(100).unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            ips: vec![IpAddr::from(ip)],
            vtep: IpAddr::from([198, 18, 0, 1]),
            name: name.into(),
            labels: service.map(|s| vec![(SERVICE_LABEL.to_string(), s.to_string())]).unwrap_or_default(),
        }
    }

    #[test]
    fn names_services_and_addresses_resolve_per_network() {
        let vni = Vni::new(100).unwrap();
        let mut names = Names::default();
        names.set(NodeId([1; 16]), record(1, "web-1", Some("web"), [198, 19, 0, 2]));
        names.set(NodeId([2; 16]), record(2, "web-2", Some("web"), [198, 19, 0, 66]));
        names.set(NodeId([2; 16]), record(3, "db", None, [198, 19, 0, 67]));
        names.set(NodeId([2; 16]), record(4, "", None, [198, 19, 0, 68]));
        let ip = |a: [u8; 4]| IpAddr::from(a);
        assert_eq!(names.resolve(vni, "WEB-1"), vec![ip([198, 19, 0, 2])]);
        assert_eq!(names.resolve(vni, "web"), vec![ip([198, 19, 0, 2]), ip([198, 19, 0, 66])]);
        assert_eq!(names.service(vni, "web").len(), 2);
        assert!(names.service(vni, "db").is_empty());
        assert!(names.resolve(vni, "nothing").is_empty());
        assert!(names.resolve(Vni::new(7).unwrap(), "db").is_empty());
        assert_eq!(names.reverse(vni, ip([198, 19, 0, 67])).as_deref(), Some("db"));
        assert_eq!(names.reverse(vni, ip([198, 19, 0, 68])), None);
        names.remove(NodeId([2; 16]), vni, MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(names.resolve(vni, "web"), vec![ip([198, 19, 0, 2])]);
        assert_eq!(names.endpoints().count(), 3);
    }
}
