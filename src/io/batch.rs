//! How a batch of encapsulated datagrams is cut into system calls: the pure planning behind
//! [`super::underlay::UnderlayIo::send_batch`], kept apart from the syscalls so it can be tested on its own.
//!
//! ```text
//!  [Datagram; n] (in encapsulation order) ──plan──► order: indices grouped by send socket, each group in its order
//!                                                   runs:  per socket, consecutive datagrams to one (VTEP, port)
//!                                                          of equal size (the last may be shorter): one GSO send
//!  udp.rs: per socket, one sendmmsg whose messages are the runs (a run of one is a plain message)
//! ```
//!
//! A flow's datagrams always leave from one socket (the flow hash picks it), and each socket's datagrams keep the
//! order in which they were encapsulated, so a flow's order is kept; datagrams of different flows on different sockets
//! may leave in another order than they were read, which a receiver (and the ESP replay window) takes as it takes
//! the reordering of any network.

use std::net::IpAddr;
use std::ops::Range;

/// One encapsulated datagram waiting in the worker's transmit arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The inner flow's hash: it picks the send socket, so the outer source port.
    pub flow: u32,
    /// Where it goes.
    pub vtep: IpAddr,
    /// To the ESP port (else the VXLAN port).
    pub esp: bool,
    /// Its bytes in the arena.
    pub bytes: Range<usize>,
    /// Set by the underlay once the kernel took it.
    pub sent: bool,
}

/// Datagrams that go out in one send: `order[items]` are their indices, every one but the last `segment` bytes
/// long, all from `socket` to one VTEP and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The send socket's index in the pool.
    pub socket: usize,
    /// Range in the `order` array that [`plan`] filled.
    pub items: Range<usize>,
    /// The GSO segment size: the first datagram's length.
    pub segment: usize,
}

/// Limits of one UDP GSO send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoLimits {
    /// Whether GSO may be used at all (else every run is one datagram).
    pub enabled: bool,
    /// Most datagrams in one send.
    pub max_segments: usize,
    /// Most bytes in one send.
    pub max_bytes: usize,
}

/// Most send sockets [`plan`] handles (the pool has [`super::udp::SEND_POOL`]).
pub const MAX_SOCKETS: usize = 64;

/// Groups `datagrams` by send socket (`flow % sockets`, sockets in order of first use) into `order`, and each
/// socket's datagrams into runs that one GSO send can carry. `order` and `runs` are cleared first and are the
/// caller's, so nothing is allocated once they have grown to the batch size.
///
/// # Panics
/// If `sockets` is 0 or more than [`MAX_SOCKETS`].
pub fn plan(datagrams: &[Datagram], sockets: usize, gso: GsoLimits, order: &mut Vec<usize>, runs: &mut Vec<Run>) {
    assert!((1..=MAX_SOCKETS).contains(&sockets), "{sockets} send sockets");
    order.clear();
    runs.clear();
    let socket_of = |d: &Datagram| d.flow as usize % sockets;
    // Sockets in the order the batch first uses them: a bit per socket, then one pass over the batch per socket.
    let mut pending: u64 = datagrams.iter().fold(0, |m, d| m | 1 << socket_of(d));
    let mut first = 0;
    while pending != 0 {
        // The next socket is that of the first datagram whose socket has not been handled yet.
        while pending & (1 << socket_of(&datagrams[first])) == 0 {
            first += 1;
        }
        let socket = socket_of(&datagrams[first]);
        pending &= !(1 << socket);
        for (i, d) in datagrams.iter().enumerate().skip(first).filter(|(_, d)| socket_of(d) == socket) {
            let len = d.bytes.len();
            let joins = runs.last().is_some_and(|run: &Run| {
                let last = &datagrams[order[run.items.end - 1]];
                let count = run.items.len();
                gso.enabled
                    && run.socket == socket
                    && last.vtep == d.vtep
                    && last.esp == d.esp
                    && last.bytes.len() == run.segment
                    && len <= run.segment
                    && len > 0
                    && count < gso.max_segments
                    && (count + 1) * run.segment <= gso.max_bytes
            });
            order.push(i);
            match runs.last_mut() {
                Some(run) if joins => run.items.end += 1,
                _ => runs.push(Run { socket, items: order.len() - 1..order.len(), segment: len }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::{plan, Datagram, GsoLimits, Run};

    const GSO: GsoLimits = GsoLimits { enabled: true, max_segments: 64, max_bytes: 65_000 };

    fn datagram(flow: u32, vtep: u8, len: usize) -> Datagram {
        let vtep = IpAddr::V4(Ipv4Addr::new(198, 18, 0, vtep));
        Datagram { flow, vtep, esp: false, bytes: 0..len, sent: false }
    }

    fn planned(datagrams: &[Datagram], sockets: usize, gso: GsoLimits) -> (Vec<usize>, Vec<Run>) {
        let (mut order, mut runs) = (Vec::new(), Vec::new());
        plan(datagrams, sockets, gso, &mut order, &mut runs);
        (order, runs)
    }

    #[test]
    fn equal_datagrams_of_one_flow_make_one_run_with_a_short_last_one() {
        let batch = [datagram(3, 2, 100), datagram(3, 2, 100), datagram(3, 2, 100), datagram(3, 2, 60)];
        let (order, runs) = planned(&batch, 16, GSO);
        assert_eq!(order, vec![0, 1, 2, 3]);
        assert_eq!(runs, vec![Run { socket: 3, items: 0..4, segment: 100 }]);
    }

    #[test]
    fn a_run_ends_after_a_shorter_datagram_a_longer_one_or_another_destination() {
        let batch = [
            datagram(1, 2, 100),
            datagram(1, 2, 60),
            datagram(1, 2, 100), // after a short one: a new run
            datagram(1, 2, 120), // longer: a new run
            datagram(1, 3, 120), // another VTEP: a new run
        ];
        let (order, runs) = planned(&batch, 16, GSO);
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        let items: Vec<_> = runs.iter().map(|r| r.items.clone()).collect();
        assert_eq!(items, vec![0..2, 2..3, 3..4, 4..5]);
    }

    #[test]
    fn flows_on_other_sockets_are_grouped_apart_keeping_each_order() {
        // Flows 1 and 17 share socket 1 of 16; flow 2 has socket 2.
        let batch = [datagram(1, 2, 80), datagram(2, 2, 80), datagram(17, 2, 80), datagram(2, 2, 80)];
        let (order, runs) = planned(&batch, 16, GSO);
        assert_eq!(order, vec![0, 2, 1, 3]);
        assert_eq!(
            runs,
            vec![Run { socket: 1, items: 0..2, segment: 80 }, Run { socket: 2, items: 2..4, segment: 80 }]
        );
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_run() {
        let batch = [datagram(1, 2, 80), datagram(1, 2, 80)];
        let (_, runs) = planned(&batch, 16, GsoLimits { enabled: false, ..GSO });
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let batch: Vec<_> = (0..10).map(|_| datagram(0, 2, 1000)).collect();
        let (_, runs) = planned(&batch, 16, GsoLimits { enabled: true, max_segments: 4, max_bytes: 65_000 });
        assert_eq!(runs.iter().map(|r| r.items.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        let (_, runs) = planned(&batch, 16, GsoLimits { enabled: true, max_segments: 64, max_bytes: 3_500 });
        assert_eq!(runs.iter().map(|r| r.items.len()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
    }

    proptest! {
        /// Every datagram is planned once; each socket's datagrams keep their order; a run is one socket, one
        /// destination, equal lengths but a shorter last one, within the limits.
        #[test]
        fn plans_keep_order_and_make_valid_runs(
            batch in proptest::collection::vec((0u32..40, 1u8..4, any::<bool>(), 0usize..3000), 0..200),
            sockets in 1usize..20,
            enabled in any::<bool>(),
            max_segments in 1usize..70,
        ) {
            let batch: Vec<_> = batch
                .into_iter()
                .map(|(flow, vtep, esp, len)| Datagram { esp, ..datagram(flow, vtep, len) })
                .collect();
            let gso = GsoLimits { enabled, max_segments, max_bytes: 65_000 };
            let (order, runs) = planned(&batch, sockets, gso);
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..batch.len()).collect::<Vec<_>>());
            for socket in 0..sockets {
                let mine: Vec<_> = order.iter().copied().filter(|&i| batch[i].flow as usize % sockets == socket).collect();
                prop_assert!(mine.windows(2).all(|w| w[0] < w[1]), "socket {} reordered: {:?}", socket, mine);
            }
            let mut next = 0;
            for run in &runs {
                prop_assert_eq!(run.items.start, next);
                next = run.items.end;
                let items: Vec<_> = order[run.items.clone()].iter().map(|&i| &batch[i]).collect();
                prop_assert!(!items.is_empty());
                prop_assert!(items.len() == 1 || (enabled && items.len() <= max_segments));
                prop_assert!(items.len() == 1 || items.len() * run.segment <= gso.max_bytes);
                prop_assert_eq!(run.segment, items[0].bytes.len());
                for (k, d) in items.iter().enumerate() {
                    prop_assert_eq!(d.flow as usize % sockets, run.socket);
                    prop_assert_eq!((d.vtep, d.esp), (items[0].vtep, items[0].esp));
                    if k + 1 < items.len() {
                        prop_assert_eq!(d.bytes.len(), run.segment);
                    } else {
                        prop_assert!(d.bytes.len() <= run.segment);
                    }
                }
            }
            prop_assert_eq!(next, order.len());
        }
    }
}
