//! Swarm-style services on top of the overlay: `weft attach`/`detach` ([`attach`]), the gateway's egress NAT
//! ([`egress`]), the DNS resolver on the gateway ([`dns`]) and the ingress routing mesh ([`ingress`]), which publishes
//! a service's port on every host and balances it over the service's backends anywhere in the cluster.
//!
//! ```text
//!  api attach ─► Services::attach ─► AgentCommand::Allocate (IPAM) ─► netlink: veth, netns, address, route
//!                                  └► AgentCommand::Register (ep/ record with name and service=S label)
//!  gossip ep/ records ─► Names ─► dns (A/AAAA/PTR on the gateway, port 53) and the `services` API method
//!  gossip svc/ and ep/ records ─► Catalog ─► ingress (listeners, overlay_proto::balance, PROXY v2 header)
//!  daemon start/exit ─► egress: table `inet weft` (masquerade; internal networks dropped) through nft's JSON
//! ```

pub mod attach;
pub mod dns;
pub mod egress;
pub mod ingress;

use std::net::IpAddr;

use ipnet::IpNet;
use overlay_proto::Vni;

/// What the services need to know about one network.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: Vni,
    /// Its subnet.
    pub subnet: IpNet,
    /// The local bridge.
    pub bridge: String,
    /// The overlay MTU, given to endpoints.
    pub mtu: u32,
    /// The gateway address on the bridge.
    pub gateway: IpAddr,
    /// No egress.
    pub internal: bool,
    /// The DNS domain.
    pub domain: String,
}
