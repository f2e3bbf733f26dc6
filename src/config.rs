//! The configuration file: parsed once into a validated struct.
//!
//! One TOML file; durations like `"30s"` or `"23h"`; unknown keys are errors; the client id and
//! secret come from the environment (or files named there), never from the file. Every field is
//! documented in `config/bridge.example.toml`, which a test loads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use genesys_actors::backfill::reconcile::ReconcileSettings;
use genesys_actors::backfill::{BackfillSettings, RequestBudget};
use genesys_actors::backoff::ExponentialBackoff;
use genesys_actors::conversations::{LifecycleSettings, Rules};
use genesys_actors::genesys::endpoints::Endpoints;
use genesys_actors::producer::routing::{Route, Router};
use genesys_actors::producer::KafkaSettings;
use genesys_actors::secret::Secret;
use genesys_actors::socket::SocketSettings;
use genesys_actors::spool::SpoolConfig;
use genesys_actors::supervisor::{BridgeSettings, SupervisorSettings, TopicSettings};
use genesys_actors::token::TokenSettings;
use genesys_actors::topics::{TopicTemplate, MAX_CHANNELS, MAX_TOPICS_PER_CHANNEL};
use serde::{Deserialize, Serialize};

/// Environment variables holding the OAuth client credentials (or `…_FILE` naming a file).
pub const ENV_CLIENT_ID: &str = "GENESYS_CLIENT_ID";
pub const ENV_CLIENT_SECRET: &str = "GENESYS_CLIENT_SECRET";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub genesys: GenesysConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub socket: SocketConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub backfill: BackfillConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub debug: DebugConfig,
}

/// Filling gaps from the analytics conversation details query.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillConfig {
    pub enabled: bool,
    /// Kafka topic of recovered conversations (one record per conversation, keyed by its id).
    pub topic: String,
    /// Wait this long after a gap ended before querying it (analytics data lags; pages of a
    /// live interval shift).
    #[serde(with = "humantime_serde")]
    pub settle_delay: Duration,
    /// Pad each gap by this much on both sides.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// Longer gaps are queried in intervals of at most this length.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Conversations per page (Genesys allows at most 100).
    pub page_size: u32,
    /// Request budget towards the analytics API (Genesys allows 300 per minute per token, shared
    /// with the rest of the bridge).
    pub requests_per_minute: u32,
    /// Give up on a gap after this many failed requests in a row (reported on the status topic).
    pub max_attempts: u32,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            topic: "genesys.backfill".into(),
            settle_delay: Duration::from_secs(120),
            margin: Duration::from_secs(60),
            max_interval: Duration::from_secs(3600),
            page_size: 100,
            requests_per_minute: 60,
            max_attempts: 10,
        }
    }
}

/// The conversation lifecycle stream: `conversation.started` / `conversation.ended` (and
/// `conversation.wrapup`) derived from the snapshots, completed by reconciliation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    pub enabled: bool,
    /// Kafka topic of the lifecycle records (keyed by conversation id).
    pub topic: String,
    /// Also write `conversation.wrapup` when an agent's wrap-up code is known.
    pub wrapup: bool,
    /// Put the ANI and DNIS (phone numbers: personal data) into the records.
    pub include_addresses: bool,
    /// How often the lifecycle state is checkpointed; a restart replays at most this much.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How long ended conversations are remembered (a late snapshot does not start them again).
    #[serde(with = "humantime_serde")]
    pub remember_ended: Duration,
    /// Open conversations without any news for this long are given up.
    #[serde(with = "humantime_serde")]
    pub max_open: Duration,
    /// Reconcile against the analytics details query (needs `analytics:conversationDetail:view`).
    pub reconcile: bool,
    /// How often reconciliation runs.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Only conversations that started at least this long ago are queried (analytics lags).
    #[serde(with = "humantime_serde")]
    pub reconcile_settle: Duration,
    /// An open conversation without a snapshot for this long is looked up in analytics.
    #[serde(with = "humantime_serde")]
    pub reconcile_quiet_after: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            topic: "genesys.conversations.lifecycle".into(),
            wrapup: true,
            include_addresses: false,
            checkpoint_interval: Duration::from_secs(5),
            remember_ended: Duration::from_secs(2 * 3600),
            max_open: Duration::from_secs(48 * 3600),
            reconcile: true,
            reconcile_interval: Duration::from_secs(300),
            reconcile_settle: Duration::from_secs(120),
            reconcile_quiet_after: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesysConfig {
    /// Region key (`us_east_1`) or domain (`mypurecloud.com`). Either this or both URLs.
    #[serde(default)]
    pub region: Option<String>,
    /// Explicit REST base URL, e.g. `http://127.0.0.1:8080` for the simulator.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Explicit OAuth base URL.
    #[serde(default)]
    pub login_url: Option<String>,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Refresh the token this long before it expires.
    #[serde(default = "default_token_margin", with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    /// At most one token refresh per this interval when Genesys rejects tokens.
    #[serde(default = "default_min_refresh", with = "humantime_serde")]
    pub token_min_refresh_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Topics subscribed as written.
    #[serde(default)]
    pub explicit: Vec<String>,
    /// Templates expanded for every queue or user.
    #[serde(default)]
    pub templates: Vec<TopicTemplate>,
    /// Topics per channel (Genesys allows at most 1,000).
    #[serde(default = "default_per_channel")]
    pub per_channel: usize,
    /// Channels this bridge may use (Genesys allows 20 per OAuth client).
    #[serde(default = "default_channel_budget")]
    pub channel_budget: usize,
    /// How often templates are expanded again, to pick up new queues and users.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// librdkafka properties; `bootstrap.servers` is required.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties read from files at start-up (e.g. `sasl.password` from a mounted
    /// Secret), so that secrets stay out of the config file. Trailing newlines are removed.
    #[serde(default)]
    pub properties_from_files: BTreeMap<String, PathBuf>,
    /// Topic for events no route matches.
    pub default_topic: String,
    /// Routes from Genesys topic patterns to Kafka topics; the first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Topic for gap and lifecycle records.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// Topic for records Kafka refused for good; unset: the dead-letter file only.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Last-resort dead-letter file (JSON lines); default: `dead-letters.jsonl` in the spool dir.
    #[serde(default)]
    pub dead_letter_file: Option<PathBuf>,
    /// Records handed to librdkafka and not yet acknowledged, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Their value bytes, at most (librdkafka holds a copy of each until acknowledged).
    #[serde(default = "default_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// Pacing of records produced again after a failed delivery (only with
    /// `message.timeout.ms` set, or errors librdkafka gives up on).
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: ExponentialBackoff,
    /// Failed deliveries of one record, counted only while Kafka takes other records, after
    /// which it is dead-lettered; 0: never.
    #[serde(default = "default_delivery_attempts")]
    pub max_delivery_attempts: u32,
    /// Delay before a fresh producer after a fatal error (refused credentials or ACLs).
    #[serde(default = "default_producer_restart_backoff")]
    pub restart_backoff: ExponentialBackoff,
    /// Exit (code 69) once fatal producer errors went on this long; "0s": never.
    #[serde(default = "default_exit_after_failing", with = "humantime_serde")]
    pub exit_after_failing_for: Duration,
    /// The dead-letter file is rotated at this size ...
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_file_max_bytes: u64,
    /// ... and this many rotated files are kept.
    #[serde(default = "default_dead_letter_keep")]
    pub dead_letter_file_keep: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// Legs (redundant channels with the same topics) per shard: 1 or 2. Unset: 2 whenever
    /// two channels per shard fit in `topics.channel_budget`, else 1 with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<usize>,
    #[serde(default = "default_ping", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A socket that shows no frame within this time after a ping is dead and replaced.
    #[serde(default = "default_pong_timeout", with = "humantime_serde")]
    pub pong_timeout: Duration,
    #[serde(default = "default_dead_after", with = "humantime_serde")]
    pub dead_after: Duration,
    #[serde(default = "default_rollover_margin", with = "humantime_serde")]
    pub rollover_margin: Duration,
    #[serde(default = "default_rollover_timeout", with = "humantime_serde")]
    pub rollover_timeout: Duration,
    /// Planned rollovers of one leg are at least this far apart.
    #[serde(default = "default_min_rollover_interval", with = "humantime_serde")]
    pub min_rollover_interval: Duration,
    /// A socket that lived this long proved stable: the reconnect backoff starts over.
    #[serde(default = "default_stable_after", with = "humantime_serde")]
    pub stable_after: Duration,
    /// Connect attempts per leg and minute, at most.
    #[serde(default = "default_max_connects")]
    pub max_connects_per_minute: u32,
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    #[serde(default = "default_dedup_capacity")]
    pub dedup_capacity: usize,
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
    #[serde(default)]
    pub backoff: ExponentialBackoff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `/livez` fails when an actor does not answer within this time.
    #[serde(default = "default_live_deadline", with = "humantime_serde")]
    pub liveness_deadline: Duration,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    Auto,
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `genesys_actors=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Failures (stops or panics) of one actor within `crash_window` that make the process exit
    /// (code 70) instead of restarting it once more.
    pub crash_threshold: usize,
    #[serde(with = "humantime_serde")]
    pub crash_window: Duration,
    pub restart_backoff: ExponentialBackoff,
    /// SIGTERM: stop reading, flush to Kafka, exit within this time (keep it below the pod's
    /// terminationGracePeriodSeconds).
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// Enables `POST /debug/panic/{actor}` (tests only; never in production).
    #[serde(default)]
    pub fault_injection: bool,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_token_margin() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_per_channel() -> usize {
    MAX_TOPICS_PER_CHANNEL
}
fn default_channel_budget() -> usize {
    MAX_CHANNELS
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_status_topic() -> String {
    "genesys.bridge.status".into()
}
fn default_in_flight() -> usize {
    10_000
}
fn default_in_flight_bytes() -> usize {
    32 << 20
}
fn default_retry_backoff() -> ExponentialBackoff {
    ExponentialBackoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(5),
        jitter: 0.2,
    }
}
fn default_delivery_attempts() -> u32 {
    10
}
fn default_producer_restart_backoff() -> ExponentialBackoff {
    ExponentialBackoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(60),
        jitter: 0.2,
    }
}
fn default_exit_after_failing() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_dead_letter_max_bytes() -> u64 {
    100 << 20
}
fn default_dead_letter_keep() -> usize {
    3
}
fn default_ping() -> Duration {
    Duration::from_secs(15)
}
fn default_pong_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_min_rollover_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_stable_after() -> Duration {
    Duration::from_secs(30)
}
fn default_max_connects() -> u32 {
    12
}
fn default_dead_after() -> Duration {
    Duration::from_secs(75)
}
fn default_rollover_margin() -> Duration {
    Duration::from_secs(600)
}
fn default_rollover_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_frame() -> usize {
    16 << 20
}
fn default_dedup_capacity() -> usize {
    100_000
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(120)
}
fn default_live_deadline() -> Duration {
    Duration::from_secs(3)
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            explicit: Vec::new(),
            templates: Vec::new(),
            per_channel: default_per_channel(),
            channel_budget: default_channel_budget(),
            refresh_interval: default_refresh(),
        }
    }
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            redundancy: None,
            ping_interval: default_ping(),
            pong_timeout: default_pong_timeout(),
            dead_after: default_dead_after(),
            rollover_margin: default_rollover_margin(),
            rollover_timeout: default_rollover_timeout(),
            min_rollover_interval: default_min_rollover_interval(),
            stable_after: default_stable_after(),
            max_connects_per_minute: default_max_connects(),
            max_frame_bytes: default_max_frame(),
            dedup_capacity: default_dedup_capacity(),
            dedup_window: default_dedup_window(),
            backoff: ExponentialBackoff::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("valid default address"),
            liveness_deadline: default_live_deadline(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            crash_threshold: 5,
            crash_window: Duration::from_secs(60),
            restart_backoff: ExponentialBackoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(30),
                jitter: 0.2,
            },
            shutdown_deadline: Duration::from_secs(20),
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The OAuth client credentials, from the environment.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Secret,
}

/// Where environment variables come from (the process, or a map in tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// `NAME` or the contents of the file named by `NAME_FILE` (trailing newline removed).
fn from_env(env: &dyn Env, name: &str) -> Result<String, ConfigError> {
    if let Some(value) = env.var(name) {
        return Ok(value);
    }
    let file_var = format!("{name}_FILE");
    if let Some(path) = env.var(&file_var) {
        let content = std::fs::read_to_string(&path)
            .map_err(|e| invalid(&file_var, format!("cannot read {path}: {e}")))?;
        let value = content.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(invalid(&file_var, format!("{path} is empty")));
        }
        return Ok(value);
    }
    Err(invalid(
        name,
        format!(
            "not set: set {name} or {file_var} (credentials are never read from the config file)"
        ),
    ))
}

pub fn credentials(env: &dyn Env) -> Result<Credentials, ConfigError> {
    Ok(Credentials {
        client_id: from_env(env, ENV_CLIENT_ID)?,
        client_secret: Secret::new(from_env(env, ENV_CLIENT_SECRET)?),
    })
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn endpoints(&self) -> Result<Endpoints, ConfigError> {
        let g = &self.genesys;
        match (&g.region, &g.api_url, &g.login_url) {
            (_, Some(api), Some(login)) => Endpoints::explicit(api, login)
                .map_err(|e| invalid("genesys.api_url/login_url", e.to_string())),
            (_, Some(_), None) | (_, None, Some(_)) => Err(invalid(
                "genesys.api_url/login_url",
                "set both api_url and login_url, or neither",
            )),
            (Some(region), None, None) => {
                Endpoints::for_region(region).map_err(|e| invalid("genesys.region", e.to_string()))
            }
            (None, None, None) => Err(invalid(
                "genesys.region",
                "set a region (e.g. us_east_1 or mypurecloud.com) or api_url and login_url",
            )),
        }
    }

    /// Checks what serde cannot: relations between keys and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoints()?;
        if self.debug.fault_injection && !cfg!(feature = "fault-injection") {
            return Err(invalid(
                "debug.fault_injection",
                "this build has no fault injection (it is for tests: cargo feature `fault-injection`)",
            ));
        }
        let t = &self.topics;
        if t.explicit.is_empty() && t.templates.is_empty() {
            return Err(invalid(
                "topics",
                "no topics: set topics.explicit or topics.templates",
            ));
        }
        for (index, template) in t.templates.iter().enumerate() {
            if template.source().is_none() {
                return Err(invalid(
                    &format!("topics.templates[{index}].template"),
                    format!(
                        "{:?} must contain queues.{{id}} or users.{{id}}",
                        template.template
                    ),
                ));
            }
        }
        for topic in &t.explicit {
            if topic.starts_with("channel.metadata") || topic.starts_with("v2.system.") {
                return Err(invalid(
                    "topics.explicit",
                    format!("{topic:?} arrives without subscribing and must not be subscribed"),
                ));
            }
            if topic.contains('{') {
                return Err(invalid(
                    "topics.explicit",
                    format!("{topic:?} has a placeholder: put it in topics.templates"),
                ));
            }
        }
        if !(1..=MAX_TOPICS_PER_CHANNEL).contains(&t.per_channel) {
            return Err(invalid(
                "topics.per_channel",
                format!("must be 1..=1000, got {}", t.per_channel),
            ));
        }
        if !(2..=MAX_CHANNELS).contains(&t.channel_budget) {
            return Err(invalid(
                "topics.channel_budget",
                format!(
                    "must be 2..=20 (one shard and a free slot for its rollovers at least), got {}",
                    t.channel_budget
                ),
            ));
        }
        let s = &self.socket;
        if let Some(legs) = s.redundancy {
            if !(1..=2).contains(&legs) {
                return Err(invalid(
                    "socket.redundancy",
                    format!("must be 1 or 2, got {legs}"),
                ));
            }
        }
        if s.ping_interval.is_zero() {
            return Err(invalid("socket.ping_interval", "must be greater than zero"));
        }
        if s.pong_timeout.is_zero() {
            return Err(invalid("socket.pong_timeout", "must be greater than zero"));
        }
        if s.max_connects_per_minute == 0 {
            return Err(invalid(
                "socket.max_connects_per_minute",
                "must be at least 1",
            ));
        }
        if s.dead_after <= s.ping_interval {
            return Err(invalid(
                "socket.dead_after",
                format!(
                    "({}) must be longer than socket.ping_interval ({})",
                    humantime::format_duration(s.dead_after),
                    humantime::format_duration(s.ping_interval)
                ),
            ));
        }
        if s.max_frame_bytes < 1024 {
            return Err(invalid("socket.max_frame_bytes", "must be at least 1024"));
        }
        s.backoff
            .validate()
            .map_err(|e| invalid("socket.backoff", e.to_string()))?;
        self.supervisor
            .restart_backoff
            .validate()
            .map_err(|e| invalid("supervisor.restart_backoff", e.to_string()))?;
        if self.supervisor.crash_threshold == 0 {
            return Err(invalid("supervisor.crash_threshold", "must be at least 1"));
        }
        let k = &self.kafka;
        if !k.properties.contains_key("bootstrap.servers") {
            return Err(invalid(
                "kafka.properties",
                "\"bootstrap.servers\" is required",
            ));
        }
        if k.default_topic.trim().is_empty() {
            return Err(invalid("kafka.default_topic", "must not be empty"));
        }
        if k.max_in_flight == 0 {
            return Err(invalid("kafka.max_in_flight", "must be at least 1"));
        }
        if k.max_in_flight_bytes < 1024 {
            return Err(invalid(
                "kafka.max_in_flight_bytes",
                "must be at least 1024",
            ));
        }
        k.retry_backoff
            .validate()
            .map_err(|e| invalid("kafka.retry_backoff", e.to_string()))?;
        k.restart_backoff
            .validate()
            .map_err(|e| invalid("kafka.restart_backoff", e.to_string()))?;
        if k.dead_letter_file_max_bytes < 4096 {
            return Err(invalid(
                "kafka.dead_letter_file_max_bytes",
                "must be at least 4096",
            ));
        }
        if k.dead_letter_file_keep == 0 {
            return Err(invalid(
                "kafka.dead_letter_file_keep",
                "must be at least 1 (rotation would delete every dead letter)",
            ));
        }
        // librdkafka checks its own properties: build a client config now, not at first use.
        let probe = rdkafka::ClientConfig::from_iter(self.kafka_properties()?);
        let producer: Result<rdkafka::producer::BaseProducer, _> = probe.create();
        if let Err(error) = producer {
            return Err(invalid("kafka.properties", error.to_string()));
        }
        self.spool
            .validate()
            .map_err(|e| invalid("spool", e.to_string()))?;
        let b = &self.backfill;
        if !(1..=100).contains(&b.page_size) {
            return Err(invalid(
                "backfill.page_size",
                format!("must be 1..=100, got {}", b.page_size),
            ));
        }
        if b.requests_per_minute == 0 {
            return Err(invalid(
                "backfill.requests_per_minute",
                "must be at least 1",
            ));
        }
        if b.max_attempts == 0 {
            return Err(invalid("backfill.max_attempts", "must be at least 1"));
        }
        if b.max_interval.is_zero() {
            return Err(invalid(
                "backfill.max_interval",
                "must be greater than zero",
            ));
        }
        if b.enabled && b.topic.trim().is_empty() {
            return Err(invalid("backfill.topic", "must not be empty"));
        }
        let l = &self.lifecycle;
        if l.enabled {
            if l.topic.trim().is_empty() {
                return Err(invalid("lifecycle.topic", "must not be empty"));
            }
            for (key, value) in [
                ("lifecycle.checkpoint_interval", l.checkpoint_interval),
                ("lifecycle.remember_ended", l.remember_ended),
                ("lifecycle.max_open", l.max_open),
                ("lifecycle.reconcile_interval", l.reconcile_interval),
            ] {
                if value.is_zero() {
                    return Err(invalid(key, "must be greater than zero"));
                }
            }
            if l.checkpoint_interval > Duration::from_secs(300) {
                return Err(invalid(
                    "lifecycle.checkpoint_interval",
                    "must be at most 5m (acknowledged spool records are kept until the next checkpoint)",
                ));
            }
            if l.remember_ended < l.reconcile_settle + l.reconcile_interval {
                return Err(invalid(
                    "lifecycle.remember_ended",
                    "must be at least reconcile_settle + reconcile_interval, or reconciliation could end a conversation a second time",
                ));
            }
        }
        Ok(())
    }

    /// `kafka.properties` with `kafka.properties_from_files` read in.
    pub fn kafka_properties(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut properties = self.kafka.properties.clone();
        for (name, path) in &self.kafka.properties_from_files {
            let key = format!("kafka.properties_from_files.\"{name}\"");
            if properties.contains_key(name) {
                return Err(invalid(
                    &key,
                    "also set in kafka.properties; set it in one place",
                ));
            }
            let content = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
            properties.insert(
                name.clone(),
                content.trim_end_matches(['\n', '\r']).to_string(),
            );
        }
        Ok(properties)
    }

    /// The effective configuration as TOML, for `check-config`. Secrets never appear in it:
    /// librdkafka properties whose name suggests a secret are redacted.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.properties.iter_mut() {
            if genesys_actors::producer::is_secret_property(key) {
                *value = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }

    /// The runtime settings.
    pub fn bridge_settings(&self, credentials: Credentials) -> Result<BridgeSettings, ConfigError> {
        let endpoints = self.endpoints()?;
        let fault_injection = self.debug.fault_injection;
        let s = &self.socket;
        let dead_letter_file = self
            .kafka
            .dead_letter_file
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("dead-letters.jsonl"));
        Ok(BridgeSettings {
            token: TokenSettings {
                endpoints: endpoints.clone(),
                client_id: credentials.client_id,
                client_secret: credentials.client_secret,
                refresh_margin: self.genesys.token_refresh_margin,
                min_refresh_interval: self.genesys.token_min_refresh_interval,
                backoff: s.backoff,
                request_timeout: self.genesys.request_timeout,
            },
            socket: Arc::new(SocketSettings {
                endpoints,
                ping_interval: s.ping_interval,
                pong_timeout: s.pong_timeout,
                dead_after: s.dead_after,
                rollover_margin: s.rollover_margin,
                rollover_timeout: s.rollover_timeout,
                min_rollover_interval: s.min_rollover_interval,
                stable_after: s.stable_after,
                max_connects_per_minute: s.max_connects_per_minute,
                token_rollover_spread: (self.genesys.token_refresh_margin / 2)
                    .min(Duration::from_secs(60)),
                max_frame_bytes: s.max_frame_bytes,
                request_timeout: self.genesys.request_timeout,
                backoff: s.backoff,
                dedup_capacity: s.dedup_capacity,
                dedup_window: s.dedup_window,
                allow_fault_injection: fault_injection,
            }),
            kafka: Arc::new(KafkaSettings {
                properties: self.kafka_properties()?,
                router: Router::new(&self.kafka.routes, &self.kafka.default_topic),
                status_topic: self.kafka.status_topic.clone(),
                backfill_topic: self.backfill.enabled.then(|| self.backfill.topic.clone()),
                lifecycle_topic: self.lifecycle.topic.clone(),
                dead_letter_topic: self.kafka.dead_letter_topic.clone(),
                dead_letter_file,
                max_in_flight: self.kafka.max_in_flight,
                max_in_flight_bytes: self.kafka.max_in_flight_bytes,
                retry_backoff: self.kafka.retry_backoff,
                max_delivery_attempts: self.kafka.max_delivery_attempts,
                restart_backoff: self.kafka.restart_backoff,
                exit_after_failing_for: Some(self.kafka.exit_after_failing_for)
                    .filter(|limit| !limit.is_zero()),
                dead_letter_limits: genesys_actors::producer::dead_letter::DeadLetterLimits {
                    max_bytes: self.kafka.dead_letter_file_max_bytes,
                    keep: self.kafka.dead_letter_file_keep,
                },
                allow_fault_injection: fault_injection,
            }),
            topics: TopicSettings {
                explicit: self.topics.explicit.clone(),
                templates: self.topics.templates.clone(),
                per_channel: self.topics.per_channel,
                channel_budget: self.topics.channel_budget,
                redundancy: self.socket.redundancy,
                refresh_interval: self.topics.refresh_interval,
            },
            supervisor: SupervisorSettings {
                restart_backoff: self.supervisor.restart_backoff,
                crash_threshold: self.supervisor.crash_threshold,
                crash_window: self.supervisor.crash_window,
                watch_interval: Duration::from_millis(100),
            },
            backfill: self.backfill.enabled.then(|| {
                Arc::new(BackfillSettings {
                    endpoints: self.endpoints().expect("validated"),
                    request_timeout: self.genesys.request_timeout,
                    settle_delay: self.backfill.settle_delay,
                    margin: self.backfill.margin,
                    max_chunk: self.backfill.max_interval,
                    page_size: self.backfill.page_size,
                    requests_per_minute: self.backfill.requests_per_minute,
                    max_attempts: self.backfill.max_attempts,
                    backoff: s.backoff,
                    allow_fault_injection: fault_injection,
                })
            }),
            lifecycle: self.lifecycle.enabled.then_some(LifecycleSettings {
                rules: Rules {
                    wrapup: self.lifecycle.wrapup,
                    addresses: self.lifecycle.include_addresses,
                },
                checkpoint_interval: self.lifecycle.checkpoint_interval,
                remember_ended: self.lifecycle.remember_ended,
                max_open: self.lifecycle.max_open,
            }),
            reconcile: (self.lifecycle.enabled && self.lifecycle.reconcile).then(|| {
                Arc::new(ReconcileSettings {
                    endpoints: self.endpoints().expect("validated"),
                    request_timeout: self.genesys.request_timeout,
                    interval: self.lifecycle.reconcile_interval,
                    settle: self.lifecycle.reconcile_settle,
                    quiet_after: self.lifecycle.reconcile_quiet_after,
                    lookback: self.lifecycle.remember_ended / 2,
                    page_size: self.backfill.page_size,
                    backoff: s.backoff,
                })
            }),
            request_budget: RequestBudget::new(self.backfill.requests_per_minute),
            allow_fault_injection: fault_injection,
        })
    }
}

#[cfg(test)]
mod tests;
