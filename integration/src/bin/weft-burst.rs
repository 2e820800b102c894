//! Bursts of small, sequence-numbered UDP datagrams, and a receiver that checks every one arrived intact and in
//! order (the batched small-frame tests, `integration/tests/suite/batched.rs`).
//!
//! ```text
//!   weft-burst send DST:PORT COUNT BURST GAP_US
//!       sends COUNT datagrams of PAYLOAD bytes to DST:PORT from one socket (one flow), BURST back to back, then
//!       sleeps GAP_US microseconds; prints `sent COUNT`.
//!   weft-burst receive BIND:PORT COUNT TIMEOUT_MS
//!       prints `ready` once bound, then receives until COUNT datagrams arrived or none came for TIMEOUT_MS. Exits 0
//!       and prints `received COUNT in order` only if datagram i (0-based) was the i-th to arrive with the bytes
//!       `payload(i)`; otherwise prints what went wrong and exits 1.
//! ```
//!
//! A datagram is 22 bytes (a 64-byte Ethernet frame over IPv4): the sequence number (8 bytes, big-endian) and 14
//! bytes derived from it, so a datagram cut, mixed up with another or corrupted does not pass.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Payload bytes per datagram.
const PAYLOAD: usize = 22;

fn payload(seq: u64) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    for (k, b) in p[8..].iter_mut().enumerate() {
        *b = (seq.wrapping_mul(31).wrapping_add(k as u64 * 7)) as u8;
    }
    p
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("send") if args.len() == 5 => send(&args[1], number(&args[2]), number(&args[3]), number(&args[4])),
        Some("receive") if args.len() == 4 => receive(&args[1], number(&args[2]), number(&args[3])),
        _ => Err("usage: weft-burst send DST:PORT COUNT BURST GAP_US | receive BIND:PORT COUNT TIMEOUT_MS".into()),
    };
    if let Err(e) = result {
        println!("error: {e}");
        std::process::exit(1);
    }
}

fn number(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| {
        println!("error: not a number: {s}");
        std::process::exit(2)
    })
}

fn address(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn send(dst: &str, count: u64, burst: u64, gap_us: u64) -> Result<(), String> {
    let dst = address(dst)?;
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    for seq in 0..count {
        socket.send_to(&payload(seq), dst).map_err(|e| format!("send {seq}: {e}"))?;
        if burst > 0 && (seq + 1) % burst == 0 {
            std::thread::sleep(Duration::from_micros(gap_us));
        }
    }
    println!("sent {count}");
    Ok(())
}

fn receive(bind: &str, count: u64, timeout_ms: u64) -> Result<(), String> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address(bind)?),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| format!("socket: {e}"))?;
    // A burst must not overflow the receive queue of this slow reader: as large as root may ask.
    let _ = socket.set_recv_buffer_size(8 << 20);
    socket.bind(&address(bind)?.into()).map_err(|e| format!("bind {bind}: {e}"))?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(timeout_ms))).map_err(|e| e.to_string())?;
    println!("ready");
    let mut buf = [0u8; 2048];
    for expected in 0..count {
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) => return Err(format!("received {expected} of {count}, then nothing for {timeout_ms} ms ({e})")),
        };
        let got = &buf[..len];
        if got != payload(expected) {
            let seq = got.get(..8).map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")));
            return Err(format!("datagram {expected} is wrong: {len} bytes, sequence {seq:?}, {got:02x?}"));
        }
    }
    println!("received {count} in order");
    Ok(())
}
