//! Daemon: scheduler with catch-up, run queue, control socket, signals
