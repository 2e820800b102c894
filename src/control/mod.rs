//! The control plane's host side: the cluster PKI and the authenticated QUIC transport that gossip runs over.
//!
//! ```text
//!   weft ca init / issue ──► pki::init_ca, pki::issue_node ──► PEM files (keys 0600)
//!   weft run ──► pki::NodeIdentity::load ──┬─► pki::PkiAuthenticator   (gossip credentials and signatures)
//!                                          └─► transport::Transport    (QUIC + mutual TLS 1.3, events by NodeId)
//! ```
//!
//! The gossip state machines themselves are sans-IO, in `overlay_proto::gossip`; this module only gives them
//! identities and bytes.

pub mod agent;
pub mod garbage;
pub mod pki;
pub mod transport;

pub use pki::{node_id_of, CertificateError, NodeIdentity, PkiAuthenticator, PkiError};
pub use transport::{Transport, TransportConfig, TransportError, TransportEvent, TransportStats};
