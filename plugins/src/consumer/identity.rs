//! Who a caller is: a [`Consumer`] of the config and the [`Identity`] a request was
//! authenticated as.

use http::HeaderValue;
use std::sync::Arc;

/// A caller known to the gateway.
#[derive(Debug)]
pub struct Consumer {
    /// Unique name (`X-Consumer-Username`).
    pub username: String,
    /// Stable id (`X-Consumer-Id`); the username unless set.
    pub id: String,
    /// Optional id from another system (`X-Consumer-Custom-Id`).
    pub custom_id: Option<String>,
    /// Groups, for `acl`.
    pub groups: Vec<String>,
    /// Header values, built once.
    pub headers: IdentityHeaders,
    /// Index of this consumer's plugins (its own and its groups') in
    /// [`Consumers::plugin_sets`](super::Consumers::plugin_sets); `None` when it has none, so
    /// its requests run the route's chain as it is.
    pub plugin_set: Option<usize>,
}

/// Precomputed identity header values of a consumer.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// `X-Consumer-Id`.
    pub id: HeaderValue,
    /// `X-Consumer-Username`.
    pub username: HeaderValue,
    /// `X-Consumer-Custom-Id`, when set.
    pub custom_id: Option<HeaderValue>,
    /// `X-Consumer-Groups` (comma separated), when the consumer has groups.
    pub groups: Option<HeaderValue>,
}

/// Who a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The consumer.
    pub consumer: Arc<Consumer>,
    /// Identifies the credential used (`X-Credential-Identifier`); never the secret itself.
    pub credential: Option<HeaderValue>,
    /// True when no credential was presented and the route's `anonymous` consumer was used.
    pub anonymous: bool,
}
