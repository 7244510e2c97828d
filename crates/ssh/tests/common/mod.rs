#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use burrow_core::server::{HostKeyPolicy, SshTarget};
use burrow_testkit::sshd::Sshd;

pub fn target(sshd: &Sshd) -> SshTarget {
    SshTarget {
        name: "testserver".into(),
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        identity_file: sshd.client_key.clone(),
        identity_passphrase_file: None,
        host_key: HostKeyPolicy::Pinned(sshd.host_key_line.clone()),
        sftp_command: None,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Public key line of a key pair in `path` (+ ".pub").
pub fn public_line(path: &Path) -> String {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    std::fs::read_to_string(p).unwrap().trim().to_owned()
}

/// SHA256 fingerprint of the public key file beside `path`.
pub fn fingerprint(path: &Path) -> String {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap()
        .to_owned()
}

/// A TCP proxy on 127.0.0.1 that delays every byte by `one_way` in each direction (so a
/// round trip costs twice that) without limiting throughput: a distant server on loopback.
pub struct LatencyProxy {
    pub port: u16,
}

impl LatencyProxy {
    pub fn start(to_port: u16, one_way: Duration) -> LatencyProxy {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    one_way,
                );
                pipe(server, client, one_way);
            }
        });
        LatencyProxy { port }
    }
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    use std::time::Instant;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
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
    std::thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
