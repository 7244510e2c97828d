//! How burrow's results read on a terminal: pure functions from the domain types to the text
//! the commands print, and [`Shown`], which every command's result implements, so the binary
//! prints each one the same way. One place per result, so `burrow run`, `burrow check` and
//! the daemon's handed-over runs read alike.

use std::fmt::Write as _;

use burrow_core::bytes::human;
use burrow_core::repository::{
    DamagedSnapshot, NodeKind, RestoreOutcome, SnapshotEntry, SnapshotInfo, SnapshotListing,
};
use burrow_core::retention::Plan;
use burrow_core::run::CHECK_RUN;
use burrow_core::{Exit, RunStatus, RunSummary, short_id};

use crate::browse::{Diff, Dumped, Finds, Listing, Stats};
use crate::doctor::{Finding, Report, Verdict};
use crate::maintain::{Accepted, Created, Forgotten, Pruned};
use crate::restore::{DumpRestored, Planned, RestoreDone, Restored};

/// A command's result as it is printed: its text for people (stdout) or its JSON form
/// (`--json`), the notes that go to stderr either way, and the exit code it means.
pub trait Shown {
    fn json(&self) -> serde_json::Value;
    fn text(&self) -> String;
    /// Warnings and what was left out, for stderr.
    fn notes(&self) -> String {
        String::new()
    }
    fn exit(&self) -> Exit {
        Exit::Ok
    }
}

/// The serde form of `v`, for [`Shown::json`].
fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

impl Shown for RunSummary {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        if self.job == CHECK_RUN {
            check(self)
        } else {
            summary(self)
        }
    }
    fn exit(&self) -> Exit {
        self.status.exit()
    }
}

impl Shown for SnapshotListing {
    /// One array: the snapshots, then the damaged files (`"damaged": true`).
    fn json(&self) -> serde_json::Value {
        let snaps = self.snapshots.iter().map(to_json);
        serde_json::Value::Array(snaps.chain(self.damaged.iter().map(to_json)).collect())
    }
    fn text(&self) -> String {
        snapshots(&self.snapshots)
    }
    fn notes(&self) -> String {
        self.damaged.iter().map(|d| damaged(d) + "\n").collect()
    }
    /// Damaged files cannot be read, so they cannot be told apart by job: they are always
    /// named, and make the exit code 3.
    fn exit(&self) -> Exit {
        if self.damaged.is_empty() {
            Exit::Ok
        } else {
            Exit::Partial
        }
    }
}

impl Shown for Report {
    fn json(&self) -> serde_json::Value {
        to_json(&self.findings)
    }
    fn text(&self) -> String {
        findings(&self.file, &self.findings)
    }
    fn exit(&self) -> Exit {
        if self.findings.iter().any(|f| f.verdict == Verdict::Fail) {
            Exit::Failed
        } else {
            Exit::Ok
        }
    }
}

impl Shown for Created {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        format!(
            "created repository {} at {}\n",
            self.id,
            self.path.display()
        )
    }
}

impl Shown for Pruned {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        format!(
            "pruned {}: data no snapshot references is removed\n",
            self.path.display()
        )
    }
}

impl Shown for Forgotten {
    fn json(&self) -> serde_json::Value {
        to_json(&self.plan)
    }
    fn text(&self) -> String {
        plan(&self.job, &self.plan, self.dry_run)
    }
    fn notes(&self) -> String {
        match &self.resumed {
            Some(Ok(Some(p))) => format!(
                "job {}: retention was paused by the anomaly of snapshot {} ({}); it resumes\n",
                self.job,
                short_id(&p.snapshot),
                p.reason
            ),
            Some(Err(e)) => format!("burrow: {e}\n"),
            Some(Ok(None)) | None => String::new(),
        }
    }
}

impl Shown for Accepted {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"job": self.job, "paused": self.paused.as_ref().map(to_json)})
    }
    fn text(&self) -> String {
        match &self.paused {
            Some(p) => format!(
                "{}: anomaly of snapshot {} accepted ({}); retention resumes at the next run\n",
                self.job,
                short_id(&p.snapshot),
                p.reason
            ),
            None => format!("{}: retention is not paused; nothing to accept\n", self.job),
        }
    }
}

impl Shown for Restored {
    fn json(&self) -> serde_json::Value {
        let mut v = to_json(&self.outcome);
        if let Some(verified) = &self.verified {
            v["verified"] = to_json(verified);
        }
        v
    }
    fn text(&self) -> String {
        let verified = self
            .verified
            .as_ref()
            .filter(|v| v.differ.is_empty())
            .map(|v| {
                format!(
                    "verified: {} file(s), {} read back, equal to the snapshot\n",
                    v.files,
                    human(v.bytes)
                )
            });
        let done = match &self.dump {
            Some(_) if !self.outcome.complete() => String::new(),
            Some(name) => format!(
                "restored dump {name} ({} bytes) to {}\n",
                self.outcome.bytes,
                self.target.join(name).display()
            ),
            None => restored(&self.outcome, &self.target),
        };
        let mut t = done;
        for p in &self.deleted {
            let _ = writeln!(t, "deleted {} (not in the snapshot)", p.display());
        }
        t + verified.as_deref().unwrap_or("")
    }
    fn notes(&self) -> String {
        let mut t = not_restored(&self.outcome);
        for d in &self.not_deleted {
            let _ = writeln!(t, "not deleted: {}: {}", d.path, d.reason);
        }
        for d in self.verified.iter().flat_map(|v| &v.differ) {
            let _ = writeln!(t, "differs: {}: {}", d.path, d.reason);
        }
        if let Some(v) = self.verified.as_ref().filter(|v| !v.differ.is_empty()) {
            let _ = writeln!(
                t,
                "burrow: {} entr{} restored are not as the snapshot holds them (listed above)",
                v.differ.len(),
                if v.differ.len() == 1 { "y" } else { "ies" }
            );
        }
        if let Some(name) = self.dump.as_ref().filter(|_| !self.outcome.complete()) {
            let dest = self.target.join(name);
            let _ = writeln!(
                t,
                "burrow: dump {name} was not restored to {}",
                dest.display()
            );
        }
        t
    }
    /// Partial (3) when entries were left out; a dump is one file, so it failed (1); failed
    /// too when what was written does not read back as the snapshot holds it.
    fn exit(&self) -> Exit {
        if self.verified.as_ref().is_some_and(|v| !v.differ.is_empty()) {
            return Exit::Failed;
        }
        if !self.not_deleted.is_empty() {
            return Exit::Partial;
        }
        match (self.outcome.complete(), &self.dump) {
            (true, _) => Exit::Ok,
            (false, Some(_)) => Exit::Failed,
            (false, None) => Exit::Partial,
        }
    }
}

impl RestoreDone {
    fn shown(&self) -> &dyn Shown {
        match self {
            RestoreDone::Dir(r) => r,
            RestoreDone::Command(r) => r,
            RestoreDone::Planned(p) => p,
        }
    }
}

impl Shown for RestoreDone {
    fn json(&self) -> serde_json::Value {
        self.shown().json()
    }
    fn text(&self) -> String {
        self.shown().text()
    }
    fn notes(&self) -> String {
        self.shown().notes()
    }
    fn exit(&self) -> Exit {
        self.shown().exit()
    }
}

impl Shown for Planned {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        let mut t = String::new();
        for (e, at) in &self.entries {
            let slash = if e.kind == NodeKind::Dir { "/" } else { "" };
            let _ = writeln!(t, "would restore {}{slash}", at.display());
        }
        let _ = writeln!(
            t,
            "snapshot {}: would restore {} file(s), {} dir(s), {} (dry run: nothing was written)",
            short_id(&self.snapshot),
            self.files,
            self.dirs,
            human(self.bytes)
        );
        t
    }
}

impl Shown for DumpRestored {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"dump": self.name, "bytes": self.bytes, "command": self.command, "host": self.host})
    }
    fn text(&self) -> String {
        format!(
            "restored dump {} ({} bytes) with `{}` on {}\n",
            self.name, self.bytes, self.command, self.host
        )
    }
}

impl Shown for Listing {
    /// The snapshot, then its entries (restic's `ls --json` has them as lines).
    fn json(&self) -> serde_json::Value {
        to_json(&self.found)
    }
    fn text(&self) -> String {
        let s = &self.found.snapshot;
        let mut t = format!(
            "snapshot {} of job {} at {} ({}):\n",
            s.short_id,
            s.job.as_deref().unwrap_or("-"),
            s.time,
            s.paths.join(" ")
        );
        for e in &self.found.entries {
            let _ = writeln!(t, "{}", entry_line(e, self.long));
        }
        t
    }
}

/// The file itself went to stdout: nothing more is printed.
impl Shown for Dumped {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        String::new()
    }
}

impl Shown for Stats {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        let mut t = format!(
            "{:<14} {:>9} {:>10} {:>12} {:>12} {:>12} {:>7}\n",
            "job", "snapshots", "files", "newest", "all", "stored", "dedup"
        );
        for j in &self.jobs {
            let ratio = match j.stored_bytes {
                0 => "-".to_owned(),
                n => format!("{:.1}x", j.all_bytes as f64 / n as f64),
            };
            let _ = writeln!(
                t,
                "{:<14} {:>9} {:>10} {:>12} {:>12} {:>12} {ratio:>7}",
                j.job,
                j.snapshots,
                j.files,
                human(j.bytes),
                human(j.all_bytes),
                human(j.stored_bytes)
            );
        }
        t.push_str(
            "(newest: the files of the newest snapshot; all: of every snapshot added up; \
             stored: what the blobs they share take in the repository)\n",
        );
        t
    }
}

impl Shown for Finds {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        let mut t = String::new();
        for f in &self.found {
            let _ = writeln!(
                t,
                "snapshot {} at {}: {} match(es)",
                f.snapshot.short_id,
                f.snapshot.time,
                f.matches.len()
            );
            for e in &f.matches {
                let _ = writeln!(t, "  {}", entry_line(e, true));
            }
        }
        if self.found.is_empty() {
            let _ = writeln!(t, "no snapshot holds a path matching {:?}", self.pattern);
        }
        t
    }
}

impl Shown for Diff {
    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
    fn text(&self) -> String {
        let c = &self.counts;
        let mut t = format!(
            "comparing snapshot {} to {}:\n\n",
            self.before.short_id, self.after.short_id
        );
        for ch in &self.changes {
            let m = serde_json::to_value(ch.modifier).unwrap_or_default();
            let _ = writeln!(t, "{:<5}{}", m.as_str().unwrap_or("?"), ch.path);
        }
        let _ = write!(
            t,
            "\nFiles:  {} new, {} removed, {} changed\nDirs:   {} new, {} removed\n\
             Others: {} new, {} removed\n  Added:   {}\n  Removed: {}\n",
            c.files_added,
            c.files_removed,
            c.files_changed,
            c.dirs_added,
            c.dirs_removed,
            c.others_added,
            c.others_removed,
            human(c.bytes_added),
            human(c.bytes_removed)
        );
        t
    }
}

/// One entry as `ls` prints it: its path, or with `long` as `ls -l` does (restic's layout):
/// `-rw-r--r--  uid  gid  size  mtime  path [-> target]`.
fn entry_line(e: &SnapshotEntry, long: bool) -> String {
    let link = e
        .link_target
        .as_deref()
        .map(|l| format!(" -> {l}"))
        .unwrap_or_default();
    if !long {
        return format!("{}{link}", e.path);
    }
    let time = e.mtime.as_deref().unwrap_or("-");
    let time = time.get(..19).unwrap_or(time).replace('T', " ");
    format!(
        "{} {:>5} {:>5} {:>10} {time} {}{link}",
        permissions(e.kind, e.mode),
        e.uid,
        e.gid,
        e.size,
        e.path
    )
}

/// `drwxr-xr-x` for a kind and permission bits (setuid, setgid and sticky as `s`, `s`, `t`).
fn permissions(kind: NodeKind, mode: u32) -> String {
    let mut p = String::from(match kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'L',
        NodeKind::Dev => 'D',
        NodeKind::Chardev => 'c',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 'S',
    });
    for (i, who) in [(6, 0o4000), (3, 0o2000), (0, 0o1000)] {
        let bits = (mode >> i) & 7;
        p.push(if bits & 4 != 0 { 'r' } else { '-' });
        p.push(if bits & 2 != 0 { 'w' } else { '-' });
        let special = mode & who != 0;
        p.push(match (bits & 1 != 0, special, i) {
            (true, true, 0) => 't',
            (false, true, 0) => 'T',
            (true, true, _) => 's',
            (false, true, _) => 'S',
            (true, false, _) => 'x',
            (false, false, _) => '-',
        });
    }
    p
}

/// A run's (or the check's) summary: the status line, the counts, what was not backed up.
pub fn summary(s: &RunSummary) -> String {
    let mut t = String::new();
    match s.status {
        RunStatus::Ok | RunStatus::Partial | RunStatus::Warning | RunStatus::Anomaly => {
            let id = s.snapshot_id.as_deref().map_or("-", short_id);
            let _ = writeln!(t, "{}: {} — snapshot {id}", s.job, s.status.as_str());
            let _ = writeln!(
                t,
                "  files: {} new, {} changed, {} unmodified; {} read, {} added; {:.1}s",
                s.files_new,
                s.files_changed,
                s.files_unmodified,
                human(s.bytes_read),
                human(s.bytes_added),
                s.duration_s
            );
        }
        RunStatus::Failed | RunStatus::Skipped => {
            let reason = s.reason.as_deref().unwrap_or("");
            let _ = writeln!(t, "{}: {} — {reason}", s.job, s.status.as_str());
        }
    }
    for e in &s.errors {
        if e.path == "anomaly" {
            let _ = writeln!(t, "  anomaly: {}", e.message);
        } else {
            let _ = writeln!(t, "  not backed up: {}: {}", e.path, e.message);
        }
    }
    if s.snapshot_id.is_some()
        && let Some(r) = &s.reason
    {
        let _ = writeln!(t, "  {r}");
    }
    t
}

/// `burrow check`'s result: ok with its time, or the reason and every problem found.
pub fn check(s: &RunSummary) -> String {
    let mut t = match s.status {
        RunStatus::Ok => format!("check: ok — no errors found ({:.1}s)\n", s.duration_s),
        _ => format!(
            "check: {} — {}\n",
            s.status.as_str(),
            s.reason.as_deref().unwrap_or("")
        ),
    };
    for e in &s.errors {
        let _ = writeln!(t, "  problem: {}: {}", e.path, e.message);
    }
    t
}

/// `burrow doctor`'s findings for the config `file`: one line each, the fix under it.
pub fn findings(file: &std::path::Path, findings: &[Finding]) -> String {
    let mut t = format!("{}:\n", file.display());
    for f in findings {
        let v = match f.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(t, "  {v:<5} {:<16} {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(t, "  {:<5} {:<16} fix: {fix}", "", "");
        }
    }
    t
}

/// `burrow snapshots`: one line per snapshot, oldest first, and the count.
pub fn snapshots(list: &[SnapshotInfo]) -> String {
    let mut t = format!(
        "{:<10} {:<25} {:<14} {:<12} {:>10} {:>12}  paths\n",
        "id", "time", "job", "host", "files", "size"
    );
    for s in list {
        let _ = writeln!(
            t,
            "{:<10} {:<25} {:<14} {:<12} {:>10} {:>12}  {}{}",
            s.short_id,
            s.time,
            s.job.as_deref().unwrap_or("-"),
            s.host,
            s.files.map_or("-".into(), |f| f.to_string()),
            s.bytes.map_or("-".into(), human),
            s.paths.join(" "),
            if s.partial { "  [partial]" } else { "" }
        );
    }
    let _ = writeln!(t, "{} snapshot(s)", list.len());
    t
}

/// A snapshot file that cannot be read, and what to do about it (on stderr).
pub fn damaged(d: &DamagedSnapshot) -> String {
    format!(
        "damaged: snapshot file {} cannot be read ({}); if it stays so, delete it: rm {}",
        d.file, d.error, d.path
    )
}

/// A retention plan as `burrow forget` prints it: what is kept and why, what is removed.
pub fn plan(job: &str, plan: &Plan, dry_run: bool) -> String {
    let mut t = String::new();
    for d in &plan.keep {
        let reasons = d.reasons.join(", ");
        let _ = writeln!(t, "keep    {}  {}  {reasons}", short_id(&d.id), d.time);
    }
    for d in &plan.remove {
        let _ = writeln!(t, "remove  {}  {}", short_id(&d.id), d.time);
    }
    let (kept, n) = (plan.keep.len(), plan.remove.len());
    let _ = if dry_run {
        writeln!(
            t,
            "job {job}: {kept} kept, {n} would be removed (dry run: nothing changed)"
        )
    } else if n == 0 {
        writeln!(t, "job {job}: {kept} kept, nothing to remove")
    } else {
        writeln!(
            t,
            "job {job}: {kept} kept, {n} removed; `burrow prune` frees their data"
        )
    };
    t
}

/// What a restore wrote into `target` (on stdout).
pub fn restored(out: &RestoreOutcome, target: &std::path::Path) -> String {
    format!(
        "restored snapshot {} into {}: {} file(s), {} dir(s), {}\n",
        short_id(&out.snapshot_id),
        target.display(),
        out.files,
        out.dirs,
        human(out.bytes)
    )
}

/// What a restore did not write, one line each with the reason, then how many (on stderr);
/// empty when everything was written.
pub fn not_restored(out: &RestoreOutcome) -> String {
    let mut t = String::new();
    for r in &out.refused {
        let _ = writeln!(t, "refused: {}: {}", r.path, r.reason);
    }
    for f in &out.failed {
        let _ = writeln!(t, "failed: {}: {}", f.path, f.reason);
    }
    let n = out.refused.len() + out.failed.len();
    if n > 0 {
        let _ = writeln!(
            t,
            "burrow: {n} entr{} not restored (listed above); everything else was",
            if n == 1 { "y" } else { "ies" }
        );
    }
    t
}

/// `burrow check-config`: the file is valid, and what it asks for.
pub fn config(cfg: &burrow_config::Config) -> String {
    let enabled = cfg.jobs.values().filter(|j| j.enabled).count();
    let mut t = format!(
        "{}: ok ({} server(s), {} job(s), {} enabled)\n",
        cfg.file.display(),
        cfg.servers.len(),
        cfg.jobs.len(),
        enabled
    );
    for job in cfg.jobs.values() {
        let when = match &job.schedule {
            Some(s) => format!("schedule {:?}", s.expr()),
            None => "runs only when asked".into(),
        };
        let _ = writeln!(
            t,
            "  job {}{}: {}, {} path(s), {} dump(s), {when}",
            job.name,
            if job.enabled { "" } else { " (disabled)" },
            job.server
                .as_deref()
                .map_or("local".to_owned(), |s| format!("server {s}")),
            job.paths.len(),
            job.dumps.len(),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_core::RunError;
    use burrow_core::retention::Decision;

    #[test]
    fn a_failed_run_says_why_and_a_saved_one_counts() {
        let e = RunError::temporary("cannot connect to server vps");
        let failed = RunSummary::without_snapshot("web", "r", "t", &e, 1.0);
        assert_eq!(
            summary(&failed),
            "web: failed — cannot connect to server vps\n"
        );
        let mut ok = RunSummary::new("web", "r", "t", RunStatus::Warning, 2.25);
        ok.snapshot_id = Some("0123456789abcdef".into());
        ok.files_new = 3;
        ok.bytes_read = 2048;
        ok.reason = Some("retention failed (the new snapshot is safe): locked".into());
        let text = summary(&ok);
        assert!(
            text.starts_with("web: warning — snapshot 01234567\n"),
            "{text}"
        );
        assert!(
            text.contains("  files: 3 new, 0 changed, 0 unmodified;"),
            "{text}"
        );
        assert!(text.ends_with("  retention failed (the new snapshot is safe): locked\n"));
    }

    #[test]
    fn a_plan_names_what_stays_and_what_goes() {
        let d = |id: &str, reasons: &[&str]| Decision {
            id: id.into(),
            time: "2026-12-01T03:00:00+00:00".into(),
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        };
        let p = Plan {
            keep: vec![d("aaaaaaaaaaaa", &["last snapshot"])],
            remove: vec![d("bbbbbbbbbbbb", &[])],
        };
        let text = plan("web", &p, true);
        assert_eq!(
            text,
            "keep    aaaaaaaa  2026-12-01T03:00:00+00:00  last snapshot\n\
             remove  bbbbbbbb  2026-12-01T03:00:00+00:00\n\
             job web: 1 kept, 1 would be removed (dry run: nothing changed)\n"
        );
    }
}
