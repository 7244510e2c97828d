use std::path::PathBuf;
use std::time::Duration;

/// What the disk adapter needs to know about the key stick and the backup disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// Filesystem UUID (`ID_FS_UUID`, UDisks2 `IdUUID`) of the key stick.
    pub key_fs_uuid: String,
    /// Path of the key file, relative to the root of the key stick's filesystem.
    pub key_file: PathBuf,
    /// UUID of the LUKS container on the backup disk, or of its filesystem if it is not
    /// encrypted.
    pub backup_uuid: String,
    /// Whether the daemon should lock the disk when the key stick is pulled. The adapter only
    /// reports the event; the daemon decides when releasing is safe.
    pub lock_when_key_removed: bool,
    /// How long a sleeping disk may take to answer after mounting.
    pub spinup_timeout: Duration,
}

impl DiskSettings {
    /// Settings with the defaults for the flags: lock when the key is removed, 60 s spin-up.
    pub fn new(
        key_fs_uuid: impl Into<String>,
        key_file: impl Into<PathBuf>,
        backup_uuid: impl Into<String>,
    ) -> Self {
        Self {
            key_fs_uuid: key_fs_uuid.into(),
            key_file: key_file.into(),
            backup_uuid: backup_uuid.into(),
            lock_when_key_removed: true,
            spinup_timeout: Duration::from_secs(60),
        }
    }
}

/// UUIDs are compared case-insensitively: udev and UDisks2 report lower case, people copy
/// them from wherever.
pub(crate) fn uuid_eq(a: &str, b: &str) -> bool {
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}
