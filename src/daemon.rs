//! `weft run`: sets the host up, runs the data-path worker, serves the API, and undoes everything on exit.
//!
//! ```text
//!  config ─► host setup (netlink: underlay check, bridges, TAPs, MTU) ─► worker thread (io::datapath)
//!                                                                         ▲  queries
//!                           api socket (tokio) ──────────────────────────┘
//!                           services: gateway address on each bridge, egress table `inet weft`, DNS, attach
//!                           control agent ─► ingress addresses (watch) ─► on the bridges ─► ingress (watch)
//!  SIGINT/SIGTERM ─► detach endpoints ─► stop worker ─► close TAPs (the kernel removes them) ─► delete the
//!                    bridges weft created, the gateway and ingress addresses it added and the egress table
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use overlay_proto::fdb::FdbConfig;
use overlay_proto::forward::{Forwarder, ForwarderConfig, NetworkConfig as EngineNetwork, RateLimit};
use overlay_proto::ingress_address::IngressNetwork;
use overlay_proto::Vni;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api;
use crate::clock;
use crate::config::{Config, UnderlayMode};
use crate::control::agent::{Agent, AgentConfig, PoolConfig};
use crate::control::pki::NodeIdentity;
use crate::io::datapath::{Datapath, DatapathEvent, DatapathHandle};
use crate::io::netlink::{Link, Netlink};
use crate::io::tap::Tap;
use crate::io::udp::Underlay;
use crate::io::underlay::UnderlayIo;
use crate::io::xdp::{program, XdpLink, XdpUnderlay};
use crate::metrics;
use crate::services::attach::Attacher;
use crate::services::egress::Egress;
use crate::services::ingress::{Ingress, IngressConfig};
use crate::services::{dns, NetworkInfo};

/// The `ifalias` weft puts on bridges it creates, so a restart after a crash adopts (and later removes) them.
fn bridge_alias(network: &str) -> String {
    format!("weft:{network}")
}

/// What this process changed on the host, to be undone on exit.
#[derive(Debug, Default)]
struct HostState {
    owned_bridges: Vec<Link>,
    /// Per network, one TAP descriptor per worker queue.
    taps: Vec<Vec<Tap>>,
    /// Ingress addresses added to bridges: (bridge index, address).
    addresses: Vec<(u32, IpAddr)>,
    /// Each network's bridge (its MAC pinned), in config order.
    bridges: Vec<Link>,
    /// Gateway addresses weft added to bridges it does not own: (bridge, address).
    gateway_addresses: Vec<(Link, IpAddr)>,
    /// What the services need of each network, in config order.
    networks: Vec<NetworkInfo>,
    egress: Option<Egress>,
}

impl HostState {
    async fn teardown(self, netlink: &Netlink) {
        if let Some(egress) = self.egress {
            egress.remove();
        }
        for (bridge, addr) in self.gateway_addresses {
            if let Err(e) = netlink.delete_address(bridge.index, addr).await {
                warn!(bridge = %bridge.name, %addr, error = %e, "could not remove the gateway address");
            }
        }
        drop(self.taps); // closing the last descriptor removes a non-persistent TAP
        for (link, addr) in self.addresses {
            if let Err(e) = netlink.delete_address(link, addr).await {
                warn!(%addr, error = %e, "could not remove the ingress address");
            }
        }
        for bridge in self.owned_bridges {
            match netlink.delete_link(bridge.index).await {
                Ok(()) => info!(bridge = %bridge.name, "removed bridge"),
                Err(e) => warn!(bridge = %bridge.name, error = %e, "could not remove bridge"),
            }
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let netlink = Netlink::connect().context("opening a netlink socket")?;
    let underlay_link = netlink.link_with_address(config.node.underlay).await?.with_context(|| {
        format!(
            "node.underlay {} is not an address of this host: add it to an interface or fix the config",
            config.node.underlay
        )
    })?;
    info!(node = %config.node.name, underlay = %config.node.underlay, link = %underlay_link.name, mtu = underlay_link.mtu, "starting");

    let mut host = HostState::default();
    let setup = setup_networks(&config, &netlink, underlay_link.mtu, &mut host).await;
    let setup = setup.and_then(|()| {
        host.egress = Some(Egress::install(&host.networks)?);
        Ok(())
    });
    let workers = config.node.worker_count();
    let underlays = setup.and_then(|()| {
        let node = &config.node;
        Underlay::open_workers(node.underlay, node.vxlan_port, node.esp_port, workers).map_err(anyhow::Error::from)
    });
    let underlays = match underlays {
        Ok(u) => u,
        Err(e) => {
            host.teardown(&netlink).await;
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let identity = match &config.control {
        Some(c) => Some(Arc::new(NodeIdentity::load(&c.ca, &c.cert, &c.key)?)),
        None => None,
    };
    let (local_tx, local_rx) = tokio::sync::mpsc::channel(4096);
    let local_tx = identity.is_some().then_some(local_tx);
    let (threads, handle) = spawn_workers(&config, &netlink, &underlay_link, underlays, &mut host, &stop, local_tx)?;

    // This host's ingress address per network: chosen by the agent, put on the bridge here, then used by the ingress.
    let (wanted_tx, wanted_rx) = watch::channel(BTreeMap::new());
    let (sources_tx, sources_rx) = watch::channel(BTreeMap::new());
    let on_bridges = Arc::new(Mutex::new(Vec::new()));
    let ingress = config
        .control
        .is_some()
        .then(|| Ingress::start(IngressConfig { local_vtep: config.node.underlay, sources: sources_rx }));
    let address_task = ingress.is_some().then(|| {
        let bridges = config.networks.iter().zip(&host.bridges);
        let bridges = bridges.map(|(n, b)| (n.vni(), (b.clone(), n.subnet.prefix_len()))).collect();
        tokio::spawn(apply_ingress_addresses(netlink.clone(), bridges, wanted_rx, sources_tx, on_bridges.clone()))
    });
    let agent = match (&config.control, identity) {
        (Some(c), Some(identity)) => {
            let revision = clock::wall_millis();
            let agent_config = AgentConfig {
                listen: c.listen_addr(config.node.underlay),
                seeds: c.seeds.clone(),
                vtep: config.node.underlay,
                name: config.node.name.clone(),
                vnis: config.networks.iter().map(|n| n.vni()).collect(),
                keying: config.networks.iter().any(|n| n.is_encrypted()).then(|| c.keying()),
                keylog: c.keylog.clone(),
                services: config.services.iter().map(|s| s.record(revision)).collect(),
                catalog: ingress.as_ref().map(Ingress::catalog_sender),
                pools: pools(&config),
                ingress_networks: (config.networks.iter().zip(&host.bridges))
                    .filter_map(|(n, b)| {
                        Some(IngressNetwork { vni: n.vni(), bridge_mac: b.mac?, fixed: n.ingress_address })
                    })
                    .collect(),
                ingress_addresses: Some(wanted_tx),
            };
            Some(Agent::start(agent_config, identity, handle.clone(), local_rx)?)
        }
        _ => None,
    };
    let names = agent.as_ref().map(|a| a.names.clone());
    let attacher = Arc::new(Attacher::new(
        netlink.clone(),
        host.networks.clone(),
        agent.as_ref().map(|a| a.commands.clone()),
        names.clone(),
    ));
    let dns_tasks = match &names {
        Some(names) => dns::serve_all(&host.networks, names.clone(), dns_upstreams(&config)).await,
        None => Vec::new(),
    };
    let api = Arc::new(api::Api {
        config: config.clone(),
        queries: handle,
        control: agent.as_ref().map(|a| a.status.clone()),
        started: clock::now(),
        attacher: attacher.clone(),
        names,
        services: match (&agent, &ingress) {
            (Some(agent), Some(ingress)) => {
                Some(api::ServiceApi { status: ingress.status_handle(), commands: agent.commands.clone() })
            }
            _ => None,
        },
    });
    let metrics = match config.node.metrics {
        Some(addr) => metrics::serve(addr, api.clone()).await.map(Some),
        None => Ok(None),
    };
    let outcome = match metrics.and_then(|metrics| Ok((api::serve(api)?, metrics))) {
        Ok((api_task, metrics_task)) => {
            info!(networks = config.networks.len(), "ready");
            let outcome = wait_for_exit(&threads).await;
            api_task.abort();
            if let Some(task) = metrics_task {
                task.abort();
            }
            for task in dns_tasks {
                task.abort();
            }
            // Withdraw attached endpoints while the control plane can still say so.
            attacher.detach_all().await;
            if let Some(agent) = agent {
                agent.stop().await;
            }
            if let Some(ingress) = ingress {
                ingress.stop();
            }
            let _ = std::fs::remove_file(&config.node.api_socket);
            outcome
        }
        Err(e) => Err(e),
    };
    if let Some(task) = address_task {
        task.abort();
        let _ = task.await;
    }

    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()).await?;
    for (worker, outcome) in joined.into_iter().enumerate() {
        match outcome {
            Ok(Ok(taps)) => host.taps.push(taps),
            Ok(Err(e)) => warn!(worker, error = %e, "data path stopped with an error"),
            Err(_) => warn!(worker, "data path panicked"),
        }
    }
    host.addresses.extend(on_bridges.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default());
    host.teardown(&netlink).await;
    info!("stopped");
    outcome
}

/// The underlay the worker uses: the UDP sockets, or AF_XDP on the underlay link when configured and possible.
/// Whatever the mode, a weft XDP program a killed weft left on the link is removed first.
fn open_underlay(config: &Config, netlink: &Netlink, link: &Link, udp: Underlay) -> Box<dyn UnderlayIo> {
    // UDP GSO and GRO only for the UDP underlay: with AF_XDP the sockets just catch what XDP leaves to the kernel, and
    // GRO for them would make a generic-mode XDP program see whole coalesced super-packets.
    let batched = |mut udp: Underlay| {
        if config.node.offload {
            let batching = udp.enable_batching();
            info!(gso = batching.gso, gro = batching.gro, "underlay batching");
        }
        Box::new(udp)
    };
    program::remove_stale(link.index, &link.name);
    if config.node.underlay_mode == UnderlayMode::Udp {
        return batched(udp);
    }
    let xdp_link = XdpLink { index: link.index, name: link.name.clone(), mtu: link.mtu, mac: link.mac };
    let (vxlan_port, esp_port) = (config.node.vxlan_port, config.node.esp_port);
    match XdpUnderlay::open(udp, &xdp_link, config.node.underlay, vxlan_port, esp_port, netlink.handle()) {
        Ok(xdp) => {
            info!(link = %link.name, "underlay: af_xdp, {}", xdp.describe());
            Box::new(xdp)
        }
        Err(failed) => {
            let (e, udp) = *failed;
            warn!(link = %link.name, "underlay_mode af_xdp is unavailable, falling back to the udp underlay: {e}");
            batched(udp)
        }
    }
}

type WorkerThread = std::thread::JoinHandle<std::io::Result<Vec<Tap>>>;

/// Starts one data-path worker per queue: each gets its own forwarding engine (the SAs inside are shared through
/// [`overlay_proto::forward::SaUpdate`]), one queue of every TAP and its own underlay sockets.
fn spawn_workers(
    config: &Config,
    netlink: &Netlink,
    underlay_link: &Link,
    underlays: Vec<Underlay>,
    host: &mut HostState,
    stop: &Arc<AtomicBool>,
    events: Option<tokio::sync::mpsc::Sender<DatapathEvent>>,
) -> anyhow::Result<(Vec<WorkerThread>, DatapathHandle)> {
    let mut queues: Vec<Vec<Tap>> = underlays.iter().map(|_| Vec::new()).collect();
    for network in std::mem::take(&mut host.taps) {
        for (worker, tap) in network.into_iter().enumerate() {
            queues[worker].push(tap);
        }
    }
    let busy_poll = Duration::from_micros(config.node.busy_poll_us);
    let (mut threads, mut handles) = (Vec::new(), Vec::new());
    for (worker, (underlay, taps)) in underlays.into_iter().zip(queues).enumerate() {
        let underlay = open_underlay(config, netlink, underlay_link, underlay);
        let forwarder = Forwarder::new(engine_config(config, &host.bridges), clock::now());
        let (datapath, handle) =
            Datapath::new(worker, forwarder, taps, underlay, stop.clone(), events.clone(), busy_poll)?;
        let thread = std::thread::Builder::new().name(format!("weft-dp{worker}")).spawn(move || datapath.run())?;
        threads.push(thread);
        handles.push(handle);
    }
    info!(workers = threads.len(), busy_poll_us = config.node.busy_poll_us, "data path running");
    Ok((threads, DatapathHandle::new(handles)))
}

async fn wait_for_exit(workers: &[WorkerThread]) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
            _ = check.tick() => if workers.iter().any(|w| w.is_finished()) { bail!("the data path stopped unexpectedly") },
        }
    }
}

/// Creates or adopts each network's bridge, opens its TAP and attaches it with the overlay MTU.
async fn setup_networks(
    config: &Config,
    netlink: &Netlink,
    underlay_mtu: u32,
    host: &mut HostState,
) -> anyhow::Result<()> {
    // Every MTU is checked before anything is created.
    let mtus = (config.networks.iter().enumerate())
        .map(|(i, net)| net.overlay_mtu(i, config.node.underlay, underlay_mtu))
        .collect::<Result<Vec<u32>, _>>()?;
    for (net, mtu) in config.networks.iter().zip(mtus) {
        let bridge_name = net.bridge_name();
        let alias = bridge_alias(&net.name);
        let bridge = match netlink.link_by_name(&bridge_name).await? {
            Some(link) => {
                if link.alias.as_deref() == Some(alias.as_str()) {
                    info!(bridge = %bridge_name, "adopting a bridge a previous weft created");
                    host.owned_bridges.push(link.clone());
                }
                link
            }
            None => {
                let link = netlink.create_bridge(&bridge_name, &alias).await?;
                info!(bridge = %bridge_name, "created bridge");
                host.owned_bridges.push(link.clone());
                link
            }
        };
        let queues = Tap::open_queues(&net.tap_name(), config.node.offload, config.node.worker_count())?;
        let tap = &queues[0];
        let tap_link = netlink
            .link_by_name(tap.name())
            .await?
            .with_context(|| format!("TAP {} vanished right after it was created", tap.name()))?;
        let offloads = tap.offloads();
        host.taps.push(queues);
        netlink.attach_to_bridge(tap_link.index, bridge.index, mtu).await?;
        // Attach adds and removes bridge ports all the time: the bridge's MAC must not follow them.
        let bridge = netlink.link_by_index(bridge.index).await?;
        netlink.pin_address(&bridge).await?;
        // The gateway (gwbridge): every host's bridge holds the same address; the forwarder keeps its frames local.
        let gateway = net.gateway_addr();
        let owned = host.owned_bridges.iter().any(|b| b.index == bridge.index);
        let addresses = netlink.addresses(bridge.index).await?;
        let present = addresses.iter().any(|(a, _)| *a == gateway);
        // The subnet is IPAM's: no other address of it may sit on the bridge, or an endpoint could get it too. One
        // there now is this host's ingress address, left by a weft that did not stop cleanly.
        let stale = addresses.iter().map(|(a, _)| *a).filter(|a| net.subnet.contains(a) && *a != gateway);
        for addr in stale.filter(|a| Some(*a) != net.ingress_address) {
            warn!(network = %net.name, bridge = %bridge_name, %addr, "removing a stale address of the subnet from the bridge");
            netlink.delete_address(bridge.index, addr).await?;
        }
        if !present {
            netlink.add_address(bridge.index, gateway, net.subnet.prefix_len()).await?;
            if !owned {
                host.gateway_addresses.push((bridge.clone(), gateway));
            }
        }
        host.networks.push(NetworkInfo {
            name: net.name.clone(),
            vni: net.vni(),
            subnet: net.subnet,
            bridge: bridge_name.clone(),
            mtu,
            gateway,
            internal: net.internal,
            domain: net.domain.clone(),
        });
        host.bridges.push(bridge);
        info!(network = %net.name, vni = net.vni, tap = %tap_link.name, bridge = %bridge_name, mtu, tso = offloads.vnet_hdr, uso = offloads.uso, "network up");
    }
    Ok(())
}

/// The IPv4 networks' address pools for the control plane's IPAM.
fn pools(config: &Config) -> Vec<PoolConfig> {
    config
        .networks
        .iter()
        .filter_map(|n| match (n.subnet, n.gateway_addr()) {
            (ipnet::IpNet::V4(subnet), IpAddr::V4(gateway)) => Some(PoolConfig {
                vni: n.vni(),
                network: subnet.network(),
                prefix: subnet.prefix_len(),
                block_prefix: n.block_prefix,
                gateway,
            }),
            _ => None,
        })
        .collect()
}

/// Where DNS forwards names that are not the overlay's: `node.dns_upstream`, or the daemon's /etc/resolv.conf.
fn dns_upstreams(config: &Config) -> Vec<std::net::SocketAddr> {
    if let Some(upstreams) = &config.node.dns_upstream {
        return upstreams.clone();
    }
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => dns::upstreams_from_resolv_conf(&text),
        Err(e) => {
            warn!(error = %e, "cannot read /etc/resolv.conf: DNS will answer SERVFAIL for names outside the overlay");
            Vec::new()
        }
    }
}

/// Puts this host's ingress addresses on the bridges as the agent picks them (removing replaced ones), and only then
/// hands them to the ingress, which binds to them. `on_bridges` is what to remove on exit.
async fn apply_ingress_addresses(
    netlink: Netlink,
    bridges: BTreeMap<Vni, (Link, u8)>,
    mut wanted: watch::Receiver<BTreeMap<Vni, IpAddr>>,
    applied: watch::Sender<BTreeMap<Vni, IpAddr>>,
    on_bridges: Arc<Mutex<Vec<(u32, IpAddr)>>>,
) {
    loop {
        let want = wanted.borrow_and_update().clone();
        let mut now_applied = applied.borrow().clone();
        let gone: Vec<(Vni, IpAddr)> =
            now_applied.iter().filter(|(vni, addr)| want.get(vni) != Some(addr)).map(|(v, a)| (*v, *a)).collect();
        for (vni, addr) in gone {
            // The ingress stops binding to it before it leaves the bridge.
            now_applied.remove(&vni);
            applied.send_replace(now_applied.clone());
            let Some((bridge, _)) = bridges.get(&vni) else { continue };
            match netlink.delete_address(bridge.index, addr).await {
                Ok(()) => info!(%vni, bridge = %bridge.name, %addr, "ingress address removed"),
                Err(e) => warn!(%vni, bridge = %bridge.name, %addr, error = %e, "could not remove the ingress address"),
            }
            if let Ok(mut list) = on_bridges.lock() {
                list.retain(|(_, a)| *a != addr);
            }
        }
        let new: Vec<(Vni, IpAddr)> =
            want.iter().filter(|(vni, addr)| now_applied.get(vni) != Some(addr)).map(|(v, a)| (*v, *a)).collect();
        for (vni, addr) in new {
            let Some((bridge, prefix)) = bridges.get(&vni) else { continue };
            // Noted before it is added, so an exit in between still removes it.
            if let Ok(mut list) = on_bridges.lock() {
                list.push((bridge.index, addr));
            }
            match netlink.add_address(bridge.index, addr, *prefix).await {
                Ok(()) => {
                    info!(%vni, bridge = %bridge.name, %addr, "ingress address up");
                    now_applied.insert(vni, addr);
                }
                Err(e) => warn!(%vni, bridge = %bridge.name, %addr, error = %e, "could not add the ingress address"),
            }
        }
        applied.send_replace(now_applied);
        if wanted.changed().await.is_err() {
            break;
        }
    }
}

fn engine_config(config: &Config, bridges: &[Link]) -> ForwarderConfig {
    let underlay: IpAddr = config.node.underlay;
    ForwarderConfig {
        local_vtep: underlay,
        fdb: FdbConfig { ageing: Duration::from_secs(config.node.ageing_secs), ..FdbConfig::default() },
        local_ageing: Duration::from_secs(config.node.ageing_secs),
        vxlan_port: config.node.vxlan_port,
        flow_seed: u64::from_le_bytes(*b"weftflow")
            ^ config.node.name.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)),
        networks: (config.networks.iter().zip(bridges))
            .map(|(n, bridge)| EngineNetwork {
                vni: n.vni(),
                learning: n.learning.into(),
                peers: n.peers.clone(),
                static_fdb: n.static_fdb(),
                flood_limit: RateLimit::default(),
                encrypted: n.is_encrypted(),
                gateways: vec![n.gateway_addr()],
                bridge_macs: bridge.mac.into_iter().collect(),
            })
            .collect(),
    }
}
