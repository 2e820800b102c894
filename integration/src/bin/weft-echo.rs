//! A tiny TCP backend and client for the ingress tests.
//!
//! ```text
//!   weft-echo serve LISTEN NAME
//!       answers each connection with one line, `name=NAME client=ADDR proxied=yes|no`, and closes it. ADDR is the
//!       client address of a PROXY protocol v2 header if the connection starts with one (parsed here, by hand, from
//!       the spec's byte layout: it must not share code with the weft under test), else the peer address.
//!   weft-echo connect MS TIMEOUT_MS ADDR...
//!       for MS milliseconds, connects to each ADDR in turn, one connection at a time, sends "hello\n" and prints
//!       `<start ms> <addr> ok <answer>` or `<start ms> <addr> err <reason>` per connection.
//!   weft-echo connect-count N TIMEOUT_MS ADDR...
//!       N connections to each ADDR in turn, printed the same way.
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") if args.len() == 3 => serve(&args[1], &args[2]),
        Some("connect") if args.len() >= 4 => {
            let (ms, timeout) = (number(&args[1]), number(&args[2]));
            connect(&args[3..], Some(Duration::from_millis(ms)), None, Duration::from_millis(timeout));
            Ok(())
        }
        Some("connect-count") if args.len() >= 4 => {
            let (n, timeout) = (number(&args[1]), number(&args[2]));
            connect(&args[3..], None, Some(n), Duration::from_millis(timeout));
            Ok(())
        }
        _ => Err(
            "usage: weft-echo serve LISTEN NAME | connect MS TIMEOUT_MS ADDR... | connect-count N TIMEOUT_MS ADDR..."
                .to_string(),
        ),
    };
    if let Err(e) = result {
        eprintln!("weft-echo: {e}");
        std::process::exit(2);
    }
}

fn number(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is not a number"))
}

fn serve(listen: &str, name: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    eprintln!("listening on {listen} as {name}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = name.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &name) {
                eprintln!("connection: {e}");
            }
        });
    }
    Ok(())
}

/// Reads until the first newline, taking a PROXY v2 header off the front if there is one.
fn answer(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = stream.peer_addr()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let mut client = None;
    loop {
        if client.is_none() && buf.len() >= 16 && buf[..12] == SIGNATURE {
            let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if buf.len() >= 16 + len {
                let body = &buf[16..16 + len];
                // ver_cmd 0x21 (v2, PROXY); family 0x11 TCP over IPv4, 0x21 TCP over IPv6.
                let addr = match (buf[12], buf[13]) {
                    (0x21, 0x11) if len >= 12 => {
                        let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                        SocketAddr::from((ip, u16::from_be_bytes([body[8], body[9]])))
                    }
                    (0x21, 0x21) if len >= 36 => {
                        let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&body[..16]).expect("16 bytes"));
                        SocketAddr::from((ip, u16::from_be_bytes([body[32], body[33]])))
                    }
                    other => {
                        return Err(std::io::Error::other(format!("unexpected PROXY header kind {other:?}")));
                    }
                };
                client = Some(addr);
                buf.drain(..16 + len);
            }
        }
        let header_pending = client.is_none() && buf.len() < 16 && SIGNATURE.starts_with(&buf[..buf.len().min(12)]);
        if buf.contains(&b'\n') && !header_pending {
            break;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 && buf.is_empty() {
            return Ok(()); // a health check: connected and closed
        }
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (shown, proxied) = match client {
        Some(c) => (c, "yes"),
        None => (peer, "no"),
    };
    writeln!(stream, "name={name} client={shown} proxied={proxied}")?;
    Ok(())
}

fn connect(targets: &[String], duration: Option<Duration>, count: Option<u64>, timeout: Duration) {
    let start = Instant::now();
    let mut done = 0u64;
    'outer: loop {
        for target in targets {
            if duration.is_some_and(|d| start.elapsed() >= d) || count.is_some_and(|n| done >= n) {
                break 'outer;
            }
            let began = start.elapsed().as_millis();
            match once(target, timeout) {
                Ok(line) => println!("{began} {target} ok {}", line.trim_end()),
                Err(e) => println!("{began} {target} err {e}"),
            }
        }
        done += 1;
    }
}

fn once(target: &str, timeout: Duration) -> std::io::Result<String> {
    let addr: SocketAddr = target.parse().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"hello\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(answer)
}
