//! The overlay's DNS server, on each network's gateway address, port 53 (UDP and TCP), as Docker's embedded DNS:
//!
//! - `NAME` and `NAME.<domain>`: A/AAAA of the endpoint called NAME, or else of every endpoint of service NAME
//!   (an endpoint's name may have several labels, as weft-cni's `<pod>.<namespace>`: those resolve in the domain);
//! - `tasks.S` and `tasks.S.<domain>`: A/AAAA of every endpoint of service S;
//! - PTR for addresses of the network's subnet: `NAME.<domain>`;
//! - other single-label names, and names in the domain, that match nothing: NXDOMAIN (authoritative);
//! - anything else: forwarded as it is to the host's resolvers (`node.dns_upstream`, or else the nameservers of
//!   the daemon's /etc/resolv.conf), the first to answer wins; none answering gives SERVFAIL.
//!
//! Names are looked up in [`Names`], the gossiped endpoint records, per network: an endpoint only sees names of its
//! own network. Messages are parsed and built with hickory-proto.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use overlay_proto::names::Names;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::NetworkInfo;

/// TTL of our answers: endpoints come and go, so caches must not keep them long.
const TTL: u32 = 5;
/// How long one upstream gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries (UDP) and connections (TCP) served at once per network.
const MAX_IN_FLIGHT: usize = 256;
/// How long a TCP client has to send its next whole query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest DNS message over UDP we read.
const MAX_UDP: usize = 4096;

/// The nameservers of a resolv.conf text, port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|addr| addr.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this answer.
    Answer(Vec<u8>),
    /// Not ours: forward it upstream.
    Forward,
    /// Not a query we can read: drop it.
    Ignore,
}

/// Decides a query for network `net`.
pub fn handle_query(names: &Names, net: &NetworkInfo, bytes: &[u8]) -> Outcome {
    let Ok(request) = Message::from_vec(bytes) else { return Outcome::Ignore };
    if request.metadata.message_type != MessageType::Query {
        return Outcome::Ignore;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let (Some(query), 1, OpCode::Query) = (request.queries.first(), request.queries.len(), request.metadata.op_code)
    else {
        response.metadata.response_code = ResponseCode::NotImp;
        return encode(response);
    };
    response.add_query(query.clone());
    let qname = query.name().to_lowercase();
    let text = qname.to_ascii();
    let text = text.trim_end_matches('.');
    let domain = net.domain.to_ascii_lowercase();

    // Reverse lookups for the network's own addresses.
    if text.ends_with(".in-addr.arpa") || text.ends_with(".ip6.arpa") {
        let Ok(prefix) = qname.parse_arpa_name() else { return Outcome::Forward };
        let full = prefix.prefix_len() == prefix.max_prefix_len();
        if !full || !net.subnet.contains(&prefix.addr()) {
            return Outcome::Forward;
        }
        response.metadata.authoritative = true;
        let found = names.reverse(net.vni, prefix.addr());
        match (found, query.query_type()) {
            (Some(name), RecordType::PTR) => match Name::from_ascii(format!("{name}.{domain}.")) {
                Ok(target) => {
                    response.add_answer(Record::from_rdata(query.name().clone(), TTL, RData::PTR(PTR(target))));
                }
                Err(_) => response.metadata.response_code = ResponseCode::ServFail,
            },
            (Some(_), _) => {}
            (None, _) => response.metadata.response_code = ResponseCode::NXDomain,
        }
        return encode(response);
    }

    let local = if text == domain {
        Some("")
    } else if let Some(rest) = text.strip_suffix(&format!(".{domain}")) {
        Some(rest)
    } else if !text.contains('.') || (text.starts_with("tasks.") && text.matches('.').count() == 1) {
        Some(text)
    } else {
        None
    };
    let Some(local) = local else { return Outcome::Forward };
    response.metadata.authoritative = true;
    let ips = match local.strip_prefix("tasks.") {
        Some(service) if !service.contains('.') => names.service(net.vni, service),
        // Names of several labels (CNI's `<pod>.<namespace>`) are endpoint names; services are one label.
        _ if local.is_empty() => Vec::new(),
        _ => names.resolve(net.vni, local),
    };
    if ips.is_empty() && !local.is_empty() {
        response.metadata.response_code = ResponseCode::NXDomain;
        return encode(response);
    }
    for ip in ips {
        let rdata = match (ip, query.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
            _ => continue, // the name exists: other types get an empty NOERROR answer
        };
        response.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
    }
    encode(response)
}

fn encode(message: Message) -> Outcome {
    match message.to_vec() {
        Ok(bytes) => Outcome::Answer(bytes),
        Err(_) => Outcome::Ignore,
    }
}

/// SERVFAIL for `request`, when no upstream answers.
fn servfail(request: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let mut response = Message::error_msg(request.metadata.id, request.metadata.op_code, ResponseCode::ServFail);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries);
    response.to_vec().ok()
}

/// Sends `request` to each upstream in turn until one answers.
async fn forward(upstreams: &[SocketAddr], request: &[u8]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let Ok(socket) = UdpSocket::bind(bind).await else { continue };
        if socket.connect(upstream).await.is_err() || socket.send(request).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_UDP];
        match tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 2 && buf[..2] == request[..2] => return Some(buf[..n].to_vec()),
            _ => debug!(%upstream, "upstream resolver did not answer"),
        }
    }
    None
}

async fn respond(
    names: &RwLock<Names>,
    net: &NetworkInfo,
    upstreams: &[SocketAddr],
    request: &[u8],
) -> Option<Vec<u8>> {
    let outcome = match names.read() {
        Ok(names) => handle_query(&names, net, request),
        Err(_) => return servfail(request),
    };
    match outcome {
        Outcome::Answer(bytes) => Some(bytes),
        Outcome::Ignore => None,
        Outcome::Forward => match forward(upstreams, request).await {
            Some(bytes) => Some(bytes),
            None => servfail(request),
        },
    }
}

/// `answer` as UDP may carry it (RFC 1035 §4.2.1, RFC 6891 §6.2.5): one longer than the client's limit (512 bytes,
/// or the payload size its EDNS record offers) goes back truncated, with TC set and no records, so that the client
/// asks again over TCP (`tasks.S` of a large service does not fit 512 bytes).
fn fit_udp(request: &[u8], answer: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(request).map_or(512, |r| usize::from(r.max_payload()));
    if answer.len() <= limit {
        return answer;
    }
    Message::from_vec(&answer).ok().and_then(|m| m.truncate().to_vec().ok()).unwrap_or(answer)
}

/// Serves one TCP connection (RFC 7766: a two-byte length prefix per message; several queries may share a
/// connection) until the client closes it, or sends no whole query within `idle` ([`TCP_IDLE`]): a client that
/// stops half-way through a message must not hold its connection (a task and a descriptor) for ever.
async fn serve_tcp<S>(mut stream: S, names: &RwLock<Names>, net: &NetworkInfo, upstreams: &[SocketAddr], idle: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            let mut request = vec![0u8; usize::from(len)];
            stream.read_exact(&mut request).await?;
            std::io::Result::Ok(request)
        };
        let Ok(Ok(request)) = tokio::time::timeout(idle, read).await else { return };
        let Some(answer) = respond(names, net, upstreams, &request).await else { return };
        let Ok(len) = u16::try_from(answer.len()) else { return };
        if stream.write_u16(len).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Serves DNS on `net`'s gateway until the tasks are aborted.
pub async fn serve(
    net: NetworkInfo,
    names: Arc<RwLock<Names>>,
    upstreams: Vec<SocketAddr>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let addr = SocketAddr::new(net.gateway, 53);
    let udp = Arc::new(UdpSocket::bind(addr).await.map_err(|e| anyhow::anyhow!("DNS on {addr} (UDP): {e}"))?);
    let tcp = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("DNS on {addr} (TCP): {e}"))?;
    info!(network = %net.name, %addr, upstreams = upstreams.len(), "DNS up");
    let (net, upstreams) = (Arc::new(net), Arc::new(upstreams));
    let udp_task = tokio::spawn(serve_udp(udp, names.clone(), net.clone(), upstreams.clone(), MAX_IN_FLIGHT));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else { continue };
            // Beyond the bound the connection is closed at once: the client retries.
            let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
            let (net, names, upstreams) = (net.clone(), names.clone(), upstreams.clone());
            tokio::spawn(async move {
                serve_tcp(stream, &names, &net, &upstreams, TCP_IDLE).await;
                drop(permit);
            });
        }
    });
    Ok(vec![udp_task, tcp_task])
}

/// Answers the UDP queries arriving on `udp`, each on a task of its own, at most `limit` at once: a query arriving
/// beyond them is dropped (the client retries), since a forwarded one holds its task and a socket for up to
/// [`UPSTREAM_TIMEOUT`] per upstream and a flood would otherwise run the daemon out of descriptors.
async fn serve_udp(
    udp: Arc<UdpSocket>,
    names: Arc<RwLock<Names>>,
    net: Arc<NetworkInfo>,
    upstreams: Arc<Vec<SocketAddr>>,
    limit: usize,
) {
    let permits = Arc::new(Semaphore::new(limit));
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else { continue };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%from, "DNS query dropped: {limit} queries in flight");
            continue;
        };
        let request = buf[..n].to_vec();
        let (udp, net, names, upstreams) = (udp.clone(), net.clone(), names.clone(), upstreams.clone());
        tokio::spawn(async move {
            if let Some(answer) = respond(&names, &net, &upstreams, &request).await {
                let _ = udp.send_to(&fit_udp(&request, answer), from).await;
            }
            drop(permit);
        });
    }
}

/// Starts DNS on every network's gateway; a network whose gateway cannot be bound is logged and skipped.
pub async fn serve_all(
    networks: &[NetworkInfo],
    names: Arc<RwLock<Names>>,
    upstreams: Vec<SocketAddr>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let gateways: Vec<IpAddr> = networks.iter().map(|n| n.gateway).collect();
    // Never forward to ourselves.
    let upstreams: Vec<SocketAddr> = upstreams.into_iter().filter(|u| !gateways.contains(&u.ip())).collect();
    let mut tasks = Vec::new();
    for net in networks {
        match serve(net.clone(), names.clone(), upstreams.clone()).await {
            Ok(t) => tasks.extend(t),
            Err(e) => warn!(network = %net.name, error = %e, "no DNS on this network"),
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use overlay_proto::endpoint::EndpointRecord;
    use overlay_proto::names::SERVICE_LABEL;
    use overlay_proto::{MacAddr, NodeId, Vni};

    fn net() -> NetworkInfo {
        NetworkInfo {
            name: "blue".into(),
            vni: Vni::new(100).unwrap(),
            subnet: "198.19.0.0/24".parse().unwrap(),
            bridge: "br-blue".into(),
            mtu: 1450,
            gateway: "198.19.0.1".parse().unwrap(),
            internal: false,
            domain: "weft".into(),
        }
    }

    fn names() -> Names {
        let mut names = Names::default();
        let pods = [(5, "db-0.prod", ""), (6, "db-0.staging", "")];
        for (i, name, service) in [(2u8, "web-1", "web"), (3, "web-2", "web"), (4, "db", "")].into_iter().chain(pods) {
            names.set(
                NodeId([i; 16]),
                EndpointRecord {
                    vni: Vni::new(100).unwrap(),
                    mac: MacAddr([2, 0, 0, 0, 0, i]),
                    ips: vec![IpAddr::from([198, 19, 0, i])],
                    vtep: IpAddr::from([198, 18, 0, 1]),
                    name: name.into(),
                    labels: if service.is_empty() { vec![] } else { vec![(SERVICE_LABEL.into(), service.into())] },
                },
            );
        }
        names
    }

    fn ask(name: &str, kind: RecordType) -> (ResponseCode, Vec<RData>) {
        let mut request = Message::query();
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        request.metadata.recursion_desired = true;
        let Outcome::Answer(bytes) = handle_query(&names(), &net(), &request.to_vec().unwrap()) else {
            panic!("{name} was not answered locally")
        };
        let response = Message::from_vec(&bytes).unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.queries.len(), 1);
        (response.metadata.response_code, response.answers.iter().map(|r| r.data.clone()).collect())
    }

    fn a(last: u8) -> RData {
        RData::A(A::new(198, 19, 0, last))
    }

    #[test]
    fn names_services_tasks_and_ptr_are_answered() {
        assert_eq!(ask("web-1", RecordType::A), (ResponseCode::NoError, vec![a(2)]));
        assert_eq!(ask("WEB-1.weft.", RecordType::A), (ResponseCode::NoError, vec![a(2)]));
        assert_eq!(ask("web", RecordType::A), (ResponseCode::NoError, vec![a(2), a(3)]));
        assert_eq!(ask("tasks.web", RecordType::A), (ResponseCode::NoError, vec![a(2), a(3)]));
        assert_eq!(ask("tasks.web.weft", RecordType::A), (ResponseCode::NoError, vec![a(2), a(3)]));
        assert_eq!(ask("db", RecordType::AAAA), (ResponseCode::NoError, vec![]));
        assert_eq!(ask("nothing", RecordType::A).0, ResponseCode::NXDomain);
        assert_eq!(ask("nothing.weft", RecordType::A).0, ResponseCode::NXDomain);
        assert_eq!(ask("tasks.db", RecordType::A).0, ResponseCode::NXDomain);
        let (code, answers) = ask("4.0.19.198.in-addr.arpa", RecordType::PTR);
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(answers, vec![RData::PTR(PTR(Name::from_ascii("db.weft.").unwrap()))]);
        assert_eq!(ask("99.0.19.198.in-addr.arpa", RecordType::PTR).0, ResponseCode::NXDomain);
    }

    #[test]
    fn pod_names_of_two_labels_resolve_in_the_domain() {
        // weft-cni names pods `<pod>.<namespace>`: the same pod name in two namespaces is two endpoints.
        assert_eq!(ask("db-0.prod.weft", RecordType::A), (ResponseCode::NoError, vec![a(5)]));
        assert_eq!(ask("DB-0.Staging.weft.", RecordType::A), (ResponseCode::NoError, vec![a(6)]));
        assert_eq!(ask("db-0.dev.weft", RecordType::A).0, ResponseCode::NXDomain);
        let (_, answers) = ask("6.0.19.198.in-addr.arpa", RecordType::PTR);
        assert_eq!(answers, vec![RData::PTR(PTR(Name::from_ascii("db-0.staging.weft.").unwrap()))]);
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_ignored() {
        let mut request = Message::query();
        request.add_query(Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A));
        assert_eq!(handle_query(&names(), &net(), &request.to_vec().unwrap()), Outcome::Forward);
        let mut request = Message::query();
        request.add_query(Query::query(Name::from_ascii("2.0.0.192.in-addr.arpa.").unwrap(), RecordType::PTR));
        assert_eq!(handle_query(&names(), &net(), &request.to_vec().unwrap()), Outcome::Forward);
        assert_eq!(handle_query(&names(), &net(), &[1, 2, 3]), Outcome::Ignore);
        let failed = Message::from_vec(&servfail(&request.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(failed.metadata.id, request.metadata.id);
    }

    /// A TCP client that sends a length and then stalls is dropped after the idle time, like an idle one; before,
    /// the body was awaited without a deadline and the connection held for ever.
    #[tokio::test]
    async fn a_tcp_client_stalling_mid_query_is_dropped() {
        const IDLE: Duration = Duration::from_millis(200);
        let names = RwLock::new(names());
        let (mut client, server) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { serve_tcp(server, &names, &net(), &[], IDLE).await });
        // A whole query is answered.
        let mut request = Message::query();
        request.add_query(Query::query(Name::from_ascii("web-1").unwrap(), RecordType::A));
        let bytes = request.to_vec().unwrap();
        client.write_u16(bytes.len() as u16).await.unwrap();
        client.write_all(&bytes).await.unwrap();
        let len = client.read_u16().await.unwrap();
        let mut answer = vec![0u8; usize::from(len)];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(Message::from_vec(&answer).unwrap().answers.len(), 1);
        // Then half a query, and nothing more.
        client.write_u16(bytes.len() as u16).await.unwrap();
        client.write_all(&bytes[..3]).await.unwrap();
        // Generous: the point is that it ends at all, not how fast.
        let done = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(done.is_ok(), "the connection is still served 10 s after half a query (idle {IDLE:?})");
    }

    /// A flood of queries to forward is bounded: with a silent upstream, only `limit` are forwarded (each waits
    /// for its answer); the rest are dropped. Before, every query got a task and a socket of its own.
    #[tokio::test]
    async fn queries_in_flight_are_bounded() {
        const LIMIT: usize = 4;
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let at = server.local_addr().unwrap();
        let upstreams = Arc::new(vec![upstream.local_addr().unwrap()]);
        let task = tokio::spawn(serve_udp(server, Arc::new(RwLock::new(names())), Arc::new(net()), upstreams, LIMIT));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..3 * LIMIT {
            let mut request = Message::query();
            request.add_query(Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A));
            client.send_to(&request.to_vec().unwrap(), at).await.unwrap();
        }
        // Every forwarded query reaches the upstream within this second, which is less than UPSTREAM_TIMEOUT: no
        // permit comes back meanwhile.
        let mut forwarded = 0;
        let mut buf = [0u8; 512];
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), upstream.recv_from(&mut buf)).await {
            forwarded += 1;
        }
        task.abort();
        assert_eq!(forwarded, LIMIT, "queries forwarded at once");
    }

    /// `tasks.big` of a 40-endpoint service is ~700 bytes: over UDP to a client without EDNS it comes back
    /// truncated (TC, no records, under 512 bytes); a client offering 4096 bytes gets it whole. Before, every
    /// answer went out whole and without TC.
    #[tokio::test]
    async fn udp_answers_over_the_client_limit_are_truncated() {
        let mut names = names();
        for i in 10..50u8 {
            let labels = vec![(SERVICE_LABEL.into(), "big".into())];
            let record = EndpointRecord {
                vni: Vni::new(100).unwrap(),
                mac: MacAddr([2, 0, 0, 0, 1, i]),
                ips: vec![IpAddr::from([198, 19, 0, i])],
                vtep: IpAddr::from([198, 18, 0, 1]),
                name: format!("big-{i}"),
                labels,
            };
            names.set(NodeId([i; 16]), record);
        }
        let server = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let at = server.local_addr().unwrap();
        let task = tokio::spawn(serve_udp(server, Arc::new(RwLock::new(names)), Arc::new(net()), Arc::default(), 8));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; 4096];
        for edns in [None, Some(4096u16)] {
            let mut request = Message::query();
            request.add_query(Query::query(Name::from_ascii("tasks.big").unwrap(), RecordType::A));
            if let Some(size) = edns {
                let mut opt = hickory_proto::op::Edns::new();
                opt.set_max_payload(size);
                request.set_edns(opt);
            }
            client.send_to(&request.to_vec().unwrap(), at).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf)).await.unwrap().unwrap();
            let answer = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(answer.metadata.id, request.metadata.id);
            match edns {
                None => {
                    assert!(n <= 512, "{n} bytes to a client without EDNS");
                    assert!(answer.metadata.truncation && answer.answers.is_empty());
                }
                Some(_) => assert!(!answer.metadata.truncation && answer.answers.len() == 40, "{n} bytes"),
            }
        }
        task.abort();
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 2001:db8::53%eth0\nnameserver bad\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec!["192.0.2.53:53".parse().unwrap(), "[2001:db8::53]:53".parse().unwrap()]
        );
    }
}
