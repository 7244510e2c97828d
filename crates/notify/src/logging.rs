//! Where log lines go: journald when systemd started burrow (JOURNAL_STREAM is set), readable
//! stderr otherwise. The libraries only emit `tracing` events; this is the one sink, which
//! the binary installs first.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// rustic_core logs every step at info; only its warnings matter to a burrow user.
const QUIET_DEPS: &str = "rustic_core=warn,rustic_backend=warn,russh=warn,zbus=warn";

/// Installs the sink: `level` (a level or a tracing filter) or else `RUST_LOG` or else
/// `default`, with the dependencies' chatter kept to their warnings.
pub fn init(level: Option<&str>, default: &str) {
    let filter = match (level, std::env::var("RUST_LOG")) {
        (Some(l), _) => format!("{l},{QUIET_DEPS}"),
        (None, Ok(env)) => env,
        (None, Err(_)) => format!("{default},{QUIET_DEPS}"),
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                journald
                    .with_syslog_identifier("burrow".into())
                    // Plain JOB=, RUN_ID=, SERVER= fields (the default prefix is F_).
                    .with_field_prefix(None),
            )
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour())
        .try_init();
}

/// Colour only for a person at a terminal: a pipe, a file or a cron mail gets plain text, and
/// `NO_COLOR` (https://no-color.org) turns it off there too.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
