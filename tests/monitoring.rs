//! The shipped monitoring against a real Prometheus: Debian's `prometheus` server (2.x), started on
//! loopback, scrapes the real bridge binary (`demo`: simulator and embedded Kafka, with its faults)
//! and loads deploy/monitoring/prometheus-rules.yaml. Every alert rule evaluates without error and
//! every metric it selects has series; every query of the Grafana dashboard (panels and template
//! variables) evaluates and returns data. `promtool check metrics` judges the exposition.
//!
//! Needs `prometheus` and `promtool` on PATH (or PROMETHEUS_BIN / PROMTOOL_BIN); scripts/test.sh
//! installs Debian's package when they are missing.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use support::{free_port, wait_until, BIN};

/// Families whose label values come from what happened at run time (a Kafka error code, a
/// reconnect reason, a refused mailbox): they export no series until the first such event, so a
/// query of them alone may return nothing. Every other metric a query selects must have series
/// (rollovers too: the test waits for the demo's maintenance close).
const LABELLED_ON_FIRST_USE: &[&str] = &[
    "genesys_bridge_events_failed_total",
    "genesys_bridge_rest_errors_total",
    "genesys_bridge_mailbox_rejections_total",
    "genesys_bridge_leg_losses_total",
    "genesys_bridge_reconnects_total",
    "genesys_bridge_reconciliation_findings_total",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(env: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} not found (set {env}, or install Debian's prometheus package: scripts/test.sh does)")
    })
}

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `genesys_bridge_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("genesys_bridge_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

struct Prometheus {
    base: String,
}

impl Prometheus {
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut request =
            ureq::get(&format!("{}{path}", self.base)).timeout(Duration::from_secs(10));
        for (key, value) in query {
            request = request.query(key, value);
        }
        match request.call() {
            Ok(response) => response.into_json().expect("Prometheus answers JSON"),
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                serde_json::json!({"status": "error", "code": code, "error": body})
            }
            Err(error) => serde_json::json!({"status": "error", "error": error.to_string()}),
        }
    }

    /// The result vector of an instant query; panics if Prometheus refuses the query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self.api("/api/v1/query", &[("query", expr)]);
        assert_eq!(answer["status"], "success", "query {expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn has_series(&self, metric: &str) -> bool {
        !self.query(&format!("count({metric})")).is_empty()
    }
}

/// Every query of the dashboard: panel targets and template variables, Grafana's variables
/// replaced by what Grafana would send (all jobs and instances, a rate interval of four scrapes).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let grafana = |expr: &str| {
        expr.replace("$__rate_interval", "4s")
            .replace("$__range", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*")
    };
    let mut queries = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let text = variable["query"]["query"].as_str().unwrap();
        // label_values(selector, label): the series of the selector carry the label.
        let inner = text
            .strip_prefix("label_values(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {text}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        queries.push((
            format!("variable {}", variable["name"]),
            format!("count by ({}) ({})", label.trim(), grafana(selector.trim())),
        ));
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                format!(
                    "panel {:?} {}",
                    panel["title"].as_str().unwrap(),
                    target["refId"]
                ),
                grafana(target["expr"].as_str().unwrap()),
            ));
        }
    }
    queries
}

#[test]
fn a_real_prometheus_scrapes_the_bridge_and_every_alert_and_dashboard_query_evaluates() {
    let prometheus_bin = tool("PROMETHEUS_BIN", "prometheus");
    let promtool = tool("PROMTOOL_BIN", "promtool");
    let dir = tempfile::tempdir().unwrap();

    // The bridge: the demo (simulator, embedded Kafka; a maintenance close at a third of its
    // duration, a Kafka slowdown at half). The checks below take seconds once the close came
    // (at 50 s); the demo serves for 150 s.
    let mut demo = Command::new(BIN)
        .args(["demo", "--duration", "150s", "--http", "127.0.0.1:0"])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = demo.stdout.take().unwrap();
    let _demo = Killed(demo);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("metrics: http://") {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
            }
        }
    });
    let bridge = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo prints its metrics address");
    let metrics_url = format!("http://{bridge}/metrics");
    wait_until(
        "the bridge produced events",
        Duration::from_secs(60),
        || {
            ureq::get(&metrics_url)
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|body| {
                    body.lines().any(|l| {
                        l.strip_prefix("genesys_bridge_events_produced_total ")
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|v| v > 0.0)
                    })
                })
        },
    );

    // promtool check metrics: names, help texts and types of the exposition.
    let exposition = ureq::get(&metrics_url)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );

    // Prometheus, scraping every second and evaluating the shipped rules every second.
    let rules = repo().join("deploy/monitoring/prometheus-rules.yaml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: genesys-kafka-bridge\n    static_configs:\n      - targets: [\"{bridge}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let checked = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let port = free_port();
    let server = Command::new(&prometheus_bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let _server = Killed(server);
    let prom = Prometheus {
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_until("Prometheus ready", Duration::from_secs(60), || {
        ureq::get(&format!("{}/-/ready", prom.base))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });

    // The target is up: Prometheus parsed what /metrics served it.
    let mut target = Value::Null;
    wait_until("the bridge scraped", Duration::from_secs(30), || {
        target = prom.api("/api/v1/targets", &[])["data"]["activeTargets"][0].clone();
        target["health"] == "up"
    });
    assert_eq!(target["lastError"], "", "{target}");
    // Enough samples for the rate windows of the dashboard (4 s) and the rules.
    wait_until("ten scrapes", Duration::from_secs(60), || {
        prom.query("count_over_time(genesys_bridge_build_info[1m]) >= 10")
            .len()
            == 1
    });

    wait_until(
        "the demo's maintenance close rolled the channels over",
        Duration::from_secs(90),
        // Samples enough for the dashboard's 4 s rate window.
        || {
            !prom
                .query("count_over_time(genesys_bridge_rollovers_total[4s]) >= 3")
                .is_empty()
        },
    );

    // Every rule of the file loaded, evaluated, healthy; every metric it selects has series.
    let alerts_in_file = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert: "))
        .count();
    assert!(alerts_in_file >= 10, "{alerts_in_file} alerts in {rules:?}");
    let mut loaded = Vec::new();
    wait_until("every rule evaluated", Duration::from_secs(30), || {
        let answer = prom.api("/api/v1/rules", &[]);
        loaded = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        loaded.len() == alerts_in_file
            && loaded.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
    });
    let mut empty = Vec::new();
    for rule in &loaded {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "{name}: {rule}");
        assert!(
            rule["lastError"].as_str().unwrap_or_default().is_empty(),
            "{name}: {rule}"
        );
        let expr = rule["query"].as_str().unwrap();
        prom.query(expr);
        for metric in metric_names(expr) {
            if !prom.has_series(&metric) {
                assert!(
                    LABELLED_ON_FIRST_USE.contains(&metric.as_str()),
                    "{name}: {metric} has no series"
                );
                empty.push(format!("{name}: {metric}"));
            }
        }
    }

    // Every dashboard query evaluates, and returns data unless it selects only families that are
    // labelled on first use and have had none.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            repo().join("deploy/helm/genesys-kafka-bridge/dashboards/genesys-kafka-bridge.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 40, "{} dashboard queries", queries.len());
    let mut returned = 0;
    for (what, expr) in &queries {
        let result = prom.query(expr);
        if !result.is_empty() {
            returned += 1;
            continue;
        }
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what}: {expr} selects no bridge metric");
        for metric in names {
            assert!(
                LABELLED_ON_FIRST_USE.contains(&metric.as_str()) && !prom.has_series(&metric),
                "{what}: {expr} returned nothing though {metric} has series (or is not labelled on first use)"
            );
        }
        empty.push(format!("{what}: {expr}"));
    }
    eprintln!(
        "{} rules healthy; {returned} of {} dashboard queries returned data; empty (families not used yet): {empty:#?}",
        loaded.len(),
        queries.len()
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names(
        "sum(rate(genesys_bridge_events_spooled_total{job=~\"$job\"}[5m])) / genesys_bridge_spool_capacity_bytes",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "genesys_bridge_events_spooled_total",
            "genesys_bridge_spool_capacity_bytes"
        ]
    );
}
