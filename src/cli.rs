//! Command-line client of the daemon's API.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

/// Sends one request to the daemon listening on `socket` and returns its answer.
pub fn request(socket: &Path, method: &str) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach weft at {} (is `weft run` running with this config?)", socket.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(&json!({ "method": method }))?;
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
    for key in [
        "tx_unicast",
        "tx_flooded",
        "tx_datagrams",
        "tx_bytes",
        "rx_frames",
        "rx_bytes",
        "learned",
        "tap_errors",
        "underlay_errors",
    ] {
        println!("{key:<16} {}", v[key]);
    }
    if let Some(drops) = v["drops"].as_object() {
        for (reason, count) in drops {
            println!("drop.{reason:<11} {count}");
        }
    }
}

/// Human-readable rendering of `fdb`.
pub fn print_fdb(v: &Value) {
    println!("{:<9} {:<18} {:<40} ORIGIN", "VNI", "MAC", "VTEP");
    for row in v["fdb"].as_array().into_iter().flatten() {
        println!(
            "{:<9} {:<18} {:<40} {}",
            row["vni"],
            row["mac"].as_str().unwrap_or("?"),
            row["vtep"].as_str().unwrap_or("?"),
            row["origin"].as_str().unwrap_or("?")
        );
    }
}
