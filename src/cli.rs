//! The `tollgate` command line (`run`, `check`, `hash-password`), for the `tollgate` binary and
//! for custom binaries that add their own plugins.
//!
//! A custom binary is a crate that depends on `tollgate` and `tollgate-plugins`, registers its
//! plugins beside the built-in ones and hands the registry to [`main_with`]:
//!
//! ```no_run
//! use std::process::ExitCode;
//! use tollgate::prelude::*;
//!
//! fn main() -> ExitCode {
//!     let registry = Registry::builtin();
//!     // registry.register("my_plugin", my_plugin::build);
//!     tollgate::cli::main_with(registry)
//! }
//! ```
//!
//! The binary then has the whole command line, and `check` validates the custom plugins'
//! tables like the built-in ones. See `docs/plugins.md`.

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate_plugins::Registry;

/// The config file used when none is given.
pub const DEFAULT_CONFIG: &str = "conf/tollgate.toml";

#[derive(Parser)]
#[command(version, about = "A fast, programmable API gateway built on Pingora")]
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

/// Run the command line of the process's arguments with the plugins of `registry`.
pub fn main_with(registry: Registry) -> ExitCode {
    main_from(std::env::args_os(), registry)
}

/// Like [`main_with`], with the arguments given (the first is the program name).
pub fn main_from<I, T>(args: I, registry: Registry) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; clap knows which is which.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command.unwrap_or(Command::Run {
        config: PathBuf::from(DEFAULT_CONFIG),
        upgrade: false,
    }) {
        Command::Check { config } => check(&config, registry),
        Command::HashPassword => hash_password(),
        Command::Run { config, upgrade } => match crate::server::run(&config, upgrade, registry) {
            Ok(()) => ExitCode::SUCCESS,
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(config: &std::path::Path, registry: Registry) -> ExitCode {
    match crate::config::load_file(config, &crate::retained::Retained::with_registry(registry)) {
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

fn hash_password() -> ExitCode {
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
