//! The Container Network Interface protocol (CNI spec 1.0.0 and 1.1.0) for the `weft-cni` plugin binary: the
//! environment and network configuration a runtime hands a plugin, and the result, version and error documents it
//! prints. No IO: `src/bin/weft-cni.rs` reads the environment and stdin, talks to the daemon and prints what this
//! module builds. docs/cni.md is the user's view.
//!
//! ```text
//!  runtime ─ CNI_* env + stdin config ─► Env::parse, NetConf::parse ─► weft-cni ─ JSON API ─► weft run
//!  runtime ◄─ stdout: add_result / version_result / CniError::to_json ◄┘    (attach, detach, check, attachments)
//! ```
//!
//! Spec: <https://github.com/containernetworking/cni/blob/main/SPEC.md>.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::services::attach::{valid_ifname, valid_label, valid_name, Attachment};

/// The spec versions this plugin speaks, oldest first. Configs of older versions are refused with
/// [`code::INCOMPATIBLE_VERSION`]: their result format differs (0.x `ips[].version`), and CHECK needs 0.4.0.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
/// The newest of [`SUPPORTED_VERSIONS`]: what an error carries before the config's version is known.
pub const LATEST_VERSION: &str = "1.1.0";
/// The daemon's API socket when the config names none (the default `node.api_socket`).
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";
/// The plugin's `type`.
pub const PLUGIN_TYPE: &str = "weft-cni";

/// Error codes: the spec's well-known ones (0–99) and weft's own (100+).
pub mod code {
    /// The config's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The container is unknown to the plugin (CHECK of something never added, or deleted).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or malformed.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Talking to the daemon broke off mid-request.
    pub const IO_FAILURE: u32 = 5;
    /// stdin is not the JSON the spec asks for.
    pub const DECODING_FAILURE: u32 = 6;
    /// The network configuration is incomplete or wrong.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// The daemon is not running (yet): the runtime may retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the daemon cannot serve ADD (not running, or without this network).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// weft: the daemon refused the request; `msg` carries its reason.
    pub const DAEMON_REFUSED: u32 = 100;
    /// weft: CHECK found the attachment not as it was added; `msg` says what differs.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}`, and the plugin exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// More context (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }

    /// With `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error document for a runtime that speaks `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach it; idempotent.
    Del,
    /// Verify it is still attached as added.
    Check,
    /// Which spec versions the plugin speaks.
    Version,
    /// 1.1: whether the plugin could serve ADD now (the daemon is up and has the network).
    Status,
    /// 1.1: detach every container this plugin attached on the network that is not in the valid list.
    Gc,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`: the attachment's key (with the network).
    pub container_id: Option<String>,
    /// `CNI_NETNS`: a namespace path (`/var/run/netns/X`, `/proc/PID/ns/net`).
    pub netns: Option<String>,
    /// `CNI_IFNAME`: the interface name inside the namespace.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where plugins live (weft-cni delegates to none, but the spec requires it for ADD/DEL/CHECK).
    pub path: Vec<PathBuf>,
}

fn invalid_env(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, msg)
}

/// A container ID as the spec allows: alphanumerics, `_`, `.` and `-`, starting with an alphanumeric.
fn valid_container_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A network name as the spec allows (the same alphabet as container IDs).
fn valid_network_name(name: &str) -> bool {
    valid_container_id(name)
}

impl Env {
    /// Reads the environment through `var` (`std::env::var` in the plugin, a map in tests). The variables each
    /// command needs are required, as in the reference plugins' `skel`: ADD and CHECK need all four of
    /// `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH`; DEL all but `CNI_NETNS` (the namespace may be
    /// gone); VERSION, STATUS and GC none.
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND is not set"))?;
        let command = Command::parse(&command).ok_or_else(|| {
            invalid_env(format!("CNI_COMMAND {command:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"))
        })?;
        let env = Env {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        for name in required {
            let present = match *name {
                "CNI_CONTAINERID" => env.container_id.is_some(),
                "CNI_NETNS" => env.netns.is_some(),
                "CNI_IFNAME" => env.ifname.is_some(),
                _ => !env.path.is_empty(),
            };
            if !present {
                return Err(invalid_env(format!("{name} is required for {command:?} and is not set")));
            }
        }
        if let Some(id) = env.container_id.as_deref().filter(|id| !valid_container_id(id)) {
            return Err(invalid_env(format!(
                "CNI_CONTAINERID {id:?} must be alphanumerics, '_', '.' and '-', starting with an alphanumeric"
            )));
        }
        if let Some(name) = env.ifname.as_deref().filter(|n| !valid_ifname(n)) {
            return Err(invalid_env(format!("CNI_IFNAME {name:?} is not a valid interface name")));
        }
        if let Some(netns) = env.netns.as_deref().filter(|n| !n.starts_with('/')) {
            return Err(invalid_env(format!("CNI_NETNS {netns:?} must be an absolute path")));
        }
        Ok(env)
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The endpoint's DNS name: `<K8S_POD_NAME>.<K8S_POD_NAMESPACE>`, unique in a cluster as the pair is (two pods
    /// of one name in two namespaces on one network are two names), or `K8S_POD_NAME` alone when the runtime gives
    /// no namespace. Unnamed when there is no pod name or the result is not a valid endpoint name (docs/cni.md).
    pub fn endpoint_name(&self) -> Option<String> {
        let pod = self.arg("K8S_POD_NAME")?;
        match self.arg("K8S_POD_NAMESPACE") {
            // A namespace is one label, so it is always the name's last: pod `a.b` in `c` and pod `a` in `b.c` (not
            // a namespace) never meet.
            Some(namespace) => {
                let name = format!("{pod}.{namespace}");
                (valid_label(namespace) && valid_name(&name)).then_some(name)
            }
            // Without a namespace a dotted pod name would read as one, so it must be a single label.
            None => valid_label(pod).then(|| pod.to_string()),
        }
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2`. Keys weft does not use are ignored, as `IgnoreUnknown=1` asks of other plugins.
fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(invalid_env(format!("CNI_ARGS: {pair:?} is not KEY=VALUE"))),
        })
        .collect()
}

/// The network configuration on stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`: the runtime's name for the network.
    pub name: String,
    /// `network`: the weft network (its `name` in weft's config).
    pub network: String,
    /// `socket`: the daemon's API socket.
    pub socket: PathBuf,
    /// `service`: the endpoints' service.
    pub service: Option<String>,
    /// `ip`: `auto` or a fixed IPv4 address (only sensible for a config used by one container).
    pub ip: Option<String>,
    /// `prevResult`: the previous plugin's result (ADD in a chain; CHECK and DEL get the result of ADD).
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments` as (container ID, interface name).
    pub valid_attachments: BTreeSet<(String, String)>,
}

#[derive(Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    network: Option<String>,
    socket: Option<PathBuf>,
    service: Option<String>,
    ip: Option<String>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_NETWORK_CONFIG, msg)
}

impl NetConf {
    /// Parses and checks stdin. Keys weft does not know (`runtimeConfig`, `capabilities`, `args`, other plugins'
    /// settings in a chain) are ignored, as the spec wants.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODING_FAILURE, "the network configuration on stdin is not valid JSON")
                .with_details(e.to_string())
        })?;
        let cni_version = raw.cni_version.ok_or_else(|| invalid_config("cniVersion is missing"))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {cni_version:?} is not supported (supported: {})", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let name = raw.name.ok_or_else(|| invalid_config("name is missing"))?;
        if !valid_network_name(&name) {
            return Err(invalid_config(format!(
                "name {name:?} must be alphanumerics, '_', '.' and '-', starting with an alphanumeric"
            )));
        }
        if let Some(t) = raw.plugin_type.filter(|t| t != PLUGIN_TYPE) {
            return Err(invalid_config(format!("type is {t:?}, this plugin is {PLUGIN_TYPE:?}")));
        }
        let network = raw.network.filter(|n| !n.is_empty()).ok_or_else(|| {
            invalid_config("network is missing: the weft network to attach to (its name in weft's config)")
        })?;
        if let Some(service) = raw.service.as_deref().filter(|s| !valid_label(s) || s.eq_ignore_ascii_case("tasks")) {
            return Err(invalid_config(format!("service {service:?} must be a DNS label (a-z, 0-9, '-')")));
        }
        if let Some(ip) = raw.ip.as_deref().filter(|ip| *ip != "auto" && ip.parse::<std::net::Ipv4Addr>().is_err()) {
            return Err(invalid_config(format!("ip {ip:?} must be \"auto\" or an IPv4 address")));
        }
        if raw.prev_result.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(invalid_config("prevResult must be an object"));
        }
        Ok(NetConf {
            cni_version,
            name,
            network,
            socket: raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            service: raw.service,
            ip: raw.ip,
            prev_result: raw.prev_result,
            valid_attachments: raw
                .valid_attachments
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect(),
        })
    }
}

/// VERSION's answer. `stdin` may carry `{"cniVersion": V}`; the answer speaks V when weft supports it.
pub fn version_result(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    json!({ "cniVersion": asked.as_deref().unwrap_or(LATEST_VERSION), "supportedVersions": SUPPORTED_VERSIONS })
}

/// The daemon's `attach` params for ADD.
pub fn attach_params(env: &Env, conf: &NetConf) -> Value {
    json!({
        "netns": env.netns, "network": conf.network, "interface": env.ifname, "container_id": env.container_id,
        "name": env.endpoint_name(), "service": conf.service, "ip": conf.ip,
    })
}

/// The daemon's `detach` (or `check`) params: the attachment by container ID.
pub fn detach_params(container_id: &str, conf: &NetConf, missing_ok: bool) -> Value {
    json!({ "container_id": container_id, "network": conf.network, "missing_ok": missing_ok })
}

/// ADD's result for `attachment`. With a `prevResult` (weft after another plugin in a chain), weft's interfaces,
/// addresses and routes are appended to it and its `dns` kept if it has one.
pub fn add_result(conf: &NetConf, attachment: &Attachment) -> Value {
    let prev = conf.prev_result.clone().unwrap_or_else(|| json!({}));
    let list = |key: &str| prev.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut interfaces = list("interfaces");
    let mut ips = list("ips");
    let mut routes = list("routes");
    interfaces.push(json!({ "name": attachment.host_interface }));
    let mut inside = json!({ "name": attachment.interface, "mac": attachment.mac, "sandbox": attachment.netns });
    if conf.cni_version != "1.0.0" {
        inside["mtu"] = json!(attachment.mtu); // a 1.1 field
    }
    interfaces.push(inside);
    ips.push(
        json!({ "address": attachment.address, "gateway": attachment.gateway, "interface": interfaces.len() - 1 }),
    );
    if attachment.default_route {
        routes.push(json!({ "dst": "0.0.0.0/0", "gw": attachment.gateway }));
    }
    let mut dns = Map::new();
    dns.insert("nameservers".into(), json!(attachment.dns));
    if !attachment.domain.is_empty() {
        dns.insert("domain".into(), json!(attachment.domain));
        dns.insert("search".into(), json!([attachment.domain]));
    }
    let dns = match prev.get("dns") {
        Some(d) if d.get("nameservers").and_then(Value::as_array).is_some_and(|n| !n.is_empty()) => d.clone(),
        _ => Value::Object(dns),
    };
    json!({ "cniVersion": conf.cni_version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns })
}

/// CHECK, on the plugin's side: the attachment the daemon verified must be the one CNI_IFNAME names, in the
/// namespace CNI_NETNS names, and appear in `prevResult` (the result of ADD) as an interface and an address.
pub fn check_attachment(env: &Env, conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
    let failed = |msg: String| Err(CniError::new(code::CHECK_FAILED, msg));
    if env.ifname.as_deref() != Some(attachment.interface.as_str()) {
        return failed(format!(
            "container {} is attached as interface {}, not CNI_IFNAME {:?}",
            env.container_id.as_deref().unwrap_or_default(),
            attachment.interface,
            env.ifname.as_deref().unwrap_or_default()
        ));
    }
    if env.netns.as_deref() != Some(attachment.netns.as_str()) {
        return failed(format!("the attachment is in {}, not CNI_NETNS {:?}", attachment.netns, env.netns));
    }
    let Some(prev) = &conf.prev_result else { return Ok(()) };
    let interfaces = prev.get("interfaces").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    // An earlier plugin's result may list the same name in the sandbox too; ours is the entry (ADD appends it last)
    // that our address points at, so every entry with the name is a candidate, not only the first (the cni fuzz
    // target found CHECK refusing ADD's own result that way).
    let candidates: Vec<usize> = (interfaces.iter().enumerate())
        .filter(|(_, i)| {
            i.get("name").and_then(Value::as_str) == Some(attachment.interface.as_str())
                && i.get("sandbox").and_then(Value::as_str) == Some(attachment.netns.as_str())
        })
        .map(|(index, _)| index)
        .collect();
    if candidates.is_empty() {
        return failed(format!("prevResult has no interface {} in {}", attachment.interface, attachment.netns));
    }
    let ips = prev.get("ips").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let listed = candidates.iter().rev().copied().find(|&index| {
        ips.iter().any(|ip| {
            ip.get("address").and_then(Value::as_str) == Some(attachment.address.as_str())
                && ip.get("interface").and_then(Value::as_u64) == Some(index as u64)
        })
    });
    let Some(index) = listed else {
        return failed(format!(
            "{} has {}, which prevResult does not list for it",
            attachment.interface, attachment.address
        ));
    };
    if let Some(mac) = interfaces[index].get("mac").and_then(Value::as_str) {
        if !mac.eq_ignore_ascii_case(&attachment.mac) {
            return failed(format!("{} has MAC {}, prevResult says {mac}", attachment.interface, attachment.mac));
        }
    }
    Ok(())
}

/// GC: the attachments (made through CNI, so with a container ID) of `conf`'s network that are not in
/// `cni.dev/valid-attachments`; returns their container IDs.
pub fn stale_attachments(conf: &NetConf, attachments: &[Attachment]) -> Vec<String> {
    attachments
        .iter()
        .filter(|a| a.network == conf.network)
        .filter_map(|a| {
            let id = a.container_id.as_ref()?;
            (!conf.valid_attachments.contains(&(id.clone(), a.interface.clone()))).then(|| id.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::parse(|k| map.get(k).cloned())
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "f00dcafe0123"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/libexec/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"),
    ];

    /// The spec's example configuration, with weft's keys.
    const CONF: &str = r#"{
        "cniVersion": "1.0.0", "name": "dbnet", "type": "weft-cni", "network": "blue",
        "socket": "/run/weft/weft.sock", "service": "web",
        "args": { "labels": { "appVersion": "1.0" } },
        "runtimeConfig": { "portMappings": [] }
    }"#;

    fn attachment() -> Attachment {
        serde_json::from_value(json!({
            "network": "blue", "vni": 100, "netns": "/var/run/netns/c1",
            "interface": "eth0", "host_interface": "wv1a2b3c4d", "mac": "02:57:c6:13:00:42",
            "address": "198.19.0.66/24", "ip": "198.19.0.66", "prefix_len": 24,
            "gateway": "198.19.0.1", "default_route": true,
            "dns": ["198.19.0.1"], "domain": "weft", "mtu": 1450,
            "name": "web-1", "service": "web", "resolv_conf": null, "container_id": "f00dcafe0123"
        }))
        .unwrap()
    }

    #[test]
    fn environment_of_add() {
        let e = env(ADD_ENV).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id.as_deref(), Some("f00dcafe0123"));
        assert_eq!(e.path, [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/libexec/cni")]);
        assert_eq!(e.arg("K8S_POD_NAMESPACE"), Some("default"));
        assert_eq!(e.endpoint_name().as_deref(), Some("web-1.default"));
    }

    #[test]
    fn pods_of_one_name_in_two_namespaces_get_two_names() {
        let name = |args: &str| {
            let mut vars: Vec<_> = ADD_ENV.iter().copied().filter(|(k, _)| *k != "CNI_ARGS").collect();
            vars.push(("CNI_ARGS", args));
            env(&vars).unwrap().endpoint_name()
        };
        let prod = name("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=db-0");
        let staging = name("K8S_POD_NAME=db-0;K8S_POD_NAMESPACE=staging");
        assert_eq!((prod.as_deref(), staging.as_deref()), (Some("db-0.prod"), Some("db-0.staging")));
        assert_eq!(name("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web.1").as_deref(), Some("web.1.prod"));
        assert_eq!(name("K8S_POD_NAME=web-1").as_deref(), Some("web-1"), "no namespace: the pod name alone");
        assert_eq!(name("K8S_POD_NAMESPACE=prod"), None, "no pod name: unnamed");
        assert_eq!(name("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=tasks"), None, "tasks.S is DNS's service syntax");
        assert_eq!(name("K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web"), None, "a namespace is one label");
        assert_eq!(name("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web_1"), None);
    }

    #[test]
    fn environment_errors_are_code_4_and_name_the_variable() {
        let without = |name: &str| {
            let vars: Vec<_> = ADD_ENV.iter().copied().filter(|(k, _)| *k != name).collect();
            env(&vars).unwrap_err()
        };
        for name in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let e = without(name);
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{name}");
            assert!(e.msg.contains(name), "{name}: {}", e.msg);
        }
        let with = |name: &str, value: &str| {
            let mut vars: Vec<_> = ADD_ENV.iter().copied().filter(|(k, _)| *k != name).collect();
            vars.push((name, value));
            env(&vars)
        };
        for (name, bad) in [
            ("CNI_COMMAND", "ATTACH"),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_CONTAINERID", "a/b"),
            ("CNI_IFNAME", "sixteen-chars-xx"),
            ("CNI_IFNAME", "a:b"),
            ("CNI_NETNS", "c1"),
            ("CNI_ARGS", "K8S_POD_NAME"),
        ] {
            let e = with(name, bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{name}={bad}");
            assert!(e.msg.contains(name), "{name}: {}", e.msg);
        }
        // Without a namespace, a pod name that is not a DNS label leaves the endpoint unnamed.
        assert_eq!(with("CNI_ARGS", "K8S_POD_NAME=web.1").unwrap().endpoint_name(), None);
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .unwrap();
        assert_eq!((del.command, del.netns), (Command::Del, None));
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
        assert_eq!(env(&[("CNI_COMMAND", "STATUS")]).unwrap().command, Command::Status);
    }

    #[test]
    fn config_of_the_spec_example() {
        let c = NetConf::parse(CONF.as_bytes()).unwrap();
        assert_eq!((c.cni_version.as_str(), c.name.as_str(), c.network.as_str()), ("1.0.0", "dbnet", "blue"));
        assert_eq!(c.socket, PathBuf::from("/run/weft/weft.sock"));
        assert_eq!(c.service.as_deref(), Some("web"));
        let minimal = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"weft-cni","network":"blue"}"#);
        assert_eq!(minimal.unwrap().socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn config_errors_have_the_spec_codes_and_name_the_key() {
        let cases: &[(&str, u32, &str)] = &[
            ("not json", code::DECODING_FAILURE, "JSON"),
            (r#"{"cniVersion":1}"#, code::DECODING_FAILURE, "JSON"),
            (r#"{"cniVersion":"0.4.0","name":"n","network":"b"}"#, code::INCOMPATIBLE_VERSION, "cniVersion"),
            (r#"{"cniVersion":"2.0.0","name":"n","network":"b"}"#, code::INCOMPATIBLE_VERSION, "cniVersion"),
            (r#"{"name":"n","network":"b"}"#, code::INVALID_NETWORK_CONFIG, "cniVersion"),
            (r#"{"cniVersion":"1.0.0","network":"b"}"#, code::INVALID_NETWORK_CONFIG, "name"),
            (r#"{"cniVersion":"1.0.0","name":"a b","network":"b"}"#, code::INVALID_NETWORK_CONFIG, "name"),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, code::INVALID_NETWORK_CONFIG, "network"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","network":"b"}"#,
                code::INVALID_NETWORK_CONFIG,
                "type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","network":"b","service":"Web!"}"#,
                code::INVALID_NETWORK_CONFIG,
                "service",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","network":"b","ip":"10.0.0"}"#, code::INVALID_NETWORK_CONFIG, "ip"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","network":"b","prevResult":[]}"#,
                code::INVALID_NETWORK_CONFIG,
                "prevResult",
            ),
        ];
        for (text, code, key) in cases {
            let e = NetConf::parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.code, *code, "{text}: {e:?}");
            assert!(e.msg.contains(key), "{text}: {}", e.msg);
        }
    }

    #[test]
    fn error_document_has_the_spec_fields() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "weft is not running").with_details("connect: refused");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":11,"msg":"weft is not running","details":"connect: refused"})
        );
    }

    #[test]
    fn version_answers_the_asked_version_when_supported() {
        let v = version_result(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v, json!({"cniVersion":"1.0.0","supportedVersions":["1.0.0","1.1.0"]}));
        assert_eq!(version_result(b"")["cniVersion"], "1.1.0");
        assert_eq!(version_result(br#"{"cniVersion":"0.3.1"}"#)["cniVersion"], "1.1.0");
    }

    #[test]
    fn attach_params_carry_the_cni_keys() {
        let p = attach_params(&env(ADD_ENV).unwrap(), &NetConf::parse(CONF.as_bytes()).unwrap());
        assert_eq!(
            p,
            json!({"netns":"/var/run/netns/c1","network":"blue","interface":"eth0","container_id":"f00dcafe0123",
                   "name":"web-1.default","service":"web","ip":null})
        );
    }

    #[test]
    fn add_result_matches_the_spec_shape() {
        let conf = NetConf::parse(CONF.as_bytes()).unwrap();
        let result = add_result(&conf, &attachment());
        assert_eq!(
            result,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "wv1a2b3c4d"},
                    {"name": "eth0", "mac": "02:57:c6:13:00:42", "sandbox": "/var/run/netns/c1"}
                ],
                "ips": [{"address": "198.19.0.66/24", "gateway": "198.19.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "198.19.0.1"}],
                "dns": {"nameservers": ["198.19.0.1"], "domain": "weft", "search": ["weft"]}
            })
        );
        // 1.1 adds the interface MTU.
        let conf = NetConf { cni_version: "1.1.0".into(), ..conf };
        assert_eq!(add_result(&conf, &attachment())["interfaces"][1]["mtu"], 1450);
    }

    #[test]
    fn add_result_appends_to_a_previous_result() {
        let mut conf = NetConf::parse(CONF.as_bytes()).unwrap();
        conf.prev_result = Some(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/var/run/netns/c1"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]}
        }));
        let result = add_result(&conf, &attachment());
        assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(result["ips"][1], json!({"address": "198.19.0.66/24", "gateway": "198.19.0.1", "interface": 2}));
        assert_eq!(result["dns"], json!({"nameservers": ["192.0.2.53"]}));
    }

    #[test]
    fn check_compares_env_and_prev_result() {
        let mut conf = NetConf::parse(CONF.as_bytes()).unwrap();
        let e =
            env(&[("CNI_COMMAND", "CHECK")].iter().chain(ADD_ENV.iter().skip(1)).copied().collect::<Vec<_>>()).unwrap();
        assert_eq!(check_attachment(&e, &conf, &attachment()), Ok(()));
        conf.prev_result = Some(add_result(&conf, &attachment()));
        assert_eq!(check_attachment(&e, &conf, &attachment()), Ok(()));

        let mut moved = attachment();
        moved.address = "198.19.0.67/24".into();
        let err = check_attachment(&e, &conf, &moved).unwrap_err();
        assert_eq!(err.code, code::CHECK_FAILED);
        assert!(err.msg.contains("198.19.0.67/24"), "{}", err.msg);
        let mut renamed = attachment();
        renamed.interface = "eth1".into();
        assert_eq!(check_attachment(&e, &conf, &renamed).unwrap_err().code, code::CHECK_FAILED);
    }

    /// Found by the cni fuzz target: a chained prevResult that already lists the interface name in the sandbox made
    /// CHECK compare against that entry and refuse ADD's own result.
    #[test]
    fn check_accepts_add_result_after_a_previous_entry_with_the_same_name() {
        let mut conf = NetConf::parse(CONF.as_bytes()).unwrap();
        let e =
            env(&[("CNI_COMMAND", "CHECK")].iter().chain(ADD_ENV.iter().skip(1)).copied().collect::<Vec<_>>()).unwrap();
        conf.prev_result = Some(json!({
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c1", "mac": "02:00:00:00:00:99"}],
            "ips": [{"address": "197.19.0.2/24", "interface": 0}]
        }));
        conf.prev_result = Some(add_result(&conf, &attachment()));
        assert_eq!(check_attachment(&e, &conf, &attachment()), Ok(()));
        // Our entry's MAC is still checked.
        let mut other_mac = attachment();
        other_mac.mac = "02:57:c6:13:00:43".into();
        let err = check_attachment(&e, &conf, &other_mac).unwrap_err();
        assert!(err.msg.contains("prevResult says 02:57:c6:13:00:42"), "{}", err.msg);
        // And an address listed only for the earlier entry is not ours.
        let mut theirs = attachment();
        theirs.address = "197.19.0.2/24".into();
        theirs.mac = "02:00:00:00:00:99".into();
        assert!(check_attachment(&e, &conf, &theirs).is_ok(), "the earlier entry matches as a whole");
        theirs.mac = attachment().mac;
        assert_eq!(check_attachment(&e, &conf, &theirs).unwrap_err().code, code::CHECK_FAILED);
    }

    #[test]
    fn gc_keeps_valid_and_non_cni_attachments() {
        let mut conf = NetConf::parse(CONF.as_bytes()).unwrap();
        let mut manual = attachment();
        manual.container_id = None;
        let mut other = attachment();
        other.container_id = Some("beef".into());
        let mut elsewhere = attachment();
        elsewhere.network = "red".into();
        let all = [attachment(), manual, other, elsewhere];
        assert_eq!(stale_attachments(&conf, &all), ["f00dcafe0123", "beef"]);
        conf.valid_attachments.insert(("f00dcafe0123".into(), "eth0".into()));
        assert_eq!(stale_attachments(&conf, &all), ["beef"]);
    }
}
