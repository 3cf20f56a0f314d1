//! tollgate: a fast, programmable API gateway on Pingora.
//!
//! The crate compiles a TOML config into an immutable [`snapshot::Snapshot`] (router, upstream
//! pools, per-route plugin chains) and serves it through one `ProxyHttp` implementation
//! ([`proxy::Gateway`]). See `docs/` for the config reference.

#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod connection;
pub mod fallback;
pub mod framing;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod origin_date;
pub mod proxy;
pub mod reload;
pub mod retained;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod sni;
pub mod split;
pub mod target;
pub mod trace;
pub mod upstream;

/// The plugin crate, so a custom binary can depend on `tollgate` alone.
pub use tollgate_plugins as plugins;

/// The allocator the `tollgate` binary uses; a custom binary should set it too
/// (`#[global_allocator] static GLOBAL: tollgate::MiMalloc = tollgate::MiMalloc;`).
pub use mimalloc::MiMalloc;

/// Everything a custom binary or plugin needs: the plugin prelude of `tollgate_plugins`.
pub mod prelude {
    pub use tollgate_plugins::prelude::*;
}
