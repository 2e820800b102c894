//! How the gossip core checks who said what, without knowing about certificates or signature algorithms.
//!
//! The daemon implements [`Authenticator`] with the cluster CA, X.509 certificates and Ed25519 (src/control/pki.rs);
//! the simulator implements it with a keyed hash. The core only moves credentials and signatures as opaque bytes.

use crate::NodeId;

/// Credential and signature checks for gossip.
pub trait Authenticator {
    /// This node's id.
    fn local_id(&self) -> NodeId;

    /// This node's credential (its certificate, DER), carried in its membership record so others can verify it.
    fn local_credential(&self) -> &[u8];

    /// Signs `message` as this node.
    fn sign(&self, message: &[u8]) -> Vec<u8>;

    /// Checks that `credential` is valid (issued by the cluster CA, not expired) and belongs to node `id` (its key
    /// hashes to `id`). Implementations may cache the result.
    fn check_credential(&mut self, id: NodeId, credential: &[u8]) -> bool;

    /// Verifies `signature` over `message` by the holder of `credential`, which `check_credential` accepted.
    fn verify(&self, credential: &[u8], message: &[u8], signature: &[u8]) -> bool;
}
