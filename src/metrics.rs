//! Prometheus metrics over HTTP (`GET /metrics` at `[node] metrics`), in the OpenMetrics text format of the
//! `prometheus-client` crate.
//!
//! ```text
//!  scrape ─► Api::snapshot (data path: counters, per-VTEP traffic, SA usage) ─┐
//!            ControlStatus (gossip members, RTT, epochs, convergence lag) ───┴─► fresh Registry ─► text
//! ```
//!
//! Nothing is shared with the data path: every scrape asks it for a snapshot over its queue, as the API does, and
//! builds a registry from it. The counters are the data path's own monotonic counts, so building them anew on each
//! scrape is exact. docs/metrics.md lists the metrics and defines convergence lag.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use overlay_proto::forward::DropReason;
use overlay_proto::gossip::Liveness;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::api::Api;
use crate::control::agent::ControlStatus;
use crate::io::datapath::Snapshot;
use crate::io::peers::PeerTraffic;

/// Longest request head read before answering.
const MAX_REQUEST: usize = 8192;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    vtep: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VtepLabels {
    vtep: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    peer: String,
    vtep: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Binds `addr` and serves metrics on a background task.
pub async fn serve(addr: SocketAddr, api: Arc<Api>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding node.metrics {addr}"))?;
    info!(%addr, "metrics listening");
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let api = api.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &api).await {
                    debug!(error = %e, "metrics request failed");
                }
            });
        }
    }))
}

async fn answer(mut stream: TcpStream, api: &Api) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // One deadline for the whole request head: a client trickling a byte at a time cannot hold the connection.
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await??;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(line).unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or_default()) {
        ("GET", "/metrics") => match api.snapshot().await {
            Ok(snapshot) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(api.control.as_deref(), &snapshot)?,
            ),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e:#}\n")),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "weft serves /metrics only\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    response.push_str(&body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The metrics text for one scrape.
pub fn render(control: Option<&Mutex<ControlStatus>>, s: &Snapshot) -> anyhow::Result<String> {
    let mut registry = Registry::with_prefix("weft");
    let f = &s.forward;

    let packets = Family::<PeerLabels, Counter>::default();
    let bytes = Family::<PeerLabels, Counter>::default();
    // VTEPs beyond the data path's table are summed under vtep="other".
    let overflow = (s.peers_overflow != PeerTraffic::default()).then(|| ("other".to_owned(), s.peers_overflow));
    for (vtep, t) in s.peers.iter().map(|(vtep, t)| (vtep.to_string(), *t)).chain(overflow) {
        for (direction, p, b) in [("tx", t.tx_packets, t.tx_bytes), ("rx", t.rx_packets, t.rx_bytes)] {
            let labels = PeerLabels { vtep: vtep.clone(), direction };
            packets.get_or_create(&labels).inc_by(p);
            bytes.get_or_create(&labels).inc_by(b);
        }
    }
    registry.register(
        "peer_packets",
        "Underlay datagrams exchanged with each VTEP (tx: sent, rx: received and accepted)",
        packets,
    );
    registry.register("peer_bytes", "Underlay UDP payload bytes exchanged with each VTEP", bytes);

    let drops = Family::<ReasonLabels, Counter>::default();
    for (reason, n) in f.iter_drops() {
        drops.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc_by(n);
    }
    debug_assert_eq!(f.iter_drops().count(), DropReason::ALL.len());
    registry.register("drops", "Frames and datagrams dropped, by reason", drops);

    let u = &s.underlay;
    let underlay = Family::<ReasonLabels, Counter>::default();
    for (reason, n) in
        [("neighbour_miss", u.neighbour_misses), ("ring_full", u.tx_ring_full), ("oversize", u.tx_oversize)]
    {
        underlay.get_or_create(&ReasonLabels { reason }).inc_by(n);
    }
    registry.register(
        "underlay_tx_drops",
        "Datagrams the AF_XDP underlay could not send, by reason (always zero on the UDP underlay)",
        underlay,
    );

    // How well the kernel UDP underlay batches: datagrams per system call, each direction.
    let calls = Family::<DirectionLabels, Counter>::default();
    let carried = Family::<DirectionLabels, Counter>::default();
    for (direction, c, d) in [("tx", u.tx_syscalls, u.tx_datagrams), ("rx", u.rx_syscalls, u.rx_datagrams)] {
        calls.get_or_create(&DirectionLabels { direction }).inc_by(c);
        carried.get_or_create(&DirectionLabels { direction }).inc_by(d);
    }
    registry.register("underlay_syscalls", "Send and receive calls on the kernel UDP underlay's sockets", calls);
    registry.register("underlay_syscall_datagrams", "Datagrams those underlay calls carried", carried);
    counter(
        &mut registry,
        "underlay_batching_fallbacks",
        "Times the kernel refused a batching feature (UDP GSO, sendmmsg, recvmmsg) and it was turned off",
        u.batching_fallbacks,
    );

    let tx = Family::<KindLabels, Counter>::default();
    tx.get_or_create(&KindLabels { kind: "unicast" }).inc_by(f.tx_unicast);
    tx.get_or_create(&KindLabels { kind: "flooded" }).inc_by(f.tx_flooded);
    registry.register("tx_frames", "Frames from the TAPs sent into the overlay", tx);
    let totals = [
        ("tx_datagrams", "Datagrams sent (a flooded frame counts once per VTEP)", f.tx_datagrams),
        ("tx_bytes", "Inner frame bytes sent into the overlay", f.tx_bytes),
        ("rx_frames", "Frames received from the overlay and delivered", f.rx_frames),
        ("rx_bytes", "Inner frame bytes received from the overlay", f.rx_bytes),
        ("esp_sealed", "ESP packets sealed", f.esp_sealed),
        ("esp_opened", "ESP packets opened (ICV verified)", f.esp_opened),
        ("arp_nd_suppressed", "ARP requests and neighbour solicitations answered locally", f.suppressed),
        ("fdb_learned", "MAC addresses learned from received frames", f.learned),
        ("tap_errors", "Failed TAP reads or writes", s.tap_errors),
        ("underlay_errors", "Failed underlay sends or receives", s.underlay_errors),
        ("offload_errors", "TAP superframes or virtio headers that could not be handled", s.offload_errors),
        ("capture_dropped", "Captured frames lost to a slow `weft capture` reader", s.capture_dropped),
    ];
    for (name, help, value) in totals {
        counter(&mut registry, name, help, value);
    }
    let fdb = Gauge::<i64>::default();
    fdb.set(s.fdb.len() as i64);
    registry.register("fdb_entries", "Live FDB entries", fdb);

    if let Some(control) = control {
        let c = control.lock().map_err(|_| anyhow::anyhow!("control status unavailable"))?;
        let members = Family::<StateLabels, Gauge>::default();
        for state in ["alive", "suspect"] {
            members.get_or_create(&StateLabels { state }).set(0);
        }
        let rtt = Family::<MemberLabels, FloatGauge>::default();
        let offset = Family::<MemberLabels, FloatGauge>::default();
        for (id, h) in &c.health {
            let state = if h.liveness == Liveness::Suspect { "suspect" } else { "alive" };
            members.get_or_create(&StateLabels { state }).inc();
            let Some(m) = c.members.iter().find(|m| m.id == id.to_string()) else { continue };
            let labels = MemberLabels { peer: m.name.clone(), vtep: m.vtep.to_string() };
            if let Some(d) = h.rtt {
                rtt.get_or_create(&labels).set(d.as_secs_f64());
            }
            if let Some(ms) = h.clock_offset_ms {
                offset.get_or_create(&labels).set(ms as f64 / 1e3);
            }
        }
        registry.register("gossip_members", "Other members of the control plane, by state", members);
        registry.register("peer_rtt_seconds", "Round trip of the last answered SWIM probe", rtt);
        registry.register("peer_clock_offset_seconds", "The peer's wall clock minus ours, estimated by probes", offset);
        let lag = FloatGauge::default();
        lag.set(c.convergence_lag.as_secs_f64());
        registry.register(
            "gossip_convergence_lag_seconds",
            "How long this host's record table has been known to differ from a member's (0: last digest matched)",
            lag,
        );
        let g = &c.gossip;
        counter(
            &mut registry,
            "gossip_digest_mismatches",
            "Digests received that differed from our table",
            g.digest_mismatches,
        );
        let messages = Family::<KindLabels, Counter>::default();
        messages.get_or_create(&KindLabels { kind: "in" }).inc_by(g.messages_in);
        messages.get_or_create(&KindLabels { kind: "out" }).inc_by(g.messages_out);
        registry.register("gossip_messages", "Gossip messages handled (in) and queued (out)", messages);
        counter(&mut registry, "gossip_rejected", "Gossip claims whose signature or sender did not verify", g.rejected);
        counter(&mut registry, "gossip_malformed", "Undecodable gossip messages", g.malformed);
        let t = &c.transport;
        let quic = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in t.quic_drops.iter() {
            quic.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc_by(n);
        }
        registry.register(
            "quic_drops",
            "Datagrams to the control port dropped before reaching any QUIC connection, by reason",
            quic,
        );
        counter(
            &mut registry,
            "quic_handshakes_refused",
            "QUIC handshakes refused: TLS authentication failed either way, or an unexpected node answered",
            t.handshakes_refused,
        );
        if let Some(k) = &c.keying {
            counter(&mut registry, "rekeys", "Key epochs agreed with peers (first keys and rekeys)", k.rekeys);
            counter(&mut registry, "keying_refused", "Key agreement messages refused", k.refused);
        }
        let epochs = Family::<VtepLabels, Gauge>::default();
        for (id, epoch, _) in &c.epochs {
            if let Some(m) = c.members.iter().find(|m| &m.id == id) {
                epochs.get_or_create(&VtepLabels { vtep: m.vtep.to_string() }).set(*epoch as i64);
            }
        }
        registry.register("sa_epoch", "Current key epoch with each peer", epochs);
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use overlay_proto::gossip::MemberHealth;
    use overlay_proto::NodeId;

    use super::*;
    use crate::control::agent::MemberInfo;
    use crate::io::underlay::UnderlayStats;

    fn snapshot() -> Snapshot {
        Snapshot {
            forward: Default::default(),
            tap_errors: 2,
            underlay_errors: 0,
            offload_errors: 0,
            underlay: UnderlayStats {
                tx_ring_full: 5,
                tx_oversize: 6,
                tx_syscalls: 7,
                tx_datagrams: 70,
                rx_syscalls: 8,
                rx_datagrams: 80,
                ..UnderlayStats::default()
            },
            fdb: Vec::new(),
            local: Vec::new(),
            peers: vec![(
                "198.18.0.2".parse().unwrap(),
                PeerTraffic { tx_packets: 3, tx_bytes: 300, rx_packets: 4, rx_bytes: 400 },
            )],
            peers_overflow: PeerTraffic { rx_packets: 1, ..PeerTraffic::default() },
            sa_usage: Vec::new(),
            capture_dropped: 0,
            workers: Vec::new(),
        }
    }

    #[test]
    fn data_path_counters_per_peer_and_every_drop_reason() {
        let text = render(None, &snapshot()).unwrap();
        for line in [
            "weft_peer_packets_total{vtep=\"198.18.0.2\",direction=\"tx\"} 3",
            "weft_peer_bytes_total{vtep=\"198.18.0.2\",direction=\"rx\"} 400",
            "weft_peer_packets_total{vtep=\"other\",direction=\"rx\"} 1",
            "weft_tap_errors_total 2",
            "weft_underlay_tx_drops_total{reason=\"ring_full\"} 5",
            "weft_underlay_tx_drops_total{reason=\"oversize\"} 6",
            "weft_underlay_tx_drops_total{reason=\"neighbour_miss\"} 0",
            "weft_underlay_syscalls_total{direction=\"tx\"} 7",
            "weft_underlay_syscall_datagrams_total{direction=\"rx\"} 80",
            "weft_underlay_batching_fallbacks_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        for reason in DropReason::ALL {
            let line = format!("weft_drops_total{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.lines().any(|l| l == line), "no {line:?}");
        }
        assert!(!text.contains("weft_gossip"), "no control-plane metrics without a control plane");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn control_plane_members_rtt_and_lag() {
        let id = NodeId([7; 16]);
        let status = ControlStatus {
            members: vec![MemberInfo {
                id: id.to_string(),
                name: "h2".into(),
                addr: "198.18.0.2:7946".parse().unwrap(),
                vtep: "198.18.0.2".parse().unwrap(),
            }],
            health: vec![(
                id,
                MemberHealth {
                    liveness: Liveness::Suspect,
                    rtt: Some(Duration::from_millis(2)),
                    clock_offset_ms: Some(-1500),
                },
            )],
            convergence_lag: Duration::from_millis(250),
            epochs: vec![(id.to_string(), 3, crate::clock::now())],
            ..ControlStatus::default()
        };
        let text = render(Some(&Mutex::new(status)), &snapshot()).unwrap();
        for line in [
            "weft_gossip_members{state=\"alive\"} 0",
            "weft_gossip_members{state=\"suspect\"} 1",
            "weft_peer_rtt_seconds{peer=\"h2\",vtep=\"198.18.0.2\"} 0.002",
            "weft_peer_clock_offset_seconds{peer=\"h2\",vtep=\"198.18.0.2\"} -1.5",
            "weft_gossip_convergence_lag_seconds 0.25",
            "weft_sa_epoch{vtep=\"198.18.0.2\"} 3",
            "weft_quic_drops_total{reason=\"too_short\"} 0",
            "weft_quic_drops_total{reason=\"initial_unauthenticated\"} 0",
            "weft_quic_handshakes_refused_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
