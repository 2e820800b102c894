//! The ingress's gossip record and wire header (overlay_proto::service, overlay_proto::wire::proxy):
//! `ServiceRecord`, service keys and the PROXY protocol v2 header, all read from the same input.
//!
//! Invariants: the record encoding is canonical (decode then encode gives back the input, which decodes to the same
//! value), a decoded record has a valid name, non-zero ports and PROXY headers only for TCP; a key that parses names
//! a valid service and is the exact key of that name; a PROXY header that parses lies within the input, and one
//! with addresses emits to a header that parses back to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::codec::Codec;
use overlay_proto::service::{parse_service_key, service_key, valid_service_name, Protocol, ServiceRecord};
use overlay_proto::wire::proxy::Repr;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = ServiceRecord::from_bytes(data) {
        assert!(valid_service_name(&record.name));
        assert!(record.port != 0 && record.target != 0);
        assert!(!record.proxy_protocol || record.protocol == Protocol::Tcp);
        let encoded = record.to_bytes();
        assert_eq!(encoded, data, "decode then encode changed the bytes of {record:?}");
        assert_eq!(ServiceRecord::from_bytes(&encoded), Ok(record));
    }
    if let Some(name) = parse_service_key(data) {
        assert!(valid_service_name(name));
        assert_eq!(service_key(name), data);
    }
    if let Ok((repr, len)) = Repr::parse(data) {
        assert!(len <= data.len());
        let mut out = Vec::new();
        repr.emit(&mut out);
        assert_eq!(out.len(), repr.buffer_len());
        assert_eq!(Repr::parse(&out), Ok((repr, out.len())));
    }
});
