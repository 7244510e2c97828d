//! What `burrow setup` takes from a config that is usually still being written (read as far
//! as its syntax, see [`outline`]): the lines to paste on the servers that use burrow's key,
//! and the server's host key pinned into the file without touching the rest of it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{ConfigError, EditRefused, Outline, ServerOutline, outline, set_host_key, sudoers};

/// The config file as written: its text and its [`Outline`].
#[derive(Debug, Clone)]
pub struct Draft {
    pub file: PathBuf,
    pub text: String,
    pub outline: Outline,
}

/// A server name the config does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no server named {name:?} in {} (servers: {})", file.display(), list(known))]
pub struct UnknownServer {
    pub name: String,
    pub file: PathBuf,
    pub known: Vec<String>,
}

fn list(known: &[String]) -> String {
    if known.is_empty() {
        "none".into()
    } else {
        known.join(", ")
    }
}

/// Why [`Draft::pin_host_key`] left the file as it was.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "not replacing the pinned key with --write: after checking the new key, replace it by hand"
    )]
    Pinned,
    #[error("not editing {}: {source}", file.display())]
    Refused { file: PathBuf, source: EditRefused },
    #[error("cannot write {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl Draft {
    /// Reads the config file at `file` as far as its syntax.
    pub fn read(file: &Path) -> Result<Draft, ConfigError> {
        let text = fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.to_owned(),
            source,
        })?;
        let outline = outline(&text, file)?;
        Ok(Draft {
            file: file.to_owned(),
            text,
            outline,
        })
    }

    /// The server `name` (`servers.NAME`).
    pub fn server(&self, name: &str) -> Result<&ServerOutline, UnknownServer> {
        self.outline.servers.get(name).ok_or_else(|| UnknownServer {
            name: name.to_owned(),
            file: self.file.clone(),
            known: self.outline.servers.keys().cloned().collect(),
        })
    }

    /// Writes `key` as `servers.SERVER.host_key` into the file (atomically, keeping its
    /// permissions), changing that one line and nothing else ([`set_host_key`]). A pinned key
    /// is never replaced: a server presenting another one is what an attack looks like, and
    /// only the user who checked the new key changes the pin.
    pub fn pin_host_key(&self, server: &str, key: &str) -> Result<(), PinError> {
        if self.server(server).is_ok_and(|s| s.host_key.is_some()) {
            return Err(PinError::Pinned);
        }
        let edited = set_host_key(&self.text, &self.file, server, key).map_err(|source| {
            PinError::Refused {
                file: self.file.clone(),
                source,
            }
        })?;
        burrow_core::fsutil::write_atomic(&self.file, edited.as_bytes()).map_err(|source| {
            PinError::Write {
                file: self.file.clone(),
                source,
            }
        })
    }

    /// The servers that log in with `identity_file`; all of them when none does (the key is
    /// being made before the config names it).
    fn servers_using(&self, identity_file: &Path) -> Vec<(&str, &ServerOutline)> {
        let all = self.outline.servers.iter().map(|(n, s)| (n.as_str(), s));
        let mine: Vec<_> = all
            .clone()
            .filter(|(_, s)| s.identity_file == identity_file)
            .collect();
        if mine.is_empty() { all.collect() } else { mine }
    }
}

/// The text `burrow setup key` prints for the servers that use the key `identity_file`, whose
/// public half is `public_line`: the account and its `authorized_keys` line, then a sudoers
/// rule per server ([`sudoers::rule`]); without a readable config, why there is no rule.
pub fn server_lines(
    draft: Result<&Draft, &ConfigError>,
    identity_file: &Path,
    public_line: &str,
) -> String {
    let servers = draft.map_or_else(|_| Vec::new(), |d| d.servers_using(identity_file));
    let user = servers
        .first()
        .map_or("backup_agent", |(_, s)| s.user.as_str());
    let mut out = format!(
        "\n# ---- On the server, as root: an account for burrow, then its authorized_keys
# adduser --disabled-password --gecos burrow {user}
# install -d -m 700 -o {user} -g {user} ~{user}/.ssh
# Append this line to ~{user}/.ssh/authorized_keys. `restrict` turns off port, agent and X11
# forwarding and terminals; burrow needs only SFTP and commands.
restrict {public_line}
# Better, if your home address is fixed: only accept this key from there.
# restrict,from=\"203.0.113.7\" {public_line}
"
    );
    match draft {
        Err(e) => out.push_str(&format!(
            "\n# No sudoers rule: {e}\n# Once the config names the server and its jobs, run `burrow setup key --existing --file {}` again.\n",
            identity_file.display()
        )),
        Ok(d) => {
            for (name, s) in &servers {
                out.push_str(&sudoers::rule(&d.outline, name, s));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# setup
repository: {path: /r, password_file: /p}
servers:
  vps:
    host: vps.example.org  # the VPS
    user: backup_agent
    identity_file: /etc/burrow/id_ed25519
  nas:
    host: nas.example.org
    user: nasbackup
    identity_file: /etc/burrow/nas_key
jobs:
  a:
    server: vps
    before: [\"sudo -n docker stop x\"]
  b:
    server: nas
    after: [\"sudo -n systemctl start y\"]
";
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn draft(dir: &Path, text: &str) -> Draft {
        let f = dir.join("config.yaml");
        fs::write(&f, text).unwrap();
        Draft::read(&f).unwrap()
    }

    #[test]
    fn server_lines_cover_the_servers_of_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let d = draft(tmp.path(), TEXT);
        let t = server_lines(Ok(&d), Path::new("/etc/burrow/nas_key"), KEY);
        assert!(t.contains(&format!("\nrestrict {KEY}\n")), "{t}");
        assert!(t.contains("~nasbackup/.ssh/authorized_keys"), "{t}");
        assert!(t.contains("sudoers for server nas"), "{t}");
        assert!(!t.contains("sudoers for server vps"), "{t}");
        assert!(t.contains("NOPASSWD: /usr/bin/systemctl start y"), "{t}");
        // A key no server names yet: every server's rule.
        let t = server_lines(Ok(&d), Path::new("/etc/burrow/new"), KEY);
        assert!(t.contains("server nas") && t.contains("server vps"), "{t}");
    }

    #[test]
    fn server_lines_without_a_config_say_why_there_is_no_rule() {
        let e = Draft::read(Path::new("/nonexistent/burrow.yaml")).unwrap_err();
        let t = server_lines(Err(&e), Path::new("/k"), KEY);
        assert!(t.contains("# adduser --disabled-password --gecos burrow backup_agent"));
        assert!(t.contains("# No sudoers rule: cannot read config file /nonexistent/burrow.yaml"));
        assert!(t.contains("burrow setup key --existing --file /k"), "{t}");
        assert!(!t.contains("sudoers for"), "{t}");
    }

    #[test]
    fn unknown_servers_are_named_with_the_known_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let d = draft(tmp.path(), TEXT);
        assert_eq!(d.server("vps").unwrap().user, "backup_agent");
        let e = d.server("nope").unwrap_err().to_string();
        assert!(e.starts_with("no server named \"nope\" in "), "{e}");
        assert!(e.ends_with("(servers: nas, vps)"), "{e}");
        let d = draft(tmp.path(), "repository: {path: /r, password_file: /p}\n");
        assert!(
            d.server("x")
                .unwrap_err()
                .to_string()
                .ends_with("(servers: none)")
        );
    }

    #[test]
    fn pinning_writes_one_line_and_refuses_what_it_cannot_edit() {
        let tmp = tempfile::tempdir().unwrap();
        let d = draft(tmp.path(), TEXT);
        d.pin_host_key("vps", KEY).unwrap();
        let after = fs::read_to_string(&d.file).unwrap();
        assert_eq!(after.lines().count(), TEXT.lines().count() + 1);
        assert!(after.contains("# setup") && after.contains("# the VPS"));
        let pinned = Draft::read(&d.file).unwrap();
        assert_eq!(pinned.server("vps").unwrap().host_key.as_deref(), Some(KEY));
        let e = pinned.pin_host_key("vps", KEY).unwrap_err();
        assert!(matches!(e, PinError::Pinned), "{e}");
        let e = pinned.pin_host_key("nope", KEY).unwrap_err();
        assert!(matches!(e, PinError::Refused { .. }), "{e}");
        assert!(e.to_string().starts_with("not editing "), "{e}");
        assert_eq!(fs::read_to_string(&d.file).unwrap(), after);
    }
}
