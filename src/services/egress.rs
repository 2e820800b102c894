//! Egress for overlay endpoints (Docker's gwbridge): packets from a network's subnet to anywhere outside it leave
//! through the host, masqueraded to the host's address; `internal` networks get no egress at all.
//!
//! The rules live in a table of weft's own, `inet weft`, loaded through nft's JSON interface (`nft -j -f -`) in one
//! atomic transaction that also replaces a table left behind by a weft that crashed. The table is deleted on exit.
//!
//! ```text
//! table inet weft {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 198.19.0.0/24 ip daddr != 198.19.0.0/24 masquerade          # per network with egress
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     iifname "br-blue" oifname "br-red" drop                                # per pair of networks: isolation
//!     iifname "br-int" oifname != "br-int" drop                              # per internal network
//!     oifname "br-int" iifname != "br-int" drop
//!   }
//! }
//! ```
//!
//! Routing between the bridge and the underlay needs IPv4 forwarding, which weft turns on while it runs when a
//! network has egress (and turns back off on exit if it was off). Setup is all or nothing: if forwarding cannot be
//! turned on, the table just loaded is deleted before the error is returned.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::NetworkInfo;

/// The table's name (family `inet`).
pub const TABLE: &str = "weft";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn table() -> Value {
    json!({ "family": "inet", "name": TABLE })
}

fn prefix(net: &IpNet) -> Value {
    json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } })
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({ "match": { "op": op, "left": left, "right": right } })
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({ "add": { "rule": { "family": "inet", "table": TABLE, "chain": chain, "expr": expr } } })
}

/// The whole nft JSON transaction for `networks`.
pub fn ruleset(networks: &[NetworkInfo]) -> Value {
    let mut commands = vec![
        // add + delete + add: replaces a leftover table in the same transaction, and never fails for a missing one.
        json!({ "add": { "table": table() } }),
        json!({ "delete": { "table": table() } }),
        json!({ "add": { "table": table() } }),
        json!({ "add": { "chain": {
            "family": "inet", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept",
        } } }),
        json!({ "add": { "chain": {
            "family": "inet", "table": TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept",
        } } }),
    ];
    let iif = json!({ "meta": { "key": "iifname" } });
    let oif = json!({ "meta": { "key": "oifname" } });
    // Networks are isolated from each other, as Docker's are: the host routes between two gateways, so without
    // this an endpoint could reach another network's endpoints through its default route.
    for a in networks {
        for b in networks.iter().filter(|b| b.bridge != a.bridge) {
            commands.push(rule(
                "forward",
                vec![
                    matches("==", iif.clone(), json!(a.bridge)),
                    matches("==", oif.clone(), json!(b.bridge)),
                    json!({ "drop": null }),
                ],
            ));
        }
    }
    for net in networks {
        if net.internal {
            for (a, b) in [(&iif, &oif), (&oif, &iif)] {
                commands.push(rule(
                    "forward",
                    vec![
                        matches("==", a.clone(), json!(net.bridge)),
                        matches("!=", b.clone(), json!(net.bridge)),
                        json!({ "drop": null }),
                    ],
                ));
            }
            continue;
        }
        let family = if net.subnet.addr().is_ipv4() { "ip" } else { "ip6" };
        let saddr = json!({ "payload": { "protocol": family, "field": "saddr" } });
        let daddr = json!({ "payload": { "protocol": family, "field": "daddr" } });
        commands.push(rule(
            "postrouting",
            vec![
                matches("==", saddr, prefix(&net.subnet)),
                matches("!=", daddr, prefix(&net.subnet)),
                json!({ "masquerade": null }),
            ],
        ));
    }
    json!({ "nftables": commands })
}

fn nft(input: &Value) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install the nftables package)")?;
    child.stdin.take().context("nft stdin")?.write_all(input.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft refused the ruleset: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// What egress setup changes on the host: the nft ruleset and `net.ipv4.ip_forward`. A trait so the tests can make
/// any step fail; the daemon uses [`System`].
pub trait EgressHost {
    /// Loads an nft JSON transaction.
    fn nft(&mut self, input: &Value) -> anyhow::Result<()>;
    /// Reads `net.ipv4.ip_forward`.
    fn read_forward(&mut self) -> std::io::Result<String>;
    /// Writes `net.ipv4.ip_forward`.
    fn write_forward(&mut self, value: &str) -> std::io::Result<()>;
}

/// The real host: `nft` and /proc.
#[derive(Debug, Default)]
pub struct System;

impl EgressHost for System {
    fn nft(&mut self, input: &Value) -> anyhow::Result<()> {
        nft(input)
    }

    fn read_forward(&mut self) -> std::io::Result<String> {
        std::fs::read_to_string(IP_FORWARD)
    }

    fn write_forward(&mut self, value: &str) -> std::io::Result<()> {
        std::fs::write(IP_FORWARD, value)
    }
}

/// The egress rules while weft runs.
#[derive(Debug)]
pub struct Egress {
    /// The ip_forward value to restore on exit, if weft changed it.
    restore_forward: Option<String>,
}

impl Egress {
    /// Installs the table (replacing a leftover one) and turns IPv4 forwarding on when a network has egress.
    pub fn install(networks: &[NetworkInfo]) -> anyhow::Result<Self> {
        Self::install_on(&mut System, networks)
    }

    /// [`Egress::install`] on `host`. All or nothing: when turning forwarding on fails, the table just loaded is
    /// deleted again before the error is returned, since the caller holds no `Egress` to remove it with.
    pub fn install_on(host: &mut impl EgressHost, networks: &[NetworkInfo]) -> anyhow::Result<Self> {
        host.nft(&ruleset(networks)).context("installing the egress table inet weft")?;
        let restore_forward = match enable_forwarding(host, networks) {
            Ok(restore) => restore,
            Err(e) => {
                delete_table(host);
                return Err(e);
            }
        };
        let egress = networks.iter().filter(|n| !n.internal).count();
        info!(table = "inet weft", egress, internal = networks.len() - egress, "egress rules installed");
        Ok(Self { restore_forward })
    }

    /// Deletes the table and restores ip_forward.
    pub fn remove(self) {
        self.remove_on(&mut System)
    }

    /// [`Egress::remove`] on `host`.
    pub fn remove_on(self, host: &mut impl EgressHost) {
        delete_table(host);
        if let Some(value) = self.restore_forward {
            if let Err(e) = host.write_forward(&value) {
                warn!(error = %e, "could not restore net.ipv4.ip_forward");
            }
        }
    }
}

/// Turns IPv4 forwarding on when a network has egress; returns the value to restore on exit if it was off.
fn enable_forwarding(host: &mut impl EgressHost, networks: &[NetworkInfo]) -> anyhow::Result<Option<String>> {
    if networks.iter().all(|n| n.internal) {
        return Ok(None);
    }
    let before = host.read_forward().context("reading net.ipv4.ip_forward")?;
    if before.trim() == "1" {
        return Ok(None);
    }
    host.write_forward("1").context("turning on net.ipv4.ip_forward for egress")?;
    info!("turned on net.ipv4.ip_forward for egress");
    Ok(Some(before.trim().to_string()))
}

fn delete_table(host: &mut impl EgressHost) {
    let delete = json!({ "nftables": [ { "delete": { "table": table() } } ] });
    match host.nft(&delete) {
        Ok(()) => info!("removed table inet weft"),
        Err(e) => warn!(error = %e, "could not remove table inet weft"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str, internal: bool) -> NetworkInfo {
        NetworkInfo {
            name: name.into(),
            vni: overlay_proto::Vni::new(100).unwrap(),
            subnet: subnet.parse().unwrap(),
            bridge: format!("br-{name}"),
            mtu: 1450,
            gateway: "198.19.0.1".parse().unwrap(),
            internal,
            domain: "weft".into(),
        }
    }

    #[test]
    fn ruleset_masquerades_egress_networks_and_drops_internal_ones() {
        let rules = ruleset(&[net("blue", "198.19.0.0/24", false), net("int", "198.19.1.0/24", true)]);
        let commands = rules["nftables"].as_array().unwrap();
        assert_eq!(commands[0], json!({ "add": { "table": { "family": "inet", "name": "weft" } } }));
        assert_eq!(commands[1], json!({ "delete": { "table": { "family": "inet", "name": "weft" } } }));
        let text = rules.to_string();
        assert!(text.contains(r#"{"masquerade":null}"#), "{text}");
        assert!(text.contains(r#""prefix":{"addr":"198.19.0.0","len":24}"#), "{text}");
        assert!(!text.contains(r#""addr":"198.19.1.0""#), "internal networks get no NAT: {text}");
        let drops = commands.iter().filter(|c| c.to_string().contains(r#""drop":null"#)).count();
        assert_eq!(drops, 2 + 2, "blue ↔ int both ways, and int ↔ anything else both ways");
        assert!(text.contains(r#"{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"br-blue"}},{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"br-int"}}"#), "{text}");
        assert!(text.contains(r#""right":"br-int""#));
    }

    /// A host whose steps can be made to fail; records the tables it holds and ip_forward.
    #[derive(Default)]
    struct FakeHost {
        table_loaded: bool,
        forward: String,
        fail_read: bool,
        fail_write: bool,
    }

    impl EgressHost for FakeHost {
        fn nft(&mut self, input: &Value) -> anyhow::Result<()> {
            // The ruleset (add, delete, add, ...) loads the table; a lone `delete` removes it.
            let commands = input["nftables"].as_array().unwrap();
            self.table_loaded = !(commands.len() == 1 && commands[0].get("delete").is_some());
            Ok(())
        }

        fn read_forward(&mut self) -> std::io::Result<String> {
            if self.fail_read {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            Ok(self.forward.clone())
        }

        fn write_forward(&mut self, value: &str) -> std::io::Result<()> {
            if self.fail_write {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            self.forward = value.into();
            Ok(())
        }
    }

    #[test]
    fn a_failed_ip_forward_step_removes_the_table_it_loaded() {
        let networks = [net("blue", "198.19.0.0/24", false)];
        for (fail_read, fail_write) in [(true, false), (false, true)] {
            let mut host = FakeHost { forward: "0\n".into(), fail_read, fail_write, ..FakeHost::default() };
            let err = Egress::install_on(&mut host, &networks).unwrap_err();
            assert!(format!("{err:#}").contains("ip_forward"), "{err:#}");
            assert!(!host.table_loaded, "the table stayed installed after {err:#}");
            assert_eq!(host.forward, "0\n", "ip_forward untouched");
        }
    }

    #[test]
    fn install_then_remove_restores_the_host() {
        let mut host = FakeHost { forward: "0\n".into(), ..FakeHost::default() };
        let egress = Egress::install_on(&mut host, &[net("blue", "198.19.0.0/24", false)]).unwrap();
        assert!(host.table_loaded);
        assert_eq!(host.forward, "1");
        egress.remove_on(&mut host);
        assert!(!host.table_loaded);
        assert_eq!(host.forward, "0");
        // Internal networks only: no forwarding change, and nothing to restore.
        let mut host = FakeHost { forward: "0".into(), fail_read: true, ..FakeHost::default() };
        let egress = Egress::install_on(&mut host, &[net("int", "198.19.1.0/24", true)]).unwrap();
        egress.remove_on(&mut host);
        assert_eq!(host.forward, "0");
    }
}
