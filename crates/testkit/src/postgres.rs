//! A private PostgreSQL cluster from Debian's packages, listening only on a Unix socket in a
//! temporary directory.
//!
//! The server binaries live under `/usr/lib/postgresql/<version>/bin`; the newest version
//! found is used. `initdb` refuses to run as root, so when the tests run as root the cluster
//! belongs to the `postgres` system user (commands go through `runuser -u postgres --`).
//! Authentication is `trust`: any local client may connect as the superuser `postgres`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

const VERSIONS_DIR: &str = "/usr/lib/postgresql";
const OWNER: &str = "postgres";

pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    /// Run the server's commands as the `postgres` user (the tests run as root).
    as_owner: bool,
    running: bool,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("bin", &self.bin)
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish()
    }
}

impl Postgres {
    /// Creates and starts a cluster, or returns `None` (after [`crate::missing`]) when the
    /// PostgreSQL server is not installed.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = server_bin() else {
            crate::missing(
                "postgresql",
                "apt-get install postgresql (no /usr/lib/postgresql/<version>/bin/initdb)",
            );
            return None;
        };
        let as_owner = output(Command::new("id").arg("-u"))
            .map(|s| s.trim() == "0")
            .unwrap_or(false);
        if as_owner && output(Command::new("id").arg("-u").arg(OWNER)).is_none() {
            crate::missing(
                "postgresql",
                "apt-get install postgresql (no `postgres` system user to own the cluster)",
            );
            return None;
        }

        let dir = tempfile::Builder::new()
            .prefix("burrow-pg-")
            .tempdir()
            .expect("create temp dir for postgres");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        fs::create_dir(&socket_dir).expect("create the socket dir");
        if as_owner {
            for p in [dir.path(), &socket_dir] {
                run(Command::new("chown").arg(format!("{OWNER}:")).arg(p));
            }
        }
        // The socket's name holds the port, and the directory is private: any port will do.
        let port = 5432;
        let mut pg = Postgres {
            bin,
            dir,
            data,
            socket_dir,
            port,
            as_owner,
            running: false,
        };

        pg.init_and_start();
        pg.running = true;
        Some(pg)
    }

    /// `initdb`, the settings of a private throwaway cluster, `pg_ctl start`.
    fn init_and_start(&mut self) {
        let initdb = self.bin.join("initdb");
        run(self
            .server_command(&initdb)
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg("--locale=C"));
        let settings = format!(
            "\nlisten_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             port = {}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n",
            self.socket_dir.display(),
            self.port
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&settings);
        fs::write(&conf, text).expect("write postgresql.conf");

        let pg_ctl = self.bin.join("pg_ctl");
        let log = self.dir.path().join("postgres.log");
        let out = self
            .server_command(&pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "postgres did not start: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    /// The directory holding the server's socket (for `-h` / `PGHOST`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port (for `-p` / `PGPORT`; it names the socket file).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser to connect as.
    pub fn user(&self) -> &str {
        "postgres"
    }

    /// The path of one of this version's programs (`pg_dump`, `pg_restore`, `createdb`...).
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    /// `PGHOST=... PGPORT=... PGUSER=...` for a shell command line that connects here.
    pub fn env_prefix(&self) -> String {
        format!(
            "PGHOST={} PGPORT={} PGUSER={}",
            self.socket_dir.display(),
            self.port,
            self.user()
        )
    }

    /// Runs `sql` in database `db` with psql and returns its unaligned, tuples-only output
    /// (trimmed). Panics when psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.client(&self.bin("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        run(&mut cmd).trim().to_owned()
    }

    /// A client command (psql, pg_dump, createdb...) with the connection set in its
    /// environment; it runs as the current user.
    pub fn client(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", self.user())
            .env_remove("PGDATABASE")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        cmd
    }

    /// The server's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = if self.as_owner {
            let mut c = Command::new("runuser");
            c.args(["-u", OWNER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // The owner may not be allowed into the tests' working directory.
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let pg_ctl = self.bin.join("pg_ctl");
            let _ = self
                .server_command(&pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.running = false;
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has the server programs.
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(VERSIONS_DIR)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_cleans_up() {
        let Some(pg) = Postgres::start() else {
            return;
        };
        assert_eq!(pg.psql("postgres", "SELECT 1 + 1"), "2");
        pg.psql("postgres", "CREATE DATABASE t");
        pg.psql("t", "CREATE TABLE x (v int); INSERT INTO x VALUES (1), (2)");
        assert_eq!(pg.psql("t", "SELECT sum(v) FROM x"), "3");
        assert!(
            pg.socket_dir()
                .join(format!(".s.PGSQL.{}", pg.port()))
                .exists()
        );
        let dir = pg.dir.path().to_owned();
        drop(pg);
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}
