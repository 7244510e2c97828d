//! `burrow generate`: the man pages and shell completions, rendered from the same clap
//! definition as the command line itself, so they always describe the binary they come with.

use std::path::Path;

use burrow_core::Exit;
use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// Writes `burrow.1` and one page per subcommand (`burrow-run.1`, `burrow-setup-key.1`, ...)
/// into `dir`, or `burrow.1` alone to stdout when `dir` is `None`.
pub fn man(dir: Option<&Path>) -> Exit {
    let res = match dir {
        Some(d) => write_pages(d),
        None => {
            let mut out = Vec::new();
            render_page(&root_command(), true, &mut out)
                .map(|()| outp!("{}", String::from_utf8_lossy(&out)))
        }
    };
    match res {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("burrow: cannot write the man pages: {e}");
            Exit::Failed
        }
    }
}

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> Exit {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let sh = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(sh, &mut cmd, "burrow", &mut out);
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
        let name = cmd
            .get_display_name()
            .unwrap_or_else(|| cmd.get_name())
            .to_owned();
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        render_page(&cmd, is_root, &mut out)?;
        std::fs::write(&path, out)?;
        out!("{}", path.display());
    }
    Ok(())
}

/// One page: clap_mangen's sections, then EXIT STATUS (from the same text `--help` prints),
/// FILES and ENVIRONMENT on the main page, and SEE ALSO.
fn render_page(cmd: &clap::Command, is_root: bool, w: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("burrow manual")
        .source(format!("burrow {}", env!("CARGO_PKG_VERSION")));
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    w.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit_codes() {
        w.extend_from_slice(format!(".TP\n.B {code}\n{}\n", roff_text(&meaning)).as_bytes());
    }
    if is_root {
        w.extend_from_slice(
            format!(
                ".SH FILES\n.TP\n.I {}\n{}\n.TP\n.I {}\n{}\n",
                burrow_config::DEFAULT_PATH,
                roff_text("The configuration file (--config, BURROW_CONFIG). `burrow check-config` lists every error in it."),
                burrow_config::DEFAULT_STATE_DIR,
                roff_text("Run history and schedule state (state_dir)."),
            )
            .as_bytes(),
        );
        w.extend_from_slice(
            format!(
                ".SH ENVIRONMENT\n.TP\n.B BURROW_CONFIG\n{}\n.TP\n.B RUST_LOG\n{}\n",
                roff_text("The configuration file, when --config is not given."),
                roff_text("A tracing filter for the log output (as --log-level)."),
            )
            .as_bytes(),
        );
    }
    let mut see_also = Vec::new();
    if !is_root {
        see_also.push("burrow(1)".to_owned());
    }
    see_also
        .extend(["restic(1)", "cryptsetup(8)", "udisksctl(1)", "systemctl(1)"].map(String::from));
    w.extend_from_slice(
        format!(".SH \"SEE ALSO\"\n{}\n", roff_text(&see_also.join(", "))).as_bytes(),
    );
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// The exit codes as (code, meaning), parsed from [`Exit::HELP`] (the `--help` text), so the
/// man page and `--help` cannot disagree.
pub fn exit_codes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in Exit::HELP.lines().skip(1) {
        let t = line.trim();
        match t.split_once(char::is_whitespace) {
            Some((code, rest)) if code.bytes().all(|b| b.is_ascii_digit()) => {
                out.push((code.to_owned(), rest.trim().to_owned()));
            }
            _ => {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(t);
                }
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_come_from_the_help_text() {
        let codes = exit_codes();
        let nums: Vec<&str> = codes.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(nums, ["0", "1", "2", "3", "4", "5", "75"]);
        assert!(codes[5].1.contains("anomaly"), "{codes:?}");
        assert!(codes[4].1.contains("retention"), "{codes:?}");
        assert!(codes[3].1.contains("after command failed"), "{codes:?}");
    }
}
