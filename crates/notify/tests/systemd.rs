//! The sd_notify wrapper against a Unix datagram socket standing in for systemd.
//!
//! The environment is process-global, so everything that sets variables lives in this one test
//! function, in its own test binary where no other test reads the environment concurrently.

#![allow(unsafe_code)]

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use burrow_notify::Systemd;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification datagram");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn notifications_reach_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // SAFETY: this is the only test in this binary, so no other thread reads or writes the
    // environment while it changes.
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    let off = Systemd::from_env();
    assert!(!off.is_enabled());
    off.ready();
    assert_eq!(off.watchdog_interval(), None);

    // SAFETY: as above.
    unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
    let sd = Systemd::from_env();
    assert!(sd.is_enabled());
    sd.ready();
    assert_eq!(recv(&sock), "READY=1\n");
    sd.status("idle; next run web at 03:00\nsecond line");
    assert_eq!(
        recv(&sock),
        "STATUS=idle; next run web at 03:00 second line\n"
    );
    sd.watchdog();
    assert_eq!(recv(&sock), "WATCHDOG=1\n");
    sd.stopping();
    assert_eq!(recv(&sock), "STOPPING=1\n");
    // The disabled handle sent nothing earlier and sends nothing now.
    Systemd::disabled().ready();
    sock.set_nonblocking(true).unwrap();
    assert!(sock.recv(&mut [0u8; 64]).is_err());

    // SAFETY: as above.
    unsafe { std::env::set_var("WATCHDOG_USEC", "30000000") };
    assert_eq!(sd.watchdog_interval(), Some(Duration::from_secs(15)));
    unsafe { std::env::set_var("WATCHDOG_PID", std::process::id().to_string()) };
    assert_eq!(sd.watchdog_interval(), Some(Duration::from_secs(15)));
    // A watchdog meant for another process (e.g. inherited from a parent) is not ours.
    unsafe { std::env::set_var("WATCHDOG_PID", "1") };
    assert_eq!(sd.watchdog_interval(), None);
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        std::env::remove_var("NOTIFY_SOCKET");
    }
}
