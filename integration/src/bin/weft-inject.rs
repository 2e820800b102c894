//! `weft-inject`: sends hand-made IPv4/UDP datagrams at a weft host from a raw socket (`IPPROTO_RAW`, so the IP
//! and UDP headers are ours: any source address, any length field), for the adversarial tests. Each kind of bad
//! input lands in exactly one of weft's drop reasons (or, for `udp-len-long`, in the kernel's UDP InErrors):
//!
//! | kind               | port | what                                                   | counted as             |
//! |--------------------|------|--------------------------------------------------------|------------------------|
//! | `vxlan-short`      | 4789 | 0 to 7 bytes: shorter than the VXLAN header            | `malformed`            |
//! | `vxlan-runt`       | 4789 | a VXLAN header for `--vni`, 0 to 13 bytes of frame     | `malformed`            |
//! | `vxlan-no-i-flag`  | 4789 | a VXLAN header without the I flag (RFC 7348 §5)        | `no_vni_flag`          |
//! | `vxlan-huge-vni`   | 4789 | VNI 0xffffff, or a random VNI ≥ 4096                   | `unknown_vni`          |
//! | `vxlan-group-src`  | 4789 | a frame for `--vni` from a multicast source MAC        | `bad_source_mac`       |
//! | `vxlan-frame`      | 4789 | a well-formed frame for `--vni` (from a stranger)      | `unknown_sender`       |
//! | `udp-len-short`    | 4789 | a 68-byte datagram whose UDP length says 8 to 15       | `malformed` (trimmed)  |
//! | `udp-len-long`     | 4789 | a UDP length beyond the IP payload                     | kernel UDP InErrors    |
//! | `esp-bad-icv`      | 4500 | `--spi`, sequence numbers from `--seq`, random body    | `authentication`       |
//! | `esp-random-spi`   | 4500 | a random SPI (≥ 256, not `--spi`), random body         | `unknown_spi`          |
//! | `esp-short`        | 4500 | 0 to 3 bytes, or `--spi` with fewer bytes than an ICV  | `esp_malformed`        |
//! | `replay`           | 4500 | the ESP packets of `--payloads` (hex, one a line)      | `replay`               |
//! | `quic-garbage`     | 7946 | 1 to 1400 random bytes                                 | `transport.quic_drops` |
//! | `quic-initial`     | 7946 | QUIC v1 long-header Initials, random contents, 1200 B  | `quic_drops.initial_unauthenticated` |
//!
//! ```text
//! weft-inject --src 198.18.0.2 --dst 198.18.0.1 --kind esp-bad-icv --spi 0x1234 --seq 100000 --count 2000 --rate 5000
//! ```
//!
//! It prints `sent N KIND` when done.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const USAGE: &str = "usage: weft-inject --src IP --dst IP --kind KIND --count N [--rate PPS] [--port P] [--vni N] \
                     [--spi N] [--seq N] [--payloads FILE]";

/// `IPPROTO_RAW`: the socket sends whole IP packets, headers included (`IP_HDRINCL` implied).
const IPPROTO_RAW: i32 = 255;
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// RFC 7348 §5: the I flag, the only one defined.
const VXLAN_FLAG_I: u8 = 0x08;

/// xorshift64*: non-cryptographic, enough for junk.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Fewer than `limit` random bytes, a random number of them.
    fn some_bytes(&mut self, limit: u64) -> Vec<u8> {
        let n = self.below(limit) as usize;
        self.bytes(n)
    }
}

/// The options, parsed.
struct Options {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: String,
    count: u64,
    rate: f64,
    port: Option<u16>,
    vni: u32,
    spi: u32,
    seq: u64,
    payloads: Vec<Vec<u8>>,
}

fn parse_number(text: &str) -> Result<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).with_context(|| format!("bad number {text}")),
        None => text.parse().with_context(|| format!("bad number {text}")),
    }
}

fn parse_args() -> Result<Options> {
    let mut args = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(key) = it.next() {
        let key = key.strip_prefix("--").ok_or_else(|| anyhow!("unexpected argument {key}\n{USAGE}"))?.to_owned();
        let value = it.next().ok_or_else(|| anyhow!("--{key} needs a value\n{USAGE}"))?;
        args.insert(key, value);
    }
    let get = |key: &str| args.get(key).ok_or_else(|| anyhow!("missing --{key}\n{USAGE}"));
    let payloads = match args.get("payloads") {
        None => Vec::new(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let line = line.trim();
                (0..line.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(line.get(i..i + 2).unwrap_or("x"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .with_context(|| format!("{path}: not hex: {line}"))
            })
            .collect::<Result<_>>()?,
    };
    Ok(Options {
        src: get("src")?.parse().context("--src")?,
        dst: get("dst")?.parse().context("--dst")?,
        kind: get("kind")?.clone(),
        count: parse_number(get("count")?)?,
        rate: args.get("rate").map_or(Ok(10_000.0), |r| r.parse().context("--rate"))?,
        port: args.get("port").map(|p| p.parse().context("--port")).transpose()?,
        vni: args.get("vni").map_or(Ok(0), |v| parse_number(v))? as u32,
        spi: args.get("spi").map_or(Ok(0), |v| parse_number(v))? as u32,
        seq: args.get("seq").map_or(Ok(0), |v| parse_number(v))?,
        payloads,
    })
}

/// A VXLAN header (RFC 7348 §5) with `flags` and `vni`.
fn vxlan_header(flags: u8, vni: u32) -> Vec<u8> {
    let v = vni.to_be_bytes();
    vec![flags, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// An Ethernet frame of 60 bytes: `dst`, `src`, the local experimental EtherType 0x88b5, junk.
fn frame(junk: &mut Junk, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend(dst);
    f.extend(src);
    f.extend([0x88, 0xb5]);
    f.extend(junk.bytes(46));
    f
}

/// A locally administered unicast MAC no lab container has.
const STRANGE_MAC: [u8; 6] = [0x02, 0x19, 0x77, 0x77, 0x77, 0x77];
const BROADCAST: [u8; 6] = [0xff; 6];

/// The UDP payload of packet `i`, its destination port, and the UDP length field to write (`None`: the true one).
fn payload(o: &Options, junk: &mut Junk, i: u64) -> Result<(u16, Vec<u8>, Option<u16>)> {
    let esp_seq = |i: u64| {
        let seq = o.seq + i;
        let mut p = o.spi.to_be_bytes().to_vec();
        p.extend((seq as u32).to_be_bytes());
        p.extend(seq.to_be_bytes());
        p
    };
    Ok(match o.kind.as_str() {
        "vxlan-short" => (4789, junk.some_bytes(8), None),
        "vxlan-runt" => {
            let mut p = vxlan_header(VXLAN_FLAG_I, o.vni);
            p.extend(junk.some_bytes(14));
            (4789, p, None)
        }
        "vxlan-no-i-flag" => {
            let mut p = vxlan_header(0, o.vni);
            p.extend(frame(junk, BROADCAST, STRANGE_MAC));
            (4789, p, None)
        }
        "vxlan-huge-vni" => {
            let vni = if i.is_multiple_of(2) { 0xff_ffff } else { 4096 + junk.below(0xff_ffff - 4096) as u32 };
            let mut p = vxlan_header(VXLAN_FLAG_I, vni);
            p.extend(frame(junk, BROADCAST, STRANGE_MAC));
            (4789, p, None)
        }
        "vxlan-group-src" => {
            let mut p = vxlan_header(VXLAN_FLAG_I, o.vni);
            p.extend(frame(junk, BROADCAST, [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]));
            (4789, p, None)
        }
        "vxlan-frame" => {
            let mut p = vxlan_header(VXLAN_FLAG_I, o.vni);
            p.extend(frame(junk, BROADCAST, STRANGE_MAC));
            (4789, p, None)
        }
        "udp-len-short" => {
            let mut p = vxlan_header(VXLAN_FLAG_I, o.vni);
            p.extend(frame(junk, BROADCAST, STRANGE_MAC));
            (4789, p, Some((UDP_HEADER_LEN as u64 + junk.below(8)) as u16))
        }
        "udp-len-long" => {
            let mut p = vxlan_header(VXLAN_FLAG_I, o.vni);
            p.extend(frame(junk, BROADCAST, STRANGE_MAC));
            let claimed = UDP_HEADER_LEN + p.len() + 1 + junk.below(100) as usize;
            (4789, p, Some(claimed as u16))
        }
        "esp-bad-icv" => {
            let mut p = esp_seq(i);
            p.extend(junk.bytes(80));
            (4500, p, None)
        }
        "esp-random-spi" => {
            let spi = loop {
                let spi = junk.next() as u32;
                if spi >= 256 && spi != o.spi {
                    break spi;
                }
            };
            let mut p = spi.to_be_bytes().to_vec();
            p.extend(junk.bytes(92));
            (4500, p, None)
        }
        "esp-short" => {
            if i.is_multiple_of(2) {
                (4500, junk.some_bytes(4), None)
            } else {
                // SPI, sequence number and IV of a packet ahead of the window, but no room for an ICV.
                let mut p = esp_seq(i);
                p.truncate(8 + junk.below(8) as usize);
                p.resize(p.len().max(8), 0);
                (4500, p, None)
            }
        }
        "replay" => {
            if o.payloads.is_empty() {
                bail!("--kind replay needs --payloads");
            }
            (4500, o.payloads[(i % o.payloads.len() as u64) as usize].clone(), None)
        }
        "quic-garbage" => (
            7946,
            {
                let mut p = junk.some_bytes(1400);
                p.push(0);
                p
            },
            None,
        ),
        "quic-initial" => {
            // RFC 9000 §17.2.2: long header, type Initial, version 1, DCID, SCID, token, length, packet number.
            let mut p = vec![0xc0 | (junk.next() as u8 & 0x03), 0, 0, 0, 1];
            let dcid = 8 + junk.below(13) as usize;
            p.push(dcid as u8);
            p.extend(junk.bytes(dcid));
            p.push(8);
            p.extend(junk.bytes(8));
            p.push(0); // no token
            let rest = 1200 - p.len() - 2;
            p.extend([0x40 | (rest >> 8) as u8, rest as u8]);
            p.extend(junk.bytes(rest));
            (7946, p, None)
        }
        other => bail!("unknown --kind {other}\n{USAGE}"),
    })
}

/// The RFC 791 header checksum.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying a UDP datagram with `payload`; the UDP length field is `udp_len` or the true one, and
/// the UDP checksum is 0 (none, allowed over IPv4 by RFC 768).
fn packet(o: &Options, junk: &mut Junk, port: u16, payload: &[u8], udp_len: Option<u16>) -> Vec<u8> {
    let total = IPV4_HEADER_LEN + UDP_HEADER_LEN + payload.len();
    let id = junk.next() as u16;
    let mut p = Vec::with_capacity(total);
    p.extend([0x45, 0]);
    p.extend((total as u16).to_be_bytes());
    p.extend(id.to_be_bytes());
    p.extend([0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum below
    p.extend(o.src.octets());
    p.extend(o.dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let sport = 32768 + junk.below(28000) as u16;
    p.extend(sport.to_be_bytes());
    p.extend(o.port.unwrap_or(port).to_be_bytes());
    p.extend(udp_len.unwrap_or((UDP_HEADER_LEN + payload.len()) as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let mut junk = Junk(seed | 1);
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .context("opening a raw socket (needs CAP_NET_RAW)")?;
    let to = SockAddr::from(SocketAddrV4::new(o.dst, 0));
    let start = Instant::now();
    for i in 0..o.count {
        let (port, data, udp_len) = payload(&o, &mut junk, i)?;
        let bytes = packet(&o, &mut junk, port, &data, udp_len);
        // Pace to --rate: packet i leaves at i / rate seconds.
        let due = Duration::from_secs_f64(i as f64 / o.rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        loop {
            match socket.send_to(&bytes, &to) {
                Ok(_) => break,
                // The socket buffer is full: wait for it rather than lose the packet uncounted.
                Err(e) if e.raw_os_error() == Some(105) || e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e).with_context(|| format!("sending packet {i} of {}", o.kind)),
            }
        }
    }
    println!("sent {} {}", o.count, o.kind);
    Ok(())
}
