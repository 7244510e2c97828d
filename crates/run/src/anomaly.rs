//! The anomaly guard: a run whose snapshot looks nothing like the one before it.
//!
//! A wiped or ransomed server, or a volume that was not mounted on it, gives a run that reads
//! fine and stores a snapshot with nothing (or garbage) in it. Left alone, retention then
//! forgets the last good snapshots one run at a time. The guard compares the new snapshot
//! with its parent; when it looks wrong the snapshot is still stored (it may be the truth),
//! tagged `anomaly`, the run ends with its own status, and retention of that job is paused
//! until the user looks: `burrow accept JOB` (the change was real) or `burrow forget JOB`
//! (apply the policy by hand). The pause lives in `state_dir`; the newest complete snapshot
//! without the tag is protected from retention in any case (`Repository::forget`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burrow_config::Anomaly;
use burrow_core::repository::PendingCounts;
use serde::{Deserialize, Serialize};

/// Why a snapshot looks anomalous, or `None` when it looks like its parent's successor.
pub fn judge(c: &PendingCounts, t: &Anomaly) -> Option<String> {
    if !t.enabled {
        return None;
    }
    if c.files == 0 {
        return Some(
            "the snapshot holds no files: was everything deleted on the server, or is a \
             volume not mounted there?"
                .into(),
        );
    }
    let parent = c.parent_files?;
    if parent < t.min_files {
        return None;
    }
    let kept = c.files_changed + c.files_unmodified;
    let gone = parent.saturating_sub(kept);
    if gone as f64 > t.max_gone * parent as f64 {
        return Some(format!(
            "{gone} of the {parent} files of the previous snapshot are gone (more than {}%)",
            percent(t.max_gone)
        ));
    }
    if c.files_changed as f64 > t.max_changed * parent as f64 {
        return Some(format!(
            "{} of the {parent} files of the previous snapshot changed (more than {}%)",
            c.files_changed,
            percent(t.max_changed)
        ));
    }
    None
}

fn percent(share: f64) -> String {
    format!("{}", (share * 100.0).round())
}

/// One job whose retention is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// The snapshot that was tagged `anomaly`.
    pub snapshot: String,
    /// RFC 3339.
    pub since: String,
    pub reason: String,
}

/// `state_dir/retention-paused.json`: the jobs whose retention waits for the user.
pub struct PauseFile {
    path: PathBuf,
}

/// Why the pause file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("{} is damaged: {source}", path.display())]
    Damaged {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PauseFile {
    pub fn new(state_dir: &Path) -> Self {
        PauseFile {
            path: state_dir.join("retention-paused.json"),
        }
    }

    /// The paused jobs. A file that cannot be read or parsed pauses nothing but is reported:
    /// retention is still bounded by the protected newest good snapshot.
    pub fn load(&self) -> Result<BTreeMap<String, Paused>, PauseError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| PauseError::Damaged {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(PauseError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn get(&self, job: &str) -> Result<Option<Paused>, PauseError> {
        Ok(self.load()?.remove(job))
    }

    pub fn pause(&self, job: &str, p: Paused) -> Result<(), PauseError> {
        let mut all = self.load().unwrap_or_default();
        all.insert(job.to_owned(), p);
        self.save(&all)
    }

    /// Resumes retention of `job`; returns what was paused.
    pub fn resume(&self, job: &str) -> Result<Option<Paused>, PauseError> {
        let mut all = self.load()?;
        let was = all.remove(job);
        if was.is_some() {
            self.save(&all)?;
        }
        Ok(was)
    }

    fn save(&self, all: &BTreeMap<String, Paused>) -> Result<(), PauseError> {
        // A map of strings always serialises.
        let mut bytes = serde_json::to_vec_pretty(all).unwrap_or_default();
        bytes.push(b'\n');
        burrow_core::fsutil::write_atomic(&self.path, &bytes).map_err(|source| PauseError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(files: u64, changed: u64, unmodified: u64, parent: Option<u64>) -> PendingCounts {
        PendingCounts {
            files,
            files_new: files - changed - unmodified,
            files_changed: changed,
            files_unmodified: unmodified,
            parent_files: parent,
        }
    }

    #[test]
    fn an_empty_snapshot_is_an_anomaly_even_without_a_parent() {
        let t = Anomaly::default();
        assert!(
            judge(&counts(0, 0, 0, None), &t)
                .unwrap()
                .contains("no files")
        );
        assert!(judge(&counts(0, 0, 0, Some(500)), &t).is_some());
        assert_eq!(judge(&counts(3, 0, 0, None), &t), None);
    }

    #[test]
    fn most_files_gone_or_changed_is_an_anomaly() {
        let t = Anomaly::default();
        // 1000 files before; 400 remain (unchanged): 600 gone
        let r = judge(&counts(400, 0, 400, Some(1000)), &t).unwrap();
        assert!(r.contains("600 of the 1000"), "{r}");
        // half gone is still normal (the limit is "more than")
        assert_eq!(judge(&counts(500, 0, 500, Some(1000)), &t), None);
        // ransomware: every file rewritten
        let r = judge(&counts(1000, 900, 100, Some(1000)), &t).unwrap();
        assert!(
            r.contains("900 of the 1000 files") && r.contains("changed"),
            "{r}"
        );
        // a normal night
        assert_eq!(judge(&counts(1010, 30, 970, Some(1000)), &t), None);
    }

    #[test]
    fn small_jobs_and_disabled_guards_only_check_for_emptiness() {
        let t = Anomaly::default();
        // 4 dumps that change every night
        assert_eq!(judge(&counts(4, 4, 0, Some(4)), &t), None);
        let off = Anomaly {
            enabled: false,
            ..Anomaly::default()
        };
        assert_eq!(judge(&counts(0, 0, 0, Some(1000)), &off), None);
    }

    #[test]
    fn the_pause_file_round_trips_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let f = PauseFile::new(tmp.path());
        assert_eq!(f.get("j").unwrap(), None);
        let p = Paused {
            snapshot: "abc".into(),
            since: "2026-01-01T00:00:00Z".into(),
            reason: "r".into(),
        };
        f.pause("j", p.clone()).unwrap();
        f.pause("k", p.clone()).unwrap();
        assert_eq!(f.get("j").unwrap(), Some(p.clone()));
        assert_eq!(f.resume("j").unwrap(), Some(p));
        assert_eq!(f.get("j").unwrap(), None);
        assert!(f.get("k").unwrap().is_some());
        std::fs::write(tmp.path().join("retention-paused.json"), "{").unwrap();
        assert!(f.load().unwrap_err().to_string().contains("damaged"));
    }
}
