//! `weft run`: sets the host up, runs the data-path worker, serves the API, and undoes everything on exit.
//!
//! ```text
//!  config ─► host setup (netlink: underlay check, bridges, TAPs, MTU) ─► worker thread (io::datapath)
//!                                                                         ▲  queries
//!                           api socket (tokio) ──────────────────────────┘
//!  SIGINT/SIGTERM ─► stop worker ─► close TAPs (the kernel removes them) ─► delete the bridges weft created
//! ```

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use overlay_proto::fdb::FdbConfig;
use overlay_proto::forward::{Forwarder, ForwarderConfig, NetworkConfig as EngineNetwork, RateLimit};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::api;
use crate::clock;
use crate::config::Config;
use crate::control::agent::{Agent, AgentConfig};
use crate::control::pki::NodeIdentity;
use crate::io::datapath::Datapath;
use crate::io::netlink::{Link, Netlink};
use crate::io::tap::Tap;
use crate::io::udp::Underlay;
use crate::services::ingress::{Ingress, IngressConfig};

/// The `ifalias` weft puts on bridges it creates, so a restart after a crash adopts (and later removes) them.
fn bridge_alias(network: &str) -> String {
    format!("weft:{network}")
}

/// What this process changed on the host, to be undone on exit.
#[derive(Debug, Default)]
struct HostState {
    owned_bridges: Vec<Link>,
    taps: Vec<Tap>,
    /// Ingress addresses added to bridges: (bridge index, address).
    addresses: Vec<(u32, IpAddr)>,
}

impl HostState {
    async fn teardown(self, netlink: &Netlink) {
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
    let underlay = setup.and_then(|()| {
        Underlay::open(config.node.underlay, config.node.vxlan_port, config.node.esp_port).map_err(anyhow::Error::from)
    });
    let mut underlay = match underlay {
        Ok(u) => u,
        Err(e) => {
            host.teardown(&netlink).await;
            return Err(e);
        }
    };

    if config.node.offload {
        let batching = underlay.enable_batching();
        info!(gso = batching.gso, gro = batching.gro, "underlay batching");
    }
    let forwarder = Forwarder::new(engine_config(&config), clock::now());
    let stop = Arc::new(AtomicBool::new(false));
    let identity = match &config.control {
        Some(c) => Some(Arc::new(NodeIdentity::load(&c.ca, &c.cert, &c.key)?)),
        None => None,
    };
    let (local_tx, local_rx) = tokio::sync::mpsc::channel(4096);
    let local_tx = identity.is_some().then_some(local_tx);
    let (datapath, handle) =
        Datapath::new(forwarder, std::mem::take(&mut host.taps), underlay, stop.clone(), local_tx)?;
    let worker = std::thread::Builder::new().name("weft-datapath".into()).spawn(move || datapath.run())?;

    let ingress = config.control.is_some().then(|| {
        Ingress::start(IngressConfig {
            local_vtep: config.node.underlay,
            sources: config.networks.iter().filter_map(|n| Some((n.vni(), n.ingress_address?))).collect(),
        })
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
            };
            Some(Agent::start(agent_config, identity, handle.clone(), local_rx)?)
        }
        _ => None,
    };
    let service_api = match (&agent, &ingress) {
        (Some(agent), Some(ingress)) => {
            Some(api::ServiceApi { status: ingress.status_handle(), commands: agent.commands.clone() })
        }
        _ => None,
    };
    let api = api::serve(&config, handle, agent.as_ref().map(|a| a.status.clone()), service_api);
    let outcome = match api {
        Ok(api_task) => {
            info!(networks = config.networks.len(), "ready");
            let outcome = wait_for_exit(&worker).await;
            api_task.abort();
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

    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || worker.join()).await?;
    match joined {
        Ok(Ok(taps)) => host.taps = taps,
        Ok(Err(e)) => warn!(error = %e, "data path stopped with an error"),
        Err(_) => warn!("data path panicked"),
    }
    host.teardown(&netlink).await;
    info!("stopped");
    outcome
}

async fn wait_for_exit(worker: &std::thread::JoinHandle<std::io::Result<Vec<Tap>>>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
            _ = check.tick() => if worker.is_finished() { bail!("the data path stopped unexpectedly") },
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
        let tap = Tap::open(&net.tap_name(), config.node.offload)?;
        let tap_link = netlink
            .link_by_name(tap.name())
            .await?
            .with_context(|| format!("TAP {} vanished right after it was created", tap.name()))?;
        let offloads = tap.offloads();
        host.taps.push(tap);
        netlink.attach_to_bridge(tap_link.index, bridge.index, mtu).await?;
        if let Some(addr) = net.ingress_address {
            netlink.add_address(bridge.index, addr, net.subnet.prefix_len()).await?;
            host.addresses.push((bridge.index, addr));
            info!(network = %net.name, %addr, bridge = %bridge_name, "ingress address up");
        }
        info!(network = %net.name, vni = net.vni, tap = %tap_link.name, bridge = %bridge_name, mtu, tso = offloads.vnet_hdr, uso = offloads.uso, "network up");
    }
    Ok(())
}

fn engine_config(config: &Config) -> ForwarderConfig {
    let underlay: IpAddr = config.node.underlay;
    ForwarderConfig {
        local_vtep: underlay,
        fdb: FdbConfig { ageing: Duration::from_secs(config.node.ageing_secs), ..FdbConfig::default() },
        local_ageing: Duration::from_secs(config.node.ageing_secs),
        vxlan_port: config.node.vxlan_port,
        flow_seed: u64::from_le_bytes(*b"weftflow")
            ^ config.node.name.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)),
        networks: config
            .networks
            .iter()
            .map(|n| EngineNetwork {
                vni: n.vni(),
                learning: n.learning.into(),
                peers: n.peers.clone(),
                static_fdb: n.static_fdb(),
                flood_limit: RateLimit::default(),
                encrypted: n.is_encrypted(),
            })
            .collect(),
    }
}
