//! Batched system calls for small frames (docs/performance.md, "Batched small frames"): bursts of 64-byte frames
//! from a container on host 1 to one on host 2 must leave host 1's weft in fewer send calls than datagrams
//! (`sendmmsg`, UDP GSO for runs of equal datagrams) and enter host 2's weft in fewer receive calls than datagrams
//! (`recvmmsg`), on a plaintext and on an encrypted network, with every datagram arriving intact and in order.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use weft_integration::encrypted::{EncryptedLab, EncryptedOptions};
use weft_integration::weft::{counter, query, start_weft, wait_exit, WeftConfig};
use weft_integration::{exec_stdout, ping_until, wait_until, Container, Lab};

const VNI: u32 = 100;
/// Datagrams per test: bursts of [`BURST`] back to back, [`GAP_US`] apart (about 15,000 a second, far below what
/// either weft or the receiver needs, so nothing is lost to a full queue).
const COUNT: u64 = 3_200;
const BURST: u64 = 32;
const GAP_US: u64 = 2_000;
const PORT: u16 = 9_100;
/// The receiver gives up after this long without a datagram.
const IDLE_MS: u64 = 5_000;

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn small_frames_are_batched_on_a_plaintext_network() -> Result<()> {
    let lab = Lab::up("mm1", 2, 1, &["blue"])?;
    for i in 1..=2 {
        start_weft(&lab, i, &WeftConfig::for_host(&lab, i, &[("blue", VNI)]).to_toml())?;
    }
    let (a, b) = (lab.container(1, "blue", 1), lab.container(2, "blue", 1));
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;
    burst_is_batched(&lab, &a, &b)
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn small_frames_are_batched_on_an_encrypted_network() -> Result<()> {
    let encrypted = EncryptedLab::up("mm2", &EncryptedOptions::new(2, 1))?;
    let (a, b) = (encrypted.container(1, 1), encrypted.container(2, 1));
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;
    burst_is_batched(&encrypted.lab, &a, &b)?;
    let after = query(&encrypted.lab, 1, "stats")?;
    ensure!(counter(&after, "esp_sealed")? >= COUNT, "host 1 sealed too little: {after}");
    Ok(())
}

/// Sends the bursts from `a` to `b`, checks they all arrived in order, and that host 1 sent and host 2 received
/// them in fewer system calls than datagrams, with no error and no batching feature refused.
fn burst_is_batched(lab: &Lab, a: &Container, b: &Container) -> Result<()> {
    let before = [query(lab, 1, "stats")?, query(lab, 2, "stats")?];
    let burst = env!("CARGO_BIN_EXE_weft-burst");
    let to = SocketAddr::new(b.ipv4.into(), PORT).to_string();
    let receiver = lab.spawn(&b.ns, &[burst, "receive", &to, &COUNT.to_string(), &IDLE_MS.to_string()])?;
    wait_until(Duration::from_secs(5), "the receiver to bind", || Ok(receiver.log().contains("ready")))?;
    let sent = exec_stdout(&a.ns, &[burst, "send", &to, &COUNT.to_string(), &BURST.to_string(), &GAP_US.to_string()])
        .context("running the sender")?;
    ensure!(sent.trim() == format!("sent {COUNT}"), "the sender said: {sent}");
    let (status, log) = wait_exit(&receiver, Duration::from_secs(30))?;
    ensure!(status.success() && log.contains(&format!("received {COUNT} in order")), "the receiver said: {log}");

    let after = [query(lab, 1, "stats")?, query(lab, 2, "stats")?];
    let grew = |i: usize, key: &str| -> Result<u64> { Ok(counter(&after[i], key)? - counter(&before[i], key)?) };
    for (i, stats) in after.iter().enumerate() {
        for key in ["underlay_errors", "tap_errors", "underlay.batching_fallbacks"] {
            ensure!(grew(i, key)? == 0, "host {}: {key} grew: {stats}", i + 1);
        }
    }
    let (tx_calls, tx_datagrams) = (grew(0, "underlay.tx_syscalls")?, grew(0, "underlay.tx_datagrams")?);
    let (rx_calls, rx_datagrams) = (grew(1, "underlay.rx_syscalls")?, grew(1, "underlay.rx_datagrams")?);
    eprintln!(
        "host 1 sent {tx_datagrams} datagrams in {tx_calls} calls; host 2 received {rx_datagrams} in {rx_calls} calls"
    );
    ensure!(tx_datagrams >= COUNT, "host 1 sent only {tx_datagrams} datagrams: {}", show(&after[0]));
    ensure!(rx_datagrams >= COUNT, "host 2 received only {rx_datagrams} datagrams: {}", show(&after[1]));
    // Bursts of 32 reach the TAP faster than a worker wakes up, so most sends and receives carry several datagrams
    // (on this 2-core machine 4-13 a call); one call per datagram, as before batching, fails. The margin is for
    // faster wake-ups elsewhere.
    ensure!(tx_calls * 3 <= tx_datagrams * 2, "host 1 used {tx_calls} send calls for {tx_datagrams} datagrams");
    ensure!(rx_calls * 3 <= rx_datagrams * 2, "host 2 used {rx_calls} receive calls for {rx_datagrams} datagrams");
    Ok(())
}

fn show(stats: &Value) -> String {
    stats.get("underlay").map_or_else(|| stats.to_string(), Value::to_string)
}
