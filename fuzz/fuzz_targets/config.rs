//! weft's TOML configuration (weft::config::Config::parse: toml + serde, then `validate`).
//!
//! Invariants: parsing never panics, and an error always renders; a config that parses validates again, every
//! network's VNI and static FDB entries convert without loss (`vni()`, `static_fdb()`), its TAP and bridge names
//! fit Linux's 15-byte limit, and the overlay MTU plus the encapsulation overhead fits the underlay MTU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_proto::Vni;
use weft::config::{Config, VXLAN_OVERHEAD_NO_IP};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    config.validate().expect("a parsed config validates again");
    let underlay = config.node.underlay;
    if let Some(control) = &config.control {
        assert_ne!(control.listen_addr(underlay).port(), 0);
    }
    for (index, net) in config.networks.iter().enumerate() {
        assert_eq!(Ok(net.vni()), Vni::new(net.vni));
        assert_eq!(net.static_fdb().len(), net.fdb.len(), "a validated static FDB entry did not parse");
        assert!(net.tap_name().len() <= 15, "TAP name {:?} too long", net.tap_name());
        let bridge = net.bridge_name();
        assert!(!bridge.is_empty() && bridge.len() <= 15, "bridge name {bridge:?}");
        let overhead = net.overhead(underlay);
        assert!(overhead >= VXLAN_OVERHEAD_NO_IP + 20);
        for underlay_mtu in [0, 1280, 1500, 9000] {
            if let Ok(mtu) = net.overlay_mtu(index, underlay, underlay_mtu) {
                assert!(mtu + overhead <= underlay_mtu.max(overhead), "MTU {mtu} does not fit in {underlay_mtu}");
            }
        }
    }
});
