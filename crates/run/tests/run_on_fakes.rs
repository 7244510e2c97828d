//! Whole runs in-process, on the fakes of every port: scripted commands on the server, its
//! files from a temporary directory, an in-memory repository. They assert what the real
//! adapters' tests (tests/ssh_e2e.rs, tests/cli.rs) assert through the binary, in a fraction
//! of the time, and states those cannot reach cheaply (a connection lost in the pull, a
//! check elsewhere holding restic's lock).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use burrow_core::run::{RunControl, RunReport};
use burrow_core::{ErrorClass, RunStatus};
use burrow_disk::SimDisk;
use burrow_run::{Ports, run_job};
use burrow_testkit::exec::{Reply, ScriptedExec};
use burrow_testkit::memrepo::{MemRepo, MemRepos};
use burrow_testkit::servers::FakeServers;

struct World {
    tmp: tempfile::TempDir,
    cfg: burrow_config::Config,
    repos: MemRepos,
    repo: MemRepo,
    exec: Arc<ScriptedExec>,
}

/// A job `web` on server `vps`: `before` and `after` commands, two files, `retention`.
fn world(exec: ScriptedExec, job_extra: &str) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = d.join("srv/www");
    fs::create_dir_all(src.join("img")).unwrap();
    fs::write(src.join("index.html"), "<h1>hello</h1>").unwrap();
    fs::write(src.join("img/logo.png"), vec![7u8; 50_000]).unwrap();
    fs::write(d.join("pw"), "secret\n").unwrap();
    fs::write(d.join("id"), "key").unwrap();
    let text = format!(
        "repository: {{path: {d}/repo, password_file: {d}/pw}}
state_dir: {d}/state
servers:
  vps: {{host: 127.0.0.1, user: backup, identity_file: {d}/id, host_key: \"SHA256:{fp}\"}}
jobs:
  web:
    server: vps
    paths: [{d}/srv/www]
    before: [\"systemctl stop app\"]
    after: [\"systemctl start app\"]
{job_extra}",
        d = d.display(),
        fp = "A".repeat(43),
    );
    let cfg = burrow_config::parse(&text, &d.join("c.yaml")).unwrap();
    let repos = MemRepos::default();
    let repo = repos.create(&d.join("repo"), "secret");
    World {
        tmp,
        cfg,
        repos,
        repo,
        exec: Arc::new(exec),
    }
}

impl World {
    fn servers(&self) -> FakeServers {
        FakeServers::default().with("vps", self.exec.clone())
    }

    /// The fakes as a run's ports, without a backup disk.
    fn ports<'a>(&'a self, servers: &'a FakeServers) -> Ports<'a, SimDisk, FakeServers, MemRepos> {
        Ports {
            disk: None,
            servers,
            repos: &self.repos,
        }
    }

    async fn run(&self, servers: &FakeServers) -> RunReport {
        let ports = self.ports(servers);
        let (_tx, rx) = tokio::sync::watch::channel(false);
        run_job(&self.cfg, ports, "web", RunControl::new(rx)).await
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.tmp.path().join(rel)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stops_the_service_pulls_the_files_and_starts_it_again() {
    let w = world(ScriptedExec::new("vps"), "");
    let report = w.run(&w.servers()).await;
    let s = &report.summary;
    assert_eq!(s.status, RunStatus::Ok, "{}", report.log);
    assert_eq!(
        w.exec.commands(),
        ["systemctl stop app", "systemctl start app"],
        "before, then after, once each"
    );
    let snaps = w.repo.snapshots();
    assert_eq!(snaps.len(), 1);
    let snap = &snaps[0];
    assert_eq!(s.snapshot_id.as_deref(), Some(snap.id.as_str()));
    assert_eq!(snap.host, "vps");
    assert!(snap.tags.contains(&"job=web".to_owned()), "{:?}", snap.tags);
    assert_eq!(
        snap.files[&w.path("srv/www/index.html")].content,
        b"<h1>hello</h1>"
    );
    assert_eq!(
        snap.files[&w.path("srv/www/img/logo.png")].content.len(),
        50_000
    );
    assert_eq!(
        (s.files_new, s.files_changed, s.files_unmodified),
        (2, 0, 0)
    );
    assert_eq!(s.bytes_read, 50_014);

    // the second run reads nothing that did not change
    fs::write(w.path("srv/www/index.html"), "<h1>hello, again</h1>").unwrap();
    let again = w.run(&w.servers()).await;
    let s = &again.summary;
    assert_eq!(s.status, RunStatus::Ok, "{}", again.log);
    assert_eq!(
        (s.files_new, s.files_changed, s.files_unmodified),
        (0, 1, 1)
    );
    assert_eq!(s.bytes_read, 21);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_before_pulls_nothing_and_after_still_runs() {
    let exec = ScriptedExec::new("vps").on("stop app", Reply::fails(1, "no such unit"));
    let w = world(exec, "");
    let report = w.run(&w.servers()).await;
    assert_eq!(report.summary.status, RunStatus::Failed, "{}", report.log);
    assert_eq!(report.summary.error_class, Some(ErrorClass::Permanent));
    assert!(report.log.contains("no such unit"), "{}", report.log);
    assert_eq!(
        w.exec.commands(),
        ["systemctl stop app", "systemctl start app"]
    );
    assert!(w.repo.snapshots().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_a_temporary_failure_with_nothing_run() {
    let w = world(ScriptedExec::new("vps"), "");
    let report = w.run(&w.servers().unreachable("vps")).await;
    let s = &report.summary;
    assert_eq!(s.status, RunStatus::Failed, "{}", report.log);
    assert_eq!(s.error_class, Some(ErrorClass::Temporary), "{s:?}");
    assert!(
        s.reason
            .as_deref()
            .unwrap()
            .contains("cannot connect to server vps"),
        "{s:?}"
    );
    assert!(w.exec.commands().is_empty());
    assert!(w.repo.snapshots().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_runs_nothing_on_the_server() {
    let w = world(ScriptedExec::new("vps"), "");
    fs::write(w.path("pw"), "not the password\n").unwrap();
    let servers = w.servers();
    let report = w.run(&servers).await;
    let s = &report.summary;
    assert_eq!(s.status, RunStatus::Failed, "{}", report.log);
    assert_eq!(s.error_class, Some(ErrorClass::Permanent));
    assert!(
        s.reason.as_deref().unwrap().contains("wrong password"),
        "{s:?}"
    );
    assert!(w.exec.commands().is_empty(), "{:?}", w.exec.commands());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_lost_in_the_pull_saves_no_snapshot_and_runs_after_again_later() {
    let w = world(ScriptedExec::new("vps"), "");
    let report = w.run(&w.servers().drops_during_pull("vps")).await;
    let s = &report.summary;
    assert_eq!(s.status, RunStatus::Failed, "{}", report.log);
    assert_eq!(s.error_class, Some(ErrorClass::Temporary), "{s:?}");
    assert!(
        s.reason
            .as_deref()
            .unwrap()
            .contains("was lost during the pull"),
        "{s:?}"
    );
    assert!(
        w.repo.snapshots().is_empty(),
        "no snapshot of a half-read server"
    );
    // after is owed once before started; the fake still records it
    assert_eq!(
        w.exec.commands(),
        ["systemctl stop app", "systemctl start app"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_policy_and_fails_soft_while_another_process_holds_a_lock() {
    let w = world(ScriptedExec::new("vps"), "    retention: {keep_last: 2}\n");
    for _ in 0..3 {
        let r = w.run(&w.servers()).await;
        assert_eq!(r.summary.status, RunStatus::Ok, "{}", r.log);
    }
    assert_eq!(w.repo.snapshots().len(), 2, "keep_last: 2");
    assert!(w.repo.prunes() >= 1);

    // a `restic check` elsewhere holds a shared lock: the backup may run beside it,
    // retention (exclusive) may not
    let _check_elsewhere = w.repo.lock_as_another(false).unwrap();
    let r = w.run(&w.servers()).await;
    assert_eq!(r.summary.status, RunStatus::Warning, "{}", r.log);
    assert!(
        r.summary
            .reason
            .as_deref()
            .unwrap()
            .contains("retention failed (the new snapshot is safe)"),
        "{:?}",
        r.summary
    );
    assert_eq!(
        w.repo.snapshots().len(),
        3,
        "nothing forgotten without the lock"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_source_is_an_anomaly_and_pauses_retention() {
    let w = world(ScriptedExec::new("vps"), "    retention: {keep_last: 1}\n");
    let first = w.run(&w.servers()).await;
    assert_eq!(first.summary.status, RunStatus::Ok, "{}", first.log);
    fs::remove_dir_all(w.path("srv/www/img")).unwrap();
    fs::remove_file(w.path("srv/www/index.html")).unwrap();
    let emptied = w.run(&w.servers()).await;
    assert_eq!(
        emptied.summary.status,
        RunStatus::Anomaly,
        "{}",
        emptied.log
    );
    let snaps = w.repo.snapshots();
    assert_eq!(
        snaps.len(),
        2,
        "keep_last: 1 is paused: the good snapshot stays"
    );
    assert!(
        snaps[1].tags.contains(&"anomaly".to_owned()),
        "{:?}",
        snaps[1].tags
    );
    assert!(snaps[0].files.len() == 2);
}

#[test]
fn the_fake_repository_refuses_a_missing_repository() {
    use burrow_core::repository::Repositories;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("pw"), "x\n").unwrap();
    let e = MemRepos::default()
        .open(Path::new("/nowhere"), &tmp.path().join("pw"))
        .unwrap_err();
    assert!(e.message.contains("no repository at /nowhere"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_by_hand_says_first_then_removes_and_snapshots_lists_what_is_left() {
    use burrow_core::retention::Policy;
    use burrow_run::maintain;
    let w = world(ScriptedExec::new("vps"), "");
    for _ in 0..3 {
        assert_eq!(w.run(&w.servers()).await.summary.status, RunStatus::Ok);
    }
    let servers = w.servers();
    let ports = w.ports(&servers);
    let keep = Policy {
        last: Some(1),
        ..Policy::default()
    };
    let said = maintain::forget(&w.cfg, ports, "web", keep, true)
        .await
        .unwrap();
    assert_eq!((said.plan.keep.len(), said.plan.remove.len()), (1, 2));
    assert!(said.resumed.is_none(), "a dry run resumes nothing");
    assert_eq!(w.repo.snapshots().len(), 3, "a dry run changes nothing");

    let done = maintain::forget(&w.cfg, ports, "web", keep, false)
        .await
        .unwrap();
    assert_eq!(done.plan.remove, said.plan.remove);
    let listing = maintain::snapshots(&w.cfg, ports, Some("web"))
        .await
        .unwrap();
    assert_eq!(listing.snapshots.len(), 1);
    assert_eq!(listing.snapshots[0].id, done.plan.keep[0].id);
    maintain::prune(&w.cfg, ports).await.unwrap();
    assert_eq!(w.repo.prunes(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_refuses_a_repository_that_exists_and_changes_nothing() {
    let w = world(ScriptedExec::new("vps"), "");
    assert_eq!(w.run(&w.servers()).await.summary.status, RunStatus::Ok);
    let servers = w.servers();
    let ports = w.ports(&servers);
    let e = burrow_run::maintain::init(&w.cfg, ports).await.unwrap_err();
    assert!(e.message.contains("a repository already exists at"), "{e}");
    assert_eq!(e.class, ErrorClass::Permanent);
    assert_eq!(w.repo.snapshots().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_writes_the_files_and_feeds_the_dump_to_its_restore_command() {
    use burrow_core::repository::RestoreRequest;
    use burrow_run::command::CommandError;
    use burrow_run::restore;
    let exec = ScriptedExec::new("vps")
        .on("pg_dump", Reply::ok("CREATE TABLE t;\n"))
        .on("psql broken", Reply::fails(3, "psql: no such database"));
    let dumps = "    dumps:
      - {name: app.sql, command: pg_dump app, restore_command: psql app}
      - {name: old.sql, command: pg_dump old, restore_command: psql broken}
      - {name: raw.sql, command: pg_dump raw}\n";
    let w = world(exec, dumps);
    let servers = w.servers();
    assert_eq!(w.run(&servers).await.summary.status, RunStatus::Ok);
    let ports = w.ports(&servers);

    let target = w.path("restored");
    let req = RestoreRequest::new("web", "latest", &target);
    fs::create_dir_all(target.join("stale/below")).unwrap();
    fs::write(target.join("stale/below/old"), "old").unwrap();
    let then = restore::Afterwards {
        verify: true,
        delete: true,
    };
    let out = restore::files(&w.cfg, ports, req, then).await.unwrap();
    assert_eq!(
        out.deleted,
        [target.join("stale")],
        "what the snapshot does not hold"
    );
    assert!(!target.join("stale").exists());
    assert!(out.outcome.complete(), "{out:?}");
    let verified = out.verified.as_ref().unwrap();
    // the two files and the three dumps, /burrow-dumps/*
    assert_eq!(
        (verified.files, verified.bytes),
        (5, 14 + 50_000 + 3 * 16),
        "{verified:?}"
    );
    assert!(verified.differ.is_empty(), "{verified:?}");
    let src = w.path("srv/www");
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read(restored.join("index.html")).unwrap(),
        b"<h1>hello</h1>"
    );
    assert_eq!(
        fs::read(restored.join("img/logo.png")).unwrap().len(),
        50_000
    );

    let fed = restore::dump_to_server(&w.cfg, ports, ("web", "latest"), "app.sql")
        .await
        .unwrap();
    assert_eq!((fed.bytes, fed.host.as_str()), (16, "vps"));
    let ran = w.exec.ran();
    let psql = ran.iter().find(|r| r.cmd == "psql app").expect("psql ran");
    assert_eq!(psql.stdin.as_deref(), Some(&b"CREATE TABLE t;\n"[..]));

    let failed = restore::dump_to_server(&w.cfg, ports, ("web", "latest"), "old.sql").await;
    let Err(CommandError::Run(e)) = failed else {
        panic!("a failing restore command is the restore's error: {failed:?}")
    };
    assert!(e.message.contains("psql: no such database"), "{e}");
    for (name, says) in [
        ("raw.sql", "has no restore_command"),
        ("gone.sql", "has no dump named"),
    ] {
        let refused = restore::dump_to_server(&w.cfg, ports, ("web", "latest"), name).await;
        assert!(
            matches!(&refused, Err(CommandError::Usage(m)) if m.contains(says)),
            "{name}: {refused:?}"
        );
    }

    // A dump into a directory is found in the snapshot itself.
    let dir = w.path("dumps");
    let out = restore::dump_to_dir(&w.cfg, ports, ("web", "latest"), "raw.sql", (&dir, false))
        .await
        .unwrap();
    assert_eq!((out.outcome.files, out.outcome.bytes), (1, 16), "{out:?}");
    assert_eq!(fs::read(dir.join("raw.sql")).unwrap(), b"CREATE TABLE t;\n");
    let missing =
        restore::dump_to_dir(&w.cfg, ports, ("web", "latest"), "gone.sql", (&dir, false)).await;
    assert!(matches!(missing, Err(CommandError::Run(_))), "{missing:?}");
}
