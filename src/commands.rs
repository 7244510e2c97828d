//! One function per subcommand: it calls the library, prints the result and returns the exit
//! code; errors are printed once (`output::settle`).

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use burrow_config::Config;
use burrow_core::bytes::human;
use burrow_core::repository::RestoreRequest;
use burrow_core::run::RunControl;
use burrow_core::{Exit, RunError, RunSummary, short_id};
use burrow_run::command::{self, CommandError};
use burrow_run::{check_repository, maintain, restore, run_job, show};

use crate::adapters::{RealPorts, by_hand, command as on_ports};
use crate::cli::{Cli, Command, Generate};
use crate::output::{fail, json, settle};

pub async fn dispatch(cli: Cli) -> Exit {
    // A run on a terminal shows its progress instead; doctor's findings are its output.
    let quiet = (matches!(&cli.command, Command::Run { json: false, .. })
        && std::io::stderr().is_terminal())
        || matches!(&cli.command, Command::Doctor { .. });
    crate::logging::init(
        cli.log_level.as_deref(),
        if quiet { "warn" } else { "info" },
    );
    match &cli.command {
        Command::Quickstart { dir, path } => {
            return crate::quickstart::run(dir, path.as_deref()).await;
        }
        Command::Generate(Generate::Man { dir }) => return crate::generate::man(dir.as_deref()),
        Command::Generate(Generate::Completions { shell }) => {
            return crate::generate::completions(*shell);
        }
        Command::Setup(what) => return crate::setup::run(&cli.config, what).await,
        _ => {}
    }
    let cfg = match burrow_config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Usage;
        }
    };
    if let Command::Daemon { sim } = cli.command {
        return crate::daemon::serve(cfg, sim).await;
    }
    let cfg = &cfg;
    match cli.command {
        Command::CheckConfig => {
            outp!("{}", show::config(cfg));
            Exit::Ok
        }
        Command::Doctor { json } => doctor(cfg, json).await,
        Command::Init => on_ports(cfg, async |p| init(cfg, p).await).await,
        Command::Run { job, json } => run(cfg, &job, json).await,
        Command::Snapshots { job, json } => {
            on_ports(cfg, async |p| snapshots(cfg, p, job.as_deref(), json).await).await
        }
        Command::Restore {
            job,
            snapshot,
            target,
            path,
            dump,
            to_server,
            workers,
        } => {
            let req = RestoreRequest {
                path: path.as_deref(),
                workers,
                ..RestoreRequest::new(&job, &snapshot, target.as_deref().unwrap_or(Path::new("")))
            };
            let dump = dump.as_deref();
            on_ports(cfg, async |p| restore(cfg, p, req, dump, to_server).await).await
        }
        Command::Accept { job } => accept(cfg, &job),
        Command::Forget { job, dry_run, json } => {
            on_ports(cfg, async |p| forget(cfg, p, &job, dry_run, json).await).await
        }
        Command::Prune => on_ports(cfg, async |p| prune(cfg, p).await).await,
        Command::Check { read_data, json } => check(cfg, read_data.as_deref(), json).await,
        Command::Status { json } => status(cfg, json).await,
        Command::Quickstart { .. }
        | Command::Generate(_)
        | Command::Setup(_)
        | Command::Daemon { .. } => {
            unreachable!("handled above")
        }
    }
}

fn accept(cfg: &Config, job: &str) -> Exit {
    let resumed = command::job(cfg, job).and_then(|_| {
        let pause = burrow_run::anomaly::PauseFile::new(&cfg.state_dir);
        pause
            .resume(job)
            .map_err(|e| CommandError::Run(RunError::permanent(e.to_string())))
    });
    settle(resumed, |paused| {
        match paused {
            Some(p) => out!(
                "{job}: anomaly of snapshot {} accepted ({}); retention resumes at the next run",
                short_id(&p.snapshot),
                p.reason
            ),
            None => out!("{job}: retention is not paused; nothing to accept"),
        }
        Exit::Ok
    })
}

async fn doctor(cfg: &Config, as_json: bool) -> Exit {
    use burrow_run::doctor::{self, Verdict};
    let probes = crate::adapters::doctor_probes(cfg).await;
    let findings = doctor::judge(cfg, &doctor::gather(cfg, probes));
    if as_json {
        json(&findings);
    } else {
        outp!("{}", show::findings(&cfg.file, &findings));
    }
    if findings.iter().any(|f| f.verdict == Verdict::Fail) {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

async fn init(cfg: &Config, ports: RealPorts<'_>) -> Exit {
    settle(maintain::init(cfg, ports).await, |(id, path)| {
        out!("created repository {id} at {}", path.display());
        Exit::Ok
    })
}

async fn snapshots(cfg: &Config, ports: RealPorts<'_>, job: Option<&str>, as_json: bool) -> Exit {
    settle(maintain::snapshots(cfg, ports, job).await, |listing| {
        if as_json {
            let mut all: Vec<serde_json::Value> = (listing.snapshots.iter())
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect();
            all.extend((listing.damaged.iter()).filter_map(|d| serde_json::to_value(d).ok()));
            json(&all);
        } else {
            outp!("{}", show::snapshots(&listing.snapshots));
        }
        for d in &listing.damaged {
            eprintln!("{}", show::damaged(d));
        }
        // Damaged files cannot be read, so they cannot be told apart by job: they are always
        // named, and make the exit code 3.
        if listing.damaged.is_empty() {
            Exit::Ok
        } else {
            Exit::Partial
        }
    })
}

/// `burrow check`: the scheduled check's code and report, by hand.
async fn check(cfg: &Config, read_data: Option<&str>, as_json: bool) -> Exit {
    if let Some(rd) = read_data
        && !burrow_config::valid_read_data(rd)
    {
        return fail(
            Exit::Usage,
            format!("--read-data={rd}: expected all, a percentage (5%) or n/m (1/7)"),
        );
    }
    let ctl = RunControl::new(tokio::sync::watch::channel(false).1);
    let checked = by_hand(cfg, "check", async |p| {
        check_repository(cfg, p, ctl, read_data).await
    });
    let summary = checked.await.summary;
    if as_json {
        json(&summary);
    } else {
        outp!("{}", show::check(&summary));
    }
    summary.status.exit()
}

/// `burrow forget JOB`: the job's retention plan, applied unless `dry_run`.
async fn forget(
    cfg: &Config,
    ports: RealPorts<'_>,
    job: &str,
    dry_run: bool,
    as_json: bool,
) -> Exit {
    let keep = match command::retention(cfg, job) {
        Ok(k) => k,
        Err(e) => return fail(e.exit(), e),
    };
    settle(
        maintain::forget(cfg, ports, job, keep, dry_run).await,
        |done| {
            match done.resumed {
                Some(Ok(Some(p))) => eprintln!(
                    "job {job}: retention was paused by the anomaly of snapshot {} ({}); it resumes",
                    short_id(&p.snapshot),
                    p.reason
                ),
                Some(Err(e)) => eprintln!("burrow: {e}"),
                Some(Ok(None)) | None => {}
            }
            if as_json {
                json(&done.plan);
            } else {
                outp!("{}", show::plan(job, &done.plan, dry_run));
            }
            Exit::Ok
        },
    )
}

/// `burrow prune`: removes the data no snapshot references.
async fn prune(cfg: &Config, ports: RealPorts<'_>) -> Exit {
    settle(maintain::prune(cfg, ports).await, |path| {
        out!(
            "pruned {}: data no snapshot references is removed",
            path.display()
        );
        Exit::Ok
    })
}

/// `burrow restore`: files or a dump into the target, or a dump into its restore command.
async fn restore(
    cfg: &Config,
    ports: RealPorts<'_>,
    req: RestoreRequest<'_>,
    dump: Option<&str>,
    to_server: bool,
) -> Exit {
    let at = (req.job, req.snapshot);
    let written = match dump {
        Some(name) if to_server => {
            let fed = restore::dump_to_server(cfg, ports, at, name).await;
            return settle(fed, |r| {
                out!(
                    "restored dump {name} ({} bytes) with `{}` on {}",
                    r.bytes,
                    r.command,
                    r.host
                );
                Exit::Ok
            });
        }
        Some(name) => restore::dump_to_dir(cfg, ports, at, name, req.target).await,
        None => restore::files(cfg, ports, req).await,
    };
    settle(written, |out| {
        eprint!("{}", show::not_restored(&out));
        match dump {
            Some(name) if out.complete() => {
                let dest = req.target.join(name).display().to_string();
                out!("restored dump {name} ({} bytes) to {dest}", out.bytes);
            }
            Some(name) => {
                let dest = req.target.join(name).display().to_string();
                return fail(
                    Exit::Failed,
                    format!("dump {name} was not restored to {dest}"),
                );
            }
            None => outp!("{}", show::restored(&out, req.target)),
        }
        if out.complete() {
            Exit::Ok
        } else {
            Exit::Partial
        }
    })
}

async fn run(cfg: &Config, job: &str, as_json: bool) -> Exit {
    if let Err(e) = command::job(cfg, job) {
        return fail(e.exit(), e);
    }
    // A running daemon owns the repository: hand the run over and wait for its summary.
    match burrow_daemon::control::Client::connect().await {
        Ok(Some(client)) => {
            return match client.run(job).await {
                Ok(summary) => report(&summary, as_json),
                Err(e) => fail(Exit::Failed, format!("the daemon did not run {job}: {e}")),
            };
        }
        Ok(None) => {}
        Err(e) => eprintln!("burrow: warning: {e}; running without the daemon"),
    }
    let ctl = RunControl::new(stop_on_signal());
    let monitor = burrow_notify::Healthchecks::new(cfg.pings());
    let run_id = ctl.run_id.clone();
    let progress =
        (!as_json && std::io::stderr().is_terminal()).then(|| spinner(ctl.bytes_read.clone()));
    let ran = by_hand(cfg, job, async |p| run_job(cfg, p, job, ctl).await);
    let done = burrow_core::monitor::monitored(&monitor, job, &run_id, ran).await;
    if let Some((pb, task)) = progress {
        task.abort();
        pb.finish_and_clear();
    }
    report(&done.summary, as_json)
}

/// Set on SIGTERM or Ctrl-C: the pull stops safely; the after commands still run.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("burrow: stopping safely (after commands still run)...");
            let _ = tx.send(true);
        }
    });
    rx
}

fn spinner(
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} pulling: {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let pb2 = pb.clone();
    let task = tokio::spawn(async move {
        loop {
            pb2.set_message(format!("{} read", human(bytes.load(Ordering::Relaxed))));
            pb2.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (pb, task)
}

/// Prints a run summary and returns its exit code.
pub fn report(s: &RunSummary, as_json: bool) -> Exit {
    if as_json {
        json(s);
    } else {
        outp!("{}", show::summary(s));
    }
    s.status.exit()
}

/// `burrow status`: the daemon's view, or without a daemon the same view from `state_dir`.
async fn status(cfg: &Config, as_json: bool) -> Exit {
    use burrow_daemon::control::{Client, render_status};
    let view = match Client::connect().await {
        Ok(Some(client)) => client
            .status()
            .await
            .map_err(|e| RunError::permanent(e.to_string())),
        Ok(None) => Ok(without_daemon(cfg).await),
        Err(e) => {
            eprintln!("burrow: warning: {e}; showing what state_dir holds");
            Ok(without_daemon(cfg).await)
        }
    };
    settle(view, |v| {
        if as_json {
            json(&v);
        } else {
            outp!("{}", render_status(&v));
        }
        Exit::Ok
    })
}

async fn without_daemon(cfg: &Config) -> serde_json::Value {
    use burrow_core::clock::{Clock, SystemClock};
    use burrow_daemon::status::without_daemon;
    let now = SystemClock.now();
    let view = crate::adapters::with_disk(cfg, async |d| without_daemon(cfg, d, now).await);
    match view.await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("burrow: warning: the backup disk's state is unknown: {e}");
            without_daemon(cfg, None::<&burrow_disk::UDisks2Manager>, now).await
        }
    }
}
