//! Swarm-style services on three hosts with gossip: `weft attach`/`detach` with addresses from gossiped IPAM
//! blocks, egress NAT through the gateway (none for internal networks), and DNS on the gateway.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use weft_integration::services::{
    add_internet, add_netns, assert_bare, attach, attached_ip, bridge_mac, detach, dig_short, dig_status, host_veths,
    named_endpoints, records_of_macs, weft_json, INTERNET,
};
use weft_integration::weft::{lab_pki, start_weft, wait_members, WeftConfig};
use weft_integration::{exec, exec_stdout, ping_received, ping_until, wait_until, Daemon, Lab};

const VNI: u32 = 100;
const INTERNAL_VNI: u32 = 200;
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(15);

/// Starts weft with gossip on every host of `lab`, all hosts seeds, with `extra` lines for each network and `node`
/// lines for `[node]`; waits for membership.
fn start_cluster(lab: &Lab, hosts: usize, nets: &[(&str, u32, &[&str])], node: &[&str]) -> Result<Vec<Daemon>> {
    let (_, certs) = lab_pki(lab)?;
    let mut daemons = Vec::new();
    let all: Vec<usize> = (1..=hosts).collect();
    let plain: Vec<(&str, u32)> = nets.iter().map(|(n, v, _)| (*n, *v)).collect();
    for &i in &all {
        let mut config = WeftConfig::with_gossip(lab, i, &plain, &certs[i - 1], &all);
        for (net, (_, _, extra)) in config.networks.iter_mut().zip(nets) {
            net.extra.extend(extra.iter().map(|s| s.to_string()));
        }
        config.node_extra.extend(node.iter().map(|s| s.to_string()));
        daemons.push(start_weft(lab, i, &config.to_toml())?);
    }
    wait_members(lab, &all, MEMBERSHIP_DEADLINE)?;
    Ok(daemons)
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn sixty_endpoints_attached_at_once_get_unique_reachable_addresses_and_detach_cleanly() -> Result<()> {
    const HOSTS: usize = 3;
    const PER_HOST: usize = 20;
    let lab = Lab::up("sv1", HOSTS, 0, &["blue"])?;
    let _daemons = start_cluster(&lab, HOSTS, &[("blue", VNI, &[])], &[])?;
    let endpoints: Vec<(usize, String)> =
        (1..=HOSTS).flat_map(|i| (1..=PER_HOST).map(move |k| (i, format!("sv1-h{i}-e{k}")))).collect();
    for (_, ns) in &endpoints {
        add_netns(ns)?;
    }

    // All 60 at once: one client process per endpoint.
    let start = Instant::now();
    let attached: Vec<(usize, String, Ipv4Addr)> = std::thread::scope(|scope| {
        let workers: Vec<_> = endpoints
            .iter()
            .map(|(i, ns)| {
                let lab = &lab;
                scope.spawn(move || -> Result<(usize, String, Ipv4Addr)> {
                    let a = attach(lab, *i, ns, "blue", Some(ns.trim_start_matches("sv1-")), Some("load"))?;
                    ensure!(a["interface"] == "eth0" && a["gateway"] == "198.19.0.1", "attachment: {a}");
                    ensure!(a["default_route"] == true && a["mtu"] == 1450, "attachment: {a}");
                    Ok((*i, ns.clone(), attached_ip(&a)?))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("attach thread panicked")).collect::<Result<Vec<_>>>()
    })?;
    eprintln!("attach: {} endpoints on {HOSTS} hosts in {} ms", attached.len(), start.elapsed().as_millis());

    // Unique in the cluster, assignable, and each host's addresses inside its own blocks.
    let mut owners: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (_, ns, ip) in &attached {
        if let Some(other) = owners.insert(*ip, ns.clone()) {
            anyhow::bail!("{ip} was handed out to both {other} and {ns}");
        }
        let last = ip.octets()[3];
        ensure!(ip.octets()[..3] == [198, 19, 0] && last > 1 && last < 255, "{ns} got {ip}");
    }
    ensure!(owners.len() == HOSTS * PER_HOST);
    for i in 1..=HOSTS {
        let services = weft_json(&lab.api_socket(i), &["services"])?;
        let blocks: Vec<&str> =
            services["blocks"].as_array().into_iter().flatten().filter_map(|b| b["block"].as_str()).collect();
        ensure!(!blocks.is_empty(), "host {i} holds no block: {services}");
        for (_, ns, ip) in attached.iter().filter(|(h, _, _)| *h == i) {
            let inside = blocks.iter().any(|b| {
                let (start, len) = b.split_once('/').unwrap_or_default();
                let (start, len): (Ipv4Addr, u32) =
                    (start.parse().unwrap_or(Ipv4Addr::UNSPECIFIED), len.parse().unwrap_or(32));
                u32::from(*ip) >> (32 - len) == u32::from(start) >> (32 - len)
            });
            ensure!(inside, "{ns} on host {i} got {ip}, outside the host's blocks {blocks:?}");
        }
    }

    // Every host's directory has all 60, with their names, from gossip.
    wait_until(Duration::from_secs(10), "every host to list the 60 named endpoints", || {
        Ok((1..=HOSTS).all(|i| named_endpoints(&lab, i).map(|e| e.len() == HOSTS * PER_HOST).unwrap_or(false)))
    })?;

    // Reachable: each endpoint pings the one with the same number on the next host (so every address is pinged,
    // always across hosts).
    let by_slot: BTreeMap<(usize, usize), (&String, Ipv4Addr)> = attached
        .iter()
        .map(|(i, ns, ip)| {
            let k: usize = ns.rsplit('e').next().unwrap_or("0").parse().unwrap_or(0);
            ((*i, k), (ns, *ip))
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = by_slot
            .iter()
            .map(|((i, k), (ns, _))| {
                let (_, target) = by_slot[&(i % HOSTS + 1, *k)];
                let ns = ns.to_string();
                scope.spawn(move || ping_until(&ns, IpAddr::V4(target), Duration::from_secs(15)))
            })
            .collect();
        for w in workers {
            w.join().expect("ping thread panicked")?;
        }
        Ok(())
    })?;
    eprintln!("reachability: 60 cross-host pings answered in {} ms", start.elapsed().as_millis());

    // Detach all, at once; nothing may remain: veths, addresses, routes, resolv.conf, records, leases.
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = attached
            .iter()
            .map(|(i, ns, _)| {
                let lab = &lab;
                scope.spawn(move || detach(lab, *i, ns, "blue"))
            })
            .collect();
        for w in workers {
            w.join().expect("detach thread panicked")?;
        }
        Ok(())
    })?;
    for (_, ns, _) in &attached {
        assert_bare(ns)?;
    }
    for i in 1..=HOSTS {
        let host = lab.host(i).ns;
        ensure!(host_veths(&host)?.is_empty(), "host {i} kept veths: {:?}", host_veths(&host)?);
        let left = weft_json(&lab.api_socket(i), &["attachments"])?;
        ensure!(left["attachments"].as_array().is_some_and(Vec::is_empty), "host {i} still lists {left}");
    }
    wait_until(Duration::from_secs(10), "every host to withdraw the 60 records", || {
        Ok((1..=HOSTS).all(|i| named_endpoints(&lab, i).map(|e| e.is_empty()).unwrap_or(false)))
    })?;
    // The addresses went back to the pool: attaching again on host 1 reuses host 1's block.
    let again = attach(&lab, 1, "sv1-h1-e1", "blue", None, None)?;
    let ip = attached_ip(&again)?;
    ensure!(attached.iter().any(|(h, _, a)| *h == 1 && *a == ip), "re-attach on host 1 got {ip}, not a freed address");
    detach(&lab, 1, "sv1-h1-e1", "blue")?;
    assert_bare("sv1-h1-e1")?;
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn egress_is_masqueraded_and_internal_networks_have_none() -> Result<()> {
    let lab = Lab::up("sv2", 2, 0, &["blue", "back", "red"])?;
    let internet = add_internet(&lab)?;
    // A table left by a weft that crashed is replaced, not added to.
    exec_stdout(&lab.host(1).ns, &["nft", "add", "table", "inet", "weft"])?;
    exec_stdout(&lab.host(1).ns, &["nft", "add", "chain", "inet", "weft", "stale"])?;
    let nets: [(&str, u32, &[&str]); 3] =
        [("blue", VNI, &[]), ("back", INTERNAL_VNI, &["internal = true"]), ("red", 300, &[])];
    let daemons = start_cluster(&lab, 2, &nets, &[])?;
    for ns in ["sv2-web", "sv2-db", "sv2-cache", "sv2-red"] {
        add_netns(ns)?;
    }
    attach(&lab, 1, "sv2-web", "blue", Some("web"), None)?;
    let db = attached_ip(&attach(&lab, 2, "sv2-db", "back", Some("db"), None)?)?;
    attach(&lab, 1, "sv2-cache", "back", Some("cache"), None)?;
    let red = attached_ip(&attach(&lab, 1, "sv2-red", "red", Some("red"), None)?)?;

    // The host's egress table exists, with the masquerade for blue only.
    let table = exec_stdout(&lab.host(1).ns, &["nft", "list", "table", "inet", "weft"])?;
    ensure!(table.contains("masquerade") && table.contains("198.19.0.0/24"), "table inet weft: {table}");
    ensure!(!table.contains("198.19.1.0/24"), "the internal network is masqueraded: {table}");
    ensure!(!table.contains("stale"), "the crashed weft's table was not replaced: {table}");

    // The internet has no route back to the overlay: only masquerading lets the answer in.
    ping_until("sv2-web", IpAddr::V4(INTERNET), Duration::from_secs(10))?;
    let conntrack = exec_stdout(&internet, &["ip", "neigh", "show"])?;
    ensure!(conntrack.contains("198.18.0.1"), "the internet never saw host 1's address: {conntrack}");
    // The internal network reaches its own endpoints across hosts, never the outside.
    ping_until("sv2-cache", IpAddr::V4(db), Duration::from_secs(10))?;
    ensure!(ping_received("sv2-cache", IpAddr::V4(INTERNET), 3)? == 0, "an internal endpoint reached the internet");
    ensure!(ping_received("sv2-db", IpAddr::V4(INTERNET), 3)? == 0, "an internal endpoint reached the internet");
    // Networks are isolated: blue's endpoint cannot reach red's through the two gateways of host 1 (both have
    // egress, so only the isolation rule stops it), even though red reaches the internet.
    ping_until("sv2-red", IpAddr::V4(INTERNET), Duration::from_secs(10))?;
    ensure!(ping_received("sv2-web", IpAddr::V4(red), 3)? == 0, "blue reached the red network through the gateway");

    // Stopping weft detaches its endpoints and removes the table and the gateway address it added to the lab's
    // bridge.
    let host = lab.host(1).ns;
    ensure!(exec_stdout(&host, &["ip", "-4", "addr", "show", "dev", "br-blue"])?.contains("198.19.0.1/24"));
    let status = daemons[0].stop()?;
    ensure!(status.success(), "weft on host 1 exited with {status}");
    let table = exec(&host, &["nft", "list", "table", "inet", "weft"])?;
    ensure!(!table.status.success(), "table inet weft left behind: {}", String::from_utf8_lossy(&table.stdout));
    let bridge = exec_stdout(&host, &["ip", "-4", "addr", "show", "dev", "br-blue"])?;
    ensure!(!bridge.contains("198.19.0.1"), "gateway address left on br-blue: {bridge}");
    for ns in ["sv2-web", "sv2-cache", "sv2-red"] {
        assert_bare(ns)?;
    }
    ensure!(host_veths(&host)?.is_empty(), "veths left on host 1: {:?}", host_veths(&host)?);
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn dns_on_the_gateway_resolves_endpoints_services_and_tasks() -> Result<()> {
    const HOSTS: usize = 3;
    let lab = Lab::up("sv3", HOSTS, 0, &["blue"])?;
    let _internet = add_internet(&lab)?;
    // Forwarded names go to the "internet", where no resolver listens: a clear SERVFAIL, no outside traffic.
    let _daemons = start_cluster(&lab, HOSTS, &[("blue", VNI, &[])], &["dns_upstream = [\"198.18.0.200:53\"]"])?;
    let plan = [
        (1, "sv3-web1", "web-1", Some("web")),
        (2, "sv3-web2", "web-2", Some("web")),
        (3, "sv3-db", "db-1", Some("db")),
        (1, "sv3-cli", "client", None),
    ];
    let mut ips = BTreeMap::new();
    for (i, ns, name, service) in plan {
        add_netns(ns)?;
        ips.insert(name, attached_ip(&attach(&lab, i, ns, "blue", Some(name), service)?)?.to_string());
    }
    let gateway: IpAddr = "198.19.0.1".parse()?;
    let client = "sv3-cli";
    wait_until(Duration::from_secs(10), "host 1's DNS to know db-1 (on host 3)", || {
        Ok(dig_short(client, Some(gateway), &["db-1"])? == [ips["db-1"].clone()])
    })?;
    let mut web = vec![ips["web-1"].clone(), ips["web-2"].clone()];
    web.sort();
    ensure!(dig_short(client, Some(gateway), &["web-2"])? == [ips["web-2"].clone()]);
    ensure!(dig_short(client, Some(gateway), &["web-2.weft"])? == [ips["web-2"].clone()]);
    ensure!(dig_short(client, Some(gateway), &["+tcp", "web-2"])? == [ips["web-2"].clone()], "web-2 over TCP");
    ensure!(dig_short(client, Some(gateway), &["web"])? == web, "service web");
    ensure!(dig_short(client, Some(gateway), &["tasks.web"])? == web, "tasks.web");
    ensure!(dig_short(client, Some(gateway), &["-x", &ips["web-2"]])? == ["web-2.weft."], "PTR of web-2");
    // Through the namespace's own resolver (the resolv.conf attach wrote): getent, as a program in a container.
    let getent = exec_stdout(client, &["getent", "hosts", "db-1"])?;
    ensure!(getent.split_whitespace().next() == Some(ips["db-1"].as_str()), "getent hosts db-1: {getent}");
    let tasks = exec_stdout(client, &["getent", "ahostsv4", "tasks.web"])?;
    ensure!(web.iter().all(|ip| tasks.contains(ip.as_str())), "getent ahostsv4 tasks.web: {tasks}");
    // Each host answers on its own gateway: web-1 asks its host (1) for db-1 on host 3.
    ensure!(dig_short("sv3-db", Some(gateway), &["web-1"])? == [ips["web-1"].clone()], "host 3's DNS");
    for unknown in ["nothing", "nothing.weft", "tasks.nothing"] {
        let status = dig_status(client, gateway, unknown)?;
        ensure!(status == "NXDOMAIN", "{unknown}: {status}");
    }
    let status = dig_status(client, gateway, "example.org")?;
    ensure!(status == "SERVFAIL", "example.org (forwarded to a silent upstream): {status}");
    // Detach withdraws the name everywhere.
    detach(&lab, 2, "sv3-web2", "blue")?;
    wait_until(Duration::from_secs(10), "web-2 to vanish from host 1's DNS", || {
        Ok(dig_status(client, gateway, "web-2")? == "NXDOMAIN")
    })?;
    ensure!(dig_short(client, Some(gateway), &["tasks.web"])? == [ips["web-1"].clone()], "tasks.web after detach");

    // The bridges hold the gateway and send their own link-local traffic (MLD, ARP) into the TAPs; a bridge is no
    // endpoint, so no host announces its own (and without a published service there is no ingress address either).
    let bridges: Vec<String> = (1..=HOSTS).map(|i| bridge_mac(&lab, i, "blue")).collect::<Result<_>>()?;
    for i in 1..=HOSTS {
        let (directory, fdb, local) = records_of_macs(&lab, i, &bridges)?;
        ensure!(directory.is_empty(), "host {i} lists a bridge as an endpoint: {directory:?} (bridges {bridges:?})");
        // Entries learnt from the bridges' flooded frames (data-plane learning, aged out) are not announcements.
        let gossiped: Vec<&serde_json::Value> = fdb.iter().filter(|r| r["origin"] != "learned").collect();
        ensure!(gossiped.is_empty(), "host {i} has FDB entries for bridges: {gossiped:?} (bridges {bridges:?})");
        ensure!(local.is_empty(), "host {i} discovered its bridge as a local endpoint: {local:?}");
    }
    Ok(())
}
