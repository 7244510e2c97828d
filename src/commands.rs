//! One function per subcommand. Each returns the exit code; errors are printed here, once.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use burrow_config::Config;
use burrow_core::Exit;
use burrow_core::bytes::human;
use burrow_core::disk::DiskManager;
use burrow_core::exec::Exec;
use burrow_core::run::{RunControl, RunReport};
use burrow_core::{RunError, RunSummary, short_id};
use burrow_repo::Repo;
use burrow_run::place;
use burrow_run::{run_job, show};

use crate::cli::{Cli, Command, Generate};
use crate::output::fail;

pub async fn dispatch(cli: Cli) -> Exit {
    // A run on a terminal shows its progress instead; doctor's findings are its output.
    let quiet = (matches!(&cli.command, Command::Run { json: false, .. })
        && std::io::stderr().is_terminal())
        || matches!(&cli.command, Command::Doctor { .. });
    let default_level = if quiet { "warn" } else { "info" };
    crate::logging::init(cli.log_level.as_deref(), default_level);

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
    match cli.command {
        Command::CheckConfig => check_config(&cfg),
        Command::Doctor { json } => doctor(&cfg, json).await,
        Command::Init => {
            crate::adapters::command_with_disk(&cfg, async |d| init(&cfg, d).await).await
        }
        Command::Run { job, json } => run(&cfg, &job, json).await,
        Command::Snapshots { job, json } => {
            crate::adapters::command_with_disk(&cfg, async |d| {
                snapshots(&cfg, d, job.as_deref(), json).await
            })
            .await
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
            let req = RestoreArgs {
                job: &job,
                snapshot: &snapshot,
                target: target.as_deref(),
                path: path.as_deref(),
                dump: dump.as_deref(),
                to_server,
                workers,
            };
            crate::adapters::command_with_disk(&cfg, async |d| restore(&cfg, d, req).await).await
        }
        Command::Accept { job } => accept(&cfg, &job),
        Command::Forget { job, dry_run, json } => {
            crate::adapters::command_with_disk(&cfg, async |d| {
                forget(&cfg, d, &job, dry_run, json).await
            })
            .await
        }
        Command::Prune => {
            crate::adapters::command_with_disk(&cfg, async |d| prune(&cfg, d).await).await
        }
        Command::Check { read_data, json } => check(&cfg, read_data.as_deref(), json).await,
        Command::Daemon { sim } => crate::daemon::serve(cfg, sim).await,
        Command::Status { json } => status(&cfg, json).await,
        Command::Quickstart { .. } | Command::Generate(_) | Command::Setup(_) => {
            unreachable!("handled above")
        }
    }
}

fn accept(cfg: &Config, job: &str) -> Exit {
    if cfg.job(job).is_none() {
        return fail(
            Exit::Usage,
            format!("no job named {job:?} in {}", cfg.file.display()),
        );
    }
    match burrow_run::anomaly::PauseFile::new(&cfg.state_dir).resume(job) {
        Ok(Some(p)) => {
            out!(
                "{job}: anomaly of snapshot {} accepted ({}); retention resumes at the next run",
                short_id(&p.snapshot),
                p.reason
            );
            Exit::Ok
        }
        Ok(None) => {
            out!("{job}: retention is not paused; nothing to accept");
            Exit::Ok
        }
        Err(e) => fail(Exit::Failed, e),
    }
}

/// The result of work done on a blocking thread: its error (or the thread's) is printed once
/// and becomes [`Exit::Failed`].
fn joined<T, E: std::fmt::Display>(
    res: Result<Result<T, E>, tokio::task::JoinError>,
) -> Result<T, Exit> {
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(fail(Exit::Failed, e)),
        Err(e) => Err(fail(Exit::Failed, e)),
    }
}

fn check_config(cfg: &Config) -> Exit {
    let enabled = cfg.jobs.values().filter(|j| j.enabled).count();
    out!(
        "{}: ok ({} server(s), {} job(s), {} enabled)",
        cfg.file.display(),
        cfg.servers.len(),
        cfg.jobs.len(),
        enabled
    );
    for job in cfg.jobs.values() {
        let when = match &job.schedule {
            Some(s) => format!("schedule {:?}", s.expr()),
            None => "runs only when asked".into(),
        };
        let state = if job.enabled { "" } else { " (disabled)" };
        out!(
            "  job {}{state}: {}, {} path(s), {} dump(s), {}",
            job.name,
            job.server
                .as_deref()
                .map_or("local".to_owned(), |s| format!("server {s}")),
            job.paths.len(),
            job.dumps.len(),
            when
        );
    }
    Exit::Ok
}

async fn doctor(cfg: &Config, json: bool) -> Exit {
    use burrow_run::doctor::{self, Verdict};
    let probes = crate::adapters::doctor_probes(cfg).await;
    let findings = doctor::judge(cfg, &doctor::gather(cfg, probes));
    if json {
        let text = serde_json::to_string_pretty(&findings).expect("findings serialise");
        out!("{text}");
    } else {
        outp!("{}", show::findings(&cfg.file, &findings));
    }
    if findings.iter().any(|f| f.verdict == Verdict::Fail) {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

async fn init<D: DiskManager>(cfg: &Config, disk: Option<&D>) -> Exit {
    match burrow_run::maintain::init(cfg, crate::adapters::ports(disk)).await {
        Ok((id, path)) => {
            out!("created repository {id} at {}", path.display());
            Exit::Ok
        }
        Err(e) => fail(e.status().exit(), e),
    }
}

/// Opens the repository on its verified volume (the marker is checked). Listing and restoring
/// need no lock (nothing is written); the commands that write are `burrow_run::maintain`'s.
async fn open_repo<D: DiskManager>(cfg: &Config, disk: Option<&D>) -> Result<Repo, Exit> {
    let place = place::locate(cfg, disk)
        .await
        .map_err(|e| fail(e.status().exit(), &e))?;
    let repo = place
        .open(&burrow_repo::LocalRepositories)
        .await
        .map_err(|e| fail(e.status().exit(), &e))?;
    Ok(repo)
}

async fn snapshots<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
    job: Option<&str>,
    json: bool,
) -> Exit {
    if let Some(j) = job
        && cfg.job(j).is_none()
    {
        return fail(
            Exit::Usage,
            format!("no job named {j:?} in {}", cfg.file.display()),
        );
    }
    let ports = crate::adapters::ports(disk);
    let listing = match burrow_run::maintain::snapshots(cfg, ports, job).await {
        Ok(l) => l,
        Err(e) => return fail(e.status().exit(), e),
    };
    if json {
        let mut all: Vec<serde_json::Value> = (listing.snapshots.iter())
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect();
        all.extend((listing.damaged.iter()).filter_map(|d| serde_json::to_value(d).ok()));
        out!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
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
}

/// `burrow check`: the scheduled check's code and report, by hand.
async fn check(cfg: &Config, read_data: Option<&str>, json: bool) -> Exit {
    if let Some(rd) = read_data
        && !burrow_config::valid_read_data(rd)
    {
        return fail(
            Exit::Usage,
            format!("--read-data={rd}: expected all, a percentage (5%) or n/m (1/7)"),
        );
    }
    let ctl = RunControl::new(tokio::sync::watch::channel(false).1);
    let summary = crate::adapters::with_disk(cfg, async |d| {
        let ports = crate::adapters::ports(d);
        let r = burrow_run::check_repository(cfg, ports, ctl, read_data).await;
        release_after_run(cfg, d).await;
        r.summary
    })
    .await
    .unwrap_or_else(|e| RunSummary::without_run("check", &RunError::from(e)));
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        outp!("{}", show::check(&summary));
    }
    summary.status.exit()
}

/// `burrow forget JOB`: the job's retention plan, applied unless `dry_run`.
async fn forget<D: DiskManager>(
    cfg: &Config,
    disk: Option<&D>,
    job: &str,
    dry_run: bool,
    json: bool,
) -> Exit {
    let Some(j) = cfg.job(job) else {
        return fail(
            Exit::Usage,
            format!("no job named {job:?} in {}", cfg.file.display()),
        );
    };
    let Some(keep) = j.retention else {
        eprintln!(
            "burrow: job {job} has no retention policy, so every snapshot is kept: add e.g. `retention: {{keep_daily: 7}}` to jobs.{job} in {}",
            cfg.file.display()
        );
        return Exit::Usage;
    };
    let ports = crate::adapters::ports(disk);
    let done = match burrow_run::maintain::forget(cfg, ports, job, keep, dry_run).await {
        Ok(d) => d,
        Err(e) => return fail(e.status().exit(), e),
    };
    match done.resumed {
        Some(Ok(Some(p))) => eprintln!(
            "job {job}: retention was paused by the anomaly of snapshot {} ({}); it resumes",
            short_id(&p.snapshot),
            p.reason
        ),
        Some(Err(e)) => eprintln!("burrow: {e}"),
        Some(Ok(None)) | None => {}
    }
    if json {
        let plan = serde_json::to_string_pretty(&done.plan).unwrap_or_default();
        out!("{plan}");
    } else {
        outp!("{}", show::plan(job, &done.plan, dry_run));
    }
    Exit::Ok
}

/// `burrow prune`: removes the data no snapshot references.
async fn prune<D: DiskManager>(cfg: &Config, disk: Option<&D>) -> Exit {
    match burrow_run::maintain::prune(cfg, crate::adapters::ports(disk)).await {
        Ok(path) => {
            let path = path.display();
            out!("pruned {path}: data no snapshot references is removed");
            Exit::Ok
        }
        Err(e) => fail(e.status().exit(), e),
    }
}

pub struct RestoreArgs<'a> {
    job: &'a str,
    snapshot: &'a str,
    target: Option<&'a Path>,
    path: Option<&'a Path>,
    dump: Option<&'a str>,
    to_server: bool,
    workers: usize,
}

/// `burrow restore --dump NAME`: the dump to a local file, or through its restore command
/// on the server.
async fn restore_dump(
    cfg: &Config,
    job: &burrow_config::Job,
    name: &str,
    repo: Repo,
    args: &RestoreArgs<'_>,
) -> Exit {
    let Some(dump) = job.dumps.iter().find(|d| d.name == name) else {
        return fail(
            Exit::Usage,
            format!("job {} has no dump named {name:?}", job.name),
        );
    };
    if args.to_server {
        return restore_dump_to_server(cfg, job, dump, repo, args.snapshot).await;
    }
    let Some(target) = args.target.map(Path::to_owned) else {
        return Exit::Usage;
    };
    let (job_name, snap) = (job.name.clone(), args.snapshot.to_owned());
    let path = burrow_run::dumps::dump_path(name);
    let res =
        tokio::task::spawn_blocking(move || repo.restore_file(&job_name, &snap, &path, &target))
            .await;
    let out = match joined(res) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let dest = args.target.unwrap_or(Path::new("")).join(name);
    if !out.complete() {
        report_not_restored(&out);
        return fail(
            Exit::Failed,
            format!("dump {name} was not restored to {}", dest.display()),
        );
    }
    out!(
        "restored dump {name} ({} bytes) to {}",
        out.bytes,
        dest.display()
    );
    Exit::Ok
}

async fn restore<D: DiskManager>(cfg: &Config, disk: Option<&D>, args: RestoreArgs<'_>) -> Exit {
    let Some(job) = cfg.job(args.job) else {
        eprintln!(
            "burrow: no job named {:?} in {}",
            args.job,
            cfg.file.display()
        );
        return Exit::Usage;
    };
    let repo = match open_repo(cfg, disk).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(name) = args.dump {
        return restore_dump(cfg, job, name, repo, &args).await;
    }
    let Some(target) = args.target.map(Path::to_owned) else {
        return Exit::Usage;
    };
    let (job_name, snap, sub, workers) = (
        job.name.clone(),
        args.snapshot.to_owned(),
        args.path.map(Path::to_owned),
        args.workers,
    );
    let res = tokio::task::spawn_blocking(move || {
        repo.restore(&job_name, &snap, &target, sub.as_deref(), workers)
    })
    .await;
    let out = match joined(res) {
        Ok(out) => out,
        Err(code) => return code,
    };
    out!(
        "restored snapshot {} into {}: {} file(s), {} dir(s), {}",
        short_id(&out.snapshot_id),
        args.target
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        out.files,
        out.dirs,
        human(out.bytes)
    );
    if out.complete() {
        return Exit::Ok;
    }
    report_not_restored(&out);
    let n = out.refused.len() + out.failed.len();
    fail(
        Exit::Partial,
        format!(
            "{n} entr{} not restored (listed above); everything else was",
            if n == 1 { "y" } else { "ies" }
        ),
    )
}

async fn run(cfg: &Config, job: &str, json: bool) -> Exit {
    if cfg.job(job).is_none() {
        return fail(
            Exit::Usage,
            format!("no job named {job:?} in {}", cfg.file.display()),
        );
    }
    // A running daemon owns the repository: hand the run over and wait for its summary.
    match burrow_daemon::control::Client::connect().await {
        Ok(Some(client)) => {
            return match client.run(job).await {
                Ok(summary) => report(&summary, json),
                Err(e) => fail(Exit::Failed, format!("the daemon did not run {job}: {e}")),
            };
        }
        Ok(None) => {}
        Err(e) => eprintln!("burrow: warning: {e}; running without the daemon"),
    }
    // SIGTERM or Ctrl-C stops the pull safely; the after commands still run.
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
    let ctl = RunControl::new(rx);
    let monitor = burrow_notify::Healthchecks::new(cfg.pings());
    let run_id = ctl.run_id.clone();
    let progress =
        (!json && std::io::stderr().is_terminal()).then(|| spinner(ctl.bytes_read.clone()));
    let done = burrow_core::monitor::monitored(&monitor, job, &run_id, async {
        let ran = crate::adapters::with_disk(cfg, async |d| {
            let r = run_job(cfg, crate::adapters::ports(d), job, ctl).await;
            release_after_run(cfg, d).await;
            r
        });
        ran.await.unwrap_or_else(|e| {
            let e = RunError::from(e);
            RunReport {
                summary: RunSummary::without_run(job, &e),
                log: e.message,
            }
        })
    })
    .await;
    if let Some((pb, task)) = progress {
        task.abort();
        pb.finish_and_clear();
    }
    report(&done.summary, json)
}

/// The disk (when there is one) released after a run by hand, as the config asks.
async fn release_after_run<D: DiskManager>(cfg: &Config, disk: Option<&D>) {
    if let (Some(disk), Some(what)) = (disk, cfg.release_after_run()) {
        burrow_core::disk::release_disk(disk, what).await;
    }
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
pub fn report(s: &RunSummary, json: bool) -> Exit {
    if json {
        out!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
    } else {
        outp!("{}", show::summary(s));
    }
    s.status.exit()
}

async fn status(cfg: &Config, json: bool) -> Exit {
    match burrow_daemon::control::Client::connect().await {
        Ok(Some(client)) => match client.status().await {
            Ok(v) => {
                if json {
                    out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    outp!("{}", burrow_daemon::control::render_status(&v));
                }
                Exit::Ok
            }
            Err(e) => fail(Exit::Failed, e),
        },
        Ok(None) => {
            eprintln!(
                "burrow: the daemon is not running (no socket at {}); start it with `systemctl start burrow` — config {}",
                burrow_daemon::control::socket_path().display(),
                cfg.file.display()
            );
            Exit::Failed
        }
        Err(e) => fail(Exit::Failed, e),
    }
}

/// Lists what a restore did not write, one line each, with the reason.
fn report_not_restored(out: &burrow_repo::RestoreOutcome) {
    for r in &out.refused {
        eprintln!("refused: {}: {}", r.path, r.reason);
    }
    for f in &out.failed {
        eprintln!("failed: {}: {}", f.path, f.reason);
    }
}

/// Streams a dump from the repository into its `restore_command` on the job's server (or
/// here, for local jobs), without a temporary copy.
async fn restore_dump_to_server(
    cfg: &Config,
    job: &burrow_config::Job,
    dump: &burrow_config::Dump,
    repo: Repo,
    snapshot: &str,
) -> Exit {
    let Some(cmd) = dump.restore_command.clone() else {
        eprintln!(
            "burrow: dump {} has no restore_command: add one to jobs.{}.dumps, or use --target DIR",
            dump.name, job.name
        );
        return Exit::Usage;
    };
    let host = match cfg.server_of(job) {
        None => burrow_run::host::Host::Local,
        Some(s) => match burrow_ssh::Session::connect(&s.target()).await {
            Ok(sess) => burrow_run::host::Host::Remote(sess),
            Err(e) => {
                return fail(
                    Exit::Failed,
                    format!("cannot connect to server {}: {e}", s.name),
                );
            }
        },
    };
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let (job_name, snap, path) = (
        job.name.clone(),
        snapshot.to_owned(),
        burrow_run::dumps::dump_path(&dump.name),
    );
    let handle = tokio::runtime::Handle::current();
    let feeder = tokio::task::spawn_blocking(move || {
        let mut w = tokio_util::io::SyncIoBridge::new_with_handle(writer, handle);
        let r = repo.dump(&job_name, &snap, &path, &mut w);
        drop(w);
        r
    });
    eprintln!(
        "restoring dump {} into `{cmd}` on {}",
        dump.name,
        host.describe()
    );
    let out = host.exec_with_stdin(&cmd, reader).await;
    let fed = feeder.await;
    if let burrow_run::host::Host::Remote(s) = &host {
        s.close().await;
    }
    match (fed, out) {
        (Ok(Ok(n)), Ok(o)) if o.success() => {
            out!("restored dump {} ({n} bytes) with `{cmd}`", dump.name);
            Exit::Ok
        }
        (Ok(Err(e)), _) => fail(Exit::Failed, format!("reading the dump failed: {e}")),
        (_, Ok(o)) => {
            eprintln!(
                "burrow: `{cmd}` failed: {} {}",
                o.status_text(),
                o.stderr_text()
            );
            Exit::Failed
        }
        (_, Err(e)) => fail(Exit::Failed, format!("`{cmd}` failed: {e}")),
    }
}
