//! Config loading: TOML text → checked sections → compiled [`Snapshot`].
//!
//! Every problem is collected (not just the first), each with its TOML path and line, so
//! `tollgate check` can list them all.

pub mod compile;
pub mod consumer_plugins;
pub mod env;
pub mod lines;
pub mod plugin_list;
pub mod schema;
pub mod tracing;

use crate::retained::Retained;
use crate::snapshot::Snapshot;
use std::fmt;
use std::path::Path;
use tollgate_plugins::ConfigError;

/// All problems found in one config file, ready to print.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The file (for messages).
    pub file: String,
    /// `(line, error)` pairs in file order where lines are known.
    pub errors: Vec<(Option<usize>, ConfigError)>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} error(s)", self.file, self.errors.len())?;
        for (line, e) in &self.errors {
            let path = if e.path.is_empty() {
                "(top level)"
            } else {
                &e.path
            };
            match line {
                Some(l) => writeln!(f, "  {path} (line {l}): {}", e.message)?,
                None => writeln!(f, "  {path}: {}", e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read, check and compile the config at `path`, reusing what `retained` keeps from the
/// running config.
pub fn load_file(path: &Path, retained: &Retained) -> Result<Snapshot, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![(
            None,
            ConfigError::new("", format!("cannot read the file: {e}")),
        )],
    })?;
    load_str(&text, &file, retained)
}

/// Check and compile config text; `file` names it in errors.
pub fn load_str(text: &str, file: &str, retained: &Retained) -> Result<Snapshot, ConfigErrors> {
    let index = lines::LineIndex::new(text);
    let fail = |errors: Vec<ConfigError>| {
        let mut errors: Vec<_> = errors
            .into_iter()
            .map(|e| (index.line_of_path(&e.path), e))
            .collect();
        errors.sort_by_key(|(l, _)| l.unwrap_or(usize::MAX));
        ConfigErrors {
            file: file.to_string(),
            errors,
        }
    };
    let mut root: toml::Value = match text.parse::<toml::Table>() {
        Ok(t) => toml::Value::Table(t),
        Err(e) => {
            let line = e.span().map(|s| index.line_of(s.start));
            return Err(ConfigErrors {
                file: file.to_string(),
                errors: vec![(
                    line,
                    ConfigError::new("", format!("invalid TOML: {}", e.message())),
                )],
            });
        }
    };
    let mut errors = Vec::new();
    env::expand(&mut root, "", &mut errors);
    if !errors.is_empty() {
        return Err(fail(errors));
    }
    let mut snap = compile::compile(&root, &retained.registry, retained).map_err(fail)?;
    snap.source = Some(std::sync::Arc::new((text.to_string(), file.to_string())));
    Ok(snap)
}

#[cfg(test)]
mod fallback_checks {
    use crate::retained::Retained;

    /// The `path: message` of every error `text` gives.
    fn errors(text: &str) -> Vec<String> {
        match super::load_str(text, "t.toml", &Retained::new()) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .into_iter()
                .map(|(_, e)| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    const UPSTREAMS: &str = "[[upstreams]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\n\n[[upstreams]]\nname = \"b\"\nbackends = [\"127.0.0.1:2\"]\n\n";

    fn has(errors: &[String], want: &str) -> bool {
        errors.iter().any(|e| e.starts_with(want))
    }

    #[test]
    fn fallback_targets_and_triggers_are_checked_with_their_paths() {
        let e = errors(&format!(
            "{UPSTREAMS}[[routes]]\nname = \"chat\"\nfallback = [{{ upstream = \"a\" }}, {{ upstream = \"nope\", model = \"\" }}]\nfallback_on = [\"connect\", \"404\"]\n"
        ));
        assert!(
            has(
                &e,
                "routes[0].fallback[1].upstream: no upstream named \"nope\""
            ),
            "{e:?}"
        );
        assert!(
            has(&e, "routes[0].fallback[1].model: must not be empty"),
            "{e:?}"
        );
        assert!(has(&e, "routes[0].fallback_on[1]: \"404\""), "{e:?}");
    }

    #[test]
    fn fallback_excludes_upstream_and_status_retries() {
        let e = errors(&format!(
            "{UPSTREAMS}[[routes]]\nname = \"chat\"\nupstream = \"a\"\nretry_on_status = [503]\nfallback = [{{ upstream = \"a\" }}, {{ upstream = \"b\" }}]\n"
        ));
        assert!(
            has(&e, "routes[0].upstream: a route with `fallback`"),
            "{e:?}"
        );
        assert!(
            has(&e, "routes[0].fallback_on: `fallback_on` replaces"),
            "{e:?}"
        );
    }

    #[test]
    fn body_bound_timeouts_and_queue_are_checked() {
        let e = errors(
            "[[upstreams]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\nqueue_size = 3\n\n[[routes]]\nname = \"chat\"\nupstream = \"a\"\nmax_body_bytes = 70000\nfirst_byte_timeout_ms = 0\non_body_over_limit = \"reject\"\n"
        );
        assert!(
            has(&e, "routes[0].max_body_bytes: between 1 and 65536"),
            "{e:?}"
        );
        assert!(
            has(&e, "routes[0].first_byte_timeout_ms: must be at least 1"),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "upstreams[0].queue_size: a queue needs max_concurrent_requests"
            ),
            "{e:?}"
        );
        let e = errors(&format!(
            "{UPSTREAMS}[[routes]]\nname = \"chat\"\nupstream = \"a\"\non_body_over_limit = \"drop\"\n"
        ));
        assert!(has(&e, "routes[0].on_body_over_limit"), "{e:?}");
        let ok = errors(&format!(
            "{UPSTREAMS}[[routes]]\nname = \"chat\"\nfallback = [{{ upstream = \"a\" }}, {{ upstream = \"b\", model = \"llama\" }}]\nfallback_on = [\"connect\", \"503\"]\nfirst_byte_timeout_ms = 100\nidle_timeout_ms = 100\n"
        ));
        assert!(ok.is_empty(), "{ok:?}");
    }
}
