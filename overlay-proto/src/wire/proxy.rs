//! The PROXY protocol version 2 header (haproxy's "The PROXY protocol", version 2, section 2.2): the binary header a
//! proxy sends first on a connection to tell the server the original client and destination addresses.
//!
//! ```text
//!  signature (12) \r\n\r\n\0\r\nQUIT\n | ver_cmd (1) 0x21 | fam (1) 0x11 TCP4, 0x21 TCP6 | len (2, big endian)
//!  TCP over IPv4: src addr (4) | dst addr (4) | src port (2) | dst port (2)                     len = 12
//!  TCP over IPv6: src addr (16) | dst addr (16) | src port (2) | dst port (2)                   len = 36
//! ```
//!
//! Only the PROXY command for TCP is emitted (what the ingress needs); [`Repr::parse`] also reads LOCAL headers and
//! skips TLVs, so the tests and the fuzzer can check what is written.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{read, Field, Result, WireError};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Bytes before the addresses.
pub const HEADER_LEN: usize = 16;

mod field {
    use super::Field;
    pub const SIGNATURE: Field = 0..12;
    pub const VERSION_COMMAND: usize = 12;
    pub const FAMILY: usize = 13;
    pub const LENGTH: Field = 14..16;
}

/// Version 2 (high nibble), command PROXY (low nibble 1) or LOCAL (0).
const VERSION_2: u8 = 0x20;
const COMMAND_LOCAL: u8 = 0x00;
const COMMAND_PROXY: u8 = 0x01;
/// Address family (high nibble: 1 INET, 2 INET6) and transport (low nibble: 1 STREAM).
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
const TCP4_LEN: usize = 12;
const TCP6_LEN: usize = 36;

/// A parsed or to-be-emitted header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// The connection was proxied from `source` (the client) to `destination` (the address it connected to).
    Proxy {
        /// The client.
        source: SocketAddr,
        /// Where the client connected.
        destination: SocketAddr,
    },
    /// The proxy's own connection (health checks): no addresses.
    Local,
}

impl Repr {
    /// A PROXY header for a TCP connection. Both addresses must be of one family for the header: when they are not,
    /// the IPv4 one is written as IPv4-mapped IPv6 (so an IPv4 client of an IPv6 listener keeps its address).
    pub fn tcp(source: SocketAddr, destination: SocketAddr) -> Repr {
        let (source, destination) = one_family(source, destination);
        Repr::Proxy { source, destination }
    }

    /// Bytes [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match *self {
                Repr::Proxy { source, destination } => match one_family(source, destination).0 {
                    SocketAddr::V4(_) => TCP4_LEN,
                    SocketAddr::V6(_) => TCP6_LEN,
                },
                Repr::Local => 0,
            }
    }

    /// Appends the header to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&SIGNATURE);
        match *self {
            Repr::Local => out.extend_from_slice(&[VERSION_2 | COMMAND_LOCAL, 0, 0, 0]),
            Repr::Proxy { source, destination } => {
                // A `Repr::Proxy` built by hand may mix families; the header has room for one.
                let (source, destination) = one_family(source, destination);
                let (family, len) = if source.is_ipv4() { (TCP4, TCP4_LEN) } else { (TCP6, TCP6_LEN) };
                out.extend_from_slice(&[VERSION_2 | COMMAND_PROXY, family]);
                out.extend_from_slice(&(len as u16).to_be_bytes());
                for ip in [source.ip(), destination.ip()] {
                    match ip {
                        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                    }
                }
                out.extend_from_slice(&source.port().to_be_bytes());
                out.extend_from_slice(&destination.port().to_be_bytes());
            }
        }
    }

    /// Reads a header from the start of `bytes`; returns it and the header's whole length (TLVs included).
    pub fn parse(bytes: &[u8]) -> Result<(Repr, usize)> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if bytes[field::SIGNATURE] != SIGNATURE || bytes[field::VERSION_COMMAND] & 0xf0 != VERSION_2 {
            return Err(WireError::Malformed);
        }
        let len = usize::from(u16::from_be_bytes(read(bytes, field::LENGTH)));
        let total = HEADER_LEN + len;
        if bytes.len() < total {
            return Err(WireError::Truncated);
        }
        let body = &bytes[HEADER_LEN..total];
        match bytes[field::VERSION_COMMAND] & 0x0f {
            COMMAND_LOCAL => Ok((Repr::Local, total)),
            COMMAND_PROXY => {
                let repr = match bytes[field::FAMILY] {
                    TCP4 if len >= TCP4_LEN => Repr::Proxy {
                        source: SocketAddr::new(Ipv4Addr::from(read::<4>(body, 0..4)).into(), port(body, 8)),
                        destination: SocketAddr::new(Ipv4Addr::from(read::<4>(body, 4..8)).into(), port(body, 10)),
                    },
                    TCP6 if len >= TCP6_LEN => Repr::Proxy {
                        source: SocketAddr::new(Ipv6Addr::from(read::<16>(body, 0..16)).into(), port(body, 32)),
                        destination: SocketAddr::new(Ipv6Addr::from(read::<16>(body, 16..32)).into(), port(body, 34)),
                    },
                    TCP4 | TCP6 => return Err(WireError::Truncated),
                    _ => return Err(WireError::Unsupported),
                };
                Ok((repr, total))
            }
            _ => Err(WireError::Malformed),
        }
    }
}

fn port(body: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(read(body, at..at + 2))
}

/// Both addresses as one family: unchanged when they share one, else both IPv6 (the IPv4 one mapped).
fn one_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (source, destination),
        _ => (mapped(source), mapped(destination)),
    }
}

fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(a) => SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp4_matches_the_spec_layout() {
        let repr = Repr::tcp("192.0.2.10:51000".parse().unwrap(), "198.18.0.1:8080".parse().unwrap());
        let mut out = Vec::new();
        repr.emit(&mut out);
        #[rustfmt::skip]
        let expected = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
            0x21,                                                                   // v2, PROXY
            0x11,                                                                   // AF_INET, STREAM
            0x00, 0x0c,                                                             // 12 address bytes
            192, 0, 2, 10,                                                          // source
            198, 18, 0, 1,                                                          // destination
            0xc7, 0x38,                                                             // 51000
            0x1f, 0x90,                                                             // 8080
        ];
        assert_eq!(out, expected);
        assert_eq!(repr.buffer_len(), out.len());
        assert_eq!(Repr::parse(&out), Ok((repr, 28)));
    }

    #[test]
    fn tcp6_and_mixed_families() {
        let repr = Repr::tcp("[2001:db8::1]:40000".parse().unwrap(), "[2001:db8::2]:443".parse().unwrap());
        let mut out = Vec::new();
        repr.emit(&mut out);
        assert_eq!(out.len(), 16 + 36);
        assert_eq!(&out[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(out[16..32], "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&out[48..52], &[0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(Repr::parse(&out), Ok((repr, 52)));

        let mixed = Repr::tcp("192.0.2.10:1".parse().unwrap(), "[2001:db8::2]:443".parse().unwrap());
        let Repr::Proxy { source, .. } = mixed else { panic!("a proxy header") };
        assert_eq!(source, "[::ffff:192.0.2.10]:1".parse().unwrap());
        assert_eq!(mixed.buffer_len(), 52);
    }

    /// A hand-built `Repr::Proxy` with an IPv4 source and an IPv6 destination: before, emit wrote the TCP4 family
    /// and length 12 followed by 20 address bytes, a header no reader could take apart.
    #[test]
    fn a_mixed_family_repr_is_emitted_as_ipv6() {
        let source: SocketAddr = "192.0.2.10:1".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let repr = Repr::Proxy { source, destination };
        let mut out = Vec::new();
        repr.emit(&mut out);
        assert_eq!(repr.buffer_len(), out.len());
        assert_eq!(&out[12..16], &[0x21, 0x21, 0x00, 0x24]);
        let expected = Repr::Proxy { source: "[::ffff:192.0.2.10]:1".parse().unwrap(), destination };
        assert_eq!(Repr::parse(&out), Ok((expected, 52)));
    }

    #[test]
    fn local_tlvs_and_garbage() {
        let mut out = Vec::new();
        Repr::Local.emit(&mut out);
        assert_eq!(Repr::parse(&out), Ok((Repr::Local, 16)));
        // A TCP4 header followed by a 4-byte TLV: the length covers it, the payload starts after it.
        let mut with_tlv = Vec::new();
        Repr::tcp("192.0.2.1:1".parse().unwrap(), "192.0.2.2:2".parse().unwrap()).emit(&mut with_tlv);
        with_tlv[15] = 16;
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00, b'G', b'E', b'T']);
        assert_eq!(Repr::parse(&with_tlv).map(|(_, len)| len), Ok(32));
        assert_eq!(Repr::parse(&out[..15]), Err(WireError::Truncated));
        let mut v1 = out.clone();
        v1[12] = 0x11;
        assert_eq!(Repr::parse(&v1), Err(WireError::Malformed));
        let mut udp = with_tlv.clone();
        udp[13] = 0x12;
        assert_eq!(Repr::parse(&udp), Err(WireError::Unsupported));
        assert_eq!(Repr::parse(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"), Err(WireError::Malformed));
    }
}
