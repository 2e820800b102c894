//! Operations on an encrypted two-host lab (issue 8):
//! - Prometheus metrics scraped during traffic show non-zero per-peer packets and bytes both ways, gossip members,
//!   RTT and key epochs, and the drop counters move by exactly what is injected on the underlay (unknown SPIs,
//!   plaintext VXLAN for the encrypted network);
//! - `weft peers` shows state, RTT, SA epoch and age, and packets and bytes each way;
//! - `weft capture` writes the decrypted inner frames of both directions as pcap that tshark reads down to the
//!   ICMP of a ping, to a file and to standard output;
//! - `weft doctor` passes on the running lab and fails, naming the key, on a config whose MTU cannot fit.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use weft_integration::encrypted::{
    encrypted_config, inject, random_bytes, EncryptedLab, EncryptedOptions, ESP_PORT, VNI, VXLAN_PORT,
};
use weft_integration::weft::query;
use weft_integration::{exec, exec_stdout, ping, tshark_fields, wait_until, weft_bin};

const METRICS_PORT: u16 = 9090;

fn metrics_lines(i: usize) -> Vec<String> {
    vec![format!("metrics = \"198.18.0.{i}:{METRICS_PORT}\"")]
}

/// `GET /metrics` of host `i`, from inside its namespace.
fn scrape(e: &EncryptedLab, i: usize) -> Result<String> {
    const SCRIPT: &str =
        "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())";
    let url = format!("http://198.18.0.{i}:{METRICS_PORT}/metrics");
    exec_stdout(&e.lab.host(i).ns, &["python3", "-c", SCRIPT, &url])
}

/// The value of the sample of `name` whose labels include every one of `labels` (`vtep="198.18.0.2"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn need(text: &str, name: &str, labels: &[&str]) -> Result<f64> {
    sample(text, name, labels).with_context(|| format!("no sample {name}{labels:?} in the metrics:\n{text}"))
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn metrics_peers_capture_and_doctor() -> Result<()> {
    let options = EncryptedOptions { node: Some(metrics_lines), ..EncryptedOptions::new(2, 1) };
    let e = EncryptedLab::up("opmet", &options)?;
    let (c1, c2) = (e.container(1, 1), e.container(2, 1));
    ping(&c1.ns, IpAddr::V4(c2.ipv4), 5)?;

    // Per-peer counters, both ways, on both hosts.
    for (i, other) in [(1, 2), (2, 1)] {
        let text = scrape(&e, i)?;
        let vtep = format!("vtep=\"198.18.0.{other}\"");
        for direction in ["direction=\"tx\"", "direction=\"rx\""] {
            for name in ["weft_peer_packets_total", "weft_peer_bytes_total"] {
                let n = need(&text, name, &[&vtep, direction])?;
                ensure!(n > 0.0, "host {i}: {name}{{{vtep},{direction}}} is {n} after pings");
            }
        }
        ensure!(need(&text, "weft_gossip_members", &["state=\"alive\""])? == 1.0, "host {i} members:\n{text}");
        ensure!(need(&text, "weft_rekeys_total", &[])? >= 1.0, "host {i} agreed no keys:\n{text}");
        need(&text, "weft_sa_epoch", &[&vtep])?;
        need(&text, "weft_gossip_convergence_lag_seconds", &[])?;
        ensure!(need(&text, "weft_esp_sealed_total", &[])? > 0.0, "host {i} sealed nothing");
        for reason in ["unknown_spi", "plaintext_on_encrypted", "replay", "authentication", "no_sa"] {
            need(&text, "weft_drops_total", &[&format!("reason=\"{reason}\"")])?;
        }
    }
    // RTT is measured by SWIM probes, every 200 ms among two hosts.
    wait_until(Duration::from_secs(5), "an RTT sample on host 1", || {
        Ok(sample(&scrape(&e, 1)?, "weft_peer_rtt_seconds", &["vtep=\"198.18.0.2\""]).is_some_and(|s| s > 0.0))
    })?;

    // Bad packets move their drop counters by exactly what was injected.
    let (h1, h2) = (e.lab.host(1), e.lab.host(2));
    let before = scrape(&e, 1)?;
    let mut unknown = Vec::new();
    while unknown.len() < 5 {
        let p = random_bytes(96)?;
        // SPIs below 256 are reserved; weft hands out SPIs counting up from 0x1000, so random ones are unknown.
        if u32::from_be_bytes(p[..4].try_into()?) >= 0x0100_0000 {
            unknown.push((ESP_PORT, p));
        }
    }
    let vni = VNI.to_be_bytes();
    let mut plaintext = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    plaintext.extend([0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5]);
    plaintext.resize(8 + 60, 0);
    let mut datagrams = unknown;
    datagrams.extend(std::iter::repeat_n((VXLAN_PORT, plaintext), 3));
    inject(&e.lab, &h2.ns, IpAddr::V4(h2.underlay), IpAddr::V4(h1.underlay), &datagrams)?;
    let expected = [("unknown_spi", 5.0), ("plaintext_on_encrypted", 3.0)];
    let mut after = String::new();
    wait_until(Duration::from_secs(5), "the injected drops in host 1's metrics", || {
        after = scrape(&e, 1)?;
        for (reason, n) in expected {
            let label = format!("reason=\"{reason}\"");
            if need(&after, "weft_drops_total", &[&label])? < need(&before, "weft_drops_total", &[&label])? + n {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    for (reason, n) in expected {
        let label = format!("reason=\"{reason}\"");
        let delta = need(&after, "weft_drops_total", &[&label])? - need(&before, "weft_drops_total", &[&label])?;
        ensure!(delta == n, "weft_drops_total{{{label}}} grew by {delta}, injected {n}");
    }
    eprintln!("drops after injection: {expected:?} counted exactly");

    // weft peers: RTT, SA epoch and age, bytes and packets each way.
    let peers = query(&e.lab, 1, "peers")?;
    let member = &peers["members"][0];
    ensure!(member["name"] == "h2" && member["state"] == "alive", "host 1's peer: {member}");
    ensure!(member["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "no RTT: {member}");
    ensure!(member["sa"]["epoch"].as_u64().is_some_and(|n| n >= 1), "no SA epoch: {member}");
    ensure!(member["sa"]["age_secs"].is_u64(), "no SA age: {member}");
    for key in ["tx_packets", "tx_bytes", "rx_packets", "rx_bytes"] {
        ensure!(member[key].as_u64().is_some_and(|n| n > 0), "{key} is zero: {member}");
    }
    let socket = e.lab.api_socket(1).display().to_string();
    let table = Command::new(weft_bin()).args(["peers", "--socket", &socket]).output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    ensure!(table.contains("RTT") && table.contains("EPOCH") && table.contains("SA AGE"), "weft peers:\n{table}");
    let row = table.lines().find(|l| l.starts_with("h2 ")).with_context(|| format!("no h2 row:\n{table}"))?;
    ensure!(row.contains("198.18.0.2") && row.contains("alive") && row.contains("ms"), "weft peers row: {row}");
    eprintln!("weft peers:\n{table}");

    capture_to_file(&e, &socket)?;
    capture_to_stdout(&e, &socket)?;
    doctor(&e)?;
    Ok(())
}

/// `weft capture -w`: an encrypted ping shows in tshark as ICMP, request and reply.
fn capture_to_file(e: &EncryptedLab, socket: &str) -> Result<()> {
    let (c1, c2) = (e.container(1, 1), e.container(2, 1));
    let pcap = e.lab.dir().join("capture.pcap");
    let path = pcap.display().to_string();
    let mut child = Command::new(weft_bin())
        .args(["capture", "--socket", socket, "--network", "blue", "-w", &path, "--count", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The capture opens asynchronously: ping until it has its frames (each ping is a request out, a reply in).
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("weft capture --count 6 did not finish within 20 s of pings");
        }
        exec(&c1.ns, &["ping", "-c", "1", "-W", "1", &c2.ipv4.to_string()])?;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(status.success(), "weft capture failed ({status}): {stderr}");
    ensure!(stderr.contains("6 frames written"), "weft capture said: {stderr}");
    let icmp = tshark_fields(&pcap, "icmp", &["ip.src", "ip.dst", "icmp.type"])?;
    let (a, b) = (c1.ipv4.to_string(), c2.ipv4.to_string());
    ensure!(icmp.contains(&vec![a.clone(), b.clone(), "8".into()]), "no echo request {a} → {b} in {icmp:?}");
    ensure!(icmp.contains(&vec![b.clone(), a.clone(), "0".into()]), "no echo reply {b} → {a} in {icmp:?}");
    let esp = tshark_fields(&pcap, "esp or vxlan", &["frame.number"])?;
    ensure!(esp.is_empty(), "the capture holds encapsulated frames, not inner ones: {esp:?}");
    eprintln!("weft capture: tshark reads {} ICMP frames, both directions, decrypted", icmp.len());
    Ok(())
}

/// `weft capture` without `-w`: pcap on standard output.
fn capture_to_stdout(e: &EncryptedLab, socket: &str) -> Result<()> {
    let (c1, c2) = (e.container(1, 1), e.container(2, 1));
    let child = Command::new(weft_bin())
        .args(["capture", "--socket", socket, "--network", "blue", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pinger = {
        let (ns, to) = (c1.ns.clone(), c2.ipv4.to_string());
        std::thread::spawn(move || -> Result<()> {
            for _ in 0..20 {
                exec(&ns, &["ping", "-c", "1", "-W", "1", &to])?;
            }
            Ok(())
        })
    };
    let out = child.wait_with_output()?;
    pinger.join().map_err(|_| anyhow::anyhow!("the pinger panicked"))??;
    ensure!(out.status.success(), "weft capture to stdout failed: {}", String::from_utf8_lossy(&out.stderr));
    let pcap = e.lab.dir().join("stdout.pcap");
    std::fs::write(&pcap, &out.stdout)?;
    ensure!(out.stdout.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1]), "standard output is not a little-endian pcap");
    let frames = tshark_fields(&pcap, "", &["eth.type"])?;
    ensure!(frames.len() == 2, "{} frames on standard output, asked for 2: {frames:?}", frames.len());
    Ok(())
}

/// `weft doctor` on host 1: passes as configured; fails naming the key with an MTU that cannot fit.
fn doctor(e: &EncryptedLab) -> Result<()> {
    let h1 = e.lab.host(1);
    let mut text = encrypted_config(&e.lab, 1, &e.certs[0], &[1], &[])?;
    let config = e.lab.dir().join("doctor-h1.toml");
    std::fs::write(&config, &text)?;
    let bin = weft_bin().display().to_string();
    let path = config.display().to_string();
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let mut full = vec![bin.as_str(), "doctor", "--config", &path];
        full.extend_from_slice(args);
        let out = exec(&h1.ns, &full)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    };
    // Clocks are measured by the first answered probe; keys are agreed: the doctor is happy.
    let mut report = String::new();
    wait_until(Duration::from_secs(5), "weft doctor to pass on host 1", || {
        let (ok, out) = run(&[])?;
        report = out;
        Ok(ok)
    })
    .with_context(|| format!("last report:\n{report}"))?;
    for line in [
        "ok    tun",
        "ok    capabilities",
        "ok    mtu",
        "ok    certificates",
        "ok    peers",
        "ok    clock",
        "ok    encryption",
    ] {
        ensure!(report.contains(line), "weft doctor lacks {line:?}:\n{report}");
    }
    eprintln!("weft doctor:\n{report}");
    // The lab's underlay has MTU 1500: an encrypted overlay of 1450 cannot fit (1500 - 95 = 1405).
    text = text.replacen("mtu = 1400", "mtu = 1450", 1);
    std::fs::write(&config, &text)?;
    let (ok, out) = run(&["--json"])?;
    ensure!(!ok, "weft doctor passed with an MTU that cannot fit:\n{out}");
    ensure!(
        out.contains("network[0].mtu") && out.contains("1405"),
        "weft doctor's finding does not name the key:\n{out}"
    );
    Ok(())
}
