//! The Internet checksum (RFC 1071) and the pseudo-headers that upper layers add to it: RFC 768 (UDP over IPv4) and
//! RFC 8200 §8.1 (upper layers over IPv6).
//!
//! Every function returns the ones'-complement *sum*, folded to 16 bits and not yet inverted, so partial sums can be
//! combined; the value written into a header is `!sum`. A header whose checksum verifies sums to `0xffff`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones'-complement sum of `bytes` taken as big-endian 16-bit words; an odd last byte is padded with a zero.
///
/// This runs over every payload byte that weft segments or coalesces, so it sums 32-bit words in native byte order
/// into a 64-bit accumulator (which the compiler vectorises) and swaps the folded result once: the ones'-complement
/// sum does not depend on byte order, up to that swap (RFC 1071 §2(B)).
pub fn data(bytes: &[u8]) -> u16 {
    let mut words = bytes.chunks_exact(4);
    // A u64 cannot overflow here: that would take more than 2^34 bytes.
    let wide: u64 = words.by_ref().map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).sum();
    let mut sum = u64::from(u16::from_be(fold(wide)));
    let mut rest = words.remainder().chunks_exact(2);
    sum += rest.by_ref().map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u64>();
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    fold(sum)
}

/// Adds partial sums from [`data`] and the pseudo-header functions.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().copied().map(u64::from).sum())
}

/// The sum of the IPv4 pseudo-header: source, destination, zero, protocol and upper-layer length (RFC 768).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u16 {
    combine(&[data(&src.octets()), data(&dst.octets()), u16::from(protocol), data(&length.to_be_bytes())])
}

/// The sum of the IPv6 pseudo-header: source, destination, 32-bit upper-layer length, three zero bytes and the next
/// header (RFC 8200 §8.1).
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, length: u32) -> u16 {
    combine(&[data(&src.octets()), data(&dst.octets()), u16::from(next_header), data(&length.to_be_bytes())])
}

/// Adds the carries back in (end-around carry) until the sum fits in 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits, so this never truncates.
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: these eight bytes sum to 0xddf2.
        assert_eq!(data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(data(&[]), 0);
    }

    #[test]
    fn carries_wrap_around() {
        assert_eq!(data(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(combine(&[0xffff, 0xffff]), 0xffff);
        assert_eq!(combine(&[]), 0);
    }

    #[test]
    fn pseudo_headers() {
        let v4 = pseudo_header_v4(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2), 17, 12);
        assert_eq!(v4, combine(&[0xc000, 0x0201, 0xc000, 0x0202, 17, 12]));
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let v6 = pseudo_header_v6(&src, &dst, 17, 0x0001_0000);
        assert_eq!(v6, combine(&[0x2001, 0x0db8, 1, 0x2001, 0x0db8, 2, 17, 1]));
    }

    proptest! {
        #[test]
        fn wide_sum_matches_word_by_word(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut words = bytes.chunks_exact(2);
            let mut naive: u64 = words.by_ref().map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
            if let [last] = words.remainder() {
                naive += u64::from(*last) << 8;
            }
            prop_assert_eq!(data(&bytes), fold(naive));
        }

        #[test]
        fn sum_splits_at_even_offsets(bytes in proptest::collection::vec(any::<u8>(), 0..256), at in 0usize..128) {
            let at = (at * 2).min(bytes.len() & !1);
            prop_assert_eq!(data(&bytes), combine(&[data(&bytes[..at]), data(&bytes[at..])]));
        }
    }
}
