//! The data-plane records hosts publish over gossip (overlay_proto::endpoint): `EndpointRecord`, `NetworkRecord`
//! and `RecordKey`, and IPAM's block claims (overlay_proto::ipam::BlockClaim), all read from the same input.
//!
//! Invariants: the record encodings are canonical (decode then encode gives back the input, which decodes to the
//! same value), decoded records respect their limits (at most `MAX_IPS` addresses), and a key that parses is the
//! exact encoding of what it parsed to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::codec::Codec;
use overlay_proto::endpoint::{EndpointRecord, NetworkRecord, RecordKey, MAX_IPS};
use overlay_proto::ipam::BlockClaim;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = EndpointRecord::from_bytes(data) {
        assert!(record.ips.len() <= MAX_IPS);
        let encoded = record.to_bytes();
        assert_eq!(encoded, data, "decode then encode changed the bytes of {record:?}");
        assert_eq!(EndpointRecord::from_bytes(&encoded), Ok(record));
    }
    if let Ok(record) = NetworkRecord::from_bytes(data) {
        let encoded = record.to_bytes();
        assert_eq!(encoded, data, "decode then encode changed the bytes of {record:?}");
        assert_eq!(NetworkRecord::from_bytes(&encoded), Ok(record));
    }
    if let Ok(claim) = BlockClaim::from_bytes(data) {
        assert!(claim.prefix <= 32);
        let encoded = claim.to_bytes();
        assert_eq!(encoded, data, "decode then encode changed the bytes of {claim:?}");
        assert_eq!(BlockClaim::from_bytes(&encoded), Ok(claim));
    }
    if let Some(key) = RecordKey::parse(data) {
        assert_eq!(key.to_bytes(), data, "{key:?} does not encode to the key it was parsed from");
        assert_eq!(RecordKey::parse(&key.to_bytes()), Some(key));
    }
});
