//! `burrow quickstart`: the whole pipeline on this machine alone — a config, a password, a
//! repository and one snapshot of a local directory, all under a scratch directory
//! (`burrow_config::quickstart`).

use std::path::Path;

use burrow_config::quickstart::{JOB, prepare};
use burrow_core::Exit;
use burrow_core::run::RunControl;
use burrow_disk::SimDisk;
use burrow_run::run_job;

use crate::output::fail;

pub async fn run(dir: &Path, path: Option<&Path>) -> Exit {
    let scratch = match prepare(dir, path) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Failed, e),
    };
    let cfg = match burrow_config::load(&scratch.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Usage;
        }
    };
    let ports = crate::adapters::ports(None::<&SimDisk>);
    if !cfg.repository.path.join("config").exists() {
        let created = burrow_run::maintain::init(&cfg, ports).await;
        if crate::output::emit(created, false) != Exit::Ok {
            return Exit::Failed;
        }
    }
    out!("backing up {} (job `{JOB}`)", scratch.path.display());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = run_job(&cfg, ports, JOB, RunControl::new(rx)).await;
    let exit = crate::output::show(&report.summary, false);
    if matches!(exit, Exit::Ok | Exit::Partial | Exit::Warning) {
        outp!("{}", scratch.next_steps());
    }
    exit
}
