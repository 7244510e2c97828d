//! systemd's notify protocol for a `Type=notify` service with `WatchdogSec=`: READY once the
//! daemon can do its job, a one-line STATUS for `systemctl status`, WATCHDOG keep-alives and
//! STOPPING on shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset: a terminal, the tests of other crates) every call is
//! a no-op, so the daemon does not need two code paths. Send failures are logged, not returned:
//! there is nothing better the daemon could do about them.

use std::time::Duration;

use sd_notify::NotifyState;

/// Handle to the service manager's notification socket.
#[derive(Debug, Clone)]
pub struct Systemd {
    enabled: bool,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET` once; without it the handle does nothing.
    pub fn from_env() -> Self {
        Systemd {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        }
    }

    /// A handle that never sends anything (`burrow run`, simulations).
    pub fn disabled() -> Self {
        Systemd { enabled: false }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Start-up is complete; systemd moves the unit to "active".
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready], "ready");
    }

    /// The line `systemctl status` shows. Newlines would start new protocol fields, so they
    /// are flattened.
    pub fn status(&self, text: &str) {
        if !self.enabled {
            return;
        }
        let line = text.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&line)], "status");
    }

    /// Keep-alive; must come more often than `WatchdogSec=` (see `watchdog_interval`).
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog], "watchdog");
    }

    /// Shutdown has begun; systemd stops expecting watchdog pings.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping], "stopping");
    }

    /// How often to call `watchdog`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// recommends, when the watchdog is meant for this process (`WATCHDOG_PID` is ours or
    /// absent). `None` when there is no watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState<'_>], what: &str) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(notification = what, error = %e, "cannot notify systemd");
        }
    }
}

impl burrow_core::service::ServiceManager for Systemd {
    fn ready(&self) {
        Systemd::ready(self);
    }

    fn status(&self, text: &str) {
        Systemd::status(self, text);
    }

    fn watchdog(&self) {
        Systemd::watchdog(self);
    }

    fn stopping(&self) {
        Systemd::stopping(self);
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        Systemd::watchdog_interval(self)
    }
}
