//! What hosts tell each other about the data plane, as gossip records (owned and signed by the announcing node):
//!
//! - `ep/<vni><mac>` → [`EndpointRecord`]: a container interface, its addresses, and the VTEP it sits behind;
//! - `net/<vni>` → [`NetworkRecord`]: this host carries the VNI, so it belongs in the VNI's flood list;
//! - `blk/<vni><index>` → [`crate::ipam::BlockClaim`]: this host claims address block `index` of the VNI's subnet.
//!
//! Keys are binary and fixed-length after the prefix, so a key names exactly one (VNI, MAC) or VNI.

use std::net::IpAddr;

use crate::codec::{get_bytes, get_list, put_bytes, put_list, Codec, DecodeError, Reader};
use crate::{MacAddr, Vni};

const ENDPOINT_PREFIX: &[u8] = b"ep/";
const NETWORK_PREFIX: &[u8] = b"net/";
const BLOCK_PREFIX: &[u8] = b"blk/";
/// Most addresses one endpoint record carries.
pub const MAX_IPS: usize = 16;
const MAX_NAME: usize = 64;
const MAX_LABELS: usize = 16;

/// A container interface on an overlay network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The network.
    pub vni: Vni,
    /// The interface's MAC.
    pub mac: MacAddr,
    /// Its IPv4 and IPv6 addresses.
    pub ips: Vec<IpAddr>,
    /// The VTEP (underlay address) of the host it is on.
    pub vtep: IpAddr,
    /// Its name, if it has one (`web-1`), else empty.
    pub name: String,
    /// Labels such as `service=web`.
    pub labels: Vec<(String, String)>,
}

/// A host carries a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkRecord {
    /// The network.
    pub vni: Vni,
    /// The host's VTEP.
    pub vtep: IpAddr,
}

/// What a record key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKey {
    /// An endpoint.
    Endpoint(Vni, MacAddr),
    /// A network membership.
    Network(Vni),
    /// An IPAM block claim: the VNI and the block's index in the subnet.
    Block(Vni, u32),
}

fn vni_bytes(vni: Vni) -> [u8; 3] {
    let b = vni.get().to_be_bytes();
    [b[1], b[2], b[3]]
}

impl RecordKey {
    /// The key's bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            RecordKey::Endpoint(vni, mac) => [ENDPOINT_PREFIX, &vni_bytes(vni), &mac.0].concat(),
            RecordKey::Network(vni) => [NETWORK_PREFIX, &vni_bytes(vni)].concat(),
            RecordKey::Block(vni, index) => [BLOCK_PREFIX, &vni_bytes(vni), &index.to_be_bytes()].concat(),
        }
    }

    /// Reads a key; `None` for keys of other record kinds.
    pub fn parse(key: &[u8]) -> Option<Self> {
        let vni = |b: &[u8]| Vni::from_u24(u32::from_be_bytes([0, b[0], b[1], b[2]]));
        if let Some(rest) = key.strip_prefix(ENDPOINT_PREFIX) {
            (rest.len() == 9).then(|| RecordKey::Endpoint(vni(rest), MacAddr::from_bytes(&rest[3..])))
        } else if let Some(rest) = key.strip_prefix(NETWORK_PREFIX) {
            (rest.len() == 3).then(|| RecordKey::Network(vni(rest)))
        } else if let Some(rest) = key.strip_prefix(BLOCK_PREFIX) {
            (rest.len() == 7)
                .then(|| RecordKey::Block(vni(rest), u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]])))
        } else {
            None
        }
    }
}

impl Codec for MacAddr {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(MacAddr(r.array()?))
    }
}

impl Codec for Vni {
    fn encode(&self, out: &mut Vec<u8>) {
        self.get().encode(out);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Vni::new(u32::decode(r)?).map_err(|_| DecodeError::Invalid("vni"))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn get_str(r: &mut Reader<'_>, what: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(get_bytes(r, MAX_NAME, what)?.to_vec()).map_err(|_| DecodeError::Invalid(what))
}

/// A label pair, for the list codec.
struct Label(String, String);

impl Codec for Label {
    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.0);
        put_str(out, &self.1);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Label(get_str(r, "label")?, get_str(r, "label")?))
    }
}

impl Codec for EndpointRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        self.vni.encode(out);
        self.mac.encode(out);
        self.vtep.encode(out);
        put_list(out, &self.ips);
        put_str(out, &self.name);
        let labels: Vec<Label> = self.labels.iter().map(|(k, v)| Label(k.clone(), v.clone())).collect();
        put_list(out, &labels);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let vni = Vni::decode(r)?;
        let mac = MacAddr::decode(r)?;
        let vtep = IpAddr::decode(r)?;
        let ips: Vec<IpAddr> = get_list(r, 5, "address count")?;
        if ips.len() > MAX_IPS {
            return Err(DecodeError::Invalid("address count"));
        }
        let name = get_str(r, "name")?;
        let labels: Vec<Label> = get_list(r, 8, "label count")?;
        if labels.len() > MAX_LABELS {
            return Err(DecodeError::Invalid("label count"));
        }
        Ok(Self { vni, mac, ips, vtep, name, labels: labels.into_iter().map(|Label(k, v)| (k, v)).collect() })
    }
}

impl Codec for NetworkRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        self.vni.encode(out);
        self.vtep.encode(out);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { vni: Vni::decode(r)?, vtep: IpAddr::decode(r)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn endpoint() -> impl Strategy<Value = EndpointRecord> {
        (
            0u32..=Vni::MAX,
            any::<[u8; 6]>(),
            proptest::collection::vec(any::<[u8; 16]>(), 0..MAX_IPS),
            any::<[u8; 4]>(),
            "[a-z0-9-]{0,20}",
            proptest::collection::vec(("[a-z]{1,8}", "[a-z0-9]{0,8}"), 0..4),
        )
            .prop_map(|(vni, mac, ips, vtep, name, labels)| EndpointRecord {
                vni: Vni::new(vni).unwrap(),
                mac: MacAddr(mac),
                ips: ips.into_iter().map(|a| IpAddr::from(a).to_canonical()).collect(),
                vtep: IpAddr::from(vtep),
                name,
                labels,
            })
    }

    proptest! {
        #[test]
        fn endpoint_round_trips(e in endpoint()) {
            prop_assert_eq!(EndpointRecord::from_bytes(&e.to_bytes()), Ok(e.clone()));
            let key = RecordKey::Endpoint(e.vni, e.mac);
            prop_assert_eq!(RecordKey::parse(&key.to_bytes()), Some(key));
        }

        #[test]
        fn network_round_trips(vni in 0u32..=Vni::MAX, vtep in any::<[u8; 16]>()) {
            let n = NetworkRecord { vni: Vni::new(vni).unwrap(), vtep: IpAddr::from(vtep) };
            prop_assert_eq!(NetworkRecord::from_bytes(&n.to_bytes()), Ok(n));
            prop_assert_eq!(RecordKey::parse(&RecordKey::Network(n.vni).to_bytes()), Some(RecordKey::Network(n.vni)));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = EndpointRecord::from_bytes(&bytes);
            let _ = RecordKey::parse(&bytes);
        }
    }

    #[test]
    fn keys_are_exact() {
        let key = RecordKey::Endpoint(Vni::new(0x12_3456).unwrap(), MacAddr([2, 0x19, 0, 0, 1, 1]));
        assert_eq!(key.to_bytes(), b"ep/\x12\x34\x56\x02\x19\x00\x00\x01\x01");
        assert_eq!(RecordKey::parse(b"ep/\x12\x34"), None);
        assert_eq!(RecordKey::parse(b"svc/web"), None);
        let block = RecordKey::Block(Vni::new(100).unwrap(), 3);
        assert_eq!(block.to_bytes(), b"blk/\x00\x00\x64\x00\x00\x00\x03");
        assert_eq!(RecordKey::parse(&block.to_bytes()), Some(block));
        assert_eq!(RecordKey::parse(b"blk/\x00\x00\x64\x00"), None);
        assert_eq!(EndpointRecord::from_bytes(&[0xff; 4]), Err(DecodeError::Invalid("vni")));
    }
}
