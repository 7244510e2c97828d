//! Daemon: scheduler with catch-up, run queue, control socket, signals

pub mod plan;
pub mod state;
