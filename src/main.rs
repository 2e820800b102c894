//! `weft`: the daemon (`weft run`) and its command-line client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft::config::Config;

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Userspace, encrypted VXLAN overlay router")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/weft/weft.toml")]
        config: PathBuf,
        /// Append every SA's keys to FILE as Wireshark esp_sa rows (debug only: it defeats the encryption).
        #[arg(long, value_name = "FILE")]
        keylog: Option<PathBuf>,
    },
    /// Check a configuration file and exit.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "/etc/weft/weft.toml")]
        config: PathBuf,
    },
    /// Show the daemon's node and networks.
    Status(ClientArgs),
    /// Show forwarding counters and drops by reason.
    Stats(ClientArgs),
    /// Show the forwarding table.
    Fdb(ClientArgs),
    /// Show the peers: state, RTT, clock offset, SA epoch and age, packets and bytes each way.
    Peers(ClientArgs),
    /// Show the overlay networks of this host.
    Networks(ClientArgs),
    /// Show the endpoints discovered on this host.
    Endpoints(ClientArgs),
    /// Write a network's decrypted inner frames, both directions, as pcap.
    Capture {
        #[command(flatten)]
        client: ClientArgs,
        /// The network to capture.
        #[arg(short, long)]
        network: String,
        /// Write to FILE instead of standard output.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: Option<PathBuf>,
        /// Stop after K frames.
        #[arg(long, value_name = "K")]
        count: Option<u64>,
    },
    /// Check the host, the config and the running daemon; exits non-zero when something is wrong.
    Doctor(ClientArgs),
    /// Put a network namespace on an overlay network: veth, address from this host's IPAM blocks, default route via
    /// the gateway, and a gossiped endpoint record with its name and service.
    Attach {
        /// The namespace: a name under /run/netns, or the path of a namespace file.
        netns: String,
        /// The network's name.
        #[arg(long)]
        network: String,
        /// The endpoint's DNS name.
        #[arg(long)]
        name: Option<String>,
        /// Its service (resolvable as S and tasks.S).
        #[arg(long)]
        service: Option<String>,
        /// `auto`, or a specific IPv4 address of the network's subnet.
        #[arg(long, default_value = "auto")]
        ip: String,
        /// The interface name inside the namespace [default: the first free ethN].
        #[arg(long)]
        interface: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Undo `weft attach`: the veth, its address and routes, the record and the address lease.
    Detach {
        /// The namespace, as given to attach.
        netns: String,
        /// The network's name.
        #[arg(long)]
        network: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the endpoints attached on this host.
    Attachments(ClientArgs),
    /// Show the published services (ingress: backends and their health), every endpoint of the cluster by name and
    /// service, and this host's address blocks.
    Services(ClientArgs),
    /// Publish or remove a service (ingress routing mesh), cluster-wide.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Create the cluster CA and node certificates.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a cluster CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory for the CA files (created with mode 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, written into the CA certificate.
        #[arg(long, default_value = "weft")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = weft::control::pki::DEFAULT_CA_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA: OUT/NAME.crt and OUT/NAME.key (mode 0600).
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// The node's name (a DNS name): the certificate's CN and DNS SAN, and the file names.
        #[arg(long)]
        node: String,
        /// Directory for the node's files [default: the CA directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days (never beyond the CA's own).
        #[arg(long, default_value_t = weft::control::pki::DEFAULT_NODE_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Publish PORT on every host, balanced over the endpoints labelled service=NAME on port TARGET.
    Publish {
        /// The service's name (the endpoints' `service` label).
        name: String,
        /// The port every host listens on.
        #[arg(long)]
        port: u16,
        /// The backends' port.
        #[arg(long)]
        target: u16,
        /// tcp or udp.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// round-robin or least-connections.
        #[arg(long, default_value = "round-robin")]
        balance: String,
        /// Send a PROXY protocol v2 header to the backend first (TCP only).
        #[arg(long)]
        proxy_protocol: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a service from every host.
    Rm {
        /// The service's name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The daemon's configuration file (its node.api_socket is used).
    #[arg(short, long, default_value = "/etc/weft/weft.toml")]
    config: PathBuf,
    /// The API socket, overriding the config.
    #[arg(short, long)]
    socket: Option<PathBuf>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, keylog } => {
            let mut config = Config::load(&config)?;
            if let Some(path) = keylog {
                let control = config.control.as_mut().ok_or_else(|| {
                    anyhow::anyhow!("--keylog needs a [control] section: keys exist only for encrypted networks")
                })?;
                control.keylog = Some(path);
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            runtime.block_on(weft::daemon::run(config))
        }
        Command::Check { config } => {
            let c = Config::load(&config)?;
            println!("{}: ok ({} networks)", config.display(), c.networks.len());
            Ok(())
        }
        Command::Status(args) => client(args, "status", weft::cli::print_status),
        Command::Networks(args) => client(args, "networks", weft::cli::print_networks),
        Command::Capture { client, network, write, count } => {
            let socket = socket_of(&client)?;
            weft::cli::capture(&socket, &network, count, write.as_deref())
        }
        Command::Doctor(args) => {
            let report = weft::doctor::run(&args.config, args.socket.as_deref());
            if args.json {
                println!("{}", report.to_json());
            } else {
                report.print();
            }
            match report.failures() {
                0 => Ok(()),
                n => Err(anyhow::anyhow!("doctor: {n} check(s) failed")),
            }
        }
        Command::Stats(args) => client(args, "stats", weft::cli::print_stats),
        Command::Fdb(args) => client(args, "fdb", weft::cli::print_fdb),
        Command::Peers(args) => client(args, "peers", weft::cli::print_peers),
        Command::Endpoints(args) => client(args, "endpoints", weft::cli::print_endpoints),
        Command::Attach { netns, network, name, service, ip, interface, client: args } => {
            let params = serde_json::json!({
                "netns": netns, "network": network, "name": name, "service": service, "ip": ip, "interface": interface,
            });
            client_with(args, "attach", params, weft::cli::print_attachment)
        }
        Command::Detach { netns, network, client: args } => {
            let params = serde_json::json!({ "netns": netns, "network": network });
            client_with(args, "detach", params, |v| weft::cli::print_attachment(&v["detached"]))
        }
        Command::Attachments(args) => client(args, "attachments", weft::cli::print_attachments),
        Command::Services(args) => client(args, "services", weft::cli::print_services),
        Command::Service(ServiceCommand::Publish {
            name,
            port,
            target,
            proto,
            balance,
            proxy_protocol,
            client: args,
        }) => {
            let params = serde_json::json!({
                "name": name, "port": port, "target": target, "proto": proto, "balance": balance,
                "proxy_protocol": proxy_protocol,
            });
            client_with(args, "service_publish", params, |answer| {
                let p = &answer["published"];
                println!(
                    "published {} {}/{} -> :{}",
                    p["name"].as_str().unwrap_or("?"),
                    p["proto"].as_str().unwrap_or("?"),
                    p["port"],
                    p["target"]
                );
            })
        }
        Command::Service(ServiceCommand::Rm { name, client: args }) => {
            let params = serde_json::json!({ "name": name });
            client_with(args, "service_rm", params, |answer| {
                println!("removed {}", answer["removed"].as_str().unwrap_or("?"));
            })
        }
        Command::Ca(command) => ca(command),
    }
}

fn ca(command: CaCommand) -> anyhow::Result<()> {
    use weft::control::pki;
    match command {
        CaCommand::Init { dir, name, days, force } => {
            let files = pki::init_ca(&dir, &pki::CaOptions { name, days, force })?;
            println!("wrote {} and {} (mode 0600)", files.cert.display(), files.key.display());
            println!("valid until {}", files.not_after.date());
            println!("keep ca.key offline if you can; every node needs only ca.crt");
        }
        CaCommand::Issue { dir, node, out, days, force } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let issued = pki::issue_node(&dir, &node, &out, &pki::IssueOptions { days, force })?;
            println!("wrote {} and {} (mode 0600)", issued.cert.display(), issued.key.display());
            println!("node id {}, valid until {}", issued.id, issued.not_after.date());
        }
    }
    Ok(())
}

fn socket_of(args: &ClientArgs) -> anyhow::Result<PathBuf> {
    Ok(match &args.socket {
        Some(s) => s.clone(),
        None => Config::load(&args.config)?.node.api_socket,
    })
}

fn client(args: ClientArgs, method: &str, print: fn(&serde_json::Value)) -> anyhow::Result<()> {
    client_with(args, method, serde_json::Value::Null, print)
}

fn client_with(
    args: ClientArgs,
    method: &str,
    params: serde_json::Value,
    print: fn(&serde_json::Value),
) -> anyhow::Result<()> {
    let socket = socket_of(&args)?;
    let value = weft::cli::request_with(&socket, method, params)?;
    if args.json {
        println!("{value}");
    } else {
        print(&value);
    }
    Ok(())
}
