use super::*;
use std::time::Duration;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("/etc/burrow/config.yaml"))
}

fn invalid(text: &str) -> Vec<Invalid> {
    match parse_str(text) {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        other => panic!("expected semantic errors, got {other:?}"),
    }
}

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn example_config_is_valid() {
    let path = Path::new(ROOT).join("config.example.yaml");
    let cfg = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let job = cfg.job("synapse").unwrap();
    assert!(!job.enabled);
    assert_eq!(job.dumps.len(), 2);
    assert_eq!(
        job.dumps[1].command,
        "docker exec -i infra_pg pg_dump -Fc -U postgres media"
    );
    assert_eq!(cfg.servers["vps"].port, 22);
    assert_eq!(
        cfg.disk.as_ref().unwrap().backup_uuid,
        "9c2d4b7a-3e61-4f0e-8a5d-2b9f6c1e0d34"
    );
}

#[test]
fn every_example_parses() {
    let dir = Path::new(ROOT).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            parse_with(&text, &path, false).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no examples found in {}", dir.display());
}

#[test]
fn misspelled_key_is_a_located_syntax_error() {
    let text = "repository:\n  path: /r\n  password_file: /dev/null\njobs:\n  a:\n    paths: [/x]\n    keep_dayly: 3\n";
    let err = parse_str(text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("/etc/burrow/config.yaml:7:5: "), "{msg}");
    assert!(msg.contains("keep_dayly"), "{msg}");
    assert!(msg.contains("jobs"), "key path missing: {msg}");
}

#[test]
fn type_error_names_the_key_path() {
    let text = "repository:\n  path: /r\n  password_file: /dev/null\njobs:\n  a:\n    paths: [/x]\n    retention: {keep_daily: seven}\n";
    let msg = parse_str(text).unwrap_err().to_string();
    assert!(msg.contains(":7:"), "{msg}");
    assert!(msg.contains("jobs.a.retention.keep_daily"), "{msg}");
}

#[test]
fn all_semantic_errors_are_reported_together() {
    let text = "\
repository:
  path: relative/repo
  password_file: /dev/null
jobs:
  a:
    server: nowhere
    schedule: \"0 25 * * *\"
    paths: [/x]
";
    let errs = invalid(text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["repository.path", "jobs.a.server", "jobs.a.schedule"],
        "{errs:?}"
    );
    assert_eq!(errs[0].at, Some((2, 3)));
    assert_eq!(errs[2].at, Some((7, 5)));
    let msg = parse_str(text).unwrap_err().to_string();
    assert!(
        msg.contains("/etc/burrow/config.yaml:6:5: jobs.a.server: unknown server \"nowhere\""),
        "{msg}"
    );
}

#[test]
fn job_rules() {
    let text = "\
repository: {path: /r, password_file: /nonexistent/pw}
servers:
  s:
    host: h
    user: u
    identity_file: /nonexistent/id
  t:
    host: h
    user: u
    identity_file: /nonexistent/id
    host_key: ssh-ed25519 AAAA
    known_hosts: /k
jobs:
  empty: {}
  d:
    server: s
    timezone: Mars/Base
    schedule: \"0 3 * * *\"
    paths: [x/y]
    dumps:
      - {name: a, command: x}
      - {name: a, command: y}
      - {name: b}
    retention: {}
  t:
    server: s
    paths: [/x]
    dump_timeout: 0s
";
    let errs = invalid(text);
    let got: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    let want_paths = [
        "repository.password_file",
        "servers.s",
        "servers.s.identity_file",
        "servers.t",
        "jobs.d.timezone",
        "jobs.d.paths[0]",
        "jobs.d.dumps[1].name",
        "jobs.d.dumps[2]",
        "jobs.d.retention",
        "jobs.empty",
        "jobs.t.dump_timeout",
    ];
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, want_paths, "{got:#?}");
}

#[test]
fn relative_password_file_lives_on_the_key_stick() {
    let text = "\
repository: {path: repo, password_file: pw}
disk:
  key: {fs_uuid: AB-CD, key_file: ../escape}
  backup: {uuid: 1234}
jobs:
  a: {paths: [/x]}
";
    let errs = invalid(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "disk.key.key_file");
    let ok = text.replace("../escape", "file");
    let cfg = parse_str(&ok).unwrap();
    assert_eq!(cfg.disk.unwrap().key.unwrap().fs_uuid, "ab-cd");
}

#[test]
fn ping_urls_are_never_printed_whole() {
    let text = "\
repository: {path: /r, password_file: /dev/null}
jobs:
  a:
    paths: [/x]
    healthcheck: https://hc-ping.com/5d7c1f3a-0000-4000-8000-123456789abc
";
    let cfg = parse_str(text).unwrap();
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("5d7c1f3a"), "{dbg}");
    assert!(dbg.contains("hc-ping.com"));
    let ping = cfg.job("a").unwrap().healthcheck.as_ref().unwrap();
    assert!(ping.expose().ends_with("123456789abc"));
}

#[test]
fn presets_expand_to_quoted_commands() {
    let text = "\
repository: {path: /r, password_file: /dev/null}
jobs:
  a:
    dumps:
      - {name: pg, postgres: {database: \"my db\", user: me}}
      - {name: pg2, postgres: {database: x, host: /run/pg, port: 5433}}
      - {name: my, mysql: {database: shop, container: db1}}
      - {name: lite, sqlite: {path: /srv/app.db}}
";
    let cfg = parse_str(text).unwrap();
    let d = &cfg.job("a").unwrap().dumps;
    assert_eq!(d[0].command, "pg_dump -Fc -U me 'my db'");
    assert_eq!(
        d[0].restore_command.as_deref(),
        Some("pg_restore --clean --if-exists --no-owner -U me -d 'my db'")
    );
    assert_eq!(d[1].command, "pg_dump -Fc -h /run/pg -p 5433 x");
    let d: Vec<_> = d.iter().filter(|x| x.name != "pg2").collect();
    assert_eq!(
        d[1].command,
        "docker exec -i db1 mysqldump --single-transaction --routines --triggers shop"
    );
    assert!(d[2].command.contains("sqlite3 /srv/app.db \".backup"));
}

#[test]
fn shell_quote_round_trips_through_sh() {
    for s in ["plain", "with space", "it's", "$(rm -rf /)", ""] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(s)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
    }
}

#[test]
fn dump_timeout_defaults_to_six_hours_and_can_be_set() {
    let text = "\
repository: {path: /r, password_file: /pw}
jobs:
  a: {paths: [/x]}
  b: {paths: [/x], dump_timeout: 90m}
";
    let cfg = parse_with(text, Path::new("/etc/burrow/config.yaml"), false).unwrap();
    assert_eq!(
        cfg.job("a").unwrap().dump_timeout,
        Duration::from_secs(6 * 3600)
    );
    assert_eq!(
        cfg.job("b").unwrap().dump_timeout,
        Duration::from_secs(90 * 60)
    );
}
