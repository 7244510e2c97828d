//! Command output on stdout. A reader that went away (`burrow status --json | head -1`) is
//! not an error of the command: the rest of the output is dropped and the command ends with
//! its own exit code (a run that failed still exits 1), instead of a panic. Any other write
//! error is said once on stderr, and the output stops there too.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout cannot be written: nothing more is tried.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stdout; see the module docs for what happens when that fails.
pub fn write(args: std::fmt::Arguments<'_>) {
    if STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        STOPPED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("burrow: cannot write the output: {e}");
        }
    }
}

/// Says `e` on stderr, once, as `burrow: {e}`, and returns `code` (the command's exit).
pub fn fail(code: burrow_core::Exit, e: impl std::fmt::Display) -> burrow_core::Exit {
    eprintln!("burrow: {e}");
    code
}

/// Prints `v` as pretty JSON on stdout (a command's `--json` form).
pub fn json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => write(format_args!("{text}\n")),
        Err(e) => eprintln!("burrow: cannot write the output as JSON: {e}"),
    }
}

/// Prints a command's result (its JSON form with `as_json`) and then its notes on stderr,
/// and returns the exit code it means; an error is said once, with its own exit code.
pub fn emit<T: burrow_run::show::Shown, E: Into<burrow_run::command::CommandError>>(
    r: Result<T, E>,
    as_json: bool,
) -> burrow_core::Exit {
    match r.map_err(Into::into) {
        Ok(v) => show(&v, as_json),
        Err(e) => fail(e.exit(), e),
    }
}

/// Prints a result that cannot fail (see [`emit`]).
pub fn show(v: &impl burrow_run::show::Shown, as_json: bool) -> burrow_core::Exit {
    if as_json {
        json(&v.json());
    } else {
        write(format_args!("{}", v.text()));
    }
    eprint!("{}", v.notes());
    v.exit()
}

/// `println!` for command output (see [`write`]).
macro_rules! out {
    () => { $crate::output::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` for command output (see [`write`]).
macro_rules! outp {
    ($($t:tt)*) => { $crate::output::write(format_args!($($t)*)) };
}
