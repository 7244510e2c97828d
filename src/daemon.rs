//! `burrow daemon`: the composition root of the daemon's loop. It takes the daemon lock,
//! installs the signals, and wires the real adapters (UDisks2 or the simulated disks,
//! healthchecks, burrow-run's runs over SSH into the local repositories, the system clock,
//! systemd) into `run_daemon`.

use std::future::Future;
use std::sync::Arc;

use burrow_config::Config;
use burrow_core::Exit;
use burrow_core::clock::SystemClock;
use burrow_core::disk::DiskManager;
use burrow_daemon::control::socket_path;
use burrow_daemon::serve::{Adapters, run_daemon};
use burrow_disk::{SimDisk, UDisks2Manager};
use burrow_notify::Healthchecks;
use burrow_notify::systemd::Systemd;
use burrow_repo::LocalRepositories;
use burrow_run::Runs;
use burrow_ssh::SshServers;
use tokio::signal::unix::{SignalKind, signal};

use crate::output::fail;

pub async fn serve(cfg: Config, sim: bool) -> Exit {
    // One daemon per state_dir, held until serve returns; taken before the disk or the socket
    // is touched. A second daemon is a failure (1), like one whose socket answers.
    let _one = match burrow_run::place::DaemonLock::acquire(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => return fail(Exit::Failed, e),
    };
    let Ok(stop) = terminated() else {
        eprintln!("burrow: cannot install signal handlers");
        return Exit::Failed;
    };
    if sim || cfg.disk.is_none() {
        let encrypted = cfg.disk.as_ref().map(|d| d.key.is_some());
        let disk = encrypted.map(|e| Arc::new(SimDisk::under(&cfg.state_dir, e)));
        return run_daemon(cfg, adapters(disk, sim), socket_path(), stop).await;
    }
    let Some(settings) = crate::adapters::disk_settings(&cfg) else {
        return Exit::Usage;
    };
    match UDisks2Manager::connect(settings).await {
        Ok(d) => run_daemon(cfg, adapters(Some(Arc::new(d)), false), socket_path(), stop).await,
        Err(e) => fail(Exit::Failed, format!("cannot manage the backup disk: {e}")),
    }
}

/// Healthchecks, burrow-run's runs, the system clock, systemd from the environment; made
/// from the config `run_daemon` holds.
fn adapters<D: DiskManager>(
    disk: Option<Arc<D>>,
    sim: bool,
) -> impl FnOnce(&Arc<Config>) -> Adapters<D, Healthchecks, Runs<D, SshServers, LocalRepositories>>
{
    move |cfg| Adapters {
        monitor: Arc::new(Healthchecks::new(cfg.pings())),
        runner: Arc::new(Runs {
            cfg: cfg.clone(),
            disk: disk.clone(),
            servers: SshServers,
            repos: LocalRepositories,
        }),
        disk,
        clock: Arc::new(SystemClock),
        sd: Arc::new(Systemd::from_env()),
        sim,
    }
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed by the call; an error
/// says they could not be.
pub fn terminated() -> std::io::Result<impl Future<Output = ()> + Send> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
