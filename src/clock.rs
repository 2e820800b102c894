//! The daemon's one clock. Everything below src/ takes `now` as an argument; this is the only caller of
//! `Instant::now()`, so a test or a simulator can see every place time enters.

use std::time::Instant;

/// The current monotonic time.
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds since the Unix epoch: a start incarnation that grows across restarts (gossip supersedes a
/// restarted node's old records with it). Not for measuring time.
pub fn wall_millis() -> u64 {
    wall().as_millis() as u64
}

/// Wall-clock time since the Unix epoch, for timestamps shown to people (capture records). Not for measuring time.
pub fn wall() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}
