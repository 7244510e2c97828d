//! `burrow quickstart`: the whole pipeline on this machine alone — a config, a password, a
//! repository and one snapshot of a local directory, all under a scratch directory.

use std::path::Path;

use burrow_core::Exit;
use burrow_disk::SimDisk;
use burrow_run::{RunControl, run_job};
use rand::Rng;

fn config_text(dir: &Path, path: &Path) -> String {
    // A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
    let q = |p: &Path| serde_json::Value::from(p.display().to_string()).to_string();
    format!(
        "# Written by `burrow quickstart`: a local job into a repository under {dir}.
repository:
  path: {repo}
  password_file: {pw}
state_dir: {state}
jobs:
  quickstart:
    paths: [{path}]
    exclude: [target, .git, \"*.tmp\"]
    retention: {{keep_last: 5}}
",
        dir = dir.display(),
        repo = q(&dir.join("repo")),
        pw = q(&dir.join("password")),
        state = q(&dir.join("state")),
        path = q(path),
    )
}

pub async fn run(dir: &Path, path: Option<&Path>) -> Exit {
    let path = match path
        .map(Path::to_owned)
        .map_or_else(std::env::current_dir, Ok)
    {
        Ok(p) => std::path::absolute(&p).unwrap_or(p),
        Err(e) => {
            eprintln!("burrow: cannot find the current directory: {e}");
            return Exit::Failed;
        }
    };
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("burrow: cannot create {}: {e}", dir.display());
        return Exit::Failed;
    }
    let pw = dir.join("password");
    if !pw.exists() {
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        if let Err(e) = write_private(&pw, &format!("{secret}\n")) {
            eprintln!("burrow: cannot write {}: {e}", pw.display());
            return Exit::Failed;
        }
    }
    let cfg_path = dir.join("config.yaml");
    if let Err(e) = std::fs::write(&cfg_path, config_text(&dir, &path)) {
        eprintln!("burrow: cannot write {}: {e}", cfg_path.display());
        return Exit::Failed;
    }
    let cfg = match burrow_config::load(&cfg_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Usage;
        }
    };
    let repo_path = cfg.repository.path.clone();
    if !repo_path.join("config").exists() {
        let password = match burrow_repo::Password::from_file(&pw) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
        };
        let rp = repo_path.clone();
        match tokio::task::spawn_blocking(move || burrow_repo::init(&rp, &password)).await {
            Ok(Ok(r)) => out!("created repository {} at {}", r.id(), repo_path.display()),
            Ok(Err(e)) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
            Err(e) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
        }
    }
    out!("backing up {} (job `quickstart`)", path.display());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let report = run_job::<SimDisk>(&cfg, None, "quickstart", RunControl::new(rx)).await;
    let exit = crate::commands::report(&report.summary, false);
    if matches!(exit, Exit::Ok | Exit::Partial | Exit::Warning) {
        let c = cfg_path.display();
        out!("\nnext:");
        out!("  burrow --config {c} snapshots");
        out!("  burrow --config {c} run quickstart          # again: only changes are read");
        out!("  burrow --config {c} restore quickstart latest --target /tmp/burrow-restore");
        out!(
            "  restic -r {} --password-file {} snapshots",
            repo_path.display(),
            pw.display()
        );
    }
    exit
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}
