//! `${VAR}` expansion in string values, so secrets can stay out of config files.

use tollgate_plugins::ConfigError;

/// Replace every `${NAME}` in every string of `value` with the environment variable `NAME`.
/// `$${` writes a literal `${`. An unset variable is an error at that value's path.
pub fn expand(value: &mut toml::Value, path: &str, errors: &mut Vec<ConfigError>) {
    match value {
        toml::Value::String(s) if s.contains("${") => match expand_str(s) {
            Ok(new) => *s = new,
            Err(msg) => errors.push(ConfigError::new(path, msg)),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{i}]"), errors);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                if k == "rewrite" {
                    // `${name}` there is a regex capture, not an environment variable.
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand(v, &p, errors);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            // `$${` is an escaped `${`.
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${...} reference".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match std::env::var(name) {
            // The value itself is never echoed: it may be a secret.
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_reports() {
        std::env::set_var("TOLLGATE_TEST_ENV_A", "secret");
        assert_eq!(
            expand_str("k=${TOLLGATE_TEST_ENV_A}!").unwrap(),
            "k=secret!"
        );
        assert_eq!(expand_str("$${X}").unwrap(), "${X}");
        assert!(expand_str("${TOLLGATE_TEST_ENV_UNSET}")
            .unwrap_err()
            .contains("not set"));
        assert!(expand_str("${A").is_err());
        let mut v: toml::Value = toml::from_str("a = [\"${TOLLGATE_TEST_ENV_UNSET}\"]").unwrap();
        let mut errs = Vec::new();
        expand(&mut v, "", &mut errs);
        assert_eq!(errs[0].path, "a[0]");
    }
}
