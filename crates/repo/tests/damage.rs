//! Damage in the repository is named and survived: an unreadable snapshot file, a truncated
//! or corrupted pack, and the `-tmp-` files of interrupted writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use burrow_core::Problems;
use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::repository::{BackupOutcome, BackupRequest, RestoreRequest};
use burrow_repo::{Password, Repo, RepoError, init};

fn backup(repo: &Repo, root: &Path) -> BackupOutcome {
    let src = LocalSource::new(&[root.to_owned()], Excludes::none());
    repo.backup(BackupRequest {
        job: "j",
        host: "testhost",
        paths: vec![root.to_owned()],
        source: &src,
        extra: Vec::new(),
        problems: Problems::new(),
        partial: false,
        bytes_read: Default::default(),
        cancel: Default::default(),
    })
    .unwrap()
}

/// Bytes that do not compress: a file's data then fills its own pack.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn source(root: &Path) {
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("small"), "small\n").unwrap();
    fs::write(root.join("d/big"), noise(2_000_000, 7)).unwrap();
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The largest pack: the one with `d/big`'s data.
fn largest_pack(repo: &Path) -> PathBuf {
    files_under(&repo.join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
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
fn a_garbage_snapshot_file_is_named_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let repo_path = tmp.path().join("repo");
    let repo = init(&repo_path, &Password::new("pw")).unwrap();
    let first = backup(&repo, &src);
    let second = backup(&repo, &src);

    let bad = "f".repeat(64);
    fs::write(repo_path.join("snapshots").join(&bad), noise(300, 3)).unwrap();

    let listing = repo.snapshot_listing(Some("j")).unwrap();
    let ids: Vec<&str> = listing.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [first.snapshot_id.as_str(), second.snapshot_id.as_str()]
    );
    assert_eq!(listing.damaged.len(), 1, "{listing:?}");
    assert_eq!(listing.damaged[0].id, bad);
    assert_eq!(listing.damaged[0].file, format!("snapshots/{bad}"));
    assert!(listing.damaged[0].damaged);
    assert_eq!(repo.snapshots(None).unwrap().len(), 2);

    // a run still finds its parent, a restore still works
    let third = backup(&repo, &src);
    assert_eq!(
        third.parent_id.as_deref(),
        Some(second.snapshot_id.as_str())
    );
    assert_eq!(third.files_unmodified, 2, "{third:?}");
    let out = tmp.path().join("restored");
    repo.restore(RestoreRequest::new("j", "latest", &out))
        .unwrap();
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("d/big")).unwrap(),
        noise(2_000_000, 7)
    );
    let err = repo
        .restore(RestoreRequest::new("j", &bad[..10], &tmp.path().join("r2")))
        .unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");

    // prune refuses, naming the file; the check names it
    let err = repo.prune().unwrap_err();
    assert!(matches!(err, RepoError::DamagedSnapshots(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("snapshots/{bad}")), "{msg}");
    assert!(msg.contains("nothing was pruned"), "{msg}");
    let report = repo.check_report(None).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.damaged_snapshots.len(), 1);
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(repo.check(None).is_err());

    // once it is removed, everything is clean again
    fs::remove_file(repo_path.join("snapshots").join(&bad)).unwrap();
    repo.prune().unwrap();
    repo.check(Some("all")).unwrap();
}

#[test]
fn a_truncated_pack_is_found_taken_out_of_the_index_and_stored_again() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let pwfile = tmp.path().join("pw");
    fs::write(&pwfile, "pw\n").unwrap();
    let repo_path = tmp.path().join("repo");
    let repo = init(&repo_path, &Password::new("pw")).unwrap();
    let first = backup(&repo, &src);

    let pack = largest_pack(&repo_path);
    let pack_id = pack.file_name().unwrap().to_str().unwrap().to_owned();
    let len = fs::metadata(&pack).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let report = repo.check_report(Some("all")).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.damaged_packs.len(), 1, "{report:?}");
    assert_eq!(report.damaged_packs[0].id, pack_id);
    assert!(report.damaged_packs[0].present);
    assert!(
        report.errors.iter().any(|e| e.contains(&pack_id)),
        "the errors name the pack: {report:?}"
    );

    let repair = repo.drop_damaged_packs(&report.damaged_packs).unwrap();
    assert_eq!(repair.dropped, std::slice::from_ref(&pack_id));
    assert_eq!(repair.deleted, std::slice::from_ref(&pack_id));
    assert!(!pack.exists());

    // the next run stores the lost data again instead of reusing it
    let again = backup(&repo, &src);
    assert_eq!(again.parent_id.as_deref(), Some(first.snapshot_id.as_str()));
    assert!(
        again.bytes_added > 1_000_000,
        "d/big is stored again: {again:?}"
    );
    repo.check(Some("all")).unwrap();

    // the first snapshot shares those blobs: it is whole again
    let out = tmp.path().join("restored");
    repo.restore(RestoreRequest::new("j", &first.snapshot_id, &out))
        .unwrap();
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("d/big")).unwrap(),
        noise(2_000_000, 7)
    );

    let Some(out) = restic(&repo_path, &pwfile, &["check", "--read-data"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_corrupted_blob_is_found_and_its_pack_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let repo_path = tmp.path().join("repo");
    let repo = init(&repo_path, &Password::new("pw")).unwrap();
    backup(&repo, &src);
    // same size, one byte flipped: only reading the data finds it
    let pack = largest_pack(&repo_path);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[1000] ^= 0x55;
    fs::write(&pack, bytes).unwrap();

    assert!(repo.check_report(None).unwrap().is_clean());
    let report = repo.check_report(Some("all")).unwrap();
    assert_eq!(report.damaged_packs.len(), 1, "{report:?}");
    repo.drop_damaged_packs(&report.damaged_packs).unwrap();
    let again = backup(&repo, &src);
    assert!(again.bytes_added > 1_000_000, "{again:?}");
    repo.check(Some("all")).unwrap();
}

#[test]
fn old_tmp_files_are_removed_fresh_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let repo_path = tmp.path().join("repo");
    let repo = init(&repo_path, &Password::new("pw")).unwrap();
    backup(&repo, &src);
    let hex = "ab".repeat(32);
    let old = [
        repo_path.join(format!("data/ab/{hex}-tmp-")),
        repo_path.join(format!("snapshots/{hex}-tmp-")),
        repo_path.join(format!("index/{hex}-tmp-8812")),
    ];
    let fresh = repo_path.join(format!("index/{}-tmp-", "cd".repeat(32)));
    let unrelated = repo_path.join("data/ab/notes-tmp-");
    fs::create_dir_all(repo_path.join("data/ab")).unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for p in old.iter().chain([&fresh, &unrelated]) {
        fs::write(p, "partial write").unwrap();
    }
    for p in old.iter().chain([&unrelated]) {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let mut removed = repo.remove_tmp_debris().unwrap();
    removed.sort();
    let mut want = old.to_vec();
    want.sort();
    assert_eq!(removed, want);
    assert!(old.iter().all(|p| !p.exists()));
    assert!(fresh.exists(), "a write may still be going on");
    assert!(unrelated.exists(), "not a name rustic or restic writes");
    repo.check(None).unwrap();
}
