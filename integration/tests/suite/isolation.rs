//! Networks are isolated: with "blue" (VNI 100) and "red" (VNI 200) served by the same weft on each host, nothing
//! a blue container sends (unicast, ARP, broadcast, multicast) ever reaches a red container. And what arrives on the
//! underlay is checked before it reaches any network: unknown VNIs, senders that are not peers, and datagrams too
//! short for a VXLAN header are dropped and counted.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use weft_integration::weft::{counter, link_info, query, start_weft, WeftConfig};
use weft_integration::{
    exec, exec_stdout, ping, ping_received, ping_until, tshark_fields, wait_until, Capture, Container, Lab,
};

/// Where stray datagrams are sent from: an underlay address no weft has as a peer.
const STRANGER: &str = "198.18.0.99";
/// An EtherType for the hand-made test frames (IEEE 802 local experimental 1), so nothing mistakes them for real
/// traffic.
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn networks_are_isolated_and_bad_datagrams_are_dropped() -> Result<()> {
    let lab = Lab::up("iso", 2, 1, &["blue", "red"])?;
    for i in 1..=2 {
        start_weft(&lab, i, &WeftConfig::for_host(&lab, i, &[("blue", 100), ("red", 200)]).to_toml())?;
    }
    let (blue1, blue2) = (lab.container(1, "blue", 1), lab.container(2, "blue", 1));
    let (red1, red2) = (lab.container(1, "red", 1), lab.container(2, "red", 1));
    for (from, to) in [(&blue1, &blue2), (&red1, &red2)] {
        for addr in [IpAddr::V4(to.ipv4), IpAddr::V6(to.ipv6)] {
            ping_until(&from.ns, addr, Duration::from_secs(10))?;
            ping(&from.ns, addr, 3)?;
        }
    }

    blue_never_reaches_red(&lab, (&blue1, &blue2), (&red1, &red2))?;
    bad_datagrams_are_dropped(&lab)?;
    Ok(())
}

/// Captures everything host 2 delivers to its red container while blue sends every kind of frame it can.
fn blue_never_reaches_red(
    lab: &Lab,
    (blue1, blue2): (&Container, &Container),
    (red1, red2): (&Container, &Container),
) -> Result<()> {
    let red_port = format!("v{}c1", lab.net_index("red"));
    let capture = Capture::start(&lab.host(2).ns, &red_port, "", &lab.dir().join("red.pcap"))?;

    // Fresh ARP and ND: broadcasts and multicasts, flooded to every VTEP of blue.
    exec_stdout(&blue1.ns, &["ip", "neigh", "flush", "dev", "eth0"])?;
    ping(&blue1.ns, blue2.ipv4.into(), 3)?;
    ping(&blue1.ns, blue2.ipv6.into(), 3)?;
    // A broadcast ping and an all-nodes multicast ping. Whether anyone answers does not matter (Linux ignores
    // broadcast echo requests by default); that they are sent does: exit status 0 or 1, not 2.
    for args in [
        &["ping", "-4", "-b", "-c", "3", "-i", "0.2", "-W", "1", "198.19.0.255"][..],
        &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "ff02::1%eth0"],
    ] {
        let status = exec(&blue1.ns, args)?.status;
        ensure!(matches!(status.code(), Some(0 | 1)), "[{}] {} failed: {status}", blue1.ns, args.join(" "));
    }
    // Blue has no route to red's subnet; give it one on its own link, so it ARPs for a red address across blue.
    // Nothing on blue owns that address, and red must never hear the question.
    let red_subnet = format!("198.19.{}.0/24", lab.net_index("red"));
    exec_stdout(&blue1.ns, &["ip", "route", "add", &red_subnet, "dev", "eth0"])?;
    let answered = ping_received(&blue1.ns, red2.ipv4.into(), 3)?;
    ensure!(answered == 0, "blue container reached red {} ({answered} of 3 pings answered)", red2.ipv4);
    // Red's own traffic during the capture shows it was live.
    ping(&red1.ns, red2.ipv4.into(), 3)?;
    let pcap = capture.stop()?;

    let fields =
        ["eth.src", "eth.dst", "arp.src.proto_ipv4", "arp.dst.proto_ipv4", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst"];
    let packets = tshark_fields(&pcap, "", &fields)?;
    ensure!(
        packets.iter().any(|p| p[0] == red1.mac),
        "the capture on host 2's red port holds no frame of red host 1 {}: {packets:?}",
        red1.mac
    );
    // Blue's MACs: its containers', and those of blue's bridge and TAP on both hosts (they send IPv6 MLD reports).
    let mut blue_macs = vec![blue1.mac.clone(), blue2.mac.clone()];
    for i in 1..=2 {
        for link in ["br-blue", "wft100"] {
            let info = link_info(&lab.host(i).ns, link)?.with_context(|| format!("host {i} has no {link}"))?;
            blue_macs.push(info.mac);
        }
    }
    let blue_net = lab.net_index("blue");
    for packet in &packets {
        for (name, value) in fields.iter().zip(packet) {
            for value in value.split(',').filter(|v| !v.is_empty()) {
                if blue_macs.iter().any(|mac| mac == value) {
                    bail!("a frame with blue MAC {value} ({name}) reached red: {packet:?}");
                }
                if let Ok(addr) = value.parse::<IpAddr>() {
                    let on_blue = match addr {
                        IpAddr::V4(a) => a.octets()[..3] == [198, 19, blue_net as u8],
                        IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0x19, blue_net as u16],
                    };
                    ensure!(!on_blue, "a packet with blue address {addr} ({name}) reached red: {packet:?}");
                }
            }
        }
    }
    Ok(())
}

/// Sends hand-made datagrams to host 1's VXLAN port from host 2's namespace and checks host 1's drop counters, and
/// that none of the frames inside reached host 1's blue container while a control frame from a real peer did.
fn bad_datagrams_are_dropped(lab: &Lab) -> Result<()> {
    let host2 = lab.host(2).ns;
    exec_stdout(&host2, &["ip", "addr", "add", &format!("{STRANGER}/24"), "dev", "ul0"])?;
    let blue_port = format!("v{}c1", lab.net_index("blue"));
    let capture = Capture::start(&lab.host(1).ns, &blue_port, "", &lab.dir().join("blue.pcap"))?;
    let before = query(lab, 1, "stats")?;

    // Each test frame is a broadcast that the bridge would hand to every port, so any that got through would show
    // in the capture. The last octet of the source MAC tells them apart.
    let unknown_vni = datagram(999, 1);
    let stranger = datagram(100, 2);
    let control = datagram(100, 3);
    send(lab, &host2, "unknown-vni", &unknown_vni, None)?;
    wait_for_counter(lab, &before, "drops.unknown_vni")?;
    send(lab, &host2, "stranger", &stranger, Some(STRANGER))?;
    wait_for_counter(lab, &before, "drops.unknown_sender")?;
    send(lab, &host2, "malformed", &[0x08, 0, 0, 0, 0], None)?;
    wait_for_counter(lab, &before, "drops.malformed")?;
    // The same frame as the stranger's, from host 2's own underlay address, a peer: this one is delivered.
    send(lab, &host2, "control", &control, None)?;
    let control_mac = test_mac(3);
    wait_until(Duration::from_secs(5), "the control frame to reach host 1's blue container", || {
        Ok(tshark_fields(capture.path(), &format!("eth.src == {control_mac}"), &["frame.number"])?.len() == 1)
    })?;
    let pcap = capture.stop()?;

    let after = query(lab, 1, "stats")?;
    for reason in ["drops.unknown_vni", "drops.unknown_sender", "drops.malformed"] {
        let delta = counter(&after, reason)? - counter(&before, reason)?;
        ensure!(delta == 1, "{reason} grew by {delta}, expected 1: {after}");
    }
    let test_frames = tshark_fields(&pcap, "eth.type == 0x88b5", &["eth.src"])?;
    ensure!(
        test_frames == vec![vec![control_mac.clone()]],
        "host 1's blue container saw test frames {test_frames:?}; only the control {control_mac} may arrive"
    );
    Ok(())
}

/// `02:19:99:00:63:<n>`: a MAC no lab container has.
fn test_mac(n: u8) -> String {
    format!("02:19:99:00:63:{n:02x}")
}

/// A VXLAN datagram (RFC 7348 §5: flags with the I bit, VNI) carrying a 60-byte broadcast frame from `test_mac(n)`.
fn datagram(vni: u32, n: u8) -> Vec<u8> {
    let vni = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    d.extend([0xff; 6]);
    d.extend([0x02, 0x19, 0x99, 0x00, 0x63, n]);
    d.extend(TEST_ETHERTYPE);
    d.resize(8 + 60, 0);
    d
}

/// Sends `payload` as one UDP datagram from namespace `ns` to host 1's VXLAN port, from `bind` if given.
fn send(lab: &Lab, ns: &str, name: &str, payload: &[u8], bind: Option<&str>) -> Result<()> {
    let file = lab.dir().join(format!("{name}.bin"));
    std::fs::write(&file, payload)?;
    let mut to = format!("UDP4-SENDTO:{}:4789", lab.host(1).underlay);
    if let Some(addr) = bind {
        to.push_str(&format!(",bind={addr}"));
    }
    exec_stdout(ns, &["socat", "-u", &format!("OPEN:{}", file.display()), &to])
        .with_context(|| format!("sending the {name} datagram"))?;
    Ok(())
}

/// Waits until host 1's counter `path` is above its value in `before`.
fn wait_for_counter(lab: &Lab, before: &Value, path: &str) -> Result<()> {
    let start = counter(before, path)?;
    wait_until(Duration::from_secs(5), &format!("host 1's {path} to count the datagram"), || {
        Ok(counter(&query(lab, 1, "stats")?, path)? > start)
    })
}
