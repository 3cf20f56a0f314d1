//! Plugin tables of a config turned into instances: the global `[plugins.<name>]` tables and
//! the `plugins = [...]` lists of routes, consumers and consumer groups.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tollgate_plugins::{BuildCtx, ConfigError, Plugin, Registry};

/// A plugin instance and the name it was configured under.
pub struct Configured {
    /// The registered name.
    pub name: String,
    /// The instance.
    pub plugin: Arc<dyn Plugin>,
    /// TOML path of its entry, for errors found later.
    pub path: String,
}

/// The entries of one `plugins = [...]` list.
#[derive(Default)]
pub struct Entries {
    /// Enabled plugins, in the order listed.
    pub local: Vec<Configured>,
    /// Names listed with `enabled = false`, with the entry's path.
    pub disabled: BTreeMap<String, String>,
}

impl Entries {
    /// Whether this list configures `name` (enabled or not), so an outer definition of the
    /// same plugin does not apply.
    pub fn replaces(&self, name: &str) -> bool {
        self.disabled.contains_key(name) || self.local.iter().any(|c| c.name == name)
    }
}

/// Build the global `[plugins.<name>]` tables.
pub fn build_globals(
    value: Option<&toml::Value>,
    registry: &Registry,
    ctx: &BuildCtx,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Arc<dyn Plugin>> {
    let mut out = BTreeMap::new();
    let Some(value) = value else {
        return out;
    };
    let Some(table) = value.as_table() else {
        errors.push(ConfigError::new(
            "plugins",
            "expected tables: [plugins.<name>]",
        ));
        return out;
    };
    for (name, cfg) in table {
        let at = format!("plugins.{name}");
        let Some(cfg_table) = cfg.as_table() else {
            errors.push(ConfigError::new(at, "expected a table"));
            continue;
        };
        let mut cfg_table = cfg_table.clone();
        let enabled = take_enabled(&mut cfg_table, &at, errors);
        match construct(
            registry,
            name,
            &toml::Value::Table(cfg_table),
            ctx,
            &at,
            errors,
        ) {
            Some(p) if enabled => {
                out.insert(name.clone(), p);
            }
            _ => {}
        }
    }
    out
}

/// Build the entries of a `plugins` list at `at` (`routes[0].plugins`). An entry is a name
/// (sharing the global instance of that name when there is one) or a table with `name`, an
/// optional `enabled` and the plugin's own keys.
pub fn plugin_entries(
    list: &[toml::Value],
    at: &str,
    registry: &Registry,
    globals: &BTreeMap<String, Arc<dyn Plugin>>,
    ctx: &BuildCtx,
    errors: &mut Vec<ConfigError>,
) -> Entries {
    let mut out = Entries::default();
    let mut seen = BTreeSet::new();
    for (i, entry) in list.iter().enumerate() {
        let pat = format!("{at}[{i}]");
        let (name, enabled, cfg) = match entry {
            toml::Value::String(name) => (name.clone(), true, None),
            toml::Value::Table(t) => {
                let mut t = t.clone();
                let name = match t.remove("name") {
                    Some(toml::Value::String(n)) => n,
                    _ => {
                        errors.push(ConfigError::new(
                            &pat,
                            "a plugin table needs `name = \"...\"`",
                        ));
                        continue;
                    }
                };
                let enabled = take_enabled(&mut t, &pat, errors);
                (name, enabled, if t.is_empty() { None } else { Some(t) })
            }
            _ => {
                errors.push(ConfigError::new(
                    &pat,
                    "expected a plugin name or a table with `name`",
                ));
                continue;
            }
        };
        if !seen.insert(name.clone()) {
            errors.push(ConfigError::new(
                &pat,
                format!("plugin {name:?} is listed twice"),
            ));
            continue;
        }
        if !enabled {
            if registry.get(&name).is_none() {
                errors.push(ConfigError::new(&pat, format!("unknown plugin {name:?}")));
            }
            out.disabled.insert(name, pat);
            continue;
        }
        let plugin = match (cfg, globals.get(&name)) {
            // Name only, with a global definition: share the global instance.
            (None, Some(g)) => Some(g.clone()),
            (cfg, _) => construct(
                registry,
                &name,
                &toml::Value::Table(cfg.unwrap_or_default()),
                ctx,
                &pat,
                errors,
            ),
        };
        if let Some(plugin) = plugin {
            out.local.push(Configured {
                name,
                plugin,
                path: pat,
            });
        }
    }
    out
}

fn take_enabled(t: &mut toml::Table, at: &str, errors: &mut Vec<ConfigError>) -> bool {
    match t.remove("enabled") {
        None => true,
        Some(toml::Value::Boolean(b)) => b,
        Some(_) => {
            errors.push(ConfigError::new(
                format!("{at}.enabled"),
                "expected true or false",
            ));
            true
        }
    }
}

fn construct(
    registry: &Registry,
    name: &str,
    cfg: &toml::Value,
    ctx: &BuildCtx,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<dyn Plugin>> {
    let Some(ctor) = registry.get(name) else {
        errors.push(ConfigError::new(
            at,
            format!(
                "unknown plugin {name:?}; available: {}",
                registry.names().join(", ")
            ),
        ));
        return None;
    };
    match ctor(cfg, ctx) {
        Ok(p) => Some(p),
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| e.under(at)));
            None
        }
    }
}
