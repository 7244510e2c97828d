//! `burrow generate`: man pages and completions come from the command line definition, carry
//! every subcommand and the exit codes, and render with the system's man tools.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn burrow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .env("BURROW_CONFIG", "/nonexistent/burrow.yaml")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

const SUBCOMMANDS: [&str; 13] = [
    "check-config",
    "doctor",
    "init",
    "run",
    "snapshots",
    "restore",
    "daemon",
    "status",
    "forget",
    "prune",
    "quickstart",
    "setup",
    "generate",
];

#[test]
fn man_page_has_every_subcommand_and_the_exit_codes() {
    // No config file is needed to generate documentation.
    let page = stdout(&burrow(&["generate", "man"]));
    assert!(page.contains(".TH burrow 1"), "{page}");
    // roff writes a literal hyphen as \-
    let plain = page.replace("\\-", "-");
    for sub in SUBCOMMANDS {
        assert!(
            plain.contains(&format!("burrow-{sub}(1)")),
            "{sub} missing from the man page:\n{page}"
        );
    }
    assert!(page.contains("EXIT STATUS"), "{page}");
    for code in ["0", "1", "2", "3", "4", "5", "75"] {
        assert!(
            page.contains(&format!(".B {code}\n")),
            "exit code {code} missing"
        );
    }
    assert!(page.contains("/etc/burrow/config.yaml"));
}

#[test]
fn man_dir_has_one_page_per_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let out = stdout(&burrow(&[
        "generate",
        "man",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    for page in [
        "burrow.1",
        "burrow-run.1",
        "burrow-restore.1",
        "burrow-check-config.1",
        "burrow-setup-key.1",
        "burrow-setup-trust.1",
        "burrow-setup-key-stick.1",
        "burrow-generate-completions.1",
    ] {
        let p = dir.join(page);
        assert!(p.exists(), "{page} not written; output:\n{out}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(".TH "), "{page}");
        assert!(text.contains(".B 75\n"), "{page} lacks the exit codes");
    }
    let restore = std::fs::read_to_string(dir.join("burrow-restore.1")).unwrap();
    assert!(restore.contains("to\\-server"), "{restore}");
    render(&dir.join("burrow.1"));
    render(&dir.join("burrow-setup-key-stick.1"));
}

/// Renders a page with `man -l` (man-db) or, without it, groff; the text must contain the
/// exit codes and no warnings.
fn render(page: &Path) {
    let man = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .stdin(Stdio::null())
        .output();
    let out = match man {
        Ok(o) if o.status.success() => o,
        _ => match Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(page)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                burrow_testkit::missing("man", &format!("neither man nor groff runs: {e}"));
                return;
            }
        },
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // groff may overstrike for bold when writing to a pipe: strip backspaces.
    let plain: String = {
        let mut s = String::new();
        for c in text.chars() {
            if c == '\u{8}' {
                s.pop();
            } else {
                s.push(c);
            }
        }
        s
    };
    assert!(plain.contains("EXIT STATUS"), "{plain}");
    assert!(plain.contains("75"), "{plain}");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        !warnings.contains("warning"),
        "{} renders with warnings: {warnings}",
        page.display()
    );
}

#[test]
fn completions_for_each_shell() {
    let bash = stdout(&burrow(&["generate", "completions", "bash"]));
    assert!(
        bash.contains("burrow") && bash.contains("check-config"),
        "{bash}"
    );
    assert!(bash.contains("key-stick"));
    let zsh = stdout(&burrow(&["generate", "completions", "zsh"]));
    assert!(zsh.starts_with("#compdef burrow"), "{zsh}");
    let fish = stdout(&burrow(&["generate", "completions", "fish"]));
    assert!(fish.contains("complete -c burrow"), "{fish}");
    assert_eq!(
        burrow(&["generate", "completions", "tcsh"]).status.code(),
        Some(2)
    );
}

#[test]
fn bash_completion_script_loads() {
    let script = stdout(&burrow(&["generate", "completions", "bash"]));
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("burrow.bash");
    std::fs::write(&f, script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p burrow && COMP_WORDS=(burrow setup k) COMP_CWORD=2 && _burrow burrow k setup && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            f.display()
        ))
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{t}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.contains("key") && t.contains("key-stick"), "{t}");
}
