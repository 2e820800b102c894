//! The per-packet paths allocate nothing: a counting global allocator watches the encap and decap paths, plaintext
//! and encrypted, TSO segmentation and GRO coalescing, once their tables are warm.
//!
//! The count is per thread, so the test harness's own threads cannot disturb it, and the test fails on the first
//! allocation anyone adds to these paths.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use overlay_proto::fdb::FdbConfig;
use overlay_proto::forward::{
    Egress, Forwarder, ForwarderConfig, Learning, NetworkConfig, RateLimit, HEADROOM, TAILROOM,
};
use overlay_proto::keying::KeyEvent;
use overlay_proto::offload::{self, flags, gso, Coalescer, GatherCoalescer, Push, VirtioNetHdr};
use overlay_proto::{MacAddr, Vni};
use weft_crypto::keys::{Cipher, SaKeys};
use weft_crypto::Spi;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the counter is a const-initialised thread-local
// Cell, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is System's too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc` or `realloc` above, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const H1: [u8; 4] = [198, 18, 0, 1];
const H2: [u8; 4] = [198, 18, 0, 2];
const C1: MacAddr = MacAddr([2, 0x19, 0, 0, 1, 1]);
const C2: MacAddr = MacAddr([2, 0x19, 0, 0, 2, 1]);
const ROUNDS: usize = 2_000;

fn host(local: [u8; 4], peer: [u8; 4], encrypted: bool, now: Instant) -> Forwarder {
    Forwarder::new(
        ForwarderConfig {
            local_vtep: IpAddr::from(local),
            fdb: FdbConfig::default(),
            flow_seed: 7,
            local_ageing: Duration::from_secs(300),
            vxlan_port: 4789,
            networks: vec![NetworkConfig {
                vni: Vni::new(100).unwrap(),
                learning: Learning::Peers,
                peers: vec![IpAddr::from(peer)],
                static_fdb: vec![],
                flood_limit: RateLimit::default(),
                gateways: Vec::new(),
                bridge_macs: Vec::new(),
                encrypted,
            }],
        },
        now,
    )
}

/// Two hosts of one network; with `encrypted`, one SA each way.
fn pair(encrypted: bool, now: Instant) -> (Forwarder, Forwarder) {
    let (mut a, mut b) = (host(H1, H2, encrypted, now), host(H2, H1, encrypted, now));
    if encrypted {
        let sa = |from: &mut Forwarder, to: &mut Forwarder, local: [u8; 4], peer: [u8; 4], spi: u32| {
            let (spi, keys) = (Spi::new(spi).unwrap(), || SaKeys::new(Cipher::Aes128Gcm, &[9; 16], [1, 2, 3, 4]));
            to.handle_key_event(KeyEvent::InstallInbound { vtep: local.into(), spi, keys: keys().unwrap(), epoch: 1 });
            from.handle_key_event(KeyEvent::SetOutbound { vtep: peer.into(), spi, keys: keys().unwrap(), epoch: 1 });
        };
        sa(&mut a, &mut b, H1, H2, 0x100);
        sa(&mut b, &mut a, H2, H1, 0x200);
    }
    (a, b)
}

/// Ethernet + IPv4 + TCP (ACK) from `src` to `dst` with `payload` bytes, checksums left for the segmenter.
fn tcp_frame(src: MacAddr, dst: MacAddr, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 20 + payload) as u16;
    f[14..24].copy_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 1, 0x40, 0, 64, 6]);
    f[26..34].copy_from_slice(&[198, 19, 0, 11, 198, 19, 0, 21]);
    f[34..38].copy_from_slice(&[0x30, 0x39, 0x14, 0x51]);
    f[38..42].copy_from_slice(&1000u32.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x10;
    f[48..50].copy_from_slice(&[0xff, 0xff]);
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// Sends `frame` from `from` to `to` the way the data path does: decide, encapsulate (and seal) in place, then
/// receive it. Returns the inner frame's length as `to` delivers it.
fn one_way(from: &mut Forwarder, to: &mut Forwarder, buf: &mut [u8], frame_len: usize, now: Instant) -> usize {
    let frame = HEADROOM..HEADROOM + frame_len;
    let (vtep, flow) = match from.handle_tap_frame(now, 0, &buf[frame.clone()]) {
        Egress::Unicast { vtep, flow } => (vtep, flow),
        Egress::Flood { vteps: [vtep], flow } => (*vtep, flow),
        other => panic!("expected one VTEP, got {other:?}"),
    };
    let (datagram, port) = from.encapsulate(0, vtep, flow, buf, frame).unwrap();
    let source = IpAddr::from(if vtep == IpAddr::from(H2) { H1 } else { H2 });
    let ingress = match port {
        overlay_proto::forward::Port::Esp => to.handle_esp(now, source, &mut buf[datagram]),
        overlay_proto::forward::Port::Vxlan => to.handle_underlay(now, source, &buf[datagram]),
    };
    ingress.unwrap().frame.len()
}

fn check_round_trips(encrypted: bool) {
    let now = Instant::now();
    let (mut a, mut b) = pair(encrypted, now);
    let forth = tcp_frame(C1, C2, 1400);
    let back = tcp_frame(C2, C1, 0);
    let mut buf = vec![0u8; HEADROOM + forth.len() + TAILROOM];
    let mut run = |a: &mut Forwarder, b: &mut Forwarder| {
        for _ in 0..ROUNDS {
            buf[HEADROOM..HEADROOM + back.len()].copy_from_slice(&back);
            assert_eq!(one_way(b, a, &mut buf, back.len(), now), back.len());
            buf[HEADROOM..HEADROOM + forth.len()].copy_from_slice(&forth);
            assert_eq!(one_way(a, b, &mut buf, forth.len(), now), forth.len());
        }
    };
    // The first frames flood (nothing is learned yet) and fill the tables; after that every frame is unicast.
    run(&mut a, &mut b);
    let flooded = a.stats().tx_flooded + b.stats().tx_flooded;
    let count = allocations(|| run(&mut a, &mut b));
    assert_eq!(a.stats().tx_flooded + b.stats().tx_flooded, flooded, "the measured frames were all unicast");
    let kind = if encrypted { "encrypted" } else { "plaintext" };
    assert_eq!(count, 0, "{kind}: {count} allocations in {} round trips", 2 * ROUNDS);
}

#[test]
fn plaintext_encap_and_decap_allocate_nothing() {
    check_round_trips(false);
}

#[test]
fn encrypted_encap_seal_and_open_decap_allocate_nothing() {
    check_round_trips(true);
}

#[test]
fn segmentation_and_coalescing_allocate_nothing() {
    let superframe = tcp_frame(C1, C2, 64_000);
    let hdr = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::TCPV4,
        hdr_len: 54,
        gso_size: 1400,
        csum_start: 34,
        csum_offset: 16,
    };
    let stride = offload::max_segment_len(&hdr, &superframe).unwrap() + 64;
    let mut out = vec![0u8; 64 * stride];
    let mut lens = vec![0usize; 64];
    let mut gro = vec![0u8; VirtioNetHdr::LEN + 65_536];
    let mut coalescer = Coalescer::new();
    let mut round = || {
        let count = offload::segment(&hdr, &superframe, &mut out, 32, stride, &mut lens).unwrap();
        assert_eq!(count, 46);
        for (i, len) in lens[..count].iter().enumerate() {
            let start = 32 + i * stride;
            assert_eq!(coalescer.push(&mut gro, &out[start..start + len]), Push::Appended, "segment {i}");
        }
        assert_eq!(coalescer.finish(&mut gro), Some(VirtioNetHdr::LEN + superframe.len()));
    };
    round();
    let count = allocations(|| {
        for _ in 0..200 {
            round();
        }
    });
    assert_eq!(count, 0, "{count} allocations in 200 rounds of segmenting and coalescing a 64 KB superframe");
}

#[test]
fn gathered_segmentation_and_coalescing_allocate_nothing() {
    let superframe = tcp_frame(C1, C2, 64_000);
    let hdr = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::TCPV4,
        hdr_len: 54,
        gso_size: 1400,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut arena = vec![0u8; 64 * 160];
    let mut payloads = vec![0..0; 64];
    // The segments as they would arrive: each after an 8-byte VXLAN header, back to back in a receive buffer.
    let mut rx = vec![0u8; 70 * 1500];
    let mut frames = Vec::with_capacity(64);
    let mut head = [0u8; offload::GATHER_HEAD];
    let mut coalescer = GatherCoalescer::new();
    let mut round = || {
        let gather = offload::segment_gather(&hdr, &superframe, 8, &mut arena, &mut payloads).unwrap();
        assert_eq!(gather.count, 46);
        frames.clear();
        let mut at = 0;
        for (i, payload) in payloads[..gather.count].iter().enumerate() {
            let headers = &arena[i * gather.block + 8..(i + 1) * gather.block];
            let len = headers.len() + payload.len();
            rx[at + 8..at + 8 + headers.len()].copy_from_slice(headers);
            rx[at + 8 + headers.len()..at + 8 + len].copy_from_slice(&superframe[payload.clone()]);
            frames.push(at + 8..at + 8 + len);
            at += 8 + len;
        }
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(coalescer.push(&mut head, &rx, frame.clone()), Push::Appended, "segment {i}");
        }
        let (block, ranges) = coalescer.finish(&mut head).unwrap();
        assert_eq!(block - VirtioNetHdr::LEN + ranges.iter().map(|r| r.len()).sum::<usize>(), superframe.len());
    };
    round();
    let count = allocations(|| {
        for _ in 0..200 {
            round();
        }
    });
    assert_eq!(count, 0, "{count} allocations in 200 rounds of gathered segmenting and coalescing");
}

#[test]
fn the_counter_sees_allocations() {
    let count = allocations(|| {
        std::hint::black_box(vec![0u8; 100]);
    });
    assert_eq!(count, 1);
}
