//! Command-line client of the daemon's API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

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

/// Human-readable rendering of `peers`.
pub fn print_peers(v: &Value) {
    if v["control"] != Value::Bool(true) {
        println!("no control plane configured (static peers only)");
        return;
    }
    println!("node {}  table digest {}", v["id"].as_str().unwrap_or("?"), v["table_digest"].as_str().unwrap_or("?"));
    println!("{:<16} {:<24} {:<40} ID", "NAME", "ADDRESS", "VTEP");
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<24} {:<40} {}",
            m["name"].as_str().unwrap_or("?"),
            m["addr"].as_str().unwrap_or("?"),
            m["vtep"].as_str().unwrap_or("?"),
            m["id"].as_str().unwrap_or("?")
        );
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

/// Human-readable rendering of `services`.
pub fn print_services(v: &Value) {
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
