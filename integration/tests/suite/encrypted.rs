//! Encrypted networks end to end (ESP-in-UDP with AES-GCM, keys agreed per host pair over the QUIC control plane):
//! - three hosts with gossip carry IPv4, IPv6 and 2 × 100 MiB of TCP between their containers, and nothing of it is
//!   on the underlay in clear: a marker in every payload is absent from a capture of host 1's underlay, and
//!   nothing goes to the plaintext VXLAN port;
//! - tshark, given the keylog's `esp_sa` rows, decrypts the capture down to the containers' ICMP, and without
//!   them sees only ESP;
//! - a 60 s TCP stream survives a rekey every 5 s with no authentication failure and no replay drop;
//! - replays, forged (bit-flipped) packets, unknown SPIs and plaintext VXLAN for the encrypted network, injected on
//!   the underlay, are each dropped and counted under their own reason, and none reaches a container.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use weft_integration::encrypted::{
    contains, drop_deltas, drops, drops_of, epochs, esp_header, inject, iperf3, keying, keylog_rows,
    marked_random_file, ping_pattern, random_bytes, read_pcap, start_bulk_capture, transfer, udp4, wait_counter,
    EncryptedLab, EncryptedOptions, ESP_PORT, VNI, VXLAN_PORT,
};
use weft_integration::weft::{counter, link_info, ping_mesh, query};
use weft_integration::{
    exec_stdout, ping, ping_until, tshark_fields, tshark_fields_with, wait_until, Capture, Container,
};

/// In every payload the first test sends: ping data and the transferred file.
const MARKER: &[u8; 16] = b"WEFT-MARKER-7f3a";
/// Bytes of each transfer.
const TRANSFER_BYTES: usize = 100 << 20;
/// Time allowed for one transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks that a host's counters show encryption at work and no sign of trouble: ESP sealed and opened, and no
/// plaintext, authentication, replay or unknown-SPI drop.
fn check_clean(e: &EncryptedLab, i: usize) -> Result<()> {
    let stats = query(&e.lab, i, "stats")?;
    ensure!(counter(&stats, "esp_sealed")? > 0, "host {i} sealed no ESP: {stats}");
    ensure!(counter(&stats, "esp_opened")? > 0, "host {i} opened no ESP: {stats}");
    for reason in ["plaintext_on_encrypted", "authentication", "replay", "unknown_spi", "esp_malformed"] {
        let n = counter(&stats, &format!("drops.{reason}"))?;
        ensure!(n == 0, "host {i} dropped {n} packets for {reason}: {stats}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn three_hosts_encrypted() -> Result<()> {
    let e = EncryptedLab::up("enc3", &EncryptedOptions::new(3, 1))?;
    for i in 1..=3 {
        let ep = epochs(&e.lab, i)?;
        let mut ids: Vec<&str> = ep.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        let mut expected: Vec<&str> = (1..=3).filter(|&j| j != i).map(|j| e.certs[j - 1].id.as_str()).collect();
        expected.sort();
        ensure!(ids == expected, "host {i} has key epochs with {ids:?}, expected the other hosts {expected:?}");
    }
    // The TAP got the configured MTU, which fits under ESP's overhead.
    let tap = link_info(&e.lab.host(1).ns, &format!("wft{VNI}"))?.context("host 1 has no TAP")?;
    ensure!(tap.mtu == 1400, "host 1's TAP has MTU {}, expected 1400", tap.mtu);

    let containers: Vec<Container> = (1..=3).map(|i| e.container(i, 1)).collect();
    let start = Instant::now();
    ping_mesh(&containers, &[true, false], Duration::from_secs(10), 3)?;
    eprintln!("every container reached every other over IPv4 and IPv6 in {} ms", start.elapsed().as_millis());

    let file = e.lab.dir().join("marked.bin");
    marked_random_file(&file, TRANSFER_BYTES, MARKER)?;
    let (c1, c2) = (&containers[0], &containers[1]);

    let h1 = e.lab.host(1).ns;
    let pcap = e.lab.dir().join("ul0.pcap");
    let underlay = start_bulk_capture(&e.lab, &h1, "ul0", "udp port 4500 or udp port 4789", &pcap, 256 << 10)?;
    // The same traffic on host 1's bridge, in clear: the control that shows the marker search finds the marker
    // where it is in clear (only during the pings; the transfers would make it large).
    let inner = Capture::start(&h1, "br-blue", "icmp or icmp6", &e.lab.dir().join("inner.pcap"))?;
    for to in &containers[1..] {
        for addr in [IpAddr::V4(to.ipv4), IpAddr::V6(to.ipv6)] {
            ping_pattern(&c1.ns, addr, 3, 1000, MARKER)?;
        }
    }
    let inner = inner.stop()?;
    let before = query(&e.lab, 1, "stats")?;
    transfer(&e.lab, c1, c2, IpAddr::V4(c2.ipv4), &file, TRANSFER_TIMEOUT)?;
    transfer(&e.lab, c2, c1, IpAddr::V6(c1.ipv6), &file, TRANSFER_TIMEOUT)?;
    let after = query(&e.lab, 1, "stats")?;
    let status = underlay.stop()?;
    ensure!(status.success(), "tcpdump on host 1's ul0 ended with {status}: {}", underlay.log());
    eprintln!("tcpdump on host 1's ul0: {}", underlay.log().trim().replace('\n', "; "));

    // Host 1's own counters: every frame of the transfers went out sealed and came in opened.
    let sealed = counter(&after, "esp_sealed")? - counter(&before, "esp_sealed")?;
    let opened = counter(&after, "esp_opened")? - counter(&before, "esp_opened")?;
    let min_packets = (TRANSFER_BYTES / 1400) as u64;
    ensure!(sealed >= min_packets, "host 1 sealed {sealed} ESP packets during the transfers, expected ≥ {min_packets}");
    ensure!(opened >= min_packets, "host 1 opened {opened} ESP packets during the transfers, expected ≥ {min_packets}");

    let inner_bytes = std::fs::read(&inner)?;
    ensure!(contains(&inner_bytes, MARKER), "the marker is not even in the clear capture on br-blue");
    let bytes = std::fs::read(&pcap)?;
    ensure!(
        !contains(&bytes, MARKER),
        "the marker {:?} is on host 1's underlay in clear",
        String::from_utf8_lossy(MARKER)
    );
    let frames = read_pcap(&pcap)?;
    let (mut esp, mut esp_bytes, mut vxlan, mut other) = (0u64, 0u64, 0u64, 0u64);
    for frame in &frames {
        match udp4(frame) {
            Some(u) if u.src_port == VXLAN_PORT || u.dst_port == VXLAN_PORT => vxlan += 1,
            // ESP-in-UDP goes to port 4500; the source port carries the inner flow's entropy.
            Some(u) if u.dst_port == ESP_PORT => {
                esp += 1;
                esp_bytes += u.payload.len() as u64;
            }
            _ => other += 1,
        }
    }
    eprintln!(
        "host 1's ul0: {} MB captured, {esp} ESP-in-UDP packets ({} MB of ESP), {vxlan} plaintext VXLAN, {other} other",
        bytes.len() / 1_000_000,
        esp_bytes / 1_000_000
    );
    ensure!(vxlan == 0, "{vxlan} packets to or from UDP {VXLAN_PORT} on host 1's underlay: plaintext VXLAN");
    ensure!(other == 0, "{other} captured packets are neither ESP-in-UDP to 4500 nor VXLAN");
    // Most of the 200 MiB is in the capture (tcpdump may drop some under load, it says how many in its log).
    ensure!(
        esp_bytes >= TRANSFER_BYTES as u64,
        "only {esp_bytes} bytes of ESP captured for 2 × {TRANSFER_BYTES} bytes transferred"
    );
    for i in 1..=3 {
        check_clean(&e, i)?;
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn tshark_decrypts_with_the_keylog() -> Result<()> {
    const PINGS: usize = 5;
    let e = EncryptedLab::up("enctsk", &EncryptedOptions { keylog: vec![1], ..EncryptedOptions::new(2, 1) })?;
    let (a, b) = (e.container(1, 1), e.container(2, 1));
    // ARP is resolved before the capture, so the capture holds the ping flow and little else.
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;
    let capture = Capture::start(&e.lab.host(1).ns, "ul0", "udp port 4500", &e.lab.dir().join("esp.pcap"))?;
    ping(&a.ns, IpAddr::V4(b.ipv4), PINGS as u32)?;
    let pcap = capture.stop()?;

    // One row per SA: host 1's outbound to host 2 and its inbound from host 2, at least.
    let rows = keylog_rows(&e.keylog(1))?;
    let (h1, h2) = (e.lab.host(1).underlay.to_string(), e.lab.host(2).underlay.to_string());
    for (src, dst) in [(&h1, &h2), (&h2, &h1)] {
        let prefix = format!("\"IPv4\",\"{src}\",\"{dst}\",\"0x");
        ensure!(rows.iter().any(|r| r.starts_with(&prefix)), "the keylog has no SA {src} → {dst}: {rows:?}");
    }
    for row in &rows {
        ensure!(row.contains("\"AES-GCM with 16 octet ICV [RFC4106]\""), "keylog row of another cipher: {row}");
    }

    // Without keys: ESP with SPIs and sequence numbers, nothing inside.
    let all = tshark_fields(&pcap, "", &["frame.number"])?;
    let esp = tshark_fields(&pcap, "esp", &["esp.spi"])?;
    ensure!(all.len() >= 2 * PINGS, "{} packets captured for {PINGS} pings and their replies", all.len());
    ensure!(esp.len() == all.len(), "{} packets captured, {} dissect as ESP without keys", all.len(), esp.len());
    // Every SPI on the wire is one of the keylog's.
    for spi in esp.iter().map(|f| &f[0]) {
        ensure!(rows.iter().any(|r| r.contains(&format!("\"{spi}\""))), "SPI {spi} is not in the keylog {rows:?}");
    }
    let inner = tshark_fields(&pcap, "icmp || vxlan || arp", &["frame.number"])?;
    ensure!(inner.is_empty(), "without keys tshark still sees VXLAN, ICMP or ARP in frames {inner:?}");

    // With every keylog row: VXLAN with our VNI, the containers' frames and ICMP inside.
    let mut extra = vec!["-o".to_owned(), "esp.enable_encryption_decode:TRUE".to_owned()];
    for row in &rows {
        extra.push("-o".to_owned());
        extra.push(format!("uat:esp_sa:{row}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let fields = ["ip.src", "ip.dst", "udp.dstport", "vxlan.vni", "eth.src", "eth.dst", "icmp.type"];
    let decrypted = |filter: &str| tshark_fields_with(&pcap, &extra, filter, &fields);
    let requests = decrypted("icmp.type == 8")?;
    let replies = decrypted("icmp.type == 0")?;
    ensure!(requests.len() == PINGS, "decrypted {} echo requests, expected {PINGS}: {requests:?}", requests.len());
    ensure!(replies.len() == PINGS, "decrypted {} echo replies, expected {PINGS}: {replies:?}", replies.len());
    for (packets, (src, from), (dst, to), icmp) in
        [(&requests, (&h1, &a), (&h2, &b), "8"), (&replies, (&h2, &b), (&h1, &a), "0")]
    {
        for p in packets {
            // Fields of nested layers come outer first: "198.18.0.1,198.19.0.11".
            ensure!(p[0] == format!("{src},{}", from.ipv4), "icmp.type {icmp}: ip.src {}", p[0]);
            ensure!(p[1] == format!("{dst},{}", to.ipv4), "icmp.type {icmp}: ip.dst {}", p[1]);
            ensure!(p[2] == "4500,4789", "icmp.type {icmp}: udp.dstport {} (outer ESP-in-UDP, inner VXLAN)", p[2]);
            ensure!(p[3] == VNI.to_string(), "icmp.type {icmp}: vxlan.vni {}", p[3]);
            // Outer: the hosts' ul0 (lab.sh: 02:18:00:00:00:<i>); inner: the containers'.
            let eth = |host: usize, c: &Container| format!("02:18:00:00:00:{host:02x},{}", c.mac);
            let (from_host, to_host) = if icmp == "8" { (1, 2) } else { (2, 1) };
            ensure!(p[4] == eth(from_host, from), "icmp.type {icmp}: eth.src {}", p[4]);
            ensure!(p[5] == eth(to_host, to), "icmp.type {icmp}: eth.dst {}", p[5]);
            ensure!(p[6] == icmp, "icmp.type {}", p[6]);
        }
    }
    let vxlan = tshark_fields_with(&pcap, &extra, &format!("vxlan.vni == {VNI}"), &["frame.number"])?;
    ensure!(vxlan.len() == all.len(), "with the keys {} of {} packets decrypt to VXLAN {VNI}", vxlan.len(), all.len());
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn rekey_under_load() -> Result<()> {
    const SECS: u64 = 60;
    let options = EncryptedOptions {
        control: vec!["rekey_secs = 5".to_owned(), "rekey_grace_secs = 3".to_owned()],
        ..EncryptedOptions::new(2, 1)
    };
    let e = EncryptedLab::up("encrk", &options)?;
    let (a, b) = (e.container(1, 1), e.container(2, 1));
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;

    let keying_before = [keying(&e.lab, 1)?, keying(&e.lab, 2)?];
    let epochs_before = epochs(&e.lab, 1)?;
    let report = iperf3(&e.lab, &a, &b, IpAddr::V4(b.ipv4), SECS)?;
    let keying_after = [keying(&e.lab, 1)?, keying(&e.lab, 2)?];
    let epochs_after = epochs(&e.lab, 1)?;

    let received = &report["end"]["sum_received"];
    let bytes = received["bytes"].as_u64().context("iperf3 report has no end.sum_received.bytes")?;
    let bits = received["bits_per_second"].as_f64().context("iperf3 report has no end.sum_received.bits_per_second")?;
    let retransmits = report["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let rekeys = [0, 1].map(|h| keying_after[h].rekeys - keying_before[h].rekeys);
    eprintln!(
        "iperf3 {SECS} s over the encrypted network: {bytes} bytes received, {:.0} Mbit/s, {retransmits} retransmits; \
         rekeys during the run: host 1 {}, host 2 {}; epochs with host 2: {epochs_before:?} → {epochs_after:?}; \
         keying after: {keying_after:?}",
        bits / 1e6,
        rekeys[0],
        rekeys[1]
    );
    ensure!(bytes > 0, "iperf3 received nothing: {received}");
    ensure!(rekeys[0] >= 10, "host 1 rekeyed {} times in {SECS} s with rekey_secs = 5, expected ≥ 10", rekeys[0]);
    // The epoch moved on as often.
    let epoch = |e: &[(String, u64)]| e.first().map_or(0, |(_, n)| *n);
    ensure!(
        epoch(&epochs_after) >= epoch(&epochs_before) + 10,
        "the key epoch with host 2 went from {epochs_before:?} to {epochs_after:?} only"
    );
    let stats = [query(&e.lab, 1, "stats")?, query(&e.lab, 2, "stats")?];
    for (i, stats) in (1..=2).zip(&stats) {
        for reason in ["authentication", "replay"] {
            let n = counter(stats, &format!("drops.{reason}"))?;
            ensure!(n == 0, "host {i} dropped {n} packets for {reason} across the rekeys: {stats}");
        }
    }
    // Make-before-break: each side has its new inbound SA before the other sends on it, and keeps the old one
    // for the grace period, so no packet meets a missing SA in either direction.
    for (i, stats) in (1..=2).zip(&stats) {
        for reason in ["unknown_spi", "no_sa"] {
            let n = counter(stats, &format!("drops.{reason}"))?;
            ensure!(
                n == 0,
                "make-before-break broken: host {i} dropped {n} packets for {reason} across {} rekeys: {stats}",
                rekeys[0]
            );
        }
    }
    Ok(())
}

/// Ping data of the real packets captured and replayed (and of the forged copies).
const REPLAYED: &[u8; 16] = b"WEFT-REPLAY-0001";
/// Ping data of the legitimate pings after the injection.
const LEGIT: &[u8; 16] = b"WEFT-CONTROL-001";
/// Payload of the plaintext VXLAN frames.
const PLAIN: &[u8; 16] = b"WEFT-PLAINTEXT!!";
/// Source MAC of the plaintext VXLAN frames: no lab container has it.
const PLAIN_MAC: [u8; 6] = [0x02, 0x19, 0x66, 0x66, 0x66, 0x66];
/// A second address on host 2's underlay, which no weft knows.
const STRANGER: &str = "198.18.0.99";

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn injected_bad_packets_are_dropped_and_counted() -> Result<()> {
    let e = EncryptedLab::up("encinj", &EncryptedOptions::new(2, 1))?;
    let (victim, sender) = (e.container(1, 1), e.container(2, 1));
    let (h1, h2) = (e.lab.host(1), e.lab.host(2));
    ping_until(&sender.ns, victim.ipv4.into(), Duration::from_secs(10))?;
    // weft sends batches with UDP GSO; with the offload off on host 2's ul0 the kernel cuts them before the
    // capture point, so every captured datagram is one ESP packet.
    exec_stdout(&h2.ns, &["ethtool", "-K", "ul0", "tx-udp-segmentation", "off"])?;
    exec_stdout(&h2.ns, &["ip", "addr", "add", &format!("{STRANGER}/24"), "dev", "ul0"])?;

    // Real ESP from host 2 to host 1, every one received (each ping was answered).
    let filter = format!("udp dst port {ESP_PORT} and src host {} and dst host {}", h2.underlay, h1.underlay);
    let capture = Capture::start(&h2.ns, "ul0", &filter, &e.lab.dir().join("originals.pcap"))?;
    ping_pattern(&sender.ns, victim.ipv4.into(), 5, 200, REPLAYED)?;
    let originals: Vec<Vec<u8>> = read_pcap(&capture.stop()?)?
        .iter()
        .filter_map(|frame| udp4(frame))
        .filter(|u| u.src == h2.underlay && u.dst == h1.underlay && u.dst_port == ESP_PORT)
        .map(|u| u.payload)
        .collect();
    ensure!(originals.len() >= 5, "captured {} ESP packets from host 2 for 5 pings", originals.len());
    let headers: Vec<(u32, u32, u64)> =
        originals.iter().map(|p| esp_header(p).context("short ESP")).collect::<Result<_>>()?;
    let spi = headers[0].0;
    for (k, &(s, seq, iv)) in headers.iter().enumerate() {
        ensure!(s == spi, "captured ESP packets with SPIs {spi:#x} and {s:#x}: {headers:x?}");
        // One datagram per packet: consecutive sequence numbers, and the IV is the sequence number.
        ensure!(seq == headers[0].1 + k as u32, "captured sequence numbers are not consecutive: {headers:x?}");
        ensure!(iv == u64::from(seq), "IV {iv:#x} is not the sequence number {seq:#x}");
    }
    let last_seq = headers.last().expect("≥ 5 packets").1;
    eprintln!(
        "captured {} ESP packets from host 2, SPI {spi:#010x}, sequence numbers {}..={last_seq}",
        originals.len(),
        headers[0].1
    );

    let container_capture = Capture::start(&victim.ns, "eth0", "", &e.lab.dir().join("victim.pcap"))?;
    let start = drops(&e.lab, 1)?;
    let (from_h2, from_stranger, to_h1) =
        (IpAddr::V4(h2.underlay), STRANGER.parse::<IpAddr>()?, IpAddr::V4(h1.underlay));

    // (a) Replays of packets host 1 has received.
    let replays: Vec<(u16, Vec<u8>)> = originals.iter().map(|p| (ESP_PORT, p.clone())).collect();
    expect_drops(&e, "replays", &[("replay", replays.len() as u64)], || {
        inject(&e.lab, &h2.ns, from_h2, to_h1, &replays)
    })?;

    // (b) Forgeries: a real packet with a sequence number (and IV) well ahead of the window, so it passes the
    // replay check, and one bit of its ciphertext flipped.
    let forged: Vec<(u16, Vec<u8>)> = (0..3u32)
        .map(|k| {
            let mut p = originals.last().expect("≥ 5 packets").clone();
            let seq = last_seq + 100_000 + k;
            p[4..8].copy_from_slice(&seq.to_be_bytes());
            p[8..16].copy_from_slice(&u64::from(seq).to_be_bytes());
            p[16 + 8 * k as usize] ^= 0x01;
            (ESP_PORT, p)
        })
        .collect();
    expect_drops(&e, "forgeries", &[("authentication", 3)], || inject(&e.lab, &h2.ns, from_h2, to_h1, &forged))?;

    // (c) SPIs host 1 never gave out, with random contents; and the real SPI from an address that is not its peer.
    let mut unknown = Vec::new();
    while unknown.len() < 5 {
        let mut p = random_bytes(96)?;
        let s = u32::from_be_bytes(p[..4].try_into()?);
        if s >= 256 && s != spi {
            p[4..8].copy_from_slice(&(last_seq + 1).to_be_bytes());
            unknown.push((ESP_PORT, p));
        }
    }
    expect_drops(&e, "unknown SPIs", &[("unknown_spi", 5)], || inject(&e.lab, &h2.ns, from_h2, to_h1, &unknown))?;
    let stranger: Vec<(u16, Vec<u8>)> = originals[..2].iter().map(|p| (ESP_PORT, p.clone())).collect();
    expect_drops(&e, "the real SPI from a stranger", &[("unknown_spi", 2)], || {
        inject(&e.lab, &h2.ns, from_stranger, to_h1, &stranger)
    })?;

    // (d) Plaintext VXLAN for the encrypted network, from the real peer, addressed to the victim container.
    let victim_mac: Vec<u8> = victim.mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    let vni = VNI.to_be_bytes();
    let mut frame = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    frame.extend(&victim_mac);
    frame.extend(PLAIN_MAC);
    frame.extend([0x88, 0xb5]);
    frame.extend(PLAIN.repeat(3));
    frame.resize(8 + 60, 0);
    let plaintext = vec![(VXLAN_PORT, frame); 3];
    expect_drops(&e, "plaintext VXLAN", &[("plaintext_on_encrypted", 3)], || {
        inject(&e.lab, &h2.ns, from_h2, to_h1, &plaintext)
    })?;

    // Legitimate traffic still flows (the forgeries did not move the replay window ahead), and shows in the
    // container's capture, which is live.
    ping_pattern(&sender.ns, victim.ipv4.into(), 3, 200, LEGIT)?;
    wait_until(Duration::from_secs(5), "the legitimate pings in the victim's capture", || {
        Ok(contains(&std::fs::read(container_capture.path())?, LEGIT))
    })?;
    let pcap = container_capture.stop()?;
    let bytes = std::fs::read(&pcap)?;
    ensure!(!contains(&bytes, REPLAYED), "a replayed or forged ping reached the victim container");
    ensure!(!contains(&bytes, PLAIN), "the plaintext VXLAN frame's payload reached the victim container");
    let plain_mac = PLAIN_MAC.map(|b| format!("{b:02x}")).join(":");
    let injected = tshark_fields(&pcap, &format!("eth.src == {plain_mac} || eth.type == 0x88b5"), &["frame.number"])?;
    ensure!(injected.is_empty(), "frames from {plain_mac} reached the victim container: {injected:?}");
    let requests = tshark_fields(&pcap, "icmp.type == 8", &["ip.src"])?;
    ensure!(
        requests == vec![vec![sender.ipv4.to_string()]; 3],
        "the victim container got echo requests {requests:?}; only the 3 legitimate ones from {} may arrive",
        sender.ipv4
    );

    let total = drop_deltas(&start, &drops(&e.lab, 1)?);
    let mut expected = vec![
        ("authentication".to_owned(), 3),
        ("plaintext_on_encrypted".to_owned(), 3),
        ("replay".to_owned(), replays.len() as i64),
        ("unknown_spi".to_owned(), 7),
    ];
    let mut total_sorted = total.clone();
    total_sorted.sort();
    expected.sort();
    ensure!(total_sorted == expected, "host 1's drops grew by {total:?} in all, expected {expected:?}");
    eprintln!("host 1's drop counters grew by {total:?}");
    Ok(())
}

/// Runs `send`, then waits until host 1's drop counters have grown by `expected` (reason, count) and checks that
/// no other drop counter moved.
fn expect_drops(
    e: &EncryptedLab,
    what: &str,
    expected: &[(&str, u64)],
    send: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = query(&e.lab, 1, "stats")?;
    send().with_context(|| format!("injecting {what}"))?;
    for &(reason, n) in expected {
        let path = format!("drops.{reason}");
        wait_counter(&e.lab, 1, &path, counter(&before, &path)? + n, Duration::from_secs(5))
            .with_context(|| format!("after injecting {what}"))?;
    }
    let deltas = drop_deltas(&drops_of(&before)?, &drops(&e.lab, 1)?);
    let wanted: Vec<(String, i64)> = expected.iter().map(|&(r, n)| (r.to_owned(), n as i64)).collect();
    ensure!(deltas == wanted, "{what}: host 1's drops grew by {deltas:?}, expected exactly {wanted:?}");
    eprintln!("{what}: host 1's drops grew by {deltas:?}");
    Ok(())
}
