//! `before`/`after` commands and the dead-man's switch.
//!
//! Rule: once any `before` command has started, every `after` command runs exactly once,
//! whatever happens next (failure, timeout, shutdown, burrow killed, the Pi losing power).
//!
//! Every command runs in a process group of its own and is ended with that group when its
//! `hook_timeout` passes (`Exec::exec`: TERM, then KILL), so nothing it started keeps running.
//!
//! Without `after_deadline`, burrow runs the `after` commands itself ([`run_after`]). With it,
//! the dead-man's switch ([`DeadMan`]) keeps the rule even when burrow dies at any moment.
//! Everything it needs lives on the server in a private directory `/tmp/burrow-deadman.<run
//! id>` (`mkdir -m 700`, so nobody can plant it beforehand):
//!
//! - `after.sh`: the *runner*. It claims the commands by `rm marker` (removing one file is
//!   atomic, so exactly one caller wins; a loser exits at once), then runs each `after`
//!   command in its own session with its `hook_timeout` (a watchdog in a session of its own
//!   sends TERM, then KILL, to the command's group), with stdout and stderr in `out.N` and
//!   `err.N` and `N status timed-out` in `status`, and finally creates `done`. When a command
//!   ends, the runner creates `ended.N`, kills the watchdog's group and waits for it; a
//!   watchdog whose `setsid` had not yet made that group finds `ended.N` when it starts and
//!   exits, so no watchdog outlives its command.
//! - `timer.sh`: the *timer*, started detached (`nohup setsid`) when the switch is armed
//!   (before the first `before` command); its process group is in `timer`. It sleeps for
//!   `after_deadline`, then runs the runner as `timer`, but only if `started` exists: a
//!   `before` command creates `started` as its first action ([`DeadMan::before_command`]), so
//!   when burrow died before any `before` command started, nothing was stopped and the timer
//!   only removes the directory.
//! - When burrow is done with the pull, it starts the runner itself, detached in its own
//!   session (`setsid nohup`), and waits for `done` on the same channel ([`DeadMan::run_after`]).
//!   The runner kills the timer's group when it won the claim. A burrow that dies while the
//!   runner works cannot cut it off: the runner finishes on its own, and the claim keeps the
//!   timer from running the commands again.
//!
//! What burrow tells apart after the runner: "claimed" (burrow's runner ran them), "fired"
//! (the timer had already claimed them: the deadline passed during the run) and "lost" (the
//! directory is gone: the server rebooted or /tmp was cleaned, and the timer with it; burrow
//! then runs the commands itself). burrow reads the results, logs them and removes the
//! directory. A directory left behind means burrow died; it holds the commands' output.

use std::fmt::Write as _;
use std::time::Duration;

use burrow_config::shell_quote;
use burrow_core::RunError;
use burrow_core::exec::{Exec, KILL_GRACE, OUTPUT_TAIL, humanize};

use crate::log::RunLog;

/// Runs `before` commands in order; stops at the first failure. Returns whether all passed
/// and whether any started (which obliges the `after` commands). With a dead-man's switch,
/// each command first marks on the server that it started ([`DeadMan::before_command`]).
pub async fn run_before(
    host: &impl Exec,
    cmds: &[String],
    timeout: Duration,
    deadman: Option<&DeadMan>,
    log: &RunLog,
) -> (bool, bool) {
    let mut started = false;
    for cmd in cmds {
        started = true;
        let marked = deadman.map(|d| d.before_command(cmd));
        let run = marked.as_deref().unwrap_or(cmd);
        if !run_one(host, "before", cmd, run, timeout, log).await {
            return (false, started);
        }
    }
    (true, started)
}

/// Runs every `after` command, in order, even when one fails. Returns whether all passed.
pub async fn run_after(host: &impl Exec, cmds: &[String], timeout: Duration, log: &RunLog) -> bool {
    let mut ok = true;
    for cmd in cmds {
        ok &= run_one(host, "after", cmd, cmd, timeout, log).await;
    }
    ok
}

/// Runs `run` (which is `cmd`, or `cmd` behind a mark) and logs it as `cmd`.
async fn run_one(
    host: &impl Exec,
    what: &str,
    cmd: &str,
    run: &str,
    timeout: Duration,
    log: &RunLog,
) -> bool {
    log.info(format!("{what}: running `{cmd}` on {}", host.describe()));
    match host.exec(run, timeout).await {
        Ok(out) => {
            log_output(what, &out.stdout, &out.stderr, log);
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

fn log_output(what: &str, stdout: &[u8], stderr: &[u8], log: &RunLog) {
    let stdout = String::from_utf8_lossy(stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(stderr).trim().to_owned();
    if !stdout.is_empty() {
        log.info(format!("{what}: stdout: {stdout}"));
    }
    if !stderr.is_empty() {
        log.info(format!("{what}: stderr: {stderr}"));
    }
}

/// The armed switch: its directory on the server (see the module docs).
pub struct DeadMan {
    dir: String,
    /// How long [`DeadMan::run_after`] may wait for the runner.
    budget: Duration,
}

/// The switch's directory for a run. Under /tmp with the run id (a random UUID) in its name.
fn dir_path(run_id: &str) -> String {
    format!("/tmp/burrow-deadman.{run_id}")
}

/// Whole seconds, at least one, for `sleep`.
fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// How long the runner may take for `n` commands: each its timeout and the grace to kill it.
fn budget(n: usize, hook_timeout: Duration) -> Duration {
    (Duration::from_secs(secs(hook_timeout)) + KILL_GRACE + Duration::from_secs(5)) * n as u32
        + Duration::from_secs(10)
}

/// The runner script, `after.sh WHO` (see the module docs).
fn runner_script(dir: &str, after: &[String], hook_timeout: Duration) -> String {
    let d = shell_quote(dir);
    let mut s = format!(
        "D={d}\n\
         rm \"$D/marker\" 2>/dev/null || exit 0\n\
         echo \"$1\" > \"$D/claimed\"\n\
         if [ \"$1\" = burrow ]; then\n\
         \x20 g=$(cat \"$D/timer\" 2>/dev/null)\n\
         \x20 if [ -n \"$g\" ] && {{ [ ! -r /proc/$g/cmdline ] || grep -q \"$D\" /proc/$g/cmdline 2>/dev/null; }}; then\n\
         \x20   kill -s KILL -- -$g 2>/dev/null\n\
         \x20 fi\n\
         fi\n\
         i=0\n\
         run() {{\n\
         \x20 setsid /bin/sh -c \"$1\" </dev/null >\"$D/out.$i\" 2>\"$D/err.$i\" &\n\
         \x20 p=$!\n\
         \x20 setsid /bin/sh -c \"[ -e '$D/ended.$i' ] && exit 0; sleep {t}; [ -e '$D/ended.$i' ] && exit 0; : > '$D/timedout.$i'; kill -s TERM -- -$p 2>/dev/null; sleep {g}; kill -s KILL -- -$p 2>/dev/null\" </dev/null >/dev/null 2>&1 &\n\
         \x20 w=$!\n\
         \x20 wait $p; st=$?\n\
         \x20 : > \"$D/ended.$i\"\n\
         \x20 kill -s KILL -- -$w 2>/dev/null; wait $w\n\
         \x20 t=0; [ -e \"$D/timedout.$i\" ] && t=1\n\
         \x20 echo \"$i $st $t\" >> \"$D/status\"\n\
         \x20 i=$((i+1))\n\
         }}\n",
        t = secs(hook_timeout),
        g = secs(KILL_GRACE),
    );
    for cmd in after {
        let _ = writeln!(s, "run {}", shell_quote(cmd));
    }
    s.push_str(": > \"$D/done\"\n");
    s
}

/// The timer script (see the module docs).
fn timer_script(dir: &str, deadline: Duration) -> String {
    let d = shell_quote(dir);
    format!(
        "sleep {secs}\n\
         D={d}\n\
         if [ -e \"$D/started\" ]; then exec /bin/sh \"$D/after.sh\" timer; fi\n\
         rm \"$D/marker\" 2>/dev/null && rm -rf \"$D\"\n",
        secs = secs(deadline)
    )
}

/// The script that arms the switch: the private directory, the two scripts, the marker,
/// `started` when the obligation exists from the start (a job without `before` commands),
/// and the detached timer, whose process group id (`$!`: `nohup` and `setsid` exec, and a
/// background child of a shell without job control is no group leader, so `setsid` does not
/// fork) goes to `timer`; the script returns once that group exists.
fn arm_script(
    dir: &str,
    deadline: Duration,
    after: &[String],
    hook_timeout: Duration,
    started: bool,
) -> String {
    let d = shell_quote(dir);
    format!(
        "command -v setsid >/dev/null 2>&1 || {{ echo 'the server has no setsid (util-linux or busybox); after_deadline needs it' >&2; exit 3; }}\n\
         D={d}\n\
         mkdir -m 700 \"$D\" || exit 4\n\
         printf '%s' {runner} > \"$D/after.sh\" && printf '%s' {timer} > \"$D/timer.sh\" && : > \"$D/marker\" || {{ rm -rf \"$D\"; exit 5; }}\n\
         {mark}\
         nohup setsid /bin/sh \"$D/timer.sh\" </dev/null >/dev/null 2>&1 &\n\
         p=$!; echo $p > \"$D/timer\"\n\
         i=0; while ! kill -s 0 -- -$p 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done\n",
        runner = shell_quote(&runner_script(dir, after, hook_timeout)),
        timer = shell_quote(&timer_script(dir, deadline)),
        mark = if started { ": > \"$D/started\"\n" } else { "" },
    )
}

/// What the runner left, as burrow's launcher reports it.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `claimed burrow` or `claimed timer`, then one `N status timed-out` line per command.
    Done {
        by_timer: bool,
        status: Vec<(usize, u32, bool)>,
    },
    /// The directory is gone.
    Lost,
    /// `done` did not appear within the budget.
    Unfinished,
}

fn parse_outcome(stdout: &[u8]) -> Option<Outcome> {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines();
    match lines.next()? {
        "lost" => Some(Outcome::Lost),
        "unfinished" => Some(Outcome::Unfinished),
        first => {
            let who = first.strip_prefix("claimed ")?;
            let status = lines
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let i = f.next()?.parse().ok()?;
                    let st = f.next()?.parse().ok()?;
                    let t = f.next()? == "1";
                    Some((i, st, t))
                })
                .collect();
            Some(Outcome::Done {
                by_timer: who == "timer",
                status,
            })
        }
    }
}

impl DeadMan {
    /// Arms the switch for `after` at `deadline`. `started`: the `after` commands are owed
    /// from now on (the job has no `before` commands); otherwise only once a `before` command
    /// ran [`DeadMan::before_command`]'s mark.
    pub async fn arm(
        host: &impl Exec,
        run_id: &str,
        deadline: Duration,
        after: &[String],
        hook_timeout: Duration,
        started: bool,
        log: &RunLog,
    ) -> Result<DeadMan, RunError> {
        let dir = dir_path(run_id);
        let script = arm_script(&dir, deadline, after, hook_timeout, started);
        let out = host.exec(&script, Duration::from_secs(30)).await?;
        if !out.success() {
            let why = match out.exit_status {
                Some(4) => format!("cannot create {dir} on {}", host.describe()),
                _ => out.stderr_text(),
            };
            return Err(RunError::permanent(format!(
                "arming the dead-man's switch failed ({}): {why}",
                out.status_text(),
            )));
        }
        log.info(format!(
            "dead-man's switch armed: the after commands run on {} in {} unless burrow runs them first",
            host.describe(),
            humanize(deadline)
        ));
        Ok(DeadMan {
            dir,
            budget: budget(after.len(), hook_timeout),
        })
    }

    /// `cmd` behind the mark that a `before` command started: `started` is created first, then
    /// `cmd` runs in its place (`exec`), so the mark exists exactly when the command ran.
    pub fn before_command(&self, cmd: &str) -> String {
        format!(
            ": > {}; exec /bin/sh -c {}",
            shell_quote(&format!("{}/started", self.dir)),
            shell_quote(cmd)
        )
    }

    /// Runs the `after` commands through the switch (see the module docs) and logs what they
    /// did. Returns whether all passed. A runner that burrow cannot confirm counts as failed;
    /// burrow does not run them itself then, as the runner or the timer does.
    pub async fn run_after(
        self,
        host: &impl Exec,
        after: &[String],
        hook_timeout: Duration,
        log: &RunLog,
    ) -> bool {
        let d = shell_quote(&self.dir);
        let launcher = self.launcher();
        log.info(format!(
            "after: the dead-man's switch runs {} command(s) on {} now",
            after.len(),
            host.describe()
        ));
        let out = host
            .exec(&launcher, self.budget + Duration::from_secs(30))
            .await;
        let outcome = match &out {
            Ok(o) if o.success() => parse_outcome(&o.stdout),
            _ => None,
        };
        let (by_timer, status) = match outcome {
            Some(Outcome::Done { by_timer, status }) => (by_timer, status),
            Some(Outcome::Lost) => {
                log.warn(format!(
                    "the dead-man's switch is gone from {} (did the server reboot?); running the after commands",
                    host.describe()
                ));
                return run_after(host, after, hook_timeout, log).await;
            }
            Some(Outcome::Unfinished) => {
                log.error(format!(
                    "after: the commands did not finish within {} on {}; their output is in {}",
                    humanize(self.budget),
                    host.describe(),
                    self.dir
                ));
                return false;
            }
            None => {
                let why = match out {
                    Ok(o) => format!("{} {}", o.status_text(), o.stderr_text()),
                    Err(e) => e.message,
                };
                log.error(format!(
                    "after: cannot confirm that the after commands ran ({why}); if they did not \
                     start, the dead-man's switch runs them at its deadline"
                ));
                return false;
            }
        };
        if by_timer {
            log.warn(
                "the dead-man's switch had already fired: the server ran the after commands itself",
            );
        } else {
            log.info("dead-man's switch disarmed; its timer is stopped");
        }
        let ok = self.report(host, after, &status, hook_timeout, log).await;
        if let Err(e) = host
            .exec(&format!("rm -rf {d}"), Duration::from_secs(30))
            .await
        {
            log.warn(format!("cannot remove {}: {e}", self.dir));
        }
        ok
    }

    /// The script that claims the `after` commands on the server (unless the timer did), waits
    /// for them within the budget and prints who ran them and their exit statuses.
    fn launcher(&self) -> String {
        let d = shell_quote(&self.dir);
        format!(
            "D={d}\n\
             [ -d \"$D\" ] || {{ echo lost; exit 0; }}\n\
             if [ -e \"$D/marker\" ]; then\n\
             \x20 setsid nohup /bin/sh \"$D/after.sh\" burrow </dev/null >/dev/null 2>&1 &\n\
             \x20 wait $!\n\
             fi\n\
             n=0\n\
             while [ -d \"$D\" ] && [ ! -e \"$D/done\" ] && [ $n -lt {budget} ]; do sleep 1; n=$((n+1)); done\n\
             [ -d \"$D\" ] || {{ echo lost; exit 0; }}\n\
             [ -e \"$D/done\" ] || {{ echo unfinished; exit 0; }}\n\
             echo \"claimed $(cat \"$D/claimed\")\"\n\
             cat \"$D/status\" 2>/dev/null\n\
             exit 0\n",
            budget = self.budget.as_secs()
        )
    }

    /// Logs each `after` command's output and result as the switch recorded them on the
    /// server; returns whether all passed.
    async fn report(
        &self,
        host: &impl Exec,
        after: &[String],
        status: &[(usize, u32, bool)],
        hook_timeout: Duration,
        log: &RunLog,
    ) -> bool {
        let mut ok = true;
        for (i, cmd) in after.iter().enumerate() {
            let files = host
                .exec(
                    &format!(
                        "tail -c {OUTPUT_TAIL} {out}; tail -c {OUTPUT_TAIL} {err} >&2; exit 0",
                        out = shell_quote(&format!("{}/out.{i}", self.dir)),
                        err = shell_quote(&format!("{}/err.{i}", self.dir)),
                    ),
                    Duration::from_secs(30),
                )
                .await;
            if let Ok(f) = &files {
                log_output("after", &f.stdout, &f.stderr, log);
            }
            match status.iter().find(|(n, _, _)| *n == i) {
                Some((_, 0, _)) => log.info(format!("after: `{cmd}` succeeded")),
                Some((_, _, true)) => {
                    ok = false;
                    log.error(format!(
                        "after: `{cmd}` failed: timed out after {}; its process group was killed",
                        humanize(hook_timeout)
                    ));
                }
                Some((_, st, false)) => {
                    ok = false;
                    log.error(format!("after: `{cmd}` failed: exit status {st}"));
                }
                None => {
                    ok = false;
                    log.error(format!("after: `{cmd}` failed: no exit status"));
                }
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Local;
    use std::path::Path;

    fn log() -> RunLog {
        RunLog::new("t", &uuid::Uuid::new_v4().to_string(), "local")
    }

    fn append(file: &Path) -> String {
        format!("echo x >> {}", shell_quote(&file.to_string_lossy()))
    }

    fn lines(file: &Path) -> usize {
        std::fs::read_to_string(file).map_or(0, |s| s.lines().count())
    }

    /// Whether a process group with this id still has a live member.
    fn group_alive(pgid: i32) -> bool {
        !burrow_testkit::sshd::group_members(pgid as u32).is_empty()
    }

    fn timer_pgid(run_id: &str) -> i32 {
        std::fs::read_to_string(format!("{}/timer", dir_path(run_id)))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = std::time::Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn timer_runs_after_commands_once_when_a_before_started() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("after ran");
        let log = log();
        let after = vec![append(&flag)];
        let dm = DeadMan::arm(
            &Local,
            &log.run_id,
            Duration::from_secs(1),
            &after,
            T,
            false,
            &log,
        )
        .await
        .unwrap();
        let (ok, _) = run_before(&Local, &["true".into()], T, Some(&dm), &log).await;
        assert!(ok);
        let dir = dir_path(&log.run_id);
        wait_until("the timer never ran the after commands", || {
            Path::new(&format!("{dir}/done")).exists()
        })
        .await;
        assert_eq!(lines(&flag), 1);
        assert!(dm.run_after(&Local, &after, T, &log).await);
        assert_eq!(lines(&flag), 1, "burrow must not run them again");
        assert!(log.tail().contains("already fired"), "{}", log.tail());
        assert!(!Path::new(&dir).exists());
    }

    #[tokio::test]
    async fn timer_does_nothing_when_no_before_started() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("flag");
        let log = log();
        let _dm = DeadMan::arm(
            &Local,
            &log.run_id,
            Duration::from_secs(1),
            &[append(&flag)],
            T,
            false,
            &log,
        )
        .await
        .unwrap();
        let pgid = timer_pgid(&log.run_id);
        let dir = dir_path(&log.run_id);
        wait_until("the timer did not clean up", || !Path::new(&dir).exists()).await;
        wait_until("the timer did not end", || !group_alive(pgid)).await;
        assert!(
            !flag.exists(),
            "nothing was stopped, so nothing may be started"
        );
    }

    #[tokio::test]
    async fn lost_switch_means_burrow_runs_after() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("flag");
        let log = log();
        let after = vec![append(&flag)];
        let dm = DeadMan::arm(
            &Local,
            &log.run_id,
            Duration::from_secs(30),
            &after,
            T,
            true,
            &log,
        )
        .await
        .unwrap();
        let pgid = timer_pgid(&log.run_id);
        // as after a reboot of the server: directory and timer gone, nothing fired
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        std::fs::remove_dir_all(dir_path(&log.run_id)).unwrap();
        assert!(dm.run_after(&Local, &after, T, &log).await);
        assert_eq!(lines(&flag), 1);
    }

    #[tokio::test]
    async fn disarmed_timer_is_gone_and_after_ran_once() {
        let tmp = tempfile::tempdir().unwrap();
        let flag = tmp.path().join("flag");
        let log = log();
        let after = vec![append(&flag), "echo to-out; echo to-err >&2".into()];
        let dm = DeadMan::arm(
            &Local,
            &log.run_id,
            Duration::from_secs(2),
            &after,
            T,
            true,
            &log,
        )
        .await
        .unwrap();
        let pgid = timer_pgid(&log.run_id);
        assert!(group_alive(pgid));
        assert!(dm.run_after(&Local, &after, T, &log).await);
        assert_eq!(lines(&flag), 1);
        assert!(
            !group_alive(pgid),
            "the timer must be killed with its sleep"
        );
        assert!(!Path::new(&dir_path(&log.run_id)).exists());
        let tail = log.tail();
        assert!(
            tail.contains("stdout: to-out") && tail.contains("stderr: to-err"),
            "{tail}"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(lines(&flag), 1, "nothing may run them again");
    }

    #[tokio::test]
    async fn after_timeout_in_the_switch_kills_the_command_and_the_rest_still_run() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let flag = tmp.path().join("flag");
        let log = log();
        let after = vec![
            format!(
                "echo $$ > {}; sleep 60",
                shell_quote(&pidfile.to_string_lossy())
            ),
            "exit 3".into(),
            append(&flag),
        ];
        let t = Duration::from_secs(1);
        let dm = DeadMan::arm(
            &Local,
            &log.run_id,
            Duration::from_secs(60),
            &after,
            t,
            true,
            &log,
        )
        .await
        .unwrap();
        assert!(!dm.run_after(&Local, &after, t, &log).await);
        assert_eq!(lines(&flag), 1);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !group_alive(pid),
            "the timed-out command's group must be gone"
        );
        let tail = log.tail();
        assert!(tail.contains("timed out after 1s"), "{tail}");
        assert!(tail.contains("exit status 3"), "{tail}");
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
        let (ok, started) = run_before(&Local, &before, T, None, &log).await;
        assert!(!ok && started);
        assert!(tmp.path().join("b1").exists() && !tmp.path().join("b3").exists());
        let after = vec!["exit 1".into(), format!("touch {}", p("a2"))];
        assert!(!run_after(&Local, &after, T, &log).await);
        assert!(tmp.path().join("a2").exists());
        assert!(log.tail().contains("exit status 4"), "{}", log.tail());
    }

    #[tokio::test]
    async fn hook_timeout_kills_the_command_with_its_group() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let log = RunLog::new("t", "r", "local");
        let t0 = std::time::Instant::now();
        // the shell forks `sleep` into its group; both must go
        let cmd = format!(
            "echo $$ > {}; sleep 30; true",
            shell_quote(&pidfile.to_string_lossy())
        );
        let (ok, _) = run_before(&Local, &[cmd], Duration::from_millis(300), None, &log).await;
        assert!(!ok);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(log.tail().contains("timed out"), "{}", log.tail());
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // TERM was sent when run_before returned; on a loaded machine the group may take a
        // moment to exit (KILL follows after KILL_GRACE).
        wait_until("the timed-out command's process group to be gone", || {
            !group_alive(pid)
        })
        .await;
    }

    #[test]
    fn launcher_output_is_parsed() {
        assert_eq!(parse_outcome(b"lost\n"), Some(Outcome::Lost));
        assert_eq!(parse_outcome(b"unfinished\n"), Some(Outcome::Unfinished));
        assert_eq!(
            parse_outcome(b"claimed timer\n0 0 0\n1 143 1\n"),
            Some(Outcome::Done {
                by_timer: true,
                status: vec![(0, 0, false), (1, 143, true)]
            })
        );
        assert_eq!(parse_outcome(b""), None);
    }
    // The same rules on the scripted fake of the Exec port: no process, no server.
    use burrow_testkit::exec::{Reply, ScriptedExec};

    fn cmds(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| (*c).to_owned()).collect()
    }

    #[tokio::test]
    async fn on_the_fake_before_stops_at_its_first_failure_and_after_runs_every_command() {
        let server = ScriptedExec::new("vps")
            .on("stop b", Reply::fails(1, "no such service"))
            .on("start b", Reply::fails(3, ""));
        let log = log();
        let before = cmds(&["stop a", "stop b", "stop c"]);
        assert_eq!(
            run_before(&server, &before, T, None, &log).await,
            (false, true)
        );
        assert_eq!(server.commands(), ["stop a", "stop b"]);
        let after = cmds(&["start a", "start b", "start c"]);
        assert!(!run_after(&server, &after, T, &log).await);
        assert_eq!(
            server.commands()[2..],
            ["start a", "start b", "start c"],
            "after runs every command, the failed one too"
        );
        let tail = log.tail();
        assert!(tail.contains("`stop b` failed: exit status 1"), "{tail}");
        assert!(tail.contains("no such service"), "{tail}");
        assert!(tail.contains("`start b` failed: exit status 3"), "{tail}");
    }

    #[tokio::test]
    async fn on_the_fake_a_hung_before_command_fails_at_its_timeout_and_counts_as_started() {
        let server = ScriptedExec::new("vps").on("pg_ctl stop", Reply::Hang);
        let log = log();
        let t0 = std::time::Instant::now();
        let before = cmds(&["pg_ctl stop", "never"]);
        let (ok, started) =
            run_before(&server, &before, Duration::from_millis(200), None, &log).await;
        assert!(!ok && started);
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(server.commands(), ["pg_ctl stop"]);
        assert!(log.tail().contains("timed out"), "{}", log.tail());
    }

    #[tokio::test]
    async fn on_the_fake_a_switch_that_cannot_be_armed_is_an_error_naming_the_place() {
        let server = ScriptedExec::new("vps").on("burrow-deadman.r1", Reply::fails(4, ""));
        let e = DeadMan::arm(&server, "r1", T, &cmds(&["start"]), T, false, &log())
            .await
            .err()
            .expect("arming fails");
        assert!(
            e.message
                .contains("cannot create /tmp/burrow-deadman.r1 on vps"),
            "{e}"
        );
        let broken = ScriptedExec::new("vps").on(
            "burrow-deadman",
            Reply::Fail(RunError::temporary("the connection to vps was lost")),
        );
        let e = DeadMan::arm(&broken, "r2", T, &cmds(&["start"]), T, false, &log())
            .await
            .err()
            .expect("arming fails");
        assert_eq!(e.class, burrow_core::ErrorClass::Temporary, "{e}");
    }
}
