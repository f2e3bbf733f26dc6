//! Helpers shared by the integration tests: an HTTP client speaking the Genesys API to the
//! simulator, a WebSocket reader, and polling with a deadline (never a bare sleep).

#![allow(dead_code)]

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use awc::ws;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use genesys_sim::{SimConfig, SimHandle, Simulator};
use serde_json::{json, Value};

pub const WAIT: Duration = Duration::from_secs(10);

/// A configuration with fast timers and no traffic unless asked.
pub fn fast_config() -> SimConfig {
    SimConfig {
        queues: 3,
        agents: 6,
        rate_per_sec: 0.0,
        heartbeat_interval: Duration::from_millis(200),
        socket_closing_grace: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

pub fn start(cfg: SimConfig) -> SimHandle {
    Simulator::start(cfg).expect("simulator starts")
}

/// Polls `cond` until it holds or `WAIT` passes (then panics with `what`).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Synchronous variant for conditions on the handle.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(cond())).await
}

pub struct Api {
    pub base: String,
    pub http: awc::Client,
    pub token: String,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
}

pub fn http() -> awc::Client {
    // awc is built with rustls; with both crypto providers compiled into the workspace, rustls
    // needs one chosen explicitly (plain http/ws never uses it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .finish()
}

/// `POST /oauth/token` with Basic credentials.
pub async fn token_request(base: &str, id: &str, secret: &str) -> Resp {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let req = http()
        .post(format!("{base}/oauth/token"))
        .insert_header(("Authorization", format!("Basic {basic}")))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    into_resp(req.send_body("grant_type=client_credentials").await).await
}

async fn into_resp(res: Result<awc::ClientResponse, awc::error::SendRequestError>) -> Resp {
    let mut res = res.expect("request sent");
    let bytes = res.body().limit(64 << 20).await.expect("body read");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Resp {
        status: res.status(),
        headers: res.headers().clone(),
        body,
    }
}

impl Api {
    pub async fn login(base: &str) -> Api {
        Api::login_as(base, "sim-client", "sim-secret").await
    }

    pub async fn login_as(base: &str, id: &str, secret: &str) -> Api {
        let resp = token_request(base, id, secret).await;
        assert_eq!(resp.status, StatusCode::OK, "login: {}", resp.body);
        Api {
            base: base.to_owned(),
            http: http(),
            token: resp.body["access_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = format!("{}{path}", self.base);
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self
            .http
            .request(method, url)
            .insert_header(("Authorization", format!("Bearer {}", self.token)));
        match body {
            Some(b) => into_resp(req.send_json(&b).await).await,
            None => into_resp(req.send().await).await,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }

    /// Creates a channel; returns (id, connectUri).
    pub async fn channel(&self) -> (String, String) {
        let resp = self
            .call("POST", "/api/v2/notifications/channels", None)
            .await;
        assert_eq!(resp.status, StatusCode::OK, "create channel: {}", resp.body);
        (
            resp.body["id"].as_str().unwrap().to_owned(),
            resp.body["connectUri"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn subscribe(&self, channel: &str, topics: &[String], query: &str) -> Resp {
        let body = Value::Array(topics.iter().map(|t| json!({ "id": t })).collect());
        self.call(
            "PUT",
            &format!("/api/v2/notifications/channels/{channel}/subscriptions{query}"),
            Some(body),
        )
        .await
    }

    /// Subscribes with `ignoreErrors=true` and asserts every topic was permitted.
    pub async fn subscribe_ok(&self, channel: &str, topics: &[String]) {
        let resp = self.subscribe(channel, topics, "?ignoreErrors=true").await;
        assert_eq!(resp.status, StatusCode::OK, "subscribe: {}", resp.body);
        for e in resp.body["entities"].as_array().unwrap() {
            assert_eq!(e["state"], "Permitted", "{e}");
        }
    }
}

/// Posts a fault to `/sim/faults`.
pub async fn post_fault(base: &str, fault: Value) -> Resp {
    into_resp(
        http()
            .post(format!("{base}/sim/faults"))
            .send_json(&fault)
            .await,
    )
    .await
}

pub fn queue_topics(sim: &SimHandle) -> Vec<String> {
    sim.queue_ids()
        .iter()
        .map(|q| format!("v2.routing.queues.{q}.conversations"))
        .collect()
}

/// What the client saw on a socket.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame (code, reason).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (a browser would report 1006).
    Abnormal,
}

pub struct Socket {
    pub framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
}

impl Socket {
    pub async fn connect(uri: &str) -> Socket {
        Socket::try_connect(uri)
            .await
            .unwrap_or_else(|status| panic!("upgrade refused: {status:?}"))
    }

    /// Connects, or returns the HTTP status the upgrade was refused with.
    pub async fn try_connect(uri: &str) -> Result<Socket, Option<StatusCode>> {
        match http().ws(uri).max_frame_size(8 << 20).connect().await {
            Ok((_resp, framed)) => Ok(Socket { framed }),
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => Err(Some(s)),
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// Next frame, or `None` if nothing arrives within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Seen> {
        let frame = actix_rt::time::timeout(within, self.framed.next())
            .await
            .ok()?;
        Some(match frame {
            None | Some(Err(_)) => Seen::Abnormal,
            Some(Ok(ws::Frame::Text(b))) => Seen::Text(String::from_utf8(b.to_vec()).unwrap()),
            Some(Ok(ws::Frame::Binary(b))) => Seen::Binary(b.to_vec()),
            Some(Ok(ws::Frame::Pong(b))) => Seen::Pong(b.to_vec()),
            Some(Ok(ws::Frame::Close(reason))) => {
                Seen::Close(reason.map(|r| (u16::from(r.code), r.description.unwrap_or_default())))
            }
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        })
    }

    pub async fn next(&mut self) -> Seen {
        self.next_within(WAIT).await.expect("a frame in time")
    }

    /// Next text frame whose JSON satisfies `pred` (skipping others); panics on close.
    pub async fn next_json_where(&mut self, pred: impl Fn(&Value) -> bool) -> (String, Value) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(Seen::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("json frame");
                    if pred(&v) {
                        return (t, v);
                    }
                }
                Some(other) => panic!("expected a text frame, got {other:?}"),
                None => panic!("no matching frame in time"),
            }
        }
    }

    /// Skips text frames until the socket ends; returns how it ended.
    pub async fn end(&mut self) -> Seen {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(Seen::Text(_)) | Some(Seen::Binary(_)) | Some(Seen::Pong(_)) => continue,
                Some(end) => return end,
                None => panic!("socket did not end in time"),
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(ws::Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    pub async fn send_ping(&mut self, payload: &[u8]) {
        self.framed
            .send(ws::Message::Ping(bytes::Bytes::copy_from_slice(payload)))
            .await
            .unwrap();
    }
}

pub fn is_heartbeat(v: &Value) -> bool {
    v["topicName"] == "channel.metadata" && v["eventBody"]["message"] == "WebSocket Heartbeat"
}

pub fn is_pong(v: &Value) -> bool {
    v["topicName"] == "channel.metadata" && v["eventBody"]["message"] == "pong"
}

/// Reads a socket in the background, keeping every text frame; ends with how the socket ended.
pub fn spawn_reader(
    mut socket: Socket,
) -> (Rc<RefCell<Vec<String>>>, actix_rt::task::JoinHandle<Seen>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    let task = actix_rt::spawn(async move {
        loop {
            match socket.next_within(Duration::from_secs(30)).await {
                Some(Seen::Text(t)) => sink.borrow_mut().push(t),
                Some(Seen::Pong(_)) | Some(Seen::Binary(_)) | None => {}
                Some(end) => return end,
            }
        }
    });
    (seen, task)
}

/// `GET url` → (status, JSON body or `Null`).
pub async fn get_json(url: &str) -> (StatusCode, Value) {
    let mut resp = http().get(url).send().await.unwrap();
    let body = resp.body().limit(64 << 20).await.unwrap();
    let status = resp.status();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, value)
}
