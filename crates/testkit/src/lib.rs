//! Test helpers shared by the crates' integration tests: a private sshd on 127.0.0.1 with
//! throwaway keys, a local HTTP server standing in for healthchecks.io, a private PostgreSQL
//! cluster, image files attached as loop devices through UDisks2, and the rule for services
//! that are missing (skip loudly locally, fail under `CI=true`). And the fakes of core's
//! ports for in-process tests: a scripted `Exec`, a test clock and a recording monitor
//! (`fakes`), servers (`servers`) and an in-memory repository (`memrepo`).

pub mod exec;
pub mod fakes;
pub mod http;
pub mod loopdev;
pub mod memrepo;
pub mod postgres;
pub mod proxy;
pub mod servers;
pub mod sshd;

/// Called when a test cannot find a tool or service it needs. Under `CI=true` this panics (CI
/// must never skip); locally it prints a loud message and the test returns early.
pub fn missing(what: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("required for this test but missing under CI=true: {what}: {why}");
    }
    eprintln!(
        "\n*** SKIPPED: {what} is not available: {why} (set CI=true to make this a failure)\n"
    );
}

/// `len` bytes that do not compress and repeat nowhere (xorshift64 from `seed`): file
/// content for tests of chunking and deduplication.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}
