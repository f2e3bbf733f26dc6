//! Measures the burst fault: how many event frames per second one socket carries from the
//! simulator to an awc client on loopback.
//!
//! ```sh
//! cargo run -p genesys-sim --release --example burst_bench -- 1000000
//! ```
//! Prints the rate seen by the client (first to last frame) and checks the ledger.

use std::time::{Duration, Instant};

use awc::ws;
use base64::Engine as _;
use futures_util::StreamExt;
use genesys_sim::{FrameKind, SimConfig, Simulator};

fn main() -> anyhow::Result<()> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 0.0,
        heartbeat_interval: Duration::from_secs(3600),
        // Keep memory flat: the ledger still records every frame, but keeps the last 100k.
        ledger_capacity: Some(100_000),
        ..SimConfig::default()
    })?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    actix_rt::System::new().block_on(async move {
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let basic = base64::engine::general_purpose::STANDARD.encode("sim-client:sim-secret");
        let mut resp = http
            .post(format!("{}/oauth/token", sim.base_url()))
            .insert_header(("Authorization", format!("Basic {basic}")))
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .send_body("grant_type=client_credentials")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let token: serde_json::Value = resp.json().await?;
        let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap_or(""));
        let mut resp = http
            .post(format!("{}/api/v2/notifications/channels", sim.base_url()))
            .insert_header(("Authorization", bearer.clone()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let channel: serde_json::Value = resp.json().await?;
        let id = channel["id"].as_str().unwrap_or_default().to_owned();
        let topic = format!("v2.routing.queues.{}.conversations", sim.queue_ids()[0]);
        http.put(format!(
            "{}/api/v2/notifications/channels/{id}/subscriptions",
            sim.base_url()
        ))
        .insert_header(("Authorization", bearer))
        .send_json(&serde_json::json!([{ "id": topic }]))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let uri = channel["connectUri"].as_str().unwrap_or_default();
        let (_, mut framed) = http
            .ws(uri)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        while sim.channels().iter().all(|c| !c.connected) {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }

        let triggered = Instant::now();
        sim.faults().burst(id.as_str(), count, None);
        let mut received = 0u64;
        let mut bytes = 0u64;
        let mut first = None;
        while received < count {
            match framed.next().await {
                Some(Ok(ws::Frame::Text(t))) => {
                    first.get_or_insert_with(Instant::now);
                    bytes += t.len() as u64;
                    received += 1;
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("socket ended after {received} frames: {other:?}"),
            }
        }
        let done = Instant::now();
        let streaming = done - first.unwrap_or(triggered);
        let total = done - triggered;
        let recorded = sim.ledger_count(|e| e.kind == FrameKind::Event);
        println!(
            "burst of {count} events on one socket: {:.0} events/s ({:.1} MB/s) first-to-last in {:.2?}; \
             {:.0} events/s including setup ({:.2?}); avg frame {} bytes; ledger kept {recorded} (cap 100k)",
            count as f64 / streaming.as_secs_f64(),
            bytes as f64 / streaming.as_secs_f64() / 1e6,
            streaming,
            count as f64 / total.as_secs_f64(),
            total,
            bytes / count.max(1),
        );
        Ok::<(), anyhow::Error>(())
    })
}
