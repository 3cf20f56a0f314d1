//! Maps a plugin name from the TOML config to the constructor that validates its config.

use crate::build_ctx::BuildCtx;
use crate::config_error::ConfigError;
use crate::plugin::Plugin;
use crate::{
    acl, ai_usage, auth_failure_limit, basic_auth, cache, compress, concurrency, cors, ext_proc,
    forward_auth, headers, ip_restriction, jwt, key_auth, mock, rate_limit, request_size,
    response_transform, token_limit,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Builds a plugin from its TOML table (without the `name`/`enabled` keys), or says what is
/// wrong with it, with paths relative to that table.
pub type Constructor = fn(&toml::Value, &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>>;

/// The set of plugins a gateway can use, by name.
pub struct Registry {
    constructors: BTreeMap<&'static str, Constructor>,
}

impl Registry {
    /// The built-in plugins.
    pub fn builtin() -> Self {
        let mut r = Registry {
            constructors: BTreeMap::new(),
        };
        r.register(mock::NAME, mock::build);
        r.register(headers::NAME, headers::build);
        r.register(key_auth::NAME, key_auth::build);
        r.register(basic_auth::NAME, basic_auth::build);
        r.register(jwt::NAME, jwt::build);
        r.register(acl::NAME, acl::build);
        r.register(auth_failure_limit::NAME, auth_failure_limit::build);
        r.register(rate_limit::NAME, rate_limit::build);
        r.register(concurrency::NAME, concurrency::build);
        r.register(ip_restriction::NAME, ip_restriction::build);
        r.register(request_size::NAME, request_size::build);
        r.register(cors::NAME, cors::build);
        r.register(cache::NAME, cache::build);
        r.register(response_transform::NAME, response_transform::build);
        r.register(compress::NAME, compress::build);
        r.register(forward_auth::NAME, forward_auth::build);
        r.register(ext_proc::NAME, ext_proc::build);
        r.register(ai_usage::NAME, ai_usage::build);
        r.register(token_limit::NAME, token_limit::build);

        r
    }

    /// Add (or replace) a plugin under `name`.
    pub fn register(&mut self, name: &'static str, constructor: Constructor) {
        self.constructors.insert(name, constructor);
    }

    /// The constructor for `name`, if such a plugin exists.
    pub fn get(&self, name: &str) -> Option<Constructor> {
        self.constructors.get(name).copied()
    }

    /// All registered names, sorted (for error messages).
    pub fn names(&self) -> Vec<&'static str> {
        self.constructors.keys().copied().collect()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}
