//! Helpers for the reliability suite (`integration/tests/reliability_*.rs` and the soak): a cluster of weft hosts
//! with gossip and an encrypted network that can restart its routers, underlay faults made with nftables in a host's
//! own namespace, background traffic that is read back afterwards (a timestamped ping stream, an iperf3 run with
//! per-interval receiver figures), a watcher that samples every host's membership and RSS throughout, and endpoint
//! churn with convergence timing.
//!
//! ```text
//!   Cluster::up(name, hosts, containers, control lines) ─► EncryptedLab-style: lab, PKI, encrypted config per host
//!        ├─ restart(i, Stop::Kill | Stop::Term) ─► same config, same certificate, a new incarnation
//!        └─ wait_converged ─► every host lists every other, and every pair has keys
//!   Fault::Loss(pct) | Fault::Partition ─► nft table `weftrl` in the host's namespace ─► Fault::clear
//!   PingStream (ping -D, replies as wall-clock times) · Iperf (iperf3 --json --get-server-output in the background)
//!   Watcher thread ─► `weft peers` of every host every ~250 ms (false deaths) + VmRSS of every weft
//!   Churn::appear(host, slot) ─► a new endpoint (MacChurn: a container's new MAC sends; AttachChurn: weft attach
//!        of a fresh namespace, weft detach of the slot's old one) ─► time until every host's fdb has it
//! ```
//!
//! Nothing here sleeps to wait for a condition: waits are [`wait_until`]; the few sleeps pace load or sampling.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::encrypted::{encrypted_config_with, wait_keys, NET, OVERLAY_MTU};
use crate::services::{add_netns, api_request};
use crate::weft::{fdb, lab_pki, start_weft, tcp_listening, wait_exit, wait_members, NodeCert};
use crate::{exec_stdout, wait_until, Container, Daemon, Lab, LabOptions};

/// The hosts every cluster host joins through.
pub const SEEDS: [usize; 2] = [1, 2];
/// How long a (re)started cluster gets to list every member and agree every key.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(20);

/// Seconds since the Unix epoch, as `ping -D` prints them.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// How a router is stopped before its restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash, no leave notice, nothing cleaned up.
    Kill,
    /// SIGTERM: a clean exit.
    Term,
}

/// A lab whose hosts run weft with gossip (seeds [`SEEDS`]) and the encrypted network [`NET`].
#[derive(Debug)]
pub struct Cluster {
    /// The lab.
    pub lab: Lab,
    /// Host `i`'s certificate is element `i - 1`.
    pub certs: Vec<NodeCert>,
    /// Host `i`'s config text is element `i - 1`.
    pub configs: Vec<String>,
    /// Host `i`'s current daemon is element `i - 1`.
    pub daemons: Vec<Daemon>,
}

impl Cluster {
    /// Brings up lab `name` with `hosts` hosts and `containers` containers each (MTU [`OVERLAY_MTU`]), starts weft
    /// everywhere with `control` added to `[control]`, and waits until it has converged.
    pub fn up(name: &str, hosts: usize, containers: usize, control: &[String]) -> Result<Cluster> {
        Cluster::up_with(name, hosts, containers, control, &[])
    }

    /// [`Cluster::up`] with `network` lines added to the network's table.
    pub fn up_with(
        name: &str,
        hosts: usize,
        containers: usize,
        control: &[String],
        network: &[String],
    ) -> Result<Cluster> {
        let lab = Lab::up_with(
            name,
            LabOptions { hosts, containers, nets: vec![NET.to_owned()], mtu: 1500, container_mtu: Some(OVERLAY_MTU) },
        )?;
        let (_, certs) = lab_pki(&lab)?;
        let configs: Vec<String> = (1..=hosts)
            .map(|i| encrypted_config_with(&lab, i, &certs[i - 1], &SEEDS, control, network))
            .collect::<Result<_>>()?;
        let mut daemons = Vec::new();
        for i in 1..=hosts {
            daemons.push(start_weft(&lab, i, &configs[i - 1])?);
        }
        let cluster = Cluster { lab, certs, configs, daemons };
        let took = cluster.wait_converged(CONVERGE_DEADLINE)?;
        eprintln!(
            "cluster {name}: {hosts} hosts members with keys agreed {} ms after the last start",
            took.as_millis()
        );
        Ok(cluster)
    }

    /// 1..=hosts.
    pub fn hosts(&self) -> Vec<usize> {
        (1..=self.lab.options().hosts).collect()
    }

    /// Container `c` of host `i`.
    pub fn container(&self, i: usize, c: usize) -> Container {
        self.lab.container(i, NET, c)
    }

    /// Waits until every host lists every other and every pair has agreed keys; returns how long it took.
    pub fn wait_converged(&self, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        let hosts = self.hosts();
        wait_members(&self.lab, &hosts, deadline)?;
        wait_keys(&self.lab, &hosts, deadline.saturating_sub(start.elapsed()).max(Duration::from_secs(1)))?;
        Ok(start.elapsed())
    }

    /// Stops host `i`'s weft as `how` says and starts it again with the same config; returns the wall-clock time
    /// (as [`unix_now`]) at which the new process was spawned, once it serves its API.
    pub fn restart(&mut self, i: usize, how: Stop) -> Result<f64> {
        let old = &self.daemons[i - 1];
        match how {
            Stop::Kill => {
                old.kill9()?;
            }
            Stop::Term => {
                let status = old.stop()?;
                ensure!(status.success(), "weft on host {i} exited with {status} on SIGTERM:\n{}", old.log());
            }
        }
        let spawned = unix_now();
        self.daemons[i - 1] = start_weft(&self.lab, i, &self.configs[i - 1])?;
        Ok(spawned)
    }

    /// The PIDs of the current daemons, host `i`'s at `i - 1`.
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(Daemon::pid).collect()
    }
}

/// An underlay fault, made with an nftables table `weftrl` in a host's namespace, on its underlay link `ul0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every packet arriving on `ul0` is dropped with this probability, in percent (`numgen random mod 100 < p`).
    Loss(u32),
    /// Everything in and out of `ul0` is dropped (ARP aside, which nftables' inet family does not see).
    Partition,
}

/// The nftables table the faults live in.
const NFT_TABLE: &str = "weftrl";

impl Fault {
    /// Installs the fault in `ns` (replacing any earlier one).
    pub fn apply(self, ns: &str) -> Result<()> {
        Fault::clear(ns)?;
        exec_stdout(ns, &["nft", "add", "table", "inet", NFT_TABLE])?;
        exec_stdout(
            ns,
            &["nft", "add", "chain", "inet", NFT_TABLE, "in", "{ type filter hook input priority -300 ; }"],
        )?;
        match self {
            Fault::Loss(pct) => {
                let pct = pct.to_string();
                exec_stdout(
                    ns,
                    &[
                        "nft", "add", "rule", "inet", NFT_TABLE, "in", "iifname", "ul0", "numgen", "random", "mod",
                        "100", "<", &pct, "counter", "drop",
                    ],
                )?;
            }
            Fault::Partition => {
                exec_stdout(
                    ns,
                    &["nft", "add", "chain", "inet", NFT_TABLE, "out", "{ type filter hook output priority -300 ; }"],
                )?;
                exec_stdout(ns, &["nft", "add", "rule", "inet", NFT_TABLE, "in", "iifname", "ul0", "counter", "drop"])?;
                exec_stdout(
                    ns,
                    &["nft", "add", "rule", "inet", NFT_TABLE, "out", "oifname", "ul0", "counter", "drop"],
                )?;
            }
        }
        Ok(())
    }

    /// Removes any fault from `ns`.
    pub fn clear(ns: &str) -> Result<()> {
        let tables = exec_stdout(ns, &["nft", "list", "tables"])?;
        if tables.lines().any(|line| line.trim() == format!("table inet {NFT_TABLE}")) {
            exec_stdout(ns, &["nft", "delete", "table", "inet", NFT_TABLE])?;
        }
        Ok(())
    }

    /// How many packets the fault in `ns` has dropped so far (the sum of its rules' counters).
    pub fn dropped(ns: &str) -> Result<u64> {
        let out = exec_stdout(ns, &["nft", "-j", "list", "table", "inet", NFT_TABLE])?;
        let json: Value = serde_json::from_str(&out).context("nft -j printed no JSON")?;
        let rules = json["nftables"].as_array().ok_or_else(|| anyhow!("nft -j: no nftables array: {json}"))?;
        Ok(rules
            .iter()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|expr| expr["counter"]["packets"].as_u64())
            .sum())
    }
}

/// `ping -D -i interval -w secs` from a container, in the background; its replies are read back once it ends.
#[derive(Debug)]
pub struct PingStream {
    ping: Daemon,
    interval: f64,
    secs: u64,
}

impl PingStream {
    /// Starts pinging `addr` from `from_ns` every `interval` seconds for `secs` seconds.
    pub fn start(lab: &Lab, from_ns: &str, addr: IpAddr, interval: f64, secs: u64) -> Result<PingStream> {
        let (interval_s, secs_s, addr_s) = (format!("{interval}"), secs.to_string(), addr.to_string());
        let ping = lab.spawn(from_ns, &["ping", "-D", "-n", "-i", &interval_s, "-W", "1", "-w", &secs_s, &addr_s])?;
        Ok(PingStream { ping, interval, secs })
    }

    /// Waits for ping to end (it runs `secs`) and returns the wall-clock times of the replies, in order, and how many
    /// requests it sent.
    pub fn finish(self) -> Result<(Vec<f64>, u64)> {
        let (_, log) = wait_exit(&self.ping, Duration::from_secs(self.secs + 15))?;
        let replies = log
            .lines()
            .filter(|line| line.contains(" bytes from "))
            .filter_map(|line| line.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
            .collect();
        // "123 packets transmitted, 120 received, ..."
        let sent = log
            .lines()
            .find(|line| line.contains("packets transmitted"))
            .and_then(|line| line.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("ping printed no summary:\n{log}"))?;
        Ok((replies, sent))
    }

    /// The interval between requests, in seconds.
    pub fn interval(&self) -> f64 {
        self.interval
    }
}

/// The first reply at or after `t`, as seconds after `t`.
pub fn first_reply_after(replies: &[f64], t: f64) -> Option<f64> {
    replies.iter().find(|&&r| r >= t).map(|r| r - t)
}

/// The longest time without a reply between `from` and `to` (the window's edges count as replies).
pub fn longest_gap(replies: &[f64], from: f64, to: f64) -> f64 {
    let mut last = from;
    let mut gap: f64 = 0.0;
    for &r in replies.iter().filter(|&&r| r >= from && r <= to) {
        gap = gap.max(r - last);
        last = r;
    }
    gap.max(to - last)
}

/// An iperf3 run in the background: a one-off server in one container, a client in another.
#[derive(Debug)]
pub struct Iperf {
    server: Daemon,
    client: Daemon,
    secs: u64,
    /// Wall-clock time the client started.
    pub started: f64,
}

/// What an [`Iperf`] run sends.
#[derive(Clone, Copy, Debug)]
pub struct IperfLoad<'a> {
    /// Server port.
    pub port: u16,
    /// Duration, seconds.
    pub secs: u64,
    /// Target rate (`-b`), such as "200M".
    pub rate: &'a str,
    /// Report interval (`-i`), seconds.
    pub interval: f64,
}

impl Iperf {
    /// Starts `iperf3 -c addr -t secs -b rate -i interval --json --get-server-output` in `from` against a server
    /// in `to` on `port`.
    pub fn start(lab: &Lab, from: &Container, to: &Container, addr: IpAddr, load: IperfLoad) -> Result<Iperf> {
        let IperfLoad { port, secs, rate, interval } = load;
        let port_s = port.to_string();
        let server = lab.spawn(&to.ns, &["iperf3", "-s", "-1", "--json", "-p", &port_s])?;
        wait_until(Duration::from_secs(5), "iperf3 -s to listen", || tcp_listening(&to.ns, port))?;
        let (addr_s, secs_s, interval_s) = (addr.to_string(), secs.to_string(), format!("{interval}"));
        let started = unix_now();
        let client = lab.spawn(
            &from.ns,
            &[
                "iperf3",
                "-c",
                &addr_s,
                "-p",
                &port_s,
                "-t",
                &secs_s,
                "-b",
                rate,
                "-i",
                &interval_s,
                "--json",
                "--get-server-output",
            ],
        )?;
        Ok(Iperf { server, client, secs, started })
    }

    /// Waits for the client to end and returns its JSON report, after checking that neither side reported an
    /// error (a reset connection is one).
    pub fn finish(self) -> Result<Value> {
        let (status, log) = wait_exit(&self.client, Duration::from_secs(self.secs + 60))?;
        let start = log.find('{').ok_or_else(|| anyhow!("iperf3 -c printed no JSON ({status}):\n{log}"))?;
        let report: Value = serde_json::from_str(&log[start..])
            .with_context(|| format!("iperf3 -c printed no JSON ({status}):\n{log}"))?;
        if let Some(error) = report.get("error") {
            bail!("iperf3 -c reported an error: {error}; server log:\n{}", self.server.log());
        }
        ensure!(status.success(), "iperf3 -c exited with {status}: {report}");
        let (status, log) = wait_exit(&self.server, Duration::from_secs(10))?;
        ensure!(status.success(), "iperf3 -s ended with {status}: {log}");
        Ok(report)
    }
}

/// The receiver's intervals of an iperf3 report (`--get-server-output`): (start, end) in seconds since the client
/// started, and bytes received.
pub fn receiver_intervals(report: &Value) -> Result<Vec<(f64, f64, u64)>> {
    let intervals = report["server_output_json"]["intervals"]
        .as_array()
        .ok_or_else(|| anyhow!("iperf3 report has no server_output_json.intervals"))?;
    intervals
        .iter()
        .map(|i| {
            let sum = &i["sum"];
            Ok((
                sum["start"].as_f64().ok_or_else(|| anyhow!("interval without start: {i}"))?,
                sum["end"].as_f64().ok_or_else(|| anyhow!("interval without end: {i}"))?,
                sum["bytes"].as_u64().ok_or_else(|| anyhow!("interval without bytes: {i}"))?,
            ))
        })
        .collect()
}

/// The longest run of consecutive receiver intervals that carried nothing, in seconds.
pub fn longest_stall(intervals: &[(f64, f64, u64)]) -> f64 {
    let (mut longest, mut current): (f64, f64) = (0.0, 0.0);
    for &(start, end, bytes) in intervals {
        if bytes == 0 {
            current += end - start;
            longest = longest.max(current);
        } else {
            current = 0.0;
        }
    }
    longest
}

/// A process's resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// RSS samples of one process: (seconds since the first, KiB).
#[derive(Clone, Debug, Default)]
pub struct RssTrace {
    /// The samples.
    pub samples: Vec<(f64, u64)>,
}

impl RssTrace {
    /// The median of the samples in `[from, to)` of the trace's duration (fractions, 0.0 to 1.0).
    pub fn median_of(&self, from: f64, to: f64) -> Option<u64> {
        let end = self.samples.last()?.0;
        let mut window: Vec<u64> =
            self.samples.iter().filter(|(t, _)| *t >= from * end && *t <= to * end).map(|(_, kib)| *kib).collect();
        window.sort_unstable();
        window.get(window.len() / 2).copied()
    }

    /// The largest sample.
    pub fn max(&self) -> u64 {
        self.samples.iter().map(|(_, kib)| *kib).max().unwrap_or(0)
    }

    /// Checks that RSS stayed under `bound_kib` and did not grow: the median of the last fifth is at most the
    /// median of the second fifth (the first is warm-up) plus `slack_kib`.
    pub fn check_flat(&self, what: &str, bound_kib: u64, slack_kib: u64) -> Result<()> {
        ensure!(self.samples.len() >= 10, "{what}: only {} RSS samples", self.samples.len());
        ensure!(self.max() <= bound_kib, "{what}: RSS reached {} KiB, over the bound of {bound_kib} KiB", self.max());
        let early = self.median_of(0.2, 0.4).context("no early samples")?;
        let late = self.median_of(0.8, 1.0).context("no late samples")?;
        ensure!(
            late <= early + slack_kib,
            "{what}: RSS grew from a median of {early} KiB to {late} KiB (more than {slack_kib} KiB): {:?}",
            self.samples
        );
        Ok(())
    }

    /// "early → late KiB (max M)".
    pub fn summary(&self) -> String {
        format!(
            "{} → {} KiB (max {}, {} samples)",
            self.median_of(0.2, 0.4).unwrap_or(0),
            self.median_of(0.8, 1.0).unwrap_or(0),
            self.max(),
            self.samples.len()
        )
    }
}

/// What the [`Watcher`] saw.
#[derive(Clone, Debug, Default)]
pub struct WatchReport {
    /// Rounds in which every host was asked.
    pub rounds: u64,
    /// Every time a host did not list a member it should have: (seconds since the start, host, missing names).
    pub false_deaths: Vec<(f64, usize, Vec<String>)>,
    /// Host `i`'s weft RSS at `i - 1`.
    pub rss: Vec<RssTrace>,
    /// Queries that failed (the API did not answer): (seconds, host, error).
    pub errors: Vec<(f64, usize, String)>,
}

/// A thread that samples, every ~250 ms until stopped, every host's `weft peers` (is every other host still a
/// member?) and every weft's RSS.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<WatchReport>>,
}

impl Watcher {
    /// Starts watching `cluster`'s hosts (with the daemons' current PIDs).
    pub fn start(cluster: &Cluster) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let hosts = cluster.hosts();
        let pids = cluster.pids();
        let sockets: Vec<_> = hosts.iter().map(|&i| cluster.lab.api_socket(i)).collect();
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut report = WatchReport { rss: vec![RssTrace::default(); hosts.len()], ..WatchReport::default() };
            while !flag.load(Ordering::Relaxed) {
                let round = Instant::now();
                let t = start.elapsed().as_secs_f64();
                for (k, &i) in hosts.iter().enumerate() {
                    match crate::weft::query_socket(&sockets[k], "peers") {
                        Ok(json) => {
                            let names: Vec<String> = json["members"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                                .collect();
                            let missing: Vec<String> = hosts
                                .iter()
                                .filter(|&&j| j != i)
                                .map(|j| format!("h{j}"))
                                .filter(|n| !names.contains(n))
                                .collect();
                            if !missing.is_empty() {
                                report.false_deaths.push((t, i, missing));
                            }
                        }
                        Err(e) => report.errors.push((t, i, format!("{e:#}"))),
                    }
                    if let Ok(kib) = vm_rss_kib(pids[k]) {
                        report.rss[k].samples.push((t, kib));
                    }
                }
                report.rounds += 1;
                thread::sleep(Duration::from_millis(250).saturating_sub(round.elapsed()));
            }
            report
        });
        Watcher { stop, handle: Some(handle) }
    }

    /// Stops the thread and returns what it saw.
    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("finished once").join().expect("the watcher thread panicked")
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A way of making endpoints appear on the overlay while the one they replace goes: [`MacChurn`] (a container
/// takes a new MAC and sends; the old MAC goes silent and is withdrawn after weft's 300 s endpoint timeout) or
/// [`AttachChurn`] (`weft attach` of a new namespace, then `weft detach` of the old one). The scenarios that take a
/// `&mut dyn Churn` work with either.
pub trait Churn {
    /// Makes a new endpoint appear on host `i` in slot `c`, replacing the slot's previous one (if any); returns its
    /// MAC and the moment just before it was created.
    fn appear(&mut self, cluster: &Cluster, i: usize, c: usize) -> Result<(String, Instant)>;
    /// A name for reports.
    fn name(&self) -> &'static str;
    /// How long after its replacement a previous endpoint may still be in some host's table.
    fn withdrawn_within(&self) -> Duration {
        ENDPOINT_TIMEOUT + STALE_SLACK
    }
    /// The `[[network]]` lines the churn needs.
    fn network_config(&self) -> Vec<String> {
        Vec::new()
    }
}

/// [`Churn`] by changing a container's MAC: each appearance is a new, never-seen MAC
/// (`02:19:ee:<host>:<n / 256>:<n % 256>`), announced by a ping to a container of the next host.
#[derive(Debug, Default)]
pub struct MacChurn {
    next: u32,
}

impl Churn for MacChurn {
    fn appear(&mut self, cluster: &Cluster, i: usize, c: usize) -> Result<(String, Instant)> {
        self.next += 1;
        let n = self.next;
        let mac = format!("02:19:ee:{i:02x}:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff);
        let container = cluster.container(i, c);
        exec_stdout(&container.ns, &["ip", "link", "set", "dev", "eth0", "address", &mac])?;
        let hosts = cluster.lab.options().hosts;
        let target = cluster.container(i % hosts + 1, 1).ipv4.to_string();
        let sent = Instant::now();
        // The answer does not matter (the others' neighbour caches still have the old MAC): the frames do.
        crate::exec(&container.ns, &["ping", "-c", "1", "-W", "0.2", "-q", &target])?;
        Ok((mac, sent))
    }

    fn name(&self) -> &'static str {
        "a container takes a new MAC and sends"
    }
}

/// The IPAM block size [`AttachChurn`] configures: /27, 32 addresses per block, 8 blocks in the lab's /24, so 5
/// hosts each get one (the default /26 leaves 4).
pub const ATTACH_BLOCK_PREFIX: u8 = 27;
/// How long [`AttachChurn`] gives a detached endpoint to leave every table (the detach withdraws it at once).
pub const DETACH_WITHDRAWN_WITHIN: Duration = Duration::from_secs(10);

/// [`Churn`] by `weft attach` and `weft detach` on the hosts' API sockets, make-before-break: each appearance
/// attaches a fresh namespace (`<lab>-a<n>`) to the network, then detaches the slot's previous namespace and deletes
/// it. weft derives an endpoint's MAC from its address, so to keep MACs from being reused within seconds (which
/// would let a stale entry pass for a new one) the addresses are asked for explicitly, walking the host's IPAM block
/// round robin (the first attach of a host takes what IPAM gives and shows which block the host claimed).
#[derive(Debug, Default)]
pub struct AttachChurn {
    next: u32,
    /// The namespace and address attached in each (host, slot).
    slots: std::collections::HashMap<(usize, usize), (String, std::net::Ipv4Addr)>,
    /// Per host: the first address of its block and the next offset to try.
    blocks: std::collections::HashMap<usize, (u32, u32)>,
}

impl AttachChurn {
    /// The next address of host `i`'s block that no slot or lab container holds and that is not the gateway or
    /// the subnet's ends.
    fn next_address(&mut self, cluster: &Cluster, i: usize) -> Option<std::net::Ipv4Addr> {
        let size = 1u32 << (32 - ATTACH_BLOCK_PREFIX);
        let options = cluster.lab.options();
        let mut held: Vec<std::net::Ipv4Addr> = self.slots.values().map(|(_, ip)| *ip).collect();
        for h in 1..=options.hosts {
            held.extend((1..=options.containers).map(|c| cluster.container(h, c).ipv4));
        }
        let (start, offset) = self.blocks.get_mut(&i)?;
        for _ in 0..size {
            let candidate = std::net::Ipv4Addr::from(*start + *offset);
            *offset = (*offset + 1) % size;
            let last = candidate.octets()[3];
            if last > 1 && last < 255 && !held.contains(&candidate) {
                return Some(candidate);
            }
        }
        None
    }
}

impl Churn for AttachChurn {
    fn appear(&mut self, cluster: &Cluster, i: usize, c: usize) -> Result<(String, Instant)> {
        self.next += 1;
        let netns = format!("{}-a{}", cluster.lab.name(), self.next);
        add_netns(&netns)?;
        let socket = cluster.lab.api_socket(i);
        let mut params = serde_json::json!({ "netns": netns, "network": NET });
        if let Some(ip) = self.next_address(cluster, i) {
            params["ip"] = ip.to_string().into();
        }
        let sent = Instant::now();
        let attached =
            api_request(&socket, "attach", params.clone()).with_context(|| format!("attach on host {i}: {params}"))?;
        let mac = attached["mac"].as_str().with_context(|| format!("attachment without mac: {attached}"))?.to_owned();
        let ip: std::net::Ipv4Addr = crate::services::attached_ip(&attached)?;
        self.blocks.entry(i).or_insert_with(|| {
            let mask = u32::MAX << (32 - ATTACH_BLOCK_PREFIX);
            (u32::from(ip) & mask, (u32::from(ip) & !mask) + 1)
        });
        if let Some((old, _)) = self.slots.insert((i, c), (netns, ip)) {
            api_request(&socket, "detach", serde_json::json!({ "netns": old, "network": NET }))
                .with_context(|| format!("detach {old} on host {i}"))?;
            let out = std::process::Command::new("ip").args(["netns", "del", &old]).output()?;
            ensure!(out.status.success(), "ip netns del {old}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok((mac, sent))
    }

    fn name(&self) -> &'static str {
        "weft attach of a new namespace, then weft detach of the one it replaces"
    }

    fn withdrawn_within(&self) -> Duration {
        DETACH_WITHDRAWN_WITHIN
    }

    fn network_config(&self) -> Vec<String> {
        vec![format!("block_prefix = {ATTACH_BLOCK_PREFIX}")]
    }
}

/// Waits until every host's fdb has `mac` behind host `owner`'s VTEP (from gossip, or the owner's own learning);
/// returns, per host, the time since `since` at which it was first seen. Hosts are polled in parallel.
pub fn time_until_everywhere(
    cluster: &Cluster,
    mac: &str,
    owner: usize,
    since: Instant,
    deadline: Duration,
) -> Result<Vec<Duration>> {
    let vtep = cluster.lab.host(owner).underlay.to_string();
    let others: Vec<usize> = cluster.hosts().into_iter().filter(|&i| i != owner).collect();
    let times = Mutex::new(Vec::new());
    thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = others
            .iter()
            .map(|&i| {
                let (vtep, times) = (&vtep, &times);
                scope.spawn(move || -> Result<()> {
                    wait_until(deadline, &format!("host {i} to have {mac} behind {vtep}"), || {
                        Ok(fdb(&cluster.lab, i)?.iter().any(|row| row.mac == mac && row.vtep == *vtep))
                    })?;
                    times.lock().expect("not poisoned").push(since.elapsed());
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a poll thread panicked")?;
        }
        Ok(())
    })?;
    Ok(times.into_inner().expect("not poisoned"))
}

/// The `q` quantile (0.0 to 1.0, nearest rank) of `values`.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// weft withdraws a local endpoint silent this long (README, "Endpoint discovery").
pub const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long past [`ENDPOINT_TIMEOUT`] a withdrawal may take (the sweep, the gossip) before an entry counts as stale.
pub const STALE_SLACK: Duration = Duration::from_secs(60);

/// What [`churn_under_loss`] is asked to do.
#[derive(Clone, Debug)]
pub struct ChurnOptions {
    /// Hosts.
    pub hosts: usize,
    /// Containers per host.
    pub containers: usize,
    /// Random loss on every host's underlay input, percent.
    pub loss_pct: u32,
    /// How long the loss and the churn last.
    pub duration: Duration,
    /// One new endpoint this often.
    pub change_every: Duration,
    /// Extra `[control]` lines (`rekey_secs = 30`...).
    pub control: Vec<String>,
}

/// What [`churn_under_loss`] measured.
#[derive(Debug)]
pub struct ChurnReport {
    /// Per new endpoint, the time until the last host had it.
    pub convergence: Vec<Duration>,
    /// What the watcher saw.
    pub watch: WatchReport,
    /// Endpoints that should be in every other host's table at the end and are missing somewhere: (mac, host).
    pub lost: Vec<(String, usize)>,
    /// Endpoints silent for longer than weft's endpoint timeout plus a minute that some host still has: (mac, host).
    pub stale: Vec<(String, usize)>,
    /// How many endpoints were old enough for the stale check.
    pub stale_checked: usize,
    /// Packets the loss rules dropped, summed over the hosts.
    pub dropped: u64,
    /// Rekeys host 1 did during the run.
    pub rekeys: u64,
}

/// The loss/churn scenario shared by the 2-minute CI test and the soak: a cluster under `loss_pct` random underlay
/// loss for `duration`, one new endpoint every `change_every` (round robin over hosts and containers), each one's
/// convergence timed, membership and RSS sampled throughout; at the end every endpoint still live (each
/// container's current MAC) must be in every host's fdb.
pub fn churn_under_loss(name: &str, options: &ChurnOptions, churn: &mut dyn Churn) -> Result<ChurnReport> {
    let cluster = Cluster::up_with(name, options.hosts, options.containers, &options.control, &churn.network_config())?;
    // Every container sends once, so every host starts with every endpoint.
    let mut live: Vec<(usize, usize, String)> = Vec::new();
    for i in cluster.hosts() {
        for c in 1..=options.containers {
            let (mac, sent) = churn.appear(&cluster, i, c)?;
            time_until_everywhere(&cluster, &mac, i, sent, Duration::from_secs(10))?;
            live.push((i, c, mac));
        }
    }
    let rekeys_before = crate::encrypted::keying(&cluster.lab, 1)?.rekeys;
    let watcher = Watcher::start(&cluster);
    for i in cluster.hosts() {
        Fault::Loss(options.loss_pct).apply(&cluster.lab.host(i).ns)?;
    }
    eprintln!(
        "{name}: {}% loss on every host's underlay for {:?}; churn: {}",
        options.loss_pct,
        options.duration,
        churn.name()
    );
    let start = Instant::now();
    let mut convergence = Vec::new();
    // Endpoints replaced (MAC and owner), and when.
    let mut retired: Vec<(String, usize, Instant)> = Vec::new();
    let mut k = 0usize;
    while start.elapsed() < options.duration {
        let round = Instant::now();
        let slot = k % live.len();
        k += 1;
        let (i, c, _) = live[slot].clone();
        let (mac, sent) = churn.appear(&cluster, i, c)?;
        let times = time_until_everywhere(&cluster, &mac, i, sent, Duration::from_secs(10))
            .with_context(|| format!("new endpoint {mac} of host {i} after {:?} of loss", start.elapsed()))?;
        convergence.push(times.into_iter().max().unwrap_or_default());
        retired.push((std::mem::replace(&mut live[slot].2, mac), i, Instant::now()));
        // Pacing, not waiting for a condition.
        thread::sleep(options.change_every.saturating_sub(round.elapsed()));
    }
    // Still under loss: every live endpoint is everywhere.
    let mut lost = Vec::new();
    for i in cluster.hosts() {
        let table = fdb(&cluster.lab, i)?;
        for (owner, _, mac) in live.iter().filter(|(owner, _, _)| *owner != i) {
            let vtep = cluster.lab.host(*owner).underlay.to_string();
            if !table.iter().any(|row| row.mac == *mac && row.vtep == vtep) {
                lost.push((mac.clone(), i));
            }
        }
    }
    // Endpoints replaced long enough ago (past weft's 300 s timeout for a silent MAC, seconds for a detach) are
    // gone everywhere: none left stale. A MAC live again (an address reused by attach) is not stale.
    let is_live = |mac: &str, owner: usize| live.iter().any(|(o, _, m)| *o == owner && m == mac);
    let old: Vec<(&String, usize)> = retired
        .iter()
        .filter(|(mac, owner, at)| at.elapsed() > churn.withdrawn_within() && !is_live(mac, *owner))
        .map(|(mac, owner, _)| (mac, *owner))
        .collect();
    let mut stale = Vec::new();
    if !old.is_empty() {
        for i in cluster.hosts() {
            let table = fdb(&cluster.lab, i)?;
            for (mac, owner) in &old {
                let vtep = cluster.lab.host(*owner).underlay.to_string();
                // Elsewhere behind the owner's VTEP; on the owner itself, in any form (a local entry).
                if table.iter().any(|row| row.mac == **mac && (i == *owner || row.vtep == vtep)) {
                    stale.push(((*mac).clone(), i));
                }
            }
        }
    }
    let watch = watcher.finish();
    let mut dropped = 0;
    for i in cluster.hosts() {
        let ns = cluster.lab.host(i).ns;
        dropped += Fault::dropped(&ns)?;
        Fault::clear(&ns)?;
    }
    let rekeys = crate::encrypted::keying(&cluster.lab, 1)?.rekeys - rekeys_before;
    // The cluster is whole afterwards, too.
    cluster.wait_converged(CONVERGE_DEADLINE)?;
    cluster.daemons.iter().try_for_each(|d| match d.exit_status()? {
        Some(status) => bail!("a weft exited during the run ({status}):\n{}", d.log()),
        None => Ok(()),
    })?;
    drop(cluster);
    Ok(ChurnReport { convergence, watch, lost, stale, stale_checked: old.len(), dropped, rekeys })
}

/// Prints a [`ChurnReport`] and checks it: no false death, no lost endpoint, convergence p99 within `p99_target`,
/// every RSS flat within `rss_slack_kib` and under `rss_bound_kib`.
pub fn check_churn_report(
    what: &str,
    report: &ChurnReport,
    p99_target: Duration,
    rss_bound_kib: u64,
    rss_slack_kib: u64,
) -> Result<()> {
    let (p50, p99, max) =
        (quantile(&report.convergence, 0.5), quantile(&report.convergence, 0.99), quantile(&report.convergence, 1.0));
    eprintln!(
        "{what}: {} new endpoints, convergence p50 {} ms, p99 {} ms, max {} ms; {} watcher rounds, {} false deaths, \
         {} lost endpoints, {} stale of {} checked, {} packets dropped by the loss rules, {} rekeys on host 1, \
         {} API errors",
        report.convergence.len(),
        p50.as_millis(),
        p99.as_millis(),
        max.as_millis(),
        report.watch.rounds,
        report.watch.false_deaths.len(),
        report.lost.len(),
        report.stale.len(),
        report.stale_checked,
        report.dropped,
        report.rekeys,
        report.watch.errors.len()
    );
    for (k, trace) in report.watch.rss.iter().enumerate() {
        eprintln!("{what}: host {} RSS {}", k + 1, trace.summary());
    }
    ensure!(report.watch.rounds >= 10, "{what}: the watcher made only {} rounds", report.watch.rounds);
    ensure!(report.watch.false_deaths.is_empty(), "{what}: hosts missed live members: {:?}", report.watch.false_deaths);
    ensure!(report.watch.errors.is_empty(), "{what}: API queries failed: {:?}", report.watch.errors);
    ensure!(report.lost.is_empty(), "{what}: live endpoints missing from tables (mac, host): {:?}", report.lost);
    ensure!(report.stale.is_empty(), "{what}: silent endpoints still in tables (mac, host): {:?}", report.stale);
    ensure!(report.dropped > 0, "{what}: the loss rules dropped nothing");
    ensure!(!report.convergence.is_empty(), "{what}: no endpoint changes were made");
    ensure!(
        p99 <= p99_target,
        "{what}: convergence p99 {} ms, over the {} ms target (all: {:?})",
        p99.as_millis(),
        p99_target.as_millis(),
        report.convergence
    );
    for (k, trace) in report.watch.rss.iter().enumerate() {
        trace.check_flat(&format!("{what}: host {}", k + 1), rss_bound_kib, rss_slack_kib)?;
    }
    Ok(())
}
