//! A monitoring ping URL (healthchecks.io or a self-hosted instance), checked once, when the
//! config is read, by the rules the monitoring adapter relies on: `http(s)://`, a host, no
//! query or fragment (burrow adds `?rid=`). So a URL that `check-config` accepts is one the
//! daemon can ping.
//!
//! The path holds the check's secret (its uuid, or the project's ping key): anyone who has
//! it can report on the check. Only [`PingUrl::url`] gives it out, for the HTTP client;
//! `Display` and `Debug` show the [`redact`]ed form.

use std::fmt;

pub use url::Url;

#[derive(Clone, PartialEq, Eq)]
pub struct PingUrl(Url);

/// What is wrong with a ping URL; never the URL itself (it holds the check's secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingUrlError {
    #[error("must be an http(s):// URL, e.g. https://hc-ping.com/<uuid>")]
    Scheme,
    #[error("the URL has no host, e.g. https://hc-ping.com/<uuid>")]
    NoHost,
    #[error("the URL must not have a query or fragment (burrow adds ?rid=)")]
    Query,
    #[error("is not a valid URL ({0}), e.g. https://hc-ping.com/<uuid>")]
    Invalid(url::ParseError),
}

impl PingUrl {
    /// Checks `text` (white space around it is ignored, one trailing `/` dropped). The
    /// error says what is wrong with an example of what is right, never the URL itself.
    pub fn parse(text: &str) -> Result<PingUrl, PingUrlError> {
        let text = text.trim();
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Err(PingUrlError::Scheme);
        }
        // Read as written: a URL parser would take `https:///x` for the host `x`.
        let host = text.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or("")
        });
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(PingUrlError::NoHost);
        }
        if text.contains(['?', '#']) {
            return Err(PingUrlError::Query);
        }
        let url =
            Url::parse(text.strip_suffix('/').unwrap_or(text)).map_err(PingUrlError::Invalid)?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(PingUrlError::NoHost);
        }
        Ok(PingUrl(url))
    }

    /// The whole URL, secret included: for the HTTP client only.
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for PingUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for PingUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PingUrl({self})")
    }
}

/// `url` for a log line: scheme, host and port, every path segment as `***`, no query (the
/// run id) and no credentials.
pub fn redact(url: &Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    let segments = url
        .path_segments()
        .map_or(0, |s| s.filter(|s| !s.is_empty()).count());
    for _ in 0..segments {
        out.push_str("/***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_adapter_needs_is_checked_here() {
        let ok = PingUrl::parse(" https://hc-ping.com/5f1a2b3c-1111/ ").unwrap();
        assert_eq!(ok.url().as_str(), "https://hc-ping.com/5f1a2b3c-1111");
        assert!(PingUrl::parse("http://127.0.0.1:8000/ping/key/slug").is_ok());
        for (bad, says) in [
            ("hc-ping.com/uuid", "http(s)://"),
            ("ftp://hc-ping.com/uuid", "http(s)://"),
            ("https:///uuid", "no host"),
            ("https://hc-ping.com:99999/uuid", "not a valid URL"),
            ("https://exa mple.com/uuid", "no host"),
            ("http://", "no host"),
            ("https://[::1/uuid", "not a valid URL"),
            ("https://hc-ping.com/uuid?x=1", "query"),
            ("https://hc-ping.com/uuid#x", "fragment"),
        ] {
            let e = PingUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("uuid?") && !e.contains("/uuid"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_secret_never_shows() {
        let p = PingUrl::parse("https://hc-ping.com/5f1a2b3c-1111-2222-3333-444455556666").unwrap();
        assert_eq!(p.to_string(), "https://hc-ping.com/***");
        assert!(!format!("{p:?}").contains("5f1a2b3c"));
        let u = Url::parse("http://user:pw@127.0.0.1:8000/ping/key/slug/start?rid=x").unwrap();
        assert_eq!(redact(&u), "http://127.0.0.1:8000/***/***/***/***");
        assert_eq!(
            redact(&Url::parse("https://hc-ping.com").unwrap()),
            "https://hc-ping.com"
        );
    }
}
