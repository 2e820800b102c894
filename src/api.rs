//! The JSON API on a unix socket, one request per connection: the client writes one line such as
//! `{"method":"stats"}` (methods with arguments add `"params": {...}`) and reads one JSON document back; failures
//! are `{"error": "..."}`. docs/api.md describes the methods, one section each.
//!
//! `capture` is the one streaming method: after its JSON answer line, the daemon writes captured frames as binary
//! records ([`crate::io::capture::CapturedFrame::encode`]) until the count is reached or the client hangs up.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use overlay_proto::fdb::Origin;
use overlay_proto::gossip::Liveness;
use overlay_proto::names::Names;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

use crate::config::{Config, ServiceConfig};
use crate::control::agent::{AgentCommand, ControlStatus};
use crate::io::capture::{self, CaptureSink};
use crate::io::datapath::{DatapathHandle, Query, Snapshot};
use crate::io::peers::PeerTraffic;
use crate::services::attach::{AttachRequest, Attacher, DetachRequest};
use crate::services::ingress::IngressStatus;

/// What the service methods need: the ingress's state and the control plane's ear.
#[derive(Debug, Clone)]
pub struct ServiceApi {
    /// The ingress.
    pub status: IngressStatus,
    /// The control agent.
    pub commands: tokio::sync::mpsc::Sender<AgentCommand>,
}

/// Binds the socket (`node.api_socket` of `api.config`) and serves it on a background task.
pub fn serve(api: Arc<Api>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = &api.config.node.api_socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {} for node.api_socket", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).with_context(|| format!("binding node.api_socket {}", path.display()))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let api = api.clone();
            tokio::spawn(async move {
                if let Err(e) = api.handle(stream).await {
                    debug!(error = %e, "api request failed");
                }
            });
        }
    }))
}

/// What the API answers from: the config, the data path's snapshots and the control plane's status.
#[derive(Debug)]
pub struct Api {
    /// The daemon's config.
    pub config: Config,
    /// The data path's queue.
    pub queries: DatapathHandle,
    /// The control plane's status, when there is one.
    pub control: Option<Arc<Mutex<ControlStatus>>>,
    /// When the daemon started.
    pub started: std::time::Instant,
    /// attach/detach.
    pub attacher: Arc<Attacher>,
    /// The cluster's endpoints by name, when there is a control plane.
    pub names: Option<Arc<RwLock<Names>>>,
    /// Published services (ingress), when there is a control plane.
    pub services: Option<ServiceApi>,
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

impl Api {
    async fn handle(&self, stream: UnixStream) -> anyhow::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line).await?;
        let response = match serde_json::from_str::<Value>(&line) {
            Ok(request) => match request.get("method").and_then(Value::as_str) {
                Some("capture") => return self.capture(&request, read, write).await,
                Some("attach") => match params::<AttachRequest>(&request) {
                    Ok(r) => self.attacher.attach(r).await.map(|a| json!(a)).unwrap_or_else(error),
                    Err(e) => error(e),
                },
                Some("detach") => match params::<DetachRequest>(&request) {
                    Ok(r) => self.attacher.detach(r).await.map(|a| json!({ "detached": a })).unwrap_or_else(error),
                    Err(e) => error(e),
                },
                Some("check") => match params::<DetachRequest>(&request) {
                    Ok(r) => self.attacher.check(r).await.map(|a| json!(a)).unwrap_or_else(error),
                    Err(e) => error(e),
                },
                Some("service_publish") => {
                    service_publish(self.services.as_ref(), &request).await.unwrap_or_else(error)
                }
                Some("service_rm") => service_rm(self.services.as_ref(), &request).await.unwrap_or_else(error),
                Some(method) => self.answer(method).await,
                None => error(anyhow::anyhow!("request has no \"method\"")),
            },
            Err(e) => error(anyhow::anyhow!("request is not JSON: {e}")),
        };
        write_line(&mut write, &response).await
    }

    /// The answer to a one-shot method.
    pub async fn answer(&self, method: &str) -> Value {
        match method {
            "status" => self.status_json(),
            "networks" => json!({ "networks": self.networks_json() }),
            "services" => {
                let mut answer = services_json(self.names.as_deref(), self.control.as_deref());
                if let (Some(object), Some(s)) = (answer.as_object_mut(), &self.services) {
                    object.insert("published".into(), json!(s.status.services()));
                }
                answer
            }
            "attachments" => json!({ "attachments": self.attacher.list().await }),
            "stats" => self.snapshot().await.map(|s| stats_json(&s)).unwrap_or_else(error),
            "fdb" => self.snapshot().await.map(|s| fdb_json(&s)).unwrap_or_else(error),
            "endpoints" => self.snapshot().await.map(|s| endpoints_json(&s)).unwrap_or_else(error),
            "peers" => match self.snapshot().await {
                Ok(snapshot) => peers_json(self.control.as_deref(), &snapshot),
                Err(e) => error(e),
            },
            other => error(anyhow::anyhow!(
                "unknown method {other:?}; known: status, networks, stats, fdb, endpoints, peers, capture, attach, \
                 detach, check, attachments, services, service_publish, service_rm"
            )),
        }
    }

    fn status_json(&self) -> Value {
        json!({
            "node": self.config.node.name,
            "underlay": self.config.node.underlay,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": crate::clock::now().saturating_duration_since(self.started).as_secs(),
            "time_ms": crate::clock::wall_millis(),
            "control": self.control.is_some(),
            "metrics": self.config.node.metrics,
            "networks": self.networks_json(),
        })
    }

    fn networks_json(&self) -> Vec<Value> {
        (self.config.networks.iter())
            .map(|n| {
                json!({
                    "name": n.name, "vni": n.vni, "subnet": n.subnet, "bridge": n.bridge_name(), "tap": n.tap_name(),
                    "encrypted": n.is_encrypted(), "learning": format!("{:?}", n.learning).to_lowercase(),
                    "mtu": n.mtu, "peers": n.peers, "gateway": n.gateway_addr(), "internal": n.internal,
                    "domain": n.domain,
                })
            })
            .collect()
    }

    /// Counters and tables from the data path.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let handle = self.queries.clone();
        Ok(tokio::task::spawn_blocking(move || handle.snapshot(Duration::from_secs(2))).await??)
    }

    /// Streams a network's frames until `count` (if given) or until the client hangs up.
    async fn capture(
        &self,
        request: &Value,
        mut read: BufReader<OwnedReadHalf>,
        mut write: OwnedWriteHalf,
    ) -> anyhow::Result<()> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let name = request.get("network").and_then(Value::as_str).unwrap_or_default();
        let Some(network) = self.config.networks.iter().position(|n| n.name == name) else {
            let known: Vec<&str> = self.config.networks.iter().map(|n| n.name.as_str()).collect();
            let e = anyhow::anyhow!("capture: no network {name:?}; this host has {}", known.join(", "));
            return write_line(&mut write, &error(e)).await;
        };
        let count = request.get("count").and_then(Value::as_u64);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, mut frames) = tokio::sync::mpsc::channel(capture::QUEUE);
        if self.queries.send(Query::CaptureStart(CaptureSink { id, network, frames: tx, dropped: 0 })).is_err() {
            return write_line(&mut write, &error(anyhow::anyhow!("the data path is busy"))).await;
        }
        let net = &self.config.networks[network];
        write_line(&mut write, &json!({ "capture": { "network": net.name, "vni": net.vni, "linktype": "ethernet" } }))
            .await?;
        let (mut sent, mut record, mut probe) = (0u64, Vec::new(), [0u8; 1]);
        let outcome = loop {
            if count.is_some_and(|c| sent >= c) {
                break Ok(());
            }
            tokio::select! {
                frame = frames.recv() => {
                    let Some(frame) = frame else { break Ok(()) };
                    record.clear();
                    frame.encode(&mut record);
                    if let Err(e) = write.write_all(&record).await {
                        break Err(e.into());
                    }
                    sent += 1;
                }
                // The client sends nothing more: a read returning means it hung up.
                _ = read.read(&mut probe) => break Ok(()),
            }
        };
        let _ = self.queries.send(Query::CaptureStop(id));
        outcome
    }
}

async fn write_line(write: &mut OwnedWriteHalf, value: &Value) -> anyhow::Result<()> {
    let mut body = serde_json::to_vec(value)?;
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
        "capture_dropped": s.capture_dropped,
        "drops": drops,
        "workers": s.workers.iter().map(|w| json!({
            "worker": w.worker, "tx_datagrams": w.tx_datagrams, "rx_frames": w.rx_frames,
        })).collect::<Vec<_>>(),
        "underlay": underlay_json(&s.underlay),
    })
}

fn underlay_json(u: &crate::io::underlay::UnderlayStats) -> Value {
    json!({
        "mode": u.mode, "xsk_bind": u.xsk_bind, "xdp_attach": u.xdp_attach, "xsk_sockets": u.xsk_sockets,
        "xsk_rx": u.xsk_rx, "xsk_tx": u.xsk_tx, "xsk_rx_malformed": u.xsk_rx_malformed,
        "neighbour_misses": u.neighbour_misses, "tx_ring_full": u.tx_ring_full,
        "tx_oversize": u.tx_oversize, "kernel_rx": u.kernel_rx,
        "xsk_rx_ring_full": u.xsk_rx_ring_full, "xsk_rx_dropped": u.xsk_rx_dropped, "xsk_fill_empty": u.xsk_fill_empty,
        "tx_syscalls": u.tx_syscalls, "tx_datagrams": u.tx_datagrams, "rx_syscalls": u.rx_syscalls,
        "rx_datagrams": u.rx_datagrams, "batching_fallbacks": u.batching_fallbacks,
    })
}

fn traffic_json(t: &PeerTraffic) -> Value {
    json!({ "tx_packets": t.tx_packets, "tx_bytes": t.tx_bytes, "rx_packets": t.rx_packets, "rx_bytes": t.rx_bytes })
}

/// Members of the control plane joined by VTEP with the data path's counters, and every VTEP with traffic.
fn peers_json(control: Option<&Mutex<ControlStatus>>, s: &Snapshot) -> Value {
    let traffic_of = |vtep: IpAddr| s.peers.iter().find(|(ip, _)| *ip == vtep).map(|(_, t)| *t).unwrap_or_default();
    let vteps: Vec<Value> = (s.peers.iter())
        .map(|(vtep, t)| {
            let mut row = traffic_json(t);
            row["vtep"] = json!(vtep);
            row
        })
        .collect();
    let Some(control) = control else {
        return json!({ "control": false, "members": [], "vteps": vteps });
    };
    let Ok(c) = control.lock() else { return error(anyhow::anyhow!("control status unavailable")) };
    let now = crate::clock::now();
    let members: Vec<Value> = (c.members.iter())
        .map(|m| {
            let health = c.health.iter().find(|(id, _)| id.to_string() == m.id).map(|(_, h)| *h);
            let state = match health.map(|h| h.liveness) {
                Some(Liveness::Suspect) => "suspect",
                Some(Liveness::Dead) => "dead",
                _ => "alive",
            };
            let sa = c.epochs.iter().find(|(id, _, _)| *id == m.id).map(|(_, epoch, at)| {
                let (packets, bytes) = (s.sa_usage.iter())
                    .find(|(vtep, _, _)| *vtep == m.vtep)
                    .map_or((0, 0), |(_, packets, bytes)| (*packets, *bytes));
                json!({
                    "epoch": epoch, "age_secs": now.saturating_duration_since(*at).as_secs(),
                    "packets": packets, "bytes": bytes,
                })
            });
            let mut row = traffic_json(&traffic_of(m.vtep));
            for (key, value) in [
                ("id", json!(m.id)),
                ("name", json!(m.name)),
                ("addr", json!(m.addr)),
                ("vtep", json!(m.vtep)),
                ("state", json!(state)),
                ("rtt_ms", json!(health.and_then(|h| h.rtt).map(|d| d.as_secs_f64() * 1e3))),
                ("clock_offset_ms", json!(health.and_then(|h| h.clock_offset_ms))),
                ("sa", sa.unwrap_or(Value::Null)),
            ] {
                row[key] = value;
            }
            row
        })
        .collect();
    let g = &c.gossip;
    json!({
        "control": true,
        "id": c.id,
        "members": members,
        "vteps": vteps,
        "table_digest": format!("{:016x}", c.table_digest),
        "convergence_lag_ms": c.convergence_lag.as_millis() as u64,
        "gossip": {
            "messages_in": g.messages_in, "messages_out": g.messages_out, "bytes_in": g.bytes_in, "bytes_out": g.bytes_out,
            "malformed": g.malformed, "rejected": g.rejected, "refutations": g.refutations,
            "snapshots_requested": g.snapshots_requested, "digest_mismatches": g.digest_mismatches,
            "undecodable_records": c.undecodable,
        },
        "transport": c.transport,
        "keying": c.keying.as_ref().map(|k| json!({ "rekeys": k.rekeys, "refused": k.refused, "retries": k.retries })),
        "epochs": c.epochs.iter().map(|(id, epoch, at)| {
            json!({ "id": id, "epoch": epoch, "age_secs": now.saturating_duration_since(*at).as_secs() })
        }).collect::<Vec<_>>(),
    })
}

fn no_services() -> anyhow::Error {
    anyhow::anyhow!("services need the control plane: this weft has no [control] section")
}

/// `service_rm`'s parameters.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceRmRequest {
    name: String,
}

async fn service_publish(services: Option<&ServiceApi>, request: &Value) -> anyhow::Result<Value> {
    let services = services.ok_or_else(no_services)?;
    let definition: ServiceConfig = params(request)?;
    definition.validate("service")?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = AgentCommand::PublishService { record: definition.record(0), reply };
    services.commands.send(command).await.map_err(|_| anyhow::anyhow!("the control plane has stopped"))?;
    let record = answer.await.context("the control plane did not answer")?;
    Ok(json!({ "published": {
        "name": record.name, "port": record.port, "target": record.target, "proto": record.protocol.as_str(),
        "balance": record.policy.as_str(), "proxy_protocol": record.proxy_protocol, "revision": record.revision,
    }}))
}

async fn service_rm(services: Option<&ServiceApi>, request: &Value) -> anyhow::Result<Value> {
    let services = services.ok_or_else(no_services)?;
    let ServiceRmRequest { name } = params(request)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = AgentCommand::RemoveService { name: name.clone(), reply };
    services.commands.send(command).await.map_err(|_| anyhow::anyhow!("the control plane has stopped"))?;
    answer.await.context("the control plane did not answer")?.map_err(|e| anyhow::anyhow!(e))?;
    Ok(json!({ "removed": name }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::underlay::UnderlayStats;

    #[test]
    fn underlay_stats_show_oversize_apart_from_ring_full() {
        let u = UnderlayStats { mode: "af_xdp", tx_ring_full: 1, tx_oversize: 2, ..UnderlayStats::default() };
        let json = underlay_json(&u);
        assert_eq!((json["tx_ring_full"].as_u64(), json["tx_oversize"].as_u64()), (Some(1), Some(2)), "{json}");
    }
}
