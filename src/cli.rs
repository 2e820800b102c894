//! Command-line client of the daemon's API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::io::capture::CapturedFrame;

/// Sends one request to the daemon listening on `socket` and returns its answer.
pub fn request(socket: &Path, method: &str) -> anyhow::Result<Value> {
    request_with(socket, method, Value::Null)
}

/// Sends one request with `params` (unless null) and returns the answer.
pub fn request_with(socket: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    Ok(call(socket, method, params)?)
}

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nothing listens on the socket (no daemon, or another config's socket).
    #[error("cannot reach weft at {} (is `weft run` running with this config?): {source}", socket.display())]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// What connect said.
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("weft: {0}")]
    Refused(String),
    /// The exchange broke off, or the answer was not JSON.
    #[error("talking to weft at {}: {source}", socket.display())]
    Exchange {
        /// The socket path.
        socket: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Sends one request with `params` (unless null); the daemon's `{"error"}` answer is [`RequestError::Refused`].
pub fn call(socket: &Path, method: &str, params: Value) -> Result<Value, RequestError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| RequestError::Unreachable { socket: socket.to_path_buf(), source })?;
    let exchange = |source| RequestError::Exchange { socket: socket.to_path_buf(), source };
    // attach may wait for an address block claim to settle (seconds).
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(exchange)?;
    let request =
        if params.is_null() { json!({ "method": method }) } else { json!({ "method": method, "params": params }) };
    let mut line = serde_json::to_vec(&request).map_err(|e| exchange(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(exchange)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(exchange)?;
    let value: Value = serde_json::from_str(&answer).map_err(|e| exchange(e.into()))?;
    if let Some(e) = value.get("error").and_then(Value::as_str) {
        return Err(RequestError::Refused(e.to_string()));
    }
    Ok(value)
}

/// Human-readable rendering of `stats`.
pub fn print_stats(v: &Value) {
    for (key, value) in v.as_object().into_iter().flatten().filter(|(_, v)| v.is_number()) {
        println!("{key:<20} {value}");
    }
    for (reason, count) in v["drops"].as_object().into_iter().flatten() {
        println!("drop.{reason:<15} {count}");
    }
}

/// Human-readable rendering of `fdb`.
pub fn print_fdb(v: &Value) {
    println!("{:<9} {:<18} {:<40} ORIGIN", "VNI", "MAC", "VTEP");
    for row in v["fdb"].as_array().into_iter().flatten() {
        println!(
            "{:<9} {:<18} {:<40} {}",
            row["vni"].as_u64().unwrap_or(0),
            row["mac"].as_str().unwrap_or("?"),
            row["vtep"].as_str().unwrap_or("?"),
            row["origin"].as_str().unwrap_or("?")
        );
    }
}

/// Human-readable rendering of `peers`: one row per member (or per VTEP without a control plane).
pub fn print_peers(v: &Value) {
    let str_of = |row: &Value, key: &str| row[key].as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let num = |row: &Value, key: &str| row[key].as_u64().unwrap_or(0);
    let traffic = |row: &Value| {
        format!(
            "{:>10} {:>12} {:>10} {:>12}",
            num(row, "tx_packets"),
            human_bytes(num(row, "tx_bytes")),
            num(row, "rx_packets"),
            human_bytes(num(row, "rx_bytes"))
        )
    };
    let header = format!("{:>10} {:>12} {:>10} {:>12}", "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES");
    if v["control"] != Value::Bool(true) {
        println!("no control plane configured (static peers only)");
        println!("{:<40} {header}", "VTEP");
        for row in v["vteps"].as_array().into_iter().flatten() {
            println!("{:<40} {}", str_of(row, "vtep"), traffic(row));
        }
        return;
    }
    println!(
        "node {}  table digest {}  convergence lag {} ms",
        str_of(v, "id"),
        str_of(v, "table_digest"),
        num(v, "convergence_lag_ms")
    );
    println!(
        "{:<12} {:<16} {:<8} {:>8} {:>9} {:>6} {:>8} {header}",
        "NAME", "VTEP", "STATE", "RTT", "CLOCK", "EPOCH", "SA AGE"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let rtt = m["rtt_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.2}ms"));
        let clock = m["clock_offset_ms"].as_i64().map_or("-".into(), |ms| format!("{ms:+}ms"));
        let (epoch, age) = match m["sa"].as_object() {
            Some(sa) => (sa["epoch"].to_string(), format!("{}s", sa["age_secs"])),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<12} {:<16} {:<8} {:>8} {:>9} {:>6} {:>8} {}",
            str_of(m, "name"),
            str_of(m, "vtep"),
            str_of(m, "state"),
            rtt,
            clock,
            epoch,
            age,
            traffic(m)
        );
    }
}

/// Human-readable rendering of `status`.
pub fn print_status(v: &Value) {
    println!("node      {}", v["node"].as_str().unwrap_or("?"));
    println!("underlay  {}", v["underlay"].as_str().unwrap_or("?"));
    println!("version   {}", v["version"].as_str().unwrap_or("?"));
    println!("uptime    {}s", v["uptime_secs"].as_u64().unwrap_or(0));
    println!("control   {}", if v["control"] == Value::Bool(true) { "gossip" } else { "static peers" });
    println!("metrics   {}", v["metrics"].as_str().unwrap_or("off"));
    println!("networks  {}", v["networks"].as_array().map_or(0, Vec::len));
}

/// Human-readable rendering of `networks`.
pub fn print_networks(v: &Value) {
    println!(
        "{:<11} {:>9} {:<20} {:<16} {:<10} {:<10} {:<8} MTU",
        "NAME", "VNI", "SUBNET", "BRIDGE", "TAP", "ENCRYPTED", "LEARNING"
    );
    for n in v["networks"].as_array().into_iter().flatten() {
        println!(
            "{:<11} {:>9} {:<20} {:<16} {:<10} {:<10} {:<8} {}",
            n["name"].as_str().unwrap_or("?"),
            n["vni"],
            n["subnet"].as_str().unwrap_or("?"),
            n["bridge"].as_str().unwrap_or("?"),
            n["tap"].as_str().unwrap_or("?"),
            if n["encrypted"] == Value::Bool(true) { "yes" } else { "no" },
            n["learning"].as_str().unwrap_or("?"),
            n["mtu"].as_u64().map_or("auto".into(), |m| m.to_string())
        );
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `weft capture`: asks the daemon for a network's frames and writes them as pcap (Ethernet link type) to `out`,
/// or to standard output, until `count` frames or until the daemon or the user ends it.
pub fn capture(socket: &Path, network: &str, count: Option<u64>, out: Option<&Path>) -> anyhow::Result<()> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::DataLink;

    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach weft at {} (is `weft run` running with this config?)", socket.display())
    })?;
    let mut line = serde_json::to_vec(&json!({ "method": "capture", "network": network, "count": count }))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let value: Value = serde_json::from_str(&answer).context("the daemon's answer is not JSON")?;
    if let Some(e) = value.get("error").and_then(Value::as_str) {
        anyhow::bail!("weft: {e}");
    }
    let sink: Box<dyn Write> = match out {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let sink = Shared(std::rc::Rc::new(std::cell::RefCell::new(std::io::BufWriter::new(sink))));
    // A TSO superframe may be up to 64 KiB, beyond tcpdump's default snap length.
    // Little-endian microsecond pcap, what tcpdump writes on x86 and every reader takes.
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        snaplen: 262_144,
        endianness: pcap_file::Endianness::Little,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(sink.clone(), header).context("writing the pcap header")?;
    if out.is_some() {
        eprintln!("capturing network {network} (decrypted inner frames, both directions); Ctrl-C stops");
    }
    let mut written = 0u64;
    while count.is_none_or(|c| written < c) {
        let Some(frame) = CapturedFrame::read(&mut reader).context("reading frames from the daemon")? else { break };
        let packet = PcapPacket::new(frame.time, frame.data.len() as u32, &frame.data);
        writer.write_packet(&packet).context("writing a pcap record")?;
        // Flushed per frame, so a reader on a pipe (tshark -i -) sees each frame at once.
        sink.0.borrow_mut().flush()?;
        written += 1;
    }
    sink.0.borrow_mut().flush()?;
    if out.is_some() {
        eprintln!("{written} frames written");
    }
    Ok(())
}

/// A buffered writer the pcap writer and `capture` both hold, so `capture` can flush after each record.
#[derive(Clone)]
struct Shared(std::rc::Rc<std::cell::RefCell<std::io::BufWriter<Box<dyn Write>>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Human-readable rendering of `endpoints`.
pub fn print_endpoints(v: &Value) {
    println!("{:<8} {:<18} ADDRESSES", "NETWORK", "MAC");
    for e in v["local"].as_array().into_iter().flatten() {
        let ips: Vec<&str> = e["ips"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!("{:<8} {:<18} {}", e["network"], e["mac"].as_str().unwrap_or("?"), ips.join(" "));
    }
}

/// Human-readable rendering of one attachment (`attach`, `detach`).
pub fn print_attachment(a: &Value) {
    let s = |k: &str| a[k].as_str().unwrap_or("-").to_string();
    println!(
        "{} {} on {}: {} {} via {} (host side {}, mtu {})",
        s("netns"),
        s("interface"),
        s("network"),
        s("address"),
        s("mac"),
        s("gateway"),
        s("host_interface"),
        a["mtu"]
    );
    if a["name"].is_string() || a["service"].is_string() {
        println!("name {}  service {}", s("name"), s("service"));
    }
}

/// Human-readable rendering of `attachments`.
pub fn print_attachments(v: &Value) {
    for a in v["attachments"].as_array().into_iter().flatten() {
        print_attachment(a);
    }
}

/// Human-readable rendering of `services`: the published services, then the endpoint directory.
pub fn print_services(v: &Value) {
    print_published(v);
    println!("{:<9} {:<20} {:<12} {:<18} ADDRESSES", "VNI", "NAME", "SERVICE", "VTEP");
    for e in v["endpoints"].as_array().into_iter().flatten() {
        let ips: Vec<&str> = e["ips"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<9} {:<20} {:<12} {:<18} {}",
            e["vni"],
            e["name"].as_str().filter(|n| !n.is_empty()).unwrap_or("-"),
            e["service"].as_str().unwrap_or("-"),
            e["vtep"].as_str().unwrap_or("?"),
            ips.join(" ")
        );
    }
    for b in v["blocks"].as_array().into_iter().flatten() {
        println!("block {} (vni {})", b["block"].as_str().unwrap_or("?"), b["vni"]);
    }
}

/// Human-readable rendering of `services`' published services (the ingress).
pub fn print_published(v: &Value) {
    for s in v["published"].as_array().into_iter().flatten() {
        let state = match s["error"].as_str() {
            Some(e) => format!("NOT LISTENING: {e}"),
            None => "listening".to_owned(),
        };
        println!(
            "{} {}/{} -> :{} {}{} ({state}; {} accepted, {} failed)",
            s["name"].as_str().unwrap_or("?"),
            s["proto"].as_str().unwrap_or("?"),
            s["port"],
            s["target"],
            s["balance"].as_str().unwrap_or("?"),
            if s["proxy_protocol"] == Value::Bool(true) { " proxy-protocol" } else { "" },
            s["accepted"],
            s["failed"],
        );
        for b in s["backends"].as_array().into_iter().flatten() {
            println!(
                "    {:<24} {:<16} host {:<16} {:<9} active {} total {}",
                b["addr"].as_str().unwrap_or("?"),
                b["name"].as_str().unwrap_or(""),
                b["vtep"].as_str().unwrap_or("?"),
                if b["healthy"] == Value::Bool(true) { "healthy" } else { "UNHEALTHY" },
                b["active"],
                b["picked"],
            );
        }
    }
}
