//! The `burrow` binary: parses the command line, loads the config, picks the real or the
//! simulated adapters, and maps every outcome to an exit code. The work happens in the
//! library crates.

#[macro_use]
mod output;

mod adapters;
mod cli;
mod commands;
mod daemon;
mod generate;
mod quickstart;
mod setup;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    burrow_core::mem::return_large_buffers();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => burrow_core::Exit::Usage.code() as u8,
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("burrow: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let exit = runtime.block_on(commands::dispatch(cli));
    ExitCode::from(exit.code() as u8)
}
