//! Command output on stdout. A reader that went away (`burrow status --json | head -1`) ends
//! burrow quietly with 0, as it does for `head`'s other writers, instead of a panic; any
//! other write error is said once and fails the command.

use std::io::Write;

/// Writes `args` to stdout; see the module docs for what happens when that fails.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("burrow: cannot write the output: {e}");
        std::process::exit(burrow_core::Exit::Failed.code());
    }
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
