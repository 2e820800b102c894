//! Five hosts with gossip and no static peers find each other through two seeds, carry IPv4 and IPv6 between all
//! their containers, agree on one record table, and once every container is known answer ARP and neighbour
//! discovery locally: with the neighbour caches flushed, a second round of pings puts no ARP, neighbour
//! solicitation or advertisement on the underlay.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use weft_integration::weft::{
    counter, fdb, lab_pki, neighbour_mac, peers, ping_mesh, query, start_weft, wait_gossip_fdb, wait_members,
    WeftConfig,
};
use weft_integration::{exec_stdout, tshark_fields, wait_until, Capture, Container, Lab};

const HOSTS: usize = 5;
const VNI: u32 = 100;
/// Hosts 1 and 2 are the seeds of everyone (themselves included).
const SEEDS: [usize; 2] = [1, 2];
/// How long the hosts get to list each other as members.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(15);
/// Hosts whose underlay is captured during the no-flood round.
const CAPTURED: [usize; 2] = [1, 3];

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn five_hosts_gossip_their_endpoints_and_answer_neighbour_queries_locally() -> Result<()> {
    let lab = Lab::up("gos5", HOSTS, 1, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    let hosts: Vec<usize> = (1..=HOSTS).collect();
    let first_start = Instant::now();
    for &i in &hosts {
        start_weft(&lab, i, &WeftConfig::with_gossip(&lab, i, &[("blue", VNI)], &certs[i - 1], &SEEDS).to_toml())?;
    }
    let membership = wait_members(&lab, &hosts, MEMBERSHIP_DEADLINE)?;
    eprintln!(
        "membership: all {HOSTS} hosts list the 4 others {} ms after the last daemon was ready ({} ms after the first \
         was started)",
        membership.as_millis(),
        first_start.elapsed().as_millis()
    );

    // Each member is who its certificate says: the id weft ca issue printed, its underlay as VTEP, port 7946.
    for &i in &hosts {
        let p = peers(&lab, i)?;
        ensure!(p.id == certs[i - 1].id, "host {i} reports id {}, its certificate has {}", p.id, certs[i - 1].id);
        for m in &p.members {
            let j: usize = m.name.trim_start_matches('h').parse().with_context(|| format!("member {m:?}"))?;
            ensure!(m.id == certs[j - 1].id, "host {i} lists {m:?}; h{j}'s certificate has id {}", certs[j - 1].id);
            ensure!(m.vtep == lab.host(j).underlay.to_string(), "host {i} lists {m:?} with the wrong VTEP");
            ensure!(m.addr == format!("{}:7946", lab.host(j).underlay), "host {i} lists {m:?} with the wrong address");
        }
    }

    // Warm-up: every container sends (so its host discovers it) and reaches every other, over both families.
    let containers: Vec<Container> = hosts.iter().map(|&i| lab.container(i, "blue", 1)).collect();
    let start = Instant::now();
    ping_mesh(&containers, &[true, false], Duration::from_secs(10), 3)?;
    eprintln!("warm-up: every container reached every other over IPv4 and IPv6 in {} ms", start.elapsed().as_millis());

    // Every host has every remote container from gossip, and all tables agree.
    let start = Instant::now();
    for (j, c) in hosts.iter().zip(&containers) {
        let others: Vec<usize> = hosts.iter().copied().filter(|i| i != j).collect();
        wait_gossip_fdb(&lab, &others, VNI, &c.mac, *j, Duration::from_secs(10))?;
    }
    let mut digests = Vec::new();
    wait_until(Duration::from_secs(10), "all hosts to have the same table digest", || {
        digests = hosts.iter().map(|&i| Ok(peers(&lab, i)?.table_digest)).collect::<Result<Vec<_>>>()?;
        Ok(digests.iter().all(|d| *d == digests[0]))
    })
    .with_context(|| format!("table digests last seen: {digests:?}"))?;
    eprintln!(
        "tables: every remote container in every fdb from gossip, digests equal ({}), {} ms after the warm-up",
        digests[0],
        start.elapsed().as_millis()
    );

    let table = fdb(&lab, 1)?;
    for (j, remote) in hosts.iter().zip(&containers).skip(1) {
        let row = table
            .iter()
            .find(|row| row.mac == remote.mac)
            .with_context(|| format!("weft fdb on host 1 has no entry for {} (host {j}): {table:?}", remote.mac))?;
        ensure!(row.vni == u64::from(VNI), "{row:?}: wrong VNI");
        ensure!(row.vtep == lab.host(*j).underlay.to_string(), "{row:?}: expected VTEP {}", lab.host(*j).underlay);
        ensure!(row.origin == "gossip", "{row:?}: expected an entry from gossip");
    }
    ensure!(
        table.iter().all(|row| row.mac != containers[0].mac),
        "weft fdb on host 1 points its own container {} at a VTEP: {table:?}",
        containers[0].mac
    );

    // No flooding: with every neighbour cache empty, ARP and ND are answered by the containers' own hosts.
    let before: Vec<u64> =
        hosts.iter().map(|&i| counter(&query(&lab, i, "stats")?, "suppressed")).collect::<Result<_>>()?;
    for c in &containers {
        exec_stdout(&c.ns, &["ip", "neigh", "flush", "all"])?;
    }
    for c in &containers {
        for other in containers.iter().filter(|o| o.ns != c.ns) {
            for addr in [IpAddr::V4(other.ipv4), IpAddr::V6(other.ipv6)] {
                let mac = neighbour_mac(&c.ns, addr)?;
                ensure!(mac.is_none(), "[{}] still has {addr} at {mac:?} after the flush", c.ns);
            }
        }
    }
    let captures = CAPTURED
        .iter()
        .map(|&i| Capture::start(&lab.host(i).ns, "ul0", "udp port 4789", &lab.dir().join(format!("h{i}-ul0.pcap"))))
        .collect::<Result<Vec<_>>>()?;
    ping_mesh(&containers, &[true, false], Duration::from_secs(5), 0)?;
    let pcaps = captures.into_iter().map(Capture::stop).collect::<Result<Vec<_>>>()?;

    for (i, pcap) in CAPTURED.iter().zip(&pcaps) {
        // The capture saw the pings (so it was working): this host's container sent 4 echo requests per family
        // and answered 4.
        let echoes = tshark_fields(pcap, "icmp.type == 8 || icmpv6.type == 128", &["frame.number"])?;
        ensure!(
            echoes.len() >= 16,
            "host {i}'s ul0 capture holds {} echo requests, expected at least 16",
            echoes.len()
        );
        let neighbour = tshark_fields(
            pcap,
            "arp || icmpv6.type == 135 || icmpv6.type == 136",
            &["frame.number", "ip.src", "ip.dst", "eth.src", "eth.dst", "_ws.col.Info"],
        )?;
        ensure!(
            neighbour.is_empty(),
            "{} ARP/ND frames crossed host {i}'s underlay although every container was known: {neighbour:?}",
            neighbour.len()
        );
    }

    let after: Vec<u64> =
        hosts.iter().map(|&i| counter(&query(&lab, i, "stats")?, "suppressed")).collect::<Result<_>>()?;
    eprintln!("suppressed: before the no-flood round {before:?}, after {after:?}");
    for (k, &i) in hosts.iter().enumerate() {
        let after = after[k];
        // Its container asked for 4 remote IPv4 and 4 remote IPv6 addresses (the answers' senders may ask back).
        ensure!(
            after >= before[k] + 8,
            "host {i} answered {} neighbour queries locally (suppressed {} -> {after}), expected at least 8",
            after - before[k],
            before[k]
        );
    }
    Ok(())
}
