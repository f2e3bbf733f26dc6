//! `genesys-sim`: run the Genesys Cloud simulator as a process.
//!
//! Logs go to stderr; once both listeners serve, one JSON line
//! `{"baseUrl": "...", "wsBaseUrl": "...", "orgId": "..."}` is printed on stdout so that scripts
//! can start it on port 0 and read where it listens.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use genesys_sim::{SimClient, SimConfig, Simulator, StageDurations};

/// A fake Genesys Cloud org on loopback: OAuth, notification channels, WebSocket streaming,
/// conversations, analytics query, a ledger of sent frames and fault injection (/sim/faults).
#[derive(Parser, Debug)]
#[command(name = "genesys-sim", version)]
struct Args {
    /// REST listener (loopback only): /oauth/token, /api/v2/..., /sim/...
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// WebSocket listener for the channels' connectUri (loopback only; port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    ws_listen: SocketAddr,
    /// Number of routing queues.
    #[arg(long, default_value_t = 50)]
    queues: usize,
    /// Number of agents (users).
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// New conversations per second: `20/s`, `20`, or `600/min`. 0 = no traffic.
    #[arg(long, default_value = "2/s", value_parser = parse_rate)]
    rate: f64,
    /// Seed of every generator (ids, arrivals, durations, correlation ids).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Lifetime of issued tokens (`expires_in`), e.g. `24h`, `10m`, `30s`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,
    /// Lifetime of a notification channel.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    channel_lifetime: Duration,
    /// Interval of the channel.metadata heartbeat frame.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Delay between v2.system.socket_closing and the close.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    socket_closing_grace: Duration,
    /// OAuth client `id:secret` holding every permission; repeatable.
    /// Default: sim-client:sim-secret.
    #[arg(long = "client", value_parser = parse_client)]
    clients: Vec<SimClient>,
    /// Conversation stage durations: `fast` (a conversation lasts ~3 s) or `realistic` (minutes).
    #[arg(long, default_value = "fast", value_parser = ["fast", "realistic"])]
    profile: String,
    /// Channels per OAuth client before the oldest idle one is evicted.
    #[arg(long, default_value_t = 20)]
    max_channels_per_client: usize,
    /// Topics per channel; a larger subscription is a 400.
    #[arg(long, default_value_t = 1000)]
    max_topics_per_channel: usize,
    /// Entries kept in memory by the ledger, the missed log, the published log, the channel log
    /// and the REST request log, each (oldest dropped first); 0 = unlimited.
    #[arg(long, default_value_t = 200_000)]
    ledger_limit: usize,
    /// actix worker threads per listener.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Give every channel its own CorrelationId for an event (Genesys does not document
    /// whether two channels share it).
    #[arg(long)]
    correlation_per_channel: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let (number, per) = match s.split_once('/') {
        Some((n, unit)) => (n, unit.trim()),
        None => (s, "s"),
    };
    let divisor = match per {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("unknown rate unit {other:?} (use /s, /min or /h)")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err("rate must be >= 0".to_owned());
    }
    Ok(value / divisor)
}

fn parse_client(s: &str) -> Result<SimClient, String> {
    let (id, secret) = s
        .split_once(':')
        .ok_or_else(|| "expected id:secret".to_owned())?;
    if id.is_empty() || secret.is_empty() {
        return Err("client id and secret must not be empty".to_owned());
    }
    Ok(SimClient::with_all_permissions(id, secret))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = SimConfig {
        listen: args.listen,
        ws_listen: args.ws_listen,
        queues: args.queues,
        agents: args.agents,
        rate_per_sec: args.rate,
        seed: args.seed,
        token_lifetime: args.token_lifetime,
        channel_lifetime: args.channel_lifetime,
        heartbeat_interval: args.heartbeat_interval,
        socket_closing_grace: args.socket_closing_grace,
        clients: if args.clients.is_empty() {
            vec![SimClient::default()]
        } else {
            args.clients
        },
        max_channels_per_client: args.max_channels_per_client,
        max_topics_per_channel: args.max_topics_per_channel,
        stages: if args.profile == "realistic" {
            StageDurations::realistic()
        } else {
            StageDurations::fast()
        },
        ledger_capacity: (args.ledger_limit > 0).then_some(args.ledger_limit),
        workers: args.workers,
        correlation_per_channel: args.correlation_per_channel,
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg)?;
    tracing::info!(
        base_url = %sim.base_url(),
        ws_base_url = %sim.ws_base_url(),
        token_url = %format!("{}/oauth/token", sim.base_url()),
        faults_url = %format!("{}/sim/faults", sim.base_url()),
        ledger_url = %format!("{}/sim/ledger", sim.base_url()),
        "genesys-sim ready"
    );
    println!(
        "{}",
        serde_json::json!({
            "baseUrl": sim.base_url(),
            "wsBaseUrl": sim.ws_base_url(),
            "orgId": sim.org_id(),
        })
    );
    wait_for_shutdown_signal()?;
    tracing::info!("shutting down");
    sim.stop();
    Ok(())
}

fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        Ok::<(), anyhow::Error>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("20").unwrap(), 20.0);
        assert_eq!(parse_rate("120/min").unwrap(), 2.0);
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn clients() {
        let c = parse_client("a:b").unwrap();
        assert_eq!((c.client_id.as_str(), c.client_secret.as_str()), ("a", "b"));
        assert!(parse_client("nope").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
