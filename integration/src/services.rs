//! Helpers for the services tests: bare endpoint namespaces, `weft attach`/`detach` through the CLI, the
//! "internet" namespace on the underlay, and checks that an endpoint left nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

pub use crate::weft::weft_json;
use crate::{exec, exec_stdout, run, Lab};

/// The "internet": a namespace `<lab>-inet` on the underlay switch with this address.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

/// Creates a bare namespace `name` (lo only). The lab's teardown deletes it when it starts with `<lab>-`.
pub fn add_netns(name: &str) -> Result<()> {
    let out = run("ip", &["netns", "add", name])?;
    ensure!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Adds `<lab>-inet` with [`INTERNET`] on the lab's underlay switch.
pub fn add_internet(lab: &Lab) -> Result<String> {
    let ns = format!("{}-inet", lab.name());
    let switch = format!("{}-ul", lab.name());
    add_netns(&ns)?;
    let steps: [&[&str]; 6] = [
        &["-n", &switch, "link", "add", "pinet", "type", "veth", "peer", "name", "eth0", "netns", &ns],
        &["-n", &switch, "link", "set", "pinet", "master", "br0", "up"],
        &["-n", &ns, "addr", "add", "198.18.0.200/24", "dev", "eth0"],
        &["-n", &ns, "link", "set", "eth0", "up"],
        &["-n", &ns, "link", "set", "lo", "up"],
        &["-n", &ns, "route", "show"],
    ];
    for args in steps {
        let out = run("ip", args)?;
        ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(ns)
}

/// `weft attach <netns> --network <network> [--name] [--service]` on host `i`; returns the attachment.
pub fn attach(
    lab: &Lab,
    i: usize,
    netns: &str,
    network: &str,
    name: Option<&str>,
    service: Option<&str>,
) -> Result<Value> {
    let mut args = vec!["attach", netns, "--network", network];
    if let Some(name) = name {
        args.extend(["--name", name]);
    }
    if let Some(service) = service {
        args.extend(["--service", service]);
    }
    weft_json(&lab.api_socket(i), &args)
}

/// `weft detach <netns> --network <network>` on host `i`.
pub fn detach(lab: &Lab, i: usize, netns: &str, network: &str) -> Result<Value> {
    weft_json(&lab.api_socket(i), &["detach", netns, "--network", network])
}

/// One request on a daemon's API socket directly (no CLI process): `method` with `params` (`Value::Null` for
/// none); returns the answer, or an error carrying the daemon's `{"error": ...}` message. For drivers that make
/// many requests, where a process per request would cost more than the request.
pub fn api_request(socket: &Path, method: &str, params: Value) -> Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = serde_json::json!({ "method": method });
    if !params.is_null() {
        request["params"] = params;
    }
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).with_context(|| format!("reading the answer to {method}"))?;
    let answer: Value = serde_json::from_str(&line).with_context(|| format!("{method}: answer {line:?}"))?;
    if let Some(error) = answer.get("error") {
        bail!("{method} failed: {}", error.as_str().unwrap_or_default());
    }
    Ok(answer)
}

/// The address an attachment got.
pub fn attached_ip(attachment: &Value) -> Result<Ipv4Addr> {
    attachment["ip"].as_str().context("attachment without ip")?.parse().context("attachment ip")
}

/// The links of namespace `ns` (names, `ip -j link`).
pub fn links(ns: &str) -> Result<Vec<String>> {
    let out = exec_stdout(ns, &["ip", "-j", "link", "show"])?;
    let links: Vec<Value> = serde_json::from_str(&out).context("ip -j link")?;
    Ok(links.iter().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect())
}

/// Asserts that the namespace holds nothing of an attachment any more: only `lo`, no global address, no route.
pub fn assert_bare(ns: &str) -> Result<()> {
    ensure!(links(ns)? == ["lo"], "[{ns}] links left after detach: {:?}", links(ns)?);
    let addrs = exec_stdout(ns, &["ip", "-4", "addr", "show", "scope", "global"])?;
    ensure!(addrs.trim().is_empty(), "[{ns}] addresses left after detach: {addrs}");
    let routes = exec_stdout(ns, &["ip", "-4", "route", "show"])?;
    ensure!(routes.trim().is_empty(), "[{ns}] routes left after detach: {routes}");
    ensure!(!Path::new("/etc/netns").join(ns).exists(), "[{ns}] /etc/netns/{ns} left after detach");
    Ok(())
}

/// The host-side veth ends of attachments (`wv*`) on host namespace `ns`.
pub fn host_veths(ns: &str) -> Result<Vec<String>> {
    Ok(links(ns)?.into_iter().filter(|l| l.starts_with("wv")).collect())
}

/// The endpoints of `weft services` on host `i` with a name, as (name, ips).
pub fn named_endpoints(lab: &Lab, i: usize) -> Result<Vec<(String, Vec<IpAddr>)>> {
    let v = weft_json(&lab.api_socket(i), &["services"])?;
    let mut out = Vec::new();
    for e in v["endpoints"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let ips = e["ips"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse().ok()).collect();
        out.push((name.to_owned(), ips));
    }
    Ok(out)
}

/// `dig +short` inside `ns` (at `server` if given): the answer lines.
pub fn dig_short(ns: &str, server: Option<IpAddr>, args: &[&str]) -> Result<Vec<String>> {
    let at = server.map(|s| format!("@{s}"));
    let mut full = vec!["dig", "+short", "+tries=1", "+time=3"];
    full.extend(at.as_deref());
    full.extend_from_slice(args);
    let mut lines: Vec<String> = exec_stdout(ns, &full)?.lines().map(str::to_owned).collect();
    lines.sort();
    Ok(lines)
}

/// The response status of a `dig` inside `ns` (`NOERROR`, `NXDOMAIN`, `SERVFAIL`...).
pub fn dig_status(ns: &str, server: IpAddr, name: &str) -> Result<String> {
    let at = format!("@{server}");
    let out = exec(ns, &["dig", "+tries=1", "+time=5", &at, name])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .map(str::to_owned)
        .with_context(|| format!("[{ns}] dig {name}: no status in {text}"))
}

/// The MAC of host `i`'s bridge for network `net` (the lab's `br-<net>`), lower case.
pub fn bridge_mac(lab: &Lab, i: usize, net: &str) -> Result<String> {
    let info = crate::weft::link_info(&lab.host(i).ns, &format!("br-{net}"))?.context("no bridge")?;
    Ok(info.mac.to_ascii_lowercase())
}

/// What host `i` holds about the MACs in `macs` (bridges' MACs): the endpoint records of its directory (`weft
/// services`), its FDB rows, and its local endpoints (`weft endpoints`) that carry one of them.
pub fn records_of_macs(lab: &Lab, i: usize, macs: &[String]) -> Result<(Vec<Value>, Vec<Value>, Vec<Value>)> {
    let socket = lab.api_socket(i);
    let ours = |v: &Value| v["mac"].as_str().is_some_and(|m| macs.contains(&m.to_ascii_lowercase()));
    let of = |method: &str, field: &str| -> Result<Vec<Value>> {
        let answer = weft_json(&socket, &[method])?;
        Ok(answer[field].as_array().into_iter().flatten().filter(|v| ours(v)).cloned().collect())
    };
    Ok((of("services", "endpoints")?, of("fdb", "fdb")?, of("endpoints", "local")?))
}
