//! The command line. Exit codes are part of the contract and printed by `--help`.

use std::path::PathBuf;

use burrow_run::{browse, restore};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "burrow",
    version,
    about = "Pull backups from servers over SSH into an encrypted, versioned restic-format repository",
    long_about = "burrow pulls files and database dumps from servers over SSH (the server holds no \
credentials for the backup box) into a deduplicated, encrypted restic-format repository on a \
hot-plugged, LUKS-encrypted disk. Stock restic can read the repository.",
    after_help = burrow_core::Exit::HELP,
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = "BURROW_CONFIG", default_value = burrow_config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG also works.
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration file and print every error in it.
    CheckConfig,
    /// Check this machine for what the config needs: UDisks2 and its LUKS plugin, the key stick
    /// and the backup disk, CA certificates for pings, the time zone, free space, restic. Each
    /// problem is printed with its fix; nothing is changed. Exit 0 when nothing fails (warnings
    /// allowed), 1 otherwise.
    Doctor {
        /// Print the findings as one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Create the repository (on the backup volume when `disk` is configured).
    Init,
    /// Run one job now (handed to the daemon when it runs).
    Run {
        job: String,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, of one job or of all. Snapshot files that cannot be read are named
    /// (exit 3; in --json as entries with "damaged": true).
    Snapshots {
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore files, or a database dump, from a snapshot.
    Restore(restore::RestoreArgs),
    /// List what a snapshot holds at PATH (its root without one): one level, or everything
    /// below with --recursive, as `restic ls`.
    Ls(browse::LsArgs),
    /// Find the snapshots of JOB holding a path that matches PATTERN (a glob on the name, on
    /// the whole path when it holds a `/`), newest first, with size and time.
    Find(browse::FindArgs),
    /// What changed from snapshot BEFORE to AFTER of JOB (at PATH), as `restic diff`:
    /// + added, - removed, M content changed, T type changed, U metadata (with --metadata).
    Diff(browse::DiffArgs),
    /// Write the file PATH of a snapshot to stdout.
    Dump(browse::DumpArgs),
    /// Per job: its snapshots, the files and bytes of the newest, of all added up, and what
    /// they take in the repository after deduplication and compression.
    Stats(browse::StatsArgs),
    /// Accept an anomaly of JOB (its newest snapshot looked nothing like the one before: no
    /// files, most files gone or changed): the change was real, so retention of the job
    /// resumes at its next run.
    Accept { job: String },
    /// Apply the job's `retention` now: list the snapshots it keeps (with restic's reasons) and
    /// removes, exactly as `restic forget --keep-*` would, except that the newest complete
    /// snapshot is always kept; then remove them. Their data stays until `burrow prune`.
    Forget {
        job: String,
        /// Only show the plan; change nothing.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Print the plan as one JSON object: {"keep": [...], "remove": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Remove the data that no snapshot references any more (after `burrow forget`).
    Prune,
    /// Check the repository now, as the scheduled check does (`check:`), and print every
    /// problem. Damaged packs are taken out of the index, so the next run stores their data
    /// again. Exit 0 clean, 1 damaged or not checked.
    Check {
        /// Also read back and verify pack data: all of it, or a share (`5%`, `1/7`).
        #[arg(long, value_name = "SHARE", num_args = 0..=1, require_equals = true, default_missing_value = "all")]
        read_data: Option<String>,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: schedules, hot-plug, monitoring (systemd Type=notify).
    Daemon {
        /// Simulated disks and no hardware access: for demos and tests.
        #[arg(long)]
        sim: bool,
    },
    /// Show the daemon's view: each job's last result and next run, the disk, the repository.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Try burrow without a server or disk: back up a directory of this machine into a
    /// repository under DIR, then list the snapshot.
    Quickstart {
        /// Scratch directory for the config, password, repository and state.
        #[arg(long, default_value = "/tmp/burrow-quickstart")]
        dir: PathBuf,
        /// What to back up (default: the current directory).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Helpers for installing burrow: the SSH key, the server's host key, the key stick.
    #[command(subcommand)]
    Setup(Setup),
    /// Write the man pages or shell completions (rendered from this command line).
    #[command(subcommand)]
    Generate(Generate),
}

#[derive(Debug, Subcommand)]
pub enum Setup {
    /// Create the ed25519 key burrow logs in with, and print the lines for the server:
    /// authorized_keys and a sudoers rule derived from the config.
    Key {
        /// The private key to create (mode 0600; the public key goes to FILE.pub).
        #[arg(long, default_value = "/etc/burrow/id_ed25519")]
        file: PathBuf,
        /// Do not create a key: print the server lines for the existing FILE.
        #[arg(long)]
        existing: bool,
    },
    /// Fetch a server's host key (without trusting it) and print it with its fingerprint, to
    /// compare with the server before pinning it as `host_key:`.
    Trust {
        /// The server's name in the config (`servers.NAME`).
        server: String,
        /// Also write the key as `servers.SERVER.host_key` into the config file.
        #[arg(long)]
        write: bool,
    },
    /// Write a random LUKS key file (and, with --password, a repository password file) on a
    /// mounted USB stick, and print the cryptsetup command and config lines.
    KeyStick {
        /// Where the stick is mounted.
        mountpoint: PathBuf,
        /// Size of the key file.
        #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=8_388_608))]
        bytes: u32,
        /// Also write a random repository password file, `burrow-password`.
        #[arg(long)]
        password: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// The man pages: burrow.1 to stdout, or one page per subcommand into DIR.
    Man {
        /// Write burrow.1, burrow-run.1, ... into this directory (created if missing).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A completion script for SHELL, to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
