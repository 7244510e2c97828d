//! `burrow setup`: the steps of an installation that are easy to get wrong by hand — the SSH
//! key and what the server must allow, the server's host key, the key stick. They read the
//! config only as far as its syntax (it is usually still being written), and never run
//! anything on the server or on the disks: they print what to do there.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use burrow_config::{Outline, outline};
use burrow_core::Exit;
use rand::{Rng, RngCore};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};

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

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Creates `path` (which must not exist) with `mode` and `data`, flushed to the device.
fn write_new(path: &Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)?;
    let res = f.write_all(data).and_then(|()| f.sync_all());
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

// ---- setup key -----------------------------------------------------------------------------

fn key(config: &Path, file: &Path, existing: bool) -> Exit {
    let public = if existing {
        match read_public(file) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("burrow: {e}");
                return Exit::Failed;
            }
        }
    } else {
        match create_key(file) {
            Ok(k) => k,
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
    print!("{}", server_lines(config, file, &line));
    Exit::Ok
}

fn read_public(file: &Path) -> Result<PublicKey, String> {
    let p = pub_path(file);
    if let Ok(text) = fs::read_to_string(&p) {
        return PublicKey::from_openssh(text.trim())
            .map_err(|e| format!("{}: not an OpenSSH public key: {e}", p.display()));
    }
    let text =
        fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    PrivateKey::from_openssh(&text)
        .map(|k| k.public_key().clone())
        .map_err(|e| format!("{}: not an OpenSSH private key: {e}", file.display()))
}

fn create_key(file: &Path) -> Result<PublicKey, String> {
    let pubfile = pub_path(file);
    for p in [file, pubfile.as_path()] {
        if p.exists() || p.is_symlink() {
            return Err(format!(
                "{} exists; not overwriting it (use --existing to print the lines for that key, or choose another --file)",
                p.display()
            ));
        }
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let pair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let comment = format!("burrow@{}", host_name());
    let key = PrivateKey::new(KeypairData::Ed25519(pair), comment)
        .map_err(|e| format!("cannot build the key: {e}"))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    let public = key.public_key().clone();
    let public_line = public
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    write_new(file, 0o600, private.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    write_new(&pubfile, 0o644, format!("{public_line}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", pubfile.display()))?;
    eprintln!(
        "created {} (private, 0600) and {}",
        file.display(),
        pubfile.display()
    );
    Ok(public)
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
                out.push_str(&sudoers(&o, name, s));
            }
        }
    }
    out
}

/// A sudoers rule for `server`'s user: exactly the commands the config runs there with sudo.
fn sudoers(o: &Outline, name: &str, s: &burrow_config::ServerOutline) -> String {
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
fn sudoers_command(cmd: &str) -> Result<(String, Option<String>), String> {
    let words = split_words(cmd)?;
    let Some(first) = words.first() else {
        return Err("nothing after sudo".into());
    };
    if first.starts_with('-') {
        return Err(format!("sudo option {first} (only -n is understood)"));
    }
    let (prog, guess) = if first.starts_with('/') {
        (first.clone(), None)
    } else if first.contains('/') || first.contains('=') {
        return Err("not a plain program name".into());
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
fn split_words(cmd: &str) -> Result<Vec<String>, String> {
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
                        None => return Err("unbalanced quote".into()),
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
                            None => return Err("unbalanced quote".into()),
                        },
                        Some('$' | '`') => return Err("shell expansion".into()),
                        Some(c) => cur.push(c),
                        None => return Err("unbalanced quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' | '{' | '~'
            | '\n' => return Err("shell syntax".into()),
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
            println!("\nThe config already pins this key: nothing to change.");
            return Exit::Ok;
        }
        Some(pinned) => {
            println!(
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
        println!("(or run this again with --write to have burrow set it)");
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
    println!(
        "server {server} ({}:{}) presented this host key. It is NOT trusted yet:",
        s.host, s.port
    );
    println!("  {line}");
    println!("  fingerprint: {fp}");
    println!();
    println!("Compare the fingerprint with the one the server itself prints, over a connection");
    println!("you already trust (the provider's web console, or an SSH session you verified):");
    println!("  ssh-keygen -lf /etc/ssh/ssh_host_{file_kind}_key.pub");
    println!(
        "They must be identical. Then pin the key in {}:",
        config.display()
    );
    println!("  servers:");
    println!("    {server}:");
    println!("      host_key: \"{line}\"");
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
            println!(
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
    if let Err(e) = write_new(&key_file, 0o400, &key) {
        eprintln!("burrow: cannot write {}: {e}", key_file.display());
        return Err(Exit::Failed);
    }
    key.fill(0);
    println!(
        "wrote {} ({bytes} random bytes, mode 0400)",
        key_file.display()
    );
    if password {
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(48)
            .map(char::from)
            .collect();
        if let Err(e) = write_new(&pw_file, 0o400, format!("{secret}\n").as_bytes()) {
            eprintln!("burrow: cannot write {}: {e}", pw_file.display());
            return Err(Exit::Failed);
        }
        println!(
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
    println!();
    println!(
        "Add the key file to the backup disk's LUKS header (asks for an existing passphrase):"
    );
    if luks.len() > 1 {
        println!(
            "  # several LUKS containers: {} — pick the backup disk's",
            luks.join(", ")
        );
    } else if luks.is_empty() {
        println!("  # find the UUID with `lsblk -f` (FSTYPE crypto_LUKS)");
    }
    println!("  cryptsetup luksAddKey {disk} {}", key_file.display());
    println!("Test it:");
    println!(
        "  cryptsetup open --test-passphrase --key-file {} {disk} && echo ok",
        key_file.display()
    );
    println!();
    println!("In the config ({source}):");
    println!("disk:");
    println!("  key:");
    match &fs_uuid {
        Some(u) => println!("    fs_uuid: \"{u}\""),
        None => println!("    fs_uuid: \"<filesystem UUID of the stick: lsblk -f {source}>\""),
    }
    println!("    key_file: file");
    if password {
        println!("repository:");
        println!("  password_file: burrow-password");
    }
    println!();
    println!(
        "Keep a copy of {} somewhere safe (not next to the disk): without it and without a\n\
         passphrase in the LUKS header, the backups cannot be opened.{}",
        key_file.display(),
        if password {
            " The same holds for burrow-password."
        } else {
            ""
        }
    );
    println!("Then unmount the stick: umount {}", mp.display());
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
