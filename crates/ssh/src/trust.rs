//! `burrow setup trust`: the host key a server presents, fetched without trusting it
//! ([`fetch_host_key`]), how it compares with the key the config pins, and how to check it
//! by hand before pinning it.

use std::path::Path;
use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PublicKey};

use crate::SshError;
use crate::hostkey::{fetch_host_key, pinned_accepts};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot fetch the host key of server {server}: {source}")]
    Fetch { server: String, source: SshError },
    #[error("cannot encode the host key of server {server}: {reason}")]
    Encode { server: String, reason: String },
}

/// A host key a server presented. Nothing trusts it until a user compared it.
#[derive(Debug, Clone)]
pub struct Presented {
    key: PublicKey,
    /// The OpenSSH public key line without a comment, as `host_key:` holds it.
    pub line: String,
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// How a presented key compares with the config's `host_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// No `host_key` yet.
    Unpinned,
    /// `host_key` names the presented key (as a line or a fingerprint).
    Same,
    /// `host_key` names another key, shortened to 40 characters.
    Different(String),
}

/// The host key of server `server` at `host`:`port`, within `timeout`.
pub async fn fetch(
    server: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Presented, TrustError> {
    let key = fetch_host_key(host, port, timeout)
        .await
        .map_err(|source| TrustError::Fetch {
            server: server.to_owned(),
            source,
        })?;
    Presented::new(key).map_err(|e| TrustError::Encode {
        server: server.to_owned(),
        reason: e.to_string(),
    })
}

impl Presented {
    fn new(key: PublicKey) -> Result<Presented, russh::keys::ssh_key::Error> {
        let mut bare = key.clone();
        bare.set_comment("");
        let line = bare.to_openssh()?.trim().to_owned();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(Presented {
            key,
            line,
            fingerprint,
        })
    }

    /// How `pinned` (the server's `host_key`, if any) compares with this key, by the rules a
    /// connection uses.
    pub fn compare(&self, pinned: Option<&str>) -> Pin {
        match pinned {
            None => Pin::Unpinned,
            Some(p) if pinned_accepts(p, &self.key) => Pin::Same,
            Some(p) => Pin::Different(short(p)),
        }
    }

    /// The name `ssh-keygen` gives this kind of host key: `ed25519` for
    /// `/etc/ssh/ssh_host_ed25519_key.pub`.
    fn file_kind(&self) -> &'static str {
        match self.key.algorithm().as_str() {
            "ssh-rsa" | "rsa-sha2-256" | "rsa-sha2-512" => "rsa",
            k if k.starts_with("ecdsa-") => "ecdsa",
            _ => "ed25519",
        }
    }

    /// The key, its fingerprint, how to compare it with the server's own, and the lines that
    /// pin it as `servers.SERVER.host_key` in `config`.
    pub fn instructions(&self, server: &str, host: &str, port: u16, config: &Path) -> String {
        format!(
            "server {server} ({host}:{port}) presented this host key. It is NOT trusted yet:
  {line}
  fingerprint: {fp}

Compare the fingerprint with the one the server itself prints, over a connection
you already trust (the provider's web console, or an SSH session you verified):
  ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub
They must be identical. Then pin the key in {config}:
  servers:
    {server}:
      host_key: \"{line}\"
",
            line = self.line,
            fp = self.fingerprint,
            kind = self.file_kind(),
            config = config.display(),
        )
    }
}

impl Pin {
    /// What `setup trust` says about the pin; nothing when there is none.
    pub fn note(&self) -> Option<String> {
        match self {
            Pin::Unpinned => None,
            Pin::Same => Some("\nThe config already pins this key: nothing to change.".into()),
            Pin::Different(pinned) => Some(format!(
                "\nWARNING: the config pins a different key ({pinned}). If the server's key changed on purpose\n\
                 (reinstalled server), check the new one as above; otherwise do not connect."
            )),
        }
    }
}

fn short(pinned: &str) -> String {
    let p = pinned.trim();
    if p.chars().count() > 40 {
        format!("{}…", p.chars().take(40).collect::<String>())
    } else {
        p.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn presented() -> Presented {
        Presented::new(PublicKey::from_openssh(&format!("{KEY} root@vps")).unwrap()).unwrap()
    }

    #[test]
    fn the_line_drops_the_comment_and_compares_like_a_connection() {
        let p = presented();
        assert_eq!(p.line, KEY);
        assert!(p.fingerprint.starts_with("SHA256:"), "{}", p.fingerprint);
        assert_eq!(p.compare(None), Pin::Unpinned);
        assert_eq!(p.compare(Some(&format!("{KEY} any comment"))), Pin::Same);
        assert_eq!(p.compare(Some(&p.fingerprint)), Pin::Same);
        let Pin::Different(short) = p.compare(Some(OTHER)) else {
            panic!("{:?}", p.compare(Some(OTHER)))
        };
        assert_eq!(short, format!("{}…", &OTHER[..40]));
        assert!(Pin::Different(short).note().unwrap().contains("WARNING"));
        assert_eq!(p.compare(Some("garbage")), Pin::Different("garbage".into()));
    }

    #[test]
    fn instructions_name_the_servers_key_file_and_the_config_lines() {
        let t = presented().instructions("vps", "203.0.113.7", 2222, Path::new("/etc/b.yaml"));
        assert!(
            t.starts_with("server vps (203.0.113.7:2222) presented"),
            "{t}"
        );
        assert!(
            t.contains("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"),
            "{t}"
        );
        assert!(t.contains("pin the key in /etc/b.yaml:"), "{t}");
        assert!(
            t.ends_with(&format!("    vps:\n      host_key: \"{KEY}\"\n")),
            "{t}"
        );
    }
}
