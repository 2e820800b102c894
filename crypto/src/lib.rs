//! weft's encryption layer: ESP-in-UDP (RFC 4303 + RFC 4106 AES-GCM + RFC 3948) sealing and opening in place, the
//! anti-replay window, the key schedule and the SA table.
//!
//! No IO and no clock: callers pass buffers they own and the current sequence state in. This crate holds nothing
//! yet; the encryption issue fills it. It exists now so the dependency direction (src → overlay-proto → crypto) is
//! fixed from the first commit.
#![forbid(unsafe_code)]
