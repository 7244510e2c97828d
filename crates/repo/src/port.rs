//! burrow-core's repository port on [`Repo`], and the opener of repositories on this
//! machine's filesystem.

use std::path::{Path, PathBuf};

use burrow_core::RunError;
use burrow_core::repository::{
    BackupOutcome, BackupRequest, CheckReport, DamagedPack, JobStats, PackRepair, PendingCounts,
    PendingSnapshot, Repositories, Repository, RestoreOutcome, RestoreRequest, SnapshotEntries,
    SnapshotListing, Verified,
};
use burrow_core::retention::{Plan, Policy};

use crate::{Password, Pending, Repo, RepoLockGuard};

impl PendingSnapshot for Pending {
    fn partial(&self) -> bool {
        Pending::partial(self)
    }

    fn counts(&self) -> PendingCounts {
        Pending::counts(self)
    }
}

impl Repository for Repo {
    type Lock = RepoLockGuard;
    type Pending = Pending;

    fn id(&self) -> String {
        Repo::id(self)
    }

    fn lock_for_backup(&self) -> Result<RepoLockGuard, RunError> {
        Ok(Repo::lock_for_backup(self)?)
    }

    fn lock(&self, exclusive: bool) -> Result<RepoLockGuard, RunError> {
        let locks = self.locks()?;
        Ok(if exclusive {
            locks.exclusive()?
        } else {
            locks.shared()?
        })
    }

    fn remove_tmp_debris(&self) -> Result<Vec<PathBuf>, RunError> {
        Ok(Repo::remove_tmp_debris(self)?)
    }

    fn snapshot_listing(&self, job: Option<&str>) -> Result<SnapshotListing, RunError> {
        Ok(Repo::snapshot_listing(self, job)?)
    }

    fn archive(&self, req: BackupRequest<'_>) -> Result<Pending, RunError> {
        Ok(Repo::archive(self, req)?)
    }

    fn commit(&self, pending: Pending, tags: &[&str]) -> Result<BackupOutcome, RunError> {
        Ok(pending.commit(self, tags)?)
    }

    fn forget_plan(&self, job: &str, keep: &Policy) -> Result<Plan, RunError> {
        Ok(Repo::forget_plan(self, job, keep)?)
    }

    fn forget(&self, job: &str, keep: &Policy) -> Result<Plan, RunError> {
        Ok(Repo::forget(self, job, keep)?)
    }

    fn prune(&self) -> Result<(), RunError> {
        Ok(Repo::prune(self)?)
    }

    fn check_report(&self, read_data: Option<&str>) -> Result<CheckReport, RunError> {
        Ok(Repo::check_report(self, read_data)?)
    }

    fn drop_damaged_packs(&self, packs: &[DamagedPack]) -> Result<PackRepair, RunError> {
        Ok(Repo::drop_damaged_packs(self, packs)?)
    }

    fn restore(&self, req: RestoreRequest<'_>) -> Result<RestoreOutcome, RunError> {
        Ok(Repo::restore(self, req)?)
    }

    fn entries(
        &self,
        job: &str,
        snapshot: &str,
        path: Option<&Path>,
        recursive: bool,
    ) -> Result<SnapshotEntries, RunError> {
        Ok(Repo::entries(self, job, snapshot, path, recursive)?)
    }

    fn stats(&self, job: &str) -> Result<JobStats, RunError> {
        Ok(Repo::stats(self, job)?)
    }

    fn verify(&self, req: RestoreRequest<'_>) -> Result<Verified, RunError> {
        Ok(Repo::verify(self, req)?)
    }

    fn dump(
        &self,
        job: &str,
        snapshot: &str,
        path: &Path,
        w: &mut dyn std::io::Write,
    ) -> Result<u64, RunError> {
        Ok(Repo::dump(self, job, snapshot, path, w)?)
    }
}

/// Opens the restic repositories of this machine's filesystem (a directory on the backup
/// volume, or any local path without `disk`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalRepositories;

impl Repositories for LocalRepositories {
    type Repo = Repo;

    fn open(&self, path: &Path, password_file: &Path) -> Result<Repo, RunError> {
        let password =
            Password::from_file(password_file).map_err(|e| RunError::permanent(e.to_string()))?;
        Repo::open(path, &password).map_err(|e| RunError::permanent(e.to_string()))
    }

    fn init(&self, path: &Path, password_file: &Path) -> Result<Repo, RunError> {
        let password = Password::from_file(password_file).map_err(|e| {
            RunError::permanent(format!(
                "{e}\n  create it with e.g.: umask 077; head -c 32 /dev/urandom | base64 > {}",
                password_file.display()
            ))
        })?;
        std::fs::create_dir_all(path)
            .map_err(|e| RunError::permanent(format!("cannot create {}: {e}", path.display())))?;
        crate::init(path, &password).map_err(|e| RunError::permanent(e.to_string()))
    }
}
