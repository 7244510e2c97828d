//! Phase two: every semantic rule, all errors collected with their key paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use burrow_core::exclude::Excludes;
use burrow_core::retention::Policy;
use burrow_core::run::CHECK_RUN;
use burrow_core::schedule::{Schedule, ScheduleError};
use burrow_core::server::{HostKeyPolicy, SshTarget};

use crate::raw::{
    RawAnomaly, RawCheck, RawConfig, RawDisk, RawDump, RawHealthchecks, RawJob, RawMysql, RawPing,
    RawPostgres, RawRepository, RawRetention, RawServer, RawSqlite,
};
use crate::{
    Anomaly, Check, Config, ConfigError, DEFAULT_STATE_DIR, Disk, Dump, Healthchecks, Invalid, Job,
    KeyStick, PingUrl, Repository, Server, locate::locate, shell_quote,
};

struct Errors<'a> {
    text: &'a str,
    list: Vec<Invalid>,
    check_files: bool,
}

impl Errors<'_> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let at = locate_path(self.text, &path);
        self.list.push(Invalid {
            path,
            message: message.into(),
            at,
        });
    }
}

/// Locates `a.b[2].c`, falling back to the longest prefix that can be found.
fn locate_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let parts: Vec<&str> = path
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| locate(text, &parts[..n]))
}

/// Tries of a run that failed for a temporary cause, when the job does not say.
pub const DEFAULT_RETRIES: u32 = 3;
/// The wait before the first try again, when the job does not say.
pub const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(300);

/// A dump may take hours; one that runs longer than this is taken for hung.
pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

fn duration(errs: &mut Errors, path: &str, v: Option<&String>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                errs.add(
                    path,
                    format!("invalid duration {s:?}: {e} (e.g. \"30s\", \"10m\", \"2h\")"),
                );
                default
            }
        },
    }
}

fn absolute(errs: &mut Errors, path: &str, p: &Path) {
    if !p.is_absolute() {
        errs.add(
            path,
            format!("{} is a relative path; write it from / on", p.display()),
        );
    }
}

fn readable_file(errs: &mut Errors, path: &str, p: &Path) {
    if !errs.check_files {
        return;
    }
    if let Err(e) = std::fs::File::open(p) {
        errs.add(path, format!("cannot read {}: {e}", p.display()));
    }
}

/// A directory burrow creates when missing: it must be one if it exists, and otherwise its
/// nearest existing ancestor must be a directory (so that it can be created later).
fn usable_dir(errs: &mut Errors, path: &str, p: &Path) {
    if !errs.check_files || !p.is_absolute() {
        return;
    }
    let Some(existing) = p.ancestors().find(|a| a.symlink_metadata().is_ok()) else {
        return;
    };
    if !existing.is_dir() {
        let what = if existing == p {
            format!("{} exists and is not a directory", p.display())
        } else {
            format!(
                "{} cannot be created: {} is not a directory",
                p.display(),
                existing.display()
            )
        };
        errs.add(path, format!("{what}; choose a directory"));
    }
}

fn job_name(errs: &mut Errors, path: &str, name: &str) {
    if !valid_name(name) {
        errs.add(
            path,
            "job names use letters, digits, '-', '_' and '.' (at most 64)",
        );
    } else if name == CHECK_RUN {
        errs.add(
            path,
            format!("{CHECK_RUN:?} is the name of the repository check (`check:`); rename the job"),
        );
    }
}

/// A plain relative path that stays inside its base (no `..`, no root).
fn inside(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s != "."
        && s != ".."
}

/// A job's or the check's ping: a URL, or a slug under the project's ping key
/// (`<base_url>/<key>/<slug>`), checked by [`PingUrl::parse`] either way.
fn ping(
    errs: &mut Errors,
    path: &str,
    raw: Option<&RawPing>,
    key: Option<&str>,
    base: &str,
) -> Option<PingUrl> {
    let url = match raw? {
        RawPing::Url(u) => u.clone(),
        RawPing::Slug { slug } => match key {
            Some(k) => format!("{}/{k}/{slug}", base.trim_end_matches('/')),
            None => {
                errs.add(
                    path,
                    "a slug needs healthchecks.ping_key_file (the project's ping key)",
                );
                return None;
            }
        },
    };
    PingUrl::parse(&url)
        .map_err(|e| errs.add(path, e.to_string()))
        .ok()
}

/// The healthchecks settings every ping of the file is built from.
struct Pings {
    base: String,
    /// The project's ping key, for pings written as a slug.
    key: Option<String>,
}

impl Pings {
    fn ping(&self, e: &mut Errors, path: &str, raw: Option<&RawPing>) -> Option<PingUrl> {
        ping(e, path, raw, self.key.as_deref(), &self.base)
    }
}

pub fn validate(
    raw: RawConfig,
    file: &Path,
    text: &str,
    check_files: bool,
) -> Result<Config, ConfigError> {
    let mut errs = Errors {
        text,
        list: Vec::new(),
        check_files,
    };
    let e = &mut errs;
    let disk = raw.disk.as_ref().map(|d| disk(e, d));
    let has_key = disk.as_ref().is_some_and(|d| d.key.is_some());
    let repository = repository(e, &raw.repository, disk.is_some(), has_key);
    let state_dir = raw
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    absolute(e, "state_dir", &state_dir);
    usable_dir(e, "state_dir", &state_dir);
    let (pings, healthchecks) = healthchecks(e, raw.healthchecks.as_ref());
    let servers = servers(e, &raw);
    let jobs = raw
        .jobs
        .iter()
        .map(|(name, j)| (name.clone(), job(e, name, j, &raw, &pings)))
        .collect();
    let check = raw.check.as_ref().and_then(|c| check(e, c, &pings));
    if !errs.list.is_empty() {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            errors: errs.list,
        });
    }
    Ok(Config {
        file: file.to_owned(),
        repository,
        state_dir,
        disk,
        servers,
        jobs,
        check,
        healthchecks,
    })
}

fn disk(e: &mut Errors, d: &RawDisk) -> Disk {
    if let Some(k) = &d.key {
        if k.fs_uuid.trim().is_empty() {
            e.add("disk.key.fs_uuid", "must not be empty");
        }
        if !inside(&k.key_file) {
            e.add(
                "disk.key.key_file",
                format!(
                    "{} must be relative to the stick's root, without ..",
                    k.key_file.display()
                ),
            );
        }
    }
    if d.backup.uuid.trim().is_empty() {
        e.add("disk.backup.uuid", "must not be empty");
    }
    if d.lock_when_key_removed && d.key.is_none() {
        e.add(
            "disk.lock_when_key_removed",
            "needs disk.key (the stick whose removal locks the disk)",
        );
    }
    Disk {
        key: d.key.as_ref().map(|k| KeyStick {
            fs_uuid: k.fs_uuid.trim().to_ascii_lowercase(),
            key_file: k.key_file.clone(),
        }),
        backup_uuid: d.backup.uuid.trim().to_ascii_lowercase(),
        lock_when_key_removed: d.lock_when_key_removed,
        unmount_after_run: d.unmount_after_run,
        power_off_after_run: d.power_off_after_run,
        spinup_timeout: duration(
            e,
            "disk.spinup_timeout",
            d.spinup_timeout.as_ref(),
            Duration::from_secs(60),
        ),
    }
}

/// `repository`: a relative path lives on the backup volume, a relative password file on the
/// key stick.
fn repository(e: &mut Errors, repo: &RawRepository, has_disk: bool, has_key: bool) -> Repository {
    if repo.path.is_relative() {
        if !has_disk {
            e.add("repository.path", format!(
                "{} is a relative path; without `disk` write it from / on (with `disk` it is relative to the backup volume)",
                repo.path.display()
            ));
        } else if !inside(&repo.path) {
            e.add(
                "repository.path",
                "must stay inside the backup volume (no ..)",
            );
        }
    }
    if repo.password_file.is_relative() {
        if !has_key {
            e.add("repository.password_file", format!(
                "{} is a relative path; write it from / on (a relative path means a file on the key stick and needs disk.key)",
                repo.password_file.display()
            ));
        } else if !inside(&repo.password_file) {
            e.add(
                "repository.password_file",
                "must stay inside the key stick (no ..)",
            );
        }
    } else {
        readable_file(e, "repository.password_file", &repo.password_file);
    }
    Repository {
        path: repo.path.clone(),
        password_file: repo.password_file.clone(),
    }
}

fn healthchecks(e: &mut Errors, hc: Option<&RawHealthchecks>) -> (Pings, Healthchecks) {
    let base = hc
        .and_then(|h| h.base_url.clone())
        .unwrap_or_else(|| "https://hc-ping.com".to_owned());
    let key = hc.and_then(|h| h.ping_key_file.as_ref()).and_then(|p| {
        if !e.check_files {
            return Some("ping-key".to_owned());
        }
        match std::fs::read_to_string(p) {
            Ok(s) => Some(s.lines().next().unwrap_or("").trim().to_owned()),
            Err(err) => {
                e.add(
                    "healthchecks.ping_key_file",
                    format!("cannot read {}: {err}", p.display()),
                );
                None
            }
        }
    });
    let pings = Pings { base, key };
    let heartbeat = hc.and_then(|h| h.heartbeat.as_ref()).and_then(|u| {
        ping(
            e,
            "healthchecks.heartbeat",
            Some(&RawPing::Url(u.clone())),
            None,
            &pings.base,
        )
    });
    (pings, Healthchecks { heartbeat })
}

fn servers(e: &mut Errors, raw: &RawConfig) -> BTreeMap<String, Server> {
    // which servers are used by enabled jobs: their files must exist now
    let used: BTreeSet<&str> = raw
        .jobs
        .values()
        .filter(|j| j.enabled)
        .filter_map(|j| j.server.as_deref())
        .collect();
    raw.servers
        .iter()
        .filter_map(|(name, s)| {
            let server = server(e, name, s, used.contains(name.as_str()))?;
            Some((name.clone(), server))
        })
        .collect()
}

/// One `servers.NAME`; `None` when it has no usable host key rule (the error is recorded).
fn server(e: &mut Errors, name: &str, s: &RawServer, used: bool) -> Option<Server> {
    let p = format!("servers.{name}");
    if !valid_name(name) {
        e.add(&p, "server names use letters, digits, '-', '_' and '.'");
    }
    if s.host.trim().is_empty() {
        e.add(format!("{p}.host"), "must not be empty");
    }
    if s.user.trim().is_empty() {
        e.add(format!("{p}.user"), "must not be empty");
    }
    if s.port == Some(0) {
        e.add(format!("{p}.port"), "must be 1-65535");
    }
    absolute(e, &format!("{p}.identity_file"), &s.identity_file);
    if let Some(pp) = &s.identity_passphrase_file {
        absolute(e, &format!("{p}.identity_passphrase_file"), pp);
    }
    let host_key = host_key(e, &p, s);
    if used {
        // the files of a server an enabled job uses must exist now
        let files = [
            Some(("identity_file", &s.identity_file)),
            s.identity_passphrase_file
                .as_ref()
                .map(|f| ("identity_passphrase_file", f)),
            match &host_key {
                Some(HostKeyPolicy::KnownHosts(kh)) => Some(("known_hosts", kh)),
                _ => None,
            },
        ];
        for (key, f) in files.into_iter().flatten() {
            if f.is_absolute() {
                readable_file(e, &format!("{p}.{key}"), f);
            }
        }
    }
    let connect_timeout = duration(
        e,
        &format!("{p}.connect_timeout"),
        s.connect_timeout.as_ref(),
        crate::DEFAULT_CONNECT_TIMEOUT,
    );
    let io_timeout = duration(
        e,
        &format!("{p}.io_timeout"),
        s.io_timeout.as_ref(),
        Duration::from_secs(30),
    );
    if io_timeout < Duration::from_secs(1) {
        e.add(
            format!("{p}.io_timeout"),
            "must be at least 1s (a busy server needs time to answer)",
        );
    }
    Some(Server {
        ssh: SshTarget {
            name: name.to_owned(),
            host: s.host.trim().to_owned(),
            port: s.port.unwrap_or(22),
            user: s.user.trim().to_owned(),
            identity_file: s.identity_file.clone(),
            identity_passphrase_file: s.identity_passphrase_file.clone(),
            host_key: host_key?,
            sftp_command: s.sftp_command.clone().filter(|c| !c.trim().is_empty()),
            connect_timeout,
        },
        io_timeout,
    })
}

/// `host_key` or `known_hosts`: exactly one of them.
fn host_key(e: &mut Errors, p: &str, s: &RawServer) -> Option<HostKeyPolicy> {
    match (&s.host_key, &s.known_hosts) {
        (Some(_), Some(_)) => {
            e.add(p, "set either host_key or known_hosts, not both");
            None
        }
        (None, None) => {
            e.add(p, format!(
                "set host_key (e.g. the output of `ssh-keyscan -t ed25519 {}`, checked by hand) or known_hosts; burrow never trusts an unknown server key",
                s.host
            ));
            None
        }
        (Some(k), None) => {
            let k = k.trim();
            if let Err(why) = pinned_host_key(k) {
                e.add(format!("{p}.host_key"), why.to_string());
            }
            Some(HostKeyPolicy::Pinned(k.to_owned()))
        }
        (None, Some(kh)) => {
            absolute(e, &format!("{p}.known_hosts"), kh);
            Some(HostKeyPolicy::KnownHosts(kh.clone()))
        }
    }
}

fn job(e: &mut Errors, name: &str, j: &RawJob, raw: &RawConfig, pings: &Pings) -> Job {
    let p = format!("jobs.{name}");
    job_name(e, &p, name);
    if let Some(s) = &j.server
        && !raw.servers.contains_key(s)
    {
        let known: Vec<&str> = raw.servers.keys().map(String::as_str).collect();
        e.add(
            format!("{p}.server"),
            format!(
                "unknown server {s:?} (servers defined: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
    let schedule = job_schedule(e, &p, j);
    for (i, path) in j.paths.iter().enumerate() {
        absolute(e, &format!("{p}.paths[{i}]"), path);
    }
    if j.paths.is_empty() && j.dumps.is_empty() {
        e.add(&p, "has neither paths nor dumps: nothing to back up");
    }
    if let Err(err) = Excludes::new(&j.exclude) {
        e.add(format!("{p}.exclude"), err.to_string());
    }
    let after_deadline = hooks(e, &p, j);
    let dump_timeout = duration(
        e,
        &format!("{p}.dump_timeout"),
        j.dump_timeout.as_ref(),
        DEFAULT_DUMP_TIMEOUT,
    );
    if dump_timeout.is_zero() {
        e.add(format!("{p}.dump_timeout"), "must be longer than 0s");
    }
    let dumps = dumps(e, &p, &j.dumps);
    let (retries, retry_wait) = retries(e, &p, j);
    let retention = j
        .retention
        .as_ref()
        .map(|r| retention(e, &format!("{p}.retention"), r));
    let anomaly = anomaly(e, &format!("{p}.anomaly"), j.anomaly.as_ref());
    let healthcheck = pings.ping(e, &format!("{p}.healthcheck"), j.healthcheck.as_ref());
    Job {
        name: name.to_owned(),
        server: j.server.clone(),
        enabled: j.enabled,
        schedule,
        random_delay: duration(
            e,
            &format!("{p}.random_delay"),
            j.random_delay.as_ref(),
            Duration::ZERO,
        ),
        paths: j.paths.clone(),
        exclude: j.exclude.clone(),
        before: j.before.clone(),
        after: j.after.clone(),
        hook_timeout: duration(
            e,
            &format!("{p}.hook_timeout"),
            j.hook_timeout.as_ref(),
            Duration::from_secs(600),
        ),
        after_deadline,
        dump_timeout,
        dumps,
        retries,
        retry_wait,
        retention,
        anomaly,
        healthcheck,
    }
}

/// `retries` and `retry_wait`.
fn retries(e: &mut Errors, p: &str, j: &RawJob) -> (u32, Duration) {
    let retries = j.retries.unwrap_or(DEFAULT_RETRIES);
    let wait = duration(
        e,
        &format!("{p}.retry_wait"),
        j.retry_wait.as_ref(),
        DEFAULT_RETRY_WAIT,
    );
    if retries > 0 && wait < Duration::from_secs(1) {
        e.add(
            format!("{p}.retry_wait"),
            "must be at least 1s (or set retries: 0 to never try again)",
        );
    }
    if retries > 100 {
        e.add(
            format!("{p}.retries"),
            "at most 100 (the schedule tries again anyway)",
        );
    }
    (retries, wait)
}

fn job_schedule(e: &mut Errors, p: &str, j: &RawJob) -> Option<Schedule> {
    let Some(expr) = &j.schedule else {
        if j.timezone.is_some() {
            e.add(format!("{p}.timezone"), "has no effect without a schedule");
        }
        return None;
    };
    match Schedule::parse(expr, j.timezone.as_deref()) {
        Ok(s) => Some(s),
        Err(err) => {
            let key = if matches!(err, ScheduleError::Zone(_)) {
                "timezone"
            } else {
                "schedule"
            };
            e.add(format!("{p}.{key}"), err.to_string());
            None
        }
    }
}

/// `before` and `after`; returns `after_deadline`.
fn hooks(e: &mut Errors, p: &str, j: &RawJob) -> Option<Duration> {
    for (i, h) in j.before.iter().chain(&j.after).enumerate() {
        if h.trim().is_empty() {
            let (k, n) = if i < j.before.len() {
                ("before", i)
            } else {
                ("after", i - j.before.len())
            };
            e.add(format!("{p}.{k}[{n}]"), "empty command");
        }
    }
    let after_deadline = j.after_deadline.as_ref().map(|_| {
        duration(
            e,
            &format!("{p}.after_deadline"),
            j.after_deadline.as_ref(),
            Duration::ZERO,
        )
    });
    if after_deadline.is_some() && j.after.is_empty() {
        e.add(
            format!("{p}.after_deadline"),
            "needs `after` commands to run at the deadline",
        );
    }
    after_deadline
}

fn dumps(e: &mut Errors, p: &str, raw: &[RawDump]) -> Vec<Dump> {
    let mut seen = BTreeSet::new();
    let mut dumps = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let dp = format!("{p}.dumps[{i}]");
        if !valid_name(&d.name) {
            e.add(
                format!("{dp}.name"),
                format!(
                    "{:?}: dump names use letters, digits, '-', '_' and '.'",
                    d.name
                ),
            );
        } else if !seen.insert(d.name.clone()) {
            e.add(
                format!("{dp}.name"),
                format!("duplicate dump name {:?}", d.name),
            );
        }
        if let Some(dump) = expand_dump(e, &dp, d) {
            dumps.push(dump);
        }
    }
    dumps
}

fn retention(e: &mut Errors, path: &str, r: &RawRetention) -> Policy {
    let policy = Policy {
        last: r.keep_last,
        hourly: r.keep_hourly,
        daily: r.keep_daily,
        weekly: r.keep_weekly,
        monthly: r.keep_monthly,
        yearly: r.keep_yearly,
    };
    // 0 switches a rule off, as in restic: a policy of zeros keeps nothing by rule
    if policy.keeps_nothing() {
        e.add(
            path,
            "set at least one keep_* above 0 (or remove retention to keep every snapshot)",
        );
    }
    policy
}

fn check(e: &mut Errors, c: &RawCheck, pings: &Pings) -> Option<Check> {
    let healthcheck = pings.ping(e, "check.healthcheck", c.healthcheck.as_ref());
    if let Some(rd) = &c.read_data
        && !valid_read_data(rd)
    {
        e.add(
            "check.read_data",
            format!("{rd:?}: expected a percentage (\"5%\"), \"n/m\" or \"all\""),
        );
    }
    match Schedule::parse(&c.schedule, c.timezone.as_deref()) {
        Ok(schedule) => Some(Check {
            schedule,
            read_data: c.read_data.clone(),
            healthcheck,
        }),
        Err(err) => {
            e.add("check.schedule", err.to_string());
            None
        }
    }
}

/// Why a pinned `host_key` is not in a form the SSH adapter accepts.
#[derive(Debug, thiserror::Error)]
enum PinnedForm {
    #[error(
        "{prefix} fingerprints are the base64 of {len} bytes: {chars} characters, without '=' padding, as `ssh-keygen -lf` prints them (got {got:?})"
    )]
    Fingerprint {
        prefix: &'static str,
        len: usize,
        chars: usize,
        got: String,
    },
    #[error(
        "expected an OpenSSH public key line (\"ssh-ed25519 AAAA…\"), or a SHA256: or SHA512: fingerprint"
    )]
    Shape,
    #[error(
        "not an OpenSSH public key line: the key after {0:?} is not base64 of an {0} key (copy the whole line, e.g. from `burrow setup trust` or `ssh-keyscan`)"
    )]
    Blob(String),
}

/// A pinned `host_key` in a form the SSH adapter accepts (`HostKeyCheck::prepare` in
/// crates/ssh): a `SHA256:` or `SHA512:` fingerprint as `ssh-keygen -l` prints it (the digest
/// in base64 without `=` padding), or an OpenSSH public key line whose key blob names the same
/// algorithm as its first word.
fn pinned_host_key(k: &str) -> Result<(), PinnedForm> {
    for (prefix, len) in [("SHA256:", 32), ("SHA512:", 64)] {
        if let Some(b64) = k.strip_prefix(prefix) {
            return match base64(b64, false) {
                Some(digest) if digest.len() == len => Ok(()),
                _ => Err(PinnedForm::Fingerprint {
                    prefix,
                    len,
                    chars: (len * 8).div_ceil(6),
                    got: k.to_owned(),
                }),
            };
        }
    }
    let mut words = k.split_whitespace();
    let (Some(algo), Some(blob)) = (words.next(), words.next()) else {
        return Err(PinnedForm::Shape);
    };
    // The blob starts with the algorithm name, as a length-prefixed string.
    let named = base64(blob, true).and_then(|b| {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        Some(b.get(4..4 + n)? == algo.as_bytes())
    });
    if named != Some(true) {
        return Err(PinnedForm::Blob(algo.to_owned()));
    }
    Ok(())
}

/// Standard base64 (`+`, `/`); `padded`: `=` padding to a multiple of 4, otherwise none. The
/// unused low bits of the last character must be zero, as the SSH adapter's decoder requires.
fn base64(s: &str, padded: bool) -> Option<Vec<u8>> {
    let data = if padded {
        if !s.len().is_multiple_of(4) {
            return None;
        }
        s.strip_suffix("==").or(s.strip_suffix('=')).unwrap_or(s)
    } else {
        s
    };
    let vals = data
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    if vals.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(vals.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in vals {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (acc == 0).then_some(out)
}

/// Whether `s` is a `read_data` value: `"all"`, a percentage (`"5%"`) or `"n/m"`.
pub fn valid_read_data(s: &str) -> bool {
    if s == "all" {
        return true;
    }
    if let Some(p) = s.strip_suffix('%') {
        return p.parse::<f64>().is_ok_and(|v| v > 0.0 && v <= 100.0);
    }
    if let Some((n, m)) = s.split_once('/') {
        return matches!((n.parse::<u32>(), m.parse::<u32>()), (Ok(n), Ok(m)) if n >= 1 && n <= m);
    }
    false
}

/// Turns a `dumps[]` entry (a command or a preset) into the commands that run on the server.
fn expand_dump(e: &mut Errors, path: &str, d: &RawDump) -> Option<Dump> {
    let set = [
        d.command.is_some(),
        d.postgres.is_some(),
        d.mysql.is_some(),
        d.sqlite.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        e.add(path, "set exactly one of command, postgres, mysql, sqlite");
        return None;
    }
    let (command, restore) = if let Some(c) = &d.command {
        if c.trim().is_empty() {
            e.add(format!("{path}.command"), "empty command");
        }
        (c.clone(), None)
    } else if let Some(pg) = &d.postgres {
        postgres(pg)
    } else if let Some(my) = &d.mysql {
        mysql(my)
    } else if let Some(sq) = &d.sqlite {
        if !sq.path.is_absolute() {
            e.add(
                format!("{path}.sqlite.path"),
                "must be an absolute path on the server",
            );
        }
        sqlite(sq)
    } else {
        return None;
    };
    Some(Dump {
        name: d.name.clone(),
        command,
        restore_command: d.restore_command.clone().or(restore),
    })
}

/// The prefix that runs a preset's command inside a container.
fn docker_exec(container: &Option<String>) -> String {
    match container {
        Some(c) => format!("docker exec -i {} ", shell_quote(c)),
        None => String::new(),
    }
}

/// The dump and the restore command of a `postgres` preset.
fn postgres(pg: &RawPostgres) -> (String, Option<String>) {
    // Connection options, shared by the dump and the restore command.
    let user = [
        pg.host.as_ref().map(|h| format!(" -h {}", shell_quote(h))),
        pg.port.map(|p| format!(" -p {p}")),
        pg.user.as_ref().map(|u| format!(" -U {}", shell_quote(u))),
    ]
    .into_iter()
    .flatten()
    .collect::<String>();
    let db = shell_quote(&pg.database);
    let exec = docker_exec(&pg.container);
    (
        format!("{exec}pg_dump -Fc{user} {db}"),
        Some(format!(
            "{exec}pg_restore --clean --if-exists --no-owner{user} -d {db}"
        )),
    )
}

/// The dump and the restore command of a `mysql` preset.
fn mysql(my: &RawMysql) -> (String, Option<String>) {
    let user = my
        .user
        .as_ref()
        .map(|u| format!(" -u {}", shell_quote(u)))
        .unwrap_or_default();
    let db = shell_quote(&my.database);
    let exec = docker_exec(&my.container);
    (
        format!("{exec}mysqldump --single-transaction --routines --triggers{user} {db}"),
        Some(format!("{exec}mysql{user} {db}")),
    )
}

/// The dump and the restore command of a `sqlite` preset.
fn sqlite(sq: &RawSqlite) -> (String, Option<String>) {
    let db = shell_quote(&sq.path.to_string_lossy());
    // `.backup` takes a consistent copy of a live database (it holds a read transaction);
    // the copy goes through a private temp file because it needs a seekable target.
    (
        format!(
            "t=$(mktemp) && sqlite3 {db} \".backup '$t'\" && cat \"$t\"; r=$?; rm -f \"$t\"; exit $r"
        ),
        Some(format!(
            "t=$(mktemp) && cat > \"$t\" && sqlite3 {db} \".restore '$t'\"; r=$?; rm -f \"$t\"; exit $r"
        )),
    )
}

/// `jobs.NAME.anomaly`: `false`, or limits as percentages.
fn anomaly(e: &mut Errors, key: &str, raw: Option<&RawAnomaly>) -> Anomaly {
    let mut a = Anomaly::default();
    match raw {
        None | Some(RawAnomaly::Enabled(true)) => {}
        Some(RawAnomaly::Enabled(false)) => a.enabled = false,
        Some(RawAnomaly::Limits(l)) => {
            let mut share = |k: &str, v: &Option<String>, into: &mut f64| {
                if let Some(v) = v {
                    match parse_percent(v) {
                        Some(x) => *into = x,
                        None => e.add(
                            format!("{key}.{k}"),
                            format!("{v:?}: expected a percentage from 0% to 100%, like \"50%\""),
                        ),
                    }
                }
            };
            share("max_gone", &l.max_gone, &mut a.max_gone);
            share("max_changed", &l.max_changed, &mut a.max_changed);
            if let Some(n) = l.min_files {
                a.min_files = n;
            }
        }
    }
    a
}

/// `"50%"` as 0.5; `None` outside 0%..=100%.
fn parse_percent(s: &str) -> Option<f64> {
    let v: f64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
    (0.0..=100.0).contains(&v).then_some(v / 100.0)
}
