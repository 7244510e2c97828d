//! Connection, host keys, authentication, exec channels and SFTP start against a private sshd.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burrow_core::server::HostKeyPolicy;
use burrow_ssh::{Session, SshError};
use burrow_testkit::sshd::{Sshd, group_members};
use common::{fingerprint, public_line, target};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn exec_collects_stdout_stderr_and_exit_status() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let out = s.exec("echo out; echo err >&2; exit 3", T).await.unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_status, Some(3));
    assert!(!out.success());
    let out = s.exec("true", T).await.unwrap();
    assert!(out.success(), "{out:?}");
    s.close().await;
}

#[tokio::test]
async fn exec_keeps_only_the_tail_of_long_output() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let out = s.exec("seq 1 100000", T).await.unwrap();
    assert_eq!(out.stdout.len(), burrow_core::exec::OUTPUT_TAIL);
    assert!(out.stdout.ends_with(b"99999\n100000\n"));
}

#[tokio::test]
async fn exec_reports_a_killing_signal() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let out = s.exec("kill -TERM $$", T).await.unwrap();
    assert_eq!(out.exit_status, None);
    assert_eq!(out.exit_signal.as_deref(), Some("TERM"), "{out:?}");
}

#[tokio::test]
async fn pinned_fingerprint_is_accepted() {
    let Some(sshd) = Sshd::start() else { return };
    let mut t = target(&sshd);
    t.host_key = HostKeyPolicy::Pinned(sshd.host_key_fingerprint.clone());
    let s = Session::connect(&t).await.unwrap();
    assert!(s.exec("true", T).await.unwrap().success());
}

#[tokio::test]
async fn wrong_pinned_key_is_refused_naming_both_fingerprints() {
    let Some(sshd) = Sshd::start() else { return };
    let other = sshd.unauthorized_client_key("not_the_host");
    let mut t = target(&sshd);
    t.host_key = HostKeyPolicy::Pinned(public_line(&other));
    let e = Session::connect(&t).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SshError::HostKeyMismatch { .. }), "{msg}");
    assert!(msg.contains(&sshd.host_key_fingerprint), "{msg}");
    assert!(msg.contains(&fingerprint(&other)), "{msg}");
    assert!(!e.is_temporary());

    t.host_key = HostKeyPolicy::Pinned(fingerprint(&other));
    let e = Session::connect(&t).await.unwrap_err();
    assert!(e.to_string().contains(&sshd.host_key_fingerprint), "{e}");
}

#[tokio::test]
async fn known_hosts_with_a_hashed_entry_is_accepted() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.dir.path().join("kh_hashed");
    let line = sshd.known_hosts_line(true);
    assert!(line.starts_with("|1|"), "{line}");
    std::fs::write(&kh, format!("# burrow\n{line}")).unwrap();
    let mut t = target(&sshd);
    t.host_key = HostKeyPolicy::KnownHosts(kh);
    let s = Session::connect(&t).await.unwrap();
    assert!(s.exec("true", T).await.unwrap().success());
}

#[tokio::test]
async fn known_hosts_with_tabs_and_extra_spaces_is_accepted() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.dir.path().join("kh_tabs");
    let (kind, rest) = sshd.host_key_line.split_once(' ').unwrap();
    std::fs::write(&kh, format!("[127.0.0.1]:{}\t{kind}   {rest}\n", sshd.port)).unwrap();
    let mut t = target(&sshd);
    t.host_key = HostKeyPolicy::KnownHosts(kh);
    Session::connect(&t).await.unwrap();
}

#[tokio::test]
async fn unknown_host_is_refused_with_its_fingerprint() {
    let Some(sshd) = Sshd::start() else { return };
    let kh = sshd.dir.path().join("kh_other");
    // Only an entry for the default port, which does not cover this server's port.
    std::fs::write(&kh, format!("127.0.0.1 {}\n", sshd.host_key_line)).unwrap();
    let mut t = target(&sshd);
    t.host_key = HostKeyPolicy::KnownHosts(kh);
    let e = Session::connect(&t).await.unwrap_err();
    assert!(matches!(e, SshError::HostKeyUnknown { .. }), "{e}");
    assert!(e.to_string().contains(&sshd.host_key_fingerprint), "{e}");
    assert!(!e.is_temporary());
}

#[tokio::test]
async fn changed_host_key_in_known_hosts_is_refused() {
    let Some(sshd) = Sshd::start() else { return };
    let other = sshd.unauthorized_client_key("old_host_key");
    let kh = sshd.dir.path().join("kh_changed");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} {}\n", sshd.port, public_line(&other)),
    )
    .unwrap();
    let mut t = target(&sshd);
    t.host_key = HostKeyPolicy::KnownHosts(kh);
    let e = Session::connect(&t).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SshError::HostKeyMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&sshd.host_key_fingerprint) && msg.contains(&fingerprint(&other)),
        "{msg}"
    );
}

#[tokio::test]
async fn passphrase_protected_key() {
    let Some(sshd) = Sshd::start() else { return };
    let key = sshd.add_client_key("id_protected", Some("correct horse"));
    let mut t = target(&sshd);
    t.identity_file = key.clone();
    let e = Session::connect(&t).await.unwrap_err();
    assert!(matches!(e, SshError::KeyEncrypted { .. }), "{e}");
    assert!(e.to_string().contains("id_protected"), "{e}");

    let pass = sshd.dir.path().join("pass");
    std::fs::write(&pass, "correct horse\nignored second line\n").unwrap();
    t.identity_passphrase_file = Some(pass);
    let s = Session::connect(&t).await.unwrap();
    assert!(s.exec("true", T).await.unwrap().success());
}

#[tokio::test]
async fn unauthorized_key_is_a_permanent_auth_error_naming_the_key() {
    let Some(sshd) = Sshd::start() else { return };
    let mut t = target(&sshd);
    t.identity_file = sshd.unauthorized_client_key("id_stranger");
    let e = Session::connect(&t).await.unwrap_err();
    assert!(matches!(e, SshError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("id_stranger"), "{e}");
    assert!(!e.is_temporary());
}

#[tokio::test]
async fn missing_key_file_is_named() {
    let Some(sshd) = Sshd::start() else { return };
    let mut t = target(&sshd);
    t.identity_file = PathBuf::from("/nonexistent/id_ed25519");
    let e = Session::connect(&t).await.unwrap_err();
    assert!(matches!(e, SshError::KeyFile { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/id_ed25519"), "{e}");
}

#[tokio::test]
async fn closed_port_is_a_temporary_connect_error() {
    let Some(sshd) = Sshd::start() else { return };
    let mut t = target(&sshd);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    t.port = l.local_addr().unwrap().port();
    drop(l);
    let e = Session::connect(&t).await.unwrap_err();
    assert!(matches!(e, SshError::Connect { .. }), "{e}");
    assert!(e.is_temporary());
}

#[tokio::test]
async fn silent_server_times_out() {
    let Some(sshd) = Sshd::start() else { return };
    // Accepts TCP connections (backlog) but never speaks SSH.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut t = target(&sshd);
    t.port = l.local_addr().unwrap().port();
    t.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let e = Session::connect(&t).await.unwrap_err();
    assert!(matches!(e, SshError::ConnectTimeout { .. }), "{e}");
    assert!(e.is_temporary());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(l);
}

#[tokio::test]
async fn exec_timeout_stops_the_command_and_the_session_lives_on() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let started = Instant::now();
    let pidfile = sshd.dir.path().join("cmd.pid");
    // The shell forks `sleep` into its process group: the whole group must go.
    let cmd = format!("echo $$ > {}; sleep 30; true", pidfile.display());
    let e = s.exec(&cmd, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(e, SshError::ExecTimeout { .. }), "{e}");
    assert!(e.to_string().contains("sleep 30"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let pgid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        group_members(pgid),
        Vec::<u32>::new(),
        "the command's group must be gone"
    );
    assert_eq!(s.exec("echo ok", T).await.unwrap().stdout, b"ok\n");
}

#[tokio::test]
async fn exec_to_writer_is_ended_with_its_group_on_timeout_and_on_cancel() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let pidfile = sshd.dir.path().join("dump.pid");
    let cmd = format!(
        "echo $$ > {}; echo some; sleep 300; true",
        pidfile.display()
    );
    let pgid = || -> u32 {
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let mut buf: Vec<u8> = Vec::new();
    // long enough for the login shell's startup files to reach `echo some` on a busy machine
    let e = s
        .exec_to_writer(
            &cmd,
            &mut buf,
            Duration::from_secs(5),
            std::future::pending(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::ExecTimeout { .. }), "{e}");
    assert_eq!(buf, b"some\n");
    assert_eq!(group_members(pgid()), Vec::<u32>::new());

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = tx.send(());
    });
    let e = s
        .exec_to_writer(&cmd, &mut buf, T, async {
            let _ = rx.await;
        })
        .await
        .unwrap_err();
    assert!(matches!(e, SshError::ExecCancelled { .. }), "{e}");
    assert_eq!(group_members(pgid()), Vec::<u32>::new());
}

#[tokio::test]
async fn exec_to_writer_streams_output_unchanged() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let out = s
        .exec_to_writer(
            "seq 1 200000; echo done >&2",
            &mut buf,
            T,
            std::future::pending(),
        )
        .await
        .unwrap();
    let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(buf.len(), want.len());
    assert!(buf == want.as_bytes());
    assert!(out.success());
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr, b"done\n");
}

#[tokio::test]
async fn exec_with_stdin_round_trip() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = sshd.dir.path().join("stdin.bin");
    let out = s
        .exec_with_stdin(
            &format!("cat > '{}'; echo wrote", file.display()),
            &input[..],
        )
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, b"wrote\n");
    assert!(std::fs::read(&file).unwrap() == input);

    // A command that stops reading early ends the call with its status, not a hang.
    let out = s
        .exec_with_stdin("head -c 10 >/dev/null; exit 4", &input[..])
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(4));
}

#[tokio::test]
async fn exec_with_stdin_kills_the_command_when_input_fails() {
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("disk gone")));
            }
            self.0 -= 1;
            buf.put_slice(b"partial data\n");
            std::task::Poll::Ready(Ok(()))
        }
    }
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let marker = sshd.dir.path().join("completed");
    let cmd = format!("cat >/dev/null && touch '{}'", marker.display());
    let e = s.exec_with_stdin(&cmd, Failing(3)).await.unwrap_err();
    assert!(e.to_string().contains("disk gone"), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marker.exists(),
        "the command must not see EOF after a failed input"
    );
}

async fn check_sftp(s: &Session, dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::write(dir.join("hello.txt"), "hello sftp").unwrap();
    let sftp = s.sftp().await.unwrap();
    let names: Vec<Vec<u8>> = sftp
        .read_dir(dir.as_os_str().as_bytes())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_vec())
        .collect();
    assert!(names.contains(&b"hello.txt".to_vec()), "{names:?}");
    assert!(!names.contains(&b".".to_vec()) && !names.contains(&b"..".to_vec()));
    let data = sftp
        .read(dir.join("hello.txt").as_os_str().as_bytes())
        .await
        .unwrap();
    assert_eq!(data, b"hello sftp");
    // OpenSSH says what it allows.
    let l = sftp.limits();
    assert!(l.max_read >= 64 * 1024 && l.max_handles >= 100, "{l:?}");
}

#[tokio::test]
async fn sftp_over_the_subsystem() {
    let Some(sshd) = Sshd::start() else { return };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    check_sftp(&s, sshd.dir.path()).await;
}

#[tokio::test]
async fn sftp_over_a_command() {
    let Some(sshd) = Sshd::start() else { return };
    let mut t = target(&sshd);
    t.sftp_command = Some("/usr/lib/openssh/sftp-server -R".into());
    let s = Session::connect(&t).await.unwrap();
    check_sftp(&s, sshd.dir.path()).await;
    // Several sessions on one connection.
    let a = s.sftp().await.unwrap();
    let b = s.sftp().await.unwrap();
    assert!(a.lstat(b"/").await.is_ok() && b.lstat(b"/").await.is_ok());
}

#[tokio::test]
async fn failing_sftp_command_reports_its_stderr_and_status_quickly() {
    let Some(sshd) = Sshd::start() else { return };
    let mut t = target(&sshd);
    t.sftp_command = Some(r#"sh -c 'echo "sudo: a password is required" >&2; exit 1'"#.into());
    let s = Session::connect(&t).await.unwrap();
    let started = Instant::now();
    let Err(e) = s.sftp().await else {
        panic!("a failing sftp command must not give a session")
    };
    let msg = e.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(msg.contains("sudo: a password is required"), "{msg}");
    assert!(msg.contains("exit status 1"), "{msg}");
    assert!(!e.is_temporary(), "{msg}");
}

#[tokio::test]
async fn server_vanishing_ends_a_running_command_with_a_temporary_error() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let s = Session::connect(&target(&sshd)).await.unwrap();
    let running = tokio::spawn({
        let s = s.clone();
        async move { s.exec("sleep 60", Duration::from_secs(120)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    sshd.kill();
    let res = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("exec must end when the server vanishes")
        .unwrap();
    let e = res.expect_err("a vanished server is not a successful command");
    assert!(e.is_temporary(), "{e}");
    let e = s.exec("true", T).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");

    sshd.restart();
    let s = Session::connect(&target(&sshd)).await.unwrap();
    assert!(s.exec("true", T).await.unwrap().success());
}
