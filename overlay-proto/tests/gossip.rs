//! Gossip behaviour on small simulated clusters: join, dissemination, crash, restart, leave, refusals.

use std::time::Duration;

use overlay_proto::codec::Codec;
use overlay_proto::gossip::auth::Authenticator;
use overlay_proto::gossip::message::{Message, SignedRecord, Update};
use overlay_proto::gossip::Event;
use overlay_proto::sim::{Sim, SimAuth, SimConfig};

fn cluster(n: usize, loss: f64) -> Sim {
    let mut sim = Sim::new(n, SimConfig { loss, seed: 7, ..SimConfig::default() });
    for i in 0..n {
        sim.join(i, &[0]);
    }
    sim.run_for(Duration::from_secs(3));
    sim
}

fn live_count(sim: &Sim, i: usize) -> usize {
    sim.nodes[i].gossip.live_members().count()
}

#[test]
fn nodes_join_through_a_seed_and_see_everyone() {
    let sim = cluster(8, 0.0);
    for i in 0..8 {
        assert_eq!(live_count(&sim, i), 7, "node {i}");
    }
}

#[test]
fn a_record_reaches_everyone_and_a_delete_removes_it() {
    let mut sim = cluster(8, 0.01);
    let now = sim.now;
    sim.nodes[3].gossip.set_record(now, b"ep/1".to_vec(), b"mac ip".to_vec());
    sim.run_for(Duration::from_millis(500));
    let origin = sim.nodes[3].gossip.id();
    for i in 0..8 {
        let found = sim.nodes[i].gossip.records().any(|(o, k, v)| o == origin && k == b"ep/1" && v == b"mac ip");
        assert!(found, "node {i} lacks the record");
    }
    let now = sim.now;
    sim.nodes[3].gossip.remove_record(now, b"ep/1".to_vec());
    sim.run_for(Duration::from_millis(500));
    for i in 0..8 {
        assert_eq!(sim.nodes[i].gossip.records().count(), 0, "node {i} kept a deleted record");
    }
    let digest = sim.nodes[0].gossip.table_digest();
    assert!((0..8).all(|i| sim.nodes[i].gossip.table_digest() == digest));
}

#[test]
fn a_crashed_node_is_declared_dead_and_its_records_withdrawn_then_a_restart_supersedes() {
    let mut sim = cluster(6, 0.0);
    let now = sim.now;
    sim.nodes[5].gossip.set_record(now, b"old".to_vec(), b"1".to_vec());
    sim.run_for(Duration::from_millis(500));
    sim.capture = true;
    let crashed_at = sim.now;
    let id5 = sim.nodes[5].gossip.id();
    sim.crash(5);
    sim.run_for(Duration::from_secs(4));
    for i in 0..5 {
        let down = sim.events.iter().find(|(n, _, e)| *n == i && *e == Event::MemberDown { id: id5 });
        let (_, at, _) = down.unwrap_or_else(|| panic!("node {i} never saw node 5 die"));
        assert!(*at - crashed_at <= Duration::from_secs(3), "node {i} took {:?}", *at - crashed_at);
        let withdrawn = sim.events.iter().any(|(n, _, e)| {
            *n == i && matches!(e, Event::RecordRemoved { origin, key } if *origin == id5 && key == b"old")
        });
        assert!(withdrawn, "node {i} did not withdraw node 5's record");
        assert!(!sim.nodes[i].gossip.records().any(|(o, _, _)| o == id5));
    }
    sim.restart(5, &[0]);
    let now = sim.now;
    sim.nodes[5].gossip.set_record(now, b"new".to_vec(), b"2".to_vec());
    sim.run_for(Duration::from_secs(2));
    for i in 0..5 {
        assert!(sim.nodes[i].gossip.is_live(&id5), "node {i} does not see node 5 back");
        let records: Vec<Vec<u8>> =
            sim.nodes[i].gossip.records().filter(|(o, _, _)| *o == id5).map(|(_, k, _)| k.to_vec()).collect();
        assert_eq!(records, vec![b"new".to_vec()], "node {i}: the restart's records supersede the old ones");
    }
}

#[test]
fn graceful_leave_is_seen_quickly() {
    let mut sim = cluster(5, 0.0);
    let id4 = sim.nodes[4].gossip.id();
    sim.nodes[4].gossip.leave();
    // Flush the leave notices, then stop the node.
    sim.run_for(Duration::from_millis(20));
    sim.crash(4);
    sim.run_for(Duration::from_millis(300));
    for i in 0..4 {
        assert!(!sim.nodes[i].gossip.is_live(&id4), "node {i} still lists the leaver");
    }
}

#[test]
fn no_false_deaths_at_two_percent_loss() {
    let mut sim = cluster(30, 0.02);
    sim.capture = true;
    sim.run_for(Duration::from_secs(60));
    let deaths = sim.events.iter().filter(|(_, _, e)| matches!(e, Event::MemberDown { .. })).count();
    assert_eq!(deaths, 0, "false deaths under 2% loss");
}

#[test]
fn forged_records_and_impersonation_are_rejected() {
    let mut sim = cluster(3, 0.0);
    let victim = sim.nodes[1].gossip.id();
    let forger = SimAuth::new(sim.nodes[2].gossip.id());
    // Node 2 signs a record that claims to be node 1's.
    let mut record = SignedRecord {
        origin: victim,
        epoch: 1_000,
        seq: 99,
        key: b"ep".to_vec(),
        value: Some(b"evil".to_vec()),
        signature: vec![],
    };
    record.signature = forger.sign(&record.signed_bytes());
    let push = Message::Push { updates: vec![Update::Record(record)] }.to_bytes();
    let (from, addr, now) = (sim.nodes[2].gossip.id(), sim.addr(2), sim.now);
    let before = sim.nodes[0].gossip.stats().rejected;
    sim.nodes[0].gossip.handle_message(now, from, addr, &push).unwrap();
    assert_eq!(sim.nodes[0].gossip.stats().rejected, before + 1);
    assert!(!sim.nodes[0].gossip.records().any(|(o, _, _)| o == victim));
    // A join whose announcement is not the sender's own is refused outright.
    let mut alive = match Message::from_bytes(&join_bytes(&sim, 1)).unwrap() {
        Message::Join { alive } => alive,
        other => panic!("{other:?}"),
    };
    alive.incarnation += 1;
    let join = Message::Join { alive }.to_bytes();
    assert!(sim.nodes[0].gossip.handle_message(now, from, addr, &join).is_err());
    // Garbage is counted, not applied.
    assert!(sim.nodes[0].gossip.handle_message(now, from, addr, &[0xff, 1, 2]).is_err());
    assert_eq!(sim.nodes[0].gossip.stats().malformed, 1);
}

/// A Join message as node `i` would send it.
fn join_bytes(sim: &Sim, i: usize) -> Vec<u8> {
    let mut probe = Sim::new(sim.nodes.len(), SimConfig { seed: 7, ..SimConfig::default() });
    let now = probe.now;
    probe.nodes[i].gossip.join(now, &[sim.addr(0)]);
    probe.nodes[i].gossip.poll_transmit().expect("join").payload
}

#[test]
fn death_claims_above_the_announced_incarnation_are_refused() {
    // Found by the gossip_node fuzz target: an unsigned claim with incarnation u64::MAX made the accused's
    // refutation overflow, and would outbid every refutation after it.
    let mut sim = cluster(3, 0.0);
    let victim = sim.nodes[1].gossip.id();
    let push = Message::Push { updates: vec![Update::Dead { id: victim, incarnation: u64::MAX }] }.to_bytes();
    let (from, addr, now) = (sim.nodes[2].gossip.id(), sim.addr(2), sim.now);
    let before = sim.nodes[0].gossip.stats().rejected;
    sim.nodes[0].gossip.handle_message(now, from, addr, &push).unwrap();
    assert_eq!(sim.nodes[0].gossip.stats().rejected, before + 1);
    assert!(sim.nodes[0].gossip.is_live(&victim));
    // Sent to the victim itself, it is refused too rather than refuted.
    sim.nodes[1].gossip.handle_message(now, from, addr, &push).unwrap();
    assert_eq!(sim.nodes[1].gossip.stats().refutations, 0);
    sim.run_for(Duration::from_secs(3));
    assert!((0..3).all(|i| sim.nodes[i].gossip.live_members().count() == 2));
}

#[test]
fn probes_measure_round_trip_and_clock_offset() {
    let mut sim = Sim::new(3, SimConfig { seed: 3, jitter: Duration::ZERO, ..SimConfig::default() });
    let now = sim.now;
    // Node 2's wall clock runs 5 s ahead; node 1 reports no clock at all.
    sim.nodes[0].gossip.set_wall_clock(now, 1_700_000_000_000);
    sim.nodes[2].gossip.set_wall_clock(now, 1_700_000_005_000);
    for i in 0..3 {
        sim.join(i, &[0]);
    }
    sim.run_for(Duration::from_secs(3));
    let health: Vec<_> = sim.nodes[0].gossip.member_health().collect();
    assert_eq!(health.len(), 2);
    for (id, h) in health {
        assert_eq!(h.liveness, overlay_proto::gossip::Liveness::Alive);
        // Two hops of the simulator's 2 ms latency.
        assert_eq!(h.rtt, Some(Duration::from_millis(4)), "{id:?}");
        if id == sim.nodes[2].gossip.id() {
            assert_eq!(h.clock_offset_ms, Some(5_000));
        } else {
            assert_eq!(h.clock_offset_ms, None, "a node without a clock reports none");
        }
    }
    assert_eq!(sim.nodes[0].gossip.convergence_lag(sim.now), Duration::ZERO, "a quiet cluster has converged");
}
