//! The `weft` daemon and CLI: everything that touches the host.
//!
//! ```text
//!  main.rs / cli ──► daemon ──► io::netlink   (bridges, TAP attach, MTU, underlay check)
//!                      │   ├──► io::datapath  (worker: io::tap ⇄ overlay_proto::forward ⇄ io::udp)
//!                      │   ├──► api           (unix socket JSON: status, peers, stats, fdb, capture, attach...)
//!                      │   ├──► metrics       (Prometheus over HTTP, from the same snapshots)
//!                      │   └──► services      (attach/detach, egress NAT, DNS on the gateway, ingress routing mesh)
//!                      └──── config           (TOML, validated before anything is touched)
//!  bin/weft-cni ──► cni (CNI environment, config, result; no IO) ──► cli::call ──► api (attach, detach, check)
//! ```
//!
//! Protocol decisions live in the `overlay-proto` crate (sans-IO); this crate only moves bytes and talks to the
//! kernel.

pub mod api;
pub mod cli;
pub mod clock;
pub mod cni;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod io;
pub mod metrics;
pub mod services;
