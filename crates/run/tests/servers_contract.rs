//! One contract for core's server port, run against the real adapter (`SshServers`, the
//! private sshd on 127.0.0.1) and the fake the in-process run tests use (`FakeServers`): what
//! a run relies on of a server holds for both.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use burrow_core::exclude::Excludes;
use burrow_core::exec::Exec;
use burrow_core::server::{Connection, FilesRequest, HostKeyPolicy, Servers, SshTarget};
use burrow_core::source::{EntryKind, NoParent, Source, WalkContext};
use burrow_core::{ErrorClass, Problems};
use burrow_ssh::SshServers;
use burrow_testkit::exec::{Reply, ScriptedExec};
use burrow_testkit::servers::FakeServers;
use burrow_testkit::sshd::Sshd;

const T: Duration = Duration::from_secs(20);

/// A tree the sshd's user may read: `a.txt` and `sub/b.bin`.
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("www");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("a.txt"), "alpha\n").unwrap();
    fs::write(root.join("sub/b.bin"), vec![9u8; 70_000]).unwrap();
    for d in [dir, root.as_path(), root.join("sub").as_path()] {
        fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    root
}

async fn contract<S: Servers>(servers: S, up: &SshTarget, down: &SshTarget, root: &Path) {
    let e = servers.connect(down).await.err().unwrap();
    assert_eq!(e.class, ErrorClass::Temporary, "a server that is down: {e}");

    let c = servers.connect(up).await.unwrap();
    assert_eq!(c.name(), up.name);
    assert!(!c.is_closed());
    let out = c.exec("printf hi", T).await.unwrap();
    assert_eq!(out.stdout, b"hi");

    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let request = FilesRequest {
        roots: vec![root.to_owned()],
        excludes: Excludes::none(),
        io_timeout: T,
        cancel,
    };
    let files = servers.files(&c, request).await.unwrap();
    // a source is walked on an archiver thread, outside the runtime
    let walked = tokio::task::spawn_blocking(move || walk(&files))
        .await
        .unwrap();
    assert_eq!(
        walked,
        [
            (root.to_owned(), None),
            (root.join("a.txt"), Some(b"alpha\n".to_vec())),
            (root.join("sub"), None),
            (root.join("sub/b.bin"), Some(vec![9u8; 70_000])),
        ]
    );
    c.close().await;
    assert!(c.is_closed());
}

/// Every entry of the walk, in order, with the content of regular files.
fn walk(files: &impl Source) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
    let walked = files
        .entries(ctx.clone())
        .map(|e| {
            let content = (e.kind == EntryKind::File).then(|| {
                let mut v = Vec::new();
                let opened = e.content.expect("a file has content").open();
                opened.unwrap().read_to_end(&mut v).unwrap();
                v
            });
            (e.path, content)
        })
        .collect();
    assert!(ctx.problems.is_empty(), "{:?}", ctx.problems.snapshot());
    walked
}

fn target(name: &str, port: u16) -> SshTarget {
    SshTarget {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        user: "backup".into(),
        identity_file: PathBuf::from("/nonexistent"),
        identity_passphrase_file: None,
        host_key: HostKeyPolicy::Pinned(format!("SHA256:{}", "A".repeat(43))),
        sftp_command: None,
        connect_timeout: Duration::from_secs(10),
    }
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_keeps_the_contract() {
    let Some(sshd) = Sshd::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    let up = SshTarget {
        user: sshd.user.clone(),
        identity_file: sshd.client_key.clone(),
        host_key: HostKeyPolicy::Pinned(sshd.host_key_line.clone()),
        ..target("vps", sshd.port)
    };
    let down = SshTarget {
        name: "down".into(),
        port: closed_port(),
        ..up.clone()
    };
    contract(SshServers, &up, &down, &root).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fake_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tree(tmp.path());
    let exec = Arc::new(ScriptedExec::new("vps").on("printf hi", Reply::ok("hi")));
    let servers = FakeServers::default()
        .with("vps", exec.clone())
        .with("down", exec)
        .unreachable("down");
    contract(servers, &target("vps", 22), &target("down", 22), &root).await;
}
