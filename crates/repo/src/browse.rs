//! A snapshot's tree for `burrow ls`, `find` and `diff`: trees are read with the index of
//! ids (`to_indexed_ids`), never a file's content; and `restore --verify`, which reads back
//! what a restore wrote and compares it with that tree.

use std::path::{Path, PathBuf};

use burrow_core::repository::{
    JobStats, NodeKind, NotRestored, RestoreRequest, SnapshotEntry, Verified,
};
use burrow_core::short_id;
use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{DataId, IndexedFullStatus, IndexedIdsStatus, OpenStatus, Repository, TreeId};

use crate::RepoError;
use crate::chunker::Chunking;
use crate::node::unix_perm;

/// The entries at `path` of `snap` (see `burrow_core::repository::Repository::entries`).
pub fn entries(
    repo: Repository<OpenStatus>,
    snap: &SnapshotFile,
    path: Option<&Path>,
    recursive: bool,
) -> Result<Vec<SnapshotEntry>, RepoError> {
    let repo = repo.to_indexed_ids()?;
    let at = path.unwrap_or(Path::new("/"));
    let inside = at.to_string_lossy().trim_start_matches('/').to_owned();
    let node = repo
        .node_from_snapshot_and_path(snap, &inside)
        .map_err(|e| RepoError::NoSnapshot {
            what: format!(
                "path {} in snapshot {} ({})",
                at.display(),
                short_id(&snap.id.to_hex()),
                e.to_string().lines().next().unwrap_or("").trim()
            ),
        })?;
    let mut out = Vec::new();
    if !inside.is_empty() {
        out.push(entry(&node, at));
    }
    if let (true, Some(tree)) = (node.is_dir(), node.subtree) {
        let mut walk = Walk {
            repo: &repo,
            recursive,
            out: &mut out,
        };
        walk.below(tree, &Path::new("/").join(&inside))?;
    }
    Ok(out)
}

struct Walk<'a> {
    repo: &'a Repository<IndexedIdsStatus>,
    recursive: bool,
    out: &'a mut Vec<SnapshotEntry>,
}

impl Walk<'_> {
    /// The entries of `tree` (the directory at `at`) in the tree's order (by name), each
    /// followed by what is below it when the walk is recursive.
    fn below(&mut self, tree: TreeId, at: &Path) -> Result<(), RepoError> {
        let tree = self.repo.get_tree(&tree).map_err(|e| {
            RepoError::Rustic(format!(
                "the listing of {} cannot be read: {e}",
                at.display()
            ))
        })?;
        for node in tree.nodes {
            let path: PathBuf = at.join(node.name());
            self.out.push(entry(&node, &path));
            if let (true, true, Some(sub)) = (self.recursive, node.is_dir(), node.subtree) {
                self.below(sub, &path)?;
            }
        }
        Ok(())
    }
}

fn entry(node: &Node, path: &Path) -> SnapshotEntry {
    let kind = match &node.node_type {
        NodeType::File => NodeKind::File,
        NodeType::Dir => NodeKind::Dir,
        NodeType::Symlink { .. } => NodeKind::Symlink,
        NodeType::Dev { .. } => NodeKind::Dev,
        NodeType::Chardev { .. } => NodeKind::Chardev,
        NodeType::Fifo => NodeKind::Fifo,
        NodeType::Socket => NodeKind::Socket,
    };
    let link_target = matches!(kind, NodeKind::Symlink)
        .then(|| node.node_type.to_link().to_string_lossy().into_owned());
    SnapshotEntry {
        path: path.to_string_lossy().into_owned(),
        kind,
        size: node.meta.size,
        mode: node.meta.mode.map_or(0, unix_perm),
        uid: node.meta.uid.unwrap_or(0),
        gid: node.meta.gid.unwrap_or(0),
        mtime: node.meta.mtime.map(|t| t.to_string()),
        link_target,
        content: (node.content.iter().flatten())
            .map(|id| id.to_hex().to_string())
            .collect(),
    }
}

/// Compares what a restore of `req` wrote with `entries` (the restored part of the
/// snapshot, as [`entries`] lists it). Files are cut with the repository's own chunker, so
/// each chunk's SHA-256 is the id of the blob it was restored from.
pub fn verify(
    entries: &[SnapshotEntry],
    req: &RestoreRequest<'_>,
    chunking: &Chunking,
) -> Verified {
    let mut out = Verified::default();
    for (e, at) in req.placed(entries) {
        match verify_one(e, &at, chunking) {
            Ok(bytes) => {
                if e.kind == NodeKind::File {
                    out.files += 1;
                    out.bytes += bytes;
                }
            }
            Err(d) => out.differ.push(NotRestored {
                path: e.path.clone(),
                reason: d.to_string(),
            }),
        }
    }
    out
}

/// How a restored entry differs from the snapshot.
#[derive(Debug, thiserror::Error)]
enum Difference {
    #[error("{}: {err}", .at.display())]
    Unreadable { at: PathBuf, err: std::io::Error },
    #[error("{} is not a {kind:?} as in the snapshot", .at.display())]
    Type { at: PathBuf, kind: NodeKind },
    #[error("the link points to {}", .0.display())]
    Link(PathBuf),
    #[error("{has} bytes where the snapshot has {want}")]
    Size { has: u64, want: u64 },
    #[error("its content differs from the snapshot's in chunk {0}")]
    Content(usize),
    #[error("it is shorter than in the snapshot")]
    Shorter,
}

/// Checks one entry at `at`; returns the file bytes read back, or how it differs.
fn verify_one(e: &SnapshotEntry, at: &Path, chunking: &Chunking) -> Result<u64, Difference> {
    let unreadable = |err| Difference::Unreadable {
        at: at.to_owned(),
        err,
    };
    let meta = std::fs::symlink_metadata(at).map_err(unreadable)?;
    let ty = meta.file_type();
    let same_type = match e.kind {
        NodeKind::File => ty.is_file(),
        NodeKind::Dir => ty.is_dir(),
        NodeKind::Symlink => ty.is_symlink(),
        NodeKind::Fifo => std::os::unix::fs::FileTypeExt::is_fifo(&ty),
        // Devices and sockets are not restored.
        NodeKind::Dev | NodeKind::Chardev | NodeKind::Socket => return Ok(0),
    };
    if !same_type {
        return Err(Difference::Type {
            at: at.to_owned(),
            kind: e.kind,
        });
    }
    match e.kind {
        NodeKind::Symlink => {
            let target = std::fs::read_link(at).map_err(unreadable)?;
            match e.link_target.as_deref() == Some(&*target.to_string_lossy()) {
                true => Ok(0),
                false => Err(Difference::Link(target)),
            }
        }
        NodeKind::File if meta.len() != e.size => Err(Difference::Size {
            has: meta.len(),
            want: e.size,
        }),
        NodeKind::File => same_content(e, at, chunking).map(|()| e.size),
        _ => Ok(0),
    }
}

/// Cuts the file at `at` into chunks and compares their hashes with `e.content`.
fn same_content(e: &SnapshotEntry, at: &Path, chunking: &Chunking) -> Result<(), Difference> {
    use sha2::{Digest, Sha256};
    let unreadable = |err| Difference::Unreadable {
        at: at.to_owned(),
        err,
    };
    let mut file = std::fs::File::open(at).map_err(unreadable)?;
    let mut ids = e.content.iter();
    let mut differs = None;
    let mut n = 0usize;
    chunking
        .chunk(Vec::new(), &mut file, &mut |chunk| {
            let id = Sha256::digest(&chunk);
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            if differs.is_none() && ids.next().is_none_or(|want| *want != hex) {
                differs = Some(n);
            }
            n += 1;
            Ok(())
        })
        .map_err(unreadable)?;
    match (differs, ids.next()) {
        (None, None) => Ok(()),
        (Some(i), _) => Err(Difference::Content(i + 1)),
        (None, Some(_)) => Err(Difference::Shorter),
    }
}

/// What one tree holds, with everything below it.
#[derive(Clone, Copy, Default)]
struct Totals {
    entries: u64,
    files: u64,
    bytes: u64,
}

/// Counts the trees of a job's snapshots, each tree read once however many snapshots share
/// it, and gathers the blobs they refer to.
pub struct Census<'a> {
    repo: &'a Repository<IndexedFullStatus>,
    seen: std::collections::HashMap<TreeId, Totals>,
    data: std::collections::HashSet<DataId>,
}

impl<'a> Census<'a> {
    pub fn new(repo: &'a Repository<IndexedFullStatus>) -> Self {
        Census {
            repo,
            seen: Default::default(),
            data: Default::default(),
        }
    }

    /// The entries, files and file bytes below `tree`.
    fn totals(&mut self, tree: TreeId) -> Result<Totals, RepoError> {
        if let Some(t) = self.seen.get(&tree) {
            return Ok(*t);
        }
        let nodes = (self.repo.get_tree(&tree))
            .map_err(|e| RepoError::Rustic(format!("tree {tree} cannot be read: {e}")))?
            .nodes;
        let mut t = Totals::default();
        for node in nodes {
            t.entries += 1;
            if node.is_file() {
                t.files += 1;
                t.bytes += node.meta.size;
                self.data.extend(node.content.iter().flatten().copied());
            }
            if let Some(sub) = node.subtree {
                let below = self.totals(sub)?;
                t.entries += below.entries;
                t.files += below.files;
                t.bytes += below.bytes;
            }
        }
        self.seen.insert(tree, t);
        Ok(t)
    }

    /// The stats of `snaps` (oldest first), the snapshots of `job`.
    pub fn stats(mut self, job: &str, snaps: &[SnapshotFile]) -> Result<JobStats, RepoError> {
        let mut stats = JobStats {
            job: job.to_owned(),
            snapshots: snaps.len() as u64,
            ..JobStats::default()
        };
        for snap in snaps {
            let t = self.totals(snap.tree)?;
            stats.all_bytes += t.bytes;
            (stats.entries, stats.files, stats.bytes) = (t.entries, t.files, t.bytes);
        }
        let missing = |e: Box<rustic_core::RusticError>| {
            RepoError::Rustic(format!("a blob is not in the index: {e}"))
        };
        for id in self.seen.keys() {
            let entry = self.repo.get_index_entry(id).map_err(missing)?;
            stats.stored_bytes += u64::from(entry.location.length);
        }
        for id in &self.data {
            let entry = self.repo.get_index_entry(id).map_err(missing)?;
            stats.stored_bytes += u64::from(entry.location.length);
        }
        stats.blobs = (self.seen.len() + self.data.len()) as u64;
        Ok(stats)
    }
}
