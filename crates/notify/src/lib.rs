//! Monitoring: healthchecks.io pings, systemd sd_notify
