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
