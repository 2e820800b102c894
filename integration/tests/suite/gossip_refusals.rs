//! Who may not take part in gossip: a host with a certificate from another CA is refused at the TLS handshake, in
//! both directions, and never becomes a member (the refusal is logged once per address per minute, not once per
//! attempt); and a member with a valid certificate that forges claims about another node (a record in its name, a
//! join under its id, an announcement under its id) has every forgery rejected and counted, and none reaches a
//! forwarding table.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use weft_integration::weft::{
    control_addr, fdb, holds_for, lab_pki, other_names, peers, ping_mesh, start_weft, wait_gossip_fdb, wait_members,
    Ca, WeftConfig,
};
use weft_integration::{wait_until, Container, Daemon, Lab};

const VNI: u32 = 100;
const SEEDS: [usize; 2] = [1, 2];
/// What weft logs when the transport refuses a peer (or is refused by it).
const REFUSAL: &str = "refused a control-plane peer";
/// How long the outsider is watched, trying to join, without ever being listed.
const WATCH: Duration = Duration::from_secs(5);

/// The log lines of `daemon` that report a refused peer, without their terminal colours.
fn refusals(daemon: &Daemon) -> Vec<String> {
    daemon.log().lines().filter(|line| line.contains(REFUSAL)).map(strip_ansi).collect()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_host_with_a_certificate_from_another_ca_cannot_join() -> Result<()> {
    let lab = Lab::up("gosca", 3, 0, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    // Host 3's certificate and trust anchor come from a CA of its own: it is valid, just not of this cluster.
    let rogue_ca = Ca::init(&lab.dir().join("rogue-ca"), "rogue")?;
    let rogue = rogue_ca.issue("h3", &lab.dir().join("rogue-nodes"))?;
    let mut daemons = Vec::new();
    for i in 1..=3 {
        let cert = if i == 3 { &rogue } else { &certs[i - 1] };
        daemons.push(start_weft(&lab, i, &WeftConfig::with_gossip(&lab, i, &[("blue", VNI)], cert, &SEEDS).to_toml())?);
    }
    // Hosts 1 and 2 form the cluster; host 3 keeps trying to join through both of them.
    wait_members(&lab, &[1, 2], Duration::from_secs(15))?;
    wait_until(Duration::from_secs(10), "hosts 1, 2 and 3 to log a refusal", || {
        Ok(daemons.iter().all(|d| !refusals(d).is_empty()))
    })?;
    holds_for(WATCH, "hosts 1 and 2 list only each other, host 3 lists nobody", || {
        Ok(peers(&lab, 1)?.names() == other_names(&[1, 2], 1)
            && peers(&lab, 2)?.names() == other_names(&[1, 2], 2)
            && peers(&lab, 3)?.members.is_empty())
    })?;

    // Host 3 retried every second meanwhile, but each refusal is reported once per address per minute.
    let host3 = control_addr(&lab, 3).to_string();
    for i in [1, 2] {
        let lines = refusals(&daemons[i - 1]);
        ensure!(lines.len() == 1, "host {i} logged {} refusals, expected exactly 1: {lines:#?}", lines.len());
        ensure!(lines[0].contains(&host3), "host {i}'s refusal does not name host 3 ({host3}): {}", lines[0]);
    }
    // Host 3 was refused by (or refused) each of its two seeds: one line per address.
    let lines = refusals(&daemons[2]);
    ensure!(
        (1..=2).contains(&lines.len()),
        "host 3 logged {} refusals, expected 1 or 2 (one per seed): {lines:#?}",
        lines.len()
    );
    for line in &lines {
        ensure!(
            SEEDS.iter().any(|&j| line.contains(&control_addr(&lab, j).to_string())),
            "host 3's refusal names no seed: {line}"
        );
    }
    eprintln!("refusals:\n  host 1: {:#?}\n  host 3: {lines:#?}", refusals(&daemons[0]));
    Ok(())
}

/// The MAC the forger claims for the victim: nobody has it.
const BOGUS_MAC: &str = "02:19:66:66:66:66";
/// Where the forger listens: host 3's underlay, beside host 3's own weft on 7946.
const FORGER_LISTEN: &str = "198.18.0.3:7950";

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn forged_gossip_from_a_valid_member_is_rejected() -> Result<()> {
    let lab = Lab::up("gosfg", 3, 1, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    let hosts = [1, 2, 3];
    for i in hosts {
        start_weft(&lab, i, &WeftConfig::with_gossip(&lab, i, &[("blue", VNI)], &certs[i - 1], &SEEDS).to_toml())?;
    }
    wait_members(&lab, &hosts, Duration::from_secs(15))?;
    let containers: Vec<Container> = hosts.iter().map(|&i| lab.container(i, "blue", 1)).collect();
    ping_mesh(&containers, &[true], Duration::from_secs(10), 0)?;
    for (j, c) in hosts.iter().zip(&containers) {
        let others: Vec<usize> = hosts.iter().copied().filter(|i| i != j).collect();
        wait_gossip_fdb(&lab, &others, VNI, &c.mac, *j, Duration::from_secs(10))?;
    }

    // The victim, host 2, as host 1 knows it.
    let before = peers(&lab, 1)?;
    let victim = before.members.iter().find(|m| m.name == "h2").cloned().context("host 1 does not list h2")?;
    ensure!(victim.id == certs[1].id, "host 1 lists h2 with id {}, its certificate has {}", victim.id, certs[1].id);
    let (rejected, malformed) = (before.gossip("rejected")?, before.gossip("malformed")?);

    // Host 3's certificate is valid: the TLS handshake succeeds, and only the gossip checks stand in the way.
    let forge = env!("CARGO_BIN_EXE_weft-forge");
    let (cert, key, ca) =
        (certs[2].cert.display().to_string(), certs[2].key.display().to_string(), certs[2].ca.display().to_string());
    let (to, vtep) = (control_addr(&lab, 1).to_string(), lab.host(3).underlay.to_string());
    let forger = lab.spawn(
        &lab.host(3).ns,
        &[
            forge,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--listen",
            FORGER_LISTEN,
            "--to",
            &to,
            "--victim",
            &victim.id,
            "--victim-name",
            "h2",
            "--vni",
            &VNI.to_string(),
            "--mac",
            BOGUS_MAC,
            "--vtep",
            &vtep,
        ],
    )?;
    wait_until(Duration::from_secs(15), "the forger to send its 3 messages", || {
        if let Some(status) = forger.exit_status()? {
            bail!("weft-forge exited ({status}): {}", forger.log());
        }
        Ok(forger.log().contains("sent 3 forged messages"))
    })?;

    // A forged record, a join and an announcement under host 2's id: three rejections, none of them malformed.
    let mut after = before.clone();
    wait_until(Duration::from_secs(10), "host 1 to reject the 3 forgeries", || {
        after = peers(&lab, 1)?;
        Ok(after.gossip("rejected")? >= rejected + 3)
    })
    .with_context(|| format!("host 1's gossip counters: {}; forger log: {}", after.json["gossip"], forger.log()))?;
    ensure!(
        after.gossip("malformed")? == malformed,
        "the forgeries were counted as malformed, not as rejected: {}",
        after.json["gossip"]
    );
    eprintln!(
        "host 1's gossip.rejected: {rejected} -> {} (gossip counters {})",
        after.gossip("rejected")?,
        after.json["gossip"]
    );

    // Nothing of it took: no host has the bogus MAC, host 2 is still itself everywhere, and the tables agree.
    holds_for(Duration::from_secs(2), &format!("no host has {BOGUS_MAC} in its fdb"), || {
        for i in hosts {
            if fdb(&lab, i)?.iter().any(|row| row.mac == BOGUS_MAC) {
                bail!("host {i}'s fdb has the forged {BOGUS_MAC}: {:?}", fdb(&lab, i)?);
            }
        }
        Ok(true)
    })?;
    for i in [1, 3] {
        let p = peers(&lab, i)?;
        ensure!(p.names() == other_names(&hosts, i), "host {i} lists {:?} after the forgeries", p.members);
        let h2 = p.members.iter().find(|m| m.name == "h2").context("h2 vanished")?;
        ensure!(
            h2.id == victim.id && h2.addr == control_addr(&lab, 2).to_string() && h2.vtep == "198.18.0.2",
            "host {i} now lists h2 as {h2:?}, before the forgeries it was {victim:?}"
        );
    }
    let digests: Vec<String> = hosts.iter().map(|&i| Ok(peers(&lab, i)?.table_digest)).collect::<Result<_>>()?;
    ensure!(digests.iter().all(|d| *d == digests[0]), "the record tables differ after the forgeries: {digests:?}");
    let table = fdb(&lab, 1)?;
    let c2 = table.iter().find(|row| row.mac == containers[1].mac).context("host 1 lost host 2's container")?;
    ensure!(c2.vtep == "198.18.0.2" && c2.origin == "gossip", "host 1 has host 2's container as {c2:?}");
    Ok(())
}
