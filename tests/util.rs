//! Helpers shared by the tests that drive the `burrow` binary.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `burrow --config CFG ARGS` with a private control socket next to the config, so a
/// daemon of another test (or of the machine) is never reached by accident.
pub fn burrow(cfg: &Path, args: &[&str]) -> Output {
    burrow_command(cfg, args).output().unwrap()
}

/// The command [`burrow`] runs, for a test that sets more of its environment.
pub fn burrow_command(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"));
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .env("BURROW_SOCKET", cfg.with_extension("sock"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET");
    c
}

/// stdout and stderr together, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// stdout as JSON (`--json` output).
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(o)))
}

/// Stock restic on a repository burrow wrote; `None` (after the missing-tool rule) when
/// restic is not installed.
pub fn restic(repo: &Path, password_file: &Path, args: &[&str]) -> Option<Output> {
    if Command::new("restic").arg("version").output().is_err() {
        burrow_testkit::missing("restic", "apt-get install restic");
        return None;
    }
    Some(
        Command::new("restic")
            .arg("-r")
            .arg(repo)
            .arg("--password-file")
            .arg(password_file)
            .arg("--no-cache")
            .args(args)
            .output()
            .unwrap(),
    )
}
