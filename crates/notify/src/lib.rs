//! Monitoring adapters: healthchecks.io pings (the `Monitor` port) and systemd's sd_notify
//! protocol (readiness, status line, watchdog). Neither may fail a backup, so both log their
//! own errors instead of returning them.

pub mod healthchecks;
pub mod systemd;

pub use healthchecks::{Healthchecks, HealthchecksError, RetryPolicy};
pub use systemd::Systemd;
