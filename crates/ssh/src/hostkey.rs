//! Server authentication: a pinned key or fingerprint, or a known_hosts file. An unknown or
//! changed key is always refused; nothing is ever learned on first use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::{Algorithm, Fingerprint, HashAlg, PublicKey};

use burrow_core::server::HostKeyPolicy;

use crate::error::SshError;

#[derive(Debug, Clone)]
enum Expected {
    Key(PublicKey),
    Fingerprint(Fingerprint),
}

/// Why a pinned `host_key` value names no key.
#[derive(Debug, thiserror::Error)]
enum NotAKey {
    #[error("not a valid fingerprint: {0}")]
    Fingerprint(russh::keys::ssh_key::Error),
    #[error("not a valid public key line: {0}")]
    KeyLine(russh::keys::ssh_key::Error),
}

impl Expected {
    /// A pinned `host_key`: an OpenSSH public key line or a `SHA256:`/`SHA512:` fingerprint.
    fn parse(value: &str) -> Result<Expected, NotAKey> {
        let v = value.trim();
        if v.starts_with("SHA256:") || v.starts_with("SHA512:") {
            return v
                .parse::<Fingerprint>()
                .map(Expected::Fingerprint)
                .map_err(NotAKey::Fingerprint);
        }
        // Normalise whitespace: config files often carry tabs or double spaces.
        let line = v.split_whitespace().collect::<Vec<_>>().join(" ");
        PublicKey::from_openssh(&line)
            .map(Expected::Key)
            .map_err(NotAKey::KeyLine)
    }

    fn accepts(&self, seen: &PublicKey) -> bool {
        match self {
            Expected::Key(k) => k.key_data() == seen.key_data(),
            Expected::Fingerprint(fp) => seen.fingerprint(fp.algorithm()) == *fp,
        }
    }
}

/// Whether `pinned` (a `host_key` value as the config holds it) names `key`, by the rules a
/// connection uses; an unreadable value names no key.
pub fn pinned_accepts(pinned: &str, key: &PublicKey) -> bool {
    Expected::parse(pinned).is_ok_and(|e| e.accepts(key))
}

/// A client that records the host key and refuses it, so nothing is sent after the key
/// exchange (no user name, no key).
struct Recorder(Arc<Mutex<Option<PublicKey>>>);

impl russh::client::Handler for Recorder {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.public_key());
        Ok(false)
    }
}

/// The host key `host`:`port` presents, fetched without trusting it (`burrow setup trust`
/// shows it to be compared by hand).
pub async fn fetch_host_key(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<PublicKey, SshError> {
    let seen = Arc::new(Mutex::new(None));
    let config = Arc::new(russh::client::Config::default());
    let attempt = russh::client::connect(config, (host, port), Recorder(seen.clone()));
    let res = tokio::time::timeout(timeout, attempt).await;
    if let Some(k) = seen.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Ok(k);
    }
    let (target, addr) = (host.to_owned(), format!("{host}:{port}"));
    Err(match res {
        Err(_) => SshError::ConnectTimeout {
            target,
            addr,
            after: timeout,
        },
        Ok(Err(e)) => SshError::Connect {
            target,
            addr,
            reason: e.to_string(),
        },
        Ok(Ok(_)) => SshError::Protocol {
            target,
            reason: "the server presented no host key".into(),
        },
    })
}

/// The keys a server may present, prepared before connecting so that configuration errors
/// surface without touching the network.
#[derive(Debug, Clone)]
pub(crate) struct HostKeyCheck {
    expected: Vec<Expected>,
    revoked: Vec<PublicKey>,
    known_hosts: Option<PathBuf>,
}

/// What `check_server_key` concluded, kept for the error message (russh only reports
/// "unknown server key").
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    Accepted,
    Mismatch { seen: String, expected: String },
    Unknown { seen: String, known_hosts: PathBuf },
    Revoked { seen: String },
}

impl HostKeyCheck {
    pub(crate) fn prepare(
        target: &str,
        policy: &HostKeyPolicy,
        host: &str,
        port: u16,
    ) -> Result<HostKeyCheck, SshError> {
        match policy {
            HostKeyPolicy::Pinned(value) => {
                let bad = |reason: NotAKey| SshError::HostKeyPolicy {
                    target: target.to_owned(),
                    value: value.clone(),
                    reason: reason.to_string(),
                };
                Ok(HostKeyCheck {
                    expected: vec![Expected::parse(value).map_err(bad)?],
                    revoked: Vec::new(),
                    known_hosts: None,
                })
            }
            HostKeyPolicy::KnownHosts(path) => {
                let (keys, revoked) = known_host_keys(path, host, port)?;
                Ok(HostKeyCheck {
                    expected: keys.into_iter().map(Expected::Key).collect(),
                    revoked,
                    known_hosts: Some(path.clone()),
                })
            }
        }
    }

    pub(crate) fn verify(&self, seen: &PublicKey) -> Verdict {
        let seen_fp = seen.fingerprint(HashAlg::Sha256).to_string();
        if self.revoked.iter().any(|k| k.key_data() == seen.key_data()) {
            return Verdict::Revoked { seen: seen_fp };
        }
        let ok = self.expected.iter().any(|e| e.accepts(seen));
        if ok {
            return Verdict::Accepted;
        }
        if self.expected.is_empty() {
            return Verdict::Unknown {
                seen: describe(seen),
                known_hosts: self.known_hosts.clone().unwrap_or_default(),
            };
        }
        let expected = self
            .expected
            .iter()
            .map(|e| match e {
                Expected::Key(k) => describe(k),
                Expected::Fingerprint(fp) => fp.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" or ");
        Verdict::Mismatch {
            seen: describe(seen),
            expected,
        }
    }

    /// Host key algorithms to offer, those of the expected keys first, so that a server with
    /// several host keys presents the one we know.
    pub(crate) fn preferred_algorithms(&self, defaults: &[Algorithm]) -> Vec<Algorithm> {
        let known: Vec<Algorithm> = self
            .expected
            .iter()
            .filter_map(|e| match e {
                Expected::Key(k) => Some(k.algorithm()),
                Expected::Fingerprint(_) => None,
            })
            .collect();
        let is_known = |a: &Algorithm| known.iter().any(|k| same_family(k, a));
        let mut out: Vec<Algorithm> = defaults.iter().filter(|a| is_known(a)).cloned().collect();
        out.extend(defaults.iter().filter(|a| !is_known(a)).cloned());
        out
    }
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}

fn describe(k: &PublicKey) -> String {
    format!(
        "{} key {}",
        k.algorithm().as_str(),
        k.fingerprint(HashAlg::Sha256)
    )
}

/// Reads a known_hosts file and returns the keys recorded for `host`:`port` and the revoked
/// keys. russh's parser splits fields on single spaces only, so the file is normalised into a
/// private temporary copy first; russh then does the host matching (plain, `[host]:port`,
/// comma lists, hashed `|1|` entries).
fn known_host_keys(
    path: &Path,
    host: &str,
    port: u16,
) -> Result<(Vec<PublicKey>, Vec<PublicKey>), SshError> {
    let err = |reason: String| SshError::KnownHosts {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(format!("{e}")))?;
    let text = String::from_utf8_lossy(&text);
    let mut plain = String::new();
    let mut revoked = String::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.starts_with('#') {
            continue;
        }
        let (out, hosts) = match first {
            "@revoked" => (&mut revoked, fields.next()),
            // Certificate authorities are not supported; such a line vouches for nothing.
            m if m.starts_with('@') => continue,
            _ => (&mut plain, Some(first)),
        };
        let (Some(hosts), Some(kind), Some(key)) = (hosts, fields.next(), fields.next()) else {
            continue;
        };
        // A trailing field keeps russh from reading the line break as part of the key.
        out.push_str(&format!("{hosts} {kind} {key} -\n"));
    }
    let lookup = |content: &str| -> Result<Vec<PublicKey>, SshError> {
        if content.is_empty() {
            return Ok(Vec::new());
        }
        let mut tmp = tempfile::NamedTempFile::new()
            .map_err(|e| err(format!("cannot create a temporary copy: {e}")))?;
        tmp.write_all(content.as_bytes())
            .and_then(|()| tmp.flush())
            .map_err(|e| err(format!("cannot write a temporary copy: {e}")))?;
        russh::keys::known_hosts::known_host_keys_path(host, port, tmp.path())
            .map(|v| v.into_iter().map(|(_, k)| k).collect())
            .map_err(|e| err(format!("{e}").to_lowercase()))
    };
    Ok((lookup(&plain)?, lookup(&revoked)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    #[test]
    fn pinned_line_and_fingerprint_match() {
        let k = key(KEY);
        let pol = HostKeyPolicy::Pinned(format!("{KEY}\tcomment  here"));
        let c = HostKeyCheck::prepare("t", &pol, "h", 22).unwrap();
        assert!(matches!(c.verify(&k), Verdict::Accepted));
        let fp = k.fingerprint(HashAlg::Sha256).to_string();
        let c = HostKeyCheck::prepare("t", &HostKeyPolicy::Pinned(fp), "h", 22).unwrap();
        assert!(matches!(c.verify(&k), Verdict::Accepted));
        match c.verify(&key(OTHER)) {
            Verdict::Mismatch { seen, expected } => {
                assert!(seen.contains(&key(OTHER).fingerprint(HashAlg::Sha256).to_string()));
                assert!(expected.contains(&k.fingerprint(HashAlg::Sha256).to_string()));
            }
            v => panic!("unexpected {v:?}"),
        }
    }

    #[test]
    fn garbage_pin_is_a_policy_error() {
        let e =
            HostKeyCheck::prepare("t", &HostKeyPolicy::Pinned("nope".into()), "h", 22).unwrap_err();
        assert!(matches!(e, SshError::HostKeyPolicy { .. }), "{e}");
        assert!(!e.is_temporary());
    }

    #[test]
    fn known_hosts_tabs_ports_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let (kt, kb) = KEY.split_once(' ').unwrap();
        let (ot, ob) = OTHER.split_once(' ').unwrap();
        std::fs::write(
            &kh,
            format!(
                "# comment\n\nother.example {ot} {ob}\n[srv.example]:2222\t{kt}  {kb} c\n\
                 @cert-authority *.example {ot} {ob}\n@revoked bad.example {kt} {kb}\n"
            ),
        )
        .unwrap();
        let pol = HostKeyPolicy::KnownHosts(kh.clone());
        let c = HostKeyCheck::prepare("t", &pol, "srv.example", 2222).unwrap();
        assert!(matches!(c.verify(&key(KEY)), Verdict::Accepted));
        assert!(matches!(c.verify(&key(OTHER)), Verdict::Mismatch { .. }));
        // Port 22 entries are written without brackets, so this one is unknown.
        let c = HostKeyCheck::prepare("t", &pol, "srv.example", 22).unwrap();
        assert!(matches!(c.verify(&key(KEY)), Verdict::Unknown { .. }));
        let c = HostKeyCheck::prepare("t", &pol, "bad.example", 22).unwrap();
        assert!(matches!(c.verify(&key(KEY)), Verdict::Revoked { .. }));
    }

    #[test]
    fn missing_known_hosts_is_a_permanent_error_naming_the_file() {
        let pol = HostKeyPolicy::KnownHosts(PathBuf::from("/nonexistent/known_hosts"));
        let e = HostKeyCheck::prepare("t", &pol, "h", 22).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/known_hosts"), "{e}");
        assert!(!e.is_temporary());
    }

    #[test]
    fn known_algorithms_are_offered_first() {
        let c = HostKeyCheck::prepare("t", &HostKeyPolicy::Pinned(KEY.into()), "h", 22).unwrap();
        let defaults = [
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Ed25519,
        ];
        assert_eq!(c.preferred_algorithms(&defaults)[0], Algorithm::Ed25519);
    }
}
