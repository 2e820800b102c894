//! The gathering data path between two weft hosts, plaintext: TCP superframes go out as UDP GSO sends gathered from
//! per-segment header blocks and the payload in place in the superframe, and come back coalesced into superframes
//! written to the TAP with `writev` from the receive buffer (docs/performance.md, "Gathered sends and writes").
//! 64 MiB of random bytes cross each way and must arrive with the same sha256, with no offload, TAP or underlay
//! error counted on either host.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use weft_integration::encrypted::transfer;
use weft_integration::weft::{counter, query, random_file, start_weft, WeftConfig};
use weft_integration::{ping_until, Lab};

const VNI: u32 = 100;
const TRANSFER_BYTES: u64 = 64 << 20;
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn bulk_tcp_survives_gathered_sends_and_writes() -> Result<()> {
    let lab = Lab::up("pfgt", 2, 1, &["blue"])?;
    for i in 1..=2 {
        start_weft(&lab, i, &WeftConfig::for_host(&lab, i, &[("blue", VNI)]).to_toml())?;
    }
    let (a, b) = (lab.container(1, "blue", 1), lab.container(2, "blue", 1));
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;

    let file = random_file(&lab, "random.bin", TRANSFER_BYTES)?;
    let before = [query(&lab, 1, "stats")?, query(&lab, 2, "stats")?];
    transfer(&lab, &a, &b, IpAddr::V4(b.ipv4), &file, TRANSFER_TIMEOUT)?;
    transfer(&lab, &b, &a, IpAddr::V4(a.ipv4), &file, TRANSFER_TIMEOUT)?;

    for (i, before) in [1, 2].into_iter().zip(before) {
        let after = query(&lab, i, "stats")?;
        for key in ["offload_errors", "tap_errors", "underlay_errors"] {
            let grew = counter(&after, key)? - counter(&before, key)?;
            ensure!(grew == 0, "host {i}: {key} grew by {grew} during the transfers: {after}");
        }
        // The bytes went through weft both ways: its inner counters grew by at least the file's size each way.
        for key in ["tx_bytes", "rx_bytes"] {
            let grew = counter(&after, key)? - counter(&before, key)?;
            ensure!(grew >= TRANSFER_BYTES, "host {i}: {key} grew by only {grew}");
        }
    }
    Ok(())
}
