//! What a weft process does to its host over its life: the bridge and TAP it creates, what it removes on a clean
//! exit, what a crash leaves and how the next weft adopts it, and how it refuses bad configs and missing privileges
//! with a message naming the cause.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weft_integration::weft::{link_info, start_weft, wait_exit, WeftConfig};
use weft_integration::{exec, weft_bin, Lab};

const VNI: u32 = 100;
/// 1500-byte underlay less 20 (IPv4) + 8 (UDP) + 8 (VXLAN) + 14 (inner Ethernet).
const OVERLAY_MTU: u32 = 1450;
/// How long a daemon that must refuse to start gets to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// `setpriv` arguments that run the rest as user and group nobody with no capabilities at all.
const AS_NOBODY: &[&str] =
    &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"];
/// `setpriv` arguments that run the rest as root but without CAP_NET_ADMIN.
const ROOT_WITHOUT_NET_ADMIN: &[&str] = &["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"];

/// Host 1's blue config, with the bridge left to weft (`None`) or named.
fn config(lab: &Lab, bridge: Option<&str>) -> WeftConfig {
    let mut config = WeftConfig::for_host(lab, 1, &[("blue", VNI)]);
    config.networks[0].bridge = bridge.map(str::to_owned);
    config
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_clean_exit_removes_what_weft_created_and_only_that() -> Result<()> {
    let lab = Lab::up("lifea", 1, 0, &["blue"])?;
    let ns = lab.host(1).ns;

    // No bridge configured: weft makes weft-blue, marks it as its own, and puts its TAP in it.
    let weft = start_weft(&lab, 1, &config(&lab, None).to_toml())?;
    let bridge = link_info(&ns, "weft-blue")?.context("weft did not create bridge weft-blue")?;
    ensure!(bridge.kind.as_deref() == Some("bridge"), "weft-blue is a {:?}", bridge.kind);
    ensure!(bridge.alias.as_deref() == Some("weft:blue"), "weft-blue has alias {:?}", bridge.alias);
    let tap = link_info(&ns, "wft100")?.context("weft did not create TAP wft100")?;
    ensure!(tap.kind.as_deref() == Some("tun"), "wft100 is a {:?}", tap.kind);
    ensure!(tap.master.as_deref() == Some("weft-blue"), "wft100 is a port of {:?}", tap.master);
    ensure!(tap.mtu == OVERLAY_MTU, "wft100 has MTU {}, expected {OVERLAY_MTU}", tap.mtu);
    let status = weft.stop()?;
    ensure!(status.success(), "weft exited with {status} after SIGTERM:\n{}", weft.log());
    ensure!(link_info(&ns, "wft100")?.is_none(), "TAP wft100 outlived weft");
    ensure!(link_info(&ns, "weft-blue")?.is_none(), "bridge weft-blue outlived the weft that created it");
    ensure!(link_info(&ns, "br-blue")?.is_some(), "weft removed br-blue, which it never used");

    // An existing bridge: weft joins it and leaves it in place.
    let weft = start_weft(&lab, 1, &config(&lab, Some("br-blue")).to_toml())?;
    let tap = link_info(&ns, "wft100")?.context("weft did not create TAP wft100")?;
    ensure!(tap.master.as_deref() == Some("br-blue"), "wft100 is a port of {:?}", tap.master);
    ensure!(tap.mtu == OVERLAY_MTU, "wft100 has MTU {}, expected {OVERLAY_MTU}", tap.mtu);
    ensure!(link_info(&ns, "weft-blue")?.is_none(), "weft created weft-blue although br-blue was configured");
    let status = weft.stop()?;
    ensure!(status.success(), "weft exited with {status} after SIGTERM:\n{}", weft.log());
    ensure!(link_info(&ns, "wft100")?.is_none(), "TAP wft100 outlived weft");
    let bridge = link_info(&ns, "br-blue")?.context("weft removed br-blue, a bridge it did not create")?;
    ensure!(bridge.alias.is_none(), "weft marked br-blue, which is not its own, with alias {:?}", bridge.alias);
    Ok(())
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn a_crash_leaves_the_bridge_and_the_next_weft_adopts_it() -> Result<()> {
    let lab = Lab::up("lifeb", 1, 0, &["blue"])?;
    let ns = lab.host(1).ns;
    let toml = config(&lab, None).to_toml();

    let weft = start_weft(&lab, 1, &toml)?;
    ensure!(link_info(&ns, "wft100")?.is_some(), "weft did not create TAP wft100");
    weft.kill9()?;
    // The TAP is not persistent: the kernel removed it with the last descriptor. Nobody removed the bridge.
    ensure!(link_info(&ns, "wft100")?.is_none(), "TAP wft100 outlived the killed weft");
    let bridge = link_info(&ns, "weft-blue")?.context("bridge weft-blue vanished with the killed weft")?;
    ensure!(bridge.alias.as_deref() == Some("weft:blue"), "weft-blue has alias {:?}", bridge.alias);

    // The next weft finds its mark on the bridge (and the dead one's API socket), adopts it, and cleans up.
    let weft = start_weft(&lab, 1, &toml)?;
    ensure!(
        weft.log().contains("adopting a bridge"),
        "the restarted weft did not say it adopted weft-blue:\n{}",
        weft.log()
    );
    let tap = link_info(&ns, "wft100")?.context("the restarted weft did not create TAP wft100")?;
    ensure!(tap.master.as_deref() == Some("weft-blue"), "wft100 is a port of {:?}", tap.master);
    let status = weft.stop()?;
    ensure!(status.success(), "weft exited with {status} after SIGTERM:\n{}", weft.log());
    ensure!(link_info(&ns, "wft100")?.is_none(), "TAP wft100 outlived weft");
    ensure!(link_info(&ns, "weft-blue")?.is_none(), "the adopted bridge weft-blue outlived the weft that adopted it");
    Ok(())
}

/// One way to fail: the config text, the command prefix (empty, or setpriv to drop privileges), and the words the
/// error must contain.
struct Failure {
    what: &'static str,
    toml: String,
    prefix: &'static [&'static str],
    expected: &'static [&'static str],
    /// Whether `weft check` (no root needed) already rejects it: true for errors of the file alone.
    check_rejects: bool,
}

#[test]
#[ignore = "needs root: run scripts/test.sh"]
fn bad_configs_and_missing_privileges_fail_with_clear_messages() -> Result<()> {
    let lab = Lab::up("lifec", 1, 0, &["blue"])?;
    let ns = lab.host(1).ns;
    let good = config(&lab, None);
    let good_toml = good.to_toml();

    let mut not_on_host = good.clone();
    not_on_host.underlay = "198.18.0.77".parse()?;
    let mut duplicate_vni = good.clone();
    let mut red = duplicate_vni.networks[0].clone();
    red.name = "red".into();
    // Overlay subnets must be disjoint (blue has 198.19.1.0/24).
    red.subnet = "198.19.2.0/24".into();
    duplicate_vni.networks.push(red);
    // The first network is fine, so weft creates its bridge and TAP before it finds that the second's MTU does
    // not fit; it must take them down again.
    let mut too_big_mtu = duplicate_vni.clone();
    too_big_mtu.networks[1].vni = 200;
    too_big_mtu.networks[1].extra.push("mtu = 1500".into());
    let mut on_existing_bridge = good.clone();
    on_existing_bridge.networks[0].bridge = Some("br-blue".into());

    let failures = [
        Failure {
            what: "underlay address not on this host",
            toml: not_on_host.to_toml(),
            prefix: &[],
            expected: &["node.underlay", "198.18.0.77"],
            check_rejects: false,
        },
        Failure {
            what: "unknown key",
            toml: good_toml.replace("vni = 100", "vni = 100\ncolour = \"blue\""),
            prefix: &[],
            expected: &["colour"],
            check_rejects: true,
        },
        Failure {
            what: "VNI out of range",
            toml: good_toml.replace("vni = 100", "vni = 16777216"),
            prefix: &[],
            expected: &["network[0].vni", "16777216"],
            check_rejects: true,
        },
        Failure {
            what: "duplicate VNI",
            toml: duplicate_vni.to_toml(),
            prefix: &[],
            expected: &["network[1].vni", "100"],
            check_rejects: true,
        },
        Failure {
            what: "MTU larger than the underlay allows",
            toml: too_big_mtu.to_toml(),
            prefix: &[],
            expected: &["mtu", "1500", "1450"],
            check_rejects: false,
        },
        Failure {
            what: "root without CAP_NET_ADMIN",
            toml: on_existing_bridge.to_toml(),
            prefix: ROOT_WITHOUT_NET_ADMIN,
            expected: &["CAP_NET_ADMIN", "wft100"],
            check_rejects: false,
        },
        Failure {
            what: "an unprivileged user",
            toml: on_existing_bridge.to_toml(),
            prefix: AS_NOBODY,
            expected: &["CAP_NET_ADMIN", "wft100"],
            check_rejects: false,
        },
        Failure {
            // Without a configured bridge, creating weft-blue over netlink is the first privileged step, and today
            // its error is the kernel's EPERM as netlink reports it ("netlink: creating bridge weft-blue: ...
            // Operation not permitted"), without naming CAP_NET_ADMIN as the TAP error does. Reported; this
            // asserts what holds now, the bridge's name and the refusal.
            what: "an unprivileged user, weft creating the bridge",
            toml: good_toml.clone(),
            prefix: AS_NOBODY,
            expected: &["weft-blue", "not permitted"],
            check_rejects: false,
        },
    ];

    let bin = weft_bin().display().to_string();
    for (k, failure) in failures.iter().enumerate() {
        let path = lab.dir().join(format!("bad-{k}.toml"));
        std::fs::write(&path, &failure.toml)?;
        let path = path.display().to_string();
        let mut args = failure.prefix.to_vec();
        args.extend([bin.as_str(), "run", "--config", &path]);
        let weft = lab.spawn(&ns, &args)?;
        let (status, log) =
            wait_exit(&weft, EXIT_TIMEOUT).with_context(|| format!("{}: weft kept running", failure.what))?;
        ensure!(!status.success(), "{}: weft exited with {status}:\n{log}", failure.what);
        // main prints the error last, as "weft: <message with its causes>", which may run over several lines.
        let error = log.find("weft: ").map_or("", |start| &log[start..]);
        eprintln!("{}: {}", failure.what, error.trim_end());
        for word in failure.expected {
            ensure!(error.contains(word), "{}: the error does not name {word:?}:\n{log}", failure.what);
        }
        for link in ["wft100", "wft200", "weft-blue", "weft-red"] {
            ensure!(link_info(&ns, link)?.is_none(), "{}: weft left {link} behind:\n{log}", failure.what);
        }
        ensure!(link_info(&ns, "br-blue")?.is_some(), "{}: br-blue is gone", failure.what);

        // `weft check` needs no privileges and rejects what the file alone makes wrong, with the same message.
        let check = exec(&ns, &[AS_NOBODY, &[bin.as_str(), "check", "--config", &path]].concat())?;
        let stderr = String::from_utf8_lossy(&check.stderr);
        if failure.check_rejects {
            ensure!(!check.status.success(), "{}: weft check accepted it", failure.what);
            for word in failure.expected {
                ensure!(stderr.contains(word), "{}: weft check does not name {word:?}: {stderr}", failure.what);
            }
        } else {
            ensure!(check.status.success(), "{}: weft check rejected it: {stderr}", failure.what);
        }
    }
    Ok(())
}
