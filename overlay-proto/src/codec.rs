//! Binary codec primitives for control-plane messages, in the style of rustls' `Codec`: every type encodes into a
//! `Vec<u8>` and decodes from a [`Reader`] that checks every length against what is left, and a whole message must
//! be consumed exactly (trailing bytes are an error).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::NodeId;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("truncated message")]
    Truncated,
    /// A tag, length or value outside what the format allows.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes left over after the message.
    #[error("trailing bytes after message")]
    TrailingBytes,
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless everything was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// A value with a binary encoding.
pub trait Codec: Sized {
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one value.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Encodes into a fresh buffer.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a whole buffer, rejecting trailing bytes.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let value = Self::decode(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

macro_rules! int_codec {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_be_bytes(r.array()?))
            }
        }
    )*};
}
int_codec!(u8, u16, u32, u64);

impl Codec for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(r)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("bool")),
        }
    }
}

impl Codec for NodeId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(NodeId(r.array()?))
    }
}

impl Codec for IpAddr {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(r)? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            _ => Err(DecodeError::Invalid("address family")),
        }
    }
}

impl Codec for SocketAddr {
    fn encode(&self, out: &mut Vec<u8>) {
        self.ip().encode(out);
        self.port().encode(out);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(SocketAddr::new(IpAddr::decode(r)?, u16::decode(r)?))
    }
}

/// Writes `bytes` with a u32 length prefix.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    (bytes.len() as u32).encode(out);
    out.extend_from_slice(bytes);
}

/// Reads bytes written by [`put_bytes`], refusing lengths above `max`.
pub fn get_bytes<'a>(r: &mut Reader<'a>, max: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
    let len = u32::decode(r)? as usize;
    if len > max {
        return Err(DecodeError::Invalid(what));
    }
    r.take(len)
}

/// Writes a u32 count, then each item.
pub fn put_list<T: Codec>(out: &mut Vec<u8>, items: &[T]) {
    (items.len() as u32).encode(out);
    for item in items {
        item.encode(out);
    }
}

/// Reads a list written by [`put_list`]. The count is checked against the bytes left (each item takes at least
/// `min_item` bytes) before anything is allocated, so a forged count cannot make us reserve memory.
pub fn get_list<T: Codec>(r: &mut Reader<'_>, min_item: usize, what: &'static str) -> Result<Vec<T>, DecodeError> {
    let count = u32::decode(r)? as usize;
    if count.saturating_mul(min_item.max(1)) > r.remaining() {
        return Err(DecodeError::Invalid(what));
    }
    (0..count).map(|_| T::decode(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip_and_reject_garbage() {
        let addr: SocketAddr = "[2001:db8::1]:7946".parse().unwrap();
        assert_eq!(SocketAddr::from_bytes(&addr.to_bytes()), Ok(addr));
        let v4: SocketAddr = "198.18.0.1:7946".parse().unwrap();
        assert_eq!(v4.to_bytes(), vec![4, 198, 18, 0, 1, 0x1f, 0x0a]);
        assert_eq!(SocketAddr::from_bytes(&[5, 1, 2, 3, 4, 0, 1]), Err(DecodeError::Invalid("address family")));
        assert_eq!(u32::from_bytes(&[0, 0, 1]), Err(DecodeError::Truncated));
        assert_eq!(u16::from_bytes(&[0, 0, 1]), Err(DecodeError::TrailingBytes));
        assert_eq!(bool::from_bytes(&[2]), Err(DecodeError::Invalid("bool")));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert_eq!(get_list::<u8>(&mut r, 1, "list"), Err(DecodeError::Invalid("list")));
        let mut r = Reader::new(&[0, 0, 0, 9, 1]);
        assert_eq!(get_bytes(&mut r, 8, "blob"), Err(DecodeError::Invalid("blob")));
    }
}
