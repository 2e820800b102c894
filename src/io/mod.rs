//! Everything that touches the host: the TAP devices, the underlay (UDP sockets or AF_XDP) and netlink.
//!
//! This is the only module with `unsafe` (the TAP ioctls, socket options, AF_XDP rings and libbpf, setns); each
//! block says why it is sound.

pub mod batch;
pub mod capture;
pub mod datapath;
pub mod netlink;
pub mod netns;
pub mod peers;
pub mod tap;
pub mod udp;
pub mod underlay;
pub mod waker;
pub mod xdp;
