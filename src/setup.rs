//! `burrow setup`: the steps of an installation that are easy to get wrong by hand — the SSH
//! key and what the server must allow, the server's host key, the key stick. They read the
//! config only as far as its syntax (`burrow_config::setup`), and never run anything on the
//! server or on the disks: they print what to do there.

use std::path::Path;

use burrow_config::setup::{Draft, server_lines};
use burrow_core::Exit;
use burrow_disk::stick::KeyStick;
use burrow_ssh::keys;
use burrow_ssh::trust::{self, Pin};

use crate::cli::Setup;
use crate::output::fail;

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

fn key(config: &Path, file: &Path, existing: bool) -> Exit {
    let public = if existing {
        keys::read_public(file)
    } else {
        keys::create(file).inspect(|_| {
            let public = keys::public_path(file);
            eprintln!(
                "created {} (private, 0600) and {}",
                file.display(),
                public.display()
            );
        })
    };
    match public.and_then(|k| keys::openssh_line(&k)) {
        Ok(line) => {
            outp!(
                "{}",
                server_lines(Draft::read(config).as_ref(), file, &line)
            );
            Exit::Ok
        }
        Err(e) => fail(Exit::Failed, e),
    }
}

async fn trust(config: &Path, server: &str, write: bool) -> Exit {
    let draft = match Draft::read(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Usage;
        }
    };
    let s = match draft.server(server) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, e),
    };
    let timeout = s.connect_timeout_or_default();
    let key = match trust::fetch(server, &s.host, s.port, timeout).await {
        Ok(k) => k,
        Err(e) => return fail(Exit::Failed, e),
    };
    outp!("{}", key.instructions(server, &s.host, s.port, config));
    let pin = key.compare(s.host_key.as_deref());
    if let Some(note) = pin.note() {
        out!("{note}");
    }
    if pin == Pin::Same {
        return Exit::Ok;
    }
    if !write {
        out!("(or run this again with --write to have burrow set it)");
        return Exit::Ok;
    }
    // A different pinned key is refused here (`PinError::Pinned`).
    match draft.pin_host_key(server, &key.line) {
        Ok(()) => {
            out!(
                "\nwrote servers.{server}.host_key to {} — only after you compared the fingerprint!",
                config.display()
            );
            Exit::Ok
        }
        Err(e) => fail(Exit::Failed, e),
    }
}

fn key_stick(mountpoint: &Path, bytes: usize, password: bool) -> Exit {
    let stick = match KeyStick::at(mountpoint) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Usage, e),
    };
    match stick.write_secrets(bytes, password) {
        Ok(secrets) => {
            outp!("{}", stick.report(&secrets));
            Exit::Ok
        }
        Err(e) => fail(Exit::Failed, e),
    }
}
