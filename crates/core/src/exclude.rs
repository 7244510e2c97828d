//! `exclude` globs, with restic's meaning: a pattern without `/` matches a name anywhere in
//! the tree (`*.tmp`, `cache`); a pattern starting with `/` matches a whole absolute path
//! (`/var/lib/app/tmp`, `/srv/*/cache`); any other pattern with `/` matches the end of a path
//! (`logs/*.gz`). `*` never crosses `/`; `**` does. An excluded directory is not descended.

use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

#[derive(Debug, Clone)]
pub struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
    empty: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid exclude pattern {pattern:?}: {reason}")]
pub struct ExcludeError {
    pub pattern: String,
    pub reason: String,
}

impl Excludes {
    pub fn none() -> Self {
        Excludes {
            by_name: GlobSet::empty(),
            by_path: GlobSet::empty(),
            empty: true,
        }
    }

    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, ExcludeError> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            let build = |glob: &str| {
                GlobBuilder::new(glob)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| ExcludeError {
                        pattern: p.to_owned(),
                        reason: e.kind().to_string(),
                    })
            };
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                return Err(ExcludeError {
                    pattern: p.to_owned(),
                    reason: "empty pattern".into(),
                });
            }
            if !trimmed.contains('/') {
                by_name.add(build(trimmed)?);
            } else if trimmed.starts_with('/') {
                by_path.add(build(trimmed)?);
            } else {
                by_path.add(build(&format!("/**/{trimmed}"))?);
            }
        }
        let err = |e: globset::Error| ExcludeError {
            pattern: String::new(),
            reason: e.to_string(),
        };
        Ok(Excludes {
            by_name: by_name.build().map_err(err)?,
            by_path: by_path.build().map_err(err)?,
            empty: patterns.is_empty(),
        })
    }

    /// True when the entry at absolute `path` is excluded.
    pub fn is_excluded(&self, path: &Path) -> bool {
        if self.empty {
            return false;
        }
        if let Some(name) = path.file_name()
            && self.by_name.is_match(Path::new(name))
        {
            return true;
        }
        self.by_path.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_patterns_match_anywhere() {
        let ex = Excludes::new(&["*.tmp", "cache"]).unwrap();
        assert!(ex.is_excluded(Path::new("/a/b/x.tmp")));
        assert!(ex.is_excluded(Path::new("/a/cache")));
        assert!(!ex.is_excluded(Path::new("/a/cache.d")));
        assert!(!ex.is_excluded(Path::new("/a/x.tmp.keep")));
    }

    #[test]
    fn anchored_and_relative_path_patterns() {
        let ex = Excludes::new(&["/srv/*/tmp", "logs/*.gz"]).unwrap();
        assert!(ex.is_excluded(Path::new("/srv/app/tmp")));
        assert!(!ex.is_excluded(Path::new("/srv/app/x/tmp")));
        assert!(ex.is_excluded(Path::new("/var/app/logs/a.gz")));
        assert!(!ex.is_excluded(Path::new("/var/app/logs/old/a.gz")));
    }

    #[test]
    fn invalid_pattern_is_an_error_naming_it() {
        let err = Excludes::new(&["[a-"]).unwrap_err();
        assert_eq!(err.pattern, "[a-");
    }

    #[test]
    fn no_patterns_exclude_nothing() {
        assert!(!Excludes::none().is_excluded(Path::new("/x")));
    }
}
