//! One contract for core's repository port, run against the real adapter
//! (`burrow_repo::LocalRepositories` on a temporary directory) and the fake the in-process
//! run tests use (`burrow_testkit::memrepo::MemRepos`): what a run relies on holds for both.

#![allow(clippy::too_many_lines)]

use std::fs;
use std::path::{Path, PathBuf};

use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::repository::{
    BackupOutcome, BackupRequest, NodeKind, PendingSnapshot, Repositories, Repository,
    RestoreRequest, TAG_ANOMALY, TAG_PARTIAL,
};
use burrow_core::retention::Policy;
use burrow_core::{ErrorClass, Problems};
use burrow_repo::{LocalRepositories, Password};
use burrow_testkit::memrepo::MemRepos;

struct Place {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    pw: PathBuf,
    src: PathBuf,
}

fn place() -> Place {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    fs::write(src.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    fs::write(tmp.path().join("pw"), "secret\n").unwrap();
    Place {
        repo: tmp.path().join("repo"),
        pw: tmp.path().join("pw"),
        src,
        _tmp: tmp,
    }
}

/// Archives `p.src` for `job` and commits it with `tags`.
fn backup<R: Repository>(repo: &R, p: &Place, job: &str, tags: &[&str]) -> BackupOutcome {
    let source = LocalSource::new(std::slice::from_ref(&p.src), Excludes::none());
    let pending = repo
        .archive(BackupRequest {
            job,
            host: "vps",
            paths: vec![p.src.clone()],
            source: &source,
            extra: Vec::new(),
            problems: Problems::new(),
            partial: false,
            bytes_read: Default::default(),
            cancel: Default::default(),
        })
        .unwrap();
    assert!(!pending.partial());
    assert_eq!(pending.counts().files, 2);
    repo.commit(pending, tags).unwrap()
}

fn contract<R: Repositories>(repos: R, init: impl Fn(&Path)) {
    let p = place();
    // a repository that is not there, and a wrong password: permanent, named
    let e = repos.open(&p.repo, &p.pw).err().unwrap();
    assert!(e.message.contains("no repository at"), "{e}");
    assert_eq!(e.class, ErrorClass::Permanent);
    init(&p.repo);
    fs::write(&p.pw, "wrong\n").unwrap();
    let e = repos.open(&p.repo, &p.pw).err().unwrap();
    assert!(e.message.contains("wrong password"), "{e}");
    fs::write(&p.pw, "secret\n").unwrap();
    let repo = repos.open(&p.repo, &p.pw).unwrap();

    // a backup, then one that finds nothing new
    let first = backup(&repo, &p, "web", &[]);
    assert_eq!((first.files_new, first.files_unmodified), (2, 0));
    assert_eq!(first.parent_id, None);
    let second = backup(&repo, &p, "web", &[TAG_PARTIAL]);
    assert_eq!((second.files_new, second.files_unmodified), (0, 2));
    assert_eq!(
        second.parent_id.as_deref(),
        Some(first.snapshot_id.as_str())
    );
    assert!(second.partial);
    let listing = repo.snapshot_listing(Some("web")).unwrap();
    let ids: Vec<&str> = listing.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [first.snapshot_id.as_str(), second.snapshot_id.as_str()]
    );
    assert!(listing.snapshots[1].partial && !listing.snapshots[0].partial);
    assert!(listing.snapshots[0].tags.contains(&"job=web".to_owned()));
    assert!(
        repo.snapshot_listing(Some("other"))
            .unwrap()
            .snapshots
            .is_empty()
    );

    // a snapshot's entries: the directories above its path, then its tree in name order
    let all = repo.entries("web", &first.snapshot_id, None, true).unwrap();
    assert_eq!(all.snapshot.id, first.snapshot_id);
    let shown: Vec<(String, NodeKind, u64)> = (all.entries.iter())
        .map(|e| (e.path.clone(), e.kind, e.size))
        .collect();
    let at = |rel: &str| p.src.join(rel).display().to_string();
    let mut above: Vec<(String, NodeKind, u64)> = (p.src.ancestors().skip(1))
        .filter(|a| *a != Path::new("/"))
        .map(|a| (a.display().to_string(), NodeKind::Dir, 0))
        .collect();
    above.reverse();
    let tree = [
        (at(""), NodeKind::Dir, 0),
        (at("a.txt"), NodeKind::File, 6),
        (at("sub"), NodeKind::Dir, 0),
        (at("sub/b.bin"), NodeKind::File, 100_000),
    ];
    let tree: Vec<_> = tree
        .into_iter()
        .map(|(p, k, n)| (p.trim_end_matches('/').to_owned(), k, n))
        .collect();
    assert_eq!(shown, [above, tree.clone()].concat());
    let one = repo.entries("web", "latest", Some(&p.src), false).unwrap();
    let one: Vec<&str> = one.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        one,
        [&tree[0].0, &tree[1].0, &tree[2].0],
        "the path, then one level"
    );
    let again = repo.entries("web", "latest", Some(&p.src), true).unwrap();
    assert_eq!(again.snapshot.id, second.snapshot_id);
    assert_eq!(
        again.entries[1].content,
        all.entries[all.entries.len() - 3].content,
        "same content, same ids"
    );
    let e = repo
        .entries("web", "latest", Some(&p.src.join("nope")), false)
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e}");

    // restore and dump read back what was stored
    let target = p.repo.with_file_name("restored");
    let out = repo
        .restore(RestoreRequest::new("web", "latest", &target).at(&p.src))
        .unwrap();
    assert!(out.complete(), "{out:?}");
    assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(out.bytes, 100_006);
    let req = RestoreRequest::new("web", "latest", &target).at(&p.src);
    let verified = repo.verify(req).unwrap();
    assert_eq!(
        (verified.files, verified.bytes),
        (2, 100_006),
        "{verified:?}"
    );
    assert!(verified.differ.is_empty(), "{verified:?}");
    fs::write(target.join("a.txt"), "alphA\n").unwrap();
    let verified = repo.verify(req).unwrap();
    let differ: Vec<&str> = verified.differ.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(differ, [tree[1].0.as_str()], "same size, other content");
    let mut dumped = Vec::new();
    let n = repo
        .dump("web", "latest", &p.src.join("sub/b.bin"), &mut dumped)
        .unwrap();
    assert_eq!((n, dumped), (100_000, vec![7u8; 100_000]));

    // restic's locks: shared beside shared, nothing beside exclusive
    {
        let shared = repo.lock(false).unwrap();
        let _also = repo.lock(false).unwrap();
        assert!(repo.lock(true).is_err(), "exclusive beside a shared lock");
        drop(shared);
    }
    {
        let _x = repo.lock(true).unwrap();
        let e = repo.lock(false).err().unwrap();
        assert_eq!(e.class, ErrorClass::Temporary, "{e}");
    }

    // retention: the policy, except the newest complete snapshot, which is never removed
    let third = backup(&repo, &p, "web", &[TAG_ANOMALY]);
    let keep = Policy {
        last: Some(1),
        ..Policy::default()
    };
    let plan = repo.forget_plan("web", &keep).unwrap();
    assert_eq!(
        repo.snapshot_listing(Some("web")).unwrap().snapshots.len(),
        3
    );
    let kept: Vec<&str> = plan.keep.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        kept,
        [third.snapshot_id.as_str(), first.snapshot_id.as_str()]
    );
    assert_eq!(repo.forget("web", &keep).unwrap(), plan);
    let left = repo.snapshot_listing(None).unwrap().snapshots;
    assert_eq!(left.len(), 2);
    repo.prune().unwrap();
    assert!(repo.check_report(None).unwrap().is_clean());
    assert!(repo.remove_tmp_debris().unwrap().is_empty());
}

#[test]
fn the_local_repository_keeps_the_contract() {
    contract(LocalRepositories, |path| {
        burrow_repo::init(path, &Password::new("secret")).unwrap();
    });
}

#[test]
fn the_in_memory_repository_keeps_the_contract() {
    let repos = MemRepos::default();
    contract(repos.clone(), |path| {
        repos.create(path, "secret");
    });
}
