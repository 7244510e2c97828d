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

use crate::host::Host;
use crate::log::RunLog;

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
    host: &Host,
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
            // process group (`Host::exec_to_writer`).
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
