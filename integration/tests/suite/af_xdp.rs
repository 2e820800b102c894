//! The AF_XDP underlay (`node.underlay_mode = "af_xdp"`, issue 6) on the lab's veth underlay:
//! - mixed hosts: hosts 1 and 2 use AF_XDP, host 3 the kernel's UDP stack, with gossip over QUIC on the same link.
//!   Every pair of containers pings on an encrypted and a plaintext network, 100 MiB cross each kind of pair with
//!   equal checksums, the AF_XDP hosts' counters show the traffic went through their XSKs, and a clean exit
//!   detaches the XDP program;
//! - after a kill -9 the XDP program stays on the link; the next start detaches it (one log line) and works, in
//!   either mode;
//! - when AF_XDP cannot be set up (here: an underlay MTU too large for a UMEM frame), weft says so in one log line
//!   and carries the traffic over UDP.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use weft_integration::encrypted::{random_bytes, transfer, wait_keys};
use weft_integration::weft::{lab_pki, ping_mesh, query, start_weft, wait_members, WeftConfig};
use weft_integration::{exec_stdout, ping, ping_until, wait_until, Daemon, Lab, LabOptions};

const BLUE: (&str, u32) = ("blue", 100);
const RED: (&str, u32) = ("red", 200);
/// Fits under ESP's overhead on a 1500-byte underlay.
const OVERLAY_MTU: u32 = 1400;
const TRANSFER_BYTES: usize = 100 << 20;
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(90);
const MEMBERS_DEADLINE: Duration = Duration::from_secs(15);
const KEYS_DEADLINE: Duration = Duration::from_secs(15);
/// The log line of a fallback, as the daemon writes it.
const FALLBACK: &str = "underlay_mode af_xdp is unavailable, falling back to the udp underlay";
/// The log line of a stale program's removal.
const STALE: &str = "detached a stale weft XDP program";

/// The underlay section of host `i`'s `weft stats`.
fn underlay(lab: &Lab, i: usize) -> Result<Value> {
    let stats = query(lab, i, "stats")?;
    stats.get("underlay").cloned().with_context(|| format!("host {i}'s stats have no underlay: {stats}"))
}

fn number(v: &Value, key: &str) -> Result<u64> {
    v[key].as_u64().with_context(|| format!("no {key} in {v}"))
}

/// The id and name of the XDP program on `ul0` of host `i`, as `ip -d link` shows it.
fn xdp_program(lab: &Lab, i: usize) -> Result<Option<(u64, String)>> {
    let out = exec_stdout(&lab.host(i).ns, &["ip", "-j", "-d", "link", "show", "dev", "ul0"])?;
    let json: Value = serde_json::from_str(&out).with_context(|| format!("ip -j link: {out}"))?;
    let prog = &json[0]["xdp"]["prog"];
    Ok(prog["id"].as_u64().map(|id| (id, prog["name"].as_str().unwrap_or_default().to_owned())))
}

/// Host `i`'s config for the mixed lab: gossip (host 1 the seed), blue encrypted and red plaintext, the given mode.
fn mixed_config(lab: &Lab, i: usize, cert: &weft_integration::weft::NodeCert, mode: &str) -> String {
    let mut config = WeftConfig::with_gossip(lab, i, &[BLUE, RED], cert, &[1]);
    config.node_extra.push(format!("underlay_mode = {mode:?}"));
    for net in &mut config.networks {
        net.extra.retain(|line| !line.trim_start().starts_with("encrypted"));
        net.extra.push(format!("encrypted = {}", net.name == BLUE.0));
        net.extra.push(format!("mtu = {OVERLAY_MTU}"));
    }
    config.to_toml()
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn mixed_af_xdp_and_udp_hosts() -> Result<()> {
    let lab = Lab::up_with(
        "xdmix",
        LabOptions {
            hosts: 3,
            containers: 1,
            nets: vec![BLUE.0.into(), RED.0.into()],
            mtu: 1500,
            container_mtu: Some(OVERLAY_MTU),
        },
    )?;
    let (_, certs) = lab_pki(&lab)?;
    let modes = ["af_xdp", "af_xdp", "udp"];
    let mut daemons: Vec<Daemon> = Vec::new();
    for i in 1..=3 {
        daemons.push(start_weft(&lab, i, &mixed_config(&lab, i, &certs[i - 1], modes[i - 1]))?);
    }
    for (i, mode) in modes.iter().enumerate().map(|(i, m)| (i + 1, *m)) {
        let u = underlay(&lab, i)?;
        ensure!(u["mode"] == mode, "host {i} runs underlay {u}, expected {mode}; log:\n{}", daemons[i - 1].log());
        if mode == "af_xdp" {
            let prog = xdp_program(&lab, i)?;
            ensure!(
                prog.as_ref().is_some_and(|(_, name)| name == "weft_xdp"),
                "host {i}'s ul0 has XDP program {prog:?}"
            );
            ensure!(number(&u, "xsk_sockets")? >= 1, "host {i} has no XSK: {u}");
        } else {
            ensure!(xdp_program(&lab, i)?.is_none(), "host {i} (udp) has an XDP program on ul0");
        }
    }
    // The QUIC control plane (UDP 7946 on ul0) passes the XDP program to the kernel: gossip and key agreement work.
    let hosts = [1, 2, 3];
    wait_members(&lab, &hosts, MEMBERS_DEADLINE)?;
    wait_keys(&lab, &hosts, KEYS_DEADLINE)?;

    for net in [BLUE.0, RED.0] {
        let containers: Vec<_> = (1..=3).map(|i| lab.container(i, net, 1)).collect();
        ping_mesh(&containers, &[true, false], Duration::from_secs(15), 3)
            .with_context(|| format!("pinging across {net}"))?;
    }

    // 100 MiB over each kind of pair: AF_XDP to AF_XDP encrypted, UDP to AF_XDP plaintext, AF_XDP to UDP encrypted.
    let file = lab.dir().join("payload.bin");
    std::fs::write(&file, random_bytes(TRANSFER_BYTES)?)?;
    for (from, to, net) in [(1, 2, BLUE.0), (3, 1, RED.0), (2, 3, BLUE.0)] {
        let (src, dst) = (lab.container(from, net, 1), lab.container(to, net, 1));
        transfer(&lab, &src, &dst, IpAddr::V4(dst.ipv4), &file, TRANSFER_TIMEOUT)
            .with_context(|| format!("100 MiB from host {from} to host {to} on {net}"))?;
    }

    for i in [1, 2] {
        let u = underlay(&lab, i)?;
        // 100 MiB in ~1400-byte frames is over 70,000 datagrams each way through some XSK.
        for key in ["xsk_rx", "xsk_tx"] {
            ensure!(number(&u, key)? > 70_000, "host {i}'s {key} is too low for the transfers: {u}");
        }
        ensure!(number(&u, "xsk_rx_malformed")? == 0, "host {i} received malformed frames: {u}");
        let stats = query(&lab, i, "stats")?;
        // (Drops of unknown senders or missing SAs in the first moments, before gossip and keys, are expected.)
        for reason in ["authentication", "replay", "malformed", "esp_malformed", "plaintext_on_encrypted"] {
            let n = stats["drops"][reason].as_u64().unwrap_or(0);
            ensure!(n == 0, "host {i} dropped {n} for {reason}: {stats}");
        }
    }
    // The UDP host received its share through its sockets, with the AF_XDP hosts' headers.
    let stats = query(&lab, 3, "stats")?;
    ensure!(stats["esp_opened"].as_u64().unwrap_or(0) > 70_000, "host 3 opened too little ESP: {stats}");

    // A clean exit detaches the program; the kernel keeps the link for ARP and friends.
    daemons[0].stop()?;
    ensure!(xdp_program(&lab, 1)?.is_none(), "host 1 still has an XDP program after a clean exit");
    Ok(())
}

/// A plain two-host lab config (static peers) for host `i` in `mode`.
fn static_config(lab: &Lab, i: usize, mode: &str) -> String {
    let mut config = WeftConfig::for_host(lab, i, &[BLUE]);
    config.node_extra.push(format!("underlay_mode = {mode:?}"));
    config.to_toml()
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn stale_program_is_detached_after_kill_9() -> Result<()> {
    let lab = Lab::up("xdkill", 2, 1, &[BLUE.0])?;
    start_weft(&lab, 2, &static_config(&lab, 2, "udp"))?;
    let (c1, c2) = (lab.container(1, BLUE.0, 1), lab.container(2, BLUE.0, 1));

    let first = start_weft(&lab, 1, &static_config(&lab, 1, "af_xdp"))?;
    ping_until(&c1.ns, IpAddr::V4(c2.ipv4), Duration::from_secs(10))?;
    let (old_id, _) = xdp_program(&lab, 1)?.context("no XDP program on host 1")?;
    first.kill9()?;
    ensure!(xdp_program(&lab, 1)?.map(|p| p.0) == Some(old_id), "the program should outlive a kill -9");

    // The next af_xdp start removes the stale program and attaches a fresh one.
    let second = start_weft(&lab, 1, &static_config(&lab, 1, "af_xdp"))?;
    let log = second.log();
    ensure!(log.matches(STALE).count() == 1, "expected one stale-program line; log:\n{log}");
    let (new_id, name) = xdp_program(&lab, 1)?.context("no XDP program after the restart")?;
    ensure!(new_id != old_id && name == "weft_xdp", "program {new_id} {name} after restart, was {old_id}");
    ping_until(&c1.ns, IpAddr::V4(c2.ipv4), Duration::from_secs(10))?;
    ping(&c1.ns, IpAddr::V4(c2.ipv4), 3)?;
    ensure!(underlay(&lab, 1)?["mode"] == "af_xdp", "host 1 is not on af_xdp after the restart");

    // A udp start after another kill -9 removes it too, and leaves the link without one.
    second.kill9()?;
    ensure!(xdp_program(&lab, 1)?.is_some(), "the program should outlive the second kill -9");
    let third = start_weft(&lab, 1, &static_config(&lab, 1, "udp"))?;
    ensure!(third.log().matches(STALE).count() == 1, "expected one stale-program line; log:\n{}", third.log());
    ensure!(xdp_program(&lab, 1)?.is_none(), "a udp-mode weft left the stale program attached");
    ping_until(&c1.ns, IpAddr::V4(c2.ipv4), Duration::from_secs(10))?;
    ping(&c1.ns, IpAddr::V4(c2.ipv4), 3)?;
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn falls_back_to_udp_with_one_log_line() -> Result<()> {
    // A 9000-byte underlay MTU does not fit the 4 KiB UMEM frames: AF_XDP is refused before anything is attached.
    let lab = Lab::up_with(
        "xdfall",
        LabOptions { hosts: 2, containers: 1, nets: vec![BLUE.0.into()], mtu: 9000, container_mtu: None },
    )?;
    let daemons =
        [start_weft(&lab, 1, &static_config(&lab, 1, "af_xdp"))?, start_weft(&lab, 2, &static_config(&lab, 2, "udp"))?];
    let log = daemons[0].log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(FALLBACK)).collect();
    ensure!(lines.len() == 1, "expected one fallback line, got {}; log:\n{log}", lines.len());
    ensure!(lines[0].contains("MTU of ul0 (9000)"), "the fallback line does not say why: {}", lines[0]);
    ensure!(underlay(&lab, 1)?["mode"] == "udp", "host 1 did not fall back to udp");
    ensure!(xdp_program(&lab, 1)?.is_none(), "a fallen-back weft left an XDP program on ul0");
    let (c1, c2) = (lab.container(1, BLUE.0, 1), lab.container(2, BLUE.0, 1));
    ping_until(&c1.ns, IpAddr::V4(c2.ipv4), Duration::from_secs(10))?;
    ping(&c1.ns, IpAddr::V4(c2.ipv4), 3)?;
    wait_until(Duration::from_secs(5), "host 1 to count received frames", || {
        Ok(query(&lab, 1, "stats")?["rx_frames"].as_u64().unwrap_or(0) > 0)
    })?;
    Ok(())
}
