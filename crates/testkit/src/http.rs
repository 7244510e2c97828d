//! A local HTTP server standing in for healthchecks.io in tests.
//!
//! It listens on 127.0.0.1 on a free port, records every request and answers with status codes
//! the test queues up (200 "OK" when the queue is empty). Every response carries
//! `Connection: close`, so each request is one connection and the server never has to reason
//! about keep-alive. Only std: the tests that use it may run on any runtime or none.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query, e.g. `/ping/abc/start`.
    pub path: String,
    /// The raw query string without `?` (empty when there was none).
    pub query: String,
    /// Header names are lower-cased; values as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a query parameter (no percent-decoding: tests use plain values).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Shared {
    requests: Vec<Request>,
    statuses: VecDeque<u16>,
    headers: Vec<(String, String)>,
}

struct Inner {
    state: Mutex<Shared>,
    arrived: Condvar,
    stop: AtomicBool,
}

/// The server. Dropping it stops the thread and closes the port.
pub struct PingServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PingServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl PingServer {
    /// Binds 127.0.0.1:0 and serves in a background thread.
    pub fn start() -> PingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            state: Mutex::new(Shared::default()),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("ping-server".into())
            .spawn(move || serve(listener, thread_inner))
            .expect("spawn ping server thread");
        PingServer {
            addr,
            inner,
            thread: Some(thread),
        }
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// All requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// Waits until at least `n` requests have arrived or `timeout` passed, and returns what
    /// arrived (the caller asserts on the count, so a timeout shows up as a readable failure).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut state = self.inner.state.lock().unwrap();
        while state.requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.inner.arrived.wait_timeout(state, left).unwrap().0;
        }
        state.requests.clone()
    }

    /// Queues the status code for the next response; queued codes are used in order, then 200.
    pub fn push_status(&self, status: u16) {
        self.inner.state.lock().unwrap().statuses.push_back(status);
    }

    /// Adds a header sent with every following response, e.g. `Ping-Body-Limit: 100`.
    pub fn set_header(&self, name: &str, value: &str) {
        self.inner
            .state
            .lock()
            .unwrap()
            .headers
            .push((name.to_owned(), value.to_owned()));
    }
}

impl Drop for PingServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // `accept` blocks; a throwaway connection wakes it so it can see the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, inner: Arc<Inner>) {
    for conn in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        // A client that misbehaves must not wedge the server for the other tests' requests.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let Some(request) = read_request(&stream) else {
            continue;
        };
        let (status, headers) = {
            let mut state = inner.state.lock().unwrap();
            let status = state.statuses.pop_front().unwrap_or(200);
            (status, state.headers.clone())
        };
        let _ = write_response(&stream, status, &headers);
        // Record only after answering, so a test that saw request n also sees its effects.
        let mut state = inner.state.lock().unwrap();
        state.requests.push(request);
        inner.arrived.notify_all();
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(&mut reader)?
    } else {
        let len: usize = find("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = size.trim().split(';').next()?;
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            // Trailers (normally none) end with an empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf).ok()?;
    }
}

fn write_response(
    mut stream: &TcpStream,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let body = if status == 200 { "OK" } else { reason };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn records_requests_and_plays_queued_statuses() {
        let server = PingServer::start();
        server.push_status(500);
        server.set_header("Ping-Body-Limit", "100");
        let r = send(
            server.addr(),
            "POST /ping/abc/start?rid=1&x=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(r.starts_with("HTTP/1.1 500 "), "{r}");
        assert!(r.contains("Ping-Body-Limit: 100\r\n"), "{r}");
        let r = send(
            server.addr(),
            "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nOK"), "{r}");

        let reqs = server.wait_for(2, Duration::from_secs(5));
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/ping/abc/start");
        assert_eq!(reqs[0].query, "rid=1&x=2");
        assert_eq!(reqs[0].query_param("rid"), Some("1"));
        assert_eq!(reqs[0].header("HOST"), Some("x"));
        assert_eq!(reqs[0].body, b"hello");
        assert_eq!(reqs[1].body_str(), "abcde");
    }

    #[test]
    fn wait_for_returns_after_timeout_and_drop_closes_port() {
        let server = PingServer::start();
        let t = Instant::now();
        assert!(server.wait_for(1, Duration::from_millis(100)).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(100));
        let addr = server.addr();
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    }
}
