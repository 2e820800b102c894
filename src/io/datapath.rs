//! The data-path worker: one thread that moves frames between the TAPs and the underlay sockets.
//!
//! The loop is thin on purpose. It polls the TAPs and the receive socket, reads what is ready in bounded batches,
//! asks the sans-IO [`Forwarder`] what to do with each frame, writes the VXLAN header in place into the buffer's
//! headroom, and sends. Nothing is allocated per packet: the buffers are the worker's, allocated once.
//! Control-plane updates and API queries arrive on a channel (with an eventfd to wake the poll) and are handled
//! between batches, so the forwarding state and its counters are never shared across threads. Endpoints discovered
//! on the TAPs go the other way, to the control plane.
//!
//! Copies: a plaintext TSO superframe is not cut into a copy. Each segment's headers (VXLAN and the rewritten inner
//! headers) go into a header arena and the datagrams leave gathered from those blocks and the payload in place in
//! the superframe, one UDP GSO `sendmsg` per 64 segments ([`offload::segment_gather`]). Encrypted networks keep the
//! copy: the seal works in place on contiguous plaintext. On receive, segments stay where they landed in the worker's
//! receive buffer and the coalesced superframe goes to the TAP with one `writev` of its header block and the payload
//! ranges ([`GatherCoalescer`]); the buffer takes several receives, and the coalescer is flushed before it wraps.
//!
//! Small frames (anything but a superframe: pings, 64-byte UDP, TCP ACKs) are read one after another into a transmit
//! arena, each encapsulated (and sealed) in place in its own slot, and sent together when the TAP batch ends, or
//! earlier when the arena or the queue of [`TX_PENDING`] datagrams fills: [`UnderlayIo::send_batch`] sends each send
//! socket's share with one `sendmmsg`, a run of equal datagrams to one VTEP as one UDP GSO message of it. Nothing
//! waits for more frames: the batch ends when the TAP has nothing more, so a lone ping leaves at once. A superframe
//! first sends what waits (a flow keeps its order), then goes out alone. On receive, one `recvmmsg`
//! ([`UnderlayIo::recv_batch`]) fills up to [`RECV_SLOTS`] slots of 64 KiB in the receive buffer; each next call's
//! slots start after the last message received, so the coalescer's ranges stay valid until it is flushed. Memory per
//! worker: the transmit arena is [`TX_ARENA`] bytes (~192 KiB, in place of one 64 KiB frame buffer) and the receive
//! buffer [`RX_BUFFER`] (~512 KiB, was 4 slots, ~256 KiB).
//!
//! Per-peer traffic is counted in a fixed slot table ([`PeerCounters`]), one lookup per send or receive batch, whose
//! slots are freed when a network's members change and a VTEP is no longer known to the forwarder; and frames are
//! copied to `weft capture` ([`Captures`]) only while a capture is open.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_proto::fdb::Origin;
use overlay_proto::forward::{ControlUpdate, Egress, ForwardStats, Forwarder, Port, SaUpdate, HEADROOM, TAILROOM};
use overlay_proto::local::LocalEvent;
use overlay_proto::offload::{
    self, complete_checksum, gso, GatherCoalescer, Push, VirtioNetHdr, GATHER_HEAD, GATHER_SEGMENTS,
};
use overlay_proto::wire::{udp, vxlan};
use overlay_proto::{neighbor, MacAddr, Vni};
use weft_crypto::esp;

use super::capture::{CaptureSink, Captures};
use super::peers::{PeerCounters, PeerTraffic};
use super::tap::{Tap, VNET_HDR_LEN};
use super::underlay::{Datagram, Received, UnderlayIo, UnderlayStats, GATHER_MAX};
use super::waker::Waker;
use crate::clock;

/// Largest frame or datagram read: a TAP without offloads gives at most MTU + 18, the underlay at most 64 KiB.
const BUFFER: usize = 65_536;
/// Frames handled per ready descriptor before looking at the others, so no direction starves the other.
const BATCH: usize = 64;
/// Where received datagrams land in the buffer: after room for a virtio-net header.
const RX_OFFSET: usize = 16;
/// One receive slot: a message of up to 64 KiB (one datagram, or a GRO batch) after room for a virtio-net header.
const RX_SLOT: usize = RX_OFFSET + BUFFER;
/// Slots one `recvmmsg` fills at most. Each must take 64 KiB (a GRO batch), so slots cost memory; a drain reads
/// [`BATCH`] messages at most, so 8 per call makes a full drain 8 calls.
const RECV_SLOTS: usize = 8;
/// The receive buffer: room for several receives of up to 64 KiB whose payloads a superframe may still gather, and
/// for one `recvmmsg` into [`RECV_SLOTS`] slots.
const RX_BUFFER: usize = RECV_SLOTS * RX_SLOT;
/// Room a small frame takes in the transmit arena, typically: its slot is as long as the frame and its headroom and
/// tailroom, so this only sizes the arena to hold a whole batch of 1500-byte frames.
const TX_SLOT: usize = 2048;
/// The transmit arena: a batch of small frames, each encapsulated in its own slot, and room for one more frame of
/// any size (or a superframe) read after them.
const TX_ARENA: usize = BATCH * TX_SLOT + HEADROOM + BUFFER + TAILROOM;
/// Datagrams waiting for the end of a TAP batch; more are sent at once (a flood to many VTEPs).
const TX_PENDING: usize = 256;
/// Most segments one superframe may be cut into (a 64 KB TSO frame at a small MSS).
const MAX_SEGMENTS: usize = 512;
/// Room per segment in the header arena: VXLAN, Ethernet with a VLAN tag, IPv4 or IPv6 and TCP with options.
const ARENA_BLOCK: usize = 160;
/// Longest sleep in poll: bounds how late a stop request or a query is seen.
const POLL_MS: i32 = 100;

/// A request from another thread, handled between batches. Every worker gets its own copy.
#[derive(Debug, Clone)]
pub enum Query {
    /// Counters and the FDB.
    Snapshot(crossbeam_channel::Sender<Snapshot>),
    /// A change from the control plane.
    Control(ControlUpdate),
    /// An SA change from the key agreement, its SA state shared by all workers.
    Key(SaUpdate),
    /// Open a capture (`weft capture`).
    CaptureStart(CaptureSink),
    /// Close the capture with this id.
    CaptureStop(u64),
}

/// What the worker tells the control plane.
#[derive(Debug)]
pub enum DatapathEvent {
    /// A local endpoint appeared, changed or went silent, as worker `worker` sees it ([`overlay_proto::local::LocalMerge`]
    /// joins the workers' views).
    Local {
        /// The worker's index.
        worker: usize,
        /// What it saw.
        event: LocalEvent,
    },
    /// Packets and bytes sealed so far by each current outbound SA, about once a second (from worker 0 only: the
    /// counters are shared).
    SaUsage(Vec<(IpAddr, u64, u64)>),
}

/// The sending side of one worker's queue, with the waker that makes it act at once.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    queries: crossbeam_channel::Sender<Query>,
    waker: Arc<Waker>,
}

/// The way into every worker: queries go to all of them, snapshots are summed.
#[derive(Debug, Clone)]
pub struct DatapathHandle {
    workers: Vec<WorkerHandle>,
}

/// Why the workers' state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A worker's queue is full or the worker is gone.
    #[error("the data path is busy")]
    Busy,
    /// A worker did not answer in time.
    #[error("the data path did not answer")]
    Timeout,
}

impl DatapathHandle {
    /// A handle over the workers.
    pub fn new(workers: Vec<WorkerHandle>) -> Self {
        Self { workers }
    }

    /// Queues a copy of `query` for every worker and wakes them. Fails when a worker is gone or its queue is full.
    pub fn send(&self, query: Query) -> Result<(), crossbeam_channel::TrySendError<Query>> {
        let mut outcome = Ok(());
        for worker in &self.workers {
            match worker.queries.try_send(query.clone()) {
                Ok(()) => worker.waker.wake(),
                Err(e) => outcome = Err(e),
            }
        }
        outcome
    }

    /// Every worker's counters and tables, joined: counters summed, tables merged. Blocks up to `timeout`.
    pub fn snapshot(&self, timeout: Duration) -> Result<Snapshot, SnapshotError> {
        let (tx, rx) = crossbeam_channel::bounded(self.workers.len());
        self.send(Query::Snapshot(tx)).map_err(|_| SnapshotError::Busy)?;
        let deadline = Instant::now() + timeout;
        let mut joined: Option<Snapshot> = None;
        for _ in &self.workers {
            let part = rx.recv_deadline(deadline).map_err(|_| SnapshotError::Timeout)?;
            match &mut joined {
                Some(j) => j.merge(part),
                None => joined = Some(part),
            }
        }
        joined.ok_or(SnapshotError::Timeout)
    }
}

/// The worker's state as the API shows it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Forwarding counters.
    pub forward: ForwardStats,
    /// Failed TAP reads or writes.
    pub tap_errors: u64,
    /// Failed underlay sends or receives.
    pub underlay_errors: u64,
    /// TAP superframes that could not be segmented.
    pub offload_errors: u64,
    /// The underlay's own counters.
    pub underlay: UnderlayStats,
    /// Every live FDB entry.
    pub fdb: Vec<FdbRow>,
    /// Endpoints discovered behind the TAPs: (network index, MAC, addresses).
    pub local: Vec<(usize, MacAddr, Vec<IpAddr>)>,
    /// Underlay traffic per VTEP.
    pub peers: Vec<(IpAddr, PeerTraffic)>,
    /// Traffic of VTEPs beyond the per-peer table.
    pub peers_overflow: PeerTraffic,
    /// Packets and bytes sealed by the current outbound SA of each VTEP.
    pub sa_usage: Vec<(IpAddr, u64, u64)>,
    /// Captured frames lost to a slow reader.
    pub capture_dropped: u64,
    /// What each worker carried, in worker order: how the kernel spread the flows.
    pub workers: Vec<WorkerLoad>,
}

/// One worker's share of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLoad {
    /// The worker's index.
    pub worker: usize,
    /// Datagrams it sent to the underlay.
    pub tx_datagrams: u64,
    /// Frames it received from the underlay and passed to a TAP.
    pub rx_frames: u64,
}

impl Snapshot {
    /// Adds another worker's snapshot to this one. Static and control-plane FDB entries are the same in every
    /// worker; a MAC one worker learnt shows once. SA usage counters are shared, so they are taken once.
    fn merge(&mut self, other: Snapshot) {
        self.forward.merge(&other.forward);
        self.tap_errors += other.tap_errors;
        self.underlay_errors += other.underlay_errors;
        self.offload_errors += other.offload_errors;
        self.underlay.merge(&other.underlay);
        // Tables run to thousands of entries: look them up by key, not by scanning.
        let known: std::collections::HashSet<(Vni, MacAddr)> = self.fdb.iter().map(|r| (r.vni, r.mac)).collect();
        self.fdb.extend(other.fdb.into_iter().filter(|r| !known.contains(&(r.vni, r.mac))));
        for (network, mac, ips) in other.local {
            match self.local.iter_mut().find(|(n, m, _)| *n == network && *m == mac) {
                Some((_, _, mine)) => {
                    for ip in ips {
                        if !mine.contains(&ip) {
                            mine.push(ip);
                        }
                    }
                }
                None => self.local.push((network, mac, ips)),
            }
        }
        for (vtep, traffic) in other.peers {
            match self.peers.iter_mut().find(|(v, _)| *v == vtep) {
                Some((_, mine)) => mine.add(&traffic),
                None => self.peers.push((vtep, traffic)),
            }
        }
        self.peers_overflow.add(&other.peers_overflow);
        self.capture_dropped += other.capture_dropped;
        self.workers.extend(other.workers);
        self.workers.sort_by_key(|w| w.worker);
    }
}

/// One FDB entry.
#[derive(Debug, Clone)]
pub struct FdbRow {
    /// The network's VNI.
    pub vni: Vni,
    /// The inner MAC.
    pub mac: MacAddr,
    /// Where it lives.
    pub vtep: IpAddr,
    /// `static`, or `learned` with its idle time.
    pub origin: Origin,
}

/// A running worker's handles.
#[derive(Debug)]
pub struct Datapath {
    /// This worker's index: 0 also reports SA usage.
    worker: usize,
    /// How long to keep polling without sleeping after the last work (0: always sleep in poll).
    busy_poll: Duration,
    forwarder: Forwarder,
    taps: Vec<Tap>,
    underlay: Box<dyn UnderlayIo>,
    stop: Arc<AtomicBool>,
    queries: crossbeam_channel::Receiver<Query>,
    waker: Arc<Waker>,
    events: Option<tokio::sync::mpsc::Sender<DatapathEvent>>,
    /// The destinations of the frame being sent, copied out of the forwarder (reused, so no allocation).
    targets: Vec<IpAddr>,
    /// A second buffer: a copy of a frame flooded on an encrypted network that no longer fits in the arena.
    scratch: Vec<u8>,
    /// The transmit arena: TAP frames are read into it one after another, and small ones encapsulated in place (a
    /// flood on an encrypted network seals each copy in a slot of its own), to be sent together.
    tx: Vec<u8>,
    /// The datagrams in `tx` waiting to be sent at the end of the TAP batch.
    pending: Vec<Datagram>,
    /// Where superframes are cut into segments and encapsulated, back to back.
    seg: Vec<u8>,
    lens: Vec<usize>,
    /// Plaintext superframes: each segment's header block, and where its payload lies in the superframe.
    arena: Vec<u8>,
    payloads: Vec<Range<usize>>,
    datagrams: Vec<Range<usize>>,
    /// Receive-side coalescing, for the network in `coalescing`: the superframe's header block in `gro`, its
    /// payloads where they were received in `rx`.
    coalescer: GatherCoalescer,
    gro: Vec<u8>,
    rx: Vec<u8>,
    coalescing: Option<usize>,
    /// Superframes or virtio headers that could not be handled.
    offload_errors: u64,
    tap_errors: u64,
    underlay_errors: u64,
    peers: PeerCounters,
    captures: Captures,
}

impl Datapath {
    /// Worker `worker` over `taps` (one queue of each network's TAP, in the forwarder's network order) and
    /// `underlay`, and the handle that feeds it. Discovered local endpoints go to `events` when a control plane
    /// listens. After any work it keeps polling without sleeping for `busy_poll`, so the next frame of an exchange
    /// does not pay a wake-up.
    pub fn new(
        worker: usize,
        forwarder: Forwarder,
        taps: Vec<Tap>,
        underlay: Box<dyn UnderlayIo>,
        stop: Arc<AtomicBool>,
        events: Option<tokio::sync::mpsc::Sender<DatapathEvent>>,
        busy_poll: Duration,
    ) -> io::Result<(Self, WorkerHandle)> {
        let (tx, queries) = crossbeam_channel::bounded(4096);
        let waker = Arc::new(Waker::new()?);
        let handle = WorkerHandle { queries: tx, waker: waker.clone() };
        let worker = Self {
            worker,
            busy_poll,
            forwarder,
            taps,
            underlay,
            stop,
            queries,
            waker,
            events,
            targets: Vec::with_capacity(64),
            scratch: vec![0u8; HEADROOM + BUFFER + TAILROOM],
            tx: vec![0u8; TX_ARENA],
            pending: Vec::with_capacity(TX_PENDING),
            // Each segment carries its own copy of the headers and the encapsulation, so cut frames take more
            // room than the superframe did.
            seg: vec![0u8; 4 * BUFFER],
            // A header block per segment (at most VXLAN + 18 + 60 + 60 bytes), or a whole frame without GSO.
            arena: vec![0u8; MAX_SEGMENTS * ARENA_BLOCK + BUFFER],
            payloads: vec![0..0; MAX_SEGMENTS],
            lens: vec![0; MAX_SEGMENTS],
            datagrams: Vec::with_capacity(MAX_SEGMENTS),
            coalescer: GatherCoalescer::new(),
            gro: vec![0u8; GATHER_HEAD],
            rx: vec![0u8; RX_BUFFER],
            coalescing: None,
            offload_errors: 0,
            tap_errors: 0,
            underlay_errors: 0,
            peers: PeerCounters::default(),
            captures: Captures::default(),
        };
        Ok((worker, handle))
    }

    /// Runs until `stop` is set. Returns the TAPs so the caller decides when they close.
    pub fn run(mut self) -> io::Result<Vec<Tap>> {
        let mut fds: Vec<libc::pollfd> = self
            .taps
            .iter()
            .map(|t| t.as_raw_fd())
            .chain(self.underlay.poll_fds())
            .chain([self.waker.as_raw_fd()])
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let mut next_tick = clock::now() + Duration::from_secs(1);
        let mut last_work = clock::now();
        while !self.stop.load(Ordering::Relaxed) {
            let spinning = clock::now().saturating_duration_since(last_work) < self.busy_poll;
            let timeout = if spinning { 0 } else { POLL_MS };
            // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs for the whole call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready > 0 {
                last_work = clock::now();
            } else if spinning {
                // Nothing yet: let anything else that wants this core run, then look again.
                std::thread::yield_now();
            }
            let now = clock::now();
            let (tap_fds, rest) = fds.split_at(self.taps.len());
            let (underlay_fds, waker_fd) = rest.split_at(rest.len() - 1);
            for (network, fd) in tap_fds.iter().enumerate() {
                if fd.revents != 0 {
                    self.drain_tap(now, network);
                }
            }
            for (source, fd) in underlay_fds.iter().enumerate() {
                if fd.revents != 0 {
                    self.drain_underlay(now, source);
                }
            }
            if waker_fd[0].revents != 0 {
                self.waker.reset();
            }
            if now >= next_tick {
                self.forwarder.handle_timeout(now);
                self.underlay.handle_timeout(now);
                next_tick = now + Duration::from_secs(1);
                let usage: Vec<_> = self.forwarder.sa_usage().collect();
                if self.worker == 0 && !usage.is_empty() {
                    self.emit(DatapathEvent::SaUsage(usage));
                }
            }
            self.drain_queries(now);
            while let Some(event) = self.forwarder.poll_local_event() {
                self.emit(DatapathEvent::Local { worker: self.worker, event });
            }
        }
        Ok(self.taps)
    }

    /// Reads up to [`BATCH`] frames from TAP `network` into the transmit arena, one after another. Small frames are
    /// encapsulated in place and wait in `pending` until the end of the batch (or until the arena or `pending` is
    /// full), then leave together ([`UnderlayIo::send_batch`]: `sendmmsg`, UDP GSO for runs of equal datagrams). A
    /// superframe first sends what waits, so a flow keeps its order, and then goes at once. Nothing waits beyond
    /// the batch: when the TAP has nothing more, everything read is sent.
    fn drain_tap(&mut self, now: Instant, network: usize) {
        let mut tx = std::mem::take(&mut self.tx);
        let vnet = self.taps[network].offloads().vnet_hdr;
        // With a virtio-net header, it lands in the headroom just in front of the frame.
        let read_at = if vnet { HEADROOM - VNET_HDR_LEN } else { HEADROOM };
        // Where the next frame's slot starts: after the slots of the frames waiting to be sent.
        let mut at = 0;
        for _ in 0..BATCH {
            if self.pending.is_empty() {
                at = 0;
            } else if at + HEADROOM + BUFFER + TAILROOM > tx.len() {
                self.flush_tx(&tx);
                at = 0;
            }
            let buf = &mut tx[at..];
            let len = match self.taps[network].recv(&mut buf[read_at..HEADROOM + BUFFER]) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.tap_errors += 1;
                    break;
                }
            };
            let frame = HEADROOM..read_at + len;
            let mut superframe = None;
            if vnet {
                let Some(hdr) =
                    (len >= VNET_HDR_LEN).then(|| VirtioNetHdr::parse(&buf[read_at..HEADROOM]).ok()).flatten()
                else {
                    self.offload_errors += 1;
                    continue;
                };
                if hdr.gso_type == gso::NONE {
                    if hdr.flags & offload::flags::NEEDS_CSUM != 0
                        && complete_checksum(&hdr, &mut buf[frame.clone()]).is_err()
                    {
                        self.offload_errors += 1;
                        continue;
                    }
                } else {
                    superframe = Some(hdr);
                }
            }
            let egress = self.forwarder.handle_tap_frame(now, network, &buf[frame.clone()]);
            self.targets.clear();
            let flow = match &egress {
                Egress::Unicast { vtep, flow } => {
                    self.targets.push(*vtep);
                    *flow
                }
                Egress::Flood { vteps, flow } => {
                    self.targets.extend_from_slice(vteps);
                    *flow
                }
                Egress::Answer { mac } => {
                    // The reply goes into the buffer's tail, after the request (and after room for a header).
                    let (request, rest) = buf.split_at_mut(frame.end);
                    if let Some(len) = neighbor::answer(&request[frame.clone()], *mac, &mut rest[VNET_HDR_LEN..]) {
                        self.write_tap(network, rest, VNET_HDR_LEN..VNET_HDR_LEN + len);
                    }
                    continue;
                }
                Egress::Drop(_) | Egress::Local => continue,
            };
            if self.captures.is_active() {
                self.captures.offer(network, true, &buf[frame.clone()]);
            }
            let frame = at + frame.start..at + frame.end;
            match superframe {
                Some(hdr) => {
                    self.flush_tx(&tx);
                    self.send_superframe(network, flow, &hdr, &tx[frame]);
                }
                None => at = self.queue_frame(network, flow, &mut tx, frame),
            }
        }
        self.flush_tx(&tx);
        self.tx = tx;
    }

    /// Encapsulates the frame at `tx[frame]` for every target, in place, and queues the datagrams in `pending`.
    /// Plaintext: one datagram, the same bytes for every VTEP. Encrypted: sealing consumes the plaintext, so a
    /// flood seals a copy per VTEP, each in a slot of its own after the frame. Returns where the next slot may
    /// start.
    fn queue_frame(&mut self, network: usize, flow: u32, tx: &mut [u8], frame: Range<usize>) -> usize {
        let copy_each = self.forwarder.is_encrypted(network) && self.targets.len() > 1;
        // Slots start 64-byte aligned, after the tailroom an ESP trailer may take.
        let after = |end: usize| (end + TAILROOM).next_multiple_of(64);
        if !copy_each {
            let Some(&first) = self.targets.first() else { return frame.start - HEADROOM };
            let Ok((datagram, port)) = self.forwarder.encapsulate(network, first, flow, tx, frame.clone()) else {
                return frame.start - HEADROOM;
            };
            // Plaintext headers do not depend on the VTEP, and an encrypted frame here has one target.
            for i in 0..self.targets.len() {
                if self.pending.len() == TX_PENDING {
                    self.flush_tx(tx);
                }
                let vtep = self.targets[i];
                self.pending.push(Datagram {
                    flow,
                    vtep,
                    esp: port == Port::Esp,
                    bytes: datagram.clone(),
                    sent: false,
                });
            }
            return after(frame.end);
        }
        let (copies, len) = (after(frame.end), frame.len());
        let mut next = copies;
        for i in 0..self.targets.len() {
            let vtep = self.targets[i];
            if next + HEADROOM + len + TAILROOM > tx.len() || self.pending.len() == TX_PENDING {
                // Only the frame itself stays live in the arena once what waits is sent.
                self.flush_tx(tx);
                next = copies;
            }
            if next + HEADROOM + len + TAILROOM > tx.len() {
                // A frame too long for two slots in what is left of the arena: seal this copy apart, send it now.
                let scratch_frame = HEADROOM..HEADROOM + len;
                self.scratch[scratch_frame.clone()].copy_from_slice(&tx[frame.clone()]);
                if let Ok((datagram, _)) =
                    self.forwarder.encapsulate(network, vtep, flow, &mut self.scratch, scratch_frame)
                {
                    let segment = datagram.len();
                    match self.underlay.send_segments(flow, vtep, true, &self.scratch[datagram], segment) {
                        Ok(()) => self.peers.sent(vtep, 1, segment as u64),
                        Err(_) => self.underlay_errors += 1,
                    }
                }
                continue;
            }
            let copy = next + HEADROOM..next + HEADROOM + len;
            tx.copy_within(frame.clone(), copy.start);
            if let Ok((datagram, port)) = self.forwarder.encapsulate(network, vtep, flow, tx, copy.clone()) {
                self.pending.push(Datagram { flow, vtep, esp: port == Port::Esp, bytes: datagram, sent: false });
            }
            next = after(copy.end);
        }
        next
    }

    /// Sends every datagram in `pending` (their bytes in `tx`) with [`UnderlayIo::send_batch`], and counts them per
    /// VTEP, one lookup per run of datagrams to one VTEP.
    fn flush_tx(&mut self, tx: &[u8]) {
        if self.pending.is_empty() {
            return;
        }
        self.underlay_errors += self.underlay.send_batch(tx, &mut self.pending) as u64;
        let mut rest = &self.pending[..];
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|d| d.vtep == first.vtep).count();
            let sent = rest[..run].iter().filter(|d| d.sent);
            let (packets, bytes) = sent.fold((0, 0), |(p, b), d| (p + 1, b + d.bytes.len() as u64));
            if packets > 0 {
                self.peers.sent(first.vtep, packets, bytes);
            }
            rest = &rest[run..];
        }
        self.pending.clear();
    }

    /// Cuts a TSO/USO superframe into wire frames laid out so their datagrams sit back to back at one stride, then
    /// hands each target all of them in as few UDP GSO sends as possible.
    fn send_superframe(&mut self, network: usize, flow: u32, hdr: &VirtioNetHdr, superframe: &[u8]) {
        let encrypted = self.forwarder.is_encrypted(network);
        if !encrypted {
            self.send_superframe_gathered(network, flow, hdr, superframe);
            return;
        }
        let front = vxlan::HEADER_LEN + if encrypted { udp::HEADER_LEN + esp::HEADER_LEN } else { 0 };
        let Ok(longest) = offload::max_segment_len(hdr, superframe) else {
            self.offload_errors += 1;
            return;
        };
        let trailer =
            if encrypted { esp::overhead(udp::HEADER_LEN + vxlan::HEADER_LEN + longest) - esp::HEADER_LEN } else { 0 };
        let stride = front + longest + trailer;
        for t in 0..self.targets.len() {
            let vtep = self.targets[t];
            // Re-cut for every target: encryption seals the segments in place.
            let Ok(count) = offload::segment(hdr, superframe, &mut self.seg, front, stride, &mut self.lens) else {
                self.offload_errors += 1;
                return;
            };
            let (mut end, mut esp_port, mut contiguous) = (0, false, true);
            self.datagrams.clear();
            for i in 0..count {
                let frame = i * stride + front..i * stride + front + self.lens[i];
                let Ok((datagram, port)) = self.forwarder.encapsulate(network, vtep, flow, &mut self.seg, frame) else {
                    continue;
                };
                contiguous &= datagram.start == end && (i + 1 == count || datagram.len() == stride);
                end = datagram.end;
                esp_port = port == Port::Esp;
                self.datagrams.push(datagram);
            }
            let sent = if contiguous && !self.datagrams.is_empty() {
                self.underlay.send_segments(flow, vtep, esp_port, &self.seg[..end], stride)
            } else {
                self.datagrams
                    .iter()
                    .try_for_each(|d| self.underlay.send_segments(flow, vtep, esp_port, &self.seg[d.clone()], d.len()))
            };
            if sent.is_err() {
                self.underlay_errors += 1;
            } else {
                let bytes = self.datagrams.iter().map(|d| d.len() as u64).sum();
                self.peers.sent(vtep, self.datagrams.len() as u64, bytes);
            }
        }
    }

    /// A plaintext superframe without copying its payload: each segment's headers (VXLAN and the rewritten inner
    /// headers) are written into `arena`, and each datagram goes out gathered from its header block and its payload
    /// in place in the superframe, up to [`GATHER_MAX`] datagrams per UDP GSO send. The headers are the same for
    /// every target, so a flood builds them once.
    fn send_superframe_gathered(&mut self, network: usize, flow: u32, hdr: &VirtioNetHdr, superframe: &[u8]) {
        let front = vxlan::HEADER_LEN;
        let Ok(gather) = offload::segment_gather(hdr, superframe, front, &mut self.arena, &mut self.payloads) else {
            self.offload_errors += 1;
            return;
        };
        let Some(&first) = self.targets.first() else { return };
        for i in 0..gather.count {
            let headers = i * gather.block + front..(i + 1) * gather.block;
            // Plaintext: only the VXLAN header goes in front, the same for every VTEP.
            if self.forwarder.encapsulate(network, first, flow, &mut self.arena, headers).is_err() {
                self.offload_errors += 1;
                return;
            }
        }
        // Every datagram but the last is a full one: the header block and `gso_size` bytes of payload.
        let segment = gather.block + self.payloads[0].len();
        let bytes = gather.count * gather.block + self.payloads[gather.count - 1].end - self.payloads[0].start;
        for &vtep in &self.targets {
            let mut sent = Ok(());
            for start in (0..gather.count).step_by(GATHER_MAX) {
                let end = (start + GATHER_MAX).min(gather.count);
                let mut iov = [[IoSlice::new(&[]); 2]; GATHER_MAX];
                for (slot, i) in iov.iter_mut().zip(start..end) {
                    *slot = [
                        IoSlice::new(&self.arena[i * gather.block..(i + 1) * gather.block]),
                        IoSlice::new(&superframe[self.payloads[i].clone()]),
                    ];
                }
                sent = self.underlay.send_gathered(flow, vtep, false, &iov[..end - start], segment);
                if sent.is_err() {
                    break;
                }
            }
            if sent.is_err() {
                self.underlay_errors += 1;
            } else {
                self.peers.sent(vtep, gather.count as u64, bytes as u64);
            }
        }
    }

    /// Receives from `source` into the worker's own receive buffer (`rx`), up to [`RECV_SLOTS`] messages per call
    /// ([`UnderlayIo::recv_batch`]: `recvmmsg`), each in a 64 KiB slot: segments the coalescer holds stay where they
    /// were received until the superframe is written, so each call's slots start after the last message received,
    /// and the coalescer is flushed before the buffer wraps around.
    fn drain_underlay(&mut self, now: Instant, source: usize) {
        let mut rx = std::mem::take(&mut self.rx);
        let mut got = [Received::EMPTY; RECV_SLOTS];
        let (mut at, mut messages) = (0, 0);
        while messages < BATCH {
            if at + RX_SLOT > rx.len() {
                self.flush_coalesced(&rx);
                at = 0;
            }
            let slots = ((rx.len() - at) / RX_SLOT).min(RECV_SLOTS);
            // With UDP_GRO one message holds several datagrams of one sender, back to back. Each lands after room
            // for a virtio-net header, so even the first frame can be written to the TAP in place.
            let filled =
                match self.underlay.recv_batch(source, &mut rx[at + RX_OFFSET..], RX_SLOT, BUFFER, &mut got[..slots]) {
                    Ok(filled) => filled,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.underlay_errors += 1;
                        break;
                    }
                };
            if filled == 0 {
                break;
            }
            for (i, received) in got[..filled].iter().enumerate() {
                self.handle_received(now, &mut rx, at + i * RX_SLOT + RX_OFFSET, received);
            }
            at += (filled - 1) * RX_SLOT + RX_OFFSET + got[filled - 1].len;
            messages += filled;
            if filled < slots {
                // The socket had no more: asking again would only find it empty.
                break;
            }
        }
        self.flush_coalesced(&rx);
        self.rx = rx;
    }

    /// Handles the datagrams of one received message at `rx[start..]`: opens or checks them and delivers their frames.
    fn handle_received(&mut self, now: Instant, rx: &mut [u8], start: usize, received: &Received) {
        let (len, from, segment, esp_socket) = (received.len, received.from, received.segment, received.esp);
        let (mut accepted, mut accepted_bytes) = (0, 0);
        for range in gro_datagrams(start, len, segment) {
            let (start, end) = (range.start, range.end);
            let datagram = &mut rx[range];
            // A peer switches to a new SA only after this host queued its install: apply the queue before calling
            // the SPI unknown.
            if esp_socket && esp::spi_of(datagram).is_some_and(|spi| !self.forwarder.knows_inbound(spi)) {
                self.drain_queries(now);
            }
            let ingress = if esp_socket {
                self.forwarder.handle_esp(now, from.ip(), datagram)
            } else {
                self.forwarder.handle_underlay(now, from.ip(), datagram)
            };
            if let Ok(ingress) = ingress {
                let frame = start + ingress.frame.start..start + ingress.frame.end;
                (accepted, accepted_bytes) = (accepted + 1, accepted_bytes + (end - start) as u64);
                if self.captures.is_active() {
                    self.captures.offer(ingress.network, false, &rx[frame.clone()]);
                }
                self.deliver(ingress.network, rx, frame, esp_socket);
            }
        }
        // One GRO batch comes from one sender: one lookup for all of it.
        if accepted > 0 {
            self.peers.received(from.ip(), accepted, accepted_bytes);
        }
    }

    /// Writes a received frame (`rx[frame]`) to its TAP, coalescing consecutive TCP segments of a flow into one
    /// superframe when the TAP takes them: the coalescer keeps the first segment's headers and the payloads' ranges
    /// in `rx`, and the superframe is written gathered. Frames that came out of ESP (`authenticated`, their ICV
    /// verified) are merged without summing their checksums again.
    ///
    /// A frame written alone gets its virtio-net header in the bytes in front of it, which may be the tail of the
    /// datagram before it: that is only done after [`Self::flush_coalesced`], once no pending range points there.
    fn deliver(&mut self, network: usize, rx: &mut [u8], frame: Range<usize>, authenticated: bool) {
        if !self.taps[network].offloads().vnet_hdr {
            self.write_tap(network, rx, frame);
            return;
        }
        if self.coalescing != Some(network) {
            self.flush_coalesced(rx);
            self.coalescing = Some(network);
        }
        let push = |coalescer: &mut GatherCoalescer, head: &mut [u8], rx: &[u8]| match authenticated {
            true => coalescer.push_authenticated(head, rx, frame.clone()),
            false => coalescer.push(head, rx, frame.clone()),
        };
        if push(&mut self.coalescer, &mut self.gro, rx) == Push::Appended {
            return;
        }
        self.flush_coalesced(rx);
        self.coalescing = Some(network);
        if push(&mut self.coalescer, &mut self.gro, rx) == Push::NotMergeable {
            self.write_tap(network, rx, frame);
        }
    }

    /// Writes the pending superframe, if any, with one `writev`: its header block, then its payloads from `rx`.
    fn flush_coalesced(&mut self, rx: &[u8]) {
        let Some(network) = self.coalescing else { return };
        let Some((block, payloads)) = self.coalescer.finish(&mut self.gro) else { return };
        let mut iov = [const { MaybeUninit::<IoSlice<'_>>::uninit() }; GATHER_SEGMENTS + 1];
        iov[0].write(IoSlice::new(&self.gro[..block]));
        for (slot, range) in iov[1..].iter_mut().zip(payloads) {
            slot.write(IoSlice::new(&rx[range.clone()]));
        }
        let pieces = 1 + payloads.len().min(GATHER_SEGMENTS);
        // SAFETY: the first `pieces` entries were written just above (the coalescer holds at most GATHER_SEGMENTS
        // payloads, so the zip wrote every one), and MaybeUninit<T> has T's layout.
        let iov = unsafe { std::slice::from_raw_parts(iov.as_ptr().cast::<IoSlice<'_>>(), pieces) };
        if self.taps[network].send_vectored(iov).is_err() {
            self.tap_errors += 1;
        }
    }

    /// Writes one frame, putting an empty virtio-net header in the bytes in front of it when the TAP wants one.
    fn write_tap(&mut self, network: usize, buf: &mut [u8], frame: Range<usize>) {
        let start = if self.taps[network].offloads().vnet_hdr {
            let start = frame.start - VNET_HDR_LEN;
            VirtioNetHdr::default().emit(&mut buf[start..frame.start]);
            start
        } else {
            frame.start
        };
        if self.taps[network].send(&buf[start..frame.end]).is_err() {
            self.tap_errors += 1;
        }
    }

    fn drain_queries(&mut self, now: Instant) {
        while let Ok(query) = self.queries.try_recv() {
            self.answer(now, query);
        }
    }

    /// Hands an event to the control plane. A full queue means it is far behind: local endpoints are seen again
    /// on their next frame, and usage is reported again in a second.
    fn emit(&self, event: DatapathEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.try_send(event);
        }
    }

    fn answer(&mut self, now: Instant, query: Query) {
        match query {
            Query::Control(update) => {
                let members_changed = matches!(update, ControlUpdate::NetworkMembers { .. });
                self.forwarder.handle_control(update);
                // A host that left drops out of the members: free its counter slot, or after MAX_PEERS VTEPs over
                // the daemon's life every new peer would be counted only in the overflow.
                if members_changed {
                    let known = self.forwarder.known_vteps();
                    self.peers.retain(|vtep| known.contains(&vtep));
                }
            }
            Query::Key(update) => self.forwarder.handle_sa_update(update),
            Query::CaptureStart(sink) => self.captures.start(sink),
            Query::CaptureStop(id) => self.captures.stop(id),
            Query::Snapshot(reply) => {
                let fdb = self
                    .forwarder
                    .fdb()
                    .iter()
                    .filter(|(vni, mac, _)| self.forwarder.fdb().lookup(now, *vni, *mac).is_some())
                    .map(|(vni, mac, e)| FdbRow { vni, mac, vtep: e.vtep, origin: e.origin })
                    .collect();
                let _ = reply.send(Snapshot {
                    forward: self.forwarder.stats().clone(),
                    tap_errors: self.tap_errors,
                    underlay_errors: self.underlay_errors,
                    offload_errors: self.offload_errors,
                    underlay: self.underlay.stats(),
                    fdb,
                    local: self.forwarder.local_endpoints().iter().map(|(n, m, ips)| (n, m, ips.to_vec())).collect(),
                    peers: self.peers.iter().collect(),
                    peers_overflow: self.peers.overflow,
                    sa_usage: self.forwarder.sa_usage().collect(),
                    capture_dropped: self.captures.dropped(),
                    workers: vec![WorkerLoad {
                        worker: self.worker,
                        tx_datagrams: self.forwarder.stats().tx_datagrams,
                        rx_frames: self.forwarder.stats().rx_frames,
                    }],
                });
            }
        }
    }
}

/// The datagrams of one receive of `len` bytes at `start`, `segment` bytes each (the last may be shorter), as the
/// kernel's UDP GRO batched them. An empty datagram is one datagram too: it is handed on (and counted as malformed
/// by the forwarder) rather than vanishing uncounted.
fn gro_datagrams(start: usize, len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let segment = segment.max(1);
    let count = len.div_ceil(segment).max(1);
    (0..count).map(move |k| {
        let from = start + k * segment;
        from..(from + segment).min(start + len)
    })
}

#[cfg(test)]
mod tests {
    use super::gro_datagrams;

    #[test]
    fn gro_batches_split_into_segments_with_a_short_last_one() {
        let split: Vec<_> = gro_datagrams(10, 2500, 1000).collect();
        assert_eq!(split, vec![10..1010, 1010..2010, 2010..2510]);
        assert_eq!(gro_datagrams(10, 1000, 1000).collect::<Vec<_>>(), vec![10..1010]);
    }

    #[test]
    fn an_empty_datagram_is_still_one_datagram() {
        // Regression (reliability suite, adversarial test): a zero-length UDP datagram was skipped by the receive
        // loop, so it was dropped without being counted under any reason.
        assert_eq!(gro_datagrams(10, 0, 1).collect::<Vec<_>>(), vec![10..10]);
        assert_eq!(gro_datagrams(10, 0, 0).collect::<Vec<_>>(), vec![10..10]);
    }
}
