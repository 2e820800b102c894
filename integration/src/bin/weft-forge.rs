//! `weft-forge`: a cluster member gone bad, for the refusal tests. With a valid certificate of the cluster it
//! connects to one weft's control address with weft's own transport and sends gossip that claims to come from
//! another node (the victim):
//!
//! 1. a `Push` of an endpoint record whose origin is the victim, claiming MAC `--mac` behind VTEP `--vtep` on VNI
//!    `--vni`, but signed with the forger's own key;
//! 2. a `Join` whose announcement carries the victim's id (the forger's certificate and signature);
//! 3. a `Push` of that same forged announcement.
//!
//! It prints `sent 3 forged messages to ADDR` once the transport has written all three, then stays connected (so the
//! receiver reads them all) and logs what the transport reports, until SIGTERM or SIGINT.
//!
//! ```text
//! weft-forge --ca ca.crt --cert h3.crt --key h3.key --listen 198.18.0.3:7950 --to 198.18.0.1:7946 \
//!            --victim <32 hex digits> --victim-name h2 --vni 100 --mac 02:19:66:66:66:66 --vtep 198.18.0.3
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use overlay_proto::codec::Codec;
use overlay_proto::endpoint::{EndpointRecord, RecordKey};
use overlay_proto::gossip::message::{Message, SignedAlive, SignedRecord, Update};
use overlay_proto::{MacAddr, NodeId, Vni};
use tokio::signal::unix::{signal, SignalKind};
use weft::control::pki::NodeIdentity;
use weft::control::transport::{Transport, TransportConfig};

/// How long the transport gets to write the forged messages.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Far above any real epoch or incarnation (those are wall-clock milliseconds), so the receiver cannot dismiss the
/// forgeries as old news and must check their signatures.
const FUTURE: u64 = u64::MAX / 2;

const USAGE: &str = "usage: weft-forge --ca F --cert F --key F --listen ADDR:PORT --to ADDR:PORT --victim HEX_ID \
                     --victim-name NAME --vni N --mac MAC --vtep IP";

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let get = |key: &str| args.get(key).ok_or_else(|| anyhow!("missing --{key}\n{USAGE}"));
    let identity = Arc::new(
        NodeIdentity::load(&PathBuf::from(get("ca")?), &PathBuf::from(get("cert")?), &PathBuf::from(get("key")?))
            .context("loading the forger's identity")?,
    );
    let listen: SocketAddr = get("listen")?.parse().context("--listen")?;
    let to: SocketAddr = get("to")?.parse().context("--to")?;
    let victim = parse_node_id(get("victim")?)?;
    let victim_name = get("victim-name")?.clone();
    let vni = Vni::new(get("vni")?.parse().context("--vni")?).map_err(|e| anyhow!("--vni: {e}"))?;
    let mac: MacAddr = get("mac")?.parse().map_err(|e| anyhow!("--mac: {e:?}"))?;
    let vtep: IpAddr = get("vtep")?.parse().context("--vtep")?;

    let (transport, mut events) = Transport::bind(TransportConfig::new(listen, identity.clone()))?;
    eprintln!("forger {} listening on {}", identity.id(), transport.local_addr());

    // 1. The victim's endpoint record, signed by us.
    let value = EndpointRecord { vni, mac, ips: vec![], vtep, name: String::new(), labels: vec![] };
    let mut record = SignedRecord {
        origin: victim,
        epoch: FUTURE,
        seq: 1,
        key: RecordKey::Endpoint(vni, mac).to_bytes(),
        value: Some(value.to_bytes()),
        signature: Vec::new(),
    };
    record.signature = identity.sign(&record.signed_bytes()).to_vec();

    // 2 and 3. The victim's announcement, with our certificate and signature.
    let mut alive = SignedAlive {
        id: victim,
        incarnation: FUTURE,
        addr: listen,
        vtep,
        name: victim_name,
        credential: identity.cert_der().to_vec(),
        signature: Vec::new(),
    };
    alive.signature = identity.sign(&alive.signed_bytes()).to_vec();

    let messages = [
        Message::Push { updates: vec![Update::Record(record)] },
        Message::Join { alive: alive.clone() },
        Message::Push { updates: vec![Update::Alive(alive)] },
    ];
    for message in &messages {
        transport.send_message(to, Bytes::from(message.to_bytes()));
    }
    let start = Instant::now();
    loop {
        let stats = transport.stats();
        let sent = stats.messages_sent.load(Ordering::Relaxed);
        if sent >= messages.len() as u64 {
            break;
        }
        let dropped = stats.messages_dropped.load(Ordering::Relaxed);
        if dropped > 0 || start.elapsed() > SEND_TIMEOUT {
            bail!(
                "only {sent} of {} messages sent to {to} ({dropped} dropped): {:?}",
                messages.len(),
                stats.snapshot()
            );
        }
        tokio::select! {
            Some(event) = events.recv() => eprintln!("event: {event:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    println!("sent {} forged messages to {to}", messages.len());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some(event) = events.recv() => eprintln!("event: {event:?}"),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    transport.close();
    Ok(())
}

/// `--key value` pairs.
fn parse_args() -> Result<HashMap<String, String>> {
    let mut args = std::env::args().skip(1);
    let mut map = HashMap::new();
    while let Some(flag) = args.next() {
        let key = flag.strip_prefix("--").ok_or_else(|| anyhow!("unexpected argument {flag:?}\n{USAGE}"))?;
        let value = args.next().ok_or_else(|| anyhow!("--{key} needs a value\n{USAGE}"))?;
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

/// A node id as `weft peers` prints it: 32 hex digits.
fn parse_node_id(hex: &str) -> Result<NodeId> {
    if hex.len() != 2 * NodeId::LEN || !hex.is_ascii() {
        bail!("--victim {hex:?} is not {} hex digits", 2 * NodeId::LEN);
    }
    let mut id = [0u8; NodeId::LEN];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).with_context(|| format!("--victim {hex:?}"))?;
    }
    Ok(NodeId(id))
}
