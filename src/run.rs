//! `run`: wires the spool, the supervisor and HTTP, and shuts them down in order.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Addr, System};
use genesys_actors::backfill::queue::BackfillQueue;
use genesys_actors::conversations::Conversations;
use genesys_actors::health::Health;
use genesys_actors::metrics::Metrics;
use genesys_actors::spool::Spool;
use genesys_actors::supervisor::{BridgeSettings, Shutdown, Supervisor};

use crate::config::{self, Config};
use crate::http::{self, HttpState};
use crate::EXIT_CONFIG;

/// Exit code when the spool cannot be opened (EX_CANTCREAT).
const EXIT_SPOOL: u8 = 73;

pub fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let settings = match config::credentials(&config::ProcessEnv)
        .and_then(|credentials| config.bridge_settings(credentials))
    {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init(config.log.format, &config.log.level);
    run_bridge(&config, settings, None)
}

/// Runs until SIGTERM/SIGINT (exit 0), a crash loop (70) or an unstreamable topic set (78).
/// `on_started` gets the running bridge's handles (the demo uses it).
pub fn run_bridge(
    config: &Config,
    settings: BridgeSettings,
    on_started: Option<Box<dyn FnOnce(Running)>>,
) -> ExitCode {
    let system = System::new();
    let setup = system.block_on(async { start(config, settings) });
    let running = match setup {
        Ok(running) => running,
        Err(code) => return code,
    };
    let shutdown_deadline = config.supervisor.shutdown_deadline;
    let signal_running = running.clone();
    system.block_on(async move {
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            // The graceful path is bounded by the deadline; should anything in it hang, this
            // ends the process anyway (what is not flushed stays in the spool).
            let hard_limit = shutdown_deadline + std::time::Duration::from_secs(5);
            std::thread::spawn(move || {
                std::thread::sleep(hard_limit);
                tracing::error!(?hard_limit, "shutdown exceeded its deadline; exiting now");
                std::process::exit(1);
            });
            // Unflushed records stay in the spool for the next start: still a clean exit.
            signal_running.shutdown(shutdown_deadline).await;
            System::current().stop_with_code(0);
        });
        if let Some(callback) = on_started {
            callback(running);
        }
    });
    let code = system.run_with_code().unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Handles on a running bridge.
#[derive(Clone)]
pub struct Running {
    pub supervisor: Addr<Supervisor>,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub spool: Spool,
    /// The lifecycle stream's state (`None` when disabled).
    pub conversations: Option<Conversations>,
    pub server: actix_web::dev::ServerHandle,
    /// Where HTTP listens (the real port when the config asked for port 0).
    pub http_addr: std::net::SocketAddr,
}

impl Running {
    /// Stop reading, flush the spool to Kafka within `deadline`, stop HTTP last.
    /// Whether everything received reached Kafka.
    pub async fn shutdown(&self, deadline: std::time::Duration) -> bool {
        let started = Instant::now();
        let flushed = matches!(
            self.supervisor
                .send(Shutdown {
                    deadline: started + deadline,
                })
                .await,
            Ok(true)
        );
        let stats = self.spool.stats();
        if flushed {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "flushed everything to Kafka"
            );
        } else {
            tracing::warn!(
                unacked = stats.records_unacked,
                "shutdown deadline reached; unflushed records stay in the spool for the next start"
            );
        }
        if let Some(conversations) = &self.conversations {
            conversations.close();
        }
        self.server.stop(true).await;
        flushed
    }
}

fn start(config: &Config, settings: BridgeSettings) -> Result<Running, ExitCode> {
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let (spool, report) = match Spool::open(config.spool.clone()) {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!(error = %error, dir = %config.spool.dir.display(), "cannot open the spool");
            eprintln!(
                "cannot open the spool at {}: {error}",
                config.spool.dir.display()
            );
            return Err(ExitCode::from(EXIT_SPOOL));
        }
    };
    if report.corrupt_records_cut > 0 || report.bytes_truncated > 0 {
        tracing::warn!(?report, "spool recovery cut a torn or corrupt tail");
        metrics.spool_corrupt_cut.inc_by(report.corrupt_records_cut);
    } else {
        tracing::info!(replayable = report.records_replayable, "spool opened");
    }
    let backfill_queue = if config.backfill.enabled {
        match BackfillQueue::open(&config.spool.dir) {
            Ok(queue) => {
                let queue = queue.with_disk_reserve(spool.disk_reserve());
                let pending = queue.pending().len();
                if pending > 0 {
                    tracing::info!(pending, "resuming backfill of gaps from an earlier run");
                }
                Some(queue)
            }
            Err(error) => {
                eprintln!(
                    "cannot open the backfill queue in {}: {error}",
                    config.spool.dir.display()
                );
                return Err(ExitCode::from(EXIT_SPOOL));
            }
        }
    } else {
        None
    };
    // Before anything appends or acknowledges: the lifecycle state holds the spool from its
    // checkpoint on and replays what came after it.
    let conversations = match settings.lifecycle.clone() {
        Some(lifecycle) => match Conversations::open(spool.clone(), lifecycle, metrics.clone()) {
            Ok((conversations, report)) => {
                tracing::info!(
                    conversations = report.conversations,
                    replayed = report.records_replayed,
                    "lifecycle state loaded"
                );
                Some(conversations)
            }
            Err(error) => {
                eprintln!(
                    "cannot open the lifecycle state in {}: {error}",
                    config.spool.dir.display()
                );
                return Err(ExitCode::from(EXIT_SPOOL));
            }
        },
        None => None,
    };
    // HTTP first, so that probes answer while everything else starts.
    let supervisor = Supervisor::new(
        settings,
        spool.clone(),
        health.clone(),
        metrics.clone(),
        backfill_queue,
        conversations.clone(),
    );
    let supervisor_addr = Supervisor::start(supervisor);
    let state = HttpState {
        health: health.clone(),
        metrics: metrics.clone(),
        supervisor: supervisor_addr.clone(),
        liveness_deadline: config.http.liveness_deadline,
        fault_injection: config.debug.fault_injection,
    };
    let (server, http_addr) = match http::server(state, config.http.listen) {
        Ok(bound) => bound,
        Err(error) => {
            tracing::error!(error = %error, listen = %config.http.listen, "cannot listen for HTTP");
            eprintln!("cannot listen on {}: {error}", config.http.listen);
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(listen = %http_addr, "HTTP: /livez /readyz /metrics /status");
    Ok(Running {
        supervisor: supervisor_addr,
        health,
        metrics,
        spool,
        conversations,
        server: handle,
        http_addr,
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
