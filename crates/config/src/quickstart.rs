//! `burrow quickstart`'s scratch directory: a config with one job that backs up a directory
//! of this machine into a repository next to it, and the repository's password.

use std::io;
use std::path::{Path, PathBuf};

/// The name of the quickstart's job.
pub const JOB: &str = "quickstart";

/// What [`prepare`] wrote, all under its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// `DIR/config.yaml`
    pub config: PathBuf,
    /// `DIR/password`
    pub password_file: PathBuf,
    /// `DIR/repo`, created by the first `burrow init` (or quickstart) there.
    pub repo: PathBuf,
    /// What the job backs up (absolute).
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("cannot find the current directory: {0}")]
    CurrentDir(io::Error),
    #[error("cannot create {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Writes `dir/config.yaml` for the job [`JOB`], which backs up `path` (default: the current
/// directory) into `dir/repo`, and a random `dir/password` (0600) unless there is one.
pub fn prepare(dir: &Path, path: Option<&Path>) -> Result<Scratch, ScratchError> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => std::env::current_dir().map_err(ScratchError::CurrentDir)?,
    };
    let path = std::path::absolute(&path).unwrap_or(path);
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    std::fs::create_dir_all(&dir).map_err(|source| ScratchError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let s = Scratch {
        config: dir.join("config.yaml"),
        password_file: dir.join("password"),
        repo: dir.join("repo"),
        path,
    };
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ScratchError::Write { path, source }
    };
    if !s.password_file.exists() {
        burrow_core::fsutil::create_password(&s.password_file, 0o600, 40)
            .map_err(write_error(&s.password_file))?;
    }
    std::fs::write(&s.config, config_text(&dir, &s)).map_err(write_error(&s.config))?;
    Ok(s)
}

fn config_text(dir: &Path, s: &Scratch) -> String {
    let q = |p: &Path| crate::outline::yaml_quote(&p.display().to_string());
    format!(
        "# Written by `burrow quickstart`: a local job into a repository under {dir}.
repository:
  path: {repo}
  password_file: {pw}
state_dir: {state}
jobs:
  {JOB}:
    paths: [{path}]
    exclude: [target, .git, \"*.tmp\"]
    retention: {{keep_last: 5}}
",
        dir = dir.display(),
        repo = q(&s.repo),
        pw = q(&s.password_file),
        state = q(&dir.join("state")),
        path = q(&s.path),
    )
}

impl Scratch {
    /// What to try after the first run.
    pub fn next_steps(&self) -> String {
        let c = self.config.display();
        format!(
            "\nnext:
  burrow --config {c} snapshots
  burrow --config {c} run {JOB}          # again: only changes are read
  burrow --config {c} restore {JOB} latest --target /tmp/burrow-restore
  restic -r {} --password-file {} snapshots
",
            self.repo.display(),
            self.password_file.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_config_is_valid_and_keeps_its_password() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("qs");
        let data = tmp.path().join("da\"ta \\ dir\n");
        std::fs::create_dir(&data).unwrap();
        let s = prepare(&dir, Some(&data)).unwrap();
        assert_eq!(s.config, dir.join("config.yaml"));
        let cfg = crate::load(&s.config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.repository.path, dir.join("repo"));
        assert_eq!(cfg.repository.password_file, s.password_file);
        assert_eq!(cfg.state_dir, dir.join("state"));
        let job = cfg.job(JOB).unwrap();
        assert_eq!(job.paths, [data]);
        assert_eq!(job.server, None);
        let pw = std::fs::read_to_string(&s.password_file).unwrap();
        assert_eq!(pw.trim().len(), 40);
        // A second quickstart in the same directory keeps the password of its repository.
        prepare(&dir, None).unwrap();
        assert_eq!(std::fs::read_to_string(&s.password_file).unwrap(), pw);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            crate::load(&s.config).unwrap().job(JOB).unwrap().paths,
            [cwd]
        );
        assert!(s.next_steps().contains(&format!(
            "restic -r {} --password-file {} snapshots",
            s.repo.display(),
            s.password_file.display()
        )));
    }
}
