//! The data-path worker: one thread that moves frames between the TAPs and the underlay sockets.
//!
//! The loop is thin on purpose. It polls the TAPs and the receive socket, reads what is ready in bounded batches,
//! asks the sans-IO [`Forwarder`] what to do with each frame, writes the VXLAN header in place into the buffer's
//! headroom, and sends. Nothing is allocated per packet: one buffer is reused for every frame. Control-plane updates
//! and API queries arrive on a channel (with an eventfd to wake the poll) and are handled between batches, so the
//! forwarding state and its counters are never shared across threads. Endpoints discovered on the TAPs go the
//! other way, to the control plane.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_proto::fdb::Origin;
use overlay_proto::forward::{ControlUpdate, Egress, ForwardStats, Forwarder, Port, HEADROOM, TAILROOM};
use overlay_proto::keying::KeyEvent;
use overlay_proto::local::LocalEvent;
use overlay_proto::{neighbor, MacAddr, Vni};

use super::tap::Tap;
use super::udp::{recv_segments, Underlay};
use super::waker::Waker;
use crate::clock;

/// Largest frame or datagram read: a TAP without offloads gives at most MTU + 18, the underlay at most 64 KiB.
const BUFFER: usize = 65_536;
/// Frames handled per ready descriptor before looking at the others, so no direction starves the other.
const BATCH: usize = 64;
/// Longest sleep in poll: bounds how late a stop request or a query is seen.
const POLL_MS: i32 = 100;

/// A request from another thread, handled between batches.
#[derive(Debug)]
pub enum Query {
    /// Counters and the FDB.
    Snapshot(crossbeam_channel::Sender<Snapshot>),
    /// A change from the control plane.
    Control(ControlUpdate),
    /// An SA change from the key agreement.
    Key(KeyEvent),
}

/// What the worker tells the control plane.
#[derive(Debug)]
pub enum DatapathEvent {
    /// A local endpoint appeared, changed or went silent.
    Local(LocalEvent),
    /// Packets and bytes sealed so far by each current outbound SA, about once a second.
    SaUsage(Vec<(IpAddr, u64, u64)>),
}

/// The sending side of the worker's queue, with the waker that makes it act at once.
#[derive(Debug, Clone)]
pub struct DatapathHandle {
    queries: crossbeam_channel::Sender<Query>,
    waker: Arc<Waker>,
}

impl DatapathHandle {
    /// Queues `query` and wakes the worker. Fails when the worker is gone or its queue is full.
    pub fn send(&self, query: Query) -> Result<(), crossbeam_channel::TrySendError<Query>> {
        self.queries.try_send(query)?;
        self.waker.wake();
        Ok(())
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
    /// Every live FDB entry.
    pub fdb: Vec<FdbRow>,
    /// Endpoints discovered behind the TAPs: (network index, MAC, addresses).
    pub local: Vec<(usize, MacAddr, Vec<IpAddr>)>,
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
    forwarder: Forwarder,
    taps: Vec<Tap>,
    underlay: Underlay,
    stop: Arc<AtomicBool>,
    queries: crossbeam_channel::Receiver<Query>,
    waker: Arc<Waker>,
    events: Option<tokio::sync::mpsc::Sender<DatapathEvent>>,
    /// The destinations of the frame being sent, copied out of the forwarder (reused, so no allocation).
    targets: Vec<IpAddr>,
    /// A second buffer: each copy of a frame flooded on an encrypted network is sealed separately.
    scratch: Vec<u8>,
    tap_errors: u64,
    underlay_errors: u64,
}

impl Datapath {
    /// A worker over `taps` (in the forwarder's network order) and `underlay`, and the handle that feeds it.
    /// Discovered local endpoints go to `local_events` when a control plane listens.
    pub fn new(
        forwarder: Forwarder,
        taps: Vec<Tap>,
        underlay: Underlay,
        stop: Arc<AtomicBool>,
        events: Option<tokio::sync::mpsc::Sender<DatapathEvent>>,
    ) -> io::Result<(Self, DatapathHandle)> {
        let (tx, queries) = crossbeam_channel::bounded(4096);
        let waker = Arc::new(Waker::new()?);
        let handle = DatapathHandle { queries: tx, waker: waker.clone() };
        let worker = Self {
            forwarder,
            taps,
            underlay,
            stop,
            queries,
            waker,
            events,
            targets: Vec::with_capacity(64),
            scratch: vec![0u8; HEADROOM + BUFFER + TAILROOM],
            tap_errors: 0,
            underlay_errors: 0,
        };
        Ok((worker, handle))
    }

    /// Runs until `stop` is set. Returns the TAPs so the caller decides when they close.
    pub fn run(mut self) -> io::Result<Vec<Tap>> {
        let mut buf = vec![0u8; HEADROOM + BUFFER + TAILROOM];
        let mut fds: Vec<libc::pollfd> = self
            .taps
            .iter()
            .map(|t| t.as_raw_fd())
            .chain([self.underlay.vxlan.as_raw_fd(), self.underlay.esp.as_raw_fd(), self.waker.as_raw_fd()])
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        let mut next_tick = clock::now() + Duration::from_secs(1);
        while !self.stop.load(Ordering::Relaxed) {
            // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs for the whole call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = clock::now();
            let (tap_fds, underlay_fd) = fds.split_at(self.taps.len());
            for (network, fd) in tap_fds.iter().enumerate() {
                if fd.revents != 0 {
                    self.drain_tap(now, network, &mut buf);
                }
            }
            if underlay_fd[0].revents != 0 {
                self.drain_underlay(now, &mut buf, false);
            }
            if underlay_fd[1].revents != 0 {
                self.drain_underlay(now, &mut buf, true);
            }
            if underlay_fd[2].revents != 0 {
                self.waker.reset();
            }
            if now >= next_tick {
                self.forwarder.handle_timeout(now);
                next_tick = now + Duration::from_secs(1);
                let usage: Vec<_> = self.forwarder.sa_usage().collect();
                if !usage.is_empty() {
                    self.emit(DatapathEvent::SaUsage(usage));
                }
            }
            while let Ok(query) = self.queries.try_recv() {
                self.answer(now, query);
            }
            while let Some(event) = self.forwarder.poll_local_event() {
                self.emit(DatapathEvent::Local(event));
            }
        }
        Ok(self.taps)
    }

    fn drain_tap(&mut self, now: Instant, network: usize, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let len = match self.taps[network].recv(&mut buf[HEADROOM..]) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.tap_errors += 1;
                    return;
                }
            };
            let frame = HEADROOM..HEADROOM + len;
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
                    // The reply goes into the buffer's tail, after the request.
                    let (request, rest) = buf.split_at_mut(frame.end);
                    if let Some(len) = neighbor::answer(&request[frame.clone()], *mac, rest) {
                        if self.taps[network].send(&rest[..len]).is_err() {
                            self.tap_errors += 1;
                        }
                    }
                    continue;
                }
                Egress::Drop(_) | Egress::Local => continue,
            };
            // Sealing consumes the plaintext: a flood on an encrypted network seals a fresh copy per VTEP.
            let copy_each = self.forwarder.is_encrypted(network) && self.targets.len() > 1;
            for i in 0..self.targets.len() {
                let vtep = self.targets[i];
                let target: &mut [u8] = if copy_each {
                    self.scratch[frame.clone()].copy_from_slice(&buf[frame.clone()]);
                    &mut self.scratch
                } else {
                    &mut *buf
                };
                let Ok((datagram, port)) = self.forwarder.encapsulate(network, vtep, flow, target, frame.clone())
                else {
                    continue;
                };
                if self.underlay.send(flow, vtep, port == Port::Esp, &target[datagram]).is_err() {
                    self.underlay_errors += 1;
                }
            }
        }
    }

    fn drain_underlay(&mut self, now: Instant, buf: &mut [u8], esp: bool) {
        for _ in 0..BATCH {
            let socket = if esp { &self.underlay.esp } else { &self.underlay.vxlan };
            // With UDP_GRO one receive returns several datagrams of one sender, back to back.
            let (len, from, segment) = match recv_segments(socket, buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.underlay_errors += 1;
                    return;
                }
            };
            for datagram in buf[..len].chunks_mut(segment) {
                let ingress = if esp {
                    self.forwarder.handle_esp(now, from.ip(), datagram)
                } else {
                    self.forwarder.handle_underlay(now, from.ip(), datagram)
                };
                let Ok(ingress) = ingress else { continue };
                if self.taps[ingress.network].send(&datagram[ingress.frame]).is_err() {
                    self.tap_errors += 1;
                }
            }
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
            Query::Control(update) => self.forwarder.handle_control(update),
            Query::Key(event) => self.forwarder.handle_key_event(event),
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
                    fdb,
                    local: self.forwarder.local_endpoints().iter().map(|(n, m, ips)| (n, m, ips.to_vec())).collect(),
                });
            }
        }
    }
}
