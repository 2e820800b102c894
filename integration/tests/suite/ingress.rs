//! The ingress routing mesh (issue 7, acceptance 2 and 3): three hosts, two backends attached on each with
//! `weft attach --service web`, the service published once with `weft service publish`, and a client outside the
//! overlay (a namespace on the underlay switch only, 198.18.0.200) connecting to the published port of every host.
//!
//! - `ingress_from_outside_spreads_over_every_backend`: every host answers, every backend serves, the spread is
//!   even; with the PROXY protocol the backends see the client's own address. No `ingress_address` is configured:
//!   each host takes its own from its IPAM block, puts it on its bridge and announces it under its bridge's MAC,
//!   which is then the only thing the other hosts know of that MAC.
//! - `a_dead_backend_host_costs_no_new_connection`: host 3's weft is killed (-9), which takes its backends off the
//!   overlay; connections to hosts 1 and 2 keep succeeding, and from 3 s after the kill every one is served by a
//!   backend of hosts 1 or 2. Here every host has an explicit `ingress_address` (the override).
//!
//! The backends and the client are `weft-echo` (integration/src/bin): it answers `name=NAME client=ADDR proxied=..`
//! and parses the PROXY v2 header itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use weft_integration::services::{bridge_mac, records_of_macs};
use weft_integration::weft::{lab_pki, query, start_weft, wait_members, WeftConfig};
use weft_integration::{exec_stdout, wait_until, Daemon, Lab};

const HOSTS: usize = 3;
const BACKENDS_PER_HOST: usize = 2;
const VNI: u32 = 100;
const PORT: u16 = 8080;
const TARGET: u16 = 80;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The bound: a backend that is gone gets no new connection after this.
const FAILOVER: Duration = Duration::from_secs(3);

fn echo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weft-echo")
}

/// Host `i`'s own address on the overlay when configured (`ingress_address`): unique per host, at the top of the
/// subnet.
fn ingress_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 250 + i as u8)
}

struct Mesh {
    // Dropped last: the lab stops the daemons and removes every namespace.
    lab: Lab,
    daemons: Vec<Daemon>,
    /// Backend name → the host it runs on.
    backends: BTreeMap<String, usize>,
}

/// Runs `weft <args> --socket <host i's socket> --json` and returns its JSON.
fn weft(lab: &Lab, i: usize, args: &[&str]) -> Result<Value> {
    let socket = lab.api_socket(i).display().to_string();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--socket", &socket, "--json"]);
    let output = std::process::Command::new(weft_integration::weft_bin())
        .args(&full)
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run weft")?;
    if !output.status.success() {
        bail!("weft {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim_end());
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("weft {} printed no JSON", args.join(" ")))
}

/// The published service `name` as host `i` shows it.
fn published(lab: &Lab, i: usize, name: &str) -> Result<Value> {
    let services = query(lab, i, "services")?;
    services["published"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["name"] == name).cloned())
        .with_context(|| format!("host {i} does not publish {name}: {services}"))
}

fn healthy_backends(service: &Value) -> usize {
    service["backends"].as_array().map_or(0, |b| b.iter().filter(|b| b["healthy"] == true).count())
}

/// Three hosts with gossip, a client namespace on the underlay, two backends per host attached as service `web`;
/// `fixed`: each host's `ingress_address` is configured, else weft takes it from the host's IPAM block.
fn mesh(name: &str, fixed: bool) -> Result<Mesh> {
    let lab = Lab::up(name, HOSTS, 0, &["blue"])?;
    // The client: a namespace on the underlay switch only, named under the lab so lab.sh down removes it.
    let client = format!("{name}-cl");
    let switch = format!("{name}-ul");
    run_ip(&["netns", "add", &client])?;
    run_ip(&["-n", &switch, "link", "add", "pcl", "type", "veth", "peer", "name", "eth0", "netns", &client])?;
    run_ip(&["-n", &switch, "link", "set", "pcl", "master", "br0", "up"])?;
    run_ip(&["-n", &client, "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
    run_ip(&["-n", &client, "link", "set", "eth0", "up"])?;
    run_ip(&["-n", &client, "link", "set", "lo", "up"])?;

    let (_, certs) = lab_pki(&lab)?;
    let mut daemons = Vec::new();
    for i in 1..=HOSTS {
        let mut config = WeftConfig::with_gossip(&lab, i, &[("blue", VNI)], &certs[i - 1], &[1, 2]);
        if fixed {
            config.networks[0].extra.push(format!("ingress_address = \"{}\"", ingress_address(i)));
        }
        daemons.push(start_weft(&lab, i, &config.to_toml())?);
    }
    let hosts: Vec<usize> = (1..=HOSTS).collect();
    wait_members(&lab, &hosts, Duration::from_secs(15))?;

    let mut backends = BTreeMap::new();
    for i in 1..=HOSTS {
        for k in 1..=BACKENDS_PER_HOST {
            let ns = format!("{name}-b{i}{k}");
            let backend = format!("web-{i}{k}");
            run_ip(&["netns", "add", &ns])?;
            run_ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            weft(&lab, i, &["attach", &ns, "--network", "blue", "--name", &backend, "--service", "web"])?;
            lab.spawn(&ns, &[echo_bin(), "serve", &format!("0.0.0.0:{TARGET}"), &backend])?;
            backends.insert(backend, i);
        }
    }
    Ok(Mesh { lab, daemons, backends })
}

fn run_ip(args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("ip").args(args).output().context("cannot run ip")?;
    ensure!(output.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// Every host took an ingress address of its own out of one of its IPAM blocks and put it on its bridge; every
/// other host knows it as the record `ingress-endpoint` of that bridge's MAC, and knows nothing else of the bridge
/// (its link-local traffic is not discovered).
fn check_ingress_addresses(m: &Mesh) -> Result<()> {
    let bridges: Vec<String> = (1..=HOSTS).map(|i| bridge_mac(&m.lab, i, "blue")).collect::<Result<_>>()?;
    let mut addresses = Vec::new();
    for i in 1..=HOSTS {
        let (own, _, local) = records_of_macs(&m.lab, i, &bridges[i - 1..i])?;
        ensure!(local.is_empty(), "host {i} discovered its bridge as a local endpoint: {local:?}");
        ensure!(own.len() == 1 && own[0]["name"] == "ingress-endpoint", "host {i}'s ingress record: {own:?}");
        let ips = own[0]["ips"].as_array().context("no ips")?;
        ensure!(ips.len() == 1, "host {i}'s ingress record has one address: {own:?}");
        let addr: Ipv4Addr = ips[0].as_str().context("ip")?.parse()?;
        let blocks = query(&m.lab, i, "services")?["blocks"].clone();
        let inside = blocks.as_array().into_iter().flatten().filter_map(|b| b["block"].as_str()).any(|b| {
            let (start, len) = b.split_once('/').unwrap_or_default();
            let (start, len): (Ipv4Addr, u32) =
                (start.parse().unwrap_or(Ipv4Addr::UNSPECIFIED), len.parse().unwrap_or(32));
            u32::from(addr) >> (32 - len) == u32::from(start) >> (32 - len)
        });
        ensure!(inside, "host {i}'s ingress address {addr} lies in none of its blocks {blocks}");
        let on_bridge = exec_stdout(&m.lab.host(i).ns, &["ip", "-4", "-o", "addr", "show", "dev", "br-blue"])?;
        ensure!(on_bridge.contains(&format!(" {addr}/")), "host {i}'s bridge lacks {addr}: {on_bridge}");
        addresses.push(addr);
    }
    eprintln!("ingress addresses: {addresses:?}");
    for i in 1..=HOSTS {
        let (directory, fdb, _) = records_of_macs(&m.lab, i, &bridges)?;
        for j in (1..=HOSTS).filter(|&j| j != i) {
            let of_j: Vec<&Value> = directory.iter().filter(|e| e["mac"] == bridges[j - 1].as_str()).collect();
            let expected = serde_json::json!([addresses[j - 1].to_string()]);
            ensure!(
                of_j.len() == 1 && of_j[0]["name"] == "ingress-endpoint" && of_j[0]["ips"] == expected,
                "host {i} should know host {j}'s bridge only as its ingress endpoint {expected}: {of_j:?}"
            );
            let vtep = format!("198.18.0.{j}");
            let rows: Vec<&Value> = fdb.iter().filter(|r| r["mac"] == bridges[j - 1].as_str()).collect();
            ensure!(
                rows.len() == 1 && rows[0]["vtep"] == vtep.as_str(),
                "host {i}'s FDB for host {j}'s bridge: {rows:?}"
            );
        }
    }
    Ok(())
}

/// One line of `weft-echo connect`: (start ms, target, Ok(answer) or Err(reason)).
type Attempt = (u64, String, Result<String, String>);

fn client_connect(lab: &Lab, mode: &str, amount: u64, timeout_ms: u64, targets: &[String]) -> Result<Vec<Attempt>> {
    let ns = format!("{}-cl", lab.name());
    let (amount, timeout) = (amount.to_string(), timeout_ms.to_string());
    let mut args = vec![echo_bin(), mode, &amount, &timeout];
    args.extend(targets.iter().map(String::as_str));
    let out = exec_stdout(&ns, &args)?;
    out.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ms = parts.next().context("empty line")?.parse()?;
            let target = parts.next().context("no target")?.to_owned();
            let outcome = parts.next().context("no outcome")?;
            let rest = parts.next().unwrap_or("").to_owned();
            Ok((ms, target, if outcome == "ok" { Ok(rest) } else { Err(rest) }))
        })
        .collect()
}

/// The `key=value` field of an answer.
fn field<'a>(answer: &'a str, key: &str) -> Option<&'a str> {
    answer.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn targets(hosts: &[usize]) -> Vec<String> {
    hosts.iter().map(|i| format!("198.18.0.{i}:{PORT}")).collect()
}

/// Publishes `web` from host 1 and waits until every host listens and sees all its backends healthy.
fn publish(m: &Mesh, extra: &[&str]) -> Result<()> {
    let (port, target) = (PORT.to_string(), TARGET.to_string());
    let mut args = vec!["service", "publish", "web", "--port", &port, "--target", &target];
    args.extend_from_slice(extra);
    weft(&m.lab, 1, &args)?;
    let proxied = extra.contains(&"--proxy-protocol");
    let mut last = Value::Null;
    wait_until(Duration::from_secs(20), "every host to publish web with all backends healthy", || {
        for i in 1..=HOSTS {
            last = published(&m.lab, i, "web")?;
            let ready = last["listening"] == true
                && last["proxy_protocol"] == proxied
                && healthy_backends(&last) == HOSTS * BACKENDS_PER_HOST;
            if !ready {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .with_context(|| format!("last seen: {last}"))
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn ingress_from_outside_spreads_over_every_backend() -> Result<()> {
    let m = mesh("igmesh", false)?;
    publish(&m, &[])?;
    check_ingress_addresses(&m)?;
    let hosts: Vec<usize> = (1..=HOSTS).collect();
    let per_target = 30;
    let attempts = client_connect(&m.lab, "connect-count", per_target, 5000, &targets(&hosts))?;
    ensure!(attempts.len() == HOSTS * per_target as usize, "expected {} connections: {attempts:?}", HOSTS * 30);
    let mut spread: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (_, target, outcome) in &attempts {
        let answer = outcome.as_ref().map_err(|e| anyhow::anyhow!("connection to {target} failed: {e}"))?;
        let name = field(answer, "name").with_context(|| format!("no name in {answer:?}"))?;
        ensure!(m.backends.contains_key(name), "{answer:?} names no backend");
        ensure!(field(answer, "proxied") == Some("no"), "no PROXY header was asked for: {answer:?}");
        let client = field(answer, "client").unwrap_or("");
        ensure!(!client.starts_with(&format!("{CLIENT}:")), "without PROXY the backend sees the host: {answer:?}");
        *spread.entry((target.clone(), name.to_owned())).or_default() += 1;
    }
    eprintln!("spread (published address, backend) -> connections: {spread:?}");
    // Each host balances on its own: every backend gets about a sixth of the host's connections (round robin
    // makes it exactly 5 of 30 unless a check failed).
    let fair = per_target as u32 / (HOSTS * BACKENDS_PER_HOST) as u32;
    for target in targets(&hosts) {
        for backend in m.backends.keys() {
            let n = spread.get(&(target.clone(), backend.clone())).copied().unwrap_or(0);
            ensure!(
                (fair / 2..=fair * 2).contains(&n),
                "{backend} served {n} of {per_target} connections to {target}, expected about {fair}: {spread:?}"
            );
        }
    }

    // With the PROXY protocol, the backends see the client's own address.
    publish(&m, &["--proxy-protocol"])?;
    let attempts = client_connect(&m.lab, "connect-count", 6, 5000, &targets(&hosts))?;
    let mut names = std::collections::BTreeSet::new();
    for (_, target, outcome) in &attempts {
        let answer = outcome.as_ref().map_err(|e| anyhow::anyhow!("connection to {target} failed: {e}"))?;
        ensure!(field(answer, "proxied") == Some("yes"), "no PROXY header: {answer:?}");
        let client: std::net::SocketAddr = field(answer, "client").context("no client")?.parse()?;
        ensure!(client.ip() == IpAddr::V4(CLIENT), "the backend saw {client}, not the client {CLIENT}: {answer:?}");
        names.insert(field(answer, "name").unwrap_or("").to_owned());
    }
    ensure!(names.len() == m.backends.len(), "every backend answers with the header too: {names:?}");
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_dead_backend_host_costs_no_new_connection() -> Result<()> {
    let m = mesh("igloss", true)?;
    publish(&m, &[])?;
    let survivors = [1, 2];
    const VICTIM: usize = 3;
    let kill = Instant::now();
    m.daemons[VICTIM - 1].kill9()?;
    // Connections for 6 s from the moment of the kill, one at a time, alternating between the two survivors; meanwhile
    // the survivors' view of host 3's backends is watched.
    let attempts = std::thread::scope(|scope| -> Result<Vec<Attempt>> {
        let client = scope.spawn(|| client_connect(&m.lab, "connect", 6000, 5000, &targets(&survivors)));
        let victims: Vec<String> = m.backends.iter().filter(|(_, h)| **h == VICTIM).map(|(n, _)| n.clone()).collect();
        let mut last = Value::Null;
        wait_until(FAILOVER + Duration::from_secs(2), "the survivors to stop picking host 3's backends", || {
            for i in survivors {
                last = published(&m.lab, i, "web")?;
                let in_use = last["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|b| b["healthy"] == true && victims.iter().any(|v| b["name"] == v.as_str()));
                if in_use {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .with_context(|| format!("last seen: {last}"))?;
        let out = kill.elapsed();
        eprintln!("host {VICTIM}'s backends out of the survivors' balancers {} ms after the kill", out.as_millis());
        ensure!(out <= FAILOVER, "host {VICTIM}'s backends were still picked {} ms after the kill", out.as_millis());
        client.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))?
    })?;
    ensure!(kill.elapsed() >= Duration::from_secs(6), "the client ran for 6 s");
    ensure!(attempts.len() > 20, "too few connections were made: {attempts:?}");
    let mut failed_early = 0;
    let mut victim_served_late = Vec::new();
    for (ms, target, outcome) in &attempts {
        let late = Duration::from_millis(*ms) >= FAILOVER;
        match outcome {
            Ok(answer) => {
                let name = field(answer, "name").unwrap_or("");
                let host = *m.backends.get(name).with_context(|| format!("{answer:?} names no backend"))?;
                if late && host == VICTIM {
                    victim_served_late.push(answer.clone());
                }
            }
            Err(e) if late => bail!("a connection to {target} {ms} ms after the kill failed: {e}; all: {attempts:?}"),
            Err(_) => failed_early += 1,
        }
    }
    ensure!(victim_served_late.is_empty(), "host {VICTIM}'s backends still answered after 3 s: {victim_served_late:?}");
    let slowest = attempts.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or(0);
    eprintln!(
        "after the kill: {} connections in 6 s, {failed_early} failed in the first 3 s, longest gap between \
         connection starts {slowest} ms",
        attempts.len()
    );
    ensure!(failed_early == 0, "{failed_early} connections failed in the first 3 s: {attempts:?}");
    // And the survivors drop the dead host's backends from their balancers (record withdrawn or checks failed).
    wait_until(Duration::from_secs(5), "the survivors to forget host 3's backends (its records withdrawn)", || {
        for i in survivors {
            let service = published(&m.lab, i, "web")?;
            if healthy_backends(&service) != BACKENDS_PER_HOST * survivors.len() {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    Ok(())
}
