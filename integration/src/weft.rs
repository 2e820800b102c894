//! Helpers for the tests that run weft in a [`Lab`]: config text, starting a daemon and waiting until it serves its
//! API, and reading `weft stats` / `weft fdb` / `weft peers` / `ip link` / `ip neigh` as values to assert on.
//!
//! ```text
//!   WeftConfig::for_host(lab, i, &[("blue", 100)]) ─► TOML ─► start_weft ─► Lab::spawn_weft + wait for the API
//!   query(lab, i, "stats") ─► `weft stats --socket <lab dir>/h<i>.sock --json` ─► serde_json::Value
//!
//!   gossip:  lab_pki(lab) ─► `weft ca init` + `weft ca issue` per host ─► NodeCert (cert, key, ca, node id)
//!            WeftConfig::with_gossip(lab, i, nets, &certs[i - 1], &[1, 2]) ─► no static peers, [control] with seeds
//!            peers(lab, i), wait_members, wait_gossip_fdb ─► membership and gossiped FDB entries
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::{exec, exec_stdout, ping, ping_until, wait_until, weft_bin, Container, Daemon, Lab};

/// How long a daemon gets from spawn to answering on its API socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[network]]` of a weft config.
#[derive(Clone, Debug)]
pub struct WeftNet {
    /// `name`.
    pub name: String,
    /// `vni`.
    pub vni: u32,
    /// `subnet`.
    pub subnet: String,
    /// `bridge`; `None` leaves it out (weft then uses `weft-<name>`).
    pub bridge: Option<String>,
    /// `peers`.
    pub peers: Vec<IpAddr>,
    /// Extra `key = value` lines for the table, as written.
    pub extra: Vec<String>,
}

/// A whole weft config.
#[derive(Clone, Debug)]
pub struct WeftConfig {
    /// `node.name`.
    pub name: String,
    /// `node.underlay`.
    pub underlay: IpAddr,
    /// `node.api_socket`.
    pub api_socket: String,
    /// Extra `key = value` lines for `[node]`, as written.
    pub node_extra: Vec<String>,
    /// The networks.
    pub networks: Vec<WeftNet>,
    /// `[control]`; `None` leaves it out (no gossip).
    pub control: Option<WeftControl>,
}

/// The `[control]` section of a weft config: gossip over QUIC with mutual TLS.
#[derive(Clone, Debug)]
pub struct WeftControl {
    /// `ca`: the cluster CA certificate.
    pub ca: PathBuf,
    /// `cert`: this node's certificate.
    pub cert: PathBuf,
    /// `key`: this node's private key.
    pub key: PathBuf,
    /// `seeds`: control addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// `listen`; `None` leaves it out (weft then listens on the underlay address, port [`CONTROL_PORT`]).
    pub listen: Option<SocketAddr>,
}

impl WeftConfig {
    /// The usual config of lab host `i`: for each `(net, vni)`, the lab's bridge `br-<net>`, the lab's subnet of that
    /// net, and every other host of the lab as a static peer.
    pub fn for_host(lab: &Lab, i: usize, nets: &[(&str, u32)]) -> WeftConfig {
        let others: Vec<IpAddr> =
            (1..=lab.options().hosts).filter(|&j| j != i).map(|j| IpAddr::V4(lab.host(j).underlay)).collect();
        WeftConfig {
            name: format!("h{i}"),
            underlay: IpAddr::V4(lab.host(i).underlay),
            api_socket: lab.api_socket(i).display().to_string(),
            node_extra: Vec::new(),
            networks: nets
                .iter()
                .map(|&(net, vni)| WeftNet {
                    name: net.to_owned(),
                    vni,
                    subnet: format!("198.19.{}.0/24", lab.net_index(net)),
                    bridge: Some(format!("br-{net}")),
                    peers: others.clone(),
                    extra: Vec::new(),
                })
                .collect(),
            control: None,
        }
    }

    /// Lab host `i` with gossip and no static peers: for each `(net, vni)` the lab's bridge and subnet as in
    /// [`WeftConfig::for_host`], and a `[control]` section with `node`'s certificate and the control addresses of
    /// the lab hosts `seeds` as seeds.
    /// The networks stay plaintext (`encrypted = false`), so tests can see the VXLAN on the underlay; the
    /// encrypted tests set it themselves.
    pub fn with_gossip(lab: &Lab, i: usize, nets: &[(&str, u32)], node: &NodeCert, seeds: &[usize]) -> WeftConfig {
        let mut config = WeftConfig::for_host(lab, i, nets);
        for net in &mut config.networks {
            net.peers.clear();
            net.extra.push("encrypted = false".into());
        }
        config.control = Some(WeftControl {
            ca: node.ca.clone(),
            cert: node.cert.clone(),
            key: node.key.clone(),
            seeds: seeds.iter().map(|&j| control_addr(lab, j)).collect(),
            listen: None,
        });
        config
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[node]\nname = {:?}\nunderlay = \"{}\"\napi_socket = {:?}",
            self.name, self.underlay, self.api_socket
        );
        for line in &self.node_extra {
            let _ = writeln!(t, "{line}");
        }
        for net in &self.networks {
            let _ = writeln!(t, "\n[[network]]\nname = {:?}\nvni = {}\nsubnet = {:?}", net.name, net.vni, net.subnet);
            if let Some(bridge) = &net.bridge {
                let _ = writeln!(t, "bridge = {bridge:?}");
            }
            let peers: Vec<String> = net.peers.iter().map(|p| format!("\"{p}\"")).collect();
            let _ = writeln!(t, "peers = [{}]", peers.join(", "));
            for line in &net.extra {
                let _ = writeln!(t, "{line}");
            }
        }
        if let Some(control) = &self.control {
            let _ = writeln!(
                t,
                "\n[control]\nca = {:?}\ncert = {:?}\nkey = {:?}",
                control.ca.display().to_string(),
                control.cert.display().to_string(),
                control.key.display().to_string()
            );
            let seeds: Vec<String> = control.seeds.iter().map(|s| format!("\"{s}\"")).collect();
            let _ = writeln!(t, "seeds = [{}]", seeds.join(", "));
            if let Some(listen) = control.listen {
                let _ = writeln!(t, "listen = \"{listen}\"");
            }
        }
        t
    }
}

/// Starts weft on host `i` with `config` and waits until its API (at `lab.api_socket(i)`) answers `stats`. Fails
/// at once, with the log, if the daemon exits meanwhile.
pub fn start_weft(lab: &Lab, i: usize, config: &str) -> Result<Daemon> {
    let daemon = lab.spawn_weft(i, config)?;
    wait_ready(lab, i, &daemon)?;
    Ok(daemon)
}

/// Waits until `daemon` (weft on host `i`) answers `stats` on its API socket.
pub fn wait_ready(lab: &Lab, i: usize, daemon: &Daemon) -> Result<()> {
    let socket = lab.api_socket(i);
    let mut exited = None;
    wait_until(READY_TIMEOUT, &format!("weft on host {i} to serve its API"), || {
        if let Some(status) = daemon.exit_status()? {
            exited = Some(status);
            return Ok(true);
        }
        Ok(query_socket(&socket, "stats").is_ok())
    })?;
    if let Some(status) = exited {
        bail!("weft on host {i} exited ({status}) before it was ready; log:\n{}", daemon.log());
    }
    Ok(())
}

/// `weft <method> --socket <socket> --json`, parsed.
pub fn query_socket(socket: &Path, method: &str) -> Result<Value> {
    weft_json(socket, &[method])
}

/// `weft <args...> --socket <socket> --json`, parsed; an error carries weft's message.
pub fn weft_json(socket: &Path, args: &[&str]) -> Result<Value> {
    let output = Command::new(weft_bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .context("cannot run weft")?;
    let what = args.join(" ");
    if !output.status.success() {
        bail!("weft {what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("weft {what} printed no JSON"))
}

/// `weft <method>` of the daemon on host `i` (at `lab.api_socket(i)`).
pub fn query(lab: &Lab, i: usize, method: &str) -> Result<Value> {
    query_socket(&lab.api_socket(i), method)
}

/// A counter of `weft stats`: `"tx_unicast"`, or `"drops.unknown_vni"` for a drop reason.
pub fn counter(stats: &Value, path: &str) -> Result<u64> {
    let mut value = stats;
    for part in path.split('.') {
        value = value.get(part).ok_or_else(|| anyhow!("weft stats has no {path}: {stats}"))?;
    }
    value.as_u64().ok_or_else(|| anyhow!("weft stats {path} is not a count: {value}"))
}

/// One row of `weft fdb`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbRow {
    /// The VNI.
    pub vni: u64,
    /// The inner MAC, lower case.
    pub mac: String,
    /// The VTEP address.
    pub vtep: String,
    /// `static`, `gossip` or `learned`.
    pub origin: String,
}

/// `weft fdb` of host `i`.
pub fn fdb(lab: &Lab, i: usize) -> Result<Vec<FdbRow>> {
    let value = query(lab, i, "fdb")?;
    let rows = value["fdb"].as_array().ok_or_else(|| anyhow!("weft fdb has no \"fdb\" array: {value}"))?;
    rows.iter()
        .map(|row| {
            let text =
                |key: &str| row[key].as_str().map(str::to_owned).ok_or_else(|| anyhow!("fdb row without {key}: {row}"));
            Ok(FdbRow {
                vni: row["vni"].as_u64().ok_or_else(|| anyhow!("fdb row without vni: {row}"))?,
                mac: text("mac")?.to_ascii_lowercase(),
                vtep: text("vtep")?,
                origin: text("origin")?,
            })
        })
        .collect()
}

/// What `ip link` says about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The MTU.
    pub mtu: u32,
    /// The bridge it is a port of, if any.
    pub master: Option<String>,
    /// `ifalias`, if set.
    pub alias: Option<String>,
    /// Its kind (`tun`, `bridge`, `veth`...), from `ip -d`.
    pub kind: Option<String>,
    /// Its MAC address, lower case.
    pub mac: String,
}

/// `ip -d -j link show dev <name>` in `ns`; `None` if there is no such interface.
pub fn link_info(ns: &str, name: &str) -> Result<Option<LinkInfo>> {
    let output = exec(ns, &["ip", "-d", "-j", "link", "show", "dev", name])?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("does not exist") {
            return Ok(None);
        }
        bail!("[{ns}] ip link show {name} failed: {}", stderr.trim_end());
    }
    let links: Value = serde_json::from_slice(&output.stdout).context("ip -j link printed no JSON")?;
    let link = &links[0];
    Ok(Some(LinkInfo {
        mtu: link["mtu"].as_u64().ok_or_else(|| anyhow!("no mtu in {link}"))? as u32,
        master: link["master"].as_str().map(str::to_owned),
        alias: link["ifalias"].as_str().map(str::to_owned),
        kind: link["linkinfo"]["info_kind"].as_str().map(str::to_owned),
        mac: link["address"].as_str().unwrap_or_default().to_ascii_lowercase(),
    }))
}

/// The MAC `ip neigh` in `ns` has for `addr`, if it has an entry with one (any state but FAILED/INCOMPLETE).
pub fn neighbour_mac(ns: &str, addr: IpAddr) -> Result<Option<String>> {
    let out = exec_stdout(ns, &["ip", "-j", "neigh", "show", "to", &addr.to_string()])?;
    let entries: Value = serde_json::from_str(&out).context("ip -j neigh printed no JSON")?;
    Ok(entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok()) == Some(addr))
        .find_map(|e| e["lladdr"].as_str().map(str::to_ascii_lowercase)))
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> Result<String> {
    let output = Command::new("sha256sum").arg(path).stdin(Stdio::null()).output().context("cannot run sha256sum")?;
    if !output.status.success() {
        bail!("sha256sum {} failed: {}", path.display(), String::from_utf8_lossy(&output.stderr).trim_end());
    }
    let out = String::from_utf8_lossy(&output.stdout);
    out.split_whitespace().next().map(str::to_owned).ok_or_else(|| anyhow!("sha256sum printed nothing"))
}

/// Whether something in `ns` listens on TCP `port` (`ss -Htln`).
pub fn tcp_listening(ns: &str, port: u16) -> Result<bool> {
    let out = exec_stdout(ns, &["ss", "-Htln", &format!("sport = :{port}")])?;
    Ok(!out.trim().is_empty())
}

/// Waits until `daemon` exits, up to `deadline`, and returns its log with the exit status.
pub fn wait_exit(daemon: &Daemon, deadline: Duration) -> Result<(std::process::ExitStatus, String)> {
    let mut status = None;
    wait_until(deadline, "the process to exit", || {
        status = daemon.exit_status()?;
        Ok(status.is_some())
    })
    .with_context(|| format!("log so far:\n{}", daemon.log()))?;
    Ok((status.expect("set when wait_until succeeded"), daemon.log()))
}

/// The control-plane port weft listens on unless `[control] listen` says otherwise.
pub const CONTROL_PORT: u16 = 7946;

/// Lab host `i`'s default control address, `198.18.0.<i>:7946`.
pub fn control_addr(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab.host(i).underlay), CONTROL_PORT)
}

/// A cluster CA made by `weft ca init`.
#[derive(Clone, Debug)]
pub struct Ca {
    /// The directory holding `ca.crt` and `ca.key`.
    pub dir: PathBuf,
}

/// A node certificate made by `weft ca issue`, with the CA certificate it chains to.
#[derive(Clone, Debug)]
pub struct NodeCert {
    /// The node name (CN and DNS SAN).
    pub name: String,
    /// The node id `weft ca issue` printed: 32 hex digits.
    pub id: String,
    /// `NAME.crt`.
    pub cert: PathBuf,
    /// `NAME.key` (mode 0600).
    pub key: PathBuf,
    /// The issuing CA's `ca.crt`.
    pub ca: PathBuf,
}

/// Runs `weft args...` (a CA or other offline command, outside any namespace) and returns its stdout.
fn weft_offline(args: &[&std::ffi::OsStr]) -> Result<String> {
    let output = Command::new(weft_bin()).args(args).stdin(Stdio::null()).output().context("cannot run weft")?;
    let line = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    if !output.status.success() {
        bail!("`weft {line}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Ca {
    /// `weft ca init --dir DIR --name NAME`.
    pub fn init(dir: &Path, name: &str) -> Result<Ca> {
        weft_offline(&[
            "ca".as_ref(),
            "init".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--name".as_ref(),
            name.as_ref(),
        ])?;
        Ok(Ca { dir: dir.to_path_buf() })
    }

    /// The CA certificate, `DIR/ca.crt`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `weft ca issue --dir DIR --node NODE --out OUT`; the id is read from what it prints (`node id <hex>, ...`).
    pub fn issue(&self, node: &str, out: &Path) -> Result<NodeCert> {
        let args = ["ca", "issue", "--dir"]
            .map(std::ffi::OsStr::new)
            .into_iter()
            .chain([self.dir.as_os_str()])
            .chain(["--node".as_ref(), node.as_ref(), "--out".as_ref(), out.as_os_str()]);
        let stdout = weft_offline(&args.collect::<Vec<_>>())?;
        let id = stdout
            .split_whitespace()
            .skip_while(|word| *word != "id")
            .nth(1)
            .map(|id| id.trim_end_matches(',').to_owned())
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow!("weft ca issue printed no node id: {stdout}"))?;
        Ok(NodeCert {
            name: node.to_owned(),
            id,
            cert: out.join(format!("{node}.crt")),
            key: out.join(format!("{node}.key")),
            ca: self.cert(),
        })
    }
}

/// Makes the lab's cluster CA in `<lab dir>/ca` and issues a certificate for each host, named `h<i>`, into
/// `<lab dir>/nodes`. Element `i - 1` is host `i`'s.
pub fn lab_pki(lab: &Lab) -> Result<(Ca, Vec<NodeCert>)> {
    let ca = Ca::init(&lab.dir().join("ca"), lab.name())?;
    let out = lab.dir().join("nodes");
    let nodes = (1..=lab.options().hosts).map(|i| ca.issue(&format!("h{i}"), &out)).collect::<Result<_>>()?;
    Ok((ca, nodes))
}

/// One member as `weft peers` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node id (hex).
    pub id: String,
    /// Its configured name.
    pub name: String,
    /// Its control address.
    pub addr: String,
    /// Its VTEP.
    pub vtep: String,
}

/// What `weft peers` says.
#[derive(Clone, Debug)]
pub struct Peers {
    /// This node's id (hex).
    pub id: String,
    /// The live members (suspects included), this node excluded.
    pub members: Vec<Member>,
    /// Digest of the visible record table: equal on hosts that agree.
    pub table_digest: String,
    /// The whole answer, for messages and other counters.
    pub json: Value,
}

impl Peers {
    /// The members' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        names.sort();
        names
    }

    /// A `gossip` counter: `"rejected"`, `"malformed"`...
    pub fn gossip(&self, counter: &str) -> Result<u64> {
        self.json["gossip"][counter]
            .as_u64()
            .ok_or_else(|| anyhow!("weft peers has no gossip.{counter}: {}", self.json))
    }
}

/// `weft peers` of host `i`; an error if its control plane is off.
pub fn peers(lab: &Lab, i: usize) -> Result<Peers> {
    let json = query(lab, i, "peers")?;
    if json["control"] != Value::Bool(true) {
        bail!("weft peers on host {i}: the control plane is off: {json}");
    }
    let text = |v: &Value, key: &str| {
        v[key].as_str().map(str::to_owned).ok_or_else(|| anyhow!("weft peers on host {i}: no {key} in {v}"))
    };
    let members = json["members"]
        .as_array()
        .ok_or_else(|| anyhow!("weft peers on host {i} has no members array: {json}"))?
        .iter()
        .map(|m| {
            Ok(Member {
                id: text(m, "id")?,
                name: text(m, "name")?,
                addr: m["addr"].to_string().trim_matches('"').to_owned(),
                vtep: m["vtep"].to_string().trim_matches('"').to_owned(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Peers { id: text(&json, "id")?, members, table_digest: text(&json, "table_digest")?, json })
}

/// The names `h<j>` of the lab hosts in `hosts` other than `i`, sorted: what host `i`'s `weft peers` lists when
/// exactly `hosts` are up.
pub fn other_names(hosts: &[usize], i: usize) -> Vec<String> {
    let mut names: Vec<String> = hosts.iter().filter(|&&j| j != i).map(|j| format!("h{j}")).collect();
    names.sort();
    names
}

/// Waits until every host in `hosts` lists exactly the other hosts in `hosts` as members; returns how long it took.
pub fn wait_members(lab: &Lab, hosts: &[usize], deadline: Duration) -> Result<Duration> {
    let start = std::time::Instant::now();
    let mut last = Vec::new();
    wait_until(deadline, &format!("hosts {hosts:?} to list each other as members"), || {
        last = hosts.iter().map(|&i| Ok((i, peers(lab, i)?.names()))).collect::<Result<Vec<_>>>()?;
        Ok(last.iter().all(|(i, names)| *names == other_names(hosts, *i)))
    })
    .with_context(|| format!("members last seen: {last:?}"))?;
    Ok(start.elapsed())
}

/// Waits until the `weft fdb` of every host in `hosts` has `mac` on `vni` from gossip, pointing at host `owner`'s
/// VTEP.
pub fn wait_gossip_fdb(
    lab: &Lab,
    hosts: &[usize],
    vni: u32,
    mac: &str,
    owner: usize,
    deadline: Duration,
) -> Result<()> {
    let vtep = lab.host(owner).underlay.to_string();
    let mut last = Vec::new();
    wait_until(deadline, &format!("hosts {hosts:?} to have {mac} behind {vtep} from gossip"), || {
        last.clear();
        for &i in hosts {
            let rows = fdb(lab, i)?;
            let row = rows.iter().find(|row| row.vni == u64::from(vni) && row.mac == mac).cloned();
            last.push((i, row));
        }
        Ok(last.iter().all(|(_, row)| row.as_ref().is_some_and(|r| r.origin == "gossip" && r.vtep == vtep)))
    })
    .with_context(|| format!("fdb rows last seen: {last:?}"))
}

/// Pings every container in `containers` from every other one, one thread per source: for each target and each
/// address in `families` (`true` for IPv4, `false` for IPv6), first until one ping is answered (within
/// `first_deadline`), then `count` more pings that must all be answered (`count` 0: only the first).
pub fn ping_mesh(containers: &[Container], families: &[bool], first_deadline: Duration, count: u32) -> Result<()> {
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = containers
            .iter()
            .map(|from| {
                scope.spawn(move || -> Result<()> {
                    for to in containers.iter().filter(|to| to.ns != from.ns) {
                        for &v4 in families {
                            let addr = if v4 { IpAddr::V4(to.ipv4) } else { IpAddr::V6(to.ipv6) };
                            ping_until(&from.ns, addr, first_deadline)?;
                            if count > 0 {
                                ping(&from.ns, addr, count)?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("ping thread panicked")?;
        }
        Ok(())
    })
}

/// Checks `f` every ~50 ms for `period`: the first time it is `Ok(false)` or an error, that is the error, naming
/// `what`. For properties that must hold throughout a window ("host 3 is never listed"), not for waiting.
pub fn holds_for(period: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match f() {
            Ok(true) => {}
            Ok(false) => bail!("{what} stopped holding after {:?}", start.elapsed()),
            Err(e) => return Err(e.context(format!("{what}: check failed after {:?}", start.elapsed()))),
        }
        if start.elapsed() >= period {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file of `bytes` random bytes in the lab's directory.
pub fn random_file(lab: &Lab, name: &str, bytes: u64) -> Result<PathBuf> {
    let file = lab.dir().join(name);
    let random = std::fs::File::create(&file)?;
    let status = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdin(Stdio::null())
        .stdout(random)
        .status()
        .context("running head")?;
    ensure!(status.success(), "head -c /dev/urandom failed: {status}");
    Ok(file)
}
