//! Binding both listeners and running the simulator on its own OS thread and actix System, so
//! that it works from any test harness and cannot be starved by the code under test.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::config::SimConfig;
use crate::engine::{Engine, EngineCmd};
use crate::state::{run_janitor, Sim};
use crate::{analytics, auth, control, faults, requests, rest, rest_faults, ws};

/// Largest request body accepted (subscription lists of well over 1,000 topics must reach the
/// handler, which answers 400, rather than being cut off with 413).
const MAX_BODY: usize = 16 << 20;

pub(crate) struct Running {
    pub sim: Arc<Sim>,
    pub stop: Option<oneshot::Sender<()>>,
    pub thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds both listeners, starts the simulator thread and waits until it serves.
pub(crate) fn start(cfg: SimConfig) -> anyhow::Result<Running> {
    cfg.validate()?;
    let rest_listener =
        TcpListener::bind(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    let ws_listener =
        TcpListener::bind(cfg.ws_listen).with_context(|| format!("binding {}", cfg.ws_listen))?;
    let base_url = format!("http://{}", rest_listener.local_addr()?);
    let ws_base_url = format!("ws://{}", ws_listener.local_addr()?);
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let sim = Arc::new(Sim::new(cfg, base_url, ws_base_url, engine_tx));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread_sim = sim.clone();
    let thread = std::thread::Builder::new()
        .name("genesys-sim".to_owned())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let served = serve(
                    thread_sim,
                    rest_listener,
                    ws_listener,
                    engine_rx,
                    stop_rx,
                    &ready_tx,
                );
                if let Err(e) = served.await {
                    let _ = ready_tx.send(Err(e));
                }
            });
        })
        .context("spawning the simulator thread")?;
    let mut running = Running {
        sim,
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(running),
        Ok(Err(e)) => {
            running.shutdown();
            Err(e)
        }
        Err(_) => {
            running.shutdown();
            anyhow::bail!("the simulator thread ended before serving")
        }
    }
}

async fn serve(
    sim: Arc<Sim>,
    rest_listener: TcpListener,
    ws_listener: TcpListener,
    engine_rx: mpsc::UnboundedReceiver<EngineCmd>,
    stop_rx: oneshot::Receiver<()>,
    ready: &std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let data = web::Data::from(sim.clone());
    let workers = sim.cfg.workers;
    let rest_data = data.clone();
    let rest_server = HttpServer::new(move || {
        App::new()
            .app_data(rest_data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(web::JsonConfig::default().limit(MAX_BODY))
            .wrap(from_fn(rest_faults::rest_fault_layer))
            // Outermost: sees the answers of injected faults too.
            .wrap(from_fn(requests::request_log_layer))
            .configure(rest_routes)
    })
    .workers(workers)
    // TCP_NODELAY: actix-web leaves Nagle's algorithm on, which holds a small frame written behind
    // an unacknowledged one until the client's delayed ACK (up to 40 ms on Linux): that was in
    // every latency the benchmarks measured (bench/README.md). A frame goes out when it is sent.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(rest_listener)?
    .run();
    let ws_data = data.clone();
    let ws_server = HttpServer::new(move || {
        App::new()
            .app_data(ws_data.clone())
            .route("/channels/{id}", web::get().to(ws::upgrade))
            .default_service(web::to(|| async { crate::errors::not_found("resource") }))
    })
    .workers(workers)
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(ws_listener)?
    .run();
    let rest_handle = rest_server.handle();
    let ws_handle = ws_server.handle();
    actix_rt::spawn(rest_server);
    actix_rt::spawn(ws_server);
    actix_rt::spawn(run_janitor(sim.clone()));
    actix_rt::spawn(Engine::new(sim.clone()).run(engine_rx));
    tracing::info!(
        base_url = %sim.base_url,
        ws_base_url = %sim.ws_base_url,
        "genesys-sim serving"
    );
    let _ = ready.send(Ok(()));
    let _ = stop_rx.await;
    ws_handle.stop(false).await;
    rest_handle.stop(false).await;
    Ok(())
}

fn rest_routes(cfg: &mut web::ServiceConfig) {
    const CHANNELS: &str = "/api/v2/notifications/channels";
    const SUBSCRIPTIONS: &str = "/api/v2/notifications/channels/{id}/subscriptions";
    cfg.route("/oauth/token", web::post().to(auth::token_endpoint))
        .route(CHANNELS, web::post().to(rest::create_channel))
        .route(CHANNELS, web::get().to(rest::list_channels))
        .route(
            "/api/v2/notifications/channels/{id}",
            web::head().to(rest::head_channel),
        )
        .route(SUBSCRIPTIONS, web::get().to(rest::get_subscriptions))
        .route(SUBSCRIPTIONS, web::put().to(rest::put_subscriptions))
        .route(SUBSCRIPTIONS, web::post().to(rest::post_subscriptions))
        .route(SUBSCRIPTIONS, web::delete().to(rest::delete_subscriptions))
        .route(
            "/api/v2/notifications/availabletopics",
            web::get().to(rest::available_topics),
        )
        .route(
            "/api/v2/analytics/conversations/details",
            web::get().to(analytics::details_by_ids),
        )
        .route("/api/v2/routing/queues", web::get().to(rest::list_queues))
        .route("/api/v2/users", web::get().to(rest::list_users))
        .route(
            "/api/v2/analytics/conversations/details/query",
            web::post().to(analytics::details_query),
        )
        .route("/sim/faults", web::post().to(faults::faults_endpoint))
        .route("/sim/ledger", web::get().to(control::ledger))
        .route("/sim/missed", web::get().to(control::missed))
        .route("/sim/published", web::get().to(control::published))
        .route("/sim/channel-log", web::get().to(control::channel_log))
        .route("/sim/requests", web::get().to(control::requests))
        .route("/sim/channels", web::get().to(control::channels))
        .route("/sim/rate", web::post().to(control::set_rate))
        .route("/sim/queues", web::post().to(control::add_queue))
        .route("/sim/info", web::get().to(control::info))
        .route("/sim/conversations", web::get().to(control::conversations))
        .default_service(web::to(|| async {
            HttpResponse::NotFound().json(serde_json::json!({
                "message": "The requested resource was not found.",
                "code": "not.found",
                "status": 404,
            }))
        }));
}
