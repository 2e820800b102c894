//! The JSON API on a unix socket, one request per connection: the client writes one line such as
//! `{"method":"stats"}` (methods with arguments add `"params": {...}`) and reads one JSON document back; failures
//! are `{"error": "..."}`. docs/api.md describes the methods.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use overlay_proto::fdb::Origin;
use overlay_proto::names::Names;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::config::Config;
use crate::control::agent::ControlStatus;
use crate::io::datapath::{DatapathHandle, Query, Snapshot};
use crate::services::attach::{AttachRequest, Attacher, DetachRequest};

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct ApiContext {
    /// The data path.
    pub queries: DatapathHandle,
    /// The control plane's status, when there is one.
    pub control: Option<Arc<Mutex<ControlStatus>>>,
    /// attach/detach.
    pub attacher: Arc<Attacher>,
    /// The cluster's endpoints by name, when there is a control plane.
    pub names: Option<Arc<RwLock<Names>>>,
}

/// Binds the socket and serves it on a background task.
pub fn serve(config: &Config, context: ApiContext) -> anyhow::Result<tokio::task::JoinHandle<()>> {
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
            "gateway": n.gateway_addr(), "internal": n.internal, "domain": n.domain,
        })).collect::<Vec<_>>(),
    });
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (context, status) = (context.clone(), status.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &context, &status).await {
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

async fn handle(stream: UnixStream, context: &ApiContext, status: &Value) -> anyhow::Result<()> {
    let queries = &context.queries;
    let control = context.control.as_deref();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Value>(&line) {
        Ok(request) => match request.get("method").and_then(Value::as_str) {
            Some("status") => status.clone(),
            Some("stats") => snapshot(queries).await.map(|s| stats_json(&s)).unwrap_or_else(error),
            Some("fdb") => snapshot(queries).await.map(|s| fdb_json(&s)).unwrap_or_else(error),
            Some("endpoints") => snapshot(queries).await.map(|s| endpoints_json(&s)).unwrap_or_else(error),
            Some("peers") => peers_json(control),
            Some("attach") => match params::<AttachRequest>(&request) {
                Ok(r) => context.attacher.attach(r).await.map(|a| json!(a)).unwrap_or_else(error),
                Err(e) => error(e),
            },
            Some("detach") => match params::<DetachRequest>(&request) {
                Ok(r) => context.attacher.detach(r).await.map(|a| json!({ "detached": a })).unwrap_or_else(error),
                Err(e) => error(e),
            },
            Some("check") => match params::<DetachRequest>(&request) {
                Ok(r) => context.attacher.check(r).await.map(|a| json!(a)).unwrap_or_else(error),
                Err(e) => error(e),
            },
            Some("attachments") => json!({ "attachments": context.attacher.list().await }),
            Some("services") => services_json(context.names.as_deref(), control),
            Some(other) => error(anyhow::anyhow!(
                "unknown method {other:?}; known: status, stats, fdb, endpoints, peers, attach, detach, check, \
                 attachments, services"
            )),
            None => error(anyhow::anyhow!("request has no \"method\"")),
        },
        Err(e) => error(anyhow::anyhow!("request is not JSON: {e}")),
    };
    let mut body = serde_json::to_vec(&response)?;
    body.push(b'\n');
    write.write_all(&body).await?;
    Ok(())
}

/// The request's `params`, as `T`.
fn params<T: serde::de::DeserializeOwned>(request: &Value) -> anyhow::Result<T> {
    let params = request.get("params").cloned().unwrap_or(json!({}));
    serde_json::from_value(params).map_err(|e| anyhow::anyhow!("bad params: {e}"))
}

/// The cluster's endpoint directory: every endpoint with its owner, name, service and addresses, and each
/// service's addresses; plus this host's address blocks.
fn services_json(names: Option<&RwLock<Names>>, control: Option<&Mutex<ControlStatus>>) -> Value {
    let Some(names) = names else { return error(anyhow::anyhow!("no control plane: no endpoint directory")) };
    let Ok(names) = names.read() else { return error(anyhow::anyhow!("endpoint directory unavailable")) };
    let mut services: std::collections::BTreeMap<String, Vec<std::net::IpAddr>> = Default::default();
    let endpoints: Vec<Value> = names
        .endpoints()
        .map(|e| {
            if let Some(s) = e.service() {
                services.entry(format!("{}/{s}", e.record.vni)).or_default().extend(e.record.ips.iter().copied());
            }
            json!({
                "vni": e.record.vni.get(), "mac": e.record.mac.to_string(), "ips": e.record.ips,
                "name": e.record.name, "service": e.service(), "owner": e.owner.to_string(), "vtep": e.record.vtep,
            })
        })
        .collect();
    let services: Vec<Value> = services
        .into_iter()
        .map(|(key, mut ips)| {
            ips.sort_unstable();
            let (vni, name) = key.split_once('/').unwrap_or_default();
            json!({ "vni": vni.parse::<u32>().unwrap_or(0), "service": name, "ips": ips })
        })
        .collect();
    let (blocks, ipam) = match control.and_then(|c| c.lock().ok()) {
        Some(c) => (
            c.blocks
                .iter()
                .map(|(vni, start, len)| json!({ "vni": vni.get(), "block": format!("{start}/{len}") }))
                .collect(),
            json!({ "claims": c.ipam.claims, "lost": c.ipam.lost, "undecodable": c.ipam.undecodable }),
        ),
        None => (Vec::new(), Value::Null),
    };
    json!({ "endpoints": endpoints, "services": services, "blocks": blocks, "ipam": ipam })
}

fn error(e: anyhow::Error) -> Value {
    json!({ "error": format!("{e:#}") })
}

async fn snapshot(queries: &DatapathHandle) -> anyhow::Result<Snapshot> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    queries.send(Query::Snapshot(tx)).map_err(|_| anyhow::anyhow!("the data path is busy"))?;
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
        "suppressed": f.suppressed, "kept_local": f.kept_local,
        "esp_sealed": f.esp_sealed, "esp_opened": f.esp_opened,
        "tap_errors": s.tap_errors, "underlay_errors": s.underlay_errors, "offload_errors": s.offload_errors,
        "drops": drops,
    })
}

fn peers_json(control: Option<&Mutex<ControlStatus>>) -> Value {
    let Some(control) = control else {
        return json!({ "control": false, "members": [] });
    };
    let Ok(c) = control.lock() else { return error(anyhow::anyhow!("control status unavailable")) };
    let g = &c.gossip;
    json!({
        "control": true,
        "id": c.id,
        "members": c.members,
        "table_digest": format!("{:016x}", c.table_digest),
        "gossip": {
            "messages_in": g.messages_in, "messages_out": g.messages_out, "bytes_in": g.bytes_in, "bytes_out": g.bytes_out,
            "malformed": g.malformed, "rejected": g.rejected, "refutations": g.refutations,
            "snapshots_requested": g.snapshots_requested, "undecodable_records": c.undecodable,
        },
        "keying": c.keying.as_ref().map(|k| json!({ "rekeys": k.rekeys, "refused": k.refused, "retries": k.retries })),
        "epochs": c.epochs.iter().map(|(id, epoch, at)| {
            json!({ "id": id, "epoch": epoch, "age_secs": crate::clock::now().saturating_duration_since(*at).as_secs() })
        }).collect::<Vec<_>>(),
    })
}

fn endpoints_json(s: &Snapshot) -> Value {
    let local: Vec<Value> = s
        .local
        .iter()
        .map(|(network, mac, ips)| json!({ "network": network, "mac": mac.to_string(), "ips": ips }))
        .collect();
    json!({ "local": local })
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
