//! Swarm-style services on top of the overlay: `weft attach`/`detach` ([`attach`]), the gateway's egress NAT
//! ([`egress`]) and the DNS resolver on the gateway ([`dns`]).
//!
//! ```text
//!  api attach ─► Services::attach ─► AgentCommand::Allocate (IPAM) ─► netlink: veth, netns, address, route
//!                                  └► AgentCommand::Register (ep/ record with name and service=S label)
//!  gossip ep/ records ─► Names ─► dns (A/AAAA/PTR on the gateway, port 53) and the `services` API method
//!  daemon start/exit ─► egress: table `inet weft` (masquerade; internal networks dropped) through nft's JSON
//! ```

pub mod attach;
pub mod dns;
pub mod egress;

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
