//! The namespace suite, one test binary: every host is a network namespace a test creates and deletes.
//!
//! One binary links once (thin LTO of the whole weft crate per binary took minutes for twenty-odd files); each
//! module is one area. Run one area: `cargo test -p weft-integration --release --test suite -- --include-ignored
//! --test-threads=1 workers::`.

mod af_xdp;
mod attach_edges;
mod batched;
mod churn;
mod cni;
mod daemon_lifecycle;
mod encrypted;
mod gathered;
mod gossip_crash_restart;
mod gossip_five_hosts;
mod gossip_refusals;
mod ingress;
mod isolation;
mod kernel_interop;
mod lab;
mod operations;
mod reliability_adversarial;
mod reliability_faults;
mod services;
mod three_hosts;
mod tshark;
mod workers;
