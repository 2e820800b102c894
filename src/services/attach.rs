//! `weft attach` and `weft detach`: an endpoint in a network namespace, on an overlay network.
//!
//! Attach, in order (any failure undoes the steps before it; a host interface of the attachment's name that no
//! attachment holds, left by a weft that was killed, is removed first):
//! 1. an address from this host's IPAM blocks (the control plane claims a block first if need be);
//! 2. a veth pair: `wv<hash>` on the host, a port of the network's bridge with the overlay MTU; the other end moves
//!    into the namespace, gets the MAC `02:57:<IPv4 address>`, the name `ethN` (first free) and the address;
//! 3. `lo` up, and a default route via the gateway unless the namespace already has one (a second network);
//! 4. `/etc/netns/<name>/resolv.conf` pointing at the gateway's DNS, when the namespace is named and has none
//!    (`ip netns exec` shows it as the namespace's /etc/resolv.conf);
//! 5. the endpoint record (`ep/`), with the name and the label `service=S`, gossiped to every host.
//!
//! Detach deletes the host's veth end (the kernel removes the pair, and with it the address and routes in the
//! namespace), the resolv.conf weft wrote (handing it to another network the namespace is still attached to, with
//! that network's gateway), withdraws the record and frees the address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use overlay_proto::endpoint::EndpointRecord;
use overlay_proto::names::{Names, SERVICE_LABEL};
use overlay_proto::MacAddr;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{info, warn};

use super::NetworkInfo;
use crate::control::agent::AgentCommand;
use crate::io::netlink::Netlink;

/// What `attach` is asked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// A namespace name (`/run/netns/NAME`) or the path of a namespace file (`/proc/PID/ns/net`).
    pub netns: String,
    /// The network's name.
    pub network: String,
    /// The endpoint's DNS name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its service: published as the label `service=S`, resolvable as `S` and `tasks.S`.
    #[serde(default)]
    pub service: Option<String>,
    /// `auto` (or absent) for any free address, or a specific IPv4 address.
    #[serde(default)]
    pub ip: Option<String>,
    /// The interface name inside the namespace; the first free `ethN` by default.
    #[serde(default)]
    pub interface: Option<String>,
    /// A caller's key for the attachment (a CNI plugin's container ID), unique per network on this host; detach
    /// and check then find the attachment by it.
    #[serde(default)]
    pub container_id: Option<String>,
}

/// What `detach` and `check` are asked: the attachment, by namespace or by container ID.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    /// As given to attach.
    #[serde(default)]
    pub netns: Option<String>,
    /// As given to attach; takes precedence over `netns`.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The network's name.
    pub network: String,
    /// Detach only: an attachment that does not exist is not an error (the answer is `{"detached": null}`), so
    /// a caller can retry a detach (CNI DEL is idempotent).
    #[serde(default)]
    pub missing_ok: bool,
}

impl DetachRequest {
    /// Whether `a` is the attachment asked for.
    fn matches(&self, a: &Attachment) -> bool {
        a.network == self.network
            && match (&self.container_id, &self.netns) {
                (Some(id), _) => a.container_id.as_ref() == Some(id),
                (None, Some(netns)) => &a.netns == netns,
                (None, None) => false,
            }
    }

    /// The attachment asked for, for an error message.
    fn describe(&self) -> String {
        match (&self.container_id, &self.netns) {
            (Some(id), _) => format!("container {id:?}"),
            (None, Some(netns)) => netns.clone(),
            (None, None) => "(nothing)".into(),
        }
    }
}

/// An attached endpoint: the answer of `attach`, and an element of `attachments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name.
    pub network: String,
    /// Its VNI.
    pub vni: u32,
    /// The namespace, as given.
    pub netns: String,
    /// The interface inside the namespace.
    pub interface: String,
    /// The host's end of the veth pair (a port of the bridge).
    pub host_interface: String,
    /// The interface's MAC.
    pub mac: String,
    /// The address with its prefix length, e.g. `198.19.0.2/24`.
    pub address: String,
    /// The address alone.
    pub ip: IpAddr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The gateway (this host's bridge).
    pub gateway: IpAddr,
    /// Whether attach set the namespace's default route via the gateway.
    pub default_route: bool,
    /// The DNS server for the endpoint (the gateway).
    pub dns: Vec<IpAddr>,
    /// The DNS search domain.
    pub domain: String,
    /// The interface MTU.
    pub mtu: u32,
    /// The endpoint's name, if any.
    pub name: Option<String>,
    /// Its service, if any.
    pub service: Option<String>,
    /// The resolv.conf weft wrote for the namespace, removed on detach.
    pub resolv_conf: Option<PathBuf>,
    /// The caller's key (a CNI container ID), if it gave one.
    #[serde(default)]
    pub container_id: Option<String>,
}

/// The attach/detach service, shared by API connections.
#[derive(Debug)]
pub struct Attacher {
    netlink: Netlink,
    networks: Vec<NetworkInfo>,
    agent: Option<mpsc::Sender<AgentCommand>>,
    names: Option<Arc<RwLock<Names>>>,
    /// (netns, network) → attachment. The lock also serialises attaches, so interface names never race.
    attached: Mutex<BTreeMap<(String, String), Attachment>>,
    /// Where `ip netns` keeps per-namespace files (`/etc/netns`).
    etc_netns: PathBuf,
}

/// An interface name: 1 to 15 bytes, not `.` or `..`, no '/', ':' or whitespace.
pub(crate) fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
        && name != "."
        && name != ".."
}

/// A DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'.
pub(crate) fn valid_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An endpoint's name: DNS labels joined by dots, at most 253 characters, whose first label is not `tasks` (that
/// prefix is DNS's `tasks.S`). Usually one label; weft-cni names Kubernetes pods `<pod>.<namespace>`.
pub(crate) fn valid_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(valid_label)
        && !name.split('.').next().is_some_and(|first| first.eq_ignore_ascii_case("tasks"))
}

/// Whether an endpoint of network `vni` already has `name`. DNS names are case-insensitive, so is this.
fn name_taken(names: &Names, vni: overlay_proto::Vni, name: &str) -> bool {
    names.endpoints().any(|e| e.record.vni == vni && e.record.name.eq_ignore_ascii_case(name))
}

/// The MAC of an attached endpoint: locally administered, unicast, and unique with its address.
fn endpoint_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x02, 0x57, o[0], o[1], o[2], o[3]])
}

/// The host's end of the veth pair of the attachment of `netns` to `network`: `wv` and 8 hex digits of a hash of
/// both. Two attachments can collide (32 bits); attach then refuses the second rather than touch the first.
pub fn host_interface_name(netns: &str, network: &str) -> String {
    format!("wv{:08x}", short_hash(netns, network))
}

/// FNV-1a of the attachment's key, for its host interface name.
fn short_hash(netns: &str, network: &str) -> u32 {
    let mut h = 0x811c_9dc5u32;
    for b in netns.bytes().chain([0]).chain(network.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// Turns IPv6 off on the host's end of a veth pair before it comes up. A bridge port needs no address, and with
/// IPv6 on it sends DAD, MLD and router solicitations from its own (random) MAC into the bridge, which the forwarder
/// would discover as an endpoint and gossip: every attach would leave a nameless record behind for 300 s.
fn disable_ipv6(interface: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys/net/ipv6/conf").join(interface).join("disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has no such file, and nothing to turn off.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !Path::new("/proc/sys/net/ipv6").exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("turning IPv6 off on {interface} ({})", path.display())),
    }
}

impl Attacher {
    /// The service for `networks`; `agent` and `names` are absent without a control plane (attach then fails).
    pub fn new(
        netlink: Netlink,
        networks: Vec<NetworkInfo>,
        agent: Option<mpsc::Sender<AgentCommand>>,
        names: Option<Arc<RwLock<Names>>>,
    ) -> Self {
        Self { netlink, networks, agent, names, attached: Mutex::new(BTreeMap::new()), etc_netns: "/etc/netns".into() }
    }

    fn network(&self, name: &str) -> anyhow::Result<&NetworkInfo> {
        self.networks.iter().find(|n| n.name == name).with_context(|| {
            let known: Vec<&str> = self.networks.iter().map(|n| n.name.as_str()).collect();
            format!("no network {name:?} on this host (known: {})", known.join(", "))
        })
    }

    fn netns_path(netns: &str) -> anyhow::Result<PathBuf> {
        if netns.contains('/') {
            return Ok(PathBuf::from(netns));
        }
        if netns.is_empty() || netns == "." || netns == ".." || netns.len() > 255 {
            bail!("netns {netns:?} is not a namespace name");
        }
        Ok(Path::new("/run/netns").join(netns))
    }

    /// Every attachment of this host.
    pub async fn list(&self) -> Vec<Attachment> {
        self.attached.lock().await.values().cloned().collect()
    }

    /// Attaches an endpoint; see the module doc.
    pub async fn attach(&self, request: AttachRequest) -> anyhow::Result<Attachment> {
        let net = self.network(&request.network)?.clone();
        let agent = self.agent.clone().context(
            "attach needs the control plane ([control] in the config): addresses come from blocks claimed through gossip",
        )?;
        let IpAddr::V4(gateway) = net.gateway else {
            bail!("network {} has an IPv6 subnet; attach assigns IPv4 addresses only", net.name)
        };
        if let Some(v) = request.name.as_ref().filter(|v| !valid_name(v)) {
            bail!(
                "name {v:?} must be a DNS name: labels of 1 to 63 of a-z, 0-9 and '-' joined by dots, at most 253 \
                 characters, the first not \"tasks\""
            );
        }
        if let Some(v) = request.service.as_ref().filter(|v| !valid_label(v) || v.eq_ignore_ascii_case("tasks")) {
            bail!("service {v:?} must be a DNS label: 1 to 63 of a-z, 0-9 and '-', and not \"tasks\"");
        }
        if let Some(ifname) = &request.interface {
            if !valid_ifname(ifname) {
                bail!("interface {ifname:?} is not a valid interface name");
            }
        }
        let requested = match request.ip.as_deref() {
            None | Some("auto") => None,
            Some(text) => Some(
                text.parse::<Ipv4Addr>().with_context(|| format!("ip {text:?} must be `auto` or an IPv4 address"))?,
            ),
        };
        let netns_path = Self::netns_path(&request.netns)?;
        let netns_file = std::fs::File::open(&netns_path)
            .with_context(|| format!("opening network namespace {}", netns_path.display()))?;

        let mut attached = self.attached.lock().await;
        let key = (request.netns.clone(), net.name.clone());
        if attached.contains_key(&key) {
            bail!("{} is already attached to network {}", request.netns, net.name);
        }
        if let Some(id) = &request.container_id {
            if id.is_empty() || attached.values().any(|a| a.network == net.name && a.container_id.as_ref() == Some(id))
            {
                bail!("container {id:?} is already attached to network {} (or the id is empty)", net.name);
            }
        }
        if let (Some(name), Some(names)) = (&request.name, &self.names) {
            if names.read().is_ok_and(|n| name_taken(&n, net.vni, name)) {
                bail!("the name {name:?} is already used on network {}", net.name);
            }
        }
        let host_name = host_interface_name(&request.netns, &net.name);
        let peer_name = format!("wp{}", &host_name[2..]);
        if let Some(other) = attached.values().find(|a| a.host_interface == host_name) {
            bail!(
                "interface {host_name} already exists: the host end of {}'s attachment to {} (the names collide)",
                other.netns,
                other.network
            );
        }
        // A pair of that name that no attachment of this daemon holds was left by a weft killed before it could
        // detach: stale, and in the way.
        for name in [&host_name, &peer_name] {
            if let Some(link) = self.netlink.link_by_name(name).await? {
                info!(interface = %name, "removing an attachment's interface left by an earlier weft");
                self.netlink.delete_link(link.index).await?;
            }
        }

        let (reply, answer) = oneshot::channel();
        agent
            .send(AgentCommand::Allocate { vni: net.vni, requested, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the control plane is not running"))?;
        let ip = tokio::time::timeout(Duration::from_secs(15), answer)
            .await
            .context("no address: the control plane did not answer")?
            .context("no address: the control plane stopped")?
            .map_err(|e| anyhow::anyhow!("no address on network {}: {e}", net.name))?;

        // plumb removes the veth pair it made when a later step fails; an interface it did not make (another
        // attachment's, whose name collides) is never touched.
        let setup = self.plumb(&net, &request, &netns_file, &host_name, &peer_name, ip, gateway).await;
        let (interface, default_route) = match setup {
            Ok(done) => done,
            Err(e) => {
                let _ = agent.send(AgentCommand::Release { vni: net.vni, ip }).await;
                return Err(e);
            }
        };
        let resolv_conf = self.write_resolv_conf(&request.netns, gateway, &net.domain);
        let mac = endpoint_mac(ip);
        let mut labels = Vec::new();
        if let Some(service) = &request.service {
            labels.push((SERVICE_LABEL.to_string(), service.clone()));
        }
        let record = EndpointRecord {
            vni: net.vni,
            mac,
            ips: vec![IpAddr::V4(ip)],
            vtep: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            name: request.name.clone().unwrap_or_default(),
            labels,
        };
        let _ = agent.send(AgentCommand::Register(record)).await;
        let attachment = Attachment {
            network: net.name.clone(),
            vni: net.vni.get(),
            netns: request.netns.clone(),
            interface,
            host_interface: host_name,
            mac: mac.to_string(),
            address: format!("{ip}/{}", net.subnet.prefix_len()),
            ip: IpAddr::V4(ip),
            prefix_len: net.subnet.prefix_len(),
            gateway: net.gateway,
            default_route,
            dns: vec![net.gateway],
            domain: net.domain.clone(),
            mtu: net.mtu,
            name: request.name,
            service: request.service,
            resolv_conf,
            container_id: request.container_id,
        };
        info!(netns = %attachment.netns, network = %attachment.network, address = %attachment.address, "attached");
        attached.insert(key, attachment.clone());
        Ok(attachment)
    }

    /// The netlink part of attach; returns the interface name and whether the default route was set. When a step
    /// fails after the veth pair was made, the pair is deleted; an interface plumb did not make is never touched.
    #[allow(clippy::too_many_arguments)]
    async fn plumb(
        &self,
        net: &NetworkInfo,
        request: &AttachRequest,
        netns_file: &std::fs::File,
        host_name: &str,
        peer_name: &str,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> anyhow::Result<(String, bool)> {
        let netns_path = Self::netns_path(&request.netns)?;
        let (inside, driver) = Netlink::in_netns(&netns_path)
            .with_context(|| format!("opening netlink in namespace {}", netns_path.display()))?;
        let result = async {
            let names = inside.link_names().await?;
            let interface = match &request.interface {
                Some(name) if names.contains(name) => bail!("{} already has an interface {name}", request.netns),
                Some(name) => name.clone(),
                None => (0..).map(|i| format!("eth{i}")).find(|n| !names.contains(n)).expect("unbounded"),
            };
            let bridge = self
                .netlink
                .link_by_name(&net.bridge)
                .await?
                .with_context(|| format!("bridge {} of network {} is gone", net.bridge, net.name))?;
            for name in [host_name, peer_name] {
                if self.netlink.link_by_name(name).await?.is_some() {
                    bail!("interface {name} already exists on the host (another attachment's whose name collides)");
                }
            }
            let (host, peer) = self.netlink.create_veth(host_name, peer_name).await?;
            let plumbed = async {
                disable_ipv6(host_name)?;
                self.netlink.move_to_netns(peer.index, endpoint_mac(ip).0, net.mtu, netns_file).await?;
                self.netlink.attach_to_bridge(host.index, bridge.index, net.mtu).await?;
                let peer = inside
                    .link_by_name(peer_name)
                    .await?
                    .with_context(|| format!("{peer_name} did not arrive in {}", request.netns))?;
                inside.rename_up(peer.index, &interface).await?;
                if let Some(lo) = inside.link_by_name("lo").await? {
                    inside.set_up(lo.index).await?;
                }
                inside.add_address(peer.index, IpAddr::V4(ip), net.subnet.prefix_len()).await?;
                let default_route = !inside.has_default_route().await?;
                if default_route {
                    inside.add_default_route(peer.index, gateway).await?;
                }
                Ok((interface, default_route))
            }
            .await;
            if plumbed.is_err() {
                // Our end, by index: deleting it removes the pair, wherever the other end is by now.
                let _ = self.netlink.delete_link(host.index).await;
            }
            plumbed
        }
        .await;
        driver.abort();
        result
    }

    /// Writes `/etc/netns/<netns>/resolv.conf` for a named namespace that has none; returns its path if written.
    fn write_resolv_conf(&self, netns: &str, gateway: Ipv4Addr, domain: &str) -> Option<PathBuf> {
        if netns.contains('/') {
            return None;
        }
        let dir = self.etc_netns.join(netns);
        let path = dir.join("resolv.conf");
        if path.exists() {
            return None;
        }
        let text = format!("# written by weft attach; removed by weft detach\nnameserver {gateway}\nsearch {domain}\n");
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            Ok(()) => Some(path),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not write the namespace's resolv.conf");
                None
            }
        }
    }

    /// Detaches an endpoint (see the module doc); `None` when it is not attached and the request allows that.
    pub async fn detach(&self, request: DetachRequest) -> anyhow::Result<Option<Attachment>> {
        let mut attached = self.attached.lock().await;
        let found = attached.iter().find(|(_, a)| request.matches(a)).map(|(k, a)| (k.clone(), a.clone()));
        let Some((key, attachment)) = found else {
            if request.missing_ok {
                return Ok(None);
            }
            bail!("{} is not attached to network {:?} on this host", request.describe(), request.network);
        };
        self.undo(&attachment).await?;
        attached.remove(&key);
        if attachment.resolv_conf.is_some() {
            // The namespace may still be on another network, whose attach found this file and wrote none: it gets
            // one now, pointing at its own gateway, rather than no DNS configuration at all.
            let other = attached.values_mut().find(|a| a.netns == attachment.netns && a.resolv_conf.is_none());
            if let Some(other) = other {
                if let IpAddr::V4(gateway) = other.gateway {
                    other.resolv_conf = self.write_resolv_conf(&other.netns, gateway, &other.domain);
                }
            }
        }
        info!(netns = %attachment.netns, network = %attachment.network, address = %attachment.address, "detached");
        Ok(Some(attachment))
    }

    /// Checks that an attachment is still in place: the host's veth end on the network's bridge, and inside the
    /// namespace the interface with its MAC and address. Returns it, or an error naming what is missing.
    pub async fn check(&self, request: DetachRequest) -> anyhow::Result<Attachment> {
        let attached = self.attached.lock().await;
        let a = attached.values().find(|a| request.matches(a)).cloned().with_context(|| {
            format!("{} is not attached to network {:?} on this host", request.describe(), request.network)
        })?;
        drop(attached);
        let net = self.network(&a.network)?;
        let host = self
            .netlink
            .link_by_name(&a.host_interface)
            .await?
            .with_context(|| format!("the host's end {} of the veth pair is gone", a.host_interface))?;
        let bridge =
            self.netlink.link_by_name(&net.bridge).await?.with_context(|| format!("bridge {} is gone", net.bridge))?;
        if host.master != Some(bridge.index) {
            bail!("{} is no longer a port of bridge {}", a.host_interface, net.bridge);
        }
        let netns_path = Self::netns_path(&a.netns)?;
        let (inside, driver) = Netlink::in_netns(&netns_path)
            .with_context(|| format!("opening network namespace {}", netns_path.display()))?;
        let result = async {
            let link = inside
                .link_by_name(&a.interface)
                .await?
                .with_context(|| format!("{} has no interface {}", a.netns, a.interface))?;
            if link.mac.map(|m| m.to_string()).as_deref() != Some(a.mac.as_str()) {
                bail!("{} in {} no longer has MAC {}", a.interface, a.netns, a.mac);
            }
            if !inside.addresses(link.index).await?.contains(&(a.ip, a.prefix_len)) {
                bail!("{} in {} no longer has address {}", a.interface, a.netns, a.address);
            }
            Ok(())
        }
        .await;
        driver.abort();
        result.map(|()| a)
    }

    async fn undo(&self, a: &Attachment) -> anyhow::Result<()> {
        // A namespace that was deleted took its veth pair with it.
        if let Some(link) = self.netlink.link_by_name(&a.host_interface).await? {
            self.netlink.delete_link(link.index).await?;
        }
        if let Some(path) = &a.resolv_conf {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir); // only if empty
            }
        }
        let net = self.network(&a.network)?;
        if let (Some(agent), IpAddr::V4(ip)) = (&self.agent, a.ip) {
            let mac = endpoint_mac(ip);
            // Wait for the withdrawal: a detach that returned before it could see its name refused when attached
            // again at once (churn test, under load).
            let (done, withdrawn) = tokio::sync::oneshot::channel();
            if agent.send(AgentCommand::Withdraw { vni: net.vni, mac, done }).await.is_ok() {
                let _ = withdrawn.await;
            }
            let _ = agent.send(AgentCommand::Release { vni: net.vni, ip }).await;
        }
        Ok(())
    }

    /// Detaches everything (daemon exit): the bridge may go away, and no record may outlive the daemon.
    pub async fn detach_all(&self) {
        let mut attached = self.attached.lock().await;
        for (_, a) in std::mem::take(&mut *attached) {
            if let Err(e) = self.undo(&a).await {
                warn!(netns = %a.netns, network = %a.network, error = %e, "could not detach");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_macs_and_hashes() {
        assert!(valid_label("web-1") && !valid_label("-web") && !valid_label("a.b") && !valid_label(""));
        assert!(valid_name("web-1") && valid_name("web-1.default") && valid_name("a.b.kube-system"));
        assert!(
            !valid_name("tasks")
                && !valid_name("TASKS.web")
                && !valid_name("a..b")
                && !valid_name("a.")
                && !valid_name("")
        );
        assert!(!valid_name(&["a"; 128].join(".")) && valid_name(&["a"; 127].join(".")), "253 characters at most");
        assert!(valid_ifname("eth0") && !valid_ifname("a/b") && !valid_ifname("sixteen-chars-xx"));
        assert_eq!(endpoint_mac(Ipv4Addr::new(198, 19, 0, 2)).to_string(), "02:57:c6:13:00:02");
        assert_ne!(short_hash("a", "bc"), short_hash("ab", "c"));
        assert_eq!(Attacher::netns_path("ns1").unwrap(), PathBuf::from("/run/netns/ns1"));
        assert_eq!(Attacher::netns_path("/proc/1/ns/net").unwrap(), PathBuf::from("/proc/1/ns/net"));
        assert!(Attacher::netns_path("..").is_err());
    }

    /// `web` and `WEB` are one DNS name: before, attach compared names case-sensitively and let both be taken, and
    /// DNS then answered `web` with both endpoints' addresses.
    #[test]
    fn a_name_is_taken_whatever_its_case() {
        let vni = overlay_proto::Vni::new(100).unwrap();
        let mut names = Names::default();
        let record = EndpointRecord {
            vni,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ips: vec![IpAddr::from([198, 19, 0, 2])],
            vtep: IpAddr::from([198, 18, 0, 1]),
            name: "web".into(),
            labels: vec![],
        };
        names.set(overlay_proto::NodeId([1; 16]), record);
        assert!(name_taken(&names, vni, "web") && name_taken(&names, vni, "WEB"));
        assert!(!name_taken(&names, vni, "web-2"));
        assert!(!name_taken(&names, overlay_proto::Vni::new(7).unwrap(), "web"), "names are per network");
    }
}
