//! The forwarding engine as a state machine (overlay_proto::forward::Forwarder), driven by a sequence of operations
//! decoded from the input: TAP frames, plaintext VXLAN and ESP datagrams from a handful of senders, control-plane
//! updates, SA installs and removals, and virtual time passing.
//!
//! Two networks, VNI 100 and VNI 200; the first input bytes choose their learning modes and whether VNI 200 is
//! encrypted. The harness keeps the peers' side of every SA it installs, so it can seal authentic ESP packets for
//! the forwarder and open what the forwarder seals.
//!
//! Invariants, checked after every operation:
//! - counters never decrease, and each TAP frame, datagram or ESP packet moves exactly one outcome counter (a drop
//!   reason, or tx_unicast / tx_flooded / suppressed / kept_local / rx_frames), the one its result names;
//! - a unicast never goes to the local VTEP; a flood list is non-empty, sorted, without duplicates or the local
//!   VTEP; an Answer is for a query whose address the control plane gave that MAC, and `neighbor::answer` can
//!   write it; Local is for a query whose address a local endpoint owns;
//! - an Ingress frame range lies within the datagram (or ESP packet), after the VXLAN header, and holds exactly the
//!   inner frame that was sent, for the network of the VXLAN header's VNI;
//! - an authentic ESP packet is never refused by the crypto layer (unknown SPI, replay, authentication), a tampered
//!   one is never accepted, and a replayed one is refused as a replay;
//! - what `encapsulate` seals, the peer's inbound SA opens, to the inner UDP header, the VXLAN header and the frame;
//! - the local endpoint events replay to exactly `local_endpoints()`; Gone only follows Seen;
//! - after a control-plane Endpoint, its addresses resolve to its MAC; after EndpointGone, none does.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use overlay_proto::fdb::FdbConfig;
use overlay_proto::forward::{
    ControlUpdate, DropReason, Egress, ForwardStats, Forwarder, ForwarderConfig, Learning, NetworkConfig, Port,
    RateLimit, HEADROOM, TAILROOM,
};
use overlay_proto::keying::KeyEvent;
use overlay_proto::local::LocalEvent;
use overlay_proto::neighbor::{self, NeighborQuery};
use overlay_proto::wire::ethernet::{ethertype, Frame};
use overlay_proto::wire::icmpv6::NdiscRepr;
use overlay_proto::wire::ipv4::protocol;
use overlay_proto::wire::{arp, icmpv6, ipv4, ipv6, udp, vxlan};
use overlay_proto::{MacAddr, Vni};
use weft_crypto::esp::{self, Inbound, Outbound};
use weft_crypto::keys::{Cipher, SaKeys};
use weft_crypto::Spi;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
const H2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
const H3: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
const VTEPS: [IpAddr; 6] = [
    LOCAL,
    H2,
    H3,
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 4)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 99)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
];
const MAC_B: MacAddr = MacAddr([2, 0x19, 0, 0, 2, 1]);
const MACS: [MacAddr; 7] = [
    MacAddr([2, 0x19, 0, 0, 1, 1]),
    MAC_B,
    MacAddr([2, 0x19, 0, 0, 3, 1]),
    MacAddr([2, 0x19, 0, 0, 4, 1]),
    MacAddr::BROADCAST,
    MacAddr([0x33, 0x33, 0xff, 0, 0, 0x21]),
    MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
];
const V4_IPS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(198, 19, 0, 11),
    Ipv4Addr::new(198, 19, 0, 12),
    Ipv4Addr::new(198, 19, 0, 21),
    Ipv4Addr::new(198, 19, 0, 22),
    Ipv4Addr::UNSPECIFIED,
];
const V6_IPS: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x21),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x21),
];
const VNIS: [u32; 3] = [100, 200, 300];
const SPIS: [u32; 3] = [0x100, 0x101, 0x200];
const VXLAN_PORT: u16 = 4789;
const MAX_OPS: usize = 96;

/// With FUZZ_TRACE set, the harness prints each operation and its result (for reading a reproducer).
fn trace() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if trace() {
            eprintln!($($arg)*);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut harness) = Harness::new(&mut u) else { return };
    for _ in 0..MAX_OPS {
        if u.is_empty() || harness.step(&mut u).is_err() {
            break;
        }
    }
});

/// The forwarder's verdict on a TAP frame, owned (Egress borrows the forwarder).
#[derive(Debug)]
enum Verdict {
    Unicast(IpAddr, u32),
    Flood(Vec<IpAddr>, u32),
    Drop(DropReason),
    Answer(MacAddr),
    Local,
}

/// The peer's end of one of the forwarder's inbound SAs: it seals what the forwarder opens.
struct PeerSender {
    vtep: IpAddr,
    sa: Outbound,
    /// Bumped when the SA is replaced or removed, so a replay is only judged against the SA that saw the original.
    generation: u64,
}

/// The last authentic ESP packet, for replaying.
struct Sent {
    spi: u32,
    vtep: IpAddr,
    generation: u64,
    packet: Vec<u8>,
}

struct Harness {
    fw: Forwarder,
    now: Instant,
    encrypted: [bool; 2],
    /// Peer senders by SPI (the forwarder's inbound SAs).
    peer_senders: HashMap<u32, PeerSender>,
    /// Peer receivers by VTEP (the forwarder's outbound SAs).
    peer_receivers: HashMap<IpAddr, Inbound>,
    generation: u64,
    last_sent: Option<Sent>,
    /// Local endpoints as the events describe them.
    local: BTreeMap<(usize, MacAddr), Vec<IpAddr>>,
    stats: ForwardStats,
}

impl Harness {
    fn new(u: &mut Unstructured<'_>) -> Result<Self> {
        let modes = [Learning::Off, Learning::Peers, Learning::Any];
        let learning = [*u.choose(&modes)?, *u.choose(&modes)?];
        let encrypted = [false, u.arbitrary::<bool>()?];
        trace!(
            "networks: VNI 100 learning {:?}; VNI 200 learning {:?}, encrypted {}",
            learning[0],
            learning[1],
            encrypted[1]
        );
        let now = Instant::now();
        let network = |i: usize| NetworkConfig {
            vni: Vni::new(VNIS[i]).unwrap(),
            learning: learning[i],
            peers: vec![H2, H3, LOCAL],
            static_fdb: vec![(MAC_B, H2)],
            flood_limit: RateLimit { per_second: 10, burst: 3 },
            gateways: Vec::new(),
            bridge_macs: Vec::new(),
            encrypted: encrypted[i],
        };
        let fw = Forwarder::new(
            ForwarderConfig {
                local_vtep: LOCAL,
                // A small learning limit, so that the limit is reached too.
                fdb: FdbConfig { ageing: Duration::from_secs(300), max_learned: 4 },
                flow_seed: 7,
                local_ageing: Duration::from_secs(60),
                vxlan_port: VXLAN_PORT,
                networks: vec![network(0), network(1)],
            },
            now,
        );
        Ok(Self {
            fw,
            now,
            encrypted,
            peer_senders: HashMap::new(),
            peer_receivers: HashMap::new(),
            generation: 0,
            last_sent: None,
            local: BTreeMap::new(),
            stats: ForwardStats::default(),
        })
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=11u8)? {
            0..=2 => {
                let network = u.int_in_range(0..=1usize)?;
                let frame = build_frame(u)?;
                self.tap(network, &frame);
            }
            3 | 4 => {
                let from = *u.choose(&VTEPS)?;
                let datagram = build_datagram(u)?;
                self.underlay(from, &datagram);
            }
            5 => self.esp_sealed(u)?,
            6 => {
                let from = *u.choose(&VTEPS)?;
                let mut packet = raw(u, 160)?;
                let before = self.fw.stats().clone();
                let result = self.fw.handle_esp(self.now, from, &mut packet);
                trace!("raw ESP from {from}: {packet:02x?} -> {result:?}");
                self.check_receive(&before, &result, packet.len(), None);
            }
            7 => self.replay(u)?,
            8 => self.key_event(u)?,
            9 => self.control(u)?,
            10 => {
                let vni = Vni::new(*u.choose(&VNIS)?).unwrap();
                let vteps = subset(u, &VTEPS)?;
                trace!("members of VNI {vni}: {vteps:?}");
                self.fw.set_network_members(vni, vteps);
            }
            _ => {
                let step = match u.int_in_range(0..=3u8)? {
                    0 => Duration::from_secs(u.int_in_range(1..=600)?),
                    _ => Duration::from_millis(u.int_in_range(0..=5_000)?),
                };
                self.now += step;
                trace!("+{step:?}: timeout");
                self.fw.handle_timeout(self.now);
            }
        }
        self.check_stats_grow();
        self.check_local_events();
        Ok(())
    }

    fn tap(&mut self, network: usize, frame: &[u8]) {
        let before = self.fw.stats().clone();
        let verdict = match self.fw.handle_tap_frame(self.now, network, frame) {
            Egress::Unicast { vtep, flow } => Verdict::Unicast(vtep, flow),
            Egress::Flood { vteps, flow } => Verdict::Flood(vteps.to_vec(), flow),
            Egress::Drop(reason) => Verdict::Drop(reason),
            Egress::Answer { mac } => Verdict::Answer(mac),
            Egress::Local => Verdict::Local,
        };
        trace!("TAP frame on network {network}: {frame:02x?} -> {verdict:?}");
        let after = self.fw.stats().clone();
        assert_eq!(tap_outcomes(&after) - tap_outcomes(&before), 1, "{verdict:?} moved no or several counters");
        let len = frame.len() as u64;
        match &verdict {
            Verdict::Unicast(vtep, flow) => {
                assert_ne!(*vtep, LOCAL, "unicast to the local VTEP");
                assert_eq!(after.tx_unicast, before.tx_unicast + 1);
                assert_eq!(after.tx_datagrams, before.tx_datagrams + 1);
                assert_eq!(after.tx_bytes, before.tx_bytes + len);
                self.encapsulate(network, *vtep, *flow, frame);
            }
            Verdict::Flood(vteps, flow) => {
                assert!(!vteps.is_empty(), "flood to nobody");
                assert!(vteps.windows(2).all(|w| w[0] < w[1]), "flood list unsorted or repeated: {vteps:?}");
                assert!(!vteps.contains(&LOCAL), "flood to the local VTEP");
                assert_eq!(after.tx_flooded, before.tx_flooded + 1);
                assert_eq!(after.tx_datagrams, before.tx_datagrams + vteps.len() as u64);
                assert_eq!(after.tx_bytes, before.tx_bytes + len);
                for vtep in vteps {
                    self.encapsulate(network, *vtep, *flow, frame);
                }
            }
            Verdict::Drop(reason) => {
                assert!(matches!(reason, DropReason::Malformed | DropReason::NoDestination | DropReason::FloodLimited));
                assert_eq!(after.drops(*reason), before.drops(*reason) + 1);
                if *reason == DropReason::Malformed {
                    assert!(Frame::new_checked(frame).is_err());
                }
            }
            Verdict::Answer(mac) => {
                assert_eq!(after.suppressed, before.suppressed + 1);
                let ip = query_ip(frame).expect("answered a frame that is not a query");
                assert_eq!(self.fw.neighbor(self.fw.vni(network), ip), Some(*mac));
                assert!(neighbor::answer(frame, *mac, &mut [0u8; 128]).is_some(), "an Answer that cannot be written");
            }
            Verdict::Local => {
                assert_eq!(after.kept_local, before.kept_local + 1);
                let ip = query_ip(frame).expect("kept local a frame that is not a query");
                assert!(self.fw.local_endpoints().owner(network, ip).is_some());
            }
        }
    }

    /// Encapsulates a frame the forwarder decided to send, and checks what comes out from the peer's side.
    fn encapsulate(&mut self, network: usize, vtep: IpAddr, flow: u32, frame: &[u8]) {
        let mut buf = vec![0u8; HEADROOM + frame.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let range = HEADROOM..HEADROOM + frame.len();
        let before = self.fw.stats().clone();
        let result = self.fw.encapsulate(network, vtep, flow, &mut buf, range);
        let vni = self.fw.vni(network);
        if !self.encrypted[network] {
            let (datagram, port) = result.expect("plaintext encapsulation cannot fail");
            assert_eq!(port, Port::Vxlan);
            check_vxlan(&buf[datagram], vni, frame);
            return;
        }
        let Some(peer) = self.peer_receivers.get_mut(&vtep) else {
            assert_eq!(result, Err(DropReason::NoSa), "sealed without an outbound SA");
            assert_eq!(self.fw.stats().drops(DropReason::NoSa), before.drops(DropReason::NoSa) + 1);
            return;
        };
        let (sealed, port) = result.expect("sealing with an outbound SA");
        assert_eq!(port, Port::Esp);
        assert!(sealed.end <= buf.len());
        assert_eq!(self.fw.stats().esp_sealed, before.esp_sealed + 1);
        let packet = &mut buf[sealed];
        let inner = peer.open(packet).expect("the peer cannot open what the forwarder sealed");
        let inner = &packet[inner];
        let header = udp::Packet::new_checked(inner).expect("inner UDP header");
        assert_eq!(header.dst_port(), VXLAN_PORT);
        assert_eq!(usize::from(header.len()), inner.len());
        check_vxlan(header.payload(), vni, frame);
    }

    fn underlay(&mut self, from: IpAddr, datagram: &[u8]) {
        let before = self.fw.stats().clone();
        let result = self.fw.handle_underlay(self.now, from, datagram);
        trace!("VXLAN from {from}: {datagram:02x?} -> {result:?}");
        self.check_receive(&before, &result, datagram.len(), Some(datagram));
        if let Ok(ingress) = &result {
            assert_eq!(ingress.frame.start, vxlan::HEADER_LEN);
            assert!(!self.encrypted[ingress.network], "plaintext accepted on an encrypted network");
        }
    }

    /// Checks the counters and the Ingress of a datagram or ESP packet of `len` bytes; `datagram` is the plaintext
    /// VXLAN datagram when the harness knows it.
    fn check_receive(
        &self,
        before: &ForwardStats,
        result: &std::result::Result<overlay_proto::forward::Ingress, DropReason>,
        len: usize,
        datagram: Option<&[u8]>,
    ) {
        let after = self.fw.stats();
        assert_eq!(rx_outcomes(after) - rx_outcomes(before), 1, "{result:?} moved no or several counters");
        match result {
            Ok(ingress) => {
                assert_eq!(after.rx_frames, before.rx_frames + 1);
                assert!(ingress.network < 2);
                assert!(ingress.frame.start <= ingress.frame.end && ingress.frame.end <= len, "{ingress:?} > {len}");
                assert!(ingress.frame.len() >= overlay_proto::wire::ethernet::HEADER_LEN);
                assert_eq!(after.rx_bytes, before.rx_bytes + ingress.frame.len() as u64);
                if let Some(datagram) = datagram {
                    let vni = vxlan::Repr::parse(&vxlan::Packet::new_checked(datagram).unwrap()).unwrap().vni;
                    assert_eq!(self.fw.vni(ingress.network), vni);
                    assert_eq!(ingress.frame.end, datagram.len());
                }
            }
            Err(reason) => assert_eq!(after.drops(*reason), before.drops(*reason) + 1, "{reason:?} not counted"),
        }
    }

    /// Seals a datagram as the peer behind one of the forwarder's inbound SAs, perhaps tampers with it, and sends it.
    fn esp_sealed(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let spi = *u.choose(&SPIS)?;
        let vni = *u.choose(&VNIS)?;
        let frame = build_frame(u)?;
        let good_udp = u.ratio(7u8, 8u8)?;
        let tamper: Option<(usize, u8)> =
            if u.ratio(1u8, 8u8)? { Some((u.arbitrary()?, u.int_in_range(1..=255)?)) } else { None };
        let spoofed = u.ratio(1u8, 8u8)?;
        let spoofed_from = *u.choose(&VTEPS)?;
        let Some(peer) = self.peer_senders.get_mut(&spi) else { return Ok(()) };

        let mut inner = vec![0u8; udp::HEADER_LEN + vxlan::HEADER_LEN];
        vxlan::Repr { vni: Vni::new(vni).unwrap() }
            .emit(&mut vxlan::Packet::new_unchecked(&mut inner[udp::HEADER_LEN..]));
        inner.extend_from_slice(&frame);
        let inner_len = inner.len();
        if good_udp {
            let mut header = udp::Packet::new_unchecked(&mut inner[..]);
            header.set_src_port(49152);
            header.set_dst_port(VXLAN_PORT);
            header.set_len(inner_len as u16);
            header.set_checksum(0);
        } else {
            inner[..udp::HEADER_LEN].copy_from_slice(&u.arbitrary::<[u8; 8]>()?);
        }
        let mut buf = vec![0u8; esp::HEADER_LEN + inner_len + esp::MAX_TRAILER_LEN];
        buf[esp::HEADER_LEN..esp::HEADER_LEN + inner_len].copy_from_slice(&inner);
        let range = peer.sa.seal(&mut buf, esp::HEADER_LEN..esp::HEADER_LEN + inner_len).expect("room to seal");
        let mut packet = buf[range].to_vec();
        let authentic = packet.clone();
        if let Some((at, xor)) = tamper {
            let at = at % packet.len();
            packet[at] ^= xor;
        }
        let from = if spoofed { spoofed_from } else { peer.vtep };
        let (sa_vtep, generation) = (peer.vtep, peer.generation);

        let before = self.fw.stats().clone();
        let result = self.fw.handle_esp(self.now, from, &mut packet);
        trace!("ESP on SPI {spi:#x} from {from} (VNI {vni}, tampered {tamper:?}, good UDP {good_udp}): frame {frame:02x?} -> {result:?}");
        self.check_receive(&before, &result, packet.len(), None);
        let crypto_refused =
            matches!(result, Err(DropReason::UnknownSpi | DropReason::Replay | DropReason::Authentication));
        if tamper.is_some() {
            assert!(result.is_err(), "a tampered ESP packet was accepted");
        } else if from == sa_vtep {
            assert!(!crypto_refused, "an authentic ESP packet was refused: {result:?}");
            if good_udp {
                assert_ne!(result, Err(DropReason::EspMalformed), "a well-framed ESP packet was malformed");
            }
            // Its ICV verified, so the replay window now holds its sequence number.
            self.last_sent = Some(Sent { spi, vtep: sa_vtep, generation, packet: authentic });
            if let Ok(ingress) = &result {
                assert_eq!(&packet[ingress.frame.clone()], &frame[..], "the opened frame differs from the sealed one");
                assert_eq!(self.fw.vni(ingress.network).get(), vni);
            }
        } else if !crypto_refused {
            panic!("an ESP packet from {from}, not the SA's {sa_vtep}, got past the SA lookup: {result:?}");
        }
        Ok(())
    }

    /// Sends the last authentic ESP packet again: while its SA is in place, the forwarder must refuse it as a
    /// replay, and once the SA is removed or replaced (with new keys), refuse it all the same.
    fn replay(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let spoofed = u.ratio(1u8, 8u8)?;
        let spoofed_from = *u.choose(&VTEPS)?;
        let Some(sent) = &self.last_sent else { return Ok(()) };
        let from = if spoofed { spoofed_from } else { sent.vtep };
        let current = self.peer_senders.get(&sent.spi).is_some_and(|p| p.generation == sent.generation);
        let mut packet = sent.packet.clone();
        let before = self.fw.stats().clone();
        let result = self.fw.handle_esp(self.now, from, &mut packet);
        trace!("replay on SPI {:#x} from {from} -> {result:?}", sent.spi);
        self.check_receive(&before, &result, packet.len(), None);
        if current && from == sent.vtep {
            assert_eq!(result, Err(DropReason::Replay), "a replayed ESP packet was not refused as one");
        } else {
            let refused =
                matches!(result, Err(DropReason::UnknownSpi | DropReason::Replay | DropReason::Authentication));
            assert!(refused, "a packet of a removed or replaced SA got past the SA: {result:?}");
        }
        Ok(())
    }

    fn key_event(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let spi_value = *u.choose(&SPIS)?;
        let spi = Spi::new(spi_value).unwrap();
        let vtep = *u.choose(&VTEPS[1..])?;
        let key_index = u.int_in_range(0..=3)?;
        self.generation += 1;
        let key = keys(key_index, self.generation);
        let action = u.int_in_range(0..=3u8)?;
        trace!("SA change {action} (0 install inbound, 1 set outbound, 2 remove inbound, 3 remove outbound): SPI {spi}, VTEP {vtep}, key {key_index}");
        match action {
            0 => {
                let sender = PeerSender { vtep, sa: Outbound::new(spi, &key), generation: self.generation };
                self.peer_senders.insert(spi_value, sender);
                self.fw.handle_key_event(KeyEvent::InstallInbound { vtep, spi, keys: key, epoch: self.generation });
            }
            1 => {
                self.peer_receivers.insert(vtep, Inbound::new(spi, &key));
                self.fw.handle_key_event(KeyEvent::SetOutbound { vtep, spi, keys: key, epoch: self.generation });
            }
            2 => {
                self.peer_senders.remove(&spi_value);
                self.fw.handle_key_event(KeyEvent::RemoveInbound { spi });
            }
            _ => {
                self.peer_receivers.remove(&vtep);
                self.fw.handle_key_event(KeyEvent::RemoveOutbound { vtep });
            }
        }
        Ok(())
    }

    fn control(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let vni = Vni::new(*u.choose(&VNIS)?).unwrap();
        let mac = *u.choose(&MACS)?;
        if u.ratio(1u8, 3u8)? {
            trace!("control: endpoint {mac} on VNI {vni} gone");
            self.fw.handle_control(ControlUpdate::EndpointGone { vni, mac });
            for ip in all_ips() {
                assert_ne!(self.fw.neighbor(vni, ip), Some(mac), "{ip} still resolves to a gone endpoint");
            }
            return Ok(());
        }
        let vtep = *u.choose(&VTEPS)?;
        let ips = subset(u, &all_ips())?;
        trace!("control: endpoint {mac} on VNI {vni} behind {vtep} with {ips:?}");
        self.fw.handle_control(ControlUpdate::Endpoint { vni, mac, vtep, ips: ips.clone() });
        if VNIS[..2].contains(&vni.get()) && vtep != LOCAL {
            for ip in ips {
                assert_eq!(
                    self.fw.neighbor(vni, ip),
                    Some(mac),
                    "{ip} does not resolve to the endpoint just announced"
                );
            }
        }
        Ok(())
    }

    fn check_stats_grow(&mut self) {
        let (old, new) = (&self.stats, self.fw.stats());
        let fields = |s: &ForwardStats| {
            [
                s.tx_unicast,
                s.tx_flooded,
                s.tx_datagrams,
                s.tx_bytes,
                s.suppressed,
                s.kept_local,
                s.rx_frames,
                s.rx_bytes,
                s.learned,
                s.esp_sealed,
                s.esp_opened,
            ]
        };
        for (a, b) in fields(old).iter().zip(fields(new).iter()) {
            assert!(b >= a, "a counter went down: {old:?} -> {new:?}");
        }
        for ((reason, a), (_, b)) in old.iter_drops().zip(new.iter_drops()) {
            assert!(b >= a, "drop counter {} went down", reason.as_str());
        }
        self.stats = new.clone();
    }

    fn check_local_events(&mut self) {
        while let Some(event) = self.fw.poll_local_event() {
            trace!("  local event: {event:?}");
            match event {
                LocalEvent::Seen { network, mac, ips } => {
                    assert!(network < 2 && mac.is_unicast(), "Seen {network} {mac}");
                    let mut unique = ips.clone();
                    unique.sort();
                    unique.dedup();
                    assert_eq!(unique.len(), ips.len(), "repeated addresses in {ips:?}");
                    self.local.insert((network, mac), ips);
                }
                LocalEvent::Gone { network, mac } => {
                    assert!(self.local.remove(&(network, mac)).is_some(), "Gone for {mac} never Seen");
                }
            }
        }
        let actual: BTreeMap<(usize, MacAddr), Vec<IpAddr>> =
            self.fw.local_endpoints().iter().map(|(n, m, ips)| ((n, m), ips.to_vec())).collect();
        assert_eq!(actual, self.local, "local endpoint events do not replay to local_endpoints()");
    }
}

/// Counters of which each TAP frame moves exactly one.
fn tap_outcomes(s: &ForwardStats) -> u64 {
    s.tx_unicast + s.tx_flooded + s.suppressed + s.kept_local + total_drops(s)
}

/// Counters of which each received datagram or ESP packet moves exactly one.
fn rx_outcomes(s: &ForwardStats) -> u64 {
    s.rx_frames + total_drops(s)
}

fn total_drops(s: &ForwardStats) -> u64 {
    s.iter_drops().map(|(_, n)| n).sum()
}

fn check_vxlan(datagram: &[u8], vni: Vni, frame: &[u8]) {
    let packet = vxlan::Packet::new_checked(datagram).expect("VXLAN header");
    assert_eq!(vxlan::Repr::parse(&packet), Ok(vxlan::Repr { vni }));
    assert_eq!(packet.payload(), frame, "encapsulation changed the frame");
}

fn query_ip(frame: &[u8]) -> Option<IpAddr> {
    Some(match neighbor::query(frame)? {
        NeighborQuery::Arp { target } => IpAddr::V4(target),
        NeighborQuery::Solicit { target } => IpAddr::V6(target),
    })
}

/// Keys for one SA: `index` picks the cipher, and `generation` makes them unique, as every real epoch's are.
fn keys(index: u8, generation: u64) -> SaKeys {
    let cipher = if index < 2 { Cipher::Aes128Gcm } else { Cipher::Aes256Gcm };
    let mut key = vec![0x10 + index; cipher.key_len()];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    SaKeys::new(cipher, &key, [index; 4]).expect("key of the cipher's length")
}

fn all_ips() -> Vec<IpAddr> {
    V4_IPS.iter().copied().map(IpAddr::V4).chain(V6_IPS.iter().copied().map(IpAddr::V6)).collect()
}

fn subset<T: Copy>(u: &mut Unstructured<'_>, items: &[T]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in items {
        if u.arbitrary::<bool>()? {
            out.push(*item);
        }
    }
    Ok(out)
}

fn raw(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?.min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

/// A VXLAN datagram: a header with a chosen VNI and flags, then a frame; or raw bytes.
fn build_datagram(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1u8, 6u8)? {
        return raw(u, 120);
    }
    let mut datagram = vec![0u8; vxlan::HEADER_LEN];
    vxlan::Repr { vni: Vni::new(*u.choose(&VNIS)?).unwrap() }
        .emit(&mut vxlan::Packet::new_unchecked(&mut datagram[..]));
    if u.ratio(1u8, 8u8)? {
        datagram[0] = u.arbitrary()?;
    }
    datagram.extend_from_slice(&build_frame(u)?);
    Ok(datagram)
}

/// An Ethernet frame: raw bytes, or addresses from the harness's sets followed by an ARP request, a Neighbor
/// Solicitation, an IPv4 header or raw payload, sometimes VLAN-tagged.
fn build_frame(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1u8, 8u8)? {
        return raw(u, 100);
    }
    let dst = *u.choose(&MACS)?;
    let src = *u.choose(&MACS)?;
    let kind = u.int_in_range(0..=3u8)?;
    let ether = [ethertype::ARP, ethertype::IPV6, ethertype::IPV4, 0x88b5][usize::from(kind)];
    let tagged = u.ratio(1u8, 8u8)?;
    let header_len = if tagged { 18 } else { 14 };
    let mut frame = vec![0u8; header_len];
    let mut eth = Frame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    if tagged {
        eth.set_vlan_tag(u.arbitrary()?, ether);
    } else {
        eth.set_ethertype(ether);
    }
    match kind {
        0 => {
            let mut payload = [0u8; arp::PACKET_LEN];
            let sender_hardware_addr = if u.ratio(7u8, 8u8)? { src } else { *u.choose(&MACS)? };
            arp::Repr {
                operation: if u.ratio(7u8, 8u8)? { arp::operation::REQUEST } else { arp::operation::REPLY },
                sender_hardware_addr,
                sender_protocol_addr: *u.choose(&V4_IPS)?,
                target_hardware_addr: MacAddr::default(),
                target_protocol_addr: *u.choose(&V4_IPS)?,
            }
            .emit(&mut arp::Packet::new_unchecked(&mut payload[..]));
            frame.extend_from_slice(&payload);
        }
        1 => {
            let src_ip = *u.choose(&V6_IPS)?;
            let target = *u.choose(&V6_IPS)?;
            let lladdr = if u.arbitrary()? { Some(src) } else { None };
            let ns = NdiscRepr::NeighborSolicit { target_addr: target, lladdr };
            let dst_ip = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x21);
            let ip = ipv6::Repr {
                src_addr: src_ip,
                dst_addr: dst_ip,
                next_header: protocol::ICMPV6,
                payload_len: ns.buffer_len(),
                hop_limit: if u.ratio(7u8, 8u8)? { 255 } else { 64 },
            };
            let mut payload = vec![0u8; ip.buffer_len()];
            let mut packet = ipv6::Packet::new_unchecked(&mut payload[..]);
            ip.emit(&mut packet);
            let mut message = icmpv6::Packet::new_unchecked(packet.payload_mut());
            ns.emit(&mut message);
            message.fill_checksum(&src_ip, &dst_ip);
            frame.extend_from_slice(&payload);
        }
        2 => {
            let ip = ipv4::Repr {
                src_addr: *u.choose(&V4_IPS)?,
                dst_addr: *u.choose(&V4_IPS)?,
                next_header: protocol::UDP,
                payload_len: 0,
                hop_limit: 64,
            };
            let mut payload = vec![0u8; ip.buffer_len()];
            ip.emit(&mut ipv4::Packet::new_unchecked(&mut payload[..]));
            frame.extend_from_slice(&payload);
        }
        _ => {}
    }
    frame.extend_from_slice(&raw(u, 32)?);
    Ok(frame)
}
