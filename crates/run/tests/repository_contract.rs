//! One contract for core's repository port, run against the real adapter
//! (`burrow_repo::LocalRepositories` on a temporary directory) and the fake the in-process
//! run tests use (`burrow_testkit::memrepo::MemRepos`): what a run relies on holds for both.

use std::fs;
use std::path::{Path, PathBuf};

use burrow_core::exclude::Excludes;
use burrow_core::local::LocalSource;
use burrow_core::repository::{
    BackupOutcome, BackupRequest, PendingSnapshot, Repositories, Repository, TAG_ANOMALY,
    TAG_PARTIAL,
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
