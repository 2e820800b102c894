//! Tests of the lab and the harness themselves; none of them runs weft.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{ensure, Result};
use weft_integration::{
    exec_stdout, lab_sh, netns_list, ping, ping_received, ping_until, require_root, tshark_fields, wait_until, Capture,
    Lab,
};

fn lab_namespaces(name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}-");
    Ok(netns_list()?.into_iter().filter(|ns| ns.starts_with(&prefix)).collect())
}

/// Containers on one host and net reach each other through the host's bridge; nothing crosses hosts without
/// weft; and dropping the Lab removes all its namespaces.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn lab_bridges_local_containers_and_isolates_hosts() -> Result<()> {
    require_root()?;
    let name = "labt1";
    {
        let lab = Lab::up(name, 2, 2, &["blue", "red"])?;
        // 1 switch + 2 hosts + 2 hosts * 2 nets * 2 containers.
        assert_eq!(lab_namespaces(name)?.len(), 1 + 2 + 8);

        let (h1, h2) = (lab.host(1), lab.host(2));
        assert_eq!(h2.underlay.to_string(), "198.18.0.2");
        ping(&h1.ns, h2.underlay.into(), 2)?;

        for net in ["blue", "red"] {
            let a = lab.container(1, net, 1);
            let b = lab.container(1, net, 2);
            let far = lab.container(2, net, 1);

            // The harness's idea of the addresses is what lab.sh configured.
            let addrs = exec_stdout(&b.ns, &["ip", "-brief", "addr", "show", "dev", "eth0"])?;
            ensure!(addrs.contains(&format!("{}/24", b.ipv4)), "{addrs}");
            ensure!(addrs.contains(&format!("{}/64", b.ipv6)), "{addrs}");
            let link = exec_stdout(&b.ns, &["ip", "-brief", "link", "show", "dev", "eth0"])?;
            ensure!(link.contains(&b.mac), "{link}");

            ping(&a.ns, b.ipv4.into(), 3)?;
            ping(&a.ns, b.ipv6.into(), 3)?;
            assert_eq!(ping_received(&a.ns, far.ipv4.into(), 2)?, 0, "{net}: h1 reached h2 over IPv4");
            assert_eq!(ping_received(&a.ns, far.ipv6.into(), 2)?, 0, "{net}: h1 reached h2 over IPv6");
        }
        let blue = lab.container(2, "blue", 2);
        assert_eq!(blue.ipv4.to_string(), "198.19.0.22");
        assert_eq!(blue.ipv6.to_string(), "2001:db8:19:0::22".parse::<std::net::Ipv6Addr>()?.to_string());
        assert_eq!(lab.container(1, "red", 2).mac, "02:19:01:00:01:02");
    }
    let left = lab_namespaces(name)?;
    assert!(left.is_empty(), "namespaces left after the Lab was dropped: {left:?}");
    Ok(())
}

/// `lab.sh down` of a lab that does not exist succeeds (every time), and `up` rejects bad arguments before it
/// creates anything.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn lab_down_of_a_missing_lab_succeeds() -> Result<()> {
    require_root()?;
    assert!(lab_namespaces("labnone")?.is_empty());
    lab_sh(&["down", "labnone"])?;
    lab_sh(&["down", "labnone"])?;
    for bad in [
        &["up", "LabUpper", "--hosts", "1"][..],
        &["up", "toolongname", "--hosts", "1"],
        &["up", "labbad", "--hosts", "201", "--containers", "0"],
        &["up", "labbad", "--hosts", "26"],
        &["up", "labbad", "--hosts", "2", "--nets", "blue blue"],
    ] {
        assert!(lab_sh(bad).is_err(), "lab.sh {bad:?} succeeded");
    }
    assert!(lab_namespaces("labbad")?.is_empty());
    Ok(())
}

/// Capture + tshark see the pings on a bridge port; spawned processes are logged, stopped and killed by PID,
/// and the Lab stops the ones still running when it is dropped.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn harness_captures_and_manages_processes() -> Result<()> {
    require_root()?;
    let lab = Lab::up("labt3", 1, 2, &["blue"])?;
    let host = lab.host(1);
    let (a, b) = (lab.container(1, "blue", 1), lab.container(1, "blue", 2));

    ping_until(&a.ns, b.ipv4.into(), Duration::from_secs(5))?;
    let capture = Capture::start(&host.ns, "v0c2", "icmp", &lab.dir().join("c2.pcap"))?;
    ping(&a.ns, b.ipv4.into(), 3)?;
    let pcap = capture.stop()?;
    let requests = tshark_fields(&pcap, "icmp.type == 8", &["ip.src", "ip.dst", "eth.src"])?;
    let expected = vec![a.ipv4.to_string(), b.ipv4.to_string(), a.mac.clone()];
    assert_eq!(requests, vec![expected; 3]);

    let forever = ["sh", "-c", "echo ready; exec tail -f /dev/null"];
    let stopped = lab.spawn(&host.ns, &forever)?;
    wait_until(Duration::from_secs(5), "the process to say ready", || Ok(stopped.log().contains("ready")))?;
    assert_eq!(stopped.stop()?.signal(), Some(15));
    assert_eq!(stopped.stop()?.signal(), Some(15), "stop() again returns the same status");

    let killed = lab.spawn(&b.ns, &forever)?;
    assert!(killed.exit_status()?.is_none());
    assert_eq!(killed.kill9()?.signal(), Some(9));

    let left_running = lab.spawn(&host.ns, &forever)?;
    drop(lab);
    assert_eq!(left_running.exit_status()?.and_then(|s| s.signal()), Some(15));
    assert!(lab_namespaces("labt3")?.is_empty());
    Ok(())
}

/// wait_until names what it waited for and carries the last error (no root needed).
#[test]
fn wait_until_reports_what_and_the_last_error() {
    let mut calls = 0;
    let e = wait_until(Duration::from_millis(120), "the impossible", || {
        calls += 1;
        anyhow::bail!("attempt {calls} failed")
    })
    .unwrap_err();
    let message = format!("{e:#}");
    assert!(message.contains("the impossible"), "{message}");
    assert!(message.contains(&format!("attempt {calls} failed")), "{message}");
    assert!(calls >= 2, "polled {calls} times");

    let mut n = 0;
    wait_until(Duration::from_secs(5), "three calls", || {
        n += 1;
        Ok(n == 3)
    })
    .unwrap();
}
