//! `weft doctor`: checks what most often goes wrong, explains each finding and how to fix it, and fails (non-zero
//! exit) when something is wrong.
//!
//! ```text
//!  config file ─► host checks: /dev/net/tun, CAP_NET_ADMIN, underlay address and MTU, certificates
//!  API socket  ─► daemon checks: peers reachable, clock skew (SWIM acks carry the wall clock), an SA per peer
//! ```
//!
//! Host checks need no daemon; daemon checks are skipped, and say so, when it does not answer.

use std::net::IpAddr;
use std::path::Path;

use serde_json::{json, Value};

use crate::config::Config;
use crate::control::pki;

/// Clock offsets beyond this fail: certificates are checked against the clock, logs across hosts stop lining up,
/// and IPAM's earliest-claim rule trusts each claimant's clock (a host behind wins contested blocks).
pub const MAX_CLOCK_OFFSET_MS: i64 = 1_000;
/// Certificates that expire sooner than this get a warning.
pub const CERT_WARN_DAYS: u64 = 30;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but needs attention soon.
    Warn,
    /// Wrong: weft cannot work (fully) like this.
    Fail,
    /// Could not be checked (no daemon, no control plane...).
    Skip,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short name: `tun`, `capabilities`, `mtu`...
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found and, when wrong, how to fix it.
    pub detail: String,
}

/// Every finding, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &'static str, verdict: Verdict, detail: impl Into<String>) {
        self.checks.push(Check { name, verdict, detail: detail.into() });
    }

    /// Checks that failed.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail).count()
    }

    /// The human-readable report.
    pub fn print(&self) {
        for c in &self.checks {
            println!("{:<5} {:<13} {}", c.verdict.as_str(), c.name, c.detail);
        }
    }

    /// The report for scripts.
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = (self.checks.iter())
            .map(|c| json!({ "check": c.name, "status": c.verdict.as_str().to_lowercase(), "detail": c.detail }))
            .collect();
        json!({ "checks": checks, "failures": self.failures() })
    }
}

/// Runs every check: the host's from `config_path`, the daemon's through its API (`socket`, or the config's).
pub fn run(config_path: &Path, socket: Option<&Path>) -> Report {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            report.add("config", Verdict::Ok, format!("{}: {} networks", config_path.display(), c.networks.len()));
            Some(c)
        }
        Err(e) => {
            report.add("config", Verdict::Fail, e.to_string());
            None
        }
    };
    check_tun(&mut report);
    check_capabilities(&mut report, &std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    if let Some(config) = &config {
        check_underlay(&mut report, config);
        check_certificates(&mut report, config);
    }
    let socket = socket.map(Path::to_path_buf).or_else(|| config.as_ref().map(|c| c.node.api_socket.clone()));
    let peers = socket.as_deref().map(|s| crate::cli::request(s, "peers"));
    match (peers, &config) {
        (Some(Ok(peers)), Some(config)) => {
            report.add("daemon", Verdict::Ok, "the API answers");
            check_peers(&mut report, config, &peers);
        }
        (Some(Ok(_)), None) => report.add("daemon", Verdict::Skip, "the daemon answers, but the config is unusable"),
        (Some(Err(e)), _) => report.add(
            "daemon",
            Verdict::Fail,
            format!("{e:#}; peer, clock and encryption checks need the running daemon"),
        ),
        (None, _) => report.add("daemon", Verdict::Skip, "no API socket known (no usable config and no --socket)"),
    }
    report
}

fn check_tun(report: &mut Report) {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        Ok(_) => report.add("tun", Verdict::Ok, "/dev/net/tun opens read-write"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.add(
            "tun",
            Verdict::Fail,
            "/dev/net/tun is missing: load the tun module (modprobe tun) or, in a container, pass the device in \
             (docker run --device /dev/net/tun)",
        ),
        Err(e) => report.add(
            "tun",
            Verdict::Fail,
            format!(
                "/dev/net/tun does not open read-write ({e}): run weft as root, or allow the device \
                 (systemd: DeviceAllow=/dev/net/tun rw, see packaging/weft.service)"
            ),
        ),
    }
}

/// Bit numbers in the capability sets of /proc/<pid>/status.
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

fn check_capabilities(report: &mut Report, proc_status: &str) {
    let effective = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    let Some(effective) = effective else {
        report.add("capabilities", Verdict::Skip, "no CapEff line in /proc/self/status");
        return;
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !has(CAP_NET_ADMIN) {
        report.add(
            "capabilities",
            Verdict::Fail,
            "this process lacks CAP_NET_ADMIN, which weft run needs for TAPs, bridges and MTUs: run as root or \
             grant it (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW, see packaging/weft.service)",
        );
    } else {
        let raw =
            if has(CAP_NET_RAW) { " and CAP_NET_RAW" } else { " (CAP_NET_RAW absent: not needed by the UDP path)" };
        report.add("capabilities", Verdict::Ok, format!("CAP_NET_ADMIN{raw}"));
    }
}

fn check_underlay(report: &mut Report, config: &Config) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return report.add("underlay", Verdict::Skip, format!("no runtime for netlink: {e}")),
    };
    let link = runtime.block_on(async {
        let netlink = crate::io::netlink::Netlink::connect()?;
        anyhow::Ok(netlink.link_with_address(config.node.underlay).await?)
    });
    let link = match link {
        Ok(Some(link)) => link,
        Ok(None) => {
            let problem = format!(
                "node.underlay {} is not an address of this host: add it to the underlay interface or fix the config",
                config.node.underlay
            );
            report.add("underlay", Verdict::Fail, problem);
            return report.add("mtu", Verdict::Skip, "the underlay interface is unknown");
        }
        Err(e) => return report.add("underlay", Verdict::Skip, format!("netlink: {e:#}")),
    };
    report.add("underlay", Verdict::Ok, format!("{} is on {} (MTU {})", config.node.underlay, link.name, link.mtu));
    check_mtu(report, config, link.mtu);
}

fn check_mtu(report: &mut Report, config: &Config, underlay_mtu: u32) {
    let mut fits = Vec::new();
    for (i, net) in config.networks.iter().enumerate() {
        match net.overlay_mtu(i, config.node.underlay, underlay_mtu) {
            Ok(mtu) if mtu < 1280 => report.add(
                "mtu",
                Verdict::Warn,
                format!(
                    "network {} gets MTU {mtu} (underlay {underlay_mtu} - {} bytes of encapsulation): below IPv6's 1280",
                    net.name,
                    net.overhead(config.node.underlay)
                ),
            ),
            Ok(mtu) => fits.push(format!("{} {mtu}", net.name)),
            Err(e) => report.add("mtu", Verdict::Fail, e.to_string()),
        }
    }
    if !fits.is_empty() {
        report.add("mtu", Verdict::Ok, format!("underlay {underlay_mtu}; overlay {}", fits.join(", ")));
    }
}

fn check_certificates(report: &mut Report, config: &Config) {
    let Some(control) = &config.control else {
        return report.add("certificates", Verdict::Skip, "no [control]: no certificates in use");
    };
    if let Err(e) = pki::NodeIdentity::load(&control.ca, &control.cert, &control.key) {
        return report.add("certificates", Verdict::Fail, e.to_string());
    }
    let now = rustls_pki_types::UnixTime::now().as_secs();
    for (key, path) in [("control.cert", &control.cert), ("control.ca", &control.ca)] {
        match pki::certificate_not_after(path) {
            Ok(at) => {
                let days = at.as_secs().saturating_sub(now) / 86_400;
                let when = pki::utc(at);
                if days < CERT_WARN_DAYS {
                    let fix = if key == "control.ca" { "plan a new CA" } else { "issue a new one (weft ca issue)" };
                    report.add("certificates", Verdict::Warn, format!("{key} expires in {days} days ({when}): {fix}"));
                } else {
                    report.add("certificates", Verdict::Ok, format!("{key} valid for {days} more days ({when})"));
                }
            }
            Err(e) => report.add("certificates", Verdict::Fail, e.to_string()),
        }
    }
}

/// The daemon's view: members reachable, clocks close, an SA with every peer when a network is encrypted.
pub fn check_peers(report: &mut Report, config: &Config, peers: &Value) {
    let members = peers["members"].as_array().cloned().unwrap_or_default();
    let name = |m: &Value| m["name"].as_str().unwrap_or("?").to_owned();
    if peers["control"] != Value::Bool(true) {
        let silent: Vec<String> = (peers["vteps"].as_array().into_iter().flatten())
            .filter(|v| v["tx_packets"].as_u64() > Some(0) && v["rx_packets"].as_u64() == Some(0))
            .map(|v| v["vtep"].as_str().unwrap_or("?").to_owned())
            .collect();
        if silent.is_empty() {
            report.add("peers", Verdict::Ok, "static peers; no VTEP is sent to without answering");
        } else {
            report.add(
                "peers",
                Verdict::Warn,
                format!(
                    "sent to but nothing accepted from {}: check their weft and UDP reachability",
                    silent.join(", ")
                ),
            );
        }
        report.add("clock", Verdict::Skip, "needs the control plane (probes carry the clocks)");
        report.add("encryption", Verdict::Skip, "no control plane: no encrypted networks");
        return;
    }
    let own: Vec<IpAddr> =
        config.control.iter().flat_map(|c| c.listen.map(|l| l.ip())).chain([config.node.underlay]).collect();
    let other_seeds = config.control.as_ref().map_or(0, |c| c.seeds.iter().filter(|s| !own.contains(&s.ip())).count());
    let suspects: Vec<String> = members.iter().filter(|m| m["state"] != "alive").map(name).collect();
    if !suspects.is_empty() {
        report.add(
            "peers",
            Verdict::Fail,
            format!(
                "unreachable (suspected by SWIM): {}: check that host's weft, and UDP to its control port",
                suspects.join(", ")
            ),
        );
    } else if members.is_empty() && other_seeds > 0 {
        report.add(
            "peers",
            Verdict::Fail,
            "no peer joined although control.seeds lists other hosts: check their weft, UDP port 7946 and the CA",
        );
    } else {
        report.add("peers", Verdict::Ok, format!("{} members reachable", members.len()));
    }

    let mut skewed = Vec::new();
    let mut measured = 0;
    for m in &members {
        if let Some(ms) = m["clock_offset_ms"].as_i64() {
            measured += 1;
            if ms.abs() > MAX_CLOCK_OFFSET_MS {
                skewed.push(format!("{} {:+.1} s", name(m), ms as f64 / 1e3));
            }
        }
    }
    if !skewed.is_empty() {
        report.add(
            "clock",
            Verdict::Fail,
            format!(
                "clock offset beyond {} ms: {}: certificate checks and logs depend on the clocks; run NTP \
                 (chrony or systemd-timesyncd) on every host",
                MAX_CLOCK_OFFSET_MS,
                skewed.join(", ")
            ),
        );
    } else if measured == 0 {
        report.add("clock", Verdict::Skip, "no probe answered with a clock yet");
    } else {
        report.add("clock", Verdict::Ok, format!("{measured} peers within {MAX_CLOCK_OFFSET_MS} ms"));
    }

    let encrypted: Vec<&str> = config.networks.iter().filter(|n| n.is_encrypted()).map(|n| n.name.as_str()).collect();
    if encrypted.is_empty() {
        report.add("encryption", Verdict::Ok, "no encrypted networks");
        return;
    }
    let without: Vec<String> = members.iter().filter(|m| m["sa"].is_null()).map(name).collect();
    if without.is_empty() {
        report.add(
            "encryption",
            Verdict::Ok,
            format!("{}: an SA with each of {} peers", encrypted.join(", "), members.len()),
        );
    } else {
        report.add(
            "encryption",
            Verdict::Fail,
            format!(
                "encrypted networks {} have no SA with {}: their traffic is dropped (no_sa); see keying counters in \
                 `weft peers --json` and the daemon's log",
                encrypted.join(", "),
                without.join(", ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(encrypted: bool) -> Config {
        let control = "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\nseeds = [\"198.18.0.2:7946\"]\n";
        let text = format!(
            "{control}[node]\nname = \"h1\"\nunderlay = \"198.18.0.1\"\n[[network]]\nname = \"blue\"\nvni = 1\n\
             subnet = \"198.19.1.0/24\"\nencrypted = {encrypted}\n"
        );
        Config::parse(&text).unwrap()
    }

    fn verdict(report: &Report, name: &str) -> Verdict {
        report.checks.iter().find(|c| c.name == name).map(|c| c.verdict).unwrap_or(Verdict::Skip)
    }

    #[test]
    fn capabilities_come_from_the_effective_set() {
        let mut report = Report::default();
        check_capabilities(&mut report, "Name:\tweft\nCapEff:\t0000000000003000\n");
        check_capabilities(&mut report, "CapEff:\t0000000000002000\n");
        assert_eq!(report.checks[0].verdict, Verdict::Ok);
        assert_eq!(report.checks[1].verdict, Verdict::Fail);
        assert!(report.checks[1].detail.contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn an_underlay_too_small_for_the_overlay_mtu_fails_naming_the_key() {
        let mut c = config(true);
        c.networks[0].mtu = Some(1400);
        let mut report = Report::default();
        check_mtu(&mut report, &c, 1450);
        assert_eq!(report.failures(), 1);
        assert!(report.checks[0].detail.contains("network[0].mtu"), "{}", report.checks[0].detail);
        let mut report = Report::default();
        check_mtu(&mut report, &config(true), 1500);
        assert_eq!((report.failures(), report.checks[0].detail.as_str()), (0, "underlay 1500; overlay blue 1405"));
    }

    #[test]
    fn peers_clock_and_encryption_findings() {
        let peer = |state: &str, offset: i64, sa: bool| {
            json!({ "name": "h2", "state": state, "clock_offset_ms": offset,
                    "sa": if sa { json!({ "epoch": 1 }) } else { Value::Null } })
        };
        let mut report = Report::default();
        check_peers(&mut report, &config(true), &json!({ "control": true, "members": [peer("alive", 20, true)] }));
        assert_eq!(report.failures(), 0, "{report:?}");

        let mut report = Report::default();
        let peers = json!({ "control": true, "members": [peer("suspect", -4_000, false)] });
        check_peers(&mut report, &config(true), &peers);
        for name in ["peers", "clock", "encryption"] {
            assert_eq!(verdict(&report, name), Verdict::Fail, "{name}: {report:?}");
        }
        let clock = &report.checks.iter().find(|c| c.name == "clock").unwrap().detail;
        assert!(clock.contains("h2 -4.0 s"), "{clock}");

        let mut report = Report::default();
        check_peers(&mut report, &config(false), &json!({ "control": true, "members": [] }));
        assert_eq!(verdict(&report, "peers"), Verdict::Fail, "seeds list another host, yet nobody joined");
        assert_eq!(verdict(&report, "encryption"), Verdict::Ok);
    }
}
