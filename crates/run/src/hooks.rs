//! `before`/`after` commands and the dead-man's switch.
//!
//! Rule: once any `before` command has started, every `after` command runs, whatever happens
//! next (failure, timeout, shutdown). The dead-man's switch extends that rule to the case
//! where burrow cannot keep it (the Pi loses power mid-run): before the first `before`
//! command, a timer is armed *on the server* that runs the `after` commands at the deadline.
//!
//! The timer is a detached POSIX shell: `sleep N`, then `rm` a marker file and, only if that
//! `rm` succeeded, run the `after` commands. burrow disarms it the same way: it `rm`s the
//! marker first and runs the `after` commands itself only if its own `rm` succeeded. `rm` of
//! one file is atomic, so exactly one side runs them. Two cases bend that rule, on purpose
//! towards running twice rather than never: when burrow cannot reach the server to disarm,
//! it still tries the `after` commands itself; and a marker lost with the server's /tmp (a
//! reboot) took the timer with it. Starting a stopped service twice is harmless; leaving it
//! stopped is not.

use std::time::Duration;

use burrow_config::shell_quote;

use crate::host::{Host, humanize};
use crate::log::RunLog;

/// Runs `before` commands in order; stops at the first failure. Returns whether all passed
/// and whether any started (which obliges the `after` commands).
pub async fn run_before(
    host: &Host,
    cmds: &[String],
    timeout: Duration,
    log: &RunLog,
) -> (bool, bool) {
    let mut started = false;
    for cmd in cmds {
        started = true;
        if !run_one(host, "before", cmd, timeout, log).await {
            return (false, started);
        }
    }
    (true, started)
}

/// Runs every `after` command, in order, even when one fails. Returns whether all passed.
pub async fn run_after(host: &Host, cmds: &[String], timeout: Duration, log: &RunLog) -> bool {
    let mut ok = true;
    for cmd in cmds {
        ok &= run_one(host, "after", cmd, timeout, log).await;
    }
    ok
}

async fn run_one(host: &Host, what: &str, cmd: &str, timeout: Duration, log: &RunLog) -> bool {
    log.info(format!("{what}: running `{cmd}` on {}", host.describe()));
    match host.exec(cmd, timeout).await {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let stderr = out.stderr_text();
            if !stdout.is_empty() {
                log.info(format!("{what}: stdout: {stdout}"));
            }
            if !stderr.is_empty() {
                log.info(format!("{what}: stderr: {stderr}"));
            }
            if out.success() {
                log.info(format!("{what}: `{cmd}` succeeded"));
                true
            } else {
                log.error(format!("{what}: `{cmd}` failed: {}", out.status_text()));
                false
            }
        }
        Err(e) => {
            log.error(format!("{what}: `{cmd}` failed: {e}"));
            false
        }
    }
}

/// The armed timer on the server.
pub struct DeadMan {
    marker: String,
}

/// The marker file for a run. Under /tmp with the run id (a random UUID) in its name; created
/// with `mktemp`-like exclusivity (`set -C`) so another user cannot pre-create it.
fn marker_path(run_id: &str) -> String {
    format!("/tmp/burrow-deadman.{run_id}")
}

/// The shell script that arms the timer; see the module docs.
pub fn arm_script(run_id: &str, deadline: Duration, after: &[String]) -> String {
    let marker = marker_path(run_id);
    let q = shell_quote(&marker);
    let afters: Vec<String> = after
        .iter()
        .map(|c| format!("/bin/sh -c {}", shell_quote(c)))
        .collect();
    // When it fires, the timer leaves `<marker>.fired` so burrow can tell "the timer ran
    // them" from "the marker is gone" (the server rebooted and took the timer with it).
    let fired = shell_quote(&format!("{marker}.fired"));
    let timer = format!(
        "sleep {secs}; rm {q} 2>/dev/null && {{ : > {fired}; {cmds}; }}",
        secs = deadline.as_secs().max(1),
        cmds = afters.join("; ")
    );
    format!(
        "set -C && : > {q} && {{ if command -v setsid >/dev/null 2>&1; then S=setsid; else S=; fi; \
         nohup $S /bin/sh -c {timer} </dev/null >/dev/null 2>&1 & }}",
        timer = shell_quote(&timer)
    )
}

impl DeadMan {
    pub async fn arm(
        host: &Host,
        run_id: &str,
        deadline: Duration,
        after: &[String],
        log: &RunLog,
    ) -> Result<DeadMan, String> {
        let script = arm_script(run_id, deadline, after);
        let out = host.exec(&script, Duration::from_secs(30)).await?;
        if !out.success() {
            return Err(format!(
                "arming the dead-man's switch failed: {} {}",
                out.status_text(),
                out.stderr_text()
            ));
        }
        log.info(format!(
            "dead-man's switch armed: the after commands run on {} in {} unless burrow runs them first",
            host.describe(),
            humanize(deadline)
        ));
        Ok(DeadMan {
            marker: marker_path(run_id),
        })
    }

    /// Claims the `after` commands for burrow. `Ok(true)`: burrow must run them; `Ok(false)`:
    /// the timer already did.
    pub async fn disarm(self, host: &Host, log: &RunLog) -> Result<bool, String> {
        let (m, fired) = (
            shell_quote(&self.marker),
            shell_quote(&format!("{}.fired", self.marker)),
        );
        let script = format!(
            "if rm {m} 2>/dev/null; then echo claimed; \
             elif [ -e {fired} ]; then rm -f {fired}; echo fired; else echo lost; fi"
        );
        let out = host.exec(&script, Duration::from_secs(30)).await?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if answer == "claimed" {
            log.info("dead-man's switch disarmed");
            Ok(true)
        } else if answer != "fired" {
            log.warn("the dead-man's switch marker is gone (did the server reboot?); running the after commands");
            Ok(true)
        } else {
            log.warn(
                "the dead-man's switch had already fired: the server ran the after commands itself",
            );
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timer_runs_after_commands_once_when_not_disarmed() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("after ran");
        let after = vec![format!(
            "echo x >> {}",
            shell_quote(&flag.to_string_lossy())
        )];
        let log = RunLog::new("t", &uuid::Uuid::new_v4().to_string(), "local");
        let dm = DeadMan::arm(
            &Host::Local,
            &log.run_id,
            Duration::from_secs(1),
            &after,
            &log,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(std::fs::read_to_string(&flag).unwrap(), "x\n");
        assert!(
            !dm.disarm(&Host::Local, &log).await.unwrap(),
            "burrow must not run them again"
        );
    }

    #[tokio::test]
    async fn lost_marker_means_burrow_runs_after() {
        let log = RunLog::new("t", &uuid::Uuid::new_v4().to_string(), "local");
        let dm = DeadMan::arm(
            &Host::Local,
            &log.run_id,
            Duration::from_secs(2),
            &["true".into()],
            &log,
        )
        .await
        .unwrap();
        // as after a reboot of the server: marker and timer gone, nothing fired
        std::fs::remove_file(marker_path(&log.run_id)).unwrap();
        assert!(dm.disarm(&Host::Local, &log).await.unwrap());
    }

    #[tokio::test]
    async fn disarmed_timer_does_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("flag");
        let after = vec![format!("touch {}", flag.display())];
        let log = RunLog::new("t", &uuid::Uuid::new_v4().to_string(), "local");
        let dm = DeadMan::arm(
            &Host::Local,
            &log.run_id,
            Duration::from_secs(1),
            &after,
            &log,
        )
        .await
        .unwrap();
        assert!(dm.disarm(&Host::Local, &log).await.unwrap());
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(!flag.exists());
    }

    #[tokio::test]
    async fn after_runs_even_when_one_fails_and_before_stops_at_first_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n).display().to_string();
        let log = RunLog::new("t", "r", "local");
        let before = vec![
            format!("touch {}", p("b1")),
            "exit 4".into(),
            format!("touch {}", p("b3")),
        ];
        let (ok, started) = run_before(&Host::Local, &before, Duration::from_secs(5), &log).await;
        assert!(!ok && started);
        assert!(tmp.path().join("b1").exists() && !tmp.path().join("b3").exists());
        let after = vec!["exit 1".into(), format!("touch {}", p("a2"))];
        assert!(!run_after(&Host::Local, &after, Duration::from_secs(5), &log).await);
        assert!(tmp.path().join("a2").exists());
        assert!(log.tail().contains("exit status 4"), "{}", log.tail());
    }

    #[tokio::test]
    async fn hook_timeout_kills_the_command() {
        let log = RunLog::new("t", "r", "local");
        let t0 = std::time::Instant::now();
        let (ok, _) = run_before(
            &Host::Local,
            &["sleep 30".into()],
            Duration::from_millis(300),
            &log,
        )
        .await;
        assert!(!ok);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(log.tail().contains("timed out"), "{}", log.tail());
    }
}
