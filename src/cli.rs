//! Command-line client of the daemon's API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

/// Sends one request to the daemon listening on `socket` and returns its answer.
pub fn request(socket: &Path, method: &str) -> anyhow::Result<Value> {
    request_with(socket, json!({ "method": method }))
}

/// Sends a request with parameters (`{"method": ..., ...}`) and returns the answer.
pub fn request_with(socket: &Path, request: Value) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach weft at {} (is `weft run` running with this config?)", socket.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let value: Value = serde_json::from_str(&answer).context("the daemon's answer is not JSON")?;
    if let Some(e) = value.get("error").and_then(Value::as_str) {
        anyhow::bail!("weft: {e}");
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

/// Human-readable rendering of `services`.
pub fn print_services(v: &Value) {
    for s in v["services"].as_array().into_iter().flatten() {
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
