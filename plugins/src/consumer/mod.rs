//! Consumers: the callers a gateway knows, with their groups and credentials.
//!
//! `[[consumers]]` is compiled once per config into [`Consumers`]: API keys into a map keyed by
//! their SHA-256 digest, basic-auth users by name, JWT keys by key id or issuer. Auth plugins
//! get an `Arc<Consumers>` when they are built and only look things up per request. The
//! credential types live here too ([`jwt_key`], [`password`]), so the auth plugins depend on
//! this module and never on each other.

pub mod identity;
pub mod jwt_key;
pub mod password;

pub use identity::{Consumer, Identity, IdentityHeaders};

use crate::config_error::{parse_config, ConfigError};
use http::HeaderValue;
use jwt_key::{JwtKey, JwtKeySpec};
use serde::Deserialize;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A stored API key.
struct KeyEntry {
    key: Box<[u8]>,
    consumer: Arc<Consumer>,
    credential: HeaderValue,
}

/// A basic-auth user.
pub struct BasicEntry {
    /// The consumer it authenticates as.
    pub consumer: Arc<Consumer>,
    /// PHC (`$argon2id$...`) or bcrypt (`$2b$...`) hash.
    pub password_hash: String,
    /// `X-Credential-Identifier` value (the basic-auth username).
    pub credential: HeaderValue,
}

/// All consumers of a config, indexed for each auth scheme.
#[derive(Default)]
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
    /// API keys by a SipHash of the key under a random key of this config (so clients can
    /// neither predict nor collide the buckets); the key itself is compared in constant time.
    keys: HashMap<u64, Vec<KeyEntry>>,
    key_hasher: RandomState,
    basic: HashMap<String, BasicEntry>,
    jwt: HashMap<String, JwtKey>,
    plugin_sets: Vec<PluginSet>,
}

/// The plugins one or more consumers add to a route's chain: the consumer's own
/// (`[[consumers]] plugins`) and those of its groups (`[[consumer_groups]] plugins`). Consumers
/// with the same groups and no plugins of their own share a set, so a route has one chain per
/// set, not per consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSet {
    /// The consumer whose own `plugins` are in the set (index in `[[consumers]]`).
    pub consumer: Option<usize>,
    /// Groups with plugins, in the consumer's order.
    pub groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerSection {
    username: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    keys: Vec<KeySpec>,
    #[serde(default)]
    basic_auth: Option<BasicSpec>,
    #[serde(default)]
    jwt: Vec<JwtKeySpec>,
    /// Compiled by the gateway (it has the plugin registry); here only whether there are any.
    #[serde(default)]
    plugins: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeySpec {
    Key(String),
    WithId { id: String, key: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicSpec {
    #[serde(default)]
    username: Option<String>,
    password_hash: String,
}

fn header_value(s: &str, path: &str, errors: &mut Vec<ConfigError>) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        errors.push(ConfigError::new(
            path,
            "must be printable text (it is sent as a header)",
        ));
        HeaderValue::from_static("")
    })
}

impl Consumers {
    /// Compile the `[[consumers]]` array; error paths are absolute (`consumers[i]...`).
    /// `plugin_groups` names the groups that have plugins (`[[consumer_groups]]`), which
    /// decides each consumer's [`PluginSet`].
    pub fn build(
        value: Option<&toml::Value>,
        plugin_groups: &[String],
    ) -> Result<Self, Vec<ConfigError>> {
        let mut out = Consumers::default();
        let mut errors = Vec::new();
        let Some(value) = value else {
            return Ok(out);
        };
        let Some(items) = value.as_array() else {
            return Err(vec![ConfigError::new(
                "consumers",
                "expected an array: [[consumers]]",
            )]);
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("consumers[{i}]");
            let sec: ConsumerSection = match parse_config(item) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e.under(&at));
                    continue;
                }
            };
            if sec.username.is_empty() {
                errors.push(ConfigError::new(
                    format!("{at}.username"),
                    "must not be empty",
                ));
            }
            if out.by_name.contains_key(&sec.username) {
                errors.push(ConfigError::new(
                    format!("{at}.username"),
                    format!("duplicate consumer {:?}", sec.username),
                ));
                continue;
            }
            let id = sec.id.clone().unwrap_or_else(|| sec.username.clone());
            let headers = IdentityHeaders {
                id: header_value(&id, &format!("{at}.id"), &mut errors),
                username: header_value(&sec.username, &format!("{at}.username"), &mut errors),
                custom_id: sec
                    .custom_id
                    .as_deref()
                    .map(|c| header_value(c, &format!("{at}.custom_id"), &mut errors)),
                groups: (!sec.groups.is_empty()).then(|| {
                    header_value(&sec.groups.join(", "), &format!("{at}.groups"), &mut errors)
                }),
            };
            for (g, name) in sec.groups.iter().enumerate() {
                if name.is_empty() || name.contains(',') {
                    errors.push(ConfigError::new(
                        format!("{at}.groups[{g}]"),
                        "group names are non-empty and have no commas",
                    ));
                }
            }
            let set = PluginSet {
                consumer: (!sec.plugins.is_empty()).then_some(i),
                groups: sec
                    .groups
                    .iter()
                    .filter(|g| plugin_groups.contains(g))
                    .cloned()
                    .collect(),
            };
            let plugin_set =
                (set.consumer.is_some() || !set.groups.is_empty()).then(|| {
                    match out.plugin_sets.iter().position(|s| *s == set) {
                        Some(k) => k,
                        None => {
                            out.plugin_sets.push(set);
                            out.plugin_sets.len() - 1
                        }
                    }
                });
            let consumer = Arc::new(Consumer {
                username: sec.username.clone(),
                id,
                custom_id: sec.custom_id.clone(),
                groups: sec.groups.clone(),
                headers,
                plugin_set,
            });
            for (k, spec) in sec.keys.iter().enumerate() {
                let kat = format!("{at}.keys[{k}]");
                let (cred_id, key) = match spec {
                    KeySpec::Key(key) => (format!("{}-key-{k}", sec.username), key),
                    KeySpec::WithId { id, key } => (id.clone(), key),
                };
                if key.len() < 8 {
                    errors.push(ConfigError::new(
                        &kat,
                        "API keys must be at least 8 characters",
                    ));
                    continue;
                }
                let slot = out.key_hasher.hash_one(key.as_bytes());
                if out
                    .keys
                    .get(&slot)
                    .is_some_and(|v| v.iter().any(|e| e.key.as_ref() == key.as_bytes()))
                {
                    // Never print the key: it is a secret.
                    errors.push(ConfigError::new(
                        &kat,
                        "this API key is already used by another credential",
                    ));
                    continue;
                }
                let credential = header_value(&cred_id, &kat, &mut errors);
                out.keys.entry(slot).or_default().push(KeyEntry {
                    key: key.as_bytes().into(),
                    consumer: consumer.clone(),
                    credential,
                });
            }
            if let Some(b) = &sec.basic_auth {
                let bat = format!("{at}.basic_auth");
                let user = b.username.clone().unwrap_or_else(|| sec.username.clone());
                if !password::is_supported_hash(&b.password_hash) {
                    errors.push(ConfigError::new(
                        format!("{bat}.password_hash"),
                        "expected an argon2 PHC string ($argon2id$...) or a bcrypt hash ($2b$...); make one with `tollgate hash-password`",
                    ));
                } else {
                    let credential = header_value(&user, &format!("{bat}.username"), &mut errors);
                    match out.basic.entry(user) {
                        std::collections::hash_map::Entry::Occupied(e) => {
                            errors.push(ConfigError::new(
                                format!("{bat}.username"),
                                format!("basic-auth user {:?} is defined twice", e.key()),
                            ))
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(BasicEntry {
                                consumer: consumer.clone(),
                                password_hash: b.password_hash.clone(),
                                credential,
                            });
                        }
                    }
                }
            }
            for (j, spec) in sec.jwt.iter().enumerate() {
                let jat = format!("{at}.jwt[{j}]");
                match JwtKey::build(spec, consumer.clone()) {
                    Ok(key) => {
                        if out.jwt.contains_key(&spec.key) {
                            errors.push(ConfigError::new(
                                format!("{jat}.key"),
                                format!("JWT key {:?} is defined twice", spec.key),
                            ));
                        } else {
                            out.jwt.insert(spec.key.clone(), key);
                        }
                    }
                    Err(errs) => errors.extend(errs.into_iter().map(|e| e.under(&jat))),
                }
            }
            out.by_name.insert(sec.username.clone(), consumer);
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// The distinct plugin sets of the consumers ([`Consumer::plugin_set`] indexes this).
    pub fn plugin_sets(&self) -> &[PluginSet] {
        &self.plugin_sets
    }

    /// A consumer by username.
    pub fn get(&self, username: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(username)
    }

    /// Find a consumer by username or custom id.
    pub fn find(&self, name_or_custom_id: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name_or_custom_id).or_else(|| {
            self.by_name
                .values()
                .find(|c| c.custom_id.as_deref() == Some(name_or_custom_id))
        })
    }

    /// The identity of an API key, comparing digests in constant time.
    pub fn by_key(&self, presented: &[u8]) -> Option<Identity> {
        // The map is keyed by a secret-keyed hash, never by the key; the keys in the bucket
        // (one, but for a 2^-64 chance) are compared in constant time.
        let entries = self.keys.get(&self.key_hasher.hash_one(presented))?;
        let entry = entries
            .iter()
            .find(|e| e.key.len() == presented.len() && bool::from(e.key.ct_eq(presented)))?;
        Some(Identity {
            consumer: entry.consumer.clone(),
            credential: Some(entry.credential.clone()),
            anonymous: false,
        })
    }

    /// A basic-auth user by name.
    pub fn basic(&self, username: &str) -> Option<&BasicEntry> {
        self.basic.get(username)
    }

    /// A JWT key by key id or issuer.
    pub fn jwt_key(&self, key: &str) -> Option<&JwtKey> {
        self.jwt.get(key)
    }

    /// Resolve a plugin setting that names a consumer (`anonymous = "guest"`); an unknown
    /// name is an error at `key`.
    pub fn named(
        &self,
        name: Option<&str>,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Arc<Consumer>> {
        let n = name?;
        let found = self.get(n).cloned();
        if found.is_none() {
            errors.push(ConfigError::new(
                key,
                format!("no consumer named {n:?} (define it in [[consumers]])"),
            ));
        }
        found
    }
}
