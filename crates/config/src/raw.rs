//! The file as written: serde structs with `deny_unknown_fields`, so a misspelled key is an
//! error with its line and column, never silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub repository: RawRepository,
    pub state_dir: Option<PathBuf>,
    pub disk: Option<RawDisk>,
    #[serde(default)]
    pub servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    pub jobs: BTreeMap<String, RawJob>,
    pub check: Option<RawCheck>,
    pub healthchecks: Option<RawHealthchecks>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepository {
    pub path: PathBuf,
    pub password_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub key: Option<RawKey>,
    pub backup: RawBackup,
    #[serde(default)]
    pub lock_when_key_removed: bool,
    #[serde(default)]
    pub unmount_after_run: bool,
    #[serde(default)]
    pub power_off_after_run: bool,
    pub spinup_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub fs_uuid: String,
    pub key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub uuid: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub host: String,
    pub port: Option<u16>,
    pub user: String,
    pub identity_file: PathBuf,
    pub identity_passphrase_file: Option<PathBuf>,
    pub host_key: Option<String>,
    pub known_hosts: Option<PathBuf>,
    pub sftp_command: Option<String>,
    pub connect_timeout: Option<String>,
    pub io_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub server: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub random_delay: Option<String>,
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub before: Vec<String>,
    #[serde(default)]
    pub after: Vec<String>,
    pub hook_timeout: Option<String>,
    pub after_deadline: Option<String>,
    pub dump_timeout: Option<String>,
    /// Tries again after a failure with a temporary cause (the daemon only).
    pub retries: Option<u32>,
    pub retry_wait: Option<String>,
    #[serde(default)]
    pub dumps: Vec<RawDump>,
    pub retention: Option<RawRetention>,
    pub anomaly: Option<RawAnomaly>,
    pub healthcheck: Option<RawPing>,
}

/// `anomaly: {max_gone: "50%", max_changed: "80%", min_files: 10}` or `anomaly: false`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAnomaly {
    Enabled(bool),
    Limits(RawAnomalyLimits),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomalyLimits {
    pub max_gone: Option<String>,
    pub max_changed: Option<String>,
    pub min_files: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDump {
    pub name: String,
    pub command: Option<String>,
    pub restore_command: Option<String>,
    pub postgres: Option<RawPostgres>,
    pub mysql: Option<RawMysql>,
    pub sqlite: Option<RawSqlite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub database: String,
    pub user: Option<String>,
    pub container: Option<String>,
    /// Host name or Unix socket directory (`pg_dump -h`).
    pub host: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMysql {
    pub database: String,
    pub user: Option<String>,
    pub container: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlite {
    pub path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

/// `healthcheck: https://hc-ping.com/<uuid>` or `healthcheck: {slug: synapse}` (with the
/// project's ping key from `healthchecks.ping_key_file`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPing {
    Url(String),
    Slug { slug: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthchecks {
    pub base_url: Option<String>,
    pub ping_key_file: Option<PathBuf>,
    /// Pinged every few minutes while the daemon runs (a dead Pi alerts too).
    pub heartbeat: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub schedule: String,
    pub timezone: Option<String>,
    pub read_data: Option<String>,
    pub healthcheck: Option<RawPing>,
}
