//! The daemon's one clock. Everything below src/ takes `now` as an argument; this is the only caller of
//! `Instant::now()`, so a test or a simulator can see every place time enters.

use std::time::Instant;

/// The current monotonic time.
pub fn now() -> Instant {
    Instant::now()
}
