//! The command line. Exit codes are part of the contract and printed by `--help`.

use std::path::PathBuf;

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
    /// Create the repository (on the backup volume when `disk` is configured).
    Init,
    /// Run one job now (handed to the daemon when it runs).
    Run {
        job: String,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, of one job or of all.
    Snapshots {
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore files, or a database dump, from a snapshot.
    Restore {
        job: String,
        /// A snapshot id (or its first characters), or `latest`.
        #[arg(default_value = "latest")]
        snapshot: String,
        /// Directory to restore into (created if missing); nothing is written outside it.
        #[arg(long, required_unless_present = "to_server")]
        target: Option<PathBuf>,
        /// Restore only this path of the snapshot.
        #[arg(long, conflicts_with = "dump")]
        path: Option<PathBuf>,
        /// Restore this dump (by its `dumps[].name`).
        #[arg(long)]
        dump: Option<String>,
        /// Stream the dump into its restore_command on the job's server.
        #[arg(long, requires = "dump", conflicts_with = "target")]
        to_server: bool,
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
}
