//! The TOML configuration: plain structs, parsed strictly (unknown keys are errors that name the key) and then
//! checked by [`Config::validate`] before anything on the host is touched. docs/config.md is the reference.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use overlay_proto::{MacAddr, Vni};
use serde::Deserialize;

/// Bytes VXLAN adds in front of an inner frame's IP packet: the inner Ethernet header (14), VXLAN (8) and UDP (8).
/// The outer IP header comes on top, 20 or 40 bytes.
pub const VXLAN_OVERHEAD_NO_IP: u32 = 14 + 8 + 8;

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type; toml's message names the key and the line.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// The dotted key, with the array index, e.g. `network[1].vni`.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This host.
    pub node: NodeConfig,
    /// The overlay networks this host carries.
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkConfig>,
    /// The gossip control plane; without it, only static peers and learning fill the FDB.
    pub control: Option<ControlConfig>,
    /// Services this host publishes at start (ingress routing mesh); they reach every host over gossip.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// One `[[service]]`: a port published on every host, balanced over the endpoints labelled `service=<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's name: 1 to 63 characters of a-z, 0-9 and - (a DNS label).
    pub name: String,
    /// The port every host listens on.
    pub port: u16,
    /// The backends' port.
    pub target: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub proto: ProtoName,
    /// `round-robin` (default) or `least-connections`.
    #[serde(default)]
    pub balance: BalanceName,
    /// Send a PROXY protocol v2 header to the backend first, so it sees the client's address (TCP only).
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `service.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtoName {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// `service.balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceName {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// The healthy backend with the fewest open connections through this host.
    LeastConnections,
}

impl ServiceConfig {
    /// The gossip record of this definition, written at `revision` (wall-clock milliseconds).
    pub fn record(&self, revision: u64) -> overlay_proto::service::ServiceRecord {
        use overlay_proto::service::{Policy, Protocol};
        overlay_proto::service::ServiceRecord {
            name: self.name.clone(),
            port: self.port,
            target: self.target,
            protocol: match self.proto {
                ProtoName::Tcp => Protocol::Tcp,
                ProtoName::Udp => Protocol::Udp,
            },
            policy: match self.balance {
                BalanceName::RoundRobin => Policy::RoundRobin,
                BalanceName::LeastConnections => Policy::LeastConnections,
            },
            proxy_protocol: self.proxy_protocol,
            revision,
            removed: false,
        }
    }

    /// Checks one definition; `key` is its config key (`service[0]`) or the CLI's name for it.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !overlay_proto::service::valid_service_name(&self.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} must be 1 to 63 characters of a-z, 0-9 and -, not starting or ending with -", self.name),
            ));
        }
        if self.port == 0 {
            return Err(invalid(format!("{key}.port"), "must be 1..=65535"));
        }
        if self.target == 0 {
            return Err(invalid(format!("{key}.target"), "must be 1..=65535"));
        }
        if self.proxy_protocol && self.proto != ProtoName::Tcp {
            return Err(invalid(format!("{key}.proxy_protocol"), "the PROXY protocol header is for TCP services only"));
        }
        Ok(())
    }
}

/// `[control]`: gossip over QUIC with mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Where QUIC listens; by default the underlay address, port 7946.
    pub listen: Option<SocketAddr>,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), issued by the CA.
    pub cert: PathBuf,
    /// This node's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Control addresses of nodes to join through; may include this node's own.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Encrypted networks agree new keys this often (seconds).
    #[serde(default = "default_rekey_secs")]
    pub rekey_secs: u64,
    /// How long an old inbound SA keeps working after a rekey (seconds).
    #[serde(default = "default_rekey_grace_secs")]
    pub rekey_grace_secs: u64,
    /// The AEAD of encrypted networks: `aes-128-gcm` (default) or `aes-256-gcm`.
    #[serde(default)]
    pub cipher: CipherName,
    /// Append every SA's keys to this file as Wireshark `esp_sa` rows. Debug only: it defeats the encryption.
    pub keylog: Option<PathBuf>,
}

/// `control.cipher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum CipherName {
    /// AES-GCM with a 128-bit key.
    #[default]
    #[serde(rename = "aes-128-gcm")]
    Aes128Gcm,
    /// AES-GCM with a 256-bit key.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

fn default_rekey_secs() -> u64 {
    3600
}

fn default_rekey_grace_secs() -> u64 {
    30
}

/// Default control-plane port.
pub const CONTROL_PORT: u16 = 7946;

impl ControlConfig {
    /// Key agreement settings.
    pub fn keying(&self) -> overlay_proto::keying::KeyingConfig {
        overlay_proto::keying::KeyingConfig {
            rekey_after: std::time::Duration::from_secs(self.rekey_secs),
            grace: std::time::Duration::from_secs(self.rekey_grace_secs),
            cipher: match self.cipher {
                CipherName::Aes128Gcm => weft_crypto::keys::Cipher::Aes128Gcm,
                CipherName::Aes256Gcm => weft_crypto::keys::Cipher::Aes256Gcm,
            },
            ..overlay_proto::keying::KeyingConfig::default()
        }
    }

    /// The QUIC listen address.
    pub fn listen_addr(&self, underlay: IpAddr) -> SocketAddr {
        self.listen.unwrap_or(SocketAddr::new(underlay, CONTROL_PORT))
    }
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The host's name.
    pub name: String,
    /// The underlay address VXLAN is sent from and received on; must be configured on this host.
    pub underlay: IpAddr,
    /// UDP port of plaintext VXLAN.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// UDP port of ESP-in-UDP (RFC 3948).
    #[serde(default = "default_esp_port")]
    pub esp_port: u16,
    /// Unix socket of the JSON API.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Idle time after which learned FDB entries expire.
    #[serde(default = "default_ageing_secs")]
    pub ageing_secs: u64,
    /// Take TSO/USO superframes and partial checksums from the TAP, and batch the underlay with UDP GSO/GRO.
    #[serde(default = "default_true")]
    pub offload: bool,
    /// How datagrams reach the underlay: the kernel's UDP sockets, or AF_XDP sockets past the kernel's stack.
    #[serde(default)]
    pub underlay_mode: UnderlayMode,
    /// Data-path workers, each with its own queue of every TAP and its own underlay sockets; one per CPU the
    /// process may use when unset. The AF_XDP underlay runs one.
    pub workers: Option<usize>,
    /// Microseconds a worker keeps polling without sleeping after its last frame, so the next frame of an exchange
    /// is handled without a wake-up: lower latency for CPU, worth it only on cores weft has to itself (0, the
    /// default, turns it off; docs/performance.md has the measurements).
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u64,
    /// Where Prometheus metrics are served over HTTP (`GET /metrics`); off when unset.
    pub metrics: Option<SocketAddr>,
    /// Resolvers the overlay DNS forwards other names to (`address:port`); the nameservers of /etc/resolv.conf
    /// when unset.
    pub dns_upstream: Option<Vec<SocketAddr>>,
}

/// `node.underlay_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum UnderlayMode {
    /// The kernel's UDP stack, with GSO and GRO.
    #[default]
    #[serde(rename = "udp")]
    Udp,
    /// AF_XDP sockets fed by weft's XDP program on the underlay link; falls back to `udp` if it cannot attach.
    #[serde(rename = "af_xdp")]
    AfXdp,
}

fn default_true() -> bool {
    true
}

/// One `[[network]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Short name; names the default bridge.
    pub name: String,
    /// The VXLAN Network Identifier.
    pub vni: u32,
    /// The overlay's IPv4 (or IPv6) subnet.
    pub subnet: IpNet,
    /// The bridge the TAP joins; `weft-<name>` by default.
    pub bridge: Option<String>,
    /// The overlay MTU; by default the underlay MTU less the encapsulation overhead.
    pub mtu: Option<u32>,
    /// Data-plane learning: `peers` (default), `any` or `off`.
    #[serde(default)]
    pub learning: LearningMode,
    /// Carry frames as ESP-in-UDP with AES-GCM (keys agreed over the control plane, so `[control]` is needed).
    /// Unset, it is on exactly when `[control]` is present; [`Config::parse`] resolves it.
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// Static VTEPs of this network.
    #[serde(default)]
    pub peers: Vec<IpAddr>,
    /// Static FDB entries.
    #[serde(default)]
    pub fdb: Vec<StaticFdbEntry>,
    /// This host's own address on the network, from which the ingress connects to backends on other hosts: unique
    /// per host, inside `subnet`, and used by no endpoint. weft adds it to the bridge (and removes it on exit).
    /// Optional: without it, weft takes one from this host's IPAM block once a service needs it (IPv4 subnets).
    pub ingress_address: Option<IpAddr>,
    /// The gateway address every host's bridge holds (egress and DNS); the subnet's first address by default.
    pub gateway: Option<IpAddr>,
    /// No egress: endpoints reach only the overlay (and the gateway's DNS).
    #[serde(default)]
    pub internal: bool,
    /// Prefix length of the address blocks hosts claim for `weft attach` (IPv4 subnets only).
    #[serde(default = "default_block_prefix")]
    pub block_prefix: u8,
    /// The overlay's DNS domain: `NAME.DOMAIN` and bare `NAME` are answered on the gateway, port 53.
    #[serde(default = "default_domain")]
    pub domain: String,
}

fn default_block_prefix() -> u8 {
    26
}

fn default_domain() -> String {
    "weft".into()
}

/// `network.learning`: which received frames teach the FDB MAC → VTEP, and who may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LearningMode {
    /// No learning: static entries or flooding.
    Off,
    /// Learn from configured peers; frames from other VTEPs are dropped.
    #[default]
    Peers,
    /// Accept and learn from any VTEP, as kernel VXLAN does with `learning`.
    Any,
}

impl From<LearningMode> for overlay_proto::forward::Learning {
    fn from(mode: LearningMode) -> Self {
        match mode {
            LearningMode::Off => Self::Off,
            LearningMode::Peers => Self::Peers,
            LearningMode::Any => Self::Any,
        }
    }
}

/// One `[[network.fdb]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFdbEntry {
    /// The inner MAC, `02:00:00:00:00:01` form.
    pub mac: String,
    /// The VTEP it lives behind.
    pub vtep: IpAddr,
}

fn default_vxlan_port() -> u16 {
    overlay_proto::wire::vxlan::DEFAULT_PORT
}

fn default_esp_port() -> u16 {
    4500
}

fn default_api_socket() -> PathBuf {
    PathBuf::from("/run/weft/weft.sock")
}

/// Most data-path workers: also the most queues a TAP gets.
pub const MAX_WORKERS: usize = 64;

fn default_busy_poll_us() -> u64 {
    0
}

impl NodeConfig {
    /// The data-path workers to run: `workers`, or one per CPU this process may use; one for AF_XDP.
    pub fn worker_count(&self) -> usize {
        if self.underlay_mode == UnderlayMode::AfXdp {
            return 1;
        }
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, MAX_WORKERS)
    }
}

fn default_ageing_secs() -> u64 {
    300
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.into(), message },
            other => other,
        })?;
        config.check_files()?;
        Ok(config)
    }

    /// Checks that the files the config names exist (the rest of the checks need no file system).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let Some(control) = &self.control else { return Ok(()) };
        let files = [("control.ca", &control.ca), ("control.cert", &control.cert), ("control.key", &control.key)];
        for (key, path) in files {
            let hint = if key == "control.ca" { "weft ca init" } else { "weft ca issue" };
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => return Err(invalid(key, format!("{} is not a file", path.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let problem = format!("{} does not exist (create it with `{hint}`)", path.display());
                    return Err(invalid(key, problem));
                }
                // Unreadable to this user (`weft check` as non-root): the daemon's own load reports it.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| key_at(text, span.start));
            let message = match key {
                Some(key) => format!("key `{key}`: {}", e.message()),
                None => e.to_string(),
            };
            ConfigError::Parse { path: PathBuf::new(), message }
        })?;
        // New networks are encrypted by default where keys can be agreed, that is, with a control plane.
        let default_encrypted = config.control.is_some();
        for net in &mut config.networks {
            net.encrypted.get_or_insert(default_encrypted);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that parsing alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        if node.name.is_empty() || node.name.len() > 63 {
            return Err(invalid("node.name", "must be 1 to 63 characters"));
        }
        if node.underlay.is_unspecified() || node.underlay.is_multicast() || node.underlay.is_loopback() {
            return Err(invalid("node.underlay", format!("{} is not a unicast host address", node.underlay)));
        }
        if node.ageing_secs == 0 {
            return Err(invalid("node.ageing_secs", "must be at least 1"));
        }
        if node.workers.is_some_and(|w| !(1..=MAX_WORKERS).contains(&w)) {
            return Err(invalid("node.workers", format!("must be 1 to {MAX_WORKERS}")));
        }
        if node.busy_poll_us > 10_000 {
            return Err(invalid("node.busy_poll_us", "must be at most 10000 (10 ms); 0 turns busy polling off"));
        }
        if node.vxlan_port == 0 {
            return Err(invalid("node.vxlan_port", "must be 1..=65535"));
        }
        if node.esp_port == 0 || node.esp_port == node.vxlan_port {
            return Err(invalid("node.esp_port", "must be 1..=65535 and differ from node.vxlan_port"));
        }
        if let Some(metrics) = node.metrics {
            if metrics.port() == 0 {
                return Err(invalid("node.metrics", format!("{metrics} needs a port, like {}:9090", metrics.ip())));
            }
        }
        if let Some(control) = &self.control {
            for (j, seed) in control.seeds.iter().enumerate() {
                if seed.port() == 0 || seed.ip().is_unspecified() {
                    return Err(invalid(format!("control.seeds[{j}]"), format!("{seed} is not a reachable address")));
                }
            }
            if control.listen.is_some_and(|l| l.port() == 0) {
                return Err(invalid("control.listen", "needs a port"));
            }
            if control.rekey_secs < 2 {
                return Err(invalid("control.rekey_secs", "must be at least 2"));
            }
            if control.rekey_grace_secs == 0 || control.rekey_grace_secs >= control.rekey_secs.max(2) * 10 {
                return Err(invalid("control.rekey_grace_secs", "must be at least 1 and well below rekey_secs"));
            }
        }
        let (mut vnis, mut names, mut bridges) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut subnets: Vec<(usize, IpNet)> = Vec::new();
        for (i, net) in self.networks.iter().enumerate() {
            let key = |field: &str| format!("network[{i}].{field}");
            let name_ok = (1..=10).contains(&net.name.len())
                && net.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                return Err(invalid(
                    key("name"),
                    format!("{:?} must be 1 to 10 characters of a-z, 0-9 and -", net.name),
                ));
            }
            if !names.insert(&net.name) {
                return Err(invalid(key("name"), format!("network name {:?} is used twice", net.name)));
            }
            let vni = Vni::new(net.vni).map_err(|e| invalid(key("vni"), e.to_string()))?;
            if !vnis.insert(vni) {
                return Err(invalid(key("vni"), format!("VNI {vni} is used by two networks")));
            }
            let bridge = net.bridge_name();
            if bridge.is_empty() || bridge.len() > IFNAME_MAX || bridge.contains(['/', ' ']) {
                return Err(invalid(
                    key("bridge"),
                    format!("{bridge:?} is not a valid interface name (1 to 15 characters, no '/' or space)"),
                ));
            }
            if !bridges.insert(bridge.clone()) {
                return Err(invalid(key("bridge"), format!("bridge {bridge:?} is used by two networks")));
            }
            if net.subnet.prefix_len() == net.subnet.max_prefix_len() || net.subnet.network() != net.subnet.addr() {
                return Err(invalid(
                    key("subnet"),
                    format!(
                        "{} must be a network address with room for hosts, like {}",
                        net.subnet,
                        net.subnet.trunc()
                    ),
                ));
            }
            if let Some((j, other)) = subnets.iter().find(|(_, o)| o.contains(&net.subnet) || net.subnet.contains(o)) {
                return Err(invalid(
                    key("subnet"),
                    format!("{} overlaps network[{j}].subnet {other}: overlay subnets must be disjoint", net.subnet),
                ));
            }
            subnets.push((i, net.subnet));
            let gateway = net.gateway_addr();
            let broadcast = matches!(net.subnet, IpNet::V4(_)) && gateway == net.subnet.broadcast();
            if !net.subnet.contains(&gateway) || gateway == net.subnet.network() || broadcast {
                return Err(invalid(key("gateway"), format!("{gateway} is not a host address of {}", net.subnet)));
            }
            if matches!(net.subnet, IpNet::V4(_)) && !(net.subnet.prefix_len()..=30).contains(&net.block_prefix) {
                return Err(invalid(
                    key("block_prefix"),
                    format!("/{} must lie between the subnet's /{} and /30", net.block_prefix, net.subnet.prefix_len()),
                ));
            }
            let label_ok =
                |l: &str| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if net.domain.len() > 200 || !net.domain.split('.').all(label_ok) {
                return Err(invalid(key("domain"), format!("{:?} is not a DNS domain name", net.domain)));
            }
            if net.is_encrypted() && self.control.is_none() {
                return Err(invalid(
                    key("encrypted"),
                    "encryption keys are agreed over the control plane: add a [control] section, or set encrypted = false",
                ));
            }
            if let Some(mtu) = net.mtu {
                if !(576..=65_000).contains(&mtu) {
                    return Err(invalid(key("mtu"), format!("{mtu} is outside 576..=65000")));
                }
            }
            if let Some(addr) = net.ingress_address {
                let usable =
                    net.subnet.contains(&addr) && addr != net.subnet.network() && addr != net.subnet.broadcast();
                if !usable {
                    return Err(invalid(
                        key("ingress_address"),
                        format!("{addr} must be a host address inside the network's subnet {}", net.subnet),
                    ));
                }
            }
            for (j, peer) in net.peers.iter().enumerate() {
                if peer.is_ipv4() != node.underlay.is_ipv4() {
                    return Err(invalid(
                        format!("network[{i}].peers[{j}]"),
                        format!("{peer} is not the same address family as node.underlay {}", node.underlay),
                    ));
                }
            }
            for (j, entry) in net.fdb.iter().enumerate() {
                entry
                    .mac
                    .parse::<MacAddr>()
                    .map_err(|e| invalid(format!("network[{i}].fdb[{j}].mac"), format!("{:?}: {e}", entry.mac)))?;
                if entry.vtep.is_ipv4() != node.underlay.is_ipv4() {
                    return Err(invalid(
                        format!("network[{i}].fdb[{j}].vtep"),
                        "is not the same address family as node.underlay",
                    ));
                }
            }
        }
        let (mut service_names, mut service_ports) = (HashSet::new(), HashSet::new());
        for (i, service) in self.services.iter().enumerate() {
            let key = format!("service[{i}]");
            service.validate(&key)?;
            if self.control.is_none() {
                return Err(invalid(
                    key,
                    "services are published to every host over the control plane: add a [control] section",
                ));
            }
            if !service_names.insert(&service.name) {
                return Err(invalid(format!("{key}.name"), format!("service {:?} is defined twice", service.name)));
            }
            if !service_ports.insert((service.port, service.proto)) {
                return Err(invalid(
                    format!("{key}.port"),
                    format!("{} port {} is published by two services", service.proto.as_str(), service.port),
                ));
            }
            let control_port = self.control.as_ref().map(|c| c.listen_addr(node.underlay).port());
            let taken = [Some(node.vxlan_port), Some(node.esp_port), control_port];
            if service.proto == ProtoName::Udp && taken.contains(&Some(service.port)) {
                return Err(invalid(
                    format!("{key}.port"),
                    format!("UDP port {} is weft's own (VXLAN, ESP or control)", service.port),
                ));
            }
        }
        Ok(())
    }
}

/// The dotted key whose line holds byte `offset` of `text` (`network.vni`, `node.underlay`), for parse errors
/// that toml reports by position only. `None` when the line is not a `key = value` line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim().to_owned());
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

impl ProtoName {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtoName::Tcp => "tcp",
            ProtoName::Udp => "udp",
        }
    }
}

impl NetworkConfig {
    /// The bridge this network's TAP joins.
    pub fn bridge_name(&self) -> String {
        self.bridge.clone().unwrap_or_else(|| format!("weft-{}", self.name))
    }

    /// The gateway address: configured, or the subnet's first address.
    pub fn gateway_addr(&self) -> IpAddr {
        self.gateway.unwrap_or_else(|| match self.subnet {
            IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
            IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
        })
    }

    /// The TAP device's name: `wft<vni>`.
    pub fn tap_name(&self) -> String {
        format!("wft{}", self.vni)
    }

    /// The VNI (validated by [`Config::validate`]).
    pub fn vni(&self) -> Vni {
        Vni::from_u24(self.vni)
    }

    /// Static FDB entries with their MACs parsed (validated by [`Config::validate`]).
    pub fn static_fdb(&self) -> Vec<(MacAddr, IpAddr)> {
        self.fdb.iter().filter_map(|e| Some((e.mac.parse().ok()?, e.vtep))).collect()
    }

    /// Whether the network is encrypted (unset counts as no: [`Config::parse`] has resolved the default).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted == Some(true)
    }

    /// Bytes the encapsulation adds on top of an inner IP packet, outer IP header included.
    pub fn overhead(&self, underlay: IpAddr) -> u32 {
        let outer_ip = if underlay.is_ipv4() { 20 } else { 40 };
        // ESP-in-UDP adds the outer UDP header, the ESP header (16), the worst-case padding (3), pad length and
        // next header (2) and the ICV (16) around the VXLAN datagram (inner UDP + VXLAN + Ethernet).
        let esp = if self.is_encrypted() { 8 + 16 + 3 + 2 + 16 } else { 0 };
        outer_ip + VXLAN_OVERHEAD_NO_IP + esp
    }

    /// The overlay MTU of network number `index` on an underlay of `underlay_mtu` bytes: configured or derived,
    /// never above what fits.
    pub fn overlay_mtu(&self, index: usize, underlay: IpAddr, underlay_mtu: u32) -> Result<u32, ConfigError> {
        let overhead = self.overhead(underlay);
        let max = underlay_mtu.saturating_sub(overhead);
        match self.mtu {
            Some(mtu) if mtu > max => Err(invalid(
                format!("network[{index}].mtu"),
                format!("{mtu} does not fit: underlay MTU {underlay_mtu} - {overhead} bytes of encapsulation = {max}"),
            )),
            Some(mtu) => Ok(mtu),
            None => Ok(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "h1"
underlay = "198.18.0.1"

[[network]]
name = "blue"
vni = 100
subnet = "198.19.1.0/24"
peers = ["198.18.0.2", "198.18.0.3"]

[[network.fdb]]
mac = "02:00:00:00:00:01"
vtep = "198.18.0.2"

[[network]]
name = "red"
vni = 200
subnet = "198.19.2.0/24"
bridge = "br-red"
mtu = 1400
learning = "any"
"#;

    fn error_of(text: &str) -> String {
        Config::parse(text).expect_err("config must be rejected").to_string()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.node.vxlan_port, 4789);
        assert_eq!(c.networks.len(), 2);
        assert_eq!(c.networks[0].bridge_name(), "weft-blue");
        assert_eq!(c.networks[0].tap_name(), "wft100");
        assert_eq!(c.node.ageing_secs, 300);
        assert_eq!(c.networks[0].static_fdb().len(), 1);
        assert_eq!(c.networks[1].bridge_name(), "br-red");
        let v4 = "198.18.0.1".parse().unwrap();
        assert_eq!(c.networks[0].overlay_mtu(0, v4, 1500).unwrap(), 1450);
        assert_eq!(c.networks[0].overlay_mtu(0, "2001:db8::1".parse().unwrap(), 1500).unwrap(), 1430);
        assert_eq!(c.networks[1].overlay_mtu(1, v4, 1500).unwrap(), 1400);
        let too_big = c.networks[1].overlay_mtu(1, v4, 1420).unwrap_err().to_string();
        assert!(too_big.contains("network[1].mtu") && too_big.contains("1370"), "{too_big}");
        assert!(!c.networks[0].is_encrypted(), "without [control] networks are plaintext");
        assert_eq!(c.node.underlay_mode, UnderlayMode::Udp);
        let xdp = Config::parse(&GOOD.replacen("[node]", "[node]\nunderlay_mode = \"af_xdp\"", 1)).unwrap();
        assert_eq!(xdp.node.underlay_mode, UnderlayMode::AfXdp);
        assert_eq!(c.networks[0].gateway_addr(), "198.19.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (c.networks[0].block_prefix, c.networks[0].internal, c.networks[0].domain.as_str()),
            (26, false, "weft")
        );
        let mut encrypted = c.networks[0].clone();
        encrypted.encrypted = Some(true);
        assert_eq!(encrypted.overlay_mtu(0, v4, 1500).unwrap(), 1500 - 20 - 30 - 45);
    }

    #[test]
    fn networks_are_encrypted_by_default_with_a_control_plane() {
        let control = "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n[node]";
        let text = GOOD.replacen("[node]", control, 1).replacen(
            "learning = \"any\"",
            "learning = \"any\"\nencrypted = false",
            1,
        );
        let c = Config::parse(&text).unwrap();
        assert!(c.networks[0].is_encrypted(), "unset means encrypted with [control]");
        assert!(!c.networks[1].is_encrypted(), "an explicit false stays false");
    }

    #[test]
    fn each_class_of_error_names_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("vni = 100", "vni = 16777216", "network[0].vni"),
            ("vni = 200", "vni = 100", "network[1].vni"),
            ("subnet = \"198.19.1.0/24\"", "subnet = \"198.19.1.0/33\"", "subnet"),
            ("subnet = \"198.19.1.0/24\"", "subnet = \"198.19.1.7/24\"", "network[0].subnet"),
            ("name = \"blue\"", "name = \"Blue Net\"", "network[0].name"),
            ("name = \"red\"", "name = \"blue\"", "network[1].name"),
            ("bridge = \"br-red\"", "bridge = \"a-very-long-bridge-name\"", "network[1].bridge"),
            ("mtu = 1400", "mtu = 100", "network[1].mtu"),
            ("underlay = \"198.18.0.1\"", "underlay = \"0.0.0.0\"", "node.underlay"),
            ("underlay = \"198.18.0.1\"", "underlay = \"not-an-ip\"", "underlay"),
            ("peers = [\"198.18.0.2\", \"198.18.0.3\"]", "peers = [\"2001:db8::2\"]", "network[0].peers[0]"),
            ("mac = \"02:00:00:00:00:01\"", "mac = \"02:00:00:00:00\"", "network[0].fdb[0].mac"),
            ("learning = \"any\"", "learning = \"any\"\nlearnign = \"off\"", "learnign"),
            ("learning = \"any\"", "learning = \"sometimes\"", "learning"),
            ("[node]", "[node]\nunderlay_mode = \"xdp\"", "underlay_mode"),
            ("[node]", "[node]\nvxlan_prot = 4789", "vxlan_prot"),
            ("mtu = 1400", "mtu = \"big\"", "mtu"),
            ("mtu = 1400", "gateway = \"198.19.3.1\"", "network[1].gateway"),
            ("mtu = 1400", "gateway = \"198.19.2.255\"", "network[1].gateway"),
            ("mtu = 1400", "block_prefix = 20", "network[1].block_prefix"),
            ("mtu = 1400", "domain = \"a..b\"", "network[1].domain"),
            ("mtu = 1400", "internal = 1", "internal"),
            (
                "[node]",
                "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\nseeds = [\"198.18.0.1:0\"]\n[node]",
                "control.seeds[0]",
            ),
            ("[node]", "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\n[node]", "key"),
            ("[node]", "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"k\"\nsedes = []\n[node]", "sedes"),
            // Unknown keys and typos, named with their table.
            ("underlay = \"198.18.0.1\"", "undrlay = \"198.18.0.1\"", "undrlay"),
            ("[node]", "[contrl]\nca = \"ca.crt\"\n[node]", "contrl"),
            // Wrong types.
            ("vni = 100", "vni = \"100\"", "network.vni"),
            ("name = \"h1\"", "name = 1", "node.name"),
            ("peers = [\"198.18.0.2\", \"198.18.0.3\"]", "peers = \"198.18.0.2\"", "network.peers"),
            // Bad addresses.
            ("underlay = \"198.18.0.1\"", "underlay = \"198.18.0.300\"", "node.underlay"),
            ("peers = [\"198.18.0.2\", \"198.18.0.3\"]", "peers = [\"198.18.0\"]", "network.peers"),
            ("[node]", "[node]\nmetrics = \"198.18.0.1\"", "node.metrics"),
            ("subnet = \"198.19.1.0/24\"", "subnet = \"198.19.1.0\"", "network.subnet"),
            // Bad ports.
            ("[node]", "[node]\nvxlan_port = 70000", "node.vxlan_port"),
            ("[node]", "[node]\nvxlan_port = 0", "node.vxlan_port"),
            ("[node]", "[node]\nesp_port = 4789", "node.esp_port"),
            ("[node]", "[node]\nmetrics = \"198.18.0.1:0\"", "node.metrics"),
            (
                "[node]",
                "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"k\"\nlisten = \"198.18.0.1:0\"\n[node]",
                "control.listen",
            ),
            // Overlapping subnets, VNI range, encryption without keys, rekey timers, ciphers.
            ("subnet = \"198.19.2.0/24\"", "subnet = \"198.19.0.0/16\"", "network[1].subnet"),
            ("vni = 200", "vni = -1", "network.vni"),
            ("learning = \"any\"", "learning = \"any\"\nencrypted = true", "network[1].encrypted"),
            (
                "[node]",
                "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"k\"\nrekey_secs = 1\n[node]",
                "control.rekey_secs",
            ),
            (
                "[node]",
                "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"k\"\ncipher = \"des\"\n[node]",
                "control.cipher",
            ),
            ("[node]", "[node]\nageing_secs = 0", "node.ageing_secs"),
            ("[node]", "[node]\nworkers = 0", "node.workers"),
            ("[node]", "[node]\nbusy_poll_us = 50000", "node.busy_poll_us"),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "fixture lacks {from}");
            let message = error_of(&GOOD.replacen(from, to, 1));
            assert!(message.contains(key), "error for {to:?} must name {key:?}: {message}");
        }
        assert!(error_of("").contains("node"), "a missing [node] is named");
    }

    #[test]
    fn the_packaged_example_parses() {
        let c = Config::parse(include_str!("../packaging/weft.toml")).unwrap();
        assert_eq!(c.node.metrics, Some("198.18.0.1:9090".parse().unwrap()));
        assert!(c.networks[0].is_encrypted() && !c.networks[1].is_encrypted());
    }

    #[test]
    fn overlap_message_names_both_networks() {
        let message = error_of(&GOOD.replacen("subnet = \"198.19.2.0/24\"", "subnet = \"198.19.1.128/25\"", 1));
        assert!(message.contains("network[1].subnet") && message.contains("network[0].subnet"), "{message}");
    }

    #[test]
    fn missing_control_files_are_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "a.crt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let control = format!(
            "[control]\nca = \"{0}/ca.crt\"\ncert = \"{0}/a.crt\"\nkey = \"{0}/a.key\"\n[node]",
            dir.path().display()
        );
        let path = dir.path().join("weft.toml");
        std::fs::write(&path, GOOD.replacen("[node]", &control, 1)).unwrap();
        let message = Config::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("control.key") && message.contains("a.key") && message.contains("weft ca issue"),
            "{message}"
        );
        std::fs::write(dir.path().join("a.key"), "x").unwrap();
        Config::load(&path).expect("every file exists now");
        let message = Config::load(&dir.path().join("nope.toml")).unwrap_err().to_string();
        assert!(message.contains("nope.toml"), "{message}");
    }

    #[test]
    fn services_parse_and_each_error_names_the_key() {
        let control = "[control]\nca = \"ca.crt\"\ncert = \"a.crt\"\nkey = \"a.key\"\n";
        let services = "[[service]]\nname = \"web\"\nport = 8080\ntarget = 80\nproxy_protocol = true\n\
                        [[service]]\nname = \"dns\"\nport = 53\ntarget = 5353\nproto = \"udp\"\nbalance = \"least-connections\"\n";
        let text = format!("{GOOD}ingress_address = \"198.19.2.251\"\n{control}{services}");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.networks[1].ingress_address, Some("198.19.2.251".parse().unwrap()));
        let web = c.services[0].record(7);
        assert!(web.proxy_protocol && web.protocol == overlay_proto::service::Protocol::Tcp && web.revision == 7);
        let dns = c.services[1].record(7);
        assert_eq!(dns.policy, overlay_proto::service::Policy::LeastConnections);

        let cases: &[(&str, &str, &str)] = &[
            ("name = \"web\"", "name = \"Web\"", "service[0].name"),
            ("name = \"dns\"", "name = \"web\"", "service[1].name"),
            ("port = 53", "port = 0", "service[1].port"),
            ("port = 53\ntarget = 5353\nproto = \"udp\"", "port = 8080\ntarget = 1", "service[1].port"),
            ("target = 80", "target = 0", "service[0].target"),
            ("port = 53", "port = 4789", "service[1].port"),
            ("port = 53", "port = 7946", "service[1].port"),
            ("proto = \"udp\"", "proto = \"sctp\"", "proto"),
            ("balance = \"least-connections\"", "balance = \"random\"", "balance"),
            ("proto = \"udp\"", "proto = \"udp\"\nproxy_protocol = true", "service[1].proxy_protocol"),
            ("198.19.2.251", "198.19.3.1", "network[1].ingress_address"),
            ("198.19.2.251", "198.19.2.0", "network[1].ingress_address"),
            ("[[service]]\nname = \"web\"", "[[service]]\nnmae = \"web\"", "nmae"),
        ];
        for (from, to, key) in cases {
            assert!(text.contains(from), "fixture lacks {from}");
            let message = error_of(&text.replacen(from, to, 1));
            assert!(message.contains(key), "error for {to:?} must name {key:?}: {message}");
        }
        let without_control = format!("{GOOD}{services}");
        assert!(error_of(&without_control).contains("service[0]"));
    }
}
