//! weft's XDP program (weft_xdp.c, compiled by build.rs) on the underlay link: loaded and configured with libbpf,
//! attached last, detached on drop; and the removal of one a killed weft left behind.
//!
//! The program is attached in native (driver) mode where the driver has it, else in generic (SKB) mode, and never
//! over a program weft did not attach itself (`XDP_FLAGS_UPDATE_IF_NOEXIST`). Native mode comes first also on veth:
//! there the peer stops handing over GSO super-packets once an XDP program is attached, so every datagram reaches
//! the AF_XDP socket as one frame, where generic mode would see whole 64 KB super-packets.

use std::ffi::CStr;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use libbpf_sys as bpf;
use tracing::{info, warn};

/// The BPF object build.rs made.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weft_xdp.o"));

/// The program's name, as the kernel reports it: how a stale copy is recognised.
pub const PROGRAM_NAME: &str = "weft_xdp";
const PROGRAM: &CStr = c"weft_xdp";
const CONFIG_MAP: &CStr = c"weft_config";
const XSKS_MAP: &CStr = c"weft_xsks";
/// The XSKMAP's size in weft_xdp.c: queues beyond it cannot have a socket.
pub const MAX_QUEUES: u32 = 256;

/// Why the program could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// libbpf could not open or load the object (the verifier's reasons are on stderr).
    #[error("loading the XDP program: {0}")]
    Load(io::Error),
    /// A map update failed.
    #[error("configuring the XDP program's map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Neither native nor generic attach worked.
    #[error("attaching the XDP program to {link}: native: {native}; generic: {generic}")]
    Attach {
        /// The link.
        link: String,
        /// Why native mode failed.
        native: io::Error,
        /// Why generic mode failed.
        generic: io::Error,
    },
}

/// How the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Native,
    /// On the generic receive path (XDP_FLAGS_SKB_MODE).
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            Self::Native => bpf::XDP_FLAGS_DRV_MODE,
            Self::Generic => bpf::XDP_FLAGS_SKB_MODE,
        }
    }

    /// `native` or `generic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// What the program matches, as weft_xdp.c's `struct weft_config` lays it out (addresses and ports in network
/// order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Config {
    ipv4: u32,
    ipv6: [u8; 16],
    vxlan_port: u16,
    esp_port: u16,
    family: u32,
}

/// The loaded program; attached once [`XdpProgram::attach`] succeeds, detached on drop.
#[derive(Debug)]
pub struct XdpProgram {
    object: *mut bpf::bpf_object,
    prog_fd: RawFd,
    xsks_fd: RawFd,
    attached: Option<(u32, AttachMode)>,
}

// SAFETY: the bpf_object is owned by this value alone and libbpf keeps no thread-affine state in it; it is only used
// through &mut self or on drop.
unsafe impl Send for XdpProgram {}

fn last_error(rc: i32) -> io::Error {
    // libbpf 1.x returns -errno.
    if rc < 0 {
        io::Error::from_raw_os_error(-rc)
    } else {
        io::Error::last_os_error()
    }
}

impl XdpProgram {
    /// Loads the program and tells it to take UDP to `underlay` on the two ports.
    pub fn load(underlay: IpAddr, vxlan_port: u16, esp_port: u16) -> Result<Self, ProgramError> {
        // SAFETY: OBJECT is a static byte slice that outlives the call; a null opts pointer asks for the defaults.
        let object = unsafe { bpf::bpf_object__open_mem(OBJECT.as_ptr().cast(), OBJECT.len() as _, std::ptr::null()) };
        if object.is_null() {
            return Err(ProgramError::Load(io::Error::last_os_error()));
        }
        let mut program = Self { object, prog_fd: -1, xsks_fd: -1, attached: None };
        // SAFETY: `object` is a live object from open_mem; closing it on error is left to Drop.
        let rc = unsafe { bpf::bpf_object__load(object) };
        if rc != 0 {
            return Err(ProgramError::Load(last_error(rc)));
        }
        // SAFETY: `object` is loaded; the names are NUL-terminated constants.
        let (prog, config_fd, xsks_fd) = unsafe {
            (
                bpf::bpf_object__find_program_by_name(object, PROGRAM.as_ptr()),
                bpf::bpf_object__find_map_fd_by_name(object, CONFIG_MAP.as_ptr()),
                bpf::bpf_object__find_map_fd_by_name(object, XSKS_MAP.as_ptr()),
            )
        };
        if prog.is_null() || config_fd < 0 || xsks_fd < 0 {
            return Err(ProgramError::Load(io::Error::new(
                io::ErrorKind::NotFound,
                "the BPF object lacks weft_xdp, weft_config or weft_xsks",
            )));
        }
        // SAFETY: `prog` belongs to the loaded object.
        program.prog_fd = unsafe { bpf::bpf_program__fd(prog) };
        program.xsks_fd = xsks_fd;
        let mut config = Config { vxlan_port: vxlan_port.to_be(), esp_port: esp_port.to_be(), ..Config::default() };
        match underlay {
            IpAddr::V4(v4) => {
                config.ipv4 = u32::from_ne_bytes(v4.octets());
                config.family = 4;
            }
            IpAddr::V6(v6) => {
                config.ipv6 = v6.octets();
                config.family = 6;
            }
        }
        let key = 0u32;
        // SAFETY: key and value point at live values of the map's key and value sizes (u32 and struct weft_config).
        let rc = unsafe {
            bpf::bpf_map_update_elem(config_fd, (&key as *const u32).cast(), (&config as *const Config).cast(), 0)
        };
        if rc != 0 {
            return Err(ProgramError::Map { map: "weft_config", source: last_error(rc) });
        }
        Ok(program)
    }

    /// Sends what arrives on `queue` to the AF_XDP socket `xsk`.
    pub fn set_socket(&self, queue: u32, xsk: RawFd) -> Result<(), ProgramError> {
        let value = xsk as u32;
        // SAFETY: key and value point at live u32s, the XSKMAP's key and value sizes.
        let rc = unsafe {
            bpf::bpf_map_update_elem(self.xsks_fd, (&queue as *const u32).cast(), (&value as *const u32).cast(), 0)
        };
        if rc != 0 {
            return Err(ProgramError::Map { map: "weft_xsks", source: last_error(rc) });
        }
        Ok(())
    }

    /// Attaches to link `ifindex` (named `link` in messages): native mode if the driver can, else generic.
    pub fn attach(&mut self, ifindex: u32, link: &str) -> Result<AttachMode, ProgramError> {
        let mut errors = Vec::with_capacity(2);
        for mode in [AttachMode::Native, AttachMode::Generic] {
            // SAFETY: plain syscall wrapper on a program fd this object owns; null opts are allowed.
            let rc = unsafe {
                bpf::bpf_xdp_attach(
                    ifindex as i32,
                    self.prog_fd,
                    bpf::XDP_FLAGS_UPDATE_IF_NOEXIST | mode.flags(),
                    std::ptr::null(),
                )
            };
            if rc == 0 {
                self.attached = Some((ifindex, mode));
                return Ok(mode);
            }
            errors.push(last_error(rc));
        }
        let generic = errors.pop().expect("two attempts");
        let native = errors.pop().expect("two attempts");
        Err(ProgramError::Attach { link: link.into(), native, generic })
    }

    /// Detaches the program if it is attached.
    pub fn detach(&mut self) {
        if let Some((ifindex, mode)) = self.attached.take() {
            if let Err(e) = detach(ifindex, mode) {
                warn!(ifindex, error = %e, "could not detach the XDP program");
            }
        }
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        self.detach();
        // SAFETY: `object` came from open_mem and is closed exactly once, here; this also closes its fds.
        unsafe { bpf::bpf_object__close(self.object) };
    }
}

fn detach(ifindex: u32, mode: AttachMode) -> io::Result<()> {
    // SAFETY: plain syscall wrapper; null opts are allowed.
    let rc = unsafe { bpf::bpf_xdp_detach(ifindex as i32, mode.flags(), std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error(rc))
    }
}

/// The name of the XDP program attached to `ifindex` in `mode`, with its id, if there is one.
pub fn attached_program(ifindex: u32, mode: AttachMode) -> io::Result<Option<(u32, String)>> {
    let mut id = 0u32;
    // SAFETY: `id` is a live u32 the call writes.
    let rc = unsafe { bpf::bpf_xdp_query_id(ifindex as i32, mode.flags() as i32, &mut id) };
    if rc != 0 {
        return Err(last_error(rc));
    }
    if id == 0 {
        return Ok(None);
    }
    // SAFETY: plain syscall wrapper; the fd it returns is closed below.
    let fd = unsafe { bpf::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(last_error(fd));
    }
    // SAFETY: bpf_prog_info is plain data; the kernel fills at most `len` bytes of it.
    let mut info: bpf::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<bpf::bpf_prog_info>() as u32;
    // SAFETY: `info` and `len` are live and `len` is its size.
    let rc = unsafe { bpf::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(last_error(rc));
    }
    let name: Vec<u8> = info.name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Ok(Some((id, String::from_utf8_lossy(&name).into_owned())))
}

/// Detaches a weft XDP program a previous weft left on `ifindex` (killed before it could detach), in either mode.
/// Returns how many it removed. A program of another name is left alone.
pub fn remove_stale(ifindex: u32, link: &str) -> usize {
    let mut removed = 0;
    for mode in [AttachMode::Native, AttachMode::Generic] {
        match attached_program(ifindex, mode) {
            Ok(Some((id, name))) if name == PROGRAM_NAME => match detach(ifindex, mode) {
                Ok(()) => {
                    info!(link, id, mode = mode.as_str(), "detached a stale weft XDP program left by an earlier run");
                    removed += 1;
                }
                Err(e) => warn!(link, id, error = %e, "could not detach a stale weft XDP program"),
            },
            Ok(_) => {}
            Err(e) => warn!(link, error = %e, "could not query the XDP program of the underlay link"),
        }
    }
    removed
}
