//! Everything that touches the host: the TAP devices, the underlay UDP sockets and netlink.
//!
//! This is the only module with `unsafe` (the TAP ioctls, setns); each block says why it is sound.

pub mod datapath;
pub mod netlink;
pub mod netns;
pub mod tap;
pub mod udp;
pub mod waker;
