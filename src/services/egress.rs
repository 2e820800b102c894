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
//! network has egress (and turns back off on exit if it was off).

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

/// The egress rules while weft runs.
#[derive(Debug)]
pub struct Egress {
    /// The ip_forward value to restore on exit, if weft changed it.
    restore_forward: Option<String>,
}

impl Egress {
    /// Installs the table (replacing a leftover one) and turns IPv4 forwarding on when a network has egress.
    pub fn install(networks: &[NetworkInfo]) -> anyhow::Result<Self> {
        nft(&ruleset(networks)).context("installing the egress table inet weft")?;
        let mut restore_forward = None;
        if networks.iter().any(|n| !n.internal) {
            let before = std::fs::read_to_string(IP_FORWARD).context("reading net.ipv4.ip_forward")?;
            if before.trim() != "1" {
                std::fs::write(IP_FORWARD, "1").context("turning on net.ipv4.ip_forward for egress")?;
                info!("turned on net.ipv4.ip_forward for egress");
                restore_forward = Some(before.trim().to_string());
            }
        }
        let egress = networks.iter().filter(|n| !n.internal).count();
        info!(table = "inet weft", egress, internal = networks.len() - egress, "egress rules installed");
        Ok(Self { restore_forward })
    }

    /// Deletes the table and restores ip_forward.
    pub fn remove(self) {
        let delete = json!({ "nftables": [ { "delete": { "table": table() } } ] });
        match nft(&delete) {
            Ok(()) => info!("removed table inet weft"),
            Err(e) => warn!(error = %e, "could not remove table inet weft"),
        }
        if let Some(value) = self.restore_forward {
            if let Err(e) = std::fs::write(IP_FORWARD, value) {
                warn!(error = %e, "could not restore net.ipv4.ip_forward");
            }
        }
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
}
