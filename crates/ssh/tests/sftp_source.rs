//! The SFTP source against a private sshd, compared with the local source over the same tree.
//! The walks are consumed on the test thread, outside the runtime, as the archiver does.

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::problems::Problems;
use burrow_core::server::SshTarget;
use burrow_core::source::{Entry, EntryKind, NoParent, ParentIndex, Source, Time, WalkContext};
use burrow_ssh::{DEFAULT_IO_TIMEOUT, PrefetchLimits, Session, SftpSource};
use burrow_testkit::sshd::Sshd;
use common::{LatencyProxy, target};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sftp_source(rt: &Runtime, sshd: &Sshd, roots: &[PathBuf], excludes: Excludes) -> SftpSource {
    source_over(rt, &target(sshd), DEFAULT_IO_TIMEOUT, roots, excludes)
}

fn source_over(
    rt: &Runtime,
    t: &SshTarget,
    io_timeout: Duration,
    roots: &[PathBuf],
    excludes: Excludes,
) -> SftpSource {
    rt.block_on(async {
        let s = Session::connect(t).await.unwrap();
        // A cancel signal that never comes.
        let cancel = tokio::sync::watch::channel(false).1;
        SftpSource::start(&s, io_timeout, cancel, rt.handle().clone(), roots, excludes)
            .await
            .unwrap()
    })
}

fn read_all(e: Entry) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    e.content.unwrap().open()?.read_to_end(&mut buf)?;
    Ok(buf)
}

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with the awkward cases: nesting, an empty directory, a symlink leading outside, a
/// FIFO, a name with a newline, a name that is not UTF-8, excluded names, odd modes, empty,
/// small and large files, and names whose byte order differs from other orders.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("cache/deep")).unwrap();
    fs::write(root.join("cache/deep/x"), "excluded").unwrap();
    fs::write(root.join("a/b/c/deep.txt"), "deep").unwrap();
    fs::write(root.join("a/one"), "1").unwrap();
    fs::write(root.join("a/skip.tmp"), "tmp").unwrap();
    fs::write(root.join("B"), "upper").unwrap();
    fs::write(root.join("a-b"), "dash").unwrap();
    fs::write(root.join("a.b"), "dot").unwrap();
    fs::write(root.join("ä"), "umlaut").unwrap();
    fs::write(root.join("zero"), "").unwrap();
    fs::write(root.join("line\nbreak"), "newline in name").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bad\xff")), "latin1").unwrap();
    let big: Vec<u8> = (0..3_500_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    let mid: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(root.join("a/mid.bin"), &mid).unwrap();
    fs::write(root.join("script.sh"), "#!/bin/sh\n").unwrap();
    set_mode(&root.join("script.sh"), 0o4755);
    fs::write(root.join("secret"), "s").unwrap();
    set_mode(&root.join("secret"), 0o600);
    set_mode(&root.join("empty"), 0o1777);
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-out")).unwrap();
    std::os::unix::fs::symlink("a/one", root.join("link-in")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"to-\xfe"), root.join("link-bytes")).unwrap();
    mkfifo(&root.join("fifo"));
}

#[test]
fn walk_matches_the_local_source() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    build_tree(&root);
    let other_root = tmp.path().join("second");
    fs::create_dir_all(&other_root).unwrap();
    fs::write(other_root.join("f"), "second root").unwrap();
    let roots = vec![other_root.clone(), root.clone(), root.join("a")];
    let excludes = Excludes::new(&["*.tmp", "cache"]).unwrap();

    let local_ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
    let local: Vec<Entry> = LocalSource::new(&roots, excludes.clone())
        .entries(local_ctx)
        .collect();

    let problems = Problems::new();
    let ctx = WalkContext::new(Arc::new(NoParent), problems.clone());
    let src = sftp_source(&rt, &sshd, &roots, excludes);
    let remote: Vec<Entry> = src.entries(ctx.clone()).collect();

    let lp: Vec<&Path> = local.iter().map(|e| e.path.as_path()).collect();
    let rp: Vec<&Path> = remote.iter().map(|e| e.path.as_path()).collect();
    assert_eq!(rp, lp);
    assert!(rp.contains(&root.join("empty").as_path()));
    assert!(rp.contains(&root.join(OsStr::from_bytes(b"bad\xff")).as_path()));
    assert!(
        !rp.iter()
            .any(|p| p.ends_with("skip.tmp") || p.ends_with("cache"))
    );

    let mut total = 0u64;
    for (l, r) in local.into_iter().zip(remote) {
        let p = l.path.clone();
        assert_eq!(r.kind, l.kind, "{p:?}");
        assert_eq!(r.meta.mode, l.meta.mode, "{p:?}");
        assert_eq!(r.meta.uid, l.meta.uid, "{p:?}");
        assert_eq!(r.meta.gid, l.meta.gid, "{p:?}");
        assert_eq!(
            r.meta.mtime.map(|t| t.secs),
            l.meta.mtime.map(|t| t.secs),
            "{p:?}"
        );
        // Listing a directory may update its atime between the two walks.
        if l.kind != EntryKind::Dir {
            assert_eq!(
                r.meta.atime.map(|t| t.secs),
                l.meta.atime.map(|t| t.secs),
                "{p:?}"
            );
        }
        if l.kind == EntryKind::File {
            assert_eq!(r.meta.size, l.meta.size, "{p:?}");
            total += l.meta.size;
            let want = read_all(l).unwrap();
            let got = read_all(r).unwrap();
            assert!(got == want, "content of {p:?} differs");
        } else {
            assert!(r.content.is_none(), "{p:?}");
        }
    }
    assert_eq!(ctx.bytes_read.load(Ordering::Relaxed), total);
    // Names and symlink targets that are not UTF-8 come through as the bytes they are.
    assert!(problems.is_empty(), "{:?}", problems.snapshot());
}

struct Everything;

impl ParentIndex for Everything {
    fn unchanged(&self, _: &Path, _: u64, _: Option<Time>) -> bool {
        true
    }
}

#[test]
fn unchanged_files_are_not_read_unless_opened() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    build_tree(&root);
    let ctx = WalkContext::new(Arc::new(Everything), Problems::new());
    let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none());
    let entries: Vec<Entry> = src.entries(ctx.clone()).collect();
    assert!(entries.len() > 10);
    // Give any (wrong) prefetch time to happen; nothing may be handed out or buffered.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ctx.bytes_read.load(Ordering::Relaxed), 0);

    // The archiver may still open one; it is then fetched on demand.
    let e = entries
        .into_iter()
        .find(|e| e.path == root.join("a/one"))
        .unwrap();
    assert_eq!(read_all(e).unwrap(), b"1");
    assert_eq!(ctx.bytes_read.load(Ordering::Relaxed), 1);
}

#[test]
fn vanished_and_resized_files_are_handled() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("gone"), "soon deleted").unwrap();
    fs::write(root.join("grows"), "0123456789").unwrap();
    fs::write(root.join("shrinks"), "0123456789").unwrap();
    let problems = Problems::new();
    // Not prefetched, so the changes below happen before the content is read.
    let ctx = WalkContext::new(Arc::new(Everything), problems.clone());
    let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none());
    let mut entries: Vec<Entry> = src.entries(ctx).collect();
    fs::remove_file(root.join("gone")).unwrap();
    fs::write(root.join("grows"), "0123456789abcdef").unwrap();
    fs::write(root.join("shrinks"), "0123").unwrap();

    let shrinks = entries.pop().unwrap();
    let grows = entries.pop().unwrap();
    let gone = entries.pop().unwrap();
    // Fewer bytes than listed: an error, so the archiver leaves the file out.
    let err = read_all(shrinks).unwrap_err();
    assert!(err.to_string().contains("listed 10 bytes, read 4"), "{err}");
    // More: the listed bytes are stored (the node's size is theirs), and the file is named.
    assert_eq!(read_all(grows).unwrap(), b"0123456789");
    let err = read_all(gone).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    let problems = problems.snapshot();
    let paths: HashSet<&Path> = problems.iter().map(|p| p.path.as_path()).collect();
    let want: HashSet<PathBuf> = ["gone", "grows", "shrinks"]
        .iter()
        .map(|n| root.join(n))
        .collect();
    assert_eq!(
        paths,
        want.iter().map(|p| p.as_path()).collect(),
        "{problems:?}"
    );
    let grew = problems
        .iter()
        .find(|p| p.path == root.join("grows"))
        .unwrap();
    assert!(
        grew.message
            .contains("listed 10 bytes, 16 bytes after the read"),
        "{grew:?}"
    );
}

#[test]
fn missing_root_and_unlistable_paths_are_problems() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("f"), "x").unwrap();
    let missing = tmp.path().join("missing");
    let problems = Problems::new();
    let ctx = WalkContext::new(Arc::new(NoParent), problems.clone());
    let src = sftp_source(
        &rt,
        &sshd,
        &[missing.clone(), root.clone()],
        Excludes::none(),
    );
    let paths: Vec<PathBuf> = src.entries(ctx).map(|e| e.path).collect();
    assert_eq!(paths, vec![root.clone(), root.join("f")]);
    let problems = problems.snapshot();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, missing);
}

/// Many small files in many directories with small limits, read by several threads the way
/// the archiver does (contents opened out of step with the walk, some dropped unread).
#[test]
fn many_small_files_arrive_intact_with_prefetch() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("many");
    let mut expected = std::collections::HashMap::new();
    for d in 0..40 {
        let dir = root.join(format!("d{d:02}")).join("sub");
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            let p = dir.join(format!("f{f:03}"));
            let body = format!("{d}/{f} ").repeat(1 + (d * 50 + f) % 37);
            fs::write(&p, &body).unwrap();
            expected.insert(p, body.into_bytes());
        }
    }
    for limits in [
        PrefetchLimits::default(),
        PrefetchLimits {
            listings: 2,
            small_files: 3,
            small_bytes: 100,
            large_files: 1,
            chunk: 64,
            large_file_chunks: 1,
        },
        // Many READs in flight within each file, of a few bytes each.
        PrefetchLimits {
            chunk: 16,
            large_file_chunks: 6,
            ..PrefetchLimits::default()
        },
    ] {
        let ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
        let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none())
            .with_limits(limits);
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Entry>(8);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let next = rx.lock().unwrap().recv();
                        let Ok(e) = next else { break };
                        let p = e.path.clone();
                        // One file per directory is dropped unread: its buffer must be released.
                        if p.to_string_lossy().ends_with('7') && p.to_string_lossy().contains("f01")
                        {
                            drop(e);
                            continue;
                        }
                        got.push((p, read_all(e).unwrap()));
                    }
                    got
                })
            })
            .collect();
        let mut files = 0;
        for e in src.entries(ctx.clone()) {
            if e.kind == EntryKind::File {
                files += 1;
                tx.send(e).unwrap();
            }
        }
        drop(tx);
        let mut seen = HashSet::new();
        let mut bytes = 0u64;
        for w in workers {
            for (p, data) in w.join().unwrap() {
                assert!(expected[&p] == data, "content of {p:?} differs");
                bytes += data.len() as u64;
                assert!(seen.insert(p));
            }
        }
        assert_eq!(files, 2000);
        assert_eq!(seen.len(), 2000 - 40);
        assert_eq!(ctx.bytes_read.load(Ordering::Relaxed), bytes);
        assert!(ctx.problems.is_empty(), "{:?}", ctx.problems.snapshot());
        eprintln!("{limits:?}: {:?}", started.elapsed());
    }
}

/// What the server did, from its own log (`sftp-server -l DEBUG1`): a small file is one READ
/// and one FSTAT, an empty file no READ at all, a large file is read in the server's largest
/// reads; and with hundreds of files in flight, hundreds of handles are open at once (a
/// client that keeps handles as text cannot pass OpenSSH's handle 128).
#[test]
fn small_files_cost_one_read_each_and_hundreds_of_handles_are_open_at_once() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let mut expected = std::collections::HashMap::new();
    for d in 0..3 {
        let dir = root.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..200 {
            let p = dir.join(format!("f{f:03}"));
            let body = format!("{d}.{f};").repeat(1 + f * 7);
            fs::write(&p, &body).unwrap();
            expected.insert(p, body.into_bytes());
        }
    }
    fs::write(root.join("empty"), "").unwrap();
    expected.insert(root.join("empty"), Vec::new());
    let big = burrow_testkit::noise(1_100_000, 7);
    fs::write(root.join("big"), &big).unwrap();
    expected.insert(root.join("big"), big);

    let log = tmp.path().join("sftp-server.log");
    let mut t = target(&sshd);
    t.sftp_command = Some(format!(
        "/usr/lib/openssh/sftp-server -R -e -l DEBUG1 2>>'{}'",
        log.display()
    ));
    let src = source_over(
        &rt,
        &t,
        DEFAULT_IO_TIMEOUT,
        std::slice::from_ref(&root),
        Excludes::none(),
    );
    let chunk = src.limits().chunk;
    let ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
    // Take every entry before reading any: all the files are fetched ahead at once.
    let entries: Vec<Entry> = src.entries(ctx.clone()).collect();
    for e in entries {
        if e.kind == EntryKind::File {
            let p = e.path.clone();
            assert!(
                read_all(e).unwrap() == expected[&p],
                "content of {p:?} differs"
            );
        }
    }
    assert!(ctx.problems.is_empty(), "{:?}", ctx.problems.snapshot());
    drop(src);
    std::thread::sleep(Duration::from_millis(300));

    let text = fs::read_to_string(&log).unwrap();
    let reads = |name: &str| {
        text.lines()
            .filter(|l| l.contains(": read \"") && l.contains(&format!("/{name}\"")))
            .count()
    };
    for f in ["d0/f000", "d1/f123", "d2/f199"] {
        assert_eq!(reads(f), 1, "{f}: {text:.2000}");
    }
    assert_eq!(reads("empty"), 0);
    assert_eq!(
        reads("big"),
        1_100_000usize.div_ceil(chunk),
        "chunk {chunk}"
    );
    let fstats = text.lines().filter(|l| l.contains(": fstat \"")).count();
    assert_eq!(fstats, 601, "one FSTAT per file read");
    // Files open at once, by the server's open and close lines.
    let (mut open, mut most) = (0i64, 0i64);
    for l in text.lines() {
        if l.starts_with("open \"") {
            open += 1;
            most = most.max(open);
        } else if l.starts_with("close \"") {
            open -= 1;
        }
    }
    assert_eq!(open, 0, "every handle is closed");
    assert!(most > 128, "at most {most} files were open at once");
}

#[test]
fn abandoning_a_walk_midway_does_not_hang() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    for d in 0..20 {
        fs::create_dir_all(root.join(format!("{d}"))).unwrap();
        for f in 0..20 {
            fs::write(root.join(format!("{d}/{f}")), vec![b'x'; 1000]).unwrap();
        }
    }
    let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none());
    let ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
    let mut it = src.entries(ctx.clone());
    let held: Vec<Entry> = it.by_ref().take(50).collect();
    drop(it);
    drop(held);
    // The same source walks again, completely.
    assert_eq!(src.entries(ctx).count(), 1 + 20 + 400);
}

#[test]
fn server_vanishing_mid_walk_ends_the_walk_with_problems() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    for d in 0..60 {
        let dir = root.join(format!("{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("{f}")), vec![b'y'; 2000]).unwrap();
        }
    }
    let problems = Problems::new();
    let ctx = WalkContext::new(Arc::new(NoParent), problems.clone());
    let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none()).with_limits(
        PrefetchLimits {
            listings: 1,
            ..PrefetchLimits::default()
        },
    );
    let mut it = src.entries(ctx);
    let first: Vec<Entry> = it.by_ref().take(5).collect();
    sshd.kill();
    let started = Instant::now();
    let rest: Vec<Entry> = it.collect();
    // Usually the closed TCP connection ends everything at once; when it is not noticed,
    // SSH keepalives (15 s x 3) and the SFTP request timeout (60 s) bound the wait.
    let walk_took = started.elapsed();
    assert!(walk_took < Duration::from_secs(100), "{walk_took:?}");
    let mut failed = 0;
    for e in first.into_iter().chain(rest) {
        if e.kind == EntryKind::File && read_all(e).is_err() {
            failed += 1;
        }
    }
    assert!(
        failed > 0 || !problems.is_empty(),
        "a vanished server must leave traces"
    );
    assert!(!problems.is_empty());
    assert!(started.elapsed() < Duration::from_secs(160));
}

/// 50 ms round trips: one round trip per file or directory would take over a minute here
/// (500 files, 41 directories, each costing 2-4 round trips); listing and fetching ahead
/// must bring it to a few seconds, and a no-change walk to well under that.
#[test]
fn latency_is_hidden_by_listing_and_fetching_ahead() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("far");
    for d in 0..20 {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir_all(dir.join("inner")).unwrap();
        for f in 0..25 {
            fs::write(dir.join(format!("f{f:02}")), format!("{d}-{f}").repeat(100)).unwrap();
        }
    }
    let proxy = LatencyProxy::start(sshd.port, Duration::from_millis(25));
    let mut t = target(&sshd);
    t.port = proxy.port;
    let src = source_over(
        &rt,
        &t,
        DEFAULT_IO_TIMEOUT,
        std::slice::from_ref(&root),
        Excludes::none(),
    );

    let started = Instant::now();
    let ctx = WalkContext::new(Arc::new(Everything), Problems::new());
    let n = src.entries(ctx).count();
    let no_change = started.elapsed();
    assert_eq!(n, 1 + 40 + 500);

    let started = Instant::now();
    let ctx = WalkContext::new(Arc::new(NoParent), Problems::new());
    let mut bytes = 0;
    for e in src.entries(ctx.clone()) {
        if e.kind == EntryKind::File {
            bytes += read_all(e).unwrap().len();
        }
    }
    let full = started.elapsed();
    assert!(ctx.problems.is_empty(), "{:?}", ctx.problems.snapshot());
    assert_eq!(ctx.bytes_read.load(Ordering::Relaxed), bytes as u64);
    eprintln!("50 ms RTT: no-change walk {no_change:?}, full read {full:?}");
    assert!(
        no_change < Duration::from_secs(3),
        "no-change walk took {no_change:?}"
    );
    assert!(full < Duration::from_secs(10), "full read took {full:?}");
}

/// A 30 MB file truncated to 13 MB while its content is being read: the reader fails (the
/// archiver then leaves the file out), and the problem says what was seen.
#[test]
fn a_file_truncated_while_read_fails_and_is_named() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir_all(&root).unwrap();
    let f = root.join("big");
    let data: Vec<u8> = (0..30_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&f, &data).unwrap();
    let problems = Problems::new();
    let ctx = WalkContext::new(Arc::new(Everything), problems.clone());
    let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none());
    let e = src.entries(ctx).find(|e| e.path == f).unwrap();
    assert_eq!(e.meta.size, 30_000_000);
    let mut r = e.content.unwrap().open().unwrap();
    let mut head = vec![0u8; 256 * 1024];
    r.read_exact(&mut head).unwrap();
    // The fetch is held back by the reader (a few MiB ahead at most).
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(13_000_000)
        .unwrap();
    let mut rest = Vec::new();
    let err = r.read_to_end(&mut rest).unwrap_err();
    assert_eq!(
        head.len() + rest.len(),
        13_000_000,
        "every byte read is handed on"
    );
    assert!(
        err.to_string()
            .contains("changed while read: listed 30000000 bytes, read 13000000"),
        "{err}"
    );
    let problems = problems.snapshot();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, f);
}

/// Between listing and reading, one file becomes a directory and one a symlink to a larger
/// file: both are named; the first is not read at all.
#[test]
fn a_file_that_changes_type_after_the_listing_is_a_problem() {
    let Some(sshd) = Sshd::start() else { return };
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("to-dir"), "0123456789").unwrap();
    fs::write(root.join("to-link"), "0123456789").unwrap();
    fs::write(tmp.path().join("larger"), "0123456789abcdef").unwrap();
    let problems = Problems::new();
    let ctx = WalkContext::new(Arc::new(Everything), problems.clone());
    let src = sftp_source(&rt, &sshd, std::slice::from_ref(&root), Excludes::none());
    let mut entries: Vec<Entry> = src.entries(ctx).collect();
    fs::remove_file(root.join("to-dir")).unwrap();
    fs::create_dir(root.join("to-dir")).unwrap();
    fs::remove_file(root.join("to-link")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("larger"), root.join("to-link")).unwrap();

    let to_link = entries.pop().unwrap();
    let to_dir = entries.pop().unwrap();
    assert!(read_all(to_dir).is_err());
    // Never more than the listed size.
    assert_eq!(read_all(to_link).unwrap(), b"0123456789");
    let problems = problems.snapshot();
    let paths: Vec<&Path> = problems.iter().map(|p| p.path.as_path()).collect();
    assert!(
        paths.contains(&root.join("to-dir").as_path()),
        "{problems:?}"
    );
    assert!(
        paths.contains(&root.join("to-link").as_path()),
        "{problems:?}"
    );
}

/// A file swapped for a FIFO after the listing blocks the sftp-server in open(): after the
/// io_timeout that file is a problem, the rest is read over a fresh channel, and the blocked
/// server process is gone. Both ways of starting SFTP: the subsystem and `sftp_command`.
#[test]
fn a_fifo_swapped_in_costs_one_io_timeout_and_leaves_no_server_behind() {
    let Some(sshd) = Sshd::start() else { return };
    for command in [None, Some("/usr/lib/openssh/sftp-server")] {
        let rt = runtime();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        fs::create_dir_all(root.join("d")).unwrap();
        for n in ["a", "b-fifo", "c", "d/x"] {
            fs::write(root.join(n), format!("content of {n}")).unwrap();
        }
        let mut t = target(&sshd);
        t.sftp_command = command.map(str::to_owned);
        let problems = Problems::new();
        let ctx = WalkContext::new(Arc::new(Everything), problems.clone());
        let io_timeout = Duration::from_secs(2);
        let src = source_over(
            &rt,
            &t,
            io_timeout,
            std::slice::from_ref(&root),
            Excludes::none(),
        );
        let entries: Vec<Entry> = src.entries(ctx).collect();
        assert_eq!(entries.len(), 6);
        fs::remove_file(root.join("b-fifo")).unwrap();
        mkfifo(&root.join("b-fifo"));

        let started = Instant::now();
        let mut read = Vec::new();
        for e in entries {
            if e.kind == EntryKind::File {
                let p = e.path.clone();
                read.push((p, read_all(e)));
            }
        }
        let took = started.elapsed();
        assert!(took < 3 * io_timeout + Duration::from_secs(10), "{took:?}");
        for (p, r) in &read {
            let name = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if name == "b-fifo" {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            } else {
                assert_eq!(
                    r.as_ref().unwrap(),
                    format!("content of {name}").as_bytes(),
                    "{command:?}"
                );
            }
        }
        let problems = problems.snapshot();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, root.join("b-fifo"));
        assert!(
            problems[0].message.contains("did not answer"),
            "{problems:?}"
        );
        // The fresh channel's server runs until the source goes; the blocked one is gone.
        let t0 = Instant::now();
        while sshd.processes_named("sftp-server").len() != 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{command:?}: {:?}",
                sshd.processes_named("sftp-server")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(src);
        let t0 = Instant::now();
        while !sshd.processes_named("sftp-server").is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "an sftp-server stayed behind ({command:?}): {:?}",
                sshd.processes_named("sftp-server")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
