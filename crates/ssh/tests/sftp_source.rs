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
use burrow_core::source::{Entry, EntryKind, NoParent, ParentIndex, Source, Time, WalkContext};
use burrow_ssh::{PrefetchLimits, Session, SftpSource};
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
    let sftp = rt.block_on(async {
        let s = Session::connect(&target(sshd)).await.unwrap();
        s.sftp().await.unwrap()
    });
    SftpSource::new(sftp, rt.handle().clone(), roots, excludes)
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

    let bad = root.join(OsStr::from_bytes(b"bad\xff"));
    let local: Vec<Entry> = local.into_iter().filter(|e| e.path != bad).collect();
    let lp: Vec<&Path> = local.iter().map(|e| e.path.as_path()).collect();
    let rp: Vec<&Path> = remote.iter().map(|e| e.path.as_path()).collect();
    assert_eq!(rp, lp);
    assert!(rp.contains(&root.join("empty").as_path()));
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
    let problems = problems.snapshot();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].path.file_name().unwrap().as_bytes(),
        "bad\u{FFFD}".as_bytes()
    );
    assert!(
        problems[0].message.contains("not valid UTF-8"),
        "{problems:?}"
    );
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
    assert_eq!(read_all(shrinks).unwrap(), b"0123");
    assert_eq!(read_all(grows).unwrap(), b"0123456789");
    let err = read_all(gone).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    let problems = problems.snapshot();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, root.join("gone"));
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
    let sftp = rt.block_on(async {
        let s = Session::connect(&t).await.unwrap();
        s.sftp().await.unwrap()
    });
    let src = SftpSource::new(
        sftp,
        rt.handle().clone(),
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
