//! Key agreement and the key schedule.
//!
//! Each pair of hosts agrees on keys per epoch: both send a fresh X25519 key share over their authenticated QUIC
//! connection, and HKDF-SHA256 turns the shared secret into two SAs' keys and salts, one per direction, bound to
//! both node ids, the epoch and the cipher. The shares are used once and dropped, so a later compromise of a
//! node's long-term key reveals no past epoch's traffic (forward secrecy).

use core::fmt;

use ring::hkdf;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A source of secret randomness. The daemon passes the operating system's CSPRNG; tests pass a fixed stream.
pub trait SecretRng {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);
}

/// The AEAD of an SA (RFC 4106).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cipher {
    /// AES-GCM with a 128-bit key: the default.
    #[default]
    Aes128Gcm,
    /// AES-GCM with a 256-bit key.
    Aes256Gcm,
}

impl Cipher {
    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm => 32,
        }
    }

    /// The encryption algorithm's name in Wireshark's `esp_sa` table.
    pub const fn wireshark_name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => "AES-GCM with 16 octet ICV [RFC4106]",
        }
    }

    const fn id(self) -> u8 {
        match self {
            Cipher::Aes128Gcm => 1,
            Cipher::Aes256Gcm => 2,
        }
    }
}

/// The key and salt of one SA direction. Zeroized on drop; `Debug` never shows the key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKeys {
    /// The AEAD.
    #[zeroize(skip)]
    pub cipher: Cipher,
    key: [u8; 32],
    /// The 4-byte nonce salt (RFC 4106 §4).
    pub salt: [u8; 4],
}

impl fmt::Debug for SaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaKeys").field("cipher", &self.cipher).finish_non_exhaustive()
    }
}

impl SaKeys {
    /// Keys from raw material: `key` must be the cipher's key length.
    pub fn new(cipher: Cipher, key: &[u8], salt: [u8; 4]) -> Option<Self> {
        if key.len() != cipher.key_len() {
            return None;
        }
        let mut k = [0u8; 32];
        k[..key.len()].copy_from_slice(key);
        Some(Self { cipher, key: k, salt })
    }

    /// The key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.cipher.key_len()]
    }

    /// The key followed by the salt as hex, the form Wireshark's ESP SA table takes (`0x…`).
    pub fn wireshark_key(&self) -> String {
        let mut s = String::from("0x");
        for b in self.key().iter().chain(&self.salt) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Why key agreement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The peer's share gives an all-zero secret (a low-order point): refused, as RFC 7748 §6.1 advises.
    #[error("the peer's key share is a low-order point")]
    LowOrderShare,
}

/// An ephemeral X25519 key share for one epoch.
pub struct KeyShare {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyShare").field("public", &self.public).finish_non_exhaustive()
    }
}

impl KeyShare {
    /// A fresh share.
    pub fn generate(rng: &mut dyn SecretRng) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes);
        let secret = x25519_dalek::StaticSecret::from(bytes);
        bytes.zeroize();
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The public half, sent to the peer.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The shared secret with the peer's public share. Consumes the share: each is used once.
    pub fn agree(self, peer: &[u8; 32]) -> Result<SharedSecret, KeyError> {
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        if !shared.was_contributory() {
            return Err(KeyError::LowOrderShare);
        }
        Ok(SharedSecret(shared.to_bytes()))
    }
}

/// The X25519 output. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; 32]);

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl SharedSecret {
    /// For known-answer tests of the key schedule only.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// The keys of both directions between two nodes for one epoch.
#[derive(Debug, Clone)]
pub struct PairKeys {
    /// Keys of the SA that carries traffic from `low` to `high` (node ids compared as bytes).
    pub low_to_high: SaKeys,
    /// Keys of the SA that carries traffic from `high` to `low`.
    pub high_to_low: SaKeys,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The key schedule: HKDF-SHA256 (RFC 5869) with salt `weft esp v1`, input key material the X25519 secret, and info
/// `weft esp keys` ‖ cipher ‖ lower node id ‖ higher node id ‖ epoch (big-endian), expanded to both directions' key
/// and salt. Either node computes the same result whatever the order of `a` and `b`.
pub fn derive(shared: &SharedSecret, a: &[u8; 16], b: &[u8; 16], epoch: u64, cipher: Cipher) -> PairKeys {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut info = Vec::with_capacity(13 + 1 + 32 + 8);
    info.extend_from_slice(b"weft esp keys");
    info.push(cipher.id());
    info.extend_from_slice(low);
    info.extend_from_slice(high);
    info.extend_from_slice(&epoch.to_be_bytes());
    let per_direction = cipher.key_len() + 4;
    let mut okm = [0u8; 2 * (32 + 4)];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"weft esp v1").extract(&shared.0);
    prk.expand(&[&info], Len(2 * per_direction))
        .expect("72 bytes is far below HKDF-SHA256's limit")
        .fill(&mut okm[..2 * per_direction])
        .expect("length matches");
    let keys = |chunk: &[u8]| {
        let (key, salt) = chunk.split_at(cipher.key_len());
        SaKeys::new(cipher, key, salt.try_into().expect("4-byte salt")).expect("key length matches cipher")
    };
    let result = PairKeys {
        low_to_high: keys(&okm[..per_direction]),
        high_to_low: keys(&okm[per_direction..2 * per_direction]),
    };
    okm.zeroize();
    result
}

/// One row of Wireshark's `esp_sa` table, so tshark can decrypt captured traffic of one SA (debug only).
pub fn keylog_line(src: core::net::IpAddr, dst: core::net::IpAddr, spi: crate::Spi, keys: &SaKeys) -> String {
    let family = if src.is_ipv4() { "IPv4" } else { "IPv6" };
    format!(
        "\"{family}\",\"{src}\",\"{dst}\",\"0x{:08x}\",\"{}\",\"{}\",\"NULL\",\"\"",
        spi.get(),
        keys.cipher.wireshark_name(),
        keys.wireshark_key()
    )
}
