//! Helpers for the tests of encrypted networks (`integration/tests/suite/encrypted.rs`): a lab whose hosts run weft
//! with gossip and one encrypted network, waiting until every pair of hosts has agreed keys, reading pcap files
//! without tshark (to search raw bytes and to pull ESP payloads out for re-sending), injecting hand-made UDP
//! datagrams from a namespace, and moving files and iperf3 streams between containers.
//!
//! ```text
//!   EncryptedLab::up(name, &opts) ─► Lab::up_with (container MTU 1400) ─► lab_pki ─► WeftConfig::with_gossip
//!        + `encrypted = true`, `mtu = 1400`, opts.control lines ─► start_weft on every host
//!        ─► wait_members ─► wait_keys (every host has an epoch with every other host)
//!   read_pcap(file) ─► frames ─► udp4(frame) ─► (addresses, ports, payload)
//!   inject(ns, bind, dst, datagrams) ─► python3 in ns: one socket bound to bind:0, sendto each datagram
//! ```
//!
//! The encrypted overlay MTU on a 1500-byte veth underlay is 1500 - 95 = 1405, and lab.sh gives containers 1450 by
//! default: these labs make the containers' eth0 1400 and configure the network with `mtu = 1400`.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::weft::{counter, lab_pki, peers, query, sha256, start_weft, tcp_listening, wait_exit, wait_members};
use crate::weft::{NodeCert, WeftConfig};
use crate::{exec, exec_stdout, wait_until, Container, Daemon, Lab, LabOptions};

/// The encrypted network's name in these labs.
pub const NET: &str = "blue";
/// Its VNI.
pub const VNI: u32 = 100;
/// UDP port of ESP-in-UDP (`node.esp_port`'s default).
pub const ESP_PORT: u16 = 4500;
/// UDP port of plaintext VXLAN (`node.vxlan_port`'s default).
pub const VXLAN_PORT: u16 = 4789;
/// The containers' MTU and the network's `mtu`: below the 1405 an encrypted network has on a 1500-byte underlay.
pub const OVERLAY_MTU: u32 = 1400;
/// How long the hosts get to list each other as members.
pub const MEMBERS_DEADLINE: Duration = Duration::from_secs(15);
/// How long every pair of hosts gets to agree keys once they are members.
pub const KEYS_DEADLINE: Duration = Duration::from_secs(15);

/// What [`EncryptedLab::up`] makes.
#[derive(Clone, Debug)]
pub struct EncryptedOptions {
    /// Number of hosts.
    pub hosts: usize,
    /// Containers per host.
    pub containers: usize,
    /// The hosts every host joins through.
    pub seeds: Vec<usize>,
    /// Extra `key = value` lines for `[control]` of every host (`rekey_secs = 5`...).
    pub control: Vec<String>,
    /// Hosts that write a keylog (`[control] keylog`) to [`EncryptedLab::keylog`].
    pub keylog: Vec<usize>,
    /// Extra `key = value` lines for `[node]` of host `i`, made from `i` (`metrics = "198.18.0.<i>:9090"`...).
    pub node: Option<fn(usize) -> Vec<String>>,
}

impl EncryptedOptions {
    /// `hosts` hosts with `containers` containers each, host 1 the seed, default keying.
    pub fn new(hosts: usize, containers: usize) -> EncryptedOptions {
        EncryptedOptions { hosts, containers, seeds: vec![1], control: Vec::new(), keylog: Vec::new(), node: None }
    }
}

/// A lab whose hosts run weft with gossip and the encrypted network [`NET`], keys agreed between every pair.
/// Dropping it drops the [`Lab`]: daemons stopped, namespaces deleted.
#[derive(Debug)]
pub struct EncryptedLab {
    /// The lab.
    pub lab: Lab,
    /// Host `i`'s certificate is element `i - 1`.
    pub certs: Vec<NodeCert>,
    /// Host `i`'s daemon is element `i - 1`.
    pub daemons: Vec<Daemon>,
    /// How long, from the last daemon being ready, until all hosts were members of each other.
    pub members_after: Duration,
    /// How long after that until every pair of hosts had agreed keys.
    pub keys_after: Duration,
}

impl EncryptedLab {
    /// Brings up lab `name`, starts weft on every host and waits until every pair of hosts has agreed keys.
    pub fn up(name: &str, options: &EncryptedOptions) -> Result<EncryptedLab> {
        let lab = Lab::up_with(
            name,
            LabOptions {
                hosts: options.hosts,
                containers: options.containers,
                nets: vec![NET.to_owned()],
                mtu: 1500,
                container_mtu: Some(OVERLAY_MTU),
            },
        )?;
        let (_, certs) = lab_pki(&lab)?;
        let mut daemons = Vec::new();
        for i in 1..=options.hosts {
            let mut control = options.control.clone();
            if options.keylog.contains(&i) {
                control.push(format!("keylog = {:?}", keylog_path(&lab, i).display().to_string()));
            }
            let mut config = encrypted_config(&lab, i, &certs[i - 1], &options.seeds, &control)?;
            if let Some(node) = options.node {
                // [node] comes first and ends where the first network starts.
                let lines: String = node(i).iter().map(|l| format!("{l}\n")).collect();
                config = config.replacen("\n[[network]]", &format!("{lines}\n[[network]]"), 1);
            }
            daemons.push(start_weft(&lab, i, &config)?);
        }
        let hosts: Vec<usize> = (1..=options.hosts).collect();
        let members_after = wait_members(&lab, &hosts, MEMBERS_DEADLINE)?;
        let start = Instant::now();
        wait_keys(&lab, &hosts, KEYS_DEADLINE)?;
        let keys_after = start.elapsed();
        eprintln!(
            "lab {name}: {} hosts members after {} ms, keys agreed {} ms later",
            options.hosts,
            members_after.as_millis(),
            keys_after.as_millis()
        );
        Ok(EncryptedLab { lab, certs, daemons, members_after, keys_after })
    }

    /// Container `c` of host `i` on [`NET`].
    pub fn container(&self, i: usize, c: usize) -> Container {
        self.lab.container(i, NET, c)
    }

    /// Where host `i` writes its keylog, if [`EncryptedOptions::keylog`] named it.
    pub fn keylog(&self, i: usize) -> PathBuf {
        keylog_path(&self.lab, i)
    }
}

fn keylog_path(lab: &Lab, i: usize) -> PathBuf {
    lab.dir().join(format!("h{i}.keylog"))
}

/// Host `i`'s config: gossip through `seeds`, network [`NET`] encrypted with `mtu =` [`OVERLAY_MTU`], and the
/// `control` lines added to `[control]`.
pub fn encrypted_config(lab: &Lab, i: usize, cert: &NodeCert, seeds: &[usize], control: &[String]) -> Result<String> {
    encrypted_config_with(lab, i, cert, seeds, control, &[])
}

/// [`encrypted_config`] with `network` lines added to the network's table (`block_prefix = 27`...).
pub fn encrypted_config_with(
    lab: &Lab,
    i: usize,
    cert: &NodeCert,
    seeds: &[usize],
    control: &[String],
    network: &[String],
) -> Result<String> {
    let mut config = WeftConfig::with_gossip(lab, i, &[(NET, VNI)], cert, seeds);
    for net in &mut config.networks {
        // with_gossip may say `encrypted = false` (to keep the other gossip tests' VXLAN visible): replace it.
        net.extra.retain(|line| !line.trim_start().starts_with("encrypted"));
        net.extra.push("encrypted = true".to_owned());
        net.extra.push(format!("mtu = {OVERLAY_MTU}"));
        net.extra.extend(network.iter().cloned());
    }
    let mut text = config.to_toml();
    // WeftConfig writes [control] last, so lines appended here belong to it.
    let last_table = text.lines().rev().find(|line| line.starts_with('[')).unwrap_or_default();
    ensure!(last_table == "[control]", "the config does not end with [control] (it ends in {last_table:?}):\n{text}");
    for line in control {
        text.push_str(line);
        text.push('\n');
    }
    Ok(text)
}

/// The key epochs `weft peers` of host `i` lists: (peer id, epoch).
pub fn epochs(lab: &Lab, i: usize) -> Result<Vec<(String, u64)>> {
    let json = peers(lab, i)?.json;
    let list = json["epochs"].as_array().ok_or_else(|| anyhow!("weft peers on host {i} has no epochs: {json}"))?;
    list.iter()
        .map(|e| {
            let id = e["id"].as_str().ok_or_else(|| anyhow!("epoch without id: {e}"))?;
            let epoch = e["epoch"].as_u64().ok_or_else(|| anyhow!("epoch without epoch: {e}"))?;
            Ok((id.to_owned(), epoch))
        })
        .collect()
}

/// Waits until every host in `hosts` has a key epoch with each of the others.
pub fn wait_keys(lab: &Lab, hosts: &[usize], deadline: Duration) -> Result<()> {
    let mut last = Vec::new();
    wait_until(deadline, &format!("hosts {hosts:?} to agree keys with each other"), || {
        last = hosts.iter().map(|&i| Ok((i, epochs(lab, i)?))).collect::<Result<Vec<_>>>()?;
        Ok(last.iter().all(|(_, e)| e.len() == hosts.len() - 1))
    })
    .with_context(|| format!("epochs last seen: {last:?}"))
}

/// `keying` of `weft peers` on host `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keying {
    /// Rekeys done.
    pub rekeys: u64,
    /// Key exchanges refused.
    pub refused: u64,
    /// Key exchange messages sent again.
    pub retries: u64,
}

/// `keying` of `weft peers` on host `i`.
pub fn keying(lab: &Lab, i: usize) -> Result<Keying> {
    let json = peers(lab, i)?.json;
    let k = &json["keying"];
    let field =
        |name: &str| k[name].as_u64().ok_or_else(|| anyhow!("weft peers on host {i}: no keying.{name}: {json}"));
    Ok(Keying { rekeys: field("rekeys")?, refused: field("refused")?, retries: field("retries")? })
}

/// Every `drops` counter of host `i`'s `weft stats`, by reason.
pub fn drops(lab: &Lab, i: usize) -> Result<Vec<(String, u64)>> {
    drops_of(&query(lab, i, "stats")?)
}

/// Every `drops` counter of a `weft stats` answer, by reason.
pub fn drops_of(stats: &Value) -> Result<Vec<(String, u64)>> {
    let map = stats["drops"].as_object().ok_or_else(|| anyhow!("weft stats has no drops: {stats}"))?;
    map.iter()
        .map(|(reason, n)| Ok((reason.clone(), n.as_u64().ok_or_else(|| anyhow!("drops.{reason} is {n}"))?)))
        .collect()
}

/// The drop reasons whose counters differ between `before` and `after`, with the growth: `[("replay", 5)]`.
pub fn drop_deltas(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, i64)> {
    after
        .iter()
        .filter_map(|(reason, n)| {
            let old = before.iter().find(|(r, _)| r == reason).map_or(0, |(_, n)| *n);
            (old != *n).then(|| (reason.clone(), *n as i64 - old as i64))
        })
        .collect()
}

/// Waits until host `i`'s `stats` counter `path` is at least `target`; returns its value then.
pub fn wait_counter(lab: &Lab, i: usize, path: &str, target: u64, deadline: Duration) -> Result<u64> {
    let mut last = None;
    wait_until(deadline, &format!("host {i}'s {path} to reach {target}"), || {
        let n = counter(&query(lab, i, "stats")?, path)?;
        last = Some(n);
        Ok(n >= target)
    })
    .with_context(|| format!("{path} last seen: {last:?}"))?;
    Ok(last.expect("set when wait_until succeeded"))
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else { return true };
    let mut at = 0;
    while let Some(pos) = haystack[at..].iter().position(|&b| b == first) {
        let start = at + pos;
        if haystack.len() - start <= rest.len() {
            return false;
        }
        if haystack[start + 1..].starts_with(rest) {
            return true;
        }
        at = start + 1;
    }
    false
}

/// The frames of a pcap file (classic libpcap format, either byte order, micro- or nanosecond timestamps) whose
/// link type is Ethernet, as captured (possibly cut to the snap length).
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pcap(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// [`read_pcap`] of bytes in memory.
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    ensure!(bytes.len() >= 24, "{} bytes: too short for a pcap global header", bytes.len());
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file (magic {magic:02x?}; pcapng is not read here)"),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link_type = u32_at(20) & 0x0fff_ffff;
    ensure!(link_type == 1, "link type {link_type}, expected 1 (Ethernet)");
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        ensure!(bytes.len() - at >= 16, "a record header is cut off at byte {at}");
        let len = u32_at(at + 8) as usize;
        at += 16;
        ensure!(bytes.len() - at >= len, "record {} of {len} bytes is cut off at byte {at}", frames.len() + 1);
        frames.push(bytes[at..at + len].to_vec());
        at += len;
    }
    Ok(frames)
}

/// A UDP datagram over IPv4 inside an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp4 {
    /// Outer IPv4 source.
    pub src: Ipv4Addr,
    /// Outer IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// The UDP datagram an Ethernet frame carries over IPv4 (no VLAN tag, not a fragment), if it is one.
pub fn udp4(frame: &[u8]) -> Option<Udp4> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ip[0] >> 4 != 4 || header_len < 20 || ip[9] != 17 || fragment != 0 || total_len > ip.len() {
        return None;
    }
    let udp = &ip[header_len..total_len];
    if udp.len() < 8 || usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() {
        return None;
    }
    Some(Udp4 {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..].to_vec(),
    })
}

/// An ESP packet's SPI, sequence number (low 32 bits) and IV, as weft sends them (RFC 4303 §2, RFC 4106 §3).
pub fn esp_header(packet: &[u8]) -> Option<(u32, u32, u64)> {
    if packet.len() < 16 {
        return None;
    }
    let spi = u32::from_be_bytes(packet[0..4].try_into().ok()?);
    let seq = u32::from_be_bytes(packet[4..8].try_into().ok()?);
    let iv = u64::from_be_bytes(packet[8..16].try_into().ok()?);
    Some((spi, seq, iv))
}

/// `n` bytes from /dev/urandom.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; n];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(buf)
}

/// Sends each of `datagrams` (destination port, payload) from namespace `ns` to `dst`, over one UDP socket bound
/// to `bind` with an ephemeral port, with Python's socket module; returns once all were sent.
pub fn inject(lab: &Lab, ns: &str, bind: IpAddr, dst: IpAddr, datagrams: &[(u16, Vec<u8>)]) -> Result<()> {
    const SCRIPT: &str = "import socket, sys\n\
        bind, dst, path = sys.argv[1], sys.argv[2], sys.argv[3]\n\
        s = socket.socket(socket.AF_INET6 if ':' in bind else socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.bind((bind, 0))\n\
        n = 0\n\
        for line in open(path):\n\
        \x20   port, data = line.split()\n\
        \x20   s.sendto(bytes.fromhex(data), (dst, int(port)))\n\
        \x20   n += 1\n\
        print(n)\n";
    static BATCH: AtomicUsize = AtomicUsize::new(0);
    let file = lab.dir().join(format!("inject-{}.txt", BATCH.fetch_add(1, Ordering::Relaxed)));
    let mut text = String::new();
    for (port, payload) in datagrams {
        text.push_str(&port.to_string());
        text.push(' ');
        for b in payload {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
    }
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let (bind, dst, path) = (bind.to_string(), dst.to_string(), file.display().to_string());
    let out = exec_stdout(ns, &["python3", "-c", SCRIPT, &bind, &dst, &path]).context("running the injector")?;
    ensure!(
        out.trim() == datagrams.len().to_string(),
        "the injector sent {:?} datagrams, expected {}",
        out.trim(),
        datagrams.len()
    );
    Ok(())
}

/// A random u64.
pub fn rand_u64() -> Result<u64> {
    Ok(u64::from_le_bytes(random_bytes(8)?.try_into().expect("8 bytes")))
}

/// Starts `tcpdump -B buffer_kib -w pcap filter` on `iface` in `ns` as a process of the lab (stopped with the lab,
/// or by [`Daemon::stop`], which leaves the file complete), and returns once it listens. For captures of bulk
/// traffic: [`crate::Capture`] uses tcpdump's default 2 MiB buffer, which drops packets at a few hundred Mbit/s.
pub fn start_bulk_capture(
    lab: &Lab,
    ns: &str,
    iface: &str,
    filter: &str,
    pcap: &Path,
    buffer_kib: u32,
) -> Result<Daemon> {
    let (buffer, pcap_s) = (buffer_kib.to_string(), pcap.display().to_string());
    let mut args =
        vec!["tcpdump", "--immediate-mode", "-U", "-n", "-Z", "root", "-B", &buffer, "-i", iface, "-w", &pcap_s];
    args.extend(filter.split_whitespace());
    let tcpdump = lab.spawn(ns, &args)?;
    let mut exited = None;
    wait_until(Duration::from_secs(10), &format!("tcpdump on {ns}/{iface} to start"), || {
        if let Some(status) = tcpdump.exit_status()? {
            exited = Some(status);
            return Ok(true);
        }
        Ok(tcpdump.log().contains("listening on"))
    })?;
    if let Some(status) = exited {
        bail!("tcpdump on {ns}/{iface} exited ({status}): {}", tcpdump.log().trim_end());
    }
    Ok(tcpdump)
}

/// Writes `size` bytes to `path`: random bytes, with `marker` repeated 16 times at the start of every 4 KiB, so the
/// marker is in every TCP segment that carries the file.
pub fn marked_random_file(path: &Path, size: usize, marker: &[u8]) -> Result<()> {
    let mut data = random_bytes(size)?;
    let block: Vec<u8> = marker.iter().copied().cycle().take(marker.len() * 16).collect();
    for chunk in data.chunks_mut(4096) {
        let n = block.len().min(chunk.len());
        chunk[..n].copy_from_slice(&block[..n]);
    }
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))
}

/// Sends `file` over TCP (socat) from container `from` to `to`'s `addr`, port 5001, within `timeout`, and checks
/// that what arrives has the same size and sha256. Returns how long it took.
pub fn transfer(
    lab: &Lab,
    from: &Container,
    to: &Container,
    addr: IpAddr,
    file: &Path,
    timeout: Duration,
) -> Result<Duration> {
    const PORT: u16 = 5001;
    let size = std::fs::metadata(file)?.len();
    let expected = sha256(file)?;
    let out = lab.dir().join(format!("received-by-{}.bin", to.ns));
    let listen = match addr {
        IpAddr::V4(_) => format!("TCP4-LISTEN:{PORT},reuseaddr"),
        IpAddr::V6(_) => format!("TCP6-LISTEN:{PORT},reuseaddr"),
    };
    let create = format!("CREATE:{}", out.display());
    let receiver = lab.spawn(&to.ns, &["socat", "-u", &listen, &create])?;
    wait_until(Duration::from_secs(5), "socat to listen", || tcp_listening(&to.ns, PORT))?;

    let start = Instant::now();
    let open = format!("OPEN:{}", file.display());
    let connect = match addr {
        IpAddr::V4(a) => format!("TCP4:{a}:{PORT}"),
        IpAddr::V6(a) => format!("TCP6:[{a}]:{PORT}"),
    };
    let limit = timeout.as_secs().to_string();
    exec_stdout(&from.ns, &["timeout", &limit, "socat", "-u", &open, &connect])
        .with_context(|| format!("sending {} from {} to {}", file.display(), from.ns, to.ns))?;
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
    let (status, log) = wait_exit(&receiver, left)?;
    ensure!(status.success(), "receiving socat in {} failed ({status}): {log}", to.ns);
    let elapsed = start.elapsed();

    let got_size = std::fs::metadata(&out)?.len();
    ensure!(got_size == size, "{} -> {}: {got_size} of {size} bytes arrived", from.ns, to.ns);
    let got = sha256(&out)?;
    ensure!(got == expected, "{} -> {}: sha256 {got}, sent {expected}", from.ns, to.ns);
    std::fs::remove_file(&out)?;
    eprintln!(
        "{} -> {} ({addr}): {size} bytes in {elapsed:.2?}, {:.0} Mbit/s, sha256 equal",
        from.ns,
        to.ns,
        size as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    Ok(elapsed)
}

/// Pings `addr` from `from_ns` `count` times, 0.2 s apart, with `size` data bytes filled with `pattern` (ping -p:
/// at most 16 bytes); every ping must be answered.
pub fn ping_pattern(from_ns: &str, addr: IpAddr, count: u32, size: u32, pattern: &[u8]) -> Result<()> {
    ensure!((1..=16).contains(&pattern.len()), "ping -p takes 1 to 16 bytes");
    let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let (count_s, size_s, addr_s) = (count.to_string(), size.to_string(), addr.to_string());
    let args = ["ping", family, "-n", "-q", "-c", &count_s, "-s", &size_s, "-p", &hex, "-i", "0.2", "-W", "1", &addr_s];
    let output = exec(from_ns, &args)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.contains(&format!("{count} received")),
        "[{from_ns}] {} ({}): {}{}",
        args.join(" "),
        output.status,
        stdout.trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(())
}

/// Runs `iperf3 -c addr -t secs --json` in `from` against an `iperf3 -s -1` started in `to`; returns iperf3's JSON
/// report, after checking it carries no error.
pub fn iperf3(lab: &Lab, from: &Container, to: &Container, addr: IpAddr, secs: u64) -> Result<Value> {
    const PORT: u16 = 5201;
    let port = PORT.to_string();
    let server = lab.spawn(&to.ns, &["iperf3", "-s", "-1", "-p", &port])?;
    wait_until(Duration::from_secs(5), "iperf3 -s to listen", || tcp_listening(&to.ns, PORT))?;
    let limit = (secs + 30).to_string();
    let (addr_s, secs_s) = (addr.to_string(), secs.to_string());
    let output = exec(&from.ns, &["timeout", &limit, "iperf3", "-c", &addr_s, "-p", &port, "-t", &secs_s, "--json"])?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3 -c {addr} printed no JSON ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim_end(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        )
    })?;
    if let Some(error) = report.get("error") {
        bail!("iperf3 -c {addr} reported an error: {error}; server log:\n{}", server.log());
    }
    ensure!(output.status.success(), "iperf3 -c {addr} exited with {}: {report}", output.status);
    let (status, log) = wait_exit(&server, Duration::from_secs(10))?;
    ensure!(status.success(), "iperf3 -s in {} ended with {status}: {log}", to.ns);
    Ok(report)
}

/// The rows of a keylog file (one Wireshark `esp_sa` UAT row per line).
pub fn keylog_rows(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the keylog {}", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect())
}
