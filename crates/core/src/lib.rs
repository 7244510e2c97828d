//! burrow's core: the domain types and the ports (traits) through which the run pipeline
//! talks to the outside world, plus pure policies that need no I/O beyond what a port does.
//!
//! Nothing here knows about russh, rustic_core, zbus or tokio: adapters live in their own
//! crates and convert foreign types into these at their boundary.

pub mod bytes;
pub mod clock;
pub mod disk;
pub mod exclude;
pub mod exec;
pub mod exit;
pub mod fsutil;
pub mod guard;
pub mod local;
pub mod mem;
pub mod monitor;
pub mod ping;
pub mod problems;
pub mod repository;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod server;
pub mod service;
pub mod source;

pub use exit::Exit;
pub use problems::{Problem, Problems};
pub use run::{ErrorClass, RunError, RunStatus, RunSummary};

/// The first 8 characters of a snapshot, pack or lock id, as restic shows them (a shorter
/// id whole).
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_ids_never_panic() {
        assert_eq!(super::short_id("47589356e1f0a2b3"), "47589356");
        assert_eq!(super::short_id("abc"), "abc");
        assert_eq!(super::short_id("ééééé"), "éééé");
        assert_eq!(super::short_id(""), "");
    }
}
