//! Entering a network namespace on the calling thread, for sockets that must live in an endpoint's namespace.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the network namespace open as `netns` (a `/run/netns/NAME` file). Only for a
/// thread of its own that ends right after: the thread's namespace is not restored.
pub fn enter(netns: &File) -> std::io::Result<()> {
    // SAFETY: setns takes a descriptor we own for the duration of the call and a namespace type flag; it changes
    // only the calling thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
