//! The parent snapshot as a [`ParentIndex`]: which files the archiver will take over unread.
//!
//! Only a 64-bit hash of each path is kept with its size and mtime (~40 bytes a file), so a
//! 100,000-file parent costs a few MB. A hash collision can only make a source skip a
//! prefetch; rustic_core still decides by itself and opens the file if it changed.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use burrow_core::short_id;
use burrow_core::source::{NoParent, ParentIndex, Time};
use rustic_core::repofile::{NodeType, SnapshotFile};
use rustic_core::{IndexedTree, LsOptions, Repository, RusticResult};

use crate::node::node_time;

#[derive(Debug, Default)]
pub struct SnapshotParent {
    files: HashMap<u64, (u64, Option<Time>)>,
}

fn key(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

impl SnapshotParent {
    pub fn load<S: IndexedTree>(repo: &Repository<S>, snap: &SnapshotFile) -> RusticResult<Self> {
        let root = repo.node_from_snapshot_and_path(snap, "")?;
        let mut files = HashMap::new();
        for item in repo.ls(&root, &LsOptions::default())? {
            let (path, node) = item?;
            if matches!(node.node_type, NodeType::File) {
                let abs = Path::new("/").join(path);
                files.insert(key(&abs), (node.meta.size, node_time(node.meta.mtime)));
            }
        }
        Ok(SnapshotParent { files })
    }
}

impl SnapshotParent {
    /// The parent's files, or none when its trees cannot be read (a damaged pack, or one a
    /// check took out of the index): the sources then fetch every file, and rustic_core,
    /// which cannot load that parent either, stores what is missing.
    pub fn load_or_none<S: IndexedTree>(
        repo: &Repository<S>,
        snap: &SnapshotFile,
    ) -> Arc<dyn ParentIndex> {
        let loaded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::load(repo, snap)));
        match loaded {
            Ok(Ok(p)) => Arc::new(p),
            Ok(Err(e)) => {
                tracing::warn!(
                    "parent snapshot {} cannot be read ({}); every file is read again",
                    short_id(&snap.id.to_hex()),
                    e.display_log()
                );
                Arc::new(NoParent)
            }
            Err(_) => {
                tracing::warn!(
                    "parent snapshot {} cannot be read; every file is read again",
                    short_id(&snap.id.to_hex())
                );
                Arc::new(NoParent)
            }
        }
    }
}

impl ParentIndex for SnapshotParent {
    fn unchanged(&self, path: &Path, size: u64, mtime: Option<Time>) -> bool {
        self.files
            .get(&key(path))
            .is_some_and(|(s, m)| *s == size && *m == mtime)
    }
}
