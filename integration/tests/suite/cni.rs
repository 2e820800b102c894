//! The CNI plugin `weft-cni`, driven exactly as a container runtime drives it: `CNI_*` environment variables, the
//! network configuration on stdin, the result or error on stdout. Two hosts with gossip; one container namespace
//! is named (`/var/run/netns/X`), the other is a process's anonymous namespace (`/proc/PID/ns/net`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use weft_integration::services::{add_netns, assert_bare, attach, detach, dig_short, named_endpoints, weft_json};
use weft_integration::weft::{lab_pki, start_weft, wait_members, WeftConfig};
use weft_integration::{exec_stdout, ping_until, wait_until, weft_bin, Daemon, Lab};

const VNI: u32 = 100;
const DEADLINE: Duration = Duration::from_secs(15);

/// One plugin run: exit status and stdout (parsed; `Null` when empty).
struct Outcome {
    ok: bool,
    stdout: Value,
    stderr: String,
}

/// Runs `weft-cni` in host `i`'s namespace as a runtime would: a clean environment with `env`, `config` on stdin.
fn cni(lab: &Lab, i: usize, env: &[(&str, &str)], config: &Value) -> Result<Outcome> {
    let plugin = weft_bin().with_file_name("weft-cni");
    ensure!(plugin.is_file(), "no plugin at {} (cargo build --release -p weft)", plugin.display());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.host(i).ns])
        .arg(&plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run weft-cni")?;
    child.stdin.take().context("stdin")?.write_all(&serde_json::to_vec(config)?)?;
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let stdout = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("weft-cni printed no JSON: {text}"))?
    };
    Ok(Outcome { ok: output.status.success(), stdout, stderr: String::from_utf8_lossy(&output.stderr).into() })
}

/// The variables of `command` for a container.
fn vars<'a>(command: &'a str, id: &'a str, netns: &'a str, ifname: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("CNI_COMMAND", command), ("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname)];
    env.extend([("CNI_NETNS", netns), ("CNI_ARGS", args), ("CNI_PATH", "/opt/cni/bin")]);
    env
}

/// The network configuration a runtime derives from /etc/cni/net.d/10-weft.conflist for host `i`.
fn config(lab: &Lab, i: usize, version: &str) -> Value {
    json!({
        "cniVersion": version, "name": "weftnet", "type": "weft-cni", "network": "blue",
        "socket": lab.api_socket(i), "service": "web",
    })
}

/// Runs `command`, which must succeed; returns its stdout.
fn must(lab: &Lab, i: usize, env: &[(&str, &str)], config: &Value) -> Result<Value> {
    let out = cni(lab, i, env, config)?;
    ensure!(out.ok, "weft-cni {env:?} failed: {} {}", out.stdout, out.stderr);
    Ok(out.stdout)
}

/// Runs `command`, which must fail with a CNI error of `code`; returns the error's message.
fn must_fail(lab: &Lab, i: usize, env: &[(&str, &str)], config: &Value, code: u64) -> Result<String> {
    let out = cni(lab, i, env, config)?;
    ensure!(!out.ok, "weft-cni {env:?} succeeded: {}", out.stdout);
    let e = &out.stdout;
    ensure!(e["cniVersion"].is_string() && e["msg"].is_string(), "not a CNI error: {e}");
    ensure!(e.get("details").is_none_or(Value::is_string), "details must be a string: {e}");
    ensure!(e["code"].as_u64() == Some(code), "expected code {code}: {e}");
    Ok(e["msg"].as_str().unwrap_or_default().to_owned())
}

/// Checks a CNI 1.0 ADD result field by field (types and required keys as the spec has them) and returns the
/// container's address.
fn check_result(result: &Value, ifname: &str, sandbox: &str) -> Result<Ipv4Addr> {
    ensure!(result["cniVersion"] == "1.0.0", "cniVersion: {result}");
    let interfaces = result["interfaces"].as_array().context("interfaces must be a list")?;
    for i in interfaces {
        ensure!(i["name"].is_string(), "interface without a name: {i}");
        for key in ["mac", "sandbox"] {
            ensure!(i.get(key).is_none_or(Value::is_string), "interface {key} must be a string: {i}");
        }
    }
    let ips = result["ips"].as_array().context("ips must be a list")?;
    ensure!(ips.len() == 1, "one address expected: {result}");
    let ip = &ips[0];
    let index = ip["interface"].as_u64().context("ips[0].interface must be an index")? as usize;
    let container = interfaces.get(index).context("ips[0].interface points past interfaces")?;
    ensure!(container["name"] == ifname && container["sandbox"] == sandbox, "ips[0] is not on {ifname}: {result}");
    let mac = container["mac"].as_str().context("the container interface has no mac")?;
    ensure!(mac.len() == 17 && mac.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()), "mac {mac}");
    let (addr, prefix) = ip["address"].as_str().and_then(|a| a.split_once('/')).context("address must be CIDR")?;
    let addr: Ipv4Addr = addr.parse()?;
    ensure!(prefix == "24" && addr.octets()[..3] == [198, 19, 0], "address {addr}/{prefix}");
    ensure!(ip["gateway"] == "198.19.0.1", "gateway: {ip}");
    let routes = result["routes"].as_array().context("routes must be a list")?;
    ensure!(routes == &[json!({ "dst": "0.0.0.0/0", "gw": "198.19.0.1" })], "routes: {result}");
    let dns = &result["dns"];
    ensure!(dns["nameservers"] == json!(["198.19.0.1"]), "dns: {dns}");
    ensure!(dns["search"] == json!(["weft"]) && dns["domain"] == "weft", "dns: {dns}");
    Ok(addr)
}

/// Runs a program to completion.
fn run(program: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("cannot run {program}"))
}

/// The IPv4 addresses of `ifname` in the namespace reached by `enter` (a command prefix).
fn addresses(enter: &[&str], ifname: &str) -> Result<Vec<String>> {
    let mut args = enter.to_vec();
    args.extend(["ip", "-j", "-4", "addr", "show", "dev", ifname]);
    let out = run(args[0], &args[1..])?;
    ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let links: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
        .collect())
}

/// A process in a namespace of its own (`unshare --net`), started from host `i`: the container of a runtime that
/// does not name its namespaces.
fn anonymous_container(lab: &Lab, i: usize) -> Result<(Daemon, String)> {
    let process = lab.spawn(&lab.host(i).ns, &["unshare", "--net", "sleep", "300"])?;
    let pid = process.pid();
    wait_until(DEADLINE, "unshare to exec sleep", || {
        Ok(std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"))
    })?;
    Ok((process, format!("/proc/{pid}/ns/net")))
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_runtime_adds_checks_and_deletes_containers_on_two_hosts() -> Result<()> {
    let lab = Lab::up("cn1", 2, 0, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    let mut daemons = Vec::new();
    for i in 1..=2 {
        let config = WeftConfig::with_gossip(&lab, i, &[("blue", VNI)], &certs[i - 1], &[1, 2]);
        daemons.push(start_weft(&lab, i, &config.to_toml())?);
    }
    wait_members(&lab, &[1, 2], DEADLINE)?;

    // VERSION and STATUS (1.1).
    let version = must(&lab, 1, &[("CNI_COMMAND", "VERSION")], &json!({ "cniVersion": "1.0.0" }))?;
    ensure!(version["cniVersion"] == "1.0.0", "VERSION: {version}");
    ensure!(version["supportedVersions"].as_array().is_some_and(|v| v.contains(&json!("1.0.0"))), "{version}");
    ensure!(must(&lab, 1, &[("CNI_COMMAND", "STATUS")], &config(&lab, 1, "1.1.0"))?.is_null());

    // Container 1: a named namespace on host 1, interface net0, a Kubernetes pod name.
    let c1_netns = "/var/run/netns/cn1-c1";
    add_netns("cn1-c1")?;
    let pod = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=c0ffee01";
    let c1 = |command| vars(command, "c0ffee01", c1_netns, "net0", pod);
    let conf1 = config(&lab, 1, "1.0.0");
    let start = Instant::now();
    let result1 = must(&lab, 1, &c1("ADD"), &conf1)?;
    eprintln!("ADD (first on host 1, claims an address block): {} ms", start.elapsed().as_millis());
    eprintln!("result: {result1}");
    let ip1 = check_result(&result1, "net0", c1_netns)?;
    let in_c1 = ["ip", "netns", "exec", "cn1-c1"];
    ensure!(addresses(&in_c1, "net0")? == [format!("{ip1}/24")], "net0 in cn1-c1: {:?}", addresses(&in_c1, "net0"));

    // Container 2: a process's namespace on host 2, eth0.
    let (c2_process, c2_netns) = anonymous_container(&lab, 2)?;
    let c2 = |command| vars(command, "c0ffee02", &c2_netns, "eth0", "");
    let conf2 = config(&lab, 2, "1.0.0");
    let result2 = must(&lab, 2, &c2("ADD"), &conf2)?;
    let ip2 = check_result(&result2, "eth0", &c2_netns)?;
    ensure!(ip1 != ip2, "both containers got {ip1}");
    let enter_c2 = format!("--net={c2_netns}");
    let in_c2 = ["nsenter", enter_c2.as_str()];
    ensure!(addresses(&in_c2, "eth0")? == [format!("{ip2}/24")], "eth0 in {c2_netns}");

    // CHECK with the ADD result as prevResult, as the runtime passes it.
    let with_prev = |conf: &Value, result: &Value| {
        let mut conf = conf.clone();
        conf["prevResult"] = result.clone();
        conf
    };
    ensure!(must(&lab, 1, &c1("CHECK"), &with_prev(&conf1, &result1))?.is_null());
    ensure!(must(&lab, 2, &c2("CHECK"), &with_prev(&conf2, &result2))?.is_null());
    // A prevResult that does not match what is there fails CHECK.
    let mut wrong = result1.clone();
    wrong["ips"][0]["address"] = json!("198.19.0.250/24");
    must_fail(&lab, 1, &c1("CHECK"), &with_prev(&conf1, &wrong), 101)?;

    // Reachable across the hosts, both ways; `<pod>.<namespace>` became the endpoint's name in the cluster.
    ping_until("cn1-c1", IpAddr::V4(ip2), DEADLINE)?;
    let ping = run("nsenter", &[&enter_c2, "ping", "-c", "1", "-W", "2", &ip1.to_string()])?;
    ensure!(ping.status.success(), "ping {ip1} from container 2: {}", String::from_utf8_lossy(&ping.stdout));
    wait_until(DEADLINE, "host 2 to know web-1.default", || {
        Ok(named_endpoints(&lab, 2)?.contains(&("web-1.default".to_owned(), vec![IpAddr::V4(ip1)])))
    })?;

    // GC (1.1): a container the runtime no longer lists is detached; the listed one, and an endpoint put there with
    // `weft attach` (no container ID), stay.
    add_netns("cn1-c3")?;
    add_netns("cn1-c4")?;
    let start = Instant::now();
    must(&lab, 1, &vars("ADD", "c0ffee03", "/var/run/netns/cn1-c3", "eth0", ""), &conf1)?;
    eprintln!("ADD (second on host 1): {} ms", start.elapsed().as_millis());
    attach(&lab, 1, "cn1-c4", "blue", None, None)?;
    let mut gc = config(&lab, 1, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "c0ffee01", "ifname": "net0" }]);
    ensure!(must(&lab, 1, &[("CNI_COMMAND", "GC")], &gc)?.is_null());
    assert_bare("cn1-c3")?;
    let kept = weft_json(&lab.api_socket(1), &["attachments"])?;
    let kept: Vec<&str> =
        kept["attachments"].as_array().into_iter().flatten().filter_map(|a| a["netns"].as_str()).collect();
    ensure!(kept == ["/var/run/netns/cn1-c1", "cn1-c4"], "after GC: {kept:?}");
    detach(&lab, 1, "cn1-c4", "blue")?;

    // DEL on a daemon that never saw the container, then DEL twice where it is: all succeed.
    ensure!(must(&lab, 2, &c1("DEL"), &with_prev(&conf2, &result1))?.is_null());
    let start = Instant::now();
    ensure!(must(&lab, 1, &c1("DEL"), &with_prev(&conf1, &result1))?.is_null());
    eprintln!("DEL: {} ms", start.elapsed().as_millis());
    ensure!(must(&lab, 1, &c1("DEL"), &with_prev(&conf1, &result1))?.is_null());
    assert_bare("cn1-c1")?;
    let msg = must_fail(&lab, 1, &c1("CHECK"), &with_prev(&conf1, &result1), 3)?;
    ensure!(msg.contains("c0ffee01"), "CHECK after DEL: {msg}");
    wait_until(DEADLINE, "host 2 to forget web-1.default", || {
        Ok(!named_endpoints(&lab, 2)?.iter().any(|(name, _)| name == "web-1.default"))
    })?;

    // Container 2's process exits, taking its namespace: DEL (with the stale path) still succeeds, twice.
    c2_process.stop()?;
    ensure!(!PathBuf::from(&c2_netns).exists(), "{c2_netns} outlived its process");
    ensure!(must(&lab, 2, &c2("DEL"), &conf2)?.is_null());
    ensure!(must(&lab, 2, &c2("DEL"), &conf2)?.is_null());
    must_fail(&lab, 2, &c2("CHECK"), &with_prev(&conf2, &result2), 3)?;
    for i in 1..=2 {
        let left = weft_json(&lab.api_socket(i), &["attachments"])?;
        ensure!(left["attachments"].as_array().is_some_and(Vec::is_empty), "host {i} still lists {left}");
        let host_links = exec_stdout(&lab.host(i).ns, &["ip", "-o", "link", "show"])?;
        ensure!(!host_links.contains(" wv"), "host {i} kept a veth: {host_links}");
    }

    // Errors a runtime can meet: an old config version, a missing variable, no daemon (try again later; DEL is
    // still a success).
    must_fail(&lab, 1, &c1("ADD"), &config(&lab, 1, "0.4.0"), 1)?;
    let missing: Vec<_> = c1("ADD").into_iter().filter(|(k, _)| *k != "CNI_NETNS").collect();
    ensure!(must_fail(&lab, 1, &missing, &conf1, 4)?.contains("CNI_NETNS"));
    let mut nowhere = conf1.clone();
    nowhere["socket"] = json!(lab.dir().join("nobody.sock"));
    must_fail(&lab, 1, &c1("ADD"), &nowhere, 11)?;
    must_fail(&lab, 1, &[("CNI_COMMAND", "STATUS")], &nowhere, 50)?;
    ensure!(must(&lab, 1, &c1("DEL"), &nowhere)?.is_null());
    drop(daemons);
    Ok(())
}

/// Two pods of one name in two Kubernetes namespaces on one network and host: both ADDs succeed, each named
/// `<pod>.<namespace>` and resolvable. Before, both were named by the pod name alone and the second ADD failed
/// with 100 ("the name is already used") for as long as the first pod lived.
#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn pods_of_one_name_in_two_kubernetes_namespaces_are_both_added() -> Result<()> {
    let lab = Lab::up("rv4", 1, 0, &["blue"])?;
    let (_, certs) = lab_pki(&lab)?;
    let weft = WeftConfig::with_gossip(&lab, 1, &[("blue", VNI)], &certs[0], &[1]);
    let _daemon = start_weft(&lab, 1, &weft.to_toml())?;
    let conf = config(&lab, 1, "1.0.0");
    let mut pods = Vec::new();
    for (id, namespace) in [("c0ffee41", "prod"), ("c0ffee42", "staging")] {
        let netns = format!("rv4-{namespace}");
        add_netns(&netns)?;
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=db-0");
        let path = format!("/var/run/netns/{netns}");
        let result = must(&lab, 1, &vars("ADD", id, &path, "eth0", &args), &conf)?;
        let ip = check_result(&result, "eth0", &path)?;
        pods.push((id, netns, path, args, ip));
    }
    let (prod_ip, staging_ip) = (pods[0].4, pods[1].4);
    ensure!(prod_ip != staging_ip, "both pods got {prod_ip}");
    let mut named = named_endpoints(&lab, 1)?;
    named.sort();
    let expected = [("db-0.prod", prod_ip), ("db-0.staging", staging_ip)]
        .map(|(name, ip)| (name.to_owned(), vec![IpAddr::V4(ip)]));
    ensure!(named == expected, "endpoint names: {named:?}");
    // The prod pod finds its namesake in staging by the namespaced name, through the gateway's DNS.
    let gateway = Some(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)));
    let answer = dig_short(&pods[0].1, gateway, &["db-0.staging.weft", "A"])?;
    ensure!(answer == [staging_ip.to_string()], "db-0.staging.weft from prod: {answer:?}");
    for (id, netns, path, args, _) in &pods {
        ensure!(must(&lab, 1, &vars("DEL", id, path, "eth0", args), &conf)?.is_null());
        assert_bare(netns)?;
    }
    Ok(())
}
