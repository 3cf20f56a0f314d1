//! Config errors that carry the TOML path of the offending value.

use serde::de::DeserializeOwned;
use std::fmt;

/// One problem found in a config file: where (a TOML path such as `routes[2].plugins[0].status`)
/// and what is wrong. The gateway adds the line number when it prints the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted TOML path of the value, with `[i]` for array elements.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl ConfigError {
    /// A new error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error, its path placed under `prefix` (`prefix.path`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Join a TOML path prefix and a relative path (`a.b` + `c[0]` → `a.b.c[0]`, `a` + `[1]` → `a[1]`).
pub fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// Deserialize a plugin's (or any section's) TOML value into `T`, reporting the path of the
/// first problem relative to the value (e.g. `request.set`). Unknown keys are errors when `T`
/// uses `#[serde(deny_unknown_fields)]`, which every config struct in tollgate does.
pub fn parse_config<T: DeserializeOwned>(value: &toml::Value) -> Result<T, ConfigError> {
    // `toml::Value` deserializes by value; cloning a small config table at load time is fine.
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string().trim().to_string())
    })
}

/// Like [`parse_config`], but finds every bad key, not only the first: after each error
/// the offending key is left out and the value parsed again (a missing required key, which
/// cannot be left out, ends the search).
pub fn parse_config_all<T: DeserializeOwned>(value: &toml::Value) -> Result<T, Vec<ConfigError>> {
    /// Bounds the re-parsing of a pathological table.
    const MAX_ERRORS: usize = 64;
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut value = value.clone();
    for _ in 0..MAX_ERRORS * 2 {
        match parse_config::<T>(&value) {
            Ok(t) if errors.is_empty() => return Ok(t),
            Ok(_) => return Err(errors),
            Err(e) => {
                // Leaving a key out can make its table incomplete: that is not a new error.
                let consequence = errors
                    .iter()
                    .any(|prev| prev.path.starts_with(&format!("{}.", e.path)));
                let removed = !e.path.is_empty() && remove_path(&mut value, &e.path);
                if !consequence {
                    errors.push(e);
                }
                if !removed || errors.len() >= MAX_ERRORS {
                    return Err(errors);
                }
            }
        }
    }
    Err(errors)
}

/// Remove the value at a dotted path with `[i]` indexes; false when there is none.
fn remove_path(value: &mut toml::Value, path: &str) -> bool {
    // Split `a.b[2].c` into keys and indexes.
    let mut parts: Vec<Result<String, usize>> = Vec::new();
    for seg in path.split('.') {
        let mut rest = seg;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                parts.push(Ok(rest[..i].to_string()));
            }
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                match rest[1..end].parse::<usize>() {
                    Ok(n) => parts.push(Err(n)),
                    Err(_) => return false,
                }
                rest = &rest[end + 1..];
            }
        } else if !rest.is_empty() {
            parts.push(Ok(rest.to_string()));
        }
    }
    let Some((last, init)) = parts.split_last() else {
        return false;
    };
    let mut at = value;
    for p in init {
        at = match (p, at) {
            (Ok(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Err(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Ok(k), toml::Value::Table(t)) => t.remove(k).is_some(),
        (Err(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u16,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[test]
    fn path_of_nested_error() {
        let v: toml::Value = toml::from_str("[inner]\na = \"x\"").unwrap();
        let e = parse_config::<Outer>(&v).unwrap_err();
        assert_eq!(e.path, "inner.a");
        let v: toml::Value = toml::from_str("[inner]\na = 1\nb = 2").unwrap();
        let e = parse_config::<Outer>(&v).unwrap_err();
        assert!(e.message.contains("unknown field `b`"), "{}", e.message);
        assert_eq!(join_path("routes[0]", "[1]"), "routes[0][1]");
        assert_eq!(join_path("routes[0]", "x"), "routes[0].x");
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Route {
        name: String,
        #[serde(default)]
        priority: i32,
        #[serde(default)]
        strip_prefix: bool,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[test]
    fn every_bad_key_is_reported() {
        let v: toml::Value = toml::from_str(
            "name = \"r\"\npriority = \"high\"\nstrip_prefix = \"yes\"\nnope = 1\n[inner]\na = \"x\"",
        )
        .unwrap();
        let errs = parse_config_all::<Route>(&v).unwrap_err();
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            ["inner.a", "nope", "priority", "strip_prefix"],
            "{errs:?}"
        );
        let ok: toml::Value = toml::from_str("name = \"r\"").unwrap();
        assert!(parse_config_all::<Route>(&ok).is_ok());
    }
}
