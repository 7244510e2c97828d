//! docs/configuration.md documents every key the config file accepts: the key paths are read
//! from the serde structs in src/raw.rs (the definition `deny_unknown_fields` enforces), so a
//! new key without documentation fails here.

use std::collections::BTreeMap;

const RAW: &str = include_str!("../src/raw.rs");
const DOC: &str = include_str!("../../../docs/configuration.md");

/// struct or enum name → its fields as (name, type), from the source text.
fn structs() -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in RAW.lines() {
        let t = line.trim();
        if let Some(rest) = t
            .strip_prefix("pub struct ")
            .or_else(|| t.strip_prefix("pub enum "))
        {
            let name = rest.split([' ', '{']).next().unwrap().to_owned();
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if t == "}" {
            current = None;
            continue;
        }
        let Some(cur) = &current else { continue };
        // `pub name: Type,` in structs; `Slug { slug: String },` in the untagged enum.
        let field = t.strip_prefix("pub ").unwrap_or(t);
        let field = field
            .split_once('{')
            .map_or(field, |(_, inner)| inner.trim());
        if let Some((name, ty)) = field.split_once(": ")
            && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            let ty = ty.trim_end_matches([',', '}', ' ']).to_owned();
            out.get_mut(cur).unwrap().push((name.to_owned(), ty));
        }
    }
    out
}

fn walk(
    all: &BTreeMap<String, Vec<(String, String)>>,
    ty: &str,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (name, fty) in &all[ty] {
        let mut path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        out.push(path.clone());
        if fty.starts_with("BTreeMap<String,") {
            path.push_str(".NAME");
        } else if fty.starts_with("Vec<Raw") {
            path.push_str("[]");
        }
        if let Some(inner) = fty
            .split(['<', '>', ' ', ','])
            .find(|w| w.starts_with("Raw") && all.contains_key(*w))
        {
            walk(all, inner, &path, out);
        }
    }
}

#[test]
fn every_key_is_documented() {
    let all = structs();
    assert!(all.contains_key("RawConfig"), "raw.rs not understood");
    let mut paths = Vec::new();
    walk(&all, "RawConfig", "", &mut paths);
    // Sanity: the walk reaches deep keys.
    for p in [
        "disk.key.fs_uuid",
        "servers.NAME.host_key",
        "jobs.NAME.dumps[].postgres.database",
        "jobs.NAME.healthcheck.slug",
        "check.read_data",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not derived: {paths:?}");
    }
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !DOC.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document (as `path`): {missing:?}"
    );
}
