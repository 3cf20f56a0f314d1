//! What a plugin constructor may use besides its own TOML table.

use crate::consumer::Consumers;
use crate::state::SharedState;
use std::sync::Arc;

/// Handed to every plugin constructor when a config is compiled.
pub struct BuildCtx {
    /// The config's consumers (for auth plugins).
    pub consumers: Arc<Consumers>,
    /// Where the plugin is configured: `global` or `route:<name>`. Plugins with state that
    /// must survive a reload key it by this (see [`SharedState`]).
    pub scope: String,
    /// State that outlives a reload: ask it for counters, connections or caches by a stable
    /// key instead of keeping them in a `static`.
    pub state: Arc<SharedState>,
}

impl BuildCtx {
    /// The same context for another scope (`route:<name>`).
    pub fn with_scope(&self, scope: String) -> Self {
        BuildCtx {
            consumers: self.consumers.clone(),
            scope,
            state: self.state.clone(),
        }
    }
}

impl Default for BuildCtx {
    /// No consumers, the `global` scope and a state of its own (for tests).
    fn default() -> Self {
        BuildCtx {
            consumers: Arc::new(Consumers::default()),
            scope: "global".to_string(),
            state: SharedState::new(),
        }
    }
}
