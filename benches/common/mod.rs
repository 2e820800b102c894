//! Setup shared by the benches: a two-host network (VNI 100, host 198.18.0.1 and peer 198.18.0.2), with or without
//! an SA each way, test frames, and the raw AEAD the encrypted paths are compared with.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Instant;

use overlay_proto::fdb::FdbConfig;
use overlay_proto::forward::{
    Egress, Forwarder, ForwarderConfig, Learning, NetworkConfig, RateLimit, HEADROOM, TAILROOM,
};
use overlay_proto::keying::KeyEvent;
use overlay_proto::{MacAddr, Vni};
use ring::aead::{LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use weft_crypto::keys::{Cipher, SaKeys};
use weft_crypto::Spi;

pub const SIZES: [usize; 3] = [64, 1400, 9000];
pub const LOCAL: [u8; 4] = [198, 18, 0, 1];
pub const PEER: [u8; 4] = [198, 18, 0, 2];
pub const DST: MacAddr = MacAddr([2, 0x19, 0, 0, 2, 1]);
pub const SRC: MacAddr = MacAddr([2, 0x19, 0, 0, 1, 1]);
pub const KEY: [u8; 16] = [0x42; 16];
pub const SALT: [u8; 4] = [1, 2, 3, 4];
pub fn vni() -> Vni {
    Vni::new(100).unwrap()
}

/// The forwarder of host `local` with one network, VNI 100, whose only peer is `peer`.
pub fn forwarder(now: Instant, local: [u8; 4], peer: [u8; 4], encrypted: bool) -> Forwarder {
    Forwarder::new(
        ForwarderConfig {
            local_vtep: IpAddr::from(local),
            fdb: FdbConfig::default(),
            flow_seed: 1,
            local_ageing: std::time::Duration::from_secs(300),
            vxlan_port: 4789,
            networks: vec![NetworkConfig {
                vni: vni(),
                learning: Learning::Off,
                peers: vec![IpAddr::from(peer)],
                static_fdb: vec![(DST, IpAddr::from(PEER)), (SRC, IpAddr::from(LOCAL))],
                flood_limit: RateLimit::default(),
                gateways: Vec::new(),
                bridge_macs: Vec::new(),
                encrypted,
            }],
        },
        now,
    )
}

pub fn sa_keys() -> SaKeys {
    SaKeys::new(Cipher::Aes128Gcm, &KEY, SALT).unwrap()
}

/// An encrypted pair: the sender (host 1) holds the outbound SA, the receiver (host 2) the inbound one.
pub fn encrypted_pair(now: Instant) -> (Forwarder, Forwarder) {
    let spi = Spi::new(0x1001).unwrap();
    let mut sender = forwarder(now, LOCAL, PEER, true);
    sender.handle_key_event(KeyEvent::SetOutbound { vtep: IpAddr::from(PEER), spi, keys: sa_keys(), epoch: 1 });
    let mut receiver = forwarder(now, PEER, LOCAL, true);
    receiver.handle_key_event(KeyEvent::InstallInbound { vtep: IpAddr::from(LOCAL), spi, keys: sa_keys(), epoch: 1 });
    (sender, receiver)
}

/// An Ethernet + IPv4 + UDP frame of `size` bytes from SRC to DST.
pub fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[..6].copy_from_slice(&DST.0);
    f[6..12].copy_from_slice(&SRC.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (size - 14) as u16;
    f[14..26].copy_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[26..34].copy_from_slice(&[198, 19, 0, 11, 198, 19, 0, 21]);
    f[34..38].copy_from_slice(&[0x30, 0x39, 0x00, 0x35]);
    f
}

/// A buffer with `frame` at HEADROOM and room for any trailer after it.
pub fn framed(frame: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + frame.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    buf
}

/// The forwarding decision for the frame at HEADROOM: the VTEP and the flow hash.
pub fn classify_frame(fw: &mut Forwarder, now: Instant, buf: &[u8], size: usize) -> (IpAddr, u32) {
    match fw.handle_tap_frame(now, 0, &buf[HEADROOM..HEADROOM + size]) {
        Egress::Unicast { vtep, flow } => (vtep, flow),
        other => panic!("unexpected {other:?}"),
    }
}

pub fn aead() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &KEY).unwrap())
}

pub fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&SALT);
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}
