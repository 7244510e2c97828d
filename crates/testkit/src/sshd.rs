//! A private OpenSSH sshd on 127.0.0.1 with throwaway host and client keys.
//!
//! Each [`Sshd`] owns a temporary directory with its keys, `authorized_keys`, config and log,
//! and runs `/usr/sbin/sshd -D -e` as a child process that is killed on drop. The login user is
//! the user running the tests.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const SSHD: &str = "/usr/sbin/sshd";
const SSH_KEYGEN: &str = "ssh-keygen";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// Set in the environment of every session of a server (`SetEnv`), so that whatever a session
/// started can be found again, even when it left its process tree (`setsid`, `nohup … &`).
const SESSION_TAG: &str = "BURROW_TEST_SSHD";
// Sessions also get `SHLVL=1`: bash (the login shell of root on most test machines) then
// does not read `~/.bashrc` for commands run over SSH, so the tests do not depend on what a
// machine's shell startup does (a `pyenv init` there waits up to a minute on a stale lock).

pub struct Sshd {
    pub port: u16,
    /// The server's public key as an OpenSSH line, `ssh-ed25519 AAAA... comment`.
    pub host_key_line: String,
    /// The server key's fingerprint, `SHA256:...`.
    pub host_key_fingerprint: String,
    /// Private key (ed25519, no passphrase) that `authorized_keys` accepts.
    pub client_key: PathBuf,
    pub user: String,
    pub dir: TempDir,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Sshd {
    /// Starts a server, or returns `None` (after [`crate::missing`]) when OpenSSH's server or
    /// `ssh-keygen` is not installed.
    pub fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            crate::missing("sshd", "/usr/sbin/sshd not found (install openssh-server)");
            return None;
        }
        if Command::new(SSH_KEYGEN)
            .arg("-?")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            crate::missing("sshd", "ssh-keygen not found (install openssh-client)");
            return None;
        }
        // sshd refuses to start without its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");

        let dir = tempfile::Builder::new()
            .prefix("burrow-sshd-")
            .tempdir()
            .expect("create temp dir for sshd");
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key, None, "burrow-test-host");
        let client_key = dir.path().join("id_ed25519");
        keygen(&client_key, None, "burrow-test-client");
        let authorized = dir.path().join("authorized_keys");
        fs::copy(pub_path(&client_key), &authorized).expect("write authorized_keys");

        let host_key_line = fs::read_to_string(pub_path(&host_key))
            .expect("read host public key")
            .trim()
            .to_owned();
        let host_key_fingerprint = fingerprint(&pub_path(&host_key));
        let user = current_user();
        let config = dir.path().join("sshd_config");
        let log = dir.path().join("sshd.log");

        let mut sshd = Sshd {
            port: 0,
            host_key_line,
            host_key_fingerprint,
            client_key,
            user,
            dir,
            config,
            log,
            child: None,
        };
        let mut last_err = String::new();
        // A port found free can be taken by someone else before sshd binds it: retry.
        for _ in 0..5 {
            sshd.port = free_port();
            write_config(
                &sshd.config,
                sshd.dir.path(),
                &host_key,
                &authorized,
                sshd.port,
            );
            match sshd.spawn() {
                Ok(()) => return Some(sshd),
                Err(e) => last_err = e.to_string(),
            }
        }
        panic!("sshd did not start: {last_err}");
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let failed = |what: String| std::io::Error::other(what);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| failed(format!("open {}: {e}", self.log.display())))?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| failed(format!("spawn {SSHD}: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(failed(format!(
                    "sshd exited with {status}: {}",
                    self.log_text()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(failed(format!(
                    "sshd did not accept connections on port {} within 10 s: {}",
                    self.port,
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (existing connections die with it), as if the machine vanished.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Connection handlers are forked children of the listener and would keep open
            // sessions alive: kill them too, found by parent PID before the listener goes.
            // Rescan: a handler may fork while the first ones are killed.
            for _ in 0..3 {
                let pids = descendants(child.id());
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.dir.path().join("sshd.pid"));
    }

    /// Starts the server again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("sshd did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The live processes that sessions of this server started (found by the `SetEnv` tag
    /// in their environment, so detached ones too), as (pid, command line).
    pub fn session_processes(&self) -> Vec<(u32, String)> {
        let tag = format!("{SESSION_TAG}={}", self.dir.path().display());
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(env) = fs::read(e.path().join("environ")) else {
                continue;
            };
            if env.split(|&b| b == 0).any(|v| v == tag.as_bytes()) {
                let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                out.push((pid, cmdline.trim().to_owned()));
            }
        }
        out
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Processes under this server (its connections' sessions and their commands) whose
    /// command name is `comm`, e.g. `sftp-server`.
    pub fn processes_named(&self, comm: &str) -> Vec<u32> {
        let Some(child) = self.child.as_ref() else {
            return Vec::new();
        };
        descendants(child.id())
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    /// The server's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates another ed25519 client key pair, optionally protected by `passphrase`, and
    /// authorises it. Returns the private key's path.
    pub fn add_client_key(&self, name: &str, passphrase: Option<&str>) -> PathBuf {
        let key = self.dir.path().join(name);
        keygen(&key, passphrase, name);
        let public = fs::read_to_string(pub_path(&key)).expect("read public key");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .expect("open authorized_keys");
        f.write_all(public.as_bytes())
            .expect("append authorized_keys");
        key
    }

    /// Creates a client key pair that the server does NOT accept.
    pub fn unauthorized_client_key(&self, name: &str) -> PathBuf {
        let key = self.dir.path().join(name);
        keygen(&key, None, name);
        key
    }

    /// A known_hosts line for this server (`[127.0.0.1]:port key`), hashed with
    /// `ssh-keygen -H` when `hashed`.
    pub fn known_hosts_line(&self, hashed: bool) -> String {
        let plain = format!("[127.0.0.1]:{} {}\n", self.port, self.host_key_line);
        if !hashed {
            return plain;
        }
        let file = self.dir.path().join("known_hosts.tmp");
        fs::write(&file, &plain).expect("write known_hosts");
        run(Command::new(SSH_KEYGEN)
            .arg("-q")
            .arg("-H")
            .arg("-f")
            .arg(&file));
        let hashed = fs::read_to_string(&file).expect("read hashed known_hosts");
        let _ = fs::remove_file(&file);
        let _ = fs::remove_file(file.with_extension("tmp.old"));
        hashed
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn keygen(path: &Path, passphrase: Option<&str>, comment: &str) {
    run(Command::new(SSH_KEYGEN)
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase.unwrap_or(""),
            "-C",
            comment,
            "-f",
        ])
        .arg(path));
}

fn fingerprint(public: &Path) -> String {
    let out = run(Command::new(SSH_KEYGEN).arg("-l").arg("-f").arg(public));
    out.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("fingerprint in ssh-keygen -l output")
        .to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn current_user() -> String {
    let out = run(Command::new("id").arg("-un"));
    out.trim().to_owned()
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn write_config(config: &Path, dir: &Path, host_key: &Path, authorized: &Path, port: u16) {
    let text = format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {authorized}\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         StrictModes no\n\
         UsePAM no\n\
         MaxSessions 100\n\
         MaxStartups 100\n\
         LogLevel VERBOSE\n\
         SetEnv {SESSION_TAG}={dir} SHLVL=1\n\
         Subsystem sftp {SFTP_SERVER}\n",
        dir = dir.display(),
        host_key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        authorized = authorized.display(),
    );
    fs::write(config, text).expect("write sshd_config");
}

/// (pid, state, ppid, process group) of every process, from /proc.
fn proc_stats() -> Vec<(u32, char, u32, u32)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // The command name may contain spaces and parentheses; fields resume after the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(state), Some(Ok(ppid)), Some(Ok(pgrp))) = (
                f.first().and_then(|s| s.chars().next()),
                f.get(1).map(|s| s.parse()),
                f.get(2).map(|s| s.parse()),
            ) {
                out.push((pid, state, ppid, pgrp));
            }
        }
    }
    out
}

/// The live members of process group `pgid` (zombies have ended: they only wait for a
/// parent that may never reap them).
pub fn group_members(pgid: u32) -> Vec<u32> {
    proc_stats()
        .into_iter()
        .filter(|&(_, state, _, pgrp)| pgrp == pgid && state != 'Z')
        .map(|(pid, ..)| pid)
        .collect()
}

/// All descendants of `root`, children before their parents' siblings (read from /proc).
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = proc_stats()
        .into_iter()
        .map(|(pid, _, ppid, _)| (pid, ppid))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}
