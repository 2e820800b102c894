//! Per-pair key agreement and rekeying for encrypted networks, sans-IO.
//!
//! For every pair of hosts the one with the lower node id is the *initiator*. An epoch is agreed in three messages
//! over the pair's authenticated QUIC connection, each side sending a fresh X25519 share:
//!
//! ```text
//!  initiator                                                  responder
//!   Offer { session, epoch, share_i, spi_i } ───────────────►  derive keys; install inbound spi_r (i→r)
//!                  ◄─────────────── Accept { session, epoch, share_r, spi_r }
//!   derive keys; install inbound spi_i (r→i);
//!   switch outbound to spi_r (i→r)
//!   Confirm { session, epoch } ─────────────────────────────►  switch outbound to spi_i (r→i)
//! ```
//!
//! Make-before-break: each side installs its new inbound SA before the other side can send on it, and keeps the old
//! inbound SA for a grace period, so packets in flight across a rekey still open. The initiator rekeys on time, and
//! on packet or byte counts that the data path reports; the responder asks for a rekey with `Request`, which it also
//! sends when it has no keys for a live peer (after its own restart, say). `session` is the initiator's start time,
//! so a restarted initiator's offers supersede its previous life's.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use weft_crypto::keys::{derive, Cipher, KeyShare, SaKeys, SecretRng};
use weft_crypto::Spi;

use crate::codec::{Codec, DecodeError, Reader};
use crate::rng::Rng;
use crate::NodeId;

/// First byte of every keying message; gossip messages use tags below it, so one connection carries both.
pub const TAG_BASE: u8 = 0x40;

/// Timing and limits of key agreement.
#[derive(Debug, Clone)]
pub struct KeyingConfig {
    /// Rekey after this long.
    pub rekey_after: Duration,
    /// Rekey after this many packets on one outbound SA.
    pub rekey_packets: u64,
    /// Rekey after this many bytes on one outbound SA.
    pub rekey_bytes: u64,
    /// How long an old inbound SA keeps working after a rekey.
    pub grace: Duration,
    /// How long to wait for an answer before trying again.
    pub retry: Duration,
    /// The AEAD.
    pub cipher: Cipher,
}

impl Default for KeyingConfig {
    fn default() -> Self {
        Self {
            rekey_after: Duration::from_secs(3600),
            rekey_packets: 1 << 31,
            rekey_bytes: 1 << 42,
            grace: Duration::from_secs(30),
            retry: Duration::from_secs(2),
            cipher: Cipher::Aes128Gcm,
        }
    }
}

/// A keying message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMessage {
    /// Initiator → responder: start an epoch.
    Offer {
        /// The initiator's start time; a restarted initiator's is larger.
        session: u64,
        /// The epoch within the session.
        epoch: u64,
        /// The initiator's X25519 public share.
        share: [u8; 32],
        /// The SPI the initiator will receive on.
        spi: u32,
    },
    /// Responder → initiator: the responder's half.
    Accept {
        /// Echoed.
        session: u64,
        /// Echoed.
        epoch: u64,
        /// The responder's X25519 public share.
        share: [u8; 32],
        /// The SPI the responder will receive on (already installed).
        spi: u32,
    },
    /// Initiator → responder: the initiator has switched; the responder may switch too.
    Confirm {
        /// Echoed.
        session: u64,
        /// Echoed.
        epoch: u64,
    },
    /// Responder → initiator: please start a new epoch. Carries the (session, epoch) the responder holds keys
    /// for: the initiator's current one when it asks because of usage, anything else when it lacks keys.
    Request {
        /// The initiator session the responder's keys belong to (0 if none).
        session: u64,
        /// Their epoch (0 if none).
        epoch: u64,
    },
}

impl Codec for KeyMessage {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KeyMessage::Offer { session, epoch, share, spi } | KeyMessage::Accept { session, epoch, share, spi } => {
                out.push(if matches!(self, KeyMessage::Offer { .. }) { TAG_BASE } else { TAG_BASE + 1 });
                session.encode(out);
                epoch.encode(out);
                out.extend_from_slice(share);
                spi.encode(out);
            }
            KeyMessage::Confirm { session, epoch } => {
                out.push(TAG_BASE + 2);
                session.encode(out);
                epoch.encode(out);
            }
            KeyMessage::Request { session, epoch } => {
                out.push(TAG_BASE + 3);
                session.encode(out);
                epoch.encode(out);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = u8::decode(r)?;
        Ok(match tag.checked_sub(TAG_BASE) {
            Some(t @ (0 | 1)) => {
                let (session, epoch, share, spi) = (u64::decode(r)?, u64::decode(r)?, r.array()?, u32::decode(r)?);
                if Spi::new(spi).is_none() {
                    return Err(DecodeError::Invalid("spi"));
                }
                if t == 0 {
                    KeyMessage::Offer { session, epoch, share, spi }
                } else {
                    KeyMessage::Accept { session, epoch, share, spi }
                }
            }
            Some(2) => KeyMessage::Confirm { session: u64::decode(r)?, epoch: u64::decode(r)? },
            Some(3) => KeyMessage::Request { session: u64::decode(r)?, epoch: u64::decode(r)? },
            _ => return Err(DecodeError::Invalid("keying tag")),
        })
    }
}

/// What the data path must change.
#[derive(Debug, Clone)]
pub enum KeyEvent {
    /// Accept packets on `spi` from `vtep` with `keys`.
    InstallInbound {
        /// The peer's VTEP: packets on this SPI must come from it.
        vtep: IpAddr,
        /// The SPI.
        spi: Spi,
        /// Keys of the peer → us direction.
        keys: SaKeys,
        /// The epoch, for logs.
        epoch: u64,
    },
    /// Send to `vtep` on `spi` with `keys` from now on.
    SetOutbound {
        /// The peer's VTEP.
        vtep: IpAddr,
        /// The peer's SPI.
        spi: Spi,
        /// Keys of the us → peer direction.
        keys: SaKeys,
        /// The epoch.
        epoch: u64,
    },
    /// Stop accepting `spi`.
    RemoveInbound {
        /// The SPI.
        spi: Spi,
    },
    /// Forget the outbound SA to `vtep` (the peer left).
    RemoveOutbound {
        /// The peer's VTEP.
        vtep: IpAddr,
    },
}

/// Why a keying message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyingError {
    /// Not a valid message.
    #[error("undecodable keying message: {0}")]
    Decode(#[from] DecodeError),
    /// From a node that is not a peer.
    #[error("keying message from a node that is not a peer")]
    UnknownPeer,
    /// A message the sender's role may not send (an offer from the responder, say).
    #[error("keying message out of role")]
    WrongRole,
    /// The peer's share is unusable.
    #[error("bad key share")]
    BadShare,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyingStats {
    /// Epochs established (counted on both sides).
    pub rekeys: u64,
    /// Messages refused.
    pub refused: u64,
    /// Handshake attempts that timed out and were retried.
    pub retries: u64,
}

#[derive(Debug)]
struct Pending {
    epoch: u64,
    share: KeyShare,
    spi: Spi,
    sent_at: Instant,
}

#[derive(Debug)]
struct AwaitingConfirm {
    session: u64,
    epoch: u64,
    spi: Spi,
    keys: SaKeys,
}

#[derive(Debug)]
struct Pair {
    addr: SocketAddr,
    vtep: IpAddr,
    initiator: bool,
    /// The newest (session, epoch) agreed.
    current: (u64, u64),
    /// Initiator: the epoch of the newest offer. Every attempt gets a new number, so a late answer to an
    /// abandoned attempt can never be combined with the share of a newer one.
    attempt: u64,
    established_at: Option<Instant>,
    /// Initiator: the offer in flight.
    pending: Option<Pending>,
    /// Responder: keys waiting for the confirm.
    awaiting: Option<AwaitingConfirm>,
    /// Inbound SPIs, with when to retire the old ones.
    inbound: Vec<(Spi, Option<Instant>)>,
    /// Responder: when the last request was sent.
    requested_at: Option<Instant>,
    /// A new connection from the peer came up since the last agreement: a request from it is a new life asking,
    /// not one crossing our last offer (see [`Keyring::peer_reconnected`]).
    reconnected: bool,
    /// Usage of the current outbound SA, as reported.
    used_packets: u64,
    used_bytes: u64,
}

/// Key agreement with every peer.
#[derive(Debug)]
pub struct Keyring {
    config: KeyingConfig,
    local: NodeId,
    session: u64,
    rng: Rng,
    peers: BTreeMap<NodeId, Pair>,
    spis: HashSet<u32>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<KeyEvent>,
    stats: KeyingStats,
    /// The last message of each node that was not a peer when it arrived, and when: a node that just (re)started
    /// can send its offer before the membership event that makes it our peer. Handled by [`Keyring::add_peer`],
    /// so the exchange need not wait for a retry. At most [`EARLY_MAX`] entries, each kept [`EARLY_TTL`].
    early: BTreeMap<NodeId, (Instant, Vec<u8>)>,
}

/// How many messages from nodes that are not (yet) peers are held, one per node.
const EARLY_MAX: usize = 64;
/// How long such a message is held.
const EARLY_TTL: Duration = Duration::from_secs(5);

impl Keyring {
    /// A keyring for node `local`, whose start time is `session`; `seed` drives SPI choice (not secret).
    pub fn new(config: KeyingConfig, local: NodeId, session: u64, seed: u64) -> Self {
        Self {
            config,
            local,
            session,
            rng: Rng::new(seed),
            peers: BTreeMap::new(),
            spis: HashSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: KeyingStats::default(),
            early: BTreeMap::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &KeyingStats {
        &self.stats
    }

    /// The current epoch with `peer`, if keys are established.
    pub fn epoch(&self, peer: &NodeId) -> Option<(u64, Instant)> {
        let pair = self.peers.get(peer)?;
        pair.established_at.map(|at| (pair.current.1, at))
    }

    /// Starts keying with a new peer (or one whose address changed).
    pub fn add_peer(&mut self, now: Instant, rng: &mut dyn SecretRng, id: NodeId, addr: SocketAddr, vtep: IpAddr) {
        if id == self.local {
            return;
        }
        if let Some(pair) = self.peers.get_mut(&id) {
            if pair.addr == addr && pair.vtep == vtep {
                return;
            }
            self.remove_peer(&id);
        }
        let initiator = self.local < id;
        self.peers.insert(
            id,
            Pair {
                addr,
                vtep,
                initiator,
                current: (0, 0),
                attempt: 0,
                established_at: None,
                pending: None,
                awaiting: None,
                inbound: Vec::new(),
                requested_at: None,
                reconnected: false,
                used_packets: 0,
                used_bytes: 0,
            },
        );
        if initiator {
            self.offer(now, rng, id);
        } else {
            self.request(now, id);
        }
        if let Some((at, bytes)) = self.early.remove(&id) {
            if now.saturating_duration_since(at) < EARLY_TTL {
                // Counted as refused when it arrived; whatever it is now is counted by handle_message.
                let _ = self.handle_message(now, rng, id, &bytes);
            }
        }
    }

    /// Forgets a peer and all its SAs.
    pub fn remove_peer(&mut self, id: &NodeId) {
        let Some(pair) = self.peers.remove(id) else { return };
        for (spi, _) in pair.inbound {
            self.spis.remove(&spi.get());
            self.events.push_back(KeyEvent::RemoveInbound { spi });
        }
        if let Some(p) = pair.pending {
            self.spis.remove(&p.spi.get());
        }
        self.events.push_back(KeyEvent::RemoveOutbound { vtep: pair.vtep });
    }

    /// Tells the keyring that a new authenticated connection from `id` came up while it was a peer. A node that
    /// restarts dials afresh, so a request that follows comes from a new life of the peer with no keys, even
    /// within a retry period of our last agreement (when a request is otherwise taken to have crossed our offer
    /// and is ignored): the initiator then offers at once instead of waiting for the peer's retry.
    pub fn peer_reconnected(&mut self, id: &NodeId) {
        if let Some(pair) = self.peers.get_mut(id) {
            pair.reconnected = pair.established_at.is_some();
        }
    }

    /// Usage of the outbound SA to `peer`'s VTEP since it was installed, as counted by the data path.
    pub fn report_usage(&mut self, now: Instant, rng: &mut dyn SecretRng, vtep: IpAddr, packets: u64, bytes: u64) {
        let Some((&id, pair)) = self.peers.iter_mut().find(|(_, p)| p.vtep == vtep) else { return };
        pair.used_packets = packets;
        pair.used_bytes = bytes;
        if packets >= self.config.rekey_packets || bytes >= self.config.rekey_bytes {
            self.rekey(now, rng, id);
        }
    }

    fn rekey(&mut self, now: Instant, rng: &mut dyn SecretRng, id: NodeId) {
        let Some(pair) = self.peers.get(&id) else { return };
        if pair.initiator {
            if pair.pending.is_none() {
                self.offer(now, rng, id);
            }
        } else {
            self.request(now, id);
        }
    }

    fn offer(&mut self, now: Instant, rng: &mut dyn SecretRng, id: NodeId) {
        let spi = self.allocate_spi();
        let share = KeyShare::generate(rng);
        let Some(pair) = self.peers.get_mut(&id) else { return };
        pair.reconnected = false;
        if let Some(old) = pair.pending.take() {
            self.spis.remove(&old.spi.get());
        }
        let epoch = pair.current.1.max(pair.attempt) + 1;
        pair.attempt = epoch;
        let message = KeyMessage::Offer { session: self.session, epoch, share: share.public(), spi: spi.get() };
        pair.pending = Some(Pending { epoch, share, spi, sent_at: now });
        self.transmits.push_back((pair.addr, message.to_bytes()));
    }

    fn request(&mut self, now: Instant, id: NodeId) {
        let retry = self.config.retry;
        let Some(pair) = self.peers.get_mut(&id) else { return };
        if pair.requested_at.is_some_and(|at| now.saturating_duration_since(at) < retry) {
            return;
        }
        pair.requested_at = Some(now);
        let (session, epoch) = pair.current;
        self.transmits.push_back((pair.addr, KeyMessage::Request { session, epoch }.to_bytes()));
    }

    fn allocate_spi(&mut self) -> Spi {
        loop {
            // SPIs 1..=255 are reserved by IANA (RFC 4303 §2.1).
            let value = (self.rng.next_u64() as u32).max(256);
            if self.spis.insert(value) {
                return Spi::new(value).expect("non-zero");
            }
        }
    }

    /// Handles a keying message from the authenticated node `from`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        rng: &mut dyn SecretRng,
        from: NodeId,
        bytes: &[u8],
    ) -> Result<(), KeyingError> {
        let message = KeyMessage::from_bytes(bytes).inspect_err(|_| self.stats.refused += 1)?;
        let Some(pair) = self.peers.get(&from) else {
            self.stats.refused += 1;
            if self.early.len() >= EARLY_MAX {
                self.early.retain(|_, (at, _)| now.saturating_duration_since(*at) < EARLY_TTL);
            }
            if self.early.len() < EARLY_MAX || self.early.contains_key(&from) {
                self.early.insert(from, (now, bytes.to_vec()));
            }
            return Err(KeyingError::UnknownPeer);
        };
        let initiator = pair.initiator;
        let result = match (message, initiator) {
            (KeyMessage::Offer { session, epoch, share, spi }, false) => {
                self.on_offer(rng, from, session, epoch, share, spi)
            }
            (KeyMessage::Accept { session, epoch, share, spi }, true) => {
                self.on_accept(now, from, session, epoch, share, spi)
            }
            (KeyMessage::Confirm { session, epoch }, false) => {
                self.on_confirm(now, from, session, epoch);
                Ok(())
            }
            (KeyMessage::Request { session, epoch }, true) => {
                // A responder with our current keys asks because of usage. One without them either restarted or
                // sent its request before our offer reached it; the latter crosses a just-finished handshake, so a
                // request within a retry period of an agreement is ignored (a restarted responder asks again).
                let session_now = self.session;
                let retry = self.config.retry;
                let wanted = self.peers.get(&from).is_some_and(|p| {
                    let current = (session, epoch) == (session_now, p.current.1) && p.established_at.is_some();
                    let fresh = p.established_at.is_some_and(|at| now.saturating_duration_since(at) < retry);
                    p.pending.is_none() && (current || !fresh || p.reconnected)
                });
                if wanted {
                    self.offer(now, rng, from);
                }
                Ok(())
            }
            _ => Err(KeyingError::WrongRole),
        };
        if result.is_err() {
            self.stats.refused += 1;
        }
        result
    }

    fn on_offer(
        &mut self,
        rng: &mut dyn SecretRng,
        from: NodeId,
        session: u64,
        epoch: u64,
        share: [u8; 32],
        peer_spi: u32,
    ) -> Result<(), KeyingError> {
        let pair = self.peers.get(&from).expect("checked by caller");
        // Older than what is agreed: a stale retransmission. Equal to a pending accept: a retry, answered afresh.
        if (session, epoch) <= pair.current {
            return Ok(());
        }
        let ours = KeyShare::generate(rng);
        let public = ours.public();
        let shared = ours.agree(&share).map_err(|_| KeyingError::BadShare)?;
        let keys = derive(&shared, &from.0, &self.local.0, epoch, self.config.cipher);
        // The initiator has the lower id, so low_to_high is initiator → responder: our inbound.
        let spi = self.allocate_spi();
        let pair = self.peers.get_mut(&from).expect("checked by caller");
        if let Some(old) = pair.awaiting.take() {
            // A retried offer replaces an unconfirmed attempt and its inbound SA.
            pair.inbound.retain(|(s, _)| *s != old.spi);
            self.spis.remove(&old.spi.get());
            self.events.push_back(KeyEvent::RemoveInbound { spi: old.spi });
        }
        pair.inbound.push((spi, None));
        self.events.push_back(KeyEvent::InstallInbound { vtep: pair.vtep, spi, keys: keys.low_to_high.clone(), epoch });
        let peer_spi = Spi::new(peer_spi).expect("decoder refuses 0");
        pair.awaiting = Some(AwaitingConfirm { session, epoch, spi: peer_spi, keys: keys.high_to_low.clone() });
        let accept = KeyMessage::Accept { session, epoch, share: public, spi: spi.get() };
        self.transmits.push_back((pair.addr, accept.to_bytes()));
        Ok(())
    }

    fn on_accept(
        &mut self,
        now: Instant,
        from: NodeId,
        session: u64,
        epoch: u64,
        share: [u8; 32],
        peer_spi: u32,
    ) -> Result<(), KeyingError> {
        let pair = self.peers.get_mut(&from).expect("checked by caller");
        if session != self.session || pair.pending.as_ref().is_none_or(|p| p.epoch != epoch) {
            return Ok(());
        }
        let pending = pair.pending.take().expect("checked");
        let shared = pending.share.agree(&share).map_err(|_| KeyingError::BadShare)?;
        let keys = derive(&shared, &self.local.0, &from.0, epoch, self.config.cipher);
        let peer_spi = Spi::new(peer_spi).expect("decoder refuses 0");
        // Retire the previous epoch's inbound SAs after the grace period; install the new one first.
        let retire = now + self.config.grace;
        for (_, at) in &mut pair.inbound {
            at.get_or_insert(retire);
        }
        pair.inbound.push((pending.spi, None));
        self.events.push_back(KeyEvent::InstallInbound {
            vtep: pair.vtep,
            spi: pending.spi,
            keys: keys.high_to_low.clone(),
            epoch,
        });
        self.events.push_back(KeyEvent::SetOutbound {
            vtep: pair.vtep,
            spi: peer_spi,
            keys: keys.low_to_high.clone(),
            epoch,
        });
        pair.current = (session, epoch);
        pair.established_at = Some(now);
        pair.used_packets = 0;
        pair.used_bytes = 0;
        self.stats.rekeys += 1;
        self.transmits.push_back((pair.addr, KeyMessage::Confirm { session, epoch }.to_bytes()));
        Ok(())
    }

    fn on_confirm(&mut self, now: Instant, from: NodeId, session: u64, epoch: u64) {
        let grace = self.config.grace;
        let pair = self.peers.get_mut(&from).expect("checked by caller");
        let Some(awaiting) = pair.awaiting.take_if(|a| a.session == session && a.epoch == epoch) else { return };
        let newest = pair.inbound.last().map(|(spi, _)| *spi);
        for (spi, at) in &mut pair.inbound {
            if Some(*spi) != newest {
                at.get_or_insert(now + grace);
            }
        }
        self.events.push_back(KeyEvent::SetOutbound { vtep: pair.vtep, spi: awaiting.spi, keys: awaiting.keys, epoch });
        pair.current = (session, epoch);
        pair.established_at = Some(now);
        pair.requested_at = None;
        pair.used_packets = 0;
        pair.used_bytes = 0;
        self.stats.rekeys += 1;
    }

    /// Drives retries, time-based rekeys and the retirement of old inbound SAs.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn SecretRng) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(pair) = self.peers.get_mut(&id) else { continue };
            let mut retired = Vec::new();
            pair.inbound.retain(|(spi, at)| {
                let keep = at.is_none_or(|at| at > now);
                if !keep {
                    retired.push(*spi);
                }
                keep
            });
            for spi in retired {
                self.spis.remove(&spi.get());
                self.events.push_back(KeyEvent::RemoveInbound { spi });
            }
            let retry = self.config.retry;
            let pair = &self.peers[&id];
            let timed_out = pair.pending.as_ref().is_some_and(|p| now.saturating_duration_since(p.sent_at) >= retry);
            let due =
                pair.established_at.is_some_and(|at| now.saturating_duration_since(at) >= self.config.rekey_after);
            let unkeyed_responder = !pair.initiator && pair.established_at.is_none() && pair.awaiting.is_none();
            if pair.initiator && (timed_out || (due && pair.pending.is_none())) {
                if timed_out {
                    self.stats.retries += 1;
                }
                self.offer(now, rng, id);
            } else if unkeyed_responder {
                self.request(now, id);
            }
        }
    }

    /// When [`Keyring::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let retire = p.inbound.iter().filter_map(|(_, at)| *at);
                let retry = p.pending.as_ref().map(|x| x.sent_at + self.config.retry);
                let rekey = p.established_at.map(|at| at + self.config.rekey_after);
                // A responder without keys keeps asking; `add_peer` sent the first request, so `requested_at` is set.
                let request = (!p.initiator && p.established_at.is_none())
                    .then_some(p.requested_at)
                    .flatten()
                    .map(|at| at + self.config.retry);
                retire.chain(retry).chain(rekey).chain(request)
            })
            .min()
    }

    /// The next message to send: (peer's control address, bytes), reliable.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next change for the data path.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<KeyEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct TestRng(u64);

    impl SecretRng for TestRng {
        fn fill(&mut self, dest: &mut [u8]) {
            let mut r = crate::rng::Rng::new(self.0);
            self.0 += 1;
            for b in dest {
                *b = r.next_u64() as u8;
            }
        }
    }

    const LOW: NodeId = NodeId([1; 16]);
    const HIGH: NodeId = NodeId([2; 16]);

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 7946))
    }

    fn vtep(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    /// One side's view of its SAs, built from its events, as the data path would.
    #[derive(Default)]
    struct Sas {
        inbound: BTreeMap<u32, Vec<u8>>,
        outbound: Option<(u32, Vec<u8>)>,
        log: Vec<String>,
    }

    impl Sas {
        fn apply(&mut self, k: &mut Keyring) {
            while let Some(e) = k.poll_event() {
                match e {
                    KeyEvent::InstallInbound { spi, keys, .. } => {
                        self.log.push(format!("in+{}", spi.get()));
                        self.inbound.insert(spi.get(), keys.key().to_vec());
                    }
                    KeyEvent::SetOutbound { spi, keys, .. } => {
                        self.log.push(format!("out={}", spi.get()));
                        self.outbound = Some((spi.get(), keys.key().to_vec()));
                    }
                    KeyEvent::RemoveInbound { spi } => {
                        self.log.push(format!("in-{}", spi.get()));
                        self.inbound.remove(&spi.get());
                    }
                    KeyEvent::RemoveOutbound { .. } => self.outbound = None,
                }
            }
        }

        /// Whatever this side sends, the other can open.
        fn can_reach(&self, other: &Sas) -> bool {
            self.outbound.as_ref().is_some_and(|(spi, key)| other.inbound.get(spi) == Some(key))
        }
    }

    struct Pairing {
        a: Keyring,
        b: Keyring,
        sa: Sas,
        sb: Sas,
        rng: TestRng,
        now: Instant,
    }

    impl Pairing {
        fn new(config: KeyingConfig) -> Self {
            let now = Instant::now();
            let mut rng = TestRng(1);
            let mut a = Keyring::new(config.clone(), LOW, 100, 1);
            let mut b = Keyring::new(config, HIGH, 200, 2);
            a.add_peer(now, &mut rng, HIGH, addr(2), vtep(2));
            b.add_peer(now, &mut rng, LOW, addr(1), vtep(1));
            Self { a, b, sa: Sas::default(), sb: Sas::default(), rng, now }
        }

        /// Delivers messages both ways until quiet, applying events after every step (as the agent does).
        fn pump(&mut self, mut drop_first: usize) {
            loop {
                self.sa.apply(&mut self.a);
                self.sb.apply(&mut self.b);
                let mut moved = false;
                while let Some((to, bytes)) = self.a.poll_transmit() {
                    assert_eq!(to, addr(2));
                    moved = true;
                    if drop_first > 0 {
                        drop_first -= 1;
                        continue;
                    }
                    self.b.handle_message(self.now, &mut self.rng, LOW, &bytes).unwrap();
                    self.sb.apply(&mut self.b);
                }
                while let Some((to, bytes)) = self.b.poll_transmit() {
                    assert_eq!(to, addr(1));
                    moved = true;
                    self.a.handle_message(self.now, &mut self.rng, HIGH, &bytes).unwrap();
                    self.sa.apply(&mut self.a);
                }
                if !moved {
                    return;
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.a.handle_timeout(self.now, &mut self.rng);
            self.b.handle_timeout(self.now, &mut self.rng);
        }
    }

    #[test]
    fn both_directions_get_matching_keys_and_make_before_break_holds() {
        let mut p = Pairing::new(KeyingConfig::default());
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
        assert_ne!(p.sa.outbound.as_ref().unwrap().1, p.sb.outbound.as_ref().unwrap().1, "one key per direction");
        // The responder installed its inbound before the initiator switched to it.
        let b_in = p.sb.log.iter().position(|l| l.starts_with("in+")).unwrap();
        assert!(p.sb.log[b_in..].iter().any(|l| l.starts_with("out=")));
        assert_eq!(p.a.epoch(&HIGH).map(|e| e.0), Some(1));

        // A time-based rekey: new SAs; the old inbound ones keep working for the grace period, then go.
        let old_b_out = p.sb.outbound.clone().unwrap();
        p.advance(Duration::from_secs(3600));
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
        assert_ne!(p.sb.outbound.clone().unwrap(), old_b_out);
        assert_eq!(p.sa.inbound.get(&old_b_out.0), Some(&old_b_out.1), "old inbound kept during the grace period");
        p.advance(Duration::from_secs(31));
        p.sa.apply(&mut p.a);
        assert!(!p.sa.inbound.contains_key(&old_b_out.0), "old inbound retired after the grace period");
        assert_eq!(p.sa.inbound.len(), 1);
        assert_eq!(p.a.stats().rekeys, 2);
        assert_eq!(p.b.stats().rekeys, 2);
    }

    #[test]
    fn a_request_crossing_the_first_handshake_does_not_start_another() {
        let mut p = Pairing::new(KeyingConfig::default());
        p.pump(0);
        assert_eq!((p.a.stats().rekeys, p.b.stats().rekeys), (1, 1));
    }

    #[test]
    fn a_lost_offer_is_retried_and_late_answers_are_ignored() {
        let mut p = Pairing::new(KeyingConfig::default());
        p.pump(1); // the first offer is lost
        assert!(p.sa.outbound.is_none());
        p.advance(Duration::from_secs(2));
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
        assert_eq!(p.a.stats().retries, 1);
    }

    #[test]
    fn packet_count_triggers_a_rekey_from_either_side() {
        let config = KeyingConfig { rekey_packets: 1000, ..KeyingConfig::default() };
        let mut p = Pairing::new(config);
        p.pump(0);
        let before = p.sa.outbound.clone();
        let (now, rng) = (p.now, &mut p.rng);
        p.b.report_usage(now, rng, vtep(1), 1000, 1_500_000); // the responder asks
        p.pump(0);
        assert_ne!(p.sa.outbound, before);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
    }

    #[test]
    fn a_restarted_peer_is_keyed_again() {
        let mut p = Pairing::new(KeyingConfig::default());
        p.pump(0);
        // The responder restarts: it has no SAs; its request makes the initiator start a new epoch.
        p.b = Keyring::new(KeyingConfig::default(), HIGH, 300, 3);
        p.sb = Sas::default();
        p.advance(Duration::from_secs(2));
        let now = p.now;
        p.b.add_peer(now, &mut p.rng, LOW, addr(1), vtep(1));
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
        // The initiator restarts: its new session supersedes the old epochs at the responder.
        p.a = Keyring::new(KeyingConfig::default(), LOW, 400, 4);
        p.sa = Sas::default();
        let now = p.now;
        p.a.add_peer(now, &mut p.rng, HIGH, addr(2), vtep(2));
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
    }

    #[test]
    fn a_responder_restarted_right_after_an_agreement_is_keyed_again_at_once() {
        // Regression (reliability suite, kill -9 test): a responder killed and restarted within the retry period
        // of its last agreement had its request taken for one crossing that agreement, and ignored; traffic
        // waited for its retry, 2 s later.
        let mut p = Pairing::new(KeyingConfig::default());
        p.pump(0);
        p.advance(Duration::from_millis(500));
        p.b = Keyring::new(KeyingConfig::default(), HIGH, 300, 3);
        p.sb = Sas::default();
        // Its new life dials in before it asks for keys.
        p.a.peer_reconnected(&HIGH);
        let now = p.now;
        p.b.add_peer(now, &mut p.rng, LOW, addr(1), vtep(1));
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa), "keyed again without waiting for a retry");
        assert_eq!(p.a.epoch(&HIGH).map(|e| e.0), Some(2));
        // Once agreed, a crossing request is ignored again: no third epoch.
        p.advance(Duration::from_millis(100));
        let request = KeyMessage::Request { session: 0, epoch: 0 }.to_bytes();
        let (now, rng) = (p.now, &mut p.rng);
        p.a.handle_message(now, rng, HIGH, &request).unwrap();
        assert!(p.a.poll_transmit().is_none(), "a crossing request after the new agreement starts nothing");
    }

    #[test]
    fn an_offer_that_arrives_before_the_peer_is_known_is_answered_once_it_is() {
        // Regression (reliability suite, rolling restart): the initiator saw the restarted responder join and
        // offered at once; the offer reached the responder before the initiator was a member there, was refused
        // as from an unknown peer, and the keys waited 2 s for the initiator's retry.
        let config = KeyingConfig::default();
        let now = Instant::now();
        let mut rng = TestRng(1);
        let mut a = Keyring::new(config.clone(), LOW, 100, 1);
        let mut b = Keyring::new(config, HIGH, 200, 2);
        a.add_peer(now, &mut rng, HIGH, addr(2), vtep(2));
        let (_, offer) = a.poll_transmit().expect("the initiator offers at once");
        assert_eq!(b.handle_message(now, &mut rng, LOW, &offer), Err(KeyingError::UnknownPeer));
        // A moment later the membership event arrives: the held offer is answered, no retry needed.
        let later = now + Duration::from_millis(50);
        b.add_peer(later, &mut rng, LOW, addr(1), vtep(1));
        let answers: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_transmit().map(|(_, m)| m)).collect();
        for m in &answers {
            a.handle_message(later, &mut rng, HIGH, m).unwrap();
        }
        while let Some((_, m)) = a.poll_transmit() {
            b.handle_message(later, &mut rng, LOW, &m).unwrap();
        }
        assert_eq!(a.epoch(&HIGH).map(|e| e.0), Some(1), "agreed on the first offer");
        assert_eq!(b.epoch(&LOW).map(|e| e.0), Some(1));
        assert_eq!(a.stats().retries, 0);

        // Held messages expire, and a stranger cannot make the keyring hold more than EARLY_MAX.
        let mut c = Keyring::new(KeyingConfig::default(), HIGH, 300, 3);
        for n in 0..200u8 {
            let _ = c.handle_message(now, &mut rng, NodeId([n; 16]), &offer);
        }
        assert!(c.early.len() <= EARLY_MAX);
        let stale = now + EARLY_TTL + Duration::from_secs(1);
        c.add_peer(stale, &mut rng, NodeId([0; 16]), addr(1), vtep(1));
        assert!(c.epoch(&NodeId([0; 16])).is_none());
    }

    #[test]
    fn a_responder_restarted_right_after_an_agreement_waits_for_its_retry_without_the_hint() {
        // Without the reconnection hint the initiator cannot tell the new life's request from a crossing one.
        let mut p = Pairing::new(KeyingConfig::default());
        p.pump(0);
        p.advance(Duration::from_millis(500));
        p.b = Keyring::new(KeyingConfig::default(), HIGH, 300, 3);
        p.sb = Sas::default();
        let now = p.now;
        p.b.add_peer(now, &mut p.rng, LOW, addr(1), vtep(1));
        p.pump(0);
        assert!(!p.sb.can_reach(&p.sa), "no keys until the responder's retry");
        p.advance(Duration::from_secs(2));
        p.pump(0);
        assert!(p.sa.can_reach(&p.sb) && p.sb.can_reach(&p.sa));
    }

    #[test]
    fn messages_out_of_role_or_from_strangers_are_refused() {
        let mut p = Pairing::new(KeyingConfig::default());
        let offer = KeyMessage::Offer { session: 1, epoch: 9, share: [9; 32], spi: 777 }.to_bytes();
        let now = p.now;
        // Only the initiator (lower id) may offer.
        assert_eq!(p.a.handle_message(now, &mut p.rng, HIGH, &offer), Err(KeyingError::WrongRole));
        assert_eq!(p.a.handle_message(now, &mut p.rng, NodeId([7; 16]), &offer), Err(KeyingError::UnknownPeer));
        assert!(p.a.handle_message(now, &mut p.rng, HIGH, &[TAG_BASE + 9]).is_err());
        // A low-order share is refused and installs nothing.
        let bad = KeyMessage::Offer { session: 1, epoch: 9, share: [0; 32], spi: 777 }.to_bytes();
        assert_eq!(p.b.handle_message(now, &mut p.rng, LOW, &bad), Err(KeyingError::BadShare));
        assert_eq!(p.a.stats().refused + p.b.stats().refused, 4);
    }

    proptest! {
        #[test]
        fn key_messages_round_trip(session in any::<u64>(), epoch in any::<u64>(), share in any::<[u8; 32]>(), spi in 1u32.., kind in 0u8..4) {
            let m = match kind {
                0 => KeyMessage::Offer { session, epoch, share, spi },
                1 => KeyMessage::Accept { session, epoch, share, spi },
                2 => KeyMessage::Confirm { session, epoch },
                _ => KeyMessage::Request { session, epoch },
            };
            prop_assert_eq!(KeyMessage::from_bytes(&m.to_bytes()), Ok(m));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = KeyMessage::from_bytes(&bytes);
        }
    }
}
