//! The ESP opener on arbitrary bytes, and on sealed copies of them.
//!
//! Invariants: arbitrary bytes never open (forging an ICV is infeasible) and never panic; a sealed copy of the
//! input opens to exactly the input, once, and a replay of it or a copy with any single bit flipped is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::esp::{Inbound, OpenError, Outbound, HEADER_LEN, MAX_TRAILER_LEN};
use weft_crypto::keys::{Cipher, SaKeys};
use weft_crypto::replay::ReplayError;
use weft_crypto::Spi;

fuzz_target!(|data: &[u8]| {
    let keys = SaKeys::new(Cipher::Aes128Gcm, &[7; 16], [1, 2, 3, 4]).expect("16-byte key");
    let spi = Spi::new(0x1001).expect("non-zero");
    let inbound = Inbound::new(spi, &keys);
    assert!(inbound.open(&mut data.to_vec()).is_err(), "arbitrary bytes opened");

    let outbound = Outbound::new(spi, &keys);
    let mut buf = vec![0u8; HEADER_LEN + data.len() + MAX_TRAILER_LEN];
    buf[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
    let range = outbound.seal(&mut buf, HEADER_LEN..HEADER_LEN + data.len()).expect("room was left");
    let sealed = buf[range].to_vec();

    if let Some(first) = data.first() {
        // Flip one bit chosen by the input, anywhere past the SPI (a flipped SPI is simply another SA).
        let bit = usize::from(*first) % ((sealed.len() - 4) * 8);
        let mut flipped = sealed.clone();
        flipped[4 + bit / 8] ^= 1 << (bit % 8);
        assert!(inbound.open(&mut flipped).is_err(), "a flipped bit opened");
    }
    let mut packet = sealed.clone();
    let inner = inbound.open(&mut packet).expect("a sealed packet opens");
    assert_eq!(&packet[inner], data);
    assert_eq!(inbound.open(&mut sealed.clone()), Err(OpenError::Replay(ReplayError::Replayed)));
});
