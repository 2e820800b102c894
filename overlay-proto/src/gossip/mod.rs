//! The control plane's protocol, sans-IO: membership (SWIM with suspicion and incarnations), a replicated table of
//! per-origin signed records, rumour pushes and digest anti-entropy.
//!
//! - [`message`]: the wire format and its codec.
//! - [`table`]: the record store with per-origin versions and tombstones.
//! - [`node`]: the state machine a daemon (or the simulator) drives.
//! - [`auth`]: the credential and signature checks it relies on, implemented by the caller.
//!
//! The transport is the caller's: it must authenticate peers (the daemon uses QUIC with mutual TLS) and pass the
//! sender's [`crate::NodeId`] with every message, so claims can be checked against who made them.

pub mod auth;
pub mod message;
pub mod node;
pub mod table;

pub use message::Liveness;
pub use node::{Event, Gossip, GossipConfig, GossipError, GossipStats, LocalNode, MemberHealth, Transmit};
