//! A snapshot's tree for `burrow ls`, `find`, `diff` and `stats`: trees are read with the
//! index of ids (`to_indexed_ids`), never a file's content.

use std::path::{Path, PathBuf};

use burrow_core::repository::{NodeKind, SnapshotEntry};
use burrow_core::short_id;
use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{IndexedIdsStatus, OpenStatus, Repository, TreeId};

use crate::RepoError;
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
