//! Next-hop MACs for the AF_XDP underlay, from the kernel's neighbour table.
//!
//! Datagrams sent through an AF_XDP socket skip the kernel's routing and ARP/ND, so weft writes the destination MAC
//! itself. The worker keeps a small cache ([`Neighbours`]); a miss drops the datagram (counted as
//! `neighbour_misses`) and asks a resolver task on the tokio runtime, which
//! 1. asks the kernel for the route to the VTEP (its gateway is the next hop, or the VTEP itself when on-link);
//! 2. sends a neighbour entry with `NTF_USE` over rtnetlink, which makes the kernel resolve it (an ARP request or a
//!    neighbour solicitation) or confirm an entry it has, as its own sending would;
//! 3. reads the neighbour table until the entry has a MAC, for up to [`RESOLVE_TIMEOUT`].
//!
//! Up to [`CONCURRENT`] VTEPs are resolved at once, each VTEP once at a time: an unreachable VTEP (a dead host still
//! in the FDB) holds one slot for its [`RESOLVE_TIMEOUT`] and no longer delays every VTEP queued behind it.
//!
//! The answer comes back over a channel the worker reads at its next send or its next one-second tick. Every
//! [`REFRESH_TICKS`] ticks the worker asks again for every entry, so a next hop that changes its MAC is followed
//! within about that many seconds (the kernel still sees the peers' ARP requests and answers, which keep its entries
//! fresh).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use overlay_proto::MacAddr;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{debug, info};

/// How long the resolver waits for the kernel to resolve a next hop.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often it looks at the neighbour table meanwhile.
const RESOLVE_POLL: Duration = Duration::from_millis(20);
/// Ticks (seconds) between confirmations of every cached next hop.
pub const REFRESH_TICKS: u64 = 30;
/// Resolutions in flight at once. Each polls the neighbour table every [`RESOLVE_POLL`], so this also bounds the
/// netlink dumps a burst of misses causes.
pub const CONCURRENT: usize = 8;
/// Requests queued to the resolver at most; more are dropped and asked again on a later miss.
const QUEUE: usize = 1024;

/// The resolver's answer: the VTEP, and its next hop's MAC if the kernel found one.
type Answer = (IpAddr, Option<MacAddr>);

/// The worker's side: the cache and the channels to the resolver.
#[derive(Debug)]
pub struct Neighbours {
    cache: HashMap<IpAddr, Entry>,
    requests: tokio::sync::mpsc::Sender<IpAddr>,
    answers: crossbeam_channel::Receiver<Answer>,
    tick: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: Option<MacAddr>,
    /// The tick of the last request, so a VTEP is asked for at most once a tick.
    asked: u64,
}

impl Neighbours {
    /// Starts the resolver for link `ifindex` on the current tokio runtime.
    pub fn start(handle: Handle, ifindex: u32) -> Self {
        let (requests, rx) = tokio::sync::mpsc::channel(QUEUE);
        let (tx, answers) = crossbeam_channel::bounded(QUEUE);
        tokio::spawn(resolve(handle, ifindex, rx, tx));
        Self { cache: HashMap::new(), requests, answers, tick: 0 }
    }

    /// The MAC to send to `vtep` with, or `None` (resolution has been asked for).
    pub fn lookup(&mut self, vtep: IpAddr) -> Option<MacAddr> {
        if let Some(Entry { mac: Some(mac), .. }) = self.cache.get(&vtep) {
            return Some(*mac);
        }
        self.handle_answers();
        let tick = self.tick;
        let entry = self.cache.entry(vtep).or_insert(Entry { mac: None, asked: u64::MAX });
        if entry.mac.is_none() && entry.asked != tick && self.requests.try_send(vtep).is_ok() {
            entry.asked = tick;
        }
        entry.mac
    }

    /// Once a second: reads answers, and every [`REFRESH_TICKS`] asks the resolver to confirm every entry.
    pub fn handle_tick(&mut self) {
        self.tick += 1;
        self.handle_answers();
        if self.tick.is_multiple_of(REFRESH_TICKS) {
            for (vtep, entry) in &mut self.cache {
                if self.requests.try_send(*vtep).is_ok() {
                    entry.asked = self.tick;
                }
            }
        }
    }

    fn handle_answers(&mut self) {
        while let Ok((vtep, mac)) = self.answers.try_recv() {
            let entry = self.cache.entry(vtep).or_insert(Entry { mac: None, asked: self.tick });
            match (entry.mac, mac) {
                (Some(old), Some(new)) if old != new => info!(%vtep, %old, %new, "next hop MAC changed"),
                (None, Some(new)) => debug!(%vtep, mac = %new, "next hop resolved"),
                _ => {}
            }
            // A failed refresh keeps the MAC it had: the kernel may just be slow, and a wrong guess costs no more.
            if mac.is_some() {
                entry.mac = mac;
            }
        }
    }
}

/// The resolver task, until the worker is gone.
async fn resolve(
    handle: Handle,
    ifindex: u32,
    requests: tokio::sync::mpsc::Receiver<IpAddr>,
    answers: crossbeam_channel::Sender<Answer>,
) {
    serve(requests, answers, |vtep| {
        let handle = handle.clone();
        async move {
            let next_hop = next_hop(&handle, vtep).await.unwrap_or(vtep);
            let mac = resolve_one(&handle, ifindex, next_hop).await;
            if mac.is_none() {
                debug!(%vtep, %next_hop, "next hop did not resolve");
            }
            mac
        }
    })
    .await;
}

/// Answers `requests` with `resolve`, up to [`CONCURRENT`] at once; a VTEP already being resolved is not asked again.
/// Returns when the worker is gone (either channel closed).
async fn serve<F, Fut>(
    mut requests: tokio::sync::mpsc::Receiver<IpAddr>,
    answers: crossbeam_channel::Sender<Answer>,
    resolve: F,
) where
    F: Fn(IpAddr) -> Fut,
    Fut: Future<Output = Option<MacAddr>>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut resolving = HashSet::new();
    loop {
        tokio::select! {
            request = requests.recv(), if in_flight.len() < CONCURRENT => {
                let Some(vtep) = request else { return };
                if resolving.insert(vtep) {
                    let resolution = resolve(vtep);
                    in_flight.push(async move { (vtep, resolution.await) });
                }
            }
            Some((vtep, mac)) = in_flight.next(), if !in_flight.is_empty() => {
                resolving.remove(&vtep);
                // Never block the runtime on a worker that is behind: a lost answer is asked for again on a later
                // miss (at most once a tick).
                if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = answers.try_send((vtep, mac)) {
                    return;
                }
            }
        }
    }
}

/// The gateway of the kernel's route to `vtep`, or `None` when it is on-link (or the lookup fails).
async fn next_hop(handle: &Handle, vtep: IpAddr) -> Option<IpAddr> {
    let message = match vtep {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(v4, 32).build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(v6, 128).build(),
    };
    let route = handle.route().get(message).execute().try_next().await.ok()??;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(IpAddr::V4(*gw)),
        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => Some(IpAddr::V6(*gw)),
        _ => None,
    })
}

/// Asks the kernel to resolve (or confirm) `next_hop` on `ifindex` and waits for its MAC.
async fn resolve_one(handle: &Handle, ifindex: u32, next_hop: IpAddr) -> Option<MacAddr> {
    // NTF_USE: the kernel treats this like a packet sent to the neighbour, resolving it if needed (neigh_event_send).
    let nudge = handle
        .neighbours()
        .add(ifindex, next_hop)
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await;
    if let Err(e) = nudge {
        debug!(%next_hop, error = %e, "neighbour resolution request refused");
    }
    let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
    loop {
        if let Some(mac) = lookup(handle, ifindex, next_hop).await {
            return Some(mac);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(RESOLVE_POLL).await;
    }
}

/// The MAC of a usable kernel neighbour entry for `addr` on `ifindex`.
async fn lookup(handle: &Handle, ifindex: u32, addr: IpAddr) -> Option<MacAddr> {
    let mut entries = handle.neighbours().get().execute();
    while let Ok(Some(msg)) = entries.try_next().await {
        if msg.header.ifindex != ifindex {
            continue;
        }
        let usable = matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        let mut destination = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => destination = Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => destination = Some(IpAddr::V6(*a)),
                NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => {}
            }
        }
        if usable && destination == Some(addr) {
            if let Some(mac) = mac {
                return Some(MacAddr(mac));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtep(i: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, i])
    }

    /// VTEPs 1 to 3 never resolve (their resolution hangs, as a dead host's does for RESOLVE_TIMEOUT); VTEP 9 does
    /// at once. Queued behind the three, 9 must still be answered without waiting for them: before, the resolver
    /// took one VTEP at a time and 9 waited 3 × 3 s.
    #[tokio::test]
    async fn a_live_vtep_is_resolved_while_dead_ones_hang() {
        let (requests, rx) = tokio::sync::mpsc::channel(QUEUE);
        let (tx, answers) = crossbeam_channel::bounded(QUEUE);
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let server = tokio::spawn(serve(rx, tx, move |v| {
            seen.lock().unwrap().push(v);
            async move {
                if v == vtep(9) {
                    Some(MacAddr([2, 0, 0, 0, 0, 9]))
                } else {
                    std::future::pending().await
                }
            }
        }));
        for i in [1, 2, 3, 1, 9] {
            requests.send(vtep(i)).await.unwrap();
        }
        let answer = tokio::task::spawn_blocking(move || answers.recv_timeout(Duration::from_secs(5)));
        let answer = answer.await.unwrap().expect("VTEP 9 was not answered while 1 to 3 hang");
        assert_eq!(answer, (vtep(9), Some(MacAddr([2, 0, 0, 0, 0, 9]))));
        assert_eq!(*calls.lock().unwrap(), [1, 2, 3, 9].map(vtep), "a VTEP being resolved is not asked again");
        drop(requests);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn no_more_than_concurrent_resolutions_run_at_once() {
        let (requests, rx) = tokio::sync::mpsc::channel(QUEUE);
        let (tx, _answers) = crossbeam_channel::bounded(QUEUE);
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = started.clone();
        tokio::spawn(serve(rx, tx, move |_| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<Option<MacAddr>>()
        }));
        for i in 0..CONCURRENT as u8 + 5 {
            requests.send(vtep(i)).await.unwrap();
        }
        // Let the server take what it will; it must stop at the bound with requests still queued.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), CONCURRENT);
        assert_eq!(requests.capacity(), QUEUE - 5, "the rest wait in the queue");
    }
}
