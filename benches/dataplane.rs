//! Per-packet cost of the plaintext data path's protocol work: the forwarding decision plus in-place VXLAN
//! encapsulation (TAP → underlay), validation plus decapsulation (underlay → TAP), and the FDB lookup alone.
//! The encrypted variants and their ratio to raw AES-GCM join these with the crypto crate.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use overlay_proto::fdb::{Fdb, FdbConfig};
use overlay_proto::forward::{
    encapsulate, Egress, Forwarder, ForwarderConfig, Learning, NetworkConfig, RateLimit, HEADROOM,
};
use overlay_proto::{MacAddr, Vni};

const SIZES: [usize; 3] = [64, 1400, 9000];
const LOCAL: [u8; 4] = [198, 18, 0, 1];
const PEER: [u8; 4] = [198, 18, 0, 2];
const DST: MacAddr = MacAddr([2, 0x19, 0, 0, 2, 1]);
const SRC: MacAddr = MacAddr([2, 0x19, 0, 0, 1, 1]);

fn forwarder(now: Instant) -> Forwarder {
    Forwarder::new(
        ForwarderConfig {
            local_vtep: IpAddr::from(LOCAL),
            fdb: FdbConfig::default(),
            flow_seed: 1,
            local_ageing: std::time::Duration::from_secs(300),
            vxlan_port: 4789,
            networks: vec![NetworkConfig {
                vni: Vni::new(100).unwrap(),
                learning: Learning::Off,
                peers: vec![IpAddr::from(PEER)],
                static_fdb: vec![(DST, IpAddr::from(PEER)), (SRC, IpAddr::from(LOCAL))],
                flood_limit: RateLimit::default(),
                gateways: Vec::new(),
                encrypted: false,
            }],
        },
        now,
    )
}

/// An Ethernet + IPv4 + UDP frame of `size` bytes from SRC to DST.
fn frame(size: usize) -> Vec<u8> {
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

fn encap(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("encap");
    for size in SIZES {
        let mut fw = forwarder(now);
        let mut buf = vec![0u8; HEADROOM + size];
        buf[HEADROOM..].copy_from_slice(&frame(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let range = HEADROOM..HEADROOM + size;
                let flow = match fw.handle_tap_frame(now, 0, &buf[range.clone()]) {
                    Egress::Unicast { flow, .. } => flow,
                    other => panic!("unexpected {other:?}"),
                };
                let datagram = encapsulate(Vni::new(100).unwrap(), &mut buf, range);
                black_box((flow, &buf[datagram]));
            })
        });
    }
    group.finish();
}

fn decap(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("decap");
    for size in SIZES {
        let mut fw = forwarder(now);
        let mut buf = vec![0u8; HEADROOM + size];
        buf[HEADROOM..].copy_from_slice(&frame(size));
        let datagram = encapsulate(Vni::new(100).unwrap(), &mut buf, HEADROOM..HEADROOM + size);
        let datagram = buf[datagram].to_vec();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| black_box(fw.handle_underlay(now, IpAddr::from(PEER), black_box(&datagram)).unwrap()))
        });
    }
    group.finish();
}

fn fdb_lookup(c: &mut Criterion) {
    let now = Instant::now();
    let vni = Vni::new(100).unwrap();
    let mut fdb = Fdb::new(FdbConfig::default());
    for i in 0..10_000u32 {
        let b = i.to_be_bytes();
        fdb.learn(now, vni, MacAddr([2, 0, b[0], b[1], b[2], b[3]]), IpAddr::from(PEER));
    }
    let probe = MacAddr([2, 0, 0, 0, 0x13, 0x88]);
    c.bench_function("fdb_lookup/10k", |b| b.iter(|| black_box(fdb.lookup(now, vni, black_box(probe)))));
}

criterion_group!(benches, encap, decap, fdb_lookup);
criterion_main!(benches);
