//! weft's protocol core, sans-IO.
//!
//! This crate decides what happens to every frame and datagram, but never touches a socket, a file, a thread or the
//! clock: the caller passes bytes and `now` in, and gets decisions out.
//!
//! ```text
//!   TAP frame ──► Forwarder::handle_tap_frame ──► Egress { unicast VTEP | flood list | drop(reason) }
//!                        │ (FDB lookup, flow hash)        └─► caller writes the VXLAN header in place and sends
//!   UDP datagram ─► Forwarder::handle_underlay ──► Ingress { network, inner frame range } | drop(reason)
//!                        └─ validates VXLAN, VNI and sender; learns MAC → VTEP when enabled
//! ```
//!
//! - [`wire`]: zero-copy views over untrusted bytes (Ethernet, ARP, IPv4, IPv6, UDP, VXLAN), smoltcp style.
//! - [`fdb`]: the forwarding table, (VNI, MAC) → VTEP, with static entries, learning, ageing and flood lists.
//! - [`forward`]: the per-host forwarding engine the daemon's data path drives; [`local`] discovers the endpoints
//!   behind this host's TAPs.
//! - [`neighbor`]: answers ARP requests and Neighbor Solicitations ([`wire::icmpv6`]) for suppression.
//! - [`offload`]: the TAP's virtio-net header: splits TSO/USO superframes into wire frames with complete
//!   checksums, and coalesces received TCP segments back into superframes (GRO), using [`wire::tcp`].
//! - [`endpoint`]: the records hosts publish about their endpoints and networks; [`directory`] turns their changes
//!   into updates for the forwarding engine.
//! - [`gossip`]: the control plane: membership, replicated records, dissemination; [`codec`] is its byte format.
//! - [`service`]: published services (`svc/<name>` records) and the catalog of services and their backends;
//!   [`balance`] picks a backend per connection; [`wire::proxy`] writes the PROXY protocol v2 header.
//! - [`ipam`]: address blocks claimed through gossip, and the addresses handed out from them;
//!   [`ingress_address`] takes each host's own address for the ingress mesh out of them.
//! - [`names`]: every endpoint by name and service, for the DNS resolver and the ingress mesh.
//! - [`keying`]: per-pair X25519 key agreement and make-before-break rekeying for encrypted networks.
//! - [`sim`]: a deterministic network simulator (virtual time, seeded loss, latency, partitions) that drives
//!   many [`gossip::Gossip`] nodes in one process.
//!
//! Not here: IO of any kind (see the `weft` binary's `io` module), encryption (the `weft-crypto` crate).
#![forbid(unsafe_code)]

pub mod balance;
pub mod codec;
pub mod directory;
pub mod endpoint;
pub mod fdb;
pub mod flow;
pub mod forward;
pub mod gossip;
pub mod ingress_address;
pub mod ipam;
pub mod keying;
pub mod local;
pub mod names;
pub mod neighbor;
pub mod offload;
pub mod rng;
pub mod service;
pub mod sim;
pub mod types;
pub mod wire;

pub use types::{FastMap, MacAddr, NodeId, Vni, VniError};
