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
}
