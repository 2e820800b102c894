//! Attach and detach at their edges, each a regression test for a bug found in review (it fails on the code before
//! its fix):
//! - two attachments whose host interface names collide: the second fails and leaves the first alone;
//! - an interface a killed weft left behind is replaced by the next attach;
//! - a namespace on two networks keeps its resolv.conf when the network that wrote it is detached.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weft::services::attach::host_interface_name;
use weft_integration::services::{add_netns, attach, detach, links};
use weft_integration::weft::{lab_pki, start_weft, WeftConfig};
use weft_integration::{ping_until, Lab};

/// Two namespace names whose attachments to `blue` hash to the same host interface name (FNV-1a, 32 bits: found
/// by a birthday search over `rv1-cN`).
const COLLIDING: [&str; 2] = ["rv1-c936228", "rv1-c1840014"];

/// An attach that fails because its host interface name is taken must not delete the interface that holds the
/// name: before the fix, the failed attach's cleanup deleted the other attachment's veth pair by name, cutting
/// that endpoint off its network.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_colliding_attach_fails_without_breaking_the_attachment_it_collides_with() -> Result<()> {
    let host_name = host_interface_name(COLLIDING[0], "blue");
    ensure!(host_name == host_interface_name(COLLIDING[1], "blue"), "the two names no longer collide");
    let lab = Lab::up("rv1", 1, 0, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    let config = WeftConfig::with_gossip(&lab, 1, &[("blue", 100)], &certs[0], &[1]);
    let _daemon = start_weft(&lab, 1, &config.to_toml())?;
    for ns in COLLIDING {
        add_netns(ns)?;
    }
    let host_ns = lab.host(1).ns;

    let first = attach(&lab, 1, COLLIDING[0], "blue", None, None)?;
    ensure!(first["host_interface"] == host_name.as_str(), "first attachment: {first}");
    let gateway: IpAddr = first["gateway"].as_str().context("gateway")?.parse()?;
    ping_until(COLLIDING[0], gateway, Duration::from_secs(10))?;

    let second = attach(&lab, 1, COLLIDING[1], "blue", None, None);
    let error = format!("{:#}", second.expect_err("the second attach must fail: its host interface name is taken"));
    ensure!(error.contains(&host_name) && error.contains("already exists"), "unexpected error: {error}");

    ensure!(links(&host_ns)?.contains(&host_name), "the first attachment's {host_name} was deleted");
    ensure!(links(COLLIDING[0])?.contains(&"eth0".to_owned()), "the first attachment lost its eth0");
    ensure!(links(COLLIDING[1])? == ["lo"], "the failed attach left links in {}", COLLIDING[1]);
    ping_until(COLLIDING[0], gateway, Duration::from_secs(5))?;

    detach(&lab, 1, COLLIDING[0], "blue")?;
    ensure!(!links(&host_ns)?.contains(&host_name), "detach left {host_name}");
    Ok(())
}

/// A namespace on two networks has one resolv.conf, written by the first attach (the second finds it). Detaching
/// the first network must not leave the namespace without one: before the fix, the file was deleted and the
/// namespace, still on the second network, had no DNS configuration.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn detaching_the_network_that_wrote_resolv_conf_hands_it_to_the_other() -> Result<()> {
    const NS: &str = "rv2-c1";
    let lab = Lab::up("rv2", 1, 0, &["blue", "red"])?;
    let (_, certs) = lab_pki(&lab)?;
    let config = WeftConfig::with_gossip(&lab, 1, &[("blue", 100), ("red", 200)], &certs[0], &[1]);
    let _daemon = start_weft(&lab, 1, &config.to_toml())?;
    add_netns(NS)?;
    let resolv_conf = std::path::Path::new("/etc/netns").join(NS).join("resolv.conf");
    let blue = attach(&lab, 1, NS, "blue", None, None)?;
    let red = attach(&lab, 1, NS, "red", None, None)?;
    let (blue_gateway, red_gateway) =
        (blue["gateway"].as_str().context("gateway")?, red["gateway"].as_str().context("gateway")?);
    ensure!(blue_gateway != red_gateway, "two networks, two gateways: {blue_gateway}");
    let text = std::fs::read_to_string(&resolv_conf).context("attach wrote no resolv.conf")?;
    ensure!(text.contains(&format!("nameserver {blue_gateway}")), "after the first attach: {text}");

    detach(&lab, 1, NS, "blue")?;
    let text =
        std::fs::read_to_string(&resolv_conf).context("detaching blue left the namespace without resolv.conf")?;
    ensure!(text.contains(&format!("nameserver {red_gateway}")), "after detaching blue: {text}");

    detach(&lab, 1, NS, "red")?;
    ensure!(!resolv_conf.exists(), "the last detach left {}", resolv_conf.display());
    Ok(())
}

/// The host end of an attachment left by a weft that was killed (no detach) is in the way of attaching that
/// namespace again; no attachment of the running daemon holds it, so attach removes it and goes on (as it did by
/// accident before the collision fix, by deleting whatever held the name).
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn an_interface_left_by_a_killed_weft_is_replaced() -> Result<()> {
    const NS: &str = "rv3-c1";
    let lab = Lab::up("rv3", 1, 0, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    let config = WeftConfig::with_gossip(&lab, 1, &[("blue", 100)], &certs[0], &[1]);
    let _daemon = start_weft(&lab, 1, &config.to_toml())?;
    add_netns(NS)?;
    let host_ns = lab.host(1).ns;
    let host_name = host_interface_name(NS, "blue");
    let out = std::process::Command::new("ip")
        .args(["-n", &host_ns, "link", "add", &host_name, "type", "veth", "peer", "name", "rv3stale"])
        .output()?;
    ensure!(out.status.success(), "ip link add: {}", String::from_utf8_lossy(&out.stderr));

    let attachment = attach(&lab, 1, NS, "blue", None, None)?;
    ensure!(attachment["host_interface"] == host_name.as_str(), "attachment: {attachment}");
    let links = links(&host_ns)?;
    ensure!(!links.contains(&"rv3stale".to_owned()), "the stale pair is still there: {links:?}");
    let gateway: IpAddr = attachment["gateway"].as_str().context("gateway")?.parse()?;
    ping_until(NS, gateway, Duration::from_secs(10))?;
    detach(&lab, 1, NS, "blue")?;
    Ok(())
}
