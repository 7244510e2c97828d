//! The real adapters behind burrow-run's ports, built from the config: UDisks2 for the backup
//! disk (or none), SSH for the servers, the local backend for the repository.

use std::time::Duration;

use burrow_config::Config;
use burrow_core::disk::{DiskError, DiskManager};
use burrow_core::run::RunReport;
use burrow_core::{Exit, RunError, RunSummary};
use burrow_disk::{DiskSettings, UDisks2Manager};
use burrow_repo::LocalRepositories;
use burrow_run::Ports;
use burrow_run::doctor::Probes;
use burrow_ssh::SshServers;

use crate::output::fail;

/// The disk adapter's settings from the config, when it has `disk`.
pub fn disk_settings(cfg: &Config) -> Option<DiskSettings> {
    cfg.disk.as_ref().map(|d| {
        let (uuid, file) = d
            .key
            .as_ref()
            .map(|k| (k.fs_uuid.clone(), k.key_file.clone()))
            .unwrap_or_default();
        let mut s = DiskSettings::new(uuid, file, d.backup_uuid.clone());
        s.lock_when_key_removed = d.lock_when_key_removed;
        s.spinup_timeout = d.spinup_timeout;
        s
    })
}

/// The real ports of a command or a run.
pub type RealPorts<'a> = Ports<'a, UDisks2Manager, SshServers, LocalRepositories>;

/// The ports of a run with `disk` as the backup disk.
pub fn ports<D>(disk: Option<&D>) -> Ports<'_, D, SshServers, LocalRepositories> {
    Ports {
        disk,
        servers: &SshServers,
        repos: &LocalRepositories,
    }
}

/// Runs `f` with the real disk manager when the config has `disk`, with none otherwise; a
/// disk manager that cannot start is `f`'s error.
pub async fn with_disk<T>(
    cfg: &Config,
    f: impl AsyncFnOnce(Option<&UDisks2Manager>) -> T,
) -> Result<T, DiskError> {
    match disk_settings(cfg) {
        None => Ok(f(None::<&UDisks2Manager>).await),
        Some(s) => Ok(f(Some(&UDisks2Manager::connect(s).await?)).await),
    }
}

/// A command on the real ports (see [`with_disk`]): a disk manager that cannot start is
/// printed and its exit.
pub async fn command(cfg: &Config, f: impl AsyncFnOnce(RealPorts<'_>) -> Exit) -> Exit {
    let done = with_disk(cfg, async |d| f(ports(d)).await).await;
    done.unwrap_or_else(|e| {
        let e = RunError::from(e);
        fail(e.status().exit(), e)
    })
}

/// A run (or the check) by hand on the real ports, named `name`: the disk is released
/// afterwards as the config asks; a disk manager that cannot start ends it without a run.
pub async fn by_hand(
    cfg: &Config,
    name: &str,
    f: impl AsyncFnOnce(RealPorts<'_>) -> RunReport,
) -> RunReport {
    let ran = with_disk(cfg, async |d| {
        let report = f(ports(d)).await;
        if let (Some(disk), Some(what)) = (d, cfg.release_after_run()) {
            burrow_core::disk::release_disk(disk, what).await;
        }
        report
    });
    ran.await.unwrap_or_else(|e| {
        let e = RunError::from(e);
        RunReport {
            summary: RunSummary::without_run(name, &e),
            log: e.message,
        }
    })
}

/// What `burrow doctor` asks of the adapters: UDisks2 (within 30 s), the LUKS plugin, the
/// HTTP client, statvfs.
pub async fn doctor_probes(cfg: &Config) -> Probes {
    let udisks = match disk_settings(cfg) {
        None => None,
        Some(settings) => Some(
            match tokio::time::timeout(Duration::from_secs(30), UDisks2Manager::connect(settings))
                .await
            {
                Ok(Ok(d)) => Ok(d.state().await),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(DiskError::Failed(
                    "UDisks2 did not answer within 30 s".to_owned(),
                )),
            },
        ),
    };
    let http_client = burrow_run::doctor::pings_configured(cfg).then(|| {
        burrow_notify::healthchecks::build_client(Duration::from_secs(10))
            .map(drop)
            .map_err(Into::into)
    });
    Probes {
        udisks,
        luks_plugin: burrow_disk::luks_plugin(),
        http_client,
        free_space: burrow_disk::free_space,
    }
}
