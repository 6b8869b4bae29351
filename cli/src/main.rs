//! `pal`: the one CloudPal binary. The command surface is DESIGN.md's CLI contract; each
//! subcommand lives in its own file under `commands/`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod commands;

#[derive(Debug, Parser)]
#[command(name = "pal", version = node::VERSION, about = "CloudPal: your devices, one private network")]
struct Cli {
    /// State directory (keys, membership log, control socket).
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new network; this device becomes its first admin.
    Init {
        #[arg(long)]
        name: String,
    },
    /// Run the node.
    Up {
        /// Switch on CloudPal duties: relay, DHT anchor, VPN exit, DNS.
        #[arg(long)]
        cloudpal: bool,
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
    },
    /// Manage the network's devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Join the network of an invite code.
    Join {
        code: String,
        #[arg(long)]
        name: String,
    },
    /// Print a request code for a device members can reach but that cannot reach them.
    Request {
        #[arg(long)]
        name: String,
    },
    /// Peers, overlay addresses, paths and round-trip times.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ping a device over the overlay and report the path used.
    Ping { name: String },
    /// Show the verified membership log.
    Log {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Invite a device; prints the invite code alone on the last line.
    Invite {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "member")]
        role: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Add a device from its request code and deliver the log to it.
    Add {
        code: String,
        #[arg(long, default_value = "member")]
        role: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Cut a device off everywhere.
    Revoke { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match &cli.command {
        Command::Init { .. } => "init",
        Command::Up { .. } => "up",
        Command::Device { command } => match command {
            DeviceCommand::Invite { .. } => "device invite",
            DeviceCommand::Add { .. } => "device add",
            DeviceCommand::List { .. } => "device list",
            DeviceCommand::Revoke { .. } => "device revoke",
        },
        Command::Join { .. } => "join",
        Command::Request { .. } => "request",
        Command::Status { .. } => "status",
        Command::Ping { .. } => "ping",
        Command::Log { .. } => "log",
    };
    let _ = &cli.state;
    match commands::run(name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pal: {message}");
            ExitCode::FAILURE
        }
    }
}
