//! Instructions per packet of the encrypted paths and of the raw AEAD, counted by callgrind: a second opinion on the
//! ratios `dataplane` measures in time, and one that a busy machine cannot disturb (an instruction count is the same
//! whatever else runs; time on a shared 2-core machine is not).
//!
//! `cargo bench --bench instructions` runs this binary again under `valgrind --tool=callgrind` once per case, with
//! collection switched on only inside [`measured`], which applies one case's operation to `PACKETS` prepared
//! packets. The count divided by `PACKETS` is the instructions per packet; the table gives each encrypted path's
//! count over the raw AEAD's at the same size. Without valgrind it says so and measures nothing.
//!
//! Instructions are not time (AES-NI and carry-less multiplies are few instructions doing much work, memory stalls
//! cost nothing here), so this complements the timed ratio rather than replacing it.

mod common;

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use common::*;
use overlay_proto::forward::{Forwarder, HEADROOM};
use ring::aead::{Aad, LessSafeKey};

/// Packets per case.
const PACKETS: usize = 2_000;
/// The cases, as (path, raw AEAD) pairs.
const PAIRS: [(&str, &str); 2] = [("encap_seal", "raw_seal"), ("open_decap", "raw_open")];

/// What one case does to each packet.
enum Case {
    EncapSeal { fw: Forwarder, vtep: std::net::IpAddr, flow: u32, size: usize, packets: Vec<Vec<u8>> },
    OpenDecap { fw: Forwarder, packets: Vec<Vec<u8>> },
    RawSeal { key: LessSafeKey, packets: Vec<Vec<u8>> },
    RawOpen { key: LessSafeKey, packets: Vec<Vec<u8>> },
}

/// Prepares `PACKETS` inputs for `name` at `size` bytes, outside the measured part.
fn prepare(name: &str, size: usize) -> Case {
    let now = Instant::now();
    let plain = framed(&frame(size));
    match name {
        "encap_seal" => {
            let (mut fw, _) = encrypted_pair(now);
            let (vtep, flow) = classify_frame(&mut fw, now, &plain, size);
            Case::EncapSeal { fw, vtep, flow, size, packets: vec![plain; PACKETS] }
        }
        "open_decap" => {
            let (mut sender, receiver) = encrypted_pair(now);
            let (vtep, flow) = classify_frame(&mut sender, now, &plain, size);
            let packets = (0..PACKETS)
                .map(|_| {
                    let mut buf = plain.clone();
                    let (packet, _) = sender.encapsulate(0, vtep, flow, &mut buf, HEADROOM..HEADROOM + size).unwrap();
                    buf[packet].to_vec()
                })
                .collect();
            Case::OpenDecap { fw: receiver, packets }
        }
        "raw_seal" => Case::RawSeal { key: aead(), packets: vec![vec![0x5a; size]; PACKETS] },
        "raw_open" => {
            let key = aead();
            let packets = (0..PACKETS)
                .map(|i| {
                    let mut sealed = vec![0x5a; size];
                    let tag = key.seal_in_place_separate_tag(nonce(i as u64), Aad::from([0u8; 12]), &mut sealed);
                    sealed.extend_from_slice(tag.unwrap().as_ref());
                    sealed
                })
                .collect();
            Case::RawOpen { key, packets }
        }
        other => panic!("unknown case {other}"),
    }
}

/// The measured part: callgrind collects only while this runs.
#[inline(never)]
fn measured(case: &mut Case) {
    let now = Instant::now();
    match case {
        Case::EncapSeal { fw, vtep, flow, size, packets } => {
            for buf in packets {
                black_box(fw.encapsulate(0, *vtep, *flow, buf, HEADROOM..HEADROOM + *size).unwrap());
            }
        }
        Case::OpenDecap { fw, packets } => {
            for packet in packets {
                black_box(fw.handle_esp(now, LOCAL.into(), packet).unwrap());
            }
        }
        Case::RawSeal { key, packets } => {
            for (i, buf) in packets.iter_mut().enumerate() {
                let _ = black_box(key.seal_in_place_separate_tag(nonce(i as u64), Aad::from([0u8; 12]), buf).unwrap());
            }
        }
        Case::RawOpen { key, packets } => {
            for (i, sealed) in packets.iter_mut().enumerate() {
                black_box(key.open_in_place(nonce(i as u64), Aad::from([0u8; 12]), sealed).unwrap().len());
            }
        }
    }
}

/// Runs this binary under callgrind for one case; the instructions collected inside `measured`, per packet.
fn count(name: &str, size: usize) -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::env::temp_dir().join(format!("weft-callgrind-{}-{name}-{size}.out", std::process::id()));
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--toggle-collect=*measured*"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--case", name, &size.to_string()])
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    let _ = std::fs::remove_file(&out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("valgrind failed ({}): {}", output.status, stderr.trim()));
    }
    let collected = stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no instruction count in valgrind's output: {}", stderr.trim()))?;
    Ok(collected / PACKETS as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let size = args[i + 2].parse().expect("a size");
        let mut case = prepare(&args[i + 1], size);
        measured(&mut case);
        return;
    }
    // `cargo bench` passes "--bench"; a name filter, if any, picks the pairs whose names contain it.
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--"));
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("instructions: valgrind is not installed (scripts/setup.sh installs it); nothing measured");
        return;
    }
    println!("| path | size (B) | weft (instructions) | raw AES-128-GCM (instructions) | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    for (path, raw) in PAIRS {
        if filter.is_some_and(|f| !path.contains(f.as_str())) {
            continue;
        }
        for size in SIZES {
            match (count(path, size), count(raw, size)) {
                (Ok(ours), Ok(floor)) => {
                    println!("| {path} vs {raw} | {size} | {ours:.0} | {floor:.0} | {:.3} |", ours / floor)
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("instructions: {path}/{size}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
