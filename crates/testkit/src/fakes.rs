//! Fakes of the clock and monitoring ports, for the daemon's loop run in-process.

use std::sync::Mutex;

use burrow_core::RunStatus;
use burrow_core::clock::Clock;
use burrow_core::monitor::{Monitor, Outcome};
use burrow_core::ping::PingUrl;
use chrono::{DateTime, TimeDelta, Utc};

/// A clock that starts at a chosen time and runs with tokio's clock. Under
/// `#[tokio::test(start_paused = true)]` tokio's time moves only when every task waits, and
/// then straight to the next timer: a day of the daemon's schedule passes in milliseconds,
/// and this clock passes with it.
#[derive(Debug)]
pub struct TestClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TestClock {
    pub fn starting_at(base: DateTime<Utc>) -> TestClock {
        TestClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + TimeDelta::from_std(self.start.elapsed()).unwrap_or(TimeDelta::MAX)
    }
}

/// One thing told to monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    Start {
        job: String,
        run_id: String,
    },
    Finish {
        job: String,
        run_id: String,
        status: RunStatus,
    },
    Heartbeat(String),
}

/// Records what it is told, in order.
#[derive(Debug, Default)]
pub struct RecordingMonitor {
    pings: Mutex<Vec<Ping>>,
}

impl RecordingMonitor {
    pub fn pings(&self) -> Vec<Ping> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Ping>> {
        self.pings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Monitor for RecordingMonitor {
    async fn start(&self, job: &str, run_id: &str) {
        self.lock().push(Ping::Start {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
        });
    }

    async fn finish(&self, job: &str, run_id: &str, outcome: &Outcome) {
        self.lock().push(Ping::Finish {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
            status: outcome.status,
        });
    }

    async fn heartbeat(&self, url: &PingUrl) {
        self.lock().push(Ping::Heartbeat(url.to_string()));
    }
}
