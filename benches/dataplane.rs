//! Per-packet cost of the data path's protocol work, without IO:
//!
//! - `encap` / `decap`: plaintext. The forwarding decision plus in-place VXLAN encapsulation (TAP → underlay), and
//!   validation plus decapsulation (underlay → TAP).
//! - `encap_seal` / `open_decap`: an encrypted network. `encap_seal` is `Forwarder::encapsulate` for a decided VTEP
//!   (VXLAN header, inner UDP header, SA lookup, ESP seal in place): the work done per segment of a TSO superframe,
//!   whose forwarding decision is taken once per superframe (`classify`). `open_decap` is everything from the ESP
//!   packet to the inner frame: SPI lookup, replay check, ICV, VNI and sender checks, learning.
//! - `classify`: the forwarding decision alone for a frame from the TAP (FDB, neighbour and endpoint discovery).
//! - `raw_seal` / `raw_open`: ring's AES-128-GCM on the same number of bytes, nothing else. This is the floor the
//!   encrypted paths are held to: at the end of a run, the ratio of each encrypted path to the raw AEAD at the same
//!   size is printed (and written to `target/criterion/ratios.md`). Both sides of a ratio come from the same run.
//! - `fdb_lookup`: one lookup in a table of 10,000 learned MACs.
//!
//! Frames are 64, 1400 and 9000 bytes. Buffers that sealing or opening consume are refilled in criterion's untimed
//! setup (`iter_batched_ref`), for the raw AEAD and weft alike, so the comparison is like for like.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use overlay_proto::fdb::{Fdb, FdbConfig};
use overlay_proto::forward::{encapsulate, HEADROOM};
use overlay_proto::MacAddr;
use ring::aead::Aad;

mod common;

use common::*;

/// The (encrypted path, raw AEAD) pairs whose ratio the run reports.
const RATIOS: [(&str, &str); 2] = [("encap_seal", "raw_seal"), ("open_decap", "raw_open")];

fn encap(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("encap");
    for size in SIZES {
        let mut fw = forwarder(now, LOCAL, PEER, false);
        let mut buf = framed(&frame(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let (_, flow) = classify_frame(&mut fw, now, &buf, size);
                let datagram = encapsulate(vni(), &mut buf, HEADROOM..HEADROOM + size);
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
        let mut fw = forwarder(now, PEER, LOCAL, false);
        let mut buf = framed(&frame(size));
        let datagram = encapsulate(vni(), &mut buf, HEADROOM..HEADROOM + size);
        let datagram = buf[datagram].to_vec();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| black_box(fw.handle_underlay(now, IpAddr::from(LOCAL), black_box(&datagram)).unwrap()))
        });
    }
    group.finish();
}

fn classify(c: &mut Criterion) {
    let now = Instant::now();
    let mut fw = forwarder(now, LOCAL, PEER, false);
    let buf = framed(&frame(1400));
    c.bench_function("classify/1400", |b| b.iter(|| black_box(classify_frame(&mut fw, now, black_box(&buf), 1400))));
}

fn encap_seal(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("encap_seal");
    for size in SIZES {
        let (mut fw, _) = encrypted_pair(now);
        let plain = framed(&frame(size));
        let (vtep, flow) = classify_frame(&mut fw, now, &plain, size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_batched_ref(
                || plain.clone(),
                |buf| black_box(fw.encapsulate(0, vtep, flow, buf, HEADROOM..HEADROOM + size).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn raw_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_seal");
    for size in SIZES {
        let key = aead();
        let plain = vec![0x5au8; size];
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_batched_ref(
                || plain.clone(),
                |buf| {
                    counter += 1;
                    black_box(key.seal_in_place_separate_tag(nonce(counter), Aad::from([0u8; 12]), buf).unwrap())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn open_decap(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("open_decap");
    for size in SIZES {
        let (mut sender, mut receiver) = encrypted_pair(now);
        let plain = framed(&frame(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_batched_ref(
                // Each packet is sealed afresh (a new sequence number) outside the timed part.
                || {
                    let mut buf = plain.clone();
                    let (vtep, flow) = classify_frame(&mut sender, now, &buf, size);
                    let (packet, _) = sender.encapsulate(0, vtep, flow, &mut buf, HEADROOM..HEADROOM + size).unwrap();
                    buf[packet].to_vec()
                },
                |packet| black_box(receiver.handle_esp(now, IpAddr::from(LOCAL), packet).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn raw_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_open");
    for size in SIZES {
        let key = aead();
        let mut counter = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_batched_ref(
                || {
                    counter += 1;
                    let mut sealed = vec![0x5au8; size];
                    let tag = key.seal_in_place_separate_tag(nonce(counter), Aad::from([0u8; 12]), &mut sealed);
                    sealed.extend_from_slice(tag.unwrap().as_ref());
                    (counter, sealed)
                },
                |(n, sealed)| black_box(key.open_in_place(nonce(*n), Aad::from([0u8; 12]), sealed).unwrap().len()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn fdb_lookup(c: &mut Criterion) {
    let now = Instant::now();
    let mut fdb = Fdb::new(FdbConfig::default());
    for i in 0..10_000u32 {
        let b = i.to_be_bytes();
        fdb.learn(now, vni(), MacAddr([2, 0, b[0], b[1], b[2], b[3]]), IpAddr::from(PEER));
    }
    let probe = MacAddr([2, 0, 0, 0, 0x13, 0x88]);
    c.bench_function("fdb_lookup/10k", |b| b.iter(|| black_box(fdb.lookup(now, vni(), black_box(probe)))));
}

/// Where criterion writes its estimates: `$CARGO_TARGET_DIR/criterion`, or `target/criterion` of the workspace.
fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// The median time (ns) criterion measured for `group/size`, if it was measured since `since`.
fn median_ns(dir: &Path, group: &str, size: usize, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(size.to_string()).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t >= since);
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    fresh.then(|| estimates["median"]["point_estimate"].as_f64()).flatten()
}

/// Prints, and writes to `criterion/ratios.md`, each encrypted path's median over the raw AEAD's at the same size.
/// Only pairs measured in this run count (a filtered run reports what it measured).
fn report_ratios(since: SystemTime) {
    let dir = criterion_dir();
    let mut table = String::from(
        "| path | size (B) | weft (ns) | raw AES-128-GCM (ns) | ratio |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut rows = 0;
    for (path, raw) in RATIOS {
        for size in SIZES {
            let (Some(ours), Some(floor)) = (median_ns(&dir, path, size, since), median_ns(&dir, raw, size, since))
            else {
                continue;
            };
            let _ = writeln!(table, "| {path} vs {raw} | {size} | {ours:.0} | {floor:.0} | {:.3} |", ours / floor);
            rows += 1;
        }
    }
    if rows == 0 {
        return;
    }
    println!("\nRatios to the raw AEAD (medians, this run):\n{table}");
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("ratios.md"), &table));
}

fn main() {
    // Criterion keeps file times at second granularity on some filesystems: start the clock a second early.
    let started = SystemTime::now() - std::time::Duration::from_secs(1);
    let mut c = Criterion::default().configure_from_args();
    encap(&mut c);
    decap(&mut c);
    classify(&mut c);
    encap_seal(&mut c);
    raw_seal(&mut c);
    open_decap(&mut c);
    raw_open(&mut c);
    fdb_lookup(&mut c);
    c.final_summary();
    report_ratios(started);
}
