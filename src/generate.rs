//! `burrow generate`: the man pages and shell completions, rendered from the same clap
//! definition as the command line itself, so they always describe the binary they come with.
//! This stays in the binary because the definition ([`Cli`]) does.

use std::path::Path;

use burrow_core::Exit;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::output::fail;

/// Writes `burrow.1` and one page per subcommand (`burrow-run.1`, `burrow-setup-key.1`, ...)
/// into `dir`, or `burrow.1` alone to stdout when `dir` is `None`.
pub fn man(dir: Option<&Path>) -> Exit {
    let res = match dir {
        Some(d) => write_pages(d),
        None => page(&root_command(), true).map(|p| outp!("{}", String::from_utf8_lossy(&p))),
    };
    match res {
        Ok(()) => Exit::Ok,
        Err(e) => fail(Exit::Failed, format!("cannot write the man pages: {e}")),
    }
}

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> Exit {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "burrow", &mut out);
    outp!("{}", String::from_utf8_lossy(&out));
    Exit::Ok
}

fn root_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn write_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let root = root_command();
    let mut pages = vec![(root.clone(), true)];
    let mut stack: Vec<clap::Command> = root.get_subcommands().cloned().collect();
    while let Some(cmd) = stack.pop() {
        stack.extend(cmd.get_subcommands().cloned());
        pages.push((cmd, false));
    }
    for (cmd, is_root) in pages {
        let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page(&cmd, is_root)?)?;
        out!("{}", path.display());
    }
    Ok(())
}

/// One page: clap_mangen's sections, then [`extra_sections`], then the version.
fn page(cmd: &clap::Command, is_root: bool) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("burrow manual")
        .source(format!("burrow {}", env!("CARGO_PKG_VERSION")));
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut w)?;
    }
    w.extend_from_slice(extra_sections(is_root).as_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut w)?;
    }
    Ok(w)
}

/// EXIT STATUS (from the same text `--help` prints), FILES and ENVIRONMENT on the main page,
/// and SEE ALSO, in roff.
fn extra_sections(is_root: bool) -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in Exit::codes() {
        s.push_str(&format!(".TP\n.B {code}\n{}\n", roff_text(&meaning)));
    }
    if is_root {
        s.push_str(&format!(
            ".SH FILES\n.TP\n.I {}\n{}\n.TP\n.I {}\n{}\n",
            burrow_config::DEFAULT_PATH,
            roff_text("The configuration file (--config, BURROW_CONFIG). `burrow check-config` lists every error in it."),
            burrow_config::DEFAULT_STATE_DIR,
            roff_text("Run history and schedule state (state_dir)."),
        ));
        s.push_str(&format!(
            ".SH ENVIRONMENT\n.TP\n.B BURROW_CONFIG\n{}\n.TP\n.B RUST_LOG\n{}\n",
            roff_text("The configuration file, when --config is not given."),
            roff_text("A tracing filter for the log output (as --log-level)."),
        ));
    }
    let parent = if is_root { "" } else { "burrow(1), " };
    let see_also = format!("{parent}restic(1), cryptsetup(8), udisksctl(1), systemctl(1)");
    s.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", roff_text(&see_also)));
    s
}

/// Escapes text for a roff text line.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
