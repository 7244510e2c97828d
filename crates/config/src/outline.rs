//! A look at the config file that stops after the syntax check: the setup helpers run while
//! the config is still being written (no host key pinned yet, the identity file not created
//! yet), when [`crate::load`] would refuse it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ConfigError;
use crate::locate::locate;
use crate::raw::RawConfig;

#[derive(Debug, Clone)]
pub struct Outline {
    pub servers: BTreeMap<String, ServerOutline>,
    pub jobs: BTreeMap<String, JobOutline>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOutline {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    pub host_key: Option<String>,
    pub known_hosts: Option<PathBuf>,
    pub sftp_command: Option<String>,
    pub connect_timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutline {
    pub server: Option<String>,
    pub enabled: bool,
    /// Every command the job runs on its server, as written: `(key path, command)` for
    /// `before`, `after`, `dumps[].command` and `dumps[].restore_command`. Dump presets are
    /// not expanded.
    pub commands: Vec<(String, String)>,
}

impl ServerOutline {
    /// `connect_timeout` as a duration: the default when it is missing or not one.
    pub fn connect_timeout_or_default(&self) -> Duration {
        self.connect_timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(crate::DEFAULT_CONNECT_TIMEOUT)
    }
}

/// Reads `text` as far as its syntax: the servers and jobs as written.
pub fn outline(text: &str, file: &Path) -> Result<Outline, ConfigError> {
    let raw: RawConfig = crate::parse_raw(text, file)?;
    let servers = raw
        .servers
        .into_iter()
        .map(|(name, s)| {
            (
                name,
                ServerOutline {
                    host: s.host.trim().to_owned(),
                    port: s.port.unwrap_or(22),
                    user: s.user.trim().to_owned(),
                    identity_file: s.identity_file,
                    host_key: s.host_key.map(|k| k.trim().to_owned()),
                    known_hosts: s.known_hosts,
                    sftp_command: s.sftp_command.filter(|c| !c.trim().is_empty()),
                    connect_timeout: s.connect_timeout,
                },
            )
        })
        .collect();
    let jobs = raw
        .jobs
        .into_iter()
        .map(|(name, j)| {
            let p = format!("jobs.{name}");
            let mut commands = Vec::new();
            for (i, c) in j.before.iter().enumerate() {
                commands.push((format!("{p}.before[{i}]"), c.clone()));
            }
            for (i, c) in j.after.iter().enumerate() {
                commands.push((format!("{p}.after[{i}]"), c.clone()));
            }
            for (i, d) in j.dumps.iter().enumerate() {
                if let Some(c) = &d.command {
                    commands.push((format!("{p}.dumps[{i}].command"), c.clone()));
                }
                if let Some(c) = &d.restore_command {
                    commands.push((format!("{p}.dumps[{i}].restore_command"), c.clone()));
                }
            }
            (
                name,
                JobOutline {
                    server: j.server,
                    enabled: j.enabled,
                    commands,
                },
            )
        })
        .collect();
    Ok(Outline { servers, jobs })
}

/// Why [`set_host_key`] would not edit the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EditRefused(pub String);

/// Returns `text` with `servers.<server>.host_key` set to `key`, changing one line (or adding
/// one after `host:`) and keeping everything else, comments included. Refuses anything but the
/// plain block style this needs, and checks the result by parsing it again: apart from the
/// host key, the servers and jobs read exactly as before.
pub fn set_host_key(
    text: &str,
    file: &Path,
    server: &str,
    key: &str,
) -> Result<String, EditRefused> {
    let refuse = |why: &str| EditRefused(why.to_owned());
    let before = outline(text, file).map_err(|e| EditRefused(e.to_string()))?;
    let Some(s) = before.servers.get(server) else {
        return Err(EditRefused(format!(
            "no server named {server:?} in {}",
            file.display()
        )));
    };
    if s.known_hosts.is_some() {
        return Err(refuse(
            "this server uses known_hosts; add the key there instead",
        ));
    }
    let value = format!("host_key: {}", yaml_quote(key));
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let found = locate(text, &["servers", server, "host_key"]);
    match found {
        Some((line, col)) => {
            let l = &lines[line - 1];
            let indent = &l[..col - 1];
            let rest = l[col - 1..].trim_end();
            let v = rest.strip_prefix("host_key:").map(str::trim).unwrap_or("");
            if v.is_empty() || v.starts_with('|') || v.starts_with('>') || v.starts_with('&') {
                return Err(refuse("host_key is not written on one line"));
            }
            lines[line - 1] = format!("{indent}{value}");
        }
        None => {
            let Some((line, col)) = locate(text, &["servers", server, "host"]) else {
                return Err(refuse(
                    "servers are not written in block style (one key per line)",
                ));
            };
            lines.insert(line, format!("{}{value}", " ".repeat(col - 1)));
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    let after = outline(&out, file)
        .map_err(|e| EditRefused(format!("the edit would break the file: {e}")))?;
    let mut expected = before.clone();
    if let Some(s) = expected.servers.get_mut(server) {
        s.host_key = Some(key.trim().to_owned());
    }
    if after.servers != expected.servers || after.jobs != expected.jobs {
        return Err(refuse(
            "the edited file does not read back as expected; edit it by hand",
        ));
    }
    Ok(out)
}

/// A YAML double-quoted scalar (a JSON string is one), whatever `s` holds.
pub(crate) fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
repository: {path: /r, password_file: /p}
servers:
  vps:
    host: vps.example.org  # the VPS
    user: backup_agent
    identity_file: /etc/burrow/id_ed25519
    # pinned below
    host_key: \"ssh-ed25519 AAAAold\"
  other:
    host: other.example.org
    user: u
    identity_file: /k
jobs:
  a:
    server: vps
    before: [\"sudo -n docker stop x\"]
    after:
      - sudo docker start x
    dumps:
      - {name: d, command: \"sudo -n pg_dump db\", restore_command: \"pg_restore\"}
      - {name: e, postgres: {database: e}}
";
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    #[test]
    fn outline_lists_commands_as_written() {
        let o = outline(TEXT, Path::new("c.yaml")).unwrap();
        assert_eq!(o.servers["vps"].host, "vps.example.org");
        assert_eq!(o.servers["other"].port, 22);
        let cmds: Vec<&str> = o.jobs["a"]
            .commands
            .iter()
            .map(|(_, c)| c.as_str())
            .collect();
        assert_eq!(
            cmds,
            [
                "sudo -n docker stop x",
                "sudo docker start x",
                "sudo -n pg_dump db",
                "pg_restore"
            ]
        );
        assert_eq!(o.jobs["a"].commands[1].0, "jobs.a.after[0]");
    }

    #[test]
    fn replaces_or_inserts_the_host_key_keeping_comments() {
        let f = Path::new("c.yaml");
        let out = set_host_key(TEXT, f, "vps", KEY).unwrap();
        assert_eq!(out.lines().count(), TEXT.lines().count());
        assert!(out.contains(&format!("    host_key: \"{KEY}\"\n")), "{out}");
        assert!(out.contains("# pinned below") && out.contains("# the VPS"));
        let out = set_host_key(TEXT, f, "other", KEY).unwrap();
        assert_eq!(out.lines().count(), TEXT.lines().count() + 1);
        assert_eq!(
            outline(&out, f).unwrap().servers["other"]
                .host_key
                .as_deref(),
            Some(KEY)
        );
        assert!(set_host_key(TEXT, f, "nope", KEY).is_err());
        let flow = "repository: {path: /r, password_file: /p}\nservers:\n  vps: {host: h, user: u, identity_file: /k}\n";
        assert!(set_host_key(flow, f, "vps", KEY).is_err());
        let kh = TEXT.replace("host_key: \"ssh-ed25519 AAAAold\"", "known_hosts: /kh");
        assert!(
            set_host_key(&kh, f, "vps", KEY)
                .unwrap_err()
                .0
                .contains("known_hosts")
        );
    }
}
