//! OAuth, queue and user lists, the analytics details query, the topic catalogue and the
//! `/sim/*` control endpoints.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use genesys_sim::{SimClient, SimConfig, PERM_CONVERSATION_VIEW};
use serde_json::{json, Value};

#[actix_rt::test]
async fn oauth_client_credentials() {
    let sim = start(SimConfig {
        token_lifetime: Duration::from_secs(600),
        ..fast_config()
    });
    let ok = token_request(&sim.base_url(), "sim-client", "sim-secret").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["token_type"], "bearer");
    assert_eq!(ok.body["expires_in"], 600);
    assert!(ok.body["access_token"].as_str().unwrap().len() > 20);

    for (id, secret) in [("sim-client", "wrong"), ("nobody", "sim-secret")] {
        let bad = token_request(&sim.base_url(), id, secret).await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
        assert_eq!(bad.body["error"], "invalid_client");
        assert!(bad.body["description"].is_string());
        assert!(bad.body["error_description"].is_string());
    }
    let wrong_grant = http()
        .post(format!("{}/oauth/token", sim.base_url()))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body("grant_type=password&client_id=sim-client&client_secret=sim-secret")
        .await
        .unwrap();
    assert_eq!(wrong_grant.status(), StatusCode::BAD_REQUEST);
    // Credentials in the form body are accepted too.
    let mut form = http()
        .post(format!("{}/oauth/token", sim.base_url()))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
        .send_body("grant_type=client_credentials&client_id=sim-client&client_secret=sim-secret")
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let _ = form.body().await;
    assert_eq!(sim.tokens_issued(), 2);

    // API calls: no token, unknown token.
    let none = http()
        .get(format!("{}/api/v2/users", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let forged = Api {
        base: sim.base_url(),
        http: http(),
        token: "forged".into(),
    };
    let resp = forged.get("/api/v2/routing/queues").await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.body["code"], "bad.credentials");
    assert_eq!(resp.body["status"], 401);
    assert!(resp.body["message"].is_string());
}

#[actix_rt::test]
async fn expired_token_gets_401_everywhere() {
    let sim = start(SimConfig {
        token_lifetime: Duration::from_millis(400),
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    assert_eq!(api.get("/api/v2/users").await.status, StatusCode::OK);
    let api_ref = &api;
    eventually("token expires", || async move {
        api_ref.get("/api/v2/users").await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    for (method, path) in [
        ("POST", "/api/v2/notifications/channels"),
        ("GET", "/api/v2/notifications/channels"),
        ("GET", "/api/v2/routing/queues"),
        ("GET", "/api/v2/notifications/availabletopics"),
    ] {
        assert_eq!(
            api.call(method, path, None).await.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    let resp = api
        .call(
            "POST",
            "/api/v2/analytics/conversations/details/query",
            Some(json!({"interval": "2020-01-01T00:00:00Z/2020-01-02T00:00:00Z"})),
        )
        .await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
}

#[actix_rt::test]
async fn queues_and_users_are_paged() {
    let sim = start(SimConfig {
        queues: 7,
        agents: 11,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let mut seen = Vec::new();
    for page in 1..=3 {
        let resp = api
            .get(&format!(
                "/api/v2/routing/queues?pageSize=3&pageNumber={page}"
            ))
            .await;
        assert_eq!(resp.status, StatusCode::OK);
        let b = &resp.body;
        assert_eq!(b["pageSize"], 3);
        assert_eq!(b["pageNumber"], page);
        assert_eq!(b["total"], 7);
        assert_eq!(b["pageCount"], 3);
        for q in b["entities"].as_array().unwrap() {
            assert!(q["name"].is_string());
            assert!(q["division"]["id"].is_string());
            assert!(q["division"]["name"].is_string());
            seen.push(q["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen, sim.queue_ids());

    let resp = api.get("/api/v2/users?pageSize=100&pageNumber=1").await;
    assert_eq!(resp.body["total"], 11);
    assert_eq!(resp.body["pageCount"], 1);
    let users = resp.body["entities"].as_array().unwrap();
    assert_eq!(users.len(), 11);
    for u in users {
        for field in ["id", "name", "email", "state"] {
            assert!(u[field].is_string(), "{field}");
        }
        assert_eq!(u["state"], "active");
    }
    let ids: Vec<_> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, sim.user_ids());

    let defaults = api.get("/api/v2/users").await;
    assert_eq!(defaults.body["pageSize"], 25);
    assert_eq!(defaults.body["pageNumber"], 1);
    let beyond = api.get("/api/v2/users?pageSize=5&pageNumber=9").await;
    assert_eq!(beyond.body["entities"], json!([]));
    let bad = api.get("/api/v2/users?pageSize=0").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Runtime queue addition shows up in the listing.
    let added = sim.add_queue("Late queue");
    let resp = api.get("/api/v2/routing/queues?pageSize=100").await;
    assert_eq!(resp.body["total"], 8);
    assert_eq!(resp.body["entities"][7]["id"], added.as_str());
    assert_eq!(resp.body["entities"][7]["name"], "Late queue");
}

fn query(interval: &str, page_size: usize, page_number: usize, order: &str) -> Value {
    json!({
        "interval": interval,
        "order": order,
        "orderBy": "conversationStart",
        "paging": {"pageSize": page_size, "pageNumber": page_number},
    })
}

const QUERY_PATH: &str = "/api/v2/analytics/conversations/details/query";

#[actix_rt::test]
async fn analytics_details_query() {
    let sim = start(SimConfig {
        rate_per_sec: 30.0,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    until("some conversations", || sim.conversations_started() >= 12).await;
    sim.set_rate(0.0);
    let interval = format!(
        "{}/{}",
        since.to_rfc3339(),
        (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339()
    );
    let api_ref = &api;
    let interval_ref = &interval;
    let sim_ref = &sim;
    // Arrivals may still be in flight when the rate drops: wait until the count is stable.
    eventually("every started conversation is a hit", || async move {
        let resp = api_ref
            .call("POST", QUERY_PATH, Some(query(interval_ref, 100, 1, "asc")))
            .await;
        resp.body["totalHits"] == sim_ref.conversations_started()
    })
    .await;
    let all = api
        .call("POST", QUERY_PATH, Some(query(&interval, 100, 1, "asc")))
        .await;
    assert_eq!(all.status, StatusCode::OK);
    let total = all.body["totalHits"].as_u64().unwrap() as usize;
    let convs = all.body["conversations"].as_array().unwrap().clone();
    assert_eq!(convs.len(), total);
    let starts: Vec<&str> = convs
        .iter()
        .map(|c| c["conversationStart"].as_str().unwrap())
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted, "ascending by conversationStart");
    let first = &convs[0];
    assert!(first["conversationId"].is_string());
    let purposes: Vec<&str> = first["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["purpose"].as_str().unwrap())
        .collect();
    assert!(purposes.starts_with(&["customer", "ivr"]), "{purposes:?}");
    assert!(first["participants"][0]["sessions"][0]["segments"].is_array());

    // Paging and descending order.
    let page2 = api
        .call("POST", QUERY_PATH, Some(query(&interval, 5, 2, "asc")))
        .await;
    assert_eq!(page2.body["totalHits"], total);
    assert_eq!(page2.body["conversations"][0], convs[5]);
    let desc = api
        .call("POST", QUERY_PATH, Some(query(&interval, 100, 1, "desc")))
        .await;
    assert_eq!(desc.body["conversations"][0], convs[total - 1]);

    // Overlap: a finished conversation matches an interval ending just after its start, and
    // does not match one starting after its end.
    let ended = eventually_ended(&api, &interval).await;
    let start =
        chrono::DateTime::parse_from_rfc3339(ended["conversationStart"].as_str().unwrap()).unwrap();
    let end =
        chrono::DateTime::parse_from_rfc3339(ended["conversationEnd"].as_str().unwrap()).unwrap();
    let id = ended["conversationId"].clone();
    let around_start = format!(
        "{}/{}",
        (start - chrono::Duration::milliseconds(1)).to_rfc3339(),
        (start + chrono::Duration::milliseconds(1)).to_rfc3339()
    );
    let hits = api
        .call(
            "POST",
            QUERY_PATH,
            Some(query(&around_start, 100, 1, "asc")),
        )
        .await;
    assert!(hits.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["conversationId"] == id));
    let after_end = format!(
        "{}/{}",
        (end + chrono::Duration::milliseconds(1)).to_rfc3339(),
        (end + chrono::Duration::milliseconds(2)).to_rfc3339()
    );
    let misses = api
        .call("POST", QUERY_PATH, Some(query(&after_end, 100, 1, "asc")))
        .await;
    let none = Vec::new();
    assert!(!misses.body["conversations"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .any(|c| c["conversationId"] == id));

    // No match: no `conversations` key, like Genesys.
    let empty = api
        .call(
            "POST",
            QUERY_PATH,
            Some(query(
                "2001-01-01T00:00:00Z/2001-01-02T00:00:00Z",
                10,
                1,
                "asc",
            )),
        )
        .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!({"totalHits": 0}));

    for bad in [
        json!({"interval": "yesterday"}),
        json!({"interval": interval, "paging": {"pageSize": 0, "pageNumber": 1}}),
        json!({"interval": interval, "order": "sideways"}),
        json!({"nope": 1}),
    ] {
        let resp = api.call("POST", QUERY_PATH, Some(bad.clone())).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

async fn eventually_ended(api: &Api, interval: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let resp = api
            .call("POST", QUERY_PATH, Some(query(interval, 100, 1, "asc")))
            .await;
        if let Some(c) = resp.body["conversations"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["conversationEnd"].is_string()))
        {
            return c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no conversation ended"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn analytics_needs_permission() {
    let sim = start(SimConfig {
        clients: vec![SimClient {
            client_id: "limited".into(),
            client_secret: "s".into(),
            permissions: vec![PERM_CONVERSATION_VIEW.into()],
        }],
        ..fast_config()
    });
    let api = Api::login_as(&sim.base_url(), "limited", "s").await;
    let resp = api
        .call(
            "POST",
            QUERY_PATH,
            Some(query(
                "2020-01-01T00:00:00Z/2020-01-02T00:00:00Z",
                10,
                1,
                "asc",
            )),
        )
        .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert!(resp.body["message"]
        .as_str()
        .unwrap()
        .contains("analytics:conversationDetail:view"));
}

#[actix_rt::test]
async fn available_topics_and_control_endpoints() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let topics = api
        .get("/api/v2/notifications/availabletopics?expand=requiresPermissions,transports")
        .await;
    assert_eq!(topics.status, StatusCode::OK);
    let ids: Vec<&str> = topics.body["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"v2.routing.queues.{id}.conversations"));
    assert!(ids.contains(&"v2.analytics.queues.{id}.observations"));

    let (id, uri) = api.channel().await;
    let mut socket = Socket::connect(&uri).await;
    socket.next_json_where(is_heartbeat).await;
    socket.send_text(r#"{"message":"ping"}"#).await;
    socket.next_json_where(is_pong).await;

    let base = sim.base_url();
    let mut res = http()
        .get(format!("{base}/sim/ledger"))
        .send()
        .await
        .unwrap();
    let array: Value = res.json().limit(1 << 24).await.unwrap();
    let entries = array.as_array().unwrap();
    assert!(entries.len() >= 2);
    assert_eq!(entries[0]["channelId"], id.as_str());
    for field in ["seq", "topic", "kind", "frame", "sentAt", "sentAtMs"] {
        assert!(!entries[0][field].is_null(), "{field}");
    }
    let mut res = http()
        .get(format!("{base}/sim/ledger?format=jsonl&kind=pong"))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "pong");
    assert_eq!(
        lines[0]["frame"],
        r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#
    );
    let last_seq = lines[0]["seq"].as_u64().unwrap();
    let mut res = http()
        .get(format!("{base}/sim/ledger?since={}", last_seq + 1))
        .send()
        .await
        .unwrap();
    let later: Value = res.json().await.unwrap();
    assert!(later
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["seq"].as_u64().unwrap() > last_seq));

    let mut res = http()
        .get(format!("{base}/sim/channels"))
        .send()
        .await
        .unwrap();
    let channels: Value = res.json().await.unwrap();
    assert_eq!(channels[0]["id"], id.as_str());
    assert_eq!(channels[0]["connected"], true);

    let mut res = http()
        .post(format!("{base}/sim/queues"))
        .send_json(&json!({"name": "Extra"}))
        .await
        .unwrap();
    let added: Value = res.json().await.unwrap();
    assert_eq!(
        sim.queue_ids().last().unwrap(),
        added["id"].as_str().unwrap()
    );

    let res = http()
        .post(format!("{base}/sim/rate"))
        .send_json(&json!({"rate": 50}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    until("traffic after /sim/rate", || {
        sim.conversations_started() > 0
    })
    .await;

    let mut res = http().get(format!("{base}/sim/info")).send().await.unwrap();
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["orgId"], sim.org_id().as_str());
    assert_eq!(info["wsBaseUrl"], sim.ws_base_url().as_str());
    assert_eq!(info["tokensIssued"], 1);
}
