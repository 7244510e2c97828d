//! Looking into the repository without restoring: `burrow ls` (a snapshot's entries), `find`
//! (which snapshots hold a path) and `diff` (what changed between two snapshots). They read
//! trees only, take no lock and write nothing, as stock restic's `ls`, `find` and `diff`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burrow_config::Config;
use burrow_core::RunError;
use burrow_core::disk::DiskManager;
use burrow_core::repository::{
    JobStats, NodeKind, Repositories, Repository, SnapshotEntries, SnapshotEntry, SnapshotInfo,
};
use serde::Serialize;

use crate::command::{self, CommandError};
use crate::{Ports, blocking, maintain};

/// `burrow ls`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    pub job: String,
    /// A snapshot id (or its first characters), or `latest`.
    #[arg(default_value = "latest")]
    pub snapshot: String,
    pub path: Option<PathBuf>,
    /// Mode, owner, size and time on each line.
    #[arg(long, short)]
    pub long: bool,
    #[arg(long, short = 'R')]
    pub recursive: bool,
    /// Print the snapshot and its entries as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `burrow ls` lists.
#[derive(Debug, Clone)]
pub struct Listing {
    pub found: SnapshotEntries,
    /// Mode, owner, size and time on each line.
    pub long: bool,
}

/// The entries at the path of the job's snapshot (one level unless `recursive`).
pub async fn ls<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &LsArgs,
) -> Result<Listing, CommandError> {
    let repo = maintain::open_for_job(cfg, ports, &args.job).await?;
    let a = args.clone();
    let found = blocking(move || repo.entries(&a.job, &a.snapshot, a.path.as_deref(), a.recursive));
    Ok(Listing {
        found: found.await??,
        long: args.long,
    })
}

/// A file `burrow dump` wrote out.
#[derive(Debug, Clone, Serialize)]
pub struct Dumped {
    pub path: std::path::PathBuf,
    pub bytes: u64,
}

/// `burrow dump`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    pub job: String,
    /// A snapshot id (or its first characters), or `latest`.
    pub snapshot: String,
    pub path: PathBuf,
}

/// Writes the regular file at the path of the job's snapshot to `w` (`burrow dump`).
pub async fn dump<D: DiskManager, S, R: Repositories, W: std::io::Write + Send + 'static>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &DumpArgs,
    mut w: W,
) -> Result<Dumped, CommandError> {
    let repo = maintain::open_for_job(cfg, ports, &args.job).await?;
    let a = args.clone();
    let written = blocking(move || {
        let n = repo.dump(&a.job, &a.snapshot, &a.path, &mut w)?;
        w.flush()
            .map_err(|e| RunError::permanent(format!("cannot write the output: {e}")))?;
        Ok::<_, RunError>(n)
    });
    Ok(Dumped {
        path: args.path.clone(),
        bytes: written.await??,
    })
}

/// `burrow stats`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// One job (default: every job of the config).
    pub job: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// What `burrow stats` found, one entry per job.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub jobs: Vec<JobStats>,
}

/// The stats of the job, or of every job of the config.
pub async fn stats<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &StatsArgs,
) -> Result<Stats, CommandError> {
    let jobs: Vec<String> = match &args.job {
        Some(j) => vec![command::job(cfg, j)?.name.clone()],
        None => cfg.jobs.keys().cloned().collect(),
    };
    let repo = maintain::open(cfg, ports).await?;
    let jobs = blocking(move || -> Result<Vec<JobStats>, RunError> {
        jobs.iter().map(|j| repo.stats(j)).collect()
    });
    Ok(Stats { jobs: jobs.await?? })
}

/// The entries of one snapshot that match a `find` pattern.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub snapshot: SnapshotInfo,
    pub matches: Vec<SnapshotEntry>,
}

/// What `burrow find` found, newest snapshot first.
#[derive(Debug, Clone, Serialize)]
pub struct Finds {
    pub pattern: String,
    pub found: Vec<Found>,
}

/// A `find` pattern: a glob matched against each entry's name, or against its whole path
/// when the pattern holds a `/` (as `find -name` and `find -path`).
pub struct Pattern {
    glob: globset::GlobMatcher,
    whole_path: bool,
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern, CommandError> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| CommandError::Usage(format!("pattern {pattern:?}: {e}")))?;
        Ok(Pattern {
            glob: glob.compile_matcher(),
            whole_path: pattern.contains('/'),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        if self.whole_path {
            self.glob.is_match(path)
        } else {
            self.glob.is_match(path.rsplit('/').next().unwrap_or(path))
        }
    }
}

/// `burrow find`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FindArgs {
    pub job: String,
    pub pattern: String,
    /// Search only this snapshot.
    #[arg(long, conflicts_with = "newest")]
    pub snapshot: Option<String>,
    /// Search only the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub newest: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// Searches the job's snapshots (only `snapshot` when given; the `newest` ones when given,
/// else all) for entries matching the pattern; snapshots without a match are left out.
pub async fn find<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &FindArgs,
) -> Result<Finds, CommandError> {
    command::job(cfg, &args.job)?;
    let matcher = Pattern::new(&args.pattern)?;
    let repo = maintain::open(cfg, ports).await?;
    let (name, snapshot, newest) = (args.job.clone(), args.snapshot.clone(), args.newest);
    let found = blocking(move || -> Result<Vec<Found>, RunError> {
        let ids: Vec<String> = match snapshot {
            Some(s) => vec![s],
            None => {
                let listing = repo.snapshot_listing(Some(&name))?;
                let newest_first = listing.snapshots.into_iter().rev().map(|s| s.id);
                newest_first.take(newest.unwrap_or(usize::MAX)).collect()
            }
        };
        let mut found = Vec::new();
        for id in ids {
            let all = repo.entries(&name, &id, None, true)?;
            let matches: Vec<SnapshotEntry> = (all.entries.into_iter())
                .filter(|e| matcher.matches(&e.path))
                .collect();
            if !matches.is_empty() {
                found.push(Found {
                    snapshot: all.snapshot,
                    matches,
                });
            }
        }
        Ok(found)
    })
    .await??;
    Ok(Finds {
        pattern: args.pattern.clone(),
        found,
    })
}

/// How an entry differs between two snapshots, by restic's `diff` letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Modifier {
    /// Only in the second snapshot.
    #[serde(rename = "+")]
    Added,
    /// Only in the first.
    #[serde(rename = "-")]
    Removed,
    /// Its content changed.
    #[serde(rename = "M")]
    Content,
    /// It is of another type (a file became a directory, a link…).
    #[serde(rename = "T")]
    Type,
    /// Only its metadata changed (mode, owner, time, link target); listed with `--metadata`.
    #[serde(rename = "U")]
    Metadata,
}

/// One entry that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    pub modifier: Modifier,
    /// Its size in the first snapshot and in the second (files).
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
}

/// Counts of a diff, per kind of entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiffCounts {
    pub files_added: u64,
    pub files_removed: u64,
    pub files_changed: u64,
    pub dirs_added: u64,
    pub dirs_removed: u64,
    pub others_added: u64,
    pub others_removed: u64,
    /// File bytes only in the second snapshot's new or changed files, and only in the
    /// first's removed or changed ones.
    pub bytes_added: u64,
    pub bytes_removed: u64,
}

/// What `burrow diff` found.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub before: SnapshotInfo,
    pub after: SnapshotInfo,
    pub changes: Vec<Change>,
    pub counts: DiffCounts,
}

/// The differences between two listings of the same place, in path order: added, removed,
/// of another type, with other content, and (with `metadata`) with other metadata only.
pub fn changes(
    before: &[SnapshotEntry],
    after: &[SnapshotEntry],
    metadata: bool,
) -> (Vec<Change>, DiffCounts) {
    let old: BTreeMap<&str, &SnapshotEntry> = before.iter().map(|e| (e.path.as_str(), e)).collect();
    let new: BTreeMap<&str, &SnapshotEntry> = after.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut paths: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    paths.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    paths.dedup();
    let mut counts = DiffCounts::default();
    let mut out = Vec::new();
    for path in paths {
        let (a, b) = (old.get(path).copied(), new.get(path).copied());
        let Some(modifier) = modifier(a, b, metadata) else {
            continue;
        };
        count(&mut counts, modifier, a, b);
        let file_size =
            |e: Option<&SnapshotEntry>| e.filter(|e| e.kind == NodeKind::File).map(|e| e.size);
        out.push(Change {
            path: path.to_owned(),
            modifier,
            size_before: file_size(a),
            size_after: file_size(b),
        });
    }
    (out, counts)
}

fn modifier(
    a: Option<&SnapshotEntry>,
    b: Option<&SnapshotEntry>,
    metadata: bool,
) -> Option<Modifier> {
    match (a, b) {
        (None, None) => None,
        (None, Some(_)) => Some(Modifier::Added),
        (Some(_), None) => Some(Modifier::Removed),
        (Some(a), Some(b)) if a.kind != b.kind => Some(Modifier::Type),
        (Some(a), Some(b)) if a.kind == NodeKind::File && a.content != b.content => {
            Some(Modifier::Content)
        }
        (Some(a), Some(b)) => {
            let meta =
                |e: &SnapshotEntry| (e.mode, e.uid, e.gid, e.mtime.clone(), e.link_target.clone());
            (metadata && meta(a) != meta(b)).then_some(Modifier::Metadata)
        }
    }
}

fn count(c: &mut DiffCounts, m: Modifier, a: Option<&SnapshotEntry>, b: Option<&SnapshotEntry>) {
    let bytes =
        |e: Option<&SnapshotEntry>| e.filter(|e| e.kind == NodeKind::File).map_or(0, |e| e.size);
    let kind = a.or(b).map(|e| e.kind);
    match (m, kind) {
        (Modifier::Added, Some(NodeKind::File)) => c.files_added += 1,
        (Modifier::Added, Some(NodeKind::Dir)) => c.dirs_added += 1,
        (Modifier::Added, _) => c.others_added += 1,
        (Modifier::Removed, Some(NodeKind::File)) => c.files_removed += 1,
        (Modifier::Removed, Some(NodeKind::Dir)) => c.dirs_removed += 1,
        (Modifier::Removed, _) => c.others_removed += 1,
        (Modifier::Content, _) => c.files_changed += 1,
        (Modifier::Type | Modifier::Metadata, _) => {}
    }
    if matches!(m, Modifier::Added | Modifier::Content | Modifier::Type) {
        c.bytes_added += bytes(b);
    }
    if matches!(m, Modifier::Removed | Modifier::Content | Modifier::Type) {
        c.bytes_removed += bytes(a);
    }
}

/// `burrow diff`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    pub job: String,
    pub before: String,
    pub after: String,
    pub path: Option<PathBuf>,
    /// Also list entries whose mode, owner, time or link target alone changed.
    #[arg(long)]
    pub metadata: bool,
    #[arg(long)]
    pub json: bool,
}

/// What changed at the path (the whole snapshots without one) from the job's snapshot
/// `before` to `after`.
pub async fn diff<D: DiskManager, S, R: Repositories>(
    cfg: &Config,
    ports: Ports<'_, D, S, R>,
    args: &DiffArgs,
) -> Result<Diff, CommandError> {
    let repo = maintain::open_for_job(cfg, ports, &args.job).await?;
    let a = args.clone();
    let (before, after) = blocking(move || -> Result<_, RunError> {
        let before = repo.entries(&a.job, &a.before, a.path.as_deref(), true)?;
        let after = repo.entries(&a.job, &a.after, a.path.as_deref(), true)?;
        Ok((before, after))
    })
    .await??;
    let (a, b) = (before, after);
    let (changes, counts) = changes(&a.entries, &b.entries, args.metadata);
    Ok(Diff {
        before: a.snapshot,
        after: b.snapshot,
        changes,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: NodeKind, size: u64, content: &str) -> SnapshotEntry {
        SnapshotEntry {
            path: path.into(),
            kind,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Some("2026-01-01T00:00:00Z".into()),
            link_target: None,
            content: vec![content.into()],
        }
    }

    #[test]
    fn a_diff_names_added_removed_changed_and_retyped_entries_in_path_order() {
        let before = [
            e("/s", NodeKind::Dir, 0, ""),
            e("/s/a", NodeKind::File, 2, "x"),
            e("/s/b", NodeKind::File, 5, "y"),
            e("/s/c", NodeKind::File, 1, "z"),
            e("/s/d", NodeKind::File, 3, "w"),
        ];
        let mut touched = e("/s/d", NodeKind::File, 3, "w");
        touched.mtime = Some("2026-02-01T00:00:00Z".into());
        let after = [
            e("/s", NodeKind::Dir, 0, ""),
            e("/s/a", NodeKind::File, 4, "x2"),
            e("/s/c", NodeKind::Dir, 0, ""),
            e("/s/c/new", NodeKind::File, 7, "n"),
            touched,
        ];
        let (changes, counts) = changes(&before, &after, false);
        let got: Vec<(&str, Modifier)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.modifier))
            .collect();
        assert_eq!(
            got,
            [
                ("/s/a", Modifier::Content),
                ("/s/b", Modifier::Removed),
                ("/s/c", Modifier::Type),
                ("/s/c/new", Modifier::Added),
            ]
        );
        assert_eq!(
            (
                counts.files_added,
                counts.files_removed,
                counts.files_changed
            ),
            (1, 1, 1)
        );
        assert_eq!(counts.bytes_added, 4 + 7);
        assert_eq!(counts.bytes_removed, 2 + 5 + 1);
        let (with_meta, _) = super::changes(&before, &after, true);
        assert_eq!(
            with_meta.last().map(|c| (c.path.as_str(), c.modifier)),
            Some(("/s/d", Modifier::Metadata))
        );
    }

    #[test]
    fn a_pattern_matches_the_name_or_with_a_slash_the_whole_path() {
        let name = Pattern::new("*.sql").unwrap();
        assert!(name.matches("/var/backups/db.sql"));
        assert!(!name.matches("/var/backups.sql/db"));
        let path = Pattern::new("/var/*/db.sql").unwrap();
        assert!(path.matches("/var/backups/db.sql"));
        assert!(!path.matches("/var/a/b/db.sql"), "* stops at a /");
        assert!(matches!(
            Pattern::new("a[").map(|_| ()),
            Err(CommandError::Usage(_))
        ));
    }
}
