//! The repository check as the daemon runs it: clean after a backup, failed once a pack is
//! damaged (what `check: {read_data}` is for: bit rot on a disk that sits in a drawer).

use std::fs;
use std::path::Path;

use burrow_core::RunStatus;
use burrow_core::run::RunControl;
use burrow_disk::SimDisk;
use burrow_repo::LocalRepositories;
use burrow_run::{Ports, run_check, run_job};
use burrow_ssh::SshServers;

/// The real adapters, without a backup disk.
fn ports() -> Ports<'static, SimDisk, SshServers, LocalRepositories> {
    Ports {
        disk: None,
        servers: &SshServers,
        repos: &LocalRepositories,
    }
}

fn config(dir: &Path) -> burrow_config::Config {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), vec![42u8; 200_000]).unwrap();
    fs::write(dir.join("pw"), "pw\n").unwrap();
    let text = format!(
        "repository: {{path: {d}/repo, password_file: {d}/pw}}\nstate_dir: {d}/state\njobs:\n  j: {{paths: [{d}/src]}}\ncheck: {{schedule: \"0 5 * * 0\", read_data: all}}\n",
        d = dir.display()
    );
    burrow_config::parse(&text, &dir.join("c.yaml")).unwrap()
}

fn ctl() -> RunControl {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    RunControl::new(rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_then_finds_a_damaged_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    burrow_repo::init(&tmp.path().join("repo"), &burrow_repo::Password::new("pw")).unwrap();
    let run = run_job(&cfg, ports(), "j", ctl()).await;
    assert_eq!(run.summary.status, RunStatus::Ok, "{:?}", run.summary);

    let ok = run_check(&cfg, ports(), ctl()).await;
    assert_eq!(ok.summary.status, RunStatus::Ok, "{}", ok.log);
    assert!(ok.log.contains("no errors found"), "{}", ok.log);

    // flip bytes in the middle of every data pack
    let mut damaged = 0;
    let mut stack = vec![tmp.path().join("repo/data")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut b = fs::read(&p).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                fs::write(&p, b).unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let bad = run_check(&cfg, ports(), ctl()).await;
    assert_eq!(bad.summary.status, RunStatus::Failed, "{}", bad.log);
    assert!(bad.summary.reason.unwrap().contains("check found problems"));
}
