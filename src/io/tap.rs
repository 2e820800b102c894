//! A thin TAP device of our own: `/dev/net/tun` with `TUNSETIFF`.
//!
//! Why not the `tun-tap` crate: it cannot open a TAP with `IFF_VNET_HDR` (the virtio-net header that carries TSO/GSO
//! superframes and checksum offload) nor with `IFF_MULTI_QUEUE` (one queue per worker), and weft's performance path
//! needs both. Why not `tun-rs`: it would work, but weft only needs open + one ioctl + read/write on a raw fd that
//! the worker polls itself; the ~100 lines here keep the flags under our control with no async runtime attached.
//!
//! The device is not persistent: the kernel removes it when the last file descriptor closes, so a crash leaves no
//! TAP behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)` from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
/// `struct virtio_net_hdr` without `num_buffers`.
pub const VNET_HDR_LEN: usize = 10;

/// What the kernel agreed to hand weft unsegmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Frames carry a virtio-net header; checksums may be partial; TCP comes as up to 64 KB superframes.
    pub vnet_hdr: bool,
    /// UDP comes as superframes too (USO, Linux 6.2+).
    pub uso: bool,
}

/// Why a TAP could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` does not exist.
    #[error("cannot open /dev/net/tun: the TUN/TAP driver is missing (load it with `modprobe tun`, or in a container pass the device with --device /dev/net/tun)")]
    NoTunDevice,
    /// The process may not create network devices.
    #[error("creating TAP device {name} needs CAP_NET_ADMIN: run weft as root or grant it the capability (setcap cap_net_admin+ep)")]
    PermissionDenied {
        /// The TAP's name.
        name: String,
    },
    /// A device of that name exists and is not a free TAP (another weft may be running for this network).
    #[error(
        "TAP device {name} is busy: another weft may already serve this network, or an interface of that name exists"
    )]
    Busy {
        /// The TAP's name.
        name: String,
    },
    /// Anything else the kernel said.
    #[error("creating TAP device {name}: {source}")]
    Io {
        /// The TAP's name.
        name: String,
        /// The error.
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, padded to the union's size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device, non-blocking, without packet information headers: reads and writes are whole Ethernet frames.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: Offloads,
}

impl Tap {
    /// Creates the TAP device `name` with `queues` queues (`IFF_MULTI_QUEUE` when more than one), one descriptor
    /// each, so each data-path worker reads and writes its own. The kernel steers the frames it hands the TAP by
    /// flow hash, and sends a flow's frames to the queue that last wrote that flow, so a flow stays on one worker.
    /// With `offload`, the TAP carries virtio-net headers and accepts TSO/USO superframes and partial checksums; if
    /// the kernel refuses, it falls back to plain frames.
    pub fn open_queues(name: &str, offload: bool, queues: usize) -> Result<Vec<Self>, TapError> {
        let multi = queues > 1;
        let mut taps: Vec<Self> = Vec::with_capacity(queues);
        for _ in 0..queues.max(1) {
            let tap = Self::open_one(name, offload, multi)?;
            // Every queue must agree on the header; the first decides.
            if taps.first().is_some_and(|first| first.offloads != tap.offloads) {
                let source = io::Error::other("the TAP's queues disagree on offloads");
                return Err(TapError::Io { name: name.into(), source });
            }
            taps.push(tap);
        }
        Ok(taps)
    }

    /// Creates (or attaches to) the single-queue TAP device `name`; see [`Tap::open_queues`].
    pub fn open(name: &str, offload: bool) -> Result<Self, TapError> {
        Self::open_one(name, offload, false)
    }

    fn open_one(name: &str, offload: bool, multi_queue: bool) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TapError::Io { name: name.into(), source: io::Error::from(io::ErrorKind::InvalidInput) });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice,
                io::ErrorKind::PermissionDenied => TapError::PermissionDenied { name: name.into() },
                _ => TapError::Io { name: name.into(), source: e },
            })?;
        let flags = IFF_TAP
            | IFF_NO_PI
            | if offload { IFF_VNET_HDR } else { 0 }
            | if multi_queue { IFF_MULTI_QUEUE } else { 0 };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `file` is an open /dev/net/tun descriptor and `req` is a properly sized, initialised ifreq that
        // outlives the call; TUNSETIFF only reads and writes within it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name: name.into() },
                Some(libc::EBUSY) | Some(libc::EINVAL) => TapError::Busy { name: name.into() },
                _ => TapError::Io { name: name.into(), source: e },
            });
        }
        let mut tap = Self { file, name: name.into(), offloads: Offloads::default() };
        if offload {
            tap.offloads = tap.enable_offloads();
        }
        Ok(tap)
    }

    /// Sets the header size and asks for checksum, TSO and (where the kernel has it) USO offload.
    fn enable_offloads(&self) -> Offloads {
        let fd = self.file.as_raw_fd();
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a live local.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &size as *const libc::c_int) } < 0 {
            return Offloads::default();
        }
        let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, (tcp | TUN_F_USO4 | TUN_F_USO6) as libc::c_ulong) } == 0 {
            return Offloads { vnet_hdr: true, uso: true };
        }
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, tcp as libc::c_ulong) } == 0 {
            return Offloads { vnet_hdr: true, uso: false };
        }
        // The header is still there (IFF_VNET_HDR); without offloads it only ever says "nothing to do".
        Offloads { vnet_hdr: true, uso: false }
    }

    /// The offloads in effect. When `vnet_hdr` is set, every frame read or written starts with a
    /// [`VNET_HDR_LEN`]-byte virtio-net header.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame; `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame given in pieces (a virtio-net header and headers, then payloads left where they were
    /// received), with one `writev`: the TAP reads the iovecs as one frame. At most UIO_MAXIOV (1024) pieces.
    pub fn send_vectored(&self, pieces: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // IoSlice is guaranteed ABI-compatible with struct iovec on Unix.
        // SAFETY: `pieces` is a valid array of `pieces.len()` iovecs, each describing a live readable slice, for the
        // duration of the call; the kernel only reads through them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), pieces.as_ptr().cast(), pieces.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a valid readable slice of `frame.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
