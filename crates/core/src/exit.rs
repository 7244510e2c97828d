//! Exit codes: a contract with scripts and with systemd. Documented in `burrow --help`.

/// The process exit codes burrow uses. Scripts may rely on these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// The command failed; nothing new was stored (earlier snapshots are untouched). Also:
    /// the repository is locked (by restic, or by burrow with another `state_dir`), another
    /// burrow process of this `state_dir` holds its lock, and `burrow daemon` finds another
    /// daemon on the same `state_dir` or control socket (a state to wait out or stop, not a
    /// configuration error).
    Failed = 1,
    /// Usage or configuration error: fix the command line or the config file.
    Usage = 2,
    /// A snapshot was made, but some files, directories or dumps could not be read, or an
    /// `after` command failed; or a restore left out entries it refused or could not read;
    /// or `snapshots` listed the snapshots but a snapshot file could not be read (named).
    Partial = 3,
    /// A complete snapshot was saved, but retention (forget or prune) or another step after
    /// the snapshot failed; the summary says which.
    Warning = 4,
    /// A snapshot was made, but it looks nothing like the one before it (no files, most files
    /// gone or changed): it is tagged `anomaly` and retention of the job is paused until
    /// `burrow accept JOB` or `burrow forget JOB`.
    Anomaly = 5,
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
      failed (listed in the summary); for restore: some entries were not restored (named);
      for snapshots: a snapshot file cannot be read
   4  warning: a complete snapshot was saved, but retention (forget/prune) failed
      (the summary says why)
   5  anomaly: a snapshot was made but looks nothing like the one before it (no files,
      most files gone or changed); retention of the job is paused until `burrow accept JOB`
  75  skipped: the backup disk or the key stick is absent, or the disk is not the one
      `burrow init` prepared (nothing was written)";

    /// The exit codes as (code, meaning), read from [`Exit::HELP`], so that the man page
    /// and `--help` cannot disagree.
    pub fn codes() -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        for line in Exit::HELP.lines().skip(1) {
            let t = line.trim();
            match t.split_once(char::is_whitespace) {
                Some((code, rest)) if code.bytes().all(|b| b.is_ascii_digit()) => {
                    out.push((code, rest.trim().to_owned()));
                }
                _ => {
                    if let Some(last) = out.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(t);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_come_from_the_help_text() {
        let codes = Exit::codes();
        let nums: Vec<&str> = codes.iter().map(|(c, _)| *c).collect();
        assert_eq!(nums, ["0", "1", "2", "3", "4", "5", "75"]);
        assert!(codes[5].1.contains("anomaly"), "{codes:?}");
        assert!(codes[4].1.contains("retention"), "{codes:?}");
        assert!(codes[3].1.contains("after command failed"), "{codes:?}");
        // The help names exactly the codes of the enum, in order.
        let all = [
            Exit::Ok,
            Exit::Failed,
            Exit::Usage,
            Exit::Partial,
            Exit::Warning,
            Exit::Anomaly,
            Exit::Skipped,
        ];
        let named: Vec<String> = all.iter().map(|e| e.code().to_string()).collect();
        assert_eq!(nums, named);
    }
}
