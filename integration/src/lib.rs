//! Harness for the root-only multi-host tests.
//!
//! Every "host" is a network namespace made by `scripts/lab.sh`, which this crate drives; the tests in
//! `integration/tests/suite/` (one module per area, all linked into one test binary) run weft daemons inside those
//! namespaces and check traffic between the containers.
//!
//! ```text
//!   Lab::up ──► scripts/lab.sh up ──► NAME-ul (switch) ─┬─ NAME-h1 ── br-blue ── NAME-h1-blue-c1 ...
//!      │                                                └─ NAME-h2 ── br-blue ── NAME-h2-blue-c1 ...
//!      ├─ spawn_weft(1, toml) ──► ip netns exec NAME-h1 $WEFT_BIN run --config <lab dir>/h1-0.toml
//!      └─ Drop: SIGTERM every daemon (SIGKILL after 10 s), print their logs, lab.sh down, remove the lab dir
//! ```
//!
//! [`weft`] adds what the tests that run weft share: config text, starting a daemon and waiting for its API, and
//! `weft stats`, `weft fdb`, `ip link` and `ip neigh` read as values.
//!
//! What it does not do: pick lab names (each test passes its own, unique among the tests), or sleep to wait for
//! something: every wait is [`wait_until`] a condition, with a deadline.
//!
//! Addresses follow `scripts/lab.sh`: host i has underlay `198.18.0.<i>`; container c of host i on the net with
//! index n has `198.19.<n>.<i*10+c>`, `2001:db8:19:<n>::<i*10+c>` and MAC `02:19:<n>:00:<i>:<c>`.
//!
//! The tests are `#[ignore = "needs root: run scripts/test.sh"]`, so a plain `cargo test` as a user skips them;
//! `scripts/test.sh` runs them as root with `--include-ignored --test-threads=1`. The env var `WEFT_BIN` names the weft
//! binary (default `target/release/weft` under the workspace root).

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub mod encrypted;
pub mod reliability;
pub mod services;
pub mod weft;

/// How often [`wait_until`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a capture gets to start listening, and to exit after SIGTERM.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root (the directory holding `scripts/` and the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("integration/ has a parent").to_path_buf()
}

/// The weft binary the tests run: `$WEFT_BIN` (a relative path is taken from the workspace root), or else
/// `release/weft` in `$CARGO_TARGET_DIR` or in the workspace's `target/`.
pub fn weft_bin() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("WEFT_BIN") {
        Some(bin) => root.join(bin),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(|dir| root.join(dir))
            .unwrap_or_else(|| root.join("target"))
            .join("release/weft"),
    }
}

/// Fails (so the test fails rather than silently passing) unless the process runs as root.
pub fn require_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no Uid line in /proc/self/status"))?;
    if euid != "0" {
        bail!(
            "this test needs root to create network namespaces (effective uid is {euid}): \
             run scripts/test.sh as root"
        );
    }
    Ok(())
}

/// Runs a program and returns its output, whatever its exit status.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("cannot run {program}"))
}

/// The output's stdout, or an error with the command line, exit status and stderr when the status is not 0.
fn check(what: &dyn std::fmt::Display, output: Output) -> Result<String> {
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut message = format!("`{what}` failed ({})", output.status);
        for (name, text) in [("stderr", stderr.trim_end()), ("stdout", stdout.trim_end())] {
            if !text.is_empty() {
                message.push_str(&format!("\n{name}: {text}"));
            }
        }
        bail!(message);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ip netns exec <ns> args...` and returns its output, whatever its exit status.
pub fn exec(ns: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs `ip netns exec <ns> args...` and returns its stdout; a non-zero exit status is an error carrying stderr.
pub fn exec_stdout(ns: &str, args: &[&str]) -> Result<String> {
    check(&format_args!("[{ns}] {}", args.join(" ")), exec(ns, args)?)
}

/// Runs `scripts/lab.sh args...`, failing with its stderr when it fails.
pub fn lab_sh(args: &[&str]) -> Result<String> {
    let script = workspace_root().join("scripts/lab.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    check(&format_args!("lab.sh {}", args.join(" ")), output)
}

/// The names of all network namespaces on the machine (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>> {
    let out = check(&"ip netns list", run("ip", &["netns", "list"])?)?;
    Ok(out.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect())
}

/// Calls `f` every ~50 ms until it returns `Ok(true)`, or fails once `deadline` has passed. `Ok(false)` and
/// errors both mean "not yet"; the error names `what` and carries the last error `f` returned.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {deadline:?} waiting for {what}")),
                None => anyhow!("timed out after {deadline:?} waiting for {what}"),
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Sends `count` pings (0.2 s apart, 1 s timeout) from namespace `from_ns` and returns how many were answered.
/// It is an error only when ping itself cannot run (exit status 2: bad address, no route...).
pub fn ping_received(from_ns: &str, addr: IpAddr, count: u32) -> Result<u32> {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let (count, addr) = (count.to_string(), addr.to_string());
    let args = ["ping", family, "-n", "-q", "-c", &count, "-W", "1", "-i", "0.2", &addr];
    let output = exec(from_ns, &args)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "3 packets transmitted, 3 received, 0% packet loss, time 401ms"
    let received = stdout
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .and_then(|line| line.split(", ").nth(1))
        .and_then(|field| field.strip_suffix(" received"))
        .and_then(|n| n.parse().ok());
    match (output.status.code(), received) {
        (Some(0 | 1), Some(received)) => Ok(received),
        _ => bail!(
            "[{from_ns}] ping {addr} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            stdout.trim_end()
        ),
    }
}

/// Pings `addr` `count` times from namespace `from_ns`; every ping must be answered.
pub fn ping(from_ns: &str, addr: IpAddr, count: u32) -> Result<()> {
    let received = ping_received(from_ns, addr, count)?;
    if received != count {
        bail!("[{from_ns}] ping {addr}: {received} of {count} answered");
    }
    Ok(())
}

/// Pings `addr` from namespace `from_ns`, one ping at a time, until one is answered or `deadline` has passed.
pub fn ping_until(from_ns: &str, addr: IpAddr, deadline: Duration) -> Result<()> {
    wait_until(deadline, &format!("[{from_ns}] ping {addr}"), || Ok(ping_received(from_ns, addr, 1)? == 1))
}

/// Sends `signal` (a name such as "TERM") to a child that has not been reaped, so its PID cannot have been reused.
fn signal(child: &mut Child, signal: &str) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = child.id().to_string();
    check(&format_args!("kill -s {signal} {pid}"), run("kill", &["-s", signal, &pid])?)?;
    Ok(())
}

/// Waits for a child to exit, up to `timeout`; `None` if it is still running then.
fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM, up to `timeout` to exit, then SIGKILL. Returns the exit status and whether it had to be killed.
fn terminate(child: &mut Child, timeout: Duration) -> Result<(ExitStatus, bool)> {
    signal(child, "TERM")?;
    if let Some(status) = wait_timeout(child, timeout)? {
        return Ok((status, false));
    }
    child.kill()?;
    Ok((child.wait()?, true))
}

/// The shape of a lab: what `scripts/lab.sh up` is asked for.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Number of hosts, 1-based in every accessor.
    pub hosts: usize,
    /// Containers per host and net (0-9).
    pub containers: usize,
    /// Net names, in order: the index of a net is the third octet of its containers' IPv4 addresses.
    pub nets: Vec<String>,
    /// Underlay MTU (`--mtu`).
    pub mtu: u32,
    /// Container MTU (`--cmtu`); `None` is `mtu - 50`.
    pub container_mtu: Option<u32>,
}

/// A host of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// 1-based host number.
    pub index: usize,
    /// Its namespace, `NAME-h<i>`.
    pub ns: String,
    /// Its underlay address on `ul0`, `198.18.0.<i>`.
    pub underlay: Ipv4Addr,
}

/// A container of the lab: a namespace with one interface, `eth0`, attached to its host's `br-<net>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Its namespace, `NAME-h<i>-<net>-c<c>`.
    pub ns: String,
    /// `198.19.<n>.<i*10+c>` (in a /24).
    pub ipv4: Ipv4Addr,
    /// `2001:db8:19:<n>::<i*10+c>` (in a /64).
    pub ipv6: Ipv6Addr,
    /// `02:19:<n>:00:<i>:<c>`, lower-case hex as `ip link` prints it.
    pub mac: String,
}

/// A weft daemon (or any program) started by [`Lab::spawn_weft`] or [`Lab::spawn`]. Clones share the process;
/// dropping a handle leaves it running, and the [`Lab`] stops it when dropped.
#[derive(Clone, Debug)]
pub struct Daemon {
    inner: Arc<DaemonInner>,
}

#[derive(Debug)]
struct DaemonInner {
    label: String,
    pid: u32,
    log: PathBuf,
    child: Mutex<Child>,
}

impl Daemon {
    fn child(&self) -> MutexGuard<'_, Child> {
        // A panic while holding the lock leaves the Child intact; keep using it.
        self.inner.child.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The process id (of `ip netns exec`, which execs the program, so it is the program's too).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// Everything it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.inner.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.inner.log.display()))
    }

    /// Its exit status if it has exited, `None` while it runs.
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        Ok(self.child().try_wait()?)
    }

    /// Sends SIGTERM and waits up to 10 s for it to exit; returns the exit status. If it is still running then,
    /// it is killed and this is an error. A daemon that had already exited just returns its status.
    pub fn stop(&self) -> Result<ExitStatus> {
        let (status, killed) = terminate(&mut self.child(), STOP_TIMEOUT)?;
        if killed {
            bail!("{} did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed", self.inner.label);
        }
        Ok(status)
    }

    /// Sends SIGKILL (a crash, as far as the rest of the cluster can tell) and reaps it.
    pub fn kill9(&self) -> Result<ExitStatus> {
        let mut child = self.child();
        signal(&mut child, "KILL")?;
        Ok(child.wait()?)
    }
}

/// A running lab. Dropping it stops its daemons, prints their logs (libtest shows them only for a failed test),
/// runs `lab.sh down`, and removes its directory unless the thread is panicking or `WEFT_KEEP_LAB_DIR` is set.
#[derive(Debug)]
pub struct Lab {
    name: String,
    options: LabOptions,
    dir: PathBuf,
    daemons: Mutex<Vec<Daemon>>,
}

impl Lab {
    /// Brings up lab `name` (1-8 characters of [a-z0-9]; unique per test) with `hosts` hosts, `containers`
    /// containers per host and net, and the given nets, underlay MTU 1500. Leftovers of an earlier run of the same
    /// lab are removed first.
    pub fn up(name: &str, hosts: usize, containers: usize, nets: &[&str]) -> Result<Lab> {
        let options = LabOptions {
            hosts,
            containers,
            nets: nets.iter().map(|net| net.to_string()).collect(),
            mtu: 1500,
            container_mtu: None,
        };
        Lab::up_with(name, options)
    }

    /// [`Lab::up`] with every option.
    pub fn up_with(name: &str, options: LabOptions) -> Result<Lab> {
        require_root()?;
        let dir = std::env::temp_dir().join(format!("weft-lab-{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, Drop cleans up whatever happens next.
        let lab = Lab { name: name.to_owned(), options, dir, daemons: Mutex::new(Vec::new()) };
        lab_sh(&["down", name])?;
        let (hosts, containers, mtu) =
            (lab.options.hosts.to_string(), lab.options.containers.to_string(), lab.options.mtu.to_string());
        let nets = lab.options.nets.join(" ");
        let mut args = vec!["up", name, "--hosts", &hosts, "--containers", &containers, "--nets", &nets, "--mtu", &mtu];
        let container_mtu = lab.options.container_mtu.map(|mtu| mtu.to_string());
        if let Some(container_mtu) = &container_mtu {
            args.extend(["--cmtu", container_mtu]);
        }
        lab_sh(&args)?;
        Ok(lab)
    }

    /// The lab's name, the prefix of all its namespaces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the lab was made with.
    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    /// A directory for this lab's files (configs, logs, captures, sockets); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path for host `i`'s API socket, inside the lab directory. Daemons share the file system, so each needs
    /// its own: put this in `[node] api_socket`.
    pub fn api_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}.sock"))
    }

    /// Host `i` (1-based). Panics if there is no such host.
    pub fn host(&self, i: usize) -> Host {
        assert!(
            (1..=self.options.hosts).contains(&i),
            "lab {} has hosts 1..={}, not {i}",
            self.name,
            self.options.hosts
        );
        Host { index: i, ns: format!("{}-h{i}", self.name), underlay: Ipv4Addr::new(198, 18, 0, i as u8) }
    }

    /// The index of `net` (the third octet of its IPv4 subnet). Panics if the lab has no such net.
    pub fn net_index(&self, net: &str) -> usize {
        self.options
            .nets
            .iter()
            .position(|n| n == net)
            .unwrap_or_else(|| panic!("lab {} has nets {:?}, not {net}", self.name, self.options.nets))
    }

    /// Container `c` (1-based) of host `i` on `net`. Panics if there is no such container.
    pub fn container(&self, i: usize, net: &str, c: usize) -> Container {
        let host = self.host(i);
        let n = self.net_index(net);
        assert!(
            (1..=self.options.containers).contains(&c),
            "lab {} has containers 1..={}, not {c}",
            self.name,
            self.options.containers
        );
        let octet = i * 10 + c;
        Container {
            ns: format!("{}-{net}-c{c}", host.ns),
            ipv4: Ipv4Addr::new(198, 19, n as u8, octet as u8),
            // lab.sh writes the decimal digits into the last group as they are, so 12 becomes ::12 (0x12).
            ipv6: format!("2001:db8:19:{n}::{octet}").parse().expect("a valid IPv6 address"),
            mac: format!("02:19:{n:02x}:00:{i:02x}:{c:02x}"),
        }
    }

    /// Writes `config_toml` into the lab directory and starts `$WEFT_BIN run --config <file>` in host `i`'s
    /// namespace, with stdout and stderr going to a log file next to it.
    pub fn spawn_weft(&self, i: usize, config_toml: &str) -> Result<Daemon> {
        let bin = weft_bin();
        if !bin.is_file() {
            bail!("no weft binary at {} (set WEFT_BIN, or run: cargo build --release -p weft)", bin.display());
        }
        let label = self.next_label(&format!("weft-h{i}"));
        let config = self.dir.join(format!("{label}.toml"));
        fs::write(&config, config_toml).with_context(|| format!("writing {}", config.display()))?;
        let (bin, config) = (bin.display().to_string(), config.display().to_string());
        self.spawn_labeled(&self.host(i).ns, label, &[&bin, "run", "--config", &config])
    }

    /// Starts any program in namespace `ns` the way [`Lab::spawn_weft`] starts weft: logged to the lab
    /// directory, stopped on drop.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Result<Daemon> {
        let program = args.first().context("spawn needs a program")?;
        let base = Path::new(program).file_name().map_or("proc".into(), |n| n.to_string_lossy());
        let label = self.next_label(&format!("{base}-{ns}"));
        self.spawn_labeled(ns, label, args)
    }

    /// `<base>-<k>`, where k counts the daemons started so far, so labels never repeat.
    fn next_label(&self, base: &str) -> String {
        format!("{base}-{}", self.lock_daemons().len())
    }

    fn lock_daemons(&self) -> MutexGuard<'_, Vec<Daemon>> {
        self.daemons.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn spawn_labeled(&self, ns: &str, label: String, args: &[&str]) -> Result<Daemon> {
        let log = self.dir.join(format!("{label}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting [{ns}] {}", args.join(" ")))?;
        let daemon = Daemon { inner: Arc::new(DaemonInner { label, pid: child.id(), log, child: Mutex::new(child) }) };
        self.lock_daemons().push(daemon.clone());
        Ok(daemon)
    }

    /// Stops every daemon: SIGTERM to all at once, then SIGKILL to those still running after 10 s.
    fn stop_daemons(&self) {
        let daemons = self.lock_daemons().clone();
        for daemon in &daemons {
            if let Err(e) = signal(&mut daemon.child(), "TERM") {
                eprintln!("{}: SIGTERM failed: {e:#}", daemon.inner.label);
            }
        }
        let start = Instant::now();
        for daemon in &daemons {
            let mut child = daemon.child();
            let left = STOP_TIMEOUT.saturating_sub(start.elapsed());
            let status = match wait_timeout(&mut child, left) {
                Ok(Some(status)) => Ok(status),
                Ok(None) => {
                    eprintln!(
                        "{} (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                        daemon.inner.label, daemon.inner.pid
                    );
                    child.kill().and_then(|()| child.wait())
                }
                Err(e) => Err(e),
            };
            drop(child);
            // libtest shows this only when the test fails, which is when the logs are wanted.
            eprintln!(
                "----- {} (pid {}, {}) log {} -----\n{}",
                daemon.inner.label,
                daemon.inner.pid,
                match status {
                    Ok(status) => describe(status),
                    Err(e) => format!("wait failed: {e}"),
                },
                daemon.inner.log.display(),
                daemon.log().trim_end()
            );
        }
    }
}

/// "exit 0", "signal 15".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_daemons();
        if let Err(e) = lab_sh(&["down", &self.name]) {
            eprintln!("lab {}: teardown failed: {e:#}", self.name);
        }
        if thread::panicking() || std::env::var_os("WEFT_KEEP_LAB_DIR").is_some() {
            eprintln!("lab {}: files kept in {}", self.name, self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("lab {}: cannot remove {}: {e}", self.name, self.dir.display());
        }
    }
}

/// A packet capture by tcpdump in a namespace, written to a pcap file. Dropping it stops tcpdump.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    pcap: PathBuf,
    stderr: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i iface -U -w pcap filter` in `ns` (an empty `filter` captures everything) and returns
    /// once tcpdump is listening, so nothing sent afterwards is missed.
    pub fn start(ns: &str, iface: &str, filter: &str, pcap: &Path) -> Result<Capture> {
        let stderr = pcap.with_extension("tcpdump.log");
        let err = File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let mut command = Command::new("ip");
        // --immediate-mode: otherwise libpcap hands packets over in blocks, and those still in the kernel's ring
        // when tcpdump is stopped are counted as "received by filter" but never written.
        // -Z root: Debian's tcpdump otherwise drops to user tcpdump, which may not write to the lab directory.
        command
            .args(["netns", "exec", ns, "tcpdump", "--immediate-mode", "-U", "-n", "-Z", "root"])
            .args(["-i", iface, "-w"])
            .arg(pcap)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let child = command.spawn().with_context(|| format!("starting tcpdump in {ns}"))?;
        let mut capture = Capture { child: Some(child), pcap: pcap.to_path_buf(), stderr };
        let mut exited = None;
        wait_until(CAPTURE_TIMEOUT, &format!("tcpdump on {ns}/{iface} to start"), || {
            let log = fs::read_to_string(&capture.stderr).unwrap_or_default();
            if log.contains("listening on") {
                return Ok(true);
            }
            if let Some(child) = capture.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    // It will not start later: stop waiting.
                    exited = Some(anyhow!("tcpdump in {ns} exited ({status}): {}", log.trim_end()));
                    capture.child = None;
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if let Some(e) = exited {
            return Err(e);
        }
        Ok(capture)
    }

    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.pcap
    }

    /// Stops tcpdump and waits for it to exit, so the file is complete; returns its path.
    pub fn stop(mut self) -> Result<PathBuf> {
        let mut child = self.child.take().context("tcpdump is not running")?;
        let (status, killed) = terminate(&mut child, CAPTURE_TIMEOUT)?;
        if killed || !status.success() {
            bail!(
                "tcpdump ended badly ({}{}): {}",
                describe(status),
                if killed { ", killed" } else { "" },
                fs::read_to_string(&self.stderr).unwrap_or_default().trim_end()
            );
        }
        Ok(self.pcap.clone())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = terminate(&mut child, CAPTURE_TIMEOUT) {
                eprintln!("stopping tcpdump for {}: {e:#}", self.pcap.display());
            }
        }
    }
}

/// Reads `pcap` with tshark and returns, for each packet that matches `display_filter` (empty: all), the values
/// of `fields` (tshark's `-T fields`; several values of one field are joined with ",").
pub fn tshark_fields(pcap: &Path, display_filter: &str, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    tshark_fields_with(pcap, &[], display_filter, fields)
}

/// [`tshark_fields`] with extra tshark arguments first, such as
/// `["-o", "esp.enable_encryption_decode:TRUE", "-o", "uat:esp_sa:..."]`.
pub fn tshark_fields_with(
    pcap: &Path,
    extra: &[&str],
    display_filter: &str,
    fields: &[&str],
) -> Result<Vec<Vec<String>>> {
    let pcap = pcap.display().to_string();
    let mut args = vec!["-r", &pcap, "-n"];
    args.extend_from_slice(extra);
    if !display_filter.is_empty() {
        args.extend(["-Y", display_filter]);
    }
    args.extend(["-T", "fields", "-E", "separator=/t"]);
    for field in fields {
        args.extend(["-e", field]);
    }
    let out = check(&format_args!("tshark {}", args.join(" ")), run("tshark", &args)?)?;
    Ok(out.lines().map(|line| line.split('\t').map(str::to_owned).collect()).collect())
}
