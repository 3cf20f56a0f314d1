//! The plugin side of the tollgate API gateway.
//!
//! This crate holds the [`Plugin`] trait that every built-in plugin implements, the per-request
//! context plugins read and write ([`RequestCtx`]), the early-answer type ([`Answer`]), the
//! registry that turns a plugin name and its TOML table into a ready instance ([`Registry`]),
//! and the built-in plugins themselves, one module each.
//!
//! Plugins know nothing about files, listeners or reloads: the gateway crate compiles a config
//! into per-route chains of `Arc<dyn Plugin>` and calls the hooks in a fixed phase order.
//! What must outlive a reload (counters, connections, the response cache) a plugin asks the
//! [`SharedState`] for when it is built.

#![warn(missing_docs)]

pub mod acl;
pub mod ai;
pub mod ai_usage;
pub mod answer;
pub mod auth_failure_limit;
pub mod basic_auth;
pub mod body;
pub mod build_ctx;
pub mod cache;
pub mod chain;
pub mod compress;
pub mod concurrency;
pub mod config_error;
pub mod consumer;
pub mod context;
pub mod cors;
pub mod ext_proc;
pub mod external;
pub mod forward_auth;
pub mod headers;
pub mod ip_restriction;
pub mod jwt;
pub mod key_auth;
pub mod limit_key;
pub mod media;
pub mod metrics;
pub mod mock;
pub mod net;
pub mod plugin;
pub mod prelude;
pub mod rate_limit;
pub mod redis_conn;
pub mod registry;
pub mod req;
pub mod request_size;
pub mod response_transform;
pub mod state;
pub mod sync;
pub mod testing;
pub mod token_limit;
pub mod ttl_cache;

pub use answer::Answer;
pub use build_ctx::BuildCtx;
pub use config_error::{parse_config, parse_config_all, ConfigError};
pub use consumer::{Consumer, Consumers, Identity};
pub use context::{RequestCtx, RequestId};
pub use plugin::{Auth, Flow, Phase, Plugin};
pub use registry::{Constructor, Registry};
pub use state::SharedState;
