//! Exit codes: a contract with scripts and with systemd. Documented in `burrow --help`.

/// The process exit codes burrow uses. Scripts may rely on these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// The command failed; nothing new was stored (earlier snapshots are untouched).
    Failed = 1,
    /// Usage or configuration error: fix the command line or the config file.
    Usage = 2,
    /// A snapshot was made, but some files, directories or dumps could not be read, or an
    /// `after` command failed. Also: `snapshots` listed the snapshots but a snapshot file
    /// could not be read (named).
    Partial = 3,
    /// Skipped: the backup disk or the key stick is absent, or the disk is not the configured
    /// one (EX_TEMPFAIL, as borgmatic's soft failure). Nothing was written.
    Skipped = 75,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The text for `--help`.
    pub const HELP: &'static str = "\
Exit codes:
   0  ok
   1  failed (nothing new stored; earlier snapshots untouched)
   2  usage or configuration error
   3  partial: a snapshot was made, but something was unreadable or an after command
      failed (listed in the summary); for snapshots: a snapshot file cannot be read
  75  skipped: the backup disk or the key stick is absent, or the disk is not the one
      `burrow init` prepared (nothing was written)";
}
