//! Database dumps: each command's stdout is spooled to a file on the backup volume, its exit
//! status checked, and only then does it enter the snapshot as `/burrow-dumps/<name>` with
//! its real size. (A stream archived directly would get size 0 in its node, and stock
//! `restic restore` would then write an empty file.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use burrow_config::Job;
use burrow_core::local::FileContent;
use burrow_core::source::{Entry, EntryKind, Meta, Time};
use burrow_core::{Problems, RunError};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::log::RunLog;
use burrow_core::exec::Exec;

/// Where dumps appear in a snapshot.
pub const DUMPS_ROOT: &str = "/burrow-dumps";

pub fn dump_path(name: &str) -> PathBuf {
    Path::new(DUMPS_ROOT).join(name)
}

/// The spooled dumps of one run; the spool directory is removed when this is dropped.
pub struct Spooled {
    dir: PathBuf,
    files: Vec<(String, PathBuf, u64)>,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Spooled {
    /// The walk entries for the dumps that succeeded (the `/burrow-dumps` directory first).
    pub fn entries(&self, bytes_read: &Arc<AtomicU64>) -> Vec<Entry> {
        if self.files.is_empty() {
            return Vec::new();
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            })
            .ok();
        let mut out = vec![Entry {
            path: PathBuf::from(DUMPS_ROOT),
            kind: EntryKind::Dir,
            meta: Meta {
                mode: 0o700,
                uid: Some(0),
                gid: Some(0),
                mtime: now,
                ..Meta::default()
            },
            content: None,
        }];
        let mut files = self.files.clone();
        files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, path, size) in files {
            out.push(Entry {
                path: dump_path(&name),
                kind: EntryKind::File,
                meta: Meta {
                    mode: 0o600,
                    uid: Some(0),
                    gid: Some(0),
                    size,
                    mtime: now,
                    ..Meta::default()
                },
                content: Some(Box::new(FileContent::new(path, bytes_read.clone()))),
            });
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Resolves when `cancel` turns true (burrow is stopping).
async fn cancelled(mut cancel: watch::Receiver<bool>) {
    while !*cancel.borrow() {
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs every dump of `job`, each for at most its `dump_timeout`; failures (a timeout too) are
/// logged and recorded in `problems`, the others spooled.
/// The caller holds the repository lock, so spool directories of other runs are leftovers of
/// a crash and are removed first.
pub async fn spool(
    host: &impl Exec,
    job: &Job,
    spool_root: &Path,
    run_id: &str,
    problems: &Problems,
    log: &RunLog,
    cancel: &watch::Receiver<bool>,
) -> Result<Spooled, RunError> {
    let (dumps, timeout) = (job.dumps.as_slice(), job.dump_timeout);
    if let Ok(entries) = std::fs::read_dir(spool_root) {
        for e in entries.flatten() {
            log.info(format!(
                "removing the dump spool of an interrupted run: {}",
                e.path().display()
            ));
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = spool_root.join(run_id);
    std::fs::create_dir_all(&dir).map_err(|e| {
        RunError::permanent(format!(
            "cannot create the dump spool {}: {e}",
            dir.display()
        ))
    })?;
    set_private(&dir);
    let mut spooled = Spooled {
        dir: dir.clone(),
        files: Vec::new(),
    };
    for d in dumps {
        let file_path = dir.join(&d.name);
        log.info(format!(
            "dump {}: running `{}` on {}",
            d.name,
            d.command,
            host.describe()
        ));
        let result = async {
            let mut f = tokio::fs::File::create(&file_path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", file_path.display()))?;
            // A dump that outlives `timeout` or a shutdown is ended on the server with its
            // process group (`Exec::exec_to_writer`).
            let out = host
                .exec_to_writer(&d.command, &mut f, timeout, cancelled(cancel.clone()))
                .await
                .map_err(|e| e.message)?;
            f.flush().await.map_err(|e| e.to_string())?;
            f.sync_all().await.map_err(|e| e.to_string())?;
            let stderr = out.stderr_text();
            if !stderr.is_empty() {
                log.info(format!("dump {}: stderr: {stderr}", d.name));
            }
            if !out.success() {
                return Err(format!("the dump command failed: {}", out.status_text()));
            }
            let size = f.metadata().await.map_err(|e| e.to_string())?.len();
            Ok(size)
        }
        .await;
        match result {
            Ok(size) => {
                log.info(format!("dump {}: {size} bytes", d.name));
                spooled.files.push((d.name.clone(), file_path, size));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&file_path);
                log.error(format!("dump {}: {e}; it is not stored", d.name));
                problems.push(dump_path(&d.name), e);
            }
        }
    }
    Ok(spooled)
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_testkit::exec::{Reply, ScriptedExec};

    fn job(dump_timeout: &str) -> Job {
        let text = format!(
            "repository: {{path: /r, password_file: /dev/null}}\njobs:\n  db:\n    dump_timeout: {dump_timeout}\n    dumps:\n      - {{name: main.sql, command: dump-main}}\n      - {{name: broken.sql, command: dump-broken}}\n      - {{name: slow.sql, command: dump-slow}}\n"
        );
        burrow_config::parse_with(&text, Path::new("c.yaml"), false)
            .unwrap()
            .jobs
            .remove("db")
            .unwrap()
    }

    /// On the fake: a dump's stdout is spooled byte for byte; a failed or hung dump is a
    /// problem under its path and is not stored; the run goes on with the others.
    #[tokio::test]
    async fn a_failed_or_hung_dump_is_a_problem_and_the_others_are_spooled() {
        let server = ScriptedExec::new("vps")
            .on("dump-main", Reply::ok("CREATE TABLE t;\n"))
            .on(
                "dump-broken",
                Reply::fails(2, "pg_dump: connection refused"),
            )
            .on("dump-slow", Reply::Hang);
        let tmp = tempfile::tempdir().unwrap();
        let problems = Problems::new();
        let log = RunLog::new("db", "r1", "vps");
        let (_tx, cancel) = watch::channel(false);
        let spooled = spool(
            &server,
            &job("1s"),
            tmp.path(),
            "r1",
            &problems,
            &log,
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(server.commands(), ["dump-main", "dump-broken", "dump-slow"]);
        let bytes = Arc::new(AtomicU64::new(0));
        let names: Vec<PathBuf> = spooled
            .entries(&bytes)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(names, [PathBuf::from(DUMPS_ROOT), dump_path("main.sql")]);
        assert_eq!(
            std::fs::read(tmp.path().join("r1/main.sql")).unwrap(),
            b"CREATE TABLE t;\n"
        );
        let found = problems.snapshot();
        let by_path: Vec<(PathBuf, &str)> = found
            .iter()
            .map(|p| (p.path.clone(), p.message.as_str()))
            .collect();
        assert_eq!(by_path.len(), 2, "{by_path:?}");
        assert_eq!(by_path[0].0, dump_path("broken.sql"));
        assert!(by_path[0].1.contains("exit status 2"), "{by_path:?}");
        assert_eq!(by_path[1].0, dump_path("slow.sql"));
        assert!(by_path[1].1.contains("timed out"), "{by_path:?}");
        assert!(!tmp.path().join("r1/broken.sql").exists());
        drop(spooled);
        assert!(
            !tmp.path().join("r1").exists(),
            "the spool goes with the run"
        );
    }
}
