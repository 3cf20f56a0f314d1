//! The `tollgate` command: run the gateway, check a config, hash a password.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc keeps RSS flat under churn and makes the many small per-request allocations
/// cheaper than glibc's allocator (the largest user-space cost in profiles of the proxy).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "conf/tollgate.toml";

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A fast, programmable API gateway built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default command).
    Run {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take the listening sockets over from a running tollgate (zero-downtime upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Hash a password for `[[consumers]] basic_auth.password_hash` (argon2id). Reads the
    /// password from standard input (first line), prints the hash.
    HashPassword,
    /// Validate a config file: exit 0 with a summary, or 1 listing every error.
    Check {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG),
        upgrade: false,
    }) {
        Command::Check { config } => {
            match tollgate::config::load_file(&config, &tollgate::retained::Retained::new()) {
                Ok(snap) => {
                    println!(
                        "{}: OK ({} routes, {} upstreams)",
                        config.display(),
                        snap.routes.len(),
                        snap.upstreams.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprint!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashPassword => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("cannot read the password from standard input");
                return ExitCode::FAILURE;
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("empty password");
                return ExitCode::FAILURE;
            }
            match tollgate_plugins::consumer::password::hash_password(password) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot hash: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config, upgrade } => match tollgate::server::run(&config, upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::FAILURE
            }
        },
    }
}
