//! weft on host 1 and Linux's own VXLAN on host 2 carry one network between them: pings both ways over IPv4 and
//! IPv6, and 100 MiB of random bytes over TCP in each direction, checked by sha256. docs/interop.md describes the
//! kernel side.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use weft_integration::encrypted::transfer;
use weft_integration::weft::{counter, query, random_file, start_weft, WeftConfig};
use weft_integration::{exec_stdout, ping, ping_until, Lab};

const VNI: u32 = 100;
/// Bytes sent each way: at least 100 MB.
const TRANSFER_BYTES: u64 = 100 << 20;
/// Time allowed for one transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn weft_and_kernel_vxlan_interoperate() -> Result<()> {
    let lab = Lab::up("kint", 2, 1, &["blue"])?;
    start_weft(&lab, 1, &WeftConfig::for_host(&lab, 1, &[("blue", VNI)]).to_toml())?;

    let host2 = lab.host(2).ns;
    let vni = VNI.to_string();
    let kernel_setup: &[&[&str]] = &[
        &["ip", "link", "add", "vx100", "type", "vxlan", "id", &vni, "dstport", "4789", "local", "198.18.0.2", "dev"],
        &["ip", "link", "set", "vx100", "mtu", "1450", "master", "br-blue", "up"],
        // Head-end replication to weft's VTEP: the all-zeros entry is where broadcast, multicast and unknown
        // unicast go; with `nolearning`, everything does.
        &["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx100", "dst", "198.18.0.1"],
        // Kernel VXLAN hands its UDP datagrams to the underlay with the *inner* TCP/UDP checksum still partial
        // (CHECKSUM_PARTIAL), trusting the NIC to complete it. A physical NIC does; a veth never does, it passes
        // the skb on as it is, so the datagram that reaches weft carries an unfinished inner checksum and the
        // container behind weft drops every TCP segment. Turning tx checksum offload off on the underlay makes
        // the kernel finish the checksum in software before the veth. This is a fact of the veth lab, not of
        // weft: see docs/interop.md.
        &["ethtool", "-K", "ul0", "tx", "off"],
    ];
    for args in kernel_setup {
        let mut args = args.to_vec();
        if args[..3] == ["ip", "link", "add"] {
            args.extend(["ul0", "nolearning"]);
        }
        exec_stdout(&host2, &args)?;
    }

    let (weft_side, kernel_side) = (lab.container(1, "blue", 1), lab.container(2, "blue", 1));
    for (from, to) in [(&weft_side, &kernel_side), (&kernel_side, &weft_side)] {
        for addr in [IpAddr::V4(to.ipv4), IpAddr::V6(to.ipv6)] {
            ping_until(&from.ns, addr, Duration::from_secs(10))?;
            ping(&from.ns, addr, 5)?;
        }
    }

    let file = random_file(&lab, "random.bin", TRANSFER_BYTES)?;

    let before = query(&lab, 1, "stats")?;
    transfer(&lab, &weft_side, &kernel_side, IpAddr::V4(kernel_side.ipv4), &file, TRANSFER_TIMEOUT)?;
    let middle = query(&lab, 1, "stats")?;
    transfer(&lab, &kernel_side, &weft_side, IpAddr::V4(weft_side.ipv4), &file, TRANSFER_TIMEOUT)?;
    let after = query(&lab, 1, "stats")?;

    // The bytes really went through weft: its inner byte counters grew by at least the file's size each way.
    let sent = counter(&middle, "tx_bytes")? - counter(&before, "tx_bytes")?;
    ensure!(sent >= TRANSFER_BYTES, "weft sent {sent} inner bytes during the transfer to the kernel side");
    let received = counter(&after, "rx_bytes")? - counter(&middle, "rx_bytes")?;
    ensure!(
        received >= TRANSFER_BYTES,
        "weft received {received} inner bytes during the transfer from the kernel side"
    );
    Ok(())
}
