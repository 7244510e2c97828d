//! A TCP proxy on 127.0.0.1 that adds latency in each direction (this kernel has no netem)
//! or cuts the connection after a number of bytes (a server vanishing mid-transfer).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyOptions {
    /// Added to every chunk in each direction (so a round trip costs twice this).
    pub delay: Duration,
    /// Close both sides once this many bytes went from the server to the client.
    pub cut_after: Option<u64>,
}

pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Bytes forwarded from the server to the client so far.
    pub downstream: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: SocketAddr, opts: ProxyOptions) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let downstream = Arc::new(AtomicU64::new(0));
        let (stop2, down2) = (stop.clone(), downstream.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let cut = Arc::new(AtomicBool::new(false));
                pipe(&client, &server, opts.delay, None, cut.clone(), None);
                pipe(
                    &server,
                    &client,
                    opts.delay,
                    opts.cut_after,
                    cut,
                    Some(down2.clone()),
                );
            }
        });
        Proxy {
            port,
            stop,
            downstream,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` through a queue that releases each chunk `delay` after it arrived.
fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    delay: Duration,
    cut_after: Option<u64>,
    cut: Arc<AtomicBool>,
    counter: Option<Arc<AtomicU64>>,
) {
    let (mut r, mut w) = (
        from.try_clone().expect("clone"),
        to.try_clone().expect("clone"),
    );
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (r_from, r_to) = (
        from.try_clone().expect("clone"),
        to.try_clone().expect("clone"),
    );
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent += n as u64;
                    if let Some(c) = &counter {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if let Some(limit) = cut_after
                        && sent > limit
                    {
                        cut.store(true, Ordering::Relaxed);
                        let _ = r_from.shutdown(Shutdown::Both);
                        let _ = r_to.shutdown(Shutdown::Both);
                        break;
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    });
}
