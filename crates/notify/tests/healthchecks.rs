//! The healthchecks adapter against a local HTTP server on 127.0.0.1.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burrow_core::monitor::{Monitor, Outcome};
use burrow_core::ping::PingUrl;
use burrow_core::run::RunStatus;
use burrow_notify::{Healthchecks, RetryPolicy};
use burrow_testkit::http::PingServer;

const RID: &str = "6f0c1a52-3b8e-4d7a-9c41-2e5f8a9b0c1d";
const CHECK: &str = "0b8e7d4c-7a57-4c51-9a55-1b6b1c0f3a9d";
const WAIT: Duration = Duration::from_secs(5);

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
    }
}

/// Job "web" pinging `url`.
fn urls(url: &str) -> HashMap<String, PingUrl> {
    HashMap::from([("web".to_owned(), PingUrl::parse(url).unwrap())])
}

fn client(server_url: &str) -> Healthchecks {
    Healthchecks::with_policy(urls(&format!("{server_url}/ping/{CHECK}")), fast())
}

fn outcome(status: RunStatus, exit_code: i32, log: &str) -> Outcome {
    Outcome {
        status,
        exit_code,
        log: log.to_owned(),
    }
}

#[tokio::test]
async fn start_then_success_share_the_rid_and_send_the_log() {
    let server = PingServer::start();
    let hc = client(&server.url());
    hc.start("web", RID).await;
    hc.finish("web", RID, &outcome(RunStatus::Ok, 0, "all good\n"))
        .await;
    let reqs = server.wait_for(2, WAIT);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, format!("/ping/{CHECK}/start"));
    assert_eq!(reqs[0].query_param("rid"), Some(RID));
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].path, format!("/ping/{CHECK}"));
    assert_eq!(reqs[1].query_param("rid"), Some(RID));
    assert_eq!(reqs[1].body_str(), "all good\n");
}

#[tokio::test]
async fn failures_send_their_exit_code() {
    let server = PingServer::start();
    let hc = client(&server.url());
    hc.finish("web", RID, &outcome(RunStatus::Failed, 1, "boom"))
        .await;
    hc.finish("web", RID, &outcome(RunStatus::Partial, 3, "2 unreadable"))
        .await;
    hc.finish("web", RID, &outcome(RunStatus::Skipped, 75, "no disk"))
        .await;
    hc.fail("web", RID, "could not start").await;
    let reqs = server.wait_for(4, WAIT);
    let paths: Vec<_> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("/ping/{CHECK}/1"),
            format!("/ping/{CHECK}/3"),
            format!("/ping/{CHECK}/fail"),
            format!("/ping/{CHECK}/fail"),
        ]
    );
    assert!(reqs.iter().all(|r| r.query_param("rid") == Some(RID)));
    assert_eq!(reqs[0].body_str(), "boom");
    assert_eq!(reqs[3].body_str(), "could not start");
}

#[tokio::test]
async fn body_is_cut_to_the_servers_limit_keeping_the_tail() {
    let server = PingServer::start();
    server.set_header("Ping-Body-Limit", "100");
    let hc = client(&server.url());
    assert_eq!(hc.body_limit(), 100_000);
    hc.start("web", RID).await;
    assert_eq!(hc.body_limit(), 100);
    // Multi-byte characters around the cut: the body must stay valid UTF-8.
    let log = format!("{}\nlast line: é€ done", "ä".repeat(500));
    hc.finish("web", RID, &outcome(RunStatus::Failed, 1, &log))
        .await;
    let reqs = server.wait_for(2, WAIT);
    let body = &reqs[1].body;
    assert!(body.len() <= 100 && body.len() >= 97, "{}", body.len());
    let body = String::from_utf8(body.clone()).expect("utf-8 body");
    assert!(log.ends_with(&body));
    assert!(body.ends_with("last line: é€ done"));
}

#[tokio::test]
async fn retries_after_a_server_error() {
    let server = PingServer::start();
    server.push_status(500);
    server.push_status(429);
    let hc = client(&server.url());
    hc.finish("web", RID, &outcome(RunStatus::Ok, 0, "log"))
        .await;
    let reqs = server.wait_for(3, WAIT);
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.body_str() == "log"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.requests().len(), 3, "no request after the success");
}

#[tokio::test]
async fn gives_up_after_the_attempt_limit() {
    let server = PingServer::start();
    for _ in 0..5 {
        server.push_status(503);
    }
    let hc = client(&server.url());
    hc.start("web", RID).await;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn no_retry_on_a_client_error() {
    let server = PingServer::start();
    server.push_status(404);
    let hc = client(&server.url());
    hc.start("web", RID).await;
    server.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn server_down_returns_in_bounded_time() {
    let server = PingServer::start();
    let url = server.url();
    drop(server);
    let hc = client(&url);
    let t = Instant::now();
    hc.start("web", RID).await;
    hc.finish("web", RID, &outcome(RunStatus::Ok, 0, "x")).await;
    // Refused connections fail fast: two pings, three attempts and 20+40 ms backoff each.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn jobs_without_url_and_heartbeat() {
    let server = PingServer::start();
    let hc = client(&server.url());
    assert!(!hc.monitors("db"));
    hc.start("db", RID).await;
    hc.finish("db", RID, &outcome(RunStatus::Failed, 1, "x"))
        .await;
    hc.fail("db", RID, "x").await;
    hc.ping_plain(&PingUrl::parse(&format!("{}/ping/heartbeat-check", server.url())).unwrap())
        .await;
    let reqs = server.wait_for(1, WAIT);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/ping/heartbeat-check");
    assert_eq!(reqs[0].query, "");
}

#[tokio::test]
async fn run_id_that_is_not_a_uuid_is_left_out() {
    let server = PingServer::start();
    let hc = client(&server.url());
    hc.start("web", "20261129-0300-web").await;
    let reqs = server.wait_for(1, WAIT);
    assert_eq!(reqs[0].path, format!("/ping/{CHECK}/start"));
    assert_eq!(reqs[0].query_param("rid"), None);
}

#[tokio::test]
async fn hung_server_times_out_in_bounded_time() {
    // Accepts connections (the kernel does, via the backlog) but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let policy = RetryPolicy {
        attempts: 2,
        backoff: Duration::from_millis(20),
        timeout: Duration::from_millis(300),
    };
    let hc = Healthchecks::with_policy(urls(&format!("{url}/ping/{CHECK}")), policy);
    let t = Instant::now();
    hc.start("web", RID).await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(listener);
}
