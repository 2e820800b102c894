//! Small value types shared by every layer.

use core::fmt;
use core::str::FromStr;

/// A VXLAN Network Identifier: 24 bits (RFC 7348 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

/// A value that does not fit in a VNI's 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} is out of range (0..=16777215)")]
pub struct VniError(pub u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// Checks that `value` fits in 24 bits.
    pub const fn new(value: u32) -> Result<Self, VniError> {
        if value > Self::MAX {
            Err(VniError(value))
        } else {
            Ok(Self(value))
        }
    }

    /// Keeps the low 24 bits; for values read from a 24-bit wire field.
    pub const fn from_u24(value: u32) -> Self {
        Self(value & Self::MAX)
    }

    /// The VNI as an integer.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// The group bit (I/G) is set: broadcast or multicast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Neither broadcast nor multicast.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Reads six bytes; panics if `bytes` is shorter (callers pass a checked field).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        Self(mac)
    }

    /// The address as bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon-separated hex octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (expected six hex octets like 02:00:5e:00:00:01)")]
pub struct MacParseError;

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or(MacParseError)?;
            if part.len() != 2 {
                return Err(MacParseError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError);
        }
        Ok(Self(mac))
    }
}

/// A node's identity: the first 16 bytes of SHA-256 over its certificate's SubjectPublicKeyInfo (DER). Derived by
/// the daemon from the TLS peer certificate, so a claim about a node can be checked against who sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// The id as bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits identify a node in logs; the full id is in Display.
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The hash map of the per-packet tables (FDB, SAs, local endpoints, neighbours): foldhash instead of SipHash. The
/// keys are MACs, VNIs, addresses and SPIs, hashed on every frame; SipHash was the largest cost of the forwarding
/// decision after the AEAD (callgrind: 47% of `handle_tap_frame`). foldhash is seeded per process, which keeps
/// some resistance to keys chosen to collide; the tables are bounded besides.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_range() {
        assert_eq!(Vni::new(0).unwrap().get(), 0);
        assert_eq!(Vni::new(Vni::MAX).unwrap().get(), Vni::MAX);
        assert_eq!(Vni::new(Vni::MAX + 1), Err(VniError(Vni::MAX + 1)));
        assert_eq!(Vni::from_u24(0xff12_3456).get(), 0x12_3456);
    }

    #[test]
    fn mac_parse_and_display() {
        let mac: MacAddr = "02:00:5E:00:00:0a".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x00, 0x5e, 0x00, 0x00, 0x0a]);
        assert_eq!(mac.to_string(), "02:00:5e:00:00:0a");
        assert!(mac.is_unicast());
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        for bad in ["", "02:00:5e:00:00", "02:00:5e:00:00:0a:01", "2:00:5e:00:00:0a", "zz:00:5e:00:00:0a"] {
            assert_eq!(bad.parse::<MacAddr>(), Err(MacParseError), "{bad}");
        }
    }
}
