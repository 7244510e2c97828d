//! `burrow doctor`: checks this machine for what the configured jobs need, one finding per
//! check, each problem with the command that fixes it.
//!
//! It reads and asks, and never changes anything: nothing is mounted, unlocked, created or
//! sent. [`gather`] collects the facts (files, the time zone, stock restic, and what the
//! adapters found: UDisks2 over D-Bus, statvfs, the HTTP client, in [`Probes`]); [`judge`]
//! turns them into findings and is a pure function, so every verdict is tested without the
//! machine it describes.

use std::io;
use std::path::{Path, PathBuf};

use burrow_config::Config;
use burrow_core::bytes::human;
use burrow_core::disk::{DiskError, DiskState};
use serde::Serialize;

/// Below this, the backup volume is reported as nearly full (prune needs room to rewrite packs).
pub const MIN_VOLUME_FREE: u64 = 2 << 30;
/// Below this, the state directory (run history, spooled dumps of local jobs) is reported.
pub const MIN_STATE_FREE: u64 = 100 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Works now, or will once the user plugs something in; worth knowing.
    Warn,
    /// Something the configured jobs need is missing: runs fail until it is fixed.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Short name of the check (`udisks2`, `luks`, `ca-certificates`, …).
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it, for `warn` and `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The machine's local time zone, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalZone {
    /// From `TZ` or `/etc/localtime`.
    Named(String),
    /// No zone can be read: jobs without `timezone` run on UTC. The reason says why.
    FallsBackToUtc(String),
}

/// What [`gather`] found out. Every field is a plain fact, so tests can state any machine.
#[derive(Debug)]
pub struct Facts {
    /// `None` without `disk` in the config. `Err`: UDisks2 could not be reached (why).
    pub udisks: Option<Result<DiskState, DiskError>>,
    /// The libblockdev crypto plugin UDisks2 needs for LUKS, if installed.
    pub luks_plugin: Option<PathBuf>,
    /// `None` when no ping URL is configured. `Err`: the HTTP client cannot be built (why).
    pub http_client: Option<Result<(), BoxError>>,
    pub local_zone: LocalZone,
    /// Free bytes on the filesystem of the state directory (or its nearest existing parent).
    pub state_free: io::Result<u64>,
    /// Free bytes where the repository lives, without `disk` (with it: `udisks`).
    pub repo_free: Option<io::Result<u64>>,
    /// Stock restic on PATH (reads the repository without burrow).
    pub restic: Option<PathBuf>,
}

/// An adapter's error, as doctor shows it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What only the adapters can tell, asked by the binary that holds them: read-only, and a
/// slow or missing UDisks2 is a finding, not an error.
pub struct Probes {
    /// UDisks2's view of the disks, asked only when the config has `disk`.
    pub udisks: Option<Result<DiskState, DiskError>>,
    /// The libblockdev crypto plugin UDisks2 needs for LUKS, if installed.
    pub luks_plugin: Option<PathBuf>,
    /// Whether the HTTP client for the pings can be built, asked only when
    /// [`pings_configured`].
    pub http_client: Option<Result<(), BoxError>>,
    /// Free bytes of the filesystem holding a path (statvfs).
    pub free_space: fn(&Path) -> io::Result<u64>,
}

/// Some job, the check or the heartbeat pings healthchecks.
pub fn pings_configured(cfg: &Config) -> bool {
    cfg.jobs.values().any(|j| j.healthcheck.is_some())
        || cfg.check.as_ref().is_some_and(|c| c.healthcheck.is_some())
        || cfg.healthchecks.heartbeat.is_some()
}

/// Asks the machine what the probes did not. Read-only.
pub fn gather(cfg: &Config, probes: Probes) -> Facts {
    let free = probes.free_space;
    Facts {
        udisks: probes.udisks,
        luks_plugin: probes.luks_plugin,
        http_client: probes.http_client,
        local_zone: local_zone(),
        state_free: free_near(&cfg.state_dir, free),
        repo_free: cfg
            .disk
            .is_none()
            .then(|| free_near(&cfg.repository.path, free)),
        restic: on_path("restic"),
    }
}

/// Every check, in the order a user fixes them: the services, the devices, then the rest.
/// `burrow doctor`'s findings for the config file `file`.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: std::path::PathBuf,
    pub findings: Vec<Finding>,
}

/// Gathers the facts with `probes` and judges them.
pub fn report(cfg: &Config, probes: Probes) -> Report {
    Report {
        file: cfg.file.clone(),
        findings: judge(cfg, &gather(cfg, probes)),
    }
}

pub fn judge(cfg: &Config, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    disk_findings(cfg, f, &mut out);
    out.push(match &f.http_client {
        None => Finding::ok(
            "ca-certificates",
            "not needed: no healthcheck ping is configured",
        ),
        Some(Ok(())) => Finding::ok("ca-certificates", "the HTTP client for pings builds"),
        Some(Err(e)) => Finding::fail(
            "ca-certificates",
            format!("{e}; backups still run, but no ping is sent"),
            "apt-get install ca-certificates",
        ),
    });
    out.push(zone_finding(cfg, &f.local_zone));
    out.push(match &f.state_free {
        Ok(n) if *n < MIN_STATE_FREE => Finding::warn(
            "state-dir",
            format!("{}: only {} free", cfg.state_dir.display(), human(*n)),
            "free space on that filesystem (the run history and schedule state live there)",
        ),
        Ok(n) => Finding::ok(
            "state-dir",
            format!("{}: {} free", cfg.state_dir.display(), human(*n)),
        ),
        Err(e) => Finding::fail(
            "state-dir",
            format!("{}: {e}", cfg.state_dir.display()),
            "make state_dir a writable directory",
        ),
    });
    if let Some(free) = &f.repo_free {
        out.push(volume_space(&cfg.repository.path, free));
    }
    out.push(match &f.restic {
        Some(p) => Finding::ok(
            "restic",
            format!("{} (reads the repository without burrow)", p.display()),
        ),
        None => Finding::warn(
            "restic",
            "stock restic is not installed: the repository can only be read through burrow here",
            "apt-get install restic (optional; any machine with restic reads the repository)",
        ),
    });
    out
}

fn disk_findings(cfg: &Config, f: &Facts, out: &mut Vec<Finding>) {
    let Some(disk) = &cfg.disk else {
        out.push(Finding::ok(
            "udisks2",
            "not needed: no `disk` in the config (the repository is a plain directory)",
        ));
        return;
    };
    let state = match &f.udisks {
        Some(Ok(s)) => {
            out.push(Finding::ok("udisks2", "reachable on the system bus"));
            Some(s)
        }
        Some(Err(e)) => {
            out.push(Finding::fail(
                "udisks2",
                format!("UDisks2 is not reachable: {e}"),
                "apt-get install udisks2 dbus; systemctl start udisks2",
            ));
            None
        }
        // Not asked (gather always asks when `disk` is configured).
        None => None,
    };
    // A plain (unencrypted) backup filesystem needs no plugin; unknown counts as LUKS, the
    // documented set-up.
    let encrypted = state.is_none_or(|s| !s.disk_present || s.encrypted);
    out.push(match (&f.luks_plugin, encrypted) {
        (Some(p), _) => Finding::ok("luks", format!("UDisks2's LUKS plugin: {}", p.display())),
        (None, false) => Finding::ok("luks", "not needed: the backup disk is not encrypted"),
        (None, true) => Finding::fail(
            "luks",
            "UDisks2's LUKS plugin (libbd_crypto.so.2 or .so.3) is not installed: the backup \
             disk cannot be unlocked",
            "apt-get install libblockdev-crypto2 (Debian 12) or libblockdev-crypto3 (Debian 13); \
             systemctl restart udisks2",
        ),
    });
    let Some(s) = state else { return };
    if let Some(key) = &disk.key {
        out.push(match (&s.key_present, &s.key_mount) {
            (false, _) => Finding::warn(
                "key-stick",
                format!("not plugged in (filesystem UUID {})", key.fs_uuid),
                "plug in the key stick; runs are skipped (exit 75) until then",
            ),
            (true, Some(mp)) => {
                Finding::ok("key-stick", format!("present, mounted at {}", mp.display()))
            }
            (true, None) => Finding::ok("key-stick", "present (mounted read-only when needed)"),
        });
    }
    if !s.disk_present {
        out.push(Finding::warn(
            "backup-disk",
            format!("not plugged in (UUID {})", disk.backup_uuid),
            "plug in the backup disk; runs are skipped (exit 75) until then",
        ));
        return;
    }
    let how = match (s.encrypted, s.unlocked, &s.mount_point) {
        (_, _, Some(mp)) => format!("present, mounted at {}", mp.display()),
        (true, false, _) => {
            "present, locked (unlocked with the key file when a run needs it)".into()
        }
        _ => "present, not mounted (mounted when a run needs it)".into(),
    };
    out.push(Finding::ok("backup-disk", how));
    if let (Some(mp), Some(free)) = (&s.mount_point, s.free_bytes) {
        out.push(volume_space(mp, &Ok(free)));
    }
}

fn volume_space(at: &Path, free: &io::Result<u64>) -> Finding {
    match free {
        Ok(n) if *n < MIN_VOLUME_FREE => Finding::warn(
            "free-space",
            format!("{}: only {} free", at.display(), human(*n)),
            "forget and prune old snapshots (`burrow forget JOB`, `burrow prune`) or use a larger disk",
        ),
        Ok(n) => Finding::ok(
            "free-space",
            format!("{}: {} free", at.display(), human(*n)),
        ),
        Err(e) => Finding::warn(
            "free-space",
            format!("{}: {e}", at.display()),
            "check that the repository's filesystem is mounted",
        ),
    }
}

fn zone_finding(cfg: &Config, zone: &LocalZone) -> Finding {
    let local_jobs: Vec<&str> = cfg
        .jobs
        .values()
        .filter(|j| j.schedule.as_ref().is_some_and(|s| s.zone_name().is_none()))
        .map(|j| j.name.as_str())
        .collect();
    match zone {
        LocalZone::Named(z) => Finding::ok("time-zone", format!("the machine's local time is {z}")),
        LocalZone::FallsBackToUtc(why) if local_jobs.is_empty() => Finding::ok(
            "time-zone",
            format!(
                "{why}: local time is UTC, but every schedule names its own time zone (built in, \
                 tzdata not needed)"
            ),
        ),
        LocalZone::FallsBackToUtc(why) => Finding::warn(
            "time-zone",
            format!(
                "{why}: the schedules of {} (no `timezone`) run on UTC",
                local_jobs.join(", ")
            ),
            "apt-get install tzdata; timedatectl set-timezone Europe/Paris (your zone), or give \
             each job a `timezone`",
        ),
    }
}

/// The zone chrono's `Local` uses: `TZ`, else `/etc/localtime`, else UTC.
fn local_zone() -> LocalZone {
    if let Some(tz) = std::env::var_os("TZ").filter(|t| !t.is_empty()) {
        return LocalZone::Named(format!("{} (from TZ)", tz.to_string_lossy()));
    }
    zone_of(Path::new("/etc/localtime"))
}

fn zone_of(localtime: &Path) -> LocalZone {
    let target = std::fs::read_link(localtime).ok();
    match std::fs::metadata(localtime) {
        Ok(_) => LocalZone::Named(match &target {
            // /usr/share/zoneinfo/Europe/Paris → Europe/Paris
            Some(t) => {
                let t = t.to_string_lossy();
                t.split_once("zoneinfo/")
                    .map_or(t.to_string(), |(_, z)| z.to_owned())
            }
            None => format!("the zone in {}", localtime.display()),
        }),
        Err(_) => LocalZone::FallsBackToUtc(match target {
            Some(t) => format!(
                "{} points to {}, which does not exist (tzdata is not installed)",
                localtime.display(),
                t.display()
            ),
            None => format!("{} does not exist", localtime.display()),
        }),
    }
}

/// Free space of the filesystem holding `path`, or of its nearest existing parent (a state
/// directory not created yet lands there).
fn free_near(path: &Path, free_space: fn(&Path) -> io::Result<u64>) -> io::Result<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            return free_space(p);
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no part of the path exists",
                ));
            }
        }
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        burrow_config::load(&p).unwrap()
    }

    const DISK: &str = "\
repository: {path: burrow, password_file: pw}
state_dir: /var/lib/burrow
disk:
  key: {fs_uuid: key-uuid, key_file: file}
  backup: {uuid: disk-uuid}
jobs:
  a: {paths: [/x], schedule: \"0 3 * * *\"}
  b: {paths: [/y], schedule: \"0 4 * * *\", timezone: Europe/Paris}
";

    fn healthy() -> Facts {
        Facts {
            udisks: Some(Ok(DiskState {
                key_present: true,
                disk_present: true,
                encrypted: true,
                unlocked: true,
                mount_point: Some("/media/root/burrow".into()),
                free_bytes: Some(100 << 30),
                ..Default::default()
            })),
            luks_plugin: Some("/usr/lib/x86_64-linux-gnu/libbd_crypto.so.2".into()),
            http_client: None,
            local_zone: LocalZone::Named("Europe/Paris".into()),
            state_free: Ok(10 << 30),
            repo_free: None,
            restic: Some("/usr/bin/restic".into()),
        }
    }

    fn verdict(findings: &[Finding], check: &str) -> (Verdict, String) {
        let f = findings
            .iter()
            .find(|f| f.check == check)
            .unwrap_or_else(|| panic!("no {check} finding in {findings:#?}"));
        (
            f.verdict,
            format!("{} / {}", f.detail, f.fix.clone().unwrap_or_default()),
        )
    }

    #[test]
    fn a_healthy_machine_has_only_ok_findings() {
        let cfg = config(DISK);
        let out = judge(&cfg, &healthy());
        assert!(out.iter().all(|f| f.verdict == Verdict::Ok), "{out:#?}");
        let checks: Vec<_> = out.iter().map(|f| f.check).collect();
        assert_eq!(
            checks,
            [
                "udisks2",
                "luks",
                "key-stick",
                "backup-disk",
                "free-space",
                "ca-certificates",
                "time-zone",
                "state-dir",
                "restic"
            ]
        );
    }

    #[test]
    fn each_missing_piece_fails_with_its_fix() {
        let cfg = config(DISK);
        let mut f = healthy();
        f.udisks = Some(Err(DiskError::Failed(
            "cannot connect to the system D-Bus".into(),
        )));
        let out = judge(&cfg, &f);
        let (v, text) = verdict(&out, "udisks2");
        assert_eq!(v, Verdict::Fail);
        assert!(text.contains("apt-get install udisks2"), "{text}");
        // without UDisks2 the devices are unknown: no key-stick or disk findings
        assert!(out.iter().all(|f| f.check != "key-stick"), "{out:#?}");

        let mut f = healthy();
        f.luks_plugin = None;
        let (v, text) = verdict(&judge(&cfg, &f), "luks");
        assert_eq!(v, Verdict::Fail);
        assert!(text.contains("libblockdev-crypto2"), "{text}");

        // a plain filesystem as the backup disk needs no plugin
        if let Some(Ok(s)) = &mut f.udisks {
            s.encrypted = false;
        }
        assert_eq!(verdict(&judge(&cfg, &f), "luks").0, Verdict::Ok);

        let mut f = healthy();
        f.http_client = Some(Err(
            "cannot build the HTTP client: no CA certificates".into()
        ));
        let (v, text) = verdict(&judge(&cfg, &f), "ca-certificates");
        assert_eq!(v, Verdict::Fail);
        assert!(text.contains("apt-get install ca-certificates"), "{text}");
    }

    #[test]
    fn absent_devices_and_full_filesystems_are_warnings() {
        let cfg = config(DISK);
        let mut f = healthy();
        f.udisks = Some(Ok(DiskState::default()));
        let out = judge(&cfg, &f);
        let (v, text) = verdict(&out, "key-stick");
        assert_eq!(v, Verdict::Warn);
        assert!(text.contains("key-uuid"), "{text}");
        let (v, text) = verdict(&out, "backup-disk");
        assert_eq!(v, Verdict::Warn);
        assert!(text.contains("disk-uuid"), "{text}");
        // an absent disk may be LUKS: the plugin is still required
        f.luks_plugin = None;
        assert_eq!(verdict(&judge(&cfg, &f), "luks").0, Verdict::Fail);

        let mut f = healthy();
        if let Some(Ok(s)) = &mut f.udisks {
            s.free_bytes = Some(1 << 30);
        }
        f.state_free = Ok(1 << 20);
        let out = judge(&cfg, &f);
        assert_eq!(verdict(&out, "free-space").0, Verdict::Warn);
        assert!(verdict(&out, "free-space").1.contains("1.0 GiB"));
        assert_eq!(verdict(&out, "state-dir").0, Verdict::Warn);
    }

    #[test]
    fn a_missing_zone_matters_only_for_schedules_without_a_timezone() {
        let cfg = config(DISK);
        let mut f = healthy();
        f.local_zone = LocalZone::FallsBackToUtc("/etc/localtime does not exist".into());
        let (v, text) = verdict(&judge(&cfg, &f), "time-zone");
        assert_eq!(v, Verdict::Warn);
        assert!(
            text.contains("schedules of a ") && !text.contains(" b "),
            "{text}"
        );
        assert!(text.contains("tzdata"), "{text}");

        let cfg = config(&DISK.replace(
            "schedule: \"0 3 * * *\"}",
            "schedule: \"0 3 * * *\", timezone: UTC}",
        ));
        assert_eq!(verdict(&judge(&cfg, &f), "time-zone").0, Verdict::Ok);
    }

    #[test]
    fn without_disk_the_repository_directory_is_checked() {
        let cfg = config(
            "repository: {path: /srv/backup, password_file: /dev/null}\njobs:\n  a: {paths: [/x]}\n",
        );
        let mut f = healthy();
        f.udisks = None;
        f.luks_plugin = None;
        f.repo_free = Some(Ok(1 << 20));
        let out = judge(&cfg, &f);
        assert!(out.iter().all(|f| f.check != "luks"), "{out:#?}");
        assert_eq!(verdict(&out, "udisks2").0, Verdict::Ok);
        let (v, text) = verdict(&out, "free-space");
        assert_eq!(v, Verdict::Warn);
        assert!(text.contains("/srv/backup"), "{text}");
    }

    #[test]
    fn the_zone_comes_from_the_localtime_link() {
        let d = tempfile::tempdir().unwrap();
        let zi = d.path().join("usr/share/zoneinfo/Europe");
        std::fs::create_dir_all(&zi).unwrap();
        std::fs::write(zi.join("Paris"), b"TZif").unwrap();
        let lt = d.path().join("localtime");
        std::os::unix::fs::symlink(zi.join("Paris"), &lt).unwrap();
        assert_eq!(zone_of(&lt), LocalZone::Named("Europe/Paris".into()));
        std::fs::remove_file(zi.join("Paris")).unwrap();
        let LocalZone::FallsBackToUtc(why) = zone_of(&lt) else {
            panic!()
        };
        assert!(why.contains("tzdata is not installed"), "{why}");
        assert!(matches!(
            zone_of(&d.path().join("nothing")),
            LocalZone::FallsBackToUtc(w) if w.contains("does not exist")
        ));
    }
}
