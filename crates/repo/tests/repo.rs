//! The repository against real files: backup, parent reuse, restore, partial snapshots,
//! retention, and stock restic reading what burrow wrote.

// A test reads as one scenario from top to bottom: longer than library functions may be.
#![allow(clippy::too_many_lines)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use burrow_core::Problems;
use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::repository::{BackupOutcome, BackupRequest, RestoreRequest};
use burrow_core::retention::Policy;
use burrow_core::source::{Content, Entry, EntryKind, Meta, Time};
use burrow_repo::{Password, Repo, RepoError, init};

fn tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("a.txt"), "alpha\n").unwrap();
    fs::write(root.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
    fs::write(root.join("sub/deeper/c"), "c").unwrap();
    fs::set_permissions(root.join("sub/deeper/c"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("outside")).unwrap();
}

fn backup(repo: &Repo, job: &str, root: &Path) -> (BackupOutcome, Problems) {
    let problems = Problems::new();
    let src = LocalSource::new(&[root.to_owned()], Excludes::none());
    let out = repo
        .backup(BackupRequest {
            job,
            host: "testhost",
            paths: vec![root.to_owned()],
            source: &src,
            extra: Vec::new(),
            problems: problems.clone(),
            partial: false,
            bytes_read: Default::default(),
            cancel: Default::default(),
        })
        .unwrap();
    (out, problems)
}

/// Compares two trees: names, kinds, contents, modes, mtimes (seconds), link targets.
fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut v: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                v.push(p.strip_prefix(root).unwrap().to_owned());
            }
        }
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "different entries");
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?}");
        assert_eq!(ma.mode(), mb.mode(), "mode of {rel:?}");
        if ma.is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
        } else {
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {rel:?}");
        }
        if ma.is_file() {
            assert_eq!(
                fs::read(&pa).unwrap(),
                fs::read(&pb).unwrap(),
                "content of {rel:?}"
            );
        }
    }
}

#[test]
fn backup_parent_reuse_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    let pw = Password::new("correct horse");
    let repo = init(&tmp.path().join("repo"), &pw).unwrap();
    assert!(matches!(
        init(&tmp.path().join("repo"), &pw),
        Err(RepoError::AlreadyExists { .. })
    ));

    let (first, problems) = backup(&repo, "files", &src);
    assert!(problems.is_empty(), "{:?}", problems.snapshot());
    assert_eq!(first.files_new, 5, "{first:?}");
    assert_eq!(first.bytes_read, 6 + 300_000 + 1);
    assert!(!first.partial);

    let (second, _) = backup(&repo, "files", &src);
    assert_eq!(
        second.bytes_read, 0,
        "unchanged files must not be read: {second:?}"
    );
    assert_eq!(second.files_unmodified, 5);
    assert_eq!(
        second.parent_id.as_deref(),
        Some(first.snapshot_id.as_str())
    );

    fs::write(src.join("a.txt"), "alpha changed\n").unwrap();
    let (third, _) = backup(&repo, "files", &src);
    assert_eq!(third.files_changed, 1);
    assert_eq!(third.bytes_read, 14);

    let snaps = repo.snapshots(Some("files")).unwrap();
    assert_eq!(snaps.len(), 3);
    assert_eq!(snaps[2].id, third.snapshot_id);
    assert_eq!(snaps[0].host, "testhost");
    assert!(snaps[0].tags.contains(&"job=files".to_owned()));
    assert!(repo.snapshots(Some("other")).unwrap().is_empty());

    let out = tmp.path().join("restored");
    let r = repo
        .restore(RestoreRequest::new("files", "latest", &out))
        .unwrap();
    assert!(r.refused.is_empty());
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));

    // by id prefix, and only a sub path
    let out2 = tmp.path().join("restored2");
    let sub = src.join("sub");
    repo.restore(RestoreRequest::new("files", &first.snapshot_id[..8], &out2).at(&sub))
        .unwrap();
    assert_eq!(fs::read(out2.join("b.bin")).unwrap().len(), 300_000);

    repo.check(Some("all")).unwrap();
}

#[test]
fn wrong_password_is_clear_and_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("repo");
    init(&path, &Password::new("right")).unwrap();
    let before: Vec<_> = fs::read_dir(path.join("keys")).unwrap().collect();
    let err = Repo::open(&path, &Password::new("wrong")).err().unwrap();
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err}");
    assert!(err.to_string().contains("password_file"));
    let after: Vec<_> = fs::read_dir(path.join("keys")).unwrap().collect();
    assert_eq!(before.len(), after.len());
    let err = Repo::open(&tmp.path().join("none"), &Password::new("x"))
        .err()
        .unwrap();
    assert!(matches!(err, RepoError::NotInitialised { .. }), "{err}");
}

struct Bytes(Vec<u8>);
impl Content for Bytes {
    fn open(self: Box<Self>) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(self.0)))
    }
}
struct Broken;
impl Content for Broken {
    fn open(self: Box<Self>) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        Err(std::io::Error::other("device went away"))
    }
}

fn file_entry(path: &str, content: Box<dyn Content>, size: u64) -> Entry {
    Entry {
        path: PathBuf::from(path),
        kind: EntryKind::File,
        meta: Meta {
            mode: 0o644,
            size,
            mtime: Some(Time::from_secs(1_700_000_000)),
            ..Meta::default()
        },
        content: Some(content),
    }
}

fn dir_entry(path: &str) -> Entry {
    Entry {
        path: PathBuf::from(path),
        kind: EntryKind::Dir,
        meta: Meta {
            mode: 0o755,
            ..Meta::default()
        },
        content: None,
    }
}

#[test]
fn unreadable_file_makes_a_partial_snapshot_and_forget_keeps_the_newest_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    let repo = init(&tmp.path().join("repo"), &Password::new("pw")).unwrap();
    let (good, _) = backup(&repo, "j", &src);

    // a run whose extra entries (as dumps are) include one that cannot be read
    let problems = Problems::new();
    let source = LocalSource::new(std::slice::from_ref(&src), Excludes::none());
    let out = repo
        .backup(BackupRequest {
            job: "j",
            host: "testhost",
            paths: vec![src.clone(), PathBuf::from("/burrow-dumps")],
            source: &source,
            extra: vec![
                dir_entry("/burrow-dumps"),
                file_entry("/burrow-dumps/bad", Box::new(Broken), 10),
                file_entry(
                    "/burrow-dumps/good",
                    Box::new(Bytes(b"0123456789".to_vec())),
                    10,
                ),
            ],
            problems: problems.clone(),
            partial: false,
            bytes_read: Default::default(),
            cancel: Default::default(),
        })
        .unwrap();
    assert!(out.partial);
    let p = problems.snapshot();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, PathBuf::from("/burrow-dumps/bad"));
    let snaps = repo.snapshots(Some("j")).unwrap();
    assert_eq!(snaps.len(), 2, "the untagged copy must be gone: {snaps:?}");
    assert!(snaps[1].partial && snaps[1].id == out.snapshot_id);
    let mut buf = Vec::new();
    repo.dump("j", "latest", Path::new("/burrow-dumps/good"), &mut buf)
        .unwrap();
    assert_eq!(buf, b"0123456789");

    // keep_last 1 would keep only the partial one; the newest complete one must survive
    let last1 = Policy {
        last: Some(1),
        ..Policy::default()
    };
    let plan = repo.forget("j", &last1).unwrap();
    assert!(plan.remove.is_empty(), "{plan:?}");
    assert_eq!(plan.keep.len(), 2, "{plan:?}");
    assert_eq!(plan.keep[0].id, out.snapshot_id);
    assert_eq!(plan.keep[0].reasons, ["last snapshot"]);
    assert_eq!(plan.keep[1].id, good.snapshot_id);
    assert_eq!(plan.keep[1].reasons, [burrow_core::retention::PROTECTED]);
    let ids: Vec<String> = repo
        .snapshots(Some("j"))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [good.snapshot_id.clone(), out.snapshot_id.clone()]);

    // a newer complete snapshot makes the old ones forgettable; the plan is the same before
    // (dry run) and after it is applied
    let (newest, _) = backup(&repo, "j", &src);
    let planned = repo.forget_plan("j", &last1).unwrap();
    assert_eq!(
        repo.snapshots(Some("j")).unwrap().len(),
        3,
        "a plan changes nothing"
    );
    let applied = repo.forget("j", &last1).unwrap();
    assert_eq!(planned, applied);
    assert_eq!(applied.remove.len(), 2);
    assert_eq!(
        applied.keep[0].reasons,
        ["last snapshot", burrow_core::retention::PROTECTED]
    );
    let ids: Vec<String> = repo
        .snapshots(Some("j"))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [newest.snapshot_id]);
    assert!(matches!(
        repo.forget("j", &Policy::default()),
        Err(RepoError::Policy(_))
    ));
    repo.prune().unwrap();
    repo.check(Some("all")).unwrap();
}

fn restic(repo: &Path, pwfile: &Path, args: &[&str]) -> Option<std::process::Output> {
    if Command::new("restic").arg("version").output().is_err() {
        burrow_testkit::missing("restic", "apt-get install restic");
        return None;
    }
    Some(
        Command::new("restic")
            .arg("-r")
            .arg(repo)
            .arg("--password-file")
            .arg(pwfile)
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap(),
    )
}

#[test]
fn stock_restic_reads_what_burrow_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    let pwfile = tmp.path().join("pw");
    fs::write(&pwfile, "s3cret\n").unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = init(&repo_path, &Password::from_file(&pwfile).unwrap()).unwrap();
    backup(&repo, "files", &src);
    let dump = vec![b'x'; 123_457];
    let source = LocalSource::new(std::slice::from_ref(&src), Excludes::none());
    repo.backup(BackupRequest {
        job: "files",
        host: "testhost",
        paths: vec![src.clone(), PathBuf::from("/burrow-dumps")],
        source: &source,
        extra: vec![
            dir_entry("/burrow-dumps"),
            file_entry(
                "/burrow-dumps/db.dump",
                Box::new(Bytes(dump.clone())),
                dump.len() as u64,
            ),
        ],
        problems: Problems::new(),
        partial: false,
        bytes_read: Default::default(),
        cancel: Default::default(),
    })
    .unwrap();

    let Some(out) = restic(&repo_path, &pwfile, &["check", "--read-data"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restic(
        &repo_path,
        &pwfile,
        &["snapshots", "--tag", "job=files", "--json"],
    )
    .unwrap();
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2);

    let target = tmp.path().join("by-restic");
    let out = restic(
        &repo_path,
        &pwfile,
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--verify",
        ],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "restic restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    assert_eq!(fs::read(target.join("burrow-dumps/db.dump")).unwrap(), dump);
}

use burrow_testkit::noise;

/// Files of 1–10 MiB (and one just above the minimum chunk size), the sizes at which the
/// content-defined chunker decides everything.
fn large_files(root: &Path) {
    fs::create_dir_all(root.join("d")).unwrap();
    for (i, mib) in [1usize, 2, 5, 10].into_iter().enumerate() {
        fs::write(root.join(format!("d/f{i}")), noise(mib << 20, i as u64 + 1)).unwrap();
    }
    fs::write(root.join("just-above-min"), noise((512 << 10) + 1, 77)).unwrap();
    fs::write(root.join("small"), "small\n").unwrap();
}

/// `restic backup --json`'s summary line.
fn restic_summary(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "restic backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .expect("a summary line")
}

fn restic_check(repo: &Path, pwfile: &Path) {
    let out = restic(repo, pwfile, &["check", "--read-data"]).unwrap();
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restics_chunks_are_burrows() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    large_files(&src);
    let pwfile = tmp.path().join("pw");
    fs::write(&pwfile, "pw\n").unwrap();
    let src_arg = src.to_str().unwrap();
    if restic(tmp.path(), &pwfile, &["version"]).is_none() {
        return;
    }

    // burrow first: restic then finds every data blob already there.
    let a = tmp.path().join("a");
    let repo = init(&a, &Password::from_file(&pwfile).unwrap()).unwrap();
    let (out, _) = backup(&repo, "j", &src);
    assert!(out.data_blobs >= 10, "{out:?}");
    let s = restic_summary(&restic(&a, &pwfile, &["backup", "--json", src_arg]).unwrap());
    assert_eq!(s["data_blobs"], 0, "restic stored data burrow had: {s}");
    restic_check(&a, &pwfile);

    // restic first (its own key and config): burrow stores no data blob either.
    let b = tmp.path().join("b");
    let out = restic(&b, &pwfile, &["init"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = restic_summary(&restic(&b, &pwfile, &["backup", "--json", src_arg]).unwrap());
    assert!(s["data_blobs"].as_u64().unwrap() >= 10, "{s}");
    let repo = Repo::open(&b, &Password::from_file(&pwfile).unwrap()).unwrap();
    let (out, _) = backup(&repo, "j", &src);
    assert_eq!(out.data_blobs, 0, "burrow stored data restic had: {out:?}");
    assert!(out.bytes_read > 18 << 20, "it did read the files: {out:?}");
    restic_check(&b, &pwfile);
    // rustic_core's own check agrees.
    repo.check(Some("all")).unwrap();
}

#[test]
fn new_keys_cost_what_restics_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("repo");
    init(&path, &Password::new("pw")).unwrap();
    let keys: Vec<_> = fs::read_dir(path.join("keys")).unwrap().collect();
    assert_eq!(keys.len(), 1, "one key file, the one burrow made");
    let key: serde_json::Value =
        serde_json::from_slice(&fs::read(keys[0].as_ref().unwrap().path()).unwrap()).unwrap();
    assert_eq!(
        (key["N"].as_u64(), key["r"].as_u64()),
        (Some(1 << 15), Some(8)),
        "{key}"
    );
    assert!(key["p"].as_u64().unwrap() >= 1);
    assert!(Repo::open(&path, &Password::new("pw")).is_ok());
    assert!(matches!(
        Repo::open(&path, &Password::new("other")),
        Err(RepoError::WrongPassword { .. })
    ));
}

fn request<'a>(src: &Path, source: &'a LocalSource) -> BackupRequest<'a> {
    BackupRequest {
        job: "j",
        host: "testhost",
        paths: vec![src.to_owned()],
        source,
        extra: Vec::new(),
        problems: Problems::new(),
        partial: false,
        bytes_read: Default::default(),
        cancel: Default::default(),
    }
}

/// Every file below `dir` (none when it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The backup's lock settles while it reads: an exclusive lock that another process wrote
/// just after ours makes the backup fail at its first write, naming that process, and
/// leaves no pack, index or snapshot behind. Without one the same backup is saved.
#[test]
fn a_backup_writes_nothing_when_its_lock_loses_the_race() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, path) = (tmp.path().join("src"), tmp.path().join("repo"));
    tree(&src);
    let repo = init(&path, &Password::new("pw")).unwrap();
    let files = |dir: &str| {
        walk_files(&path.join(dir))
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains("-tmp-"))
            .count()
    };
    let before = (files("data"), files("index"), files("snapshots"));
    let source = LocalSource::new(std::slice::from_ref(&src), Excludes::none());
    let locks = repo.locks().unwrap();
    // The other lock must land inside the 200 ms before the second look; a machine that
    // stalls this thread for longer tries again.
    let err = (0..5)
        .find_map(|_| {
            let t0 = std::time::Instant::now();
            let guard = repo.lock_for_backup().unwrap();
            let theirs = locks
                .write(&burrow_repo::LockInfo {
                    hostname: "otherhost".into(),
                    pid: 77,
                    ..burrow_repo::LockInfo::this_process(true)
                })
                .unwrap();
            if t0.elapsed() > std::time::Duration::from_millis(150) {
                drop(guard);
                locks.remove(&theirs).unwrap();
                return None;
            }
            let out = repo.backup(request(&src, &source));
            drop(guard);
            locks.remove(&theirs).unwrap();
            Some(out.expect_err("a backup was saved beside an exclusive lock"))
        })
        .expect("the lock was never written within 150 ms");
    let e = err.to_string();
    assert!(e.contains("locked by") && e.contains("otherhost"), "{e}");
    assert_eq!(
        (files("data"), files("index"), files("snapshots")),
        before,
        "nothing may be written when the lock was lost"
    );

    let guard = repo.lock_for_backup().unwrap();
    let out = repo.backup(request(&src, &source)).unwrap();
    drop(guard);
    assert!(out.files_new > 0);
    assert_eq!(files("snapshots"), before.2 + 1);
}

/// `restore --verify` reads back what was restored, cut into the repository's chunks: a
/// restore of files of many chunks verifies, and one byte changed in the middle of one of
/// them, or a link pointed elsewhere, is named.
#[test]
fn verify_finds_a_changed_byte_in_a_file_of_many_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    large_files(&src);
    std::os::unix::fs::symlink("small", src.join("link")).unwrap();
    let repo = init(&tmp.path().join("repo"), &Password::new("pw")).unwrap();
    backup(&repo, "big", &src);
    let out = tmp.path().join("restored");
    let req = RestoreRequest::new("big", "latest", &out).at(&src);
    assert!(repo.restore(req).unwrap().complete());
    let verified = repo.verify(req).unwrap();
    assert!(verified.differ.is_empty(), "{:?}", verified.differ);
    assert_eq!(verified.files, 6);
    assert_eq!(verified.bytes, (18 << 20) + (512 << 10) + 1 + 6);

    let f3 = out.join("d/f3");
    let mut bytes = fs::read(&f3).unwrap();
    bytes[6 << 20] ^= 1;
    fs::write(&f3, bytes).unwrap();
    fs::remove_file(out.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", out.join("link")).unwrap();
    let verified = repo.verify(req).unwrap();
    let differ: Vec<(String, String)> = (verified.differ.iter())
        .map(|d| (d.path.clone(), d.reason.clone()))
        .collect();
    assert_eq!(differ.len(), 2, "{differ:?}");
    assert!(
        differ[0].0.ends_with("/d/f3") && differ[0].1.contains("differs"),
        "{differ:?}"
    );
    assert!(
        !differ[0].1.contains("chunk 1 "),
        "not the first chunk: {differ:?}"
    );
    assert!(
        differ[1].0.ends_with("/link") && differ[1].1.contains("elsewhere"),
        "{differ:?}"
    );
}
