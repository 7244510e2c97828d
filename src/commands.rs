//! One function per subcommand: it calls the library and prints the result with
//! `output::emit`, which also says an error, once, with its exit code.

use std::io::IsTerminal;

use std::sync::atomic::Ordering;
use std::time::Duration;

use burrow_config::Config;
use burrow_core::bytes::human;

use burrow_core::run::RunControl;
use burrow_core::{Exit, RunError};
use burrow_run::browse;
use burrow_run::{check_repository, command, maintain, restore, run_job};

use crate::adapters::{by_hand, command as on_ports};
use crate::cli::{Cli, Command, Generate};
use crate::output::{emit, fail, json, show};

pub async fn dispatch(cli: Cli) -> Exit {
    // A run on a terminal shows its progress instead; doctor's findings are its output.
    let quiet = (matches!(&cli.command, Command::Run { json: false, .. })
        && std::io::stderr().is_terminal())
        || matches!(&cli.command, Command::Doctor { .. });
    burrow_notify::logging::init(
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
    with_config(&cfg, cli.command).await
}

/// The commands that work on the loaded config.
async fn with_config(cfg: &Config, command: Command) -> Exit {
    match command {
        Command::CheckConfig => {
            outp!("{}", burrow_run::show::config(cfg));
            Exit::Ok
        }
        Command::Doctor { json } => {
            let probes = crate::adapters::doctor_probes(cfg).await;
            show(&burrow_run::doctor::report(cfg, probes), json)
        }
        Command::Init => on_ports(cfg, async |p| emit(maintain::init(cfg, p).await, false)).await,
        Command::Run { job, json } => run(cfg, &job, json).await,
        Command::Snapshots { job, json } => {
            let job = job.as_deref();
            on_ports(cfg, async |p| {
                emit(maintain::snapshots(cfg, p, job).await, json)
            })
            .await
        }
        Command::Ls(a) => on_ports(cfg, async |p| emit(browse::ls(cfg, p, &a).await, a.json)).await,
        Command::Find(a) => {
            on_ports(cfg, async |p| emit(browse::find(cfg, p, &a).await, a.json)).await
        }
        Command::Diff(a) => {
            on_ports(cfg, async |p| emit(browse::diff(cfg, p, &a).await, a.json)).await
        }
        Command::Stats(a) => {
            on_ports(cfg, async |p| emit(browse::stats(cfg, p, &a).await, a.json)).await
        }
        Command::Dump(a) => {
            let out = std::io::stdout();
            on_ports(cfg, async |p| {
                emit(browse::dump(cfg, p, &a, out).await, false)
            })
            .await
        }
        Command::Restore(a) => {
            on_ports(cfg, async |p| {
                emit(restore::restore(cfg, p, &a).await, false)
            })
            .await
        }
        Command::Accept { job } => emit(maintain::accept(cfg, &job), false),
        Command::Forget { job, dry_run, json } => {
            let keep = match command::retention(cfg, &job) {
                Ok(k) => k,
                Err(e) => return fail(e.exit(), e),
            };
            let job = job.as_str();
            on_ports(cfg, async |p| {
                emit(maintain::forget(cfg, p, job, keep, dry_run).await, json)
            })
            .await
        }
        Command::Prune => on_ports(cfg, async |p| emit(maintain::prune(cfg, p).await, false)).await,
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
    show(&checked.await.summary, as_json)
}

async fn run(cfg: &Config, job: &str, as_json: bool) -> Exit {
    if let Err(e) = command::job(cfg, job) {
        return fail(e.exit(), e);
    }
    // A running daemon owns the repository: hand the run over and wait for its summary.
    match burrow_daemon::control::Client::connect().await {
        Ok(Some(client)) => {
            let handed = client.run(job).await;
            let handed = handed
                .map_err(|e| RunError::permanent(format!("the daemon did not run {job}: {e}")));
            return emit(handed, as_json);
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
    let store = burrow_daemon::state::Store::new(cfg.state_dir.clone());
    if let Err(e) = store.record_by_hand(&done.summary) {
        eprintln!("burrow: warning: the run is not in the run history: {e}");
    }
    show(&done.summary, as_json)
}

/// Set on SIGTERM or Ctrl-C: the pull stops safely; the after commands still run.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    if let Ok(stop) = crate::daemon::terminated() {
        tokio::spawn(async move {
            stop.await;
            eprintln!("burrow: stopping safely (after commands still run)...");
            let _ = tx.send(true);
        });
    }
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

/// `burrow status`: the daemon's view, or without a daemon the same view from `state_dir`.
async fn status(cfg: &Config, as_json: bool) -> Exit {
    let view = match burrow_daemon::status::current(async || without_daemon(cfg).await).await {
        Ok(v) => v,
        Err(e) => return fail(Exit::Failed, e),
    };
    if as_json {
        json(&view);
    } else {
        outp!("{}", burrow_daemon::control::render_status(&view));
    }
    Exit::Ok
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
