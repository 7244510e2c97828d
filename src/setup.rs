//! `burrow setup`: the steps of an installation that are easy to get wrong by hand — the SSH
//! key and what the server must allow, the server's host key, the key stick. They read the
//! config only as far as its syntax (it is usually still being written), and never run
//! anything on the server or on the disks: they print what to do there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use burrow_config::{Outline, outline};
use burrow_core::Exit;
use rand::{Rng, RngCore};
use russh::keys::ssh_key::{HashAlg, PublicKey};

use crate::cli::Setup;

pub async fn run(config: &Path, what: &Setup) -> Exit {
    match what {
        Setup::Key { file, existing } => key(config, file, *existing),
        Setup::Trust { server, write } => trust(config, server, *write).await,
        Setup::KeyStick {
            mountpoint,
            bytes,
            password,
        } => key_stick(mountpoint, *bytes as usize, *password),
    }
}

fn read_outline(config: &Path) -> Result<(String, Outline), String> {
    let text = fs::read_to_string(config).map_err(|e| {
        format!(
            "cannot read config file {}: {e} (pass --config FILE or set BURROW_CONFIG)",
            config.display()
        )
    })?;
    let o = outline(&text, config).map_err(|e| e.to_string())?;
    Ok((text, o))
}

// ---- setup key -----------------------------------------------------------------------------

fn key(config: &Path, file: &Path, existing: bool) -> Exit {
    let public = if existing {
        match burrow_ssh::keys::read_public(file) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
        }
    } else {
        match burrow_ssh::keys::create(file) {
            Ok(k) => {
                eprintln!(
                    "created {} (private, 0600) and {}",
                    file.display(),
                    burrow_ssh::keys::public_path(file).display()
                );
                k
            }
            Err(e) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
        }
    };
    let line = match public.to_openssh() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("burrow: {e}");
            return Exit::Failed;
        }
    };
    outp!("{}", server_lines(config, file, &line));
    Exit::Ok
}

/// The text to paste on the server(s) that use this key: authorized_keys and sudoers.
fn server_lines(config: &Path, file: &Path, public_line: &str) -> String {
    let mut out = String::new();
    let o = read_outline(config);
    let servers: Vec<(String, burrow_config::ServerOutline)> = match &o {
        Ok((_, o)) => {
            let mine: Vec<_> = o
                .servers
                .iter()
                .filter(|(_, s)| s.identity_file == file)
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect();
            if mine.is_empty() {
                o.servers
                    .iter()
                    .map(|(n, s)| (n.clone(), s.clone()))
                    .collect()
            } else {
                mine
            }
        }
        Err(_) => Vec::new(),
    };
    let user = servers
        .first()
        .map_or("backup_agent", |(_, s)| s.user.as_str());
    out.push_str(&format!(
        "\n# ---- On the server, as root: an account for burrow, then its authorized_keys
# adduser --disabled-password --gecos burrow {user}
# install -d -m 700 -o {user} -g {user} ~{user}/.ssh
# Append this line to ~{user}/.ssh/authorized_keys. `restrict` turns off port, agent and X11
# forwarding and terminals; burrow needs only SFTP and commands.
restrict {public_line}
# Better, if your home address is fixed: only accept this key from there.
# restrict,from=\"203.0.113.7\" {public_line}
"
    ));
    match o {
        Err(e) => out.push_str(&format!(
            "\n# No sudoers rule: {e}\n# Once the config names the server and its jobs, run `burrow setup key --existing --file {}` again.\n",
            file.display()
        )),
        Ok((_, o)) => {
            for (name, s) in &servers {
                out.push_str(&burrow_config::sudoers::rule(&o, name, s));
            }
        }
    }
    out
}

// ---- setup trust ---------------------------------------------------------------------------

async fn trust(config: &Path, server: &str, write: bool) -> Exit {
    let (text, o) = match read_outline(config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Usage;
        }
    };
    let Some(s) = o.servers.get(server) else {
        let known: Vec<&str> = o.servers.keys().map(String::as_str).collect();
        eprintln!(
            "burrow: no server named {server:?} in {} (servers: {})",
            config.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
        return Exit::Usage;
    };
    let timeout = s
        .connect_timeout
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_secs(30));
    let key = match burrow_ssh::fetch_host_key(&s.host, s.port, timeout).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("burrow: cannot fetch the host key of server {server}: {e}");
            return Exit::Failed;
        }
    };
    let mut bare = key.clone();
    bare.set_comment("");
    let line = match bare.to_openssh() {
        Ok(l) => l.trim().to_owned(),
        Err(e) => {
            eprintln!("burrow: {e}");
            return Exit::Failed;
        }
    };
    show_host_key(config, server, s, &key, &line);
    match &s.host_key {
        Some(pinned) if burrow_ssh::pinned_accepts(pinned, &key) => {
            out!("\nThe config already pins this key: nothing to change.");
            return Exit::Ok;
        }
        Some(pinned) => {
            out!(
                "\nWARNING: the config pins a different key ({}). If the server's key changed on purpose\n\
                 (reinstalled server), check the new one as above; otherwise do not connect.",
                short(pinned)
            );
            if write {
                eprintln!(
                    "burrow: not replacing the pinned key with --write: after checking the new key, replace it by hand"
                );
                return Exit::Failed;
            }
        }
        None => {}
    }
    if !write {
        out!("(or run this again with --write to have burrow set it)");
        return Exit::Ok;
    }
    pin(config, &text, server, &line)
}

/// What `setup trust` shows of the key the server presented, and how to check it by hand.
fn show_host_key(
    config: &Path,
    server: &str,
    s: &burrow_config::ServerOutline,
    key: &PublicKey,
    line: &str,
) {
    let fp = key.fingerprint(HashAlg::Sha256).to_string();
    let alg = key.algorithm();
    let kind = alg.as_str();
    let file_kind = match kind {
        "ssh-ed25519" => "ed25519",
        "ssh-rsa" | "rsa-sha2-256" | "rsa-sha2-512" => "rsa",
        k if k.starts_with("ecdsa-") => "ecdsa",
        _ => "ed25519",
    };
    out!(
        "server {server} ({}:{}) presented this host key. It is NOT trusted yet:",
        s.host,
        s.port
    );
    out!("  {line}");
    out!("  fingerprint: {fp}");
    out!();
    out!("Compare the fingerprint with the one the server itself prints, over a connection");
    out!("you already trust (the provider's web console, or an SSH session you verified):");
    out!("  ssh-keygen -lf /etc/ssh/ssh_host_{file_kind}_key.pub");
    out!(
        "They must be identical. Then pin the key in {}:",
        config.display()
    );
    out!("  servers:");
    out!("    {server}:");
    out!("      host_key: \"{line}\"");
}

/// Writes `line` as `servers.SERVER.host_key` into the config file (`--write`).
fn pin(config: &Path, text: &str, server: &str, line: &str) -> Exit {
    let edited = match burrow_config::set_host_key(text, config, server, line) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("burrow: not editing {}: {e}", config.display());
            return Exit::Failed;
        }
    };
    match burrow_core::fsutil::write_atomic(config, edited.as_bytes()) {
        Ok(()) => {
            out!(
                "\nwrote servers.{server}.host_key to {} — only after you compared the fingerprint!",
                config.display()
            );
            Exit::Ok
        }
        Err(e) => {
            eprintln!("burrow: cannot write {}: {e}", config.display());
            Exit::Failed
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

// ---- setup key-stick -----------------------------------------------------------------------

fn findmnt(mountpoint: &Path, field: &str) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", field, "--mountpoint"])
        .arg(mountpoint)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// UUIDs of the LUKS containers this machine can see.
fn luks_uuids() -> Vec<String> {
    let Ok(out) = Command::new("lsblk")
        .args(["-n", "-r", "-o", "UUID,FSTYPE"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (u, t) = l.split_once(' ')?;
            (t.trim() == "crypto_LUKS" && !u.is_empty()).then(|| u.to_owned())
        })
        .collect()
}

fn key_stick(mountpoint: &Path, bytes: usize, password: bool) -> Exit {
    let mp = match fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("burrow: {}: {e}", mountpoint.display());
            return Exit::Usage;
        }
    };
    // Refuse a plain directory: a key written to the SD card because the stick was not mounted
    // would unlock the disk for whoever takes the Pi.
    let Some(source) = findmnt(&mp, "SOURCE").filter(|s| !s.is_empty()) else {
        eprintln!(
            "burrow: {} is not a mount point: mount the key stick first (e.g. `udisksctl mount -b /dev/sdb1`)",
            mp.display()
        );
        return Exit::Usage;
    };
    if mp == Path::new("/") {
        eprintln!("burrow: / is the system disk, not a key stick");
        return Exit::Usage;
    }
    let key_file = match write_secrets(&mp, bytes, password) {
        Ok(f) => f,
        Err(code) => return code,
    };
    print_stick_steps(&mp, &source, &key_file, password);
    Exit::Ok
}

/// Writes the LUKS key file (and with `password` the repository password) onto the stick
/// at `mp`, never over an existing file; returns the key file's path.
fn write_secrets(mp: &Path, bytes: usize, password: bool) -> Result<PathBuf, Exit> {
    let key_file = mp.join("file");
    let pw_file = mp.join("burrow-password");
    for p in std::iter::once(&key_file).chain(password.then_some(&pw_file)) {
        if p.exists() || p.is_symlink() {
            eprintln!(
                "burrow: {} exists; not overwriting it (it may be the only key to your backup disk)",
                p.display()
            );
            return Err(Exit::Failed);
        }
    }
    let mut key = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut key);
    if let Err(e) = burrow_core::fsutil::create_new(&key_file, 0o400, &key) {
        eprintln!("burrow: cannot write {}: {e}", key_file.display());
        return Err(Exit::Failed);
    }
    key.fill(0);
    out!(
        "wrote {} ({bytes} random bytes, mode 0400)",
        key_file.display()
    );
    if password {
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(48)
            .map(char::from)
            .collect();
        if let Err(e) =
            burrow_core::fsutil::create_new(&pw_file, 0o400, format!("{secret}\n").as_bytes())
        {
            eprintln!("burrow: cannot write {}: {e}", pw_file.display());
            return Err(Exit::Failed);
        }
        out!(
            "wrote {} (repository password, mode 0400)",
            pw_file.display()
        );
    }
    if let Ok(d) = fs::File::open(mp) {
        let _ = d.sync_all();
    }
    Ok(key_file)
}

/// The steps after `setup key-stick`: the key into the LUKS header, the config lines.
fn print_stick_steps(mp: &Path, source: &str, key_file: &Path, password: bool) {
    let fs_uuid = findmnt(mp, "UUID").filter(|u| !u.is_empty());
    let luks = luks_uuids();
    let disk = match luks.as_slice() {
        [one] => format!("/dev/disk/by-uuid/{one}"),
        _ => "/dev/disk/by-uuid/<LUKS UUID of the backup disk>".to_owned(),
    };
    out!();
    out!("Add the key file to the backup disk's LUKS header (asks for an existing passphrase):");
    if luks.len() > 1 {
        out!(
            "  # several LUKS containers: {} — pick the backup disk's",
            luks.join(", ")
        );
    } else if luks.is_empty() {
        out!("  # find the UUID with `lsblk -f` (FSTYPE crypto_LUKS)");
    }
    out!("  cryptsetup luksAddKey {disk} {}", key_file.display());
    out!("Test it:");
    out!(
        "  cryptsetup open --test-passphrase --key-file {} {disk} && echo ok",
        key_file.display()
    );
    out!();
    out!("In the config ({source}):");
    out!("disk:");
    out!("  key:");
    match &fs_uuid {
        Some(u) => out!("    fs_uuid: \"{u}\""),
        None => out!("    fs_uuid: \"<filesystem UUID of the stick: lsblk -f {source}>\""),
    }
    out!("    key_file: file");
    if password {
        out!("repository:");
        out!("  password_file: burrow-password");
    }
    out!();
    out!(
        "Keep a copy of {} somewhere safe (not next to the disk): without it and without a\n\
         passphrase in the LUKS header, the backups cannot be opened.{}",
        key_file.display(),
        if password {
            " The same holds for burrow-password."
        } else {
            ""
        }
    );
    out!("Then unmount the stick: umount {}", mp.display());
}
