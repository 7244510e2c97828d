//! udev hot-plug events of the block subsystem, translated into [`DiskEvent`]s.
//!
//! Real USB devices come and go with `add`/`remove`; loop devices (and card readers) stay and
//! only send `change` when media appears or vanishes, with `ID_FS_UUID` present or absent.
//! So events are derived from *presence transitions* per role, not from the action alone, and
//! the device node → role map remembers what a node was, because a `remove` usually carries no
//! `ID_FS_UUID`.

use std::collections::HashMap;
use std::path::PathBuf;

use burrow_core::disk::DiskEvent;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::settings::{DiskSettings, uuid_eq};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Key,
    Disk,
}

/// Pure state machine: feed it what udev says about a node, get the events to emit.
#[derive(Debug)]
pub(crate) struct Tracker {
    key_uuid: String,
    disk_uuid: String,
    nodes: HashMap<PathBuf, Role>,
}

impl Tracker {
    pub(crate) fn new(settings: &DiskSettings) -> Self {
        Self {
            key_uuid: settings.key_fs_uuid.clone(),
            disk_uuid: settings.backup_uuid.clone(),
            nodes: HashMap::new(),
        }
    }

    fn role_of(&self, uuid: Option<&str>) -> Option<Role> {
        let uuid = uuid?;
        if uuid_eq(uuid, &self.key_uuid) {
            Some(Role::Key)
        } else if uuid_eq(uuid, &self.disk_uuid) {
            Some(Role::Disk)
        } else {
            None
        }
    }

    fn present(&self, role: Role) -> bool {
        self.nodes.values().any(|r| *r == role)
    }

    /// A node was seen (initial scan, `add` or `change`) with this filesystem UUID, or without
    /// one (`None`): a `change` without UUID means the media is gone.
    pub(crate) fn seen(&mut self, node: PathBuf, uuid: Option<&str>) -> Vec<DiskEvent> {
        let before = (self.present(Role::Key), self.present(Role::Disk));
        match self.role_of(uuid) {
            Some(role) => {
                self.nodes.insert(node, role);
            }
            None => {
                self.nodes.remove(&node);
            }
        }
        self.transitions(before)
    }

    pub(crate) fn removed(&mut self, node: &PathBuf) -> Vec<DiskEvent> {
        let before = (self.present(Role::Key), self.present(Role::Disk));
        self.nodes.remove(node);
        self.transitions(before)
    }

    fn transitions(&self, (key, disk): (bool, bool)) -> Vec<DiskEvent> {
        let mut out = Vec::new();
        match (key, self.present(Role::Key)) {
            (false, true) => out.push(DiskEvent::KeyAdded),
            (true, false) => out.push(DiskEvent::KeyRemoved),
            _ => {}
        }
        match (disk, self.present(Role::Disk)) {
            (false, true) => out.push(DiskEvent::DiskAdded),
            (true, false) => out.push(DiskEvent::DiskRemoved),
            _ => {}
        }
        out
    }
}

fn uuid_of(dev: &udev::Device) -> Option<String> {
    dev.property_value("ID_FS_UUID")
        .and_then(|v| v.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Opens the udev monitor, scans the devices present now (so removals of devices that were
/// there at start-up are recognised) and spawns the task that feeds `tx`. The monitor is opened
/// before the scan so nothing plugged in between is lost.
pub(crate) fn spawn(
    settings: &DiskSettings,
    tx: mpsc::Sender<DiskEvent>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let socket = udev::MonitorBuilder::new()?
        .match_subsystem("block")?
        .listen()?;
    let mut tracker = Tracker::new(settings);
    let mut en = udev::Enumerator::new()?;
    en.match_subsystem("block")?;
    for dev in en.scan_devices()? {
        if let Some(node) = dev.devnode() {
            // Initial presence is state, not news: no events for it.
            let _ = tracker.seen(node.to_path_buf(), uuid_of(&dev).as_deref());
        }
    }
    // `AsyncFd::new` is deprecated in favour of the unsafe `register`, whose condition (the fd
    // stays open and is not replaced while registered) holds here: the socket is moved into the
    // AsyncFd and only dropped with it. The crate forbids unsafe code, so the safe wrapper it is.
    #[allow(deprecated)]
    let mut afd = AsyncFd::new(socket)?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match afd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("udev monitor failed: {e}; hot-plug events stop");
                    return;
                }
            };
            let mut events = Vec::new();
            for ev in guard.get_inner().iter() {
                let Some(node) = ev.devnode().map(|p| p.to_path_buf()) else {
                    continue;
                };
                let out = match ev.event_type() {
                    udev::EventType::Remove => tracker.removed(&node),
                    udev::EventType::Add | udev::EventType::Change => {
                        tracker.seen(node.clone(), uuid_of(&ev).as_deref())
                    }
                    _ => Vec::new(),
                };
                if !out.is_empty() {
                    tracing::debug!(node = %node.display(), action = ?ev.event_type(), ?out, "udev");
                }
                events.extend(out);
            }
            guard.clear_ready();
            drop(guard);
            for e in events {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(&DiskSettings::new("KEY-1", "k", "disk-1"))
    }

    #[test]
    fn usb_add_and_remove_without_uuid() {
        let mut t = tracker();
        assert_eq!(
            t.seen("/dev/sdb1".into(), Some("key-1")),
            vec![DiskEvent::KeyAdded]
        );
        // Duplicate add/change events are not news.
        assert!(t.seen("/dev/sdb1".into(), Some("key-1")).is_empty());
        assert_eq!(
            t.seen("/dev/sda1".into(), Some("disk-1")),
            vec![DiskEvent::DiskAdded]
        );
        assert_eq!(t.removed(&"/dev/sdb1".into()), vec![DiskEvent::KeyRemoved]);
        assert_eq!(t.removed(&"/dev/sda1".into()), vec![DiskEvent::DiskRemoved]);
        assert!(t.removed(&"/dev/sda1".into()).is_empty());
    }

    #[test]
    fn loop_style_change_events() {
        let mut t = tracker();
        assert!(t.seen("/dev/loop0".into(), None).is_empty());
        assert_eq!(
            t.seen("/dev/loop0".into(), Some("disk-1")),
            vec![DiskEvent::DiskAdded]
        );
        assert_eq!(
            t.seen("/dev/loop0".into(), None),
            vec![DiskEvent::DiskRemoved]
        );
        // The node is reused for the key stick.
        assert_eq!(
            t.seen("/dev/loop0".into(), Some("key-1")),
            vec![DiskEvent::KeyAdded]
        );
        assert_eq!(
            t.seen("/dev/loop0".into(), Some("disk-1")),
            vec![DiskEvent::KeyRemoved, DiskEvent::DiskAdded]
        );
    }

    #[test]
    fn unrelated_devices_are_ignored() {
        let mut t = tracker();
        assert!(t.seen("/dev/sdc1".into(), Some("other")).is_empty());
        assert!(t.removed(&"/dev/sdc1".into()).is_empty());
    }
}
