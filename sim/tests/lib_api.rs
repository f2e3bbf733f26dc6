//! The library and binary surfaces: handle traits, start/stop from any harness, config
//! validation, the binary's flags and start-up line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use genesys_sim::{SimConfig, SimHandle, Simulator};

fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

fn get_plain(base_url: &str, path: &str) -> std::io::Result<String> {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn handle_is_send_sync_clone_and_works_from_a_plain_test() {
    assert_send_sync_clone::<SimHandle>();
    let sim = Simulator::start(SimConfig::default()).unwrap();
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    assert!(sim.ws_base_url().starts_with("ws://127.0.0.1:"));
    let reply = get_plain(&sim.base_url(), "/sim/info").unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(&sim.org_id()));
    let clone = sim.clone();
    std::thread::spawn(move || clone.queue_ids())
        .join()
        .unwrap();
    let base = sim.base_url();
    sim.stop();
    assert!(
        get_plain(&base, "/sim/info").is_err(),
        "stopped: port closed"
    );
}

#[tokio::test]
async fn works_from_a_tokio_test() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let base = sim.base_url();
    let reply = tokio::task::spawn_blocking(move || get_plain(&base, "/sim/info").unwrap())
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"));
    drop(sim);
}

#[test]
fn rejects_non_loopback_and_bad_values() {
    let cfg = SimConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..SimConfig::default()
    };
    assert!(Simulator::start(cfg).is_err());
    let cfg = SimConfig {
        queues: 0,
        ..SimConfig::default()
    };
    assert!(Simulator::start(cfg).is_err());
    let cfg = SimConfig {
        rate_per_sec: f64::NAN,
        ..SimConfig::default()
    };
    assert!(Simulator::start(cfg).is_err());
}

#[test]
fn binary_help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_genesys-sim"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--ws-listen",
        "--queues",
        "--agents",
        "--rate",
        "--seed",
        "--token-lifetime",
        "--channel-lifetime",
        "--heartbeat-interval",
        "--socket-closing-grace",
        "--client",
        "--profile",
        "--max-channels-per-client",
        "--max-topics-per-channel",
        "--ledger-limit",
        "--workers",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn binary_starts_and_reports_its_urls() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_genesys-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--queues",
            "50",
            "--agents",
            "200",
            "--rate",
            "20/s",
            "--seed",
            "7",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let base = ready["baseUrl"].as_str().unwrap().to_owned();
    assert!(ready["wsBaseUrl"]
        .as_str()
        .unwrap()
        .starts_with("ws://127.0.0.1:"));
    let reply = get_plain(&base, "/sim/info").unwrap();
    assert!(reply.contains("\"queues\":50"), "{reply}");
    assert!(reply.contains("\"users\":200"), "{reply}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn rejected_rate_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_genesys-sim"))
        .args(["--rate", "fast"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
