//! One contract for the `Exec` port: a job's commands behave the same on its server (the SSH
//! session, against the private sshd on 127.0.0.1), on this machine
//! (`burrow_run::host::Local`), and in the scripted fake given the answers a shell gives. The
//! real places also end a timed-out command's whole process group, which a fake has none of.

use std::path::Path;
use std::time::{Duration, Instant};

use burrow_core::ErrorClass;
use burrow_core::exec::{Exec, OUTPUT_TAIL};
use burrow_core::server::{HostKeyPolicy, SshTarget};
use burrow_run::host::Local;
use burrow_ssh::Session;
use burrow_testkit::exec::{Reply, ScriptedExec};
use burrow_testkit::sshd::Sshd;

const T: Duration = Duration::from_secs(20);

async fn contract(place: &impl Exec) {
    let who = place.describe().to_owned();

    // exit status, stdout and stderr
    let out = place
        .exec("echo out; echo err >&2; exit 3", T)
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(3), "{who}");
    assert!(!out.success());
    assert_eq!(out.stdout, b"out\n", "{who}");
    assert_eq!(out.stderr_text(), "err", "{who}");
    assert_eq!(out.status_text(), "exit status 3");

    // only the tail of a long output is kept
    let out = place
        .exec("head -c 200000 /dev/zero | tr '\\0' x; printf END", T)
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), OUTPUT_TAIL, "{who}");
    assert!(out.stdout.ends_with(b"xEND"), "{who}");

    // stdin is fed whole and closed
    let input = vec![7u8; 300_000];
    let out = place
        .exec_with_stdin("wc -c", input.as_slice())
        .await
        .unwrap();
    assert!(out.success(), "{who}: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "300000",
        "{who}"
    );

    // a stream goes whole into the writer, and stays out of the result
    let mut sink = Vec::new();
    let out = place
        .exec_to_writer(
            "head -c 3000000 /dev/urandom | od -An -v | head -c 2500000",
            &mut sink,
            T,
            std::future::pending(),
        )
        .await
        .unwrap();
    assert!(out.success(), "{who}: {out:?}");
    assert_eq!(sink.len(), 2_500_000, "{who}");
    assert!(out.stdout.is_empty(), "{who}");

    // a command still running at its timeout fails the call with a temporary error
    let t0 = Instant::now();
    let e = place
        .exec("sleep 60", Duration::from_millis(500))
        .await
        .expect_err("the command outlives its timeout");
    assert_eq!(e.class, ErrorClass::Temporary, "{who}: {e}");
    assert!(e.message.contains("timed out"), "{who}: {e}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{who}");

    // a stream stopped by its cancel is a temporary error too
    let mut sink = Vec::new();
    let e = place
        .exec_to_writer(
            "sleep 60",
            &mut sink,
            T,
            tokio::time::sleep(Duration::from_millis(300)),
        )
        .await
        .expect_err("cancelled");
    assert_eq!(e.class, ErrorClass::Temporary, "{who}: {e}");
}

/// A command still running at its timeout is ended with its whole process group.
async fn ends_the_whole_group(place: &impl Exec, scratch: &Path) {
    let who = place.describe().to_owned();
    let pids = scratch.join(format!("pids-{}", who.replace(' ', "-")));
    let cmd = format!(
        "sleep 60 & echo $! > {p}; wait",
        p = burrow_core::shell_quote(&pids.to_string_lossy())
    );
    let e = place
        .exec(&cmd, Duration::from_millis(500))
        .await
        .expect_err("the command outlives its timeout");
    assert_eq!(e.class, ErrorClass::Temporary, "{who}: {e}");
    let child: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{child}")).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{who}: the group's sleep {child} still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn this_machine_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    contract(&Local).await;
    ends_the_whole_group(&Local, tmp.path()).await;
}

/// The fake, scripted with what a shell answers to the contract's commands: it must keep
/// the same tails, streams, timeouts and cancels.
#[tokio::test]
async fn the_scripted_fake_keeps_the_contract() {
    let exit = |status: u32, stdout: Vec<u8>, stderr: &[u8]| Reply::Exit {
        status,
        stdout,
        stderr: stderr.to_vec(),
    };
    let mut long = vec![b'x'; 200_000];
    long.extend_from_slice(b"END");
    let fake = ScriptedExec::new("scripted")
        .on("exit 3", exit(3, b"out\n".to_vec(), b"err\n"))
        .on("printf END", exit(0, long, b""))
        .on("wc -c", Reply::ok("300000\n"))
        .on("od -An", exit(0, vec![b' '; 2_500_000], b""))
        .on("sleep 60", Reply::Hang);
    contract(&fake).await;
    let fed = fake.ran().into_iter().find(|r| r.cmd == "wc -c").unwrap();
    assert_eq!(
        fed.stdin.map(|s| s.len()),
        Some(300_000),
        "stdin is fed whole"
    );
}

#[tokio::test]
async fn the_servers_ssh_session_keeps_the_contract() {
    let Some(sshd) = Sshd::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // the sshd's user writes the pid file: a directory it may write to
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let session = Session::connect(&SshTarget {
        name: "vps".into(),
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: sshd.user.clone(),
        identity_file: sshd.client_key.clone(),
        identity_passphrase_file: None,
        host_key: HostKeyPolicy::Pinned(sshd.host_key_line.clone()),
        sftp_command: None,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    contract(&session).await;
    ends_the_whole_group(&session, tmp.path()).await;
    session.close().await;
}
