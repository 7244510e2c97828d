//! healthchecks.io client: implements the `Monitor` port with the pinging API.
//!
//! One ping URL per job (`https://hc-ping.com/<uuid>` or a self-hosted base). A run sends
//! `<url>/start?rid=<run_id>` and then `<url>?rid=` (success) or `<url>/<exit code>?rid=`
//! (anything else), the body being the tail of the run's log. The same `rid` lets the server
//! pair start and end and measure the duration.
//!
//! Monitoring never fails a backup: every request has a timeout, transient failures are retried
//! a bounded number of times, and whatever still fails is logged and dropped. The ping URL is a
//! secret (anyone who has it can report on the check), so logs only ever show a redacted form.
//!
//! The HTTP client (TLS roots and all) is built at the first ping, not before: a machine with
//! no ping URL configured needs neither CA certificates nor anything else of it, and one whose
//! client cannot be built (no CA certificates) still runs every backup; the pings are then
//! dropped, with one error that says what to install.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use burrow_core::monitor::{Monitor, Outcome};
use burrow_core::ping::{PingUrl, redact};
use burrow_core::run::RunStatus;
use reqwest::{StatusCode, Url};

/// healthchecks.io keeps the first 100 kB of a body; used until the server tells its own limit.
pub const DEFAULT_BODY_LIMIT: usize = 100_000;

/// A server may announce any limit; this cap keeps a hostile or misconfigured one from making
/// us ship a huge body from a small machine.
const MAX_BODY_LIMIT: usize = 10_000_000;

/// The response header healthchecks.io uses to announce its ping body limit.
const BODY_LIMIT_HEADER: &str = "ping-body-limit";

/// How hard to try before giving up on one ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub backoff: Duration,
    /// Limit for one request, connect to last body byte.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthchecksError {
    #[error("healthchecks pings cannot be sent from this machine: {0}")]
    Client(String),
}

/// The healthchecks.io adapter. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Healthchecks {
    /// Built at the first ping; `None` once building failed (logged then, pings dropped).
    client: OnceLock<Option<reqwest::Client>>,
    urls: HashMap<String, Url>,
    policy: RetryPolicy,
    /// Learned from the `Ping-Body-Limit` header of any response; one server serves all
    /// checks of an account, so one value is enough.
    body_limit: AtomicUsize,
}

impl Healthchecks {
    /// `urls` maps job names to their ping URLs (checked when the config was read); jobs not
    /// in the map are not monitored.
    pub fn new(urls: HashMap<String, PingUrl>) -> Self {
        Self::with_policy(urls, RetryPolicy::default())
    }

    pub fn with_policy(urls: HashMap<String, PingUrl>, policy: RetryPolicy) -> Self {
        let parsed = urls
            .into_iter()
            .map(|(job, url)| (job, url.url().clone()))
            .collect();
        Healthchecks {
            client: OnceLock::new(),
            urls: parsed,
            policy: RetryPolicy {
                attempts: policy.attempts.max(1),
                ..policy
            },
            body_limit: AtomicUsize::new(DEFAULT_BODY_LIMIT),
        }
    }

    /// The client, built on first use. A failure is logged once, with what to install.
    fn client(&self) -> Option<&reqwest::Client> {
        self.client
            .get_or_init(|| match build_client(self.policy.timeout) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("{e}; the runs go on without pings");
                    None
                }
            })
            .as_ref()
    }

    /// The body limit in use: the server's announced one, or the default.
    pub fn body_limit(&self) -> usize {
        self.body_limit.load(Ordering::Relaxed)
    }

    /// Whether a job has a ping URL.
    pub fn monitors(&self, job: &str) -> bool {
        self.urls.contains_key(job)
    }

    /// Reports an explicit failure (`<url>/fail`), e.g. when a run could not even start.
    pub async fn fail(&self, job: &str, run_id: &str, log: &str) {
        let Some(base) = self.urls.get(job) else {
            return;
        };
        let url = ping_url(base, Some("fail"), run_id);
        self.send(job, "fail", url, Some(log)).await;
    }

    /// A bare success ping to any URL, e.g. a heartbeat check for the daemon itself.
    pub async fn ping_plain(&self, url: &PingUrl) {
        self.send("daemon", "heartbeat", url.url().clone(), None)
            .await
    }

    /// Sends one ping with bounded retries. Never fails: the outcome is only logged.
    async fn send(&self, job: &str, what: &str, url: Url, log: Option<&str>) {
        let Some(client) = self.client() else {
            tracing::debug!(
                job,
                ping = what,
                "healthchecks ping dropped: no http client"
            );
            return;
        };
        let body = log.map(|l| tail(l, self.body_limit()).to_owned());
        let mut backoff = self.policy.backoff;
        for attempt in 1..=self.policy.attempts {
            let last = attempt == self.policy.attempts;
            let mut req = client.post(url.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let retry_reason = match req.send().await {
                Ok(resp) => {
                    self.learn_body_limit(&resp);
                    let status = resp.status();
                    if status.is_success() {
                        tracing::debug!(job, ping = what, attempt, "healthchecks ping sent");
                        return;
                    }
                    if !retryable_status(status) {
                        // A 4xx means the request itself is wrong (unknown check, bad rid):
                        // sending it again cannot help.
                        tracing::warn!(
                            job,
                            ping = what,
                            url = %redact(&url),
                            status = status.as_u16(),
                            "healthchecks rejected the ping; check the ping url in the config"
                        );
                        return;
                    }
                    format!("http status {}", status.as_u16())
                }
                // `without_url`: reqwest's message would otherwise include the secret URL.
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    error_chain(e.without_url())
                }
                Err(e) => {
                    tracing::warn!(
                        job,
                        ping = what,
                        url = %redact(&url),
                        error = %error_chain(e.without_url()),
                        "healthchecks ping failed"
                    );
                    return;
                }
            };
            if last {
                tracing::warn!(
                    job,
                    ping = what,
                    url = %redact(&url),
                    attempts = attempt,
                    error = %retry_reason,
                    "healthchecks ping failed, giving up"
                );
                return;
            }
            tracing::debug!(job, ping = what, attempt, error = %retry_reason, "healthchecks ping failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    fn learn_body_limit(&self, resp: &reqwest::Response) {
        let limit = resp
            .headers()
            .get(BODY_LIMIT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(limit) = limit {
            self.body_limit
                .store(limit.min(MAX_BODY_LIMIT), Ordering::Relaxed);
        }
    }
}

impl Monitor for Healthchecks {
    async fn start(&self, job: &str, run_id: &str) {
        let Some(base) = self.urls.get(job) else {
            return;
        };
        let url = ping_url(base, Some("start"), run_id);
        self.send(job, "start", url, None).await;
    }

    async fn finish(&self, job: &str, run_id: &str, outcome: &Outcome) {
        let Some(base) = self.urls.get(job) else {
            return;
        };
        let suffix = finish_suffix(outcome);
        let url = ping_url(base, suffix.as_deref(), run_id);
        self.send(job, outcome.status.as_str(), url, Some(&outcome.log))
            .await;
    }

    async fn heartbeat(&self, url: &PingUrl) {
        self.ping_plain(url).await;
    }
}

/// Builds the HTTP client pings are sent with. Fails on a machine without CA certificates, with
/// the fix in the message. `burrow doctor` calls it to check the machine.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, HealthchecksError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("burrow/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HealthchecksError::Client(client_error_text(&e)))
}

/// reqwest's own message is only "builder error"; the cause is further down the chain.
fn client_error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.contains("CA certificates") {
        text.push_str(
            " (no CA certificates: install ca-certificates, or point SSL_CERT_FILE at a bundle)",
        );
    }
    text
}

/// The ping after a run: the plain URL for success, `/fail` for a run skipped because the
/// disk or key is absent (no backup was attempted; the body says why), `/<exit code>`
/// otherwise (partial `/3` and warning `/4` included: healthchecks counts them as failures).
fn finish_suffix(outcome: &Outcome) -> Option<String> {
    match outcome.status {
        RunStatus::Skipped => Some("fail".to_owned()),
        _ => match finish_code(outcome) {
            0 => None,
            code => Some(code.to_string()),
        },
    }
}

/// The exit code to report: 0 only for a successful run, so that healthchecks (which treats
/// any non-zero code as a failure) never sees a failed run as a success even if the caller
/// left `exit_code` at 0.
fn finish_code(outcome: &Outcome) -> i32 {
    match outcome.status {
        RunStatus::Ok => 0,
        _ if outcome.exit_code != 0 => outcome.exit_code,
        status => status.exit().code(),
    }
}

fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// `<base>[/<suffix>][?rid=<run_id>]`. The rid is only sent when it is a UUID: healthchecks
/// rejects any other rid, and a rejected ping is worse than one without a rid.
fn ping_url(base: &Url, suffix: Option<&str>, run_id: &str) -> Url {
    let mut url = base.clone();
    if let Some(suffix) = suffix {
        let path = format!("{}/{suffix}", base.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    if uuid::Uuid::parse_str(run_id).is_ok() {
        url.query_pairs_mut().append_pair("rid", run_id);
    } else {
        tracing::debug!(run_id, "run id is not a uuid; pinging without rid");
    }
    url
}

/// The end of `log`, at most `limit` bytes, starting on a character boundary. The end is kept
/// because that is where a failed run says why.
pub fn tail(log: &str, limit: usize) -> &str {
    if log.len() <= limit {
        return log;
    }
    let mut start = log.len() - limit;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

fn error_chain(e: reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("hello", 0), "");
        // "é" is two bytes; cutting inside it must move forward, never split it.
        let s = "aéb";
        assert_eq!(tail(s, 2), "b");
        assert_eq!(tail(s, 3), "éb");
        let big = "x".repeat(10) + &"€".repeat(50);
        let t = tail(&big, 100);
        assert!(t.len() <= 100 && big.ends_with(t));
    }

    #[test]
    fn ping_urls() {
        let rid = "0b8e7d4c-7a57-4c51-9a55-1b6b1c0f3a9d";
        let base = PingUrl::parse("https://hc-ping.com/abc/")
            .unwrap()
            .url()
            .clone();
        assert_eq!(
            ping_url(&base, Some("start"), rid).as_str(),
            format!("https://hc-ping.com/abc/start?rid={rid}")
        );
        let base = PingUrl::parse("https://hc-ping.com/abc")
            .unwrap()
            .url()
            .clone();
        assert_eq!(
            ping_url(&base, None, rid).as_str(),
            format!("https://hc-ping.com/abc?rid={rid}")
        );
        assert_eq!(
            ping_url(&base, Some("3"), "not-a-uuid").as_str(),
            "https://hc-ping.com/abc/3"
        );
    }

    #[test]
    fn exit_codes_for_outcomes() {
        let o = |status, exit_code| Outcome {
            status,
            exit_code,
            log: String::new(),
        };
        assert_eq!(finish_code(&o(RunStatus::Ok, 0)), 0);
        assert_eq!(finish_code(&o(RunStatus::Partial, 3)), 3);
        assert_eq!(finish_code(&o(RunStatus::Failed, 1)), 1);
        assert_eq!(finish_code(&o(RunStatus::Skipped, 75)), 75);
        assert_eq!(finish_code(&o(RunStatus::Failed, 0)), 1);
        assert_eq!(finish_code(&o(RunStatus::Skipped, 0)), 75);
        // a failed retention after a complete snapshot is a failure for healthchecks (/4)
        assert_eq!(finish_code(&o(RunStatus::Warning, 4)), 4);
        assert_eq!(finish_code(&o(RunStatus::Warning, 0)), 4);
        assert_eq!(
            finish_suffix(&o(RunStatus::Warning, 4)).as_deref(),
            Some("4")
        );
        assert_eq!(finish_suffix(&o(RunStatus::Ok, 0)), None);
        assert_eq!(
            finish_suffix(&o(RunStatus::Partial, 3)).as_deref(),
            Some("3")
        );
        assert_eq!(
            finish_suffix(&o(RunStatus::Skipped, 75)).as_deref(),
            Some("fail")
        );
    }
}
