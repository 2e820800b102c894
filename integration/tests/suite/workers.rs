//! Several data-path workers per host (`[node] workers`): a multi-queue TAP and an SO_REUSEPORT group of underlay
//! sockets, one of each per worker, with the SAs shared between them.
//! - Eight TCP streams over an encrypted network between two hosts with four workers each are spread over more than
//!   one worker on both sides, with no replay or authentication drop (one sequence counter and one replay window
//!   per SA, whichever worker seals or opens), and a 64 MiB transfer arrives intact;
//! - the API reports each worker's share, and the sum matches the host's counters;
//! - a second weft on the same underlay ports is refused with the usual message, although the first one's sockets
//!   are a SO_REUSEPORT group.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weft_integration::encrypted::{random_bytes, transfer, EncryptedLab, EncryptedOptions};
use weft_integration::weft::{counter, query, wait_exit, WeftConfig, WeftNet};
use weft_integration::{exec, ping_until};

const WORKERS: usize = 4;

/// Each worker's `(tx_datagrams, rx_frames)` from host `i`'s stats.
fn worker_loads(e: &EncryptedLab, i: usize) -> Result<Vec<(u64, u64)>> {
    let stats = query(&e.lab, i, "stats")?;
    let workers = stats["workers"].as_array().with_context(|| format!("host {i}: stats has no workers: {stats}"))?;
    let loads: Vec<(u64, u64)> = workers
        .iter()
        .map(|w| (w["tx_datagrams"].as_u64().unwrap_or(0), w["rx_frames"].as_u64().unwrap_or(0)))
        .collect();
    let (tx, rx): (u64, u64) = (loads.iter().map(|l| l.0).sum(), loads.iter().map(|l| l.1).sum());
    ensure!(
        tx == counter(&stats, "tx_datagrams")? && rx == counter(&stats, "rx_frames")?,
        "host {i}: the workers' shares do not add up to the host's counters: {stats}"
    );
    for reason in ["replay", "authentication", "unknown_spi"] {
        let n = counter(&stats, &format!("drops.{reason}"))?;
        ensure!(n == 0, "host {i} dropped {n} packets for {reason} with {WORKERS} workers: {stats}");
    }
    Ok(loads)
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn flows_spread_over_workers_sharing_one_sa() -> Result<()> {
    let options =
        EncryptedOptions { node: Some(|_| vec![format!("workers = {WORKERS}")]), ..EncryptedOptions::new(2, 1) };
    let e = EncryptedLab::up("wrk", &options)?;
    let (a, b) = (e.container(1, 1), e.container(2, 1));
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;
    for i in 1..=2 {
        let loads = worker_loads(&e, i)?;
        ensure!(loads.len() == WORKERS, "host {i} runs {} workers, expected {WORKERS}", loads.len());
    }

    // Eight flows: the kernel hashes them over the TAP queues (sender) and the socket group (receiver).
    let server = e.lab.spawn(&b.ns, &["iperf3", "-s", "-1", "-p", "5202"])?;
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(300));
    let dst = b.ipv4.to_string();
    let out = exec(&a.ns, &["timeout", "40", "iperf3", "-c", &dst, "-p", "5202", "-P", "8", "-t", "3", "--json"])?;
    drop(server);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    ensure!(received > 0, "iperf3 -P 8 moved nothing: {}", report["end"]);

    let sending = worker_loads(&e, 1)?;
    let receiving = worker_loads(&e, 2)?;
    eprintln!("8 streams, {received} bytes; host 1 workers (tx, rx): {sending:?}; host 2: {receiving:?}");
    let busy = |loads: &[(u64, u64)], pick: fn(&(u64, u64)) -> u64| loads.iter().filter(|l| pick(l) > 100).count();
    ensure!(busy(&sending, |l| l.0) >= 2, "host 1 sent everything from one worker: {sending:?}");
    ensure!(busy(&receiving, |l| l.1) >= 2, "host 2 received everything on one worker: {receiving:?}");

    // Integrity across the queues: a transfer checked by sha256.
    let file = e.lab.dir().join("payload.bin");
    std::fs::write(&file, random_bytes(64 << 20)?)?;
    let took = transfer(&e.lab, &a, &b, IpAddr::V4(b.ipv4), &file, Duration::from_secs(60))?;
    eprintln!("64 MiB arrived intact in {} ms", took.as_millis());
    worker_loads(&e, 1)?;
    worker_loads(&e, 2)?;

    // A second weft on host 1's ports must not join the first one's SO_REUSEPORT group.
    let mut second = WeftConfig::for_host(&e.lab, 1, &[]);
    second.api_socket = e.lab.dir().join("second.sock").display().to_string();
    second.networks.push(WeftNet {
        name: "red".into(),
        vni: 300,
        subnet: "198.19.77.0/24".into(),
        bridge: None,
        peers: Vec::new(),
        extra: Vec::new(),
    });
    let daemon = e.lab.spawn_weft(1, &second.to_toml())?;
    let (status, log) = wait_exit(&daemon, Duration::from_secs(10))?;
    ensure!(!status.success(), "a second weft on the same ports kept running: {log}");
    ensure!(log.contains("cannot listen on UDP"), "the second weft failed without naming the port: {log}");
    ensure!(query(&e.lab, 1, "stats").is_ok(), "the first weft stopped answering after the refused second one");
    Ok(())
}
