//! genesys-kafka-bridge: streams Genesys Cloud notification events into Kafka.
#![forbid(unsafe_code)]

mod config;
mod demo;
mod http;
mod logging;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a configuration error (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "genesys-kafka-bridge", version, about = "Streams Genesys Cloud notification events into Kafka, losing nothing it received", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, env = "BRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration and print it as the bridge sees it (secrets redacted).
    CheckConfig {
        #[arg(long, short, env = "BRIDGE_CONFIG")]
        config: PathBuf,
        /// Also require the client credentials in the environment.
        #[arg(long)]
        require_credentials: bool,
    },
    /// Run the simulator, an embedded Kafka and the bridge together, with faults injected
    /// along the way; print a summary at the end. Needs no external service.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run::run(&config),
        Command::CheckConfig {
            config,
            require_credentials,
        } => check_config(&config, require_credentials),
        Command::Demo(args) => demo::demo(args),
    }
}

fn check_config(path: &std::path::Path, require_credentials: bool) -> ExitCode {
    let config = match config::Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if require_credentials {
        if let Err(error) = config::credentials(&config::ProcessEnv) {
            eprintln!("configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    println!("# {}: valid", path.display());
    print!("{}", config.redacted_toml());
    ExitCode::SUCCESS
}
