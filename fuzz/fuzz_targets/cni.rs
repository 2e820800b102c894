//! The CNI plugin's inputs (weft::cni): the `CNI_*` environment and the network configuration on stdin.
//!
//! Input: `NAME=VALUE` lines (the environment) up to the first NUL byte, then stdin.
//!
//! Invariants: nothing panics and every error renders as a CNI error document; an accepted environment has the
//! variables its command needs, a spec-valid container ID, a valid interface name, an absolute namespace path and
//! `CNI_ARGS` keys that are not empty; an accepted configuration speaks a supported version, names a valid network
//! and a weft network, and has a DNS-label service, an `auto` or IPv4 `ip` and an object `prevResult`; VERSION
//! always answers a supported version; and CHECK accepts what ADD returned (ADD's result as `prevResult`, for an
//! attachment with the invocation's interface and namespace), while GC never lists a valid attachment as stale.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use weft::cni::{self, Command, Env, NetConf, SUPPORTED_VERSIONS};
use weft::services::attach::Attachment;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (env_bytes, stdin) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let vars: HashMap<String, String> = String::from_utf8_lossy(env_bytes)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

    let version = cni::version_result(stdin);
    let answered = version["cniVersion"].as_str().expect("VERSION answers a version");
    assert!(SUPPORTED_VERSIONS.contains(&answered));

    let env = Env::parse(|name| vars.get(name).cloned());
    let conf = NetConf::parse(stdin);
    if let Err(e) = &env {
        let _ = e.to_json(cni::LATEST_VERSION).to_string();
    }
    if let Err(e) = &conf {
        let _ = e.to_json(cni::LATEST_VERSION).to_string();
    }
    if let Ok(env) = &env {
        let needs_all = matches!(env.command, Command::Add | Command::Check);
        if needs_all || env.command == Command::Del {
            assert!(env.container_id.is_some() && env.ifname.is_some() && !env.path.is_empty());
        }
        if needs_all {
            assert!(env.netns.is_some());
        }
        if let Some(id) = &env.container_id {
            assert!(id.starts_with(|c: char| c.is_ascii_alphanumeric()), "container ID {id:?}");
        }
        if let Some(netns) = &env.netns {
            assert!(netns.starts_with('/'));
        }
        assert!(env.args.iter().all(|(k, _)| !k.is_empty()));
        if let Some(ifname) = &env.ifname {
            assert!(
                (1..=15).contains(&ifname.len()) && !ifname.contains(['/', ':']) && ifname != "." && ifname != ".."
            );
        }
        if let Some(name) = env.endpoint_name() {
            // `<pod>.<namespace>`: labels, 253 characters at most, the namespace the last; the pod alone is a label.
            assert!(name.len() <= 253 && name.split('.').all(dns_label), "endpoint name {name:?}");
            assert!(!name.split('.').next().is_some_and(|l| l.eq_ignore_ascii_case("tasks")), "{name:?}");
            match env.arg("K8S_POD_NAMESPACE") {
                Some(namespace) => assert!(name.ends_with(&format!(".{namespace}")), "{name:?} in {namespace:?}"),
                None => assert!(dns_label(&name), "endpoint name {name:?}"),
            }
        }
    }
    let Ok(conf) = conf else { return };
    assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
    assert!(!conf.network.is_empty() && !conf.name.is_empty());
    if let Some(service) = &conf.service {
        assert!(dns_label(service), "service {service:?}");
    }
    assert!(conf.prev_result.as_ref().is_none_or(|p| p.is_object()));
    if let Some(ip) = &conf.ip {
        assert!(ip == "auto" || ip.parse::<Ipv4Addr>().is_ok());
    }
    let Ok(env) = env else { return };
    let _ = cni::attach_params(&env, &conf).to_string();

    // ADD's result for an attachment where the invocation says, then CHECK against it.
    let (Some(netns), Some(ifname)) = (env.netns.clone(), env.ifname.clone()) else { return };
    let ip = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2));
    let attachment = Attachment {
        network: conf.network.clone(),
        vni: 100,
        netns,
        interface: ifname,
        host_interface: "wv0123456789".into(),
        mac: "02:00:00:00:00:02".into(),
        address: "198.19.0.2/24".into(),
        ip,
        prefix_len: 24,
        gateway: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
        default_route: true,
        dns: vec![IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1))],
        domain: "weft".into(),
        mtu: 1400,
        name: env.endpoint_name(),
        service: conf.service.clone(),
        resolv_conf: None,
        container_id: env.container_id.clone(),
    };
    let result = cni::add_result(&conf, &attachment);
    let mut checked = conf.clone();
    checked.prev_result = Some(result);
    if let Err(e) = cni::check_attachment(&env, &checked, &attachment) {
        panic!("CHECK refused ADD's own result: {e}");
    }
    let stale = cni::stale_attachments(&conf, std::slice::from_ref(&attachment));
    let valid = env.container_id.as_ref().map(|id| (id.clone(), attachment.interface.clone()));
    if valid.is_some_and(|v| conf.valid_attachments.contains(&v)) {
        assert!(stale.is_empty(), "GC listed a valid attachment: {stale:?}");
    }
});

/// RFC 1035 §2.3.1, as weft restricts names: 1 to 63 letters, digits and '-', not starting or ending with '-'.
fn dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
