//! The ingress routing mesh: every published service listens on its port on every host, on all the host's addresses
//! (IPv4 and IPv6, the underlay address included), and each new TCP connection or UDP flow goes to one of the
//! service's healthy backends, wherever in the cluster it runs, through the overlay.
//!
//! ```text
//!  control agent ─► Catalog (watch) ─► reconcile ─┬─► per service: listener task (TCP accept / UDP recv)
//!                                                  │     └─► Balancer::pick ─► connect (bound to the ingress
//!                                                  │         address of the backend's network when it is remote)
//!                                                  │         ─► [PROXY v2 header] ─► copy_bidirectional
//!                                                  └─► per TCP service: health task, TCP connect to every backend
//!                                                        every 500 ms ─► Balancer::handle_check
//! ```
//!
//! A backend gets no new connections as soon as its endpoint record is withdrawn (the catalog changes; its host
//! died or detached it) or after two failed checks in a row (about a second). A connect that fails counts as a
//! failed check and the connection is retried on another backend, so clients do not see a dead backend while the
//! checks catch up.
//!
//! Source address: a backend on this host is reached from the bridge's own address (the kernel's choice). A backend
//! on another host must see a source address that routes back to *this* host through the overlay, and the gateway
//! address does not (every host's bridge holds it, so the reply would stay on the backend's host): connections to
//! remote backends are bound to this host's ingress address on the backend's network (taken from this host's IPAM
//! block, or the configured `ingress_address`; see `overlay_proto::ingress_address`), which the daemon hands over
//! once it is on the bridge. Until there is one, a connection to a remote backend fails at once, so the checks keep
//! it out and clients are served by backends on this host.
//!
//! UDP flows are keyed by the client's address and port and end after [`UDP_IDLE`] without traffic either way.
//! UDP services have no active health check (a UDP service need not answer anything); they follow the records.

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use overlay_proto::balance::{Balancer, BalancerConfig};
use overlay_proto::service::{Backend, Catalog, Protocol, ServiceRecord};
use overlay_proto::wire::proxy;
use overlay_proto::Vni;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often every backend of a TCP service is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a check's TCP connect may take.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(450);
/// Failed checks in a row that take a backend out.
pub const HEALTH_FAILURES: u32 = 2;
/// How long a client's connect to a backend may take before it is tried on another one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);
/// Backends one client connection is tried on.
pub const CONNECT_ATTEMPTS: usize = 3;
/// A UDP flow without traffic for this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(30);
/// Most UDP flows one published port keeps at once (each holds a task and a socket): a datagram from a new client
/// beyond them is dropped and counted as failed. UDP sources are not authenticated, so without a bound a flood of
/// (spoofed) clients would use up the daemon's descriptors.
pub const MAX_UDP_FLOWS: usize = 4096;
/// Datagrams queued per UDP flow towards its backend.
const UDP_QUEUE: usize = 256;

/// Settings of the ingress.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// This host's VTEP: backends behind it are local.
    pub local_vtep: IpAddr,
    /// Per network, this host's own address in it (on the bridge already), the source of connections to remote
    /// backends.
    pub sources: watch::Receiver<BTreeMap<Vni, IpAddr>>,
}

/// What the API shows of one service.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// Published port.
    pub port: u16,
    /// Backends' port.
    pub target: u16,
    /// `round-robin` or `least-connections`.
    pub balance: &'static str,
    /// PROXY protocol v2 header on.
    pub proxy_protocol: bool,
    /// The listener is up.
    pub listening: bool,
    /// Why the listener is not up.
    pub error: Option<String>,
    /// Connections (flows) accepted.
    pub accepted: u64,
    /// Connections (flows) that reached no backend.
    pub failed: u64,
    /// The backends.
    pub backends: Vec<BackendStatus>,
}

/// What the API shows of one backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendStatus {
    /// Address and target port.
    pub addr: SocketAddr,
    /// The endpoint's name.
    pub name: String,
    /// The VTEP of its host.
    pub vtep: IpAddr,
    /// Gets new connections.
    pub healthy: bool,
    /// Open connections (flows) through this host.
    pub active: u32,
    /// Connections (flows) it was given by this host.
    pub picked: u64,
}

/// The running ingress.
#[derive(Debug)]
pub struct Ingress {
    catalog: watch::Sender<Arc<Catalog>>,
    services: Arc<Mutex<BTreeMap<String, Arc<Service>>>>,
    task: JoinHandle<()>,
}

/// One published service's shared state.
#[derive(Debug)]
struct Service {
    record: Mutex<ServiceRecord>,
    balancer: Mutex<Balancer>,
    /// Where each backend address is, for the source address and the status.
    backends: Mutex<HashMap<SocketAddr, Backend>>,
    error: Mutex<Option<String>>,
    accepted: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    config: Arc<IngressConfig>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Ingress {
    /// Starts the reconciler. Must run inside the tokio runtime.
    pub fn start(config: IngressConfig) -> Self {
        let (catalog, rx) = watch::channel(Arc::new(Catalog::default()));
        let services = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(reconcile_loop(Arc::new(config), rx, services.clone()));
        Self { catalog, services, task }
    }

    /// A handle the control plane sends catalog changes through.
    pub fn catalog_sender(&self) -> watch::Sender<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// A handle the API reads the status through.
    pub fn status_handle(&self) -> IngressStatus {
        IngressStatus(self.services.clone())
    }

    /// Closes every listener.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Reads the ingress's state for the API.
#[derive(Debug, Clone)]
pub struct IngressStatus(Arc<Mutex<BTreeMap<String, Arc<Service>>>>);

impl IngressStatus {
    /// Every published service with its backends.
    pub fn services(&self) -> Vec<ServiceStatus> {
        let services: Vec<Arc<Service>> = lock(&self.0).values().cloned().collect();
        services.iter().map(|s| s.status()).collect()
    }
}

impl Service {
    fn status(&self) -> ServiceStatus {
        let record = lock(&self.record).clone();
        let meta = lock(&self.backends).clone();
        let error = lock(&self.error).clone();
        let backends = lock(&self.balancer)
            .backends()
            .iter()
            .map(|b| {
                let m = meta.get(&b.addr);
                BackendStatus {
                    addr: b.addr,
                    name: m.map(|m| m.name.clone()).unwrap_or_default(),
                    vtep: m.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |m| m.vtep),
                    healthy: b.healthy,
                    active: b.active,
                    picked: b.picked,
                }
            })
            .collect();
        ServiceStatus {
            name: record.name.clone(),
            proto: record.protocol.as_str(),
            port: record.port,
            target: record.target,
            balance: record.policy.as_str(),
            proxy_protocol: record.proxy_protocol,
            listening: error.is_none(),
            error,
            accepted: self.accepted.load(std::sync::atomic::Ordering::Relaxed),
            failed: self.failed.load(std::sync::atomic::Ordering::Relaxed),
            backends,
        }
    }

    fn set_backends(&self, backends: &[Backend]) {
        let target = lock(&self.record).target;
        let meta: HashMap<SocketAddr, Backend> =
            backends.iter().map(|b| (SocketAddr::new(b.ip, target), b.clone())).collect();
        lock(&self.balancer).set_backends(backends.iter().map(|b| SocketAddr::new(b.ip, target)));
        *lock(&self.backends) = meta;
    }

    /// The address to connect from: none for a local backend (the kernel's choice), this host's ingress address
    /// on the backend's network for a remote one, and an error when there is none (yet): a connection from the
    /// gateway address would never be answered.
    fn source_for(&self, backend: SocketAddr) -> std::io::Result<Option<IpAddr>> {
        let meta = lock(&self.backends);
        let Some(b) = meta.get(&backend).filter(|b| b.vtep != self.config.local_vtep) else { return Ok(None) };
        let source = self.config.sources.borrow().get(&b.vni).copied().filter(|s| s.is_ipv4() == backend.is_ipv4());
        match source {
            Some(source) => Ok(Some(source)),
            None => Err(std::io::Error::new(
                ErrorKind::AddrNotAvailable,
                format!("no ingress address of this host on network {} (yet) to reach a backend on {}", b.vni, b.vtep),
            )),
        }
    }

    async fn connect(&self, backend: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let socket = if backend.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(source) = self.source_for(backend)? {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        match tokio::time::timeout(timeout, socket.connect(backend)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(ErrorKind::TimedOut, "connect timed out")),
        }
    }

    fn check(&self, backend: SocketAddr, ok: bool) {
        let name = lock(&self.record).name.clone();
        let changed = lock(&self.balancer).handle_check(backend, ok);
        if changed {
            if ok {
                info!(service = %name, %backend, "backend healthy");
            } else {
                warn!(service = %name, %backend, "backend unhealthy: no new connections");
            }
        }
    }
}

/// The listener and health tasks of one service, and what they were started for.
#[derive(Debug)]
struct Running {
    port: u16,
    protocol: Protocol,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn reconcile_loop(
    config: Arc<IngressConfig>,
    mut catalog: watch::Receiver<Arc<Catalog>>,
    services: Arc<Mutex<BTreeMap<String, Arc<Service>>>>,
) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // A listener that could not bind (port in use) is tried again now and then, not only on the next change.
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    loop {
        let current = catalog.borrow_and_update().clone();
        reconcile(&config, &current, &services, &mut running).await;
        tokio::select! {
            changed = catalog.changed() => if changed.is_err() { break },
            _ = retry.tick() => {}
        }
    }
}

async fn reconcile(
    config: &Arc<IngressConfig>,
    catalog: &Catalog,
    services: &Mutex<BTreeMap<String, Arc<Service>>>,
    running: &mut BTreeMap<String, Running>,
) {
    let wanted: BTreeMap<&str, &ServiceRecord> = catalog.services().map(|r| (r.name.as_str(), r)).collect();
    running.retain(|name, _| wanted.contains_key(name.as_str()));
    lock(services).retain(|name, _| {
        let keep = wanted.contains_key(name.as_str());
        if !keep {
            info!(service = %name, "service removed: listener closed");
        }
        keep
    });
    for (name, record) in wanted {
        let existing = lock(services).get(name).cloned();
        let service = match existing {
            Some(s) => {
                *lock(&s.record) = record.clone();
                lock(&s.balancer).set_config(BalancerConfig { policy: record.policy, failures: HEALTH_FAILURES });
                s
            }
            None => {
                let s = Arc::new(Service {
                    record: Mutex::new(record.clone()),
                    balancer: Mutex::new(Balancer::new(BalancerConfig {
                        policy: record.policy,
                        failures: HEALTH_FAILURES,
                    })),
                    backends: Mutex::new(HashMap::new()),
                    error: Mutex::new(None),
                    accepted: Default::default(),
                    failed: Default::default(),
                    config: config.clone(),
                });
                lock(services).insert(name.to_owned(), s.clone());
                s
            }
        };
        service.set_backends(catalog.backends(name));
        let up_to_date = running.get(name).is_some_and(|r| r.port == record.port && r.protocol == record.protocol);
        if up_to_date {
            continue;
        }
        running.remove(name); // a changed port or protocol: close the old listener first
        match start_service(service.clone(), record).await {
            Ok(r) => {
                info!(service = %name, port = record.port, proto = record.protocol.as_str(), target = record.target, "service published");
                *lock(&service.error) = None;
                running.insert(name.to_owned(), r);
            }
            Err(e) => {
                let message = format!("cannot listen on {} port {}: {e}", record.protocol.as_str(), record.port);
                if lock(&service.error).as_deref() != Some(message.as_str()) {
                    warn!(service = %name, error = %message, "service not published on this host");
                }
                *lock(&service.error) = Some(message);
            }
        }
    }
}

/// A socket on every address of the host: `[::]` accepting IPv4 too, or `0.0.0.0` where IPv6 is off.
fn bind_any(port: u16, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let v6 = Socket::new(Domain::IPV6, kind, None).and_then(|s| {
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok(s)
    });
    let socket = match v6 {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e),
        Err(_) => {
            let s = Socket::new(Domain::IPV4, kind, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
            s
        }
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
}

async fn start_service(service: Arc<Service>, record: &ServiceRecord) -> std::io::Result<Running> {
    let mut tasks = Vec::new();
    match record.protocol {
        Protocol::Tcp => {
            let socket = bind_any(record.port, socket2::Type::STREAM)?;
            socket.listen(1024)?;
            let listener = TcpListener::from_std(socket.into())?;
            tasks.push(tokio::spawn(accept_loop(service.clone(), listener)));
            tasks.push(tokio::spawn(health_loop(service)));
        }
        Protocol::Udp => {
            let socket = UdpSocket::from_std(bind_any(record.port, socket2::Type::DGRAM)?.into())?;
            tasks.push(tokio::spawn(udp_loop(service, Arc::new(socket))));
        }
    }
    Ok(Running { port: record.port, protocol: record.protocol, tasks })
}

async fn accept_loop(service: Arc<Service>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                service.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(proxy_tcp(service.clone(), client, peer));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn proxy_tcp(service: Arc<Service>, mut client: TcpStream, peer: SocketAddr) {
    let mut tried = Vec::new();
    let connected = loop {
        if tried.len() >= CONNECT_ATTEMPTS {
            break None;
        }
        let Some(backend) = lock(&service.balancer).pick(&tried) else { break None };
        match service.connect(backend, CONNECT_TIMEOUT).await {
            Ok(stream) => break Some((backend, stream)),
            Err(e) => {
                debug!(%backend, error = %e, "backend connect failed; trying another");
                service.check(backend, false);
                lock(&service.balancer).release(backend);
                tried.push(backend);
            }
        }
    };
    let Some((backend, mut upstream)) = connected else {
        service.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        debug!(client = %peer, "no backend reachable: connection closed");
        return;
    };
    let proxy_protocol = lock(&service.record).proxy_protocol;
    let result = async {
        if proxy_protocol {
            // The listener is dual-stack: IPv4 clients show up as ::ffff:a.b.c.d, which the header should not carry.
            let local = client.local_addr()?;
            let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
            let mut header = Vec::with_capacity(64);
            proxy::Repr::tcp(canonical(peer), canonical(local)).emit(&mut header);
            upstream.write_all(&header).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    }
    .await;
    if let Err(e) = result {
        debug!(client = %peer, %backend, error = %e, "connection ended with an error");
    }
    lock(&service.balancer).release(backend);
}

async fn health_loop(service: Arc<Service>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let backends: Vec<SocketAddr> = lock(&service.balancer).backends().iter().map(|b| b.addr).collect();
        let checks = backends.into_iter().map(|backend| {
            let service = service.clone();
            async move {
                let ok = service.connect(backend, HEALTH_TIMEOUT).await.is_ok();
                service.check(backend, ok);
            }
        });
        futures::future::join_all(checks).await;
    }
}

async fn udp_loop(service: Arc<Service>, socket: Arc<UdpSocket>) {
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let datagram = buf[..len].to_vec();
        if let Some(flow) = flows.get(&client) {
            match flow.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => continue, // the backend is slower than the client: drop
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    flows.remove(&client);
                    flows.retain(|_, f| !f.is_closed());
                    start_flow(&service, &socket, &mut flows, client, d).await;
                }
            }
        } else if make_room(&mut flows, MAX_UDP_FLOWS) {
            start_flow(&service, &socket, &mut flows, client, datagram).await;
        } else {
            service.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            service.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Whether a new flow fits under `cap`, after forgetting the flows that ended (their task closed the channel).
/// The sweep runs only when the table is full, so ended flows of clients that never come back cannot pile up.
fn make_room<T>(flows: &mut HashMap<SocketAddr, mpsc::Sender<T>>, cap: usize) -> bool {
    if flows.len() >= cap {
        flows.retain(|_, f| !f.is_closed());
    }
    flows.len() < cap
}

async fn start_flow(
    service: &Arc<Service>,
    socket: &Arc<UdpSocket>,
    flows: &mut HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    client: SocketAddr,
    first: Vec<u8>,
) {
    service.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(backend) = lock(&service.balancer).pick(&[]) else {
        service.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    };
    let upstream = async {
        let bind = match service.source_for(backend)? {
            Some(source) => SocketAddr::new(source, 0),
            None if backend.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
            None => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let upstream = UdpSocket::bind(bind).await?;
        upstream.connect(backend).await?;
        upstream.send(&first).await?;
        Ok::<_, std::io::Error>(upstream)
    }
    .await;
    let upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            debug!(%backend, error = %e, "cannot open a UDP flow to the backend");
            service.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            lock(&service.balancer).release(backend);
            return;
        }
    };
    let (tx, rx) = mpsc::channel(UDP_QUEUE);
    flows.insert(client, tx);
    tokio::spawn(udp_flow(service.clone(), socket.clone(), upstream, rx, client, backend));
}

async fn udp_flow(
    service: Arc<Service>,
    listener: Arc<UdpSocket>,
    upstream: UdpSocket,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    client: SocketAddr,
    backend: SocketAddr,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            datagram = from_client.recv() => match datagram {
                Some(d) => { let _ = upstream.send(&d).await; }
                None => break,
            },
            received = upstream.recv(&mut buf) => match received {
                Ok(len) => { let _ = listener.send_to(&buf[..len], client).await; }
                // An ICMP error from the backend (port unreachable): the flow carries on, as a kernel NAT would.
                Err(e) => debug!(%backend, error = %e, "UDP receive from the backend failed"),
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    lock(&service.balancer).release(backend);
}

#[cfg(test)]
mod tests {
    //! The ingress over loopback: backends are local TCP/UDP servers, the catalog is built from real records.
    use super::*;
    use overlay_proto::codec::Codec;
    use overlay_proto::endpoint::{EndpointRecord, RecordKey};
    use overlay_proto::service::{service_key, Policy, SERVICE_LABEL};
    use overlay_proto::{MacAddr, NodeId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const VTEP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 1));

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A catalog with service `web` on `port` → `target`, served by endpoints at `ips` (all on this host).
    fn catalog(port: u16, target: u16, protocol: Protocol, proxy_protocol: bool, ips: &[[u8; 4]]) -> Arc<Catalog> {
        let record = ServiceRecord {
            name: "web".into(),
            port,
            target,
            protocol,
            policy: Policy::RoundRobin,
            proxy_protocol,
            revision: 1,
            removed: false,
        };
        let mut records = vec![(service_key("web"), record.to_bytes())];
        for (i, ip) in ips.iter().enumerate() {
            let vni = Vni::new(100).unwrap();
            let mac = MacAddr([2, 0, 0, 0, 0, i as u8]);
            let endpoint = EndpointRecord {
                vni,
                mac,
                ips: vec![IpAddr::from(*ip)],
                vtep: VTEP,
                name: format!("web-{i}"),
                labels: vec![(SERVICE_LABEL.into(), "web".into())],
            };
            records.push((RecordKey::Endpoint(vni, mac).to_bytes(), endpoint.to_bytes()));
        }
        let origin = NodeId([1; 16]);
        Arc::new(Catalog::from_records(records.iter().map(|(k, v)| (origin, k.as_slice(), v.as_slice()))))
    }

    /// A backend on `ip:port` that answers each connection with its name and what it read first (up to 64 bytes).
    async fn backend(ip: [u8; 4], port: u16, name: &'static str) -> JoinHandle<()> {
        let listener = TcpListener::bind(SocketAddr::from((ip, port))).await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let mut answer = name.as_bytes().to_vec();
                    answer.push(b' ');
                    answer.extend_from_slice(&buf[..n]);
                    let _ = s.write_all(&answer).await;
                });
            }
        })
    }

    async fn ask(port: u16, what: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(what).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await??;
        Ok(answer)
    }

    fn ingress() -> Ingress {
        Ingress::start(IngressConfig { local_vtep: VTEP, sources: watch::channel(BTreeMap::new()).1 })
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_connections_rotate_over_backends_and_skip_a_dead_one() {
        let (port, target) = (free_port(), free_port());
        let b1 = backend([127, 0, 0, 11], target, "b1").await;
        let _b2 = backend([127, 0, 0, 12], target, "b2").await;
        let ingress = ingress();
        let status = ingress.status_handle();
        let tx = ingress.catalog_sender();
        tx.send_replace(catalog(port, target, Protocol::Tcp, false, &[[127, 0, 0, 11], [127, 0, 0, 12]]));
        wait_for("the listener", || status.services().first().is_some_and(|s| s.listening)).await;
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(String::from_utf8(ask(port, b"hi").await.unwrap()).unwrap());
        }
        answers.sort();
        assert_eq!(answers, ["b1 hi", "b1 hi", "b2 hi", "b2 hi"]);

        // b1 dies: its checks fail and it is taken out; meanwhile connections retry on b2 and all succeed.
        b1.abort();
        let _ = b1.await;
        for _ in 0..4 {
            assert_eq!(ask(port, b"x").await.unwrap(), b"b2 x");
        }
        wait_for("b1 to be unhealthy", || {
            status.services()[0].backends.iter().any(|b| b.addr.ip() == IpAddr::from([127, 0, 0, 11]) && !b.healthy)
        })
        .await;

        // The record is withdrawn: the backend is gone from the balancer at once. The service removed: closed.
        tx.send_replace(catalog(port, target, Protocol::Tcp, false, &[[127, 0, 0, 12]]));
        wait_for("b1 to be forgotten", || status.services()[0].backends.len() == 1).await;
        tx.send_replace(Arc::new(Catalog::default()));
        wait_for("the service to go", || status.services().is_empty()).await;
        wait_for("the listener to close", || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()).await;
        ingress.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proxy_protocol_header_carries_the_client_address() {
        let (port, target) = (free_port(), free_port());
        let _b = backend([127, 0, 0, 21], target, "b").await;
        let ingress = ingress();
        let status = ingress.status_handle();
        ingress.catalog_sender().send_replace(catalog(port, target, Protocol::Tcp, true, &[[127, 0, 0, 21]]));
        wait_for("the listener", || status.services().first().is_some_and(|s| s.listening)).await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let client = s.local_addr().unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let (repr, len) = proxy::Repr::parse(&answer[2..]).unwrap();
        assert_eq!(&answer[..2], b"b ");
        assert_eq!(len, 28, "TCP over IPv4, not IPv4-mapped IPv6");
        assert_eq!(repr, proxy::Repr::Proxy { source: client, destination: SocketAddr::from(([127, 0, 0, 1], port)) });
        ingress.stop();
    }

    #[test]
    fn ended_udp_flows_are_forgotten_and_live_ones_capped() {
        // Review finding: flows of clients that never came back stayed in the table for the life of the listener.
        let mut flows = HashMap::new();
        let mut live = Vec::new();
        for port in 0..4u16 {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
            flows.insert(SocketAddr::from(([198, 18, 0, 200], 40_000 + port)), tx);
            live.push(rx);
        }
        assert!(!make_room(&mut flows, 4), "four live flows fill a table of four");
        drop(live.pop()); // one flow's task ends
        assert!(make_room(&mut flows, 4), "the ended flow's slot is reused");
        assert_eq!(flows.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn udp_flows_stick_to_one_backend_per_client() {
        let (port, target) = (free_port(), free_port());
        for (ip, name) in [([127, 0, 0, 31], "u1"), ([127, 0, 0, 32], "u2")] {
            let socket = UdpSocket::bind(SocketAddr::from((ip, target))).await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let answer = [name.as_bytes(), b" ", &buf[..n]].concat();
                    let _ = socket.send_to(&answer, from).await;
                }
            });
        }
        let ingress = ingress();
        let status = ingress.status_handle();
        ingress.catalog_sender().send_replace(catalog(
            port,
            target,
            Protocol::Udp,
            false,
            &[[127, 0, 0, 31], [127, 0, 0, 32]],
        ));
        wait_for("the listener", || status.services().first().is_some_and(|s| s.listening)).await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.connect(("127.0.0.1", port)).await.unwrap();
            let mut names = Vec::new();
            for k in 0..3 {
                client.send(format!("m{k}").as_bytes()).await.unwrap();
                let mut buf = [0u8; 64];
                let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf)).await.unwrap().unwrap();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.ends_with(&format!("m{k}")), "{text}");
                names.push(text[..2].to_owned());
            }
            assert!(names.iter().all(|n| *n == names[0]), "one flow, one backend: {names:?}");
            seen.push(names[0].clone());
        }
        seen.sort();
        assert_eq!(seen, ["u1", "u2"], "two flows, two backends");
        ingress.stop();
    }
}
