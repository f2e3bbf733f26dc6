//! Notification channels and subscriptions over REST: listing, HEAD, subscription verbs,
//! validation, permissions, the 1,000-topic limit and the 20-channel eviction.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use genesys_sim::{ChannelDeath, SimClient, SimConfig, PERM_CONVERSATION_VIEW, PERM_QUEUE_VIEW};
use serde_json::{json, Value};

fn ids(body: &Value) -> Vec<String> {
    body["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn create_list_and_head() {
    let sim = start(fast_config());
    let first = Api::login(&sim.base_url()).await;
    let second = Api::login(&sim.base_url()).await;
    let resp = first
        .call("POST", "/api/v2/notifications/channels", None)
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    let id = resp.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("streaming-0-"));
    let expires = chrono::DateTime::parse_from_rfc3339(resp.body["expires"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let in_a_day = chrono::Utc::now() + chrono::Duration::hours(24);
    assert!((expires - in_a_day).num_seconds().abs() < 60);
    let (other_id, _) = second.channel().await;

    let by_token = first
        .get("/api/v2/notifications/channels?includechannels=token")
        .await;
    assert_eq!(ids(&by_token.body), vec![id.clone()]);
    assert_eq!(
        by_token.body["entities"][0]["connectUri"],
        format!("{}/channels/{id}", sim.ws_base_url()).as_str()
    );
    let default = first.get("/api/v2/notifications/channels").await;
    assert_eq!(ids(&default.body), vec![id.clone()]);
    let by_client = first
        .get("/api/v2/notifications/channels?includechannels=oauthclient")
        .await;
    let entities = by_client.body["entities"].as_array().unwrap();
    assert_eq!(entities.len(), 2, "the client's channels of every token");
    assert_eq!(entities[0]["id"], id.as_str());
    // Another token's channel is shown to exist, without its id (the socket's only secret).
    assert!(entities[1].get("id").is_none() && entities[1].get("connectUri").is_none());
    assert!(entities[1]["expires"].is_string());
    let by_client = second
        .get("/api/v2/notifications/channels?includechannels=oauthclient")
        .await;
    assert_eq!(by_client.body["entities"][1]["id"], other_id.as_str());

    let head = first
        .call(
            "HEAD",
            &format!("/api/v2/notifications/channels/{id}"),
            None,
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    let head = first
        .call(
            "HEAD",
            "/api/v2/notifications/channels/streaming-0-none",
            None,
        )
        .await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.tokens_issued(), 2);
}

#[actix_rt::test]
async fn subscription_verbs() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, _) = api.channel().await;
    let topics = queue_topics(&sim);
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");

    let put = api.subscribe(&id, &topics[..2], "").await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(ids(&put.body), topics[..2].to_vec());
    assert_eq!(put.body["entities"][0]["state"], "Permitted");

    let users = sim.user_ids();
    let extra = vec![
        json!({"id": topics[2]}),
        json!({"id": format!("v2.users.{}.conversations", users[0])}),
        json!({"id": format!("v2.analytics.queues.{}.observations", sim.queue_ids()[0])}),
        json!({"id": "v2.detail.events.conversation.5f3b1d9e-8a52-4a51-9a0c-0d7c4d0d2c11.customer.start"}),
        json!({"id": topics[0]}),
    ];
    let post = api.call("POST", &path, Some(Value::Array(extra))).await;
    assert_eq!(post.status, StatusCode::OK, "{}", post.body);
    assert_eq!(
        ids(&post.body).len(),
        6,
        "added to the existing two, no duplicate"
    );

    let get = api.get(&path).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(ids(&get.body), ids(&post.body));
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.topics, ids(&get.body));

    let put = api.subscribe(&id, &topics[2..], "").await;
    assert_eq!(ids(&put.body), topics[2..].to_vec(), "PUT replaces");

    let delete = api.call("DELETE", &path, None).await;
    assert!(delete.status.is_success());
    assert_eq!(ids(&api.get(&path).await.body).len(), 0);

    let unknown = api
        .call(
            "GET",
            "/api/v2/notifications/channels/streaming-0-none/subscriptions",
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["status"], 404);
}

#[actix_rt::test]
async fn unknown_topics_are_rejected_with_reasons() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, _) = api.channel().await;
    let good = queue_topics(&sim)[0].clone();
    let requested = vec![
        good.clone(),
        "v2.routing.queues.not-a-queue.conversations".to_owned(),
        "v2.users.not-a-user.conversations".to_owned(),
        "v2.something.else".to_owned(),
        "v2.detail.events.conversation.not-a-uuid.acd.start".to_owned(),
    ];
    let resp = api.subscribe(&id, &requested, "?ignoreErrors=true").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let entities = resp.body["entities"].as_array().unwrap();
    assert_eq!(entities.len(), 5);
    assert_eq!(entities[0]["id"], good.as_str());
    assert_eq!(entities[0]["state"], "Permitted");
    for e in &entities[1..] {
        assert_eq!(e["state"], "Rejected", "{e}");
        assert!(!e["rejectionReason"].as_str().unwrap().is_empty());
        assert_eq!(e["missingPermissions"], json!([]));
    }
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.topics, vec![good.clone()]);

    // Without ignoreErrors the whole request fails and nothing changes.
    let resp = api.subscribe(&id, &requested[1..2], "").await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.topics, vec![good]);
}

#[actix_rt::test]
async fn reserved_topics_are_a_400() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, _) = api.channel().await;
    for reserved in ["channel.metadata", "v2.system.socket_closing"] {
        let topics = vec![queue_topics(&sim)[0].clone(), reserved.to_owned()];
        let resp = api.subscribe(&id, &topics, "?ignoreErrors=true").await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{reserved}");
        assert_eq!(resp.body["code"], "bad.request");
    }
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert!(info.topics.is_empty());
}

#[actix_rt::test]
async fn missing_permissions() {
    let restricted = SimClient {
        client_id: "viewer".into(),
        client_secret: "viewer-secret".into(),
        permissions: vec![PERM_CONVERSATION_VIEW.to_owned()],
    };
    let sim = start(SimConfig {
        clients: vec![SimClient::default(), restricted],
        ..fast_config()
    });
    let api = Api::login_as(&sim.base_url(), "viewer", "viewer-secret").await;
    let (id, _) = api.channel().await;
    let queue_topic = queue_topics(&sim)[0].clone();
    let user_topic = format!("v2.users.{}.conversations", sim.user_ids()[0]);
    let topics = vec![queue_topic.clone(), user_topic.clone()];

    let resp = api.subscribe(&id, &topics, "").await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.body);
    assert_eq!(resp.body["status"], 403);
    assert!(resp.body["message"]
        .as_str()
        .unwrap()
        .contains(PERM_QUEUE_VIEW));

    let resp = api.subscribe(&id, &topics, "?ignoreErrors=true").await;
    assert_eq!(resp.status, StatusCode::OK);
    let entities = resp.body["entities"].as_array().unwrap();
    let rejected = entities
        .iter()
        .find(|e| e["id"] == queue_topic.as_str())
        .unwrap();
    assert_eq!(rejected["state"], "Rejected");
    assert_eq!(rejected["missingPermissions"], json!([PERM_QUEUE_VIEW]));
    assert!(rejected["rejectionReason"].is_string());
    let permitted = entities
        .iter()
        .find(|e| e["id"] == user_topic.as_str())
        .unwrap();
    assert_eq!(permitted["state"], "Permitted");

    // The same client cannot list queues or run the analytics query.
    assert_eq!(
        api.get("/api/v2/routing/queues").await.status,
        StatusCode::FORBIDDEN
    );
}

#[actix_rt::test]
async fn at_most_1000_topics() {
    let sim = start(SimConfig {
        queues: 1001,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, _) = api.channel().await;
    let topics = queue_topics(&sim);
    let resp = api.subscribe(&id, &topics, "?ignoreErrors=true").await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "1001 topics");
    let resp = api.subscribe(&id, &topics[..1000], "").await;
    assert_eq!(resp.status, StatusCode::OK, "1000 topics");
    assert_eq!(ids(&resp.body).len(), 1000);
    // Adding one more by POST would exceed the limit.
    let resp = api
        .call(
            "POST",
            &format!("/api/v2/notifications/channels/{id}/subscriptions"),
            Some(json!([{ "id": topics[1000] }])),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.topics.len(), 1000);
}

#[actix_rt::test]
async fn the_21st_channel_evicts_the_oldest_idle_one() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let mut created = Vec::new();
    for _ in 0..20 {
        created.push(api.channel().await);
    }
    // The oldest channel has a socket: the oldest *idle* one (the second) goes first.
    let mut busy = Socket::connect(&created[0].1).await;
    until("socket attached", || {
        sim.channels()
            .iter()
            .any(|c| c.id == created[0].0 && c.connected)
    })
    .await;
    let (new_id, _) = api.channel().await;
    let live: Vec<String> = sim
        .channels()
        .into_iter()
        .filter(|c| c.alive)
        .map(|c| c.id)
        .collect();
    assert_eq!(live.len(), 20);
    assert!(live.contains(&created[0].0));
    assert!(!live.contains(&created[1].0));
    assert!(live.contains(&new_id));
    let evicted = sim
        .channels()
        .into_iter()
        .find(|c| c.id == created[1].0)
        .unwrap();
    assert_eq!(evicted.death, Some(ChannelDeath::Evicted));
    assert_eq!(
        Socket::try_connect(&created[1].1).await.err(),
        Some(Some(StatusCode::NOT_FOUND))
    );

    // When every channel has a socket, the oldest one is evicted and its socket closed.
    let mut sockets = Vec::new();
    for (id, uri) in &created[2..] {
        sockets.push(Socket::connect(uri).await);
        let id = id.clone();
        until("socket attached", || {
            sim.channels().iter().any(|c| c.id == id && c.connected)
        })
        .await;
    }
    let new_uri = format!("{}/channels/{new_id}", sim.ws_base_url());
    let _new_socket = Socket::connect(&new_uri).await;
    until("all 20 connected", || {
        sim.channels().iter().filter(|c| c.connected).count() == 20
    })
    .await;
    api.channel().await;
    match busy.end().await {
        Seen::Close(Some((1000, reason))) => assert_eq!(reason, "channel evicted"),
        other => panic!("evicted socket should get a close frame, got {other:?}"),
    }
    let list = api
        .get("/api/v2/notifications/channels?includechannels=oauthclient")
        .await;
    assert_eq!(ids(&list.body).len(), 20);
    assert!(!ids(&list.body).contains(&created[0].0));
}

#[actix_rt::test]
async fn limits_are_per_client() {
    let sim = start(SimConfig {
        clients: vec![
            SimClient::default(),
            SimClient::with_all_permissions("other", "other-secret"),
        ],
        max_channels_per_client: 2,
        channel_lifetime: Duration::from_secs(3600),
        ..fast_config()
    });
    let a = Api::login(&sim.base_url()).await;
    let b = Api::login_as(&sim.base_url(), "other", "other-secret").await;
    let (a1, _) = a.channel().await;
    a.channel().await;
    b.channel().await;
    b.channel().await;
    assert_eq!(sim.channels().iter().filter(|c| c.alive).count(), 4);
    a.channel().await;
    let dead: Vec<_> = sim.channels().into_iter().filter(|c| !c.alive).collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, a1);
    // A client cannot see or touch another client's channel.
    let a_live = sim
        .channels()
        .into_iter()
        .find(|c| c.alive && c.client_id == "sim-client")
        .unwrap();
    let head = b
        .call(
            "HEAD",
            &format!("/api/v2/notifications/channels/{}", a_live.id),
            None,
        )
        .await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
}
