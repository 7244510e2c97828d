//! Daemon: scheduler with catch-up, run queue, control socket, signals

pub mod control;
pub mod plan;
pub mod serve;
pub mod state;
pub mod status;
