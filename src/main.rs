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
        Command::Run { config } => {
            let config = Config::load(&config)?;
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
        Command::Status(args) => {
            client(args, "status", |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()))
        }
        Command::Stats(args) => client(args, "stats", weft::cli::print_stats),
        Command::Fdb(args) => client(args, "fdb", weft::cli::print_fdb),
    }
}

fn client(args: ClientArgs, method: &str, print: fn(&serde_json::Value)) -> anyhow::Result<()> {
    let socket = match args.socket {
        Some(s) => s,
        None => Config::load(&args.config)?.node.api_socket,
    };
    let value = weft::cli::request(&socket, method)?;
    if args.json {
        println!("{value}");
    } else {
        print(&value);
    }
    Ok(())
}
