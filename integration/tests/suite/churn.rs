//! Issue 9, churn: 1,000 attach/detach operations across 5 hosts with gossip within 60 s; afterwards every host has
//! the same record table, every host's endpoint directory and FDB hold exactly the endpoints still attached, each of
//! them answers pings from another host, and no interface, address or route is left behind anywhere.
//!
//! ```text
//!   10 driver threads (2 per host), each with its own 10 bare namespaces ch1-h<i>-t<t>-n<k>
//!     └─ 100 ops each on the API socket: pick a namespace at random; attached ─► detach;
//!        else ─► attach, with the same name and service as last time or with new ones (first time: new)
//!   then: attachments, table digests, directories, FDBs, links, addresses, pings; then detach the rest, all bare
//! ```
//!
//! Blocks are /28 (16 addresses) so the hosts claim several blocks each while the churn runs: IPAM is part of it.
//! docs/churn.md describes the scenario and the figures it measured.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use weft_integration::services::{add_netns, api_request, assert_bare, links};
use weft_integration::weft::{fdb, lab_pki, link_info, peers, start_weft, wait_members, WeftConfig};
use weft_integration::{exec_stdout, ping_until, wait_until, Daemon, Lab};

const LAB: &str = "ch1";
const HOSTS: usize = 5;
const THREADS_PER_HOST: usize = 2;
const NAMESPACES_PER_THREAD: usize = 10;
const OPERATIONS: usize = 1000;
/// What issue 9 allows for the 1,000 operations.
const BUDGET: Duration = Duration::from_secs(60);
const NETWORK: &str = "blue";
const VNI: u64 = 100;
const GATEWAY: &str = "198.19.0.1";
/// The services the endpoints get (`None`: no service).
const SERVICES: [Option<&str>; 4] = [Some("web"), Some("db"), Some("cache"), None];
/// How long the tables get to converge after the last operation.
const CONVERGE: Duration = Duration::from_secs(20);

/// An endpoint the driver attached and has not detached.
#[derive(Clone, Debug)]
struct Endpoint {
    host: usize,
    netns: String,
    name: String,
    service: Option<String>,
    ip: Ipv4Addr,
    mac: String,
    host_interface: String,
}

/// One namespace of a driver thread.
#[derive(Debug)]
struct Slot {
    netns: String,
    attached: Option<Endpoint>,
    /// The name and service of the last attach (generation 0: never attached).
    name: String,
    service: Option<String>,
    generation: u32,
}

/// What a driver thread did.
#[derive(Debug, Default)]
struct Tally {
    attach_new: usize,
    attach_same: usize,
    /// Same name, right after its detach.
    attach_immediate: usize,
    detach: usize,
    failures: Vec<String>,
    latencies: Vec<Duration>,
}

/// xorshift64*: a seeded, reproducible operation mix without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn start_cluster(lab: &Lab) -> Result<Vec<Daemon>> {
    let (_, certs) = lab_pki(lab)?;
    let all: Vec<usize> = (1..=HOSTS).collect();
    let mut daemons = Vec::new();
    for &i in &all {
        let mut config = WeftConfig::with_gossip(lab, i, &[(NETWORK, VNI as u32)], &certs[i - 1], &[1, 2]);
        config.networks[0].extra.push("block_prefix = 28".into());
        daemons.push(start_weft(lab, i, &config.to_toml())?);
    }
    wait_members(lab, &all, Duration::from_secs(15))?;
    Ok(daemons)
}

/// Runs one driver thread's `count` operations on host `host`'s API; stops early once the churn, which began at
/// `began`, is over [`BUDGET`].
fn drive(
    lab: &Lab,
    host: usize,
    thread: usize,
    slots: &mut [Slot],
    count: usize,
    live: &Mutex<BTreeMap<Ipv4Addr, String>>,
    began: Instant,
) -> Tally {
    let socket = lab.api_socket(host);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (host * 16 + thread) as u64);
    let mut tally = Tally::default();
    // After a detach, sometimes the very next operation re-attaches the same namespace with the same name: the
    // name (and maybe the address) were freed a moment ago.
    let mut again: Option<usize> = None;
    for _ in 0..count {
        if began.elapsed() > BUDGET {
            break; // over budget: the test fails on the count, without waiting for the rest
        }
        let immediate = again.is_some();
        let k = again.take().unwrap_or_else(|| rng.below(slots.len()));
        let slot = &mut slots[k];
        let start = Instant::now();
        if let Some(endpoint) = slot.attached.take() {
            // Out of the live set before the request: once the daemon frees the address, another attach on this
            // host may get it before this thread sees the answer.
            live.lock().expect("live map").remove(&endpoint.ip);
            match api_request(&socket, "detach", json!({ "netns": slot.netns, "network": NETWORK })) {
                Ok(answer) if answer["detached"]["ip"] == endpoint.ip.to_string() => {
                    tally.detach += 1;
                    if rng.below(4) == 0 {
                        again = Some(k);
                    }
                }
                Ok(answer) => tally.failures.push(format!("detach {}: answer {answer}", slot.netns)),
                Err(e) => {
                    tally.failures.push(format!("detach {} on host {host}: {e:#}", slot.netns));
                    live.lock().expect("live map").insert(endpoint.ip, slot.netns.clone());
                    slot.attached = Some(endpoint);
                }
            }
        } else {
            let same = immediate || (slot.generation > 0 && rng.below(2) == 0);
            if !same {
                slot.generation += 1;
                slot.name = format!("h{host}t{thread}n{k}g{}", slot.generation);
                slot.service = SERVICES[rng.below(SERVICES.len())].map(str::to_owned);
            }
            let params = json!({ "netns": slot.netns, "network": NETWORK, "name": slot.name, "service": slot.service });
            match api_request(&socket, "attach", params).and_then(|a| endpoint_of(host, slot, &a)) {
                Ok(endpoint) => {
                    if let Some(other) = live.lock().expect("live map").insert(endpoint.ip, slot.netns.clone()) {
                        tally
                            .failures
                            .push(format!("{} was handed out to {} while {other} held it", endpoint.ip, slot.netns));
                    }
                    if immediate {
                        tally.attach_immediate += 1;
                    } else if same {
                        tally.attach_same += 1;
                    } else {
                        tally.attach_new += 1;
                    }
                    slot.attached = Some(endpoint);
                }
                Err(e) => tally.failures.push(format!("attach {} ({}) on host {host}: {e:#}", slot.netns, slot.name)),
            }
        }
        tally.latencies.push(start.elapsed());
    }
    tally
}

/// The endpoint an `attach` answer describes, checked against what was asked.
fn endpoint_of(host: usize, slot: &Slot, a: &Value) -> Result<Endpoint> {
    let text = |key: &str| a[key].as_str().map(str::to_owned).with_context(|| format!("no {key} in {a}"));
    ensure!(a["interface"] == "eth0" && a["gateway"] == GATEWAY && a["netns"] == slot.netns.as_str(), "attachment {a}");
    ensure!(a["name"] == slot.name.as_str() && a["service"] == json!(slot.service), "attachment {a}");
    Ok(Endpoint {
        host,
        netns: slot.netns.clone(),
        name: slot.name.clone(),
        service: slot.service.clone(),
        ip: text("ip")?.parse().context("attachment ip")?,
        mac: text("mac")?,
        host_interface: text("host_interface")?,
    })
}

/// The link names of host `i`'s namespace.
fn host_links(lab: &Lab, i: usize) -> Result<BTreeSet<String>> {
    Ok(links(&lab.host(i).ns)?.into_iter().collect())
}

/// The global IPv4 addresses (with prefix) in `ns`.
fn global_addresses(ns: &str) -> Result<Vec<String>> {
    let out = exec_stdout(ns, &["ip", "-j", "-4", "addr", "show", "scope", "global"])?;
    let links: Vec<Value> = serde_json::from_str(&out).context("ip -j addr")?;
    Ok(links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
        .collect())
}

/// An endpoint as a host's directory lists it: (name, service, address, VTEP).
type DirectoryRow = (String, Option<String>, String, String);

/// The MACs of the hosts' bridges. Discovery skips them (services.rs checks that), and without a published service
/// no host has an ingress endpoint on its bridge; they are left out anyway, being part of no attachment or churn.
fn bridge_macs(lab: &Lab) -> Result<BTreeSet<String>> {
    (1..=HOSTS)
        .map(|i| {
            let info = link_info(&lab.host(i).ns, &format!("br-{NETWORK}"))?.context("no bridge")?;
            Ok(info.mac)
        })
        .collect()
}

/// Host `i`'s directory (`services` endpoints, the bridges' own left out) as (name, service, ip, vtep).
fn directory(lab: &Lab, i: usize, bridges: &BTreeSet<String>) -> Result<BTreeSet<DirectoryRow>> {
    let answer = api_request(&lab.api_socket(i), "services", Value::Null)?;
    let mut out = BTreeSet::new();
    let endpoints = answer["endpoints"].as_array().context("services without endpoints")?;
    for e in endpoints.iter().filter(|e| !e["mac"].as_str().is_some_and(|m| bridges.contains(m))) {
        ensure!(e["vni"] == VNI, "host {i} lists an endpoint on another VNI: {e}");
        let ips: Vec<&str> = e["ips"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        ensure!(ips.len() == 1, "host {i} lists an endpoint without exactly one address: {e}");
        let row = (
            e["name"].as_str().unwrap_or_default().to_owned(),
            e["service"].as_str().map(str::to_owned),
            ips[0].to_owned(),
            e["vtep"].as_str().unwrap_or_default().to_owned(),
        );
        ensure!(out.insert(row), "host {i} lists an endpoint twice: {e}");
    }
    Ok(out)
}

/// Host `i`'s gossiped FDB rows on the VNI as (mac, vtep), the bridges' own left out.
fn gossip_fdb(lab: &Lab, i: usize, bridges: &BTreeSet<String>) -> Result<BTreeSet<(String, String)>> {
    Ok(fdb(lab, i)?
        .into_iter()
        .filter(|r| r.vni == VNI && r.origin == "gossip" && !bridges.contains(&r.mac))
        .map(|r| (r.mac, r.vtep))
        .collect())
}

/// Waits until every host reports the same table digest; returns it.
fn wait_same_digest(lab: &Lab) -> Result<String> {
    let mut last = Vec::new();
    wait_until(CONVERGE, "every host to report the same table digest", || {
        last = (1..=HOSTS).map(|i| Ok(peers(lab, i)?.table_digest)).collect::<Result<Vec<_>>>()?;
        Ok(last.iter().all(|d| *d == last[0]))
    })
    .with_context(|| format!("digests last seen: {last:?}"))?;
    Ok(last[0].clone())
}

/// Asserts that every host's directory and FDB hold exactly `attached` (waiting up to [`CONVERGE`]), and that no
/// two hosts hold one IPAM block.
fn assert_tables(lab: &Lab, attached: &[Endpoint]) -> Result<()> {
    let underlay = |h: usize| lab.host(h).underlay.to_string();
    let bridges = bridge_macs(lab)?;
    let expected: BTreeSet<_> =
        attached.iter().map(|e| (e.name.clone(), e.service.clone(), e.ip.to_string(), underlay(e.host))).collect();
    for i in 1..=HOSTS {
        let remote: BTreeSet<_> =
            attached.iter().filter(|e| e.host != i).map(|e| (e.mac.clone(), underlay(e.host))).collect();
        let mut last = (BTreeSet::new(), BTreeSet::new());
        wait_until(CONVERGE, &format!("host {i}'s directory and FDB to hold exactly the attached endpoints"), || {
            last = (directory(lab, i, &bridges)?, gossip_fdb(lab, i, &bridges)?);
            Ok(last.0 == expected && last.1 == remote)
        })
        .with_context(|| {
            format!(
                "host {i}: directory extra {:?} missing {:?}; fdb extra {:?} missing {:?}",
                last.0.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&last.0).collect::<Vec<_>>(),
                last.1.difference(&remote).collect::<Vec<_>>(),
                remote.difference(&last.1).collect::<Vec<_>>()
            )
        })?;
    }
    let mut holders: BTreeMap<String, usize> = BTreeMap::new();
    for i in 1..=HOSTS {
        let answer = api_request(&lab.api_socket(i), "services", Value::Null)?;
        for block in answer["blocks"].as_array().into_iter().flatten().filter_map(|b| b["block"].as_str()) {
            if let Some(other) = holders.insert(block.to_owned(), i) {
                bail!("block {block} is held by hosts {other} and {i}");
            }
        }
    }
    Ok(())
}

/// Asserts every host's attachments, links and every namespace's addresses against the driver's state.
fn assert_no_leaks(lab: &Lab, baseline: &[BTreeSet<String>], slots: &[Slot]) -> Result<()> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for slot in slots {
        let Some(e) = &slot.attached else {
            assert_bare(&slot.netns)?;
            continue;
        };
        let in_ns = links(&slot.netns)?;
        ensure!(in_ns == ["lo", "eth0"], "[{}] links {in_ns:?}", slot.netns);
        let addresses = global_addresses(&slot.netns)?;
        ensure!(addresses == [format!("{}/24", e.ip)], "[{}] holds {addresses:?}, attached as {}", slot.netns, e.ip);
        if let Some(other) = seen.insert(addresses[0].clone(), slot.netns.clone()) {
            bail!("{} is on both {other} and {}", addresses[0], slot.netns);
        }
        let routes = exec_stdout(&slot.netns, &["ip", "-4", "route", "show", "default"])?;
        ensure!(routes.contains(&format!("via {GATEWAY} dev eth0")), "[{}] default route: {routes}", slot.netns);
    }
    for i in 1..=HOSTS {
        let mine: Vec<&Endpoint> = slots.iter().filter_map(|s| s.attached.as_ref()).filter(|e| e.host == i).collect();
        let mut expected = baseline[i - 1].clone();
        expected.extend(mine.iter().map(|e| e.host_interface.clone()));
        let now = host_links(lab, i)?;
        ensure!(
            now == expected,
            "host {i}: links leaked {:?}, missing {:?}",
            now.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&now).collect::<Vec<_>>()
        );
        // The regression behind the first failure of this test (docs/churn.md): no bridge port of an attachment
        // speaks IPv6, and the bridge's MAC is set (2: stolen from a port, 3: set), so it never follows its ports.
        let host = lab.host(i).ns;
        for e in &mine {
            let off =
                exec_stdout(&host, &["cat", &format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", e.host_interface)])?;
            ensure!(off.trim() == "1", "host {i}: IPv6 is on on {}", e.host_interface);
        }
        let assigned = exec_stdout(&host, &["cat", &format!("/sys/class/net/br-{NETWORK}/addr_assign_type")])?;
        ensure!(assigned.trim() == "3", "host {i}: br-{NETWORK}'s MAC is not pinned (addr_assign_type {assigned})");
        let answer = api_request(&lab.api_socket(i), "attachments", Value::Null)?;
        let listed: BTreeSet<(String, String)> = answer["attachments"]
            .as_array()
            .context("attachments")?
            .iter()
            .map(|a| {
                (a["netns"].as_str().unwrap_or_default().to_owned(), a["ip"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        let want: BTreeSet<(String, String)> = mine.iter().map(|e| (e.netns.clone(), e.ip.to_string())).collect();
        ensure!(listed == want, "host {i} lists attachments {listed:?}, the driver holds {want:?}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_thousand_attaches_and_detaches_on_five_hosts_leave_identical_tables_and_no_leaks() -> Result<()> {
    let lab = Lab::up(LAB, HOSTS, 0, &[NETWORK])?;
    let _daemons = start_cluster(&lab)?;
    let baseline: Vec<BTreeSet<String>> = (1..=HOSTS).map(|i| host_links(&lab, i)).collect::<Result<_>>()?;
    let mut slots: Vec<Vec<Slot>> = Vec::new();
    for i in 1..=HOSTS {
        for t in 0..THREADS_PER_HOST {
            let mut thread_slots = Vec::new();
            for k in 0..NAMESPACES_PER_THREAD {
                let netns = format!("{LAB}-h{i}-t{t}-n{k}");
                add_netns(&netns)?;
                thread_slots.push(Slot { netns, attached: None, name: String::new(), service: None, generation: 0 });
            }
            slots.push(thread_slots);
        }
    }

    // The churn: every thread at once, as fast as the daemons answer.
    let per_thread = OPERATIONS / (HOSTS * THREADS_PER_HOST);
    let live = Mutex::new(BTreeMap::new());
    let start = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = slots
            .iter_mut()
            .enumerate()
            .map(|(n, thread_slots)| {
                let (lab, live) = (&lab, &live);
                let (host, thread) = (n / THREADS_PER_HOST + 1, n % THREADS_PER_HOST);
                scope.spawn(move || drive(lab, host, thread, thread_slots, per_thread, live, start))
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("driver thread panicked")).collect()
    });
    let elapsed = start.elapsed();
    let slots: Vec<Slot> = slots.into_iter().flatten().collect();

    let (mut new, mut same, mut immediate, mut detach) = (0, 0, 0, 0);
    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
    for t in tallies {
        (new, same, immediate) = (new + t.attach_new, same + t.attach_same, immediate + t.attach_immediate);
        detach += t.detach;
        latencies.extend(t.latencies);
        failures.extend(t.failures);
    }
    latencies.sort();
    let ops = latencies.len();
    ensure!(ops > 0, "no operation was made; failures: {failures:#?}");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "churn: {ops} operations in {} ms ({new} new attaches, {same} later and {immediate} immediate \
         re-attaches with the same name, {detach} detaches, {} failed); latency median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_millis(),
        failures.len(),
        ms(latencies[ops / 2]),
        ms(latencies[ops * 99 / 100]),
        ms(latencies[ops - 1])
    );
    ensure!(ops == OPERATIONS, "{ops} operations, not {OPERATIONS}");
    ensure!(
        failures.is_empty(),
        "{} operations failed; the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    ensure!(elapsed <= BUDGET, "{OPERATIONS} operations took {elapsed:?}, over {BUDGET:?}");

    // The tables converge: one digest everywhere, and exactly the attached endpoints in every directory and FDB.
    let attached: Vec<Endpoint> = slots.iter().filter_map(|s| s.attached.clone()).collect();
    let converge = Instant::now();
    let digest = wait_same_digest(&lab)?;
    assert_tables(&lab, &attached)?;
    eprintln!(
        "after the churn: {} endpoints attached, every host has digest {digest} and exactly them, {} ms after the \
         last operation",
        attached.len(),
        converge.elapsed().as_millis()
    );
    assert_no_leaks(&lab, &baseline, &slots)?;

    // Every endpoint still attached answers a ping from an endpoint on another host.
    let pings = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = attached
            .iter()
            .enumerate()
            .map(|(n, target)| {
                let sources: Vec<&Endpoint> = attached.iter().filter(|e| e.host != target.host).collect();
                let source = sources.get(n % sources.len().max(1)).map(|e| e.netns.clone());
                let ip = IpAddr::V4(target.ip);
                scope.spawn(move || -> Result<()> {
                    let source = source.context("no endpoint on another host to ping from")?;
                    ping_until(&source, ip, Duration::from_secs(15))
                })
            })
            .collect();
        for w in workers {
            w.join().expect("ping thread panicked")?;
        }
        Ok(())
    })?;
    eprintln!(
        "reachability: {} endpoints answered pings from other hosts in {} ms",
        attached.len(),
        pings.elapsed().as_millis()
    );

    // Detach the rest: nothing may remain anywhere.
    for e in &attached {
        api_request(&lab.api_socket(e.host), "detach", json!({ "netns": e.netns, "network": NETWORK }))?;
    }
    let slots: Vec<Slot> = slots.into_iter().map(|s| Slot { attached: None, ..s }).collect();
    wait_same_digest(&lab)?;
    assert_tables(&lab, &[])?;
    assert_no_leaks(&lab, &baseline, &slots)?;
    Ok(())
}
