//! The integration tests of the `burrow` binary, in one test binary (one link, one process):
//! each file next to this one is a module, and `util` holds the helpers they share.
//!
//! The VM tier is the ignored test in `vm`: `cargo test --test integration vm:: -- --ignored`
//! (see tests/vm.rs).

mod util;

mod browse;
mod cli;
mod daemon;
mod disk_e2e;
mod generate;
mod locks;
mod pg_dump;
mod retention;
mod setup;
mod ssh_e2e;
mod vm;
