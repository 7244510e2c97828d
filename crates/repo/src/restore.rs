//! Restore and dump, with the target directory as a hard boundary.
//!
//! A repository is data from elsewhere (a compromised server chose the names that were backed
//! up; a repository could be tampered with). Before anything is written, every listed path is
//! checked: only plain components (no `..`, no root), no duplicates, nothing below a symlink or
//! file of the same listing. Offending entries are skipped and reported, never written.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use rustic_core::repofile::{Node, NodeType, SnapshotFile};
use rustic_core::{LocalDestination, LsOptions, OpenStatus, Repository, RestoreOptions};
use serde::Serialize;

use crate::RepoError;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub snapshot_id: String,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Entries refused because they would have escaped the target or clashed.
    pub refused: Vec<String>,
}

fn in_snapshot(path: Option<&Path>) -> String {
    path.map(|p| p.to_string_lossy().trim_start_matches('/').to_owned())
        .unwrap_or_default()
}

/// Keeps the entries that are safe to write below the target, in order.
fn safe_entries(items: Vec<(PathBuf, Node)>, refused: &mut Vec<String>) -> Vec<(PathBuf, Node)> {
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut non_dirs: HashSet<PathBuf> = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (path, node) in items {
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
        let under_non_dir = path.ancestors().skip(1).any(|a| non_dirs.contains(a));
        if !plain || under_non_dir || !seen.insert(path.clone()) {
            refused.push(path.to_string_lossy().into_owned());
            continue;
        }
        if !node.is_dir() {
            non_dirs.insert(path.clone());
        }
        out.push((path, node));
    }
    out
}

/// True when writing `rel` below `target` would go through a symlink that already exists in
/// the target (left by an earlier restore or planted there): such a write could land
/// anywhere. A symlink entry may replace an existing symlink at its own path.
fn through_existing_symlink(
    target: &Path,
    rel: &Path,
    node: &Node,
    safe: &mut HashSet<PathBuf>,
) -> bool {
    let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    let mut cur = target.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            if safe.contains(&cur) {
                continue;
            }
            if is_link(&cur) {
                return true;
            }
            safe.insert(cur.clone());
        }
    }
    !matches!(node.node_type, NodeType::Symlink { .. }) && is_link(&target.join(rel))
}

pub fn restore(
    repo: Repository<OpenStatus>,
    snap: &SnapshotFile,
    target: &Path,
    subpath: Option<&Path>,
) -> Result<RestoreOutcome, RepoError> {
    let repo = repo.to_indexed()?;
    let node = repo
        .node_from_snapshot_and_path(snap, &in_snapshot(subpath))
        .map_err(|_| RepoError::NoSnapshot {
            what: format!(
                "path {} in snapshot {}",
                subpath.map(|p| p.display().to_string()).unwrap_or_default(),
                &snap.id.to_hex()[..8]
            ),
        })?;
    std::fs::create_dir_all(target).map_err(|e| {
        RepoError::Restore(format!("cannot create target {}: {e}", target.display()))
    })?;
    let mut refused = Vec::new();
    let (dest_path, items) = if node.is_dir() {
        let items: Vec<(PathBuf, Node)> = repo
            .ls(&node, &LsOptions::default())?
            .collect::<Result<_, _>>()?;
        (
            format!("{}/", target.display()),
            safe_entries(items, &mut refused),
        )
    } else {
        let name = PathBuf::from(node.name().into_owned());
        if safe_entries(vec![(name.clone(), node.clone())], &mut refused).is_empty()
            || through_existing_symlink(target, &name, &node, &mut HashSet::new())
        {
            return Err(RepoError::Restore(format!(
                "refusing to restore {name:?}: unsafe name"
            )));
        }
        (
            target.join(&name).to_string_lossy().into_owned(),
            vec![(PathBuf::new(), node.clone())],
        )
    };
    let dest = LocalDestination::new(&dest_path, true, !node.is_dir())?;
    let opts = RestoreOptions::default();
    let plan = repo.prepare_restore(&opts, items.iter().cloned().map(Ok), &dest, false)?;
    repo.restore(plan, &opts, items.iter().cloned().map(Ok), &dest)?;
    let files = items.iter().filter(|(_, n)| !n.is_dir()).count() as u64;
    let dirs = items.iter().filter(|(_, n)| n.is_dir()).count() as u64;
    let bytes = items
        .iter()
        .filter(|(_, n)| matches!(n.node_type, NodeType::File))
        .map(|(_, n)| n.meta.size)
        .sum();
    Ok(RestoreOutcome {
        snapshot_id: snap.id.to_hex().to_string(),
        files,
        dirs,
        bytes,
        refused,
    })
}

pub fn dump(
    repo: Repository<OpenStatus>,
    snap: &SnapshotFile,
    path: &Path,
    w: &mut dyn std::io::Write,
) -> Result<u64, RepoError> {
    let repo = repo.to_indexed()?;
    let node = repo
        .node_from_snapshot_and_path(snap, &in_snapshot(Some(path)))
        .map_err(|_| RepoError::NoSnapshot {
            what: format!(
                "file {} in snapshot {}",
                path.display(),
                &snap.id.to_hex()[..8]
            ),
        })?;
    if !matches!(node.node_type, NodeType::File) {
        return Err(RepoError::Restore(format!(
            "{} is not a file",
            path.display()
        )));
    }
    let mut counted = Counting { inner: w, n: 0 };
    repo.dump(&node, &mut counted)?;
    Ok(counted.n)
}

struct Counting<'a> {
    inner: &'a mut dyn std::io::Write,
    n: u64,
}

impl std::io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustic_core::repofile::Metadata;

    fn n(name: &str, t: NodeType) -> Node {
        Node::new_node(std::ffi::OsStr::new(name), t, Metadata::default())
    }

    #[test]
    fn unsafe_names_are_refused() {
        let items = vec![
            (PathBuf::from("a"), n("a", NodeType::Dir)),
            (PathBuf::from("a/f"), n("f", NodeType::File)),
            (PathBuf::from("../etc/passwd"), n("passwd", NodeType::File)),
            (PathBuf::from("/abs"), n("abs", NodeType::File)),
            (
                PathBuf::from("l"),
                n("l", NodeType::from_link(Path::new("/etc"))),
            ),
            (PathBuf::from("l/passwd"), n("passwd", NodeType::File)),
            (PathBuf::from("a/f"), n("f", NodeType::File)),
        ];
        let mut refused = Vec::new();
        let kept: Vec<PathBuf> = safe_entries(items, &mut refused)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            kept,
            [PathBuf::from("a"), PathBuf::from("a/f"), PathBuf::from("l")]
        );
        assert_eq!(refused, ["../etc/passwd", "/abs", "l/passwd", "a/f"]);
    }

    #[test]
    fn existing_symlinks_in_the_target_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("l")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), tmp.path().join("leaf")).unwrap();
        let mut safe = HashSet::new();
        let file = n("f", NodeType::File);
        assert!(through_existing_symlink(
            tmp.path(),
            Path::new("l/f"),
            &file,
            &mut safe
        ));
        assert!(through_existing_symlink(
            tmp.path(),
            Path::new("leaf"),
            &file,
            &mut safe
        ));
        let link = n("leaf", NodeType::from_link(Path::new("x")));
        assert!(!through_existing_symlink(
            tmp.path(),
            Path::new("leaf"),
            &link,
            &mut safe
        ));
        assert!(!through_existing_symlink(
            tmp.path(),
            Path::new("d/f"),
            &file,
            &mut safe
        ));
    }
}
