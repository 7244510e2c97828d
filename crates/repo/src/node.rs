//! Our entries as rustic_core nodes. restic stores Go's `os.FileMode` bits, not `st_mode`;
//! rustic_core does not export its mapping, so it is written out here (Go's io/fs ModeType).

use burrow_core::source::{Entry, EntryKind, Meta, Time};
use rustic_core::jiff::Timestamp;
use rustic_core::repofile::{Metadata, Node, NodeType};

const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_NAMED_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHAR_DEVICE: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;

/// Go's FileMode for a kind and the Unix permission bits (including setuid/setgid/sticky).
pub fn go_mode(kind: &EntryKind, perm: u32) -> u32 {
    let mut m = perm & 0o777;
    if perm & 0o4000 != 0 {
        m |= GO_SETUID;
    }
    if perm & 0o2000 != 0 {
        m |= GO_SETGID;
    }
    if perm & 0o1000 != 0 {
        m |= GO_STICKY;
    }
    m | match kind {
        EntryKind::File => 0,
        EntryKind::Dir => GO_DIR,
        EntryKind::Symlink { .. } => GO_SYMLINK,
        EntryKind::Fifo => GO_NAMED_PIPE,
        EntryKind::Socket => GO_SOCKET,
        EntryKind::CharDevice { .. } => GO_DEVICE | GO_CHAR_DEVICE,
        EntryKind::BlockDevice { .. } => GO_DEVICE,
    }
}

/// The Unix permission bits (with setuid/setgid/sticky) of a Go FileMode: the inverse of
/// [`go_mode`] for the bits `chmod` takes. The type bits are not part of the result.
pub fn unix_perm(go: u32) -> u32 {
    let mut m = go & 0o777;
    if go & GO_SETUID != 0 {
        m |= 0o4000;
    }
    if go & GO_SETGID != 0 {
        m |= 0o2000;
    }
    if go & GO_STICKY != 0 {
        m |= 0o1000;
    }
    m
}

fn ts(t: Option<Time>) -> Option<Timestamp> {
    t.and_then(|t| Timestamp::new(t.secs, t.nanos as i32).ok())
}

pub fn to_node(entry: &Entry) -> Option<Node> {
    let name = entry.path.file_name()?;
    let node_type = match &entry.kind {
        EntryKind::File => NodeType::File,
        EntryKind::Dir => NodeType::Dir,
        EntryKind::Symlink { target } => NodeType::from_link(std::path::Path::new(target)),
        EntryKind::Fifo => NodeType::Fifo,
        EntryKind::Socket => NodeType::Socket,
        EntryKind::CharDevice { rdev } => NodeType::Chardev { device: *rdev },
        EntryKind::BlockDevice { rdev } => NodeType::Dev { device: *rdev },
    };
    let m: &Meta = &entry.meta;
    let meta = Metadata {
        mode: Some(go_mode(&entry.kind, m.mode)),
        mtime: ts(m.mtime),
        // Not stored: reading a file for the backup moves its atime, so every snapshot's trees
        // would differ and a no-change run would add new tree blobs (borg leaves atime out by
        // default for the same reason).
        atime: None,
        ctime: ts(m.ctime),
        uid: m.uid,
        gid: m.gid,
        user: m.user.clone(),
        group: m.group.clone(),
        inode: m.inode,
        device_id: m.device,
        size: m.size,
        links: m.links,
        extended_attributes: Vec::new(),
    };
    Some(Node::new_node(name, node_type, meta))
}

/// The mtime of a node as our [`Time`].
pub fn node_time(t: Option<Timestamp>) -> Option<Time> {
    t.map(|t| Time {
        secs: t.as_second(),
        nanos: t.subsec_nanosecond().max(0) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_match_go() {
        assert_eq!(go_mode(&EntryKind::Dir, 0o755), 0x8000_01ed);
        assert_eq!(go_mode(&EntryKind::File, 0o4755), (1 << 23) | 0o755);
        assert_eq!(
            go_mode(&EntryKind::Symlink { target: "x".into() }, 0o777),
            (1 << 27) | 0o777
        );
        assert_eq!(
            go_mode(&EntryKind::CharDevice { rdev: 0 }, 0o600),
            (1 << 26) | (1 << 21) | 0o600
        );
    }

    #[test]
    fn unix_perm_inverts_go_mode() {
        for perm in [0o644, 0o600, 0o4755, 0o2750, 0o1777, 0o7000, 0] {
            for kind in [EntryKind::File, EntryKind::Dir, EntryKind::Fifo] {
                assert_eq!(unix_perm(go_mode(&kind, perm)), perm, "{perm:o}");
            }
        }
    }
}
