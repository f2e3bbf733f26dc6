//! REST request accounting: counts per endpoint group, status and route, injected faults
//! included, and timestamps that show how a client spaced its calls.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use genesys_sim::{EndpointGroup, RestFault, RestFaultKind, RestScope};
use serde_json::{json, Value};

const CHANNELS: &str = "/api/v2/notifications/channels";

#[actix_rt::test]
async fn every_rest_call_is_counted_with_its_outcome() {
    let sim = start(fast_config());
    let base = sim.base_url();
    let api = Api::login(&base).await;
    let (id, _) = api.channel().await;
    let subscriptions = format!("{CHANNELS}/{id}/subscriptions");
    api.subscribe_ok(&id, &queue_topics(&sim)).await;
    assert_eq!(api.get(&subscriptions).await.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v2/routing/queues").await.status,
        StatusCode::OK
    );
    assert_eq!(api.get("/api/v2/users").await.status, StatusCode::OK);
    let interval = "2020-01-01T00:00:00Z/2020-01-02T00:00:00Z";
    let body = json!({
        "interval": interval,
        "order": "asc",
        "orderBy": "conversationStart",
        "paging": {"pageSize": 10, "pageNumber": 1},
    });
    let resp = api
        .call(
            "POST",
            "/api/v2/analytics/conversations/details/query",
            Some(body),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    let head = api.call("HEAD", &format!("{CHANNELS}/{id}"), None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v2/no/such/thing").await.status,
        StatusCode::NOT_FOUND
    );
    // Not counted: the simulator's own control surface.
    let info = http().get(format!("{base}/sim/info")).send().await.unwrap();
    assert_eq!(info.status(), StatusCode::OK);

    // Injected faults are counted like any other answer.
    let mut boom = RestFault::next_calls(RestFaultKind::ServerError, 1);
    boom.scope = RestScope::Oauth;
    sim.faults().rest(boom);
    let login = token_request(&base, "sim-client", "sim-secret").await;
    assert_eq!(login.status, StatusCode::INTERNAL_SERVER_ERROR);
    let mut slow = RestFault::next_calls(RestFaultKind::Delay, 1);
    slow.delay_ms = 300;
    sim.faults().rest(slow);
    assert_eq!(api.get("/api/v2/users").await.status, StatusCode::OK);

    let stats = sim.rest_requests();
    assert_eq!(stats.total, 11, "{:#?}", stats.by_endpoint);
    assert_eq!(stats.group_total(EndpointGroup::OauthToken), 2);
    assert_eq!(stats.group_status(EndpointGroup::OauthToken, 200), 1);
    assert_eq!(stats.group_status(EndpointGroup::OauthToken, 500), 1);
    assert_eq!(stats.group_total(EndpointGroup::ChannelCreate), 1);
    assert_eq!(stats.group_total(EndpointGroup::Subscriptions), 2);
    assert_eq!(stats.group_total(EndpointGroup::Directory), 3);
    assert_eq!(stats.group_total(EndpointGroup::Analytics), 1);
    assert_eq!(stats.group_total(EndpointGroup::Other), 2);
    assert_eq!(stats.group_status(EndpointGroup::Other, 404), 1);
    assert_eq!(stats.endpoint("POST", "/oauth/token", 500), 1);
    assert_eq!(
        stats.endpoint(
            "PUT",
            "/api/v2/notifications/channels/{id}/subscriptions",
            200
        ),
        1
    );
    assert_eq!(
        stats.endpoint("HEAD", "/api/v2/notifications/channels/{id}", 200),
        1
    );
    assert_eq!(stats.endpoint("GET", "/api/v2/users", 200), 2);
    assert_eq!(stats.endpoint("GET", "/api/v2/no/such/thing", 404), 1);
    assert_eq!(stats.by_endpoint.values().sum::<u64>(), stats.total);
    assert_eq!(stats.requests.len(), 11);
    assert!(stats.requests.iter().all(|r| !r.path.starts_with("/sim/")));
    assert!(stats.requests.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let failed_login = &stats.requests[9];
    assert_eq!(
        (failed_login.status, failed_login.fault),
        (500, Some(RestFaultKind::ServerError))
    );
    let delayed = &stats.requests[10];
    assert_eq!(delayed.path, "/api/v2/users");
    assert_eq!(delayed.fault, Some(RestFaultKind::Delay));
    assert_eq!(delayed.status, 200);
    assert!(delayed.latency_ms >= 300, "{delayed:?}");
    assert!(stats.requests[..9].iter().all(|r| r.fault.is_none()));

    // Over HTTP: the same counters, and the log from `since`.
    let mut res = http()
        .get(format!("{base}/sim/requests"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().limit(1 << 24).await.unwrap();
    assert_eq!(body["total"], 11);
    assert_eq!(body["byGroup"]["oauth_token"]["total"], 2);
    assert_eq!(body["byGroup"]["oauth_token"]["byStatus"]["500"], 1);
    assert_eq!(body["byGroup"]["directory"]["byStatus"]["200"], 3);
    assert_eq!(body["byEndpoint"]["POST /oauth/token 500"], 1);
    assert_eq!(
        body["byEndpoint"]["POST /api/v2/notifications/channels 200"],
        1
    );
    let last = &body["requests"][10];
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/api/v2/users");
    assert_eq!(last["group"], "directory");
    assert_eq!(last["status"], 200);
    assert_eq!(last["fault"], "delay");
    assert!(last["retryAfterS"].is_null());
    assert!(last["at"].is_string() && last["atMs"].is_i64() && last["latencyMs"].is_u64());
    let mut res = http()
        .get(format!("{base}/sim/requests?since=9"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().limit(1 << 24).await.unwrap();
    assert_eq!(body["total"], 11);
    assert_eq!(body["requests"].as_array().unwrap().len(), 2);
    assert_eq!(body["requests"][0]["seq"], 9);
}

#[actix_rt::test]
async fn timestamps_show_that_a_client_waited_retry_after() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let mut limited = RestFault::next_calls(RestFaultKind::TooManyRequests, 1);
    limited.retry_after_s = 1;
    limited.scope = RestScope::Api;
    sim.faults().rest(limited);
    // A well-behaved client: on 429, wait Retry-After seconds, then retry.
    let first = api.call("POST", CHANNELS, None).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = first
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    actix_rt::time::sleep(Duration::from_secs(wait)).await;
    let second = api.call("POST", CHANNELS, None).await;
    assert_eq!(second.status, StatusCode::OK);

    let stats = sim.rest_requests();
    assert_eq!(stats.endpoint("POST", CHANNELS, 429), 1);
    assert_eq!(stats.endpoint("POST", CHANNELS, 200), 1);
    assert_eq!(stats.group_status(EndpointGroup::ChannelCreate, 429), 1);
    let creates: Vec<_> = stats
        .requests
        .iter()
        .filter(|r| r.group == EndpointGroup::ChannelCreate)
        .collect();
    assert_eq!(creates.len(), 2);
    let (limited, retried) = (creates[0], creates[1]);
    assert_eq!(limited.status, 429);
    assert_eq!(limited.retry_after_s, Some(1));
    assert_eq!(limited.fault, Some(RestFaultKind::TooManyRequests));
    assert_eq!(retried.status, 200);
    assert_eq!(retried.retry_after_s, None);
    let answered_ms = limited.at_ms + limited.latency_ms as i64;
    assert!(
        retried.at_ms - answered_ms >= 1000,
        "the retry came {} ms after the 429",
        retried.at_ms - answered_ms
    );
    assert!(retried.at - limited.at >= chrono::Duration::seconds(1));
}
