//! Three hosts, two containers each on net "blue": every container reaches every container on the other hosts over
//! IPv4 and IPv6 through weft, with ARP and neighbour discovery resolved across hosts by flooding, and the replies
//! sent as unicast to the VTEP weft learned.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weft_integration::weft::{counter, fdb, neighbour_mac, query, start_weft, WeftConfig};
use weft_integration::{ping, ping_until, Container, Lab};

const HOSTS: usize = 3;
const CONTAINERS: usize = 2;
const VNI: u32 = 100;

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn every_container_reaches_every_remote_container() -> Result<()> {
    let lab = Lab::up("thr3", HOSTS, CONTAINERS, &["blue"])?;
    for i in 1..=HOSTS {
        start_weft(&lab, i, &WeftConfig::for_host(&lab, i, &[("blue", VNI)]).to_toml())?;
    }
    let containers: Vec<(usize, Container)> = (1..=HOSTS)
        .flat_map(|i| (1..=CONTAINERS).map(move |c| (i, c)))
        .map(|(i, c)| (i, lab.container(i, "blue", c)))
        .collect();

    // One thread per source container: each pings the four containers of the other hosts, over both families.
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = containers
            .iter()
            .map(|(i, from)| {
                let targets: Vec<&Container> = containers.iter().filter(|(j, _)| j != i).map(|(_, to)| to).collect();
                scope.spawn(move || -> Result<()> {
                    for to in targets {
                        for addr in [IpAddr::V4(to.ipv4), IpAddr::V6(to.ipv6)] {
                            ping_until(&from.ns, addr, Duration::from_secs(10))?;
                            ping(&from.ns, addr, 3)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("ping thread panicked")?;
        }
        Ok(())
    })?;

    // ARP and ND crossed the hosts: each container holds every remote container's IPv4 and IPv6 address with that
    // container's own MAC (not some proxy's).
    for (i, from) in &containers {
        for (_, to) in containers.iter().filter(|(j, _)| j != i) {
            for addr in [IpAddr::V4(to.ipv4), IpAddr::V6(to.ipv6)] {
                let mac = neighbour_mac(&from.ns, addr)?;
                ensure!(
                    mac.as_deref() == Some(to.mac.as_str()),
                    "[{}] neighbour entry of {addr} is {mac:?}, expected {}",
                    from.ns,
                    to.mac
                );
            }
        }
    }

    for i in 1..=HOSTS {
        let stats = query(&lab, i, "stats")?;
        // Broadcast ARP and multicast ND were replicated to the peers; the replies and pings went unicast to the
        // VTEP learned from the peer's frames.
        ensure!(counter(&stats, "tx_flooded")? > 0, "host {i} flooded nothing: {stats}");
        ensure!(counter(&stats, "tx_unicast")? > 0, "host {i} sent no learned unicast: {stats}");
        ensure!(counter(&stats, "rx_frames")? > 0, "host {i} received nothing: {stats}");
        // At least the four remote containers (the remote bridges and TAPs send IPv6 MLD reports too).
        ensure!(counter(&stats, "learned")? >= 4, "host {i} learned fewer than 4 MACs: {stats}");
    }

    let table = fdb(&lab, 1)?;
    for (j, remote) in containers.iter().filter(|(j, _)| *j != 1) {
        let row = table
            .iter()
            .find(|row| row.mac == remote.mac)
            .with_context(|| format!("weft fdb on host 1 has no entry for {} (host {j}): {table:?}", remote.mac))?;
        ensure!(row.vni == u64::from(VNI), "{row:?}: wrong VNI");
        ensure!(row.vtep == lab.host(*j).underlay.to_string(), "{row:?}: expected VTEP {}", lab.host(*j).underlay);
        ensure!(row.origin == "learned", "{row:?}: expected a learned entry");
    }
    // Host 1's own containers are behind its TAP's bridge, never behind a remote VTEP.
    for (_, local) in containers.iter().filter(|(j, _)| *j == 1) {
        ensure!(
            table.iter().all(|row| row.mac != local.mac),
            "weft fdb on host 1 points its own container {} at a VTEP: {table:?}",
            local.mac
        );
    }
    Ok(())
}
