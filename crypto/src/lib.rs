//! weft's encryption layer: ESP-in-UDP (RFC 4303 + RFC 4106 AES-GCM + RFC 3948) sealing and opening in place, the
//! anti-replay window, and the key schedule.
//!
//! ```text
//!  X25519 shares (over QUIC) ─► keys::derive (HKDF-SHA256, node ids, epoch) ─► SaKeys per direction
//!  VXLAN datagram in a caller-owned buffer ─► esp::Outbound::seal ─► ESP packet (UDP 4500 payload)
//!  ESP packet ─► esp::spi_of ─► SA lookup ─► esp::Inbound::open (replay check ▸ ICV ▸ window) ─► VXLAN datagram
//! ```
//!
//! No IO and no clock: callers pass buffers they own, and secret randomness through [`keys::SecretRng`]. Which SA is
//! current, and when to rekey, is the caller's business; this crate only does the cryptography and the framing.
#![forbid(unsafe_code)]

pub mod esp;
pub mod keys;
pub mod replay;

use core::fmt;
use core::num::NonZeroU32;

/// A Security Parameter Index. Chosen by the receiver; 0 is reserved (RFC 4303 §2.1) and so unrepresentable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spi(NonZeroU32);

impl Spi {
    /// `None` for the reserved 0.
    pub const fn new(value: u32) -> Option<Self> {
        match NonZeroU32::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The SPI as an integer.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Debug for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spi(0x{:08x})", self.get())
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}", self.get())
    }
}
