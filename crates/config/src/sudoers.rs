//! The sudoers rule `burrow setup key` prints for a server: exactly the commands the config
//! runs there with `sudo`, in sudoers' syntax, so the backup user may run those as root and
//! nothing else.

use crate::{Outline, ServerOutline};

/// Why a command that starts with `sudo` cannot be listed in the rule (the user writes that
/// part by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotListed {
    #[error("nothing after sudo")]
    Empty,
    #[error("sudo option {0} (only -n is understood)")]
    SudoOption(String),
    #[error("not a plain program name")]
    NotPlain,
    #[error("unbalanced quote")]
    UnbalancedQuote,
    #[error("shell expansion")]
    Expansion,
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("shell syntax")]
    ShellSyntax,
}

/// A sudoers rule for `server`'s user: exactly the commands the config runs there with sudo.
pub fn rule(o: &Outline, name: &str, s: &ServerOutline) -> String {
    let mut allowed: Vec<String> = Vec::new();
    let mut later: Vec<String> = Vec::new();
    let mut by_hand: Vec<String> = Vec::new();
    let mut guessed: Vec<String> = Vec::new();
    let mut consider = |what: &str, cmd: &str, enabled: bool| {
        let Some(rest) = strip_sudo(cmd) else { return };
        match sudoers_command(rest) {
            Ok((c, guess)) => {
                if let Some(g) = guess
                    && !guessed.contains(&g)
                {
                    guessed.push(g);
                }
                let list = if enabled { &mut allowed } else { &mut later };
                if !list.contains(&c) {
                    list.push(c);
                }
            }
            Err(why) => by_hand.push(format!("{what}: `{cmd}`: {why}")),
        }
    };
    if let Some(c) = &s.sftp_command {
        consider(&format!("servers.{name}.sftp_command"), c, true);
    }
    for j in o
        .jobs
        .values()
        .filter(|j| j.server.as_deref() == Some(name))
    {
        for (path, c) in &j.commands {
            consider(path, c, j.enabled);
        }
    }
    let mut out = format!(
        "\n# ---- sudoers for server {name} ({user}@{host})
# Only the config's commands that start with `sudo` are listed, without `sudo` and its -n:
# the user may run exactly these, as root, without a password, and nothing else. Put the rule
# in /etc/sudoers.d/burrow and check it with `visudo -cf /etc/sudoers.d/burrow`.
# Write `sudo -n` in the config: a command missing here then fails at once instead of
# waiting for a password.
",
        user = s.user,
        host = s.host
    );
    if s.sftp_command.is_none() {
        out.push_str(
            "# Files are read with the server's sftp subsystem as this user. To read root-owned files\n\
             # (Docker volumes) read-only, set sftp_command: \"sudo -n /usr/lib/openssh/sftp-server -R\"\n\
             # and run this again.\n",
        );
    }
    if !guessed.is_empty() {
        out.push_str(&format!(
            "# sudoers needs full paths; these were assumed to live in /usr/bin: {}.\n# Check with `command -v NAME` on the server.\n",
            guessed.join(", ")
        ));
    }
    if allowed.is_empty() {
        out.push_str("# (no enabled job runs a command with sudo on this server)\n");
    } else {
        out.push_str(&format!(
            "{} ALL=(root) NOPASSWD: {}\n",
            s.user,
            allowed.join(", \\\n    ")
        ));
    }
    if !later.is_empty() {
        out.push_str(&format!(
            "# For jobs that are still disabled; add them to the rule when you enable the jobs:\n# {}\n",
            later.join(", ")
        ));
    }
    for h in by_hand {
        out.push_str(&format!(
            "# Not listed, write a rule by hand if needed: {h}\n"
        ));
    }
    out
}

/// `sudo -n CMD...` → `CMD...`; `None` for commands that do not start with sudo.
fn strip_sudo(cmd: &str) -> Option<&str> {
    let c = cmd.trim_start();
    let rest = c.strip_prefix("sudo")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut rest = rest.trim_start();
    while let Some(r) = rest.strip_prefix("-n") {
        if !(r.is_empty() || r.starts_with([' ', '\t'])) {
            break;
        }
        rest = r.trim_start();
    }
    Some(rest)
}

/// The sudoers form of a simple command: its words (quotes removed, as the shell does), the
/// program as a full path, sudoers' special characters escaped. Also returns the program name
/// when its path was assumed. Shell syntax and sudo options are refused.
fn sudoers_command(cmd: &str) -> Result<(String, Option<String>), NotListed> {
    let words = split_words(cmd)?;
    let Some(first) = words.first() else {
        return Err(NotListed::Empty);
    };
    if first.starts_with('-') {
        return Err(NotListed::SudoOption(first.clone()));
    }
    let (prog, guess) = if first.starts_with('/') {
        (first.clone(), None)
    } else if first.contains('/') || first.contains('=') {
        return Err(NotListed::NotPlain);
    } else {
        (format!("/usr/bin/{first}"), Some(first.clone()))
    };
    let mut parts = vec![escape_sudoers(&prog)];
    parts.extend(words[1..].iter().map(|w| escape_sudoers(w)));
    if words.len() == 1 {
        // A bare program in sudoers allows any arguments; "" allows none.
        parts.push("\"\"".into());
    }
    Ok((parts.join(" "), guess))
}

fn escape_sudoers(w: &str) -> String {
    let mut out = String::new();
    for c in w.chars() {
        if matches!(c, '\\' | ',' | ':' | '=' | ' ' | '"' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits a command line into words like the shell, for simple commands only.
fn split_words(cmd: &str) -> Result<Vec<String>, NotListed> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(NotListed::UnbalancedQuote),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(NotListed::UnbalancedQuote),
                        },
                        Some('$' | '`') => return Err(NotListed::Expansion),
                        Some(c) => cur.push(c),
                        None => return Err(NotListed::UnbalancedQuote),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(NotListed::TrailingBackslash),
                }
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' | '{' | '~'
            | '\n' => return Err(NotListed::ShellSyntax),
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_commands_become_sudoers_entries() {
        let c = |s: &str| strip_sudo(s).map(|r| sudoers_command(r).map(|x| x.0));
        assert_eq!(c("docker stop x"), None);
        assert_eq!(c("sudoku"), None);
        assert_eq!(
            c("sudo -n docker stop infra_synapse_1"),
            Some(Ok("/usr/bin/docker stop infra_synapse_1".into()))
        );
        assert_eq!(
            c("sudo -n /usr/lib/openssh/sftp-server -R"),
            Some(Ok("/usr/lib/openssh/sftp-server -R".into()))
        );
        assert_eq!(
            c("sudo /usr/bin/psql -c 'a=b, c:d'"),
            Some(Ok("/usr/bin/psql -c a\\=b\\,\\ c\\:d".into()))
        );
        assert_eq!(c("sudo /sbin/reboot"), Some(Ok("/sbin/reboot \"\"".into())));
        assert!(matches!(
            c("sudo docker exec x sh -c 'a' | gzip"),
            Some(Err(_))
        ));
        assert!(matches!(c("sudo -u postgres pg_dump db"), Some(Err(_))));
    }
}
