//! burrow's configuration: one YAML file turned into a [`Config`] that cannot be invalid.
//!
//! Two phases, as borgmatic does it: serde with `deny_unknown_fields` rejects syntax and type
//! errors with `FILE:LINE:COL` and the key path; then [`validate`] collects *every* semantic
//! error (unknown server, bad cron, relative path, ...) so a user fixes them all in one go,
//! before 03:00 rather than at 03:00.

mod locate;
mod outline;
pub mod quickstart;
mod raw;
pub mod setup;
pub mod sudoers;
mod unique;
mod validate;

pub use outline::{EditRefused, JobOutline, Outline, ServerOutline, outline, set_host_key};
pub use validate::valid_read_data;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use burrow_core::ping::PingUrl;
pub use burrow_core::retention::Policy;
pub use burrow_core::schedule::Schedule;
use burrow_core::server::SshTarget;

/// Where the daemon and the CLI look when neither `--config` nor `BURROW_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/burrow/config.yaml";
/// Where burrow keeps its state (run history, last slots) when `state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/burrow";
/// `servers.NAME.connect_timeout` when it is not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages).
    pub file: PathBuf,
    pub repository: Repository,
    pub state_dir: PathBuf,
    pub disk: Option<Disk>,
    pub servers: BTreeMap<String, Server>,
    pub jobs: BTreeMap<String, Job>,
    pub check: Option<Check>,
    pub healthchecks: Healthchecks,
}

#[derive(Debug, Clone)]
pub struct Repository {
    /// Absolute, or relative to the backup volume's root when `disk` is set.
    pub path: PathBuf,
    /// Absolute, or relative to the key stick's root when `disk.key` is set.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub key: Option<KeyStick>,
    pub backup_uuid: String,
    pub lock_when_key_removed: bool,
    pub unmount_after_run: bool,
    pub power_off_after_run: bool,
    pub spinup_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KeyStick {
    pub fs_uuid: String,
    /// Relative to the stick's root.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// How to reach it: the name, address, login, host key, SFTP command and connect timeout
    /// (core's type, which the SSH adapter takes as it is).
    pub ssh: SshTarget,
    /// An SFTP request the server leaves unanswered this long (with nothing else arriving)
    /// makes its file a problem; the pull goes on over a fresh SFTP channel.
    pub io_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// `None`: the paths are on this machine and hooks and dumps run here.
    pub server: Option<String>,
    pub enabled: bool,
    /// `None`: the job runs only when asked (`burrow run JOB`).
    pub schedule: Option<Schedule>,
    pub random_delay: Duration,
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub before: Vec<String>,
    pub after: Vec<String>,
    pub hook_timeout: Duration,
    pub after_deadline: Option<Duration>,
    /// Time limit of each dump command; a dump still running then is killed on the server
    /// and recorded as a problem.
    pub dump_timeout: Duration,
    pub dumps: Vec<Dump>,
    /// How often the daemon tries a run again that failed for a temporary cause (a server
    /// that is rebooting, the network, a repository lock held by a prune); 0: never.
    pub retries: u32,
    /// The wait before the first try again; the n-th waits n times this.
    pub retry_wait: Duration,
    /// `None`: the job keeps every snapshot.
    pub retention: Option<Policy>,
    pub anomaly: Anomaly,
    pub healthcheck: Option<PingUrl>,
}

/// The anomaly guard of a job (`jobs.NAME.anomaly`): when a new snapshot looks nothing like
/// its parent, it is tagged `anomaly` and retention of the job pauses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    pub enabled: bool,
    /// Share (0..=1) of the parent's files that may be gone.
    pub max_gone: f64,
    /// Share (0..=1) of the parent's files that may have changed.
    pub max_changed: f64,
    /// The share rules apply only when the parent snapshot has at least this many files (an
    /// empty snapshot is an anomaly whatever the size).
    pub min_files: u64,
}

impl Default for Anomaly {
    fn default() -> Self {
        Anomaly {
            enabled: true,
            max_gone: 0.5,
            max_changed: 0.8,
            min_files: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub name: String,
    /// Runs on the job's server; its stdout is the dump.
    pub command: String,
    /// Reads a dump on stdin to restore it (`burrow restore --dump NAME --to-server`).
    pub restore_command: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Healthchecks {
    pub heartbeat: Option<PingUrl>,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub schedule: Schedule,
    /// `None`: structure only; `Some("5%")`, `Some("all")`, `Some("1/7")`: also read data.
    pub read_data: Option<String>,
    pub healthcheck: Option<PingUrl>,
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.get(name)
    }

    pub fn server_of(&self, job: &Job) -> Option<&Server> {
        job.server.as_ref().and_then(|s| self.servers.get(s))
    }

    /// What the config has done with the backup disk once runs are over
    /// (`unmount_after_run`, `power_off_after_run`); `None`: it stays mounted.
    pub fn release_after_run(&self) -> Option<burrow_core::disk::Release> {
        let d = self.disk.as_ref()?;
        (d.unmount_after_run || d.power_off_after_run).then_some(burrow_core::disk::Release {
            unmount: true,
            lock: true,
            power_off: d.power_off_after_run,
        })
    }

    /// Each job's ping URL, and the check's under its run name, for the monitoring adapter.
    pub fn pings(&self) -> std::collections::HashMap<String, PingUrl> {
        let mut m: std::collections::HashMap<String, PingUrl> = self
            .jobs
            .values()
            .filter_map(|j| j.healthcheck.clone().map(|p| (j.name.clone(), p)))
            .collect();
        if let Some(hc) = self.check.as_ref().and_then(|c| c.healthcheck.clone()) {
            m.insert(burrow_core::run::CHECK_RUN.to_owned(), hc);
        }
        m
    }
}

/// One semantic error: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
    /// 1-based line and column of the key, when it could be found.
    pub at: Option<(usize, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {}: {source} (pass --config FILE or set BURROW_CONFIG)",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{col}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{}", render_invalid(file, errors))]
    Invalid { file: PathBuf, errors: Vec<Invalid> },
}

fn render_invalid(file: &Path, errors: &[Invalid]) -> String {
    let mut out = format!("{} has {} error(s):", file.display(), errors.len());
    for e in errors {
        match e.at {
            Some((l, c)) => out.push_str(&format!(
                "\n{}:{l}:{c}: {}: {}",
                file.display(),
                e.path,
                e.message
            )),
            None => out.push_str(&format!("\n{}: {}: {}", file.display(), e.path, e.message)),
        }
    }
    out
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates `text`, naming `file` in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_with(text, file, true)
}

/// As [`parse`]; with `check_files` false, the files the config names (identity, password,
/// known_hosts) are not opened. For checking a config written for another machine.
pub fn parse_with(text: &str, file: &Path, check_files: bool) -> Result<Config, ConfigError> {
    let raw = parse_raw(text, file)?;
    validate::validate(raw, file, text, check_files)
}

/// The syntax phase alone: duplicate keys first (a typed map would keep the last one
/// silently), then the typed parse.
fn parse_raw(text: &str, file: &Path) -> Result<raw::RawConfig, ConfigError> {
    let syntax = |e: serde_yaml_ng::Error| {
        let (line, col) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            file: file.to_owned(),
            line,
            col,
            message: strip_location(&e.to_string()),
        }
    };
    if let Some(d) = unique::find_duplicate(text).map_err(syntax)? {
        let (line, col) = d.first;
        return Err(ConfigError::Syntax {
            file: file.to_owned(),
            line: d.at.0,
            col: d.at.1,
            message: format!(
                "{}, first written at {}:{line}:{col}; keep one of the two (YAML would silently use the last)",
                d.message,
                file.display()
            ),
        });
    }
    serde_yaml_ng::from_str(text).map_err(syntax)
}

/// serde_yaml_ng appends " at line L column C" to its messages; we print the location first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

pub use burrow_core::shell_quote;

#[cfg(test)]
mod tests;
