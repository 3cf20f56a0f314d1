//! Per-consumer plugins: the `plugins` of `[[consumers]]` and `[[consumer_groups]]`, merged
//! into each authenticating route's chain once per consumer plugin set when the config is
//! compiled.
//!
//! Precedence, most specific first: the consumer's own entry, then its groups' (in the order
//! the consumer lists them), then the route's, then the global one. An entry replaces the
//! plugin of the same name from a less specific level; `enabled = false` removes it. The
//! plugins run after authentication (the consumer is not known before), so they may be of
//! any phase from authorization on.

use super::plugin_list::{plugin_entries, Entries};
use super::schema::ConsumerGroupSection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tollgate_plugins::chain::Plugins;
use tollgate_plugins::{BuildCtx, ConfigError, Consumers, Phase, Plugin, Registry};

/// One name a plugin set configures: its instance, or `None` when it turns the plugin off.
struct Override {
    name: String,
    plugin: Option<Arc<dyn Plugin>>,
    path: String,
}

/// The compiled plugins of every consumer plugin set.
#[derive(Default)]
pub struct ConsumerPlugins {
    sets: Vec<Vec<Override>>,
}

impl ConsumerPlugins {
    /// Build the groups' and consumers' plugins (each instance once, shared by every route)
    /// and resolve each of `consumers`' plugin sets.
    pub fn build(
        groups: &[(usize, ConsumerGroupSection)],
        consumer_tables: Option<&toml::Value>,
        consumers: &Consumers,
        registry: &Registry,
        globals: &BTreeMap<String, Arc<dyn Plugin>>,
        ctx: &BuildCtx,
        errors: &mut Vec<ConfigError>,
    ) -> Self {
        let mut by_group: BTreeMap<&str, (usize, Entries)> = BTreeMap::new();
        for (i, g) in groups {
            let at = format!("consumer_groups[{i}]");
            if g.name.is_empty() || g.name.contains(',') {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    "group names are non-empty and have no commas",
                ));
            }
            if by_group.contains_key(g.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate consumer group {:?}", g.name),
                ));
                continue;
            }
            let gctx = ctx.with_scope(format!("consumer_group:{}", g.name));
            let entries = plugin_entries(
                &g.plugins,
                &format!("{at}.plugins"),
                registry,
                globals,
                &gctx,
                errors,
            );
            check_entries(&entries, errors);
            by_group.insert(&g.name, (*i, entries));
        }
        let tables = consumer_tables.and_then(toml::Value::as_array);
        let mut sets = Vec::new();
        for set in consumers.plugin_sets() {
            let mut merged: Vec<Override> = Vec::new();
            if let Some(ci) = set.consumer {
                let table = tables.and_then(|t| t.get(ci));
                let list = table
                    .and_then(|t| t.get("plugins"))
                    .and_then(toml::Value::as_array);
                let name = table
                    .and_then(|t| t.get("username"))
                    .and_then(toml::Value::as_str)
                    .unwrap_or_default();
                let cctx = ctx.with_scope(format!("consumer:{name}"));
                let entries = plugin_entries(
                    list.map_or(&[][..], Vec::as_slice),
                    &format!("consumers[{ci}].plugins"),
                    registry,
                    globals,
                    &cctx,
                    errors,
                );
                check_entries(&entries, errors);
                push_entries(&mut merged, &entries);
            }
            let own: BTreeSet<String> = merged.iter().map(|o| o.name.clone()).collect();
            let mut from_group: BTreeMap<String, &str> = BTreeMap::new();
            for g in &set.groups {
                let Some((_, entries)) = by_group.get(g.as_str()) else {
                    continue;
                };
                let mut group_overrides = Vec::new();
                push_entries(&mut group_overrides, entries);
                for o in group_overrides {
                    if own.contains(&o.name) {
                        continue;
                    }
                    if let Some(first) = from_group.get(&o.name) {
                        errors.push(ConfigError::new(
                            &o.path,
                            format!(
                                "plugin {:?} is also configured by consumer group {first:?}, and a consumer is in both; configure it on the consumer instead",
                                o.name
                            ),
                        ));
                        continue;
                    }
                    from_group.insert(o.name.clone(), g);
                    merged.push(o);
                }
            }
            sets.push(merged);
        }
        ConsumerPlugins { sets }
    }

    /// The chain of each plugin set on a route whose own chain is `base`; empty when the
    /// route authenticates no one or no consumer has plugins. `reported` keeps an error about
    /// one entry from being repeated for every route.
    pub fn chains(
        &self,
        base: &[Arc<dyn Plugin>],
        errors: &mut Vec<ConfigError>,
        reported: &mut BTreeSet<String>,
    ) -> Box<[Plugins]> {
        if self.sets.is_empty() || !base.iter().any(|p| p.phase() == Phase::Authentication) {
            return Box::new([]);
        }
        let mut out = Vec::with_capacity(self.sets.len());
        for set in &self.sets {
            for o in set {
                let early = base
                    .iter()
                    .find(|p| p.name() == o.name && p.phase() <= Phase::Authentication);
                if early.is_some() && reported.insert(o.path.clone()) {
                    errors.push(ConfigError::new(
                        &o.path,
                        format!(
                            "{:?} runs before the consumer is known; a consumer or group cannot change it",
                            o.name
                        ),
                    ));
                }
            }
            let mut chain: Vec<Arc<dyn Plugin>> = base
                .iter()
                .filter(|p| !set.iter().any(|o| o.name == p.name()))
                .cloned()
                .chain(set.iter().filter_map(|o| o.plugin.clone()))
                .collect();
            // Stable: within a phase, the route's plugins first, then the consumer's.
            chain.sort_by_key(|p| p.phase());
            out.push(Plugins::from(chain));
        }
        out.into_boxed_slice()
    }
}

fn push_entries(out: &mut Vec<Override>, entries: &Entries) {
    out.extend(entries.local.iter().map(|c| Override {
        name: c.name.clone(),
        plugin: Some(c.plugin.clone()),
        path: c.path.clone(),
    }));
    out.extend(entries.disabled.iter().map(|(name, path)| Override {
        name: name.clone(),
        plugin: None,
        path: path.clone(),
    }));
}

/// Consumer plugins run once the consumer is known, and the cache is the route's.
fn check_entries(entries: &Entries, errors: &mut Vec<ConfigError>) {
    for c in &entries.local {
        if c.plugin.phase() <= Phase::Authentication {
            errors.push(ConfigError::new(
                &c.path,
                format!(
                    "{:?} runs before the consumer is known ({:?} phase); consumer plugins run from authorization on",
                    c.name,
                    c.plugin.phase()
                ),
            ));
        } else if c.plugin.cache_policy().is_some() {
            errors.push(ConfigError::new(
                &c.path,
                "the response cache is configured per route, not per consumer",
            ));
        }
    }
}
