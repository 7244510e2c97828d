//! The service manager port: what the daemon tells systemd (`Type=notify`, `WatchdogSec=`).
//! Outside systemd the adapter does nothing, so the daemon has one code path.

use std::time::Duration;

pub trait ServiceManager: Send + Sync + 'static {
    /// Start-up is complete.
    fn ready(&self);
    /// The one line `systemctl status` shows.
    fn status(&self, text: &str);
    /// Keep-alive, every [`ServiceManager::watchdog_interval`].
    fn watchdog(&self);
    /// Shutdown has begun.
    fn stopping(&self);
    /// How often to call `watchdog`; `None` without a watchdog.
    fn watchdog_interval(&self) -> Option<Duration>;
}
