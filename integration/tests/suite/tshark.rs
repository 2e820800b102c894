//! What weft puts on the wire is RFC 7348 VXLAN as Wireshark understands it: captured on the underlay, a ping
//! between two containers dissects as UDP to port 4789, VXLAN with the network's VNI, and the containers' own
//! Ethernet frames and ICMP inside; and each direction of the flow leaves from one stable outer source port.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use weft_integration::weft::{start_weft, WeftConfig};
use weft_integration::{ping, ping_until, tshark_fields, Capture, Container, Host, Lab};

const VNI: u32 = 100;
const PINGS: usize = 5;

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn underlay_traffic_dissects_as_vxlan() -> Result<()> {
    let lab = Lab::up("tsk", 2, 1, &["blue"])?;
    for i in 1..=2 {
        start_weft(&lab, i, &WeftConfig::for_host(&lab, i, &[("blue", VNI)]).to_toml())?;
    }
    let (a, b) = (lab.container(1, "blue", 1), lab.container(2, "blue", 1));
    // ARP is resolved before the capture, so the capture holds the ping flow and little else.
    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(10))?;

    let capture = Capture::start(&lab.host(1).ns, "ul0", "udp port 4789", &lab.dir().join("ul0.pcap"))?;
    ping(&a.ns, IpAddr::V4(b.ipv4), PINGS as u32)?;
    let pcap = capture.stop()?;

    // Every datagram to or from port 4789 is VXLAN to tshark, with our VNI.
    let all = tshark_fields(&pcap, "", &["frame.number"])?;
    let vxlan = tshark_fields(&pcap, &format!("vxlan && vxlan.vni == {VNI}"), &["frame.number"])?;
    ensure!(!all.is_empty(), "nothing captured on ul0");
    ensure!(vxlan == all, "{} packets captured but only {} dissect as VXLAN VNI {VNI}", all.len(), vxlan.len());

    let (h1, h2) = (lab.host(1), lab.host(2));
    let requests = check_direction(&pcap, "icmp.type == 8", (&h1, &a), (&h2, &b))?;
    let replies = check_direction(&pcap, "icmp.type == 0", (&h2, &b), (&h1, &a))?;
    eprintln!("outer UDP source ports: requests {requests}, replies {replies}");
    Ok(())
}

/// Checks the `PINGS` packets that match `filter`: outer IPs and UDP destination port, VXLAN VNI, inner MACs and
/// IPs; and that all of them left from one outer source port in 1024..=65535, which is returned.
fn check_direction(
    pcap: &std::path::Path,
    filter: &str,
    (from_host, from): (&Host, &Container),
    (to_host, to): (&Host, &Container),
) -> Result<u16> {
    let fields = ["ip.src", "ip.dst", "udp.srcport", "udp.dstport", "vxlan.vni", "eth.src", "eth.dst"];
    let packets = tshark_fields(pcap, filter, &fields)?;
    ensure!(packets.len() == PINGS, "{filter}: {} packets, expected {PINGS}: {packets:?}", packets.len());
    let mut source_ports = BTreeSet::new();
    for packet in &packets {
        // Encapsulated fields come outer first, inner second: "198.18.0.1,198.19.0.11".
        let split = |i: usize| packet[i].split(',').map(str::to_owned).collect::<Vec<_>>();
        let (ip_src, ip_dst, eth_src, eth_dst) = (split(0), split(1), split(5), split(6));
        let expected_ips = |outer: &Host, inner: &Container| vec![outer.underlay.to_string(), inner.ipv4.to_string()];
        ensure!(ip_src == expected_ips(from_host, from), "{filter}: ip.src {ip_src:?}");
        ensure!(ip_dst == expected_ips(to_host, to), "{filter}: ip.dst {ip_dst:?}");
        ensure!(packet[3] == "4789", "{filter}: outer udp.dstport {}", packet[3]);
        ensure!(packet[4] == VNI.to_string(), "{filter}: vxlan.vni {}", packet[4]);
        // The outer MACs are the hosts' ul0 (lab.sh: 02:18:00:00:00:<i>), the inner ones the containers'.
        let ul0_mac = |host: &Host| format!("02:18:00:00:00:{:02x}", host.index);
        ensure!(eth_src == vec![ul0_mac(from_host), from.mac.clone()], "{filter}: eth.src {eth_src:?}");
        ensure!(eth_dst == vec![ul0_mac(to_host), to.mac.clone()], "{filter}: eth.dst {eth_dst:?}");
        source_ports.insert(packet[2].parse::<u16>()?);
    }
    ensure!(source_ports.len() == 1, "{filter}: one flow left from several outer source ports {source_ports:?}");
    let port = *source_ports.first().expect("PINGS > 0 packets");
    ensure!(port >= 1024, "{filter}: outer source port {port} is a well-known port");
    Ok(port)
}
