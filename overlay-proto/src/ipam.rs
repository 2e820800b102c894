//! Address management for overlay endpoints through gossiped block claims, sans-IO.
//!
//! A network's IPv4 subnet is cut into blocks (a /26 by default). A host that needs addresses claims a free block
//! by publishing a `blk/<vni><index>` record ([`BlockClaim`]) and hands out addresses only from blocks it holds.
//!
//! ```text
//!  gossip::Event (blk/ and ep/ records) ─► Ipam::handle_event ─┐
//!  allocate / release (attach, detach) ───────────────────────┼─► Ipam ─► poll_action → set/remove a blk/ record
//!  handle_timeout(now) ───────────────────────────────────────┘            poll_timeout → next deadline
//! ```
//!
//! The rules every host applies the same way, so they agree without coordination:
//! - **Winner.** When several live hosts claim one block, the claim with the earliest `claimed_at` (wall-clock
//!   milliseconds of the claimant) wins, ties going to the lower node id. A host that sees it lost withdraws its
//!   claim and claims another block (the loser re-claims).
//! - **Settling.** A new claim is used only after `settle` without a winning rival, long enough for gossip's push
//!   rumours to reach every live member, so two hosts racing for a block find out before either hands out an
//!   address from it.
//! - **Release after death.** When a claim disappears (its host died, left or withdrew it), the block stays
//!   unclaimable for `release_after`, so a host that was only briefly unreachable gets it back before anyone else
//!   can take it.
//! - **Second fence.** An address that any endpoint record in the cluster carries is never handed out, whatever
//!   the claims say, so even blocks that changed hands after a partition do not produce duplicates.
//!
//! The gateway, the subnet's network address and its broadcast address are never handed out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::codec::{Codec, DecodeError, Reader};
use crate::endpoint::{EndpointRecord, RecordKey};
use crate::gossip::Event;
use crate::{MacAddr, NodeId, Vni};

/// Timing and geometry of address management.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// Prefix length of one block (26: 64 addresses).
    pub block_prefix: u8,
    /// How long a new claim waits for a rival before its addresses are handed out.
    pub settle: Duration,
    /// How long a block whose claim vanished stays unclaimable.
    pub release_after: Duration,
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self { block_prefix: 26, settle: Duration::from_millis(1500), release_after: Duration::from_secs(60) }
    }
}

/// The value of a `blk/` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockClaim {
    /// The network.
    pub vni: Vni,
    /// The block's index in the subnet.
    pub index: u32,
    /// The block's prefix length, so hosts with different block sizes notice.
    pub prefix: u8,
    /// When the claim was made, in the claimant's wall-clock milliseconds; the earliest claim wins.
    pub claimed_at: u64,
}

impl Codec for BlockClaim {
    fn encode(&self, out: &mut Vec<u8>) {
        self.vni.encode(out);
        self.index.encode(out);
        out.push(self.prefix);
        self.claimed_at.encode(out);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let vni = Vni::decode(r)?;
        let index = u32::decode(r)?;
        let [prefix] = r.array()?;
        if prefix > 32 {
            return Err(DecodeError::Invalid("block prefix"));
        }
        Ok(Self { vni, index, prefix, claimed_at: u64::decode(r)? })
    }
}

/// Why an address could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The network is not managed here.
    #[error("network {0} has no address pool")]
    UnknownNetwork(Vni),
    /// The subnet is not an IPv4 subnet with room for hosts, or the block size does not fit it.
    #[error("subnet {0}/{1} cannot be cut into /{2} blocks")]
    BadGeometry(Ipv4Addr, u8, u8),
    /// Every block is claimed (or held after a host's death) and this host's blocks are full.
    #[error("no free address left in the network's subnet")]
    Exhausted,
    /// The requested address is outside the subnet, or is its network, broadcast or gateway address.
    #[error("{0} is not an assignable address of the network's subnet")]
    NotAssignable(Ipv4Addr),
    /// The requested address is in use by an endpoint, here or on another host.
    #[error("{0} is already in use")]
    InUse(Ipv4Addr),
    /// The requested address lies in a block another host holds.
    #[error("{0} lies in a block held by another host")]
    HeldElsewhere(Ipv4Addr),
}

/// What the caller must publish through gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamAction {
    /// Set this node's record `key` to `value`.
    SetRecord {
        /// The key: `blk/` for a block claim ([`crate::ingress_address`] uses `ep/`).
        key: Vec<u8>,
        /// The encoded record: a [`BlockClaim`] for a `blk/` key.
        value: Vec<u8>,
    },
    /// Delete this node's record `key`.
    RemoveRecord {
        /// The key.
        key: Vec<u8>,
    },
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamStats {
    /// Blocks this node claimed.
    pub claims: u64,
    /// Claims this node withdrew because a rival won.
    pub lost: u64,
    /// Claim records that did not decode, did not match their key, or named a block outside the subnet.
    pub undecodable: u64,
}

/// A block this node claims.
#[derive(Debug, Clone, Copy)]
struct MyBlock {
    usable_at: Instant,
}

#[derive(Debug)]
struct Pool {
    network: u32,
    prefix: u8,
    gateway: Ipv4Addr,
    block_prefix: u8,
    /// Every live claim, this node's included: block → claimant → claimed_at.
    claims: BTreeMap<u32, BTreeMap<NodeId, u64>>,
    /// Blocks whose last claim vanished, unclaimable until then.
    held: BTreeMap<u32, Instant>,
    mine: BTreeMap<u32, MyBlock>,
    /// Addresses this node handed out.
    allocated: BTreeSet<Ipv4Addr>,
    /// Addresses other hosts' endpoint records carry.
    remote: HashMap<(NodeId, MacAddr), Vec<Ipv4Addr>>,
    remote_count: HashMap<Ipv4Addr, u32>,
}

impl Pool {
    fn blocks(&self) -> u32 {
        1 << (self.block_prefix - self.prefix.min(self.block_prefix))
    }

    fn block_size(&self) -> u32 {
        1 << (32 - self.block_prefix)
    }

    fn block_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(addr).wrapping_sub(self.network);
        let size = 1u64 << (32 - self.prefix);
        (u64::from(offset) < size && u32::from(addr) >= self.network).then(|| offset / self.block_size())
    }

    fn assignable(&self, addr: Ipv4Addr) -> bool {
        let last = self.network + ((1u64 << (32 - self.prefix)) - 1) as u32;
        self.block_of(addr).is_some()
            && addr != self.gateway
            && u32::from(addr) != self.network
            && u32::from(addr) != last
    }

    fn free(&self, addr: Ipv4Addr) -> bool {
        self.assignable(addr) && !self.allocated.contains(&addr) && !self.remote_count.contains_key(&addr)
    }

    fn winner(&self, block: u32) -> Option<NodeId> {
        self.claims.get(&block)?.iter().min_by_key(|(id, at)| (**at, **id)).map(|(id, _)| *id)
    }

    fn usable(&self, me: NodeId, block: u32, now: Instant) -> bool {
        self.mine.get(&block).is_some_and(|b| b.usable_at <= now) && self.winner(block) == Some(me)
    }
}

/// One host's address manager for all its networks.
#[derive(Debug)]
pub struct Ipam {
    me: NodeId,
    config: IpamConfig,
    pools: BTreeMap<Vni, Pool>,
    actions: VecDeque<IpamAction>,
    stats: IpamStats,
}

impl Ipam {
    /// A manager for node `me`.
    pub fn new(me: NodeId, config: IpamConfig) -> Self {
        Self { me, config, pools: BTreeMap::new(), actions: VecDeque::new(), stats: IpamStats::default() }
    }

    /// Manages subnet `network/prefix` of network `vni` in blocks of `/block_prefix` (the configured default when
    /// `None`); `gateway` is never handed out.
    pub fn add_network(
        &mut self,
        vni: Vni,
        network: Ipv4Addr,
        prefix: u8,
        block_prefix: Option<u8>,
        gateway: Ipv4Addr,
    ) -> Result<(), IpamError> {
        let block_prefix = block_prefix.unwrap_or(self.config.block_prefix);
        // A subnet smaller than a block is one block; a /31 or /32 has no host addresses.
        if prefix > 30 || !(1..=30).contains(&block_prefix) || u32::from(network) & !mask(prefix) != 0 {
            return Err(IpamError::BadGeometry(network, prefix, block_prefix));
        }
        let block_prefix = block_prefix.max(prefix);
        let pool = Pool {
            network: u32::from(network),
            prefix,
            gateway,
            block_prefix,
            claims: BTreeMap::new(),
            held: BTreeMap::new(),
            mine: BTreeMap::new(),
            allocated: BTreeSet::new(),
            remote: HashMap::new(),
            remote_count: HashMap::new(),
        };
        self.pools.insert(vni, pool);
        Ok(())
    }

    /// Applies a gossip event: block claims and the addresses of endpoint records.
    pub fn handle_event(&mut self, now: Instant, event: &Event) {
        match event {
            Event::RecordSet { origin, key, value } if *origin != self.me => match RecordKey::parse(key) {
                Some(RecordKey::Block(vni, index)) => {
                    let Some(pool) = self.pools.get_mut(&vni) else { return };
                    match BlockClaim::from_bytes(value) {
                        Ok(c)
                            if c.vni == vni
                                && c.index == index
                                && c.prefix == pool.block_prefix
                                && index < pool.blocks() =>
                        {
                            pool.claims.entry(index).or_default().insert(*origin, c.claimed_at);
                            pool.held.remove(&index);
                            self.resolve(now, vni, index);
                        }
                        _ => self.stats.undecodable += 1,
                    }
                }
                Some(RecordKey::Endpoint(vni, mac)) => {
                    let Some(pool) = self.pools.get_mut(&vni) else { return };
                    let Ok(record) = EndpointRecord::from_bytes(value) else { return };
                    let ips = record.ips.iter().filter_map(|ip| match ip {
                        IpAddr::V4(v4) if pool.block_of(*v4).is_some() => Some(*v4),
                        _ => None,
                    });
                    let ips: Vec<Ipv4Addr> = ips.collect();
                    forget_remote(pool, *origin, mac);
                    for ip in &ips {
                        *pool.remote_count.entry(*ip).or_default() += 1;
                    }
                    pool.remote.insert((*origin, mac), ips);
                }
                _ => {}
            },
            Event::RecordRemoved { origin, key } if *origin != self.me => match RecordKey::parse(key) {
                Some(RecordKey::Block(vni, index)) => {
                    let release_at = now + self.config.release_after;
                    let Some(pool) = self.pools.get_mut(&vni) else { return };
                    let Some(claimants) = pool.claims.get_mut(&index) else { return };
                    if claimants.remove(origin).is_some() && claimants.is_empty() {
                        pool.claims.remove(&index);
                        pool.held.insert(index, release_at);
                    }
                }
                Some(RecordKey::Endpoint(vni, mac)) => {
                    if let Some(pool) = self.pools.get_mut(&vni) {
                        forget_remote(pool, *origin, mac);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// A rival's claim on `index` arrived: if it beats ours, withdraw ours.
    fn resolve(&mut self, _now: Instant, vni: Vni, index: u32) {
        let Some(pool) = self.pools.get_mut(&vni) else { return };
        if pool.mine.contains_key(&index) && pool.winner(index) != Some(self.me) {
            pool.mine.remove(&index);
            if let Some(claimants) = pool.claims.get_mut(&index) {
                claimants.remove(&self.me);
            }
            self.stats.lost += 1;
            self.actions.push_back(IpamAction::RemoveRecord { key: RecordKey::Block(vni, index).to_bytes() });
        }
    }

    /// Hands out an address of network `vni`: `requested`, or any free one. `Ok(None)` means a block is being
    /// claimed: ask again after [`Ipam::poll_timeout`]. `wall_millis` stamps a new claim.
    pub fn allocate(
        &mut self,
        now: Instant,
        wall_millis: u64,
        vni: Vni,
        requested: Option<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>, IpamError> {
        let me = self.me;
        let pool = self.pools.get_mut(&vni).ok_or(IpamError::UnknownNetwork(vni))?;
        if let Some(addr) = requested {
            if !pool.assignable(addr) {
                return Err(IpamError::NotAssignable(addr));
            }
            if !pool.free(addr) {
                return Err(IpamError::InUse(addr));
            }
            let block = pool.block_of(addr).expect("assignable addresses lie in a block");
            if pool.usable(me, block, now) {
                pool.allocated.insert(addr);
                return Ok(Some(addr));
            }
            if pool.mine.contains_key(&block) {
                return Ok(None);
            }
            if pool.claims.contains_key(&block) || pool.held.get(&block).is_some_and(|t| *t > now) {
                return Err(IpamError::HeldElsewhere(addr));
            }
            self.claim(now, wall_millis, vni, block);
            return Ok(None);
        }
        let usable: Vec<u32> = pool.mine.keys().copied().filter(|b| pool.usable(me, *b, now)).collect();
        for block in usable {
            let start = pool.network + block * pool.block_size();
            if let Some(addr) = (start..start + pool.block_size()).map(Ipv4Addr::from).find(|a| pool.free(*a)) {
                pool.allocated.insert(addr);
                return Ok(Some(addr));
            }
        }
        if pool.mine.values().any(|b| b.usable_at > now) {
            return Ok(None);
        }
        // Each node walks the blocks in its own order, so nodes claiming at once rarely pick the same one.
        let mut free: Vec<u32> = (0..pool.blocks())
            .filter(|b| !pool.claims.contains_key(b) && pool.held.get(b).is_none_or(|t| *t <= now))
            .filter(|b| {
                let start = pool.network + b * pool.block_size();
                (start..start + pool.block_size()).map(Ipv4Addr::from).any(|a| pool.free(a))
            })
            .collect();
        free.sort_by_key(|b| preference(me, vni, *b));
        let Some(&block) = free.first() else { return Err(IpamError::Exhausted) };
        self.claim(now, wall_millis, vni, block);
        Ok(None)
    }

    fn claim(&mut self, now: Instant, wall_millis: u64, vni: Vni, index: u32) {
        let pool = self.pools.get_mut(&vni).expect("caller checked the network");
        pool.mine.insert(index, MyBlock { usable_at: now + self.config.settle });
        pool.claims.entry(index).or_default().insert(self.me, wall_millis);
        pool.held.remove(&index);
        self.stats.claims += 1;
        let claim = BlockClaim { vni, index, prefix: pool.block_prefix, claimed_at: wall_millis };
        self.actions
            .push_back(IpamAction::SetRecord { key: RecordKey::Block(vni, index).to_bytes(), value: claim.to_bytes() });
    }

    /// Keeps `addr` from ever being handed out by this node: an address configured for something else (a host's
    /// fixed ingress address). Unlike an allocation it needs no block; addresses outside the subnet are ignored.
    pub fn reserve(&mut self, vni: Vni, addr: Ipv4Addr) {
        if let Some(pool) = self.pools.get_mut(&vni).filter(|p| p.block_of(addr).is_some()) {
            pool.allocated.insert(addr);
        }
    }

    /// Whether `addr` lies in a block this node holds now (settled and unrivalled). An address handed out earlier
    /// stops being held when an earlier rival claim for its block turns up (after a partition, say).
    pub fn holds(&self, now: Instant, vni: Vni, addr: Ipv4Addr) -> bool {
        let Some(pool) = self.pools.get(&vni) else { return false };
        pool.block_of(addr).is_some_and(|block| pool.usable(self.me, block, now))
    }

    /// Gives an address back. Blocks stay claimed while this node runs.
    pub fn release(&mut self, vni: Vni, addr: Ipv4Addr) {
        if let Some(pool) = self.pools.get_mut(&vni) {
            pool.allocated.remove(&addr);
        }
    }

    /// Lifts holds that have run out.
    pub fn handle_timeout(&mut self, now: Instant) {
        for pool in self.pools.values_mut() {
            pool.held.retain(|_, until| *until > now);
        }
    }

    /// When [`Ipam::handle_timeout`] or a pending [`Ipam::allocate`] has work next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pools = self.pools.values();
        let settles = pools.clone().flat_map(|p| p.mine.values().map(|b| b.usable_at));
        settles.chain(pools.flat_map(|p| p.held.values().copied())).min()
    }

    /// The next record change to publish.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<IpamAction> {
        self.actions.pop_front()
    }

    /// Blocks this node holds and may hand out from (settled and unrivalled), per network: (VNI, first address,
    /// prefix length).
    pub fn my_blocks(&self, now: Instant) -> Vec<(Vni, Ipv4Addr, u8)> {
        let mut out = Vec::new();
        for (vni, pool) in &self.pools {
            for block in pool.mine.keys().filter(|b| pool.usable(self.me, **b, now)) {
                out.push((*vni, Ipv4Addr::from(pool.network + block * pool.block_size()), pool.block_prefix));
            }
        }
        out
    }

    /// Who holds each claimed block of `vni` (the winning claim), for the API.
    pub fn owners(&self, vni: Vni) -> Vec<(u32, NodeId)> {
        let Some(pool) = self.pools.get(&vni) else { return Vec::new() };
        pool.claims.keys().filter_map(|b| pool.winner(*b).map(|w| (*b, w))).collect()
    }

    /// Counters.
    pub fn stats(&self) -> &IpamStats {
        &self.stats
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn forget_remote(pool: &mut Pool, origin: NodeId, mac: MacAddr) {
    for ip in pool.remote.remove(&(origin, mac)).unwrap_or_default() {
        if let Some(count) = pool.remote_count.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                pool.remote_count.remove(&ip);
            }
        }
    }
}

/// A node's order of preference among blocks: a hash of (node, VNI, block), FNV-1a.
fn preference(me: NodeId, vni: Vni, block: u32) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in me.0.iter().chain(&vni.get().to_be_bytes()).chain(&block.to_be_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vni() -> Vni {
        Vni::new(100).unwrap()
    }

    fn node(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    fn ipam(i: u8) -> Ipam {
        let mut ipam = Ipam::new(node(i), IpamConfig::default());
        ipam.add_network(vni(), Ipv4Addr::new(198, 19, 0, 0), 24, None, Ipv4Addr::new(198, 19, 0, 1)).unwrap();
        ipam
    }

    /// Delivers every pending action of `from` to `to` as the gossip event it becomes.
    fn deliver(now: Instant, from: &mut Ipam, others: &mut [&mut Ipam]) {
        while let Some(action) = from.poll_action() {
            let event = match action {
                IpamAction::SetRecord { key, value } => Event::RecordSet { origin: from.me, key, value },
                IpamAction::RemoveRecord { key } => Event::RecordRemoved { origin: from.me, key },
            };
            for to in others.iter_mut() {
                to.handle_event(now, &event);
            }
        }
    }

    /// Asks until an address comes, stepping virtual time by 100 ms.
    fn allocate_settled(now: &mut Instant, ipam: &mut Ipam) -> Ipv4Addr {
        loop {
            if let Some(a) = ipam.allocate(*now, 1_000, vni(), None).unwrap() {
                return a;
            }
            *now += Duration::from_millis(100);
        }
    }

    #[test]
    fn claim_round_trips_and_is_checked() {
        let claim = BlockClaim { vni: vni(), index: 2, prefix: 26, claimed_at: 1_700_000_000_000 };
        assert_eq!(BlockClaim::from_bytes(&claim.to_bytes()), Ok(claim));
        let mut bytes = claim.to_bytes();
        bytes[8] = 33;
        assert_eq!(BlockClaim::from_bytes(&bytes), Err(DecodeError::Invalid("block prefix")));
    }

    #[test]
    fn a_claim_on_a_block_outside_the_subnet_is_refused() {
        // Review finding: a remote claim's index was not checked against the pool, so claims past the subnet were
        // stored (and counted as held blocks).
        let mut a = ipam(1);
        let now = Instant::now();
        let outside = BlockClaim { vni: vni(), index: 4, prefix: 26, claimed_at: 1 }; // a /24 has blocks 0..4
        let event =
            Event::RecordSet { origin: node(2), key: RecordKey::Block(vni(), 4).to_bytes(), value: outside.to_bytes() };
        a.handle_event(now, &event);
        assert_eq!(a.stats().undecodable, 1);
        let inside = BlockClaim { index: 3, ..outside };
        let event =
            Event::RecordSet { origin: node(2), key: RecordKey::Block(vni(), 3).to_bytes(), value: inside.to_bytes() };
        a.handle_event(now, &event);
        assert_eq!(a.stats().undecodable, 1);
    }

    #[test]
    fn addresses_come_after_the_claim_settles_and_skip_network_and_gateway() {
        let mut a = ipam(1);
        let mut now = Instant::now();
        assert_eq!(a.allocate(now, 1, vni(), None), Ok(None));
        assert!(matches!(a.poll_action(), Some(IpamAction::SetRecord { .. })));
        assert_eq!(a.poll_timeout(), Some(now + IpamConfig::default().settle));
        let first = allocate_settled(&mut now, &mut a);
        let (_, start, prefix) = a.my_blocks(now)[0];
        assert_eq!(prefix, 26);
        assert_eq!(start.octets()[3] % 64, 0);
        // Block 0 starts with the network and gateway addresses; other blocks use their first address.
        let expect = if start.octets()[3] == 0 { Ipv4Addr::new(198, 19, 0, 2) } else { start };
        assert_eq!(first, expect);
        let mut seen = BTreeSet::from([first]);
        for _ in 0..1_000 {
            match a.allocate(now, 1, vni(), None) {
                Ok(Some(addr)) => assert!(seen.insert(addr), "{addr} handed out twice"),
                Ok(None) => now += Duration::from_millis(100),
                Err(IpamError::Exhausted) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // The whole /24 less network, gateway and broadcast.
        assert_eq!(seen.len(), 253);
        assert!(!seen.contains(&Ipv4Addr::new(198, 19, 0, 255)));
        assert_eq!(a.allocate(now, 1, vni(), None), Err(IpamError::Exhausted));
        a.release(vni(), first);
        assert_eq!(a.allocate(now, 1, vni(), None), Ok(Some(first)));
    }

    #[test]
    fn concurrent_claims_resolve_to_the_earliest_and_the_loser_reclaims() {
        let (mut a, mut b) = (ipam(1), ipam(2));
        let mut now = Instant::now();
        // Both claim the same block before hearing of each other: force it with a requested address.
        let addr = Ipv4Addr::new(198, 19, 0, 70);
        assert_eq!(a.allocate(now, 500, vni(), Some(addr)), Ok(None));
        assert_eq!(b.allocate(now, 400, vni(), Some(addr)), Ok(None));
        deliver(now, &mut a, &mut [&mut b]);
        deliver(now, &mut b, &mut [&mut a]);
        // b claimed earlier: a withdrew its claim, and says so.
        assert_eq!(a.stats().lost, 1);
        assert_eq!(b.stats().lost, 0);
        assert!(matches!(a.poll_action(), Some(IpamAction::RemoveRecord { .. })));
        assert_eq!(a.allocate(now, 600, vni(), Some(addr)), Err(IpamError::HeldElsewhere(addr)));
        now += Duration::from_secs(2);
        assert_eq!(b.allocate(now, 1, vni(), Some(addr)), Ok(Some(addr)));
        // a's next allocation claims another block.
        let other = allocate_settled(&mut now, &mut a);
        assert_ne!(other.octets()[3] / 64, 1);
        assert_eq!(a.owners(vni()).len(), 2, "b's block and a's new one");
    }

    #[test]
    fn a_vanished_claim_is_held_then_released() {
        let (mut a, mut b) = (ipam(1), ipam(2));
        let mut now = Instant::now();
        let addr = Ipv4Addr::new(198, 19, 0, 130);
        assert_eq!(b.allocate(now, 1, vni(), Some(addr)), Ok(None));
        deliver(now, &mut b, &mut [&mut a]);
        assert_eq!(a.allocate(now, 2, vni(), Some(addr)), Err(IpamError::HeldElsewhere(addr)));
        // b dies: gossip withdraws its records.
        let key = RecordKey::Block(vni(), 2).to_bytes();
        a.handle_event(now, &Event::RecordRemoved { origin: node(2), key });
        assert_eq!(a.allocate(now, 2, vni(), Some(addr)), Err(IpamError::HeldElsewhere(addr)));
        let release = a.poll_timeout().unwrap();
        assert_eq!(release, now + IpamConfig::default().release_after);
        now = release;
        a.handle_timeout(now);
        assert_eq!(a.allocate(now, 3, vni(), Some(addr)), Ok(None));
        now += Duration::from_secs(2);
        assert_eq!(a.allocate(now, 3, vni(), Some(addr)), Ok(Some(addr)));
    }

    #[test]
    fn addresses_in_remote_endpoint_records_are_never_handed_out() {
        let mut a = ipam(1);
        let mut now = Instant::now();
        let taken = Ipv4Addr::new(198, 19, 0, 70);
        let record = EndpointRecord {
            vni: vni(),
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            ips: vec![IpAddr::V4(taken)],
            vtep: IpAddr::from([198, 18, 0, 2]),
            name: String::new(),
            labels: vec![],
        };
        let key = RecordKey::Endpoint(vni(), record.mac).to_bytes();
        a.handle_event(now, &Event::RecordSet { origin: node(2), key: key.clone(), value: record.to_bytes() });
        assert_eq!(a.allocate(now, 1, vni(), Some(taken)), Err(IpamError::InUse(taken)));
        let mut seen = BTreeSet::new();
        while let Ok(found) = a.allocate(now, 1, vni(), None) {
            match found {
                Some(addr) => assert!(seen.insert(addr)),
                None => now += Duration::from_millis(100),
            }
        }
        assert!(!seen.contains(&taken) && seen.len() == 252);
        a.handle_event(now, &Event::RecordRemoved { origin: node(2), key });
        assert_eq!(a.allocate(now, 1, vni(), Some(taken)), Ok(Some(taken)));
    }

    #[test]
    fn bad_requests_and_geometry_are_refused() {
        let mut a = ipam(1);
        let now = Instant::now();
        for bad in [[198, 19, 0, 0], [198, 19, 0, 1], [198, 19, 0, 255], [198, 19, 1, 5]] {
            let bad = Ipv4Addr::from(bad);
            assert_eq!(a.allocate(now, 1, vni(), Some(bad)), Err(IpamError::NotAssignable(bad)));
        }
        let other = Vni::new(7).unwrap();
        assert_eq!(a.allocate(now, 1, other, None), Err(IpamError::UnknownNetwork(other)));
        let net = Ipv4Addr::new(198, 19, 0, 0);
        assert!(a.add_network(other, net, 31, None, net).is_err());
        assert!(a.add_network(other, Ipv4Addr::new(198, 19, 0, 1), 24, None, net).is_err());
        // A subnet smaller than a block is one block.
        assert!(a.add_network(other, net, 28, None, Ipv4Addr::new(198, 19, 0, 1)).is_ok());
    }

    /// Real gossip (the simulator, with jitter and 1% loss): ten hosts each ask for 30 addresses of a /22 at the
    /// same instant, so their first claims collide. They end with unique addresses and one owner per block, on
    /// every host's view; when a host crashes, its blocks are claimable again only after `release_after`.
    #[test]
    fn simulated_cluster_claims_blocks_without_duplicates_and_frees_a_dead_hosts_blocks() {
        use crate::sim::{Sim, SimConfig};
        const N: usize = 10;
        let config = SimConfig { seed: 7, loss: 0.01, ..SimConfig::default() };
        let mut sim = Sim::new(N, config);
        sim.capture = true;
        for i in 0..N {
            sim.join(i, &[0]);
        }
        sim.run_for(Duration::from_secs(3));
        let net = Ipv4Addr::new(198, 19, 0, 0);
        let mut ipams: Vec<Ipam> = (0..N)
            .map(|i| {
                let mut ipam = Ipam::new(sim.nodes[i].gossip.id(), IpamConfig::default());
                ipam.add_network(vni(), net, 22, None, Ipv4Addr::new(198, 19, 0, 1)).unwrap();
                ipam
            })
            .collect();
        let mut handed: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        let mut wanted = [30usize; N];
        let start = sim.now;
        let step =
            |sim: &mut Sim, ipams: &mut Vec<Ipam>, wanted: &mut [usize], handed: &mut BTreeMap<Ipv4Addr, usize>| {
                for (i, e) in std::mem::take(&mut sim.events).into_iter().map(|(i, _, e)| (i, e)) {
                    ipams[i].handle_event(sim.now, &e);
                }
                let wall = 1_000 + sim.now.duration_since(start).as_millis() as u64;
                let up: Vec<usize> = (0..N).filter(|i| sim.nodes[*i].up).collect();
                for i in up {
                    ipams[i].handle_timeout(sim.now);
                    while wanted[i] > 0 {
                        match ipams[i].allocate(sim.now, wall, vni(), None) {
                            Ok(Some(addr)) => {
                                assert!(handed.insert(addr, i).is_none(), "{addr} handed out twice");
                                wanted[i] -= 1;
                            }
                            Ok(None) => break,
                            Err(e) => panic!("node {i}: {e}"),
                        }
                    }
                    while let Some(action) = ipams[i].poll_action() {
                        let now = sim.now;
                        match action {
                            IpamAction::SetRecord { key, value } => sim.nodes[i].gossip.set_record(now, key, value),
                            IpamAction::RemoveRecord { key } => sim.nodes[i].gossip.remove_record(now, key),
                        }
                    }
                }
                sim.run_for(Duration::from_millis(20));
            };
        while sim.now.duration_since(start) < Duration::from_secs(15) {
            step(&mut sim, &mut ipams, &mut wanted, &mut handed);
        }
        assert_eq!(wanted, [0; N], "every host got its addresses");
        assert_eq!(handed.len(), N * 30);
        let lost: u64 = ipams.iter().map(|i| i.stats().lost).sum();
        assert!(lost > 0, "the simultaneous first claims were meant to collide");
        // Every host sees the same single owner for each block, and each host's addresses lie in its blocks.
        let owners = ipams[0].owners(vni());
        for ipam in &ipams {
            assert_eq!(ipam.owners(vni()), owners);
        }
        for (addr, i) in &handed {
            let block = (u32::from(*addr) - u32::from(net)) / 64;
            let owner = owners.iter().find(|(b, _)| *b == block).map(|(_, o)| *o);
            assert_eq!(owner, Some(sim.nodes[*i].gossip.id()), "{addr} of node {i}");
        }

        // Node 9 crashes: its blocks are withdrawn when it is declared dead, then held for release_after.
        let dead = sim.nodes[9].gossip.id();
        let its_blocks: Vec<u32> = owners.iter().filter(|(_, o)| *o == dead).map(|(b, _)| *b).collect();
        assert!(!its_blocks.is_empty());
        sim.crash(9);
        let crashed = sim.now;
        while sim.now.duration_since(crashed) < Duration::from_secs(10) {
            step(&mut sim, &mut ipams, &mut wanted, &mut handed);
        }
        let first = its_blocks[0] * 64;
        let inside = Ipv4Addr::from(u32::from(net) + first + 5);
        assert_eq!(ipams[0].allocate(sim.now, 1, vni(), Some(inside)), Err(IpamError::HeldElsewhere(inside)));
        while sim.now.duration_since(crashed) < Duration::from_secs(75) {
            step(&mut sim, &mut ipams, &mut wanted, &mut handed);
        }
        assert_eq!(ipams[0].allocate(sim.now, 1, vni(), Some(inside)), Ok(None), "claimable after release_after");
    }

    proptest! {
        /// Nodes allocating at random moments, with gossip delivering every claim within the settle time (in a
        /// random order), never hand out one address twice, and every block ends with at most one claimant.
        #[test]
        fn no_address_is_handed_out_twice(
            steps in proptest::collection::vec((0usize..4, 0u64..400, any::<bool>()), 1..120),
            seed in any::<u64>(),
        ) {
            let mut nodes: Vec<Ipam> = (1..=4).map(ipam).collect();
            let start = Instant::now();
            let mut now = start;
            let mut handed: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
            let mut in_flight: Vec<(Instant, usize, Event)> = Vec::new();
            let mut rng = seed;
            for (who, delay_ms, advance) in steps {
                if advance {
                    now += Duration::from_millis(delay_ms);
                }
                // Deliver what is due.
                in_flight.sort_by_key(|(at, _, _)| *at);
                let due: Vec<_> = in_flight.iter().filter(|(at, _, _)| *at <= now).cloned().collect();
                in_flight.retain(|(at, _, _)| *at > now);
                for (_, from, event) in due {
                    for (i, n) in nodes.iter_mut().enumerate() {
                        if i != from {
                            n.handle_event(now, &event);
                        }
                    }
                }
                let wall = now.duration_since(start).as_millis() as u64;
                if let Ok(Some(addr)) = nodes[who].allocate(now, wall, vni(), None) {
                    prop_assert!(handed.insert(addr, who).is_none(), "{} handed out twice", addr);
                }
                while let Some(action) = nodes[who].poll_action() {
                    let event = match action {
                        IpamAction::SetRecord { key, value } => Event::RecordSet { origin: node(who as u8 + 1), key, value },
                        IpamAction::RemoveRecord { key } => Event::RecordRemoved { origin: node(who as u8 + 1), key },
                    };
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    // Within the settle time (1.5 s).
                    let latency = Duration::from_millis((rng >> 33) % 1_000);
                    in_flight.push((now + latency, who, event));
                }
            }
        }
    }
}
