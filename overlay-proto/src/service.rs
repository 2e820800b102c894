//! Published services (the ingress routing mesh's definitions), as gossip records, and the cluster-wide view of
//! them and their backends.
//!
//! - `svc/<name>` → [`ServiceRecord`]: a port published on every host, balanced to the endpoints labelled
//!   `service=<name>` on the target port.
//!
//! A record is owned by the node that wrote it, but a service belongs to the cluster: it must outlive the host it
//! was published on, and `weft service rm` must work from any host. So the definitions are last-writer-wins by
//! `(revision, origin)`, and every host re-publishes the winning definition under its own name ([`Catalog::adopt`]):
//! the service survives as long as one host does. Removal is a definition with `removed = true` and a newer
//! revision, adopted the same way, so a late copy of the old definition cannot bring the service back.
//!
//! ```text
//!  gossip records ─► Catalog::from_records ─┬─► services()  (name → definition)   ─► ingress listeners
//!   (svc/, ep/)                              ├─► backends(name) (labelled endpoints) ─► balancer
//!                                            └─► adopt(own id) (records to re-publish) ─► Gossip::set_record
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::codec::{get_bytes, Codec, DecodeError, Reader};
use crate::endpoint::{EndpointRecord, RecordKey};
use crate::{NodeId, Vni};

const SERVICE_PREFIX: &[u8] = b"svc/";
/// Longest service name.
pub const MAX_SERVICE_NAME: usize = 63;
/// The endpoint label that makes an endpoint a backend of a service: `service=<name>`.
pub const SERVICE_LABEL: &str = "service";

/// Whether `name` is a valid service name: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending with
/// `-` (a DNS label, since services are also DNS names).
pub fn valid_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The gossip key of service `name`.
pub fn service_key(name: &str) -> Vec<u8> {
    [SERVICE_PREFIX, name.as_bytes()].concat()
}

/// The service name a key names; `None` for other record kinds and for invalid names.
pub fn parse_service_key(key: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(key.strip_prefix(SERVICE_PREFIX)?).ok()?;
    valid_service_name(name).then_some(name)
}

/// The transport a service publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP: each connection goes to one backend.
    Tcp,
    /// UDP: each flow (client address and port) goes to one backend until it is idle.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How new connections pick a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Policy {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// The healthy backend with the fewest open connections (flows) through this host; ties in turn.
    LeastConnections,
}

impl Policy {
    /// `round-robin` or `least-connections`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastConnections => "least-connections",
        }
    }
}

/// A published service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// Its name (the key's, repeated so a record cannot be moved to another key).
    pub name: String,
    /// The port published on every host.
    pub port: u16,
    /// The backends' port.
    pub target: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// How backends are picked.
    pub policy: Policy,
    /// Send a PROXY protocol v2 header to the backend first (TCP only).
    pub proxy_protocol: bool,
    /// When it was written (milliseconds since the Unix epoch at the writer): the newest revision wins.
    pub revision: u64,
    /// The service was removed at `revision`.
    pub removed: bool,
}

impl ServiceRecord {
    /// Whether `self` supersedes `other` (written by `origin` and `other_origin`): newer revision, then the removal
    /// (a removal beats a definition of the same revision), then the higher origin id, so every host picks the same
    /// winner whatever the order it learnt them in.
    fn beats(&self, origin: NodeId, other: &ServiceRecord, other_origin: NodeId) -> bool {
        (self.revision, self.removed, origin) > (other.revision, other.removed, other_origin)
    }
}

impl Codec for ServiceRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        crate::codec::put_bytes(out, self.name.as_bytes());
        self.port.encode(out);
        self.target.encode(out);
        let protocol: u8 = match self.protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        };
        protocol.encode(out);
        let policy: u8 = match self.policy {
            Policy::RoundRobin => 0,
            Policy::LeastConnections => 1,
        };
        policy.encode(out);
        self.proxy_protocol.encode(out);
        self.revision.encode(out);
        self.removed.encode(out);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = std::str::from_utf8(get_bytes(r, MAX_SERVICE_NAME, "service name")?)
            .ok()
            .filter(|n| valid_service_name(n))
            .ok_or(DecodeError::Invalid("service name"))?
            .to_owned();
        let port = u16::decode(r)?;
        let target = u16::decode(r)?;
        if port == 0 || target == 0 {
            return Err(DecodeError::Invalid("port"));
        }
        let protocol = match u8::decode(r)? {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return Err(DecodeError::Invalid("protocol")),
        };
        let policy = match u8::decode(r)? {
            0 => Policy::RoundRobin,
            1 => Policy::LeastConnections,
            _ => return Err(DecodeError::Invalid("policy")),
        };
        let proxy_protocol = bool::decode(r)?;
        if proxy_protocol && protocol != Protocol::Tcp {
            return Err(DecodeError::Invalid("proxy protocol"));
        }
        Ok(Self {
            name,
            port,
            target,
            protocol,
            policy,
            proxy_protocol,
            revision: u64::decode(r)?,
            removed: bool::decode(r)?,
        })
    }
}

/// An endpoint that serves a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The address connections go to: the endpoint's first IPv4 address, else its first address.
    pub ip: IpAddr,
    /// The endpoint's name (`web-1`), or empty.
    pub name: String,
    /// Its network.
    pub vni: Vni,
    /// The VTEP of the host it is on.
    pub vtep: IpAddr,
}

/// The cluster's services and their backends, as one host sees the gossip records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Per service name, the winning definition and who wrote it.
    definitions: BTreeMap<String, (NodeId, ServiceRecord)>,
    /// Per service name, its backends, sorted and without duplicates.
    backends: BTreeMap<String, Vec<Backend>>,
    /// Records whose value did not decode or did not match the key.
    pub undecodable: u64,
}

impl Catalog {
    /// Builds the view from every visible record `(origin, key, value)`; other record kinds are skipped.
    pub fn from_records<'a>(records: impl IntoIterator<Item = (NodeId, &'a [u8], &'a [u8])>) -> Self {
        let mut catalog = Catalog::default();
        for (origin, key, value) in records {
            if let Some(name) = parse_service_key(key) {
                match ServiceRecord::from_bytes(value) {
                    Ok(record) if record.name == name => {
                        let wins = catalog
                            .definitions
                            .get(name)
                            .is_none_or(|(other_origin, other)| record.beats(origin, other, *other_origin));
                        if wins {
                            catalog.definitions.insert(name.to_owned(), (origin, record));
                        }
                    }
                    _ => catalog.undecodable += 1,
                }
            } else if let Some(RecordKey::Endpoint(vni, mac)) = RecordKey::parse(key) {
                match EndpointRecord::from_bytes(value) {
                    Ok(record) if record.vni == vni && record.mac == mac => {
                        let Some(ip) = record.ips.iter().find(|ip| ip.is_ipv4()).or(record.ips.first()) else {
                            continue;
                        };
                        for (_, service) in record.labels.iter().filter(|(k, _)| k == SERVICE_LABEL) {
                            let backend =
                                Backend { ip: *ip, name: record.name.clone(), vni: record.vni, vtep: record.vtep };
                            catalog.backends.entry(service.clone()).or_default().push(backend);
                        }
                    }
                    _ => catalog.undecodable += 1,
                }
            }
        }
        for list in catalog.backends.values_mut() {
            list.sort();
            // Two claims of one endpoint (the directory's conflict case) are one backend.
            list.dedup_by(|a, b| a.ip == b.ip && a.vni == b.vni);
        }
        catalog
    }

    /// The services in force (removed ones left out), by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.definitions.values().map(|(_, r)| r).filter(|r| !r.removed)
    }

    /// The winning definition of `name`, removed or not.
    pub fn definition(&self, name: &str) -> Option<&ServiceRecord> {
        self.definitions.get(name).map(|(_, r)| r)
    }

    /// The endpoints labelled `service=<name>`, sorted.
    pub fn backends(&self, name: &str) -> &[Backend] {
        self.backends.get(name).map_or(&[], Vec::as_slice)
    }

    /// The definitions node `me` must (re-)publish so that every winning definition is also its own: those it does
    /// not hold yet, or holds in an older version. `own` is what `me` currently publishes, by name.
    pub fn adopt(&self, me: NodeId, own: &BTreeMap<String, ServiceRecord>) -> Vec<ServiceRecord> {
        self.definitions
            .iter()
            .filter(|(name, (origin, record))| *origin != me && own.get(*name) != Some(record))
            .map(|(_, (_, record))| record.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MacAddr;
    use proptest::prelude::*;

    fn service(name: &str, revision: u64) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            port: 8080,
            target: 80,
            protocol: Protocol::Tcp,
            policy: Policy::RoundRobin,
            proxy_protocol: false,
            revision,
            removed: false,
        }
    }

    fn record() -> impl Strategy<Value = ServiceRecord> {
        (
            "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?",
            1u16..,
            1u16..,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(name, port, target, udp, least, proxy, revision, removed)| ServiceRecord {
                name,
                port,
                target,
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                policy: if least { Policy::LeastConnections } else { Policy::RoundRobin },
                proxy_protocol: proxy && !udp,
                revision,
                removed,
            })
    }

    proptest! {
        #[test]
        fn service_records_round_trip(r in record()) {
            prop_assert_eq!(ServiceRecord::from_bytes(&r.to_bytes()), Ok(r.clone()));
            let key = service_key(&r.name);
            prop_assert_eq!(parse_service_key(&key), Some(r.name.as_str()));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = ServiceRecord::from_bytes(&bytes);
            let _ = parse_service_key(&bytes);
        }

        #[test]
        fn the_winner_does_not_depend_on_the_order(revs in proptest::collection::vec((0u64..4, 0u8..4, any::<bool>()), 1..8)) {
            let values: Vec<(NodeId, Vec<u8>)> = revs
                .iter()
                .map(|(rev, origin, removed)| (NodeId([*origin; 16]), ServiceRecord { removed: *removed, ..service("web", *rev) }.to_bytes()))
                .collect();
            let key = service_key("web");
            let forward = Catalog::from_records(values.iter().map(|(o, v)| (*o, key.as_slice(), v.as_slice())));
            let backward = Catalog::from_records(values.iter().rev().map(|(o, v)| (*o, key.as_slice(), v.as_slice())));
            prop_assert_eq!(forward.definition("web"), backward.definition("web"));
        }
    }

    #[test]
    fn the_encoding_is_exact_and_checked() {
        let r = ServiceRecord { proxy_protocol: true, ..service("web", 0x0102) };
        let bytes = r.to_bytes();
        assert_eq!(
            bytes,
            [&[0, 0, 0, 3][..], b"web", &[0x1f, 0x90, 0, 80, 6, 0, 1], &[0, 0, 0, 0, 0, 0, 1, 2], &[0],].concat()
        );
        assert_eq!(service_key("web"), b"svc/web");
        assert_eq!(parse_service_key(b"svc/Web"), None);
        assert_eq!(parse_service_key(b"svc/"), None);
        assert_eq!(parse_service_key(b"ep/web"), None);
        let mut udp_proxy = bytes.clone();
        udp_proxy[11] = 17;
        assert_eq!(ServiceRecord::from_bytes(&udp_proxy), Err(DecodeError::Invalid("proxy protocol")));
        let mut zero_port = bytes.clone();
        zero_port[7..9].copy_from_slice(&[0, 0]);
        assert_eq!(ServiceRecord::from_bytes(&zero_port), Err(DecodeError::Invalid("port")));
        assert_eq!(ServiceRecord::from_bytes(&[bytes.as_slice(), &[0]].concat()), Err(DecodeError::TrailingBytes));
        assert!(valid_service_name("web-1") && !valid_service_name("-web") && !valid_service_name(&"a".repeat(64)));
    }

    fn endpoint(mac: u8, ips: &[[u8; 4]], service: &str, vtep: u8) -> (Vec<u8>, Vec<u8>) {
        let vni = Vni::new(100).unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, mac]);
        let record = EndpointRecord {
            vni,
            mac,
            ips: ips.iter().map(|ip| IpAddr::from(*ip)).collect(),
            vtep: IpAddr::from([198, 18, 0, vtep]),
            name: format!("{service}-{mac}"),
            labels: vec![("tier".into(), "front".into()), (SERVICE_LABEL.into(), service.into())],
        };
        (RecordKey::Endpoint(vni, mac).to_bytes(), record.to_bytes())
    }

    #[test]
    fn catalog_collects_definitions_backends_and_what_to_adopt() {
        let (a, b, me) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let web_old = service("web", 10);
        let web_new = ServiceRecord { port: 9090, ..service("web", 20) };
        let dns_removed = ServiceRecord { removed: true, ..service("dns", 5) };
        let records = [
            (a, service_key("web"), web_old.to_bytes()),
            (b, service_key("web"), web_new.to_bytes()),
            (a, service_key("dns"), service("dns", 4).to_bytes()),
            (b, service_key("dns"), dns_removed.to_bytes()),
            (a, service_key("bad"), service("web", 1).to_bytes()),
            (me, service_key("web"), web_old.to_bytes()),
        ];
        let backends = [
            endpoint(1, &[[198, 19, 0, 21]], "web", 2),
            endpoint(2, &[], "web", 2),
            endpoint(3, &[[198, 19, 0, 31]], "api", 3),
        ];
        let all = records
            .iter()
            .map(|(o, k, v)| (*o, k.as_slice(), v.as_slice()))
            .chain(backends.iter().map(|(k, v)| (a, k.as_slice(), v.as_slice())));
        let catalog = Catalog::from_records(all);
        assert_eq!(catalog.services().collect::<Vec<_>>(), vec![&web_new], "dns is removed");
        assert_eq!(catalog.definition("dns"), Some(&dns_removed));
        assert_eq!(catalog.undecodable, 1, "a record under another name's key is refused");
        let web: Vec<IpAddr> = catalog.backends("web").iter().map(|b| b.ip).collect();
        assert_eq!(web, vec![IpAddr::from([198, 19, 0, 21])], "an endpoint without an address serves nothing");
        assert_eq!(catalog.backends("api")[0].vtep, IpAddr::from([198, 18, 0, 3]));
        assert!(catalog.backends("none").is_empty());

        let own = BTreeMap::from([("web".to_owned(), web_old)]);
        assert_eq!(catalog.adopt(me, &own), vec![dns_removed.clone(), web_new.clone()]);
        let own = BTreeMap::from([("web".to_owned(), web_new), ("dns".to_owned(), dns_removed)]);
        assert!(catalog.adopt(me, &own).is_empty());
    }
}
