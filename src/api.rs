//! The JSON API on a unix socket, one request per connection: the client writes one line such as
//! `{"method":"stats"}` and reads one JSON document back. docs/api.md describes the methods.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use overlay_proto::fdb::Origin;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::config::Config;
use crate::io::datapath::{Query, Snapshot};

/// Binds the socket and serves it on a background task.
pub fn serve(
    config: &Config,
    queries: crossbeam_channel::Sender<Query>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = &config.node.api_socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {} for node.api_socket", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).with_context(|| format!("binding node.api_socket {}", path.display()))?;
    let status = json!({
        "node": config.node.name,
        "underlay": config.node.underlay,
        "networks": config.networks.iter().map(|n| json!({
            "name": n.name, "vni": n.vni, "subnet": n.subnet, "bridge": n.bridge_name(), "tap": n.tap_name(),
        })).collect::<Vec<_>>(),
    });
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (queries, status) = (queries.clone(), status.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &queries, &status).await {
                    debug!(error = %e, "api request failed");
                }
            });
        }
    }))
}

/// A socket file left by a daemon that died is removed; a live one is an error (two daemons, one socket).
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("node.api_socket {} is in use by a running weft", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
}

async fn handle(stream: UnixStream, queries: &crossbeam_channel::Sender<Query>, status: &Value) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Value>(&line) {
        Ok(request) => match request.get("method").and_then(Value::as_str) {
            Some("status") => status.clone(),
            Some("stats") => snapshot(queries).await.map(|s| stats_json(&s)).unwrap_or_else(error),
            Some("fdb") => snapshot(queries).await.map(|s| fdb_json(&s)).unwrap_or_else(error),
            Some(other) => error(anyhow::anyhow!("unknown method {other:?}; known: status, stats, fdb")),
            None => error(anyhow::anyhow!("request has no \"method\"")),
        },
        Err(e) => error(anyhow::anyhow!("request is not JSON: {e}")),
    };
    let mut body = serde_json::to_vec(&response)?;
    body.push(b'\n');
    write.write_all(&body).await?;
    Ok(())
}

fn error(e: anyhow::Error) -> Value {
    json!({ "error": e.to_string() })
}

async fn snapshot(queries: &crossbeam_channel::Sender<Query>) -> anyhow::Result<Snapshot> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    queries.try_send(Query::Snapshot(tx)).context("the data path is busy")?;
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(2)))
        .await?
        .context("the data path did not answer")
}

fn stats_json(s: &Snapshot) -> Value {
    let f = &s.forward;
    let drops: serde_json::Map<String, Value> =
        f.iter_drops().map(|(r, n)| (r.as_str().to_string(), json!(n))).collect();
    json!({
        "tx_unicast": f.tx_unicast, "tx_flooded": f.tx_flooded, "tx_datagrams": f.tx_datagrams, "tx_bytes": f.tx_bytes,
        "rx_frames": f.rx_frames, "rx_bytes": f.rx_bytes, "learned": f.learned,
        "tap_errors": s.tap_errors, "underlay_errors": s.underlay_errors,
        "drops": drops,
    })
}

fn fdb_json(s: &Snapshot) -> Value {
    let rows: Vec<Value> = s
        .fdb
        .iter()
        .map(|r| {
            let origin = match r.origin {
                Origin::Static => "static",
                Origin::Remote => "gossip",
                Origin::Learned { .. } => "learned",
            };
            json!({ "vni": r.vni.get(), "mac": r.mac.to_string(), "vtep": r.vtep, "origin": origin })
        })
        .collect();
    json!({ "fdb": rows })
}
