//! Monitoring adapters: healthchecks.io pings (the `Monitor` port), systemd's sd_notify
//! protocol (readiness, status line, watchdog) and the log sink (journald or stderr). None
//! may fail a backup, so they log their own errors instead of returning them.

pub mod healthchecks;
pub mod logging;
pub mod systemd;

pub use healthchecks::{Healthchecks, HealthchecksError, RetryPolicy};
pub use systemd::Systemd;
