//! The anti-replay window with 64-bit extended sequence numbers (RFC 4303 §3.4.3 and Appendix A).
//!
//! Only the low 32 bits of the sequence number travel in the packet. The receiver infers the high half from the
//! top of its window (Appendix A2.2), checks the result against the window *before* any decryption work, and
//! moves the window only *after* the ICV verified, so a forged packet can neither pass nor shift the window.

/// Packets the window covers behind its top. RFC 4303 asks for at least 32 and DESIGN.md for at least 2048. With
/// several data-path workers, one SA's packets are sealed by every worker of the sender and opened by every worker
/// of the receiver, so they arrive as far out of order as one worker can lag another: a worker that loses its core
/// for a scheduler slice (milliseconds) falls hundreds of thousands of packets per second behind. 65,536 packets
/// (an 8 KiB bitmap per inbound SA) covers over 50 ms of that at a million packets per second.
pub const WINDOW: u64 = 65_536;
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

    /// The full 64-bit sequence number a packet carrying `low` most likely has (RFC 4303 Appendix A2.2): of the
    /// numbers with these low bits in the current 2^32 block and its neighbours, the closest to the top. A packet
    /// from far behind the window is thus judged too old before any decryption, instead of being taken for one
    /// from the next block and failing authentication; weft rekeys long before 2^32 packets anyway.
    pub fn infer(&self, low: u32) -> u64 {
        const BLOCK: u64 = 1 << 32;
        let base = (self.top & !(BLOCK - 1)) | u64::from(low);
        [base.checked_sub(BLOCK), Some(base), base.checked_add(BLOCK)]
            .into_iter()
            .flatten()
            .min_by_key(|candidate| candidate.abs_diff(self.top))
            .unwrap_or(base)
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
        fn window_matches_the_naive_model(steps in proptest::collection::vec((0u64..3 * WINDOW, any::<bool>()), 1..400)) {
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
    fn a_packet_from_far_behind_the_window_is_too_old_not_from_the_next_block() {
        // Regression (workers suite): a worker lagging more than a window behind its siblings delivered packets
        // whose low bits lay below the window; inference put them in the next 2^32 block, so they were decrypted
        // with the wrong sequence number in the AAD and counted as authentication failures.
        let mut w = ReplayWindow::default();
        w.accept(10 * WINDOW);
        let behind = 10 * WINDOW - WINDOW - 5;
        assert_eq!(w.infer(behind as u32), behind);
        assert_eq!(w.check(behind), Err(ReplayError::TooOld));
    }

    #[test]
    fn fixed_cases() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        w.accept(1);
        assert_eq!(w.check(1), Err(ReplayError::Replayed));
        let top = WINDOW + 5000;
        w.accept(top);
        assert_eq!(w.check(top - 1), Ok(()));
        assert_eq!(w.check(top - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.check(top + 1 - WINDOW), Ok(()));
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
