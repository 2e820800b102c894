//! Backend selection for one published service, sans-IO and deterministic: the ingress asks [`Balancer::pick`] for
//! every new TCP connection or UDP flow, and reports back what it saw (health-check results, failed connects,
//! closed connections).
//!
//! ```text
//!  Catalog::backends ──► set_backends ─┐
//!  health check (TCP connect) ─► handle_check ─┼─► Balancer ──► pick() ─► backend address
//!  connect failed ───────────► handle_check(false) ┘        ◄── release() when the connection or flow ends
//! ```
//!
//! A backend is taken out after [`BalancerConfig::failures`] checks in a row fail (a failed connect counts as a
//! check) and put back at the first success. New backends start healthy: they come from a record their host just
//! published, and a failed first connect takes them out at once while the connection is retried on another one.
//!
//! A backend that leaves the set while connections to it are open (its endpoint record flapped, or was withdrawn
//! and re-published) is kept aside until they close: a `release` still finds it, and if it comes back before then
//! it comes back with its open connections counted, so least-connections does not take it for idle.

use std::net::SocketAddr;

use crate::service::Policy;

/// Settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancerConfig {
    /// How backends are picked.
    pub policy: Policy,
    /// Consecutive failed checks that take a backend out.
    pub failures: u32,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self { policy: Policy::RoundRobin, failures: 2 }
    }
}

/// What the balancer knows of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendState {
    /// Where connections go.
    pub addr: SocketAddr,
    /// Gets new connections.
    pub healthy: bool,
    /// Failed checks in a row.
    pub failures: u32,
    /// Connections (flows) open through this host.
    pub active: u32,
    /// Connections (flows) given to it so far.
    pub picked: u64,
}

/// The backends of one service and the state to pick among them.
#[derive(Debug, Clone)]
pub struct Balancer {
    config: BalancerConfig,
    backends: Vec<BackendState>,
    /// Backends that left the set with connections still open, never picked; each is forgotten when its last
    /// connection is released, so there are never more of them than open connections.
    departed: Vec<BackendState>,
    /// Round-robin position: the next pick starts looking at this index.
    next: usize,
}

impl Balancer {
    /// A balancer without backends.
    pub fn new(config: BalancerConfig) -> Self {
        Self { config, backends: Vec::new(), departed: Vec::new(), next: 0 }
    }

    /// Changes the policy (a re-published service); backends keep their state.
    pub fn set_config(&mut self, config: BalancerConfig) {
        self.config = config;
    }

    /// Replaces the backend set. Backends that stay keep their health and counts; those that left get no new
    /// connection, and are kept aside only while connections to them are open; new ones start healthy. A backend
    /// that comes back while its old connections are open starts healthy too (its host just published it again)
    /// with those connections still counted. The order is the caller's (sorted by the catalog), so every host walks
    /// the backends in the same order.
    pub fn set_backends(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut old = std::mem::take(&mut self.backends);
        for addr in addrs {
            if self.backends.iter().any(|b| b.addr == addr) {
                continue;
            }
            let state = if let Some(i) = old.iter().position(|b| b.addr == addr) {
                old.swap_remove(i)
            } else if let Some(i) = self.departed.iter().position(|b| b.addr == addr) {
                BackendState { healthy: true, failures: 0, ..self.departed.swap_remove(i) }
            } else {
                BackendState { addr, healthy: true, failures: 0, active: 0, picked: 0 }
            };
            self.backends.push(state);
        }
        self.departed.extend(old.into_iter().filter(|b| b.active > 0));
        if self.next >= self.backends.len() {
            self.next = 0;
        }
    }

    /// The backends and their state.
    pub fn backends(&self) -> &[BackendState] {
        &self.backends
    }

    /// Records a health check (or connect attempt) of `addr`. Returns whether its health changed.
    pub fn handle_check(&mut self, addr: SocketAddr, ok: bool) -> bool {
        let Some(b) = self.backends.iter_mut().find(|b| b.addr == addr) else { return false };
        let was = b.healthy;
        if ok {
            b.failures = 0;
            b.healthy = true;
        } else {
            b.failures = b.failures.saturating_add(1);
            if b.failures >= self.config.failures.max(1) {
                b.healthy = false;
            }
        }
        was != b.healthy
    }

    /// Picks a healthy backend for a new connection and counts it as open; `None` if no backend is healthy.
    /// `exclude` lists backends this connection already failed to reach.
    #[must_use]
    pub fn pick(&mut self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.backends.len();
        let usable = |b: &BackendState| b.healthy && !exclude.contains(&b.addr);
        // Walk from the round-robin position, so ties under least-connections also rotate.
        let order = (0..n).map(|k| (self.next + k) % n);
        let chosen = match self.config.policy {
            Policy::RoundRobin => order.clone().find(|&i| usable(&self.backends[i])),
            Policy::LeastConnections => {
                order.filter(|&i| usable(&self.backends[i])).min_by_key(|&i| self.backends[i].active)
            }
        }?;
        self.next = (chosen + 1) % n;
        let b = &mut self.backends[chosen];
        b.active += 1;
        b.picked += 1;
        Some(b.addr)
    }

    /// A connection (flow) to `addr` ended, or never got going.
    pub fn release(&mut self, addr: SocketAddr) {
        if let Some(b) = self.backends.iter_mut().find(|b| b.addr == addr) {
            b.active = b.active.saturating_sub(1);
        } else if let Some(i) = self.departed.iter().position(|b| b.addr == addr) {
            self.departed[i].active -= 1;
            if self.departed[i].active == 0 {
                self.departed.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 19, 0, i], 80))
    }

    fn balancer(policy: Policy, n: u8) -> Balancer {
        let mut b = Balancer::new(BalancerConfig { policy, failures: 2 });
        b.set_backends((1..=n).map(addr));
        b
    }

    #[test]
    fn round_robin_rotates_and_skips_the_unhealthy() {
        let mut b = balancer(Policy::RoundRobin, 3);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3].map(addr));
        assert!(!b.handle_check(addr(2), false), "one failure is not enough");
        assert!(b.handle_check(addr(2), false), "two in a row take it out");
        let picks: Vec<_> = (0..4).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [1, 3, 1, 3].map(addr));
        assert!(b.handle_check(addr(2), true), "one success puts it back");
        assert_eq!([b.pick(&[]), b.pick(&[])], [Some(addr(1)), Some(addr(2))]);
        assert_eq!(b.pick(&[addr(3)]), Some(addr(1)), "a backend this connection failed on is skipped");
        for i in 1..=3 {
            b.handle_check(addr(i), false);
            b.handle_check(addr(i), false);
        }
        assert_eq!(b.pick(&[]), None);
    }

    #[test]
    fn least_connections_prefers_the_idle_and_rotates_ties() {
        let mut b = balancer(Policy::LeastConnections, 3);
        assert_eq!([b.pick(&[]), b.pick(&[]), b.pick(&[])], [1, 2, 3].map(|i| Some(addr(i))));
        b.release(addr(2));
        assert_eq!(b.pick(&[]), Some(addr(2)), "the only one with a free slot");
        b.release(addr(3));
        b.release(addr(1));
        // 1 and 3 have 0 open, 2 has 1: the tie between 1 and 3 goes on from where the last pick left off (after 2).
        assert_eq!(b.pick(&[]), Some(addr(3)));
        assert_eq!(b.pick(&[]), Some(addr(1)));
        assert_eq!(b.backends().iter().map(|s| s.active).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(b.backends().iter().map(|s| s.picked).collect::<Vec<_>>(), [2, 2, 2]);
    }

    #[test]
    fn backend_changes_keep_state_and_drop_the_gone_at_once() {
        let mut b = balancer(Policy::RoundRobin, 3);
        b.handle_check(addr(1), false);
        b.handle_check(addr(1), false);
        let _ = b.pick(&[]);
        b.set_backends([addr(3), addr(1), addr(4), addr(4)]);
        let states: Vec<_> = b.backends().iter().map(|s| (s.addr, s.healthy, s.active)).collect();
        assert_eq!(states, vec![(addr(3), true, 0), (addr(1), false, 0), (addr(4), true, 0)]);
        let picks: Vec<_> = (0..4).map(|_| b.pick(&[]).unwrap()).collect();
        assert!(picks.iter().all(|p| *p == addr(3) || *p == addr(4)) && picks.contains(&addr(4)), "{picks:?}");
        b.set_backends([]);
        assert_eq!(b.pick(&[]), None);
        b.release(addr(3));
        assert!(!b.handle_check(addr(3), false), "reports about forgotten backends are ignored");
    }

    #[test]
    fn a_backend_that_flaps_keeps_its_open_connections_counted() {
        let mut b = balancer(Policy::LeastConnections, 2);
        // Three connections to 1, one to 2.
        for _ in 0..3 {
            assert_eq!(b.pick(&[addr(2)]), Some(addr(1)));
        }
        assert_eq!(b.pick(&[addr(1)]), Some(addr(2)));
        let active = |b: &Balancer| b.backends().iter().map(|s| (s.addr, s.active)).collect::<Vec<_>>();
        assert_eq!(active(&b), [(addr(1), 3), (addr(2), 1)]);
        // 1's record flaps: gone, then back, its three connections still open; one of them closes meanwhile.
        b.set_backends([addr(2)]);
        assert_eq!(b.pick(&[]), Some(addr(2)), "a departed backend gets nothing new");
        b.release(addr(2));
        b.release(addr(1));
        b.set_backends([addr(1), addr(2)]);
        assert_eq!(active(&b), [(addr(1), 2), (addr(2), 1)], "1 came back with its two open connections");
        assert_eq!(b.pick(&[]), Some(addr(2)), "least-connections does not take 1 for idle");
        assert!(b.backends()[0].healthy);
        // A backend that left with nothing open is forgotten: it comes back as new.
        b.release(addr(1));
        b.release(addr(1));
        b.set_backends([addr(2)]);
        b.set_backends([addr(1), addr(2)]);
        assert_eq!(active(&b), [(addr(1), 0), (addr(2), 2)]);
        assert_eq!(b.backends()[0].picked, 0);
    }

    #[test]
    fn departed_backends_are_forgotten_when_their_last_connection_closes() {
        let mut b = balancer(Policy::RoundRobin, 2);
        let _ = [b.pick(&[]), b.pick(&[])];
        b.set_backends([]);
        assert_eq!(b.departed.len(), 2);
        b.release(addr(1));
        b.release(addr(1));
        b.release(addr(2));
        assert!(b.departed.is_empty(), "kept only while connections are open");
        b.set_backends([addr(1)]);
        assert_eq!((b.backends()[0].active, b.backends()[0].picked), (0, 0));
    }

    #[test]
    fn a_spread_over_many_picks_is_even() {
        let mut b = balancer(Policy::RoundRobin, 3);
        for _ in 0..300 {
            let a = b.pick(&[]).unwrap();
            b.release(a);
        }
        assert!(b.backends().iter().all(|s| s.picked == 100 && s.active == 0));
    }
}
