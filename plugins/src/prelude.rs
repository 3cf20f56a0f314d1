//! Everything a plugin author needs, in one import: `use tollgate_plugins::prelude::*;`.
//!
//! The names here are the stable surface of the plugin API: they are kept across minor
//! versions, and a change to them is a breaking release.

pub use crate::answer::Answer;
pub use crate::build_ctx::BuildCtx;
pub use crate::config_error::{parse_config, parse_config_all, ConfigError};
pub use crate::consumer::{Consumer, Identity};
pub use crate::context::{RequestCtx, RequestId};
pub use crate::plugin::{Auth, Flow, Phase, Plugin};
pub use crate::registry::{Constructor, Registry};
pub use crate::state::SharedState;
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use http::{HeaderName, HeaderValue, StatusCode};
pub use pingora::http::{RequestHeader, ResponseHeader};
pub use std::sync::Arc;
