//! The anti-replay window with 64-bit extended sequence numbers (RFC 4303 §3.4.3 and Appendix A).
//!
//! Only the low 32 bits of the sequence number travel in the packet. The receiver infers the high half from the
//! top of its window (Appendix A2.2), checks the result against the window *before* any decryption work, and
//! moves the window only *after* the ICV verified, so a forged packet can neither pass nor shift the window.

/// Packets the window covers behind its top. RFC 4303 asks for at least 32; a 64 KB TSO burst split into 45
/// segments, reordered across two workers, needs far more, and DESIGN.md fixes at least 2048.
pub const WINDOW: u64 = 2048;
const WORDS: usize = (WINDOW / 64) as usize;

/// Why a sequence number is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Already received.
    #[error("replayed packet")]
    Replayed,
    /// Older than the window.
    #[error("packet older than the replay window")]
    TooOld,
}

/// A sliding bitmap over the last [`WINDOW`] sequence numbers.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest sequence number accepted; 0 means none yet (ESP sequence numbers start at 1).
    top: u64,
    /// Bit `s % WINDOW` is set when `s` (within the window) was received.
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { top: 0, bits: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// The highest accepted sequence number.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The full 64-bit sequence number a packet carrying `low` most likely has (RFC 4303 Appendix A2.2): the one
    /// closest to the window, preferring the current 2^32 epoch.
    pub fn infer(&self, low: u32) -> u64 {
        let top_high = self.top >> 32;
        let top_low = self.top as u32;
        let bottom = self.top.saturating_sub(WINDOW - 1) as u32;
        let high = if top_low >= bottom {
            // The window lies within one 2^32 block: a low value below it belongs to the next block.
            if low >= bottom {
                top_high
            } else {
                top_high + 1
            }
        } else if low >= bottom {
            // The window straddles a block boundary and `low` is in its older part.
            top_high.saturating_sub(1)
        } else {
            top_high
        };
        (high << 32) | u64::from(low)
    }

    /// Checks `seq` without changing the window.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        if self.bit(seq) {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `seq` as received; call only after the packet authenticated and [`ReplayWindow::check`] passed.
    pub fn accept(&mut self, seq: u64) {
        if seq > self.top {
            let shift = seq - self.top;
            if shift >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                // Clear the slots of the sequence numbers the window slides over.
                for s in self.top + 1..seq {
                    self.clear(s);
                }
            }
            self.top = seq;
        }
        self.set(seq);
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn bit(&self, seq: u64) -> bool {
        let (w, m) = Self::slot(seq);
        self.bits[w] & m != 0
    }

    fn set(&mut self, seq: u64) {
        let (w, m) = Self::slot(seq);
        self.bits[w] |= m;
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = Self::slot(seq);
        self.bits[w] &= !m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The obviously correct model: every accepted number, and the same window rule.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        top: u64,
    }

    impl Model {
        fn check(&self, seq: u64) -> Result<(), ReplayError> {
            if seq == 0 || (seq <= self.top && self.top - seq >= WINDOW) {
                Err(ReplayError::TooOld)
            } else if self.seen.contains(&seq) {
                Err(ReplayError::Replayed)
            } else {
                Ok(())
            }
        }
        fn accept(&mut self, seq: u64) {
            self.seen.insert(seq);
            self.top = self.top.max(seq);
        }
    }

    proptest! {
        #[test]
        fn window_matches_the_naive_model(steps in proptest::collection::vec((0u64..6000, any::<bool>()), 1..400)) {
            let (mut w, mut m) = (ReplayWindow::default(), Model::default());
            for (seq, authentic) in steps {
                prop_assert_eq!(w.check(seq), m.check(seq), "seq {}", seq);
                if w.check(seq).is_ok() && authentic {
                    w.accept(seq);
                    m.accept(seq);
                }
            }
        }

        #[test]
        fn inference_recovers_the_sequence_number_near_the_window(top in 1u64..(1 << 40), back in 0u64..WINDOW, ahead in 1u64..(1 << 31)) {
            let mut w = ReplayWindow::default();
            w.accept(top);
            let behind = top.saturating_sub(back).max(1);
            prop_assert_eq!(w.infer(behind as u32), behind);
            prop_assert_eq!(w.infer((top + ahead) as u32), top + ahead);
        }
    }

    #[test]
    fn fixed_cases() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        w.accept(1);
        assert_eq!(w.check(1), Err(ReplayError::Replayed));
        w.accept(5000);
        assert_eq!(w.check(4999), Ok(()));
        assert_eq!(w.check(5000 - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.check(5001 - WINDOW), Ok(()));
        // Crossing 2^32: the low half wraps and the high half is inferred.
        let mut w = ReplayWindow::default();
        w.accept(u64::from(u32::MAX) - 10);
        assert_eq!(w.infer(5), (1 << 32) + 5);
        assert_eq!(w.infer(u32::MAX - 20), u64::from(u32::MAX) - 20);
        w.accept((1 << 32) + 5);
        assert_eq!(w.infer(u32::MAX - 20), u64::from(u32::MAX) - 20);
        assert_eq!(w.infer(6), (1 << 32) + 6);
    }
}
