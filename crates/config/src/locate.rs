//! Best-effort mapping from a key path (`jobs.synapse.schedule`) back to its line and column
//! in the file, so semantic errors point at the place to edit. YAML's block style is assumed
//! (what users write for this file); when a key cannot be found, the error carries no position.

/// Finds the 1-based line and column of the key at `path` in `text`.
pub fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - trimmed.len();
        let mut rest = trimmed;
        // A list item: "- key: value" opens a mapping two columns further in.
        while let Some(r) = rest.strip_prefix("- ") {
            indent += 2;
            rest = r.trim_start_matches(' ');
        }
        let Some(colon) = key_end(rest) else { continue };
        let key = rest[..colon].trim().trim_matches('"').trim_matches('\'');
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        if stack.len() == path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p) {
            return Some((i + 1, indent + 1));
        }
    }
    None
}

/// The byte offset of the `:` ending a mapping key at the start of `s`, if `s` is `key: ...`.
fn key_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') if i == 0 => quote = Some(b),
            (None, b':') if bytes.get(i + 1).is_none_or(|c| *c == b' ') => return Some(i),
            (None, b' ' | b'[' | b'{') if i == 0 => return None,
            (None, b'#') => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
repository:
  path: /x
jobs:
  # comment
  synapse:
    schedule: \"0 3 * * *\"
    dumps:
      - name: a
        command: b
  other:
    schedule: x
";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(locate(TEXT, &["repository", "path"]), Some((2, 3)));
        assert_eq!(locate(TEXT, &["jobs", "synapse", "schedule"]), Some((6, 5)));
        assert_eq!(locate(TEXT, &["jobs", "other", "schedule"]), Some((11, 5)));
        assert_eq!(locate(TEXT, &["jobs", "synapse", "dumps"]), Some((7, 5)));
        assert_eq!(locate(TEXT, &["jobs", "nope"]), None);
    }
}
